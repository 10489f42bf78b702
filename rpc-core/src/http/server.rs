//! The HTTP listener (Go: `Server.HandleHTTP` and `Server.ServeHTTP`): accepts connections,
//! reads one request head on a short-lived thread each, and either hands the socket to the
//! server's event loops (a CONNECT to the RPC path) or answers it once (the debug page, an
//! error status) and closes it.
//!
//! Nothing here runs on an event loop, so a slow HTTP peer never holds up RPC traffic on
//! connections already open; a slow peer holds one handshake thread until
//! [`HttpConfig::head_timeout`], and at most [`HttpConfig::max_handshakes`] such threads
//! take new connections. Past that, a new connection takes the place of one still sending
//! its head (`heads_reading.rs`): the one silent longest, if it has sent nothing for a tenth
//! of the timeout, or else the oldest, if it has been at it for half the timeout; or it is
//! answered `503` if none qualifies. Sockets that send nothing, or a byte now and then,
//! cannot keep new clients out for long, though a flood of new connections still can (there
//! is no limit per peer: a front proxy's job).

use std::fmt;
use std::io::{self, Read, Write};
use std::net::ToSocketAddrs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rpc_transport::clock::deadline_after;

use crate::error::RpcError;
use crate::http::debug_page::DebugSnapshot;
use crate::http::head::{parse_request, read_head, HeadError, RequestLine};
use crate::http::heads_reading::{HeadsReading, EVICTABLE_AFTER, OVERDUE_AFTER};
use crate::http::{HttpConfig, HttpStats, CONNECTED_STATUS};
use crate::server::{Adoption, Server, ServerHandle};

impl Server {
    /// Binds `addr` and serves RPC over HTTP CONNECT on it, plus the debug page, with default
    /// settings (Go: `rpc.HandleHTTP` + `http.Serve`); returns at once.
    ///
    /// A client connects with [`crate::Client::dial_http`]. This listener is separate from
    /// any started with [`Server::serve`]; both serve the same services.
    ///
    /// # Errors
    ///
    /// [`RpcError::Unreachable`] if the address cannot be bound or the threads cannot start.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use rpc_core::{Client, Server};
    ///
    /// let server = Server::new();
    /// let http = server.serve_http("127.0.0.1:0")?;
    /// let client = Client::dial_http(http.local_addr())?;
    /// // and http://<addr>/debug/rpc shows the services and their call counts
    /// # Ok::<(), rpc_core::RpcError>(())
    /// ```
    pub fn serve_http(
        &self,
        addr: impl ToSocketAddrs + fmt::Debug,
    ) -> Result<HttpHandle, RpcError> {
        self.serve_http_with(addr, HttpConfig::default())
    }

    /// Like [`Server::serve_http`], with other paths and limits.
    ///
    /// # Errors
    ///
    /// [`RpcError::Unreachable`] if the address cannot be bound or the threads cannot start.
    pub fn serve_http_with(
        &self,
        addr: impl ToSocketAddrs + fmt::Debug,
        config: HttpConfig,
    ) -> Result<HttpHandle, RpcError> {
        let shown = format!("{addr:?}");
        let unreachable = |err: io::Error| RpcError::Unreachable {
            addr: shown.clone(),
            source: Arc::new(err),
        };
        let listener = TcpListener::bind(addr).map_err(unreachable)?;
        let local_addr = listener.local_addr().map_err(unreachable)?;
        let rpc = self.serve_adopted(local_addr)?;
        let shared = Arc::new(HttpShared {
            server: self.clone(),
            rpc,
            config,
            stopping: AtomicBool::new(false),
            counters: Counters::default(),
            heads: HeadsReading::default(),
        });
        let accepting = Arc::clone(&shared);
        let accept_thread = thread::Builder::new()
            .name("netrpc-http-accept".to_owned())
            .spawn(move || accept_loop(&listener, &accepting))
            .map_err(unreachable)?;
        Ok(HttpHandle {
            local_addr,
            shared,
            accept_thread: Mutex::new(Some(accept_thread)),
        })
    }
}

/// A running HTTP listener started by [`Server::serve_http`]. Dropping it shuts it down.
pub struct HttpHandle {
    local_addr: SocketAddr,
    shared: Arc<HttpShared>,
    accept_thread: Mutex<Option<JoinHandle<()>>>,
}

impl HttpHandle {
    /// The address the listener is bound to (with the real port if it bound port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The listener's settings.
    pub fn config(&self) -> &HttpConfig {
        &self.shared.config
    }

    /// A snapshot of the listener's counters (the RPC connections it handed over are counted
    /// in [`Server::stats`] as well, like any other).
    pub fn stats(&self) -> HttpStats {
        self.shared.counters.snapshot()
    }

    /// Stops accepting, closes every RPC connection that came through this listener (their
    /// pending calls fail with a connection error), and waits for the threads to exit, as
    /// [`ServerHandle::shutdown`] does. Heads still being read finish on their own threads
    /// within the head timeout: a `CONNECT` among them is answered `503`, never told it is
    /// connected. Idempotent.
    pub fn shutdown(&self) {
        self.stop_accepting();
        self.shared.rpc.shutdown();
    }

    /// Stops accepting, then shuts the RPC connections down gracefully as
    /// [`ServerHandle::shutdown_gracefully`] does; returns true if every call in flight
    /// finished within `grace`.
    pub fn shutdown_gracefully(&self, grace: Duration) -> bool {
        self.stop_accepting();
        self.shared.rpc.shutdown_gracefully(grace)
    }

    fn stop_accepting(&self) {
        let thread = self
            .accept_thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(thread) = thread else {
            return;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        // `accept` blocks: a connection of our own wakes it to see the flag. If it cannot be
        // made, the thread is left to exit at the next connection instead of being waited for.
        if TcpStream::connect_timeout(&reachable(self.local_addr), WAKE_TIMEOUT).is_ok() {
            let _ = thread.join();
        }
    }
}

impl fmt::Debug for HttpHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpHandle")
            .field("local_addr", &self.local_addr)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Drop for HttpHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What the accept thread and every handshake thread share.
struct HttpShared {
    server: Server,
    /// The event loops that take CONNECTed sockets.
    rpc: ServerHandle,
    config: HttpConfig,
    stopping: AtomicBool,
    counters: Counters,
    /// The connections whose head is still being read, to evict the oldest at the limit.
    heads: HeadsReading,
}

/// The live counters behind [`HttpStats`].
#[derive(Debug, Default)]
struct Counters {
    handshakes: AtomicUsize,
    rpc_connections: AtomicU64,
    pages_served: AtomicU64,
    rejected_requests: AtomicU64,
    abandoned_heads: AtomicU64,
    evicted_heads: AtomicU64,
    refused_busy: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> HttpStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        HttpStats {
            handshakes_in_progress: self.handshakes.load(Ordering::SeqCst),
            rpc_connections: load(&self.rpc_connections),
            pages_served: load(&self.pages_served),
            rejected_requests: load(&self.rejected_requests),
            abandoned_heads: load(&self.abandoned_heads),
            evicted_heads: load(&self.evicted_heads),
            refused_busy: load(&self.refused_busy),
        }
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts one handshake thread as running until dropped.
struct HandshakeSlot(Arc<HttpShared>);

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.0.counters.handshakes.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Accepts until told to stop; each connection gets a handshake thread, or a 503 when
/// `max_handshakes` are running and none of them has been reading its head long enough to
/// give its place up.
fn accept_loop(listener: &TcpListener, shared: &Arc<HttpShared>) {
    loop {
        let accepted = listener.accept();
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let stream = match accepted {
            Ok((stream, _)) => stream,
            // Out of descriptors (EMFILE, ENFILE) and the like: pause instead of spinning.
            Err(_) => {
                thread::sleep(ACCEPT_PAUSE);
                continue;
            }
        };
        if !make_room(shared) {
            Counters::bump(&shared.counters.refused_busy);
            refuse_at_accept(stream);
            continue;
        }
        shared.counters.handshakes.fetch_add(1, Ordering::SeqCst);
        let slot = HandshakeSlot(Arc::clone(shared));
        let (ticket, socket) = shared.heads.start(stream);
        let spawned = thread::Builder::new()
            .name("netrpc-http-conn".to_owned())
            .spawn(move || handshake(socket, ticket, &slot.0));
        if spawned.is_err() {
            // The closure (its share of the socket, and the slot) is dropped, uncounted; the
            // register's share goes too, which closes the socket.
            shared.heads.forget(ticket);
        }
    }
}

/// True if a new connection may have a handshake thread: fewer than `max_handshakes` run,
/// or one of those sending their heads was closed to make room: the one silent longest, if
/// silent for a tenth of the head timeout, or else the oldest, if read for half of it
/// (threads then number up to twice the limit for the moment the evicted ones take to end).
fn make_room(shared: &HttpShared) -> bool {
    let config = &shared.config;
    let running = shared.counters.handshakes.load(Ordering::SeqCst);
    if running < config.max_handshakes {
        return true;
    }
    let evicted = running < config.max_handshakes.saturating_mul(2)
        && shared.heads.evict(
            config.head_timeout / EVICTABLE_AFTER,
            config.head_timeout / OVERDUE_AFTER,
        );
    if evicted {
        Counters::bump(&shared.counters.evicted_heads);
    }
    evicted
}

/// Reads one request head from `socket` (`ticket` in the heads being read) and acts on it.
fn handshake(socket: Arc<TcpStream>, ticket: u64, shared: &HttpShared) {
    let config = &shared.config;
    let counters = &shared.counters;
    let deadline = deadline_after(Instant::now(), config.head_timeout);
    let write_timeout = config
        .head_timeout
        .clamp(MIN_WRITE_TIMEOUT, MAX_WRITE_TIMEOUT);
    let _ = socket.set_write_timeout(Some(write_timeout));
    let read = read_head(&socket, config.max_head_len, deadline, || {
        shared.heads.heard(ticket);
    });
    let Some(stream) = shared.heads.finish(ticket, socket) else {
        // Closed to make room for a newer connection, and counted then.
        return;
    };
    let head = match read {
        Ok(head) => head,
        Err(HeadError::TooLarge) => {
            let limit = config.max_head_len;
            let body = format!("request head over the {limit}-byte limit\n");
            return reject(stream, shared, 431, &body);
        }
        Err(HeadError::TimedOut | HeadError::Closed | HeadError::Io(_)) => {
            Counters::bump(&counters.abandoned_heads);
            return;
        }
    };
    let Some(request) = parse_request(&head) else {
        return reject(stream, shared, 400, "malformed request head\n");
    };
    if request.path == config.rpc_path {
        return connect(stream, shared, &request);
    }
    let Some(debug_path) = config.debug_path.as_deref() else {
        return reject(stream, shared, 404, "not found\n");
    };
    let json = request.path.strip_suffix(".json") == Some(debug_path);
    if request.path != debug_path && !json {
        return reject(stream, shared, 404, "not found\n");
    }
    if request.method != "GET" {
        return refuse_method(stream, shared, "GET");
    }
    let methods = shared.server.method_stats();
    let server_stats = shared.server.stats();
    let http_stats = counters.snapshot();
    let snapshot = DebugSnapshot {
        methods: &methods,
        server: &server_stats,
        http: &http_stats,
        page_path: debug_path,
    };
    let (content_type, body) = if json {
        ("application/json", snapshot.to_json())
    } else {
        ("text/html; charset=utf-8", snapshot.to_html())
    };
    Counters::bump(&counters.pages_served);
    answer(stream, 200, "", content_type, &body);
}

/// A request on the RPC path: a CONNECT is accepted and handed to the event loops.
fn connect(stream: TcpStream, shared: &HttpShared, request: &RequestLine) {
    if request.method != "CONNECT" {
        return refuse_method(stream, shared, "CONNECT");
    }
    // Written before the loops take the socket, so it precedes every reply frame, and while
    // the handle cannot shut down, so a client told it is connected is taken by a loop. A
    // fresh socket's send buffer takes these few bytes at once (its write timeout bounds the
    // wait anyway).
    let greet = |stream: &mut TcpStream| {
        let accepted = format!("HTTP/1.0 {CONNECTED_STATUS}\n\n");
        stream.write_all(accepted.as_bytes())?;
        let _ = stream.set_read_timeout(None);
        stream.set_write_timeout(None)
    };
    // Bytes the client sent after its head are still in the socket: the loop reads them.
    match shared.rpc.adopt_greeted(stream, greet) {
        Ok(()) => Counters::bump(&shared.counters.rpc_connections),
        Err(Adoption::AtLimit(stream)) => {
            let max = shared.server.config().max_connections;
            let body = format!("server at its limit of {max} connections; try again later\n");
            refuse_busy(stream, shared, &body);
        }
        Err(Adoption::ShutDown(stream)) => refuse_busy(stream, shared, "server shutting down\n"),
        Err(Adoption::GreetingFailed) => Counters::bump(&shared.counters.abandoned_heads),
        Err(Adoption::Failed) => {}
    }
}

/// Answers a request the listener will not serve, and counts it.
fn reject(stream: TcpStream, shared: &HttpShared, status: u16, body: &str) {
    Counters::bump(&shared.counters.rejected_requests);
    answer(stream, status, "", TEXT, body);
}

/// Answers `503` to a CONNECT the RPC server cannot take now, and counts it.
fn refuse_busy(stream: TcpStream, shared: &HttpShared, body: &str) {
    Counters::bump(&shared.counters.refused_busy);
    answer(stream, 503, "", TEXT, body);
}

/// Answers `405` to a request whose path takes only `allowed`, saying so (RFC 9110
/// §15.5.6), and counts it.
fn refuse_method(stream: TcpStream, shared: &HttpShared, allowed: &str) {
    Counters::bump(&shared.counters.rejected_requests);
    let allow = format!("Allow: {allowed}\r\n");
    answer(stream, 405, &allow, TEXT, &format!("405 must {allowed}\n"));
}

/// Writes one whole response (`extra_headers`: whole header lines, each ending in CRLF, or
/// nothing), then closes without resetting what the peer may still be sending (closing a
/// socket with unread input resets it, and the peer could lose the answer): our side is shut
/// for writing, and input is drained for a moment first.
fn answer(mut stream: TcpStream, status: u16, extra_headers: &str, content_type: &str, body: &str) {
    let head = format!(
        "HTTP/1.1 {status} {}\r\n{extra_headers}Content-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n",
        reason(status),
        body.len()
    );
    if stream.write_all(head.as_bytes()).is_err() || stream.write_all(body.as_bytes()).is_err() {
        return;
    }
    let _ = stream.shutdown(Shutdown::Write);
    let linger_until = Instant::now() + LINGER;
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < MAX_LINGER_BYTES {
        let remaining = linger_until.saturating_duration_since(Instant::now());
        if remaining.is_zero() || stream.set_read_timeout(Some(remaining)).is_err() {
            break;
        }
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

/// Answers `503` on the accept thread, never blocking it. Best effort: the request is not
/// read, so if it arrives before the close, the close resets the connection and the peer
/// may see the reset instead of the answer.
fn refuse_at_accept(mut stream: TcpStream) {
    let body = "too many connections at once\n";
    let response = format!(
        "HTTP/1.1 503 {}\r\nContent-Type: {TEXT}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        reason(503),
        body.len()
    );
    // A new socket's send buffer is empty: this short answer goes out at once.
    let _ = stream.set_nonblocking(true);
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.shutdown(Shutdown::Write);
    // Take what has arrived already, so fewer closes become resets; no more than a linger's
    // worth, or a peer writing faster than this reads would keep the accept thread here.
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < MAX_LINGER_BYTES {
        match stream.read(&mut sink) {
            Ok(n) if n > 0 => drained += n,
            _ => break,
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// `addr`, or loopback if it is the unspecified address (a listener on `0.0.0.0` is reached
/// at `127.0.0.1`).
fn reachable(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

const TEXT: &str = "text/plain; charset=utf-8";

/// How long accepting pauses after an accept error.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// How long `shutdown` waits to connect to its own listener to wake the accept thread.
const WAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// The bounds of the time an answer may take to write: the head timeout, within these.
const MIN_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long, and how many bytes, an answered connection's input is drained before it closes.
const LINGER: Duration = Duration::from_millis(200);
const MAX_LINGER_BYTES: usize = 64 * 1024;
