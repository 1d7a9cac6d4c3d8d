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
    /// The body as sent, for [`BodyUse::Document`].
    pub(crate) document: Vec<u8>,
}

/// Refuses a header block over `limits.max_header_bytes`: Pingora's own
/// ceiling is 1 MiB, far more than any API client needs and a cheap way to
/// make the gateway buffer and scan.
pub(crate) fn check_header_size(session: &mut Session, max: usize) -> Result<(), ApiError> {
    if header_block_len(session.req_header()) > max {
        session.set_keepalive(None);
        return Err(ApiError::headers_too_large(max).filter_failure("request", "too_large"));
    }
    Ok(())
}

/// Reads and checks the body and the parameters.
pub(crate) async fn read(
    session: &mut Session,
    settings: &Settings,
    body_use: BodyUse,
    ctx: &mut Ctx,
) -> Result<Intake, ApiError> {
    let limits = &settings.limits;
    let req = session.req_header();
    if let Some(enc) = header_str(req, "content-encoding") {
        if !enc.eq_ignore_ascii_case("identity") {
            return Err(
                ApiError::unsupported_encoding(&format!("with Content-Encoding {enc}"))
                    .filter_failure("request", "encoding"),
            );
        }
    }
    let content_type = header_str(req, "content-type")
        .unwrap_or("")
        .to_ascii_lowercase();
    let query = req.uri.query().map(str::to_string);
    // A slow client's body is time the gateway waits, not work it does.
    let waiting = Instant::now();
    let body = read_body(session, settings, ctx).await;
    ctx.client_wait += waiting.elapsed();
    let body = body?;
    crate::ops::metrics::BYTES_IN.inc_by(body.len() as u64);

    if let BodyUse::Document = body_use {
        let params = Params::parse_limited(query.as_deref(), None, limits.max_parameters)?;
        return Ok(Intake {
            params,
            json: None,
            document: body,
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
    Ok(Intake {
        params,
        json,
        document: Vec::new(),
    })
}

/// Reads the whole request body within `limits.max_request_body_bytes` and
/// the downstream time-outs.
async fn read_body(
    session: &mut Session,
    settings: &Settings,
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
    // after the client's own time-out, or never.
    if header_str(session.req_header(), "expect")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"))
        && !session.is_body_done()
    {
        session.write_continue_response().await.map_err(|e| {
            ApiError::invalid_argument(
                "body",
                format!(
                    "could not ask for the request body ({})",
                    e.etype().as_str()
                ),
            )
        })?;
    }
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

pub(crate) fn header_str<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}
