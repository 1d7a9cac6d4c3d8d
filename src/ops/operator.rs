//! The operator listener (`metrics.listen`): `/metrics` for Prometheus,
//! `/healthz` (the process answers), `/readyz` (policy loaded and one of the
//! upstream addresses in use reachable) and `/status` (active policy version, hash, last reload).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use prometheus::{Encoder, TextEncoder};
use serde_json::json;

use crate::policy::PolicyStore;

/// The upstream addresses requests use now (the proxy's address book; a
/// function, so that `ops` does not import `proxy`, which imports `ops`).
pub type UpstreamAddresses = Box<dyn Fn() -> Vec<std::net::SocketAddr> + Send + Sync>;

pub struct Admin {
    pub policy: Arc<PolicyStore>,
    pub upstream_addresses: UpstreamAddresses,
}

fn respond(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

impl Admin {
    /// Ready when the address set in use is not empty and one of its
    /// addresses accepts a connection. The addresses are those requests use
    /// now, not a fresh resolution: a resolver outage the gateway rides out
    /// on its last good addresses does not make it unready.
    async fn upstream_reachable(&self) -> bool {
        for addr in (self.upstream_addresses)() {
            let connect = tokio::net::TcpStream::connect(addr);
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), connect).await {
                return true;
            }
        }
        false
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        // Pingora's http_app turns keep-alive on for every request; honour a
        // client that asked to close (HTTP/1.0 health checkers read to EOF).
        let req = session.req_header();
        let connection = req
            .headers
            .get("connection")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let close = connection.contains("close")
            || (req.version == http::Version::HTTP_10 && !connection.contains("keep-alive"));
        if close {
            session.set_keepalive(None);
        }
        match session.req_header().uri.path() {
            "/metrics" => {
                let mut buf = Vec::new();
                crate::ops::metrics::refresh();
                if let Some(st) = self.policy.etcd_state() {
                    crate::ops::metrics::policy_store(
                        st.connected,
                        st.applied_revision,
                        st.last_sync.map(|t| t.elapsed().as_secs_f64()),
                        st.stale || st.pending.is_some(),
                    );
                }
                match TextEncoder::new().encode(&prometheus::gather(), &mut buf) {
                    Ok(()) => respond(200, "text/plain; version=0.0.4", buf),
                    Err(e) => respond(500, "text/plain", e.to_string().into_bytes()),
                }
            }
            "/healthz" => respond(200, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                if self.upstream_reachable().await {
                    respond(200, "text/plain", b"ready\n".to_vec())
                } else {
                    respond(503, "text/plain", b"upstream unreachable\n".to_vec())
                }
            }
            "/status" => {
                let snap = self.policy.load();
                let body = json!({
                    "policy": {
                        "path": self.policy.path().display().to_string(),
                        "version": snap.version,
                        "hash": snap.hash,
                        "clients": snap.clients.len(),
                        "shadow_clients": snap.shadow_clients,
                        "entity_types": snap.entity_types.len(),
                        "last_reload": self.policy.last_status(),
                    },
                    "store": match self.policy.etcd_state() {
                        None => json!({"kind": "file"}),
                        Some(st) => json!({
                            "kind": "etcd",
                            "connected": st.connected,
                            "applied_revision": st.applied_revision,
                            "guard_revision": st.guard_revision,
                            "seconds_since_sync": st.last_sync.map(|t| t.elapsed().as_secs_f64()),
                            "stale": st.stale,
                            "pending": st.pending,
                        }),
                    },
                    "build": {"version": env!("CARGO_PKG_VERSION")},
                });
                respond(
                    200,
                    "application/json",
                    // A `Value`'s pretty Display cannot fail.
                    format!("{body:#}").into_bytes(),
                )
            }
            _ => respond(404, "text/plain", b"not found\n".to_vec()),
        }
    }
}
