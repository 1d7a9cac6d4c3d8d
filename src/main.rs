use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use recordgate::config::settings::{LogFormat, Settings};
use recordgate::policy::store::load_policy_file;
use recordgate::server::{preflight, serve, ServeOptions};
use tracing_subscriber::fmt::writer::BoxMakeWriter;

/// Inline enforcement gateway for Capture-style user-record APIs.
#[derive(Parser)]
#[command(name = "recordgate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Settings file (YAML).
        #[arg(short, long)]
        config: PathBuf,
        /// Take over the listening sockets of a running instance (graceful upgrade).
        #[arg(short, long)]
        upgrade: bool,
        /// Run in the background.
        #[arg(short, long)]
        daemon: bool,
    },
    /// Validate settings and policy; print every error with its file and key.
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Exit 0 when the gateway answers its readiness URL with 200, 1
    /// otherwise (a container health check needing no HTTP client).
    Health {
        /// URL to probe, e.g. http://127.0.0.1:9090/readyz.
        #[arg(long, conflicts_with = "config", required_unless_present = "config")]
        url: Option<String>,
        /// Settings file: probe `/readyz` on its `metrics.listen`.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Time-out of the whole probe, in milliseconds.
        #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
        timeout_ms: u64,
    },
    /// Move a policy into and out of the etcd store (`policy_store.kind: etcd`).
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
}

#[derive(Subcommand)]
enum PolicyAction {
    /// Validate FILE and write it to etcd: keys in batches, the guard last,
    /// so no replica ever adopts a half import.
    Import {
        file: PathBuf,
        #[arg(short, long)]
        config: PathBuf,
        /// Write nothing when etcd holds a policy already (for seed Jobs
        /// and `compose up`, which run again and must not undo the changes
        /// made since).
        #[arg(long)]
        if_empty: bool,
    },
    /// Print the policy etcd holds, as YAML (for review in Git).
    Export {
        #[arg(short, long)]
        config: PathBuf,
    },
}

/// Log lines go to stdout from a writer thread, not from the worker that
/// logs them: a synchronous `write` per access-log line cost about 8 µs of
/// CPU per request, and a slow stdout (a full pipe, a stalled collector) would
/// stall requests. Lines are batched into one `write` while they queue up.
/// When the writer falls behind by `buffer_lines`, lines are dropped, never
/// requests, and counted in `recordgate_log_lines_dropped_total`.
///
/// With `--daemon` lines are written directly instead: Pingora forks to
/// daemonise after this runs, and a thread does not survive a fork.
///
/// The returned guard flushes what is queued when it is dropped.
fn init_logging(
    format: LogFormat,
    buffer_lines: usize,
    daemon: bool,
) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = if daemon {
        (BoxMakeWriter::new(std::io::stdout), None)
    } else {
        let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(buffer_lines)
            .thread_name("recordgate-log")
            // The writer thread writes every line it has queued, then
            // flushes: one `write` per batch under load, each line promptly
            // when idle.
            .finish(std::io::BufWriter::with_capacity(
                64 << 10,
                std::io::stdout(),
            ));
        recordgate::ops::metrics::watch_log_drops(writer.error_counter());
        (BoxMakeWriter::new(writer), Some(guard))
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_timer(recordgate::ops::log_format::CachedUtc)
        .with_writer(writer);
    match format {
        LogFormat::Json => builder
            .event_format(recordgate::ops::log_format::JsonLines)
            .init(),
        LogFormat::Human => builder.init(),
    }
    guard
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Policy { action } => policy(action),
        Command::Health {
            url,
            config,
            timeout_ms,
        } => health(url, config, timeout_ms),
        Command::Serve {
            config,
            upgrade,
            daemon,
        } => {
            let settings = match Settings::load(&config) {
                Ok(s) => s,
                Err(errors) => {
                    for e in errors {
                        eprintln!("error: {e}");
                    }
                    return ExitCode::from(2);
                }
            };
            let _log = init_logging(settings.log.format, settings.log.buffer_lines, daemon);
            match serve(settings, ServeOptions { upgrade, daemon }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn policy(action: PolicyAction) -> ExitCode {
    let config = match &action {
        PolicyAction::Import { config, .. } | PolicyAction::Export { config } => config,
    };
    let settings = match Settings::load(config) {
        Ok(s) => s,
        Err(errors) => {
            for e in errors {
                eprintln!("error: {e}");
            }
            return ExitCode::from(2);
        }
    };
    let done = match &action {
        PolicyAction::Import { file, if_empty, .. } => {
            recordgate::policy::etcd::cli::import(&settings, file, *if_empty).map(|s| s + "\n")
        }
        PolicyAction::Export { .. } => recordgate::policy::etcd::cli::export(&settings),
    };
    match done {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn check(config: &std::path::Path) -> ExitCode {
    let settings = match Settings::load(config) {
        Ok(s) => s,
        Err(errors) => {
            for e in errors {
                eprintln!("error: {e}");
            }
            return ExitCode::from(1);
        }
    };
    // What `serve` would refuse at start beyond the file itself, from the
    // code `serve` builds with (credentials included).
    let pre = preflight(&settings);
    for w in &pre.warnings {
        eprintln!("warning: {}: {w}", config.display());
    }
    for e in &pre.errors {
        eprintln!("error: {}: {e}", config.display());
    }
    let etcd = settings.policy_store.kind == recordgate::config::store::StoreKind::Etcd;
    if etcd && !settings.policy.exists() {
        // The policy is in etcd; this file is only the replica's cache.
        println!(
            "ok: {} (the policy is in etcd; `recordgate policy export` shows it)",
            config.display()
        );
        return if pre.errors.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }
    match load_policy_file(&settings.policy, 1) {
        Ok(_) if !pre.errors.is_empty() => ExitCode::from(1),
        Ok(snap) => {
            println!(
                "ok: {} and {}: {} clients, {} entity types",
                config.display(),
                settings.policy.display(),
                snap.clients.len(),
                snap.entity_types.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in errors {
                eprintln!("error: {e}");
            }
            ExitCode::from(1)
        }
    }
}

fn health(url: Option<String>, config: Option<PathBuf>, timeout_ms: u64) -> ExitCode {
    let url = match (url, config) {
        (Some(url), _) => url,
        (None, Some(config)) => {
            let settings = match Settings::load(&config) {
                Ok(s) => s,
                Err(errors) => {
                    for e in errors {
                        eprintln!("error: {e}");
                    }
                    return ExitCode::from(2);
                }
            };
            let Some(listen) = settings.metrics.listen else {
                eprintln!(
                    "error: {}: metrics.listen is not set: no readiness URL",
                    config.display()
                );
                return ExitCode::from(2);
            };
            match recordgate::ops::health::readyz_url(&listen) {
                Ok(u) => u,
                Err(e) => {
                    eprintln!("error: {}: {e}", config.display());
                    return ExitCode::from(2);
                }
            }
        }
        // clap requires one of the two.
        (None, None) => return ExitCode::from(2),
    };
    match recordgate::ops::health::probe(&url, std::time::Duration::from_millis(timeout_ms)) {
        Ok(200) => {
            println!("ready: {url}");
            ExitCode::SUCCESS
        }
        Ok(status) => {
            eprintln!("not ready: {url} answered {status}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("not ready: {e}");
            ExitCode::from(1)
        }
    }
}

// mimalloc: measured faster and steadier than glibc malloc on the filter
// path (BENCHMARKS.md, "Allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
