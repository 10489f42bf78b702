//! A retry budget: caps the retries of one client at a share of its calls, so a failing
//! server sees a bounded extra load instead of a retry storm (SEEDS §6).
//!
//! Without a budget, every caller of a failing server retries up to its policy's attempt
//! count, and the load on the server multiplies just when it can least take it. With one,
//! retries over the last [`RETRY_BUDGET_WINDOW`] may add at most `ratio` to the calls made in
//! that time, plus `min_per_second` so that a client making few calls can still retry
//! (Finagle's `RetryBudget`; gRPC's retry throttling has the same aim).
//!
//! ```text
//!   balance = min_per_second × window + ratio × calls in window − retries in window
//!   a retry may go ahead while balance ≥ 1, and spends 1
//! ```
//!
//! The window is kept as one counter pair per second, so memory is fixed whatever the rate.

use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Retries allowed to a client, shared by all its calls; see the module doc.
///
/// `Send + Sync`: every method takes `&self`.
///
/// # Examples
///
/// ```
/// use rpc_core::cluster::RetryBudget;
///
/// // Retries may add 10% to the calls; no retries without calls.
/// let budget = RetryBudget::new(0.1, 0.0);
/// assert!(!budget.try_retry());
/// for _ in 0..10 {
///     budget.record_call();
/// }
/// assert!(budget.try_retry());
/// assert!(!budget.try_retry());
/// ```
pub struct RetryBudget {
    ratio: f64,
    min_per_second: f64,
    /// Calls and retries per second of the window, and when the budget was made.
    window: Mutex<Window>,
}

impl RetryBudget {
    /// A budget where retries may add `ratio` (0.2: 20%) to the calls of the last
    /// [`RETRY_BUDGET_WINDOW`], plus `min_per_second` retries per second whatever the calls.
    /// Negative or non-finite values count as 0.
    pub fn new(ratio: f64, min_per_second: f64) -> Self {
        let sanitize = |value: f64| {
            if value.is_finite() {
                value.max(0.0)
            } else {
                0.0
            }
        };
        RetryBudget {
            ratio: sanitize(ratio),
            min_per_second: sanitize(min_per_second),
            window: Mutex::new(Window::new(Instant::now())),
        }
    }

    /// A budget that never refuses a retry: only each call's policy limits retries.
    pub fn unlimited() -> Self {
        RetryBudget {
            ratio: f64::INFINITY,
            min_per_second: f64::INFINITY,
            window: Mutex::new(Window::new(Instant::now())),
        }
    }

    /// Counts one call (a first attempt), which earns `ratio` of a retry.
    pub fn record_call(&self) {
        self.record_call_at(Instant::now());
    }

    /// Spends one retry if the budget has one; false if it is exhausted.
    pub fn try_retry(&self) -> bool {
        self.try_retry_at(Instant::now())
    }

    /// Retries left in the budget right now (may be fractional; below 1 means exhausted).
    pub fn balance(&self) -> f64 {
        self.balance_at(Instant::now())
    }

    fn record_call_at(&self, now: Instant) {
        self.lock().slot_at(now).calls += 1;
    }

    fn try_retry_at(&self, now: Instant) -> bool {
        let mut window = self.lock();
        if self.balance_of(&mut window, now) < 1.0 {
            return false;
        }
        window.slot_at(now).retries += 1;
        true
    }

    fn balance_at(&self, now: Instant) -> f64 {
        let mut window = self.lock();
        self.balance_of(&mut window, now)
    }

    fn balance_of(&self, window: &mut Window, now: Instant) -> f64 {
        let (calls, retries) = window.totals_at(now);
        let earned = if calls == 0 {
            0.0 // `INFINITY × 0` would be NaN.
        } else {
            self.ratio * calls as f64
        };
        let reserve = self.min_per_second * RETRY_BUDGET_WINDOW.as_secs_f64();
        earned + reserve - retries as f64
    }

    fn lock(&self) -> MutexGuard<'_, Window> {
        // The window holds plain counters, valid after any panic.
        self.window
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Default for RetryBudget {
    /// Finagle's default: retries may add 20% to the calls, plus 10 retries a second.
    fn default() -> Self {
        RetryBudget::new(0.2, 10.0)
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ratio", &self.ratio)
            .field("min_per_second", &self.min_per_second)
            .field("balance", &self.balance())
            .finish()
    }
}

/// How far back a [`RetryBudget`] counts calls and retries: 10 seconds.
pub const RETRY_BUDGET_WINDOW: Duration = Duration::from_secs(WINDOW_SECONDS as u64);

/// Counters of the last `WINDOW_SECONDS` whole seconds, a ring indexed by second.
struct Window {
    start: Instant,
    slots: [Slot; WINDOW_SECONDS],
}

/// Calls and retries in one second since the budget's start.
#[derive(Clone, Copy, Default)]
struct Slot {
    second: u64,
    calls: u64,
    retries: u64,
}

impl Window {
    fn new(start: Instant) -> Self {
        Window {
            start,
            slots: [Slot::default(); WINDOW_SECONDS],
        }
    }

    /// The slot of the second `now` falls in, emptied first if it held an older second.
    fn slot_at(&mut self, now: Instant) -> &mut Slot {
        let second = now.saturating_duration_since(self.start).as_secs();
        let slot = &mut self.slots[(second % WINDOW_SECONDS as u64) as usize];
        if slot.second != second {
            *slot = Slot {
                second,
                ..Slot::default()
            };
        }
        slot
    }

    /// Calls and retries within the window ending at `now`.
    fn totals_at(&mut self, now: Instant) -> (u64, u64) {
        let second = now.saturating_duration_since(self.start).as_secs();
        self.slots
            .iter()
            .filter(|slot| second.saturating_sub(slot.second) < WINDOW_SECONDS as u64)
            .fold((0, 0), |(calls, retries), slot| {
                (calls + slot.calls, retries + slot.retries)
            })
    }
}

const WINDOW_SECONDS: usize = 10;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_earned_by_calls_are_capped_by_the_ratio() {
        let budget = RetryBudget::new(0.2, 0.0);
        let now = Instant::now();
        for _ in 0..50 {
            budget.record_call_at(now);
        }
        let granted = (0..50).filter(|_| budget.try_retry_at(now)).count();
        assert_eq!(granted, 10);
    }

    #[test]
    fn the_minimum_per_second_allows_retries_without_calls() {
        let budget = RetryBudget::new(0.0, 1.0);
        let now = Instant::now();
        let granted = (0..50).filter(|_| budget.try_retry_at(now)).count();
        assert_eq!(granted, 10, "1 per second over a 10 s window");
    }

    #[test]
    fn calls_and_retries_leave_the_window_after_ten_seconds() {
        let budget = RetryBudget::new(1.0, 0.0);
        let start = Instant::now();
        budget.record_call_at(start);
        assert!(budget.try_retry_at(start));
        assert!(!budget.try_retry_at(start));
        let later = start + Duration::from_secs(5);
        budget.record_call_at(later);
        assert!(budget.try_retry_at(later));
        // At 11 s the first second's call and retry have left; the second's remain.
        let much_later = start + Duration::from_secs(11);
        assert!((budget.balance_at(much_later) - 0.0).abs() < 1e-9);
        budget.record_call_at(much_later);
        assert!(budget.try_retry_at(much_later));
        // At 30 s everything has left: the balance is back to zero.
        let empty = start + Duration::from_secs(30);
        assert!(budget.balance_at(empty).abs() < 1e-9);
    }

    #[test]
    fn an_unlimited_budget_always_grants_and_bad_settings_grant_nothing() {
        let unlimited = RetryBudget::unlimited();
        assert!((0..1000).all(|_| unlimited.try_retry()));
        let broken = RetryBudget::new(f64::NAN, -3.0);
        broken.record_call();
        assert!(!broken.try_retry());
    }
}
