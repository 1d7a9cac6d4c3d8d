//! Each downstream connection, before any request: HTTP/1.1, or HTTP/2 by
//! prior knowledge (h2c, when `http2.h2c` is on) or by ALPN `h2` on TLS.
//!
//! HTTP/1.1 goes to Pingora's own loop (through the header deadline). HTTP/2
//! is served by the loop here instead of Pingora's, for three bounds that
//! loop lacks:
//! - Pingora spawns a task per accepted stream and never looks back; the
//!   `h2` crate stops counting a stream against
//!   `SETTINGS_MAX_CONCURRENT_STREAMS` once the client resets it, while the
//!   task works on. A client opening and resetting streams (CVE-2023-44487)
//!   so gets unbounded work. Here a connection has at most
//!   `http2.max_concurrent_streams` requests in the gateway's hands; further
//!   streams wait in the `h2` queue, whose reset streams the `h2` crate
//!   bounds (`max_pending_reset_streams`).
//! - A stream the client reset before the gateway took it is dropped unseen
//!   and counted; past `http2.max_reset_streams` the connection gets GOAWAY.
//! - Pingora reads the h2c preface with no time limit, before the header
//!   deadline starts: a client sending nothing would hold the connection
//!   for ever. Here the preface must arrive within
//!   `timeouts.downstream_header_ms`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::v2::server::{self as h2_server, H2Accept, HttpSession};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Digest, Stream, ALPN};
use pingora::server::ShutdownWatch;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::config::http2::Http2Settings;
use crate::ops::metrics;
use crate::proxy::header_deadline;

/// RFC 9113 §3.4.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long a connection being closed for abuse may take to receive its
/// GOAWAY before it is dropped.
const GOAWAY_FLUSH: Duration = Duration::from_secs(1);

pub struct Downstream<A> {
    inner: Arc<A>,
    http2: Http2Settings,
    /// `timeouts.downstream_header_ms`: the h2c preface, like an HTTP/1.1
    /// request header, must arrive within it.
    header: Duration,
}

impl<A> Downstream<A> {
    pub fn new(inner: A, http2: Http2Settings, header: Duration) -> Self {
        Downstream {
            inner: Arc::new(inner),
            http2,
            header,
        }
    }
}

#[async_trait]
impl<A> ServerApp for Downstream<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let since = Instant::now();
        let h2 = if stream.get_ssl_digest().is_some() {
            matches!(stream.selected_alpn_proto(), Some(ALPN::H2))
        } else if self.http2.h2c {
            let mut buf = [0u8; H2_PREFACE.len()];
            // An HTTP/1.1 request is never shorter than the preface (the
            // request line and a Host header alone are longer), so waiting
            // for this many bytes delays none.
            match tokio::time::timeout(self.header, stream.try_peek(&mut buf)).await {
                Err(_) => {
                    metrics::CLIENT_TIMEOUTS.inc(&["header"]);
                    tracing::debug!("no request within the header deadline; closing");
                    return None;
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "connection closed before a request");
                    return None;
                }
                Ok(Ok(peeked)) => peeked && buf == *H2_PREFACE,
            }
        } else {
            false
        };
        if !h2 {
            // HTTP/1.1 (the peeked bytes are read again): Pingora's loop.
            // The inner app has no `h2c` option of its own, so nothing here
            // is HTTP/2. The time the peek took counts against the first
            // request's header deadline.
            return header_deadline::waiting_since(since, self.inner.process_new(stream, shutdown))
                .await;
        }
        self.serve_h2(stream, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        self.inner.http_cleanup().await
    }
}

impl<A> Downstream<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn serve_h2(&self, stream: Stream, shutdown: &ShutdownWatch) {
        let digest = Arc::new(Digest {
            ssl_digest: stream.get_ssl_digest(),
            timing_digest: stream.get_timing_digest(),
            proxy_digest: stream.get_proxy_digest(),
            socket_digest: stream.get_socket_digest(),
        });
        let handshake = h2_server::handshake(stream, Some(self.http2.h2_options()));
        let mut conn = match tokio::time::timeout(self.header, handshake).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "HTTP/2 handshake failed");
                return;
            }
            Err(_) => {
                metrics::CLIENT_TIMEOUTS.inc(&["header"]);
                tracing::debug!("HTTP/2 handshake not complete in time; closing");
                return;
            }
        };
        let max = self.http2.max_concurrent_streams as usize;
        let slots = Arc::new(Semaphore::new(max));
        let done = Arc::new(Notify::new());
        let idle = Duration::from_millis(self.http2.idle_timeout_ms);
        let mut shutdown = shutdown.clone();
        let mut draining = false;
        let mut reset = 0usize;
        let mut malformed = 0usize;
        loop {
            // A slot for the next stream first, so that no more than `max`
            // are worked on; while none is free the connection is still
            // driven (flow control, pings, resets), and new streams wait in
            // the `h2` queue.
            let slot = match slots.clone().try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => tokio::select! {
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => return,
                    },
                    _ = std::future::poll_fn(|cx| conn.poll_closed(cx)) => return,
                    _ = shutdown.changed(), if !draining => {
                        conn.graceful_shutdown();
                        draining = true;
                        continue;
                    }
                },
            };
            let accepted = tokio::select! {
                biased;
                _ = shutdown.changed(), if !draining => {
                    // GOAWAY; streams already open are still served.
                    conn.graceful_shutdown();
                    draining = true;
                    continue;
                }
                accepted = HttpSession::from_h2_conn(&mut conn, digest.clone()) => accepted,
                () = idle_for(&slots, &done, max, idle), if !draining => {
                    tracing::debug!(?idle, "HTTP/2 connection idle; closing");
                    return;
                }
            };
            match accepted {
                Err(e) => {
                    if calmed_by_h2(&e) {
                        metrics::HTTP2_GOAWAYS.inc(&["h2"]);
                        tracing::warn!(error = %e, "the HTTP/2 layer closed a connection for abuse");
                    } else {
                        // Clients often close without GOAWAY: not an error here.
                        tracing::debug!(error = %e, "HTTP/2 connection ended");
                    }
                    return;
                }
                Ok(None) => return,
                Ok(Some(H2Accept::Rejected)) => {
                    malformed += 1;
                    if malformed >= self.http2.max_malformed_streams {
                        metrics::HTTP2_GOAWAYS.inc(&["malformed"]);
                        tracing::warn!(
                            malformed,
                            "closing an HTTP/2 connection: too many malformed requests"
                        );
                        go_away(&mut conn).await;
                        return;
                    }
                }
                Ok(Some(H2Accept::Session(mut session))) => {
                    if was_reset(&mut session) {
                        // Never started: no work, but counted.
                        reset += 1;
                        if reset > self.http2.max_reset_streams {
                            metrics::HTTP2_GOAWAYS.inc(&["resets"]);
                            tracing::warn!(
                                reset,
                                "closing an HTTP/2 connection: too many streams reset by the client"
                            );
                            go_away(&mut conn).await;
                            return;
                        }
                        continue;
                    }
                    self.spawn(session, slot, done.clone(), shutdown.clone());
                }
            }
        }
    }

    fn spawn(
        &self,
        session: HttpSession,
        slot: OwnedSemaphorePermit,
        done: Arc<Notify>,
        shutdown: ShutdownWatch,
    ) {
        let app = self.inner.clone();
        tokio::spawn(async move {
            app.process_new_http(ServerSession::new_http2(session), &shutdown)
                .await;
            drop(slot);
            done.notify_one();
        });
    }
}

/// Whether the client already reset this stream (RST_STREAM before the
/// gateway took it off the queue). Polled once, without waiting.
fn was_reset(session: &mut HttpSession) -> bool {
    let mut idle = session.idle();
    let mut cx = Context::from_waker(Waker::noop());
    matches!(Pin::new(&mut idle).poll(&mut cx), Poll::Ready(Ok(_)))
}

/// Completes once no stream has been in progress for `idle`. The accept
/// loop holds one slot of its own while it waits.
async fn idle_for(slots: &Semaphore, done: &Notify, max: usize, idle: Duration) {
    loop {
        if slots.available_permits() + 1 >= max {
            tokio::time::sleep(idle).await;
            return;
        }
        done.notified().await;
    }
}

/// Whether the `h2` layer itself ended the connection with GOAWAY
/// ENHANCE_YOUR_CALM (one of its abuse bounds), as opposed to the client
/// closing or a plain protocol error.
fn calmed_by_h2(e: &pingora::Error) -> bool {
    e.root_cause().downcast_ref::<h2::Error>().is_some_and(|h| {
        h.is_go_away() && h.is_library() && h.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM)
    })
}

/// GOAWAY ENHANCE_YOUR_CALM, sent within [`GOAWAY_FLUSH`], then the
/// connection is dropped with every stream on it.
async fn go_away(conn: &mut h2::server::Connection<Stream, bytes::Bytes>) {
    conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
    let _ = tokio::time::timeout(
        GOAWAY_FLUSH,
        std::future::poll_fn(|cx| conn.poll_closed(cx)),
    )
    .await;
}
