//! Rate limits: a token bucket per caller, as GCRA (the generic cell rate
//! algorithm: one timestamp per caller, the "theoretical arrival time" of
//! its next request). The same arithmetic runs here in memory and, for a
//! limit shared by several gateway replicas, in one Redis script
//! ([`SharedLimiter`]).
//!
//! Memory is bounded: callers are kept as 64-bit keyed hashes of their
//! identity (16 bytes each, whatever the identity's length), at most
//! `max_keys` of them. A caller whose bucket has refilled is
//! indistinguishable from one never seen, so dropping it loses nothing;
//! that is the eviction, done when a shard is full and by [`Buckets::sweep`].
//! Only when every kept caller is still draining (more than `max_keys`
//! active callers within one refill period) does the caller nearest to a
//! full bucket get forgotten, which can let it through early by at most
//! what it had left to refill.

use std::{
    collections::HashMap,
    hash::{BuildHasher, Hash, RandomState},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::future::BoxFuture;

/// Independent locks, so concurrent callers rarely wait for each other.
const SHARDS: usize = 16;

/// A sustained rate and the burst allowed on top of it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Requests per second, sustained.
    pub per_second: f64,
    /// Requests allowed at once from a full bucket.
    pub burst: u32,
}

impl Rate {
    /// Time for one request's worth to refill.
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.per_second)
    }

    /// Time for an empty bucket to refill completely: `RateLimit-Policy`'s window.
    pub fn window(&self) -> Duration {
        self.interval() * self.burst
    }
}

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Let through; `remaining` more could pass right now, and the bucket
    /// is full again after `reset`.
    Allowed { remaining: u32, reset: Duration },
    /// Refused; one request will pass after `retry_after`.
    Limited { retry_after: Duration },
}

/// GCRA for one bucket, in nanoseconds on a monotonic clock: returns the
/// decision and the bucket's new theoretical arrival time (unchanged when
/// refused).
pub fn gcra(stored_tat: Option<u64>, now: u64, interval: u64, burst: u32) -> (Decision, u64) {
    let tat = stored_tat.map_or(now, |tat| tat.max(now));
    let new_tat = tat.saturating_add(interval);
    let allow_at = new_tat.saturating_sub(interval.saturating_mul(u64::from(burst)));
    if now < allow_at {
        let retry_after = Duration::from_nanos(allow_at - now);
        return (Decision::Limited { retry_after }, tat);
    }
    let headroom = (now + interval.saturating_mul(u64::from(burst))).saturating_sub(new_tat);
    let remaining = u32::try_from(headroom / interval.max(1)).unwrap_or(u32::MAX);
    let reset = Duration::from_nanos(new_tat - now);
    (Decision::Allowed { remaining, reset }, new_tat)
}

/// Token buckets per caller, in this process's memory.
pub struct Buckets {
    rate: Rate,
    interval_ns: u64,
    epoch: Instant,
    hasher: RandomState,
    max_per_shard: usize,
    shards: Box<[Mutex<HashMap<u64, u64>>]>,
}

impl Buckets {
    /// Buckets at `rate` for at most `max_keys` callers at once.
    pub fn new(rate: Rate, max_keys: usize) -> Self {
        Self {
            rate,
            interval_ns: u64::try_from(rate.interval().as_nanos())
                .unwrap_or(u64::MAX)
                .max(1),
            epoch: Instant::now(),
            // Keyed SipHash: identities are chosen by clients, their hashes
            // are not predictable, so nobody can aim two at one bucket.
            hasher: RandomState::new(),
            max_per_shard: max_keys.div_ceil(SHARDS).max(1),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Takes one request from `identity`'s bucket.
    pub fn check(&self, identity: &(impl Hash + ?Sized)) -> Decision {
        self.check_at(identity, self.now())
    }

    fn check_at(&self, identity: &(impl Hash + ?Sized), now: u64) -> Decision {
        let hash = self.hasher.hash_one(identity);
        let mut shard = self.shards[(hash as usize) % SHARDS]
            .lock()
            .expect("a rate limit shard is never poisoned: nothing panics while holding it");
        if !shard.contains_key(&hash) && shard.len() >= self.max_per_shard {
            evict(&mut shard, now, self.max_per_shard);
        }
        let (decision, tat) = gcra(shard.get(&hash).copied(), now, self.interval_ns, self.rate.burst);
        if matches!(decision, Decision::Allowed { .. }) {
            shard.insert(hash, tat);
        }
        decision
    }

    /// Forgets the callers whose buckets are full again, and gives back
    /// memory a past burst of callers left behind.
    pub fn sweep(&self) {
        self.sweep_at(self.now());
    }

    fn sweep_at(&self, now: u64) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock().expect("a rate limit shard is never poisoned");
            shard.retain(|_, tat| *tat > now);
            if shard.capacity() > 4 * shard.len().max(64) {
                shard.shrink_to_fit();
            }
        }
    }

    /// Callers currently kept.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().expect("a rate limit shard is never poisoned").len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Makes room in a full shard: first the callers whose buckets refilled
/// (no loss); else the eighth nearest to a full bucket, in one pass, so a
/// flood of new callers costs one scan per eighth of a shard, not one each.
/// A shard holds at most `max` callers; the hashes spread callers unevenly,
/// so the whole holds a little fewer than `max_keys` at its bound.
fn evict(shard: &mut HashMap<u64, u64>, now: u64, max: usize) {
    shard.retain(|_, tat| *tat > now);
    if shard.len() >= max {
        let mut tats: Vec<u64> = shard.values().copied().collect();
        let (_, threshold, _) = tats.select_nth_unstable(shard.len() / 8);
        let threshold = *threshold;
        shard.retain(|_, tat| *tat > threshold);
    }
    // Removals leave tombstones that would make the table grow on later
    // inserts; rebuilding it keeps it at the size the bound allows.
    shard.shrink_to(max);
}

/// A rate limit kept outside this process (Redis), shared by replicas.
/// `Err` says why it could not answer; the caller then falls back to its
/// own buckets.
pub trait SharedLimiter: Send + Sync + 'static {
    fn check<'a>(
        &'a self,
        class: &'static str,
        identity: &'a str,
        rate: Rate,
    ) -> BoxFuture<'a, Result<Decision, String>>;

    /// `Err(reason)` while it cannot answer (it recovers by itself).
    fn status(&self) -> Result<(), String>;
}

/// The shared limiter, when configured; its failures and recoveries are
/// logged once each.
pub struct Shared {
    pub limiter: Arc<dyn SharedLimiter>,
    failing: AtomicBool,
}

impl Shared {
    pub fn new(limiter: Arc<dyn SharedLimiter>) -> Self {
        Self {
            limiter,
            failing: AtomicBool::new(false),
        }
    }

    /// `Err(reason)` while the shared limiter cannot answer: the limits
    /// are then this process's own.
    pub fn status(&self) -> Result<(), String> {
        self.limiter.status()
    }

    pub(super) fn record(&self, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("shared rate limiter answers again: limits are global");
                }
            }
            Err(reason) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(%reason, "shared rate limiter unreachable: each replica applies the limits alone");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn a_full_bucket_lets_exactly_its_burst_through_then_refills_at_the_rate() {
        let (interval, burst) = (SECOND / 2, 10);
        let mut tat = None;
        for expected_remaining in (0..10).rev() {
            let (decision, new_tat) = gcra(tat, 100 * SECOND, interval, burst);
            assert!(
                matches!(decision, Decision::Allowed { remaining, .. } if remaining == expected_remaining),
                "{decision:?}"
            );
            tat = Some(new_tat);
        }
        let (decision, unchanged) = gcra(tat, 100 * SECOND, interval, burst);
        assert_eq!(
            decision,
            Decision::Limited {
                retry_after: Duration::from_millis(500)
            }
        );
        assert_eq!(Some(unchanged), tat);
        // Just before the promised time: still refused; at it: allowed.
        let (decision, _) = gcra(tat, 100 * SECOND + interval - 1, interval, burst);
        assert!(matches!(decision, Decision::Limited { .. }));
        let (decision, _) = gcra(tat, 100 * SECOND + interval, interval, burst);
        assert_eq!(
            decision,
            Decision::Allowed {
                remaining: 0,
                reset: Duration::from_secs(5)
            }
        );
    }

    #[test]
    fn identities_have_their_own_buckets() {
        let buckets = Buckets::new(
            Rate {
                per_second: 0.001,
                burst: 2,
            },
            1000,
        );
        assert!(matches!(
            buckets.check("alice"),
            Decision::Allowed { remaining: 1, .. }
        ));
        assert!(matches!(
            buckets.check("alice"),
            Decision::Allowed { remaining: 0, .. }
        ));
        assert!(matches!(buckets.check("alice"), Decision::Limited { .. }));
        assert!(matches!(
            buckets.check("bob"),
            Decision::Allowed { remaining: 1, .. }
        ));
    }

    #[test]
    fn the_number_of_callers_kept_is_bounded() {
        let max_keys = 100_000;
        let buckets = Buckets::new(
            Rate {
                per_second: 0.001,
                burst: 5,
            },
            max_keys,
        );
        for caller in 0..3 * max_keys {
            buckets.check(&format!("caller-{caller}"));
        }
        assert!(
            buckets.len() <= max_keys.div_ceil(SHARDS) * SHARDS,
            "{} kept",
            buckets.len()
        );
        // The newest caller's bucket is still kept, drained by one.
        assert!(matches!(
            buckets.check(&format!("caller-{}", 3 * max_keys - 1)),
            Decision::Allowed { remaining: 3, .. }
        ));
    }

    #[test]
    fn refilled_buckets_are_swept() {
        let buckets = Buckets::new(
            Rate {
                per_second: 1.0,
                burst: 3,
            },
            10_000,
        );
        for caller in 0..50 {
            buckets.check_at(&caller.to_string(), SECOND);
        }
        buckets.sweep_at(SECOND + SECOND / 2);
        assert_eq!(buckets.len(), 50, "each bucket is still refilling");
        buckets.sweep_at(2 * SECOND);
        assert!(buckets.is_empty(), "every bucket is full again");
    }
}
