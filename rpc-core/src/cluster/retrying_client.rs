//! `RetryingClient`: a [`Client`] whose calls are retried by a [`RetryPolicy`], under a
//! [`RetryBudget`] and optionally behind a [`Breaker`] (SEEDS §6). What to retry and how long
//! to wait is the policy's job (`retry.rs`); this file makes the attempts: it dials, calls,
//! sleeps, dials again after a lost connection, and keeps the counts.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use rpc_transport::clock::deadline_after;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::client::Client;
use crate::client_builder::{ClientBuilder, ClientConfig};
use crate::cluster::{Breaker, BreakerState, RetryBudget, RetryPolicy, Rng};
use crate::error::RpcError;

/// A [`Client`] that retries failed calls by a [`RetryPolicy`] and dials again when its
/// connection ends. Cheap to clone; clones share the connection, budget, breaker and stats.
///
/// `Send + Sync`. The connection is dialed on the first call, and again before the next
/// attempt after the connection ended (`ConnectionLost`, the server `ShuttingDown`, or found
/// closed). One caller dials at a time; callers arriving meanwhile wait for that dial, each
/// no longer than its own deadline. Every call deposits into the client's [`RetryBudget`] and every retry withdraws
/// from it, so retries stay a bounded share of the calls whatever the callers do. With a
/// [`Breaker`], each attempt asks it first and reports to it; an open breaker ends the call
/// with [`RpcError::CircuitOpen`] without dialing, and a failure that opens it ends the call
/// at once with that failure (a retry would only fail fast). A caller whose deadline passes
/// before it dials (waiting for another caller's dial, say) ends with [`RpcError::Timeout`],
/// which tells the breaker nothing: this caller never reached the endpoint.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use rpc_core::cluster::{RetryingClient, RetryPolicy};
///
/// let client = RetryingClient::builder("127.0.0.1:1234")
///     .policy(RetryPolicy::default().max_attempts(5).idempotent(true))
///     .build();
/// let product: i64 = client.call("Arith.Multiply", &(7i64, 8i64))?;
/// println!("{product} after {} retries", client.stats().retries);
/// # Ok::<(), rpc_core::RpcError>(())
/// ```
#[derive(Clone)]
pub struct RetryingClient {
    inner: Arc<Inner>,
}

struct Inner {
    addr: String,
    client_config: ClientConfig,
    policy: RetryPolicy,
    budget: RetryBudget,
    breaker: Option<Arc<Breaker>>,
    /// The current connection; `None` until dialed or after it ended. One caller dials at a
    /// time, and callers arriving meanwhile wait for its dial, each no longer than its own
    /// deadline.
    connection: Mutex<Slot>,
    /// Signalled when a dial ends, well or not.
    dial_ended: Condvar,
    /// Jitter source; held only to draw one number.
    rng: Mutex<Rng>,
    on_retry: Option<RetryHook>,
    closed: AtomicBool,
    counters: Counters,
}

type RetryHook = Box<dyn Fn(&RetryNotice<'_>) + Send + Sync>;

/// What a [`RetryingClient`] tells its `on_retry` hook before sleeping for a retry.
#[derive(Debug)]
pub struct RetryNotice<'a> {
    /// The `Service.Method` called.
    pub method: &'a str,
    /// The attempt that failed (1 for the first).
    pub attempt: u32,
    /// Why it failed.
    pub error: &'a RpcError,
    /// How long the client sleeps before the next attempt.
    pub backoff: Duration,
}

/// Counts kept by a [`RetryingClient`] since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryStats {
    /// Calls made (each with one or more attempts).
    pub calls: u64,
    /// Attempts made: first tries and retries, not counting those an open breaker refused.
    pub attempts: u64,
    /// Retries made (attempts after the first).
    pub retries: u64,
    /// Retries the policy allowed but the budget refused; the call then returned its error.
    pub budget_exhausted: u64,
    /// Connections dialed, successfully or not.
    pub dials: u64,
    /// Time slept between attempts, all calls together.
    pub backoff_total: Duration,
}

#[derive(Default)]
struct Counters {
    calls: AtomicU64,
    attempts: AtomicU64,
    retries: AtomicU64,
    budget_exhausted: AtomicU64,
    dials: AtomicU64,
    backoff_nanos: AtomicU64,
}

impl RetryingClient {
    /// A retrying client of `addr` with the default policy, budget and client settings.
    pub fn new(addr: impl Into<String>) -> Self {
        RetryingClient::builder(addr).build()
    }

    /// A builder for a retrying client of `addr` (`"host:port"`).
    pub fn builder(addr: impl Into<String>) -> RetryingClientBuilder {
        RetryingClientBuilder {
            addr: addr.into(),
            client_config: ClientConfig::default(),
            connection: None,
            policy: RetryPolicy::default(),
            budget: RetryBudget::default(),
            breaker: None,
            rng: Rng::from_entropy(),
            on_retry: None,
        }
    }

    /// A builder around an existing connection: it is used first, and redials go to its
    /// server's address with its settings.
    pub fn wrap(client: Client) -> RetryingClientBuilder {
        let mut builder = RetryingClient::builder(client.peer_addr().to_string());
        builder.client_config = client.config().clone();
        builder.connection = Some(client);
        builder
    }

    /// Calls `method` under the client's policy; all attempts and waits together end by the
    /// client's call timeout ([`ClientConfig::call_timeout`]).
    ///
    /// # Errors
    ///
    /// The last attempt's [`RpcError`]; [`RpcError::CircuitOpen`] if the breaker refused.
    pub fn call<A, R>(&self, method: &str, args: &A) -> Result<R, RpcError>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let timeout = self.inner.client_config.call_timeout;
        self.call_with(&self.inner.policy, method, args, timeout)
    }

    /// Like [`RetryingClient::call`], with an overall deadline of `timeout` for all attempts
    /// and waits: no wait is started that would end past it.
    ///
    /// # Errors
    ///
    /// The last attempt's [`RpcError`]; [`RpcError::Timeout`] if the deadline passed.
    pub fn call_timeout<A, R>(
        &self,
        method: &str,
        args: &A,
        timeout: Duration,
    ) -> Result<R, RpcError>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        self.call_with(&self.inner.policy, method, args, timeout)
    }

    /// Like [`RetryingClient::call_timeout`], with `policy` instead of the client's for this
    /// call (the budget and breaker stay the client's).
    ///
    /// # Errors
    ///
    /// The last attempt's [`RpcError`]; [`RpcError::Timeout`] if the deadline passed.
    pub fn call_with<A, R>(
        &self,
        policy: &RetryPolicy,
        method: &str,
        args: &A,
        timeout: Duration,
    ) -> Result<R, RpcError>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let inner = &*self.inner;
        let deadline = deadline_after(Instant::now(), timeout);
        inner.counters.calls.fetch_add(1, Ordering::Relaxed);
        inner.budget.record_call();
        let mut previous_backoff = Duration::ZERO;
        let mut attempt = 1;
        loop {
            let err = match self.attempt(policy, method, args, deadline, timeout) {
                Ok(reply) => return Ok(reply),
                Err(err) => err,
            };
            let stale = matches!(err, RpcError::Shutdown) && !inner.closed.load(Ordering::Relaxed);
            if attempt >= policy.attempts() || !(stale || policy.should_retry(&err)) {
                return Err(err);
            }
            if inner.breaker.as_ref().map(|breaker| breaker.state()) == Some(BreakerState::Open) {
                // This failure opened the breaker: a retry would only fail fast after its wait.
                return Err(err);
            }
            let backoff = policy.backoff(attempt, previous_backoff, &mut lock(&inner.rng));
            if deadline_after(Instant::now(), backoff) >= deadline {
                return Err(err);
            }
            if !inner.budget.try_retry() {
                inner
                    .counters
                    .budget_exhausted
                    .fetch_add(1, Ordering::Relaxed);
                return Err(err);
            }
            if let Some(hook) = &inner.on_retry {
                hook(&RetryNotice {
                    method,
                    attempt,
                    error: &err,
                    backoff,
                });
            }
            inner.counters.retries.fetch_add(1, Ordering::Relaxed);
            let nanos = u64::try_from(backoff.as_nanos()).unwrap_or(u64::MAX);
            inner
                .counters
                .backoff_nanos
                .fetch_add(nanos, Ordering::Relaxed);
            thread::sleep(backoff);
            previous_backoff = backoff;
            attempt += 1;
        }
    }

    /// Counts of calls, attempts, retries, refusals by the budget, and dials.
    pub fn stats(&self) -> RetryStats {
        let counters = &self.inner.counters;
        RetryStats {
            calls: counters.calls.load(Ordering::Relaxed),
            attempts: counters.attempts.load(Ordering::Relaxed),
            retries: counters.retries.load(Ordering::Relaxed),
            budget_exhausted: counters.budget_exhausted.load(Ordering::Relaxed),
            dials: counters.dials.load(Ordering::Relaxed),
            backoff_total: Duration::from_nanos(counters.backoff_nanos.load(Ordering::Relaxed)),
        }
    }

    /// The address dialed.
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// The policy of calls made without one.
    pub fn policy(&self) -> &RetryPolicy {
        &self.inner.policy
    }

    /// The retry budget shared by all calls of this client and its clones.
    pub fn budget(&self) -> &RetryBudget {
        &self.inner.budget
    }

    /// The breaker guarding the endpoint, if any.
    pub fn breaker(&self) -> Option<&Arc<Breaker>> {
        self.inner.breaker.as_ref()
    }

    /// Closes the connection; calls in flight and every later call fail with
    /// [`RpcError::Shutdown`], never retried. A dial in progress is not interrupted, but the
    /// connection it makes is closed at once and its callers fail with `Shutdown` too.
    /// Idempotent.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Relaxed);
        if let Some(client) = lock(&self.inner.connection).client.take() {
            client.close();
        }
    }

    /// One attempt: asks the breaker, dials if needed, calls, and reports to the breaker.
    fn attempt<A, R>(
        &self,
        policy: &RetryPolicy,
        method: &str,
        args: &A,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<R, RpcError>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let inner = &*self.inner;
        if inner.closed.load(Ordering::Relaxed) {
            return Err(RpcError::Shutdown);
        }
        let timed_out = || RpcError::Timeout { after: timeout };
        if Instant::now() >= deadline {
            return Err(timed_out());
        }
        let permit = inner.breaker.as_deref().map(Breaker::allow).transpose()?;
        inner.counters.attempts.fetch_add(1, Ordering::Relaxed);
        let connected = match self.connection(deadline, timed_out) {
            // This caller's deadline passed while it waited for another caller's dial, or
            // before it could dial: it never reached the endpoint, so (as `Permit` says of
            // such calls) the dropped permit counts for nothing. The dialer reports its own
            // dial's outcome, once.
            Err(err @ RpcError::Timeout { .. }) => return Err(err),
            connected => connected,
        };
        let result = connected.and_then(|client| {
            // What is left once the connection is there (a dial, or a wait for another
            // caller's, may have taken some).
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(timed_out());
            }
            let attempt_timeout = policy
                .attempt_timeout
                .map_or(remaining, |t| t.min(remaining));
            let result = client.call_timeout(method, args, attempt_timeout);
            if let Err(
                RpcError::ConnectionLost { .. } | RpcError::ShuttingDown | RpcError::Shutdown,
            ) = &result
            {
                // Dial again before the next attempt (calls in flight keep their own
                // clone), unless another caller has already put a new connection there.
                let mut slot = lock(&inner.connection);
                if slot
                    .client
                    .as_ref()
                    .is_some_and(|c| c.same_connection(&client))
                {
                    slot.client = None;
                }
            }
            result
        });
        if let Some(permit) = permit {
            permit.record(&result);
        }
        result
    }

    /// The current connection, dialed first if there is none or it has ended. While another
    /// caller dials, waits for its dial, but not past `deadline`; with no time left, returns
    /// `timed_out()` without dialing. `Timeout` from here always means the endpoint was not
    /// tried by this caller (a failed dial is `Unreachable`).
    fn connection(
        &self,
        deadline: Instant,
        timed_out: impl Fn() -> RpcError,
    ) -> Result<Client, RpcError> {
        let inner = &*self.inner;
        let mut slot = lock(&inner.connection);
        loop {
            // Checked under the lock, and again after every wait: `close` may come while
            // this caller waits for another's dial.
            if inner.closed.load(Ordering::Relaxed) {
                return Err(RpcError::Shutdown);
            }
            if let Some(client) = slot.client.as_ref().filter(|client| !client.is_closed()) {
                return Ok(client.clone());
            }
            if !slot.dialing {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timed_out());
            }
            slot = inner
                .dial_ended
                .wait_timeout(slot, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        // A caller that woke at its deadline as another's dial failed has no time left to
        // dial: a dial with a zero timeout would fail `Unreachable`, blaming the endpoint.
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(timed_out());
        }
        slot.client = None;
        slot.dialing = true;
        drop(slot);
        inner.counters.dials.fetch_add(1, Ordering::Relaxed);
        let config = &inner.client_config;
        let dialed = ClientBuilder::from(config.clone())
            .connect_timeout(config.connect_timeout.min(remaining))
            .dial(inner.addr.as_str());
        let mut slot = lock(&inner.connection);
        slot.dialing = false;
        // `close` takes the slot's connection under this lock: one that came during the dial
        // found none to close, so the new connection is this caller's to close. (A `close`
        // after this lock finds it in the slot.)
        let closed_meanwhile = inner.closed.load(Ordering::Relaxed);
        if let (Ok(client), false) = (&dialed, closed_meanwhile) {
            slot.client = Some(client.clone());
        }
        inner.dial_ended.notify_all();
        drop(slot);
        match dialed {
            Ok(client) if closed_meanwhile => {
                client.close();
                Err(RpcError::Shutdown)
            }
            dialed => dialed,
        }
    }
}

impl fmt::Debug for RetryingClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryingClient")
            .field("addr", &self.inner.addr)
            .field("policy", &self.inner.policy)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Builds a [`RetryingClient`]; see [`RetryingClient::builder`].
pub struct RetryingClientBuilder {
    addr: String,
    client_config: ClientConfig,
    connection: Option<Client>,
    policy: RetryPolicy,
    budget: RetryBudget,
    breaker: Option<Arc<Breaker>>,
    rng: Rng,
    on_retry: Option<RetryHook>,
}

impl RetryingClientBuilder {
    /// The policy of calls made without one (default [`RetryPolicy::default`]).
    pub fn policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The retry budget (default [`RetryBudget::default`]: 20% of calls plus 10 a second).
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = budget;
        self
    }

    /// A breaker every attempt asks first and reports to; share it to watch its state.
    pub fn breaker(mut self, breaker: Arc<Breaker>) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// Settings of the connections dialed (codec, timeouts, limits); its `call_timeout` is
    /// the overall deadline of [`RetryingClient::call`].
    pub fn client_config(mut self, config: ClientConfig) -> Self {
        self.client_config = config;
        self
    }

    /// The jitter source (default seeded from the clock); a fixed seed replays the waits.
    pub fn rng(mut self, rng: Rng) -> Self {
        self.rng = rng;
        self
    }

    /// Runs `hook` before each retry's wait, for logging.
    pub fn on_retry(mut self, hook: impl Fn(&RetryNotice<'_>) + Send + Sync + 'static) -> Self {
        self.on_retry = Some(Box::new(hook));
        self
    }

    /// The client. Nothing is dialed until the first call.
    pub fn build(self) -> RetryingClient {
        RetryingClient {
            inner: Arc::new(Inner {
                addr: self.addr,
                client_config: self.client_config,
                policy: self.policy,
                budget: self.budget,
                breaker: self.breaker,
                connection: Mutex::new(Slot {
                    client: self.connection,
                    dialing: false,
                }),
                dial_ended: Condvar::new(),
                rng: Mutex::new(self.rng),
                on_retry: self.on_retry,
                closed: AtomicBool::new(false),
                counters: Counters::default(),
            }),
        }
    }
}

impl fmt::Debug for RetryingClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryingClientBuilder")
            .field("addr", &self.addr)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// A retrying client's connection, and whether a caller is dialing a new one.
struct Slot {
    client: Option<Client>,
    dialing: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Guarded values (a connection slot, a generator state) are valid after any panic.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retrying_client_types_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<RetryingClient>();
        assert_send_sync::<RetryingClientBuilder>();
        assert_send_sync::<Breaker>();
        assert_send_sync::<RetryBudget>();
    }

    #[test]
    fn a_caller_whose_deadline_has_passed_gets_timeout_without_dialing() {
        // The state a caller finds when it wakes at its deadline just as another caller's
        // dial failed: no connection, nobody dialing, no time left. That moment cannot be
        // timed from outside, so this asks for a connection with the deadline already gone.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = RetryingClient::new(listener.local_addr().unwrap().to_string());
        let timeout = Duration::from_secs(1);

        let result = client.connection(Instant::now(), || RpcError::Timeout { after: timeout });
        assert!(
            matches!(result, Err(RpcError::Timeout { .. })),
            "{:?}",
            result.map(|_| "a connection")
        );
        assert_eq!(client.stats().dials, 0);
    }
}
