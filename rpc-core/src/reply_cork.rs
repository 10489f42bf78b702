//! When a pool worker writes its reply: the rule that corks the replies of pipelined calls,
//! as counters in and decisions out. It owns no socket; `server_conn` acts on its answers.
//!
//! A worker corks its reply (queues it unwritten) while more calls of its connection wait in
//! the pool's queue, and the worker that takes the last of them queues a write of everything
//! corked on the pool before it runs that call (`server_conn.rs`, `release_corked`): an idle
//! worker makes it at once, or, if that call's handler is quick, its reply leaves with the
//! corked ones first. So a burst of calls costs a few writes instead of one per reply, and no
//! reply waits for another call's handler to run: only for the queue to move. Three limits
//! keep that promise: nothing is corked while the pool has all its threads (a waiting call
//! may then wait for a slow handler to end; the last taker then writes what is corked
//! itself), the worker that corks the [`MAX_CORKED_REPLIES`]th reply writes at once, and
//! the event loop writes whatever has stayed corked for [`MAX_CORK_HOLD`]: the queue moves
//! only as fast as the workers end their calls, and when every worker computes in a long
//! handler, nothing else would write a reply that finished before them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The corking state of one connection, shared by its event loop and the pool's workers.
#[derive(Debug, Default)]
pub(crate) struct ReplyCork {
    /// Calls queued on the pool and not yet taken by a worker.
    waiting_for_worker: AtomicUsize,
    /// Replies corked since the last write, about: racing workers may miscount it by a few,
    /// which only moves a write earlier or later within the cap, never loses one.
    corked_replies: AtomicUsize,
}

/// How a worker sends a finished reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplySend {
    /// Write it now (with anything corked before it).
    Now,
    /// Cork it, then ask [`ReplyCork::corked`] whether to write after all.
    Cork,
}

impl ReplyCork {
    /// The loop queued one of the connection's calls on the pool.
    pub(crate) fn call_queued(&self) {
        self.waiting_for_worker.fetch_add(1, Ordering::SeqCst);
    }

    /// A worker took one of the connection's calls off the queue; true if it must see that
    /// what is corked gets written before running it, because no other call is left waiting
    /// to do so.
    pub(crate) fn call_taken(&self) -> bool {
        let last = self.waiting_for_worker.fetch_sub(1, Ordering::SeqCst) == 1;
        if last {
            self.corked_replies.store(0, Ordering::SeqCst);
        }
        last
    }

    /// How to send a reply just finished; `pool_at_thread_cap` when the pool has as many
    /// threads as it may.
    pub(crate) fn sending(&self, pool_at_thread_cap: bool) -> ReplySend {
        if pool_at_thread_cap || !self.calls_waiting() {
            ReplySend::Now
        } else {
            ReplySend::Cork
        }
    }

    /// A reply was corked; true if its worker must write now after all: the cap on corked
    /// replies is reached, or the last waiting call was taken since [`ReplyCork::sending`]
    /// (its worker's write may have come before this cork, and nobody else would write it).
    pub(crate) fn corked(&self) -> bool {
        let corked = self.corked_replies.fetch_add(1, Ordering::SeqCst) + 1;
        if corked >= MAX_CORKED_REPLIES {
            self.corked_replies.store(0, Ordering::SeqCst);
            return true;
        }
        // Sound because the cork came before this load: either the taker's decrement comes
        // after it (and that taker writes after its decrement, so after the cork), or this
        // load sees the decrement.
        !self.calls_waiting()
    }

    fn calls_waiting(&self) -> bool {
        self.waiting_for_worker.load(Ordering::SeqCst) > 0
    }
}

/// Most replies a connection's workers cork before one of them writes: sixteen, the window
/// of a client that keeps as many calls in flight. Eight left four connections with sixteen
/// calls in flight each writing about six replies per system call, each waking the reader:
/// sixteen gave that shape 16-22% more calls/s, and one connection with 64 in flight no less.
/// More holds back too much: at 64, that one connection lost 20-30% against sixteen (its
/// client's pipeline gets coarse; docs/BENCHMARKS.md, change 15).
pub(crate) const MAX_CORKED_REPLIES: usize = 16;

/// Longest a reply stays corked before the event loop writes it
/// (`Connection::send_corked_for`): long enough that a burst of quick calls never meets it
/// (its last taker writes within microseconds), short next to any handler slow enough to
/// hold the queue. Without it, a quick call's reply corked behind more computing calls than
/// workers waited for all but one of them to be taken: seconds, since the pool adds a thread
/// for computing workers only every 50 ms without progress (`tests/pool_replies.rs`).
pub(crate) const MAX_CORK_HOLD: Duration = Duration::from_millis(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_call_is_written_at_once() {
        let cork = ReplyCork::default();
        cork.call_queued();
        assert!(cork.call_taken(), "the last waiting call's taker writes");
        assert_eq!(cork.sending(false), ReplySend::Now);
    }

    #[test]
    fn replies_are_corked_while_calls_wait_and_written_by_the_last_taker() {
        let cork = ReplyCork::default();
        for _ in 0..3 {
            cork.call_queued();
        }
        assert!(!cork.call_taken());
        assert_eq!(cork.sending(false), ReplySend::Cork);
        assert!(!cork.corked(), "another call still waits to write it");
        assert!(!cork.call_taken());
        assert_eq!(cork.sending(false), ReplySend::Cork);
        assert!(!cork.corked());
        assert!(
            cork.call_taken(),
            "the last taker writes both corked replies"
        );
        assert_eq!(cork.sending(false), ReplySend::Now);
    }

    #[test]
    fn a_reply_corked_after_the_last_call_was_taken_is_written_by_its_worker() {
        let cork = ReplyCork::default();
        cork.call_queued();
        cork.call_queued();
        assert!(!cork.call_taken());
        assert_eq!(cork.sending(false), ReplySend::Cork);
        // The last call is taken (and its worker writes) before this reply is corked.
        assert!(cork.call_taken());
        assert!(cork.corked(), "nobody else is left to write it");
    }

    #[test]
    fn nothing_is_corked_while_the_pool_has_all_its_threads() {
        let cork = ReplyCork::default();
        cork.call_queued();
        cork.call_queued();
        assert!(!cork.call_taken());
        assert_eq!(cork.sending(true), ReplySend::Now);
    }

    #[test]
    fn the_worker_that_corks_the_capth_reply_writes() {
        let cork = ReplyCork::default();
        for _ in 0..=MAX_CORKED_REPLIES {
            cork.call_queued();
        }
        let writes: Vec<bool> = (0..MAX_CORKED_REPLIES)
            .map(|_| {
                assert!(!cork.call_taken());
                assert_eq!(cork.sending(false), ReplySend::Cork);
                cork.corked()
            })
            .collect();
        let mut expected = vec![false; MAX_CORKED_REPLIES - 1];
        expected.push(true);
        assert_eq!(writes, expected);
        assert_eq!(cork.sending(false), ReplySend::Cork);
        assert!(!cork.corked(), "the count starts again after a write");
    }
}
