//! `Client`: calls methods on a server over one connection (Go: `rpc.Client`).
//!
//! ```text
//!  caller thread                      client event loop                 server
//!  ─────────────                      ─────────────────                 ──────
//!  encode args into a frame
//!  insert seq in pending table
//!  write frame to the socket ─────────────────────────────────────────► request
//!  wait on the call's channel         read reply frame  ◄────────────── reply
//!                                     take seq from pending table
//!  ◄─────────────── complete ──────── (decode, for `go`)
//! ```
//!
//! A lone blocking call's frame is written by its calling thread; `go` calls, and blocking
//! calls made while others are in flight, are batched and written by the event loop at the
//! end of its turn (and the loop finishes any write the socket refused). Calls started in a
//! [`crate::Batch`] (`batch.rs`) wait for the batch, which writes them from the caller's
//! thread. Replies are matched by sequence id, so many threads
//! share one connection and replies may arrive in any order. Settings and dialing live in
//! `client_builder.rs`.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use rpc_codec::{Codec, CodecError, CodecKind};
use rpc_transport::clock::deadline_after;
use rpc_transport::{Frame, FrameBuilder, FrameHead, FrameKind, ReadHere, TransportError};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::call::{Call, Completion, DoneSender, ReplyReader};
use crate::catch_panic::catch_panic;
use crate::client_builder::{ClientBuilder, ClientConfig};
use crate::client_conn::{handle_reply_frame, lock, queue_answer};
use crate::error::RpcError;
use crate::link::Link;
use crate::middleware::{run_after_call, run_before_call, CallRecord};
use crate::pending::{Completer, PendingCalls};

/// A connection to a server, shared by any number of threads. Cheap to clone.
///
/// `Send + Sync`. The connection closes when [`Client::close`] is called or the last clone
/// is dropped; every pending call then fails with [`RpcError::Shutdown`], and every later
/// call fails at once with the same error. If the server goes away instead, pending calls
/// fail with [`RpcError::ConnectionLost`].
///
/// # Examples
///
/// ```no_run
/// use rpc_core::Client;
///
/// let client = Client::dial("127.0.0.1:1234")?;
/// let product: i64 = client.call("Arith.Multiply", &(7i64, 8i64))?;
/// # Ok::<(), rpc_core::RpcError>(())
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

/// A [`Client`] that does not keep it alive ([`Client::downgrade`]).
#[derive(Debug)]
pub(crate) struct WeakClient(std::sync::Weak<ClientInner>);

impl WeakClient {
    /// The client, while a clone of it lives.
    pub(crate) fn upgrade(&self) -> Option<Client> {
        self.0.upgrade().map(|inner| Client { inner })
    }
}

struct ClientInner {
    /// A socket connection, or an end of a simulated network.
    conn: Link,
    pending: Arc<Mutex<PendingCalls>>,
    next_seq: AtomicU64,
    config: ClientConfig,
    /// [`crate::Batch`]es open now: their calls' frames wait unwritten until they are sent.
    open_batches: AtomicUsize,
}

impl Client {
    /// True if `other` is a clone of this client (the same connection).
    pub(crate) fn same_connection(&self, other: &Client) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// A client over `conn`, whose replies are matched in `pending`.
    pub(crate) fn with_link(
        conn: Link,
        pending: Arc<Mutex<PendingCalls>>,
        config: ClientConfig,
    ) -> Client {
        Client {
            inner: Arc::new(ClientInner {
                conn,
                pending,
                next_seq: AtomicU64::new(1),
                config,
                open_batches: AtomicUsize::new(0),
            }),
        }
    }

    /// Connects to `addr` with default settings (Go: `rpc.Dial("tcp", addr)`).
    ///
    /// # Errors
    ///
    /// [`RpcError::Unreachable`] if nothing accepts within [`crate::DEFAULT_CONNECT_TIMEOUT`].
    pub fn dial(addr: impl ToSocketAddrs + fmt::Display) -> Result<Client, RpcError> {
        ClientBuilder::default().dial(addr)
    }

    /// Connects to `addr`, giving up after `timeout` (Go: `net.DialTimeout` + `NewClient`).
    ///
    /// # Errors
    ///
    /// [`RpcError::Unreachable`] if nothing accepts in time.
    pub fn dial_timeout(
        addr: impl ToSocketAddrs + fmt::Display,
        timeout: Duration,
    ) -> Result<Client, RpcError> {
        ClientBuilder::default().connect_timeout(timeout).dial(addr)
    }

    /// A builder for a client with other settings.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// Calls `method` (`"Service.Method"`) and blocks until the reply, the method's error or
    /// the client's call timeout (Go: `Client.Call`).
    ///
    /// # Errors
    ///
    /// Any [`RpcError`]: see its variants.
    pub fn call<A, R>(&self, method: &str, args: &A) -> Result<R, RpcError>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        self.call_timeout(method, args, self.inner.config.call_timeout)
    }

    /// Like [`Client::call`], with a deadline of `timeout` for this call.
    ///
    /// # Errors
    ///
    /// Any [`RpcError`]; [`RpcError::Timeout`] after `timeout`, and a reply arriving later
    /// is discarded.
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
        // The caller waits with its own deadline, so the loop keeps no timer for this call.
        let seq = self.start_call(
            method,
            args,
            timeout,
            CallKind::Blocking,
            Box::new(move |result| {
                let _ = done_tx.send(result);
            }),
        );
        let Some(outcome) = self.await_outcome(seq, &done_rx, timeout) else {
            self.send_cancel(seq);
            return Err(RpcError::Timeout { after: timeout });
        };
        outcome.and_then(|frame| decode_reply(self.inner.config.codec, method, frame))
    }

    /// Starts a call of `method` and returns at once (Go: `Client.Go`). The result arrives
    /// on [`Call::done`], or from [`Call::wait`], by the client's call timeout at the latest.
    pub fn go<A, R>(&self, method: &str, args: &A) -> Call<R>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned + Send + 'static,
    {
        self.go_timeout(method, args, self.inner.config.call_timeout)
    }

    /// Like [`Client::go`], with a deadline of `timeout` for this call.
    pub fn go_timeout<A, R>(&self, method: &str, args: &A, timeout: Duration) -> Call<R>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned + Send + 'static,
    {
        self.start_go(method, args, timeout, CallKind::Go)
    }

    /// Starts a call whose [`Completion`] is sent to `done`, shared with other calls
    /// (Go: `Client.Go` with a caller-supplied `done` channel). Returns the call's sequence
    /// id, which the completion carries.
    pub fn go_with<A, R>(&self, method: &str, args: &A, done: &DoneSender<R>) -> u64
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned + Send + 'static,
    {
        self.start_go_with(method, args, done, CallKind::Go)
    }

    /// Waits up to `timeout` for the next completion on `completions`, a channel that
    /// gathers calls of this client ([`Client::go_with`], [`crate::Batch::go_with`]).
    ///
    /// Unlike a plain `recv` on the channel, it reads the replies on this thread while
    /// nobody else is reading the connection, as a blocking [`Client::call`] does: no wake-up
    /// of the client's event loop and no hand-off from it. At 4 connections x 16 calls in
    /// flight that halves the p99 latency, and with pool dispatch gives a third to a half more
    /// calls/s (`docs/BENCHMARKS.md`). Every reply it reads completes its own call, whoever
    /// waits for it. It stops reading at the earliest deadline among the client's pending
    /// calls and leaves that call's timeout to the event loop.
    ///
    /// A completion that comes from elsewhere while it reads (a call of another client
    /// sharing the channel, a [`Client::cancel`] on another thread) is seen within 100 ms,
    /// the longest it sleeps between looks at the channel: for a channel shared by several
    /// clients, a plain `recv` suits better.
    ///
    /// # Errors
    ///
    /// [`RecvTimeoutError::Timeout`] when nothing arrived in time;
    /// [`RecvTimeoutError::Disconnected`] if every sender of the channel is gone.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use rpc_core::{done_channel, Client};
    ///
    /// let client = Client::dial("127.0.0.1:1234")?;
    /// let (done, completions) = done_channel::<i64>();
    /// for b in 1..=16i64 {
    ///     client.go_with("Arith.Multiply", &(7i64, b), &done);
    /// }
    /// for _ in 0..16 {
    ///     let completion = client.recv_completion(&completions, Duration::from_secs(5))?;
    ///     println!("call {}: {:?}", completion.seq, completion.result);
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv_completion<R>(
        &self,
        completions: &Receiver<Completion<R>>,
        timeout: Duration,
    ) -> Result<Completion<R>, RecvTimeoutError> {
        let deadline = deadline_after(Instant::now(), timeout);
        self.inner
            .read_replies(deadline, &|| !completions.is_empty());
        completions.recv_deadline(deadline)
    }

    /// [`Client::go_timeout`] for a call of `kind`.
    pub(crate) fn start_go<A, R>(
        &self,
        method: &str,
        args: &A,
        timeout: Duration,
        kind: CallKind,
    ) -> Call<R>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned + Send + 'static,
    {
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        let codec = self.inner.config.codec;
        let name = method.to_owned();
        let seq = self.start_call(
            method,
            args,
            timeout,
            kind,
            Box::new(move |result| {
                // Room for exactly this one result: the send cannot block or fail for lack of room.
                let _ = done_tx.send(result.and_then(|frame| decode_reply(codec, &name, frame)));
            }),
        );
        let reader: Weak<ClientInner> = Arc::downgrade(&self.inner);
        Call::new(seq, timeout, done_rx).read_by(reader)
    }

    /// [`Client::go_with`] for a call of `kind`.
    pub(crate) fn start_go_with<A, R>(
        &self,
        method: &str,
        args: &A,
        done: &DoneSender<R>,
        kind: CallKind,
    ) -> u64
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned + Send + 'static,
    {
        let codec = self.inner.config.codec;
        let done = done.clone();
        let method_owned = method.to_owned();
        let seq = self.inner.next_seq.fetch_add(1, Ordering::Relaxed);
        let complete: Completer = Box::new(move |result| {
            let result = result.and_then(|frame| decode_reply(codec, &method_owned, frame));
            done.send(Completion {
                seq,
                method: method_owned,
                result,
            });
        });
        self.send_call(
            seq,
            method,
            args,
            self.inner.config.call_timeout,
            kind,
            complete,
        );
        seq
    }

    /// Writes the frames of calls started in a [`crate::Batch`], now, from this thread. A
    /// failed write closes the connection, which fails those calls.
    pub(crate) fn flush_batch(&self) {
        let _ = self.inner.conn.flush();
    }

    /// Counts a [`crate::Batch`] opened on this client.
    pub(crate) fn batch_opened(&self) {
        self.inner.open_batches.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a [`crate::Batch`] sent (or dropped, which sends it).
    pub(crate) fn batch_sent(&self) {
        self.inner.open_batches.fetch_sub(1, Ordering::Relaxed);
    }

    /// Closes the connection (Go: `Client.Close`). Pending calls fail with
    /// [`RpcError::Shutdown`]; later calls fail at once. Idempotent.
    pub fn close(&self) {
        self.inner.conn.close();
    }

    /// A handle that reaches this client while another clone of it lives, without keeping
    /// its connection open.
    pub(crate) fn downgrade(&self) -> WeakClient {
        WeakClient(Arc::downgrade(&self.inner))
    }

    /// True once the connection is closed, by this side or the peer.
    pub fn is_closed(&self) -> bool {
        self.inner.conn.is_closed() || lock(&self.inner.pending).is_ended()
    }

    /// The server's address (for a client of a [`crate::sim::SimNetwork`], a made-up
    /// address of the server its end is connected to now).
    pub fn peer_addr(&self) -> SocketAddr {
        self.inner.conn.peer_addr()
    }

    /// This client's settings.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Gives up on the pending call `seq` (from [`Call::seq`] or [`Client::go_with`]): its
    /// result becomes [`RpcError::Cancelled`] at once, and a cancel frame tells the server,
    /// which skips the call if no worker has started it yet. A reply arriving later is
    /// discarded. Returns false if the call had already completed.
    ///
    /// Dropping a [`Call`] does not cancel it; this does.
    pub fn cancel(&self, seq: u64) -> bool {
        let completer = lock(&self.inner.pending).remove(seq);
        let Some(complete) = completer else {
            return false;
        };
        self.send_cancel(seq);
        complete(Err(RpcError::Cancelled));
        true
    }

    /// Request bytes waiting to be written because the socket is full (see
    /// [`ClientConfig::max_unsent_bytes`]).
    pub fn unsent_bytes(&self) -> usize {
        self.inner.conn.queued_len()
    }

    /// Calls waiting for a reply.
    pub fn pending_calls(&self) -> usize {
        lock(&self.inner.pending).len()
    }

    /// Replies that matched no pending call: late after a timeout, duplicated, or unknown.
    pub fn discarded_replies(&self) -> u64 {
        lock(&self.inner.pending).discarded_replies()
    }

    fn start_call<A: Serialize + ?Sized>(
        &self,
        method: &str,
        args: &A,
        timeout: Duration,
        kind: CallKind,
        complete: Completer,
    ) -> u64 {
        let seq = self.inner.next_seq.fetch_add(1, Ordering::Relaxed);
        self.send_call(seq, method, args, timeout, kind, complete);
        seq
    }

    /// Encodes and sends call `seq`. Whatever happens, `complete` runs exactly once: now, with
    /// an error, or later, with the reply, a timeout or a connection error.
    fn send_call<A: Serialize + ?Sized>(
        &self,
        seq: u64,
        method: &str,
        args: &A,
        timeout: Duration,
        kind: CallKind,
        complete: Completer,
    ) {
        let (metadata, complete) = match self.run_middleware(method, complete) {
            Ok(prepared) => prepared,
            Err((err, complete)) => return complete(Err(err)),
        };
        let frame = match self.encode_request(seq, method, args, timeout, &metadata) {
            Ok(frame) => frame,
            Err(err) => return complete(Err(err)),
        };
        if self.inner.conn.queued_len() >= self.inner.config.max_unsent_bytes {
            return complete(Err(RpcError::Throttled));
        }
        let deadline =
            (kind != CallKind::Blocking).then(|| deadline_after(Instant::now(), timeout));
        let others_in_flight = {
            let mut pending = lock(&self.inner.pending);
            if let Err((err, complete)) = pending.insert(seq, timeout, deadline, complete) {
                drop(pending);
                return complete(Err(err));
            }
            pending.len() > 1
        };
        if let Some(deadline) = deadline {
            self.inner.conn.schedule_timer(deadline);
        }
        // A lone blocking call is written at once, by this thread: nothing can join it, and
        // its caller waits anyway. Every other call joins a batch the event loop writes at the
        // end of its turn, so calls started together share one system call. `go` calls never
        // count as lone: a thread that re-issues calls as their replies arrive finds none in
        // flight each time, and writing its first one alone splits every batch in two
        // (docs/BENCHMARKS.md, "Four connections, 16 in flight each").
        let sent = match kind {
            CallKind::Blocking if !others_in_flight => self.inner.conn.send(&frame),
            CallKind::Blocking | CallKind::Go => self.inner.conn.send_batched(&frame),
            CallKind::InBatch => self.inner.conn.send_corked(&frame),
        };
        match sent {
            Ok(()) => {}
            // This thread's write failed, and the connection's close (which it has asked
            // the loop for) ends the call: first the loop reads what the server sent, which
            // may say why it closed (an error frame for a request over its limits).
            Err(TransportError::Io(_)) => {}
            Err(err) => {
                // If the connection's close already failed the call, it has been completed.
                if let Some(complete) = lock(&self.inner.pending).remove(seq) {
                    complete(Err(err.into()));
                }
            }
        }
    }

    /// Runs the client middleware's `before_call`s, and wraps `complete` so their
    /// `after_call`s see the outcome. Returns the request's metadata section and the completer
    /// to use; on refusal, the error and the untouched completer.
    fn run_middleware(
        &self,
        method: &str,
        complete: Completer,
    ) -> Result<(Bytes, Completer), (RpcError, Completer)> {
        let chain = &self.inner.config.middleware;
        if chain.is_empty() {
            return Ok((Bytes::new(), complete));
        }
        let started = Instant::now();
        let peer = self.inner.conn.peer_addr();
        let metadata = match run_before_call(chain, method, peer) {
            Ok(metadata) => metadata,
            Err(err) => return Err((err, complete)),
        };
        let chain = chain.clone();
        let method = method.to_owned();
        let complete: Completer = Box::new(move |result: Result<Frame, RpcError>| {
            let method_error = match &result {
                Ok(frame) if frame.kind == FrameKind::Error => {
                    Some(RpcError::from_error_body(&method, &frame.body))
                }
                _ => None,
            };
            let outcome = match (&result, &method_error) {
                (_, Some(err)) | (Err(err), None) => Err(err),
                (Ok(_), None) => Ok(()),
            };
            let record = CallRecord {
                method: &method,
                peer,
                started,
                outcome,
            };
            run_after_call(&chain, &record);
            complete(result);
        });
        Ok((metadata, complete))
    }

    fn encode_request<A: Serialize + ?Sized>(
        &self,
        seq: u64,
        method: &str,
        args: &A,
        timeout: Duration,
        metadata: &[u8],
    ) -> Result<BytesMut, RpcError> {
        let codec = self.inner.config.codec;
        let mut head = FrameHead::new(FrameKind::Request, seq);
        head.codec = codec.id();
        head.name = method.as_bytes();
        head.metadata = metadata;
        head.deadline_ms = u32::try_from(timeout.as_millis())
            .unwrap_or(u32::MAX)
            .max(1);
        let mut out = BytesMut::new();
        let builder = FrameBuilder::start(&mut out, &head, &self.inner.config.limits)?;
        if let Err(err) = codec.encode(args, &mut out) {
            builder.abandon(&mut out);
            return Err(RpcError::Encode(err));
        }
        builder.finish(&mut out)?;
        Ok(out)
    }

    fn send_cancel(&self, seq: u64) {
        // Advisory: the server may skip the call; its reply, if any, is discarded.
        let _ = self
            .inner
            .conn
            .send_frame(&Frame::new(FrameKind::Cancel, seq));
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("peer_addr", &self.inner.conn.peer_addr())
            .field("codec", &self.inner.config.codec)
            .finish_non_exhaustive()
    }
}

impl ClientInner {
    /// Reads replies on this thread, completing each call they answer, until `arrived`
    /// returns true or `deadline` passes; returns at once when the loop or another caller is
    /// reading the connection (what arrives then comes through the loop).
    ///
    /// Over TLS only a lone call reads here: it saves the loop's wake-up on each round trip,
    /// while with other calls in flight the loop's decrypting runs beside the callers' own
    /// work (encrypting the next requests), which a caller reading here would serialise:
    /// eight 64 KiB echoes in flight lost 15-25% of their calls/s that way.
    fn read_replies_until(&self, deadline: Instant, arrived: &dyn Fn() -> bool) {
        let pending = &*self.pending;
        let conn = &self.conn;
        if conn.is_tls() && lock(pending).len() > 1 {
            return;
        }
        while !arrived() && Instant::now() < deadline {
            // Answers (pongs) are corked while this thread reads, and leave a few hundred to
            // a write: never so many at once that the cap on unsent bytes, meant for a server
            // that reads nothing, refuses the next ones.
            let mut corked = 0;
            let read = conn.read_here(deadline, arrived, &mut |frame| {
                if let Some(answer) = handle_reply_frame(pending, frame) {
                    let unsent = conn.queued_len();
                    if queue_answer(&answer, unsent, |bytes| conn.send_corked(bytes)) {
                        corked += 1;
                    }
                    if corked >= ANSWERS_PER_WRITE {
                        let _ = conn.flush();
                        corked = 0;
                    }
                }
            });
            if corked > 0 {
                let _ = conn.flush();
            }
            if read == ReadHere::Elsewhere {
                return;
            }
        }
    }
}

impl ReplyReader for ClientInner {
    fn read_replies(&self, limit: Instant, arrived: &dyn Fn() -> bool) {
        // The call waited for may sit in a batch not yet sent (`batch.rs`): no reply can
        // come until it is written. Only then: other frames are the loop's to write. A
        // failed flush means the connection is closing, which the wait learns anyway.
        if self.open_batches.load(Ordering::Relaxed) > 0 {
            let _ = self.conn.flush();
        }
        // A `go` call's timeout is the loop's to deliver: stop reading when the first is due.
        let first_call_deadline = lock(&self.pending).next_deadline();
        self.read_replies_until(
            first_call_deadline.map_or(limit, |at| at.min(limit)),
            arrived,
        );
    }
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        self.conn.close();
    }
}

impl Client {
    /// Waits until `timeout` for the outcome of the blocking call `seq`, reading the reply
    /// on this thread when nobody else is reading the connection (no hand-off from the
    /// loop: the latency of a blocking socket read), otherwise from the loop through `done`.
    /// `None` as [`finish_waiting`].
    fn await_outcome(
        &self,
        seq: u64,
        done: &Receiver<Result<Frame, RpcError>>,
        timeout: Duration,
    ) -> Option<Result<Frame, RpcError>> {
        let deadline = deadline_after(Instant::now(), timeout);
        self.inner
            .read_replies_until(deadline, &|| !done.is_empty());
        finish_waiting(
            &self.inner.pending,
            seq,
            done,
            deadline.saturating_duration_since(Instant::now()),
            timeout,
        )
    }
}

/// Waits up to `remaining` for the outcome of the blocking call `seq`, which has a deadline
/// of `timeout`. `None`: the deadline passed with the call still pending, and it is now taken
/// out of the table (the caller tells the server). A reply that wins the race against the
/// deadline is never lost: its completer was taken from the table and is sending it right
/// now, so this waits for it.
fn finish_waiting(
    pending: &Mutex<PendingCalls>,
    seq: u64,
    done: &Receiver<Result<Frame, RpcError>>,
    remaining: Duration,
    timeout: Duration,
) -> Option<Result<Frame, RpcError>> {
    if let Ok(outcome) = done.recv_timeout(remaining) {
        return Some(outcome);
    }
    if lock(pending).remove(seq).is_some() {
        return None;
    }
    // A completer taken from the table runs at once; the bound only guards against a bug.
    Some(
        done.recv_timeout(COMPLETER_GRACE)
            .unwrap_or(Err(RpcError::Timeout { after: timeout })),
    )
}

/// The value or error a reply frame carries.
///
/// The reply type's `Deserialize` is user code and may panic; on the client event loop that
/// would end the loop for every client, so a panic becomes [`RpcError::Decode`] instead.
fn decode_reply<R: DeserializeOwned>(
    codec: CodecKind,
    method: &str,
    frame: Frame,
) -> Result<R, RpcError> {
    match frame.kind {
        FrameKind::Response if frame.codec == codec.id() => {
            let decoded = catch_panic(|| codec.decode(&frame.body)).unwrap_or_else(|message| {
                Err(CodecError::Decode {
                    codec: codec.name(),
                    detail: format!("the reply type's Deserialize panicked: {message}"),
                })
            });
            decoded.map_err(RpcError::Decode)
        }
        FrameKind::Response => Err(RpcError::Protocol {
            detail: format!(
                "reply to `{method}` in codec {} instead of {}",
                frame.codec,
                codec.id()
            ),
        }),
        _ => Err(RpcError::from_error_body(method, &frame.body)),
    }
}

/// How a call was started, which decides who times it out and who writes its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallKind {
    /// A blocking call: its thread waits with its own deadline (the loop keeps no timer), and
    /// writes the frame itself when no other call is in flight.
    Blocking,
    /// A `go` call: the event loop keeps its deadline and writes its frame at the end of its
    /// turn, with every other frame queued by then.
    Go,
    /// A `go` call in a [`crate::Batch`]: as `Go`, but the frame waits for the batch's
    /// flush, which writes the whole batch from the caller's thread.
    InBatch,
}

/// How long a blocking call that lost the race to its reply waits for that reply's completer.
const COMPLETER_GRACE: Duration = Duration::from_secs(5);

/// Most answers (pongs, 28 bytes each) a caller reading its connection corks before it
/// writes them: about 14 KiB, well under the 64 KiB of unsent bytes past which a client
/// stops answering a server that reads nothing.
const ANSWERS_PER_WRITE: usize = 512;

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    /// A table holding blocking call 1, and the channel its outcome arrives on.
    fn one_pending_call() -> (Mutex<PendingCalls>, Receiver<Result<Frame, RpcError>>) {
        let pending = Mutex::new(PendingCalls::with_limit(usize::MAX));
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        let completer: Completer = Box::new(move |result| {
            let _ = done_tx.send(result);
        });
        assert!(lock(&pending)
            .insert(1, Duration::ZERO, None, completer)
            .is_ok());
        (pending, done_rx)
    }

    #[test]
    fn a_reply_that_wins_the_race_against_the_deadline_is_returned_not_a_timeout() {
        let (pending, done_rx) = one_pending_call();
        // The loop matched the reply (took the completer) but has not run it yet.
        let complete = lock(&pending).take_for_reply(1).unwrap();
        let completing = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            complete(Ok(Frame::new(FrameKind::Response, 1)));
        });
        let outcome = finish_waiting(
            &pending,
            1,
            &done_rx,
            Duration::from_millis(10),
            Duration::from_millis(10),
        );
        completing.join().unwrap();
        let frame = outcome
            .expect("not abandoned")
            .expect("the reply, not a timeout");
        assert_eq!(frame.seq, 1);
    }

    #[test]
    fn a_call_still_pending_at_its_deadline_is_taken_out_of_the_table() {
        let (pending, done_rx) = one_pending_call();
        assert!(finish_waiting(
            &pending,
            1,
            &done_rx,
            Duration::from_millis(10),
            Duration::from_millis(10)
        )
        .is_none());
        assert_eq!(lock(&pending).len(), 0);
    }

    #[test]
    fn client_and_call_types_are_send_and_sync() {
        assert_send_sync::<Client>();
        assert_send_sync::<Call<i64>>();
        assert_send_sync::<DoneSender<i64>>();
    }
}
