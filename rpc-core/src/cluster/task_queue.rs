//! A lease-based task queue served over RPC: master/worker in pull mode (SEEDS §4).
//!
//! The master owns the queue and is the single source of truth. Workers are stateless: they
//! ask for a task (`RequestTask`), process it, submit the result (`SubmitTaskResult`), repeat.
//! Each task is idle, in progress under a *lease* (a worker id, a lease id and a start time),
//! or completed:
//!
//! ```text
//!          RequestTask                 SubmitTaskResult (lease still valid)
//!   Idle ───────────────► InProgress ───────────────────────────────────► Completed
//!     ▲                      │
//!     └──── lease expired ───┘   (the task goes back to the queue; a later submission
//!                                 under the old lease is acknowledged and ignored)
//! ```
//!
//! A slow or dead worker therefore never loses a task, and no task is counted twice: a
//! submission is accepted only under the task's current, unexpired lease. Late, stale,
//! duplicate and unknown submissions are acknowledged with the reason they were ignored.
//! Expired leases are found whenever a worker requests a task or submits a result, so no
//! scanner thread is needed. After the last task, `RequestTask` answers
//! [`Assignment::NoMoreTasks`] and [`run_worker`] returns; it also returns when the master is
//! gone. Execution is at least once (a re-queued task may also finish on its first worker);
//! completion is exactly once.

use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use rpc_transport::clock::deadline_after;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::error::RpcError;
use crate::service::{MethodTable, Service};

/// How long a worker may hold a task before it goes back to the queue: 3 s, as in the tutorial.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(3);

/// The service name the queue is registered under by default (`Master.RequestTask`).
pub const TASK_QUEUE_SERVICE: &str = "Master";

/// Longest a worker is told to wait before asking again while every task is leased.
const MAX_RETRY_AFTER: Duration = Duration::from_millis(100);

/// The argument of `RequestTask`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskRequest {
    /// Who asks; recorded in the lease.
    pub worker_id: String,
}

/// The reply of `RequestTask`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Assignment<T> {
    /// Work on this task and submit its result under `lease_id` before the lease expires.
    Task {
        /// The task's index in the queue.
        task_id: u64,
        /// The lease this assignment grants; a submission must quote it.
        lease_id: u64,
        /// How long the lease lasts, in milliseconds.
        lease_ms: u64,
        /// The task itself.
        payload: T,
    },
    /// Every remaining task is leased to someone; ask again after this many milliseconds.
    Wait {
        /// Suggested pause before the next request.
        retry_after_ms: u64,
    },
    /// Every task is completed: the worker may exit.
    NoMoreTasks,
}

/// The argument of `SubmitTaskResult`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Submission<R> {
    /// Who submits.
    pub worker_id: String,
    /// The task's index, from the assignment.
    pub task_id: u64,
    /// The lease, from the assignment.
    pub lease_id: u64,
    /// The task's result.
    pub result: R,
}

/// The reply of `SubmitTaskResult`: every submission is acknowledged, accepted or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SubmitAck {
    /// The result is recorded; the task is completed.
    Accepted,
    /// The result was ignored, for this reason.
    Ignored(IgnoredReason),
}

/// Why a submission was acknowledged but ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IgnoredReason {
    /// The submitter's lease had expired; the task went back to the queue.
    Late,
    /// The task was re-queued or leased again since this lease was granted.
    Stale,
    /// The task was already completed.
    Duplicate,
    /// No task has that id.
    UnknownTask,
}

/// Counters of a queue's life, for monitoring and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Tasks in the queue.
    pub tasks: usize,
    /// Tasks completed (each counted once).
    pub completed: usize,
    /// Leases granted.
    pub leases_granted: u64,
    /// Leases that expired, putting their task back in the queue.
    pub requeued: u64,
    /// Submissions accepted (always equal to `completed`).
    pub accepted: u64,
    /// Submissions ignored because their lease had expired.
    pub late: u64,
    /// Submissions ignored because the task had been re-queued or leased again.
    pub stale: u64,
    /// Submissions ignored because the task was already completed.
    pub duplicate: u64,
    /// Submissions ignored because the task id was unknown.
    pub unknown: u64,
}

/// Something that happened to the queue, for an observer (the demo prints these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueEvent {
    /// `task_id` was leased to `worker_id`.
    Leased {
        /// The task.
        task_id: u64,
        /// The worker.
        worker_id: String,
    },
    /// The lease of `task_id` held by `worker_id` expired; the task is idle again.
    Requeued {
        /// The task.
        task_id: u64,
        /// The worker whose lease expired.
        worker_id: String,
    },
    /// `worker_id` completed `task_id`.
    Completed {
        /// The task.
        task_id: u64,
        /// The worker.
        worker_id: String,
    },
    /// A submission by `worker_id` for `task_id` was acknowledged and ignored.
    Ignored {
        /// The task.
        task_id: u64,
        /// The worker.
        worker_id: String,
        /// Why.
        reason: IgnoredReason,
    },
}

/// A function told of every [`QueueEvent`]. It runs with the queue locked, so it must be
/// quick and must not call the queue itself.
pub type QueueObserver = Box<dyn Fn(&QueueEvent) + Send + Sync>;

/// The master's task queue; clone it to share (it is a handle).
///
/// `T` is a task, `R` a result. Register [`TaskQueue::service`] on a server to let workers
/// reach it; read the results with [`TaskQueue::results`] once [`TaskQueue::wait_done`]
/// returns true.
pub struct TaskQueue<T, R> {
    shared: Arc<Shared<T, R>>,
}

struct Shared<T, R> {
    state: Mutex<State<T, R>>,
    all_done: Condvar,
    lease: Duration,
    observer: Option<QueueObserver>,
}

struct State<T, R> {
    tasks: Vec<Task<T, R>>,
    idle: VecDeque<usize>,
    next_lease_id: u64,
    stats: QueueStats,
}

struct Task<T, R> {
    payload: T,
    status: Status<R>,
}

enum Status<R> {
    Idle,
    InProgress {
        worker_id: String,
        lease_id: u64,
        since: Instant,
    },
    Completed {
        result: R,
    },
}

impl<T, R> TaskQueue<T, R>
where
    T: Clone,
    R: Clone,
{
    /// A queue of `tasks`, each initially idle, with leases of [`DEFAULT_LEASE`].
    pub fn new(tasks: Vec<T>) -> Self {
        TaskQueue::with_lease(tasks, DEFAULT_LEASE, None)
    }

    /// A queue with leases of `lease`, telling `observer` (if any) of every event.
    pub fn with_lease(tasks: Vec<T>, lease: Duration, observer: Option<QueueObserver>) -> Self {
        let count = tasks.len();
        let state = State {
            tasks: tasks
                .into_iter()
                .map(|payload| Task {
                    payload,
                    status: Status::Idle,
                })
                .collect(),
            idle: (0..count).collect(),
            next_lease_id: 1,
            stats: QueueStats {
                tasks: count,
                ..QueueStats::default()
            },
        };
        TaskQueue {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                all_done: Condvar::new(),
                lease,
                observer,
            }),
        }
    }

    /// `RequestTask`: leases the next idle task to `worker_id`.
    pub fn request_task(&self, worker_id: &str) -> Assignment<T> {
        let now = Instant::now();
        let mut state = self.lock();
        self.requeue_expired(&mut state, now);
        let Some(index) = state.idle.pop_front() else {
            if state.stats.completed == state.stats.tasks {
                return Assignment::NoMoreTasks;
            }
            let retry_after =
                (self.shared.lease / 4).clamp(Duration::from_millis(1), MAX_RETRY_AFTER);
            return Assignment::Wait {
                retry_after_ms: retry_after.as_millis() as u64,
            };
        };
        let lease_id = state.next_lease_id;
        state.next_lease_id += 1;
        state.stats.leases_granted += 1;
        let task = &mut state.tasks[index];
        task.status = Status::InProgress {
            worker_id: worker_id.to_owned(),
            lease_id,
            since: now,
        };
        let payload = task.payload.clone();
        self.tell(&QueueEvent::Leased {
            task_id: index as u64,
            worker_id: worker_id.to_owned(),
        });
        Assignment::Task {
            task_id: index as u64,
            lease_id,
            lease_ms: self.shared.lease.as_millis() as u64,
            payload,
        }
    }

    /// `SubmitTaskResult`: records `submission` if its lease is the task's current, unexpired
    /// one; otherwise acknowledges and ignores it.
    pub fn submit(&self, submission: Submission<R>) -> SubmitAck {
        let now = Instant::now();
        let mut state = self.lock();
        let lease = self.shared.lease;
        let task_id = submission.task_id;
        let verdict = match usize::try_from(task_id)
            .ok()
            .filter(|&index| index < state.tasks.len())
        {
            None => Err(IgnoredReason::UnknownTask),
            Some(index) => match &state.tasks[index].status {
                Status::Completed { .. } => Err(IgnoredReason::Duplicate),
                Status::InProgress {
                    lease_id, since, ..
                } if *lease_id == submission.lease_id => {
                    if now.duration_since(*since) > lease {
                        Err(IgnoredReason::Late)
                    } else {
                        Ok(index)
                    }
                }
                Status::InProgress { .. } | Status::Idle => Err(IgnoredReason::Stale),
            },
        };
        // Expired leases (the late submitter's among them) go back to the queue first.
        self.requeue_expired(&mut state, now);
        match verdict {
            Ok(index) => {
                state.tasks[index].status = Status::Completed {
                    result: submission.result,
                };
                state.stats.completed += 1;
                state.stats.accepted += 1;
                if state.stats.completed == state.stats.tasks {
                    self.shared.all_done.notify_all();
                }
                self.tell(&QueueEvent::Completed {
                    task_id,
                    worker_id: submission.worker_id,
                });
                SubmitAck::Accepted
            }
            Err(reason) => {
                let counter = match reason {
                    IgnoredReason::Late => &mut state.stats.late,
                    IgnoredReason::Stale => &mut state.stats.stale,
                    IgnoredReason::Duplicate => &mut state.stats.duplicate,
                    IgnoredReason::UnknownTask => &mut state.stats.unknown,
                };
                *counter += 1;
                self.tell(&QueueEvent::Ignored {
                    task_id,
                    worker_id: submission.worker_id,
                    reason,
                });
                SubmitAck::Ignored(reason)
            }
        }
    }

    /// The queue's counters now.
    pub fn stats(&self) -> QueueStats {
        self.lock().stats
    }

    /// True once every task is completed.
    pub fn is_done(&self) -> bool {
        let stats = self.stats();
        stats.completed == stats.tasks
    }

    /// Waits until every task is completed or `timeout` passes; true if all are completed.
    /// `Duration::MAX` waits with no limit.
    pub fn wait_done(&self, timeout: Duration) -> bool {
        let deadline = deadline_after(Instant::now(), timeout);
        let mut state = self.lock();
        while state.stats.completed < state.stats.tasks {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            // Leases expire even when no worker calls: look for them at least this often.
            let wait = left.min(self.shared.lease);
            state = self
                .shared
                .all_done
                .wait_timeout(state, wait)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
            self.requeue_expired(&mut state, Instant::now());
        }
        true
    }

    /// Every task's result, in task order, once all are completed; `None` before.
    pub fn results(&self) -> Option<Vec<R>> {
        let state = self.lock();
        state
            .tasks
            .iter()
            .map(|task| match &task.status {
                Status::Completed { result } => Some(result.clone()),
                _ => None,
            })
            .collect()
    }

    /// The queue as a service for [`crate::Server::register`], under the name
    /// [`TASK_QUEUE_SERVICE`] (`Master.RequestTask`, `Master.SubmitTaskResult`).
    pub fn service(&self) -> TaskQueueService<T, R> {
        TaskQueueService {
            queue: self.clone(),
        }
    }

    fn requeue_expired(&self, state: &mut State<T, R>, now: Instant) {
        let lease = self.shared.lease;
        for index in 0..state.tasks.len() {
            let Status::InProgress {
                worker_id, since, ..
            } = &state.tasks[index].status
            else {
                continue;
            };
            if now.duration_since(*since) <= lease {
                continue;
            }
            let worker_id = worker_id.clone();
            state.tasks[index].status = Status::Idle;
            state.idle.push_back(index);
            state.stats.requeued += 1;
            self.tell(&QueueEvent::Requeued {
                task_id: index as u64,
                worker_id,
            });
        }
    }

    fn tell(&self, event: &QueueEvent) {
        if let Some(observer) = &self.shared.observer {
            observer(event);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T, R>> {
        // Every update leaves the state consistent before any call that could panic.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<T, R> Clone for TaskQueue<T, R> {
    fn clone(&self) -> Self {
        TaskQueue {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T, R> fmt::Debug for TaskQueue<T, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskQueue")
            .field("lease", &self.shared.lease)
            .finish_non_exhaustive()
    }
}

/// A [`TaskQueue`] as a netrpc service: `RequestTask` and `SubmitTaskResult`.
pub struct TaskQueueService<T, R> {
    queue: TaskQueue<T, R>,
}

impl<T, R> Service for TaskQueueService<T, R>
where
    T: Serialize + DeserializeOwned + Clone + Send + 'static,
    R: Serialize + DeserializeOwned + Clone + Send + 'static,
{
    const NAME: &'static str = TASK_QUEUE_SERVICE;

    fn into_method_table(self) -> MethodTable {
        let mut table = MethodTable::new();
        let queue = self.queue.clone();
        table.add("RequestTask", move |request: TaskRequest| {
            Ok(queue.request_task(&request.worker_id))
        });
        let queue = self.queue;
        table.add("SubmitTaskResult", move |submission: Submission<R>| {
            Ok(queue.submit(submission))
        });
        table
    }
}

impl<T, R> fmt::Debug for TaskQueueService<T, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskQueueService").finish_non_exhaustive()
    }
}

/// A worker's typed handle on a remote [`TaskQueue`].
pub struct TaskQueueClient<T, R> {
    client: Client,
    request_task: String,
    submit_task_result: String,
    types: PhantomData<fn(R) -> T>,
}

impl<T, R> TaskQueueClient<T, R>
where
    T: DeserializeOwned,
    R: Serialize,
{
    /// A handle on the queue served under [`TASK_QUEUE_SERVICE`] at the other end of `client`.
    pub fn new(client: Client) -> Self {
        TaskQueueClient::with_service_name(client, TASK_QUEUE_SERVICE)
    }

    /// A handle on a queue registered under `service` (see `Server::register_name`).
    pub fn with_service_name(client: Client, service: &str) -> Self {
        TaskQueueClient {
            client,
            request_task: format!("{service}.RequestTask"),
            submit_task_result: format!("{service}.SubmitTaskResult"),
            types: PhantomData,
        }
    }

    /// `RequestTask` for `worker_id`.
    ///
    /// # Errors
    ///
    /// Any [`RpcError`] of the call.
    pub fn request_task(&self, worker_id: &str) -> Result<Assignment<T>, RpcError> {
        let request = TaskRequest {
            worker_id: worker_id.to_owned(),
        };
        self.client.call(&self.request_task, &request)
    }

    /// `SubmitTaskResult`.
    ///
    /// # Errors
    ///
    /// Any [`RpcError`] of the call.
    pub fn submit(&self, submission: &Submission<R>) -> Result<SubmitAck, RpcError> {
        self.client.call(&self.submit_task_result, submission)
    }

    /// The underlying connection.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

impl<T, R> fmt::Debug for TaskQueueClient<T, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskQueueClient")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

/// Why [`run_worker`] returned, and what the worker did.
#[derive(Debug)]
pub struct WorkerSummary {
    /// Results the master accepted.
    pub accepted: u64,
    /// Results the master acknowledged and ignored (late, stale, duplicate).
    pub ignored: u64,
    /// How the loop ended.
    pub exit: WorkerExit,
}

/// How a worker's loop ended.
#[derive(Debug)]
pub enum WorkerExit {
    /// The master said there is no more work.
    NoMoreTasks,
    /// The master could not be reached: it went away, or a call failed other than
    /// transiently (a timeout or `Throttled` is first tried [`WORKER_RETRIES`] times).
    MasterGone(RpcError),
}

/// The stateless worker loop: request a task, `process` it, submit the result, repeat, until
/// the master says there is no more work or cannot be reached.
///
/// While every remaining task is leased to others, it waits as the master suggests (at most
/// a second) and asks again. A call that times out (a lost message) or is throttled is tried
/// again after a short backoff, up to [`WORKER_RETRIES`] times in all, so a lossy network does
/// not end a worker; any other failure does, as [`WorkerExit::MasterGone`].
pub fn run_worker<T, R>(
    queue: &TaskQueueClient<T, R>,
    worker_id: &str,
    mut process: impl FnMut(u64, T) -> R,
) -> WorkerSummary
where
    T: DeserializeOwned,
    R: Serialize,
{
    let mut summary = WorkerSummary {
        accepted: 0,
        ignored: 0,
        exit: WorkerExit::NoMoreTasks,
    };
    loop {
        let assignment = match with_transient_retries(|| queue.request_task(worker_id)) {
            Ok(assignment) => assignment,
            Err(err) => {
                summary.exit = WorkerExit::MasterGone(err);
                return summary;
            }
        };
        let (task_id, lease_id, payload) = match assignment {
            Assignment::Task {
                task_id,
                lease_id,
                payload,
                ..
            } => (task_id, lease_id, payload),
            Assignment::Wait { retry_after_ms } => {
                // The master's hint, capped: a confused master cannot park a worker for ever.
                thread::sleep(Duration::from_millis(retry_after_ms).min(MAX_WORKER_WAIT));
                continue;
            }
            Assignment::NoMoreTasks => return summary,
        };
        let submission = Submission {
            worker_id: worker_id.to_owned(),
            task_id,
            lease_id,
            result: process(task_id, payload),
        };
        // A resubmission is safe: the master acknowledges and ignores duplicates.
        match with_transient_retries(|| queue.submit(&submission)) {
            Ok(SubmitAck::Accepted) => summary.accepted += 1,
            Ok(SubmitAck::Ignored(_)) => summary.ignored += 1,
            Err(err) => {
                summary.exit = WorkerExit::MasterGone(err);
                return summary;
            }
        }
    }
}

/// Runs `call`, again after a short backoff if it fails with a transient error (`Timeout`:
/// a lost request or reply; `Throttled`: a busy master), at most [`WORKER_RETRIES`] times in
/// all. Any other error (the connection lost or shut down, the master going away) means the
/// master is gone and is returned at once. Retrying is safe for both of the worker's calls: a
/// task requested twice only leases one that expires, and a result submitted twice is
/// acknowledged and ignored.
fn with_transient_retries<T>(mut call: impl FnMut() -> Result<T, RpcError>) -> Result<T, RpcError> {
    let mut backoff = WORKER_RETRY_BACKOFF;
    let mut attempt = 1;
    loop {
        match call() {
            Err(RpcError::Timeout { .. } | RpcError::Throttled) if attempt < WORKER_RETRIES => {
                thread::sleep(backoff);
                backoff *= 2;
                attempt += 1;
            }
            outcome => return outcome,
        }
    }
}

/// How many times in all `run_worker` tries a call that fails with a transient error.
pub const WORKER_RETRIES: u32 = 4;

/// The first pause before `run_worker` retries a transient failure; it doubles each time.
const WORKER_RETRY_BACKOFF: Duration = Duration::from_millis(20);

/// The longest a worker waits when the master says "wait".
const MAX_WORKER_WAIT: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_retries_transient_failures_and_gives_up_on_the_rest() {
        let mut calls = 0;
        let outcome = with_transient_retries(|| {
            calls += 1;
            match calls {
                1 => Err(RpcError::Timeout {
                    after: Duration::ZERO,
                }),
                2 => Err(RpcError::Throttled),
                _ => Ok(calls),
            }
        });
        assert_eq!(outcome.unwrap(), 3);
        let mut calls = 0;
        let gone = with_transient_retries(|| -> Result<(), RpcError> {
            calls += 1;
            Err(RpcError::Shutdown)
        });
        assert!(matches!(gone, Err(RpcError::Shutdown)));
        assert_eq!(calls, 1, "a lost master is not retried");
        let mut calls = 0;
        let lossy = with_transient_retries(|| -> Result<(), RpcError> {
            calls += 1;
            Err(RpcError::Throttled)
        });
        assert!(matches!(lossy, Err(RpcError::Throttled)));
        assert_eq!(calls, WORKER_RETRIES);
    }
}
