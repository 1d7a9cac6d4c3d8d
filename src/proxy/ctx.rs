//! Per-request state: what the stages decided, read once at the end by the
//! access log and the per-request metrics.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

pub struct Ctx {
    pub(crate) start: Instant,
    pub(crate) request_id: String,
    /// The route's metric label (`management` for the management API).
    pub(crate) route: &'static str,
    /// The caller, once the decision identified it (refused calls included).
    pub(crate) client_id: Option<String>,
    /// The `decision` label, set by the respond stage.
    pub(crate) decision: &'static str,
    /// The status sent, set by the respond stage (0: nothing was sent).
    pub(crate) status: u16,
    /// From sending the upstream request to the end of its response, set by
    /// the relay stage when the exchange ends.
    pub(crate) upstream_time: Duration,
    /// Time spent waiting on the client: reading its request body (intake)
    /// and writing the response to it (respond, relay). Not the gateway's
    /// own work, so `recordgate_gateway_duration_seconds` leaves it out.
    pub(crate) client_wait: Duration,
    /// The address the decision used (the permit's), once one was made.
    pub(crate) client_ip: Option<IpAddr>,
    /// Request body bytes read from the client, counted by the intake stage.
    pub(crate) bytes_in: u64,
    /// Response body bytes written to the client, counted where they are
    /// written (respond, or relay when streaming).
    pub(crate) bytes_out: u64,
    /// The upstream server the forward stage last tried, if it called one.
    pub(crate) upstream_addr: Option<SocketAddr>,
    /// The caller is in shadow mode: `decision` is what would have been
    /// decided, and the call went through as sent.
    pub(crate) shadow: bool,
}

impl Ctx {
    pub(crate) fn new() -> Ctx {
        Ctx {
            start: Instant::now(),
            request_id: String::new(),
            route: "unknown",
            client_id: None,
            decision: "allowed",
            status: 0,
            upstream_time: Duration::ZERO,
            client_wait: Duration::ZERO,
            client_ip: None,
            bytes_in: 0,
            bytes_out: 0,
            upstream_addr: None,
            shadow: false,
        }
    }

    /// The gateway's own share of `total`: neither the upstream's time nor
    /// the time spent waiting on the client.
    pub(crate) fn gateway_time(&self, total: Duration) -> Duration {
        total
            .saturating_sub(self.upstream_time)
            .saturating_sub(self.client_wait)
    }
}

/// A fresh request id: sixteen base-36 characters.
pub(crate) fn new_request_id() -> String {
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

/// A request id a trusted proxy passed on, if it is one we would make.
pub(crate) fn acceptable_request_id(v: &str) -> bool {
    !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}
