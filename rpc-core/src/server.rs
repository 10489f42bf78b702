//! `Server`: registers services and serves them over TCP (Go: `rpc.Server`).
//!
//! ```text
//!  listener ──accept──► loop 0 ─┬─ adopt ─► loop 0 … loop N-1   (read frames, never block)
//!                               │                │ request
//!                               │                ▼
//!                               │           worker pool  ── handler(args) ──► reply frame
//!                               │                                              │
//!                               └──────────── socket ◄──── written by the worker
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rpc_transport::clock::deadline_after;
use rpc_transport::tls;
use rpc_transport::{
    spawn_loop_handing_off, spawn_loop_with, BusyPoll, Connection, FrameHandler, LoopHandle,
    LoopThread, MakeHandler,
};

use crate::error::RpcError;
use crate::error_body::ErrorCode;
use crate::pool::WorkerPool;
use crate::server_config::{ServerBuilder, ServerConfig};
use crate::server_conn::{encode_error, ConnCalls, LoopCalls, ServerConn, ServerJob};
use crate::service::{Dispatch, MethodTable, Service};
use crate::stats::{MethodStats, ServerStats, StatsCounters};

/// Registers services and serves them. Cheap to clone: clones share services and workers.
///
/// Services may be registered before or while serving; each connection sees every service
/// registered so far.
///
#[derive(Clone)]
pub struct Server {
    pub(crate) shared: Arc<ServerShared>,
}

/// What every connection of a server shares.
pub(crate) struct ServerShared {
    /// Guards the registered services: written by `register`, read per request.
    services: RwLock<HashMap<String, Arc<MethodTable>>>,
    pub(crate) pool: WorkerPool<ServerJob>,
    pub(crate) config: ServerConfig,
    /// Loops started by `serve_conn` for connections the caller accepted itself.
    conn_loops: Mutex<Option<LoopGroup>>,
    pub(crate) stats: StatsCounters,
    /// Open connections, and the groups draining: for go-away on shutdown and for
    /// statistics.
    connections: Mutex<Registry>,
    /// Ids for connections and loop groups.
    next_id: AtomicU64,
}

/// The server's open connections, by id, and the loop groups shutting down gracefully, under
/// one lock: a connection that registers after a group's go-away pass (accepted as the
/// shutdown began, its adoption still queued) finds the group draining and is told to go
/// away as it registers, so none falls between the pass and the mark.
#[derive(Default)]
struct Registry {
    conns: HashMap<u64, Registered>,
    draining: HashSet<u64>,
}

/// An open connection as the server's registry holds it.
struct Registered {
    conn: Connection,
    calls: Arc<ConnCalls>,
    /// The loop group (one per `serve`) that owns it.
    group: u64,
}

impl Server {
    /// A server with `config` and no services (what [`ServerBuilder::build`] makes).
    pub(crate) fn with_config(config: ServerConfig) -> Server {
        Server {
            shared: Arc::new(ServerShared {
                services: RwLock::default(),
                pool: WorkerPool::new(config.max_workers, config.worker_keep_alive),
                config,
                conn_loops: Mutex::new(None),
                stats: StatsCounters::default(),
                connections: Mutex::default(),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// A server with default settings and no services.
    pub fn new() -> Self {
        Server::builder().build()
    }

    /// A builder for a server with other settings.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// This server's settings.
    pub fn config(&self) -> &ServerConfig {
        &self.shared.config
    }

    /// What this server's connections share (the simulated network dispatches through it).
    pub(crate) fn shared(&self) -> &Arc<ServerShared> {
        &self.shared
    }

    /// Handlers running right now.
    pub fn running_handlers(&self) -> usize {
        self.shared.pool.running()
    }

    /// A snapshot of the server's state and counters, for monitoring and leak checks.
    pub fn stats(&self) -> ServerStats {
        let shared = &self.shared;
        let mut stats = shared.stats.snapshot();
        stats.running_handlers = shared.pool.running();
        stats.max_running_handlers = shared.pool.max_running();
        stats.queued_outbound_bytes = shared
            .registry()
            .conns
            .values()
            .map(|registered| registered.conn.queued_len())
            .sum::<usize>()
            + shared.stats.jsonrpc_queued_bytes.load(Ordering::Relaxed);
        stats
    }

    /// Calls and errors of every method of every registered service, sorted by service and
    /// method name (Go: the call counts on the `/debug/rpc` page).
    pub fn method_stats(&self) -> Vec<MethodStats> {
        let services = self
            .shared
            .services
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let mut all = Vec::new();
        for (service, table) in services.iter() {
            for method in table.names() {
                let (calls, errors) = table.counters(method).map_or((0, 0), |c| c.load());
                all.push(MethodStats {
                    service: service.clone(),
                    method: method.to_owned(),
                    calls,
                    errors,
                });
            }
        }
        all.sort_unstable();
        all
    }

    /// Worker threads alive right now (idle ones included).
    pub fn worker_threads(&self) -> usize {
        self.shared.pool.threads()
    }

    /// Registers `service` under its own name, [`Service::NAME`] (Go: `Register`).
    ///
    /// # Errors
    ///
    /// [`RpcError::InvalidRegistration`] if a service of that name is already registered, or a
    /// method name is empty or contains a dot.
    pub fn register<S: Service>(&self, service: S) -> Result<(), RpcError> {
        self.register_name(S::NAME, service)
    }

    /// Registers `service` under `name` (Go: `RegisterName`).
    ///
    /// # Errors
    ///
    /// [`RpcError::InvalidRegistration`] if `name` is empty, contains a dot, or is taken, or
    /// a method name is empty or contains a dot.
    pub fn register_name<S: Service>(&self, name: &str, service: S) -> Result<(), RpcError> {
        self.register_table(name, service.into_method_table())
    }

    /// Registers `service` under its own name with every method run inline, on the event
    /// loop that read the request ([`Dispatch::Inline`]): no thread hop, and the replies to a
    /// burst of requests leave in one write.
    ///
    /// Only for short methods that never block: while one runs, its loop serves nobody else.
    /// A panic is still caught and reported to the caller.
    ///
    /// # Errors
    ///
    /// [`RpcError::InvalidRegistration`] if a service of that name is already registered, or a
    /// method name is empty or contains a dot.
    pub fn register_inline<S: Service>(&self, service: S) -> Result<(), RpcError> {
        let mut table = service.into_method_table();
        table.set_dispatch(Dispatch::Inline);
        self.register_table(S::NAME, table)
    }

    fn register_table(&self, name: &str, table: MethodTable) -> Result<(), RpcError> {
        let invalid = |detail: String| Err(RpcError::InvalidRegistration { detail });
        if name.is_empty() || name.contains('.') {
            return invalid(format!(
                "service name `{name}` must be non-empty and have no dot"
            ));
        }
        // A request names `Service.Method` and is split at its last dot: a method name with
        // a dot in it, or none at all, could never be reached.
        if let Some(method) = table.names().find(|m| m.is_empty() || m.contains('.')) {
            return invalid(format!(
                "method name `{method}` of `{name}` must be non-empty and have no dot"
            ));
        }
        // One entry per name: calls to one of two such methods would run the other.
        if let Some(method) = table.repeated().first() {
            return invalid(format!(
                "two methods of `{name}` have the wire name `{method}`; give one of them \
                 another with `#[rpc(name = \"...\", ...)]`"
            ));
        }
        let mut services = self
            .shared
            .services
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if services.contains_key(name) {
            return invalid(format!("a service named `{name}` is already registered"));
        }
        services.insert(name.to_owned(), Arc::new(table));
        Ok(())
    }

    /// Binds `addr` and serves on it in background threads; returns at once.
    /// Use `127.0.0.1:0` to let the system pick a port, then [`ServerHandle::local_addr`].
    ///
    /// # Errors
    ///
    /// [`RpcError::Unreachable`] if the address cannot be bound.
    pub fn serve(&self, addr: impl ToSocketAddrs + fmt::Debug) -> Result<ServerHandle, RpcError> {
        let shown = format!("{addr:?}");
        let listener = TcpListener::bind(addr).map_err(|err| unreachable(&shown, err))?;
        self.serve_listener(listener)
    }

    /// Serves connections accepted from `listener`, in background threads (Go: `Accept`).
    ///
    /// # Errors
    ///
    /// [`RpcError::Unreachable`] if the listener cannot be made non-blocking or the event
    /// loops cannot start.
    pub fn serve_listener(&self, listener: TcpListener) -> Result<ServerHandle, RpcError> {
        let local_addr = listener
            .local_addr()
            .map_err(|err| unreachable("listener", err))?;
        let group_id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let group = self
            .start_loops(Some(listener), group_id)
            .map_err(|err| unreachable(&local_addr.to_string(), err))?;
        Ok(ServerHandle {
            local_addr,
            server: Arc::clone(&self.shared),
            group: Mutex::new(Some(group)),
        })
    }

    /// Starts event loops with no listener, for a transport that accepts sockets itself and
    /// hands them over with [`ServerHandle::adopt`] (the HTTP CONNECT listener, which listens
    /// on `local_addr`).
    pub(crate) fn serve_adopted(&self, local_addr: SocketAddr) -> Result<ServerHandle, RpcError> {
        let group_id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let group = self
            .start_loops(None, group_id)
            .map_err(|err| unreachable(&local_addr.to_string(), err))?;
        Ok(ServerHandle {
            local_addr,
            server: Arc::clone(&self.shared),
            group: Mutex::new(Some(group)),
        })
    }

    /// Serves one connection the caller accepted, and returns when it closes (Go: `ServeConn`).
    ///
    /// The connection is handled by the server's shared event loops, not by this thread.
    ///
    /// # Errors
    ///
    /// [`RpcError::Unreachable`] if the socket cannot be made non-blocking or adopted.
    pub fn serve_conn(&self, stream: TcpStream) -> Result<(), RpcError> {
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "peer".to_owned(), |a| a.to_string());
        let fail = |err| unreachable(&peer, err);
        let _ = stream.set_nodelay(true);
        let handle = self.conn_loop().map_err(fail)?;
        let (closed_tx, closed_rx) = crossbeam_channel::bounded(1);
        let shared = Arc::clone(&self.shared);
        let slot = ConnectionSlot::open(&self.shared, SERVE_CONN_GROUP);
        let make_handler: MakeHandler = Box::new(move |conn| {
            Box::new(ServerConn::new(shared, conn, slot).notify_on_close(closed_tx))
        });
        let limits = self.shared.config.limits;
        match &self.shared.config.tls {
            None => handle.adopt_and_wait(stream, limits, make_handler, ADOPT_TIMEOUT),
            Some(config) => tls::server_session(config)
                .map_err(io::Error::other)
                .and_then(|session| {
                    handle.adopt_tls_and_wait(stream, limits, session, make_handler, ADOPT_TIMEOUT)
                }),
        }
        .map_err(fail)?;
        let _ = closed_rx.recv();
        Ok(())
    }

    fn conn_loop(&self) -> io::Result<LoopHandle> {
        let mut loops = self
            .shared
            .conn_loops
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if loops.is_none() {
            *loops = Some(self.start_loops(None, SERVE_CONN_GROUP)?);
        }
        Ok(loops
            .as_ref()
            .map(|group| group.handles[0].clone())
            .expect("set just above"))
    }

    fn start_loops(&self, listener: Option<TcpListener>, group: u64) -> io::Result<LoopGroup> {
        let count = self.shared.config.event_loops;
        let busy_poll = BusyPoll::new(self.shared.config.busy_poll);
        let mut handles = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        // Loops 1.. have no listener; loop 0 accepts and spreads connections over all of them.
        for index in 1..count {
            let name = format!("netrpc-server-loop-{index}");
            let (handle, thread) = self.spawn_loop(&name, None, busy_poll)?;
            handles.push(handle);
            threads.push(thread);
        }
        let listener = listener.map(|listener| (listener, self.acceptor(handles.clone(), group)));
        let (handle, thread) = self.spawn_loop("netrpc-server-loop-0", listener, busy_poll)?;
        handles.insert(0, handle);
        threads.insert(0, thread);
        Ok(LoopGroup {
            id: group,
            handles,
            threads,
        })
    }

    /// Starts one event loop; with [`ServerConfig::loop_runs_calls`], one whose thread runs
    /// the pooled calls it reads ([`LoopCalls`]).
    fn spawn_loop(
        &self,
        name: &str,
        listener: Option<(TcpListener, rpc_transport::Acceptor)>,
        busy_poll: BusyPoll,
    ) -> io::Result<(LoopHandle, LoopJoin)> {
        if self.shared.config.loop_runs_calls {
            let calls = LoopCalls::new(Arc::clone(&self.shared.stats.loop_hand_offs));
            let (handle, thread) = spawn_loop_handing_off(name, listener, busy_poll, calls)?;
            Ok((handle, LoopJoin::HandingOff(thread)))
        } else {
            let (handle, thread) = spawn_loop_with(name, listener, busy_poll)?;
            Ok((handle, LoopJoin::Plain(thread)))
        }
    }

    /// Round-robin over the accepting loop itself and `others`; over `max_connections`, the
    /// socket is told why and closed at once.
    fn acceptor(&self, others: Vec<LoopHandle>, group: u64) -> rpc_transport::Acceptor {
        let shared = Arc::clone(&self.shared);
        let mut next = 0usize;
        let max_connections = shared.config.max_connections;
        let refusal = encode_error(
            0,
            ErrorCode::Throttled,
            &format!("server at its limit of {max_connections} connections; try again later"),
        );
        Box::new(move |mut stream, own| {
            let Some(slot) = ConnectionSlot::open_within_limit(&shared, group) else {
                StatsCounters::bump(&shared.stats.refused_connections);
                // A new socket's send buffer is empty: this small frame goes out whole, without
                // blocking (the socket is non-blocking). Dropping the socket then closes it.
                // A TLS client could not read it: it just sees the connection close.
                if shared.config.tls.is_none() {
                    let _ = stream.write_all(&refusal);
                }
                return;
            };
            let target = if next == 0 { own } else { &others[next - 1] };
            next = (next + 1) % (others.len() + 1);
            let server = Arc::clone(&shared);
            let make_handler = Box::new(move |conn: &Connection| {
                Box::new(ServerConn::new(server, conn, slot)) as Box<dyn FrameHandler>
            });
            // A socket that cannot be made non-blocking is dropped, which closes it.
            let _ = adopt_conn(target, stream, &shared.config, make_handler);
        })
    }
}

impl Default for Server {
    fn default() -> Self {
        Server::new()
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let services = self.shared.services.read().map(|s| s.len()).unwrap_or(0);
        f.debug_struct("Server")
            .field("services", &services)
            .field("config", &self.shared.config)
            .finish()
    }
}

impl ServerShared {
    /// True once half the server's `max_connections` or more are open: a connection that
    /// has sent nothing (the jsonrpc listener's are allowed to, see
    /// `jsonrpc::server_conn`) should then give its slot up to one that will.
    pub(crate) fn short_of_connections(&self) -> bool {
        let open = self.stats.open_connections.load(Ordering::SeqCst);
        open.saturating_mul(2) >= self.config.max_connections
    }

    /// Counts one more call in flight on the whole server, unless `max_calls` are: then
    /// false, and nothing is counted. Every way in (a connection, the jsonrpc listener, the
    /// simulated network) admits its calls here.
    pub(crate) fn admit_call(&self) -> bool {
        // Checked as it is raised: a count raised past the cap and lowered again would, for
        // that moment, refuse another call with room for it, and show in the stats.
        let max = self.config.max_calls;
        self.stats
            .in_flight_calls
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |calls| {
                (calls < max).then_some(calls + 1)
            })
            .is_ok()
    }

    /// The method table of service `name`.
    pub(crate) fn service(&self, name: &str) -> Option<Arc<MethodTable>> {
        let services = self.services.read().unwrap_or_else(|p| p.into_inner());
        services.get(name).cloned()
    }

    pub(crate) fn register_connection(
        &self,
        id: u64,
        conn: &Connection,
        calls: Arc<ConnCalls>,
        group: u64,
    ) {
        let mut registry = self.registry();
        if registry.draining.contains(&group) {
            calls.go_away(conn);
        }
        let registered = Registered {
            conn: conn.clone(),
            calls,
            group,
        };
        registry.conns.insert(id, registered);
    }

    pub(crate) fn deregister_connection(&self, id: u64) {
        self.registry().conns.remove(&id);
    }

    /// Forgets a group that has shut down (its loops are gone: no connection of it registers
    /// again), so that the set holds only groups draining now.
    fn forget_draining(&self, group: u64) {
        self.registry().draining.remove(&group);
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        // Single map and set operations only: a poisoned lock still holds a sound registry.
        self.connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// True while a call of `group`'s connections runs, or a reply (or any frame) waits in a
    /// connection's queue for its peer to read. A connection still in its TLS handshake has
    /// run no call, and what waits for it (a go-away) cannot leave before the handshake does:
    /// it keeps nobody waiting.
    fn is_busy(&self, group: u64) -> bool {
        self.registry()
            .conns
            .values()
            .filter(|registered| registered.group == group)
            .any(|registered| {
                let conn = &registered.conn;
                registered.calls.in_flight() > 0
                    || (conn.queued_len() > 0 && !conn.is_handshaking())
            })
    }

    /// Tells every connection of `group` that the server is going away: new requests are
    /// refused, and a go-away frame carries the last sequence id accepted.
    fn go_away(&self, group: u64) {
        let mut registry = self.registry();
        registry.draining.insert(group);
        for registered in registry.conns.values() {
            if registered.group == group {
                registered.calls.go_away(&registered.conn);
            }
        }
    }
}

/// Counts one connection as open from accept until its handler is dropped (or, if the loop
/// never adopted it, until the adoption closure is dropped).
pub(crate) struct ConnectionSlot {
    server: Arc<ServerShared>,
    id: u64,
    group: u64,
}

impl ConnectionSlot {
    /// Counts a connection the embedder handed over (`serve_conn`): no limit applies.
    pub(crate) fn open(server: &Arc<ServerShared>, group: u64) -> Self {
        server.stats.open_connections.fetch_add(1, Ordering::SeqCst);
        ConnectionSlot::counted(server, group)
    }

    /// Counts an accepted connection if fewer than `max_connections` are open; `None` if the
    /// server is at its limit. The check and the count are one atomic step, so listeners
    /// accepting at the same moment cannot pass the limit together.
    pub(crate) fn open_within_limit(server: &Arc<ServerShared>, group: u64) -> Option<Self> {
        let max = server.config.max_connections;
        server
            .stats
            .open_connections
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |open| {
                (open < max).then_some(open + 1)
            })
            .ok()?;
        Some(ConnectionSlot::counted(server, group))
    }

    fn counted(server: &Arc<ServerShared>, group: u64) -> Self {
        StatsCounters::bump(&server.stats.accepted_connections);
        ConnectionSlot {
            server: Arc::clone(server),
            id: server.next_id.fetch_add(1, Ordering::Relaxed),
            group,
        }
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn group(&self) -> u64 {
        self.group
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.server
            .stats
            .open_connections
            .fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for ServerShared {
    fn drop(&mut self) {
        if let Some(group) = self.conn_loops.get_mut().ok().and_then(Option::take) {
            group.shutdown();
        }
    }
}

/// A running server started by [`Server::serve`]. Dropping it shuts the server down.
pub struct ServerHandle {
    local_addr: SocketAddr,
    server: Arc<ServerShared>,
    group: Mutex<Option<LoopGroup>>,
}

impl ServerHandle {
    /// The address the server listens on (with the real port if it bound port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, closes every connection (pending calls on them fail with a
    /// connection error), and waits for the event loops to exit. Idempotent.
    ///
    /// Handlers already running finish on their worker threads; their replies are dropped.
    pub fn shutdown(&self) {
        let group = self.group.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(group) = group {
            group.shutdown();
        }
    }

    /// Shuts down gracefully (Go's gRPC: `GracefulStop`): stops accepting, sends each
    /// connection a go-away frame carrying the last request it accepted, refuses later
    /// requests with the retryable `ShuttingDown`, lets the calls in flight finish and their
    /// replies be written (a client slow to read is waited for) for up to `grace`, then closes
    /// everything as [`ServerHandle::shutdown`] does (calls still running, and replies not
    /// yet written, then fail for their callers with a connection error).
    ///
    /// Returns true if every call in flight finished, and every reply left, within `grace`.
    /// Returns once that is so (at once when nothing is in flight), and at once when the
    /// server is already shut down (idempotent).
    pub fn shutdown_gracefully(&self, grace: Duration) -> bool {
        let group = self.group.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(group) = group else {
            return true;
        };
        group.stop_accepting();
        self.server.go_away(group.id);
        let drained = drain_within(grace, || !self.server.is_busy(group.id));
        let id = group.id;
        group.shutdown();
        self.server.forget_draining(id);
        drained
    }
}

impl ServerHandle {
    /// Hands `stream` to this handle's event loops, as its acceptor would (counted within
    /// `max_connections` in one step, spread over the loops by connection id), after `greet`
    /// has written to it what must precede every frame (the HTTP listener's `200`). The slot
    /// is counted and `greet` runs while the handle cannot shut down, so a peer it greets is
    /// served and never one the loops then refuse.
    ///
    /// Fails if the handle is shut down or at `max_connections` (`greet` has not run, and the
    /// stream is given back to be answered), `greet` failed, or the socket cannot be made
    /// non-blocking; in the last two cases the socket is closed.
    pub(crate) fn adopt_greeted(
        &self,
        mut stream: TcpStream,
        greet: impl FnOnce(&mut TcpStream) -> io::Result<()>,
    ) -> Result<(), Adoption> {
        let group = self.group.lock().unwrap_or_else(|p| p.into_inner());
        let Some(group) = group.as_ref() else {
            return Err(Adoption::ShutDown(stream));
        };
        let Some(slot) = ConnectionSlot::open_within_limit(&self.server, group.id) else {
            return Err(Adoption::AtLimit(stream));
        };
        greet(&mut stream).map_err(|_| Adoption::GreetingFailed)?;
        let _ = stream.set_nodelay(true);
        // `handles` is never empty: `start_loops` starts loop 0 at least.
        let target = &group.handles[(slot.id() % group.handles.len() as u64) as usize];
        let server = Arc::clone(&self.server);
        let make_handler = Box::new(move |conn: &Connection| {
            Box::new(ServerConn::new(server, conn, slot)) as Box<dyn FrameHandler>
        });
        adopt_conn(target, stream, &self.server.config, make_handler).map_err(|_| Adoption::Failed)
    }
}

/// Why [`ServerHandle::adopt_greeted`] did not hand a stream to the loops.
#[derive(Debug)]
pub(crate) enum Adoption {
    /// The handle is shut down; the stream, untouched, is given back.
    ShutDown(TcpStream),
    /// `max_connections` are open; the stream, untouched, is given back.
    AtLimit(TcpStream),
    /// The greeting could not be written: the peer is gone or not reading.
    GreetingFailed,
    /// The loop could not take the socket (see `adopt_conn`).
    Failed,
}

impl fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerHandle")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The event loops of one listener (or of `serve_conn`).
#[derive(Debug)]
struct LoopGroup {
    id: u64,
    handles: Vec<LoopHandle>,
    threads: Vec<LoopJoin>,
}

/// What waits for one event loop to exit.
#[derive(Debug)]
enum LoopJoin {
    /// A loop on one thread.
    Plain(JoinHandle<()>),
    /// A loop that may move between threads ([`ServerConfig::loop_runs_calls`]).
    HandingOff(LoopThread),
}

impl LoopJoin {
    /// Waits for the loop to exit, unless called on the loop's own thread (it would wait
    /// for itself: a loop thread dropping the last handle).
    fn join(self) {
        match self {
            LoopJoin::Plain(thread) => {
                if thread.thread().id() != thread::current().id() {
                    let _ = thread.join();
                }
            }
            LoopJoin::HandingOff(thread) => thread.join(),
        }
    }
}

impl LoopGroup {
    fn stop_accepting(&self) {
        for handle in &self.handles {
            handle.stop_accepting();
        }
    }

    fn shutdown(self) {
        for handle in &self.handles {
            handle.shutdown();
        }
        for thread in self.threads {
            thread.join();
        }
    }
}

/// Hands `stream` to `target`, with a TLS server session when the server has TLS.
fn adopt_conn(
    target: &LoopHandle,
    stream: TcpStream,
    config: &ServerConfig,
    make_handler: MakeHandler,
) -> io::Result<()> {
    match &config.tls {
        None => target.adopt(stream, config.limits, make_handler),
        Some(tls) => {
            let session = tls::server_session(tls).map_err(io::Error::other)?;
            target.adopt_tls(stream, config.limits, session, make_handler)
        }
    }
}

fn unreachable(addr: &str, err: io::Error) -> RpcError {
    RpcError::Unreachable {
        addr: addr.to_owned(),
        source: Arc::new(err),
    }
}

/// The group id of connections served with `serve_conn`.
const SERVE_CONN_GROUP: u64 = 0;

/// Waits up to `grace` for `drained` to say so, looking every few milliseconds: how a
/// graceful shutdown (of the event loops' connections, or of a jsonrpc listener's) waits for
/// its calls to end. True if they did in time.
pub(crate) fn drain_within(grace: Duration, mut drained: impl FnMut() -> bool) -> bool {
    let deadline = deadline_after(Instant::now(), grace);
    loop {
        if drained() {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        thread::sleep(DRAIN_POLL.min(left));
    }
}

/// How often a graceful shutdown looks whether the calls in flight have finished.
const DRAIN_POLL: Duration = Duration::from_millis(5);

/// How long `serve_conn` waits for a loop to take the socket.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_accepting_at_once_never_count_past_the_connection_limit() {
        let server = Server::builder().max_connections(8).build();
        let held: Vec<ConnectionSlot> = thread::scope(|scope| {
            let tries: Vec<_> = (0..4)
                .map(|group| {
                    let shared = &server.shared;
                    scope.spawn(move || {
                        (0..1000)
                            .filter_map(|_| ConnectionSlot::open_within_limit(shared, group))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            tries
                .into_iter()
                .flat_map(|t| t.join().expect("no panic"))
                .collect()
        });
        assert_eq!(held.len(), 8);
        assert_eq!(server.stats().open_connections, 8);
        drop(held);
        assert_eq!(server.stats().open_connections, 0);
        assert!(ConnectionSlot::open_within_limit(&server.shared, 0).is_some());
    }
}
