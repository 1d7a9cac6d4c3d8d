//! The upstream call for record routes. The gateway sends the request only
//! after it has decided and filtered, and reads the whole (bounded) response
//! before a byte goes back, so a malformed or oversize body becomes a clean
//! 502 instead of a half-sent unfiltered one. Connections are pooled by
//! Pingora's connector.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::protocols::http::client::HttpSession;
use pingora::ErrorType;

use crate::settings::{Timeouts, UpstreamSettings};

pub struct Upstream {
    peers: Vec<HttpPeer>,
    next: AtomicUsize,
    connector: Connector,
    idle: Duration,
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
    pub fn new(settings: &UpstreamSettings, timeouts: &Timeouts) -> Result<Upstream, String> {
        let mut peers = Vec::with_capacity(settings.servers.len());
        for server in &settings.servers {
            let addr: SocketAddr = server
                .to_socket_addrs()
                .map_err(|e| format!("upstream.servers: cannot resolve {server}: {e}"))?
                .next()
                .ok_or_else(|| format!("upstream.servers: {server} resolves to no address"))?;
            let host = server.rsplit_once(':').map(|(h, _)| h).unwrap_or(server);
            let sni = settings
                .sni
                .clone()
                .unwrap_or_else(|| host.trim_matches(['[', ']']).to_string());
            let mut peer = HttpPeer::new(addr, settings.tls, sni);
            peer.options.connection_timeout =
                Some(Duration::from_millis(timeouts.upstream_connect_ms));
            peer.options.read_timeout = Some(Duration::from_millis(timeouts.upstream_read_ms));
            peer.options.write_timeout = Some(Duration::from_millis(timeouts.upstream_write_ms));
            peer.options.idle_timeout = Some(Duration::from_millis(timeouts.upstream_idle_ms));
            peers.push(peer);
        }
        if peers.is_empty() {
            return Err("upstream.servers: at least one server is required".into());
        }
        Ok(Upstream {
            peers,
            next: AtomicUsize::new(0),
            connector: Connector::new(None),
            idle: Duration::from_millis(timeouts.upstream_idle_ms),
        })
    }

    /// Sends one request and reads the response header; the body is then
    /// read chunk by chunk from the returned `OpenResponse`. Servers are tried
    /// in turn when a connection cannot be made; a request that may have
    /// reached a server is retried only on a stale pooled connection, and
    /// only before any response byte when `idempotent`.
    ///
    /// `first` is the header for the first attempt; `rebuild` makes another
    /// for each retry (Pingora consumes the header it writes).
    pub async fn open<F>(
        &self,
        first: RequestHeader,
        rebuild: &F,
        body: Bytes,
        idempotent: bool,
    ) -> Result<OpenResponse<'_>, UpstreamError>
    where
        F: Fn() -> pingora::Result<RequestHeader> + Sync,
    {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = UpstreamError::Connect("no upstream server".into());
        let mut first = Some(first);
        for i in 0..self.peers.len() {
            let peer = &self.peers[(start + i) % self.peers.len()];
            match self
                .open_on(peer, &mut first, rebuild, &body, idempotent)
                .await
            {
                Err(Attempt::NotSent(e)) => last = e,
                Err(Attempt::Failed(e)) => return Err(e),
                Ok(r) => return Ok(r),
            }
        }
        Err(last)
    }

    async fn open_on<'a, F>(
        &'a self,
        peer: &'a HttpPeer,
        first: &mut Option<RequestHeader>,
        rebuild: &F,
        body: &Bytes,
        idempotent: bool,
    ) -> Result<OpenResponse<'a>, Attempt>
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
                .get_http_session(peer)
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
    peer: &'a HttpPeer,
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
            .release_http_session(self.session, self.peer, Some(self.upstream.idle))
            .await;
    }

    /// The exchange is abandoned midway: the connection is closed.
    pub async fn abandon(mut self) {
        self.session.shutdown().await;
    }
}
