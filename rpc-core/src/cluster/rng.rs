//! A small seedable pseudo-random generator (SplitMix64) for the cluster layer: backoff
//! jitter, random load balancing and the simulated network. Not for cryptography. Written out
//! here because the needs are tiny and a seed must replay exactly: the same seed gives the
//! same sequence on every machine and every version of netrpc.

use std::time::{SystemTime, UNIX_EPOCH};

/// SplitMix64 (Steele, Lea and Flood, 2014): one 64-bit state, one add and three mixes per
/// number; passes BigCrush, more than enough for jitter and picking hosts.
///
/// # Examples
///
/// ```
/// use rpc_core::cluster::Rng;
///
/// let mut a = Rng::with_seed(42);
/// let mut b = Rng::with_seed(42);
/// assert_eq!(a.next_u64(), b.next_u64());
/// assert!(a.below(10) < 10);
/// ```
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator whose sequence is fixed by `seed`.
    pub fn with_seed(seed: u64) -> Self {
        Rng { state: seed }
    }

    /// A generator seeded from the clock and a per-process counter: different on every call.
    pub fn from_entropy() -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos() as u64);
        let count = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut mixer =
            Rng::with_seed(nanos ^ count.rotate_left(32) ^ u64::from(std::process::id()));
        Rng::with_seed(mixer.next_u64())
    }

    /// The next number, uniform over all of `u64`.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number uniform in `0..bound` (0 when `bound` is 0), by Lemire's multiply-shift, whose
    /// bias is below 2^-32 for any bound under 2^32.
    pub fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// A number uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        // The top 53 bits fill an f64's mantissa exactly.
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p` (clamped to `[0, 1]`).
    pub fn chance(&mut self, p: f64) -> bool {
        self.next_f64() < p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_sequence() {
        let first: Vec<u64> = {
            let mut rng = Rng::with_seed(7);
            (0..5).map(|_| rng.next_u64()).collect()
        };
        let mut rng = Rng::with_seed(7);
        assert_eq!(first, (0..5).map(|_| rng.next_u64()).collect::<Vec<_>>());
        assert_ne!(Rng::with_seed(8).next_u64(), first[0]);
    }

    #[test]
    fn bounded_numbers_stay_in_range_and_cover_it() {
        let mut rng = Rng::with_seed(1);
        let mut seen = [0u32; 6];
        for _ in 0..6_000 {
            let n = rng.below(6) as usize;
            seen[n] += 1;
        }
        assert!(
            seen.iter().all(|&count| (800..1200).contains(&count)),
            "{seen:?}"
        );
        assert_eq!(rng.below(0), 0);
        let f = rng.next_f64();
        assert!((0.0..1.0).contains(&f));
        assert!(!rng.chance(0.0));
        assert!(rng.chance(1.0));
    }

    #[test]
    fn entropy_seeds_differ() {
        assert_ne!(
            Rng::from_entropy().next_u64(),
            Rng::from_entropy().next_u64()
        );
    }
}
