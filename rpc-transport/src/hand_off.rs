//! Hand-off: work an event loop's own thread does after each turn, away from the loop, and
//! the watchdog that gives the loop to a new thread when such work runs long.
//!
//! Sending a quick job to another thread costs a wake-up and that thread's cold view of the
//! job, which can be more than the job itself (a server's pooled call of a few
//! microseconds). A loop started with [`crate::spawn_loop_handing_off`] is given
//! [`AfterTurn`] work instead: after each turn, if work waits, the loop thread lets go of
//! the loop and runs the work itself. Work that blocks or computes for long would then hold
//! up every connection of the loop, so a watchdog thread (one per process, ticking every
//! [`WATCH_TICK`] while some loop runs such work, asleep otherwise) looks at each loop: once
//! one has been in the same run for [`HAND_OFF_TICKS`] ticks, it asks the work to send what
//! it has not started elsewhere ([`AfterTurn::hand_off`]) and starts a thread that takes the
//! loop over. The old thread finishes what it is running and ends. Go's runtime does the
//! same for a thread stuck in a system call (its `sysmon` hands the processor to another).
//!
//! A run is told apart from the next by a counter (`Phase`): odd while the loop's thread
//! runs work, bumped when it starts and when it ends. The loop thread ends its run, and the
//! watchdog claims it, each with one compare-and-swap on the run's odd value, so exactly one
//! of them wins: the thread goes back to the loop, or the loop goes to a new thread.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::thread::{self, Thread};
use std::time::Duration;

/// Work an event loop's thread does after each turn ([`crate::spawn_loop_handing_off`]).
///
/// The loop calls [`AfterTurn::has_work`] after every turn, on its own thread; if true, it
/// lets go of the loop and calls [`AfterTurn::run`]. Meanwhile that thread is not the
/// loop's: [`AfterTurn::leave`] is called before the run, and [`AfterTurn::enter`] on
/// whichever thread runs the loop next (this one, or one that took over).
pub trait AfterTurn: Send + Sync + 'static {
    /// The calling thread now runs the loop (its first turn, or after a run, or as the
    /// thread that took the loop over).
    fn enter(self: Arc<Self>);

    /// The calling thread lets go of the loop to run the work.
    fn leave(&self);

    /// Whether work waits; asked on the loop thread after each turn, so it must be cheap.
    fn has_work(&self) -> bool;

    /// Runs the work that waits, on the thread that let go of the loop. It should stop
    /// taking new work once [`AfterTurn::hand_off`] has been called.
    fn run(&self);

    /// Called on the watchdog thread when a run has gone on too long: send the work the run
    /// has not started elsewhere (say, to a thread pool). The loop goes to a new thread.
    fn hand_off(&self);
}

/// How often the watchdog looks at the loops while any runs work.
pub const WATCH_TICK: Duration = Duration::from_millis(1);

/// How many ticks in a row a run must be seen before the watchdog hands its loop over: a
/// run is at least this many ticks old (2-3 ms) when it is. A run kept off its core by the
/// scheduler for that long is handed over too, which costs a thread start and is harmless.
pub const HAND_OFF_TICKS: u32 = 2;

/// Ticks with no run seen before the watchdog sleeps until the next run starts.
const QUIET_TICKS: u32 = 100;

/// Counts a loop's runs of work: odd while one goes on.
#[derive(Debug, Default)]
pub(crate) struct Phase {
    runs: AtomicU64,
}

impl Phase {
    /// The loop thread starts a run; returns its number (odd).
    pub(crate) fn begin(&self) -> u64 {
        let run = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        watchdog().run_started();
        run
    }

    /// The loop thread ends run `run`: true if it goes back to the loop, false if the
    /// watchdog gave the loop to another thread meanwhile.
    pub(crate) fn end(&self, run: u64) -> bool {
        self.runs
            .compare_exchange(run, run + 1, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// The watchdog claims run `run` for a hand-off: true if the run was still going.
    /// The value it leaves (`run + 3`) differs from what [`Phase::end`] would leave
    /// (`run + 1`), and is even, so the loop's next run, on the new thread, is odd again.
    fn claim(&self, run: u64) -> bool {
        self.runs
            .compare_exchange(run, run + 3, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    fn current(&self) -> u64 {
        self.runs.load(Ordering::SeqCst)
    }
}

/// A loop the watchdog looks after.
pub(crate) trait Watched: Send + Sync {
    /// The loop's run counter.
    fn phase(&self) -> &Phase;

    /// The loop's after-turn work.
    fn work(&self) -> &dyn AfterTurn;

    /// Starts a thread that waits for the word from `go` and then, if it is true, runs the
    /// loop; false if no thread could be started.
    fn start_taker(self: Arc<Self>, go: crossbeam_channel::Receiver<bool>) -> bool;
}

/// Registers a loop with the watchdog (started with the first).
pub(crate) fn watch(seat: Weak<dyn Watched>) {
    let watchdog = watchdog();
    watchdog
        .seats
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Watch {
            seat,
            seen: 0,
            ticks: 0,
        });
}

/// The watchdog of every loop in the process.
struct Watchdog {
    seats: Mutex<Vec<Watch>>,
    /// The watchdog sleeps until a run starts.
    asleep: AtomicBool,
    thread: Thread,
}

/// One loop as the watchdog saw it at its last tick.
struct Watch {
    seat: Weak<dyn Watched>,
    /// The loop's run counter then.
    seen: u64,
    /// Ticks in a row that saw the same run.
    ticks: u32,
}

fn watchdog() -> &'static Watchdog {
    static WATCHDOG: OnceLock<Watchdog> = OnceLock::new();
    WATCHDOG.get_or_init(|| {
        let thread = thread::Builder::new()
            .name("netrpc-hand-off".to_owned())
            // `watchdog()` on the new thread waits for this initialisation to finish.
            .spawn(|| watchdog().watch_forever())
            .expect("a thread for the hand-off watchdog");
        Watchdog {
            seats: Mutex::new(Vec::new()),
            asleep: AtomicBool::new(false),
            thread: thread.thread().clone(),
        }
    })
}

impl Watchdog {
    /// A loop started a run: wakes the watchdog if it sleeps.
    fn run_started(&self) {
        if self.asleep.load(Ordering::SeqCst) && self.asleep.swap(false, Ordering::SeqCst) {
            self.thread.unpark();
        }
    }

    fn watch_forever(&self) {
        let mut quiet = 0;
        loop {
            thread::park_timeout(WATCH_TICK);
            if self.tick() {
                quiet = 0;
                continue;
            }
            quiet += 1;
            if quiet < QUIET_TICKS {
                continue;
            }
            // Sleep until a run starts; a run that started before `asleep` was set is seen
            // by the look that follows it.
            self.asleep.store(true, Ordering::SeqCst);
            if self.tick() {
                self.asleep.store(false, Ordering::SeqCst);
                quiet = 0;
                continue;
            }
            while self.asleep.load(Ordering::SeqCst) {
                thread::park();
            }
            quiet = 0;
        }
    }

    /// Looks at every loop once, handing over those whose run has lasted too long; true if
    /// some loop was in a run.
    fn tick(&self) -> bool {
        let mut seats = self.seats.lock().unwrap_or_else(PoisonError::into_inner);
        seats.retain(|watch| watch.seat.strong_count() > 0);
        let mut any_running = false;
        for watch in seats.iter_mut() {
            let Some(seat) = watch.seat.upgrade() else {
                continue;
            };
            let now = seat.phase().current();
            let running = now % 2 == 1;
            any_running |= running;
            if !running || now != watch.seen {
                watch.seen = now;
                watch.ticks = 0;
                continue;
            }
            watch.ticks += 1;
            if watch.ticks >= HAND_OFF_TICKS {
                watch.ticks = 0;
                hand_over(seat, now);
            }
        }
        any_running
    }
}

/// Gives a loop whose run `run` has gone on too long to a new thread, if the run still goes
/// on: the taker is started first and told to go only once the run is claimed, so the loop
/// is never left without a thread (a thread that cannot be started leaves it as it is).
fn hand_over(seat: Arc<dyn Watched>, run: u64) {
    let (go, word) = crossbeam_channel::bounded(1);
    if !Arc::clone(&seat).start_taker(word) {
        return;
    }
    let claimed = seat.phase().claim(run);
    if claimed {
        seat.work().hand_off();
    }
    let _ = go.send(claimed);
}
