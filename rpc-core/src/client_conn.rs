//! One client connection's event handler: matches replies to pending calls by sequence id.
//!
//! Runs on the client event loop. Completers run outside the table's lock, so a slow
//! completion (decoding a large reply) never holds up a thread starting a new call, and under
//! `catch_unwind`: the loop serves every client of the process, so a panic in user code run
//! by a completer (a reply type's `Deserialize`) must not end it.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use rpc_transport::{CloseReason, Connection, Frame, FrameHandler, FrameKind, TransportError};

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
        match frame.kind {
            // Seq 0 is no call's: the server speaks of the connection (say, refused at its
            // connection limit). Every call, pending or later, fails with what it said.
            FrameKind::Error if frame.seq == 0 => {
                let err = RpcError::from_error_body("", &frame.body);
                let failed = lock(&self.pending).end(Ended::Refused(err));
                complete_all(failed);
            }
            FrameKind::Response | FrameKind::Error => {
                let completer = lock(&self.pending).take_for_reply(frame.seq);
                if let Some(complete) = completer {
                    complete_safely(complete, Ok(frame));
                }
            }
            FrameKind::Ping => {
                let _ = conn.send_frame(&Frame::new(FrameKind::Pong, frame.seq));
            }
            FrameKind::GoAway => lock(&self.pending).go_away(),
            // Requests, cancels and pongs mean nothing to a client; ignore them.
            _ => {}
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
            let completer = lock(&self.pending).remove(*seq);
            if let Some(complete) = completer {
                complete_safely(complete, Err(RpcError::from(error.clone())));
            }
        }
    }

    fn handle_timer(&mut self, conn: &Connection, now: Instant) -> Option<Instant> {
        let (expired, next) = {
            let mut pending = lock(&self.pending);
            (pending.take_expired(now), pending.next_deadline())
        };
        for (seq, complete, err) in expired {
            // Advisory: the server skips the call if no worker has started it.
            let _ = conn.send_frame(&Frame::new(FrameKind::Cancel, seq));
            complete_safely(complete, Err(err));
        }
        next
    }

    fn handle_close(&mut self, _conn: &Connection, reason: CloseReason) {
        let ended = match reason {
            CloseReason::Local => Ended::Closed,
            CloseReason::PeerClosed => Ended::Lost(RpcError::ConnectionLost { cause: None }),
            CloseReason::Error(err) if err.is_protocol_violation() => {
                Ended::Lost(RpcError::Protocol {
                    detail: format!("server sent bad frames: {err}"),
                })
            }
            CloseReason::Error(err) => Ended::Lost(RpcError::ConnectionLost { cause: Some(err) }),
            _ => Ended::Lost(RpcError::ConnectionLost { cause: None }),
        };
        let failed = lock(&self.pending).end(ended);
        complete_all(failed);
    }
}

fn complete_all(calls: Vec<(Completer, RpcError)>) {
    for (complete, err) in calls {
        complete_safely(complete, Err(err));
    }
}

/// Runs a completer on the loop thread; a panic in it is contained. The completers of `go`
/// and `go_with` catch a panicking `Deserialize` themselves and deliver it as an error; this
/// guards the loop against anything else (a `Drop` that panics, say), whose call then
/// completes by its own deadline.
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
