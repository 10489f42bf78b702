//! Least active: the endpoint with the fewest calls in flight (Dubbo's `leastactive`, nginx's
//! `least_conn`), ties taken in turn.

use super::{Balancer, Candidate};

/// Picks a candidate with the fewest calls in flight. A slow or stuck endpoint holds its
/// calls longer, so it is picked less, without measuring any time. Weights are ignored.
///
/// Ties are broken fairly: among the `k` candidates tied for fewest, the `n`th pick takes
/// tie number `n mod k`, so a caller making one call at a time (everything always idle)
/// still spreads its calls round robin instead of sending them all to the first endpoint.
///
/// # Examples
///
/// ```
/// use rpc_core::cluster::{Balancer, Candidate, Endpoint, LeastActive};
///
/// let endpoints = [Endpoint::new("a:1"), Endpoint::new("b:1")];
/// let candidates = [Candidate::new(&endpoints[0], 4), Candidate::new(&endpoints[1], 1)];
/// assert_eq!(LeastActive::new().pick(&candidates), Some(1));
/// ```
#[derive(Debug, Clone, Default)]
pub struct LeastActive {
    /// Picks made so far: which of the tied candidates the next tie goes to.
    turn: usize,
}

impl LeastActive {
    /// A least-active policy.
    pub fn new() -> Self {
        LeastActive::default()
    }
}

impl Balancer for LeastActive {
    fn pick(&mut self, candidates: &[Candidate<'_>]) -> Option<usize> {
        let fewest = candidates.iter().map(|c| c.in_flight).min()?;
        let tied = candidates.iter().filter(|c| c.in_flight == fewest).count();
        let chosen_tie = self.turn % tied;
        self.turn = self.turn.wrapping_add(1);
        candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| c.in_flight == fewest)
            .nth(chosen_tie)
            .map(|(index, _)| index)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{candidates, counts, endpoints};
    use super::*;

    #[test]
    fn least_active_picks_the_idle_endpoint() {
        let endpoints = endpoints(&[1, 1, 1]);
        let mut policy = LeastActive::new();
        for _ in 0..5 {
            assert_eq!(policy.pick(&candidates(&endpoints, &[3, 0, 2])), Some(1));
        }
        assert_eq!(policy.pick(&candidates(&endpoints, &[3, 4, 2])), Some(2));
    }

    #[test]
    fn least_active_breaks_ties_in_turn() {
        let endpoints = endpoints(&[1, 1, 1]);
        assert_eq!(
            counts(&mut LeastActive::new(), &endpoints, 30),
            [10, 10, 10]
        );
        // Two tied at the minimum share the picks evenly; the busy one gets none.
        let mut policy = LeastActive::new();
        let tied = candidates(&endpoints, &[1, 5, 1]);
        let picks: Vec<usize> = (0..6).filter_map(|_| policy.pick(&tied)).collect();
        assert_eq!(picks, [0, 2, 0, 2, 0, 2]);
    }

    #[test]
    fn least_active_follows_the_load_as_it_changes() {
        // Three calls started one after another, none completing: each goes to an idle one.
        let endpoints = endpoints(&[1, 1, 1]);
        let mut in_flight = vec![0; 3];
        let mut policy = LeastActive::new();
        for _ in 0..3 {
            let index = policy
                .pick(&candidates(&endpoints, &in_flight))
                .expect("three candidates");
            in_flight[index] += 1;
        }
        assert_eq!(in_flight, [1, 1, 1]);
    }
}
