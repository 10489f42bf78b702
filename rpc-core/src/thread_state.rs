//! `ThreadProbe`: whether a thread is running (or waiting for a core) or blocked.
//!
//! The worker pool's monitor starts threads for jobs that wait only if a busy worker is
//! blocked (asleep in a handler, waiting on I/O or a lock): a queue behind workers that are
//! all computing gets nothing from more threads but more competition for the same cores. Go's
//! scheduler draws the same line, between a goroutine in a system call and one that runs.
//!
//! On Linux the kernel tells a thread's state in `/proc/self/task/TID/stat`: `R` is running or
//! runnable, anything else (`S` sleeping, `D` in uninterruptible I/O, ...) is not running. A
//! thread learns its own TID from the `/proc/thread-self` link. Elsewhere, or without `/proc`,
//! the state is unknown and the pool treats a busy worker as blocked, as it did before it
//! could ask.

use std::path::PathBuf;

/// Asks the kernel about one thread's scheduling state.
#[derive(Debug)]
pub(crate) struct ThreadProbe {
    /// The thread's `stat` file; `None` where it cannot be found.
    stat: Option<PathBuf>,
}

impl ThreadProbe {
    /// A probe for the calling thread.
    pub(crate) fn current() -> ThreadProbe {
        // "/proc/thread-self" links to "PID/task/TID"; the stat file is found through
        // "/proc/self/task/TID" so that it stays valid when read from other threads.
        let stat = std::fs::read_link("/proc/thread-self")
            .ok()
            .and_then(|link| link.file_name().map(ToOwned::to_owned))
            .map(|tid| PathBuf::from("/proc/self/task").join(tid).join("stat"));
        ThreadProbe { stat }
    }

    /// `Some(true)` if the thread is on a core or waiting for one, `Some(false)` if it is
    /// blocked, `None` if that cannot be told (no `/proc`, or the thread has exited).
    pub(crate) fn is_runnable(&self) -> Option<bool> {
        let stat = std::fs::read_to_string(self.stat.as_ref()?).ok()?;
        state_of(&stat).map(|state| state == 'R')
    }
}

/// The state letter in a `stat` line: "TID (COMM) STATE ...", where COMM may itself hold
/// spaces and parentheses, so the state follows the last ')'.
fn state_of(stat: &str) -> Option<char> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.trim_start().chars().next()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly by design

    use super::*;

    #[test]
    fn the_state_letter_follows_the_last_parenthesis() {
        assert_eq!(state_of("4242 (netrpc-worker) S 1 2 3"), Some('S'));
        assert_eq!(state_of("7 (a (b) c) R 0"), Some('R'));
        assert_eq!(state_of("garbage"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_thread_asking_about_itself_runs_and_one_waiting_on_a_channel_is_blocked() {
        use std::sync::mpsc;
        use std::thread;
        use std::time::{Duration, Instant};

        assert_eq!(ThreadProbe::current().is_runnable(), Some(true));

        let (probe_tx, probe_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let sleeper = thread::spawn(move || {
            probe_tx.send(ThreadProbe::current()).unwrap();
            let _ = release_rx.recv();
        });
        let probe = probe_rx.recv().unwrap();
        // The thread may take a moment to reach its wait.
        let deadline = Instant::now() + Duration::from_secs(5);
        while probe.is_runnable() != Some(false) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(probe.is_runnable(), Some(false));
        release_tx.send(()).unwrap();
        sleeper.join().unwrap();
    }
}
