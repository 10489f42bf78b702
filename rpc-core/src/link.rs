//! `Link`: what a [`crate::Client`] sends its frames through: a socket connection on a client
//! event loop, or an end of a simulated network ([`crate::sim`]).
//!
//! The client uses only the handful of operations below. Each is one `match` on the two
//! variants, so the socket path costs one branch and keeps its behaviour; the simulated path
//! lives in [`crate::sim::end`].

use std::net::SocketAddr;
use std::time::Instant;

use rpc_transport::{Connection, Frame, ReadHere, TransportError};

use crate::sim::SimLink;

/// Where a client's frames go.
pub(crate) enum Link {
    /// A TCP connection served by the shared client event loop.
    Socket(Connection),
    /// A client end of a simulated network.
    Sim(SimLink),
}

impl Link {
    /// Sends one encoded frame now, from the calling thread.
    pub(crate) fn send(&self, bytes: &[u8]) -> Result<(), TransportError> {
        match self {
            Link::Socket(conn) => conn.send(bytes),
            Link::Sim(end) => end.send(bytes),
        }
    }

    /// Sends one encoded frame with others of the same loop turn (the simulation has no
    /// batching: the same as [`Link::send`]).
    pub(crate) fn send_batched(&self, bytes: &[u8]) -> Result<(), TransportError> {
        match self {
            Link::Socket(conn) => conn.send_batched(bytes),
            Link::Sim(end) => end.send(bytes),
        }
    }

    /// Queues one encoded frame until the next [`Link::flush`] (the simulation has no
    /// queue: the same as [`Link::send`]).
    pub(crate) fn send_corked(&self, bytes: &[u8]) -> Result<(), TransportError> {
        match self {
            Link::Socket(conn) => conn.send_corked(bytes),
            Link::Sim(end) => end.send(bytes),
        }
    }

    /// Writes what [`Link::send_corked`] queued, now, from the calling thread.
    pub(crate) fn flush(&self) -> Result<(), TransportError> {
        match self {
            Link::Socket(conn) => conn.flush(),
            Link::Sim(_) => Ok(()),
        }
    }

    /// Reads the connection on this thread until a frame arrives, `deadline` passes or
    /// `stop` says so (see [`Connection::read_here`]); a simulated end is always read
    /// elsewhere.
    pub(crate) fn read_here(
        &self,
        deadline: Instant,
        stop: &dyn Fn() -> bool,
        on_frame: &mut dyn FnMut(Frame),
    ) -> ReadHere {
        match self {
            Link::Socket(conn) => conn.read_here(deadline, stop, on_frame),
            Link::Sim(_) => ReadHere::Elsewhere,
        }
    }

    /// True if the link runs TLS (never a simulated end).
    pub(crate) fn is_tls(&self) -> bool {
        match self {
            Link::Socket(conn) => conn.is_tls(),
            Link::Sim(_) => false,
        }
    }

    /// Sends a frame without a body (a ping or a cancel).
    pub(crate) fn send_frame(&self, frame: &Frame) -> Result<(), TransportError> {
        match self {
            Link::Socket(conn) => conn.send_frame(frame),
            Link::Sim(end) => end.send_frame(frame),
        }
    }

    /// Closes the link; pending calls fail with [`crate::RpcError::Shutdown`]. Idempotent.
    pub(crate) fn close(&self) {
        match self {
            Link::Socket(conn) => conn.close(),
            Link::Sim(end) => end.close(),
        }
    }

    /// True once the link is closed.
    pub(crate) fn is_closed(&self) -> bool {
        match self {
            Link::Socket(conn) => conn.is_closed(),
            Link::Sim(end) => end.is_closed(),
        }
    }

    /// The server's address (a made-up one for a simulated server).
    pub(crate) fn peer_addr(&self) -> SocketAddr {
        match self {
            Link::Socket(conn) => conn.peer_addr(),
            Link::Sim(end) => end.peer_addr(),
        }
    }

    /// Bytes sent but not yet written (always 0 for a simulated end).
    pub(crate) fn queued_len(&self) -> usize {
        match self {
            Link::Socket(conn) => conn.queued_len(),
            Link::Sim(_) => 0,
        }
    }

    /// Asks for the pending calls' deadlines to be checked at `at`.
    pub(crate) fn schedule_timer(&self, at: Instant) {
        match self {
            Link::Socket(conn) => conn.schedule_timer(at),
            Link::Sim(end) => end.schedule_timer(at),
        }
    }
}
