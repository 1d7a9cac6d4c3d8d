//! The relay stage: the upstream's response on its way back, cut to the
//! caller's read schema by the streaming filter. Until the filtered output
//! passes `limits.stream_responses_over_bytes` nothing is sent, so any
//! failure is still a clean 502; past it the response streams (chunked) and
//! a failure cuts the connection, so the client never sees a syntactically
//! complete unfiltered body. Bodies without records are relayed whole,
//! within `limits.max_response_body_bytes`.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::header;
use pingora::http::ResponseHeader;
use pingora::prelude::Session;

use crate::config::routes::ResponseRecords;
use crate::config::settings::Limits;
use crate::decide::routes::Access;
use crate::decide::{Pass, Permit, RoutePermit};
use crate::errors::{ApiError, Counter};
use crate::filter::response::{FilterFailure, StreamFilter};
use crate::filter::shadow::ShadowRead;
use crate::ops::metrics;
use crate::proxy::ctx::Ctx;
use crate::proxy::forward::{OpenResponse, Outgoing, Upstream, UpstreamError, HOP_BY_HOP};
use crate::proxy::respond::{with_length, write_body, Answer, Reply, StreamEnd, X_REQUEST_ID};

/// An upstream exchange in progress: it records the upstream time, once,
/// when it ends.
pub(crate) struct Exchange<'u> {
    open: OpenResponse<'u>,
    sent_at: Instant,
}

impl<'u> Exchange<'u> {
    /// Sends a permitted call upstream (the forward stage) and starts the
    /// clock on the exchange.
    pub(crate) async fn begin(
        upstream: &'u Upstream,
        permit: &Permit<'_>,
        outgoing: &Outgoing,
        ctx: &mut Ctx,
    ) -> Result<Exchange<'u>, ApiError> {
        let idempotent = permit
            .route
            .as_ref()
            .is_some_and(|r| r.route.access == Access::Read);
        let sent_at = Instant::now();
        let forwarded = upstream
            .forward(permit, outgoing, idempotent, &mut ctx.upstream_addr)
            .await;
        Self::started(forwarded, sent_at, ctx)
    }

    fn started(
        forwarded: Result<OpenResponse<'u>, UpstreamError>,
        sent_at: Instant,
        ctx: &mut Ctx,
    ) -> Result<Exchange<'u>, ApiError> {
        match forwarded {
            Ok(open) => Ok(Exchange { open, sent_at }),
            Err(e) => {
                ctx.upstream_time = sent_at.elapsed();
                Err(e.answer())
            }
        }
    }

    /// Sends a call that passes as sent (shadow mode) upstream.
    pub(crate) async fn begin_as_sent(
        upstream: &'u Upstream,
        pass: &Pass<'_>,
        outgoing: &Outgoing,
        idempotent: bool,
        ctx: &mut Ctx,
    ) -> Result<Exchange<'u>, ApiError> {
        let sent_at = Instant::now();
        let forwarded = upstream
            .forward_as_sent(pass, outgoing, idempotent, &mut ctx.upstream_addr)
            .await;
        Self::started(forwarded, sent_at, ctx)
    }

    /// The body was read to its end: the connection goes back to the pool.
    async fn finish(self, ctx: &mut Ctx) {
        ctx.upstream_time = self.sent_at.elapsed();
        self.open.finish().await;
    }

    /// The exchange is abandoned midway: the connection is closed.
    async fn abandon(self, ctx: &mut Ctx) {
        ctx.upstream_time = self.sent_at.elapsed();
        self.open.abandon().await;
    }
}

/// Relays the response of a permitted record-route call.
pub(crate) async fn relay(
    session: &mut Session,
    ctx: &mut Ctx,
    mut exchange: Exchange<'_>,
    permit: &RoutePermit<'_>,
    limits: &Limits,
    allow: &[String],
) -> Result<Answer, ApiError> {
    let route = permit.route;
    let is_head = session.req_header().method == http::Method::HEAD;
    let (bodiless, header, filterable, declared_len) = {
        let upstream = match exchange.open.header() {
            Ok(h) => h,
            Err(e) => {
                exchange.abandon(ctx).await;
                return Err(e.answer());
            }
        };
        let status = upstream.status.as_u16();
        let bodiless = is_head || status == 204 || status == 304 || (100..200).contains(&status);
        let filterable = if bodiless {
            Ok(())
        } else {
            check_filterable(route.response_records, upstream)
        };
        let declared_len = upstream
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        (
            bodiless,
            client_header(upstream, allow),
            filterable,
            declared_len,
        )
    };
    let header = match (header, filterable) {
        (Ok(header), Ok(())) => header,
        (Err(e), _) | (_, Err(e)) => {
            exchange.abandon(ctx).await;
            return Err(e);
        }
    };
    if bodiless {
        exchange.finish(ctx).await;
        // HEAD keeps no Content-Length: the unfiltered length would tell
        // the caller how much it is not allowed to see.
        return Ok(Answer::Reply(Reply { header, body: None }));
    }
    // Sized from Content-Length, capped where buffering would stop anyway,
    // so a lying upstream cannot make the gateway reserve more.
    let reserve = declared_len.unwrap_or(0).min(
        limits
            .stream_responses_over_bytes
            .saturating_add(1)
            .min(limits.max_response_body_bytes),
    );
    if route.response_records == ResponseRecords::None {
        return match read_unfiltered(&mut exchange.open, reserve, limits.max_response_body_bytes)
            .await
        {
            Ok(body) => {
                exchange.finish(ctx).await;
                Ok(Answer::Reply(with_length(header, body.freeze())?))
            }
            Err(e) => {
                exchange.abandon(ctx).await;
                Err(e.answer())
            }
        };
    }
    let relative_to = if route.access == Access::Read {
        permit.attribute_name.as_ref()
    } else {
        None
    };
    let mut filter = StreamFilter::for_response(
        route.response_records,
        permit.grants.read,
        relative_to,
        limits.max_json_depth,
    );
    // Output never exceeds the input by more than a `null` per replaced
    // scalar; reserving the input size avoids regrowth.
    let mut out = Vec::with_capacity(reserve);
    let mut shadow = permit.grants.shadow_read.map(|tree| {
        ShadowRead::new(
            route.response_records,
            tree,
            relative_to,
            limits.max_json_depth,
            reserve,
        )
    });
    let mut seen = 0usize;
    loop {
        match exchange.open.next_chunk().await {
            Ok(Some(chunk)) => {
                seen += chunk.len();
                let streams = seen > limits.stream_responses_over_bytes;
                // Nothing is sent yet, so either limit is still a clean 502:
                // the buffered one, or the streaming one if this chunk would
                // start the stream already past it.
                if seen > limits.max_response_body_bytes
                    || (streams && seen as u64 > limits.max_streamed_response_bytes)
                {
                    exchange.abandon(ctx).await;
                    return Err(UpstreamError::TooLarge.answer());
                }
                if let Err(e) = filter.feed(chunk, &mut out) {
                    exchange.abandon(ctx).await;
                    return Err(unfilterable(e.failure()));
                }
                if let Some(shadow) = &mut shadow {
                    shadow.feed(chunk);
                }
                if streams {
                    if let Some(shadow) = &mut shadow {
                        shadow.streaming();
                    }
                    let filters = (filter, shadow);
                    let end =
                        stream(session, ctx, exchange, header, filters, out, seen, limits).await;
                    return Ok(Answer::Streamed(end));
                }
            }
            Ok(None) => break,
            Err(e) => {
                exchange.abandon(ctx).await;
                return Err(e.answer());
            }
        }
    }
    exchange.finish(ctx).await;
    let removed = filter
        .finish(&mut out)
        .map_err(|e| unfilterable(e.failure()))?;
    if removed > 0 {
        metrics::FILTERED_RESPONSE.inc_by(removed as u64);
    }
    report_shadow(ctx, shadow);
    Ok(Answer::Reply(with_length(header, Bytes::from(out))?))
}

/// Sends the rest of the response while filtering it. From here on the
/// header is on the wire, so a failure can no longer become a 502: the
/// connection is cut instead (no final chunk). `out` holds what the first
/// `seen` bytes were filtered to.
#[allow(clippy::too_many_arguments)]
async fn stream(
    session: &mut Session,
    ctx: &mut Ctx,
    mut exchange: Exchange<'_>,
    mut header: ResponseHeader,
    (mut filter, mut shadow): (StreamFilter<'_>, Option<ShadowRead<'_>>),
    mut out: Vec<u8>,
    seen: usize,
    limits: &Limits,
) -> StreamEnd {
    const FLUSH_AT: usize = 32 << 10;
    let mut seen = seen as u64;
    ctx.status = header.status.as_u16();
    let started = async {
        header.insert_header("transfer-encoding", "chunked")?;
        header.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
        // Writing waits on the client's reading: not the gateway's own work.
        let waiting = Instant::now();
        let written = session.write_response_header(Box::new(header), false).await;
        ctx.client_wait += waiting.elapsed();
        written
    }
    .await;
    if let Err(e) = started {
        exchange.abandon(ctx).await;
        return StreamEnd::Downstream(e);
    }
    let (cut, detail) = loop {
        if out.len() >= FLUSH_AT {
            let full = std::mem::replace(&mut out, Vec::with_capacity(2 * FLUSH_AT));
            if let Err(e) = write_body(session, ctx, Some(Bytes::from(full)), false).await {
                exchange.abandon(ctx).await;
                return StreamEnd::Downstream(e);
            }
        }
        match exchange.open.next_chunk().await {
            Ok(Some(chunk)) => {
                seen += chunk.len() as u64;
                if seen > limits.max_streamed_response_bytes {
                    break (
                        filter_failure("too_large"),
                        "the upstream response exceeds the streaming limit".to_string(),
                    );
                }
                if let Err(e) = filter.feed(chunk, &mut out) {
                    break (filter_failure("malformed"), e.to_string());
                }
                if let Some(shadow) = &mut shadow {
                    shadow.feed(chunk);
                }
            }
            Ok(None) => match filter.finish(&mut out) {
                Ok(removed) => {
                    exchange.finish(ctx).await;
                    if removed > 0 {
                        metrics::FILTERED_RESPONSE.inc_by(removed as u64);
                    }
                    report_shadow(ctx, shadow);
                    return match write_body(session, ctx, Some(Bytes::from(out)), true).await {
                        Ok(()) => StreamEnd::Complete,
                        Err(e) => StreamEnd::Downstream(e),
                    };
                }
                Err(e) => break (filter_failure("malformed"), e.to_string()),
            },
            Err(e) => break (Counter::UpstreamError(e.kind()), format!("{e:?}")),
        }
    };
    exchange.abandon(ctx).await;
    tracing::warn!(request_id = %ctx.request_id, ?cut, detail, "streamed response cut: it could not be filtered to the end");
    StreamEnd::Cut { counter: cut }
}

/// The read shadow's outcome, once the response was filtered to its end.
fn report_shadow(ctx: &Ctx, shadow: Option<ShadowRead<'_>>) {
    if let Some(removed) = shadow.and_then(ShadowRead::finish) {
        let client = ctx.client_id.as_deref().unwrap_or_default();
        crate::proxy::shadow::report(ctx, client, "response", &removed);
    }
}

/// Relays the upstream's answer as it gave it (shadow mode): every header
/// but hop-by-hop and framing ones, and the body unchanged (read whole,
/// within `limits.max_response_body_bytes`). When the call would have been
/// permitted, the read schema it would have been filtered to is run over
/// the body beside it, and what it would have removed is reported.
pub(crate) async fn pass_through(
    session: &mut Session,
    ctx: &mut Ctx,
    mut exchange: Exchange<'_>,
    would_be: Option<&RoutePermit<'_>>,
    limits: &Limits,
) -> Result<Answer, ApiError> {
    let is_head = session.req_header().method == http::Method::HEAD;
    let (mut header, bodiless, filterable) = {
        let upstream = match exchange.open.header() {
            Ok(h) => h,
            Err(e) => {
                exchange.abandon(ctx).await;
                return Err(e.answer());
            }
        };
        let status = upstream.status.as_u16();
        let bodiless = is_head || status == 204 || status == 304 || (100..200).contains(&status);
        let filterable =
            would_be.is_some_and(|p| check_filterable(p.route.response_records, upstream).is_ok());
        (upstream.clone(), bodiless, filterable)
    };
    for name in &HOP_BY_HOP {
        header.remove_header(name);
    }
    if bodiless {
        exchange.finish(ctx).await;
        return Ok(Answer::Reply(Reply { header, body: None }));
    }
    let mut body = Vec::new();
    let mut watch = would_be.filter(|_| filterable).map(|p| {
        let relative_to = if p.route.access == Access::Read {
            p.attribute_name.as_ref()
        } else {
            None
        };
        ShadowRead::new(
            p.route.response_records,
            p.grants.read,
            relative_to,
            limits.max_json_depth,
            0,
        )
    });
    loop {
        match exchange.open.next_chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limits.max_response_body_bytes {
                    exchange.abandon(ctx).await;
                    return Err(UpstreamError::TooLarge.answer());
                }
                body.extend_from_slice(chunk);
                if let Some(watch) = &mut watch {
                    watch.feed(chunk);
                }
            }
            Ok(None) => break,
            Err(e) => {
                exchange.abandon(ctx).await;
                return Err(e.answer());
            }
        }
    }
    exchange.finish(ctx).await;
    report_shadow(ctx, watch);
    Ok(Answer::Reply(with_length(header, Bytes::from(body))?))
}

/// Reads a token endpoint's answer whole, within
/// `limits.max_response_body_bytes`: it must be uncoded JSON, since the
/// tokens in it are read (and bound) before any of it is passed on. The
/// header is the client's (the same allow-list as record routes).
pub(crate) async fn read_answer(
    mut exchange: Exchange<'_>,
    ctx: &mut Ctx,
    limits: &Limits,
    allow: &[String],
) -> Result<(ResponseHeader, Bytes), ApiError> {
    let header = {
        let upstream = match exchange.open.header() {
            Ok(h) => h,
            Err(e) => {
                exchange.abandon(ctx).await;
                return Err(e.answer());
            }
        };
        // Token answers are JSON objects, as if they were one record.
        check_filterable(ResponseRecords::Result, upstream)
            .and_then(|()| client_header(upstream, allow))
    };
    let header = match header {
        Ok(h) => h,
        Err(e) => {
            exchange.abandon(ctx).await;
            return Err(e);
        }
    };
    match read_unfiltered(&mut exchange.open, 0, limits.max_response_body_bytes).await {
        Ok(body) => {
            exchange.finish(ctx).await;
            Ok((header, body.freeze()))
        }
        Err(e) => {
            exchange.abandon(ctx).await;
            Err(e.answer())
        }
    }
}

fn filter_failure(kind: &'static str) -> Counter {
    Counter::FilterFailure {
        direction: "response",
        kind,
    }
}

/// The upstream's response header as sent to the client: an allow-list.
/// `Content-Type`, and the names `response_headers.allow` adds; never a
/// validator of the unfiltered body, framing or hop-by-hop headers (settings
/// refuse them). The answer is never cached: it is one caller's view.
fn client_header(upstream: &ResponseHeader, allow: &[String]) -> Result<ResponseHeader, ApiError> {
    let internal = |e: Box<pingora::Error>| ApiError::internal(e.to_string());
    // No case map: every name is lower case already, and the map would cost
    // an allocation per header.
    let mut header = ResponseHeader::build_no_case(upstream.status.as_u16(), Some(4 + allow.len()))
        .map_err(internal)?;
    if let Some(ct) = upstream.headers.get(header::CONTENT_TYPE) {
        header
            .insert_header(header::CONTENT_TYPE, ct.clone())
            .map_err(internal)?;
    }
    for name in allow {
        for value in upstream.headers.get_all(name.as_str()) {
            header
                .append_header(name.clone(), value.clone())
                .map_err(internal)?;
        }
    }
    header
        .insert_header(header::CACHE_CONTROL, "no-store")
        .map_err(internal)?;
    Ok(header)
}

/// Refuses bodies the filter cannot read: encoded, or not JSON on a route
/// whose response carries records.
fn check_filterable(records: ResponseRecords, upstream: &ResponseHeader) -> Result<(), ApiError> {
    if let Some(enc) = upstream.headers.get("content-encoding") {
        if !enc.as_bytes().eq_ignore_ascii_case(b"identity") {
            return Err(ApiError::bad_gateway(
                "the upstream sent an encoded body that cannot be filtered",
            )
            .filter_failure("response", "encoding"));
        }
    }
    if records == ResponseRecords::None {
        return Ok(());
    }
    let is_json = upstream
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("json"));
    if !is_json {
        return Err(
            ApiError::bad_gateway("the upstream sent a body that is not JSON")
                .filter_failure("response", "encoding"),
        );
    }
    Ok(())
}

/// A response body that could not be filtered: counted, and never sent.
fn unfilterable(f: FilterFailure) -> ApiError {
    ApiError::bad_gateway("the upstream sent a response that could not be filtered")
        .filter_failure("response", f.label())
}

/// Reads a response body that has no records to filter (bounded by `limit`).
async fn read_unfiltered(
    open: &mut OpenResponse<'_>,
    reserve: usize,
    limit: usize,
) -> Result<BytesMut, UpstreamError> {
    let mut body = BytesMut::with_capacity(reserve);
    while let Some(chunk) = open.next_chunk().await? {
        if body.len() + chunk.len() > limit {
            return Err(UpstreamError::TooLarge);
        }
        body.extend_from_slice(chunk);
    }
    Ok(body)
}
