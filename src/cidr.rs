//! Per-client IP allow-lists ("whitelists" in Capture terms).
//!
//! Lists are compiled once (at config load) into sorted, merged, non-overlapping
//! inclusive ranges so that the per-request check is a binary search with no
//! allocation, whatever the list size.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;

/// `::ffff:0.0.0.0` .. `::ffff:255.255.255.255`: the IPv4-mapped block.
const MAPPED_LO: u128 = 0xffff_u128 << 32;
const MAPPED_HI: u128 = MAPPED_LO | 0xffff_ffff;

/// A compiled set of CIDR networks.
///
/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are looked up as the IPv4
/// address they carry, and IPv6 networks that cover part of the mapped block
/// also admit the corresponding IPv4 addresses, so a client is treated the
/// same whether a dual-stack socket reports it as IPv4 or as mapped IPv6.
///
/// An IPv4 network never admits a native IPv6 address: Capture's default
/// list `["0.0.0.0/0"]` therefore covers all of IPv4 but no IPv6 peer. Use
/// [`CidrSet::allow_all`] when "everything" is meant.
#[derive(Clone, PartialEq, Eq)]
pub struct CidrSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl CidrSet {
    /// Compiles `nets`; duplicates, overlaps and adjacent networks are merged.
    pub fn new(nets: &[IpNet]) -> CidrSet {
        let mut v4 = Vec::with_capacity(nets.len());
        let mut v6 = Vec::new();
        for net in nets {
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => {
                    let lo = u128::from(n.network());
                    let hi = u128::from(n.broadcast());
                    v6.push((lo, hi));
                    // Mapped clients are looked up in the IPv4 table, so the
                    // mapped part of an IPv6 network has to be copied there or
                    // `::ffff:10.0.0.0/104` (or `::/0`) would never match.
                    let (ilo, ihi) = (lo.max(MAPPED_LO), hi.min(MAPPED_HI));
                    if ilo <= ihi {
                        let a = Ipv6Addr::from(ilo).to_ipv4_mapped();
                        let b = Ipv6Addr::from(ihi).to_ipv4_mapped();
                        if let (Some(a), Some(b)) = (a, b) {
                            v4.push((u32::from(a), u32::from(b)));
                        }
                    }
                }
            }
        }
        CidrSet {
            v4: merge_ranges(v4, |x| x.checked_add(1)),
            v6: merge_ranges(v6, |x| x.checked_add(1)),
        }
    }

    /// A set containing every IPv4 and IPv6 address.
    pub fn allow_all() -> CidrSet {
        CidrSet {
            v4: vec![(0, u32::MAX)],
            v6: vec![(0, u128::MAX)],
        }
    }

    /// Whether `ip` is inside the set. No allocation; O(log n).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(a) => lookup(&self.v4, u32::from(a)),
            IpAddr::V6(a) => lookup(&self.v6, u128::from(a)),
        }
    }

    /// True when every IPv4 and every IPv6 address is inside the set, whether
    /// built with [`CidrSet::allow_all`] or from networks that add up to it.
    pub fn is_allow_all(&self) -> bool {
        self.v4.as_slice() == [(0, u32::MAX)] && self.v6.as_slice() == [(0, u128::MAX)]
    }

    /// True when no address at all is inside the set.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

impl fmt::Debug for CidrSet {
    // A 10,000-entry list would otherwise flood logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CidrSet")
            .field("v4_ranges", &self.v4.len())
            .field("v6_ranges", &self.v6.len())
            .field("allow_all", &self.is_allow_all())
            .finish()
    }
}

fn merge_ranges<T: Copy + Ord>(
    mut ranges: Vec<(T, T)>,
    successor: impl Fn(T) -> Option<T>,
) -> Vec<(T, T)> {
    ranges.sort_unstable();
    // Merged in place (`dedup_by` keeps the earlier of two ranges and drops
    // the later): a policy compiles one set per client, and a second vector
    // each was a measurable share of a large policy's compile time.
    ranges.dedup_by(|&mut (lo, hi), last| {
        // Sorted by start, so `lo >= last.0`; adjacent ranges are merged
        // too so that lookups and `is_allow_all` see one canonical form.
        let touches = match successor(last.1) {
            Some(next) => lo <= next,
            None => true,
        };
        if touches && hi > last.1 {
            last.1 = hi;
        }
        touches
    });
    ranges.shrink_to_fit();
    ranges
}

fn lookup<T: Copy + Ord>(ranges: &[(T, T)], x: T) -> bool {
    let after = ranges.partition_point(|&(lo, _)| lo <= x);
    after
        .checked_sub(1)
        .and_then(|i| ranges.get(i))
        .is_some_and(|&(_, hi)| x <= hi)
}

/// Why a CIDR string was refused. The Display text reproduces Capture's own
/// error wording, so it can be embedded in a Capture-style error response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The address parsed but the prefix length exceeds the family maximum.
    #[error("invalid cidr address: {input}; value after slash must be {max}or less")]
    PrefixTooLong { input: String, max: u8 },
    /// Anything else that is not `addr` or `addr/prefix`.
    #[error("invalid cidr address: {input}")]
    Invalid { input: String },
}

/// Parses `a.b.c.d/n`, `ipv6/n` or a bare address (a host route), clearing
/// host bits (`192.168.0.1/30` becomes `192.168.0.0/30`).
///
/// Input is not trimmed, and the prefix must be plain ASCII digits (Rust's
/// integer parser would otherwise accept `+24`).
pub fn parse_cidr(s: &str) -> Result<IpNet, CidrError> {
    let invalid = || CidrError::Invalid {
        input: s.to_owned(),
    };
    let (addr_part, prefix_part) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = addr_part.parse().map_err(|_| invalid())?;
    let max: u8 = match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    let prefix = match prefix_part {
        None => max,
        Some(p) => {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid());
            }
            // All digits, so a parse failure can only be overflow: that is
            // still "too long", as in Capture's `123.4.5.6/7890` example.
            match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => {
                    return Err(CidrError::PrefixTooLong {
                        input: s.to_owned(),
                        max,
                    })
                }
            }
        }
    };
    IpNet::new(addr, prefix)
        .map(|n| n.trunc())
        .map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn set(cidrs: &[&str]) -> CidrSet {
        let nets: Vec<IpNet> = cidrs.iter().map(|c| parse_cidr(c).unwrap()).collect();
        CidrSet::new(&nets)
    }

    // --- parse_cidr -------------------------------------------------------

    #[test]
    fn parse_ipv4_cidr() {
        assert_eq!(
            parse_cidr("10.1.2.0/24").unwrap().to_string(),
            "10.1.2.0/24"
        );
        assert_eq!(parse_cidr("0.0.0.0/0").unwrap().to_string(), "0.0.0.0/0");
        assert_eq!(parse_cidr("1.2.3.4/32").unwrap().to_string(), "1.2.3.4/32");
    }

    #[test]
    fn parse_normalises_host_bits() {
        assert_eq!(
            parse_cidr("192.168.0.1/30").unwrap().to_string(),
            "192.168.0.0/30"
        );
        assert_eq!(
            parse_cidr("10.255.255.255/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            parse_cidr("2001:db8::ffff/32").unwrap().to_string(),
            "2001:db8::/32"
        );
    }

    #[test]
    fn parse_bare_address_is_host_route() {
        assert_eq!(
            parse_cidr("192.168.7.9").unwrap().to_string(),
            "192.168.7.9/32"
        );
        assert_eq!(
            parse_cidr("2001:db8::1").unwrap().to_string(),
            "2001:db8::1/128"
        );
    }

    #[test]
    fn parse_ipv6_cidr() {
        assert_eq!(
            parse_cidr("2001:db8::/48").unwrap().to_string(),
            "2001:db8::/48"
        );
        assert_eq!(parse_cidr("::/0").unwrap().to_string(), "::/0");
        assert_eq!(
            parse_cidr("::ffff:10.0.0.0/104").unwrap().to_string(),
            "::ffff:10.0.0.0/104"
        );
    }

    #[test]
    fn prefix_too_long_uses_capture_wording_v4() {
        let err = parse_cidr("123.4.5.6/7890").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid cidr address: 123.4.5.6/7890; value after slash must be 32or less"
        );
        assert!(matches!(err, CidrError::PrefixTooLong { max: 32, .. }));
        assert_eq!(
            parse_cidr("1.2.3.4/33").unwrap_err().to_string(),
            "invalid cidr address: 1.2.3.4/33; value after slash must be 32or less"
        );
        // Overflows u8 and u64 alike: still the prefix message.
        assert_eq!(
            parse_cidr("1.2.3.4/99999999999999999999999")
                .unwrap_err()
                .to_string(),
            "invalid cidr address: 1.2.3.4/99999999999999999999999; \
             value after slash must be 32or less"
        );
    }

    #[test]
    fn prefix_too_long_uses_capture_wording_v6() {
        assert_eq!(
            parse_cidr("2001:db8::/129").unwrap_err().to_string(),
            "invalid cidr address: 2001:db8::/129; value after slash must be 128or less"
        );
    }

    #[test]
    fn other_garbage_is_generic_invalid() {
        for bad in [
            "",
            "/24",
            "1.2.3.4/",
            "1.2.3.4/+24",
            "1.2.3.4/-1",
            "1.2.3.4/2 4",
            "1.2.3.4/24/8",
            "1.2.3/24",
            "1.2.3.4.5/24",
            "256.1.1.1/8",
            "01.2.3.4/8",
            " 1.2.3.4/8",
            "1.2.3.4/8 ",
            "foo/99",
            "fe80::1%eth0/64",
            "[2001:db8::1]/64",
            "1.2.3.4:80",
        ] {
            let err = parse_cidr(bad).unwrap_err();
            assert_eq!(
                err,
                CidrError::Invalid {
                    input: bad.to_owned()
                },
                "{bad:?}"
            );
            assert_eq!(err.to_string(), format!("invalid cidr address: {bad}"));
        }
    }

    // --- CidrSet ----------------------------------------------------------

    #[test]
    fn single_cidr_boundaries() {
        let s = set(&["192.168.0.1/30"]);
        assert!(!s.contains(ip("192.167.255.255")));
        assert!(s.contains(ip("192.168.0.0")));
        assert!(s.contains(ip("192.168.0.3")));
        assert!(!s.contains(ip("192.168.0.4")));
        assert!(!s.contains(ip("::1")));
        assert!(!s.is_allow_all());
        assert!(!s.is_empty());
    }

    #[test]
    fn single_host_route() {
        let s = set(&["10.0.0.7"]);
        assert!(s.contains(ip("10.0.0.7")));
        assert!(!s.contains(ip("10.0.0.6")));
        assert!(!s.contains(ip("10.0.0.8")));
    }

    #[test]
    fn extremes_of_the_address_space() {
        let s = set(&["0.0.0.0/32", "255.255.255.255/32"]);
        assert!(s.contains(ip("0.0.0.0")));
        assert!(s.contains(ip("255.255.255.255")));
        assert!(!s.contains(ip("0.0.0.1")));
        assert!(!s.contains(ip("255.255.255.254")));

        let s6 = set(&["::/128", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"]);
        assert!(s6.contains(ip("::")));
        assert!(s6.contains(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(!s6.contains(ip("::2")));
    }

    #[test]
    fn empty_set_denies_everything() {
        let s = CidrSet::new(&[]);
        assert!(s.is_empty());
        assert!(!s.is_allow_all());
        assert!(!s.contains(ip("1.2.3.4")));
        assert!(!s.contains(ip("::1")));
    }

    #[test]
    fn allow_all_contains_everything() {
        let s = CidrSet::allow_all();
        assert!(s.is_allow_all());
        for a in [
            "0.0.0.0",
            "255.255.255.255",
            "::",
            "2001:db8::1",
            "::ffff:1.2.3.4",
        ] {
            assert!(s.contains(ip(a)), "{a}");
        }
        // Built from networks that add up to everything.
        assert!(set(&["0.0.0.0/0", "::/0"]).is_allow_all());
        assert!(set(&["0.0.0.0/1", "128.0.0.0/1", "::/1", "8000::/1"]).is_allow_all());
        // `::/0` covers the mapped block, hence all IPv4 too.
        assert!(set(&["::/0"]).is_allow_all());
    }

    #[test]
    fn ipv4_default_does_not_cover_ipv6() {
        let s = set(&["0.0.0.0/0"]);
        assert!(!s.is_allow_all());
        assert!(s.contains(ip("8.8.8.8")));
        assert!(s.contains(ip("::ffff:8.8.8.8")));
        assert!(!s.contains(ip("2001:db8::1")));
    }

    #[test]
    fn overlapping_and_adjacent_ranges_merge() {
        let s = set(&[
            "10.0.0.0/24",
            "10.0.1.0/24",   // adjacent
            "10.0.0.128/25", // contained
            "10.0.1.200/29", // contained
            "10.0.2.0/23",   // adjacent
            "10.0.5.0/24",   // gap at 10.0.4.x
            "10.0.5.0/24",   // duplicate
        ]);
        assert_eq!(
            s.v4,
            vec![(0x0a00_0000, 0x0a00_03ff), (0x0a00_0500, 0x0a00_05ff)]
        );
        assert!(s.contains(ip("10.0.3.255")));
        assert!(!s.contains(ip("10.0.4.0")));
        assert!(!s.contains(ip("10.0.4.255")));
        assert!(s.contains(ip("10.0.5.0")));
        assert!(!s.contains(ip("10.0.6.0")));
    }

    #[test]
    fn merge_up_to_max_does_not_overflow() {
        let s = set(&["255.255.255.0/24", "255.255.255.255/32", "255.255.254.0/24"]);
        assert_eq!(s.v4, vec![(0xffff_fe00, u32::MAX)]);
        let s6 = set(&["ffff::/16", "fffe::/16"]);
        assert_eq!(s6.v6.len(), 1);
        assert!(s6.contains(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
    }

    #[test]
    fn ipv6_ranges() {
        let s = set(&["2001:db8::/32", "2001:db9::/32", "fe80::/10"]);
        assert_eq!(s.v6.len(), 2);
        assert!(s.contains(ip("2001:db8::1")));
        assert!(s.contains(ip("2001:db9:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(!s.contains(ip("2001:dba::")));
        assert!(!s.contains(ip("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(s.contains(ip("febf::1")));
        assert!(!s.contains(ip("fec0::")));
        assert!(!s.contains(ip("10.0.0.1")));
    }

    #[test]
    fn mapped_client_matches_ipv4_network() {
        let s = set(&["192.0.2.0/24"]);
        assert!(s.contains(ip("::ffff:192.0.2.1")));
        assert!(!s.contains(ip("::ffff:192.0.3.1")));
        // The deprecated IPv4-compatible form is a different address.
        assert!(!s.contains(IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0xc000, 0x0201))));
    }

    #[test]
    fn mapped_network_matches_ipv4_clients() {
        let s = set(&["::ffff:192.0.2.0/120"]);
        assert_eq!(s.v4, vec![(0xc000_0200, 0xc000_02ff)]);
        assert!(s.contains(ip("192.0.2.77")));
        assert!(s.contains(ip("::ffff:192.0.2.77")));
        assert!(!s.contains(ip("192.0.3.0")));

        // A network straddling the mapped block admits only its mapped part.
        let wide = set(&["::ffff:0:0/95"]);
        assert!(wide.contains(ip("0.0.0.0")));
        assert!(wide.contains(ip("255.255.255.255")));
        assert!(wide.contains(ip("::fffe:0:1")));
        // A network next to the mapped block admits no IPv4 at all.
        let near = set(&["::fffe:0:0/96", "::1:0:0:0/96"]);
        assert!(near.v4.is_empty());
        assert!(!near.contains(ip("1.2.3.4")));
    }

    #[test]
    fn hundred_cidrs() {
        // 100 disjoint /24s with /24 gaps in 10.0.0.0/8, plus 100 IPv6 /64s.
        let mut nets = Vec::new();
        for i in 0..100u32 {
            let base = 0x0a00_0000 + (i * 2) * 256;
            nets.push(IpNet::from(
                ipnet::Ipv4Net::new(Ipv4Addr::from(base), 24).unwrap(),
            ));
            let v6 = 0x2001_0db8_u128 << 96 | u128::from(i * 2) << 64;
            nets.push(IpNet::from(
                ipnet::Ipv6Net::new(Ipv6Addr::from(v6), 64).unwrap(),
            ));
        }
        let s = CidrSet::new(&nets);
        assert_eq!(s.v4.len(), 100);
        assert_eq!(s.v6.len(), 100);
        for i in 0..100u32 {
            let inside = 0x0a00_0000 + (i * 2) * 256;
            assert!(s.contains(IpAddr::V4(Ipv4Addr::from(inside))));
            assert!(s.contains(IpAddr::V4(Ipv4Addr::from(inside + 255))));
            assert!(!s.contains(IpAddr::V4(Ipv4Addr::from(inside + 256))));
            assert!(!s.contains(IpAddr::V4(Ipv4Addr::from(inside + 511))));
            let v6 = 0x2001_0db8_u128 << 96 | u128::from(i * 2) << 64;
            assert!(s.contains(IpAddr::V6(Ipv6Addr::from(v6 | 0xffff))));
            assert!(!s.contains(IpAddr::V6(Ipv6Addr::from(v6 + (1 << 64)))));
        }
        assert!(!s.contains(ip("9.255.255.255")));
    }

    /// Deterministic xorshift so the big test needs no RNG crate and is reproducible.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn naive(nets: &[IpNet], a: IpAddr) -> bool {
        let a = a.to_canonical();
        nets.iter().any(|n| match (n, a) {
            (IpNet::V4(n), IpAddr::V4(a)) => n.contains(&a),
            (IpNet::V6(n), IpAddr::V6(a)) => n.contains(&a),
            (IpNet::V6(n), IpAddr::V4(a)) => n.contains(&a.to_ipv6_mapped()),
            (IpNet::V4(_), IpAddr::V6(_)) => false,
        })
    }

    #[test]
    fn ten_thousand_cidrs_match_naive_scan() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut nets = Vec::with_capacity(10_000);
        for _ in 0..10_000 {
            let r = rng.next();
            // Clustered in 10.0.0.0/12 so that many overlap and touch.
            let addr = 0x0a00_0000 | (r as u32 & 0x000f_ffff);
            let prefix = 20 + (r >> 32) as u8 % 13;
            if (r >> 40).is_multiple_of(10) {
                let v6 = 0x2001_0db8_u128 << 96 | u128::from(r as u16) << 80;
                nets.push(IpNet::V6(
                    ipnet::Ipv6Net::new(Ipv6Addr::from(v6), 48 + prefix)
                        .unwrap()
                        .trunc(),
                ));
            } else {
                nets.push(IpNet::V4(
                    ipnet::Ipv4Net::new(Ipv4Addr::from(addr), prefix)
                        .unwrap()
                        .trunc(),
                ));
            }
        }
        let s = CidrSet::new(&nets);
        assert!(s.v4.len() < 9_000, "expected merging, got {}", s.v4.len());
        for w in s.v4.windows(2) {
            assert!(w[0].1.checked_add(1).unwrap() < w[1].0, "not merged: {w:?}");
        }
        for _ in 0..4_000 {
            let r = rng.next();
            let v4 = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (r as u32 & 0x001f_ffff)));
            assert_eq!(s.contains(v4), naive(&nets, v4), "{v4}");
            let mapped =
                IpAddr::V6(Ipv4Addr::from(0x0a00_0000 | (r as u32 & 0x000f_ffff)).to_ipv6_mapped());
            assert_eq!(s.contains(mapped), naive(&nets, mapped), "{mapped}");
            let v6 = IpAddr::V6(Ipv6Addr::from(
                0x2001_0db8_u128 << 96 | u128::from((r >> 16) as u16) << 80 | u128::from(r),
            ));
            assert_eq!(s.contains(v6), naive(&nets, v6), "{v6}");
        }
        // Every network's edges are inside.
        for n in &nets {
            assert!(s.contains(n.network()));
            assert!(s.contains(n.broadcast()));
        }
    }

    proptest::proptest! {
        #[test]
        fn prop_matches_naive(
            raw in proptest::collection::vec((proptest::num::u32::ANY, 0u8..=32), 0..40),
            raw6 in proptest::collection::vec((proptest::num::u128::ANY, 0u8..=128), 0..10),
            probes in proptest::collection::vec(proptest::num::u32::ANY, 1..50),
        ) {
            let mut nets: Vec<IpNet> = raw
                .iter()
                .map(|&(a, p)| IpNet::V4(ipnet::Ipv4Net::new(Ipv4Addr::from(a), p).unwrap().trunc()))
                .collect();
            nets.extend(raw6.iter().map(|&(a, p)| {
                IpNet::V6(ipnet::Ipv6Net::new(Ipv6Addr::from(a), p).unwrap().trunc())
            }));
            let s = CidrSet::new(&nets);
            for n in &nets {
                proptest::prop_assert!(s.contains(n.network()));
                proptest::prop_assert!(s.contains(n.broadcast()));
            }
            for &p in &probes {
                let a = IpAddr::V4(Ipv4Addr::from(p));
                proptest::prop_assert_eq!(s.contains(a), naive(&nets, a));
                let m = IpAddr::V6(Ipv4Addr::from(p).to_ipv6_mapped());
                proptest::prop_assert_eq!(s.contains(m), naive(&nets, m));
            }
        }
    }
}
