//! Circuit breaker: stops calling an endpoint that keeps failing, fails fast instead, and
//! lets one trial call through after a cooldown to see whether it has recovered (SEEDS §6).
//!
//! ```text
//!            failures past the threshold
//!   Closed ───────────────────────────────► Open ──── every call fails fast ─┐
//!     ▲                                      ▲  │     with RpcError::CircuitOpen
//!     │ trial succeeds          trial fails  │  │ cooldown passed
//!     │                                      │  ▼
//!     └──────────────────────────────────── HalfOpen: one trial call goes through,
//!                                                      the others fail fast
//! ```
//!
//! The threshold is either a run of consecutive failures or a failure ratio over a sliding
//! window of the last calls (with a minimum number of calls, so two failures out of three
//! calls do not open it). Only failures that say something about the endpoint's health
//! count: timeouts, lost connections, failed dials (a failed TLS handshake too), `Throttled`
//! and `ShuttingDown`. A method's own error, a bad request or a handler's panic are answers:
//! the endpoint is up. Outcomes of calls let through before the breaker last opened count
//! for nothing once it has closed again: its trial spoke for the endpoint since.
//!
//! The breaker holds no connection and sends nothing: ask it with [`Breaker::allow`] before a
//! call and give the outcome to the returned [`Permit`], or wrap the call in
//! [`Breaker::call`]. [`crate::cluster::RetryingClient`] does both for every attempt.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rpc_transport::clock::deadline_after;

use crate::error::RpcError;

/// Where a [`Breaker`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through; failures are counted.
    Closed,
    /// Calls fail fast with [`RpcError::CircuitOpen`] until the cooldown passes.
    Open,
    /// The cooldown has passed: the next call is a trial whose outcome closes or reopens the
    /// breaker; calls made while it is in flight fail fast.
    HalfOpen,
}

/// When a [`Breaker`] opens and how long it stays open. Builder-style; see the defaults on
/// [`BreakerPolicy::default`].
#[derive(Debug, Clone)]
pub struct BreakerPolicy {
    consecutive_failures: u32,
    failure_ratio: f64,
    window: usize,
    min_calls: usize,
    cooldown: Duration,
}

impl BreakerPolicy {
    /// Opens after `count` failures in a row (0: never for this reason).
    pub fn consecutive_failures(mut self, count: u32) -> Self {
        self.consecutive_failures = count;
        self
    }

    /// Opens when at least `ratio` (0.5: half) of the calls in the window failed, once the
    /// window holds at least [`BreakerPolicy::min_calls`] calls. A ratio above 1 disables
    /// this rule.
    pub fn failure_ratio(mut self, ratio: f64) -> Self {
        self.failure_ratio = if ratio.is_nan() { f64::INFINITY } else { ratio };
        self
    }

    /// How many of the most recent calls the ratio is computed over (1 to
    /// [`MAX_BREAKER_WINDOW`]).
    pub fn window(mut self, calls: usize) -> Self {
        self.window = calls.clamp(1, MAX_BREAKER_WINDOW);
        self
    }

    /// Fewest calls in the window before the ratio can open the breaker.
    pub fn min_calls(mut self, calls: usize) -> Self {
        self.min_calls = calls.max(1);
        self
    }

    /// How long the breaker stays open before letting a trial call through.
    pub fn cooldown(mut self, cooldown: Duration) -> Self {
        self.cooldown = cooldown;
        self
    }
}

impl Default for BreakerPolicy {
    /// 5 consecutive failures, or half of the last 20 calls with at least 10 of them; a
    /// cooldown of 5 seconds.
    fn default() -> Self {
        BreakerPolicy {
            consecutive_failures: 5,
            failure_ratio: 0.5,
            window: 20,
            min_calls: 10,
            cooldown: Duration::from_secs(5),
        }
    }
}

/// A circuit breaker for one endpoint; see the module doc.
///
/// `Send + Sync`: share it (in an `Arc`) between every caller of the endpoint.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use rpc_core::cluster::{Breaker, BreakerPolicy};
/// use rpc_core::{Client, RpcError};
///
/// let policy = BreakerPolicy::default()
///     .consecutive_failures(3)
///     .cooldown(Duration::from_secs(1));
/// let breaker = Breaker::new("127.0.0.1:1234", policy);
/// let product: Result<i64, RpcError> = breaker.call(|| {
///     Client::dial("127.0.0.1:1234")?.call("Arith.Multiply", &(6i64, 7i64))
/// });
/// println!("{product:?}, breaker {:?}", breaker.state());
/// ```
pub struct Breaker {
    endpoint: String,
    policy: BreakerPolicy,
    /// The state machine; held only to read or change it, never during a call.
    machine: Mutex<Machine>,
    rejected: AtomicU64,
    opened: AtomicU64,
}

impl Breaker {
    /// A closed breaker guarding `endpoint` (its name in [`RpcError::CircuitOpen`]).
    pub fn new(endpoint: impl Into<String>, policy: BreakerPolicy) -> Self {
        Breaker {
            endpoint: endpoint.into(),
            policy,
            machine: Mutex::new(Machine::default()),
            rejected: AtomicU64::new(0),
            opened: AtomicU64::new(0),
        }
    }

    /// Asks to make one call. Give the call's outcome to the permit; a permit dropped without
    /// an outcome counts for nothing.
    ///
    /// # Errors
    ///
    /// [`RpcError::CircuitOpen`] while the breaker is open, or half-open with its trial call
    /// in flight: the call must not be made.
    pub fn allow(&self) -> Result<Permit<'_>, RpcError> {
        self.allow_at(Instant::now())
    }

    /// Runs `call` if the breaker allows it and records its outcome.
    ///
    /// # Errors
    ///
    /// [`RpcError::CircuitOpen`] without running `call`, or `call`'s own error.
    pub fn call<T>(&self, call: impl FnOnce() -> Result<T, RpcError>) -> Result<T, RpcError> {
        let permit = self.allow()?;
        let result = call();
        permit.record(&result);
        result
    }

    /// Where the breaker stands now: an open breaker whose cooldown has passed reports
    /// [`BreakerState::HalfOpen`], since its next call is a trial.
    pub fn state(&self) -> BreakerState {
        self.state_at(Instant::now())
    }

    /// Calls refused with [`RpcError::CircuitOpen`] so far.
    pub fn rejected_calls(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Times the breaker went from closed or half-open to open.
    pub fn times_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// The endpoint this breaker guards.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The breaker's settings.
    pub fn policy(&self) -> &BreakerPolicy {
        &self.policy
    }

    fn allow_at(&self, now: Instant) -> Result<Permit<'_>, RpcError> {
        let mut machine = self.lock();
        let trial = match machine.phase {
            Phase::Closed => false,
            Phase::Open { until } if now >= until => {
                machine.phase = Phase::HalfOpen {
                    trial_in_flight: true,
                };
                true
            }
            Phase::HalfOpen {
                trial_in_flight: false,
            } => {
                machine.phase = Phase::HalfOpen {
                    trial_in_flight: true,
                };
                true
            }
            Phase::Open { until } => return Err(self.reject(until - now)),
            Phase::HalfOpen {
                trial_in_flight: true,
            } => return Err(self.reject(Duration::ZERO)),
        };
        Ok(Permit {
            breaker: self,
            trial,
            generation: machine.generation,
            recorded: false,
        })
    }

    fn record_at(&self, health: Health, permit: &Permit<'_>, now: Instant) {
        let mut machine = self.lock();
        match (machine.phase, permit.trial) {
            // Outcomes of calls let through before the breaker last opened say nothing of
            // the endpoint since its trial: a run of them must not open it again.
            (Phase::Closed, _) if permit.generation != machine.generation => {}
            (Phase::Closed, _) => {
                let must_open = health != Health::Ignored && machine.push(health, &self.policy);
                if must_open {
                    self.open(&mut machine, now);
                }
            }
            (Phase::HalfOpen { .. }, true) => match health {
                Health::Success => machine.close(),
                Health::Failure => self.open(&mut machine, now),
                Health::Ignored => {
                    machine.phase = Phase::HalfOpen {
                        trial_in_flight: false,
                    }
                }
            },
            // Outcomes of calls let through before the breaker opened: the trial decides.
            _ => {}
        }
    }

    fn state_at(&self, now: Instant) -> BreakerState {
        match self.lock().phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { until } if now >= until => BreakerState::HalfOpen,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    fn open(&self, machine: &mut Machine, now: Instant) {
        machine.reset();
        machine.generation = machine.generation.wrapping_add(1);
        machine.phase = Phase::Open {
            until: deadline_after(now, self.policy.cooldown),
        };
        self.opened.fetch_add(1, Ordering::Relaxed);
    }

    fn reject(&self, retry_after: Duration) -> RpcError {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        RpcError::CircuitOpen {
            endpoint: self.endpoint.clone(),
            retry_after,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Machine> {
        // Every change to the machine is complete before any code that could panic.
        self.machine
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("endpoint", &self.endpoint)
            .field("state", &self.state())
            .field("rejected_calls", &self.rejected_calls())
            .field("times_opened", &self.times_opened())
            .finish()
    }
}

/// Leave from a [`Breaker`] to make one call; give it the call's outcome with
/// [`Permit::record`]. Dropped without an outcome (the call was never made), it counts for
/// nothing and, if it was the half-open trial, lets another call be the trial.
#[must_use = "record the call's outcome, or the breaker learns nothing from it"]
#[derive(Debug)]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    trial: bool,
    /// The breaker's opening count when this permit was given.
    generation: u64,
    recorded: bool,
}

impl Permit<'_> {
    /// Records the call's outcome: a failure that says the endpoint is unhealthy (timeout,
    /// lost connection, failed dial or TLS handshake, `Throttled`, `ShuttingDown`) counts
    /// against it, if the breaker has not opened since this permit was given; a
    /// success or any answer from the server counts for it; a call that never reached the
    /// server (cancelled, shut down by this side, failed to encode) counts for nothing.
    pub fn record<T>(self, result: &Result<T, RpcError>) {
        self.finish(Health::of(result), Instant::now());
    }

    /// True if this is the half-open trial call, whose outcome closes or reopens the breaker.
    pub fn is_trial(&self) -> bool {
        self.trial
    }

    fn finish(mut self, health: Health, now: Instant) {
        self.recorded = true;
        self.breaker.record_at(health, &self, now);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.recorded {
            self.breaker
                .record_at(Health::Ignored, self, Instant::now());
        }
    }
}

/// Most calls a breaker's sliding window can hold: its memory stays small.
pub const MAX_BREAKER_WINDOW: usize = 4096;

/// What one outcome says about the endpoint's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Success,
    Failure,
    Ignored,
}

impl Health {
    fn of<T>(result: &Result<T, RpcError>) -> Health {
        match result {
            Ok(_) => Health::Success,
            Err(
                RpcError::Timeout { .. }
                | RpcError::ConnectionLost { .. }
                | RpcError::Unreachable { .. }
                | RpcError::Tls { .. }
                | RpcError::Throttled
                | RpcError::ShuttingDown,
            ) => Health::Failure,
            Err(
                RpcError::Cancelled
                | RpcError::Shutdown
                | RpcError::Encode(_)
                | RpcError::CircuitOpen { .. },
            ) => Health::Ignored,
            // The server answered: a method's error, a bad request, a panic it caught...
            Err(_) => Health::Success,
        }
    }
}

/// The breaker's state and its failure counts while closed.
#[derive(Default)]
struct Machine {
    phase: Phase,
    /// Times opened: a permit given before the last opening carries an older count.
    generation: u64,
    consecutive_failures: u32,
    /// The last calls' outcomes, true for a failure; at most the policy's window.
    recent: VecDeque<bool>,
    recent_failures: usize,
}

#[derive(Debug, Clone, Copy, Default)]
enum Phase {
    #[default]
    Closed,
    Open {
        until: Instant,
    },
    HalfOpen {
        trial_in_flight: bool,
    },
}

impl Machine {
    /// Counts one outcome while closed; true if the breaker must open.
    fn push(&mut self, health: Health, policy: &BreakerPolicy) -> bool {
        let failed = health == Health::Failure;
        self.consecutive_failures = if failed {
            self.consecutive_failures.saturating_add(1)
        } else {
            0
        };
        if self.recent.len() >= policy.window && self.recent.pop_front() == Some(true) {
            self.recent_failures -= 1;
        }
        self.recent.push_back(failed);
        self.recent_failures += usize::from(failed);
        let by_run = policy.consecutive_failures > 0
            && self.consecutive_failures >= policy.consecutive_failures;
        let by_ratio = self.recent.len() >= policy.min_calls
            && self.recent_failures as f64 >= policy.failure_ratio * self.recent.len() as f64;
        by_run || by_ratio
    }

    fn close(&mut self) {
        self.reset();
        self.phase = Phase::Closed;
    }

    fn reset(&mut self) {
        self.consecutive_failures = 0;
        self.recent.clear();
        self.recent_failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout() -> Result<(), RpcError> {
        Err(RpcError::Timeout {
            after: Duration::from_secs(1),
        })
    }

    fn fail(breaker: &Breaker, now: Instant) {
        let permit = breaker.allow_at(now).expect("allowed");
        permit.finish(Health::of(&timeout()), now);
    }

    fn succeed(breaker: &Breaker, now: Instant) {
        let permit = breaker.allow_at(now).expect("allowed");
        permit.finish(Health::Success, now);
    }

    fn consecutive(count: u32) -> Breaker {
        let policy = BreakerPolicy::default()
            .consecutive_failures(count)
            .failure_ratio(2.0)
            .cooldown(Duration::from_secs(1));
        Breaker::new("test", policy)
    }

    #[test]
    fn opens_after_the_consecutive_failure_threshold_and_fails_fast() {
        let breaker = consecutive(3);
        let now = Instant::now();
        fail(&breaker, now);
        fail(&breaker, now);
        assert_eq!(breaker.state_at(now), BreakerState::Closed);
        fail(&breaker, now);
        assert_eq!(breaker.state_at(now), BreakerState::Open);
        let err = breaker.allow_at(now).expect_err("open");
        assert!(
            matches!(err, RpcError::CircuitOpen { ref endpoint, retry_after }
                if endpoint == "test" && retry_after == Duration::from_secs(1)),
            "{err:?}"
        );
        assert_eq!(breaker.rejected_calls(), 1);
        assert_eq!(breaker.times_opened(), 1);
    }

    #[test]
    fn outcomes_of_calls_let_through_before_it_opened_do_not_reopen_it_after_its_trial() {
        // Three slow calls and three fast ones go out; the fast ones time out and open it;
        // the trial after the cooldown succeeds; then the slow ones end, timed out too.
        let breaker = consecutive(3);
        let now = Instant::now();
        let slow: Vec<_> = (0..3)
            .map(|_| breaker.allow_at(now).expect("closed"))
            .collect();
        for _ in 0..3 {
            fail(&breaker, now);
        }
        assert_eq!(breaker.state_at(now), BreakerState::Open);
        let later = now + Duration::from_secs(1);
        succeed(&breaker, later);
        assert_eq!(breaker.state_at(later), BreakerState::Closed);
        for permit in slow {
            permit.finish(Health::of(&timeout()), later);
        }
        assert_eq!(breaker.state_at(later), BreakerState::Closed);
        assert_eq!(breaker.times_opened(), 1);
        // Calls let through since count as ever.
        for _ in 0..3 {
            fail(&breaker, later);
        }
        assert_eq!(breaker.state_at(later), BreakerState::Open);
    }

    #[test]
    fn a_failed_tls_handshake_counts_against_the_endpoint() {
        let tls_failed: Result<(), RpcError> = Err(RpcError::Tls {
            addr: "127.0.0.1:1".to_owned(),
            cause: rpc_transport::TransportError::TlsHandshakeClosed,
        });
        assert!(Health::of(&tls_failed) == Health::Failure);
    }

    #[test]
    fn a_success_resets_the_run_of_failures() {
        let breaker = consecutive(3);
        let now = Instant::now();
        for _ in 0..10 {
            fail(&breaker, now);
            fail(&breaker, now);
            succeed(&breaker, now);
        }
        assert_eq!(breaker.state_at(now), BreakerState::Closed);
    }

    #[test]
    fn half_open_lets_one_trial_through_and_its_success_closes() {
        let breaker = consecutive(1);
        let now = Instant::now();
        fail(&breaker, now);
        let later = now + Duration::from_secs(1);
        assert_eq!(breaker.state_at(later), BreakerState::HalfOpen);
        let trial = breaker.allow_at(later).expect("the trial");
        assert!(trial.is_trial());
        let other = breaker.allow_at(later).expect_err("others fail fast");
        assert!(
            matches!(other, RpcError::CircuitOpen { retry_after, .. } if retry_after.is_zero())
        );
        trial.record(&Ok::<(), RpcError>(()));
        assert_eq!(breaker.state_at(later), BreakerState::Closed);
        assert!(!breaker.allow_at(later).expect("closed").is_trial());
    }

    #[test]
    fn a_failed_trial_reopens_for_another_cooldown() {
        let breaker = consecutive(1);
        let now = Instant::now();
        fail(&breaker, now);
        let later = now + Duration::from_secs(2);
        fail(&breaker, later);
        assert_eq!(breaker.state_at(later), BreakerState::Open);
        assert_eq!(breaker.times_opened(), 2);
        assert!(breaker
            .allow_at(later + Duration::from_millis(999))
            .is_err());
        assert!(breaker.allow_at(later + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn a_trial_dropped_without_an_outcome_frees_the_trial_slot() {
        let breaker = consecutive(1);
        let now = Instant::now();
        fail(&breaker, now);
        let later = now + Duration::from_secs(1);
        drop(breaker.allow_at(later).expect("the trial"));
        assert!(breaker.allow_at(later).expect("a new trial").is_trial());
    }

    #[test]
    fn the_failure_ratio_opens_only_past_the_minimum_calls() {
        let policy = BreakerPolicy::default()
            .consecutive_failures(0)
            .failure_ratio(0.5)
            .window(10)
            .min_calls(6);
        let breaker = Breaker::new("ratio", policy);
        let now = Instant::now();
        for _ in 0..2 {
            fail(&breaker, now);
            succeed(&breaker, now);
        }
        assert_eq!(breaker.state_at(now), BreakerState::Closed, "4 calls < 6");
        succeed(&breaker, now);
        fail(&breaker, now);
        assert_eq!(breaker.state_at(now), BreakerState::Open, "3 of 6 failed");
    }

    #[test]
    fn old_outcomes_slide_out_of_the_window() {
        let policy = BreakerPolicy::default()
            .consecutive_failures(0)
            .failure_ratio(0.5)
            .window(4)
            .min_calls(4);
        let breaker = Breaker::new("window", policy);
        let now = Instant::now();
        fail(&breaker, now);
        for _ in 0..20 {
            succeed(&breaker, now);
        }
        fail(&breaker, now);
        assert_eq!(breaker.state_at(now), BreakerState::Closed, "1 of 4");
        fail(&breaker, now);
        assert_eq!(breaker.state_at(now), BreakerState::Open, "2 of 4");
    }

    #[test]
    fn only_health_failures_count_against_the_endpoint() {
        let breaker = consecutive(2);
        let method: Result<(), RpcError> = Err(RpcError::Method {
            message: "divide by zero".into(),
        });
        let bad: Result<(), RpcError> = Err(RpcError::BadRequest { detail: "x".into() });
        for _ in 0..10 {
            breaker
                .call(|| method.clone())
                .expect_err("the method's error");
            breaker.call(|| bad.clone()).expect_err("a bad request");
            breaker
                .call(|| Err::<(), _>(RpcError::Cancelled))
                .expect_err("cancelled");
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
        breaker.call(|| Err::<(), _>(RpcError::Throttled)).ok();
        breaker.call(|| Err::<(), _>(RpcError::ShuttingDown)).ok();
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[test]
    fn outcomes_of_calls_started_before_opening_do_not_close_it() {
        let breaker = consecutive(1);
        let now = Instant::now();
        let early = breaker.allow_at(now).expect("closed");
        fail(&breaker, now);
        early.record(&Ok::<(), RpcError>(()));
        assert_eq!(breaker.state_at(now), BreakerState::Open);
    }
}
