//! Patterns for clusters of netrpc servers, built only on the public `Client` and `Server`:
//! the tutorials' distributed examples (SEEDS §2 to §4) as reusable pieces.
//!
//! | pattern | type | what it gives |
//! |---|---|---|
//! | multicast with acknowledgements | [`Multicast`] | one call to many hosts, one answer or typed error per host, within one deadline |
//! | master/worker, push | [`Distributor`] | tasks handed round robin to workers, a failed worker's tasks moved to live ones |
//! | master/worker, pull | [`TaskQueue`], [`run_worker`] | a lease-based queue served over RPC: every task completed exactly once despite slow or dead workers |
//! | seeded randomness | [`Rng`] | jitter and random choices that replay exactly from a seed |

mod distribute;
mod multicast;
mod rng;
mod task_queue;

pub use distribute::{Distribution, Distributor, TaskResult, DEFAULT_MAX_IN_FLIGHT_PER_WORKER};
pub use multicast::{AckStream, HostAnswer, Multicast, Outcome, DEFAULT_MULTICAST_DEADLINE};
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
