//! `recordgate health`: the container's health check, made by the binary
//! itself so that the image needs no HTTP client. One `GET` over a plain
//! std socket, every step bounded by one overall time-out; healthy when the
//! answer is `200`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Most bytes read while waiting for the status line: an operator listener
/// sends it first, and anything longer is not one.
const MAX_STATUS_LINE_BYTES: usize = 1024;

/// `http://host:port/path` split into the address to connect to, the
/// `Host` header and the path. Only plain HTTP: the operator listener has no
/// TLS.
fn parse_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("{url}: no host"));
    }
    // A port is required unless the authority ends in one; `[::1]` alone
    // ends in `]`.
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && !p.contains(']'));
    let authority = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, path.to_string()))
}

fn remaining(deadline: Instant) -> Result<Duration, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err("timed out".into())
    } else {
        Ok(left)
    }
}

/// The status `url` answers a `GET` with, within `timeout` in all.
pub fn probe(url: &str, timeout: Duration) -> Result<u16, String> {
    let deadline = Instant::now() + timeout;
    let (authority, path) = parse_url(url)?;
    let addrs: Vec<SocketAddr> = authority
        .to_socket_addrs()
        .map_err(|e| format!("{authority}: {e}"))?
        .collect();
    let mut stream = None;
    let mut last = format!("{authority}: no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, remaining(deadline)?) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    let mut stream = stream.ok_or(last)?;
    let io = |e: std::io::Error| format!("{url}: {e}");
    stream
        .set_write_timeout(Some(remaining(deadline)?))
        .map_err(io)?;
    // HTTP/1.0 and `close`: the answer ends with the connection.
    let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\nUser-Agent: recordgate-health\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            return status_of(&buf[..end]).ok_or_else(|| {
                format!(
                    "{url}: not an HTTP status line: {:?}",
                    String::from_utf8_lossy(&buf[..end])
                )
            });
        }
        if buf.len() > MAX_STATUS_LINE_BYTES {
            return Err(format!(
                "{url}: no status line in the first {MAX_STATUS_LINE_BYTES} bytes"
            ));
        }
        stream
            .set_read_timeout(Some(remaining(deadline)?))
            .map_err(io)?;
        let n = stream.read(&mut chunk).map_err(io)?;
        if n == 0 {
            return Err(format!("{url}: closed before a status line"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn status_of(line: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// The `/readyz` URL of the operator listener `metrics.listen`: an
/// unspecified address (`0.0.0.0`, `[::]`) is reached on loopback.
pub fn readyz_url(metrics_listen: &str) -> Result<String, String> {
    let addr: SocketAddr = metrics_listen
        .parse()
        .map_err(|_| format!("metrics.listen: {metrics_listen:?} is not an addr:port"))?;
    let addr = match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, a.port()))
        }
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port()))
        }
        a => a,
    };
    Ok(format!("http://{addr}/readyz"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_status_lines() {
        assert_eq!(
            parse_url("http://127.0.0.1:9090/readyz").unwrap(),
            ("127.0.0.1:9090".into(), "/readyz".into())
        );
        assert_eq!(
            parse_url("http://[::1]").unwrap(),
            ("[::1]:80".into(), "/".into())
        );
        assert!(parse_url("https://x:1/").is_err());
        assert_eq!(status_of(b"HTTP/1.1 503 Service Unavailable"), Some(503));
        assert_eq!(status_of(b"SSH-2.0-OpenSSH"), None);
        assert_eq!(
            readyz_url("0.0.0.0:9090").unwrap(),
            "http://127.0.0.1:9090/readyz"
        );
        assert_eq!(readyz_url("[::]:9090").unwrap(), "http://[::1]:9090/readyz");
    }
}
