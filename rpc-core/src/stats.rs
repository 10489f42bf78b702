//! Server statistics: what a server holds right now and what it has refused, for monitoring
//! and for tests that check everything returns to zero after a fault.
//!
//! The counters are atomics updated where things happen (accept, dispatch, reply, close);
//! [`ServerStats`] is a snapshot read with [`crate::Server::stats`].

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::error_body::ErrorCode;

/// A snapshot of a server's state and counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections open now.
    pub open_connections: usize,
    /// Requests accepted for dispatch and not yet answered.
    pub in_flight_calls: usize,
    /// Handlers running now on the worker pool (a write of a connection's corked replies,
    /// which the pool also runs, counts as one while it lasts).
    pub running_handlers: usize,
    /// The most handlers that ever ran at once (counted as `running_handlers` is).
    pub max_running_handlers: usize,
    /// Reply bytes queued on open connections (native and jsonrpc) and not yet written.
    pub queued_outbound_bytes: usize,
    /// Connections accepted since the server started.
    pub accepted_connections: u64,
    /// Connections refused because `max_connections` were open: each was told so with an
    /// error frame (seq 0, code `Throttled`), then closed.
    pub refused_connections: u64,
    /// Connections closed because the peer broke the framing (bad magic, version, kind,
    /// lengths over the limits, a truncated frame).
    pub frame_errors: u64,
    /// Connections closed because a frame took longer than the frame timeout to arrive.
    pub frame_timeouts: u64,
    /// Requests ignored because their sequence id was already in flight on the connection.
    pub duplicate_requests: u64,
    /// Requests answered with an error, by error code (index = code; codes 1 to 12 are used).
    pub call_errors: [u64; ERROR_CODE_SLOTS],
    /// Replies that could not be written because the connection had closed.
    pub dropped_replies: u64,
    /// Times a connection stopped being read because its unread replies passed the cap.
    pub read_pauses: u64,
    /// Connections closed by the idle timeout.
    pub idle_closes: u64,
    /// Connections closed because no whole frame arrived within the first-frame timeout.
    pub first_frame_timeouts: u64,
    /// Cancel frames received for calls in flight (each such call is skipped if no worker
    /// has started it).
    pub cancels: u64,
    /// TLS connections closed because TLS failed: a handshake refused (a certificate not
    /// trusted or missing, bytes that are not TLS) or not finished within the frame
    /// timeout, or a record that did not decrypt. A peer that closes during the handshake
    /// is not counted.
    pub tls_errors: u64,
    /// Frames (requests, mostly) read by a pool worker after it answered a call, instead of
    /// by the event loop ([`crate::ServerConfig::worker_reads`]).
    pub frames_read_by_workers: u64,
    /// Times an event loop went to a new thread because a pooled call its thread ran after
    /// its turn ran long ([`crate::ServerConfig::loop_runs_calls`]); each also keeps that
    /// call's method off the loops from then on.
    pub loop_hand_offs: u64,
}

impl ServerStats {
    /// Requests answered with error `code`.
    pub fn call_errors(&self, code: ErrorCode) -> u64 {
        self.call_errors
            .get(usize::from(code.as_u16()))
            .copied()
            .unwrap_or(0)
    }
}

/// Calls answered by one method, from [`crate::Server::method_stats`] (Go: the call counts
/// on the `/debug/rpc` page).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MethodStats {
    /// The service's registered name.
    pub service: String,
    /// The method's name (the part after the dot).
    pub method: String,
    /// Calls that ran (or were dispatched and then skipped as expired or cancelled) and were
    /// answered; requests refused before dispatch (unknown names, caps, shutdown) are not
    /// counted.
    pub calls: u64,
    /// Of `calls`, those answered with an error: the method's own, an undecodable argument,
    /// a panic, an expired deadline, a reply over the limits.
    pub errors: u64,
}

/// Slots in [`ServerStats::call_errors`]: one per error code this version sends, plus zero.
pub const ERROR_CODE_SLOTS: usize = 13;

/// The live counters behind [`ServerStats`].
#[derive(Debug, Default)]
pub(crate) struct StatsCounters {
    pub(crate) open_connections: AtomicUsize,
    pub(crate) in_flight_calls: AtomicUsize,
    pub(crate) accepted_connections: AtomicU64,
    pub(crate) refused_connections: AtomicU64,
    pub(crate) frame_errors: AtomicU64,
    pub(crate) frame_timeouts: AtomicU64,
    pub(crate) duplicate_requests: AtomicU64,
    call_errors: [AtomicU64; ERROR_CODE_SLOTS],
    pub(crate) dropped_replies: AtomicU64,
    pub(crate) read_pauses: AtomicU64,
    pub(crate) idle_closes: AtomicU64,
    pub(crate) first_frame_timeouts: AtomicU64,
    pub(crate) cancels: AtomicU64,
    pub(crate) tls_errors: AtomicU64,
    pub(crate) frames_read_by_workers: AtomicU64,
    /// Shared with each loop's `LoopCalls`, which counts its hand-offs.
    pub(crate) loop_hand_offs: Arc<AtomicU64>,
    /// Response bytes queued on jsonrpc connections (each queue adds its own).
    pub(crate) jsonrpc_queued_bytes: Arc<AtomicUsize>,
}

impl StatsCounters {
    /// Counts one request answered with `code`.
    pub(crate) fn count_call_error(&self, code: ErrorCode) {
        if let Some(slot) = self.call_errors.get(usize::from(code.as_u16())) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Adds one to `counter`.
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters' values now; the caller fills in what lives elsewhere (pool, queues).
    pub(crate) fn snapshot(&self) -> ServerStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ServerStats {
            open_connections: self.open_connections.load(Ordering::SeqCst),
            in_flight_calls: self.in_flight_calls.load(Ordering::SeqCst),
            accepted_connections: load(&self.accepted_connections),
            refused_connections: load(&self.refused_connections),
            frame_errors: load(&self.frame_errors),
            frame_timeouts: load(&self.frame_timeouts),
            duplicate_requests: load(&self.duplicate_requests),
            call_errors: std::array::from_fn(|code| load(&self.call_errors[code])),
            dropped_replies: load(&self.dropped_replies),
            read_pauses: load(&self.read_pauses),
            idle_closes: load(&self.idle_closes),
            first_frame_timeouts: load(&self.first_frame_timeouts),
            cancels: load(&self.cancels),
            tls_errors: load(&self.tls_errors),
            frames_read_by_workers: load(&self.frames_read_by_workers),
            loop_hand_offs: load(&self.loop_hand_offs),
            ..ServerStats::default()
        }
    }
}
