//! `recordgate-demo [--listen ADDR] [--records N]`: the sample user-record
//! API on its own, the upstream of the demo and of the load test.

use clap::Parser;

/// The sample Capture-style user-record API (no authentication: that is the
/// gateway's job).
#[derive(Parser)]
#[command(name = "recordgate-demo", version, about)]
struct Cli {
    /// Address to listen on.
    #[arg(short, long, default_value = "127.0.0.1:8090")]
    listen: String,
    /// Number of generated user records.
    #[arg(short, long, default_value_t = 300)]
    records: usize,
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    tracing::info!(listen = %cli.listen, records = cli.records, "recordgate demo API started");
    recordgate_demo::serve(&cli.listen, cli.records);
}
