//! The respond stage: the one exit. Whatever the earlier stages produced, a
//! reply to write, a response the relay already streamed, or a failure, is
//! answered here, and here only the decision label, the failure counters and
//! the status for the access log are set. Failures are rendered in the shape
//! of the API that was called: Capture's envelope or CONNECT's
//! `ErrorResponse`.

use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::prelude::Session;
use pingora::{Error, ErrorType, Result};

use crate::errors::{ApiError, Counter, DenyReason, Failure};
use crate::ops::metrics;
use crate::proxy::ctx::Ctx;

pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A complete response, still to be written.
pub(crate) struct Reply {
    pub(crate) header: ResponseHeader,
    pub(crate) body: Option<Bytes>,
}

/// A streamed response's end. Its header is on the wire, so a failure can
/// only cut the connection.
pub(crate) enum StreamEnd {
    Complete,
    /// The connection was cut: counted under `counter`, decided `upstream`.
    Cut {
        counter: Counter,
    },
    /// Writing to the client failed.
    Downstream(Box<Error>),
}

/// What the stages produced for one request. One per request, moved once:
/// boxing the larger variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Answer {
    Reply(Reply),
    Streamed(StreamEnd),
}

/// The one exit: writes the answer or the failure and records its outcome.
pub(crate) async fn respond(
    session: &mut Session,
    ctx: &mut Ctx,
    outcome: std::result::Result<Answer, Failure>,
    capture_compat_status: bool,
) -> Result<()> {
    // Pingora turns keep-alive off only for requests that start after
    // shutdown began; a response written during the drain must not promise
    // a connection that is about to close.
    if session.is_process_shutting_down() {
        session.set_keepalive(None);
    }
    match outcome {
        Ok(Answer::Reply(mut reply)) => {
            ctx.status = reply.header.status.as_u16();
            reply
                .header
                .insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
            write_whole_response(session, ctx, reply.header, reply.body).await
        }
        Ok(Answer::Streamed(StreamEnd::Complete)) => Ok(()),
        Ok(Answer::Streamed(StreamEnd::Downstream(e))) => Err(e),
        Ok(Answer::Streamed(StreamEnd::Cut { counter })) => {
            ctx.decision = DenyReason::Upstream.label();
            count(counter);
            Err(Error::explain(
                ErrorType::HTTPStatus(502),
                "streamed response could not be filtered",
            ))
        }
        Err(failure) => {
            ctx.decision = failure.decision().label();
            let (status, body, www_authenticate) = match &failure {
                Failure::Capture(e) => {
                    if let Some(c) = e.counter {
                        count(c);
                    }
                    (
                        e.status(capture_compat_status),
                        e.body(&ctx.request_id),
                        e.http_status == 401,
                    )
                }
                Failure::Connect(e) => (e.status, e.body(&ctx.request_id), false),
            };
            ctx.status = status;
            let mut header = ResponseHeader::build(status, Some(6))?;
            header.insert_header(header::CONTENT_TYPE, "application/json")?;
            header.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
            header.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
            if matches!(failure, Failure::Connect(_)) {
                header.insert_header(header::CACHE_CONTROL, "no-store")?;
            }
            if www_authenticate {
                header.insert_header(header::WWW_AUTHENTICATE, "Basic realm=\"recordgate\"")?;
            }
            if let Some(secs) = failure.retry_after_secs() {
                header.insert_header(header::RETRY_AFTER, secs.to_string())?;
            }
            let head = session.req_header().method == http::Method::HEAD;
            let body = (!head).then(|| Bytes::from(body));
            write_whole_response(session, ctx, header, body).await
        }
    }
}

fn count(counter: Counter) {
    {
        match counter {
            Counter::FilterFailure { direction, kind } => {
                metrics::FILTER_FAILURES.inc(&[direction, kind])
            }
            Counter::UpstreamError(kind) => metrics::UPSTREAM_ERRORS.inc(&[kind]),
            Counter::ClientTimeout(phase) => metrics::CLIENT_TIMEOUTS.inc(&[phase]),
            Counter::UpstreamTooLarge => {
                metrics::UPSTREAM_ERRORS.inc(&["too_large"]);
                metrics::FILTER_FAILURES.inc(&["response", "too_large"]);
            }
        }
    }
}

/// A JSON reply of the management API (never cached).
pub(crate) fn json_reply(
    status: u16,
    body: Vec<u8>,
    head: bool,
) -> std::result::Result<Reply, ApiError> {
    let internal = |e: Box<Error>| ApiError::internal(e.to_string());
    let mut header = ResponseHeader::build(status, Some(4)).map_err(internal)?;
    header
        .insert_header(header::CONTENT_TYPE, "application/json")
        .map_err(internal)?;
    header
        .insert_header(header::CONTENT_LENGTH, body.len().to_string())
        .map_err(internal)?;
    header
        .insert_header(header::CACHE_CONTROL, "no-store")
        .map_err(internal)?;
    Ok(Reply {
        header,
        body: (!head).then(|| Bytes::from(body)),
    })
}

/// The reply once the whole body is known.
pub(crate) fn with_length(
    mut header: ResponseHeader,
    body: Bytes,
) -> std::result::Result<Reply, ApiError> {
    header
        .insert_header(header::CONTENT_LENGTH, HeaderValue::from(body.len()))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Reply {
        header,
        body: Some(body),
    })
}

/// Writes a complete response: header and body as two writes, not one list
/// of tasks, because Pingora copies the body of a task list into its own
/// buffer but writes a lone body task straight from the `Bytes`.
async fn write_whole_response(
    session: &mut Session,
    ctx: &mut Ctx,
    header: ResponseHeader,
    body: Option<Bytes>,
) -> Result<()> {
    // Writing waits on the client's reading: not the gateway's own work.
    let waiting = Instant::now();
    let written = session
        .write_response_header(Box::new(header), body.is_none())
        .await;
    ctx.client_wait += waiting.elapsed();
    written?;
    // With no body this only ends the response.
    write_body(session, ctx, body, true).await
}

/// Writes response body bytes to the client (`end`: the last of them),
/// counting them and the time the write waited on the client.
pub(crate) async fn write_body(
    session: &mut Session,
    ctx: &mut Ctx,
    body: Option<Bytes>,
    end: bool,
) -> Result<()> {
    if let Some(body) = &body {
        metrics::BYTES_OUT.inc_by(body.len() as u64);
        ctx.bytes_out += body.len() as u64;
    }
    let waiting = Instant::now();
    let written = session.write_response_body(body, end).await;
    ctx.client_wait += waiting.elapsed();
    written
}
