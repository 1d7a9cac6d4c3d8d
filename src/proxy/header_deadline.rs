//! A total deadline for receiving a request's line and headers.
//!
//! Pingora bounds each read of a request header (60 s by default), not the
//! whole header: a client that sends one byte every few seconds holds a
//! connection and a task for as long as it likes. This wraps the proxy
//! application: each request gets `timeouts.downstream_header_ms` from the
//! moment the connection starts waiting for it, and the gateway marks the
//! header as read from its first hook. A connection still without a complete
//! header at the deadline is dropped. The wait covers the idle time of a
//! keep-alive connection between requests too, so it also bounds that.
//!
//! Over HTTP/2 this runs per stream, once the `h2` layer has the whole
//! header block, so it never fires there; HTTP/2's own waits are bounded in
//! `downstream.rs` (the preface and handshake within this same deadline,
//! `http2.idle_timeout_ms` for a connection with nothing in progress, and
//! `http2.max_header_list_bytes` with the `h2` crate's CONTINUATION limit
//! for a header block).

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;

use crate::ops::metrics;

tokio::task_local! {
    static HEADER_READ: Cell<bool>;
    /// When the connection began waiting for its first request, if before
    /// this wrapper saw it (`downstream.rs` first reads the h2c preface's
    /// length to tell HTTP/2 from HTTP/1.1): that wait counts too.
    static WAITING_SINCE: Cell<Option<Instant>>;
}

/// Runs `connection` (one connection's requests) with its first request's
/// header deadline counted from `since` rather than from when this wrapper
/// first sees it.
pub async fn waiting_since<F: std::future::Future>(since: Instant, connection: F) -> F::Output {
    WAITING_SINCE
        .scope(Cell::new(Some(since)), connection)
        .await
}

/// Called by the gateway once a request header is in: from here on, the
/// header deadline no longer applies to this request.
pub fn mark_header_read() {
    let _ = HEADER_READ.try_with(|read| read.set(true));
}

pub struct HeaderDeadline<A> {
    inner: Arc<A>,
    header: Duration,
    per_read: Duration,
}

impl<A> HeaderDeadline<A> {
    pub fn new(inner: A, header: Duration, per_read: Duration) -> Self {
        HeaderDeadline {
            inner: Arc::new(inner),
            header,
            per_read,
        }
    }
}

#[async_trait]
impl<A> HttpServerApp for HeaderDeadline<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        crate::connection::tap::begin_request(&session);
        session.set_read_timeout(Some(self.per_read));
        let since = WAITING_SINCE
            .try_with(Cell::take)
            .ok()
            .flatten()
            .unwrap_or_else(Instant::now);
        let header = self.header.saturating_sub(since.elapsed());
        let request = self.inner.process_new_http(session, shutdown);
        HEADER_READ
            .scope(Cell::new(false), async move {
                let deadline = async {
                    tokio::time::sleep(header).await;
                    if HEADER_READ.try_with(Cell::get).unwrap_or(true) {
                        // The header arrived in time; the request runs on
                        // under its own time-outs.
                        std::future::pending::<()>().await;
                    }
                };
                tokio::select! {
                    reused = request => reused,
                    () = deadline => {
                        metrics::CLIENT_TIMEOUTS.inc(&["header"]);
                        tracing::debug!(?header, "request header not complete in time; closing");
                        None
                    }
                }
            })
            .await
    }

    fn h2_options(&self) -> Option<pingora::protocols::http::v2::server::H2Options> {
        self.inner.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.inner.server_options()
    }

    async fn http_cleanup(&self) {
        self.inner.http_cleanup().await
    }
}
