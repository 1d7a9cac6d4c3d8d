//! Which address the IP allow-list is checked against, and the check.
//!
//! `X-Forwarded-For` is attacker-writable, so it is only believed when the TCP
//! peer is one of our own trusted proxies, and then only as far back as the
//! chain of trusted hops goes: the right-most untrusted hop is the first
//! address that no trusted party vouches for, hence the client.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::cidr::CidrSet;
use crate::errors::{ApiError, DenyReason};
use crate::policy::Client;

/// Longest slice of an offending entry echoed into an error, so that a huge
/// header cannot blow up log lines.
const MAX_ECHO: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XffError {
    /// The header, as far as it had to be read, is not a list of addresses.
    /// The text escapes and truncates the offending entry; it is safe to log
    /// but should not be sent back to the caller verbatim.
    #[error("malformed X-Forwarded-For: {0}")]
    Malformed(String),
}

/// The address a call comes from: the peer, or behind trusted proxies the
/// right-most untrusted `X-Forwarded-For` hop. A peer that is not an IP
/// socket (UDS, subrequest) is refused.
pub(crate) fn resolve(
    headers: &http::HeaderMap,
    peer: Option<IpAddr>,
    trusted: &CidrSet,
) -> Result<IpAddr, ApiError> {
    let peer = peer.ok_or_else(ApiError::ip_denied)?;
    let xff = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.as_bytes());
    resolve_client_ip(peer, xff, trusted)
        .map_err(|e| ApiError::invalid_argument("X-Forwarded-For", e).with_reason(DenyReason::Ip))
}

/// The client's allow-list (`whitelist`), if it has one, must contain `ip`.
pub fn check_allow_list(client: &Client, ip: IpAddr) -> Result<(), ApiError> {
    match &client.whitelist {
        Some(list) if !list.contains(ip) => Err(ApiError::ip_denied()),
        _ => Ok(()),
    }
}

/// Resolves the client address for allow-list checks.
///
/// * Peer not in `trusted`: the peer, and `X-Forwarded-For` is not looked at
///   (even if malformed).
/// * Peer trusted: all `xff_values` header lines, in order, form one
///   comma-separated list, walked right to left; the first entry outside
///   `trusted` is the client; if every entry is trusted, the left-most one is.
///   With no header at all the peer itself is the client.
/// * An entry reached during that walk that is empty, not UTF-8, or not an
///   address (`1.2.3.4`, `2001:db8::1`, `1.2.3.4:5678`, `[2001:db8::1]:443`,
///   `[2001:db8::1]`) fails the whole resolution so the caller can refuse.
///   Entries left of the client are never parsed: they are client-supplied
///   and cannot change the outcome.
///
/// IPv4-mapped IPv6 addresses are returned as IPv4.
pub fn resolve_client_ip<'a>(
    peer: IpAddr,
    xff_values: impl Iterator<Item = &'a [u8]>,
    trusted: &CidrSet,
) -> Result<IpAddr, XffError> {
    let peer = peer.to_canonical();
    if !trusted.contains(peer) {
        return Ok(peer);
    }
    // The walk is right to left across header lines, and the iterator only
    // goes forwards; this allocation happens only behind a trusted proxy.
    let lines: Vec<&[u8]> = xff_values.collect();
    let mut leftmost = peer;
    for line in lines.iter().rev() {
        for raw in line.rsplit(|&b| b == b',') {
            let hop = parse_entry(raw)?;
            if !trusted.contains(hop) {
                return Ok(hop);
            }
            leftmost = hop;
        }
    }
    Ok(leftmost)
}

fn parse_entry(raw: &[u8]) -> Result<IpAddr, XffError> {
    let entry = raw.trim_ascii();
    if entry.is_empty() {
        return Err(XffError::Malformed("empty entry".to_owned()));
    }
    let Ok(text) = std::str::from_utf8(entry) else {
        return Err(XffError::Malformed(format!(
            "entry is not UTF-8: \"{}\"",
            echo(entry)
        )));
    };
    parse_addr_with_optional_port(text)
        .map(|ip| ip.to_canonical())
        .ok_or_else(|| XffError::Malformed(format!("not an address: \"{}\"", echo(entry))))
}

fn parse_addr_with_optional_port(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let ip: Ipv6Addr = host.parse().ok()?;
        if !after.is_empty() && !after.strip_prefix(':').is_some_and(is_port) {
            return None;
        }
        return Some(IpAddr::V6(ip));
    }
    // Unbracketed `host:port` is only unambiguous for IPv4.
    let (host, port) = s.split_once(':')?;
    let ip: Ipv4Addr = host.parse().ok()?;
    is_port(port).then_some(IpAddr::V4(ip))
}

fn is_port(s: &str) -> bool {
    // `u16::from_str` alone would also take a leading `+`.
    (1..=5).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()) && s.parse::<u16>().is_ok()
}

fn echo(bytes: &[u8]) -> String {
    let cut = bytes.get(..MAX_ECHO).unwrap_or(bytes);
    let mut out = cut.escape_ascii().to_string();
    if cut.len() < bytes.len() {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cidr::parse_cidr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn trusted() -> CidrSet {
        let nets: Vec<_> = ["10.0.0.0/8", "fd00::/8"]
            .iter()
            .map(|c| parse_cidr(c).unwrap())
            .collect();
        CidrSet::new(&nets)
    }

    fn resolve(peer: &str, xff: &[&str]) -> Result<IpAddr, XffError> {
        resolve_client_ip(ip(peer), xff.iter().map(|s| s.as_bytes()), &trusted())
    }

    #[test]
    fn untrusted_peer_ignores_xff() {
        assert_eq!(
            resolve("203.0.113.9", &["198.51.100.1"]),
            Ok(ip("203.0.113.9"))
        );
        assert_eq!(resolve("203.0.113.9", &[]), Ok(ip("203.0.113.9")));
    }

    #[test]
    fn untrusted_peer_ignores_even_malformed_xff() {
        assert_eq!(
            resolve("203.0.113.9", &["garbage, ,"]),
            Ok(ip("203.0.113.9"))
        );
        let bad: &[u8] = b"\xff\xfe";
        assert_eq!(
            resolve_client_ip(ip("203.0.113.9"), std::iter::once(bad), &trusted()),
            Ok(ip("203.0.113.9"))
        );
    }

    #[test]
    fn untrusted_peer_is_normalised() {
        assert_eq!(
            resolve("::ffff:203.0.113.9", &["1.1.1.1"]),
            Ok(ip("203.0.113.9"))
        );
    }

    #[test]
    fn mapped_trusted_peer_is_recognised() {
        assert_eq!(
            resolve("::ffff:10.1.1.1", &["198.51.100.1"]),
            Ok(ip("198.51.100.1"))
        );
    }

    #[test]
    fn trusted_peer_without_xff_is_the_client() {
        assert_eq!(resolve("10.0.0.1", &[]), Ok(ip("10.0.0.1")));
    }

    #[test]
    fn rightmost_untrusted_entry_wins() {
        // The client can prepend anything; only the hop our proxy saw counts.
        assert_eq!(
            resolve("10.0.0.1", &["1.1.1.1, 198.51.100.7, 10.0.0.2"]),
            Ok(ip("198.51.100.7"))
        );
        // A spoofed trusted address further left does not matter either.
        assert_eq!(
            resolve("10.0.0.1", &["10.9.9.9, 198.51.100.7"]),
            Ok(ip("198.51.100.7"))
        );
    }

    #[test]
    fn all_trusted_gives_leftmost() {
        assert_eq!(
            resolve("10.0.0.1", &["10.0.0.5, 10.0.0.4,10.0.0.3"]),
            Ok(ip("10.0.0.5"))
        );
        assert_eq!(
            resolve("10.0.0.1", &["10.0.0.5", "10.0.0.4"]),
            Ok(ip("10.0.0.5"))
        );
    }

    #[test]
    fn multiple_header_lines_are_one_list() {
        assert_eq!(
            resolve("10.0.0.1", &["198.51.100.1, 10.0.0.9", "10.0.0.8"]),
            Ok(ip("198.51.100.1"))
        );
        // The later line is nearer to us, so it is walked first.
        assert_eq!(
            resolve("10.0.0.1", &["198.51.100.1", "198.51.100.2, 10.0.0.8"]),
            Ok(ip("198.51.100.2"))
        );
    }

    #[test]
    fn entry_forms_and_whitespace() {
        assert_eq!(
            resolve("10.0.0.1", &["  198.51.100.1\t"]),
            Ok(ip("198.51.100.1"))
        );
        assert_eq!(resolve("10.0.0.1", &["2001:db8::1"]), Ok(ip("2001:db8::1")));
        assert_eq!(
            resolve("10.0.0.1", &["198.51.100.1:5678"]),
            Ok(ip("198.51.100.1"))
        );
        assert_eq!(
            resolve("10.0.0.1", &["[2001:db8::1]:443"]),
            Ok(ip("2001:db8::1"))
        );
        assert_eq!(
            resolve("10.0.0.1", &["[2001:db8::1]"]),
            Ok(ip("2001:db8::1"))
        );
        assert_eq!(
            resolve("10.0.0.1", &["::ffff:198.51.100.1"]),
            Ok(ip("198.51.100.1"))
        );
        assert_eq!(
            resolve("10.0.0.1", &["[::ffff:10.0.0.3]:80, fd00::1"]),
            Ok(ip("10.0.0.3"))
        );
    }

    #[test]
    fn trusted_ipv6_hops_are_skipped() {
        assert_eq!(
            resolve("fd00::1", &["2001:db8::7, [fd00::2]:8443"]),
            Ok(ip("2001:db8::7"))
        );
    }

    #[test]
    fn malformed_reached_entry_fails_closed() {
        for bad in [
            "unknown",
            "1.2.3.4:",
            "1.2.3.4:65536",
            "1.2.3.4:+80",
            "1.2.3.4:123456",
            "1.2.3.4:80:90",
            "2001:db8::1:443x",
            "[2001:db8::1]443",
            "[2001:db8::1]:",
            "[1.2.3.4]:80",
            "[2001:db8::1",
            "1.2.3",
            "_hidden",
            "fe80::1%eth0",
        ] {
            let r = resolve("10.0.0.1", &[bad]);
            assert!(matches!(r, Err(XffError::Malformed(_))), "{bad:?} -> {r:?}");
        }
        // Behind a trusted hop, still reached.
        assert!(resolve("10.0.0.1", &["bogus, 10.0.0.7"]).is_err());
    }

    #[test]
    fn empty_entries_fail_closed() {
        for bad in [
            "",
            "   ",
            "198.51.100.1,",
            ",198.51.100.1, ,10.0.0.2",
            "10.0.0.2,,10.0.0.3",
        ] {
            let r = resolve("10.0.0.1", &[bad]);
            assert_eq!(
                r,
                Err(XffError::Malformed("empty entry".to_owned())),
                "{bad:?}"
            );
        }
        assert!(resolve("10.0.0.1", &["198.51.100.1", ""]).is_err());
    }

    #[test]
    fn non_utf8_fails_closed() {
        let line: &[u8] = b"10.0.0.2, \xc3\x28";
        let r = resolve_client_ip(ip("10.0.0.1"), std::iter::once(line), &trusted());
        assert_eq!(
            r,
            Err(XffError::Malformed(
                "entry is not UTF-8: \"\\xc3(\"".to_owned()
            ))
        );
    }

    #[test]
    fn entries_beyond_the_client_are_not_parsed() {
        assert_eq!(
            resolve(
                "10.0.0.1",
                &["garbage, , \u{00e9}", "198.51.100.3, 10.0.0.2"]
            ),
            Ok(ip("198.51.100.3"))
        );
        let bad: &[u8] = b"\xff, 198.51.100.3";
        assert_eq!(
            resolve_client_ip(ip("10.0.0.1"), std::iter::once(bad), &trusted()),
            Ok(ip("198.51.100.3"))
        );
    }

    #[test]
    fn error_text_is_escaped_and_truncated() {
        let long = format!("x\n{}", "a".repeat(500));
        let Err(XffError::Malformed(msg)) = resolve("10.0.0.1", &[&long]) else {
            panic!("expected error");
        };
        assert!(!msg.contains('\n'));
        assert!(msg.len() < 120, "{msg}");
        assert!(msg.ends_with("...\""), "{msg}");
    }
}
