//! The upstream call for record routes. The gateway sends the request only
//! after it has decided and filtered, and reads the whole (bounded) response
//! before a byte goes back, so a malformed or oversize body becomes a clean
//! 502 instead of a half-sent unfiltered one. Connections are pooled by
//! Pingora's connector.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
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

pub struct UpstreamResponse {
    pub header: ResponseHeader,
    pub body: Bytes,
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

    /// Sends one request, trying each server in turn when a connection cannot
    /// be made; never retries once the request may have reached a server.
    pub async fn send(
        &self,
        req: &RequestHeader,
        body: Bytes,
        max_body: usize,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = UpstreamError::Connect("no upstream server".into());
        for i in 0..self.peers.len() {
            let peer = &self.peers[(start + i) % self.peers.len()];
            match self.send_to(peer, req, body.clone(), max_body).await {
                Err(Attempt::NotSent(e)) => last = e,
                Err(Attempt::Failed(e)) => return Err(e),
                Ok(r) => return Ok(r),
            }
        }
        Err(last)
    }

    async fn send_to(
        &self,
        peer: &HttpPeer,
        req: &RequestHeader,
        body: Bytes,
        max_body: usize,
    ) -> Result<UpstreamResponse, Attempt> {
        // A pooled connection may have been closed by the server meanwhile; a
        // failure to write on it is retried once on a fresh connection.
        for fresh_only in [false, true] {
            let (mut session, reused) = self
                .connector
                .get_http_session(peer)
                .await
                .map_err(|e| Attempt::NotSent(classify(&e)))?;
            if fresh_only && reused {
                // Pool handed back another old connection: drop it and dial.
                session.shutdown().await;
                continue;
            }
            // The connector applies only connect time-outs; I/O time-outs
            // are per session (Pingora's proxy sets them the same way).
            session.set_read_timeout(peer.options.read_timeout);
            session.set_write_timeout(peer.options.write_timeout);
            let written = async {
                session.write_request_header(Box::new(req.clone())).await?;
                if !body.is_empty() {
                    session.write_request_body(body.clone(), true).await?;
                }
                session.finish_request_body().await
            }
            .await;
            if let Err(e) = written {
                if reused && !fresh_only {
                    continue;
                }
                return Err(Attempt::Failed(classify(&e)));
            }
            let response = read_response(&mut session, max_body).await;
            match response {
                Ok(r) => {
                    self.connector
                        .release_http_session(session, peer, Some(self.idle))
                        .await;
                    return Ok(r);
                }
                Err(e) => {
                    session.shutdown().await;
                    return Err(Attempt::Failed(e));
                }
            }
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

async fn read_response(
    session: &mut pingora::protocols::http::client::HttpSession,
    max_body: usize,
) -> Result<UpstreamResponse, UpstreamError> {
    session
        .read_response_header()
        .await
        .map_err(|e| classify(&e))?;
    let header = session
        .response_header()
        .cloned()
        .ok_or_else(|| UpstreamError::Protocol("no response header".into()))?;
    let mut body = BytesMut::new();
    while let Some(chunk) = session
        .read_response_body()
        .await
        .map_err(|e| classify(&e))?
    {
        if body.len() + chunk.len() > max_body {
            return Err(UpstreamError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(UpstreamResponse {
        header,
        body: body.freeze(),
    })
}
