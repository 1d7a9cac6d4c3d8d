//! The upstream's addresses: every address of every `upstream.servers` name,
//! resolved at start and again every `upstream.resolve_interval_secs`. The
//! set of peers in use is swapped whole ([`ArcSwap`]): a request holds the
//! set it started with, so a swap never drops one. A name that stops
//! resolving keeps its last good addresses, and the failure is logged and
//! counted (`recordgate_upstream_resolve_failures_total`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::prelude::HttpPeer;
use pingora::protocols::tls::CaType;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::tls::x509::X509;
use pingora::upstreams::peer::Peer;

use crate::config::settings::{Timeouts, UpstreamSettings};
use crate::ops::metrics;

/// Resolves one `host:port` to its addresses. The system resolver in the
/// gateway; tests pass their own to drive the refresh.
pub(crate) type Lookup<'a> = dyn Fn(&str) -> std::io::Result<Vec<SocketAddr>> + Send + Sync + 'a;

/// The system resolver (getaddrinfo: `/etc/hosts`, DNS). Blocking: called
/// off the request path only.
pub(crate) fn system_lookup(server: &str) -> std::io::Result<Vec<SocketAddr>> {
    Ok(server.to_socket_addrs()?.collect())
}

/// The peers in use, in round-robin order.
pub(crate) type Peers = Arc<Vec<Arc<HttpPeer>>>;

/// What every peer shares: TLS, trust and time-outs.
struct PeerSpec {
    tls: bool,
    sni: Option<String>,
    ca: Option<Arc<CaType>>,
    connect: Duration,
    read: Duration,
    write: Duration,
    idle: Duration,
}

impl PeerSpec {
    fn peer(&self, server: &str, addr: SocketAddr) -> HttpPeer {
        let host = server.rsplit_once(':').map(|(h, _)| h).unwrap_or(server);
        let sni = self
            .sni
            .clone()
            .unwrap_or_else(|| host.trim_matches(['[', ']']).to_string());
        let mut peer = HttpPeer::new(addr, self.tls, sni);
        peer.options.connection_timeout = Some(self.connect);
        peer.options.read_timeout = Some(self.read);
        peer.options.write_timeout = Some(self.write);
        peer.options.idle_timeout = Some(self.idle);
        // Pingora verifies the certificate chain and the SNI name by default;
        // said here so that a change of default cannot turn it off silently.
        peer.options.verify_cert = true;
        peer.options.verify_hostname = true;
        peer.options.ca = self.ca.clone();
        peer
    }
}

/// Reads `upstream.ca_file`: a PEM bundle with at least one certificate.
pub(crate) fn load_ca_file(path: &Path) -> Result<CaType, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("upstream.ca_file: cannot read {}: {e}", path.display()))?;
    let certs = X509::stack_from_pem(&pem).map_err(|e| {
        format!(
            "upstream.ca_file: {} is not a PEM certificate bundle: {e}",
            path.display()
        )
    })?;
    if certs.is_empty() {
        return Err(format!(
            "upstream.ca_file: {} is not a PEM certificate bundle: it holds no certificate",
            path.display()
        ));
    }
    Ok(certs.into_boxed_slice())
}

pub(crate) struct AddressBook {
    servers: Vec<String>,
    spec: PeerSpec,
    /// Last good addresses of each server, in the order of `servers`.
    last_good: Mutex<Vec<Vec<SocketAddr>>>,
    current: ArcSwap<Vec<Arc<HttpPeer>>>,
}

impl AddressBook {
    /// Resolves every name once; each must resolve to at least one address,
    /// or the gateway does not start.
    pub(crate) fn new(
        settings: &UpstreamSettings,
        timeouts: &Timeouts,
        lookup: &Lookup<'_>,
    ) -> Result<AddressBook, String> {
        if settings.servers.is_empty() {
            return Err("upstream.servers: at least one server is required".into());
        }
        let ca = match &settings.ca_file {
            Some(path) => Some(Arc::new(load_ca_file(path)?)),
            None => None,
        };
        let spec = PeerSpec {
            tls: settings.tls,
            sni: settings.sni.clone(),
            ca,
            connect: Duration::from_millis(timeouts.upstream_connect_ms),
            read: Duration::from_millis(timeouts.upstream_read_ms),
            write: Duration::from_millis(timeouts.upstream_write_ms),
            idle: Duration::from_millis(timeouts.upstream_idle_ms),
        };
        let mut last_good = Vec::with_capacity(settings.servers.len());
        for (i, server) in settings.servers.iter().enumerate() {
            let addrs = lookup(server.as_str())
                .map_err(|e| format!("upstream.servers[{i}]: cannot resolve {server}: {e}"))?;
            if addrs.is_empty() {
                return Err(format!(
                    "upstream.servers[{i}]: {server} resolves to no address"
                ));
            }
            last_good.push(addrs);
        }
        let peers = build_peers(&settings.servers, &spec, &last_good);
        Ok(AddressBook {
            servers: settings.servers.clone(),
            spec,
            last_good: Mutex::new(last_good),
            current: ArcSwap::from_pointee(peers),
        })
    }

    /// The peers in use now. A request keeps the set it loaded for its
    /// whole exchange, whatever is swapped in meanwhile.
    pub(crate) fn current(&self) -> Peers {
        self.current.load_full()
    }

    /// The addresses in use now (for `/readyz`).
    pub(crate) fn addresses(&self) -> Vec<SocketAddr> {
        self.current
            .load()
            .iter()
            .filter_map(|p| p.address().as_inet().copied())
            .collect()
    }

    /// Resolves every name again. A name that resolves replaces its
    /// addresses; one that fails (or resolves to nothing) keeps its last
    /// good ones. The peer set is swapped only when it changed, so pooled
    /// connections are kept. Returns the number of names that failed.
    pub(crate) fn refresh(&self, lookup: &Lookup<'_>) -> usize {
        let mut failures = 0;
        let mut fresh = Vec::with_capacity(self.servers.len());
        for server in &self.servers {
            match lookup(server.as_str()) {
                Ok(addrs) if !addrs.is_empty() => fresh.push(Some(addrs)),
                Ok(_) => {
                    failures += 1;
                    metrics::UPSTREAM_RESOLVE_FAILURES.inc();
                    tracing::warn!(
                        server = server.as_str(),
                        "upstream name resolves to no address; keeping its last good addresses"
                    );
                    fresh.push(None);
                }
                Err(e) => {
                    failures += 1;
                    metrics::UPSTREAM_RESOLVE_FAILURES.inc();
                    tracing::warn!(server = server.as_str(), error = %e, "upstream name does not resolve; keeping its last good addresses");
                    fresh.push(None);
                }
            }
        }
        let mut last_good = self.last_good.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed = false;
        for (kept, new) in last_good.iter_mut().zip(fresh) {
            if let Some(new) = new {
                if *kept != new {
                    *kept = new;
                    changed = true;
                }
            }
        }
        if changed {
            let peers = build_peers(&self.servers, &self.spec, &last_good);
            tracing::info!(
                addresses = peers.len(),
                "upstream addresses changed; new set in use"
            );
            self.current.store(Arc::new(peers));
        }
        failures
    }
}

/// One peer per (server, address), in the order of the servers and then of
/// the resolver's answer; an address two names share is used once.
fn build_peers(
    servers: &[String],
    spec: &PeerSpec,
    addrs: &[Vec<SocketAddr>],
) -> Vec<Arc<HttpPeer>> {
    let mut seen: Vec<SocketAddr> = Vec::new();
    let mut peers = Vec::new();
    for (server, addrs) in servers.iter().zip(addrs) {
        for addr in addrs {
            if seen.contains(addr) {
                continue;
            }
            seen.push(*addr);
            peers.push(Arc::new(spec.peer(server, *addr)));
        }
    }
    peers
}

/// Re-resolves the upstream names every `upstream.resolve_interval_secs`.
pub(crate) struct Resolver {
    pub(crate) book: Arc<AddressBook>,
    pub(crate) interval: Duration,
}

#[async_trait]
impl BackgroundService for Resolver {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate; the start already resolved.
        tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {
                    let book = self.book.clone();
                    // getaddrinfo blocks: off the runtime's workers.
                    let done = tokio::task::spawn_blocking(move || book.refresh(&system_lookup)).await;
                    if let Err(e) = done {
                        tracing::error!(error = %e, "upstream name resolution did not complete");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(servers: &[&str]) -> UpstreamSettings {
        UpstreamSettings {
            servers: servers.iter().map(|s| s.to_string()).collect(),
            tls: false,
            sni: None,
            ca_file: None,
            resolve_interval_secs: 30,
            credentials: None,
        }
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    /// A resolver whose answers the test changes between refreshes.
    struct Table(Mutex<Vec<(String, std::io::Result<Vec<SocketAddr>>)>>);

    impl Table {
        fn set(&self, name: &str, answer: std::io::Result<Vec<SocketAddr>>) {
            let mut t = self.0.lock().unwrap();
            t.retain(|(n, _)| n != name);
            t.push((name.to_string(), answer));
        }

        fn lookup(&self, name: &str) -> std::io::Result<Vec<SocketAddr>> {
            let t = self.0.lock().unwrap();
            match t.iter().find(|(n, _)| n == name) {
                Some((_, Ok(a))) => Ok(a.clone()),
                Some((_, Err(e))) => Err(std::io::Error::new(e.kind(), e.to_string())),
                None => Err(std::io::Error::other("unknown name")),
            }
        }
    }

    #[test]
    fn every_address_of_every_name_is_used_and_refreshed() {
        let table = Table(Mutex::new(Vec::new()));
        table.set("a:80", Ok(addrs(&["10.0.0.1:80", "10.0.0.2:80"])));
        table.set("b:80", Ok(addrs(&["10.0.0.3:80", "10.0.0.1:80"])));
        let lookup = |n: &str| table.lookup(n);
        let book =
            AddressBook::new(&settings(&["a:80", "b:80"]), &Timeouts::default(), &lookup).unwrap();
        assert_eq!(
            book.addresses(),
            addrs(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"])
        );

        // A request in flight keeps the set it loaded.
        let held = book.current();
        table.set("a:80", Ok(addrs(&["10.0.0.9:80"])));
        assert_eq!(book.refresh(&lookup), 0);
        assert_eq!(
            book.addresses(),
            addrs(&["10.0.0.9:80", "10.0.0.3:80", "10.0.0.1:80"])
        );
        assert_eq!(held.len(), 3);
        assert_eq!(
            held[1].address().as_inet().copied(),
            Some("10.0.0.2:80".parse().unwrap())
        );

        // Unchanged answers: the very same set stays (pooled connections kept).
        let before = book.current();
        assert_eq!(book.refresh(&lookup), 0);
        assert!(Arc::ptr_eq(&before, &book.current()));
    }

    #[test]
    fn a_name_that_stops_resolving_keeps_its_last_good_addresses() {
        let table = Table(Mutex::new(Vec::new()));
        table.set("a:80", Ok(addrs(&["10.0.0.1:80"])));
        table.set("b:80", Ok(addrs(&["10.0.0.2:80"])));
        let lookup = |n: &str| table.lookup(n);
        let book =
            AddressBook::new(&settings(&["a:80", "b:80"]), &Timeouts::default(), &lookup).unwrap();
        let failures_before = metrics::UPSTREAM_RESOLVE_FAILURES.get();
        table.set("a:80", Err(std::io::Error::other("NXDOMAIN")));
        table.set("b:80", Ok(Vec::new()));
        assert_eq!(book.refresh(&lookup), 2);
        assert_eq!(book.addresses(), addrs(&["10.0.0.1:80", "10.0.0.2:80"]));
        assert!(metrics::UPSTREAM_RESOLVE_FAILURES.get() >= failures_before + 2);
        // Back again, with a new address.
        table.set("a:80", Ok(addrs(&["10.0.0.5:80"])));
        assert_eq!(book.refresh(&lookup), 1);
        assert_eq!(book.addresses(), addrs(&["10.0.0.5:80", "10.0.0.2:80"]));
    }

    #[test]
    fn a_name_that_does_not_resolve_at_start_is_refused_with_its_key() {
        let table = Table(Mutex::new(Vec::new()));
        table.set("a:80", Ok(addrs(&["10.0.0.1:80"])));
        let lookup = |n: &str| table.lookup(n);
        let e = AddressBook::new(&settings(&["a:80", "b:80"]), &Timeouts::default(), &lookup)
            .err()
            .unwrap();
        assert!(
            e.starts_with("upstream.servers[1]: cannot resolve b:80"),
            "{e}"
        );
    }

    #[test]
    fn sni_defaults_to_each_name_and_verification_is_on() {
        let table = Table(Mutex::new(Vec::new()));
        table.set("api.example:443", Ok(addrs(&["10.0.0.1:443"])));
        let lookup = |n: &str| table.lookup(n);
        let mut s = settings(&["api.example:443"]);
        s.tls = true;
        let book = AddressBook::new(&s, &Timeouts::default(), &lookup).unwrap();
        let peer = book.current()[0].clone();
        assert_eq!(peer.sni, "api.example");
        assert!(peer.options.verify_cert && peer.options.verify_hostname);
    }
}
