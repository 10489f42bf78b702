//! Loop calls: pooled calls that a server event loop's own thread runs after its turn, when
//! the server is built with `ServerBuilder::loop_runs_calls(true)`.
//!
//! A pooled call normally goes to a worker thread: a wake-up and a second thread's cold view
//! of the call, more than a quick handler costs. Here the loop queues the pooled calls a turn
//! reads, and once the turn is done its thread runs them itself, as a worker would (the
//! same checks: expired, parked at the reply cap), corking each reply and writing a
//! connection's replies each [`REPLIES_PER_WRITE`] and at the end. The loop is let go
//! meanwhile (`rpc_transport::hand_off`): if a handler blocks or computes for long, the
//! transport's watchdog sends the calls not yet started to the pool and a new thread takes
//! the loop over, so other connections wait a few milliseconds at most, never for the
//! handler. The method of the call that ran long keeps off the loops from then on (its
//! calls go to the pool, `MethodCounters::keep_off_loop`): a method that blocks costs one
//! hand-off, and one thread beyond the pool's, not one per call.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rpc_transport::AfterTurn;

use super::{ConnSite, InFlight, Sending};
use crate::service::MethodCounters;

/// A connection's replies corked by one run that the one making them this many writes at
/// once, as inline replies do (`INLINE_REPLIES_PER_WRITE`, for the same reason).
const REPLIES_PER_WRITE: usize = super::INLINE_REPLIES_PER_WRITE;

thread_local! {
    /// The loop calls of the event loop this thread runs now, if it runs one that has them.
    static CURRENT: RefCell<Option<Arc<LoopCalls>>> = const { RefCell::new(None) };
}

/// The pooled calls one server event loop read and its thread has yet to run.
pub(crate) struct LoopCalls {
    state: Mutex<RunState>,
    /// The queue has calls (read without the lock after each turn; written under it).
    queued: AtomicBool,
    /// Counts hand-offs: a run stops taking calls once one happened since it began.
    hand_offs: AtomicU64,
    /// The server's count of hand-offs (`ServerStats::loop_hand_offs`).
    server_hand_offs: Arc<AtomicU64>,
}

/// What a run and a hand-off share, under one lock.
#[derive(Default)]
struct RunState {
    queue: VecDeque<InFlight>,
    /// The method of the call running now, if any: the one a hand-off keeps off the loop.
    running: Option<Arc<MethodCounters>>,
    /// Connections with replies corked by runs and not yet written, and how many each: a
    /// hand-off writes them, so that no reply waits for a call that blocks after it.
    corked: Vec<(Arc<ConnSite>, usize)>,
}

impl LoopCalls {
    /// Loop calls whose hand-offs are counted in `server_hand_offs`.
    pub(crate) fn new(server_hand_offs: Arc<AtomicU64>) -> Arc<LoopCalls> {
        Arc::new(LoopCalls {
            state: Mutex::default(),
            queued: AtomicBool::new(false),
            hand_offs: AtomicU64::new(0),
            server_hand_offs,
        })
    }

    /// Queues `call` for the loop thread to run after its turn, if this thread runs a loop
    /// with loop calls now and the call's method has never run long on one; otherwise gives
    /// the call back, for the pool.
    pub(crate) fn queue_here(call: InFlight) -> Option<InFlight> {
        if call.found.counters.keeps_off_loop() {
            return Some(call);
        }
        CURRENT.with(|current| match &*current.borrow() {
            Some(calls) => {
                calls.push(call);
                None
            }
            None => Some(call),
        })
    }

    fn push(&self, call: InFlight) {
        let mut state = self.lock();
        state.queue.push_back(call);
        self.queued.store(true, Ordering::Release);
    }

    /// Takes the next call and marks its method as running.
    fn take_next(&self) -> Option<InFlight> {
        let mut state = self.lock();
        let call = state.queue.pop_front();
        if state.queue.is_empty() {
            self.queued.store(false, Ordering::Release);
        }
        state.running = call.as_ref().map(|call| Arc::clone(&call.found.counters));
        call
    }

    /// The running call ended; its reply, if `corked_on` a connection, waits there for a
    /// write. Returns the connection if this reply makes its corked replies a write's worth.
    fn ended(&self, corked_on: Option<Arc<ConnSite>>) -> Option<Arc<ConnSite>> {
        let mut state = self.lock();
        state.running = None;
        let site = corked_on?;
        match state
            .corked
            .iter_mut()
            .find(|(seen, _)| Arc::ptr_eq(seen, &site))
        {
            Some((_, count)) => {
                *count += 1;
                if *count < REPLIES_PER_WRITE {
                    return None;
                }
                *count = 0;
                Some(site)
            }
            None => {
                state.corked.push((site, 1));
                None
            }
        }
    }

    /// Writes every connection's corked replies.
    fn write_corked(&self) {
        let corked = std::mem::take(&mut self.lock().corked);
        for (site, _) in corked {
            // A failed flush means the connection is closing; its loop is at it.
            let _ = site.conn.flush();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RunState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl AfterTurn for LoopCalls {
    fn enter(self: Arc<Self>) {
        CURRENT.with(|current| *current.borrow_mut() = Some(self));
    }

    fn leave(&self) {
        CURRENT.with(|current| *current.borrow_mut() = None);
    }

    fn has_work(&self) -> bool {
        self.queued.load(Ordering::Acquire)
    }

    fn run(&self) {
        let began = self.hand_offs.load(Ordering::SeqCst);
        while self.hand_offs.load(Ordering::SeqCst) == began {
            let Some(call) = self.take_next() else { break };
            if let Some(site) = self.ended(call.run_unless_parked(Sending::Corked)) {
                // A failed flush means the connection is closing; its loop is at it.
                let _ = site.conn.flush();
            }
        }
        self.write_corked();
    }

    fn hand_off(&self) {
        self.hand_offs.fetch_add(1, Ordering::SeqCst);
        self.server_hand_offs.fetch_add(1, Ordering::Relaxed);
        let calls = {
            let mut state = self.lock();
            if let Some(method) = &state.running {
                method.keep_off_loop();
            }
            self.queued.store(false, Ordering::Release);
            std::mem::take(&mut state.queue)
        };
        self.write_corked();
        for call in calls {
            Arc::clone(&call.site).send_to_pool(call);
        }
    }
}
