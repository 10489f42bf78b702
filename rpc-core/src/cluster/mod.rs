//! Patterns for clusters of netrpc servers, built only on the public `Client` and `Server`:
//! the tutorials' distributed examples (SEEDS §2 to §4) as reusable pieces.
//!
//! | pattern | type | what it gives |
//! |---|---|---|
//! | multicast with acknowledgements | [`Multicast`] | one call to many hosts, one answer or typed error per host, within one deadline |
//! | master/worker, push | [`Distributor`] | tasks handed round robin to workers, a failed worker's tasks moved to live ones |
//! | master/worker, pull | [`TaskQueue`], [`run_worker`] | a lease-based queue served over RPC: every task completed exactly once despite slow or dead workers |
//! | seeded randomness | [`Rng`] | jitter and random choices that replay exactly from a seed |
//! | load-balancing policies | [`Balancer`], [`Endpoint`], [`RoundRobin`], [`Random`], [`WeightedRoundRobin`], [`LeastActive`], [`PeakEwma`] | which endpoint gets the next call: in turn, at random, by weight, by fewest calls in flight, or by latency × load |
//! | client-side load balancing | [`BalancedClient`] | one client over many endpoints: a policy picks per call, failover where nothing ran, down endpoints skipped, endpoint list replaceable at run time |

mod distribute;
mod multicast;
mod rng;
mod task_queue;

mod balance;
mod balanced_client;

pub use distribute::{Distribution, Distributor, TaskResult, DEFAULT_MAX_IN_FLIGHT_PER_WORKER};
pub use multicast::{AckStream, HostAnswer, Multicast, Outcome, DEFAULT_MULTICAST_DEADLINE};
pub use rng::Rng;
pub use task_queue::{
    run_worker, Assignment, IgnoredReason, QueueEvent, QueueObserver, QueueStats, Submission,
    SubmitAck, TaskQueue, TaskQueueClient, TaskQueueService, TaskRequest, WorkerExit,
    WorkerSummary, DEFAULT_LEASE, TASK_QUEUE_SERVICE,
};

pub use balance::{
    Balancer, Candidate, Endpoint, LeastActive, PeakEwma, Random, RoundRobin, WeightedRoundRobin,
    DEFAULT_EWMA_DECAY,
};
pub use balanced_client::{
    BalancedClient, BalancedClientBuilder, EndpointStats, DEFAULT_DOWN_FOR, DEFAULT_MAX_ATTEMPTS,
};
