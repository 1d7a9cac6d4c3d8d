use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use recordgate::config::settings::{LogFormat, Settings};
use recordgate::policy::store::load_policy_file;
use recordgate::server::{serve, ServeOptions};
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
    if let Some(c) = &settings.upstream.credentials {
        let base = settings
            .policy
            .parent()
            .unwrap_or(std::path::Path::new("."));
        if let Err(e) = c.secret.resolve(base) {
            eprintln!(
                "error: {}: upstream.credentials.secret: {e}",
                config.display()
            );
            return ExitCode::from(1);
        }
    }
    match load_policy_file(&settings.policy, 1) {
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

// mimalloc: measured faster and steadier than glibc malloc on the filter
// path (BENCHMARKS.md, "Allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
