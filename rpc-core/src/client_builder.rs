//! Client settings: `ClientConfig`, the `ClientBuilder` that dials with them (plain TCP, or
//! TLS), and the client defaults.

use std::fmt;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rpc_codec::CodecKind;
use rpc_transport::tls::ClientTls;
use rpc_transport::{BusyPoll, FrameLimits};

use crate::client::Client;
use crate::client_conn::ClientConn;
use crate::client_loop::shared_client_loop;
use crate::error::RpcError;
use crate::hello;
use crate::link::Link;
use crate::middleware::ClientMiddleware;
use crate::pending::PendingCalls;

/// Settings of a [`Client`]; see [`ClientBuilder`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Codec for arguments and replies (default postcard).
    pub codec: CodecKind,
    /// Deadline of each call unless given per call (default [`DEFAULT_CALL_TIMEOUT`]); it is
    /// also sent to the server in the request header.
    pub call_timeout: Duration,
    /// How long dialing may take (default [`DEFAULT_CONNECT_TIMEOUT`]).
    pub connect_timeout: Duration,
    /// Frame size limits for arguments sent and replies read.
    pub limits: FrameLimits,
    /// Most calls pending at once on this client; a call beyond it fails at once with
    /// [`RpcError::Throttled`], without being sent. This bounds the client's memory (its
    /// pending table, and the requests queued when the server stops reading) when callers
    /// start `go` calls faster than they complete. Default [`DEFAULT_MAX_PENDING_CALLS`], the
    /// server's default cap per connection.
    pub max_pending_calls: usize,
    /// Most request bytes waiting to be written (the socket full, say because the server
    /// stopped reading); while that many wait, a new call fails at once with
    /// [`RpcError::Throttled`], without being sent. Calls that time out do not take their
    /// bytes back, so without this cap a server that stops reading would grow the queue with
    /// every retry. Default [`DEFAULT_MAX_UNSENT_BYTES`].
    pub max_unsent_bytes: usize,
    /// Middleware that sees every call before it is sent and after it completes, in order
    /// (see [`crate::middleware`]). Default: none.
    pub middleware: Vec<Arc<dyn ClientMiddleware>>,
    /// TLS, when set: dialing completes the handshake (within the connect timeout) before it
    /// returns, and fails with [`RpcError::Tls`] if the server's certificate is refused.
    /// Default `None`: plaintext.
    pub tls: Option<ClientTls>,
    /// How long a caller waiting for its reply polls the socket without blocking before it
    /// sleeps ([`rpc_transport::busy_poll`]): CPU time spent to skip the wake-up a sleeping
    /// caller needs; at most [`rpc_transport::MAX_BUSY_POLL`] (1 ms). No more threads spin
    /// at once than there are cores, process-wide, and a caller spins only when no other
    /// busy-polling caller of the process began waiting within the last millisecond and still
    /// waits (with several waiting, the cores are busy anyway). The client's hello tells the
    /// server so (docs/PROTOCOL.md, "Ping and Pong"). Default zero: callers sleep at once.
    pub busy_poll: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            codec: CodecKind::default(),
            call_timeout: DEFAULT_CALL_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            limits: FrameLimits::default(),
            max_pending_calls: DEFAULT_MAX_PENDING_CALLS,
            max_unsent_bytes: DEFAULT_MAX_UNSENT_BYTES,
            middleware: Vec::new(),
            tls: None,
            busy_poll: Duration::ZERO,
        }
    }
}

/// Builds a [`Client`] with non-default settings.
///
/// ```no_run
/// use std::time::Duration;
/// use rpc_core::{Client, CodecKind};
///
/// let client = Client::builder()
///     .codec(CodecKind::Json)
///     .call_timeout(Duration::from_secs(2))
///     .dial("127.0.0.1:1234")?;
/// # Ok::<(), rpc_core::RpcError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct ClientBuilder {
    config: ClientConfig,
}

impl ClientBuilder {
    /// Codec for arguments and replies; the server answers in the same codec.
    pub fn codec(mut self, codec: CodecKind) -> Self {
        self.config.codec = codec;
        self
    }

    /// Default deadline of each call.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.config.call_timeout = timeout;
        self
    }

    /// How long dialing may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Frame size limits.
    pub fn limits(mut self, limits: FrameLimits) -> Self {
        self.config.limits = limits;
        self
    }

    /// How long a caller waiting for its reply polls without blocking before it sleeps
    /// (default zero; see [`ClientConfig::busy_poll`]). Worth it where waking a sleeping
    /// thread is slow (virtual machines whose idle vCPUs halt) and a core can be spared.
    pub fn busy_poll(mut self, budget: Duration) -> Self {
        self.config.busy_poll = budget;
        self
    }

    /// Most calls pending at once (default [`DEFAULT_MAX_PENDING_CALLS`]); see
    /// [`ClientConfig::max_pending_calls`].
    pub fn max_pending_calls(mut self, count: usize) -> Self {
        self.config.max_pending_calls = count.max(1);
        self
    }

    /// Most request bytes waiting to be written (default [`DEFAULT_MAX_UNSENT_BYTES`]); see
    /// [`ClientConfig::max_unsent_bytes`].
    pub fn max_unsent_bytes(mut self, bytes: usize) -> Self {
        self.config.max_unsent_bytes = bytes;
        self
    }

    /// Adds `middleware` after those added before it (see [`crate::middleware`]: logging,
    /// rate limiting, tracing, and your own).
    pub fn middleware(mut self, middleware: impl ClientMiddleware) -> Self {
        self.config.middleware.push(Arc::new(middleware));
        self
    }

    /// Speaks TLS to the server (see [`rpc_transport::tls`]): `tls` holds the roots to trust,
    /// the client certificate if any, and the name the server's certificate must carry.
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.config.tls = Some(tls);
        self
    }

    /// The settings so far (for dialers in other files, such as HTTP CONNECT and the
    /// cluster patterns, that read a timeout before dialing).
    pub(crate) fn settings(&self) -> &ClientConfig {
        &self.config
    }

    /// Connects to `addr` (Go: `rpc.Dial`), trying each address it resolves to.
    ///
    /// # Errors
    ///
    /// [`RpcError::Unreachable`] if no address accepts within the connect timeout.
    pub fn dial(self, addr: impl ToSocketAddrs + fmt::Display) -> Result<Client, RpcError> {
        let shown = addr.to_string();
        let unreachable = |err: std::io::Error| RpcError::Unreachable {
            addr: shown.clone(),
            source: Arc::new(err),
        };
        let mut last_error = None;
        for candidate in addr.to_socket_addrs().map_err(unreachable)? {
            match TcpStream::connect_timeout(&candidate, self.config.connect_timeout) {
                Ok(stream) => return self.connect_stream(stream),
                Err(err) => last_error = Some(err),
            }
        }
        let err = last_error.unwrap_or_else(|| std::io::ErrorKind::AddrNotAvailable.into());
        Err(unreachable(err))
    }

    /// Uses an already-connected socket (Go: `rpc.NewClient`).
    ///
    /// # Errors
    ///
    /// [`RpcError::Unreachable`] if the client event loop cannot take the socket;
    /// [`RpcError::Tls`] if the TLS handshake fails or does not finish within the connect
    /// timeout.
    pub fn connect_stream(self, stream: TcpStream) -> Result<Client, RpcError> {
        let started = Instant::now();
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "peer".to_owned(), |a| a.to_string());
        let unreachable = |err: std::io::Error| RpcError::Unreachable {
            addr: peer.clone(),
            source: Arc::new(err),
        };
        let _ = stream.set_nodelay(true);
        let pending = Arc::new(Mutex::new(PendingCalls::with_limit(
            self.config.max_pending_calls,
        )));
        let handler_pending = Arc::clone(&pending);
        let tls_failed = |cause| RpcError::Tls {
            addr: peer.clone(),
            cause,
        };
        let session = self.config.tls.as_ref().map(ClientTls::session);
        let session = session.transpose().map_err(tls_failed)?;
        let conn = shared_client_loop()
            .and_then(|handle| {
                let make_handler: rpc_transport::MakeHandler =
                    Box::new(move |_| Box::new(ClientConn::new(handler_pending)));
                let (limits, timeout) = (self.config.limits, self.config.connect_timeout);
                match session {
                    None => handle.adopt_and_wait(stream, limits, make_handler, timeout),
                    Some(session) => {
                        handle.adopt_tls_and_wait(stream, limits, session, make_handler, timeout)
                    }
                }
            })
            .map_err(unreachable)?;
        conn.set_busy_poll(BusyPoll::new(self.config.busy_poll));
        // The first frame says hello: a server closes connections that send no whole frame
        // within its first-frame timeout, and this one may not call for a while. With TLS it
        // goes once the handshake is done, and the server's pong settles the handshake. It
        // also tells the server whether this client's callers busy poll (`hello.rs`).
        let _ = conn.send_frame(&hello::hello(self.config.busy_poll));
        // A refused certificate, either side's, is reported here, not by the first call.
        let remaining = self
            .config
            .connect_timeout
            .saturating_sub(started.elapsed());
        if let Err(cause) = conn.wait_for_handshake(remaining) {
            conn.close();
            return Err(tls_failed(cause));
        }
        Ok(Client::with_link(Link::Socket(conn), pending, self.config))
    }

    /// The settings built so far (for constructors outside this file: the simulated network).
    pub(crate) fn into_config(self) -> ClientConfig {
        self.config
    }
}

impl From<ClientConfig> for ClientBuilder {
    /// A builder starting from `config` (say, another client's [`Client::config`]), every
    /// setting included, so code that dials again never drops one.
    fn from(config: ClientConfig) -> Self {
        ClientBuilder { config }
    }
}

/// Default cap on request bytes waiting to be written: 4 MiB, one request of the largest
/// default body.
pub const DEFAULT_MAX_UNSENT_BYTES: usize = 4 * 1024 * 1024;

/// Default deadline of a call: finite, so no call waits forever.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Default time allowed for dialing.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Default cap on calls pending on one client: the server's default cap per connection
/// ([`crate::DEFAULT_MAX_IN_FLIGHT_PER_CONN`]), so a client never sends what the server
/// would refuse anyway.
pub const DEFAULT_MAX_PENDING_CALLS: usize = 1_000;
