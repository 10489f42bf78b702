//! Client-side load balancing (SEEDS §7): the [`Balancer`] trait, the [`Endpoint`] it chooses
//! among, and five policies. A balancer only picks; dialing, failover and the bookkeeping of
//! calls in flight and of latency belong to [`crate::cluster::BalancedClient`], which feeds
//! each pick the endpoints that are up and each call's latency when it ends.
//!
//! | policy | picks | uses weight | uses in flight | uses latency |
//! |---|---|---|---|---|
//! | [`RoundRobin`] | each endpoint in turn | no | no | no |
//! | [`Random`] | at random, in proportion to weight | yes | no | no |
//! | [`WeightedRoundRobin`] | in proportion to weight, interleaved (nginx's smooth WRR) | yes | no | no |
//! | [`LeastActive`] | the endpoint with the fewest calls in flight; ties in turn | no | yes | no |
//! | [`PeakEwma`] | the better of two random endpoints by latency × (in flight + 1) / weight (Finagle's P2C peak EWMA) | yes | yes | yes |
//!
//! ```text
//!   BalancedClient::call ──► candidates (endpoints up, with calls in flight)
//!                               │ Balancer::pick
//!                               ▼
//!                          one endpoint ──► Client::call ──► Balancer::record(latency)
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

mod least_active;
mod peak_ewma;
mod random;
mod round_robin;
mod weighted_round_robin;

pub use least_active::LeastActive;
pub use peak_ewma::{PeakEwma, DEFAULT_EWMA_DECAY};
pub use random::Random;
pub use round_robin::RoundRobin;
pub use weighted_round_robin::WeightedRoundRobin;

/// One server a [`Balancer`] may send calls to: its address, a weight and free-form metadata.
///
/// Endpoints are told apart by `addr`: [`crate::cluster::BalancedClient::set_endpoints`] keeps
/// the connection and counters of an address that stays in the list. A weight of 0 counts as
/// 1 (to stop sending calls to an endpoint, remove it from the list).
///
/// # Examples
///
/// ```
/// use rpc_core::cluster::Endpoint;
///
/// let endpoint = Endpoint::new("127.0.0.1:9001").with_weight(5).with_metadata("zone", "a");
/// assert_eq!(endpoint.addr, "127.0.0.1:9001");
/// assert_eq!(endpoint.metadata.get("zone").map(String::as_str), Some("a"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The address to dial, `host:port`.
    pub addr: String,
    /// Relative share of calls for weight-aware policies (default 1).
    pub weight: u32,
    /// Anything a custom policy wants to know (zone, version, ...); the built-in ones ignore it.
    pub metadata: BTreeMap<String, String>,
}

impl Endpoint {
    /// An endpoint at `addr` with weight 1 and no metadata.
    pub fn new(addr: impl fmt::Display) -> Self {
        Endpoint {
            addr: addr.to_string(),
            weight: 1,
            metadata: BTreeMap::new(),
        }
    }

    /// Sets the weight (0 counts as 1).
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Adds one metadata entry.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// The weight the policies use: at least 1.
    pub fn effective_weight(&self) -> u32 {
        self.weight.max(1)
    }
}

impl From<&str> for Endpoint {
    fn from(addr: &str) -> Self {
        Endpoint::new(addr)
    }
}

impl From<String> for Endpoint {
    fn from(addr: String) -> Self {
        Endpoint {
            addr,
            weight: 1,
            metadata: BTreeMap::new(),
        }
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Self {
        Endpoint::new(addr)
    }
}

/// What a [`Balancer`] sees of one endpoint it may pick: the endpoint and its calls in flight.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// The endpoint.
    pub endpoint: &'a Endpoint,
    /// Calls sent to it (through this balanced client) that have not completed yet.
    pub in_flight: usize,
}

impl<'a> Candidate<'a> {
    /// A candidate with `in_flight` calls in flight.
    pub fn new(endpoint: &'a Endpoint, in_flight: usize) -> Self {
        Candidate {
            endpoint,
            in_flight,
        }
    }
}

/// A load-balancing policy: picks the endpoint for each call.
///
/// Called with a lock held, so `pick` should be quick and must not block; it is never called
/// concurrently on one balancer (hence `&mut self`). The candidates are the endpoints that are
/// up (or, when every endpoint is down, all of them) minus those a failing call already tried,
/// in the order of the endpoint list; their number and order can change from call to call, so
/// a policy keeps per-endpoint state by [`Endpoint::addr`], not by index.
///
/// # Examples
///
/// A policy that always picks the first endpoint (a "primary with backups"):
///
/// ```
/// use rpc_core::cluster::{Balancer, Candidate, Endpoint};
///
/// #[derive(Debug)]
/// struct First;
///
/// impl Balancer for First {
///     fn pick(&mut self, candidates: &[Candidate<'_>]) -> Option<usize> {
///         if candidates.is_empty() { None } else { Some(0) }
///     }
/// }
///
/// let endpoints = [Endpoint::new("127.0.0.1:1"), Endpoint::new("127.0.0.1:2")];
/// let candidates: Vec<_> = endpoints.iter().map(|e| Candidate::new(e, 0)).collect();
/// assert_eq!(First.pick(&candidates), Some(0));
/// ```
pub trait Balancer: Send + fmt::Debug {
    /// The index into `candidates` of the endpoint to call; `None` only if `candidates` is
    /// empty. An index out of range counts as 0.
    fn pick(&mut self, candidates: &[Candidate<'_>]) -> Option<usize>;

    /// A call to `addr` ended after `latency`: with a reply, the method's own error (or
    /// another answer from the server), or a timeout. Not called for failures where nothing
    /// ran, nor for a lost connection. The default ignores it.
    fn record(&mut self, addr: &str, latency: Duration) {
        let _ = (addr, latency);
    }

    /// The endpoint list is now `endpoints`: state kept for other addresses can go. The
    /// default does nothing.
    fn retain(&mut self, endpoints: &[Endpoint]) {
        let _ = endpoints;
    }
}

impl<B: Balancer + ?Sized> Balancer for Box<B> {
    fn pick(&mut self, candidates: &[Candidate<'_>]) -> Option<usize> {
        (**self).pick(candidates)
    }

    fn record(&mut self, addr: &str, latency: Duration) {
        (**self).record(addr, latency);
    }

    fn retain(&mut self, endpoints: &[Endpoint]) {
        (**self).retain(endpoints);
    }
}

/// Test helpers shared by the policies' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::{Balancer, Candidate, Endpoint};

    /// Endpoints `e0`, `e1`, ... with the given weights.
    pub(crate) fn endpoints(weights: &[u32]) -> Vec<Endpoint> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Endpoint::new(format!("e{i}")).with_weight(weight))
            .collect()
    }

    /// Candidates over `endpoints` with the given calls in flight.
    pub(crate) fn candidates<'a>(
        endpoints: &'a [Endpoint],
        in_flight: &[usize],
    ) -> Vec<Candidate<'a>> {
        endpoints
            .iter()
            .zip(in_flight)
            .map(|(endpoint, &count)| Candidate::new(endpoint, count))
            .collect()
    }

    /// How many of `picks` picks went to each endpoint, all idle.
    pub(crate) fn counts(
        balancer: &mut dyn Balancer,
        endpoints: &[Endpoint],
        picks: usize,
    ) -> Vec<usize> {
        let idle = vec![0; endpoints.len()];
        let candidates = candidates(endpoints, &idle);
        let mut counts = vec![0; endpoints.len()];
        for _ in 0..picks {
            let index = balancer
                .pick(&candidates)
                .expect("candidates are not empty");
            counts[index] += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_weight_counts_as_one() {
        assert_eq!(Endpoint::new("a:1").with_weight(0).effective_weight(), 1);
        assert_eq!(Endpoint::new("a:1").with_weight(7).effective_weight(), 7);
    }

    #[test]
    fn endpoints_convert_from_strings_and_socket_addresses() {
        let addr: SocketAddr = "127.0.0.1:9001".parse().expect("valid address");
        assert_eq!(Endpoint::from(addr), Endpoint::from("127.0.0.1:9001"));
        assert_eq!(Endpoint::from("x:1".to_owned()).weight, 1);
    }

    #[test]
    fn every_policy_returns_none_for_no_candidates() {
        let mut policies: Vec<Box<dyn Balancer>> = vec![
            Box::new(RoundRobin::new()),
            Box::new(Random::with_seed(1)),
            Box::new(WeightedRoundRobin::new()),
            Box::new(LeastActive::new()),
            Box::new(PeakEwma::with_seed(1)),
        ];
        for policy in &mut policies {
            assert_eq!(policy.pick(&[]), None, "{policy:?}");
        }
    }

    #[test]
    fn every_policy_picks_the_only_candidate() {
        let only = [Endpoint::new("solo:1")];
        let candidates = [Candidate::new(&only[0], 3)];
        let mut policies: Vec<Box<dyn Balancer>> = vec![
            Box::new(RoundRobin::new()),
            Box::new(Random::with_seed(1)),
            Box::new(WeightedRoundRobin::new()),
            Box::new(LeastActive::new()),
            Box::new(PeakEwma::with_seed(1)),
        ];
        for policy in &mut policies {
            for _ in 0..3 {
                assert_eq!(policy.pick(&candidates), Some(0), "{policy:?}");
            }
        }
    }
}
