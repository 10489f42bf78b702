//! The frame clock of one connection: when the frame now arriving started, and the one loop
//! timer that holds it to the frame timeout.
//!
//! A frame must arrive whole within the frame timeout of its first byte, so the loop starts
//! the clock again with every read that delivers a frame and leaves part of the next in the
//! decoder, and stops it after any read that leaves no message begun (over TLS a record can
//! end with no frame in it). A timer per restart piled up in the loop's heap: each lived the whole timeout, so
//! a busy pipelining connection (a read turn ending inside a frame tens of thousands of times
//! a second) kept hundreds of thousands of them, and with a timeout of hours or
//! `Duration::MAX` they never went. The clock keeps at most one timer pending instead: a
//! restart while one is pending only moves the start (a deadline only ever moves later), and
//! the pending timer, firing before the deadline it now stands for, asks for the next.

use std::time::{Duration, Instant};

use crate::clock::deadline_after;

/// A connection's frame clock (see the module doc).
#[derive(Debug, Default)]
pub(crate) struct FrameClock {
    /// When the frame now arriving started, if one is.
    started: Option<Instant>,
    /// A timer for this clock is pending in the loop.
    armed: bool,
}

/// What the loop does when the clock's timer fires.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fired {
    /// The frame took longer than the timeout: close the connection.
    Expired,
    /// Set the clock's timer again, for this moment.
    SetTimer(Instant),
    /// No frame is arriving (or no timeout is set): no timer until the clock starts again.
    Idle,
}

impl FrameClock {
    /// True while a frame is arriving.
    pub(crate) fn is_running(&self) -> bool {
        self.started.is_some()
    }

    /// No frame is arriving (the decoder holds no part of one).
    pub(crate) fn stop(&mut self) {
        self.started = None;
    }

    /// A frame is arriving since `now`; returns when to set the clock's timer, if one must be
    /// set (none is pending, and a timeout is set).
    pub(crate) fn start(&mut self, now: Instant, timeout: Option<Duration>) -> Option<Instant> {
        self.started = Some(now);
        let timeout = timeout?;
        if self.armed {
            return None; // the pending timer fires first, and asks for the next
        }
        self.armed = true;
        // `deadline_after`: a timeout of `Duration::MAX` ("no limit") must not overflow.
        Some(deadline_after(now, timeout))
    }

    /// The clock's timer fired at `now`. `held_back` says this side has paused reading
    /// (backpressure): a frame left half read is then not the peer's slowness, and its clock
    /// starts again.
    pub(crate) fn fire(
        &mut self,
        now: Instant,
        timeout: Option<Duration>,
        held_back: bool,
    ) -> Fired {
        self.armed = false;
        let (Some(started), Some(timeout)) = (self.started, timeout) else {
            return Fired::Idle;
        };
        let deadline = deadline_after(started, timeout);
        if deadline > now {
            self.armed = true;
            return Fired::SetTimer(deadline);
        }
        if held_back {
            self.started = Some(now);
            self.armed = true;
            return Fired::SetTimer(deadline_after(now, timeout));
        }
        Fired::Expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Option<Duration> = Some(Duration::from_secs(10));

    #[test]
    fn restarts_while_a_timer_is_pending_set_no_other() {
        let mut clock = FrameClock::default();
        let t0 = Instant::now();
        assert_eq!(clock.start(t0, TIMEOUT), Some(t0 + Duration::from_secs(10)));
        for ms in 1..1_000 {
            assert_eq!(clock.start(t0 + Duration::from_millis(ms), TIMEOUT), None);
        }
        assert!(clock.is_running());
    }

    #[test]
    fn a_timer_firing_before_the_moved_deadline_sets_the_next_at_it() {
        let mut clock = FrameClock::default();
        let t0 = Instant::now();
        clock.start(t0, TIMEOUT);
        let restarted = t0 + Duration::from_secs(4);
        clock.start(restarted, TIMEOUT);
        let first = t0 + Duration::from_secs(10);
        assert_eq!(
            clock.fire(first, TIMEOUT, false),
            Fired::SetTimer(restarted + Duration::from_secs(10))
        );
        assert_eq!(
            clock.start(first, TIMEOUT),
            None,
            "the timer just set is pending"
        );
    }

    #[test]
    fn a_frame_past_its_deadline_expires_unless_reading_is_held_back() {
        let mut clock = FrameClock::default();
        let t0 = Instant::now();
        clock.start(t0, TIMEOUT);
        let late = t0 + Duration::from_secs(11);
        assert_eq!(
            clock.fire(late, TIMEOUT, true),
            Fired::SetTimer(late + Duration::from_secs(10)),
            "held back: the clock starts again"
        );
        let later = late + Duration::from_secs(10);
        assert_eq!(clock.fire(later, TIMEOUT, false), Fired::Expired);
    }

    #[test]
    fn a_stopped_clock_lets_its_timer_go_and_arms_again_when_it_starts() {
        let mut clock = FrameClock::default();
        let t0 = Instant::now();
        clock.start(t0, TIMEOUT);
        clock.stop();
        assert!(!clock.is_running());
        assert_eq!(
            clock.fire(t0 + Duration::from_secs(10), TIMEOUT, false),
            Fired::Idle
        );
        let t1 = t0 + Duration::from_secs(20);
        assert_eq!(clock.start(t1, TIMEOUT), Some(t1 + Duration::from_secs(10)));
    }

    #[test]
    fn without_a_timeout_no_timer_is_set() {
        let mut clock = FrameClock::default();
        let t0 = Instant::now();
        assert_eq!(clock.start(t0, None), None);
        assert_eq!(clock.fire(t0, None, false), Fired::Idle);
    }
}
