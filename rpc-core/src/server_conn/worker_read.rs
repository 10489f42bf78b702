//! Worker reads: a pool worker that has answered a call reads its connection's next requests
//! and runs them itself ([`crate::ServerConfig::worker_reads`], opt-in).
//!
//! Without it every pooled call crosses two threads: the event loop reads the request and
//! queues it, a worker runs it. On a busy connection that is a wake-up of the loop, a hand-off
//! and often a wake-up of a worker per call. With it, the worker that has just written a
//! reply takes the connection's read turn (`rpc_transport`'s `read_turn.rs`, the one a
//! waiting client caller takes) and sleeps a moment in the connection's own poller, behind
//! which the loop's registration moves: the next requests then wake this worker alone, which
//! reads them and runs them in order, with their replies written together. The loop still
//! reads whenever the worker is not waiting (and takes anything a worker cannot act on: end
//! of stream, bad bytes, half a frame), so nothing depends on a worker being there.
//!
//! A worker reads only while [`MIN_IN_FLIGHT`] more calls of its connection are in flight
//! (a shallow pipeline's next requests come too late to wait for), and no more than
//! [`READERS_PER_CORE`] per core read at once. A reading worker tells the pool so
//! (`WorkerPool::begin_reading`), which then counts it neither idle nor busy: calls queued
//! meanwhile get threads as if it did not exist, and the monitor never takes its waits for a
//! blocked handler.
//!
//! Each request is admitted (checked and counted in flight, `ConnSite::admit_request`) as
//! the worker decodes it, as the loop does what it reads: a cancel read after it finds it,
//! and the end of stream, which only the loop acts on, never finds a connection with
//! nothing left to answer while the worker still holds requests it read.
//!
//! The requests of one read (at most [`READ_BATCH`]) run one after another, their replies
//! corked and written together once the last has run. A handler that blocks would hold up
//! the others, and the replies corked before it, so the worker keeps them in the
//! connection's [`WorkerBatch`], and while it runs calls with anything behind them, the
//! loop looks in every [`STALL`] (its connection timer): once the read's calls have run
//! that long, the corked replies are written and the requests waiting handed to the pool,
//! each to its own worker, as if the loop had read them (a call that waited past its
//! deadline, or was cancelled, is answered `DeadlineExceeded` without running, wherever it
//! runs). So a call waits at most about [`STALL`] longer for its neighbours than without
//! worker reads; other connections, and this one's later requests (read by the loop while
//! this worker is busy), are not held at all.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rpc_transport::{Frame, FrameKind, ReadHere};

use super::{CallSite, ConnSite, Found, LookupCache, Sending};

/// How long a worker waits for the connection's next requests before it goes back to the
/// pool: a millisecond, the shortest wait the connection's poller can make (mio counts an
/// `epoll_wait` timeout in whole milliseconds, rounding up; the 50 µs this once asked for
/// were a millisecond too, which is why 20 µs to 1 ms all measured alike at four
/// connections with sixteen calls in flight). Busy connections answer a burst of replies
/// with new requests well within it, so they keep their worker; a connection that goes
/// quiet costs its worker this much once.
const LINGER: Duration = Duration::from_millis(1);

/// Other calls of its connection that must be in flight when a worker answers a call for it
/// to read the connection. A client that waits for each reply sends its next request later
/// than a worker could wait (sequential calls lost 10-20% waiting, with any call in flight
/// enough); one with a few calls in flight, the same: with 16 connections x 4 in flight a
/// threshold of 4 doubled p99 (430 -> 890 µs). Eight sat on a common window: 8 x 8 met it
/// only at times, and the connections read by workers starved those read by the loop (p99
/// about 1 ms against 0.3). Twelve leaves 8 x 8, 16 x 8, 16 x 4 and 64 x 2 as they were
/// without worker reads, while 4 x 16 goes from 567k to 1,030k calls/s and 2 x 32 from 550k
/// to 1,300k.
const MIN_IN_FLIGHT: usize = 12;

/// Workers that may read connections at once, per core ([`WorkerPool::begin_reading`]): a
/// worker waiting on a connection is not counted busy, so the pool starts threads for the
/// calls queued meanwhile as if it did not exist. 4 x 16 wants one per connection (two per
/// core gave 902-960k calls/s and a p99 of 540-570 µs, four 1,055k and 365 µs); more than
/// the connections that qualify changes nothing. Without a cap, many connections each made
/// a thread (64 x 2: 190-280 threads, p99 3.8-7.3 ms).
///
/// [`WorkerPool::begin_reading`]: crate::pool::WorkerPool::begin_reading
const READERS_PER_CORE: usize = 4;

/// Most reads one worker makes in a row before it goes back to the pool. A busy connection
/// keeps its worker for a while (8 reads gave 4 x 16 pooled calls 610k calls/s, 64 reads
/// 940k-975k, 256 about 990k with half the p99 of 64: docs/BENCHMARKS.md, change 23); the
/// bound, and going back at once when calls wait for a thread the pool may not add, keep a
/// worker from serving one connection for ever while others wait.
const MAX_READS: usize = 256;

/// Most requests one read hands the worker; the loop reads the rest. Bounds what one handler
/// that blocks can hold up, and what a worker holds in memory. Sixteen broke off most reads
/// of a client with sixteen calls in flight (and each break asks the loop to read on: 4 x 16
/// pooled calls went from 610k to 490k calls/s).
const READ_BATCH: usize = 64;

/// Replies a worker running a read's requests writes at once, without waiting for the rest:
/// the client starts on them while the worker runs the others. With one write per read, one
/// connection with 64 calls in flight made 340k-350k calls/s; with every 32nd, 380k-450k
/// (every 16th about as much, every 8th less, and at four connections with sixteen in flight
/// every 8th halved the rate).
const REPLIES_PER_WRITE: usize = 32;

/// How long a call a worker read may run, with replies corked or requests waiting behind
/// it, before the loop writes those replies and hands those requests to the pool: the pool
/// monitor's tick, the time a queued call waits before the pool adds a thread for it.
pub(super) const STALL: Duration = Duration::from_millis(1);

/// A request a worker read, admitted (in flight, counted against the caps) as the loop
/// admits what it reads: a cancel or a duplicate that comes after it finds it in flight, a
/// graceful shutdown's go-away counts it, and the connection stays open for its reply after
/// the peer's end of stream.
pub(super) struct ReadCall {
    pub(super) request: Frame,
    /// The method it calls.
    pub(super) found: Arc<Found>,
}

impl std::fmt::Debug for ReadCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The method's handler is a closure: the request says which call this is.
        f.debug_struct("ReadCall")
            .field("request", &self.request)
            .finish_non_exhaustive()
    }
}

/// The requests a worker read and runs in turn, shared with the connection's loop, which
/// takes them over once the read's calls have held the worker longer than [`STALL`].
///
/// Made on a worker's first read: a connection no worker reads (every one, unless
/// `worker_reads` is on) carries only an empty box's pointer (`tests/scale.rs`).
#[derive(Debug, Default)]
pub(super) struct WorkerBatch {
    inner: Mutex<Option<Box<BatchState>>>,
}

#[derive(Debug, Default)]
struct BatchState {
    /// Requests read and not yet started, in the order they came.
    waiting: VecDeque<ReadCall>,
    /// When they were read: their deadlines count from here.
    received: Option<Instant>,
    /// When the first call of the read that had anything behind it (corked replies or
    /// requests waiting) started, while something still is: the whole read's calls, not
    /// each one, get [`STALL`] before the loop takes the rest (a chain of calls each just
    /// under it would otherwise hold the last request for the sum of them).
    guarded_since: Option<Instant>,
}

/// What the loop found in a connection's [`WorkerBatch`] at its check.
pub(super) enum BatchCheck {
    /// No call with anything behind it runs: nothing to check until a worker asks again.
    Idle,
    /// A guarded call runs, not yet for [`STALL`]: look again at this moment.
    Running(Instant),
    /// The read's guarded calls have run for [`STALL`]: the requests still waiting (already
    /// admitted, to be run or queued as the loop's own, read at `received`); the corked
    /// replies must be written.
    Stalled {
        waiting: Vec<ReadCall>,
        received: Instant,
    },
}

impl WorkerBatch {
    fn lock(&self) -> MutexGuard<'_, Option<Box<BatchState>>> {
        // Every update is a push, a pop or an assignment: a poisoned lock holds sound state.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The worker's read, to run in turn.
    fn load(&self, calls: &mut Vec<ReadCall>, received: Instant) {
        let mut batch = self.lock();
        let state = batch.get_or_insert_with(Box::default);
        state.waiting.extend(calls.drain(..));
        state.received = Some(received);
    }

    /// The worker takes the next request and when it was read; `guarded` says whether
    /// anything will be behind it while it runs (replies corked), besides requests waiting:
    /// the loop then watches the read. `None` once the batch is done (or taken over by the
    /// loop).
    fn next(&self, corked: bool, now: Instant) -> Option<(ReadCall, Instant, bool)> {
        let mut batch = self.lock();
        let state = batch.as_deref_mut()?;
        let Some(call) = state.waiting.pop_front() else {
            state.guarded_since = None;
            return None;
        };
        let guarded = corked || !state.waiting.is_empty();
        state.guarded_since = guarded.then(|| state.guarded_since.unwrap_or(now));
        Some((call, state.received.unwrap_or(now), guarded))
    }

    /// The requests still waiting, taken from the batch (its worker hands them on).
    fn take_rest(&self) -> Vec<ReadCall> {
        let mut batch = self.lock();
        let Some(state) = batch.as_deref_mut() else {
            return Vec::new();
        };
        state.guarded_since = None;
        state.waiting.drain(..).collect()
    }

    /// The loop's check, at `now`.
    pub(super) fn check(&self, now: Instant) -> BatchCheck {
        let mut batch = self.lock();
        let Some(state) = batch.as_deref_mut() else {
            return BatchCheck::Idle;
        };
        let Some(since) = state.guarded_since else {
            return BatchCheck::Idle;
        };
        let stalled_at = since + STALL;
        if now < stalled_at {
            return BatchCheck::Running(stalled_at);
        }
        // Once: the call itself stays with its worker, and nothing is behind it any more.
        state.guarded_since = None;
        BatchCheck::Stalled {
            waiting: state.waiting.drain(..).collect(),
            received: state.received.unwrap_or(now),
        }
    }
}

/// Reads the connection on this worker, and runs what arrives, until it is quiet for
/// [`LINGER`], [`MAX_READS`] reads are done, or reading is better left to the loop.
pub(super) fn read_next(site: &Arc<ConnSite>) {
    if site.calls.in_flight_len.load(Ordering::SeqCst) < MIN_IN_FLIGHT {
        return; // a shallow pipeline: its next requests come too late to wait for
    }
    let Some(_reading) = site.server.pool.begin_reading(READERS_PER_CORE) else {
        return; // enough workers read connections already
    };
    let mut lookups = LookupCache::default();
    let mut calls = Vec::with_capacity(READ_BATCH);
    for _ in 0..MAX_READS {
        if site.calls.draining.load(Ordering::SeqCst) || site.replies_over_budget() {
            return; // the loop refuses, or holds back reading until the peer reads
        }
        let pool = &site.server.pool;
        if pool.is_at_thread_cap() && pool.has_waiting_jobs() {
            return; // calls wait for a thread and none can be added: serve them
        }
        let mut read = 0;
        let outcome = site
            .conn
            .read_next_here(Instant::now() + LINGER, &mut |frame| {
                read += 1;
                take_frame(site, frame, &mut lookups, &mut calls);
                if read < READ_BATCH {
                    ControlFlow::Continue(())
                } else {
                    ControlFlow::Break(())
                }
            });
        if read == 0 {
            return;
        }
        let stats = &site.server.stats;
        let count = u64::try_from(read).unwrap_or(u64::MAX);
        stats
            .frames_read_by_workers
            .fetch_add(count, Ordering::Relaxed);
        if site.server.config.idle_timeout.is_some() {
            site.calls.note_activity();
        }
        run_batch(site, &mut calls);
        if !matches!(outcome, ReadHere::Frames(_)) {
            return; // the loop has something to act on, or another reader has the turn
        }
    }
}

/// Acts on a frame as the reading worker decodes it, as the loop does on the frames it
/// reads: a request is admitted (or refused) at once, so that what comes after it in the
/// stream finds it in flight (a cancel; the end of stream, which the loop acts on while
/// this worker still runs the read's calls and must not take for a connection with
/// nothing left to answer); other frames are answered or acted on.
fn take_frame(site: &ConnSite, frame: Frame, lookups: &mut LookupCache, calls: &mut Vec<ReadCall>) {
    if frame.kind != FrameKind::Request {
        site.handle_other_frame(&frame);
    } else if let Some(found) = site.admit_request(&frame, lookups) {
        calls.push(ReadCall {
            request: frame,
            found,
        });
    }
}

/// Runs the requests of one read in turn, under the loop's watch ([`WorkerBatch`]), then
/// writes their replies.
fn run_batch(site: &Arc<ConnSite>, calls: &mut Vec<ReadCall>) {
    if calls.is_empty() {
        return;
    }
    let batch = &site.calls.worker_batch;
    batch.load(calls, Instant::now());
    let mut watched = false;
    let mut corked_replies = 0;
    loop {
        let now = Instant::now();
        let Some((call, received, guarded)) = batch.next(corked_replies > 0, now) else {
            break;
        };
        if site.replies_unread_at_cap() {
            // The peer has the cap unread: the rest of the read goes to the pool, where a
            // call waits (parked) until the peer reads, and this worker goes back to work.
            for call in std::iter::once(call).chain(batch.take_rest()) {
                site.queue_on_pool(call.request, call.found, received);
            }
            break;
        }
        if guarded && !watched {
            // The loop looks in by then (once per batch; a timer already set sooner stays).
            site.conn.schedule_timer(now + STALL);
            watched = true;
        }
        run_here(site, call, received);
        corked_replies += 1;
        if corked_replies == REPLIES_PER_WRITE {
            // A failed write means the connection is closing; the loop is already at it.
            let _ = site.conn.flush();
            corked_replies = 0;
        }
    }
    // A failed write means the connection is closing; the loop is already at it.
    let _ = site.conn.flush();
}

/// Runs one request this worker read (unless its deadline passed or its caller cancelled
/// it while it waited, as a pooled call), its reply corked until the read's requests are
/// done.
fn run_here(site: &ConnSite, read: ReadCall, received: Instant) {
    let ReadCall { mut request, found } = read;
    let call = CallSite {
        site,
        received,
        found: &found,
    };
    let (reply, failure) = call.run_unless_expired(&mut request);
    call.finish(request.seq, &reply, failure, Sending::Corked);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::Dispatch;
    use rpc_codec::CodecKind;

    /// Admitted requests `seqs`, of a method that does nothing.
    fn requests(seqs: std::ops::RangeInclusive<u64>) -> Vec<ReadCall> {
        let found = Arc::new(Found {
            codec: CodecKind::Postcard,
            handler: Arc::new(|_, _, _| Ok(())),
            dispatch: Dispatch::Pool,
            counters: Arc::default(),
        });
        seqs.map(|seq| ReadCall {
            request: Frame::new(FrameKind::Request, seq),
            found: Arc::clone(&found),
        })
        .collect()
    }

    /// A batch holding requests `seqs`, read now; and that moment.
    fn loaded(seqs: std::ops::RangeInclusive<u64>) -> (WorkerBatch, Instant) {
        let batch = WorkerBatch::default();
        let now = Instant::now();
        batch.load(&mut requests(seqs), now);
        (batch, now)
    }

    fn stalled_seqs(check: BatchCheck) -> Vec<u64> {
        match check {
            BatchCheck::Stalled { waiting, .. } => {
                waiting.iter().map(|call| call.request.seq).collect()
            }
            BatchCheck::Idle => panic!("idle, not stalled"),
            BatchCheck::Running(_) => panic!("running, not stalled"),
        }
    }

    #[test]
    fn requests_behind_a_call_that_runs_too_long_go_to_the_loop_once() {
        let (batch, read_at) = loaded(1..=3);
        let started = read_at + Duration::from_micros(10);
        let (first, received, guarded) = batch.next(false, started).unwrap();
        assert_eq!((first.request.seq, received, guarded), (1, read_at, true));
        assert!(matches!(
            batch.check(started + STALL / 2),
            BatchCheck::Running(at) if at == started + STALL
        ));
        assert_eq!(stalled_seqs(batch.check(started + STALL)), vec![2, 3]);
        assert!(
            matches!(batch.check(started + STALL * 2), BatchCheck::Idle),
            "taken over once"
        );
        assert!(
            batch.next(false, started + STALL).is_none(),
            "nothing left to run"
        );
    }

    #[test]
    fn a_read_whose_calls_together_run_too_long_goes_to_the_loop() {
        // Each call runs just under the limit; the read's calls together pass it, and the
        // requests still waiting go to the loop then, not after the sum of their neighbours.
        let (batch, read_at) = loaded(1..=4);
        let almost = STALL * 9 / 10;
        assert!(batch.next(false, read_at).unwrap().2);
        assert!(batch.next(true, read_at + almost).unwrap().2);
        assert!(matches!(
            batch.check(read_at + almost),
            BatchCheck::Running(at) if at == read_at + STALL
        ));
        assert_eq!(stalled_seqs(batch.check(read_at + STALL)), vec![3, 4]);
    }

    #[test]
    fn a_call_with_nothing_behind_it_is_not_watched() {
        let (batch, now) = loaded(1..=1);
        let (_, _, guarded) = batch.next(false, now).unwrap();
        assert!(!guarded);
        assert!(matches!(batch.check(now + STALL * 2), BatchCheck::Idle));
    }

    #[test]
    fn a_call_with_replies_corked_behind_it_has_them_written_when_it_stalls() {
        let (batch, now) = loaded(1..=1);
        let (_, _, guarded) = batch.next(true, now).unwrap();
        assert!(guarded, "its corked replies must not wait for it");
        assert_eq!(stalled_seqs(batch.check(now + STALL)), Vec::<u64>::new());
    }

    #[test]
    fn a_finished_batch_leaves_nothing_to_watch() {
        let (batch, now) = loaded(1..=2);
        assert!(batch.next(false, now).unwrap().2);
        assert!(
            batch.next(true, now).unwrap().2,
            "the last, with replies corked"
        );
        assert!(batch.next(false, now).is_none());
        assert!(matches!(batch.check(now + STALL * 2), BatchCheck::Idle));
    }
}
