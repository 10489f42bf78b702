//! Deadline arithmetic that cannot panic: `Instant + Duration` overflows (and panics) for a
//! huge duration such as `Duration::MAX`, which a user may well pass to mean "no limit".

use std::time::{Duration, Instant};

/// `at + after`, or a moment about a century later if that overflows: for every deadline a
/// program can wait for, the same as "never".
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// use rpc_transport::clock::deadline_after;
///
/// let now = Instant::now();
/// assert_eq!(deadline_after(now, Duration::from_secs(1)), now + Duration::from_secs(1));
/// assert!(deadline_after(now, Duration::MAX) > now + Duration::from_secs(3_000_000_000));
/// ```
pub fn deadline_after(at: Instant, after: Duration) -> Instant {
    at.checked_add(after)
        .or_else(|| at.checked_add(FAR_FUTURE))
        // Only an `Instant` within a century of its own maximum gets here: none can.
        .unwrap_or(at)
}

/// The earlier of two optional deadlines (`None`: no deadline).
pub fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// How far off a saturated deadline lies: about a hundred years.
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_duration_saturates_instead_of_panicking() {
        let now = Instant::now();
        assert_eq!(deadline_after(now, Duration::ZERO), now);
        assert_eq!(deadline_after(now, Duration::MAX), now + FAR_FUTURE);
        assert_eq!(
            deadline_after(now, Duration::from_secs(u64::MAX / 2)),
            now + FAR_FUTURE
        );
    }
}
