//! Busy polling: a thread about to sleep on its poller first asks it again and again, for a
//! short while, whether something is ready.
//!
//! Waking a thread that sleeps costs the waker a system call and the sleeper a trip through
//! the scheduler; where the sleeper's CPU has gone idle, it costs more, and on a virtual
//! machine whose idle vCPUs halt it can cost tens of microseconds, several times the work of
//! a whole call. A thread that expects an answer within microseconds (a caller waiting for
//! its reply, a server loop waiting for the next request of a busy client) can keep its CPU
//! awake instead: a [`BusyPoll`] wait polls without blocking until an event comes or the
//! budget is spent, yielding its CPU between tries to any other thread that wants it, and
//! only then sleeps for the rest of the wait. Off by default (a budget of zero): it trades
//! CPU time for latency, which is the embedder's choice (`ServerBuilder::busy_poll`,
//! `ClientBuilder::busy_poll` in `rpc-core`).
//!
//! Spinning threads compete with working ones for the cores, so no more threads spin at once
//! than there are cores, process-wide (`SpinGate`); a thread that finds every turn taken
//! sleeps at once, as it would without busy polling. (Half the cores, the cap before change
//! 14's rule for callers, left sequential calls with one side sleeping: 27-30k pool calls/s
//! against 44-54k with every core; docs/BENCHMARKS.md, change 16.)
//!
//! A caller waiting for its reply (`BusyPoll::poll_as_caller`) spins only while no other
//! busy-polling caller of the process waits: with several waiting, replies keep coming for
//! one or another, the cores seldom go idle, and a spinning caller only takes a core from
//! threads with work (a reply that comes while its caller spins also wakes the client's
//! event loop, `exclusive_wake.rs`). Four connections with sixteen calls in flight each lost
//! 10-13% of their calls/s to spinning callers; with the rule, nothing (docs/BENCHMARKS.md,
//! change 14). Only waits that began within the last millisecond count (`WaitingCallers`
//! keeps each wait's start in a slot): a caller waiting on a slow call (a long poll) does not
//! keep the others from spinning (change 17).

use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use mio::{Events, Poll};

/// How long a thread polls without blocking before it sleeps; zero (the default) never does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BusyPoll {
    budget: Duration,
}

/// The longest budget a [`BusyPoll`] keeps: spinning longer than this could only save a
/// wake-up, which costs far less, so a larger budget is cut to it.
pub const MAX_BUSY_POLL: Duration = Duration::from_millis(1);

impl BusyPoll {
    /// Polls without blocking for up to `budget` (at most [`MAX_BUSY_POLL`]) before each
    /// sleep.
    pub fn new(budget: Duration) -> BusyPoll {
        BusyPoll {
            budget: budget.min(MAX_BUSY_POLL),
        }
    }

    /// The budget per wait.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// Waits on `poll` for events, at most `timeout` (`None`: no limit), as `Poll::poll`
    /// does, after polling without blocking for up to the budget (no longer than `timeout`)
    /// if a spinning turn is free.
    pub(crate) fn poll(
        &self,
        poll: &mut Poll,
        events: &mut Events,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        self.poll_with_gate(poll, events, timeout, spin_gate())
    }

    /// [`BusyPoll::poll`] for a caller waiting for its reply: with a budget, its wait holds a
    /// slot in [`WaitingCallers`] until it returns, and it spins only if no other caller's
    /// wait there began within [`COUNTED_WAIT`] before it (callers without a budget take no
    /// slot).
    pub(crate) fn poll_as_caller(
        &self,
        poll: &mut Poll,
        events: &mut Events,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        self.poll_as_caller_with(poll, events, timeout, waiting_callers(), spin_gate())
    }

    fn poll_as_caller_with(
        &self,
        poll: &mut Poll,
        events: &mut Events,
        timeout: Option<Duration>,
        callers: &WaitingCallers,
        gate: &SpinGate,
    ) -> io::Result<()> {
        if self.budget.is_zero() {
            return poll.poll(events, timeout);
        }
        let waiting = callers.enter(Instant::now());
        if waiting.others_waiting {
            return poll.poll(events, timeout);
        }
        self.poll_with_gate(poll, events, timeout, gate)
    }

    fn poll_with_gate(
        &self,
        poll: &mut Poll,
        events: &mut Events,
        timeout: Option<Duration>,
        gate: &SpinGate,
    ) -> io::Result<()> {
        let spin = timeout.map_or(self.budget, |timeout| timeout.min(self.budget));
        if spin.is_zero() {
            return poll.poll(events, timeout);
        }
        let Some(turn) = gate.try_enter() else {
            return poll.poll(events, timeout);
        };
        let started = Instant::now();
        loop {
            poll.poll(events, Some(Duration::ZERO))?;
            if !events.is_empty() {
                return Ok(());
            }
            let spun = started.elapsed();
            if spun >= spin {
                drop(turn);
                return poll.poll(events, timeout.map(|timeout| timeout.saturating_sub(spun)));
            }
            thread::yield_now();
        }
    }
}

/// How long a wait keeps other callers from spinning. A caller still waiting after this waits
/// on a slow call (a long poll, a slow handler), which says nothing of how busy the cores
/// are. (A wait is not cut short to stop counting: a 1 ms `epoll_wait` timeout cost four
/// connections with sixteen calls in flight a fifth of their calls/s on a VM.)
const COUNTED_WAIT: Duration = MAX_BUSY_POLL;

/// Callers that can wait at once with their start told apart; more count as busy.
const WAIT_SLOTS: usize = 16;

/// The callers waiting in [`BusyPoll::poll_as_caller`], process-wide: each holds a slot with
/// the time its wait began, so that a wait older than [`COUNTED_WAIT`] can be left out.
#[derive(Debug)]
pub(crate) struct WaitingCallers {
    epoch: Instant,
    /// Zero when free, else when the wait began: nanoseconds since `epoch`, plus one.
    slots: [AtomicU64; WAIT_SLOTS],
}

/// The process's waiting callers.
fn waiting_callers() -> &'static WaitingCallers {
    static CALLERS: OnceLock<WaitingCallers> = OnceLock::new();
    CALLERS.get_or_init(WaitingCallers::new)
}

impl WaitingCallers {
    fn new() -> WaitingCallers {
        WaitingCallers {
            epoch: Instant::now(),
            slots: [const { AtomicU64::new(0) }; WAIT_SLOTS],
        }
    }

    /// Takes a slot for a wait beginning `now`, given back when the returned guard is
    /// dropped, and tells whether another caller began waiting within [`COUNTED_WAIT`] before
    /// and still waits. With every slot taken, it holds none and says so.
    fn enter(&self, now: Instant) -> CallerWaiting<'_> {
        let stamp = self.stamp(now);
        let recent_since = self.stamp(now.checked_sub(COUNTED_WAIT).unwrap_or(self.epoch));
        let mut slot = None;
        let mut others_waiting = false;
        for (index, held) in self.slots.iter().enumerate() {
            let mut began = held.load(Ordering::Acquire);
            if began == 0 && slot.is_none() {
                match held.compare_exchange(0, stamp, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => {
                        slot = Some(index);
                        continue;
                    }
                    Err(taken) => began = taken,
                }
            }
            others_waiting |= began != 0 && began >= recent_since;
        }
        CallerWaiting {
            callers: self,
            others_waiting: others_waiting || slot.is_none(),
            slot,
        }
    }

    /// `at` as a slot value: nanoseconds since `epoch`, plus one (never zero).
    fn stamp(&self, at: Instant) -> u64 {
        let nanos = at.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(nanos).unwrap_or(u64::MAX - 1) + 1
    }
}

/// One caller's wait, holding its slot while it lasts.
#[derive(Debug)]
struct CallerWaiting<'a> {
    callers: &'a WaitingCallers,
    slot: Option<usize>,
    /// Another caller began waiting within [`COUNTED_WAIT`] before this one and still waits,
    /// or every slot was taken.
    others_waiting: bool,
}

impl Drop for CallerWaiting<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.and_then(|index| self.callers.slots.get(index)) {
            slot.store(0, Ordering::Release);
        }
    }
}

/// Caps how many threads spin at once.
#[derive(Debug)]
pub(crate) struct SpinGate {
    max: usize,
    spinning: AtomicUsize,
}

/// The process's gate: one turn per core.
fn spin_gate() -> &'static SpinGate {
    static GATE: OnceLock<SpinGate> = OnceLock::new();
    GATE.get_or_init(|| {
        let cores = thread::available_parallelism().map_or(1, |cores| cores.get());
        SpinGate::new(cores)
    })
}

impl SpinGate {
    /// A gate that lets at most `max` threads spin at once.
    pub(crate) fn new(max: usize) -> SpinGate {
        SpinGate {
            max,
            spinning: AtomicUsize::new(0),
        }
    }

    /// A turn to spin, given back when dropped; `None` if `max` threads spin already.
    pub(crate) fn try_enter(&self) -> Option<SpinTurn<'_>> {
        self.spinning
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |spinning| {
                (spinning < self.max).then_some(spinning + 1)
            })
            .ok()
            .map(|_| SpinTurn { gate: self })
    }
}

/// One thread's turn to spin.
#[derive(Debug)]
pub(crate) struct SpinTurn<'a> {
    gate: &'a SpinGate,
}

impl Drop for SpinTurn<'_> {
    fn drop(&mut self) {
        self.gate.spinning.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly by design

    use super::*;
    use mio::{Token, Waker};
    use std::sync::Arc;

    fn poller() -> (Poll, Events, Arc<Waker>) {
        let poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), Token(7)).unwrap());
        (poll, Events::with_capacity(8), waker)
    }

    #[test]
    fn a_budget_past_the_maximum_is_cut_to_it() {
        assert_eq!(BusyPoll::new(Duration::MAX).budget(), MAX_BUSY_POLL);
        let small = Duration::from_micros(50);
        assert_eq!(BusyPoll::new(small).budget(), small);
    }

    #[test]
    fn the_gate_lets_no_more_than_its_maximum_spin_at_once() {
        let gate = SpinGate::new(2);
        let first = gate.try_enter().unwrap();
        let second = gate.try_enter().unwrap();
        assert!(gate.try_enter().is_none(), "a third would spin");
        drop(first);
        let third = gate.try_enter().expect("a turn given back is free again");
        drop((second, third));
        assert_eq!(gate.spinning.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn an_event_that_comes_while_spinning_is_returned() {
        let (mut poll, mut events, waker) = poller();
        let gate = SpinGate::new(1);
        let kept = Arc::clone(&waker); // a dropped waker leaves the poller with its event
        let waking = thread::spawn(move || {
            thread::sleep(Duration::from_millis(5));
            waker.wake().unwrap();
        });
        let busy = BusyPoll::new(Duration::from_secs(10));
        busy.poll_with_gate(&mut poll, &mut events, Some(Duration::from_secs(10)), &gate)
            .unwrap();
        assert_eq!(
            events.iter().map(|event| event.token()).collect::<Vec<_>>(),
            [Token(7)]
        );
        assert_eq!(
            gate.spinning.load(Ordering::SeqCst),
            0,
            "the turn is given back"
        );
        waking.join().unwrap();
        drop(kept);
    }

    #[test]
    fn with_nothing_ready_the_wait_ends_at_its_timeout_after_the_spin() {
        let (mut poll, mut events, _waker) = poller();
        let gate = SpinGate::new(1);
        let busy = BusyPoll::new(Duration::from_millis(5));
        let started = Instant::now();
        busy.poll_with_gate(
            &mut poll,
            &mut events,
            Some(Duration::from_millis(30)),
            &gate,
        )
        .unwrap();
        assert!(events.is_empty());
        assert!(
            started.elapsed() >= Duration::from_millis(30),
            "the whole timeout is waited"
        );
        assert_eq!(gate.spinning.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_caller_sees_others_waiting_until_their_waits_end() {
        let callers = WaitingCallers::new();
        let now = Instant::now();
        let first = callers.enter(now);
        let second = callers.enter(now);
        assert_eq!((first.others_waiting, second.others_waiting), (false, true));
        drop(first);
        drop(second);
        assert!(
            !callers.enter(now).others_waiting,
            "ended waits no longer count"
        );
    }

    #[test]
    fn a_wait_older_than_the_counted_wait_no_longer_keeps_others_from_spinning() {
        let callers = WaitingCallers::new();
        let began = Instant::now();
        let _long_poll = callers.enter(began);
        assert!(callers.enter(began + COUNTED_WAIT / 2).others_waiting);
        assert!(!callers.enter(began + 2 * COUNTED_WAIT).others_waiting);
    }

    #[test]
    fn with_every_slot_taken_a_caller_does_not_count_itself_alone() {
        let callers = WaitingCallers::new();
        let long_ago = Instant::now();
        let held: Vec<_> = (0..WAIT_SLOTS).map(|_| callers.enter(long_ago)).collect();
        let extra = callers.enter(long_ago + 10 * COUNTED_WAIT);
        assert_eq!(extra.slot, None);
        assert!(extra.others_waiting);
        drop(extra);
        drop(held);
        assert!(callers
            .slots
            .iter()
            .all(|slot| slot.load(Ordering::SeqCst) == 0));
    }

    #[test]
    fn a_caller_that_finds_another_waiting_sleeps_and_still_gets_its_event() {
        let (mut poll, mut events, waker) = poller();
        let callers = WaitingCallers::new();
        let gate = SpinGate::new(1);
        // Another caller's wait, stamped ahead so that it stays recent however slow this
        // test thread is.
        let _other = callers.enter(Instant::now() + Duration::from_secs(3600));
        let busy = BusyPoll::new(MAX_BUSY_POLL);
        let saw_a_spin = thread::scope(|scope| {
            // Watches the gate for longer than a spin would last, then wakes the caller.
            let watching = scope.spawn(|| {
                let until = Instant::now() + 3 * MAX_BUSY_POLL;
                let mut saw_a_spin = false;
                while Instant::now() < until {
                    saw_a_spin |= gate.spinning.load(Ordering::SeqCst) > 0;
                }
                waker.wake().unwrap();
                saw_a_spin
            });
            busy.poll_as_caller_with(
                &mut poll,
                &mut events,
                Some(Duration::from_secs(10)),
                &callers,
                &gate,
            )
            .unwrap();
            watching.join().unwrap()
        });
        assert!(!saw_a_spin, "the caller took a spinning turn");
        assert_eq!(events.iter().count(), 1);
        let held = callers.slots.iter();
        let held = held.filter(|slot| slot.load(Ordering::SeqCst) != 0).count();
        assert_eq!(held, 1, "only the other's slot is still held");
    }

    #[test]
    fn a_thread_that_finds_the_gate_full_sleeps_at_once_and_still_gets_its_event() {
        let (mut poll, mut events, waker) = poller();
        let gate = SpinGate::new(1);
        let _taken = gate.try_enter().unwrap();
        waker.wake().unwrap();
        let busy = BusyPoll::new(Duration::from_secs(10));
        busy.poll_with_gate(&mut poll, &mut events, None, &gate)
            .unwrap();
        assert_eq!(events.iter().count(), 1);
    }
}
