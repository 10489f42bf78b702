//! Round robin: each candidate in turn, weights ignored (Go gRPC's `round_robin`).

use super::{Balancer, Candidate};

/// Picks the candidates in turn: the `n`th pick takes candidate `n mod len`.
///
/// When the candidates change (an endpoint goes down, one is added) the turn simply goes on
/// over the new list; over any stretch of picks with a fixed list, the counts differ by at
/// most one.
///
/// # Examples
///
/// ```
/// use rpc_core::cluster::{Balancer, Candidate, Endpoint, RoundRobin};
///
/// let endpoints = [Endpoint::new("a:1"), Endpoint::new("b:1")];
/// let candidates: Vec<_> = endpoints.iter().map(|e| Candidate::new(e, 0)).collect();
/// let mut policy = RoundRobin::new();
/// let picks: Vec<_> = (0..4).filter_map(|_| policy.pick(&candidates)).collect();
/// assert_eq!(picks, [0, 1, 0, 1]);
/// ```
#[derive(Debug, Clone, Default)]
pub struct RoundRobin {
    next: usize,
}

impl RoundRobin {
    /// A round robin starting at the first candidate.
    pub fn new() -> Self {
        RoundRobin::default()
    }
}

impl Balancer for RoundRobin {
    fn pick(&mut self, candidates: &[Candidate<'_>]) -> Option<usize> {
        if candidates.is_empty() {
            return None;
        }
        let index = self.next % candidates.len();
        self.next = self.next.wrapping_add(1);
        Some(index)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{candidates, counts, endpoints};
    use super::*;

    #[test]
    fn round_robin_cycles_through_every_endpoint_in_order() {
        let endpoints = endpoints(&[1, 1, 1]);
        let candidates = candidates(&endpoints, &[0, 0, 0]);
        let mut policy = RoundRobin::new();
        let picks: Vec<usize> = (0..7).filter_map(|_| policy.pick(&candidates)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn round_robin_ignores_weights_and_load() {
        let endpoints = endpoints(&[5, 1, 1]);
        assert_eq!(counts(&mut RoundRobin::new(), &endpoints, 9), [3, 3, 3]);
        let busy = candidates(&endpoints, &[100, 0, 0]);
        let mut policy = RoundRobin::new();
        assert_eq!(policy.pick(&busy), Some(0));
    }

    #[test]
    fn round_robin_goes_on_over_a_shrunk_list() {
        let endpoints = endpoints(&[1, 1, 1]);
        let all = candidates(&endpoints, &[0, 0, 0]);
        let two = candidates(&endpoints[..2], &[0, 0]);
        let mut policy = RoundRobin::new();
        assert_eq!(policy.pick(&all), Some(0));
        assert_eq!(policy.pick(&all), Some(1));
        assert_eq!(policy.pick(&two), Some(0));
        assert_eq!(policy.pick(&two), Some(1));
    }
}
