//! Multicast with acknowledgements: one call sent to many hosts at once, one answer per host
//! (SEEDS §2).
//!
//! Each host's reply is its acknowledgement; each failure is a typed [`RpcError`]. All hosts
//! are called concurrently and share one overall deadline, so a dead or slow host costs at most
//! that deadline and never delays the others' results. Options: a fail limit (stop waiting once
//! that many hosts have failed, like brpc's `ParallelChannel`), connections kept and reused
//! between multicasts, and a streaming form that yields each answer as it arrives.
//!
//! ```text
//!   Multicast::call("Node.Ping", &args)
//!      ├── host A ──► reply ─────────► Answered(ack)
//!      ├── host B ──► refused ───────► Failed(Unreachable)
//!      └── host C ──► (no answer) ───► Failed(Timeout) at the deadline
//! ```
//!
//! Each host being called uses one short-lived thread (it dials if needed, then makes a
//! blocking call bounded by the remaining deadline), so a multicast to N hosts starts N
//! threads; that suits the tens of hosts of a cluster, not thousands.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use rpc_codec::CodecKind;
use rpc_transport::clock::deadline_after;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::client::Client;
use crate::client_builder::ClientBuilder;
use crate::error::RpcError;

/// Default overall deadline of a multicast: 5 seconds.
pub const DEFAULT_MULTICAST_DEADLINE: Duration = Duration::from_secs(5);

/// Sends one call to many hosts concurrently and gathers one answer per host.
///
/// Connections are dialed on first use and kept for later multicasts; a host whose connection
/// died is dialed again next time. Cheap to share: `Send + Sync`, and every method takes
/// `&self`.
///
/// ```no_run
/// use rpc_core::cluster::Multicast;
///
/// let group = Multicast::new(["127.0.0.1:9001", "127.0.0.1:9002"]).fail_limit(1);
/// for answer in group.call::<_, String>("Node.Store", &"hello".to_owned()) {
///     println!("{}: {:?}", answer.host, answer.outcome);
/// }
/// ```
pub struct Multicast {
    hosts: Vec<String>,
    deadline: Duration,
    fail_limit: Option<usize>,
    /// What every host's client is dialed with (its connect timeout is cut to the deadline).
    client: ClientBuilder,
    /// Connections kept between multicasts, by host; threads add the ones they dial.
    clients: Arc<Mutex<HashMap<String, Client>>>,
}

/// One host's answer to a multicast.
#[derive(Debug)]
pub struct HostAnswer<R> {
    /// The host, as given to [`Multicast::new`].
    pub host: String,
    /// What happened.
    pub outcome: Outcome<R>,
    /// Time from the start of the multicast to this answer.
    pub elapsed: Duration,
}

/// What one host of a multicast did.
#[derive(Debug)]
pub enum Outcome<R> {
    /// The host replied: its acknowledgement.
    Answered(R),
    /// The call failed: [`RpcError::Unreachable`] if the host could not be dialed,
    /// [`RpcError::Timeout`] if it did not answer within the deadline, the method's own error,
    /// or any other [`RpcError`].
    Failed(RpcError),
    /// The multicast stopped waiting before this host answered, because the fail limit was
    /// reached. The call may still run on the host.
    Abandoned,
}

impl<R> Outcome<R> {
    /// The acknowledgement, if the host answered.
    pub fn ack(&self) -> Option<&R> {
        match self {
            Outcome::Answered(ack) => Some(ack),
            _ => None,
        }
    }

    /// The error, if the call failed.
    pub fn error(&self) -> Option<&RpcError> {
        match self {
            Outcome::Failed(err) => Some(err),
            _ => None,
        }
    }
}

impl Multicast {
    /// A multicast group of `hosts` (`"host:port"`), with a deadline of
    /// [`DEFAULT_MULTICAST_DEADLINE`], no fail limit and the postcard codec.
    pub fn new<I>(hosts: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        Multicast {
            hosts: hosts.into_iter().map(Into::into).collect(),
            deadline: DEFAULT_MULTICAST_DEADLINE,
            fail_limit: None,
            client: ClientBuilder::default(),
            clients: Arc::default(),
        }
    }

    /// Sets the overall deadline: dialing and calling every host must finish within it.
    /// `Duration::MAX` (or any deadline too far off to represent) means no deadline.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Stops waiting once `failures` hosts have failed; the hosts that have not answered by
    /// then are reported as [`Outcome::Abandoned`], while answers that already arrived keep
    /// their outcome. `0` means no limit.
    pub fn fail_limit(mut self, failures: usize) -> Self {
        self.fail_limit = (failures > 0).then_some(failures);
        self
    }

    /// Sets the codec of the connections this group dials.
    pub fn codec(mut self, codec: CodecKind) -> Self {
        self.client = self.client.codec(codec);
        self
    }

    /// Dials every host with `client`: TLS, middleware, limits, codec, anything a
    /// [`ClientBuilder`] sets. Each dial and call still ends by the multicast's deadline,
    /// whichever of the two timeouts is shorter.
    pub fn client(mut self, client: ClientBuilder) -> Self {
        self.client = client;
        self
    }

    /// Uses `client` for `host` instead of dialing it, so a multicast shares the connection
    /// the caller already has. `host` must be one of the group's hosts to be called.
    pub fn with_client(self, host: impl Into<String>, client: Client) -> Self {
        lock(&self.clients).insert(host.into(), client);
        self
    }

    /// The group's hosts, in the order answers are reported by [`Multicast::call`].
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// Calls `method` on every host and returns one answer per host, in the order of
    /// [`Multicast::hosts`], within the deadline (plus thread scheduling).
    pub fn call<A, R>(&self, method: &str, args: &A) -> Vec<HostAnswer<R>>
    where
        A: Serialize + Clone + Send + Sync + 'static,
        R: DeserializeOwned + Send + 'static,
    {
        let mut answers: Vec<HostAnswer<R>> = self.stream(method, args).collect();
        let order: HashMap<&str, usize> = self
            .hosts
            .iter()
            .enumerate()
            .map(|(index, host)| (host.as_str(), index))
            .collect();
        answers.sort_by_key(|answer| order.get(answer.host.as_str()).copied());
        answers
    }

    /// Calls `method` on every host and yields each answer as it arrives; once the deadline
    /// passes (or the fail limit is reached) it yields the hosts still pending as
    /// [`RpcError::Timeout`] (or [`Outcome::Abandoned`]) and ends. Every host is yielded
    /// exactly once.
    pub fn stream<A, R>(&self, method: &str, args: &A) -> AckStream<R>
    where
        A: Serialize + Clone + Send + Sync + 'static,
        R: DeserializeOwned + Send + 'static,
    {
        let started = Instant::now();
        let deadline = deadline_after(started, self.deadline);
        let args = Arc::new(args.clone());
        let (answers_tx, answers) = crossbeam_channel::unbounded();
        for host in &self.hosts {
            let job = self.host_call(host, method, deadline);
            let args_for_thread = Arc::clone(&args);
            let answers_tx = answers_tx.clone();
            let answer = move |job: HostCall, args: &A| {
                let result = job.run(args);
                let _ = answers_tx.send((job.host, result, started.elapsed()));
            };
            let in_thread = answer.clone();
            let spawned = thread::Builder::new()
                .name("netrpc-multicast".into())
                .spawn(move || in_thread(job, &args_for_thread));
            if spawned.is_err() {
                // Out of threads: answer this host from here rather than not at all.
                answer(self.host_call(host, method, deadline), &args);
            }
        }
        AckStream {
            answers,
            pending: self.hosts.clone(),
            started,
            deadline,
            fail_limit: self.fail_limit,
            failures: 0,
        }
    }

    fn host_call(&self, host: &str, method: &str, deadline: Instant) -> HostCall {
        HostCall {
            host: host.to_owned(),
            clients: Arc::clone(&self.clients),
            client: self.client.clone(),
            deadline,
            method: method.to_owned(),
        }
    }
}

impl fmt::Debug for Multicast {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Multicast")
            .field("hosts", &self.hosts)
            .field("deadline", &self.deadline)
            .field("fail_limit", &self.fail_limit)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

/// The answers of one multicast, as they arrive: an iterator that yields every host once.
///
/// Dropping it early stops waiting; calls already sent still run on their hosts.
pub struct AckStream<R> {
    answers: Receiver<(String, Result<R, RpcError>, Duration)>,
    /// Hosts not yet yielded (a host may appear more than once if listed twice).
    pending: Vec<String>,
    started: Instant,
    deadline: Instant,
    fail_limit: Option<usize>,
    failures: usize,
}

impl<R> AckStream<R> {
    /// Hosts not yet answered.
    pub fn pending(&self) -> &[String] {
        &self.pending
    }

    /// The next pending host, reported as `outcome`, once the stream has stopped waiting.
    fn give_up_on_next(&mut self, outcome: impl FnOnce() -> Outcome<R>) -> Option<HostAnswer<R>> {
        let host = self.pending.pop()?;
        Some(HostAnswer {
            host,
            outcome: outcome(),
            elapsed: self.started.elapsed(),
        })
    }

    fn fail_limit_reached(&self) -> bool {
        self.fail_limit.is_some_and(|limit| self.failures >= limit)
    }
}

impl<R> Iterator for AckStream<R> {
    type Item = HostAnswer<R>;

    fn next(&mut self) -> Option<HostAnswer<R>> {
        loop {
            if self.pending.is_empty() {
                return None;
            }
            let received = if self.fail_limit_reached() {
                // Stop waiting, but an answer already here is still that host's answer: only
                // the hosts that have not answered are abandoned.
                self.answers.try_recv().ok()
            } else {
                let timeout = self.deadline.saturating_duration_since(Instant::now());
                match self.answers.recv_timeout(timeout) {
                    Ok(answer) => Some(answer),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                        let after = self.deadline - self.started;
                        return self
                            .give_up_on_next(|| Outcome::Failed(RpcError::Timeout { after }));
                    }
                }
            };
            let Some((host, result, elapsed)) = received else {
                return self.give_up_on_next(|| Outcome::Abandoned);
            };
            // An answer from a host already reported as timed out comes too late: skip it.
            let Some(at) = self.pending.iter().position(|pending| *pending == host) else {
                continue;
            };
            self.pending.swap_remove(at);
            let outcome = match result {
                Ok(ack) => Outcome::Answered(ack),
                Err(err) => {
                    self.failures += 1;
                    Outcome::Failed(err)
                }
            };
            return Some(HostAnswer {
                host,
                outcome,
                elapsed,
            });
        }
    }
}

impl<R> fmt::Debug for AckStream<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AckStream")
            .field("pending", &self.pending)
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

/// One host's part of a multicast, run on its own thread.
struct HostCall {
    host: String,
    clients: Arc<Mutex<HashMap<String, Client>>>,
    client: ClientBuilder,
    deadline: Instant,
    method: String,
}

impl HostCall {
    /// Reuses or dials the host's connection, then calls it, all before the deadline.
    fn run<A, R>(&self, args: &A) -> Result<R, RpcError>
    where
        A: Serialize,
        R: DeserializeOwned,
    {
        let client = self.client()?;
        let remaining = self.remaining()?;
        client.call_timeout(&self.method, args, remaining)
    }

    fn client(&self) -> Result<Client, RpcError> {
        if let Some(client) = lock(&self.clients).get(&self.host) {
            if !client.is_closed() {
                return Ok(client.clone());
            }
        }
        let connect = self
            .remaining()?
            .min(self.client.settings().connect_timeout);
        let client = self
            .client
            .clone()
            .connect_timeout(connect)
            .dial(self.host.as_str())?;
        lock(&self.clients).insert(self.host.clone(), client.clone());
        Ok(client)
    }

    fn remaining(&self) -> Result<Duration, RpcError> {
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(RpcError::Timeout {
                after: Duration::ZERO,
            });
        }
        Ok(remaining)
    }
}

/// Locks the connection cache; a panic elsewhere cannot leave a map half-updated.
fn lock(
    clients: &Mutex<HashMap<String, Client>>,
) -> std::sync::MutexGuard<'_, HashMap<String, Client>> {
    clients
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where a test delivers hosts' answers, as their calling threads would.
    type Answers = crossbeam_channel::Sender<(String, Result<u32, RpcError>, Duration)>;

    /// A stream over `hosts` whose answers are whatever the test sends on the returned sender.
    fn stream_of(hosts: &[&str], fail_limit: Option<usize>) -> (Answers, AckStream<u32>) {
        let (answers_tx, answers) = crossbeam_channel::unbounded();
        let started = Instant::now();
        let stream = AckStream {
            answers,
            pending: hosts.iter().map(|&host| host.to_owned()).collect(),
            started,
            deadline: deadline_after(started, Duration::from_secs(60)),
            fail_limit,
            failures: 0,
        };
        (answers_tx, stream)
    }

    fn outcome_of<'a>(answers: &'a [HostAnswer<u32>], host: &str) -> &'a Outcome<u32> {
        &answers
            .iter()
            .find(|answer| answer.host == host)
            .expect("every host is yielded")
            .outcome
    }

    #[test]
    fn reaching_the_fail_limit_abandons_only_the_hosts_that_have_not_answered() {
        let (answers_tx, stream) = stream_of(&["a", "b", "c", "d"], Some(1));
        let refused = RpcError::Throttled;
        // "a" fails first; "b" and "c" have answered too before anyone reads the stream.
        answers_tx
            .send(("a".into(), Err(refused), Duration::ZERO))
            .unwrap();
        answers_tx
            .send(("b".into(), Ok(2), Duration::ZERO))
            .unwrap();
        answers_tx
            .send(("c".into(), Ok(3), Duration::ZERO))
            .unwrap();

        let answers: Vec<HostAnswer<u32>> = stream.collect();

        assert_eq!(answers.len(), 4, "{answers:?}");
        assert!(matches!(outcome_of(&answers, "a"), Outcome::Failed(_)));
        assert_eq!(outcome_of(&answers, "b").ack(), Some(&2), "{answers:?}");
        assert_eq!(outcome_of(&answers, "c").ack(), Some(&3), "{answers:?}");
        assert!(matches!(outcome_of(&answers, "d"), Outcome::Abandoned));
    }
}
