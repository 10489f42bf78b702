//! The worker pool: elastic threads that run handlers off the event loop.
//!
//! A handler may block (the tutorials' methods sleep), so handlers never run on an event loop.
//! The pool starts a thread whenever work waits and no thread is idle, up to `max_threads`;
//! a thread idle for `keep_alive` exits. So 64 concurrent calls of a 100 ms method take about
//! 100 ms, as with Go's goroutine per request, and an idle server holds few threads.
//!
//! Beyond `max_threads`, jobs wait in the queue (in arrival order) until a thread is free.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

/// A unit of work for the pool.
pub(crate) type Job = Box<dyn FnOnce() + Send>;

/// Elastic thread pool; cheap to clone (clones share the threads).
#[derive(Debug, Clone)]
pub(crate) struct WorkerPool {
    jobs: Sender<Job>,
    shared: Arc<PoolShared>,
}

#[derive(Debug)]
struct PoolShared {
    jobs: Receiver<Job>,
    /// Threads alive.
    threads: AtomicUsize,
    /// Threads waiting for a job.
    idle: AtomicUsize,
    /// Jobs queued and not yet taken by a thread.
    queued: AtomicUsize,
    /// Jobs running now.
    running: AtomicUsize,
    /// The most jobs that ever ran at once.
    max_running: AtomicUsize,
    max_threads: usize,
    keep_alive: Duration,
}

impl WorkerPool {
    pub(crate) fn new(max_threads: usize, keep_alive: Duration) -> Self {
        let (jobs_tx, jobs_rx) = crossbeam_channel::unbounded();
        WorkerPool {
            jobs: jobs_tx,
            shared: Arc::new(PoolShared {
                jobs: jobs_rx,
                threads: AtomicUsize::new(0),
                idle: AtomicUsize::new(0),
                queued: AtomicUsize::new(0),
                running: AtomicUsize::new(0),
                max_running: AtomicUsize::new(0),
                max_threads: max_threads.max(1),
                keep_alive,
            }),
        }
    }

    /// Queues `job`, starting a thread if every thread is busy and the cap allows.
    pub(crate) fn execute(&self, job: Job) {
        let queued = self.shared.queued.fetch_add(1, Ordering::SeqCst) + 1;
        // The pool owns a receiver too, so the channel cannot be disconnected.
        let _ = self.jobs.send(job);
        if queued > self.shared.idle.load(Ordering::SeqCst) {
            self.try_spawn();
        }
    }

    /// Handlers running now.
    pub(crate) fn running(&self) -> usize {
        self.shared.running.load(Ordering::SeqCst)
    }

    /// The most handlers that ever ran at once.
    pub(crate) fn max_running(&self) -> usize {
        self.shared.max_running.load(Ordering::SeqCst)
    }

    /// True if the pool has as many threads as it may: a job queued now may wait for a
    /// running one to end.
    pub(crate) fn is_at_thread_cap(&self) -> bool {
        self.shared.threads.load(Ordering::SeqCst) >= self.shared.max_threads
    }

    /// Threads alive now.
    pub(crate) fn threads(&self) -> usize {
        self.shared.threads.load(Ordering::SeqCst)
    }

    fn try_spawn(&self) {
        let shared = &self.shared;
        let mut threads = shared.threads.load(Ordering::SeqCst);
        loop {
            if threads >= shared.max_threads {
                return; // at the cap: the job waits for a free thread
            }
            match shared.threads.compare_exchange(
                threads,
                threads + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => break,
                Err(actual) => threads = actual,
            }
        }
        let worker_shared = Arc::clone(shared);
        let spawned = thread::Builder::new()
            .name("netrpc-worker".to_owned())
            .spawn(move || worker_loop(&worker_shared));
        if spawned.is_err() {
            // Out of threads: the job stays queued for an existing worker.
            shared.threads.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn worker_loop(shared: &PoolShared) {
    loop {
        shared.idle.fetch_add(1, Ordering::SeqCst);
        let job = shared.jobs.recv_timeout(shared.keep_alive);
        shared.idle.fetch_sub(1, Ordering::SeqCst);
        match job {
            Ok(job) => {
                shared.queued.fetch_sub(1, Ordering::SeqCst);
                let running = shared.running.fetch_add(1, Ordering::SeqCst) + 1;
                shared.max_running.fetch_max(running, Ordering::SeqCst);
                // Jobs catch their own panics (see the server's dispatch); this guard only
                // keeps the counters right if one ever escapes.
                let _guard = RunningGuard(&shared.running);
                job();
            }
            Err(_) => {
                shared.threads.fetch_sub(1, Ordering::SeqCst);
                // A job may have been queued between the timeout and the decrement above;
                // if no thread is idle to take it, stay.
                if shared.queued.load(Ordering::SeqCst) > 0
                    && shared.idle.load(Ordering::SeqCst) == 0
                {
                    shared.threads.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                return;
            }
        }
    }
}

struct RunningGuard<'a>(&'a AtomicUsize);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn blocking_jobs_run_concurrently_up_to_the_cap() {
        let pool = WorkerPool::new(64, Duration::from_secs(1));
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        let start = Instant::now();
        for _ in 0..32 {
            let done_tx = done_tx.clone();
            pool.execute(Box::new(move || {
                thread::sleep(Duration::from_millis(100));
                done_tx.send(()).unwrap();
            }));
        }
        for _ in 0..32 {
            done_rx
                .recv_timeout(Duration::from_secs(5))
                .expect("job finished");
        }
        // A hang detector, not a benchmark: serial execution would take 3.2 s.
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        assert!(pool.threads() <= 64);
    }

    #[test]
    fn jobs_beyond_the_cap_wait_and_still_run() {
        let pool = WorkerPool::new(2, Duration::from_millis(50));
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        for i in 0..10 {
            let done_tx = done_tx.clone();
            pool.execute(Box::new(move || done_tx.send(i).unwrap()));
        }
        let mut seen: Vec<i32> = (0..10)
            .map(|_| {
                done_rx
                    .recv_timeout(Duration::from_secs(5))
                    .expect("job ran")
            })
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        assert!(pool.threads() <= 2);
    }

    #[test]
    fn idle_threads_exit_after_keep_alive() {
        let pool = WorkerPool::new(8, Duration::from_millis(20));
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        pool.execute(Box::new(move || done_tx.send(()).unwrap()));
        done_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.threads() > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(pool.threads(), 0);
    }
}
