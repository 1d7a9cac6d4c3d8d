//! Live certificates: the TLS listeners' certificate and key files are read
//! every [`POLL`] and a changed pair replaces the running one for new
//! handshakes. Connections already up keep the certificate they were made
//! with; nothing restarts.
//!
//! The content is compared, not the file's stamp: cert-manager swaps a
//! symlinked folder, certbot a symlink, others rename a new file over the
//! old one or write in place, and all of these change what a read returns.
//! A change is taken only once both files read the same on two polls in a
//! row, so a writer caught between the certificate and the key (or in the
//! middle of a file) is waited for rather than reported. A pair that still
//! fails (unparseable, key not matching, expired) is refused: the old pair
//! stays, the failure is logged and counted, and the same content is not
//! tried again until it changes.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::ops::metrics;
use crate::tls::certs::{self, PairError};
use crate::tls::{certificate_label, TlsListener};

/// How often the files are read: a renewal is live within two polls.
pub const POLL: Duration = Duration::from_millis(500);

pub struct CertReloader {
    pub listeners: Vec<Arc<TlsListener>>,
}

/// One certificate's files as last seen.
struct Watch {
    listener: Arc<TlsListener>,
    index: usize,
    /// The content of the pair in service or last refused.
    settled: (Vec<u8>, Vec<u8>),
    /// New content seen once, taken if the next poll reads it again.
    pending: Option<(Vec<u8>, Vec<u8>)>,
    /// The last read error met, and whether it was reported: a missing
    /// file is logged once, not every poll.
    read_error: Option<String>,
    read_error_reported: bool,
}

impl Watch {
    fn poll(&mut self) {
        let Some(files) = self.listener.settings.certificates.get(self.index) else {
            return;
        };
        let read = match certs::read_pair(files) {
            Ok(r) => {
                self.read_error = None;
                self.read_error_reported = false;
                r
            }
            Err(e) => {
                // Mid-swap a file can be missing for a moment: an error is
                // reported (once) when two polls in a row meet it. The pair
                // in service stays either way.
                self.pending = None;
                if self.read_error.as_deref() == Some(e.message.as_str()) {
                    if !self.read_error_reported {
                        self.failed(&e);
                        self.read_error_reported = true;
                    }
                } else {
                    self.read_error = Some(e.message);
                    self.read_error_reported = false;
                }
                return;
            }
        };
        if read == self.settled {
            self.pending = None;
            return;
        }
        if self.pending.as_ref() != Some(&read) {
            self.pending = Some(read);
            return;
        }
        self.pending = None;
        self.settled = read.clone();
        match certs::parse_pair(read.0, read.1) {
            Ok(loaded) => {
                let loaded = Arc::new(loaded);
                let index = self.index;
                self.listener.certs.rcu(|current| {
                    let mut next = Vec::clone(current);
                    if let Some(slot) = next.get_mut(index) {
                        *slot = loaded.clone();
                    }
                    next
                });
                metrics::TLS_RELOADS.inc(&[self.listener.label(), "success"]);
                self.listener.export_expiry();
                tracing::info!(
                    listener = self.listener.label(),
                    certificate = %certificate_label(&self.listener.settings, self.index),
                    names = ?loaded.dns_names,
                    "TLS certificate reloaded"
                );
            }
            Err(e) => self.failed(&e),
        }
    }

    fn failed(&self, e: &PairError) {
        metrics::TLS_RELOADS.inc(&[self.listener.label(), "failure"]);
        tracing::error!(
            listener = self.listener.label(),
            setting = %format!("certificates[{}].{}", self.index, e.file.key()),
            error = %e.message,
            "TLS certificate reload rejected; keeping the certificate in service"
        );
    }
}

#[async_trait]
impl BackgroundService for CertReloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut watches: Vec<Watch> = Vec::new();
        for l in &self.listeners {
            let current = l.certs.load();
            for (index, c) in current.iter().enumerate() {
                watches.push(Watch {
                    listener: l.clone(),
                    index,
                    settled: c.source.clone(),
                    pending: None,
                    read_error: None,
                    read_error_reported: false,
                });
            }
        }
        if watches.is_empty() {
            return;
        }
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {
                    // Reading a few small files: cheap enough for the runtime.
                    for w in &mut watches {
                        w.poll();
                    }
                }
            }
        }
    }
}
