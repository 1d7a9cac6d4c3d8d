//! The bytes a client sent at the start of each request, as it sent them.
//!
//! Pingora percent-encodes a request line it cannot parse (a space, a
//! control byte, `<`, `>` or `"` in the target) and serves the escaped
//! target, so what the gateway's hooks see is no longer what the client
//! sent: `GET /entity?x=a b` arrives as `/entity?x=a%20b`, and the client's
//! bytes could equally have been a legitimate `%20`. RFC 9112 §3.2 wants
//! such a request refused (400), which needs the client's own bytes. This
//! wraps the connection's stream and keeps a copy of the first bytes read
//! for each request (at most the header limit, so a body is never copied),
//! which intake compares with the target Pingora parsed.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::http::ServerSession;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::connection::caps::Slot;

/// A client connection's stream, with the start of its current request
/// kept, and its place under the connection caps held for as long as the
/// connection lives.
#[derive(Debug)]
pub(crate) struct TapStream {
    inner: Stream,
    /// The first bytes read since the current request began.
    head: Vec<u8>,
    /// At most this many bytes are kept: the header limit, since a larger
    /// header is refused anyway.
    keep: usize,
    /// Set when a new request begins on this connection: the next read
    /// starts a new head.
    new_request: AtomicBool,
    _slot: Option<Slot>,
}

impl TapStream {
    pub(crate) fn new(inner: Stream, keep: usize, slot: Option<Slot>) -> Self {
        TapStream {
            inner,
            head: Vec::new(),
            keep,
            new_request: AtomicBool::new(false),
            _slot: slot,
        }
    }

    /// Whether the client's request line, as it sent it, is `method SP
    /// target SP`. An empty line or two before it are skipped, as HTTP/1.1
    /// parsers must (RFC 9112 §2.2).
    pub(crate) fn sent_request_line(&self, method: &[u8], target: &[u8]) -> bool {
        let mut line = self.head.as_slice();
        while let Some(rest) = line
            .strip_prefix(b"\r\n".as_slice())
            .or_else(|| line.strip_prefix(b"\n".as_slice()))
        {
            line = rest;
        }
        let Some(rest) = line.strip_prefix(method) else {
            return false;
        };
        let Some(rest) = rest.strip_prefix(b" ".as_slice()) else {
            return false;
        };
        let Some(rest) = rest.strip_prefix(target) else {
            return false;
        };
        rest.first() == Some(&b' ')
    }

    fn record(&mut self, read: &[u8]) {
        if std::mem::take(self.new_request.get_mut()) {
            self.head.clear();
        }
        let room = self.keep.saturating_sub(self.head.len());
        self.head.extend_from_slice(&read[..read.len().min(room)]);
    }
}

/// A request begins on this session's connection, before anything of it is
/// read. Pingora does not pipeline (bytes sent ahead of an answer close the
/// connection), so the next bytes read are the start of that request.
pub(crate) fn begin_request(session: &ServerSession) {
    if let Some(tap) = session
        .stream()
        .and_then(|s| s.as_any().downcast_ref::<TapStream>())
    {
        tap.new_request.store(true, Ordering::Relaxed);
    }
}

impl AsyncRead for TapStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.record(&buf.filled()[before..]);
        }
        polled
    }
}

impl AsyncWrite for TapStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for TapStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for TapStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for TapStream {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for TapStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for TapStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for TapStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for TapStream {
    // Peeked bytes are not consumed: they are recorded when read.
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}
