//! One client connection's event handler: matches replies to pending calls by sequence id.
//! The matching lives in free functions ([`handle_reply_frame`], [`expire_calls`], ...) that
//! the simulated network's client ends ([`crate::sim`]) call too.
//!
//! Runs on the client event loop. Completers run outside the table's lock, so a slow
//! completion (decoding a large reply) never holds up a thread starting a new call, and under
//! `catch_unwind`: the loop serves every client of the process, so a panic in user code run
//! by a completer (a reply type's `Deserialize`) must not end it.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::BytesMut;
use rpc_transport::{
    CloseReason, Connection, Frame, FrameHandler, FrameKind, FrameLimits, TransportError,
};

use crate::catch_panic::catch_panic;
use crate::error::RpcError;
use crate::pending::{Completer, Ended, PendingCalls};

/// The [`FrameHandler`] of a client connection.
pub(crate) struct ClientConn {
    pending: Arc<Mutex<PendingCalls>>,
}

impl ClientConn {
    pub(crate) fn new(pending: Arc<Mutex<PendingCalls>>) -> Self {
        ClientConn { pending }
    }
}

impl FrameHandler for ClientConn {
    fn handle_frame(&mut self, conn: &Connection, frame: Frame) {
        if let Some(answer) = handle_reply_frame(&self.pending, frame) {
            // On the loop thread: the answers of a turn leave in one write at its end.
            queue_answer(&answer, conn.queued_len(), |bytes| conn.send_batched(bytes));
        }
    }

    fn handle_frame_error(&mut self, _conn: &Connection, error: &TransportError) {
        // A reply over this client's limit still names its call: that call fails with the
        // limit it broke; the others fail with the connection when it closes.
        if let TransportError::FrameTooLarge {
            seq,
            kind: FrameKind::Response | FrameKind::Error,
            ..
        } = error
        {
            fail_call(&self.pending, *seq, RpcError::from(error.clone()));
        }
    }

    fn handle_timer(&mut self, conn: &Connection, now: Instant) -> Option<Instant> {
        expire_calls(&self.pending, now, |seq| {
            // Advisory: the server skips the call if no worker has started it.
            let _ = conn.send_frame(&Frame::new(FrameKind::Cancel, seq));
        })
    }

    fn handle_close(&mut self, _conn: &Connection, reason: CloseReason) {
        let ended = match reason {
            CloseReason::Local => Ended::Closed,
            CloseReason::PeerClosed => Ended::Lost(RpcError::ConnectionLost { cause: None }),
            // The server's stream ended inside a frame: what a server killed while writing a
            // reply leaves. The connection is lost (retryable), not the protocol broken.
            CloseReason::Error(err @ TransportError::Truncated { .. }) => {
                Ended::Lost(RpcError::ConnectionLost { cause: Some(err) })
            }
            CloseReason::Error(err) if err.is_protocol_violation() => {
                Ended::Lost(RpcError::Protocol {
                    detail: format!("server sent bad frames: {err}"),
                })
            }
            CloseReason::Error(err) => Ended::Lost(RpcError::ConnectionLost { cause: Some(err) }),
            _ => Ended::Lost(RpcError::ConnectionLost { cause: None }),
        };
        end_calls(&self.pending, ended);
    }
}

/// Hands a frame from the server to the pending-call table: a reply completes its call, an
/// error under seq 0 or a go-away speaks of the whole connection. Returns the frame to send
/// back, if any (a pong for a ping). Used by the socket handler above and by the simulated
/// network ([`crate::sim`]), so both match replies the same way.
pub(crate) fn handle_reply_frame(pending: &Mutex<PendingCalls>, frame: Frame) -> Option<Frame> {
    match frame.kind {
        // Seq 0 is no call's: the server speaks of the connection (say, refused at its
        // connection limit). Every call, pending or later, fails with what it said.
        FrameKind::Error if frame.seq == 0 => {
            let err = RpcError::from_error_body("", &frame.body);
            let failed = lock(pending).end(Ended::Refused(err));
            complete_all(failed);
        }
        FrameKind::Response | FrameKind::Error => {
            let completer = lock(pending).take_for_reply(frame.seq);
            if let Some(complete) = completer {
                complete_safely(complete, Ok(frame));
            }
        }
        FrameKind::Ping => return Some(Frame::new(FrameKind::Pong, frame.seq)),
        FrameKind::GoAway => lock(pending).go_away(frame.seq),
        // Requests, cancels and pongs mean nothing to a client; ignore them.
        _ => {}
    }
    None
}

/// Most bytes that may wait unsent for a pong to be sent: a server that pings without
/// reading its pongs gets no more of them, so the client's queue cannot grow with its pings
/// (40 MB of pings left 38 MB of pongs queued before: `tests/bad_input.rs`). Far above what
/// a server reading its socket ever leaves queued for a pong.
const MAX_UNSENT_FOR_PONG: usize = 64 * 1024;

/// Whether to send what [`handle_reply_frame`] answered (a pong) on a connection with
/// `unsent` bytes queued: not while the server leaves more than [`MAX_UNSENT_FOR_PONG`]
/// unread. (A failed send of the answer means the connection is closing; its loop is at
/// it.)
fn may_answer(unsent: usize) -> bool {
    unsent <= MAX_UNSENT_FOR_PONG
}

/// Queues what [`handle_reply_frame`] answered (a pong) on a connection with `unsent` bytes
/// queued, with `send` (batched or corked: a write per pong let a server pinging as fast as
/// it could keep the client loop writing for seconds, `tests/bad_input.rs`), unless
/// [`may_answer`] says the server reads too little. True if it was queued. (A failed send
/// means the connection is closing; its loop is at it.)
pub(crate) fn queue_answer(
    answer: &Frame,
    unsent: usize,
    send: impl FnOnce(&[u8]) -> Result<(), TransportError>,
) -> bool {
    if !may_answer(unsent) {
        return false;
    }
    let mut bytes = BytesMut::with_capacity(answer.encoded_len());
    // A pong has no name, metadata or body: no limit refuses it.
    answer.encode(&mut bytes, &FrameLimits::default()).is_ok() && send(&bytes).is_ok()
}

/// Fails call `seq` with `err`, if it is still pending.
pub(crate) fn fail_call(pending: &Mutex<PendingCalls>, seq: u64, err: RpcError) {
    let completer = lock(pending).remove(seq);
    if let Some(complete) = completer {
        complete_safely(complete, Err(err));
    }
}

/// Fails every call whose deadline is at or before `now` with a timeout, telling `cancel`
/// each one's seq first; returns the next deadline to wake up for.
pub(crate) fn expire_calls(
    pending: &Mutex<PendingCalls>,
    now: Instant,
    mut cancel: impl FnMut(u64),
) -> Option<Instant> {
    let (expired, next) = {
        let mut pending = lock(pending);
        (pending.take_expired(now), pending.next_deadline())
    };
    for (seq, complete, err) in expired {
        cancel(seq);
        complete_safely(complete, Err(err));
    }
    next
}

/// Ends the connection's table: every pending call fails with what `ended` says.
pub(crate) fn end_calls(pending: &Mutex<PendingCalls>, ended: Ended) {
    let failed = lock(pending).end(ended);
    complete_all(failed);
}

fn complete_all(calls: Vec<(Completer, RpcError)>) {
    for (complete, err) in calls {
        complete_safely(complete, Err(err));
    }
}

/// Runs a completer on the loop thread; a panic in it is contained. The completers catch
/// the panics of the user code they run themselves (a reply type's `Deserialize`, delivered
/// as an error; a client middleware's `after_call`, after which the result is delivered as
/// it came); this guards the loop against anything else (a `Drop` that panics, say), whose
/// completion is then lost.
fn complete_safely(complete: Completer, result: Result<Frame, RpcError>) {
    let _ = catch_panic(|| complete(result));
}

/// Locks the table. Completers run outside the lock, so it is never poisoned by one; a
/// poisoned lock would still hold a consistent table (every update is one map operation).
pub(crate) fn lock(pending: &Mutex<PendingCalls>) -> MutexGuard<'_, PendingCalls> {
    pending
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
