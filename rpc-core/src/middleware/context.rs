//! `CallContext`: what the server knows of the call running on this thread (method, peer,
//! sequence id, metadata, trace ids), for middleware and for handlers.
//!
//! The server sets it around each handler, on whichever thread runs it (a pool worker, or the
//! event loop for inline services), so a handler reads it with [`CallContext::current`]
//! without any change to its signature: a method stays `fn(Args) -> Result<Reply, _>`.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use rpc_transport::Metadata;

use crate::middleware::trace::TraceIds;

/// One call as the server received it. Cheap to clone: the name and metadata share the
/// request's buffer.
#[derive(Debug, Clone)]
pub struct CallContext {
    name: Bytes,
    metadata: Bytes,
    peer: SocketAddr,
    seq: u64,
    received: Instant,
}

impl CallContext {
    pub(crate) fn new(
        name: Bytes,
        metadata: Bytes,
        peer: SocketAddr,
        seq: u64,
        received: Instant,
    ) -> Self {
        CallContext {
            name,
            metadata,
            peer,
            seq,
            received,
        }
    }

    /// The context of the call this thread is running, if it is running one (inside a
    /// handler or a server middleware).
    pub fn current() -> Option<CallContext> {
        CURRENT.with(|current| current.borrow().clone())
    }

    /// The `Service.Method` called.
    pub fn method(&self) -> &str {
        // The server dispatches only requests whose name is UTF-8.
        std::str::from_utf8(&self.name).unwrap_or("")
    }

    /// The client's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The call's sequence id on its connection.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// When the server read the request.
    pub fn received(&self) -> Instant {
        self.received
    }

    /// The request's metadata section (empty unless a client middleware wrote some).
    pub fn metadata(&self) -> Metadata<'_> {
        Metadata::new(&self.metadata)
    }

    /// The trace and span ids the caller sent (see [`crate::middleware::Tracing`]), if any.
    pub fn trace(&self) -> Option<TraceIds> {
        TraceIds::from_metadata(self.metadata())
    }

    /// Runs `f` with this context as the current one, restoring the previous one after (also
    /// if `f` panics: the guard restores it while unwinding).
    pub(crate) fn enter<T>(self, f: impl FnOnce() -> T) -> T {
        let previous = CURRENT.with(|current| current.replace(Some(self)));
        let _restore = Restore(previous);
        f()
    }
}

/// Puts back the context that was current before [`CallContext::enter`].
struct Restore(Option<CallContext>);

impl Drop for Restore {
    fn drop(&mut self) {
        let previous = self.0.take();
        CURRENT.with(|current| *current.borrow_mut() = previous);
    }
}

thread_local! {
    /// The call this thread is running, if any.
    static CURRENT: RefCell<Option<CallContext>> = const { RefCell::new(None) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(seq: u64) -> CallContext {
        let peer = SocketAddr::from(([127, 0, 0, 1], 9));
        CallContext::new(
            Bytes::from_static(b"Arith.Multiply"),
            Bytes::new(),
            peer,
            seq,
            Instant::now(),
        )
    }

    #[test]
    fn the_context_is_current_only_inside_enter_and_nests() {
        assert!(CallContext::current().is_none());
        context(1).enter(|| {
            assert_eq!(CallContext::current().map(|c| c.seq()), Some(1));
            context(2).enter(|| assert_eq!(CallContext::current().map(|c| c.seq()), Some(2)));
            assert_eq!(CallContext::current().map(|c| c.seq()), Some(1));
            assert_eq!(CallContext::current().unwrap().method(), "Arith.Multiply");
        });
        assert!(CallContext::current().is_none());
    }

    #[test]
    fn a_panic_inside_enter_still_clears_the_context() {
        let caught = std::panic::catch_unwind(|| context(3).enter(|| panic!("in a handler")));
        assert!(caught.is_err());
        assert!(CallContext::current().is_none());
    }
}
