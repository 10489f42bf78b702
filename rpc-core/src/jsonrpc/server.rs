//! `Server::serve_jsonrpc` and `Server::serve_jsonrpc_conn`: the server's services over Go's
//! `net/rpc/jsonrpc` wire, on a listener of its own (Go: `jsonrpc.ServeConn` per accepted
//! connection).
//!
//! A jsonrpc listener shares the server's services, worker pool, settings and statistics with
//! its native listeners, and its connections count against the same `max_connections`. One
//! thread accepts; each connection has a thread that reads it (see `server_conn`).

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::error::RpcError;
use crate::server::{drain_within, ConnectionSlot, Server, ServerShared};
use crate::stats::StatsCounters;

use super::message::{self, NULL};
use super::server_conn;

impl Server {
    /// Binds `addr` and serves the registered services over Go's `net/rpc/jsonrpc` wire, in
    /// background threads; returns at once. A Go program reaches it with
    /// `jsonrpc.Dial("tcp", addr)`; netrpc with [`crate::JsonRpcClient::dial`].
    ///
    /// # Errors
    ///
    /// [`RpcError::Unreachable`] if the address cannot be bound.
    ///
    /// # Examples
    ///
    /// ```
    /// use rpc_core::{JsonRpcClient, MethodTable, Server, Service, ServiceError};
    ///
    /// struct Doubler;
    /// impl Service for Doubler {
    ///     const NAME: &'static str = "Doubler";
    ///     fn into_method_table(self) -> MethodTable {
    ///         let mut table = MethodTable::new();
    ///         table.add("Double", |x: i64| Ok::<_, ServiceError>(x * 2));
    ///         table
    ///     }
    /// }
    ///
    /// let server = Server::new();
    /// server.register(Doubler)?;
    /// let running = server.serve_jsonrpc("127.0.0.1:0")?;
    /// let client = JsonRpcClient::dial(running.local_addr())?;
    /// let doubled: i64 = client.call("Doubler.Double", &21)?;
    /// assert_eq!(doubled, 42);
    /// # Ok::<(), rpc_core::RpcError>(())
    /// ```
    pub fn serve_jsonrpc(
        &self,
        addr: impl ToSocketAddrs + fmt::Debug,
    ) -> Result<JsonRpcHandle, RpcError> {
        let shown = format!("{addr:?}");
        let listener = TcpListener::bind(addr).map_err(|err| unreachable(&shown, err))?;
        self.serve_jsonrpc_listener(listener)
    }

    /// Serves jsonrpc connections accepted from `listener`, in background threads.
    ///
    /// # Errors
    ///
    /// [`RpcError::Unreachable`] if the listener's address cannot be read or the accepting
    /// thread cannot start.
    pub fn serve_jsonrpc_listener(&self, listener: TcpListener) -> Result<JsonRpcHandle, RpcError> {
        let local_addr = listener
            .local_addr()
            .map_err(|err| unreachable("listener", err))?;
        let listening = Arc::new(Listening {
            accepting: AtomicBool::new(true),
            stop: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        });
        let shared = Arc::clone(&self.shared);
        let accepting = Arc::clone(&listening);
        let accept_thread = thread::Builder::new()
            .name("netrpc-jsonrpc-accept".to_owned())
            .spawn(move || accept_loop(&listener, &shared, &accepting))
            .map_err(|err| unreachable(&local_addr.to_string(), err))?;
        Ok(JsonRpcHandle {
            local_addr,
            listening,
            accept_thread: Mutex::new(Some(accept_thread)),
        })
    }

    /// Serves jsonrpc on one connection the caller accepted, on this thread, and returns
    /// when it closes (Go: `jsonrpc.ServeConn`). Handlers run on the server's worker pool.
    ///
    /// # Errors
    ///
    /// [`RpcError::Unreachable`] if the socket cannot be set up (given a write timeout) or
    /// its writing thread cannot start.
    pub fn serve_jsonrpc_conn(&self, stream: TcpStream) -> Result<(), RpcError> {
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "peer".to_owned(), |addr| addr.to_string());
        let _slot = ConnectionSlot::open(&self.shared, JSONRPC_GROUP);
        let never = AtomicBool::new(false);
        server_conn::serve(Arc::clone(&self.shared), Arc::new(stream), &never)
            .map_err(|err| unreachable(&peer, err))
    }
}

/// A running jsonrpc listener started by [`Server::serve_jsonrpc`]. Dropping it shuts it
/// down.
pub struct JsonRpcHandle {
    local_addr: SocketAddr,
    listening: Arc<Listening>,
    accept_thread: Mutex<Option<JoinHandle<()>>>,
}

impl JsonRpcHandle {
    /// The address the listener is bound to (with the real port if it bound port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, closes every connection of this listener (calls in flight on them
    /// finish, but their replies are dropped), and waits for its threads. Idempotent.
    pub fn shutdown(&self) {
        self.stop_accepting();
        self.close_connections();
    }

    /// Stops accepting and lets every connection of this listener end as if its peer had
    /// sent its last request: nothing more is read, the calls in flight are answered, then
    /// each connection closes. Those still open after `grace` are closed as
    /// [`JsonRpcHandle::shutdown`] closes them. Returns true if every connection ended
    /// within `grace`. (Go's jsonrpc has no go-away message: a client learns of the shutdown
    /// when the connection closes.)
    pub fn shutdown_gracefully(&self, grace: Duration) -> bool {
        self.stop_accepting();
        for conn in lock(&self.listening.conns).values() {
            // Reading ends as at the peer's end of stream (`server_conn.rs`).
            let _ = conn.stream.shutdown(Shutdown::Read);
        }
        let drained = drain_within(grace, || lock(&self.listening.conns).is_empty());
        self.close_connections();
        drained
    }

    /// Stops the accepting thread and waits for it. Idempotent.
    fn stop_accepting(&self) {
        let accept_thread = lock(&self.accept_thread).take();
        let Some(accept_thread) = accept_thread else {
            return;
        };
        self.listening.accepting.store(false, Ordering::SeqCst);
        // `accept` blocks: a connection of our own wakes it to see the flag.
        let woken = TcpStream::connect_timeout(&wake_addr(self.local_addr), WAKE_TIMEOUT).is_ok();
        if woken {
            let _ = accept_thread.join();
        }
    }

    /// Closes every connection still open (their calls' replies are dropped) and waits for
    /// their threads.
    fn close_connections(&self) {
        self.listening.stop.store(true, Ordering::SeqCst);
        let conns = std::mem::take(&mut *lock(&self.listening.conns));
        for conn in conns.values() {
            let _ = conn.stream.shutdown(Shutdown::Both);
        }
        for conn in conns.into_values() {
            if let Some(thread) = conn.thread {
                let _ = thread.join();
            }
        }
    }

    /// Connections of this listener open now.
    pub fn open_connections(&self) -> usize {
        lock(&self.listening.conns).len()
    }
}

impl fmt::Debug for JsonRpcHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonRpcHandle")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Drop for JsonRpcHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What the accepting thread, the connection threads and the handle share.
struct Listening {
    /// Cleared once the listener stops taking connections.
    accepting: AtomicBool,
    /// Set as the remaining connections are closed: their threads stop waiting.
    stop: AtomicBool,
    /// Guards the open connections, by id: a clone of each socket to shut it down, and its
    /// thread to join.
    conns: Mutex<HashMap<u64, OpenConn>>,
    next_id: AtomicU64,
}

struct OpenConn {
    /// The connection's one socket, shared with its threads: shut down to end them.
    stream: Arc<TcpStream>,
    thread: Option<JoinHandle<()>>,
}

fn accept_loop(listener: &TcpListener, shared: &Arc<ServerShared>, listening: &Arc<Listening>) {
    let max_connections = shared.config.max_connections;
    for stream in listener.incoming() {
        if !listening.accepting.load(Ordering::SeqCst) {
            return;
        }
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(err) if is_out_of_files(&err) => {
                // Out of descriptors: pause instead of spinning; open connections go on.
                thread::sleep(ACCEPT_PAUSE);
                continue;
            }
            Err(_) => continue,
        };
        let Some(slot) = ConnectionSlot::open_within_limit(shared, JSONRPC_GROUP) else {
            StatsCounters::bump(&shared.stats.refused_connections);
            let text =
                format!("server at its limit of {max_connections} connections; try again later");
            // Small and the first write on a new socket: fits its send buffer.
            let _ = stream.write_all(&message::error_response(&NULL, &text));
            continue;
        };
        let stream = Arc::new(stream);
        let id = listening.next_id.fetch_add(1, Ordering::Relaxed);
        let open = OpenConn {
            stream: Arc::clone(&stream),
            thread: None,
        };
        lock(&listening.conns).insert(id, open);
        let server = Arc::clone(shared);
        let conn_listening = Arc::clone(listening);
        let spawned = thread::Builder::new()
            .name("netrpc-jsonrpc-conn".to_owned())
            .spawn(move || {
                let _ = server_conn::serve(server, stream, &conn_listening.stop);
                lock(&conn_listening.conns).remove(&id);
                drop(slot);
            });
        let mut conns = lock(&listening.conns);
        match spawned {
            // Gone already if the connection has ended: its handle is then dropped.
            Ok(thread) => {
                if let Some(open) = conns.get_mut(&id) {
                    open.thread = Some(thread);
                }
            }
            // No thread (the closure, socket and slot are dropped): the connection closes.
            Err(_) => {
                conns.remove(&id);
            }
        }
    }
}

/// Where to connect to wake a listener bound to `addr` (loopback if it is a wildcard).
fn wake_addr(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

fn is_out_of_files(err: &io::Error) -> bool {
    // EMFILE (24) and ENFILE (23) on Linux.
    matches!(err.raw_os_error(), Some(23 | 24))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Single map or option operations: a poisoned lock still holds sound data.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn unreachable(addr: &str, err: io::Error) -> RpcError {
    RpcError::Unreachable {
        addr: addr.to_owned(),
        source: Arc::new(err),
    }
}

/// The loop-group id jsonrpc connections are counted under (they have no event loop).
const JSONRPC_GROUP: u64 = u64::MAX;

/// How long accepting pauses when the process is out of descriptors.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// How long `shutdown` tries to connect to its own listener to wake it.
const WAKE_TIMEOUT: Duration = Duration::from_secs(1);
