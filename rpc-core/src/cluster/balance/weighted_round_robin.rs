//! Smooth weighted round robin, as in nginx's upstream module: calls in proportion to the
//! weights, interleaved rather than in bursts.

use std::collections::HashMap;

use super::{Balancer, Candidate, Endpoint};

/// Picks in proportion to the endpoints' weights, spread evenly: with weights 5, 1, 1 the
/// picks go `a a b a c a a`, never five `a` in a row.
///
/// nginx's algorithm (`ngx_http_upstream_get_peer`): each candidate keeps a current weight;
/// on each pick every candidate's current weight grows by its weight, the largest wins, and
/// the winner's drops by the total of the weights. Over any run of `total` picks with a fixed
/// list, each endpoint gets exactly its weight. State is kept per address, so it survives
/// endpoints going down and coming back.
///
/// # Examples
///
/// ```
/// use rpc_core::cluster::{Balancer, Candidate, Endpoint, WeightedRoundRobin};
///
/// let endpoints = [Endpoint::new("a:1").with_weight(2), Endpoint::new("b:1")];
/// let candidates: Vec<_> = endpoints.iter().map(|e| Candidate::new(e, 0)).collect();
/// let mut policy = WeightedRoundRobin::new();
/// let picks: Vec<_> = (0..3).filter_map(|_| policy.pick(&candidates)).collect();
/// assert_eq!(picks, [0, 1, 0]);
/// ```
#[derive(Debug, Clone, Default)]
pub struct WeightedRoundRobin {
    /// Current weight of each address seen.
    current: HashMap<String, i64>,
}

impl WeightedRoundRobin {
    /// A smooth weighted round robin with every current weight at zero.
    pub fn new() -> Self {
        WeightedRoundRobin::default()
    }
}

impl Balancer for WeightedRoundRobin {
    fn pick(&mut self, candidates: &[Candidate<'_>]) -> Option<usize> {
        let mut total: i64 = 0;
        let mut best: Option<(usize, i64)> = None;
        for (index, candidate) in candidates.iter().enumerate() {
            let weight = i64::from(candidate.endpoint.effective_weight());
            total += weight;
            let addr = &candidate.endpoint.addr;
            // Look up before inserting: `entry` would allocate a key on every pick.
            if !self.current.contains_key(addr) {
                self.current.insert(addr.clone(), 0);
            }
            let Some(current) = self.current.get_mut(addr) else {
                continue;
            };
            *current += weight;
            if best.is_none_or(|(_, best_current)| *current > best_current) {
                best = Some((index, *current));
            }
        }
        let (index, _) = best?;
        if let Some(current) = self.current.get_mut(&candidates[index].endpoint.addr) {
            *current -= total;
        }
        // Addresses passed to `pick` but never to `retain` (a caller using the trait alone)
        // must not pile up: past twice the list, keep only the current candidates.
        if self.current.len() > 2 * candidates.len() + 16 {
            self.current
                .retain(|addr, _| candidates.iter().any(|c| c.endpoint.addr == *addr));
        }
        Some(index)
    }

    fn retain(&mut self, endpoints: &[Endpoint]) {
        self.current
            .retain(|addr, _| endpoints.iter().any(|e| e.addr == *addr));
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{candidates, counts, endpoints};
    use super::*;

    #[test]
    fn weights_five_one_one_give_exactly_five_one_one_over_seven_picks_interleaved() {
        let endpoints = endpoints(&[5, 1, 1]);
        let candidates = candidates(&endpoints, &[0, 0, 0]);
        let mut policy = WeightedRoundRobin::new();
        let picks: Vec<usize> = (0..7).filter_map(|_| policy.pick(&candidates)).collect();
        // nginx's documented sequence for weights 5, 1, 1.
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
        // The next seven repeat it: the state is back to all zeros.
        let again: Vec<usize> = (0..7).filter_map(|_| policy.pick(&candidates)).collect();
        assert_eq!(again, picks);
    }

    #[test]
    fn weighted_round_robin_never_bursts_beyond_the_share() {
        let endpoints = endpoints(&[3, 2, 1]);
        let mut policy = WeightedRoundRobin::new();
        assert_eq!(counts(&mut policy, &endpoints, 600), [300, 200, 100]);
        let candidates = candidates(&endpoints, &[0, 0, 0]);
        let picks: Vec<usize> = (0..60).filter_map(|_| policy.pick(&candidates)).collect();
        let longest_run = picks
            .chunk_by(|a, b| a == b)
            .map(<[usize]>::len)
            .max()
            .unwrap_or(0);
        assert!(longest_run <= 2, "{picks:?}");
    }

    #[test]
    fn equal_weights_make_it_a_plain_round_robin() {
        let endpoints = endpoints(&[1, 1, 1]);
        let candidates = candidates(&endpoints, &[0, 0, 0]);
        let mut policy = WeightedRoundRobin::new();
        let picks: Vec<usize> = (0..6).filter_map(|_| policy.pick(&candidates)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn retain_forgets_removed_addresses() {
        let endpoints = endpoints(&[2, 1]);
        let mut policy = WeightedRoundRobin::new();
        counts(&mut policy, &endpoints, 1);
        policy.retain(&endpoints[..1]);
        assert_eq!(policy.current.len(), 1);
    }
}
