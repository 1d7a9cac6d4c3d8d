//! The forward stage: the upstream call for record routes. The request is
//! built here from what was decided and filtered (the filtered parameters,
//! an allow-list of the caller's headers, the gateway's own identity), and
//! sent only with a [`Permit`]. The addresses of the servers (all of them,
//! kept current by `resolve`) are used round robin and tried in turn when a
//! connection cannot be made; connections are pooled by Pingora's connector. The response is read by the relay stage
//! from the returned [`OpenResponse`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::protocols::http::client::HttpSession;
use pingora::ErrorType;

use crate::config::settings::Timeouts;
use crate::decide::routes::Route;
use crate::decide::Permit;
use crate::errors::{ApiError, Counter};
use crate::params::Params;
use crate::proxy::resolve::AddressBook;

pub struct Upstream {
    /// Every address of every configured server, re-resolved in the
    /// background; each request uses the set current when it starts.
    book: Arc<AddressBook>,
    next: AtomicUsize,
    connector: Connector,
    idle: Duration,
    /// `Host` sent upstream: the first configured server.
    host: Option<HeaderValue>,
    /// `Authorization` the gateway presents upstream, if configured (marked
    /// sensitive, so it is never indexed or logged by `http`).
    authorization: Option<HeaderValue>,
}

/// Request headers forwarded upstream. An allow-list: credentials, cookies
/// and ranges of the caller have no business at the upstream.
const REQUEST_HEADERS_FORWARDED: [HeaderName; 3] =
    [header::USER_AGENT, header::ACCEPT, header::ACCEPT_LANGUAGE];

/// The forwarded request headers' values, in the order of
/// `REQUEST_HEADERS_FORWARDED`.
type ForwardedHeaders = [Option<HeaderValue>; 3];

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// What goes upstream, fixed before the first attempt.
pub(crate) struct Outgoing {
    method: http::Method,
    path: String,
    body: Bytes,
    content_type: Option<HeaderValue>,
    forwarded: ForwardedHeaders,
    request_id: HeaderValue,
    client_ip: HeaderValue,
    /// A call passed as sent (shadow mode): the caller's own headers, its
    /// credentials included, instead of the allow-list and the gateway's
    /// identity.
    as_sent: Option<http::HeaderMap>,
    /// Whose credential the upstream sees.
    credential: Credential,
}

/// The credential presented upstream.
pub(crate) enum Credential {
    /// The gateway's own (`upstream.credentials`), if configured.
    Gateway,
    /// The caller's, because the issuer must see it: a user token (which
    /// the upstream resolves to its user's record) or a client's
    /// credentials at `/oauth/token`. `None`: it travels as a parameter,
    /// so no `Authorization` is sent.
    Caller(Option<HeaderValue>),
}

/// Hop-by-hop and framing headers: never copied from one connection to
/// the next (RFC 9110 §7.6.1); the gateway frames what it sends itself.
pub(crate) const HOP_BY_HOP: [HeaderName; 10] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::CONTENT_LENGTH,
    header::EXPECT,
];

impl Outgoing {
    /// The upstream request for a decided and filtered call: the filtered
    /// parameters as a query, or as a form body for POST, or a JSON body.
    pub(crate) fn new(
        method: &http::Method,
        route: &Route,
        params: &Params,
        json_body: Option<serde_json::Value>,
        caller_headers: &http::HeaderMap,
        request_id: &str,
        permit: &Permit<'_>,
    ) -> Result<Outgoing, ApiError> {
        let encoded = params.encode();
        let (path, body, content_type) = match json_body {
            Some(v) => (
                with_query(&route.path, &encoded),
                Bytes::from(v.to_string()),
                Some(HeaderValue::from_static("application/json")),
            ),
            None if *method == http::Method::POST => (
                route.path.clone(),
                Bytes::from(encoded),
                Some(HeaderValue::from_static(
                    "application/x-www-form-urlencoded",
                )),
            ),
            None => (with_query(&route.path, &encoded), Bytes::new(), None),
        };
        let internal = |e: http::header::InvalidHeaderValue| ApiError::internal(e.to_string());
        Ok(Outgoing {
            method: method.clone(),
            path,
            body,
            content_type,
            forwarded: REQUEST_HEADERS_FORWARDED
                .clone()
                .map(|name| caller_headers.get(name).cloned()),
            request_id: HeaderValue::from_str(request_id).map_err(internal)?,
            // From the String itself: `from_str` would copy it once more.
            client_ip: HeaderValue::try_from(permit.ip.to_string()).map_err(internal)?,
            as_sent: None,
            // A token call forwards the token as it came.
            credential: match &permit.token {
                Some(t) => Credential::Caller(
                    t.in_header
                        .then(|| caller_authorization(caller_headers))
                        .flatten(),
                ),
                None => Credential::Gateway,
            },
        })
    }

    /// The same request with the caller's own credential presented
    /// upstream (`/oauth/token`).
    pub(crate) fn with_caller_credential(mut self, caller_headers: &http::HeaderMap) -> Outgoing {
        self.credential = Credential::Caller(caller_authorization(caller_headers));
        self
    }

    /// The upstream request for a call that passes as sent (shadow mode):
    /// the caller's method, target, headers (its credentials included) and
    /// body, with only hop-by-hop and framing headers left out.
    pub(crate) fn as_sent(
        method: &http::Method,
        target: &[u8],
        caller_headers: &http::HeaderMap,
        body: Bytes,
        request_id: &str,
        peer: Option<std::net::IpAddr>,
    ) -> Result<Outgoing, ApiError> {
        let internal = |e: http::header::InvalidHeaderValue| ApiError::internal(e.to_string());
        let mut headers = caller_headers.clone();
        for name in HOP_BY_HOP.iter().chain([&header::HOST]) {
            headers.remove(name);
        }
        let peer = peer.map(|ip| ip.to_string()).unwrap_or_default();
        Ok(Outgoing {
            method: method.clone(),
            // Intake refused anything but visible ASCII in the target.
            path: String::from_utf8_lossy(target).into_owned(),
            body,
            content_type: None,
            forwarded: Default::default(),
            request_id: HeaderValue::from_str(request_id).map_err(internal)?,
            client_ip: HeaderValue::try_from(peer).map_err(internal)?,
            as_sent: Some(headers),
            credential: Credential::Gateway,
        })
    }
}

/// The caller's `Authorization`, marked sensitive so that it is never
/// indexed or logged by `http`.
fn caller_authorization(headers: &http::HeaderMap) -> Option<HeaderValue> {
    headers.get(header::AUTHORIZATION).map(|v| {
        let mut v = v.clone();
        v.set_sensitive(true);
        v
    })
}

fn with_query(path: &str, encoded: &str) -> String {
    if encoded.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{encoded}")
    }
}

#[derive(Debug)]
pub enum UpstreamError {
    /// Could not connect to any server.
    Connect(String),
    Timeout,
    /// The upstream broke the exchange (reset, truncated, bad framing).
    Protocol(String),
    /// The response body is larger than the configured limit.
    TooLarge,
}

impl UpstreamError {
    /// The error answered to the client, with the counters it is recorded
    /// under.
    pub(crate) fn answer(self) -> ApiError {
        let counted = Counter::UpstreamError(self.kind());
        match &self {
            UpstreamError::Connect(detail) | UpstreamError::Protocol(detail) => {
                tracing::warn!(kind = self.kind(), detail, "upstream call failed");
            }
            UpstreamError::Timeout | UpstreamError::TooLarge => {
                tracing::warn!(kind = self.kind(), "upstream call failed");
            }
        }
        match self {
            UpstreamError::Timeout => ApiError::gateway_timeout().counted(counted),
            UpstreamError::TooLarge => {
                ApiError::bad_gateway("the upstream response exceeds the size limit")
                    .counted(Counter::UpstreamTooLarge)
            }
            UpstreamError::Connect(_) => {
                ApiError::bad_gateway("the upstream refused the connection").counted(counted)
            }
            UpstreamError::Protocol(_) => {
                ApiError::bad_gateway("the upstream broke the exchange").counted(counted)
            }
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "connect",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Protocol(_) => "protocol",
            UpstreamError::TooLarge => "too_large",
        }
    }
}

fn classify(e: &pingora::Error) -> UpstreamError {
    match e.etype() {
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            UpstreamError::Timeout
        }
        ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::TLSHandshakeFailure => UpstreamError::Connect(e.to_string()),
        _ => UpstreamError::Protocol(e.to_string()),
    }
}

impl Upstream {
    /// An upstream over the addresses `book` keeps current.
    pub(crate) fn new(book: Arc<AddressBook>, timeouts: &Timeouts) -> Upstream {
        Upstream {
            book,
            next: AtomicUsize::new(0),
            connector: Connector::new(None),
            idle: Duration::from_millis(timeouts.upstream_idle_ms),
            host: None,
            authorization: None,
        }
    }

    /// The gateway's own identity towards the upstream: `Host`, and the
    /// `Authorization` it presents (never the caller's).
    pub(crate) fn with_identity(
        mut self,
        host: Option<HeaderValue>,
        authorization: Option<HeaderValue>,
    ) -> Upstream {
        self.host = host;
        self.authorization = authorization;
        self
    }

    /// Sends a call that passes as sent (shadow mode) upstream.
    pub(crate) async fn forward_as_sent(
        &self,
        _pass: &crate::decide::Pass<'_>,
        outgoing: &Outgoing,
        idempotent: bool,
        tried: &mut Option<SocketAddr>,
    ) -> Result<OpenResponse<'_>, UpstreamError> {
        self.send(outgoing, idempotent, tried).await
    }

    /// Sends a decided call upstream. Only reads are retried on a stale
    /// pooled connection once a byte may have reached the server.
    pub(crate) async fn forward(
        &self,
        _permit: &Permit<'_>,
        outgoing: &Outgoing,
        idempotent: bool,
        tried: &mut Option<SocketAddr>,
    ) -> Result<OpenResponse<'_>, UpstreamError> {
        self.send(outgoing, idempotent, tried).await
    }

    /// The one sending path behind `forward` and `forward_as_sent`, which
    /// only differ in the proof they take.
    async fn send(
        &self,
        outgoing: &Outgoing,
        idempotent: bool,
        tried: &mut Option<SocketAddr>,
    ) -> Result<OpenResponse<'_>, UpstreamError> {
        let build = || self.header_for(outgoing);
        let first = build().map_err(|e| {
            UpstreamError::Protocol(format!("could not build the upstream request: {e}"))
        })?;
        self.open(first, &build, outgoing.body.clone(), idempotent, tried)
            .await
    }

    /// Builds the upstream request header. Called once per attempt: Pingora
    /// consumes the header it writes, and building a new one for the rare
    /// retry is cheaper than cloning one on every request.
    fn header_for(&self, o: &Outgoing) -> pingora::Result<RequestHeader> {
        // No case map: every name here is already in the lower case it is
        // sent in, and the map would cost an allocation per header.
        let mut r = RequestHeader::build_no_case(o.method.clone(), o.path.as_bytes(), Some(10))?;
        if let Some(sent) = &o.as_sent {
            for (name, value) in sent {
                r.append_header(name.clone(), value.clone())?;
            }
            if let Some(host) = &self.host {
                r.insert_header(header::HOST, host.clone())?;
            }
            if !o.body.is_empty() || o.method == http::Method::POST {
                r.insert_header(header::CONTENT_LENGTH, HeaderValue::from(o.body.len()))?;
            }
            r.insert_header(X_REQUEST_ID, o.request_id.clone())?;
            r.insert_header(X_FORWARDED_FOR, o.client_ip.clone())?;
            return Ok(r);
        }
        for (name, value) in REQUEST_HEADERS_FORWARDED.iter().zip(&o.forwarded) {
            if let Some(v) = value {
                r.insert_header(name.clone(), v.clone())?;
            }
        }
        if let Some(host) = &self.host {
            r.insert_header(header::HOST, host.clone())?;
        }
        // Identity only: a compressed body could not be filtered.
        r.insert_header(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        )?;
        if let Some(ct) = &o.content_type {
            r.insert_header(header::CONTENT_TYPE, ct.clone())?;
        }
        if !o.body.is_empty() || o.method == http::Method::POST {
            r.insert_header(header::CONTENT_LENGTH, HeaderValue::from(o.body.len()))?;
        }
        let authorization = match &o.credential {
            Credential::Gateway => self.authorization.as_ref(),
            Credential::Caller(own) => own.as_ref(),
        };
        if let Some(a) = authorization {
            r.insert_header(header::AUTHORIZATION, a.clone())?;
        }
        r.insert_header(X_REQUEST_ID, o.request_id.clone())?;
        r.insert_header(X_FORWARDED_FOR, o.client_ip.clone())?;
        Ok(r)
    }

    /// Sends one request and reads the response header; the body is then
    /// read chunk by chunk from the returned `OpenResponse`. Servers are tried
    /// in turn when a connection cannot be made; a request that may have
    /// reached a server is retried only on a stale pooled connection, and
    /// only before any response byte when `idempotent`.
    ///
    /// `first` is the header for the first attempt; `rebuild` makes another
    /// for each retry (Pingora consumes the header it writes).
    async fn open<F>(
        &self,
        first: RequestHeader,
        rebuild: &F,
        body: Bytes,
        idempotent: bool,
        tried: &mut Option<SocketAddr>,
    ) -> Result<OpenResponse<'_>, UpstreamError>
    where
        F: Fn() -> pingora::Result<RequestHeader> + Sync,
    {
        let peers = self.book.current();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = UpstreamError::Connect("no upstream server".into());
        let mut first = Some(first);
        for i in 0..peers.len() {
            let peer = &peers[(start + i) % peers.len()];
            // For the access log: the server this call went to (or, if none
            // answered, the last one tried).
            *tried = peer._address.as_inet().copied();
            match self
                .open_on(peer.clone(), &mut first, rebuild, &body, idempotent)
                .await
            {
                Err(Attempt::NotSent(e)) => last = e,
                Err(Attempt::Failed(e)) => return Err(e),
                Ok(r) => return Ok(r),
            }
        }
        Err(last)
    }

    async fn open_on<F>(
        &self,
        peer: Arc<HttpPeer>,
        first: &mut Option<RequestHeader>,
        rebuild: &F,
        body: &Bytes,
        idempotent: bool,
    ) -> Result<OpenResponse<'_>, Attempt>
    where
        F: Fn() -> pingora::Result<RequestHeader> + Sync,
    {
        // Pooled connections may have been closed by the server meanwhile
        // (an upstream restart closes all of them): a failure on a reused
        // connection moves on to the next one, up to a bound.
        const STALE_RETRIES: usize = 4;
        for attempt in 0..=STALE_RETRIES {
            let (mut session, reused) = self
                .connector
                .get_http_session(&*peer)
                .await
                .map_err(|e| Attempt::NotSent(classify(&e)))?;
            let may_retry = reused && attempt < STALE_RETRIES;
            // The connector applies only connect time-outs; I/O time-outs
            // are per session (Pingora's proxy sets them the same way).
            session.set_read_timeout(peer.options.read_timeout);
            session.set_write_timeout(peer.options.write_timeout);
            let req = match first.take() {
                Some(req) => req,
                None => rebuild().map_err(|e| {
                    Attempt::Failed(UpstreamError::Protocol(format!(
                        "could not rebuild the request: {e}"
                    )))
                })?,
            };
            let written = async {
                session.write_request_header(Box::new(req)).await?;
                if !body.is_empty() {
                    session.write_request_body(body.clone(), true).await?;
                }
                session.finish_request_body().await
            }
            .await;
            if let Err(e) = written {
                if may_retry {
                    continue;
                }
                return Err(Attempt::Failed(classify(&e)));
            }
            if let Err(e) = session.read_response_header().await {
                let kind = classify(&e);
                if may_retry && idempotent && !matches!(kind, UpstreamError::Timeout) {
                    continue;
                }
                session.shutdown().await;
                return Err(Attempt::Failed(kind));
            }
            if session.response_header().is_none() {
                session.shutdown().await;
                return Err(Attempt::Failed(UpstreamError::Protocol(
                    "no response header".into(),
                )));
            }
            return Ok(OpenResponse {
                upstream: self,
                peer,
                session,
                held: None,
            });
        }
        Err(Attempt::NotSent(UpstreamError::Connect(
            "no usable connection".into(),
        )))
    }
}

enum Attempt {
    NotSent(UpstreamError),
    Failed(UpstreamError),
}

/// A response whose header has been read and whose body is being read.
pub struct OpenResponse<'a> {
    upstream: &'a Upstream,
    /// Owned: the address set may be swapped while the body is read.
    peer: Arc<HttpPeer>,
    session: HttpSession,
    /// The last chunk of a non-HTTP/1 body, which arrives as its own buffer.
    held: Option<Bytes>,
}

impl OpenResponse<'_> {
    /// The response header, borrowed from the session rather than copied.
    pub fn header(&self) -> Result<&ResponseHeader, UpstreamError> {
        self.session
            .response_header()
            .ok_or_else(|| UpstreamError::Protocol("no response header".into()))
    }

    /// The next piece of the body, borrowed from the connection's read
    /// buffer (HTTP/1): valid until the next call, and never copied.
    pub async fn next_chunk(&mut self) -> Result<Option<&[u8]>, UpstreamError> {
        match &mut self.session {
            HttpSession::H1(h1) => h1.read_body_ref().await.map_err(|e| classify(&e)),
            other => {
                self.held = other.read_response_body().await.map_err(|e| classify(&e))?;
                Ok(self.held.as_deref())
            }
        }
    }

    /// The body was read to its end: the connection goes back to the pool.
    pub async fn finish(self) {
        self.upstream
            .connector
            .release_http_session(self.session, &*self.peer, Some(self.upstream.idle))
            .await;
    }

    /// The exchange is abandoned midway: the connection is closed.
    pub async fn abandon(mut self) {
        self.session.shutdown().await;
    }
}
