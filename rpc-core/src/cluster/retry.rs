//! Retries with exponential backoff and jitter (SEEDS §6): [`RetryPolicy`] says which
//! failures to retry and how long to wait; [`crate::cluster::RetryingClient`] applies it to
//! every call of a [`crate::Client`], under a [`crate::cluster::RetryBudget`] and optionally
//! behind a [`crate::cluster::Breaker`]. This file is pure logic: no socket, no sleep.
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

use std::time::Duration;

use crate::cluster::Rng;
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
    /// Read by the retrying client, which bounds each attempt with it.
    pub(super) attempt_timeout: Option<Duration>,
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

/// `duration × factor`, saturating instead of panicking on overflow.
fn scale(duration: Duration, factor: f64) -> Duration {
    Duration::try_from_secs_f64(duration.as_secs_f64() * factor).unwrap_or(Duration::MAX)
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
}
