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

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use rpc_transport::{
    spawn_loop, CloseReason, Connection, Frame, FrameHandler, FrameLimits, LoopHandle,
};

use crate::error::RpcError;
use crate::pool::WorkerPool;
use crate::server_conn::ServerConn;
use crate::service::{Dispatch, MethodTable, Service};

/// Registers services and serves them. Cheap to clone: clones share services and workers.
///
/// Services may be registered before or while serving; each connection sees every service
/// registered so far.
///
#[derive(Clone)]
pub struct Server {
    shared: Arc<ServerShared>,
}

/// What every connection of a server shares.
pub(crate) struct ServerShared {
    /// Guards the registered services: written by `register`, read per request.
    services: RwLock<HashMap<String, Arc<MethodTable>>>,
    pub(crate) pool: WorkerPool,
    config: ServerConfig,
    /// Loops started by `serve_conn` for connections the caller accepted itself.
    conn_loops: Mutex<Option<LoopGroup>>,
}

/// Settings of a [`Server`]; build one with [`Server::builder`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Event-loop threads that read and write sockets.
    pub event_loops: usize,
    /// Most handler threads running at once; further calls queue for a free thread.
    pub max_workers: usize,
    /// How long an idle handler thread lives.
    pub worker_keep_alive: Duration,
    /// Frame size limits for reading requests and writing replies.
    pub limits: FrameLimits,
}

impl Default for ServerConfig {
    fn default() -> Self {
        let cores = thread::available_parallelism().map_or(1, usize::from);
        ServerConfig {
            event_loops: (cores / 2).clamp(1, 4),
            max_workers: DEFAULT_MAX_WORKERS,
            worker_keep_alive: Duration::from_secs(10),
            limits: FrameLimits::default(),
        }
    }
}

/// Builds a [`Server`] with non-default settings.
#[derive(Debug, Clone, Default)]
pub struct ServerBuilder {
    config: ServerConfig,
}

impl ServerBuilder {
    /// Event-loop threads (default: half the cores, 1 to 4).
    pub fn event_loops(mut self, count: usize) -> Self {
        self.config.event_loops = count.max(1);
        self
    }

    /// Cap on handler threads (default [`DEFAULT_MAX_WORKERS`]). Calls beyond it wait in a
    /// queue, in arrival order, until a thread is free.
    pub fn max_workers(mut self, count: usize) -> Self {
        self.config.max_workers = count.max(1);
        self
    }

    /// How long an idle handler thread lives (default 10 s).
    pub fn worker_keep_alive(mut self, keep_alive: Duration) -> Self {
        self.config.worker_keep_alive = keep_alive;
        self
    }

    /// Frame size limits (default [`FrameLimits::default`]: 4 MiB bodies).
    pub fn limits(mut self, limits: FrameLimits) -> Self {
        self.config.limits = limits;
        self
    }

    /// The server.
    pub fn build(self) -> Server {
        let config = self.config;
        Server {
            shared: Arc::new(ServerShared {
                services: RwLock::default(),
                pool: WorkerPool::new(config.max_workers, config.worker_keep_alive),
                config,
                conn_loops: Mutex::new(None),
            }),
        }
    }
}

impl Server {
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

    /// Handlers running right now.
    pub fn running_handlers(&self) -> usize {
        self.shared.pool.running()
    }

    /// Worker threads alive right now (idle ones included).
    pub fn worker_threads(&self) -> usize {
        self.shared.pool.threads()
    }

    /// Registers `service` under its own name, [`Service::NAME`] (Go: `Register`).
    ///
    /// # Errors
    ///
    /// [`RpcError::InvalidRegistration`] if a service of that name is already registered.
    pub fn register<S: Service>(&self, service: S) -> Result<(), RpcError> {
        self.register_name(S::NAME, service)
    }

    /// Registers `service` under `name` (Go: `RegisterName`).
    ///
    /// # Errors
    ///
    /// [`RpcError::InvalidRegistration`] if `name` is empty, contains a dot, or is taken.
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
    /// [`RpcError::InvalidRegistration`] if a service of that name is already registered.
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
        let group = self
            .start_loops(Some(listener))
            .map_err(|err| unreachable(&local_addr.to_string(), err))?;
        Ok(ServerHandle {
            local_addr,
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
        handle
            .adopt_and_wait(
                stream,
                self.shared.config.limits,
                Box::new(move |_| {
                    Box::new(NotifyOnClose {
                        inner: ServerConn::new(shared),
                        closed: closed_tx,
                    })
                }),
                ADOPT_TIMEOUT,
            )
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
            *loops = Some(self.start_loops(None)?);
        }
        Ok(loops
            .as_ref()
            .map(|group| group.handles[0].clone())
            .expect("set just above"))
    }

    fn start_loops(&self, listener: Option<TcpListener>) -> io::Result<LoopGroup> {
        let count = self.shared.config.event_loops;
        let mut handles = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        // Loops 1.. have no listener; loop 0 accepts and spreads connections over all of them.
        for index in 1..count {
            let (handle, thread) = spawn_loop(&format!("netrpc-server-loop-{index}"), None)?;
            handles.push(handle);
            threads.push(thread);
        }
        let listener = listener.map(|listener| (listener, self.acceptor(handles.clone())));
        let (handle, thread) = spawn_loop("netrpc-server-loop-0", listener)?;
        handles.insert(0, handle);
        threads.insert(0, thread);
        Ok(LoopGroup { handles, threads })
    }

    /// Round-robin over the accepting loop itself and `others`.
    fn acceptor(&self, others: Vec<LoopHandle>) -> rpc_transport::Acceptor {
        let shared = Arc::clone(&self.shared);
        let mut next = 0usize;
        Box::new(move |stream, own| {
            let target = if next == 0 { own } else { &others[next - 1] };
            next = (next + 1) % (others.len() + 1);
            let shared = Arc::clone(&shared);
            let limits = shared.config.limits;
            let make_handler = Box::new(move |_: &Connection| {
                Box::new(ServerConn::new(shared)) as Box<dyn FrameHandler>
            });
            // A socket that cannot be made non-blocking is dropped, which closes it.
            let _ = target.adopt(stream, limits, make_handler);
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
    /// The method table of service `name`.
    pub(crate) fn service(&self, name: &str) -> Option<Arc<MethodTable>> {
        let services = self.services.read().unwrap_or_else(|p| p.into_inner());
        services.get(name).cloned()
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
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
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
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The event loops of one listener (or of `serve_conn`).
#[derive(Debug)]
struct LoopGroup {
    handles: Vec<LoopHandle>,
    threads: Vec<JoinHandle<()>>,
}

impl LoopGroup {
    fn shutdown(self) {
        for handle in &self.handles {
            handle.shutdown();
        }
        let current = thread::current().id();
        for thread in self.threads {
            // A loop thread dropping the last handle must not wait for itself.
            if thread.thread().id() != current {
                let _ = thread.join();
            }
        }
    }
}

/// Wraps a connection's handler to report when it closes (for the blocking `serve_conn`).
struct NotifyOnClose {
    inner: ServerConn,
    closed: crossbeam_channel::Sender<()>,
}

impl FrameHandler for NotifyOnClose {
    fn handle_frame(&mut self, conn: &Connection, frame: Frame) {
        self.inner.handle_frame(conn, frame);
    }

    fn handle_frame_error(&mut self, conn: &Connection, error: &rpc_transport::TransportError) {
        self.inner.handle_frame_error(conn, error);
    }

    fn handle_eof(&mut self, conn: &Connection) -> rpc_transport::EofAction {
        self.inner.handle_eof(conn)
    }

    fn handle_close(&mut self, conn: &Connection, reason: CloseReason) {
        self.inner.handle_close(conn, reason);
        let _ = self.closed.send(());
    }
}

fn unreachable(addr: &str, err: io::Error) -> RpcError {
    RpcError::Unreachable {
        addr: addr.to_owned(),
        source: Arc::new(err),
    }
}

/// Default cap on handler threads.
pub const DEFAULT_MAX_WORKERS: usize = 1024;

/// How long `serve_conn` waits for a loop to take the socket.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(5);
