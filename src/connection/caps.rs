//! Caps on open client connections: per client address and in total.
//!
//! Time-outs bound how long a slow client holds a connection, not how many
//! it holds: without a cap, one address can open connections until the
//! process runs out of file descriptors and every other client is refused.
//! A connection takes a [`Slot`] when it starts and gives it back when it
//! closes; trusted proxies, which carry many clients' connections, have a
//! cap of their own.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::cidr::CidrSet;
use crate::ops::metrics;

/// Which cap refused a connection: the label of
/// `recordgate_connections_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    PerAddress,
    Total,
}

impl Refused {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refused::PerAddress => "per_address",
            Refused::Total => "total",
        }
    }
}

pub(crate) struct Caps {
    per_address: usize,
    per_trusted_proxy: usize,
    total: usize,
    trusted_proxies: CidrSet,
    /// Open connections by client address: changed when a connection opens
    /// or closes, never per request.
    open: Mutex<HashMap<IpAddr, usize>>,
    open_total: AtomicUsize,
}

impl Caps {
    pub(crate) fn new(
        per_address: usize,
        per_trusted_proxy: usize,
        total: usize,
        trusted_proxies: CidrSet,
    ) -> Self {
        Caps {
            per_address,
            per_trusted_proxy,
            total,
            trusted_proxies,
            open: Mutex::new(HashMap::new()),
            open_total: AtomicUsize::new(0),
        }
    }

    /// The address a connection counts under. An IPv6 host is normally
    /// given a whole /64, so its connections count together; IPv4-mapped
    /// addresses count as the IPv4 address they are.
    fn key(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let s = v6.segments();
                    IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
                }
            },
        }
    }

    fn cap_for(&self, ip: IpAddr) -> usize {
        if self.trusted_proxies.contains(ip) {
            self.per_trusted_proxy
        } else {
            self.per_address
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        // The map holds only counts, each change complete under the lock:
        // a poisoned lock's data is still consistent.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a new connection from `ip` would be refused now: the check
    /// at accept time, before a TLS handshake or any read.
    pub(crate) fn check(&self, ip: Option<IpAddr>) -> Result<(), Refused> {
        if self.open_total.load(Ordering::Relaxed) >= self.total {
            return Err(Refused::Total);
        }
        if let Some(ip) = ip {
            let open = self.lock().get(&Self::key(ip)).copied().unwrap_or(0);
            if open >= self.cap_for(ip) {
                return Err(Refused::PerAddress);
            }
        }
        Ok(())
    }

    /// A place for a connection from `ip`, held until the [`Slot`] drops.
    pub(crate) fn take(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Slot, Refused> {
        let total = self.open_total.fetch_add(1, Ordering::Relaxed);
        if total >= self.total {
            self.open_total.fetch_sub(1, Ordering::Relaxed);
            return Err(Refused::Total);
        }
        let key = ip.map(Self::key);
        if let (Some(ip), Some(key)) = (ip, key) {
            let cap = self.cap_for(ip);
            let mut open = self.lock();
            let n = open.entry(key).or_insert(0);
            if *n >= cap {
                drop(open);
                self.open_total.fetch_sub(1, Ordering::Relaxed);
                return Err(Refused::PerAddress);
            }
            *n += 1;
        }
        metrics::CONNECTIONS_OPEN.set((total + 1) as i64);
        Ok(Slot {
            caps: self.clone(),
            key,
        })
    }
}

/// One open connection's place under the caps.
pub(crate) struct Slot {
    caps: Arc<Caps>,
    key: Option<IpAddr>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").field("key", &self.key).finish()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            let mut open = self.caps.lock();
            if let Some(n) = open.get_mut(&key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    open.remove(&key);
                }
            }
        }
        let before = self.caps.open_total.fetch_sub(1, Ordering::Relaxed);
        metrics::CONNECTIONS_OPEN.set(before.saturating_sub(1) as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(per: usize, proxy: usize, total: usize) -> Arc<Caps> {
        let nets = [crate::cidr::parse_cidr("10.0.0.0/8").unwrap()];
        Arc::new(Caps::new(per, proxy, total, CidrSet::new(&nets)))
    }

    #[test]
    fn per_address_cap_is_held_until_slots_drop() {
        let c = caps(2, 5, 100);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let s1 = c.take(Some(a)).unwrap();
        let _s2 = c.take(Some(a)).unwrap();
        assert_eq!(c.check(Some(a)), Err(Refused::PerAddress));
        assert_eq!(c.take(Some(a)).unwrap_err(), Refused::PerAddress);
        assert!(c.take(Some(b)).is_ok());
        drop(s1);
        assert!(c.check(Some(a)).is_ok());
        assert!(c.take(Some(a)).is_ok());
    }

    #[test]
    fn trusted_proxies_have_their_own_cap() {
        let c = caps(1, 3, 100);
        let p: IpAddr = "10.1.2.3".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| c.take(Some(p)).unwrap()).collect();
        assert_eq!(c.take(Some(p)).unwrap_err(), Refused::PerAddress);
        assert_eq!(held.len(), 3);
    }

    #[test]
    fn total_cap_counts_every_address_and_none() {
        let c = caps(10, 10, 3);
        let _a = c.take(Some("192.0.2.1".parse().unwrap())).unwrap();
        let _b = c.take(Some("192.0.2.2".parse().unwrap())).unwrap();
        let _n = c.take(None).unwrap();
        assert_eq!(c.take(None).unwrap_err(), Refused::Total);
        assert_eq!(
            c.check(Some("192.0.2.9".parse().unwrap())),
            Err(Refused::Total)
        );
    }

    #[test]
    fn an_ipv6_64_counts_as_one_address_and_mapped_v4_as_v4() {
        let c = caps(1, 1, 100);
        let _a = c.take(Some("2001:db8:1:2::1".parse().unwrap())).unwrap();
        assert_eq!(
            c.take(Some("2001:db8:1:2:ffff::9".parse().unwrap()))
                .unwrap_err(),
            Refused::PerAddress
        );
        assert!(c.take(Some("2001:db8:1:3::1".parse().unwrap())).is_ok());
        let _v4 = c.take(Some("192.0.2.7".parse().unwrap())).unwrap();
        assert_eq!(
            c.take(Some("::ffff:192.0.2.7".parse().unwrap()))
                .unwrap_err(),
            Refused::PerAddress
        );
    }
}
