//! Master/worker in push mode: the master hands task `i` to worker `i mod n`, all at once, and
//! collects every result (SEEDS §3). "All at once" is bounded: each worker has at most
//! [`DEFAULT_MAX_IN_FLIGHT_PER_WORKER`] tasks in flight (a client and a server refuse more than
//! 1,000 by default); the rest wait and go to whichever worker finishes a task first.
//!
//! A worker that answers a call `Throttled` (its server, or this side's client, is at its cap
//! on calls in flight; nothing ran) is busy, not dead: the task goes back to the head of the
//! queue, and that worker's window shrinks to the calls it still holds (growing back by one
//! per window of successes), so the task is sent again once a call completes, never in a hot
//! loop. A worker holding nothing when throttled gets no task for a short pause. A task
//! still refused after one call timeout of retries ends with `Throttled`. A server at its
//! connection cap refuses the whole connection that way and closes it: that worker is
//! dialed again (no sooner than [`REDIAL_PAUSE`] after its last dial). Over TLS such a
//! server closes the socket without a word, so the dial fails and the worker is retired
//! as unreachable.
//!
//! When a worker cannot be reached or its connection fails, the tasks it held go to the next
//! live worker instead of being lost: a task ends with its result, with the method's own error
//! (which no other worker would change), or, only when every worker has failed, with the last
//! connection error. Each task's result is collected exactly once; a task whose worker failed
//! mid-call may have run there too (execution is at least once).
//!
//! ```text
//!   tasks:   t0   t1   t2   t3   t4   t5
//!   workers: w0   w1   w2   w0   w1   w2        w1 is down:
//!                  └─► w2      └─► w0          its tasks are sent to the next live worker
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select};
use rpc_codec::CodecKind;
use rpc_transport::clock::deadline_after;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::call::{done_channel, Completion, DoneSender};
use crate::client::Client;
use crate::client_builder::ClientBuilder;
use crate::error::RpcError;

/// Distributes tasks over a fixed set of workers, round robin, with failover.
#[derive(Debug, Clone)]
pub struct Distributor {
    workers: Vec<String>,
    /// What every worker's client is dialed with.
    client: ClientBuilder,
    max_in_flight_per_worker: usize,
}

/// Default cap on tasks in flight on one worker.
pub const DEFAULT_MAX_IN_FLIGHT_PER_WORKER: usize = 256;

/// The result of one task.
#[derive(Debug)]
pub struct TaskResult<R> {
    /// The worker that produced the result, or the last one tried.
    pub worker: String,
    /// The result or the error.
    pub result: Result<R, RpcError>,
    /// How many workers took the task's call (1 unless a worker failed; a call refused
    /// `Throttled` ran nowhere and does not count).
    pub attempts: u32,
}

/// What a distribution did.
#[derive(Debug)]
pub struct Distribution<R> {
    /// One result per task, in task order.
    pub results: Vec<TaskResult<R>>,
    /// Workers found dead (unreachable, or their connection failed), in the order found.
    pub dead_workers: Vec<String>,
    /// Tasks that ran elsewhere than on their round-robin worker, because it was unreachable
    /// at the start or failed while holding them.
    pub reassigned: usize,
}

/// One live worker: its address, connection and the calls it holds.
struct Worker<R> {
    addr: String,
    client: Client,
    done: DoneSender<R>,
    completions: Receiver<Completion<R>>,
    /// Task index of each call in flight, by sequence id.
    tasks: HashMap<u64, usize>,
    /// Most calls in flight now: `max_window` until a `Throttled` answer shrinks it.
    window: usize,
    /// The configured window, clamped to the client's cap on pending calls.
    max_window: usize,
    /// Calls answered since the window last changed; a window's worth grows it by one.
    answered: usize,
    /// No task is sent before this moment: the worker refused one while holding none.
    paused_until: Option<Instant>,
    /// When its connection was last dialed.
    dialed_at: Instant,
}

impl<R> Worker<R> {
    /// True if a task may be sent to this worker at `now`.
    fn has_room(&self, now: Instant) -> bool {
        self.tasks.len() < self.window && self.paused_until.is_none_or(|until| until <= now)
    }

    /// The worker refused a call `Throttled` (the call is already out of `tasks`): hold at
    /// most the calls it still has, so the next send waits for one of them to complete; if it
    /// has none, pause it instead, since no completion will come.
    fn throttled(&mut self, now: Instant) {
        self.window = self.tasks.len().max(1);
        self.answered = 0;
        if self.tasks.is_empty() {
            self.paused_until = Some(deadline_after(now, THROTTLE_PAUSE));
        }
    }

    /// The worker answered a call: a window's worth of answers grows a shrunk window by one.
    fn answered(&mut self) {
        self.paused_until = None;
        self.answered += 1;
        if self.answered >= self.window && self.window < self.max_window {
            self.window += 1;
            self.answered = 0;
        }
    }
}

impl Distributor {
    /// A distributor over `workers` (`"host:port"`), postcard, with the client's default
    /// connect and call timeouts.
    pub fn new<I>(workers: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        Distributor {
            workers: workers.into_iter().map(Into::into).collect(),
            client: ClientBuilder::default(),
            max_in_flight_per_worker: DEFAULT_MAX_IN_FLIGHT_PER_WORKER,
        }
    }

    /// Sets how many tasks one worker may hold at once (default
    /// [`DEFAULT_MAX_IN_FLIGHT_PER_WORKER`], at most [`Distributor::max_pending_calls`]). Keep it
    /// within the workers' servers' cap on calls in flight per connection: they answer the
    /// surplus `Throttled`, which is retried, but wastes a round trip.
    pub fn max_in_flight_per_worker(mut self, count: usize) -> Self {
        self.max_in_flight_per_worker = count.max(1);
        self
    }

    /// Sets the cap on pending calls of the client dialed to each worker (default
    /// [`crate::DEFAULT_MAX_PENDING_CALLS`]; see [`crate::ClientConfig::max_pending_calls`]). A
    /// worker's window never exceeds it.
    pub fn max_pending_calls(mut self, count: usize) -> Self {
        self.client = self.client.max_pending_calls(count);
        self
    }

    /// Sets the codec.
    pub fn codec(mut self, codec: CodecKind) -> Self {
        self.client = self.client.codec(codec);
        self
    }

    /// Sets the deadline of each task's call; a worker that misses it is treated as failed.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.client = self.client.call_timeout(timeout);
        self
    }

    /// Sets how long dialing a worker may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.client = self.client.connect_timeout(timeout);
        self
    }

    /// Dials every worker with `client`: TLS, middleware, limits, codec, timeouts, anything a
    /// [`ClientBuilder`] sets. Replaces the settings of the four setters above, which apply
    /// to it in turn when called after this.
    pub fn client(mut self, client: ClientBuilder) -> Self {
        self.client = client;
        self
    }

    /// Calls `method` once per task, task `i` on worker `i mod n`, all concurrently, and
    /// returns every task's result.
    pub fn run<T, R>(&self, method: &str, tasks: &[T]) -> Distribution<R>
    where
        T: Serialize,
        R: DeserializeOwned + Send + 'static,
    {
        let mut dead_workers = Vec::new();
        let mut last_error = RpcError::Unreachable {
            addr: String::new(),
            source: Arc::new(io::Error::new(io::ErrorKind::NotFound, "no workers given")),
        };
        let mut workers: Vec<Option<Worker<R>>> = self
            .workers
            .iter()
            .map(|addr| match self.dial(addr) {
                Ok(worker) => Some(worker),
                Err(err) => {
                    dead_workers.push(addr.clone());
                    last_error = err;
                    None
                }
            })
            .collect();
        let mut results: Vec<Option<TaskResult<R>>> = tasks.iter().map(|_| None).collect();
        let mut sending = Sending {
            method,
            tasks,
            attempts: vec![0u32; tasks.len()],
            waiting: VecDeque::new(),
        };
        let mut first_throttled: Vec<Option<Instant>> = vec![None; tasks.len()];
        let mut reassigned = 0;

        for (task, result) in results.iter_mut().enumerate() {
            let preferred = task % workers.len().max(1);
            if workers.get(preferred).is_some_and(Option::is_none) {
                reassigned += 1;
            }
            if sending.send(&mut workers, preferred, task).is_none() {
                *result = Some(failed(&last_error, &dead_workers, sending.attempts[task]));
            }
        }
        loop {
            let (from, completion) = match next_event(&workers, &sending.waiting) {
                Event::Completion(from, completion) => (from, completion),
                Event::PauseOver => {
                    sending.send_waiting(&mut workers, 0);
                    continue;
                }
                Event::Idle => break,
            };
            let worker = workers[from]
                .as_mut()
                .expect("completions come from live workers");
            let Some(task) = worker.tasks.remove(&completion.seq) else {
                continue;
            };
            let addr = worker.addr.clone();
            match completion.result {
                Err(RpcError::Throttled) => {
                    // Back-pressure, not failure: the call ran nowhere, so it is no attempt.
                    let now = Instant::now();
                    worker.throttled(now);
                    sending.attempts[task] -= 1;
                    let since = *first_throttled[task].get_or_insert(now);
                    let call_timeout = self.client.settings().call_timeout;
                    let left = call_timeout.saturating_sub(now.duration_since(since));
                    if !left.is_zero() {
                        sending.waiting.push_front(task);
                    } else {
                        results[task] = Some(TaskResult {
                            worker: addr.clone(),
                            result: Err(RpcError::Throttled),
                            attempts: sending.attempts[task],
                        });
                    }
                    if let Err(err) = self.redial_if_refused(worker, now, left) {
                        // Refused before, unreachable now: gone, holding no task.
                        workers[from] = None;
                        dead_workers.push(addr);
                        last_error = err;
                    }
                }
                Err(err) if is_worker_failure(&err) => {
                    // The worker is gone: retire it and move every task it held.
                    let orphans: Vec<usize> = std::iter::once(task)
                        .chain(worker.tasks.drain().map(|(_, task)| task))
                        .collect();
                    workers[from] = None;
                    dead_workers.push(addr);
                    last_error = err;
                    for orphan in orphans {
                        reassigned += 1;
                        if sending.send(&mut workers, from + 1, orphan).is_none() {
                            results[orphan] =
                                Some(failed(&last_error, &dead_workers, sending.attempts[orphan]));
                        }
                    }
                }
                result => {
                    worker.answered();
                    results[task] = Some(TaskResult {
                        worker: addr,
                        result,
                        attempts: sending.attempts[task],
                    });
                }
            }
            sending.send_waiting(&mut workers, from);
        }
        // Tasks still waiting had no live worker left to take them.
        for task in sending.waiting {
            results[task] = Some(failed(&last_error, &dead_workers, sending.attempts[task]));
        }
        Distribution {
            results: results
                .into_iter()
                .map(|result| result.expect("every task ends with a result"))
                .collect(),
            dead_workers,
            reassigned,
        }
    }

    /// Dials `worker` again if its connection was refused at its server's connection cap
    /// (closed, with every call since answered `Throttled` at once, so it would never take
    /// a task again), once the calls it held have all come back and [`REDIAL_PAUSE`] has
    /// passed since its last dial; a connection that is open is left alone. The dial holds
    /// up the whole distribution, so it waits no longer than `left` (the refused task's time
    /// left; [`REDIAL_PAUSE`] at least) or the connect timeout.
    ///
    /// # Errors
    ///
    /// The dial's: the worker is then unreachable.
    fn redial_if_refused<R>(
        &self,
        worker: &mut Worker<R>,
        now: Instant,
        left: Duration,
    ) -> Result<(), RpcError> {
        let due = now.saturating_duration_since(worker.dialed_at) >= REDIAL_PAUSE;
        if worker.client.is_closed() && worker.tasks.is_empty() && due {
            worker.dialed_at = now;
            let connect_timeout = self.client.settings().connect_timeout;
            worker.client = (self.client.clone())
                .connect_timeout(connect_timeout.min(left.max(REDIAL_PAUSE)))
                .dial(&worker.addr)?;
        }
        Ok(())
    }

    fn dial<R>(&self, addr: &str) -> Result<Worker<R>, RpcError> {
        let client = self.client.clone().dial(addr)?;
        let (done, completions) = done_channel();
        // More calls than the client may have pending would be refused `Throttled` unsent.
        let max_window = self
            .max_in_flight_per_worker
            .min(client.config().max_pending_calls)
            .max(1);
        Ok(Worker {
            addr: addr.to_owned(),
            client,
            done,
            completions,
            tasks: HashMap::new(),
            window: max_window,
            max_window,
            answered: 0,
            paused_until: None,
            dialed_at: Instant::now(),
        })
    }
}

/// What is being sent: the tasks, how often each was sent, and those waiting for room.
struct Sending<'a, T> {
    method: &'a str,
    tasks: &'a [T],
    attempts: Vec<u32>,
    /// Tasks waiting until a live worker has room, oldest first.
    waiting: VecDeque<usize>,
}

impl<T: Serialize> Sending<'_, T> {
    /// Sends `task` to the first live worker from `preferred` on (wrapping around) with room
    /// for it, or queues it if every live worker is full; `None` if every worker is dead.
    fn send<R>(
        &mut self,
        workers: &mut [Option<Worker<R>>],
        preferred: usize,
        task: usize,
    ) -> Option<()>
    where
        R: DeserializeOwned + Send + 'static,
    {
        let count = workers.len();
        let mut live = (0..count)
            .map(|offset| (preferred + offset) % count)
            .filter(|&index| workers[index].is_some())
            .peekable();
        live.peek()?;
        let now = Instant::now();
        let Some(index) =
            live.find(|&index| workers[index].as_ref().is_some_and(|w| w.has_room(now)))
        else {
            self.waiting.push_back(task);
            return Some(());
        };
        let worker = workers[index].as_mut()?;
        let seq = worker
            .client
            .go_with(self.method, &self.tasks[task], &worker.done);
        worker.tasks.insert(seq, task);
        self.attempts[task] += 1;
        Some(())
    }

    /// Sends waiting tasks while a live worker has room, starting with worker `from` (the one
    /// that just finished a task).
    fn send_waiting<R>(&mut self, workers: &mut [Option<Worker<R>>], from: usize)
    where
        R: DeserializeOwned + Send + 'static,
    {
        let has_room = |workers: &[Option<Worker<R>>]| {
            let now = Instant::now();
            workers.iter().flatten().any(|worker| worker.has_room(now))
        };
        while has_room(workers) {
            let Some(task) = self.waiting.pop_front() else {
                return;
            };
            // A worker has room, so this sends rather than queueing again.
            let _ = self.send(workers, from, task);
        }
    }
}

/// What the distribution loop waits for.
enum Event<R> {
    /// A call completed on the worker at this index.
    Completion(usize, Completion<R>),
    /// A throttled worker's pause is over: waiting tasks may go to it.
    PauseOver,
    /// No call is in flight and no pause will end with tasks waiting: nothing more to do.
    Idle,
}

/// Waits for the next completion from any worker with calls in flight, or, while tasks are
/// `waiting`, for the end of the first pause of a throttled worker (at once if a pause has
/// already ended and left that worker room). Every call has a deadline and every pause an
/// end, so this never waits forever.
fn next_event<R>(workers: &[Option<Worker<R>>], waiting: &VecDeque<usize>) -> Event<R> {
    let live = || {
        workers
            .iter()
            .enumerate()
            .filter_map(|(index, worker)| worker.as_ref().map(|worker| (index, worker)))
    };
    let busy: Vec<(usize, &Worker<R>)> = live().filter(|(_, w)| !w.tasks.is_empty()).collect();
    let now = Instant::now();
    // The loop sends waiting tasks whenever a worker has room, so room with tasks waiting
    // means a pause ended after the loop last looked (it may have been preempted past the
    // end). Send them now: waiting for a completion or a later pause could wait for none,
    // and end the distribution with those tasks failed.
    if !waiting.is_empty() && live().any(|(_, worker)| worker.has_room(now)) {
        return Event::PauseOver;
    }
    let pause_end = live()
        .filter_map(|(_, worker)| worker.paused_until.filter(|&until| until > now))
        .min()
        .filter(|_| !waiting.is_empty());
    if busy.is_empty() {
        let Some(pause_end) = pause_end else {
            return Event::Idle;
        };
        thread::sleep(pause_end.saturating_duration_since(now));
        return Event::PauseOver;
    }
    let mut select = Select::new();
    for (_, worker) in &busy {
        select.recv(&worker.completions);
    }
    let operation = match pause_end {
        Some(pause_end) => match select.select_deadline(pause_end) {
            Ok(operation) => operation,
            Err(_) => return Event::PauseOver,
        },
        None => select.select(),
    };
    let (index, worker) = busy[operation.index()];
    let completion = operation
        .recv(&worker.completions)
        .expect("the selected channel is ready and the worker entry keeps its sender alive");
    Event::Completion(index, completion)
}

/// True if `err` means the worker, not the task, failed: the task should go elsewhere. Not
/// `Throttled`: that worker is alive, only busy.
fn is_worker_failure(err: &RpcError) -> bool {
    !matches!(err, RpcError::Throttled) && (err.is_retryable() || matches!(err, RpcError::Shutdown))
}

/// The result of a task no live worker was left to take.
fn failed<R>(err: &RpcError, dead_workers: &[String], attempts: u32) -> TaskResult<R> {
    TaskResult {
        worker: dead_workers.last().cloned().unwrap_or_default(),
        result: Err(err.clone()),
        attempts,
    }
}

/// How long a worker that answered `Throttled` while holding no other task gets no task.
const THROTTLE_PAUSE: Duration = Duration::from_millis(10);

/// The shortest time between two dials of a worker whose connection its server refused at
/// its connection cap: ten a second at most, while the server stays full.
const REDIAL_PAUSE: Duration = Duration::from_millis(100);

impl<R> fmt::Debug for Worker<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("addr", &self.addr)
            .field("in_flight", &self.tasks.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimNetwork;

    #[test]
    fn a_pause_that_ended_with_tasks_waiting_leads_to_sending_them_never_to_idle() {
        // The loop checked for room, then was preempted past the end of the only live
        // worker's pause: that worker holds nothing and its pause is over, with a task waiting.
        let network = SimNetwork::new(1).unwrap();
        let (done, completions) = done_channel::<u64>();
        let worker = Worker {
            addr: "worker".to_owned(),
            client: network.client("master"),
            done,
            completions,
            tasks: HashMap::new(),
            window: 1,
            max_window: 1,
            answered: 0,
            paused_until: Some(Instant::now()),
            dialed_at: Instant::now(),
        };
        let waiting = VecDeque::from([0]);

        let event = next_event(&[Some(worker)], &waiting);
        assert!(
            matches!(event, Event::PauseOver),
            "expected PauseOver, got {}",
            match event {
                Event::Completion(..) => "Completion",
                Event::PauseOver => "PauseOver",
                Event::Idle => "Idle",
            }
        );
    }
}
