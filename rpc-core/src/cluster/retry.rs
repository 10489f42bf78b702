//! Retries with exponential backoff and jitter (SEEDS §6): [`RetryPolicy`] says which
//! failures to retry and how long to wait; [`RetryingClient`] applies it to every call of a
//! [`Client`], under a [`RetryBudget`] and optionally behind a [`Breaker`].
//!
//! ```text
//!   call ──► attempt 1 ──► Throttled ──► sleep backoff(1) ──► attempt 2 ──► reply
//!              │                           (if retryable, attempts left, budget has a
//!              │                            retry, and the sleep ends before the deadline)
//!              └─ a method's own error, BadRequest, ... ──► returned at once, never retried
//! ```
//!
//! Only failures [`RpcError::is_retryable`] are retried, and of those, a timeout or a lost
//! connection only if the policy says the method is idempotent: such a call may have run on
//! the server, and running `Account.Debit` twice is worse than failing once. Refusals where
//! nothing ran ([`RpcError::is_unprocessed`]: `Throttled`, `ShuttingDown`, `Unreachable`) are
//! always retried. [`RpcError::CircuitOpen`] stops the retries: the breaker has said when to
//! come back.
//!
//! Backoff: the `n`-th retry waits up to `initial × multiplier^(n-1)`, capped at the maximum,
//! with jitter so that clients that failed together do not retry together (AWS's "Exponential
//! Backoff And Jitter"): full jitter draws uniformly below that ceiling, decorrelated jitter
//! uniformly between `initial` and `multiplier ×` the previous wait.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use rpc_transport::clock::deadline_after;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::client::{Client, ClientConfig};
use crate::cluster::{Breaker, BreakerState, RetryBudget, Rng};
use crate::error::RpcError;

/// How the wait before a retry is randomized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// No randomness: exactly the exponential ceiling. Clients that failed together retry
    /// together; for tests and demonstrations.
    None,
    /// Uniform between zero and the exponential ceiling (the default).
    Full,
    /// Uniform between the initial backoff and `multiplier ×` the previous wait, capped at the
    /// maximum.
    Decorrelated,
}

/// Which failed calls to retry, how often, and how long to wait in between. Builder-style.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use rpc_core::cluster::{Jitter, RetryPolicy, Rng};
/// use rpc_core::RpcError;
///
/// let policy = RetryPolicy::default()
///     .max_attempts(4)
///     .initial_backoff(Duration::from_millis(10))
///     .jitter(Jitter::None);
/// assert!(policy.should_retry(&RpcError::Throttled));
/// assert!(!policy.should_retry(&RpcError::Method { message: "no".into() }));
/// let mut rng = Rng::with_seed(1);
/// assert_eq!(policy.backoff(3, Duration::ZERO, &mut rng), Duration::from_millis(40));
/// ```
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    multiplier: f64,
    jitter: Jitter,
    idempotent: bool,
    attempt_timeout: Option<Duration>,
}

impl RetryPolicy {
    /// A policy that never retries: one attempt.
    pub fn never() -> Self {
        RetryPolicy::default().max_attempts(1)
    }

    /// Most attempts of one call, the first included (at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Ceiling of the wait before the first retry.
    pub fn initial_backoff(mut self, backoff: Duration) -> Self {
        self.initial_backoff = backoff;
        self
    }

    /// Longest wait before any retry.
    pub fn max_backoff(mut self, backoff: Duration) -> Self {
        self.max_backoff = backoff;
        self
    }

    /// Growth of the ceiling from one retry to the next (at least 1; not a number: 2).
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = if multiplier.is_finite() {
            multiplier.max(1.0)
        } else if multiplier.is_nan() {
            2.0
        } else {
            f64::MAX
        };
        self
    }

    /// How the wait is randomized (default [`Jitter::Full`]).
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Whether running the method twice is harmless. Only then are calls that may have run
    /// retried: timeouts and lost connections. Default false.
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = idempotent;
        self
    }

    /// Deadline of each attempt, within the call's overall deadline (default: none, so one
    /// attempt that times out uses up the whole call's time).
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }

    /// True if a call that failed with `err` may be tried again under this policy: the error
    /// is retryable, and it is not a possibly-run call of a method not marked idempotent, and
    /// it is not an open circuit.
    pub fn should_retry(&self, err: &RpcError) -> bool {
        !matches!(err, RpcError::CircuitOpen { .. })
            && err.is_retryable()
            && (self.idempotent || err.is_unprocessed())
    }

    /// The wait before retry number `retry` (1 for the first), given the previous wait (for
    /// decorrelated jitter) and a random source. Never more than the maximum backoff.
    pub fn backoff(&self, retry: u32, previous: Duration, rng: &mut Rng) -> Duration {
        let exponent = i32::try_from(retry.saturating_sub(1)).unwrap_or(i32::MAX);
        let ceiling =
            scale(self.initial_backoff, self.multiplier.powi(exponent)).min(self.max_backoff);
        match self.jitter {
            Jitter::None => ceiling,
            Jitter::Full => scale(ceiling, rng.next_f64()),
            Jitter::Decorrelated => {
                let low = self.initial_backoff.min(self.max_backoff);
                let high = scale(previous.max(low), self.multiplier).min(self.max_backoff);
                low + scale(high.saturating_sub(low), rng.next_f64())
            }
        }
    }

    /// The most attempts of one call.
    pub fn attempts(&self) -> u32 {
        self.max_attempts
    }
}

impl Default for RetryPolicy {
    /// 3 attempts, backoff from 50 ms doubling up to 1 s with full jitter, not idempotent,
    /// no per-attempt deadline.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: Jitter::Full,
            idempotent: false,
            attempt_timeout: None,
        }
    }
}

/// A [`Client`] that retries failed calls by a [`RetryPolicy`] and dials again when its
/// connection ends. Cheap to clone; clones share the connection, budget, breaker and stats.
///
/// `Send + Sync`. The connection is dialed on the first call, and again before the next
/// attempt after the connection ended (`ConnectionLost`, the server `ShuttingDown`, or found
/// closed). Every call deposits into the client's [`RetryBudget`] and every retry withdraws
/// from it, so retries stay a bounded share of the calls whatever the callers do. With a
/// [`Breaker`], each attempt asks it first and reports to it; an open breaker ends the call
/// with [`RpcError::CircuitOpen`] without dialing, and a failure that opens it ends the call
/// at once with that failure (a retry would only fail fast).
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
    /// The current connection; `None` until dialed or after it ended. Held while dialing, so
    /// concurrent callers share one dial.
    connection: Mutex<Option<Client>>,
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
            if attempt >= policy.max_attempts || !(stale || policy.should_retry(&err)) {
                return Err(err);
            }
            if inner.breaker.as_ref().map(|breaker| breaker.state()) == Some(BreakerState::Open) {
                // This failure opened the breaker: a retry would only fail fast after its wait.
                return Err(err);
            }
            let backoff = policy.backoff(attempt, previous_backoff, &mut lock(&inner.rng));
            if Instant::now() + backoff >= deadline {
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
    /// [`RpcError::Shutdown`], never retried. Idempotent.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Relaxed);
        if let Some(client) = lock(&self.inner.connection).take() {
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
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(RpcError::Timeout { after: timeout });
        }
        let permit = inner.breaker.as_deref().map(Breaker::allow).transpose()?;
        inner.counters.attempts.fetch_add(1, Ordering::Relaxed);
        let attempt_timeout = policy
            .attempt_timeout
            .map_or(remaining, |t| t.min(remaining));
        let result = self
            .connection(remaining)
            .and_then(|client| client.call_timeout(method, args, attempt_timeout));
        if let Err(RpcError::ConnectionLost { .. } | RpcError::ShuttingDown | RpcError::Shutdown) =
            &result
        {
            // Dial again before the next attempt (calls in flight keep their own clone).
            lock(&inner.connection).take();
        }
        if let Some(permit) = permit {
            permit.record(&result);
        }
        result
    }

    /// The current connection, dialed first if there is none or it has ended.
    fn connection(&self, remaining: Duration) -> Result<Client, RpcError> {
        let inner = &*self.inner;
        let mut slot = lock(&inner.connection);
        if let Some(client) = slot.as_ref().filter(|client| !client.is_closed()) {
            return Ok(client.clone());
        }
        *slot = None;
        inner.counters.dials.fetch_add(1, Ordering::Relaxed);
        let config = &inner.client_config;
        let client = Client::builder()
            .codec(config.codec)
            .call_timeout(config.call_timeout)
            .connect_timeout(config.connect_timeout.min(remaining))
            .limits(config.limits)
            .max_pending_calls(config.max_pending_calls)
            .max_unsent_bytes(config.max_unsent_bytes)
            .dial(inner.addr.as_str())?;
        *slot = Some(client.clone());
        Ok(client)
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
                connection: Mutex::new(self.connection),
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

/// `duration × factor`, saturating instead of panicking on overflow.
fn scale(duration: Duration, factor: f64) -> Duration {
    Duration::try_from_secs_f64(duration.as_secs_f64() * factor).unwrap_or(Duration::MAX)
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

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    #[test]
    fn without_jitter_the_backoff_doubles_up_to_the_cap() {
        let policy = RetryPolicy::default()
            .initial_backoff(ms(10))
            .max_backoff(ms(100))
            .jitter(Jitter::None);
        let mut rng = Rng::with_seed(0);
        let waits: Vec<Duration> = (1..=6)
            .map(|retry| policy.backoff(retry, Duration::ZERO, &mut rng))
            .collect();
        assert_eq!(waits, [ms(10), ms(20), ms(40), ms(80), ms(100), ms(100)]);
    }

    #[test]
    fn full_jitter_stays_under_the_ceiling_and_replays_from_a_seed() {
        let policy = RetryPolicy::default()
            .initial_backoff(ms(10))
            .max_backoff(ms(1000));
        let draw = |seed| {
            let mut rng = Rng::with_seed(seed);
            (1..=8)
                .map(|retry| policy.backoff(retry, Duration::ZERO, &mut rng))
                .collect::<Vec<_>>()
        };
        let waits = draw(42);
        assert_eq!(waits, draw(42));
        assert_ne!(waits, draw(43));
        for (retry, wait) in (1..).zip(&waits) {
            let ceiling = ms(10 * (1 << (retry - 1))).min(ms(1000));
            assert!(*wait <= ceiling, "retry {retry}: {wait:?} > {ceiling:?}");
        }
        assert!(waits[5..].iter().any(|wait| *wait > ms(80)), "{waits:?}");
    }

    #[test]
    fn decorrelated_jitter_stays_between_initial_and_the_grown_previous_wait() {
        let policy = RetryPolicy::default()
            .initial_backoff(ms(10))
            .max_backoff(ms(500))
            .multiplier(3.0)
            .jitter(Jitter::Decorrelated);
        let mut rng = Rng::with_seed(9);
        let mut previous = Duration::ZERO;
        for retry in 1..=20 {
            let wait = policy.backoff(retry, previous, &mut rng);
            let high = (previous.max(ms(10)) * 3).min(ms(500));
            assert!(
                wait >= ms(10) && wait <= high,
                "{wait:?} not in 10 ms..{high:?}"
            );
            previous = wait;
        }
    }

    #[test]
    fn huge_settings_saturate_instead_of_panicking() {
        let policy = RetryPolicy::default()
            .initial_backoff(Duration::MAX)
            .max_backoff(Duration::MAX)
            .multiplier(f64::INFINITY)
            .jitter(Jitter::Decorrelated);
        let mut rng = Rng::with_seed(1);
        let _ = policy.backoff(u32::MAX, Duration::MAX, &mut rng);
        let policy = policy.jitter(Jitter::None).multiplier(f64::NAN);
        assert_eq!(
            policy.backoff(u32::MAX, Duration::ZERO, &mut rng),
            Duration::MAX
        );
    }

    #[test]
    fn only_retryable_errors_are_retried_and_possibly_run_ones_only_if_idempotent() {
        let policy = RetryPolicy::default();
        let timeout = RpcError::Timeout { after: ms(5) };
        let lost = RpcError::ConnectionLost { cause: None };
        assert!(policy.should_retry(&RpcError::Throttled));
        assert!(policy.should_retry(&RpcError::ShuttingDown));
        assert!(!policy.should_retry(&timeout));
        assert!(!policy.should_retry(&lost));
        let idempotent = policy.idempotent(true);
        assert!(idempotent.should_retry(&timeout));
        assert!(idempotent.should_retry(&lost));
        for never in [
            RpcError::Method {
                message: "no".into(),
            },
            RpcError::BadRequest { detail: "x".into() },
            RpcError::UnknownMethod { name: "A.b".into() },
            RpcError::Cancelled,
            RpcError::CircuitOpen {
                endpoint: "e".into(),
                retry_after: ms(5),
            },
        ] {
            assert!(!idempotent.should_retry(&never), "{never:?}");
        }
    }

    #[test]
    fn retrying_client_types_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<RetryingClient>();
        assert_send_sync::<RetryingClientBuilder>();
        assert_send_sync::<Breaker>();
        assert_send_sync::<RetryBudget>();
    }
}
