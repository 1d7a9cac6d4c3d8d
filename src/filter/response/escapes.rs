//! String escapes: keys are compared after unescaping, so `"\\u0065mail"`
//! is the key `email` (and a duplicate of it).

pub(super) fn hex_digit(b: u8) -> Option<u16> {
    match b {
        b'0'..=b'9' => Some(u16::from(b - b'0')),
        b'a'..=b'f' => Some(u16::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u16::from(b - b'A' + 10)),
        _ => None,
    }
}

pub(super) fn hex4(s: &[u8]) -> Option<u16> {
    s.iter()
        .try_fold(0u16, |acc, &b| Some(acc << 4 | hex_digit(b)?))
}

/// Unescapes an already validated raw key into `out`. `None` only if the
/// scanner's validation and this function disagree (a bug).
pub(super) fn unescape(raw: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let mut i = 0;
    while i < raw.len() {
        let plain_end = raw[i..]
            .iter()
            .position(|&b| b == b'\\')
            .map_or(raw.len(), |p| i + p);
        out.extend_from_slice(&raw[i..plain_end]);
        i = plain_end;
        if i >= raw.len() {
            break;
        }
        let e = *raw.get(i + 1)?;
        i += 2;
        let c = match e {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = hex4(raw.get(i..i + 4)?)?;
                i += 4;
                let cp = if (0xD800..=0xDBFF).contains(&hi) {
                    if raw.get(i..i + 2)? != b"\\u" {
                        return None;
                    }
                    let lo = hex4(raw.get(i + 2..i + 6)?)?;
                    i += 6;
                    if !(0xDC00..=0xDFFF).contains(&lo) {
                        return None;
                    }
                    0x10000 + ((u32::from(hi) - 0xD800) << 10 | (u32::from(lo) - 0xDC00))
                } else {
                    u32::from(hi)
                };
                char::from_u32(cp)?
            }
            _ => return None,
        };
        let mut buf = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    }
    Some(())
}
