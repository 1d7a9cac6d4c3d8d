//! Client connections, before any request: the caps on how many are open
//! (checked when a connection is accepted and held while it lives), and
//! the tap that keeps the start of each request as the client sent it.
//!
//! [`Connections`] wraps the HTTP application: when Pingora hands it a
//! connection, it takes the connection's place under the caps and wraps its
//! stream in a [`tap::TapStream`]; [`tap::begin_request`] marks where each
//! request of a kept-alive connection starts.

pub(crate) mod caps;
pub(crate) mod tap;

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::listeners::ConnectionFilter;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

use crate::connection::caps::{Caps, Refused};
use crate::connection::tap::TapStream;
use crate::ops::metrics;

pub(crate) struct Connections<A> {
    inner: Arc<A>,
    caps: Arc<Caps>,
    /// How much of each request's start the tap keeps: the header limit.
    keep: usize,
}

impl<A> Connections<A> {
    pub(crate) fn new(inner: A, caps: Arc<Caps>, keep: usize) -> Self {
        Connections {
            inner: Arc::new(inner),
            caps,
            keep,
        }
    }
}

fn peer_ip(stream: &Stream) -> Option<IpAddr> {
    let digest = stream.get_socket_digest()?;
    let addr = digest.peer_addr()?.as_inet()?;
    Some(addr.ip())
}

fn refused(why: Refused, ip: Option<IpAddr>) {
    metrics::CONNECTIONS_REFUSED.inc(&[why.label()]);
    tracing::debug!(
        ?ip,
        limit = why.label(),
        "connection refused by the connection caps"
    );
}

#[async_trait]
impl<A> ServerApp for Connections<A>
where
    A: ServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // Pingora runs a kept-alive HTTP/1 connection's requests inside one
        // call and an HTTP/2 connection's streams too; a stream handed back
        // for reuse is already wrapped.
        let stream = if stream.as_any().is::<TapStream>() {
            stream
        } else {
            let ip = peer_ip(&stream);
            match self.caps.take(ip) {
                Ok(slot) => Box::new(TapStream::new(stream, self.keep, Some(slot))),
                Err(why) => {
                    refused(why, ip);
                    return None;
                }
            }
        };
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// The caps' check when a connection is accepted, before a TLS handshake
/// or any read: a client at its cap costs an `accept` and a `close`.
pub(crate) struct AcceptCheck(pub(crate) Arc<Caps>);

impl std::fmt::Debug for AcceptCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AcceptCheck")
    }
}

#[async_trait]
impl ConnectionFilter for AcceptCheck {
    async fn should_accept(&self, addr: Option<&std::net::SocketAddr>) -> bool {
        let ip = addr.map(std::net::SocketAddr::ip);
        match self.0.check(ip) {
            Ok(()) => true,
            Err(why) => {
                refused(why, ip);
                false
            }
        }
    }
}
