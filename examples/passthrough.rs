//! A plain Pingora pass-through proxy with no enforcement: the baseline the
//! load test compares recordgate against, built with the same Pingora and
//! the same settings.
//!
//! `passthrough <listen addr:port> <upstream host:port> [threads]`

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

struct PassThrough {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for PassThrough {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: passthrough <listen addr:port> <upstream host:port> [threads]");
        std::process::exit(2);
    }
    let threads = args.get(3).and_then(|t| t.parse().ok()).unwrap_or(2);
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        pid_file: format!("/tmp/recordgate-passthrough-{}.pid", std::process::id()),
        upgrade_sock: format!("/tmp/recordgate-passthrough-{}.sock", std::process::id()),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(
        &server.configuration,
        PassThrough {
            upstream: args[2].clone(),
        },
    );
    proxy.add_tcp(&args[1]);
    server.add_service(proxy);
    server.run_forever()
}
