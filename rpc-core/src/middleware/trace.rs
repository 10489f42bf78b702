//! Trace and span ids carried in a request's metadata (`trace-id`, `span-id`,
//! `parent-span-id`, each 16 lowercase hex digits), and the client middleware that writes them.
//!
//! A call made by a handler (a server calling another server) continues its caller's trace:
//! same trace id, a new span id, and the caller's span as parent. Any other call starts a
//! new trace. The ids are random 64-bit numbers from [`crate::cluster::Rng`].

use std::fmt;
use std::sync::Mutex;

use rpc_transport::Metadata;

use crate::cluster::Rng;
use crate::error::RpcError;
use crate::middleware::context::CallContext;
use crate::middleware::{ClientMiddleware, OutgoingCall};

/// The ids that place one call in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceIds {
    /// The whole request tree's id, shared by every call made on its behalf.
    pub trace_id: u64,
    /// This call's id.
    pub span_id: u64,
    /// The span of the call this one was made from, if any.
    pub parent_span_id: Option<u64>,
}

impl TraceIds {
    /// Reads the ids from a metadata section; `None` if absent or malformed.
    pub fn from_metadata(metadata: Metadata<'_>) -> Option<TraceIds> {
        let id = |key: &str| metadata.get(key).and_then(parse_hex_id);
        Some(TraceIds {
            trace_id: id(TRACE_ID)?,
            span_id: id(SPAN_ID)?,
            parent_span_id: id(PARENT_SPAN_ID),
        })
    }
}

impl fmt::Display for TraceIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "trace {:016x} span {:016x}", self.trace_id, self.span_id)?;
        if let Some(parent) = self.parent_span_id {
            write!(f, " parent {parent:016x}")?;
        }
        Ok(())
    }
}

/// Client middleware that gives every call trace ids, continuing the trace of the server
/// call this thread is running, if any. The server side needs nothing: handlers and server
/// middleware read them with [`CallContext::trace`].
#[derive(Debug)]
pub struct Tracing {
    /// Guards the generator of new ids.
    rng: Mutex<Rng>,
}

impl Tracing {
    /// Tracing with ids from a generator seeded from the clock.
    pub fn new() -> Self {
        Tracing::with_rng(Rng::from_entropy())
    }

    /// Tracing with ids from `rng` (a fixed seed gives fixed ids, for tests).
    pub fn with_rng(rng: Rng) -> Self {
        Tracing {
            rng: Mutex::new(rng),
        }
    }

    fn next_id(&self) -> u64 {
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        // Zero reads as "no id" in many tracing systems: skip it.
        loop {
            let id = rng.next_u64();
            if id != 0 {
                return id;
            }
        }
    }
}

impl Default for Tracing {
    fn default() -> Self {
        Tracing::new()
    }
}

impl ClientMiddleware for Tracing {
    fn before_call(&self, call: &mut OutgoingCall<'_>) -> Result<(), RpcError> {
        let parent = CallContext::current().and_then(|context| context.trace());
        let ids = TraceIds {
            trace_id: parent.map_or_else(|| self.next_id(), |p| p.trace_id),
            span_id: self.next_id(),
            parent_span_id: parent.map(|p| p.span_id),
        };
        call.insert_metadata(TRACE_ID, format!("{:016x}", ids.trace_id).as_bytes());
        call.insert_metadata(SPAN_ID, format!("{:016x}", ids.span_id).as_bytes());
        if let Some(parent) = ids.parent_span_id {
            call.insert_metadata(PARENT_SPAN_ID, format!("{parent:016x}").as_bytes());
        }
        Ok(())
    }
}

fn parse_hex_id(bytes: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(bytes).ok()?;
    (text.len() == 16)
        .then(|| u64::from_str_radix(text, 16).ok())
        .flatten()
}

/// Metadata key of the trace id.
pub const TRACE_ID: &str = "trace-id";
/// Metadata key of the span id.
pub const SPAN_ID: &str = "span-id";
/// Metadata key of the parent span id.
pub const PARENT_SPAN_ID: &str = "parent-span-id";

#[cfg(test)]
mod tests {
    use super::*;
    use rpc_transport::MetadataBuilder;

    #[test]
    fn ids_round_trip_through_metadata_and_bad_ones_are_ignored() {
        let section = MetadataBuilder::new()
            .insert(TRACE_ID, b"00000000000000ff")
            .insert(SPAN_ID, b"0123456789abcdef")
            .build();
        let ids = TraceIds::from_metadata(Metadata::new(&section)).unwrap();
        assert_eq!(
            (ids.trace_id, ids.span_id, ids.parent_span_id),
            (255, 0x0123_4567_89ab_cdef, None)
        );
        let bad = MetadataBuilder::new()
            .insert(TRACE_ID, b"xyz")
            .insert(SPAN_ID, b"0123456789abcdef")
            .build();
        assert!(TraceIds::from_metadata(Metadata::new(&bad)).is_none());
        assert!(TraceIds::from_metadata(Metadata::new(&[])).is_none());
    }
}
