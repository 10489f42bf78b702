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
//! whose deadline passed (or whose caller cancelled them) `DeadlineExceeded`, and those held
//! for the frame timeout since they arrived `Throttled`, so that a peer that never reads, or
//! reads a trickle, does not hold the server's places for calls in flight. The replies
//! queued are then bounded by the cap plus one reply per worker that passed the check at
//! once. A parked call is no activity for the idle timeout (its
//! connection waits for the peer to read). When the connection closes, parked calls are
//! dropped unrun, counted out of flight as dropped replies.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use rpc_transport::clock::deadline_after;

use crate::error_body::ErrorCode;
use crate::stats::StatsCounters;

use super::{encode_error, CallSite, ConnSite, InFlight, Sending, ServerJob};

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

impl ConnSite {
    /// The loop's look at the parked calls (see the module doc): sends them back to the pool
    /// once the peer has read enough; otherwise answers those that expired meanwhile, and
    /// returns when to look again while any stay parked.
    pub(super) fn check_parked(&self, now: Instant) -> Option<Instant> {
        if self.parked.is_empty() {
            return None;
        }
        if !self.replies_unread_at_cap() {
            self.release_parked();
            return None;
        }
        self.expire_parked();
        (!self.parked.is_empty()).then(|| deadline_after(now, PARKED_RECHECK))
    }

    /// True if the replies past the cap are the peer's to read: a pooled call must not add
    /// to them now ([`ConnSite::park`]). Writes what the socket takes first, so that replies
    /// this side has not written yet (corked, or queued a moment ago) do not count.
    pub(super) fn replies_unread_at_cap(&self) -> bool {
        if !self.replies_at_cap() {
            return false;
        }
        // A failed write means the connection is closing; the loop is at it.
        let _ = self.conn.flush();
        self.replies_at_cap()
    }

    /// Holds `call` back, unrun, until the connection's replies are under the cap again:
    /// the loop looks every [`PARKED_RECHECK`] while any call is parked (and before it
    /// reads), whatever else the connection does.
    pub(super) fn park(&self, call: InFlight) {
        self.parked.park(call);
        self.conn
            .schedule_timer(deadline_after(Instant::now(), PARKED_RECHECK));
        // A close, or a drain, between this worker's check and the park: the loop's own
        // looks may have come before the park, so look once more after it.
        if self.conn.is_closed() {
            self.abandon_parked();
        } else if !self.replies_at_cap() {
            self.release_parked();
        }
    }

    /// Answers the parked calls whose deadline passed or whose caller cancelled them while
    /// they waited (`DeadlineExceeded`, as a pooled call that waited too long), and those
    /// held for the frame timeout since they arrived (`Throttled`: a peer that reads a
    /// trickle keeps every write making progress, so no write timeout ends its connection,
    /// and a call may carry no deadline or a long one): they then hold no place among the
    /// server's calls in flight. The others stay parked.
    fn expire_parked(&self) {
        let hold_limit = self.server.config.limits.frame_timeout;
        for call in self.parked.take_all() {
            let site = CallSite {
                site: self,
                received: call.received,
                found: &call.found,
            };
            let seq = call.request.seq;
            let held = call.received.elapsed();
            let (code, reason) = match site.expired(&call.request) {
                Some(reason) => (ErrorCode::DeadlineExceeded, reason.to_owned()),
                None if hold_limit.is_some_and(|limit| held >= limit) => {
                    let cap = self.server.config.max_queued_bytes;
                    // Counted from its arrival (a call parked again after a release keeps
                    // its age), which includes any wait for a worker before it was parked.
                    let reason = format!(
                        "server held this call {held:?} since it arrived, unrun while the client \
                         left more than {cap} bytes of replies unread; try again later"
                    );
                    (ErrorCode::Throttled, reason)
                }
                None => {
                    self.parked.park(call);
                    continue;
                }
            };
            let reply = encode_error(seq, code, &reason);
            site.finish(seq, &reply, Some(code), Sending::FromWorker);
        }
    }

    /// Sends the parked calls back to the pool, each to be taken (and checked) anew.
    pub(super) fn release_parked(&self) {
        for call in self.parked.take_all() {
            self.calls.reply_cork.call_queued();
            self.server.pool.execute(ServerJob::Call(call));
        }
    }

    /// Drops the parked calls unrun (the connection has closed): counted out of flight, their
    /// replies counted dropped, as a reply that finds its connection gone is.
    pub(super) fn abandon_parked(&self) {
        let stats = &self.server.stats;
        for call in self.parked.take_all() {
            StatsCounters::bump(&stats.dropped_replies);
            stats.in_flight_calls.fetch_sub(1, Ordering::SeqCst);
            self.calls.finish(call.request.seq);
        }
    }
}

/// How often the loop looks at a connection's parked calls: whether the peer
/// has read enough for them to run, or they have expired. A look writes nothing unless the
/// socket takes it, so a peer that never reads costs a system call per look.
const PARKED_RECHECK: Duration = Duration::from_millis(10);
