//! Assembles the Pingora server: the gateway, the operator listener and the
//! policy reloader (file edits and SIGHUP).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};

use crate::cidr::{parse_cidr, CidrSet};
use crate::config::settings::Settings;
use crate::decide::routes::RouteTable;
use crate::decide::Rules;
use crate::management::Services;
use crate::ops::metrics;
use crate::policy::PolicyStore;
use crate::proxy::forward::Upstream;
use crate::proxy::Gateway;

pub struct ServeOptions {
    pub upgrade: bool,
    pub daemon: bool,
}

/// Builds everything that can fail before the server starts, so that a bad
/// setting is reported as an error rather than a half-started process.
pub(crate) fn build_gateway(
    settings: Arc<Settings>,
    policy: Arc<PolicyStore>,
) -> Result<Gateway, String> {
    let routes = match &settings.routes {
        Some(defs) => RouteTable::from_defs(defs)?,
        None => RouteTable::builtin(),
    };
    let mut nets = Vec::new();
    for c in &settings.trusted_proxies {
        nets.push(parse_cidr(c).map_err(|e| format!("trusted_proxies: {e}"))?);
    }
    let upstream = Upstream::new(&settings.upstream, &settings.timeouts)?;
    let upstream_authorization = match &settings.upstream.credentials {
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
    let upstream_host = match settings.upstream.servers.first() {
        None => None,
        Some(server) => Some(
            http::HeaderValue::from_str(server)
                .map_err(|_| format!("upstream.servers: {server:?} is not a valid Host"))?,
        ),
    };
    let rules = Arc::new(Rules {
        trusted_proxies: CidrSet::new(&nets),
        max_skew_secs: settings.auth.signature_max_skew_secs,
    });
    let management = Services {
        store: policy.clone(),
        audit: Arc::new(crate::policy::audit::AuditLog::new(
            settings.audit_log_path(),
        )),
        rules: rules.clone(),
    };
    Ok(Gateway {
        policy,
        routes,
        upstream: upstream.with_identity(upstream_host, upstream_authorization),
        rules,
        settings,
        management,
    })
}

pub fn serve(settings: Settings, opts: ServeOptions) -> Result<(), String> {
    let settings = Arc::new(settings);
    let policy = Arc::new(PolicyStore::open(&settings.policy).map_err(|errors| {
        errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    })?);
    // The pages freed while the policy was parsed and compiled go back to
    // the OS now, not when requests start to flow.
    crate::ops::memory::release_freed();
    metrics::init()?;
    let snap = policy.load();
    metrics::policy_activated(snap.version, snap.clients.len(), &snap.hash);
    drop(snap);

    let gateway = build_gateway(settings.clone(), policy.clone())?;

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

    let app = crate::proxy::header_deadline::HeaderDeadline::new(
        pingora::proxy::http_proxy(&server.configuration, gateway),
        Duration::from_millis(settings.timeouts.downstream_header_ms),
        Duration::from_millis(settings.timeouts.downstream_read_ms),
    );
    let mut proxy = pingora::services::listening::Service::new("recordgate".to_string(), app);
    for addr in &settings.listen {
        proxy.add_tcp(addr);
    }
    server.add_service(proxy);

    if let Some(listen) = &settings.metrics.listen {
        let admin = crate::ops::operator::Admin {
            policy: policy.clone(),
            upstreams: settings.upstream.servers.clone(),
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
        "policy reload",
        PolicyReloader { policy },
    ));

    tracing::info!(listen = ?settings.listen, "recordgate started");
    // `run` returns once shutdown is complete (unlike `run_forever`, which
    // exits the process), so the caller can flush the log before exiting.
    server.run(pingora::server::RunArgs::default());
    tracing::info!("recordgate stopped");
    Ok(())
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
                metrics::POLICY_RELOADS.inc(&[source, "success"]);
                metrics::policy_activated(snap.version, snap.clients.len(), &snap.hash);
                tracing::info!(source, version = snap.version, hash = %snap.hash, "policy reloaded");
                true
            }
            Err(errors) => {
                metrics::POLICY_RELOADS.inc(&[source, "failure"]);
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
