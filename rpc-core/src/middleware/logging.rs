//! `Logging`: one record per call (side, method, peer, status, latency), to a sink of your
//! choice (standard error by default). Works as client and as server middleware.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::middleware::{CallContext, CallRecord, ClientMiddleware, Next, ServerMiddleware};
use crate::service::DispatchError;

/// Which side of a call a [`LogRecord`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The caller.
    Client,
    /// The server that handled it.
    Server,
}

/// One logged call.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    /// Client or server.
    pub side: Side,
    /// The `Service.Method` called.
    pub method: String,
    /// The other side's address.
    pub peer: SocketAddr,
    /// `"ok"`, or the error (the wire code's name on the server, the error's text on the
    /// client).
    pub status: String,
    /// From the call's start to its end on this side (the server's: handler and middleware
    /// after it; the client's: the whole round trip).
    pub latency: Duration,
}

impl fmt::Display for LogRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (side, direction) = match self.side {
            Side::Client => ("client", "to"),
            Side::Server => ("server", "from"),
        };
        write!(
            f,
            "{side} {} {direction} {}: {} in {:?}",
            self.method, self.peer, self.status, self.latency
        )
    }
}

/// Logs every call to a sink.
///
/// ```
/// use rpc_core::middleware::Logging;
///
/// let logging = Logging::to(|record| println!("{record}"));
/// # let _ = logging;
/// ```
#[derive(Clone)]
pub struct Logging {
    sink: Arc<dyn Fn(&LogRecord) + Send + Sync>,
}

impl Logging {
    /// Logs each call as one line on standard error.
    pub fn stderr() -> Self {
        Logging::to(|record| eprintln!("{record}"))
    }

    /// Hands each call's record to `sink` (called on the thread that ran or completed the
    /// call: keep it quick).
    pub fn to(sink: impl Fn(&LogRecord) + Send + Sync + 'static) -> Self {
        Logging {
            sink: Arc::new(sink),
        }
    }
}

impl fmt::Debug for Logging {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Logging").finish_non_exhaustive()
    }
}

impl ServerMiddleware for Logging {
    fn handle(&self, call: &CallContext, next: Next<'_>) -> Result<(), DispatchError> {
        let started = Instant::now();
        let result = next.run();
        let status = match &result {
            Ok(()) => "ok".to_owned(),
            Err(err) => format!("{:?}: {}", err.code, err.message),
        };
        (self.sink)(&LogRecord {
            side: Side::Server,
            method: call.method().to_owned(),
            peer: call.peer_addr(),
            status,
            latency: started.elapsed(),
        });
        result
    }
}

impl ClientMiddleware for Logging {
    fn after_call(&self, call: &CallRecord<'_>) {
        let status = match call.outcome {
            Ok(()) => "ok".to_owned(),
            Err(err) => err.to_string(),
        };
        (self.sink)(&LogRecord {
            side: Side::Client,
            method: call.method.to_owned(),
            peer: call.peer,
            status,
            latency: call.started.elapsed(),
        });
    }
}
