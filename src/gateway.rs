//! The Pingora proxy. Every request is answered from `request_filter`:
//! request -> auth -> policy decision -> request filter -> upstream ->
//! response filter -> client. Pingora's own forwarding path is not used for
//! record routes because it sends the upstream request header before the body
//! can be checked, and the client response header before the body can be
//! filtered; both would break "decide first, fail closed".

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::{HttpPeer, ProxyHttp, Session};
use pingora::proxy::FailToProxy;
use pingora::{Error, ErrorType, Result};
use serde_json::Value;

use crate::allowlist::CidrSet;
use crate::client_ip::resolve_client_ip;
use crate::enforce::{self, AuthInput, CREDENTIAL_PARAMS};
use crate::errors::{ApiError, DenyReason};
use crate::json::parse_record;
use crate::metrics;
use crate::params::Params;
use crate::policy::PolicyStore;
use crate::response_filter::FilterFailure;
use crate::routes::{Access, RequestRecords, ResponseRecords, Route, RouteTable};
use crate::settings::Settings;
use crate::stream_filter::StreamFilter;
use crate::upstream::{Upstream, UpstreamError};

pub struct Gateway {
    pub policy: Arc<PolicyStore>,
    pub routes: RouteTable,
    pub upstream: Upstream,
    pub trusted_proxies: CidrSet,
    pub settings: Arc<Settings>,
    /// `Authorization` value the gateway presents upstream, if configured
    /// (marked sensitive, so it is never indexed or logged by `http`).
    pub upstream_authorization: Option<HeaderValue>,
    /// `Host` sent upstream: the first configured server.
    pub upstream_host: Option<HeaderValue>,
    pub audit: Arc<crate::policy::audit::AuditLog>,
}

/// Per-request state, read by `logging` for the access log and metrics.
pub struct Ctx {
    start: Instant,
    pub(crate) request_id: String,
    pub(crate) route: &'static str,
    pub(crate) client_id: Option<String>,
    pub(crate) decision: &'static str,
    status: u16,
    upstream_time: Duration,
}

/// Hop-by-hop and framing headers never copied from the upstream response;
/// `ETag`/`Accept-Ranges`/`Content-MD5` describe the unfiltered body.
const RESPONSE_HEADERS_DROPPED: [&str; 13] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "etag",
    "accept-ranges",
    "content-md5",
    "digest",
    "content-range",
];

/// Request headers forwarded upstream. An allow-list: credentials, cookies and
/// ranges of the caller have no business at the upstream.
const REQUEST_HEADERS_FORWARDED: [HeaderName; 3] =
    [header::USER_AGENT, header::ACCEPT, header::ACCEPT_LANGUAGE];

/// The forwarded request headers' values, in the order of
/// `REQUEST_HEADERS_FORWARDED`.
type ForwardedHeaders = [Option<HeaderValue>; 3];

fn forwarded_headers(req: &RequestHeader) -> ForwardedHeaders {
    REQUEST_HEADERS_FORWARDED
        .clone()
        .map(|name| req.headers.get(name).cloned())
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The upstream request's target and body, fixed before the first attempt.
struct UpstreamTarget {
    path: String,
    body: Bytes,
    content_type: Option<HeaderValue>,
}

fn route_label(route: &Route) -> &'static str {
    // Metric labels must stay bounded: built-in paths map to static names,
    // overridden routes to one shared label.
    match route.path.as_str() {
        "/entity" => "/entity",
        "/entity.find" => "/entity.find",
        "/entity.count" => "/entity.count",
        "/entity.create" => "/entity.create",
        "/entity.bulkCreate" => "/entity.bulkCreate",
        "/entity.update" => "/entity.update",
        "/entity.replace" => "/entity.replace",
        "/entity.delete" => "/entity.delete",
        _ => "custom",
    }
}

fn new_request_id() -> String {
    const CHARS: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    // Two random words, eight base-36 digits from each (36^8 < 2^42): one
    // call into the RNG per request instead of one per character.
    let words: [u64; 2] = rand::random();
    let mut id = String::with_capacity(16);
    for mut w in words {
        for _ in 0..8 {
            id.push(char::from(CHARS[(w % 36) as usize]));
            w /= 36;
        }
    }
    id
}

pub(crate) fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// What the gateway will send back when the exchange succeeded.
pub(crate) struct Reply {
    pub(crate) header: ResponseHeader,
    pub(crate) body: Option<Bytes>,
}

impl Gateway {
    async fn handle(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> std::result::Result<Handled, ApiError> {
        let req = session.req_header();
        let max_header = self.settings.limits.max_header_bytes;
        if header_block_len(req) > max_header {
            metrics::FILTER_FAILURES
                .with_label_values(&["request", "too_large"])
                .inc();
            session.set_keepalive(None);
            return Err(ApiError::headers_too_large(max_header));
        }
        let path = req.uri.path().to_string();
        if crate::management::classify(&path).is_some() {
            return self
                .handle_management(session, ctx, &path)
                .await
                .map(Handled::Reply);
        }
        let route = self
            .routes
            .find(&path)
            .ok_or_else(|| ApiError::unknown_endpoint(&path))?;
        ctx.route = route_label(route);
        let method = req.method.clone();
        let is_head = method == http::Method::HEAD;
        if !(method == http::Method::GET || method == http::Method::POST || is_head) {
            return Err(ApiError::method_not_allowed(method.as_str()));
        }
        let limits = &self.settings.limits;

        let content_type = header_str(req, "content-type")
            .unwrap_or("")
            .to_ascii_lowercase();
        if let Some(enc) = header_str(req, "content-encoding") {
            if !enc.eq_ignore_ascii_case("identity") {
                metrics::FILTER_FAILURES
                    .with_label_values(&["request", "encoding"])
                    .inc();
                return Err(ApiError::unsupported_encoding(&format!(
                    "with Content-Encoding {enc}"
                )));
            }
        }
        let query = req.uri.query().map(str::to_string);
        let body = self.read_body(session).await?;
        metrics::BYTES_IN.inc_by(body.len() as u64);

        let media = content_type.split(';').next().unwrap_or("").trim();
        let mut json_body: Option<Value> = None;
        let form_body = if body.is_empty() {
            None
        } else if media == "application/x-www-form-urlencoded" {
            if !utf8_charset(&content_type) {
                metrics::FILTER_FAILURES
                    .with_label_values(&["request", "encoding"])
                    .inc();
                return Err(ApiError::unsupported_encoding(
                    "in a charset other than UTF-8",
                ));
            }
            Some(&body[..])
        } else if media == "application/json" && route.request_records == RequestRecords::JsonBody {
            let v = parse_record(&body, limits.max_json_depth).map_err(|e| {
                metrics::FILTER_FAILURES
                    .with_label_values(&["request", "malformed"])
                    .inc();
                ApiError::invalid_argument("body", e)
            })?;
            json_body = Some(v);
            None
        } else {
            metrics::FILTER_FAILURES
                .with_label_values(&["request", "encoding"])
                .inc();
            return Err(ApiError::unsupported_encoding(&format!(
                "of type {:?}",
                if media.is_empty() { "none" } else { media }
            )));
        };
        let mut params = Params::parse_limited(query.as_deref(), form_body, limits.max_parameters)?;

        let snap = self.policy.load();
        let req = session.req_header();
        // Two credentials would let the gateway and a proxy in front of it
        // (or the upstream) each believe a different one.
        if req.headers.get_all("authorization").iter().nth(1).is_some() {
            return Err(ApiError::invalid_argument(
                "Authorization",
                "more than one Authorization header",
            )
            .with_reason(crate::errors::DenyReason::Credentials));
        }
        let auth_input = AuthInput {
            authorization: req.headers.get("authorization").map(|v| v.as_bytes()),
            date: header_str(req, "date"),
            endpoint: &path,
            now_secs: now_secs(),
            max_skew_secs: self.settings.auth.signature_max_skew_secs,
        };
        let client = enforce::authenticate(&snap, &auth_input, &params)?;
        ctx.client_id = Some(client.id.clone());
        let ip = self.client_ip(session)?;
        enforce::check_ip(client, ip)?;
        enforce::check_feature(client, route)?;
        let grants = enforce::grants(&snap, client, &params)?;
        let attribute_name = enforce::check_oracles(route, &grants, &params)?;
        let outcome = enforce::filter_write(
            route,
            client,
            &grants,
            attribute_name.as_ref(),
            &mut params,
            json_body.as_mut(),
            limits.max_json_depth,
        )?;
        if outcome.removed > 0 {
            metrics::FILTERED_REQUEST.inc_by(outcome.removed as u64);
        }
        for p in CREDENTIAL_PARAMS {
            params.remove(p);
        }

        let target = Self::upstream_target(&method, route, &params, json_body)?;
        let forwarded = forwarded_headers(session.req_header());
        let request_id = HeaderValue::from_str(&ctx.request_id)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        // From the String itself: `from_str` would copy it once more.
        let client_ip =
            HeaderValue::try_from(ip.to_string()).map_err(|e| ApiError::internal(e.to_string()))?;
        let build = || self.upstream_header(&method, &target, &forwarded, &request_id, &client_ip);
        let first = build().map_err(|e| {
            ApiError::internal(format!("could not build the upstream request: {e}"))
        })?;
        let sent_at = Instant::now();
        let open = self
            .upstream
            .open(
                first,
                &build,
                target.body.clone(),
                route.access == Access::Read,
            )
            .await;
        ctx.upstream_time = sent_at.elapsed();
        let mut open = open.map_err(upstream_error)?;
        let relative_to = if route.access == Access::Read {
            attribute_name.as_ref()
        } else {
            None
        };
        let (bodiless, header, filterable, declared_len) = {
            let upstream = open.header().map_err(upstream_error)?;
            let status = upstream.status.as_u16();
            let bodiless =
                is_head || status == 204 || status == 304 || (100..200).contains(&status);
            let filterable = if bodiless {
                Ok(())
            } else {
                check_filterable(route, upstream)
            };
            let declared_len = upstream
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok());
            (bodiless, client_header(upstream)?, filterable, declared_len)
        };
        if let Err(e) = filterable {
            open.abandon().await;
            return Err(e);
        }
        if bodiless {
            ctx.upstream_time = sent_at.elapsed();
            open.finish().await;
            // HEAD keeps no Content-Length: the unfiltered length would tell
            // the caller how much it is not allowed to see.
            return Ok(Handled::Reply(Reply { header, body: None }));
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
            let body =
                match read_unfiltered(&mut open, reserve, limits.max_response_body_bytes).await {
                    Ok(body) => body,
                    Err(e) => {
                        open.abandon().await;
                        return Err(e);
                    }
                };
            ctx.upstream_time = sent_at.elapsed();
            open.finish().await;
            return Ok(Handled::Reply(with_length(header, body.freeze())?));
        }
        // Each chunk is filtered straight from the connection's read buffer.
        // Until `stream_responses_over_bytes` only the output is held back,
        // so any failure is still a clean 502; past it the response streams.
        let mut filter = StreamFilter::for_response(
            route.response_records,
            grants.read,
            relative_to,
            limits.max_json_depth,
        );
        // Output never exceeds the input by more than a `null` per replaced
        // scalar; reserving the input size avoids regrowth.
        let mut out = Vec::with_capacity(reserve);
        let mut seen = 0usize;
        loop {
            match open.next_chunk().await {
                Ok(Some(chunk)) => {
                    seen += chunk.len();
                    let streams = seen > limits.stream_responses_over_bytes;
                    // Nothing is sent yet, so either limit is still a clean
                    // 502: the buffered one, or the streaming one if this
                    // chunk would start the stream already past it.
                    if seen > limits.max_response_body_bytes
                        || (streams && seen as u64 > limits.max_streamed_response_bytes)
                    {
                        open.abandon().await;
                        return Err(upstream_error(UpstreamError::TooLarge));
                    }
                    if let Err(e) = filter.feed(chunk, &mut out) {
                        open.abandon().await;
                        return Err(unfilterable(e.failure()));
                    }
                    if streams {
                        let result = self
                            .stream(session, ctx, open, header, filter, out, seen as u64)
                            .await;
                        return Ok(Handled::Streamed(result));
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(upstream_error(e)),
            }
        }
        ctx.upstream_time = sent_at.elapsed();
        open.finish().await;
        let removed = filter
            .finish(&mut out)
            .map_err(|e| unfilterable(e.failure()))?;
        if removed > 0 {
            metrics::FILTERED_RESPONSE.inc_by(removed as u64);
        }
        Ok(Handled::Reply(with_length(header, Bytes::from(out))?))
    }

    /// Sends the rest of the response while filtering it. From here on the
    /// header is on the wire, so a failure can no longer become a 502: the
    /// connection is cut instead (no final chunk), and the client never sees
    /// a syntactically complete unfiltered body. `out` holds what the first
    /// `seen` bytes were filtered to.
    #[allow(clippy::too_many_arguments)]
    async fn stream(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        mut open: crate::upstream::OpenResponse<'_>,
        mut header: ResponseHeader,
        mut filter: StreamFilter<'_>,
        mut out: Vec<u8>,
        mut seen: u64,
    ) -> Result<()> {
        const FLUSH_AT: usize = 32 << 10;
        let limits = &self.settings.limits;
        ctx.status = header.status.as_u16();
        header.insert_header("transfer-encoding", "chunked")?;
        header.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
        session
            .write_response_header(Box::new(header), false)
            .await?;
        let (reason, detail) = loop {
            if out.len() >= FLUSH_AT {
                metrics::BYTES_OUT.inc_by(out.len() as u64);
                let full = std::mem::replace(&mut out, Vec::with_capacity(2 * FLUSH_AT));
                session
                    .write_response_body(Some(Bytes::from(full)), false)
                    .await?;
            }
            match open.next_chunk().await {
                Ok(Some(chunk)) => {
                    seen += chunk.len() as u64;
                    if seen > limits.max_streamed_response_bytes {
                        break (
                            "too_large",
                            "the upstream response exceeds the streaming limit".to_string(),
                        );
                    }
                    if let Err(e) = filter.feed(chunk, &mut out) {
                        break ("malformed", e.to_string());
                    }
                }
                Ok(None) => match filter.finish(&mut out) {
                    Ok(removed) => {
                        open.finish().await;
                        if removed > 0 {
                            metrics::FILTERED_RESPONSE.inc_by(removed as u64);
                        }
                        metrics::BYTES_OUT.inc_by(out.len() as u64);
                        session
                            .write_response_body(Some(Bytes::from(out)), true)
                            .await?;
                        return Ok(());
                    }
                    Err(e) => break ("malformed", e.to_string()),
                },
                Err(e) => {
                    metrics::UPSTREAM_ERRORS
                        .with_label_values(&[e.kind()])
                        .inc();
                    break ("upstream", format!("{e:?}"));
                }
            }
        };
        if reason != "upstream" {
            metrics::FILTER_FAILURES
                .with_label_values(&["response", reason])
                .inc();
        }
        open.abandon().await;
        ctx.decision = DenyReason::Upstream.label();
        tracing::warn!(request_id = %ctx.request_id, reason, detail, "streamed response cut: it could not be filtered to the end");
        Err(Error::explain(
            ErrorType::HTTPStatus(502),
            "streamed response could not be filtered",
        ))
    }

    pub(crate) async fn read_body(
        &self,
        session: &mut Session,
    ) -> std::result::Result<Vec<u8>, ApiError> {
        let limit = self.settings.limits.max_request_body_bytes;
        if let Some(len) =
            header_str(session.req_header(), "content-length").and_then(|v| v.parse::<usize>().ok())
        {
            if len > limit {
                metrics::FILTER_FAILURES
                    .with_label_values(&["request", "too_large"])
                    .inc();
                return Err(ApiError::request_too_large(limit));
            }
        }
        session.set_read_timeout(Some(Duration::from_millis(
            self.settings.timeouts.downstream_read_ms,
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
        let total = Duration::from_millis(self.settings.timeouts.downstream_body_ms);
        match tokio::time::timeout(total, read_limited(session, limit)).await {
            Ok(read) => read,
            Err(_) => {
                metrics::CLIENT_TIMEOUTS.with_label_values(&["body"]).inc();
                session.set_keepalive(None);
                Err(ApiError::request_timeout(format!(
                    "the request body did not arrive within {} ms",
                    total.as_millis()
                )))
            }
        }
    }

    pub(crate) fn client_ip(&self, session: &Session) -> std::result::Result<IpAddr, ApiError> {
        // A peer that is not an IP socket (UDS, subrequest) is denied.
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
            .ok_or_else(ApiError::ip_denied)?;
        let xff = session
            .req_header()
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.as_bytes());
        resolve_client_ip(peer, xff, &self.trusted_proxies).map_err(|e| {
            ApiError::invalid_argument("X-Forwarded-For", e)
                .with_reason(crate::errors::DenyReason::Ip)
        })
    }

    /// Where the upstream request goes and what it carries: the filtered
    /// parameters as a query, or as a form body for POST, or a JSON body.
    fn upstream_target(
        method: &http::Method,
        route: &Route,
        params: &Params,
        json_body: Option<Value>,
    ) -> std::result::Result<UpstreamTarget, ApiError> {
        let encoded = params.encode();
        Ok(match json_body {
            Some(v) => UpstreamTarget {
                path: with_query(&route.path, &encoded),
                body: Bytes::from(
                    serde_json::to_vec(&v).map_err(|e| ApiError::internal(e.to_string()))?,
                ),
                content_type: Some(HeaderValue::from_static("application/json")),
            },
            None if *method == http::Method::POST => UpstreamTarget {
                path: route.path.clone(),
                body: Bytes::from(encoded),
                content_type: Some(HeaderValue::from_static(
                    "application/x-www-form-urlencoded",
                )),
            },
            None => UpstreamTarget {
                path: with_query(&route.path, &encoded),
                body: Bytes::new(),
                content_type: None,
            },
        })
    }

    /// Builds the upstream request header. Called once per attempt: Pingora
    /// consumes the header it writes, and building a new one for the rare
    /// retry is cheaper than cloning one on every request.
    fn upstream_header(
        &self,
        method: &http::Method,
        target: &UpstreamTarget,
        forwarded: &ForwardedHeaders,
        request_id: &HeaderValue,
        client_ip: &HeaderValue,
    ) -> Result<RequestHeader> {
        // No case map: every name here is already in the lower case it is
        // sent in, and the map would cost an allocation per header.
        let mut r = RequestHeader::build_no_case(method.clone(), target.path.as_bytes(), Some(10))?;
        for (name, value) in REQUEST_HEADERS_FORWARDED.iter().zip(forwarded) {
            if let Some(v) = value {
                r.insert_header(name.clone(), v.clone())?;
            }
        }
        if let Some(host) = &self.upstream_host {
            r.insert_header(header::HOST, host.clone())?;
        }
        // Identity only: a compressed body could not be filtered.
        r.insert_header(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        )?;
        if let Some(ct) = &target.content_type {
            r.insert_header(header::CONTENT_TYPE, ct.clone())?;
        }
        if !target.body.is_empty() || *method == http::Method::POST {
            r.insert_header(header::CONTENT_LENGTH, HeaderValue::from(target.body.len()))?;
        }
        if let Some(a) = &self.upstream_authorization {
            r.insert_header(header::AUTHORIZATION, a.clone())?;
        }
        r.insert_header(X_REQUEST_ID, request_id.clone())?;
        r.insert_header(X_FORWARDED_FOR, client_ip.clone())?;
        Ok(r)
    }

    async fn write_error(&self, session: &mut Session, ctx: &mut Ctx, e: &ApiError) -> Result<()> {
        ctx.decision = e.reason.label();
        let status = e.status(self.settings.capture_compat_status);
        ctx.status = status;
        let body = e.body(&ctx.request_id);
        let mut header = ResponseHeader::build(status, Some(4))?;
        header.insert_header("content-type", "application/json")?;
        header.insert_header("content-length", body.len().to_string())?;
        header.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
        if e.http_status == 401 {
            header.insert_header("www-authenticate", "Basic realm=\"recordgate\"")?;
        }
        let head = session.req_header().method == http::Method::HEAD;
        let body = (!head).then(|| Bytes::from(body));
        write_whole_response(session, header, body).await
    }
}

impl ApiError {
    fn with_reason(mut self, reason: crate::errors::DenyReason) -> Self {
        self.reason = reason;
        self
    }
}

/// The upstream's response header as sent to the client: hop-by-hop,
/// framing and unfiltered-body validators removed.
fn client_header(upstream: &ResponseHeader) -> std::result::Result<ResponseHeader, ApiError> {
    // No case map: the names come from a parsed header map, already in
    // lower case, and the map would cost an allocation per header.
    let mut header =
        ResponseHeader::build_no_case(upstream.status.as_u16(), Some(upstream.headers.len() + 2))
            .map_err(|e| ApiError::internal(e.to_string()))?;
    for (name, value) in upstream.headers.iter() {
        if RESPONSE_HEADERS_DROPPED.contains(&name.as_str()) {
            continue;
        }
        header
            .append_header(name.clone(), value.clone())
            .map_err(|e| ApiError::internal(e.to_string()))?;
    }
    Ok(header)
}

/// Refuses bodies the filter cannot read: encoded, or not JSON on a route
/// whose response carries records.
fn check_filterable(route: &Route, upstream: &ResponseHeader) -> std::result::Result<(), ApiError> {
    if let Some(enc) = upstream.headers.get("content-encoding") {
        if !enc.as_bytes().eq_ignore_ascii_case(b"identity") {
            metrics::FILTER_FAILURES
                .with_label_values(&["response", "encoding"])
                .inc();
            return Err(ApiError::bad_gateway(
                "the upstream sent an encoded body that cannot be filtered",
            ));
        }
    }
    if route.response_records == ResponseRecords::None {
        return Ok(());
    }
    let is_json = upstream
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("json"));
    if !is_json {
        metrics::FILTER_FAILURES
            .with_label_values(&["response", "encoding"])
            .inc();
        return Err(ApiError::bad_gateway(
            "the upstream sent a body that is not JSON",
        ));
    }
    Ok(())
}

fn upstream_error(e: UpstreamError) -> ApiError {
    metrics::UPSTREAM_ERRORS
        .with_label_values(&[e.kind()])
        .inc();
    match e {
        UpstreamError::Timeout => ApiError::gateway_timeout(),
        UpstreamError::TooLarge => {
            metrics::FILTER_FAILURES
                .with_label_values(&["response", "too_large"])
                .inc();
            ApiError::bad_gateway("the upstream response exceeds the size limit")
        }
        UpstreamError::Connect(_) => ApiError::bad_gateway("the upstream refused the connection"),
        UpstreamError::Protocol(_) => ApiError::bad_gateway("the upstream broke the exchange"),
    }
}

/// What `handle` did: a reply still to be written, or a response it
/// already streamed (with the outcome of streaming). One per request, moved
/// once: boxing the larger variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Handled {
    Reply(Reply),
    Streamed(Result<()>),
}

/// Writes a complete response with one flush: header and body as separate
/// writes cost an extra `send` per request.
async fn write_whole_response(
    session: &mut Session,
    header: ResponseHeader,
    body: Option<Bytes>,
) -> Result<()> {
    // Header and body as two writes, not one list of tasks: Pingora copies
    // the body of a task list into its own buffer, but writes a lone body
    // task straight from the `Bytes`.
    session
        .write_response_header(Box::new(header), body.is_none())
        .await?;
    if let Some(body) = &body {
        metrics::BYTES_OUT.inc_by(body.len() as u64);
    }
    // With no body this only ends the response, as the task list did.
    session.write_response_body(body, true).await?;
    Ok(())
}

/// The response to send once the whole body is known.
fn with_length(mut header: ResponseHeader, body: Bytes) -> std::result::Result<Reply, ApiError> {
    header
        .insert_header(header::CONTENT_LENGTH, HeaderValue::from(body.len()))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Reply {
        header,
        body: Some(body),
    })
}

/// A response body that could not be filtered: counted, and never sent.
fn unfilterable(f: FilterFailure) -> ApiError {
    metrics::FILTER_FAILURES
        .with_label_values(&["response", f.label()])
        .inc();
    ApiError::bad_gateway("the upstream sent a response that could not be filtered")
}

/// Reads a response body that has no records to filter (bounded by `limit`).
async fn read_unfiltered(
    open: &mut crate::upstream::OpenResponse<'_>,
    reserve: usize,
    limit: usize,
) -> std::result::Result<BytesMut, ApiError> {
    let mut body = BytesMut::with_capacity(reserve);
    while let Some(chunk) = open.next_chunk().await.map_err(upstream_error)? {
        if body.len() + chunk.len() > limit {
            return Err(upstream_error(UpstreamError::TooLarge));
        }
        body.extend_from_slice(chunk);
    }
    Ok(body)
}

/// Reads the whole request body, refusing it once it passes `limit`.
async fn read_limited(
    session: &mut Session,
    limit: usize,
) -> std::result::Result<Vec<u8>, ApiError> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    metrics::FILTER_FAILURES
                        .with_label_values(&["request", "too_large"])
                        .inc();
                    return Err(ApiError::request_too_large(limit));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) if e.etype() == &ErrorType::ReadTimedout => {
                metrics::CLIENT_TIMEOUTS.with_label_values(&["body"]).inc();
                session.set_keepalive(None);
                return Err(ApiError::request_timeout(
                    "the client stopped sending the request body".into(),
                ));
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
/// separators: Pingora's own ceiling is 1 MiB, which is far more than any
/// API client needs and a cheap way to make the gateway buffer and scan.
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

fn with_query(path: &str, encoded: &str) -> String {
    if encoded.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{encoded}")
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            start: Instant::now(),
            request_id: String::new(),
            route: "unknown",
            client_id: None,
            decision: "allowed",
            status: 0,
            upstream_time: Duration::ZERO,
        }
    }

    async fn early_request_filter(&self, _session: &mut Session, _ctx: &mut Ctx) -> Result<()> {
        crate::header_deadline::mark_header_read();
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.request_id = session
            .req_header()
            .headers
            .get(X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| {
                !v.is_empty()
                    && v.len() <= 64
                    && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
            .filter(|_| self.peer_is_trusted(session))
            .map(str::to_string)
            .unwrap_or_else(new_request_id);
        let handled = self.handle(session, ctx).await;
        // Pingora turns keep-alive off only for requests that start after
        // shutdown began; a response written during the drain must not
        // promise a connection that is about to close.
        if session.is_process_shutting_down() {
            session.set_keepalive(None);
        }
        match handled {
            Ok(Handled::Streamed(result)) => result?,
            Ok(Handled::Reply(mut reply)) => {
                ctx.status = reply.header.status.as_u16();
                reply
                    .header
                    .insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
                write_whole_response(session, reply.header, reply.body).await?;
            }
            Err(e) => self.write_error(session, ctx, &e).await?,
        }
        Ok(true)
    }

    /// After a streamed response has started, nothing more may be written:
    /// the connection is dropped so the client sees a broken response.
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, _ctx: &mut Ctx) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => 502,
        };
        if session.response_written().is_none() {
            if let Err(e) = session.respond_error(code).await {
                tracing::debug!(error = %e, "could not send the error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        // Unreachable: request_filter answers every request itself.
        Err(Error::explain(
            ErrorType::HTTPStatus(500),
            "no forwarding path",
        ))
    }

    async fn logging(&self, _session: &mut Session, e: Option<&pingora::Error>, ctx: &mut Ctx) {
        let total = ctx.start.elapsed();
        let status = if ctx.status == 0 { 499 } else { ctx.status };
        metrics::count_request(ctx.route, ctx.decision, status);
        if let Some(client) = ctx.client_id.as_deref() {
            if self.client_label_enabled() {
                metrics::CLIENT_REQUESTS
                    .with_label_values(&[client, ctx.decision])
                    .inc();
            }
        }
        metrics::DURATION_TOTAL.observe(total.as_secs_f64());
        if !ctx.upstream_time.is_zero() {
            metrics::DURATION_UPSTREAM.observe(ctx.upstream_time.as_secs_f64());
        }
        metrics::DURATION_GATEWAY.observe(total.saturating_sub(ctx.upstream_time).as_secs_f64());
        tracing::info!(
            target: "access",
            request_id = %ctx.request_id,
            client_id = ctx.client_id.as_deref().unwrap_or("-"),
            route = ctx.route,
            decision = ctx.decision,
            status,
            total_ms = total.as_secs_f64() * 1e3,
            upstream_ms = ctx.upstream_time.as_secs_f64() * 1e3,
            error = e.map(|e| e.etype().as_str()).unwrap_or(""),
        );
    }
}

impl Gateway {
    fn client_label_enabled(&self) -> bool {
        use crate::settings::ClientLabel;
        let m = &self.settings.metrics;
        match m.client_label {
            ClientLabel::On => true,
            ClientLabel::Off => false,
            ClientLabel::Auto => self.policy.client_count() <= m.client_label_max_clients,
        }
    }

    fn peer_is_trusted(&self, session: &Session) -> bool {
        session
            .client_addr()
            .and_then(|a| a.as_inet())
            .is_some_and(|a| self.trusted_proxies.contains(a.ip()))
    }
}
