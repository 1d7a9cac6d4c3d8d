//! Assembles the Pingora server: the gateway, the operator listener, the
//! upstream resolver and the policy reloader (file edits and SIGHUP); and
//! `check`'s preflight, which builds the same parts without starting.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};

use crate::cidr::{parse_cidr, CidrSet};
use crate::config::settings::Settings;
use crate::decide::routes::{Issuer, RouteTable};
use crate::decide::Rules;
use crate::management::{self, Services};
use crate::ops::metrics;
use crate::params::ParamNames;
use crate::policy::PolicyStore;
use crate::proxy::forward::Upstream;
use crate::proxy::resolve::{system_lookup, AddressBook, Resolver};
use crate::proxy::Gateway;
use crate::tls::reload::CertReloader;
use crate::tls::TlsListener;

pub struct ServeOptions {
    pub upgrade: bool,
    pub daemon: bool,
}

/// What the settings alone make, before any port is bound or the policy
/// read. `serve` builds it to start; `check` builds it to find every
/// problem `serve` would refuse to start with, from the same code.
struct Parts {
    routes: RouteTable,
    rules: Arc<Rules>,
    book: Arc<AddressBook>,
    host: Option<http::HeaderValue>,
    authorization: Option<http::HeaderValue>,
}

fn trusted_proxies(settings: &Settings) -> Result<CidrSet, String> {
    let mut nets = Vec::new();
    for c in &settings.trusted_proxies {
        nets.push(parse_cidr(c).map_err(|e| format!("trusted_proxies: {e}"))?);
    }
    Ok(CidrSet::new(&nets))
}

fn parts(
    settings: &Settings,
    tokens: Option<Arc<crate::tokens::TokenStore>>,
) -> Result<Parts, String> {
    let routes = match &settings.routes {
        Some(defs) => RouteTable::from_defs(defs)?,
        None => RouteTable::builtin(),
    };
    let book = Arc::new(AddressBook::new(
        &settings.upstream,
        &settings.timeouts,
        &system_lookup,
    )?);
    let authorization = match &settings.upstream.credentials {
        None => None,
        Some(c) => {
            let base = settings
                .policy
                .parent()
                .unwrap_or(std::path::Path::new("."));
            let secret = c
                .secret
                .resolve(base)
                .map_err(|e| format!("upstream.credentials.secret: {e}"))?;
            let token = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", c.client_id, secret));
            let mut value = http::HeaderValue::from_str(&format!("Basic {token}"))
                .map_err(|_| "upstream.credentials: not valid in an HTTP header".to_string())?;
            value.set_sensitive(true);
            Some(value)
        }
    };
    let host = match settings.upstream.servers.first() {
        None => None,
        Some(server) => Some(
            http::HeaderValue::from_str(server)
                .map_err(|_| format!("upstream.servers: {server:?} is not a valid Host"))?,
        ),
    };
    let rate_limit_default = match &settings.rate_limit_default {
        None => None,
        Some(def) => Some(
            crate::rate::RateLimit::new(def)
                .map_err(|e| format!("rate_limit_default.{}: {}", e.field, e.message))?,
        ),
    };
    let rules = Arc::new(Rules {
        trusted_proxies: trusted_proxies(settings)?,
        max_skew_secs: settings.auth.signature_max_skew_secs,
        rate_limit_default,
        tokens,
    });
    Ok(Parts {
        routes,
        rules,
        book,
        host,
        authorization,
    })
}

/// Builds everything that can fail before the server starts, so that a bad
/// setting is reported as an error rather than a half-started process. The
/// address book is returned for the re-resolution and `/readyz`.
pub(crate) fn build_gateway(
    settings: Arc<Settings>,
    policy: Arc<PolicyStore>,
    tokens: Option<Arc<crate::tokens::TokenStore>>,
) -> Result<(Gateway, Arc<AddressBook>), String> {
    let issuers = match tokens {
        Some(_) => Issuer::ALL.iter().map(|i| (i.route(), *i)).collect(),
        None => Vec::new(),
    };
    let p = parts(&settings, tokens)?;
    let known_params = ParamNames::union([&p.routes.known_params(), &management::known_params()]);
    let management = Services {
        known_params: Arc::new(known_params.clone()),
        store: policy.clone(),
        audit: Arc::new(crate::policy::audit::AuditLog::new(
            settings.audit_log_path(),
        )),
        rules: p.rules.clone(),
    };
    let upstream =
        Upstream::new(p.book.clone(), &settings.timeouts).with_identity(p.host, p.authorization);
    Ok((
        Gateway {
            policy,
            known_params,
            routes: p.routes,
            issuers,
            upstream,
            rules: p.rules,
            settings,
            management,
        },
        p.book,
    ))
}

/// What `check` found beyond the settings file itself.
#[derive(Debug, Default)]
pub struct Preflight {
    /// `serve` would refuse to start.
    pub errors: Vec<String>,
    /// Not a fault of the settings, but `serve` could fail here now (a port
    /// another process holds, such as the running gateway).
    pub warnings: Vec<String>,
}

/// Everything `serve` would refuse at start, found without starting: the
/// parts `build_gateway` makes (routes and their features, upstream names,
/// the CA file, credentials) and the listening addresses, each bound for a
/// moment and released. The policy file is not touched.
pub fn preflight(settings: &Settings) -> Preflight {
    let mut out = Preflight::default();
    if let Err(e) = parts(settings, None) {
        out.errors.push(e);
    }
    if let Some(t) = &settings.tokens {
        if let Err(e) = crate::tokens::keyed(t, &settings.policy) {
            out.errors.push(e);
        }
    }
    match tls_listeners(settings) {
        Ok(listeners) => out.warnings.extend(expiring_soon(&listeners)),
        Err(errors) => out.errors.extend(errors),
    }
    check_listens(settings, &mut out);
    out
}

/// Certificates that are valid but close to expiry (the alert's 14 days):
/// not a reason to refuse a start, but worth a line from `check`.
fn expiring_soon(listeners: &[Arc<TlsListener>]) -> Vec<String> {
    const SOON_SECS: i64 = 14 * 86_400;
    let now = crate::proxy::now_secs();
    let mut out = Vec::new();
    for (i, l) in listeners.iter().enumerate() {
        for (j, c) in l.certs.load().iter().enumerate() {
            let left = c.not_after_unix - now;
            if left < SOON_SECS {
                out.push(format!(
                    "tls_listen[{i}].certificates[{j}].cert: expires in {} hours",
                    left / 3600
                ));
            }
        }
    }
    out
}

/// Every TLS listener with its certificates read and checked, or every
/// problem found, each naming its setting key.
fn tls_listeners(settings: &Settings) -> Result<Vec<Arc<TlsListener>>, Vec<String>> {
    let mut listeners = Vec::new();
    let mut errors = Vec::new();
    for (i, t) in settings.tls_listen.iter().enumerate() {
        match crate::tls::load_listener(i, t) {
            Ok(l) => listeners.push(Arc::new(l)),
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() {
        Ok(listeners)
    } else {
        Err(errors)
    }
}

/// Binds each listening address alone, then every pair together, with std
/// sockets released at once. Alone, an address in use or not permitted is
/// a warning (the running gateway holds its own ports; a service may bind
/// low ports by capability); one not on this host is an error. Together,
/// a pair that cannot both be bound (the same address twice, `0.0.0.0:P`
/// and a dual-stack `[::]:P`) is an error naming both keys.
fn check_listens(settings: &Settings, out: &mut Preflight) {
    use std::io::ErrorKind;
    use std::net::{SocketAddr, TcpListener};

    let mut keyed: Vec<(String, SocketAddr)> = Vec::new();
    for (i, a) in settings.listen.iter().enumerate() {
        if let Ok(addr) = a.parse() {
            keyed.push((format!("listen[{i}]"), addr));
        }
    }
    for (i, t) in settings.tls_listen.iter().enumerate() {
        if let Ok(addr) = t.address.parse() {
            keyed.push((format!("tls_listen[{i}].address"), addr));
        }
    }
    if let Some(addr) = settings
        .metrics
        .listen
        .as_deref()
        .and_then(|a| a.parse().ok())
    {
        keyed.push(("metrics.listen".into(), addr));
    }
    let mut alone = Vec::with_capacity(keyed.len());
    for (key, addr) in &keyed {
        match TcpListener::bind(addr) {
            Ok(_released) => alone.push(true),
            Err(e) if matches!(e.kind(), ErrorKind::AddrInUse | ErrorKind::PermissionDenied) => {
                out.warnings
                    .push(format!("{key}: {addr} cannot be bound now: {e}"));
                alone.push(false);
            }
            Err(e) => {
                out.errors
                    .push(format!("{key}: {addr} cannot be bound: {e}"));
                alone.push(false);
            }
        }
    }
    for (i, (key_i, addr_i)) in keyed.iter().enumerate() {
        if !alone[i] {
            continue;
        }
        for (j, (key_j, addr_j)) in keyed.iter().enumerate().skip(i + 1) {
            if !alone[j] {
                continue;
            }
            let Ok(_first) = TcpListener::bind(addr_i) else {
                continue;
            };
            if let Err(e) = TcpListener::bind(addr_j) {
                out.errors.push(format!(
                    "{key_j}: {addr_j} cannot be bound together with {key_i} ({addr_i}): {e}"
                ));
            }
        }
    }
}

pub fn serve(settings: Settings, opts: ServeOptions) -> Result<(), String> {
    let settings = Arc::new(settings);
    let policy = match (&settings.policy_store.kind, &settings.policy_store.etcd) {
        (crate::config::store::StoreKind::Etcd, Some(etcd)) => {
            PolicyStore::open_etcd(etcd, &settings.policy)?
        }
        _ => Arc::new(PolicyStore::open(&settings.policy).map_err(|errors| {
            errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        })?),
    };
    // The pages freed while the policy was parsed and compiled go back to
    // the OS now, not when requests start to flow.
    crate::ops::memory::release_freed();
    metrics::init()?;
    let snap = policy.load();
    metrics::policy_activated(
        snap.version,
        snap.clients.len(),
        &snap.hash,
        snap.shadow_clients,
    );
    drop(snap);

    let tokens = match &settings.tokens {
        Some(t) => Some(Arc::new(crate::tokens::TokenStore::open(
            t,
            &settings.policy,
        )?)),
        None => None,
    };
    // With the etcd store a fleet shares its token bindings too.
    if let (Some(store), Some(etcd)) = (&tokens, shared_store(&settings)) {
        let base = settings
            .policy
            .parent()
            .unwrap_or(std::path::Path::new("."));
        store.share(etcd, base)?;
    }
    let (gateway, book) = build_gateway(settings.clone(), policy.clone(), tokens.clone())?;
    policy.set_fleet_audit(gateway.management.audit.clone());
    policy.set_reload_hook(Box::new(count_reload));
    let tls = tls_listeners(&settings).map_err(|e| e.join("\n"))?;

    let mut conf = ServerConf {
        threads: settings.server.threads,
        grace_period_seconds: Some(settings.server.grace_period_secs),
        graceful_shutdown_timeout_seconds: Some(settings.server.graceful_shutdown_timeout_secs),
        pid_file: settings.server.pid_file.clone(),
        upgrade_sock: settings.server.upgrade_sock.clone(),
        ..ServerConf::default()
    };
    conf.daemon = opts.daemon;
    let opt = Opt {
        upgrade: opts.upgrade,
        daemon: opts.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let header = Duration::from_millis(settings.timeouts.downstream_header_ms);
    let app = crate::proxy::downstream::Downstream::new(
        crate::proxy::header_deadline::HeaderDeadline::new(
            pingora::proxy::http_proxy(&server.configuration, gateway),
            header,
            Duration::from_millis(settings.timeouts.downstream_read_ms),
        ),
        settings.http2.clone(),
        header,
    );
    let caps = Arc::new(crate::connection::caps::Caps::new(
        settings.limits.max_connections_per_address,
        settings.limits.max_connections_per_trusted_proxy,
        settings.limits.max_connections,
        trusted_proxies(&settings)?,
    ));
    let app =
        crate::connection::Connections::new(app, caps.clone(), settings.limits.max_header_bytes);
    let mut proxy = pingora::services::listening::Service::new("recordgate".to_string(), app);
    // Before the listeners are added: Pingora hands the check to each.
    proxy.set_connection_filter(Arc::new(crate::connection::AcceptCheck(caps)));
    for addr in &settings.listen {
        proxy.add_tcp(addr);
    }
    for (i, l) in tls.iter().enumerate() {
        let tls_settings = l
            .tls_settings()
            .map_err(|e| format!("tls_listen[{i}].{e}"))?;
        proxy.add_tls_with_settings(&l.settings.address, None, tls_settings);
        metrics::tls_listener(l.label());
        l.export_expiry();
    }
    server.add_service(proxy);

    if let Some(listen) = &settings.metrics.listen {
        let admin = crate::ops::operator::Admin {
            policy: policy.clone(),
            upstream_addresses: {
                let book = book.clone();
                Box::new(move || book.addresses())
            },
        };
        let mut m = pingora::services::listening::Service::new(
            "recordgate admin".to_string(),
            pingora::apps::http_app::HttpServer::new_app(admin),
        );
        m.add_tcp(listen);
        m.threads = Some(1);
        server.add_service(m);
    }
    server.add_service(background_service(
        "upstream resolver",
        Resolver {
            book,
            interval: Duration::from_secs(settings.upstream.resolve_interval_secs),
        },
    ));
    server.add_service(background_service(
        "policy reload",
        PolicyReloader { policy },
    ));
    if let Some(store) = tokens {
        server.add_service(background_service(
            "token binding sweep",
            crate::tokens::Sweeper(store),
        ));
    }
    if !tls.is_empty() {
        server.add_service(background_service(
            "TLS certificate reload",
            CertReloader { listeners: tls },
        ));
    }

    tracing::info!(
        listen = ?settings.listen,
        tls_listen = ?settings.tls_listen.iter().map(|t| &t.address).collect::<Vec<_>>(),
        "recordgate started"
    );
    // `run` returns once shutdown is complete (unlike `run_forever`, which
    // exits the process), so the caller can flush the log before exiting.
    server.run(pingora::server::RunArgs::default());
    tracing::info!("recordgate stopped");
    Ok(())
}

/// Counts a reload: the new snapshot, or `None` for a refused one.
fn count_reload(source: &str, snap: Option<&crate::policy::Snapshot>) {
    match snap {
        Some(snap) => {
            metrics::POLICY_RELOADS.inc(&[source, "success"]);
            metrics::policy_activated(
                snap.version,
                snap.clients.len(),
                &snap.hash,
                snap.shadow_clients,
            );
        }
        None => metrics::POLICY_RELOADS.inc(&[source, "failure"]),
    }
}

/// The etcd settings, when the policy (and so the token bindings) is
/// shared through etcd.
fn shared_store(settings: &Settings) -> Option<&crate::config::store::EtcdSettings> {
    match settings.policy_store.kind {
        crate::config::store::StoreKind::Etcd => settings.policy_store.etcd.as_ref(),
        crate::config::store::StoreKind::File => None,
    }
}

/// Reloads the policy file on SIGHUP and when it changes; a bad file leaves
/// the running policy.
struct PolicyReloader {
    policy: Arc<PolicyStore>,
}

impl PolicyReloader {
    /// Whether a new policy went live.
    fn reload(&self, source: &str, only_if_changed: bool) -> bool {
        let result = if only_if_changed {
            self.policy.reload_if_changed(source)
        } else {
            self.policy.reload(source)
        };
        match result {
            Ok(None) => false,
            Ok(Some(snap)) => {
                count_reload(source, Some(&snap));
                tracing::info!(source, version = snap.version, hash = %snap.hash, "policy reloaded");
                true
            }
            Err(errors) => {
                count_reload(source, None);
                for e in errors {
                    tracing::error!(source, error = %e, "policy reload rejected; keeping the running policy");
                }
                false
            }
        }
    }
}

#[async_trait]
impl BackgroundService for PolicyReloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; policy reload by signal disabled");
                return;
            }
        };
        // Polling the file's stamp rather than inotify: editors and Kubernetes
        // ConfigMaps replace the file (rename, symlink swap), which a watch on
        // the old inode misses. A stat every 250 ms is negligible.
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A reload's freed pages go back to the OS one tick later: right
        // after it, that did not lower the resident size (see `memory`).
        let mut reloaded = false;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = hup.recv() => reloaded |= self.reload("signal", false),
                _ = tick.tick() => {
                    if std::mem::take(&mut reloaded) {
                        crate::ops::memory::release_freed();
                    }
                    reloaded |= self.reload("file", true);
                }
            }
        }
    }
}
