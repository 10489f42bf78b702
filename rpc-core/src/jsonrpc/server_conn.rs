//! One jsonrpc connection on the server (Go: `jsonrpc.ServeConn`): a thread reads requests,
//! handlers run on the server's worker pool inside the server's middleware (as every native
//! call does, with its `CallContext` current and its method's counters kept), and each
//! finished call queues its whole response for the connection's writer thread
//! (`write_queue.rs`), so responses leave in any order and no worker waits for the peer.
//!
//! The reading and writing threads block on the socket, as Go's goroutines per connection
//! do; the server's `max_connections` bounds how many there are. What a peer sends is
//! handled as in Go's `net/rpc` server:
//!
//! - a request that names no known service or method, lacks `params`, or whose argument does
//!   not decode is answered with an error (Go's own texts where Go has one), and reading goes
//!   on;
//! - bytes that are not a JSON object, a message over `limits.max_body_len`, or one nesting
//!   past the codec's limit get one error response with a `null` id (Go closes without one),
//!   then the connection closes;
//! - a connection whose first request has not begun `first_frame_timeout` after it was
//!   accepted is closed if half the server's `max_connections` or more are open then, or
//!   at any later check (one per `first_frame_timeout`, a second apart at least): silent
//!   sockets cannot hold the last half of the slots, but Go's client sends nothing until
//!   its first call, so a Go program that dials ahead keeps its connection while the server
//!   has room (and so may a silent socket: up to half the slots, two threads each, as a
//!   connection idle after one request may);
//! - a message still incomplete `limits.frame_timeout` after its first byte closes the
//!   connection, as does `idle_timeout`, when set, passing with no call in flight and no
//!   message arriving (counted from the later of the last request and the last call's end);
//! - at `max_in_flight_per_conn` calls in flight, or with more than `max_queued_bytes` of
//!   responses unwritten (a peer that reads slowly or not at all), the thread stops reading
//!   until that changes (TCP then slows the peer down); at the server's `max_calls` a
//!   request is refused. Requests already read when the queue passes the cap (one write can
//!   hold hundreds of small requests for large responses) are held unrun by the queue until
//!   the peer reads, as the native listener holds them (`server_conn/parked.rs`): a worker
//!   checks the cap before it runs a call, so the responses queued stay within the cap plus
//!   one per worker that passed the check at once. Held calls stay in flight (jsonrpc
//!   requests carry no deadline) for `limits.frame_timeout` at most: then each is answered
//!   `Throttled`, unrun, so that a peer reading a trickle (every write making progress, so
//!   the write timeout below never ends its connection) does not keep their places among
//!   the server's `max_calls`. A peer that never reads has its connection closed by the
//!   write timeout, and its held calls are dropped unrun, counted as dropped replies;
//! - a response write that stalls for `limits.frame_timeout` fails, and the connection
//!   closes; with `frame_timeout: None` it may stall for ever: a peer that never reads then
//!   holds the connection until the listener shuts down (not fixed: how long a closing
//!   connection may spend flushing its last responses is the owner's choice);
//! - after the peer's last request (end of stream) the calls in flight are answered, then the
//!   connection closes.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rpc_codec::CodecKind;
use rpc_transport::clock::deadline_after;

use crate::catch_panic::catch_panic;
use crate::error_body::ErrorCode;
use crate::middleware::{run_in_middleware, CallContext};
use crate::server::ServerShared;
use crate::server_conn::ServerJob;
use crate::service::{Dispatch, MethodCounters, MethodHandler};
use crate::stats::StatsCounters;

use super::message::{self, Params, NULL};
use super::reader::{socket_timeout, ReadError, ValueReader};
use super::write_queue::{Release, WriteQueue};

/// Serves jsonrpc requests read from `stream` until the peer leaves, the connection breaks a
/// rule, or `stop` is set (and the socket shut down by whoever set it). The reading and
/// writing threads share the one socket (one descriptor per connection, as
/// `default_max_connections` reckons).
///
/// # Errors
///
/// An I/O error if the socket cannot be given its write timeout or the writing thread
/// cannot start.
pub(crate) fn serve(
    server: Arc<ServerShared>,
    stream: Arc<TcpStream>,
    stop: &AtomicBool,
) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let limits = server.config.limits;
    // A peer that reads nothing holds the writer thread for at most this long per write.
    stream.set_write_timeout(socket_timeout(limits.frame_timeout))?;
    let peer = stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let replies = WriteQueue::for_responses(
        server.config.max_queued_bytes,
        limits.frame_timeout,
        Arc::clone(&server.stats.jsonrpc_queued_bytes),
    );
    let conn = JsonConn {
        server,
        replies: Arc::new(replies),
        calls: Arc::new(CallsInFlight::default()),
        peer,
        requests_read: AtomicU64::new(0),
    };
    let mut reader = ValueReader::new(
        Arc::clone(&stream),
        limits.max_body_len,
        limits.frame_timeout,
    );
    thread::scope(|scope| {
        let replies = Arc::clone(&conn.replies);
        let writing = Arc::clone(&stream);
        thread::Builder::new()
            .name("netrpc-jsonrpc-write".to_owned())
            .spawn_scoped(scope, move || replies.write_to(&writing))?;
        conn.read_requests(&mut reader, stop);
        // What is queued (an error response saying why, replies of calls finished) is
        // written before the close; replies of calls still running are dropped, as before.
        conn.replies.finish();
        Ok::<(), io::Error>(())
    })?;
    reader.shutdown();
    Ok(())
}

/// What the reading thread and the calls of one connection share.
struct JsonConn {
    server: Arc<ServerShared>,
    replies: Arc<WriteQueue>,
    calls: Arc<CallsInFlight>,
    /// The peer, for each call's [`CallContext`].
    peer: SocketAddr,
    /// Requests read so far: a call's `CallContext::seq` is its number on the connection
    /// (jsonrpc ids are any JSON value, so they cannot serve).
    requests_read: AtomicU64,
}

/// Calls in flight on one connection, with a signal when the count falls.
#[derive(Default)]
struct CallsInFlight {
    /// Guards the count and when the last call ended.
    state: Mutex<InFlight>,
    fell: Condvar,
}

/// What [`CallsInFlight`] guards.
#[derive(Default)]
struct InFlight {
    count: usize,
    /// When the last call ended (its response queued), for the idle timeout.
    last_ended: Option<Instant>,
}

/// A request admitted for dispatch, carried to the worker that runs it.
struct JsonCall {
    server: Arc<ServerShared>,
    replies: Arc<WriteQueue>,
    calls: Arc<CallsInFlight>,
    found: FoundMethod,
    /// What middleware and the handler see of the call (`CallContext::current`).
    context: CallContext,
    id: Vec<u8>,
    argument: Vec<u8>,
    /// When its connection's queue first held it, if it has.
    held_since: Option<Instant>,
}

/// A method a request names: its handler, where it runs, and its counters.
struct FoundMethod {
    handler: MethodHandler,
    dispatch: Dispatch,
    counters: Arc<MethodCounters>,
}

impl JsonConn {
    fn read_requests(&self, reader: &mut ValueReader, stop: &AtomicBool) {
        let config = &self.server.config;
        let stats = &self.server.stats;
        // When the last request was read (at first, when the connection was accepted).
        let mut last_request = Instant::now();
        // When the first request must have begun, until one has come.
        let mut first_request_by = config
            .first_frame_timeout
            .map(|timeout| deadline_after(last_request, timeout));
        while !stop.load(Ordering::SeqCst) {
            self.calls.wait_below(config.max_in_flight_per_conn, stop);
            self.replies.wait_at_most(config.max_queued_bytes, stop);
            let idle_wait = config
                .idle_timeout
                .map(|idle| idle.saturating_sub(self.idle_for(last_request)));
            let first_wait =
                first_request_by.map(|by| by.saturating_duration_since(Instant::now()));
            let wait = [idle_wait, first_wait].into_iter().flatten().min();
            match reader.next_value(wait) {
                Ok(Some(request)) => {
                    last_request = Instant::now();
                    first_request_by = None;
                    if self.handle(request).is_err() {
                        return;
                    }
                }
                Ok(None) if first_request_by.is_some_and(|by| Instant::now() >= by) => {
                    // Not one request since accept. Go's client sends nothing until its
                    // first call, so this may be a program that dialled ahead: it keeps
                    // its slot and two threads while the server has room, and is looked
                    // at again a timeout later (a second at least: a tiny timeout must not
                    // make every silent connection poll).
                    if !self.server.short_of_connections() {
                        first_request_by = config.first_frame_timeout.map(|timeout| {
                            deadline_after(Instant::now(), timeout.max(MIN_FIRST_FRAME_RECHECK))
                        });
                        continue;
                    }
                    StatsCounters::bump(&stats.first_frame_timeouts);
                    return;
                }
                Ok(None) => {
                    // A call was in flight for part of the wait, or is now: not idle yet.
                    let idle = config.idle_timeout;
                    if idle.is_some_and(|idle| self.idle_for(last_request) < idle) {
                        continue;
                    }
                    StatsCounters::bump(&stats.idle_closes);
                    return;
                }
                Err(ReadError::Closed) => {
                    // End of stream: the peer's last request is in; answer what is in flight.
                    self.calls.wait_below(1, stop);
                    return;
                }
                Err(ReadError::FrameTimeout) => {
                    StatsCounters::bump(&stats.frame_timeouts);
                    return;
                }
                Err(ReadError::Split(err)) => {
                    StatsCounters::bump(&stats.frame_errors);
                    let text = format!("rpc: server cannot decode request: {err}");
                    let _ = self.replies.push(message::error_response(&NULL, &text));
                    return;
                }
                Err(ReadError::Truncated) => {
                    StatsCounters::bump(&stats.frame_errors);
                    return;
                }
                Err(ReadError::Io(_)) => return,
            }
        }
    }

    /// How long the connection has been idle in the sense of `ServerConfig::idle_timeout`
    /// (no request and no call in flight): since the later of `last_request` and the end of
    /// its last call; zero while a call is in flight. A call's end counts because the
    /// connection was busy until then: counted from the request alone, a call longer than
    /// the idle timeout would have its connection closed just after its reply.
    fn idle_for(&self, last_request: Instant) -> Duration {
        let since = match self.calls.busy_until() {
            Some(busy) => busy.max(last_request),
            None => last_request,
        };
        since.elapsed()
    }

    /// Answers or dispatches one request; `Err` if the connection must close.
    fn handle(&self, bytes: &[u8]) -> Result<(), ()> {
        let request = match message::parse_request(bytes) {
            Ok(request) => request,
            Err(detail) => {
                StatsCounters::bump(&self.server.stats.frame_errors);
                let text = format!("rpc: server cannot decode request: {detail}");
                let _ = self.replies.push(message::error_response(&NULL, &text));
                return Err(());
            }
        };
        let received = Instant::now();
        let seq = self.requests_read.fetch_add(1, Ordering::Relaxed) + 1;
        let id = request.id;
        let found = match self.lookup(&request.method) {
            Ok(found) => found,
            Err((code, text)) => return self.refuse(id, code, &text),
        };
        let argument = match request.params {
            Params::One(argument) => argument,
            Params::Missing => {
                let text = "jsonrpc: request body missing params";
                return self.refuse(id, ErrorCode::BadRequest, text);
            }
            Params::Invalid(text) => return self.refuse(id, ErrorCode::BadRequest, &text),
        };
        if !self.admit() {
            let limit = self.server.config.max_calls;
            let text = format!("server at its limit of {limit} calls in flight; try again later");
            return self.refuse(id, ErrorCode::Throttled, &text);
        }
        let name = Bytes::copy_from_slice(request.method.as_bytes());
        let dispatch = found.dispatch;
        let call = JsonCall {
            server: Arc::clone(&self.server),
            replies: Arc::clone(&self.replies),
            calls: Arc::clone(&self.calls),
            found,
            context: CallContext::new(name, Bytes::new(), self.peer, seq, received),
            id: id.to_vec(),
            argument: argument.to_vec(),
            held_since: None,
        };
        match dispatch {
            Dispatch::Inline => call.run(),
            Dispatch::Pool => call.queue_on_pool(),
        }
        Ok(())
    }

    /// What `method` names, or the error Go's server gives (same texts).
    fn lookup(&self, method: &str) -> Result<FoundMethod, (ErrorCode, String)> {
        let Some((service, name)) = method.rsplit_once('.') else {
            let text = format!("rpc: service/method request ill-formed: {method}");
            return Err((ErrorCode::Protocol, text));
        };
        let Some(table) = self.server.service(service) else {
            let text = format!("rpc: can't find service {method}");
            return Err((ErrorCode::UnknownService, text));
        };
        match table.get(name).zip(table.counters(name)) {
            Some((handler, counters)) => Ok(FoundMethod {
                handler: handler.clone(),
                dispatch: table.dispatch(),
                counters: Arc::clone(counters),
            }),
            None => Err((
                ErrorCode::UnknownMethod,
                format!("rpc: can't find method {method}"),
            )),
        }
    }

    /// Counts a call in; false if the server is at `max_calls`. (The per-connection cap was
    /// waited for before the request was read.)
    fn admit(&self) -> bool {
        if !self.server.admit_call() {
            return false;
        }
        self.calls.lock().count += 1;
        true
    }

    /// Answers request `id` with an error at once; the connection stays open unless the
    /// write fails.
    fn refuse(&self, id: &[u8], code: ErrorCode, text: &str) -> Result<(), ()> {
        self.server.stats.count_call_error(code);
        if self.replies.push(message::error_response(id, text)) {
            Ok(())
        } else {
            Err(())
        }
    }
}

impl CallsInFlight {
    fn lock(&self) -> MutexGuard<'_, InFlight> {
        // A counter and an instant: a poisoned lock still holds sound values.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Until when the connection has been busy with calls: now while one is in flight,
    /// else when the last one ended; `None` if none has run.
    fn busy_until(&self) -> Option<Instant> {
        let in_flight = self.lock();
        match in_flight.count {
            0 => in_flight.last_ended,
            _ => Some(Instant::now()),
        }
    }

    /// Blocks while `limit` or more calls are in flight, unless `stop` is set.
    fn wait_below(&self, limit: usize, stop: &AtomicBool) {
        let mut in_flight = self.lock();
        while in_flight.count >= limit && !stop.load(Ordering::SeqCst) {
            in_flight = self
                .fell
                .wait_timeout(in_flight, STOP_CHECK)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Takes one call out of flight, on the server (its count in `stats`) and here, noting
    /// when, and wakes a reader waiting for room.
    fn finish(&self, stats: &StatsCounters) {
        stats.in_flight_calls.fetch_sub(1, Ordering::SeqCst);
        let mut in_flight = self.lock();
        in_flight.count -= 1;
        in_flight.last_ended = Some(Instant::now());
        drop(in_flight);
        self.fell.notify_all();
    }
}

impl JsonCall {
    /// Hands the call to the server's worker pool, to run when its connection has room.
    fn queue_on_pool(self) {
        let server = Arc::clone(&self.server);
        server
            .pool
            .execute(ServerJob::Boxed(Box::new(move || self.run_when_room())));
    }

    /// A worker's start of a pooled call: runs it, unless its connection's unwritten
    /// responses are past the cap; then the connection's queue holds it (the worker goes on
    /// with other work) and gives it back to the pool once the peer has read enough, or
    /// drops it unrun when the connection ends (see `write_queue`).
    fn run_when_room(mut self) {
        if !self.replies.is_past_cap() {
            return self.run();
        }
        let since = *self.held_since.get_or_insert_with(Instant::now);
        let replies = Arc::clone(&self.replies);
        replies.hold(
            since,
            Box::new(move |release| match release {
                Release::Room => self.queue_on_pool(),
                Release::Closed => {
                    let stats = &self.server.stats;
                    StatsCounters::bump(&stats.dropped_replies);
                    self.calls.finish(stats);
                }
                Release::Expired => self.refuse_held_too_long(since),
            }),
        );
    }

    /// Answers a call held since `since` for as long as the hold limit allows with
    /// `Throttled`, unrun, so that a peer reading too slowly for its calls to run does not
    /// keep their places among the server's calls in flight.
    fn refuse_held_too_long(self, since: Instant) {
        let cap = self.server.config.max_queued_bytes;
        let text = format!(
            "server held this call {:?} unrun: the client left more than {cap} bytes of \
             responses unread all that time; try again later",
            since.elapsed()
        );
        let response = message::error_response(&self.id, &text);
        self.answer(response, Some(ErrorCode::Throttled));
    }

    /// Runs the handler inside the server's middleware, writes the response, and takes the
    /// call out of flight.
    fn run(self) {
        let mut out = BytesMut::new();
        message::start_response(&mut out, &self.id);
        let handler = &self.found.handler;
        // Cheap: the context's name and metadata are shared buffers.
        let context = self.context.clone();
        let outcome = catch_panic(|| {
            let mut method = || handler(CodecKind::Json, &self.argument, &mut out);
            run_in_middleware(&self.server.config.middleware, context, &mut method)
        });
        let max_len = self.server.config.limits.max_body_len;
        let (response, failure) = match outcome {
            Ok(Ok(())) => {
                message::finish_response(&mut out);
                if out.len() <= max_len {
                    (out, None)
                } else {
                    let text = format!(
                        "reply of {} bytes exceeds the {max_len}-byte limit",
                        out.len()
                    );
                    let code = ErrorCode::FrameTooLarge;
                    (message::error_response(&self.id, &text), Some(code))
                }
            }
            Ok(Err(err)) => (
                message::error_response(&self.id, &err.message),
                Some(err.code),
            ),
            Err(panic) => {
                let text = format!("handler panicked: {panic}");
                let code = ErrorCode::HandlerPanicked;
                (message::error_response(&self.id, &text), Some(code))
            }
        };
        self.answer(response, failure);
    }

    /// Counts the call's outcome (`failure`: the error code it was answered with), queues
    /// its `response`, and takes it out of flight.
    fn answer(&self, response: BytesMut, failure: Option<ErrorCode>) {
        let stats = &self.server.stats;
        if let Some(code) = failure {
            stats.count_call_error(code);
        }
        self.found.counters.count(failure.is_some());
        if !self.replies.push(response) {
            StatsCounters::bump(&stats.dropped_replies);
        }
        self.calls.finish(stats);
    }
}

/// How often a waiting reader looks at the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(50);

/// The shortest time between two looks at a connection that has sent nothing yet and kept
/// its place because the server had room, whatever `first_frame_timeout` says.
const MIN_FIRST_FRAME_RECHECK: Duration = Duration::from_secs(1);
