//! RPC over HTTP CONNECT, and a debug page (Go: `HandleHTTP`, `DialHTTP`, `/debug/rpc`).
//!
//! ```text
//!  client                                   server (Server::serve_http)
//!  ──────                                   ──────
//!  CONNECT /_goRPC_ HTTP/1.0\n\n  ───────►  reads one head (bounded in size and time)
//!                                 ◄───────  HTTP/1.0 200 Connected to Go RPC\n\n
//!  netrpc frames, both ways, on the same socket: the server's event loops own it now
//!
//!  GET /debug/rpc       ───────►  an HTML page: services, methods, call and error counts
//!  GET /debug/rpc.json  ───────►  the same as JSON
//! ```
//!
//! The HTTP side is deliberately small: one request head per connection, read by a short-lived
//! thread (at most [`HttpConfig::max_handshakes`] at once), never by the event loops. A
//! CONNECT to [`HttpConfig::rpc_path`] hands the socket to the server's loops, as if the
//! listener had accepted it; every other request gets one response and the connection closes.
//! What this module does not do: bodies, keep-alive, chunking, TLS, HTTP/2.

mod client;
mod debug_page;
mod head;
mod heads_reading;
mod server;

use std::time::Duration;

pub use server::HttpHandle;

/// Go's path for RPC over HTTP (`rpc.DefaultRPCPath`).
pub const DEFAULT_RPC_PATH: &str = "/_goRPC_";

/// Go's path for the debug page (`rpc.DefaultDebugPath`); its JSON twin adds `.json`.
pub const DEFAULT_DEBUG_PATH: &str = "/debug/rpc";

/// The status a server sends to accept a CONNECT, after `HTTP/1.0 ` (Go's `connected`).
pub const CONNECTED_STATUS: &str = "200 Connected to Go RPC";

/// Default cap on a request head: 8 KiB, as many HTTP servers allow.
pub const DEFAULT_MAX_HEAD_LEN: usize = 8 * 1024;

/// Default time a connection has to send its whole request head: 10 s, the frame timeout.
pub const DEFAULT_HEAD_TIMEOUT: Duration = rpc_transport::DEFAULT_FRAME_TIMEOUT;

/// Default cap on connections whose request head is being read or answered at once.
pub const DEFAULT_MAX_HANDSHAKES: usize = 64;

/// Settings of [`crate::Server::serve_http_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// The path a CONNECT must name (default [`DEFAULT_RPC_PATH`]); another method on it is
    /// answered `405 must CONNECT`.
    pub rpc_path: String,
    /// The debug page's path (default [`DEFAULT_DEBUG_PATH`]); the JSON is at this path plus
    /// `.json`. `None` serves no debug page (404).
    pub debug_path: Option<String>,
    /// Most bytes of a request head, request line and headers included (default
    /// [`DEFAULT_MAX_HEAD_LEN`]); a longer one is answered `431` and closed.
    pub max_head_len: usize,
    /// Time from accept to the head's blank line (default [`DEFAULT_HEAD_TIMEOUT`]); a peer
    /// slower than that is closed without an answer.
    pub head_timeout: Duration,
    /// Most connections being read or answered at once (default [`DEFAULT_MAX_HANDSHAKES`]),
    /// each on its own short-lived thread. Beyond it a new connection takes the place of one
    /// still sending its head (closed unanswered, counted in [`HttpStats::evicted_heads`]):
    /// the one silent longest, if it has sent nothing for a tenth of `head_timeout`, or else
    /// the oldest, if it has been at it for half of `head_timeout`; if none qualifies, the new
    /// connection is answered `503` and closed. Connections handed to the RPC server no
    /// longer count.
    pub max_handshakes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            rpc_path: DEFAULT_RPC_PATH.to_owned(),
            debug_path: Some(DEFAULT_DEBUG_PATH.to_owned()),
            max_head_len: DEFAULT_MAX_HEAD_LEN,
            head_timeout: DEFAULT_HEAD_TIMEOUT,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
        }
    }
}

/// A snapshot of an HTTP listener's counters, from [`HttpHandle::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpStats {
    /// Connections whose request head is being read or answered now.
    pub handshakes_in_progress: usize,
    /// CONNECTs accepted and handed to the RPC server.
    pub rpc_connections: u64,
    /// Debug pages (HTML or JSON) served.
    pub pages_served: u64,
    /// Requests answered with a 4xx status: a malformed or oversized head, a method other
    /// than CONNECT on the RPC path, an unknown path.
    pub rejected_requests: u64,
    /// Connections closed without an answer: the head did not arrive within the timeout, or
    /// the peer closed first.
    pub abandoned_heads: u64,
    /// Connections closed without an answer to make room for a new one: at
    /// `max_handshakes`, the one silent longest among those sending their heads, once silent
    /// for a tenth of `head_timeout`, or else the oldest, once at it for half of it.
    pub evicted_heads: u64,
    /// Connections answered `503`: too many handshakes at once, the RPC server at its
    /// connection limit, or a CONNECT arriving as the listener shuts down.
    pub refused_busy: u64,
}
