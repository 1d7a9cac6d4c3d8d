//! The intake stage: what is read and checked before any decision, the same
//! for record routes and the management API. Header size, content codings,
//! the body (bounded in size and time), its media type, and the parameters
//! (bounded in number, duplicates refused).

use std::time::{Duration, Instant};

use pingora::http::RequestHeader;
use pingora::prelude::Session;
use pingora::ErrorType;
use serde_json::Value;

use crate::config::routes::RequestRecords;
use crate::config::settings::Settings;
use crate::connection::tap::TapStream;
use crate::errors::{ApiError, Counter};
use crate::filter::json::parse_record;
use crate::params::Params;
use crate::proxy::ctx::Ctx;

/// How a call's body is read.
#[derive(Clone, Copy)]
pub(crate) enum BodyUse {
    /// A record route: a form, or a JSON record where the route takes one.
    Route(RequestRecords),
    /// A Capture management endpoint: a form.
    Form,
    /// The Roles API: the body is a JSON document its operation reads; only
    /// the query carries parameters.
    Document,
}

/// What the intake read.
pub(crate) struct Intake {
    pub(crate) params: Params,
    /// The JSON record of a route that takes one.
    pub(crate) json: Option<Value>,
    /// The body as sent: the Roles API's document, and what a client in
    /// shadow mode has forwarded.
    pub(crate) body: Vec<u8>,
}

/// The request line and header, before anything else: the header block
/// within `limits.max_header_bytes` (Pingora's own ceiling is 1 MiB, far
/// more than any API client needs and a cheap way to make the gateway buffer
/// and scan), an origin-form target of visible ASCII, one valid `Host`
/// (RFC 9112 §3.2), and only the codings the gateway implements.
///
/// The same checks hold for an HTTP/2 stream (its pseudo-header fields
/// become the method, target and authority). There `set_keepalive(None)`
/// does nothing: a refusal ends its own stream, and the connection's
/// framing is the `h2` layer's, which resets a malformed stream itself.
pub(crate) fn check_head(session: &mut Session, max: usize) -> Result<(), ApiError> {
    if header_block_len(session.req_header()) > max {
        session.set_keepalive(None);
        return Err(ApiError::headers_too_large(max).filter_failure("request", "too_large"));
    }
    // Absolute-form (`http://host/path`) and asterisk-form targets name
    // something other than this gateway's routes; anything but visible
    // ASCII is refused. A space, control byte, `<`, `>` or `"` never gets
    // here raw: Pingora percent-encodes such a target before parsing, which
    // `sent_as_parsed` detects from the client's own bytes (RFC 9112 §3.2:
    // 400, not a guess at what was meant).
    let req = session.req_header();
    let target = req.raw_path();
    if target.first() != Some(&b'/')
        || !target.iter().all(|b| (0x21..0x7f).contains(b))
        || !sent_as_parsed(session)
    {
        session.set_keepalive(None);
        return Err(ApiError::invalid_argument(
            "request target",
            "the target must be a path of visible ASCII characters",
        ));
    }
    let req = session.req_header();
    let mut hosts = req.headers.get_all(http::header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        // HTTP/2 carries `:authority` in its place (RFC 9113 §8.3.1): it is
        // checked as the Host would be. Pingora has already refused an
        // HTTP/2 request with neither, or with a Host that disagrees.
        (None, _) if req.version == http::Version::HTTP_2 => {
            if !req.uri.authority().is_some_and(|a| valid_host(a.as_str())) {
                return Err(ApiError::invalid_argument(
                    ":authority",
                    "the :authority is not a host[:port]",
                ));
            }
        }
        // HTTP/1.0 may omit it.
        (None, _) if req.version != http::Version::HTTP_11 => {}
        (None, _) => {
            return Err(ApiError::invalid_argument(
                "Host",
                "the Host header is missing",
            ));
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_argument(
                "Host",
                "more than one Host header",
            ));
        }
        (Some(host), None) => {
            if !host.to_str().is_ok_and(valid_host) {
                return Err(ApiError::invalid_argument(
                    "Host",
                    "the Host header is not a host[:port]",
                ));
            }
        }
    }
    // Transfer codings: chunked alone (RFC 9112 §6.1: anything else is
    // 501). The connection closes: its framing cannot be trusted. Over
    // HTTP/2 the `h2` crate has already refused the stream (RFC 9113
    // §8.2.2: Transfer-Encoding, Connection and a TE other than
    // `trailers` make a request malformed), so this is HTTP/1.1's.
    let mut codings = req.headers.get_all(http::header::TRANSFER_ENCODING).iter();
    if let Some(first) = codings.next() {
        let only_chunked = codings.next().is_none()
            && first
                .to_str()
                .is_ok_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
        if !only_chunked {
            session.set_keepalive(None);
            return Err(
                ApiError::unsupported_transfer_coding().filter_failure("request", "encoding")
            );
        }
    }
    // Content codings: identity only, on every line.
    for enc in req.headers.get_all(http::header::CONTENT_ENCODING) {
        let identity = enc
            .to_str()
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("identity"));
        if !identity {
            return Err(ApiError::unsupported_encoding(&format!(
                "with Content-Encoding {}",
                String::from_utf8_lossy(enc.as_bytes()).escape_default()
            ))
            .filter_failure("request", "encoding"));
        }
    }
    Ok(())
}

/// Whether the HTTP/1 request line Pingora parsed is, byte for byte, the one
/// the client sent. HTTP/2 carries the target in its own framing, which
/// Pingora does not rewrite. A connection without the tap (which
/// `connection::Connections` puts on every one) cannot be checked, so it
/// fails.
fn sent_as_parsed(session: &Session) -> bool {
    let Some(stream) = session.as_downstream().stream() else {
        return true;
    };
    let Some(tap) = stream.as_any().downcast_ref::<TapStream>() else {
        return false;
    };
    let req = session.req_header();
    tap.sent_request_line(req.method.as_str().as_bytes(), req.raw_path())
}

/// Reads and checks the body and the parameters. `admit` runs before an
/// `Expect: 100-continue` caller is asked for its body: the credentials in
/// the header and the allow-list are checked first.
pub(crate) async fn read(
    session: &mut Session,
    settings: &Settings,
    body_use: BodyUse,
    admit: impl FnOnce(&Session) -> Result<(), ApiError>,
    ctx: &mut Ctx,
) -> Result<Intake, ApiError> {
    let limits = &settings.limits;
    let req = session.req_header();
    let content_type = header_str(req, "content-type")
        .unwrap_or("")
        .to_ascii_lowercase();
    let query = req.uri.query().map(str::to_string);
    // A slow client's body is time the gateway waits, not work it does.
    let waiting = Instant::now();
    let body = read_body(session, settings, admit, ctx).await;
    ctx.client_wait += waiting.elapsed();
    let body = body?;
    crate::ops::metrics::BYTES_IN.inc_by(body.len() as u64);

    if let BodyUse::Document = body_use {
        let params = Params::parse_limited(query.as_deref(), None, limits.max_parameters)?;
        return Ok(Intake {
            params,
            json: None,
            body,
        });
    }
    let media = content_type.split(';').next().unwrap_or("").trim();
    let takes_json = matches!(body_use, BodyUse::Route(RequestRecords::JsonBody));
    let mut json = None;
    let form = if body.is_empty() {
        None
    } else if media == "application/x-www-form-urlencoded" {
        if !utf8_charset(&content_type) {
            return Err(
                ApiError::unsupported_encoding("in a charset other than UTF-8")
                    .filter_failure("request", "encoding"),
            );
        }
        Some(&body[..])
    } else if media == "application/json" && takes_json {
        let v = parse_record(&body, limits.max_json_depth).map_err(|e| {
            ApiError::invalid_argument("body", e).filter_failure("request", "malformed")
        })?;
        json = Some(v);
        None
    } else {
        return Err(ApiError::unsupported_encoding(&format!(
            "of type {:?}",
            if media.is_empty() { "none" } else { media }
        ))
        .filter_failure("request", "encoding"));
    };
    let params = Params::parse_limited(query.as_deref(), form, limits.max_parameters)?;
    Ok(Intake { params, json, body })
}

/// Reads the whole request body within `limits.max_request_body_bytes` and
/// the downstream time-outs.
async fn read_body(
    session: &mut Session,
    settings: &Settings,
    admit: impl FnOnce(&Session) -> Result<(), ApiError>,
    ctx: &mut Ctx,
) -> Result<Vec<u8>, ApiError> {
    let limit = settings.limits.max_request_body_bytes;
    if let Some(len) =
        header_str(session.req_header(), "content-length").and_then(|v| v.parse::<usize>().ok())
    {
        if len > limit {
            return Err(ApiError::request_too_large(limit).filter_failure("request", "too_large"));
        }
    }
    session.set_read_timeout(Some(Duration::from_millis(
        settings.timeouts.downstream_read_ms,
    )));
    // A client that asked (curl does for bodies over 1 KiB) waits for
    // this before sending the body; without it the body arrives only
    // after the client's own time-out, or never. Only HTTP/1.1 has it
    // (RFC 9110 §10.1.1), and only a caller that may call is asked: a
    // refused one is answered without its body, on a connection that then
    // closes (the body it may still send cannot be told from a request).
    // HTTP/2 has no interim response to send here (Pingora drops 1xx on
    // h2); its flow-control window (`http2.stream_window_bytes`) bounds
    // what a client sends unasked, and a client that waits for a 100
    // sends after its own short wait.
    if session.req_header().version == http::Version::HTTP_11
        && header_str(session.req_header(), "expect")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"))
        && !session.is_body_done()
    {
        if let Err(e) = admit(session) {
            session.set_keepalive(None);
            return Err(e);
        }
        // Pingora turns keep-alive off for any response header written
        // before the body is read, the interim 100 included; the exchange is
        // still well framed, so the connection's keep-alive is restored.
        let keepalive = session.get_keepalive();
        session.write_continue_response().await.map_err(|e| {
            ApiError::invalid_argument(
                "body",
                format!(
                    "could not ask for the request body ({})",
                    e.etype().as_str()
                ),
            )
        })?;
        session.set_keepalive(keepalive);
    }
    // Over HTTP/2 Pingora has no per-read time-out (the one set above
    // applies to HTTP/1.1 only): this total one bounds both.
    let total = Duration::from_millis(settings.timeouts.downstream_body_ms);
    match tokio::time::timeout(total, read_limited(session, limit, ctx)).await {
        Ok(read) => read,
        Err(_) => {
            session.set_keepalive(None);
            Err(ApiError::request_timeout(format!(
                "the request body did not arrive within {} ms",
                total.as_millis()
            ))
            .counted(Counter::ClientTimeout("body")))
        }
    }
}

/// Reads the whole request body, refusing it once it passes `limit`.
async fn read_limited(
    session: &mut Session,
    limit: usize,
    ctx: &mut Ctx,
) -> Result<Vec<u8>, ApiError> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                // Counted as it arrives, so the access log shows what a
                // refused or cut-off body had sent.
                ctx.bytes_in += chunk.len() as u64;
                if body.len() + chunk.len() > limit {
                    return Err(
                        ApiError::request_too_large(limit).filter_failure("request", "too_large")
                    );
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) if e.etype() == &ErrorType::ReadTimedout => {
                session.set_keepalive(None);
                return Err(ApiError::request_timeout(
                    "the client stopped sending the request body".into(),
                )
                .counted(Counter::ClientTimeout("body")));
            }
            Err(e) => {
                return Err(ApiError::invalid_argument(
                    "body",
                    format!(
                        "the request body could not be read ({})",
                        e.etype().as_str()
                    ),
                ))
            }
        }
    }
    Ok(body)
}

/// A `Host` (or `:authority`): host and optional port, no user info.
fn valid_host(h: &str) -> bool {
    !h.is_empty() && !h.contains('@') && h.parse::<http::uri::Authority>().is_ok()
}

/// Size of the request line and header block as sent, give or take the
/// separators.
fn header_block_len(req: &RequestHeader) -> usize {
    let line = req.method.as_str().len() + req.raw_path().len() + 12;
    req.headers
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

/// Form fields are decoded as UTF-8 here; an upstream told another charset
/// would read different names and values than the ones that were checked.
fn utf8_charset(content_type: &str) -> bool {
    content_type
        .split(';')
        .skip(1)
        .filter_map(|p| p.split_once('='))
        .filter(|(k, _)| k.trim() == "charset")
        .all(|(_, v)| {
            let v = v.trim().trim_matches('"');
            v == "utf-8" || v == "utf8" || v == "us-ascii"
        })
}

/// The subject commonName of the client certificate this connection's TLS
/// handshake verified, as the TLS listener recorded it
/// (`tls::ClientCertificate`); `None` on a plain connection or without a
/// client certificate.
pub(crate) fn tls_client_subject(session: &Session) -> Option<&str> {
    session
        .digest()?
        .ssl_digest
        .as_ref()?
        .extension
        .get::<crate::tls::ClientCertificate>()
        .map(|c| c.subject_common_name.as_str())
}

pub(crate) fn header_str<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}
