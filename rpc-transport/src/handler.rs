//! `FrameHandler`: what the owner of a connection (a server or a client) does with its events.
//!
//! The event loop calls these methods on its own thread, so they must never block: a server
//! hands requests to worker threads, a client completes pending calls and returns.

use std::time::Instant;

use crate::connection::Connection;
use crate::error::TransportError;
use crate::frame::Frame;

/// Why a connection was closed, as told to [`FrameHandler::handle_close`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum CloseReason {
    /// This side called [`Connection::close`] (or [`Connection::close_when_flushed`]).
    Local,
    /// The peer closed the connection cleanly, between frames.
    PeerClosed,
    /// The connection failed: bad bytes from the peer, a timeout, or a socket error.
    Error(TransportError),
    /// The event loop that owned the connection shut down.
    LoopShutdown,
}

/// What to do when the peer shuts down its write side (EOF at a frame boundary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EofAction {
    /// Close the connection now.
    Close,
    /// Keep the connection open for writing: replies may still be sent (half-close). The owner
    /// closes it later, typically with [`Connection::close_when_flushed`].
    KeepWriting,
}

/// Receives one connection's frames and lifecycle events, on the event-loop thread.
pub trait FrameHandler: Send + 'static {
    /// A whole frame arrived.
    fn handle_frame(&mut self, conn: &Connection, frame: Frame);

    /// The peer's bytes broke the frame format or a limit. The connection will be closed once
    /// anything queued (say, an error frame sent from here) has been written.
    fn handle_frame_error(&mut self, conn: &Connection, error: &TransportError) {
        let _ = (conn, error);
    }

    /// Whether a connection whose peer broke the frame format or a limit (`error`) drains
    /// before it closes: once what was queued (say, an error frame sent from
    /// [`FrameHandler::handle_frame_error`]) is written, the connection is shut for writing,
    /// and what the peer still sends is read and dropped (not decrypted, over TLS) until its
    /// TCP end of stream, for [`crate::CLOSE_GRACE`] at most. Closing with the peer's bytes
    /// unread would reset the connection, and a peer still writing the rest of its message
    /// (a body over the limit) could then fail its write and never read the error frame.
    /// The handler is told of the close when the drain ends. The default, false, closes at
    /// once (a client, whose calls fail with the close, has no answer to wait for).
    fn drain_after_frame_error(&self, error: &TransportError) -> bool {
        let _ = error;
        false
    }

    /// The peer shut down its write side between frames. The default closes the connection.
    fn handle_eof(&mut self, conn: &Connection) -> EofAction {
        let _ = conn;
        EofAction::Close
    }

    /// A timer set with [`Connection::schedule_timer`] fired. Returns the next time to be
    /// called, if any.
    fn handle_timer(&mut self, conn: &Connection, now: Instant) -> Option<Instant> {
        let _ = (conn, now);
        None
    }

    /// Asked before each read and before each frame is handed over: `true` stops reading this
    /// connection for now (frames already read wait in the decoder), so a peer that sends
    /// requests but never reads the replies is held back by TCP instead of filling this side's
    /// memory (backpressure). The loop asks again as it writes the connection's queued bytes,
    /// on [`Connection::resume_reading`], and at least every [`crate::READ_PAUSE_RECHECK`].
    /// The default never pauses.
    fn pause_reading(&self, conn: &Connection) -> bool {
        let _ = conn;
        false
    }

    /// The connection is closed; no more events will follow.
    fn handle_close(&mut self, conn: &Connection, reason: CloseReason);
}
