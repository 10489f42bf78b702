//! `JsonRpcClient`: calls a server that speaks Go's `net/rpc/jsonrpc` wire, such as a Go
//! program running `jsonrpc.ServeConn`, or [`crate::Server::serve_jsonrpc`] (Go:
//! `jsonrpc.Dial` and the `rpc.Client` it returns).
//!
//! Callers queue whole requests for the client's writer thread (`write_queue.rs`), so a
//! call keeps its own deadline even while the server reads slowly or not at all, and a
//! request whose call has timed out by its turn is not sent. One reader thread per client
//! reads responses and completes calls by id, in whatever order they come. It also fails
//! `go` calls whose deadline has passed, checking every 100 ms, also while a response is
//! arriving slowly (a half-written one is kept and held to its frame timeout); a blocking
//! `call` waits with its own deadline. Both threads share the one socket.

use std::fmt;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use crossbeam_channel::RecvTimeoutError;
use rpc_codec::{Codec, CodecKind};
use rpc_transport::clock::deadline_after;
use rpc_transport::{FrameLimits, TransportError};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::call::Call;
use crate::catch_panic::catch_panic;
use crate::client_builder::{
    DEFAULT_CALL_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_PENDING_CALLS,
    DEFAULT_MAX_UNSENT_BYTES,
};
use crate::error::RpcError;

use super::client_pending::{Completer, PendingCall, PendingCalls};
use super::message;
use super::reader::{socket_timeout, ReadError, ValueReader};
use super::write_queue::WriteQueue;

/// A client of Go's `net/rpc/jsonrpc` wire (Go: the `*rpc.Client` from `jsonrpc.Dial`).
///
/// Safe to share between threads (`&JsonRpcClient` from many threads, or an `Arc`): calls
/// from all of them travel on one connection. When the connection ends, calls in flight fail
/// with [`RpcError::ConnectionLost`] and later ones with [`RpcError::Shutdown`]. Dropping the
/// client closes it.
///
/// Errors from the server are texts; Go's "rpc: can't find service …" and "rpc: can't find
/// method …" become [`RpcError::UnknownService`] and [`RpcError::UnknownMethod`], and every
/// other text [`RpcError::Method`].
pub struct JsonRpcClient {
    shared: Arc<ClientShared>,
    /// The reading and writing threads, joined on drop.
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// Builds a [`JsonRpcClient`] with non-default settings.
#[derive(Debug, Clone)]
pub struct JsonRpcClientBuilder {
    call_timeout: Duration,
    connect_timeout: Duration,
    limits: FrameLimits,
    max_pending_calls: usize,
    max_unsent_bytes: usize,
}

/// What the callers and the client's threads share.
struct ClientShared {
    /// Requests waiting for the writer thread.
    requests: Arc<WriteQueue>,
    /// The socket both threads use, to shut it down without waiting for either.
    socket: Arc<TcpStream>,
    max_unsent_bytes: usize,
    pending: PendingCalls,
    next_id: AtomicU64,
    /// `close` was called: calls still pending end with `Shutdown`.
    closing: AtomicBool,
    discarded_replies: AtomicU64,
    call_timeout: Duration,
    max_message_len: usize,
    peer_addr: SocketAddr,
}

impl JsonRpcClientBuilder {
    /// Deadline of each call (default [`DEFAULT_CALL_TIMEOUT`]).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// How long dialing may take (default [`DEFAULT_CONNECT_TIMEOUT`]).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Largest message, in bytes, either way (`max_body_len`, default 4 MiB), and the frame
    /// timeout: how long a response may take from its first byte to its last, and a request
    /// to be written (default 10 s).
    pub fn limits(mut self, limits: FrameLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Most calls pending at once (default [`DEFAULT_MAX_PENDING_CALLS`]); a call beyond
    /// fails at once with [`RpcError::Throttled`], unsent.
    pub fn max_pending_calls(mut self, count: usize) -> Self {
        self.max_pending_calls = count.max(1);
        self
    }

    /// Most request bytes waiting to be written (default [`DEFAULT_MAX_UNSENT_BYTES`]): past
    /// it, while the server reads slowly or not at all, a call fails at once with
    /// [`RpcError::Throttled`], unsent.
    pub fn max_unsent_bytes(mut self, bytes: usize) -> Self {
        self.max_unsent_bytes = bytes;
        self
    }

    /// Connects to `addr` (Go: `jsonrpc.Dial("tcp", addr)`).
    ///
    /// # Errors
    ///
    /// [`RpcError::Unreachable`] if no address it resolves to accepts within the connect
    /// timeout.
    pub fn dial(self, addr: impl ToSocketAddrs + fmt::Display) -> Result<JsonRpcClient, RpcError> {
        let shown = addr.to_string();
        let unreachable = |err: io::Error| RpcError::Unreachable {
            addr: shown.clone(),
            source: Arc::new(err),
        };
        let mut last_error = None;
        for candidate in addr.to_socket_addrs().map_err(unreachable)? {
            match TcpStream::connect_timeout(&candidate, self.connect_timeout) {
                Ok(stream) => return self.connect_stream(stream),
                Err(err) => last_error = Some(err),
            }
        }
        Err(unreachable(
            last_error.unwrap_or_else(|| io::ErrorKind::AddrNotAvailable.into()),
        ))
    }

    /// Uses an already-connected socket (Go: `jsonrpc.NewClient(conn)`).
    ///
    /// # Errors
    ///
    /// [`RpcError::Unreachable`] if the socket cannot be set up or the client's threads
    /// cannot start.
    pub fn connect_stream(self, stream: TcpStream) -> Result<JsonRpcClient, RpcError> {
        let peer = stream.peer_addr();
        let shown = peer
            .as_ref()
            .map_or_else(|_| "peer".to_owned(), ToString::to_string);
        let unreachable = |err: io::Error| RpcError::Unreachable {
            addr: shown.clone(),
            source: Arc::new(err),
        };
        let peer_addr = peer.map_err(unreachable)?;
        let _ = stream.set_nodelay(true);
        stream
            .set_write_timeout(socket_timeout(self.limits.frame_timeout))
            .map_err(unreachable)?;
        let socket = Arc::new(stream);
        let shared = Arc::new(ClientShared {
            requests: Arc::new(WriteQueue::default()),
            socket: Arc::clone(&socket),
            max_unsent_bytes: self.max_unsent_bytes,
            pending: PendingCalls::new(self.max_pending_calls),
            next_id: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            discarded_replies: AtomicU64::new(0),
            call_timeout: self.call_timeout,
            max_message_len: self.limits.max_body_len,
            peer_addr,
        });
        let reader = ValueReader::new(
            Arc::clone(&socket),
            self.limits.max_body_len,
            self.limits.frame_timeout,
        );
        // Made first, so that a failure to start a thread closes it (its drop) and the
        // other thread ends too.
        let client = JsonRpcClient {
            shared,
            threads: Mutex::new(Vec::new()),
        };
        let reading = Arc::clone(&client.shared);
        let reader = thread::Builder::new()
            .name("netrpc-jsonrpc-client".to_owned())
            .spawn(move || read_responses(&reading, reader))
            .map_err(unreachable)?;
        client.lock_threads().push(reader);
        let writing = Arc::clone(&client.shared);
        // A request whose call ended while it was queued (timed out behind a slow server) is
        // not sent: its caller was told it failed, so the server must not run it.
        let call_waits = move |id| writing.pending.is_waiting(id, Instant::now());
        let requests = Arc::clone(&client.shared.requests);
        let writer = thread::Builder::new()
            .name("netrpc-jsonrpc-client-write".to_owned())
            .spawn(move || requests.write_requests_to(&socket, call_waits))
            .map_err(unreachable)?;
        client.lock_threads().push(writer);
        Ok(client)
    }
}

impl Default for JsonRpcClientBuilder {
    fn default() -> Self {
        JsonRpcClientBuilder {
            call_timeout: DEFAULT_CALL_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            limits: FrameLimits::default(),
            max_pending_calls: DEFAULT_MAX_PENDING_CALLS,
            max_unsent_bytes: DEFAULT_MAX_UNSENT_BYTES,
        }
    }
}

impl JsonRpcClient {
    /// Connects to `addr` with default settings (Go: `jsonrpc.Dial("tcp", addr)`).
    ///
    /// # Errors
    ///
    /// [`RpcError::Unreachable`] if nothing accepts within [`DEFAULT_CONNECT_TIMEOUT`].
    pub fn dial(addr: impl ToSocketAddrs + fmt::Display) -> Result<JsonRpcClient, RpcError> {
        JsonRpcClientBuilder::default().dial(addr)
    }

    /// A builder for a client with other settings.
    pub fn builder() -> JsonRpcClientBuilder {
        JsonRpcClientBuilder::default()
    }

    /// Calls `method` (`"Service.Method"`) with `args` and blocks until the reply, the
    /// method's error or the call timeout (Go: `Client.Call`).
    ///
    /// # Errors
    ///
    /// Any [`RpcError`]: the server's error text ([`RpcError::Method`], or the unknown
    /// service or method), [`RpcError::Timeout`], [`RpcError::Decode`] if the reply does not
    /// decode as `R`, [`RpcError::ConnectionLost`], [`RpcError::Shutdown`] after the
    /// connection ended, [`RpcError::Throttled`] at the limit of pending calls.
    pub fn call<A, R>(&self, method: &str, args: &A) -> Result<R, RpcError>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        self.call_timeout(method, args, self.shared.call_timeout)
    }

    /// Like [`JsonRpcClient::call`], with a deadline of `timeout` for this call; a reply
    /// arriving later is discarded.
    ///
    /// # Errors
    ///
    /// As [`JsonRpcClient::call`].
    pub fn call_timeout<A, R>(
        &self,
        method: &str,
        args: &A,
        timeout: Duration,
    ) -> Result<R, RpcError>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        let complete: Completer = Box::new(move |outcome| {
            let _ = done_tx.send(outcome.map(<[u8]>::to_vec));
        });
        let id = self.start(method, args, timeout, complete)?;
        let outcome = match done_rx.recv_timeout(timeout) {
            Ok(outcome) => outcome,
            Err(RecvTimeoutError::Disconnected) => Err(RpcError::Shutdown),
            Err(RecvTimeoutError::Timeout) if self.shared.pending.remove(id).is_some() => {
                Err(RpcError::Timeout { after: timeout })
            }
            // The reader took the call just now: its outcome is on the way.
            Err(RecvTimeoutError::Timeout) => done_rx
                .recv_timeout(COMPLETION_GRACE)
                .unwrap_or(Err(RpcError::Timeout { after: timeout })),
        };
        decode_reply(&outcome?)
    }

    /// Starts a call and returns at once (Go: `Client.Go`); the result arrives on
    /// [`Call::done`] or from [`Call::wait`], by the call timeout (checked every 100 ms).
    pub fn go<A, R>(&self, method: &str, args: &A) -> Call<R>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned + Send + 'static,
    {
        let timeout = self.shared.call_timeout;
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        let sender = done_tx.clone();
        let complete: Completer = Box::new(move |outcome| {
            // Room for exactly this one result: the send cannot block.
            let _ = sender.send(outcome.and_then(decode_reply));
        });
        match self.start(method, args, timeout, complete) {
            Ok(id) => Call::new(id, timeout, done_rx),
            Err(err) => {
                let _ = done_tx.send(Err(err));
                Call::new(0, timeout, done_rx)
            }
        }
    }

    /// Closes the connection: pending calls fail with [`RpcError::Shutdown`], as do later
    /// ones (Go: `Client.Close`). Idempotent.
    pub fn close(&self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.shared.requests.finish();
        let _ = self.shared.socket.shutdown(Shutdown::Both);
    }

    /// True once the connection has ended (closed here, by the peer, or broken).
    pub fn is_closed(&self) -> bool {
        self.shared.pending.is_ended()
    }

    /// The server's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.peer_addr
    }

    /// Calls sent and not yet completed.
    pub fn pending_calls(&self) -> usize {
        self.shared.pending.len()
    }

    /// Responses whose id matched no pending call (late, after a timeout, or unknown), and
    /// were dropped.
    pub fn discarded_replies(&self) -> u64 {
        self.shared.discarded_replies.load(Ordering::Relaxed)
    }

    /// Registers the call and queues its request for the writer; returns its id.
    ///
    /// The call's one result goes one way only: after `Ok` through `complete` (exactly once,
    /// from whichever thread ends the call); after `Err` nowhere else, since `complete` has
    /// been dropped unrun, and the caller reports the error itself.
    fn start<A: Serialize + ?Sized>(
        &self,
        method: &str,
        args: &A,
        timeout: Duration,
        complete: Completer,
    ) -> Result<u64, RpcError> {
        let shared = &self.shared;
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let mut request = BytesMut::new();
        message::encode_request(&mut request, id, method, args).map_err(RpcError::Encode)?;
        if request.len() > shared.max_message_len {
            return Err(RpcError::FrameTooLarge {
                declared: Some(request.len()),
                limit: Some(shared.max_message_len),
                detail: "request not sent".to_owned(),
            });
        }
        let call = PendingCall {
            method: method.to_owned(),
            deadline: deadline_after(Instant::now(), timeout),
            timeout,
            complete,
        };
        // The server reads slowly or not at all: refuse rather than queue without bound.
        if shared.requests.queued_bytes() > shared.max_unsent_bytes {
            return Err(RpcError::Throttled);
        }
        // Registered before it is written, so the response cannot arrive first.
        shared.pending.insert(id, call)?;
        if !shared.requests.push_request(id, request) {
            // A write failed (the reader ends the other calls) or the client is closing.
            if shared.pending.remove(id).is_none() {
                // The reader ended the connection between our insert and now, and failed
                // this call with the rest: its completer has delivered the one result the
                // caller gets. Reporting an error too would deliver a second, and `go`
                // would block for ever sending it into the call's full one-slot channel.
                return Ok(id);
            }
            return Err(match shared.closing.load(Ordering::SeqCst) {
                true => RpcError::Shutdown,
                false => RpcError::ConnectionLost { cause: None },
            });
        }
        Ok(id)
    }
}

impl fmt::Debug for JsonRpcClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonRpcClient")
            .field("peer_addr", &self.shared.peer_addr)
            .field("pending_calls", &self.pending_calls())
            .finish_non_exhaustive()
    }
}

impl JsonRpcClient {
    fn lock_threads(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        // A list of handles: a poisoned lock still holds them all.
        self.threads.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for JsonRpcClient {
    fn drop(&mut self) {
        self.close();
        for thread in self.lock_threads().drain(..) {
            let _ = thread.join();
        }
    }
}

/// The reader thread: completes calls from responses until the connection ends, then fails
/// the rest.
fn read_responses(shared: &ClientShared, mut reader: ValueReader) {
    let mut next_sweep = deadline_after(Instant::now(), SWEEP_INTERVAL);
    let cause = loop {
        // Back by the next sweep even in the middle of a response arriving slowly (its
        // frame timeout still counts from its first byte), so that no `go` call waits on it.
        let wait = next_sweep.saturating_duration_since(Instant::now());
        match reader.next_value_within(wait) {
            Ok(Some(bytes)) => match message::parse_response(bytes) {
                Ok(response) => {
                    if !shared.pending.complete(&response) {
                        shared.discarded_replies.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(detail) => break invalid_data(format!("bad response: {detail}")),
            },
            Ok(None) => {}
            Err(ReadError::Closed) => break TransportError::Closed,
            Err(ReadError::FrameTimeout) => break TransportError::FrameTimeout,
            Err(ReadError::Io(err)) => break TransportError::Io(Arc::new(err)),
            Err(err) => break invalid_data(err.to_string()),
        }
        // Once per interval, not per response: the sweep walks every pending call.
        let now = Instant::now();
        if now >= next_sweep {
            shared.pending.fail_expired(now);
            next_sweep = deadline_after(now, SWEEP_INTERVAL);
        }
    };
    reader.shutdown();
    shared.requests.finish();
    let closed_here = shared.closing.load(Ordering::SeqCst);
    shared.pending.end(|| match closed_here {
        true => RpcError::Shutdown,
        false => RpcError::ConnectionLost {
            cause: Some(cause.clone()),
        },
    });
}

/// Decodes a reply as `R`; a panicking `Deserialize` fails the call instead of the thread.
fn decode_reply<R: DeserializeOwned>(bytes: &[u8]) -> Result<R, RpcError> {
    match catch_panic(|| CodecKind::Json.decode(bytes)) {
        Ok(decoded) => decoded.map_err(RpcError::Decode),
        Err(_) => Err(RpcError::Decode(rpc_codec::CodecError::Decode {
            codec: "json",
            detail: "the reply type's Deserialize panicked".to_owned(),
        })),
    }
}

fn invalid_data(detail: String) -> TransportError {
    TransportError::Io(Arc::new(io::Error::new(io::ErrorKind::InvalidData, detail)))
}

/// How often the reader thread fails `go` calls past their deadline.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

/// How long a blocking call whose deadline passed just as its reply arrived waits for it.
const COMPLETION_GRACE: Duration = Duration::from_secs(1);
