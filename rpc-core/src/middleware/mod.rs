//! Middleware: code that runs around every call, on the client and on the server.
//!
//! ```text
//!  client                                              server
//!  ──────                                              ──────
//!  call ─► before_call (each, in order) ─► request ─►  handle (first) ─► handle (second) ─► handler
//!          (may add metadata or refuse)                  │ next.run()        │ next.run()
//!  result ◄─ after_call (each) ◄──────────── reply ◄──── ◄──────────────────◄┘
//! ```
//!
//! A server middleware wraps the rest of the chain and the handler: it calls
//! [`Next::run`] to go on, or returns an error instead (a rate limiter answering `Throttled`).
//! It runs where the handler runs (a pool worker, or the loop for inline services), under the
//! same `catch_unwind`, with the call's [`CallContext`] current. A client middleware sees a
//! call before it is sent ([`ClientMiddleware::before_call`]: add metadata, or refuse it) and
//! after it completed ([`ClientMiddleware::after_call`]: on the caller's thread or the client
//! event loop, so it must be quick and never block).
//!
//! Three come with netrpc, one file each: [`Logging`] (method, status, latency), [`RateLimit`]
//! (a token bucket) and [`Tracing`] (trace and span ids in the frame metadata, visible to
//! handlers through [`CallContext::trace`]).

mod context;
mod logging;
mod rate_limit;
mod trace;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use rpc_transport::MetadataBuilder;

use crate::catch_panic::catch_panic;
use crate::error::RpcError;
use crate::service::DispatchError;

pub use context::CallContext;
pub use logging::{LogRecord, Logging, Side};
pub use rate_limit::{RateLimit, TokenBucket};
pub use trace::{TraceIds, Tracing, PARENT_SPAN_ID, SPAN_ID, TRACE_ID};

/// Runs around every call a server handles. Register with
/// [`crate::ServerBuilder::middleware`]; the first registered runs outermost.
pub trait ServerMiddleware: fmt::Debug + Send + Sync + 'static {
    /// Handles `call`: call `next.run()` to run the rest of the chain and the handler, and
    /// return its result (perhaps after looking at it), or return an error without calling
    /// it; the error becomes the caller's reply.
    ///
    /// # Errors
    ///
    /// The error to answer the call with, or the one `next.run()` returned.
    fn handle(&self, call: &CallContext, next: Next<'_>) -> Result<(), DispatchError>;
}

/// The rest of a server middleware chain, ending in the handler.
pub struct Next<'a> {
    rest: &'a [Arc<dyn ServerMiddleware>],
    call: &'a CallContext,
    handler: &'a mut dyn FnMut() -> Result<(), DispatchError>,
}

impl Next<'_> {
    /// Runs the next middleware, or the handler after the last one.
    ///
    /// # Errors
    ///
    /// What the rest of the chain or the handler returned.
    pub fn run(self) -> Result<(), DispatchError> {
        match self.rest.split_first() {
            Some((first, rest)) => first.handle(
                self.call,
                Next {
                    rest,
                    call: self.call,
                    handler: self.handler,
                },
            ),
            None => (self.handler)(),
        }
    }
}

impl fmt::Debug for Next<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Next")
            .field("remaining", &self.rest.len())
            .finish_non_exhaustive()
    }
}

/// Runs `handler` with `call` current ([`CallContext::current`]) inside `chain`: how every
/// call a server runs meets its middleware, whatever listener it came through. On a pool
/// worker, the whole of it counts as the handler ([`crate::pool::as_handler`]): a
/// middleware that waits may need another call's thread as much as a handler that does.
pub(crate) fn run_in_middleware(
    chain: &[Arc<dyn ServerMiddleware>],
    call: CallContext,
    handler: &mut dyn FnMut() -> Result<(), DispatchError>,
) -> Result<(), DispatchError> {
    crate::pool::as_handler(|| {
        if chain.is_empty() {
            return call.enter(handler);
        }
        call.clone()
            .enter(|| run_server_chain(chain, &call, handler))
    })
}

/// Runs `handler` inside `chain` for `call`.
fn run_server_chain(
    chain: &[Arc<dyn ServerMiddleware>],
    call: &CallContext,
    handler: &mut dyn FnMut() -> Result<(), DispatchError>,
) -> Result<(), DispatchError> {
    Next {
        rest: chain,
        call,
        handler,
    }
    .run()
}

/// Sees every call a client makes, before it is sent and after it completes. Register with
/// [`crate::ClientBuilder::middleware`]; they run in the order registered.
pub trait ClientMiddleware: fmt::Debug + Send + Sync + 'static {
    /// Called before the call is encoded and sent; may add metadata. Returning an error
    /// fails the call at once with it (nothing is sent, and no `after_call` follows). It
    /// runs on the caller's thread, inside `call`, `go`, `go_with` or a `Batch`'s calls: a
    /// panic in it is not caught, and reaches the caller as a panic of its own code would
    /// (nothing has been sent or registered by then, and the client goes on serving its
    /// other callers).
    ///
    /// # Errors
    ///
    /// The error the call fails with.
    fn before_call(&self, call: &mut OutgoingCall<'_>) -> Result<(), RpcError> {
        let _ = call;
        Ok(())
    }

    /// Called once the call completed (reply, error, timeout, connection loss), on the
    /// caller's thread or the client event loop: keep it quick and never block. A panic here
    /// is caught: the other middleware's `after_call` still run, and the call's result is
    /// delivered as it came.
    fn after_call(&self, call: &CallRecord<'_>) {
        let _ = call;
    }
}

/// A call about to be sent, as a [`ClientMiddleware`] sees it.
#[derive(Debug)]
pub struct OutgoingCall<'a> {
    method: &'a str,
    peer: SocketAddr,
    metadata: MetadataBuilder,
}

impl<'a> OutgoingCall<'a> {
    /// The `Service.Method` called.
    pub fn method(&self) -> &str {
        self.method
    }

    /// The server's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Adds a metadata pair to the request (sent in the frame's metadata section).
    ///
    /// # Panics
    ///
    /// If `key` is over 255 bytes or `value` over 65,535 (programming errors, as in
    /// [`MetadataBuilder::insert`]).
    pub fn insert_metadata(&mut self, key: &str, value: &[u8]) {
        self.metadata = std::mem::take(&mut self.metadata).insert(key, value);
    }
}

/// A completed call, as [`ClientMiddleware::after_call`] sees it.
#[derive(Debug)]
pub struct CallRecord<'a> {
    /// The `Service.Method` called.
    pub method: &'a str,
    /// The server's address.
    pub peer: SocketAddr,
    /// When the call started (before `before_call`).
    pub started: Instant,
    /// `Ok` if a reply came back, or the call's error (the method's own error included).
    pub outcome: Result<(), &'a RpcError>,
}

/// Runs every `before_call` of `chain`; returns the metadata section they built.
pub(crate) fn run_before_call(
    chain: &[Arc<dyn ClientMiddleware>],
    method: &str,
    peer: SocketAddr,
) -> Result<Bytes, RpcError> {
    let mut call = OutgoingCall {
        method,
        peer,
        metadata: MetadataBuilder::new(),
    };
    for middleware in chain {
        middleware.before_call(&mut call)?;
    }
    Ok(call.metadata.build())
}

/// Runs every `after_call` of `chain`. A panic in one is contained: the others still run,
/// and the call's completion, which runs after them, is still delivered.
pub(crate) fn run_after_call(chain: &[Arc<dyn ClientMiddleware>], call: &CallRecord<'_>) {
    for middleware in chain {
        let _ = catch_panic(|| middleware.after_call(call));
    }
}
