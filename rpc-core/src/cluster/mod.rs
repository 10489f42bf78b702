//! Patterns for clusters of netrpc servers, built only on the public `Client` and `Server`:
//! the tutorials' distributed examples (SEEDS §2 to §4) as reusable pieces.
//!
//! | pattern | type | what it gives |
//! |---|---|---|
//! | multicast with acknowledgements | [`Multicast`] | one call to many hosts, one answer or typed error per host, within one deadline |
//! | master/worker, push | [`Distributor`] | tasks handed round robin to workers, a failed worker's tasks moved to live ones |
//! | master/worker, pull | [`TaskQueue`], [`run_worker`] | a lease-based queue served over RPC: every task completed exactly once despite slow or dead workers |
//! | seeded randomness | [`Rng`] | jitter and random choices that replay exactly from a seed |
//! | retries with backoff | [`RetryingClient`], [`RetryPolicy`], [`RetryBudget`] | only retryable failures retried (possibly-run ones only for idempotent methods), exponential backoff with jitter within the call's deadline, redial after a lost connection, retries capped at a share of the calls |
//! | circuit breaker | [`Breaker`], [`BreakerPolicy`] | an endpoint failing past a threshold is not called for a cooldown (calls fail fast with `CircuitOpen`), then one trial call decides whether it closes |

mod breaker;
mod distribute;
mod multicast;
mod retry;
mod retry_budget;
mod retrying_client;
mod rng;
mod task_queue;

pub use breaker::{Breaker, BreakerPolicy, BreakerState, Permit, MAX_BREAKER_WINDOW};
pub use distribute::{Distribution, Distributor, TaskResult, DEFAULT_MAX_IN_FLIGHT_PER_WORKER};
pub use multicast::{AckStream, HostAnswer, Multicast, Outcome, DEFAULT_MULTICAST_DEADLINE};
pub use retry::{Jitter, RetryPolicy};
pub use retry_budget::{RetryBudget, RETRY_BUDGET_WINDOW};
pub use retrying_client::{RetryNotice, RetryStats, RetryingClient, RetryingClientBuilder};
pub use rng::Rng;
pub use task_queue::{
    run_worker, Assignment, IgnoredReason, QueueEvent, QueueObserver, QueueStats, Submission,
    SubmitAck, TaskQueue, TaskQueueClient, TaskQueueService, TaskRequest, WorkerExit,
    WorkerSummary, DEFAULT_LEASE, TASK_QUEUE_SERVICE,
};

// Service registry and discovery (SEEDS §7).
pub mod etcd;
mod health;
mod registration;
mod registry;
mod registry_memory;
mod watch;

pub use etcd::EtcdRegistry;
pub use health::{
    ping_probe, HealthChecker, HealthCheckerBuilder, InstanceHealth, Probe, DEFAULT_HEALTHY_AFTER,
    DEFAULT_PROBE_INTERVAL, DEFAULT_PROBE_TIMEOUT, DEFAULT_UNHEALTHY_AFTER,
};
pub use registration::Registration;
pub use registry::{Instance, Lease, Registry, RegistryError, MAX_INSTANCE_FIELD_LEN};
pub use registry_memory::MemoryRegistry;
pub use watch::Watcher;
