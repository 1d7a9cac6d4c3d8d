//! Per-client rate limits: the setting as written (`RateLimitDef`, in the
//! policy per client and in the settings as the default), its validated
//! form ([`RateLimit`]) and a client's bucket ([`Bucket`]).
//!
//! The bucket is a token bucket kept as GCRA (the generic cell rate
//! algorithm): one "theoretical arrival time" (TAT) in nanoseconds on a
//! monotonic clock, in one `AtomicU64`. A call at `now` is admitted when
//! `max(tat, now) + interval - now <= tolerance` (with `tolerance = burst *
//! interval`), and then moves the TAT by one interval. No lock, no
//! allocation, no timer: an idle bucket refills by the clock moving on.
//!
//! A leaf module: the settings, the policy and the decision all use it.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Bounds of `requests_per_second`. Below one call in 1000 s the interval
/// times a large burst would leave the clock's range; above a million per
/// second a limit cannot be told from none (one call costs more).
pub const RPS_RANGE: std::ops::RangeInclusive<f64> = 0.001..=1_000_000.0;
/// Bounds of `burst`.
pub const BURST_RANGE: std::ops::RangeInclusive<u32> = 1..=1_000_000;

/// A rate limit as written: `{requests_per_second: 5, burst: 10}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitDef {
    /// Sustained calls per second (fractions allowed: 0.5 is one call every
    /// two seconds).
    pub requests_per_second: f64,
    /// Calls admitted at once by an idle client, on top of the sustained rate.
    pub burst: u32,
}

/// A validated limit, in the clock's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Nanoseconds per call at the sustained rate.
    interval_ns: u64,
    /// `burst * interval_ns`: how far ahead of the clock the TAT may run.
    tolerance_ns: u64,
    /// For the refusal's message.
    burst: u32,
}

/// Which field of a [`RateLimitDef`] is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRateLimit {
    pub field: &'static str,
    pub message: String,
}

impl RateLimit {
    pub fn new(def: &RateLimitDef) -> Result<RateLimit, InvalidRateLimit> {
        let rps = def.requests_per_second;
        // `contains` is false for NaN, so NaN, zero, negatives and
        // infinities all land here.
        if !RPS_RANGE.contains(&rps) {
            return Err(InvalidRateLimit {
                field: "requests_per_second",
                message: format!(
                    "must be a number between {} and {} (got {rps})",
                    RPS_RANGE.start(),
                    RPS_RANGE.end()
                ),
            });
        }
        if !BURST_RANGE.contains(&def.burst) {
            return Err(InvalidRateLimit {
                field: "burst",
                message: format!(
                    "must be between {} and {} (got {})",
                    BURST_RANGE.start(),
                    BURST_RANGE.end(),
                    def.burst
                ),
            });
        }
        // In range, so the interval is 1_000 ns to 1e12 ns and the
        // tolerance at most 1e18 ns: both fit a u64 with room to add `now`.
        let interval_ns = ((1e9 / rps).round() as u64).max(1);
        Ok(RateLimit {
            interval_ns,
            tolerance_ns: interval_ns.saturating_mul(u64::from(def.burst)),
            burst: def.burst,
        })
    }

    /// Calls per second, for messages.
    pub fn requests_per_second(&self) -> f64 {
        1e9 / self.interval_ns as f64
    }

    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Admits one call at `now_ns` or says how long until one would be.
    pub fn admit(&self, bucket: &Bucket, now_ns: u64) -> Result<(), Duration> {
        let ceiling = now_ns.saturating_add(self.tolerance_ns);
        let mut tat = bucket.tat.load(Ordering::Acquire);
        loop {
            if tat > ceiling {
                // Used deeper than this limit allows: left by a stricter
                // limit before a policy change. It counts as empty under
                // this one and refills at this rate from now on, so a
                // relaxed limit applies at once. (Two calls racing with
                // clocks a few nanoseconds apart can land here too; they
                // give away those nanoseconds, no more.)
                match bucket.tat.compare_exchange_weak(
                    tat,
                    ceiling,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => tat = ceiling,
                    Err(seen) => {
                        tat = seen;
                        continue;
                    }
                }
            }
            let next = tat.max(now_ns).saturating_add(self.interval_ns);
            if next > ceiling {
                return Err(Duration::from_nanos(next - ceiling));
            }
            match bucket
                .tat
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(()),
                // Another call of the same client moved the TAT: judge again.
                Err(seen) => tat = seen,
            }
        }
    }
}

/// One client's bucket. Shared (`Arc`) by the client's entries in every
/// policy version, so a reload keeps what the client has used.
#[derive(Debug, Default)]
pub struct Bucket {
    tat: AtomicU64,
}

/// The monotonic clock in nanoseconds since the first call: the wall clock
/// may step back (NTP), which would refill every bucket at once.
pub fn now_ns() -> u64 {
    static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
    u64::try_from(EPOCH.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// `Retry-After` in whole seconds: rounded up, never 0 (0 invites an
/// immediate retry that would be refused again). A wait is at most one
/// interval (1000 s), far inside a `u32`.
pub fn retry_after_secs(wait: Duration) -> NonZeroU32 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    NonZeroU32::new(u32::try_from(secs).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limit(rps: f64, burst: u32) -> RateLimit {
        RateLimit::new(&RateLimitDef {
            requests_per_second: rps,
            burst,
        })
        .unwrap()
    }

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn an_idle_bucket_admits_the_burst_then_one_per_interval() {
        let l = limit(5.0, 3);
        let b = Bucket::default();
        let t0 = 10 * SEC;
        for _ in 0..3 {
            assert!(l.admit(&b, t0).is_ok());
        }
        let wait = l.admit(&b, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(200));
        // Not quite one interval later: still refused, and the refusal
        // did not move the TAT.
        assert!(l.admit(&b, t0 + SEC / 5 - 1).is_err());
        assert!(l.admit(&b, t0 + SEC / 5).is_ok());
        assert!(l.admit(&b, t0 + SEC / 5).is_err());
        // Idle long enough, the whole burst is back.
        let later = t0 + 10 * SEC;
        for _ in 0..3 {
            assert!(l.admit(&b, later).is_ok());
        }
        assert!(l.admit(&b, later).is_err());
    }

    #[test]
    fn a_relaxed_limit_applies_at_once_to_a_used_bucket() {
        let strict = limit(0.01, 10); // tolerance 1000 s
        let b = Bucket::default();
        for _ in 0..10 {
            assert!(strict.admit(&b, SEC).is_ok());
        }
        assert!(strict.admit(&b, SEC).is_err());
        // The TAT is 1000 s ahead; under 100/s with burst 2 the bucket
        // counts as empty: one call every 10 ms from now on, then the burst
        // once idle.
        let relaxed = limit(100.0, 2);
        assert_eq!(relaxed.admit(&b, SEC), Err(Duration::from_millis(10)));
        assert!(relaxed.admit(&b, SEC + SEC / 200).is_err());
        assert!(relaxed.admit(&b, SEC + SEC / 100).is_ok());
        assert!(relaxed.admit(&b, SEC + SEC / 100).is_err());
        assert!(relaxed.admit(&b, SEC + SEC).is_ok());
        assert!(relaxed.admit(&b, SEC + SEC).is_ok());
        assert!(relaxed.admit(&b, SEC + SEC).is_err());
    }

    #[test]
    fn invalid_limits_name_their_field() {
        let bad = |rps: f64, burst: u32| {
            RateLimit::new(&RateLimitDef {
                requests_per_second: rps,
                burst,
            })
            .unwrap_err()
            .field
        };
        for rps in [0.0, -1.0, f64::NAN, f64::INFINITY, 0.0001, 2e6] {
            assert_eq!(bad(rps, 1), "requests_per_second", "{rps}");
        }
        assert_eq!(bad(1.0, 0), "burst");
        assert_eq!(bad(1.0, 1_000_001), "burst");
        // The extremes are fine.
        assert!(RateLimit::new(&RateLimitDef {
            requests_per_second: 0.001,
            burst: 1_000_000
        })
        .is_ok());
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_at_least_one() {
        assert_eq!(retry_after_secs(Duration::ZERO).get(), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)).get(), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)).get(), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)).get(), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(7)).get(), 7);
    }

    #[test]
    fn the_clock_is_monotonic() {
        let a = now_ns();
        let b = now_ns();
        assert!(b >= a);
    }

    proptest! {
        /// Whatever the arrival pattern, the calls admitted from the first
        /// one on never exceed `burst + rps * elapsed`.
        #[test]
        fn never_admits_more_than_burst_plus_rate_times_elapsed(
            rps in 0.5f64..2000.0,
            burst in 1u32..50,
            start in 0u64..(100 * SEC),
            gaps in proptest::collection::vec(0u64..(SEC / 50), 1..400),
        ) {
            let l = limit(rps, burst);
            let b = Bucket::default();
            let mut now = start;
            let mut admitted = 0u64;
            for gap in gaps {
                now += gap;
                if l.admit(&b, now).is_ok() {
                    admitted += 1;
                }
                let elapsed = (now - start) as f64 / 1e9;
                // The interval is rounded to whole nanoseconds: allow for it.
                let bound = f64::from(burst) + elapsed * l.requests_per_second() + 1e-6;
                prop_assert!(admitted as f64 <= bound, "{admitted} > {bound}");
            }
        }

        /// After a limit change, whatever the old limit left in the bucket,
        /// the new limit's bound holds from the first call under it.
        #[test]
        fn a_changed_limit_holds_its_own_bound(
            old_rps in 0.01f64..2000.0,
            old_burst in 1u32..50,
            new_rps in 0.5f64..2000.0,
            new_burst in 1u32..50,
            before in proptest::collection::vec(0u64..(SEC / 50), 0..100),
            after in proptest::collection::vec(0u64..(SEC / 50), 1..200),
        ) {
            let (old, new) = (limit(old_rps, old_burst), limit(new_rps, new_burst));
            let b = Bucket::default();
            let mut now = SEC;
            for gap in before {
                now += gap;
                let _ = old.admit(&b, now);
            }
            let start = now;
            let mut admitted = 0u64;
            for gap in after {
                now += gap;
                if new.admit(&b, now).is_ok() {
                    admitted += 1;
                }
                let elapsed = (now - start) as f64 / 1e9;
                let bound = f64::from(new_burst) + elapsed * new.requests_per_second() + 1e-6;
                prop_assert!(admitted as f64 <= bound, "{admitted} > {bound}");
            }
        }

        /// A call refused is admitted once the wait it was given has passed.
        #[test]
        fn the_wait_given_is_enough(rps in 0.5f64..2000.0, burst in 1u32..20, extra in 0u32..20) {
            let l = limit(rps, burst);
            let b = Bucket::default();
            let now = 5 * SEC;
            for _ in 0..(burst + extra) {
                let _ = l.admit(&b, now);
            }
            let wait = l.admit(&b, now).unwrap_err();
            let after = now + u64::try_from(wait.as_nanos()).unwrap();
            prop_assert!(l.admit(&b, after - 1).is_err());
            prop_assert!(l.admit(&b, after).is_ok());
        }
    }
}
