//! Pooled calls held back from running while their connection's unread replies are at the
//! server's cap (`ServerConfig::max_queued_bytes`).
//!
//! The loop stops reading a connection whose replies pass the cap, reckoning each call in
//! flight as large as the largest reply so far; but one read can hold hundreds of small
//! requests for large replies before any reply says how large they are, and every one of
//! them, once run, queues its reply: a thousand requests for a mebibyte each queued a
//! gigabyte for a peer that read none. So a worker that takes a call of a connection whose
//! queue is past the cap, after writing what the socket takes (so that replies this side has
//! not written yet do not count), parks the call here instead of running it (the worker goes
//! on to other work: it never waits for a peer). The connection's loop looks at its parked
//! calls before it reads and on a timer every `PARKED_RECHECK` while any are parked: once
//! the queue is under the cap it sends them back to the pool; until then it answers those
//! whose deadline passed (or whose caller cancelled them) `DeadlineExceeded`, so that a peer
//! that never reads does not hold the server's places for calls in flight past its calls'
//! deadlines. The replies queued are then bounded by the cap plus one reply per worker that
//! passed the check at once. A parked call is no activity for the idle timeout (its
//! connection waits for the peer to read). When the connection closes, parked calls are
//! dropped unrun, counted out of flight as dropped replies.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use super::InFlight;

/// The parked calls of one connection.
#[derive(Default)]
pub(super) struct ParkedCalls {
    calls: Mutex<Vec<InFlight>>,
    /// How many are parked, read without the lock before every frame the loop reads.
    count: AtomicUsize,
}

impl ParkedCalls {
    /// Holds `call` back until [`ParkedCalls::take_all`].
    pub(super) fn park(&self, call: InFlight) {
        let mut calls = self.lock();
        calls.push(call);
        self.count.store(calls.len(), Ordering::SeqCst);
    }

    /// True if no call is parked.
    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many calls are parked.
    pub(super) fn len(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Every parked call, in the order parked; none is left parked.
    pub(super) fn take_all(&self) -> Vec<InFlight> {
        let mut calls = self.lock();
        self.count.store(0, Ordering::SeqCst);
        std::mem::take(&mut *calls)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<InFlight>> {
        // Each update is one push or one take: a panic cannot leave the list half done.
        self.calls.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
