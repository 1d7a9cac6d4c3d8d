//! A TCP relay on 127.0.0.1 in front of one real server (an etcd member),
//! which can hold back what the server sends for a while: the answer to a
//! request the server has already carried out arrives late, as on a slow or
//! partitioned network. Bytes are never dropped or reordered, so the
//! protocol on top (HTTP/2, gRPC) stays intact; the client only waits.
//!
//! Every thread ends when its connection closes, and the accept loop ends
//! when the relay is dropped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bytes from the server that arrive before `until` are held until
/// `release`.
#[derive(Clone, Copy)]
struct Hold {
    until: Instant,
    release: Instant,
}

pub struct HoldingRelay {
    addr: SocketAddr,
    hold: Arc<Mutex<Option<Hold>>>,
    stop: Arc<AtomicBool>,
}

impl HoldingRelay {
    /// Listens on a free port of 127.0.0.1 and relays every connection to
    /// `server` (`host:port`).
    pub fn start(server: &str) -> HoldingRelay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let hold: Arc<Mutex<Option<Hold>>> = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, st, server) = (hold.clone(), stop.clone(), server.to_string());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(upstream) = TcpStream::connect(&server) else {
                            continue;
                        };
                        let _ = client.set_nodelay(true);
                        let _ = upstream.set_nodelay(true);
                        pump(
                            upstream.try_clone().unwrap(),
                            client.try_clone().unwrap(),
                            Some(h.clone()),
                        );
                        pump(client, upstream, None);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        HoldingRelay { addr, hold, stop }
    }

    /// `http://127.0.0.1:PORT`, for the client's endpoint list.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on for `window`, what the server sends is held back until
    /// `release` after now (in order, behind anything held before it).
    pub fn hold_answers(&self, window: Duration, release: Duration) {
        let now = Instant::now();
        *self.hold.lock().unwrap() = Some(Hold {
            until: now + window,
            release: now + release,
        });
    }
}

impl Drop for HoldingRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copies `from` to `to` on a thread of its own until either side closes;
/// with `hold`, each chunk read inside a hold window waits for its release.
fn pump(mut from: TcpStream, mut to: TcpStream, hold: Option<Arc<Mutex<Option<Hold>>>>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Some(hold) = &hold {
                let h = *hold.lock().unwrap();
                if let Some(h) = h {
                    let now = Instant::now();
                    if now < h.until && now < h.release {
                        std::thread::sleep(h.release - now);
                    }
                }
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
        let _ = from.shutdown(std::net::Shutdown::Both);
    });
}
