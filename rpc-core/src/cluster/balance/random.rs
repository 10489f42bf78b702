//! Random: each pick independent, in proportion to the endpoints' weights (Dubbo's `random`).

use super::{Balancer, Candidate};
use crate::cluster::Rng;

/// Picks a candidate at random with probability weight / total weight (uniform when the
/// weights are equal), from a seedable [`Rng`]: the same seed replays the same picks.
///
/// Cheap and stateless across picks, so it needs no coordination, but short runs are uneven:
/// over `n` picks an endpoint's count varies by about `sqrt(n)`.
///
/// # Examples
///
/// ```
/// use rpc_core::cluster::{Balancer, Candidate, Endpoint, Random};
///
/// let endpoints = [Endpoint::new("a:1"), Endpoint::new("b:1")];
/// let candidates: Vec<_> = endpoints.iter().map(|e| Candidate::new(e, 0)).collect();
/// let (mut first, mut second) = (Random::with_seed(7), Random::with_seed(7));
/// for _ in 0..10 {
///     assert_eq!(first.pick(&candidates), second.pick(&candidates));
/// }
/// ```
#[derive(Debug, Clone)]
pub struct Random {
    rng: Rng,
}

impl Random {
    /// A random policy seeded from the clock: different picks in every run.
    pub fn new() -> Self {
        Random {
            rng: Rng::from_entropy(),
        }
    }

    /// A random policy whose picks are fixed by `seed`.
    pub fn with_seed(seed: u64) -> Self {
        Random {
            rng: Rng::with_seed(seed),
        }
    }
}

impl Default for Random {
    fn default() -> Self {
        Random::new()
    }
}

impl Balancer for Random {
    fn pick(&mut self, candidates: &[Candidate<'_>]) -> Option<usize> {
        let first = candidates.first()?;
        let equal = candidates
            .iter()
            .all(|c| c.endpoint.effective_weight() == first.endpoint.effective_weight());
        if equal {
            return Some(self.rng.below(candidates.len() as u64) as usize);
        }
        let total: u64 = candidates
            .iter()
            .map(|c| u64::from(c.endpoint.effective_weight()))
            .sum();
        let mut ticket = self.rng.below(total);
        for (index, candidate) in candidates.iter().enumerate() {
            let weight = u64::from(candidate.endpoint.effective_weight());
            if ticket < weight {
                return Some(index);
            }
            ticket -= weight;
        }
        // `ticket < total`, the sum of the weights, so the loop returned.
        Some(candidates.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{counts, endpoints};
    use super::*;

    #[test]
    fn random_with_a_fixed_seed_is_deterministic_and_covers_every_endpoint() {
        let endpoints = endpoints(&[1, 1, 1, 1]);
        let first = counts(&mut Random::with_seed(42), &endpoints, 400);
        let second = counts(&mut Random::with_seed(42), &endpoints, 400);
        assert_eq!(first, second);
        assert!(first.iter().all(|&count| count > 50), "{first:?}");
        assert_ne!(first, counts(&mut Random::with_seed(43), &endpoints, 400));
    }

    #[test]
    fn random_follows_the_weights() {
        let endpoints = endpoints(&[3, 1]);
        let counts = counts(&mut Random::with_seed(9), &endpoints, 4000);
        // Expected 3000 : 1000; the bounds are over 7 standard deviations wide.
        assert!((2800..3200).contains(&counts[0]), "{counts:?}");
    }
}
