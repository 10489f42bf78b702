//! A client end of the simulated network: what [`crate::Client`] holds instead of a socket
//! connection (the [`crate::link::Link::Sim`] variant).
//!
//! Sending decodes the client's encoded request back into a frame (the bytes a socket would
//! carry, so the wire format is exercised) and hands it to the network; replies come back
//! through the same reply matching as a socket client's ([`crate::client_conn`]).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rpc_transport::{Frame, FrameDecoder, FrameLimits, TransportError};

use crate::client_conn::end_calls;
use crate::pending::{Ended, PendingCalls};
use crate::sim::router::NetShared;

/// One client's end of the network: its name, its calls, and how to reach the network.
pub(crate) struct SimLink {
    net: Arc<NetShared>,
    end: Arc<SimEnd>,
}

/// What the network knows of one client attached to an end; events in flight hold it.
pub(crate) struct SimEnd {
    /// The end's name: part of every message's identity, so of its fate.
    pub(crate) name: String,
    /// The made-up address servers see as the caller's.
    pub(crate) addr: SocketAddr,
    /// The client's pending calls, completed by replies, failures and deadlines.
    pub(crate) pending: Arc<Mutex<PendingCalls>>,
    /// The client's frame limits, for decoding its requests and its replies.
    pub(crate) limits: FrameLimits,
    /// Set once the client is closed: replies for it are discarded.
    pub(crate) closed: AtomicBool,
    /// The instants of the deadline checks scheduled and not yet run: a check is scheduled
    /// only before the earliest of them, never once per call, nor again for an instant
    /// already queued (a far deadline re-armed after every short call's check piled up).
    pub(crate) timers: Mutex<BTreeSet<Instant>>,
}

impl SimLink {
    pub(crate) fn new(net: Arc<NetShared>, end: Arc<SimEnd>) -> Self {
        SimLink { net, end }
    }

    /// Sends one encoded frame into the network.
    pub(crate) fn send(&self, bytes: &[u8]) -> Result<(), TransportError> {
        let frame = decode_one(bytes, &self.end.limits)?;
        self.net.send_request(&self.end, frame)
    }

    /// Sends a frame without a body. Pings and cancels are advisory and the simulated server
    /// needs neither, so only their refusal after the network stopped is reported.
    pub(crate) fn send_frame(&self, frame: &Frame) -> Result<(), TransportError> {
        self.net.send_request(&self.end, frame.clone())
    }

    /// Closes this client's end: pending calls fail with `Shutdown`, later replies are
    /// discarded. The end's name, state and counter stay on the network. Idempotent.
    pub(crate) fn close(&self) {
        if !self.end.closed.swap(true, Ordering::SeqCst) {
            end_calls(&self.end.pending, Ended::Closed);
        }
    }

    /// True once closed, or once the network stopped.
    pub(crate) fn is_closed(&self) -> bool {
        self.end.closed.load(Ordering::SeqCst) || self.net.scheduler.is_stopped()
    }

    /// The made-up address of the server the end is connected to now; `0.0.0.0:0` if none.
    pub(crate) fn peer_addr(&self) -> SocketAddr {
        self.net.server_addr_of(&self.end.name)
    }

    /// Asks the network to check the pending calls' deadlines at `at`.
    pub(crate) fn schedule_timer(&self, at: Instant) {
        self.net.arm_timer(&self.end, at);
    }
}

impl SimEnd {
    /// True once the client attached to this end was closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

/// Decodes `bytes`, which hold exactly one encoded frame.
///
/// # Errors
///
/// The decoder's error if the frame breaks `limits` or is malformed; `Truncated` if the bytes
/// end before the frame does.
pub(crate) fn decode_one(bytes: &[u8], limits: &FrameLimits) -> Result<Frame, TransportError> {
    let mut decoder = FrameDecoder::new(*limits);
    decoder.handle_bytes(bytes);
    decoder.poll_frame()?.ok_or(TransportError::Truncated {
        buffered: bytes.len(),
    })
}
