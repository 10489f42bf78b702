//! A dynamic weight from latency and calls in flight: Finagle's "power of two choices" over a
//! peak-sensitive EWMA of latency (`PeakEwma`), as also used by Linkerd.
//!
//! Each endpoint's cost is its latency estimate × (calls in flight + 1) ÷ weight. A pick
//! draws two different candidates at random and takes the cheaper, which avoids the herd
//! that "always the cheapest" causes when many clients see the same numbers, and costs O(1).
//!
//! The latency estimate is an exponentially weighted moving average whose weight follows the
//! time between observations, with a decay time τ ([`DEFAULT_EWMA_DECAY`]). Between observations
//! it decays toward zero by `e^(−Δt/τ)`, so an endpoint once slow is probed again after a
//! while instead of being starved forever. An observation above the decayed estimate replaces
//! it ("peak" sensitive: a server that slows down is avoided at once); one below is blended
//! in with weight `1 − e^(−Δt/τ)` (a server that speeds up earns its traffic back over about
//! τ). An endpoint never measured costs zero when idle, so it is tried first.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{Balancer, Candidate, Endpoint};
use crate::cluster::Rng;

/// Default decay time τ of the latency estimate: 1 second. Finagle uses 10 s; a shorter τ
/// notices a recovered server sooner and probes a slow one more often (about every
/// τ × ln(slow ÷ fast) while the others stay busy).
pub const DEFAULT_EWMA_DECAY: Duration = Duration::from_secs(1);

/// Cost of an endpoint never measured, per call in flight: high enough that an unmeasured
/// endpoint takes one probe at a time, as Finagle's penalty does.
const UNMEASURED_COST_PER_CALL_NANOS: f64 = 1e12;

/// Power of two choices over peak EWMA latency × (calls in flight + 1) ÷ weight.
///
/// See the module docs for the estimate. `record` and `pick` read the clock;
/// [`PeakEwma::record_at`] and [`PeakEwma::pick_at`] take the time instead, for tests and
/// simulations.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// use rpc_core::cluster::{Candidate, Endpoint, PeakEwma};
///
/// let endpoints = [Endpoint::new("fast:1"), Endpoint::new("slow:1")];
/// let candidates: Vec<_> = endpoints.iter().map(|e| Candidate::new(e, 0)).collect();
/// let mut policy = PeakEwma::with_seed(1);
/// let now = Instant::now();
/// policy.record_at("fast:1", Duration::from_millis(1), now);
/// policy.record_at("slow:1", Duration::from_millis(50), now);
/// // With two candidates both are drawn every time, and the cheaper one wins.
/// assert_eq!(policy.pick_at(&candidates, now), Some(0));
/// ```
#[derive(Debug, Clone)]
pub struct PeakEwma {
    rng: Rng,
    decay: Duration,
    /// The latency estimate of each address measured.
    estimates: HashMap<String, Estimate>,
}

/// One endpoint's latency estimate as of `stamp`.
#[derive(Debug, Clone, Copy)]
struct Estimate {
    nanos: f64,
    stamp: Instant,
}

impl PeakEwma {
    /// A policy seeded from the clock, with decay time [`DEFAULT_EWMA_DECAY`].
    pub fn new() -> Self {
        PeakEwma::with_rng(Rng::from_entropy())
    }

    /// A policy whose random draws are fixed by `seed`.
    pub fn with_seed(seed: u64) -> Self {
        PeakEwma::with_rng(Rng::with_seed(seed))
    }

    fn with_rng(rng: Rng) -> Self {
        PeakEwma {
            rng,
            decay: DEFAULT_EWMA_DECAY,
            estimates: HashMap::new(),
        }
    }

    /// Sets the decay time τ (at least 1 ms): how fast old latencies are forgotten and how
    /// fast an idle endpoint's estimate falls toward zero.
    pub fn decay(mut self, decay: Duration) -> Self {
        self.decay = decay.max(Duration::from_millis(1));
        self
    }

    /// The latency estimate of `addr` at `now`, `None` if it was never measured.
    pub fn latency_at(&self, addr: &str, now: Instant) -> Option<Duration> {
        let nanos = self.estimate_nanos(addr, now)?;
        Some(Duration::from_nanos(nanos as u64))
    }

    /// The cost of `candidate` at `now`: latency estimate in nanoseconds × (calls in flight
    /// + 1) ÷ weight. Lower is better.
    pub fn cost_at(&self, candidate: &Candidate<'_>, now: Instant) -> f64 {
        let in_flight = candidate.in_flight as f64;
        let latency = match self.estimate_nanos(&candidate.endpoint.addr, now) {
            Some(nanos) => nanos,
            None if candidate.in_flight == 0 => 0.0,
            None => UNMEASURED_COST_PER_CALL_NANOS,
        };
        latency * (in_flight + 1.0) / f64::from(candidate.endpoint.effective_weight())
    }

    /// Learns that a call to `addr` took `latency`, observed at `now`.
    pub fn record_at(&mut self, addr: &str, latency: Duration, now: Instant) {
        let observed = latency.as_nanos() as f64;
        let updated = match self.estimates.get(addr) {
            None => observed,
            Some(estimate) => {
                let keep = self.keep_fraction(estimate.stamp, now);
                let decayed = estimate.nanos * keep;
                if observed > decayed {
                    observed
                } else {
                    decayed * keep + observed * (1.0 - keep)
                }
            }
        };
        let estimate = Estimate {
            nanos: updated,
            stamp: now,
        };
        match self.estimates.get_mut(addr) {
            Some(slot) => *slot = estimate,
            None => {
                self.estimates.insert(addr.to_owned(), estimate);
            }
        }
    }

    /// Picks at `now`: the cheaper of two different random candidates.
    pub fn pick_at(&mut self, candidates: &[Candidate<'_>], now: Instant) -> Option<usize> {
        match candidates.len() {
            0 => None,
            1 => Some(0),
            len => {
                let first = self.rng.below(len as u64) as usize;
                let mut second = self.rng.below(len as u64 - 1) as usize;
                if second >= first {
                    second += 1;
                }
                let first_cost = self.cost_at(&candidates[first], now);
                let second_cost = self.cost_at(&candidates[second], now);
                Some(if second_cost < first_cost {
                    second
                } else {
                    first
                })
            }
        }
    }

    fn estimate_nanos(&self, addr: &str, now: Instant) -> Option<f64> {
        let estimate = self.estimates.get(addr)?;
        Some(estimate.nanos * self.keep_fraction(estimate.stamp, now))
    }

    /// `e^(−Δt/τ)`: how much of an estimate made at `stamp` is left at `now`.
    fn keep_fraction(&self, stamp: Instant, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(stamp).as_secs_f64();
        (-elapsed / self.decay.as_secs_f64()).exp()
    }
}

impl Default for PeakEwma {
    fn default() -> Self {
        PeakEwma::new()
    }
}

impl Balancer for PeakEwma {
    fn pick(&mut self, candidates: &[Candidate<'_>]) -> Option<usize> {
        self.pick_at(candidates, Instant::now())
    }

    fn record(&mut self, addr: &str, latency: Duration) {
        self.record_at(addr, latency, Instant::now());
    }

    fn retain(&mut self, endpoints: &[Endpoint]) {
        self.estimates
            .retain(|addr, _| endpoints.iter().any(|e| e.addr == *addr));
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{candidates, endpoints};
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Simulates `picks` calls, one per millisecond, each taking its endpoint's latency, and
    /// returns how many went to each endpoint.
    fn simulate(policy: &mut PeakEwma, latencies: &[Duration], picks: usize) -> Vec<usize> {
        let endpoints = endpoints(&vec![1; latencies.len()]);
        let idle = vec![0; latencies.len()];
        let candidates = candidates(&endpoints, &idle);
        let start = Instant::now();
        let mut counts = vec![0; latencies.len()];
        for step in 0..picks {
            let now = start + MS * step as u32;
            let index = policy.pick_at(&candidates, now).expect("candidates");
            counts[index] += 1;
            policy.record_at(&endpoints[index].addr, latencies[index], now);
        }
        counts
    }

    #[test]
    fn peak_ewma_prefers_the_fast_endpoint_and_still_probes_the_slow_one() {
        let latencies = [MS, MS, MS * 20];
        let counts = simulate(&mut PeakEwma::with_seed(3), &latencies, 6000);
        assert!(counts[2] * 20 < counts[0] + counts[1], "{counts:?}");
        // One call while unmeasured, then more: six seconds are six decay times, and its
        // estimate falls to the fast ones' about every τ × ln(20) = 3 s.
        assert!(counts[2] >= 2, "{counts:?}");
        assert!(counts[0] > 1000 && counts[1] > 1000, "{counts:?}");
    }

    #[test]
    fn peak_ewma_avoids_an_endpoint_with_many_calls_in_flight() {
        let endpoints = endpoints(&[1, 1]);
        let mut policy = PeakEwma::with_seed(5);
        let now = Instant::now();
        policy.record_at("e0", MS * 2, now);
        policy.record_at("e1", MS * 3, now);
        assert_eq!(
            policy.pick_at(&candidates(&endpoints, &[0, 0]), now),
            Some(0)
        );
        // 2 ms × 3 calls costs more than 3 ms × 1.
        assert_eq!(
            policy.pick_at(&candidates(&endpoints, &[2, 0]), now),
            Some(1)
        );
    }

    #[test]
    fn an_unmeasured_endpoint_is_tried_first_but_only_one_call_at_a_time() {
        let endpoints = endpoints(&[1, 1]);
        let mut policy = PeakEwma::with_seed(5);
        let now = Instant::now();
        policy.record_at("e0", MS, now);
        assert_eq!(
            policy.pick_at(&candidates(&endpoints, &[0, 0]), now),
            Some(1)
        );
        assert_eq!(
            policy.pick_at(&candidates(&endpoints, &[0, 1]), now),
            Some(0)
        );
    }

    #[test]
    fn a_slower_latency_replaces_the_estimate_at_once_and_a_faster_one_blends_in() {
        let mut policy = PeakEwma::with_seed(1);
        let start = Instant::now();
        policy.record_at("a", MS, start);
        policy.record_at("a", MS * 40, start + MS);
        let peak = policy.latency_at("a", start + MS).expect("measured");
        assert_eq!(peak, MS * 40);
        // A fast call 100 ms later moves the estimate about 10 % of the way (τ = 1 s).
        let later = start + MS * 101;
        policy.record_at("a", MS, later);
        let blended = policy.latency_at("a", later).expect("measured");
        assert!(blended > MS * 25 && blended < MS * 40, "{blended:?}");
    }

    #[test]
    fn an_idle_estimate_decays_toward_zero() {
        let mut policy = PeakEwma::with_seed(1).decay(Duration::from_secs(1));
        let start = Instant::now();
        policy.record_at("a", MS * 100, start);
        let after_one_tau = policy.latency_at("a", start + Duration::from_secs(1));
        let expected = 100.0 / std::f64::consts::E;
        let got = after_one_tau.expect("measured").as_secs_f64() * 1e3;
        assert!((got - expected).abs() < 0.01, "{got} ms");
        assert_eq!(policy.latency_at("b", start), None);
    }

    #[test]
    fn weight_divides_the_cost() {
        let endpoints = endpoints(&[4, 1]);
        let mut policy = PeakEwma::with_seed(1);
        let now = Instant::now();
        policy.record_at("e0", MS * 3, now);
        policy.record_at("e1", MS, now);
        // 3 ms ÷ 4 beats 1 ms ÷ 1.
        assert_eq!(
            policy.pick_at(&candidates(&endpoints, &[0, 0]), now),
            Some(0)
        );
    }

    #[test]
    fn retain_forgets_removed_addresses() {
        let endpoints = endpoints(&[1, 1]);
        let mut policy = PeakEwma::with_seed(1);
        let now = Instant::now();
        policy.record_at("e0", MS, now);
        policy.record_at("gone", MS, now);
        policy.retain(&endpoints);
        assert_eq!(policy.latency_at("gone", now), None);
        assert!(policy.latency_at("e0", now).is_some());
    }
}
