//! Patterns for clusters of netrpc servers, built only on the public `Client` and `Server`:
//! the tutorials' distributed examples and cluster features (SEEDS §2 to §4, §6, §7) as
//! reusable pieces, one file per concept.
//!
//! | pattern | type | what it gives |
//! |---|---|---|
//! | multicast with acknowledgements | [`Multicast`] | one call to many hosts, one answer or typed error per host, within one deadline |
//! | master/worker, push | [`Distributor`] | tasks handed round robin to workers, a failed worker's tasks moved to live ones |
//! | master/worker, pull | [`TaskQueue`], [`run_worker`] | a lease-based queue served over RPC: every task completed exactly once despite slow or dead workers |
//! | seeded randomness | [`Rng`] | jitter and random choices that replay exactly from a seed |
//! | retries with backoff | [`RetryingClient`], [`RetryPolicy`], [`RetryBudget`] | only retryable failures retried (possibly-run ones only for idempotent methods), exponential backoff with jitter within the call's deadline, redial after a lost connection, retries capped at a share of the calls |
//! | circuit breaker | [`Breaker`], [`BreakerPolicy`] | an endpoint failing past a threshold is not called for a cooldown (calls fail fast with `CircuitOpen`), then one trial call decides whether it closes |
//! | load-balancing policies | [`Balancer`], [`Endpoint`], [`RoundRobin`], [`Random`], [`WeightedRoundRobin`], [`LeastActive`], [`PeakEwma`] | which endpoint gets the next call: in turn, at random, by weight, by fewest calls in flight, or by latency × load |
//! | client-side load balancing | [`BalancedClient`] | one client over many endpoints: a policy picks per call, failover where nothing ran, down endpoints skipped, endpoint list replaceable at run time |
//! | service registry | [`Registry`], [`Instance`], [`MemoryRegistry`], [`EtcdRegistry`] | instances registered with a TTL lease; dead ones expire |
//! | heartbeats | [`Registration`] | renews a registration every TTL/3 on its own thread, deregisters on drop |
//! | discovery | [`Watcher`], [`Discovery`] | the live instance list of a service, fed to a [`BalancedClient`] without restart |
//! | health checks | [`HealthChecker`], [`ping_probe`] | probes each instance over the network, marks the ones that stop answering |

mod balance;
mod balanced_client;
mod breaker;
mod discovery;
mod distribute;
pub mod etcd;
mod health;
mod multicast;
mod registration;
mod registry;
mod registry_memory;
mod retry;
mod retry_budget;
mod retrying_client;
mod rng;
mod task_queue;
mod watch;

pub use balance::{
    Balancer, Candidate, Endpoint, LeastActive, PeakEwma, Random, RoundRobin, WeightedRoundRobin,
    DEFAULT_EWMA_DECAY,
};
pub use balanced_client::{
    BalancedClient, BalancedClientBuilder, EndpointStats, DEFAULT_DOWN_FOR, DEFAULT_MAX_ATTEMPTS,
    TIMEOUTS_BEFORE_DOWN,
};
pub use breaker::{Breaker, BreakerPolicy, BreakerState, Permit, MAX_BREAKER_WINDOW};
pub use discovery::{Discovery, DISCOVERY_STOP_CHECK};
pub use distribute::{Distribution, Distributor, TaskResult, DEFAULT_MAX_IN_FLIGHT_PER_WORKER};
pub use etcd::EtcdRegistry;
pub use health::{
    ping_probe, HealthChecker, HealthCheckerBuilder, InstanceHealth, Probe, DEFAULT_HEALTHY_AFTER,
    DEFAULT_PROBE_INTERVAL, DEFAULT_PROBE_TIMEOUT, DEFAULT_UNHEALTHY_AFTER,
};
pub use multicast::{AckStream, HostAnswer, Multicast, Outcome, DEFAULT_MULTICAST_DEADLINE};
pub use registration::Registration;
pub use registry::{Instance, Lease, Registry, RegistryError, MAX_INSTANCE_FIELD_LEN};
pub use registry_memory::MemoryRegistry;
pub use retry::{Jitter, RetryPolicy};
pub use retry_budget::{RetryBudget, RETRY_BUDGET_WINDOW};
pub use retrying_client::{RetryNotice, RetryStats, RetryingClient, RetryingClientBuilder};
pub use rng::Rng;
pub use task_queue::{
    run_worker, Assignment, IgnoredReason, QueueEvent, QueueObserver, QueueStats, Submission,
    SubmitAck, TaskQueue, TaskQueueClient, TaskQueueService, TaskRequest, WorkerExit,
    WorkerSummary, DEFAULT_LEASE, TASK_QUEUE_SERVICE, WORKER_RETRIES,
};
pub use watch::Watcher;
