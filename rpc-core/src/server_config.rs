//! Server settings: `ServerConfig`, its builder, and the defaults (caps, timeouts), with
//! the default connection cap sized from the process's open-file limit.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use rpc_codec::CodecKind;
use rpc_transport::tls::ServerConfig as TlsServerConfig;
use rpc_transport::FrameLimits;

use crate::middleware::ServerMiddleware;
use crate::open_files::open_files_limit;
use crate::server::Server;

/// Settings of a [`Server`]; build one with [`Server::builder`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Event-loop threads that read and write sockets.
    pub event_loops: usize,
    /// Most handler threads running at once; further calls queue for a free thread.
    pub max_workers: usize,
    /// How long an idle handler thread lives.
    pub worker_keep_alive: Duration,
    /// Frame size limits and the frame timeout, for reading requests and writing replies.
    pub limits: FrameLimits,
    /// Most connections open at once; beyond it a new connection is told so with an error
    /// frame (seq 0, code `Throttled`, so its client's calls fail with the retryable
    /// [`crate::RpcError::Throttled`]) and closed. Default [`DEFAULT_MAX_CONNECTIONS`], or fewer when
    /// the process may open fewer files (see [`default_max_connections`]).
    pub max_connections: usize,
    /// Closes a connection that has not sent one whole frame this long after it was accepted,
    /// after a go-away frame, so sockets that never speak cannot hold connection slots for
    /// ever. netrpc's client sends a ping as soon as it connects, so its connections always
    /// pass. On the jsonrpc listener, whose Go clients send nothing until their first call,
    /// a connection whose first request has not begun by then is closed (no go-away: jsonrpc
    /// has none) only while half the server's `max_connections` or more are open, checked
    /// again every timeout (a second apart at least): a Go program that dials ahead keeps
    /// its connection while the server has room, and so may a silent socket.
    /// Default `Some(`[`DEFAULT_FIRST_FRAME_TIMEOUT`]`)`; `None` turns it off.
    pub first_frame_timeout: Option<Duration>,
    /// Most calls in flight on one connection; beyond it a request is answered `Throttled`
    /// at once. Default [`DEFAULT_MAX_IN_FLIGHT_PER_CONN`].
    pub max_in_flight_per_conn: usize,
    /// Most calls in flight on the whole server (running or waiting for a worker); beyond it
    /// a request is answered `Throttled` at once. Default [`DEFAULT_MAX_CALLS`].
    pub max_calls: usize,
    /// Reply bytes a connection may have queued (unread by its peer) before the server stops
    /// reading its requests, until the peer reads. Checked before each request, counting what
    /// the calls in flight may still add (each as large as the largest reply so far); and a
    /// pooled call whose connection is past the cap waits, unrun, until the peer reads (no
    /// worker waits meanwhile), so the queue passes the cap by at most a reply per handler
    /// running then, however the first replies compare with the later ones. Default
    /// [`DEFAULT_MAX_QUEUED_BYTES`].
    pub max_queued_bytes: usize,
    /// The codecs the server answers in; a request in any other gets `UnsupportedCodec`.
    /// Default: every codec this build has ([`CodecKind::all`]).
    pub codecs: Vec<CodecKind>,
    /// Closes a connection that has had no request and no call in flight for this long,
    /// after telling its client with a go-away frame (the client's later calls get the
    /// retryable `ShuttingDown`, so it can dial again). Checked once per period, so a
    /// connection goes between one and two periods after its last activity. Default `None`:
    /// idle connections stay open (as in gRPC).
    pub idle_timeout: Option<Duration>,
    /// Middleware run around every call, the first outermost (see [`crate::middleware`]).
    /// Default: none.
    pub middleware: Vec<Arc<dyn ServerMiddleware>>,
    /// TLS for every netrpc connection (`serve`, `serve_conn`, `serve_http`), when set (see
    /// [`rpc_transport::tls`]): a client that does not complete the handshake within the
    /// frame timeout, or is refused by it, is closed and counted in
    /// [`crate::ServerStats::tls_errors`]. Default `None`: plaintext. The jsonrpc listener
    /// (`serve_jsonrpc`) stays plaintext whatever this says.
    pub tls: Option<Arc<TlsServerConfig>>,
    /// How long an event loop polls its sockets without blocking before it sleeps
    /// ([`rpc_transport::busy_poll`]): CPU time spent so that a request arriving soon after
    /// the last finds the loop awake; at most [`rpc_transport::MAX_BUSY_POLL`] (1 ms). No
    /// more threads spin at once than there are cores, process-wide. On a connection whose
    /// client busy polls too (its hello says so), an inline turn's replies are written once,
    /// at the turn's end, instead of every 32nd at once. Default zero: loops sleep at once.
    pub busy_poll: Duration,
    /// Whether a pool worker that has answered a call, while at least twelve more calls of
    /// its connection are in flight, waits a moment for the connection's next requests and
    /// runs them itself (`server_conn/worker_read.rs`), instead of leaving them to the event
    /// loop, which hands each to a worker. On a few busy connections that saves a thread hop
    /// and a wake-up or two per call (4 connections x 16 in flight: 1.8 times the calls/s;
    /// 2 x 32: 2.4 times; docs/BENCHMARKS.md, change 23). What changes: the requests one
    /// read brings (at most 64) run one after another on that worker, their replies written
    /// together, so a call read with one whose handler blocks waits for it, and its reply
    /// with it, up to about a millisecond, after which the loop writes the replies and hands
    /// the waiting requests to other workers; up to four workers per core read at once, and
    /// the pool counts them neither idle nor busy, so it keeps that many threads more; each
    /// connection read this way holds one more file descriptor (its poller); and the tail
    /// grows (4 x 16: p99 about 1.6 times, while p50 halves). Services dispatched inline are
    /// unaffected. Default false.
    pub worker_reads: bool,
    /// Whether an event loop's own thread runs the pooled calls it read, once its turn is
    /// done, instead of sending each to a worker (`server_conn/loop_calls.rs`). A quick
    /// handler then costs about what an inline one does (no wake-up of another thread);
    /// one that blocks or computes for long hands the loop to a new thread after 2-3 ms
    /// (`rpc_transport::hand_off`), and the calls read with it go to the pool, so the
    /// loop's other connections wait that long at most; that method's calls go to the
    /// pool from then on. Calls run on a loop's thread count, as inline ones do, neither in
    /// `ServerStats::running_handlers` nor against `max_workers`: the thread a hand-off
    /// leaves in a call is one beyond the pool's (one per such method at most). Default
    /// false.
    pub loop_runs_calls: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        let cores = thread::available_parallelism().map_or(1, usize::from);
        ServerConfig {
            event_loops: (cores / 2).clamp(1, 4),
            max_workers: DEFAULT_MAX_WORKERS,
            worker_keep_alive: Duration::from_secs(10),
            limits: FrameLimits::default(),
            max_connections: default_max_connections(),
            first_frame_timeout: Some(DEFAULT_FIRST_FRAME_TIMEOUT),
            max_in_flight_per_conn: DEFAULT_MAX_IN_FLIGHT_PER_CONN,
            max_calls: DEFAULT_MAX_CALLS,
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
            codecs: CodecKind::all().to_vec(),
            idle_timeout: None,
            middleware: Vec::new(),
            tls: None,
            busy_poll: Duration::ZERO,
            worker_reads: false,
            loop_runs_calls: false,
        }
    }
}

/// Builds a [`Server`] with non-default settings.
#[derive(Debug, Clone, Default)]
pub struct ServerBuilder {
    pub(crate) config: ServerConfig,
}

impl ServerBuilder {
    /// Event-loop threads (default: half the cores, 1 to 4).
    pub fn event_loops(mut self, count: usize) -> Self {
        self.config.event_loops = count.max(1);
        self
    }

    /// How long an event loop polls without blocking before it sleeps (default zero; see
    /// [`ServerConfig::busy_poll`]). Worth it where waking a sleeping thread is slow (virtual
    /// machines whose idle vCPUs halt) and a core can be spared.
    pub fn busy_poll(mut self, budget: Duration) -> Self {
        self.config.busy_poll = budget;
        self
    }

    /// Whether a pool worker that answered a call reads and runs its connection's next
    /// requests itself (default false; see [`ServerConfig::worker_reads`]). For a few
    /// connections that each keep many calls in flight to quick pooled handlers.
    pub fn worker_reads(mut self, enabled: bool) -> Self {
        self.config.worker_reads = enabled;
        self
    }

    /// Whether an event loop's thread runs the pooled calls it read after its turn, handing
    /// the loop to a new thread if one runs long (default false; see
    /// [`ServerConfig::loop_runs_calls`]). For quick pooled handlers that may still block
    /// now and then.
    pub fn loop_runs_calls(mut self, enabled: bool) -> Self {
        self.config.loop_runs_calls = enabled;
        self
    }

    /// Cap on handler threads (default [`DEFAULT_MAX_WORKERS`]). Calls beyond it wait in a
    /// queue, in arrival order, until a thread is free. Below the cap, threads past the
    /// machine's cores start only once calls have waited a whole monitor tick (1 ms) for one,
    /// so quick handlers keep a few threads busy and blocked ones still get more.
    pub fn max_workers(mut self, count: usize) -> Self {
        self.config.max_workers = count.max(1);
        self
    }

    /// How long an idle handler thread lives (default 10 s).
    pub fn worker_keep_alive(mut self, keep_alive: Duration) -> Self {
        self.config.worker_keep_alive = keep_alive;
        self
    }

    /// Frame size limits and frame timeout (default [`FrameLimits::default`]: 4 MiB bodies,
    /// 10 s per frame).
    pub fn limits(mut self, limits: FrameLimits) -> Self {
        self.config.limits = limits;
        self
    }

    /// Most connections open at once (default [`default_max_connections`]); see
    /// [`ServerConfig::max_connections`].
    pub fn max_connections(mut self, count: usize) -> Self {
        self.config.max_connections = count;
        self
    }

    /// How long a new connection may take to send its first whole frame (default
    /// [`DEFAULT_FIRST_FRAME_TIMEOUT`]; `None`: no limit); see
    /// [`ServerConfig::first_frame_timeout`].
    pub fn first_frame_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.first_frame_timeout = timeout;
        self
    }

    /// Most calls in flight per connection (default [`DEFAULT_MAX_IN_FLIGHT_PER_CONN`]).
    pub fn max_in_flight_per_conn(mut self, count: usize) -> Self {
        self.config.max_in_flight_per_conn = count.max(1);
        self
    }

    /// Most calls in flight on the server (default [`DEFAULT_MAX_CALLS`]).
    pub fn max_calls(mut self, count: usize) -> Self {
        self.config.max_calls = count.max(1);
        self
    }

    /// Unread reply bytes per connection before its reading pauses (default
    /// [`DEFAULT_MAX_QUEUED_BYTES`]).
    pub fn max_queued_bytes(mut self, bytes: usize) -> Self {
        self.config.max_queued_bytes = bytes;
        self
    }

    /// The only codecs to answer in (default: all of [`CodecKind::all`]). A request in
    /// another codec gets `UnsupportedCodec`, in an error frame every client can read.
    pub fn codecs(mut self, codecs: &[CodecKind]) -> Self {
        self.config.codecs = codecs.to_vec();
        self
    }

    /// Closes connections idle for `timeout`: no request arriving and no call in flight
    /// (default: never). See [`ServerConfig::idle_timeout`].
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.config.idle_timeout = Some(timeout);
        self
    }

    /// Adds `middleware` around every call, inside those added before it (see
    /// [`crate::middleware`]: logging, rate limiting, and your own).
    pub fn middleware(mut self, middleware: impl ServerMiddleware) -> Self {
        self.config.middleware.push(Arc::new(middleware));
        self
    }

    /// Serves every netrpc connection over TLS with `config` (see [`rpc_transport::tls`];
    /// build it with [`rpc_transport::tls::server_config`], passing client CA roots to require
    /// client certificates). Not the jsonrpc listener: see [`ServerConfig::tls`].
    pub fn tls(mut self, config: Arc<TlsServerConfig>) -> Self {
        self.config.tls = Some(config);
        self
    }

    /// The server.
    pub fn build(self) -> Server {
        Server::with_config(self.config)
    }
}

/// Default cap on handler threads.
pub const DEFAULT_MAX_WORKERS: usize = 1024;

/// Default cap on open connections where the process may open enough files: an idle
/// connection costs about 700 bytes, so 10,000 of them cost about 7 MiB.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Default first-frame timeout: a new connection must send one whole frame within 10 s.
pub const DEFAULT_FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// The default cap on open connections: [`DEFAULT_MAX_CONNECTIONS`], or fewer when the
/// process's limit on open files (`RLIMIT_NOFILE`, read on Linux) leaves less room, keeping
/// [`RESERVED_FILES`] for everything else. Past the cap a new client is told `Throttled`; past
/// the file limit it would get no answer at all until a descriptor frees.
pub fn default_max_connections() -> usize {
    max_connections_for(open_files_limit())
}

/// The connection cap that leaves [`RESERVED_FILES`] of `open_files` for other uses (but
/// never less than half of them).
fn max_connections_for(open_files: Option<u64>) -> usize {
    let Some(open_files) = open_files else {
        return DEFAULT_MAX_CONNECTIONS;
    };
    let room = open_files
        .saturating_sub(RESERVED_FILES)
        .max(open_files / 2);
    usize::try_from(room).map_or(DEFAULT_MAX_CONNECTIONS, |room| {
        room.clamp(1, DEFAULT_MAX_CONNECTIONS)
    })
}

/// Descriptors the default connection cap leaves for listeners, loops, files and clients.
pub const RESERVED_FILES: u64 = 64;

/// Default cap on calls in flight per connection (tarpc's default).
pub const DEFAULT_MAX_IN_FLIGHT_PER_CONN: usize = 1000;

/// Default cap on calls in flight on the server.
pub const DEFAULT_MAX_CALLS: usize = 10_000;

/// Default cap on a connection's unread reply bytes before its reading pauses: 1 MiB.
pub const DEFAULT_MAX_QUEUED_BYTES: usize = 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_connection_cap_leaves_room_under_the_open_files_limit() {
        assert_eq!(max_connections_for(None), DEFAULT_MAX_CONNECTIONS);
        assert_eq!(
            max_connections_for(Some(1_048_576)),
            DEFAULT_MAX_CONNECTIONS
        );
        assert_eq!(max_connections_for(Some(1024)), 960);
        assert_eq!(max_connections_for(Some(64)), 32);
        assert_eq!(max_connections_for(Some(0)), 1);
    }
}
