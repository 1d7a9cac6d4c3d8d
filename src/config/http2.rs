//! HTTP/2 downstream settings (`http2:`): whether plain listeners take
//! HTTP/2 with prior knowledge (h2c), and the per-connection bounds every
//! HTTP/2 connection gets, h2c or (once TLS listeners offer it) ALPN `h2`.
//!
//! HTTP/2 multiplexes many requests on one connection, so the per-request
//! limits of HTTP/1.1 are not enough: a client can open streams faster than
//! they are served, or open and reset them at once (CVE-2023-44487, "rapid
//! reset") so that the work goes on while the protocol counts nothing open.
//! Each bound here caps one such way in.

use pingora::protocols::http::v2::server::H2Options;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http2Settings {
    /// Plain listeners also speak HTTP/2 to a client that starts with the
    /// HTTP/2 preface (prior knowledge, RFC 9113 §3.3); HTTP/1.1 goes on as
    /// before. Off by default: there is no `Upgrade: h2c` (RFC 9113 drops it).
    pub h2c: bool,
    /// Streams a client may have open at once on one connection
    /// (SETTINGS_MAX_CONCURRENT_STREAMS), and requests the gateway works on
    /// at once for one connection: a stream the client resets still counts
    /// here until the gateway's work on it ends.
    pub max_concurrent_streams: u32,
    /// Largest decoded header list (SETTINGS_MAX_HEADER_LIST_SIZE, RFC 9113
    /// §6.5.2: names, values and 32 bytes a field); more is answered 431 by
    /// the HTTP/2 layer. `limits.max_header_bytes` still applies to what
    /// gets through.
    pub max_header_list_bytes: u32,
    /// Flow-control window of each stream for request bodies: what a client
    /// may send before the gateway reads it.
    pub stream_window_bytes: u32,
    /// Flow-control window of the whole connection for request bodies.
    pub connection_window_bytes: u32,
    /// Streams a client reset before the gateway started on them that may
    /// wait to be taken off the connection's queue at once; past this the
    /// connection is closed with GOAWAY ENHANCE_YOUR_CALM (the `h2` crate's
    /// rapid-reset bound).
    pub max_pending_reset_streams: usize,
    /// Streams on one connection, over its life, that the client reset
    /// before the gateway started on them; past this the connection is
    /// closed with GOAWAY ENHANCE_YOUR_CALM. Catches a rapid-reset flood
    /// that paces itself under the queue bound above.
    pub max_reset_streams: usize,
    /// Streams the gateway itself resets for the client's protocol errors on
    /// one connection; past this, GOAWAY ENHANCE_YOUR_CALM.
    pub max_local_error_resets: usize,
    /// Malformed requests (refused before the gateway sees them: bad
    /// `:path`, conflicting `Content-Length`, missing or conflicting
    /// authority) on one connection; at this many the connection is closed
    /// with GOAWAY ENHANCE_YOUR_CALM.
    pub max_malformed_streams: usize,
    /// A connection with no stream in progress for this long is closed.
    pub idle_timeout_ms: u64,
}

impl Default for Http2Settings {
    fn default() -> Self {
        Http2Settings {
            h2c: false,
            max_concurrent_streams: 100,
            max_header_list_bytes: 64 << 10,
            stream_window_bytes: 65_535,
            connection_window_bytes: 1 << 20,
            max_pending_reset_streams: 20,
            max_reset_streams: 200,
            max_local_error_resets: 256,
            max_malformed_streams: 32,
            idle_timeout_ms: 60_000,
        }
    }
}

/// The largest flow-control window HTTP/2 allows (RFC 9113 §6.9.1).
const MAX_WINDOW: u32 = (1 << 31) - 1;
/// The smallest: the protocol's initial window (RFC 9113 §6.9.2).
const MIN_WINDOW: u32 = 65_535;

impl Http2Settings {
    /// Problems as (key under `http2.`, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut range = |key: &str, value: u64, lo: u64, hi: u64| {
            if !(lo..=hi).contains(&value) {
                out.push((
                    format!("http2.{key}"),
                    format!("must be between {lo} and {hi}"),
                ));
            }
        };
        range(
            "max_concurrent_streams",
            self.max_concurrent_streams.into(),
            1,
            10_000,
        );
        range(
            "max_header_list_bytes",
            self.max_header_list_bytes.into(),
            1 << 10,
            1 << 20,
        );
        range(
            "stream_window_bytes",
            self.stream_window_bytes.into(),
            MIN_WINDOW.into(),
            MAX_WINDOW.into(),
        );
        range(
            "connection_window_bytes",
            self.connection_window_bytes.into(),
            MIN_WINDOW.into(),
            MAX_WINDOW.into(),
        );
        range(
            "max_pending_reset_streams",
            self.max_pending_reset_streams as u64,
            1,
            10_000,
        );
        range(
            "max_reset_streams",
            self.max_reset_streams as u64,
            1,
            1_000_000,
        );
        range(
            "max_local_error_resets",
            self.max_local_error_resets as u64,
            1,
            1_000_000,
        );
        range(
            "max_malformed_streams",
            self.max_malformed_streams as u64,
            1,
            10_000,
        );
        range("idle_timeout_ms", self.idle_timeout_ms, 1, 86_400_000);
        out
    }

    /// The `h2` server options these settings make. Only valid settings
    /// reach here (`problems` is empty), so the window sizes are in the
    /// range `h2` accepts.
    pub fn h2_options(&self) -> H2Options {
        let mut o = pingora::protocols::http::v2::server::default_h2_options();
        o.max_concurrent_streams(self.max_concurrent_streams)
            .max_header_list_size(self.max_header_list_bytes)
            .initial_window_size(self.stream_window_bytes.clamp(MIN_WINDOW, MAX_WINDOW))
            .initial_connection_window_size(
                self.connection_window_bytes.clamp(MIN_WINDOW, MAX_WINDOW),
            )
            .max_pending_accept_reset_streams(self.max_pending_reset_streams)
            .max_local_error_reset_streams(Some(self.max_local_error_resets));
        o
    }
}
