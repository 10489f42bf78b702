//! One server connection: turns request frames into jobs on the worker pool (or runs them
//! inline), and their results into reply frames.
//!
//! Runs on the event loop, so nothing here blocks: the lookup of the method is a map access,
//! and a pooled handler runs on a pool thread, which writes its reply straight to the socket,
//! or corks it while more of the connection's calls wait for a worker: the worker that takes
//! the last of them queues a write of them all before it runs its own (any idle worker makes
//! it, or its own quick reply leaves with them; the loop writes any left corked for
//! `MAX_CORK_HOLD`), so a burst of pipelined calls costs a few writes, not one per reply, and
//! no reply waits for another call's handler to run.
//! A request with sequence id 0, which the protocol keeps for messages about the connection,
//! gets a `Protocol` error under seq 0 and the connection closes. Before any other request is
//! dispatched it must pass, in order: a sequence id not already in flight
//! (a duplicate is ignored and counted, never answered, whatever else it names: its answer
//! would be taken for the original's); a supported codec and a known service and method; a
//! server not draining (else `ShuttingDown`); the per-connection and server-wide caps on calls
//! in flight (else `Throttled`, at once).
//! A pooled request whose deadline passed, or that the caller cancelled, before a worker took
//! it is answered `DeadlineExceeded` without running. With an idle timeout set, a timer
//! closes the connection (after a go-away frame) once no request has arrived and no call has
//! been in flight for that long; and a first-frame timeout closes (also after a go-away frame)
//! a connection that has not sent one whole frame since it was accepted, so sockets that
//! never speak cannot hold connection slots for ever.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use crossbeam_channel::Sender;
use rpc_codec::CodecKind;
use rpc_transport::clock::{deadline_after, earliest};
use rpc_transport::{
    CloseReason, Connection, EofAction, Frame, FrameBuilder, FrameHandler, FrameHead, FrameKind,
    FrameLimits, TransportError, CLOSE_GRACE,
};

use crate::catch_panic::catch_panic;
use crate::error_body::{error_frame, ErrorCode};
use crate::hello;
use crate::middleware::{run_in_middleware, CallContext};
use crate::pool::PoolJob;
use crate::reply_cork::{ReplyCork, ReplySend, MAX_CORK_HOLD};
use crate::server::{ConnectionSlot, ServerShared};
use crate::service::{Dispatch, DispatchError, MethodCounters, MethodHandler};
use crate::stats::StatsCounters;

mod loop_calls;
mod parked;
mod worker_read;

pub(crate) use loop_calls::LoopCalls;

use parked::ParkedCalls;
use worker_read::BatchCheck;

/// The [`FrameHandler`] of one accepted connection.
pub(crate) struct ServerConn {
    site: Arc<ConnSite>,
    /// Keeps the connection counted as open until the handler is dropped.
    slot: ConnectionSlot,
    /// When a frame last arrived or a call was last seen in flight, for the idle timeout.
    last_active: Instant,
    /// When the connection is closed unless a whole frame has arrived by then (the first-frame
    /// timeout); `None` once one has, or with no such timeout.
    first_frame_deadline: Option<Instant>,
    /// Told when the connection closes (`Server::serve_conn` waits on it).
    closed: Option<Sender<()>>,
    /// The method this connection's loop resolved last.
    lookups: LookupCache,
}

/// The most inline replies of one connection that wait for the end of the loop's turn: the
/// one that makes them this many writes them all at once. One burst of 64 pipelined calls
/// then goes back in two writes, and the client works on the first half while the loop makes
/// the second, where one write at the turn's end kept each side idle while the other worked:
/// 1 x 64 inline 7-11% more calls/s batched, 25-30% more one by one (docs/BENCHMARKS.md,
/// change 18). Sixteen cost four connections with sixteen calls in flight each 1-6%, their
/// bursts then leaving mid-turn and waking their readers while the loop still had other
/// connections to serve; client connections keep no limit (their `go` calls written by the
/// calling thread each 32 cost pooled calls at 1 x 64 a fifth).
///
/// Not where both ends busy poll (the server, and a client whose hello says its callers do,
/// `hello.rs`): there the halves cost 1 x 64 inline 10-30% (each write of replies that finds
/// the caller spinning, not asleep in its poller, also wakes the client's loop). With the
/// server alone spinning they pay most: 28-67% more calls/s (change 19). `tests/inline.rs`
/// checks all three setups.
const INLINE_REPLIES_PER_WRITE: usize = 32;

/// A method name (and codec id) a connection resolved, with what it resolved to. Most
/// connections call one or a few methods over and over, and the answer never goes stale:
/// services are only ever added, never removed or replaced.
struct LastLookup {
    name: Vec<u8>,
    codec: u8,
    found: Arc<Found>,
}

/// The method a reader of one connection (its loop, or a worker reading it) resolved last.
/// Boxed, made at the first request: a connection that never calls holds a pointer, not the
/// entry (`tests/idle_memory.rs`); later misses reuse the box and its name's buffer.
#[derive(Default)]
struct LookupCache(Option<Box<LastLookup>>);

impl LookupCache {
    /// [`lookup`], answered without the services' lock and hash lookups when the request
    /// names the same method (in the same codec) as the one before it.
    fn find(
        &mut self,
        server: &ServerShared,
        request: &Frame,
    ) -> Result<Arc<Found>, DispatchError> {
        if let Some(last) = &self.0 {
            if last.codec == request.codec && last.name == request.name {
                return Ok(Arc::clone(&last.found));
            }
        }
        let found = Arc::new(lookup(server, request)?);
        match &mut self.0 {
            Some(last) => {
                last.name.clear();
                last.name.extend_from_slice(&request.name);
                last.codec = request.codec;
                last.found = Arc::clone(&found);
            }
            None => {
                self.0 = Some(Box::new(LastLookup {
                    name: request.name.to_vec(),
                    codec: request.codec,
                    found: Arc::clone(&found),
                }));
            }
        }
        Ok(found)
    }
}

/// What every call of one connection needs from it, whichever thread runs the call. A pooled
/// call carries one reference to it and one to its method's [`Found`] (both counted per
/// connection), where it carried one each to the server, the connection and its calls, and to
/// the method's handler and counters (those three shared by every connection): five counts
/// raised by the loop and lowered by a worker on another core with every call, about 5% of
/// 4 x 16 pooled calls/s (docs/BENCHMARKS.md, change 21).
struct ConnSite {
    server: Arc<ServerShared>,
    calls: Arc<ConnCalls>,
    conn: Connection,
    /// Pooled calls held back while the connection's unread replies are at the cap.
    parked: ParkedCalls,
}

/// The calls of one connection, shared by its loop, its workers and graceful shutdown.
#[derive(Debug, Default)]
pub(crate) struct ConnCalls {
    /// Sequence ids in flight, each with whether its caller cancelled it.
    in_flight: Mutex<HashMap<u64, bool>>,
    /// The table's length as its lock was last released: read before every frame (for
    /// backpressure) without taking the lock the workers take to finish their calls.
    in_flight_len: AtomicUsize,
    /// True once the peer has cancelled a call: until then a worker need not look its call
    /// up to know it was not cancelled.
    cancel_seen: AtomicBool,
    /// The peer half-closed: close once nothing is in flight.
    peer_done: AtomicBool,
    /// The server is shutting down gracefully: refuse new requests.
    draining: AtomicBool,
    /// The highest sequence id accepted for dispatch (for go-away).
    last_accepted: AtomicU64,
    /// The largest reply sent on this connection so far: what each call in flight may yet
    /// add to the queue, for backpressure.
    largest_reply: AtomicUsize,
    /// Activity the loop did not see itself since the idle check last looked: a frame a
    /// worker read ([`ServerConfig::worker_reads`]), or a call that ended (the connection was
    /// busy until then, so the idle timeout counts from that check, not from the request).
    ///
    /// [`ServerConfig::worker_reads`]: crate::ServerConfig::worker_reads
    unseen_activity: AtomicBool,
    /// The requests a worker read and runs in turn, watched by the loop.
    worker_batch: worker_read::WorkerBatch,
    /// When the workers' replies are corked and when written.
    reply_cork: ReplyCork,
}

impl ServerConn {
    pub(crate) fn new(server: Arc<ServerShared>, conn: &Connection, slot: ConnectionSlot) -> Self {
        let calls = Arc::new(ConnCalls::default());
        server.register_connection(slot.id(), conn, Arc::clone(&calls), slot.group());
        let now = Instant::now();
        let config = &server.config;
        let first_frame_deadline = config
            .first_frame_timeout
            .map(|timeout| deadline_after(now, timeout));
        let idle_deadline = config
            .idle_timeout
            .map(|timeout| deadline_after(now, timeout));
        if let Some(at) = earliest(first_frame_deadline, idle_deadline) {
            conn.schedule_timer(at);
        }
        conn.set_batched_write_at(INLINE_REPLIES_PER_WRITE);
        ServerConn {
            site: Arc::new(ConnSite {
                server,
                calls,
                conn: conn.clone(),
                parked: ParkedCalls::default(),
            }),
            slot,
            last_active: now,
            first_frame_deadline,
            closed: None,
            lookups: LookupCache::default(),
        }
    }

    /// Sends `()` on `closed` when the connection closes.
    pub(crate) fn notify_on_close(mut self, closed: Sender<()>) -> Self {
        self.closed = Some(closed);
        self
    }

    /// The idle-timeout check: closes the connection, after a go-away frame, if nothing
    /// happened on it for `idle_timeout`; otherwise returns when to check again.
    fn check_idle(
        &mut self,
        conn: &Connection,
        now: Instant,
        idle_timeout: Duration,
    ) -> Option<Instant> {
        if self.site.calls.was_active(self.site.parked.len()) {
            self.last_active = now;
        }
        let idle_from = deadline_after(self.last_active, idle_timeout);
        if now < idle_from {
            return Some(idle_from);
        }
        self.go_away_and_close(conn, &self.site.server.stats.idle_closes);
        None
    }

    /// The loop's look at the requests a worker read ([`worker_read`]): if the call the
    /// worker runs has held it too long, writes the replies corked behind it and dispatches
    /// the requests waiting behind it as this loop's own. Returns when to look again.
    fn check_worker_batch(&mut self, conn: &Connection, now: Instant) -> Option<Instant> {
        match self.site.calls.worker_batch.check(now) {
            BatchCheck::Idle => None,
            BatchCheck::Running(again) => Some(again),
            BatchCheck::Stalled { waiting, received } => {
                // A failed write means the connection is closing; this loop is at it.
                let _ = conn.flush();
                for call in waiting {
                    self.run_admitted(call.request, call.found, received);
                }
                None
            }
        }
    }

    /// Tells the client with a go-away frame (its later calls get the retryable
    /// `ShuttingDown`), closes the connection once that is written (or after
    /// [`CLOSE_GRACE`], so that a client that reads nothing cannot keep it), and counts it in
    /// `counter`.
    fn go_away_and_close(&self, conn: &Connection, counter: &AtomicU64) {
        self.site.calls.go_away(conn);
        conn.close_when_flushed_within(CLOSE_GRACE);
        StatsCounters::bump(counter);
    }

    /// Runs or queues a request read at `received`.
    fn dispatch(&mut self, request: Frame, received: Instant) {
        if let Some(found) = self.site.admit_request(&request, &mut self.lookups) {
            self.run_admitted(request, found, received);
        }
    }

    /// Runs (inline) or queues (on the pool) a request already admitted, calling `found`.
    fn run_admitted(&mut self, mut request: Frame, found: Arc<Found>, received: Instant) {
        match found.dispatch {
            Dispatch::Inline => {
                // On the loop thread: the reply joins the others of this read in one write.
                // Everything the call needs is borrowed from this connection.
                let call = CallSite {
                    site: &self.site,
                    received,
                    found: &found,
                };
                let (reply, failure) = call.run(&mut request);
                call.finish(request.seq, &reply, failure, Sending::Batched);
            }
            Dispatch::Pool => self.site.queue_on_pool(request, found, received),
        }
    }
}

impl ConnSite {
    /// Checks a request before it runs: returns the method it calls if it may run now,
    /// counted in flight; otherwise answers it with the reason (or drops it, a duplicate)
    /// and returns `None`. `lookups` is the caller's cache of the method last resolved.
    fn admit_request(&self, request: &Frame, lookups: &mut LookupCache) -> Option<Arc<Found>> {
        if request.seq == 0 {
            // Seq 0 speaks of the connection (refusals, go-away with nothing accepted): an
            // answer to it would read as a connection error, so the request breaks the
            // protocol. Said once, under seq 0, then the connection closes.
            self.refuse(
                0,
                ErrorCode::Protocol,
                "sequence id 0 is reserved for the connection",
            );
            self.conn.close_when_flushed_within(CLOSE_GRACE);
            return None;
        }
        let refusal = match lookups.find(&self.server, request) {
            // `start` looks for a duplicate, and for a go-away already sent, under the lock
            // it takes anyway: one lock per request on the way in, whoever reads it (the
            // loop, or a worker reading too).
            Ok(found) => match self.admit(request.seq) {
                Start::Started => return Some(found),
                Start::Duplicate => return self.drop_duplicate(),
                Start::Full => (ErrorCode::Throttled, TOO_MANY_CALLS.into()),
                Start::Draining => (ErrorCode::ShuttingDown, "server is shutting down".into()),
            },
            Err(err) => (err.code, err.message),
        };
        // Any answer to a duplicate would be taken for the original's, so one whose sequence
        // id is in flight is never answered, whatever else is wrong with it.
        if self.calls.is_in_flight(request.seq) {
            return self.drop_duplicate();
        }
        self.refuse(request.seq, refusal.0, &refusal.1);
        None
    }

    /// Leaves a request whose sequence id is in flight unanswered, and counts it.
    fn drop_duplicate(&self) -> Option<Arc<Found>> {
        StatsCounters::bump(&self.server.stats.duplicate_requests);
        None
    }

    /// Counts the request in, unless a cap on calls in flight is reached or its sequence id
    /// is in flight already.
    fn admit(&self, seq: u64) -> Start {
        let server = &self.server;
        self.calls
            .start(seq, server.config.max_in_flight_per_conn, || {
                server.admit_call()
            })
    }

    /// Answers `seq` with an error frame at once, without dispatching it.
    fn refuse(&self, seq: u64, code: ErrorCode, message: &str) {
        self.server.stats.count_call_error(code);
        if self
            .conn
            .send_frame(&error_frame(seq, code, message))
            .is_err()
        {
            StatsCounters::bump(&self.server.stats.dropped_replies);
        }
    }

    /// Acts on a frame that is not a request: answers a ping, marks a cancelled call.
    fn handle_other_frame(&self, frame: &Frame) {
        match frame.kind {
            FrameKind::Ping => {
                if !self.server.config.busy_poll.is_zero() && hello::says_callers_busy_poll(frame) {
                    // Both ends spin: a turn's replies leave together (see the constant).
                    self.conn.set_batched_write_at(usize::MAX);
                }
                // Batched: a client pinging as fast as it can gets its pongs a turn's worth
                // to a write, and cannot keep the loop writing one each.
                let _ = self
                    .conn
                    .send_frame_batched(&Frame::new(FrameKind::Pong, frame.seq));
            }
            // Advisory: a call not yet started is skipped; a running one finishes and its
            // reply is discarded by the client.
            FrameKind::Cancel if self.calls.cancel(frame.seq) => {
                StatsCounters::bump(&self.server.stats.cancels);
            }
            // A cancel for no call in flight needs nothing; other kinds have no meaning
            // client-to-server.
            _ => {}
        }
    }

    /// The connection's last waiting call was just taken, by this worker: the replies corked
    /// behind it must not wait for its handler. A flush queued on the pool writes them, taken
    /// at once by any idle worker; if this call's handler is quick, its reply is written
    /// with them first and the flush finds nothing left (one write where there were two: 4 x
    /// 16 pooled calls 6-21% more calls/s, docs/BENCHMARKS.md, change 20). At the pool's
    /// thread cap a queued job may wait for a handler, so this worker writes them now.
    fn release_corked(&self) {
        if !self.conn.has_unflushed() {
            return; // nothing corked, or another worker writes it, or already wrote it
        }
        if self.server.pool.is_at_thread_cap() {
            // A failed flush means the connection is closing; the reply's send will say so.
            let _ = self.conn.flush();
        } else {
            self.server
                .pool
                .execute(ServerJob::Flush(self.conn.clone()));
        }
    }

    /// Queues an admitted call on the pool, for a worker to run; or, with
    /// [`crate::ServerConfig::loop_runs_calls`] and on the loop's thread, for that thread to
    /// run after its turn ([`LoopCalls`]).
    fn queue_on_pool(self: &Arc<Self>, request: Frame, found: Arc<Found>, received: Instant) {
        let mut call = InFlight {
            site: Arc::clone(self),
            found,
            received,
            request,
        };
        if self.server.config.loop_runs_calls {
            match LoopCalls::queue_here(call) {
                None => return,
                Some(for_the_pool) => call = for_the_pool,
            }
        }
        self.send_to_pool(call);
    }

    /// Queues `call`, one of this connection's, on the pool.
    fn send_to_pool(&self, call: InFlight) {
        self.calls.reply_cork.call_queued();
        self.server.pool.execute(ServerJob::Call(call));
    }

    /// True if the connection's queued replies are past the server's cap.
    fn replies_at_cap(&self) -> bool {
        self.conn.queued_len() > self.server.config.max_queued_bytes
    }

    /// Whether the connection's unread replies, with what its calls in flight may still add
    /// (each reckoned as large as the largest reply so far), pass the server's cap: reading
    /// its requests must then wait. One read can hold hundreds of small requests for large
    /// replies, so this is asked before every frame: it reads the count kept beside the
    /// in-flight table, not the table under its lock.
    fn replies_over_budget(&self) -> bool {
        let coming = match self.calls.largest_reply.load(Ordering::Relaxed) {
            0 => 0,
            largest => self.calls.in_flight_len.load(Ordering::SeqCst) * largest,
        };
        self.conn.queued_len() + coming > self.server.config.max_queued_bytes
    }
}

impl ConnCalls {
    /// Calls in flight now.
    pub(crate) fn in_flight(&self) -> usize {
        self.lock().len()
    }

    /// Refuses new requests from now on, and tells the peer with a go-away frame carrying
    /// the last sequence id accepted (calls up to it will still be answered).
    pub(crate) fn go_away(&self, conn: &Connection) {
        let last = self.stop_accepting();
        let _ = conn.send_frame(&Frame::new(FrameKind::GoAway, last));
    }

    /// Refuses new requests from now on; returns the last sequence id accepted. Under the
    /// in-flight table's lock, which [`ConnCalls::start`] holds as it admits, so no request
    /// is admitted after the id returned: a go-away may be sent from any thread (a graceful
    /// shutdown's) while the loop, or a worker reading, admits requests.
    fn stop_accepting(&self) -> u64 {
        let _in_flight = self.lock();
        self.draining.store(true, Ordering::SeqCst);
        self.last_accepted.load(Ordering::SeqCst)
    }

    /// Puts call `seq` in flight, unless it is already, the connection is draining, `max`
    /// calls already are, or `reserve` (which counts it against the server-wide cap) refuses.
    fn start(&self, seq: u64, max: usize, reserve: impl FnOnce() -> bool) -> Start {
        let mut in_flight = self.lock();
        if in_flight.contains_key(&seq) {
            return Start::Duplicate;
        }
        if self.draining.load(Ordering::SeqCst) {
            return Start::Draining;
        }
        if in_flight.len() >= max || !reserve() {
            return Start::Full;
        }
        in_flight.insert(seq, false);
        self.in_flight_len.store(in_flight.len(), Ordering::SeqCst);
        self.last_accepted.fetch_max(seq, Ordering::SeqCst);
        Start::Started
    }

    /// For the idle check: true if a call is in flight now, other than the `parked` ones
    /// (read just before: they wait for the peer to read, which is no activity), or one
    /// ended or a worker read a frame since the last time this was asked (frames the loop
    /// reads it sees itself).
    fn was_active(&self, parked: usize) -> bool {
        // The count first: a call that ends between the two reads has noted its end before
        // its count fell (`finish`), so a count seen at zero is followed by the flag seen
        // set; read the other way round, the end would fall between them unseen.
        let in_flight = self.in_flight() > parked;
        let unseen = self.unseen_activity.swap(false, Ordering::Relaxed);
        in_flight || unseen
    }

    /// Notes activity the loop does not see itself, for its idle check ([`ConnCalls::was_active`]).
    fn note_activity(&self) {
        self.unseen_activity.store(true, Ordering::Relaxed);
    }

    /// True if call `seq` is in flight.
    fn is_in_flight(&self, seq: u64) -> bool {
        self.lock().contains_key(&seq)
    }

    /// Marks call `seq` cancelled; false if it is not in flight.
    fn cancel(&self, seq: u64) -> bool {
        let mut in_flight = self.lock();
        let found = in_flight.get_mut(&seq).map(|cancelled| *cancelled = true);
        self.cancel_seen.store(true, Ordering::SeqCst);
        found.is_some()
    }

    /// True if the caller cancelled call `seq` (a cancel that arrives as this is asked may
    /// not count: cancelling is advisory).
    fn is_cancelled(&self, seq: u64) -> bool {
        self.cancel_seen.load(Ordering::SeqCst) && self.lock().get(&seq).copied().unwrap_or(false)
    }

    /// Takes `seq` out of flight; true if the connection should now close (half-closed and
    /// idle).
    fn finish(&self, seq: u64) -> bool {
        self.note_activity();
        let mut in_flight = self.lock();
        in_flight.remove(&seq);
        self.in_flight_len.store(in_flight.len(), Ordering::SeqCst);
        in_flight.is_empty() && self.peer_done.load(Ordering::SeqCst)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, bool>> {
        // Every update is a single map operation: a poisoned lock still holds a sound map.
        self.in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What [`ConnCalls::start`] did with a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// It is in flight now.
    Started,
    /// A call with its sequence id already is: a duplicate, never answered.
    Duplicate,
    /// A cap on calls in flight refused it.
    Full,
    /// The connection stopped accepting requests (a go-away was sent).
    Draining,
}

/// How a reply is written.
#[derive(Clone, Copy)]
enum Sending {
    /// By this pool worker, now or with the replies of the connection's next calls
    /// ([`CallSite::send_from_worker`]).
    FromWorker,
    /// With the other replies of this loop turn (an inline handler, on the loop).
    Batched,
    /// Queued unwritten, for the worker that read the request to write with the others of
    /// its read ([`worker_read`]).
    Corked,
}

/// What a server's pool runs: a call of this connection's protocol, moved into the pool's
/// queue whole (no allocation per call), a write of a connection's corked replies, or other
/// work boxed (a JSON-RPC call, a call of the simulated network).
pub(crate) enum ServerJob {
    /// A netrpc call, carried by value.
    Call(InFlight),
    /// Write what the connection has queued ([`ConnSite::release_corked`]).
    Flush(Connection),
    /// Any other work.
    Boxed(Box<dyn FnOnce() + Send>),
}

impl PoolJob for ServerJob {
    fn run(self) {
        match self {
            ServerJob::Call(call) => call.run_on_worker(),
            // A failed flush means the connection is closing; its loop is already at it.
            ServerJob::Flush(conn) => {
                let _ = conn.flush();
            }
            ServerJob::Boxed(job) => job(),
        }
    }
}

/// A call dispatched to the pool, carried to its worker with everything it needs: owns what
/// a [`CallSite`] borrows, and the handler and request it runs.
pub(crate) struct InFlight {
    site: Arc<ConnSite>,
    /// The method called, its codec and its counters.
    found: Arc<Found>,
    received: Instant,
    request: Frame,
}

impl InFlight {
    /// A worker's whole share of a pooled call: sees to the replies corked behind this call
    /// if it was the connection's last waiting for a worker ([`ConnSite::release_corked`]),
    /// then runs the call (unless it expired while it waited) and sends its reply; or parks
    /// it, unrun, while the connection's unread replies are at the cap (`parked.rs`).
    fn run_on_worker(self) {
        if self.site.calls.reply_cork.call_taken() {
            self.site.release_corked();
        }
        let Some(site) = self.run_unless_parked(Sending::FromWorker) else {
            return;
        };
        if site.server.config.worker_reads {
            worker_read::read_next(&site);
        }
    }

    /// Runs the call (unless it expired while it waited) and sends its reply `sending`;
    /// returns its connection. Or parks it, unrun, while the connection's unread replies
    /// are at the cap (`parked.rs`), and returns `None`.
    fn run_unless_parked(self, sending: Sending) -> Option<Arc<ConnSite>> {
        if self.site.replies_unread_at_cap() {
            let site = Arc::clone(&self.site);
            site.park(self);
            return None;
        }
        let InFlight {
            site,
            found,
            received,
            mut request,
        } = self;
        let call = CallSite {
            site: &site,
            received,
            found: &found,
        };
        let (reply, failure) = call.run_unless_expired(&mut request);
        call.finish(request.seq, &reply, failure, sending);
        Some(site)
    }
}

/// What running a call and sending its reply take: borrowed from the connection for an
/// inline call (no reference counts touched), from its [`InFlight`] on a worker.
struct CallSite<'a> {
    site: &'a ConnSite,
    /// When the request was read: its deadline counts from here.
    received: Instant,
    /// The method called, its codec and its counters.
    found: &'a Found,
}

impl CallSite<'_> {
    /// Why the call should not run any more, if so: its caller cancelled it, or its deadline
    /// (relative to when the request was read) has passed.
    fn expired(&self, request: &Frame) -> Option<&'static str> {
        if self.site.calls.is_cancelled(request.seq) {
            return Some("the caller cancelled the call before it ran");
        }
        deadline_passed(request, self.received).then_some(DEADLINE_PASSED)
    }

    /// Runs a call that waited (for a worker, or behind others a worker read): a
    /// `DeadlineExceeded` error instead if it expired meanwhile ([`CallSite::expired`]).
    fn run_unless_expired(&self, request: &mut Frame) -> (BytesMut, Option<ErrorCode>) {
        match self.expired(request) {
            Some(reason) => {
                let code = ErrorCode::DeadlineExceeded;
                (encode_error(request.seq, code, reason), Some(code))
            }
            None => self.run(request),
        }
    }

    /// Runs the call's handler inside the server's middleware, with the call's context
    /// current; returns the reply frame and the error code if it failed.
    fn run(&self, request: &mut Frame) -> (BytesMut, Option<ErrorCode>) {
        let context = CallContext::new(
            std::mem::take(&mut request.name),
            std::mem::take(&mut request.metadata),
            self.site.conn.peer_addr(),
            request.seq,
            self.received,
        );
        run_call(
            &self.site.server,
            &self.found.handler,
            self.found.codec,
            request,
            context,
            self.site.conn.limits(),
        )
    }

    /// Sends a worker's reply now, or corks it for a later write ([`ReplyCork`]).
    fn send_from_worker(&self, reply: &[u8]) -> Result<(), TransportError> {
        let cork = &self.site.calls.reply_cork;
        match cork.sending(self.site.server.pool.is_at_thread_cap()) {
            ReplySend::Now => self.site.conn.send(reply),
            ReplySend::Cork => {
                self.site.conn.send_corked_for(reply, MAX_CORK_HOLD)?;
                if cork.corked() {
                    self.site.conn.flush()?;
                }
                Ok(())
            }
        }
    }

    /// Sends the reply and takes the call out of flight.
    fn finish(&self, seq: u64, reply: &[u8], failure: Option<ErrorCode>, sending: Sending) {
        let stats = &self.site.server.stats;
        if let Some(code) = failure {
            stats.count_call_error(code);
        }
        self.found.counters.count(failure.is_some());
        let sent = match sending {
            Sending::FromWorker => self.send_from_worker(reply),
            Sending::Batched => self.site.conn.send_batched(reply),
            Sending::Corked => self.site.conn.send_corked(reply),
        };
        // A failed send means the peer is gone and the loop is closing the connection.
        if sent.is_err() {
            StatsCounters::bump(&stats.dropped_replies);
        }
        stats.in_flight_calls.fetch_sub(1, Ordering::SeqCst);
        let largest_reply = &self.site.calls.largest_reply;
        // Read first: the loop reads it before every frame, and a write would take the line
        // from it even when the reply is no larger.
        if reply.len() > largest_reply.load(Ordering::Relaxed) {
            largest_reply.fetch_max(reply.len(), Ordering::Relaxed);
        }
        if self.site.calls.finish(seq) {
            self.site.conn.close_when_flushed();
        }
        // One call fewer in flight may be what the connection's reading waits for.
        self.site.conn.resume_reading();
    }
}

impl FrameHandler for ServerConn {
    fn handle_frame(&mut self, _conn: &Connection, frame: Frame) {
        self.first_frame_deadline = None;
        if self.site.server.config.idle_timeout.is_some() {
            self.last_active = Instant::now();
        }
        match frame.kind {
            FrameKind::Request => self.dispatch(frame, Instant::now()),
            _ => self.site.handle_other_frame(&frame),
        }
    }

    fn handle_frame_error(&mut self, conn: &Connection, error: &TransportError) {
        if let Some(reply) = frame_error_reply(error) {
            let _ = conn.send_frame(&reply);
        }
    }

    fn drain_after_frame_error(&self, error: &TransportError) -> bool {
        // The error frame must reach a client that writes the rest of its request (a body
        // over the limit) before it reads (tests/tls.rs); bytes that say nothing to answer
        // close at once.
        frame_error_reply(error).is_some()
    }

    fn handle_eof(&mut self, conn: &Connection) -> EofAction {
        // Half-close: the peer sent its last request. Answer what is in flight, then close.
        self.site.calls.peer_done.store(true, Ordering::SeqCst);
        if self.site.calls.in_flight() == 0 {
            conn.close_when_flushed();
        }
        EofAction::KeepWriting
    }

    fn handle_timer(&mut self, conn: &Connection, now: Instant) -> Option<Instant> {
        if let Some(deadline) = self.first_frame_deadline {
            if now >= deadline {
                // Not one whole frame since accept: an idle socket holding a connection slot.
                let counter = &self.site.server.stats.first_frame_timeouts;
                self.go_away_and_close(conn, counter);
                return None;
            }
        }
        let idle_check = match self.site.server.config.idle_timeout {
            Some(idle_timeout) => Some(self.check_idle(conn, now, idle_timeout)?),
            None => None,
        };
        let batch_check = self.check_worker_batch(conn, now);
        let parked_check = self.site.check_parked(now);
        let earliest_check = earliest(earliest(self.first_frame_deadline, idle_check), batch_check);
        earliest(earliest_check, parked_check)
    }

    fn pause_reading(&self, conn: &Connection) -> bool {
        if !self.site.parked.is_empty() && !self.site.replies_unread_at_cap() {
            self.site.release_parked();
        }
        let paused = self.site.replies_over_budget() || !self.site.parked.is_empty();
        // The loop asks again on every resume attempt: count only the start of a pause.
        if paused && !conn.is_read_paused() {
            StatsCounters::bump(&self.site.server.stats.read_pauses);
        }
        paused
    }

    fn handle_close(&mut self, _conn: &Connection, reason: CloseReason) {
        let stats = &self.site.server.stats;
        match reason {
            CloseReason::Error(TransportError::FrameTimeout) => {
                StatsCounters::bump(&stats.frame_timeouts);
            }
            CloseReason::Error(TransportError::TlsHandshakeClosed) => {}
            CloseReason::Error(err) if err.is_tls() => StatsCounters::bump(&stats.tls_errors),
            CloseReason::Error(err) if err.is_protocol_violation() => {
                StatsCounters::bump(&stats.frame_errors);
            }
            _ => {}
        }
        // Parked calls hold the connection's site: dropping them here also frees it.
        self.site.abandon_parked();
        self.site.server.deregister_connection(self.slot.id());
        if let Some(closed) = &self.closed {
            let _ = closed.send(());
        }
    }
}

/// Finds the codec and method a request names on `server`; every failure is a call error.
/// Shared with the simulated network's dispatch ([`crate::sim`]).
pub(crate) fn lookup(server: &ServerShared, request: &Frame) -> Result<Found, DispatchError> {
    let codec = CodecKind::from_id(request.codec)
        .filter(|codec| server.config.codecs.contains(codec))
        .ok_or_else(|| {
            DispatchError::new(
                ErrorCode::UnsupportedCodec,
                format!("codec id {} is not supported by this server", request.codec),
            )
        })?;
    let name = std::str::from_utf8(&request.name)
        .map_err(|_| DispatchError::new(ErrorCode::Protocol, "method name is not valid utf-8"))?;
    let Some((service, method)) = name.rsplit_once('.') else {
        return Err(DispatchError::new(
            ErrorCode::Protocol,
            format!("ill-formed method name `{name}`: expected `Service.Method`"),
        ));
    };
    let table = server.service(service).ok_or_else(|| {
        DispatchError::new(
            ErrorCode::UnknownService,
            format!("unknown service `{service}`"),
        )
    })?;
    let unknown_method =
        || DispatchError::new(ErrorCode::UnknownMethod, format!("unknown method `{name}`"));
    Ok(Found {
        codec,
        handler: table.get(method).cloned().ok_or_else(unknown_method)?,
        dispatch: table.dispatch(),
        counters: table.counters(method).cloned().ok_or_else(unknown_method)?,
    })
}

/// What [`lookup`] finds for a request.
#[derive(Clone)]
pub(crate) struct Found {
    /// The codec the request's body is in.
    pub(crate) codec: CodecKind,
    /// The method's handler.
    pub(crate) handler: MethodHandler,
    /// Where the service's handlers run.
    pub(crate) dispatch: Dispatch,
    /// The method's call and error counters (`Server::method_stats`).
    pub(crate) counters: Arc<MethodCounters>,
}

/// Runs a call's handler inside `server`'s middleware with `context` current; returns the
/// reply frame and the error code if it failed. Shared with the simulated network.
pub(crate) fn run_call(
    server: &ServerShared,
    handler: &MethodHandler,
    codec: CodecKind,
    request: &Frame,
    context: CallContext,
    limits: &FrameLimits,
) -> (BytesMut, Option<ErrorCode>) {
    run_handler(request, limits, |out| {
        let mut method = || handler(codec, &request.body, out);
        run_in_middleware(&server.config.middleware, context, &mut method)
    })
}

/// Runs one call (`handle` appends the encoded reply to the buffer it is given) and returns
/// its encoded reply frame (a response or an error), and the error code if it failed.
///
/// A panic in the handler or a middleware is caught here and becomes
/// [`ErrorCode::HandlerPanicked`], so a faulty method never takes down its worker, its
/// connection or the server.
fn run_handler(
    request: &Frame,
    limits: &FrameLimits,
    handle: impl FnOnce(&mut BytesMut) -> Result<(), DispatchError>,
) -> (BytesMut, Option<ErrorCode>) {
    let mut out = BytesMut::new();
    let mut head = FrameHead::new(FrameKind::Response, request.seq);
    head.codec = request.codec;
    let builder = match FrameBuilder::start(&mut out, &head, limits) {
        Ok(builder) => builder,
        Err(err) => {
            let code = ErrorCode::Internal;
            return (
                encode_error(request.seq, code, &err.to_string()),
                Some(code),
            );
        }
    };
    let outcome = catch_panic(|| handle(&mut out));
    let failure = match outcome {
        Ok(Ok(())) => match builder.finish(&mut out) {
            Ok(()) => return (out, None),
            Err(err) => DispatchError::new(ErrorCode::FrameTooLarge, format!("reply: {err}")),
        },
        Ok(Err(err)) => {
            builder.abandon(&mut out);
            err
        }
        Err(message) => {
            builder.abandon(&mut out);
            DispatchError::new(ErrorCode::HandlerPanicked, message)
        }
    };
    (
        encode_error(request.seq, failure.code, &failure.message),
        Some(failure.code),
    )
}

/// True if `request` carries a deadline (relative to `received`, when it was read) that has
/// passed: the call must not run. Shared with the simulated network.
pub(crate) fn deadline_passed(request: &Frame, received: Instant) -> bool {
    let deadline = Duration::from_millis(u64::from(request.deadline_ms));
    request.deadline_ms > 0 && received.elapsed() >= deadline
}

/// The message of a request refused at a cap on calls in flight (`Throttled`). Shared with
/// the simulated network.
pub(crate) const TOO_MANY_CALLS: &str = "too many calls in flight";

/// The error message of a call skipped because its deadline passed before it ran.
pub(crate) const DEADLINE_PASSED: &str = "the deadline passed before the call ran";

/// The error frame telling a peer whose bytes broke a limit or the frame format why, where
/// the header was intact enough to say to whom; `None` for bytes that say nothing to answer.
fn frame_error_reply(error: &TransportError) -> Option<Frame> {
    match error {
        TransportError::FrameTooLarge {
            seq,
            kind: FrameKind::Request,
            ..
        } => Some(error_frame(
            *seq,
            ErrorCode::FrameTooLarge,
            &error.to_string(),
        )),
        TransportError::NameTooLong {
            seq,
            kind: FrameKind::Request,
            ..
        }
        | TransportError::MetadataTooLarge {
            seq,
            kind: FrameKind::Request,
            ..
        } => Some(error_frame(*seq, ErrorCode::Protocol, &error.to_string())),
        TransportError::UnsupportedVersion { .. } => {
            Some(error_frame(0, ErrorCode::Protocol, &error.to_string()))
        }
        _ => None,
    }
}

/// The bytes of an error frame answering `seq` with `code`.
pub(crate) fn encode_error(seq: u64, code: ErrorCode, message: &str) -> BytesMut {
    let mut out = BytesMut::new();
    // Error frames have no name or metadata and a short body, so no limit can refuse them.
    let _ = error_frame(seq, code, message).encode(&mut out, &Default::default());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_in_flight_count_read_without_the_lock_follows_the_table() {
        let calls = ConnCalls::default();
        assert_eq!(calls.start(1, 2, || true), Start::Started);
        assert_eq!(calls.start(2, 2, || true), Start::Started);
        assert_eq!(calls.in_flight_len.load(Ordering::SeqCst), 2);
        assert_eq!(
            calls.start(3, 2, || true),
            Start::Full,
            "the per-connection cap"
        );
        assert!(!calls.finish(1));
        assert_eq!(calls.in_flight_len.load(Ordering::SeqCst), 1);
        assert_eq!(calls.start(2, 8, || true), Start::Duplicate);
        assert_eq!(
            calls.start(3, 2, || false),
            Start::Full,
            "the server-wide cap refused"
        );
        assert_eq!(calls.in_flight(), 1);
        assert_eq!(calls.in_flight_len.load(Ordering::SeqCst), 1);
        assert_eq!(calls.last_accepted.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn no_call_is_admitted_past_the_id_a_go_away_names() {
        // The loop (or a worker reading) admits calls while a graceful shutdown's thread
        // stops the connection accepting: every call admitted is one the go-away counts.
        let calls = ConnCalls::default();
        let (last, admitted) = std::thread::scope(|scope| {
            let admitting = scope.spawn(|| {
                (1..=200_000u64)
                    .filter(|&seq| {
                        let started = calls.start(seq, usize::MAX, || true) == Start::Started;
                        if started {
                            calls.finish(seq); // keeps the table small
                        }
                        started
                    })
                    .max()
                    .unwrap_or(0)
            });
            while calls.last_accepted.load(Ordering::SeqCst) < 1_000 {
                std::hint::spin_loop();
            }
            let last = calls.stop_accepting();
            (last, admitting.join().unwrap())
        });
        assert!(
            admitted <= last,
            "call {admitted} admitted after go-away({last})"
        );
        assert_eq!(calls.start(200_001, 8, || true), Start::Draining);
    }

    #[test]
    fn the_idle_check_sees_frames_a_worker_read_once() {
        let calls = ConnCalls::default();
        assert!(!calls.was_active(0));
        calls.note_activity();
        assert!(
            calls.was_active(0),
            "a worker read a frame the loop never saw"
        );
        assert!(!calls.was_active(0), "and only since the last look");
        assert_eq!(calls.start(1, 8, || true), Start::Started);
        assert!(calls.was_active(0), "a call in flight");
    }

    #[test]
    fn a_cancel_is_seen_only_by_its_own_call() {
        let calls = ConnCalls::default();
        assert_eq!(calls.start(1, 8, || true), Start::Started);
        assert_eq!(calls.start(2, 8, || true), Start::Started);
        assert!(!calls.is_cancelled(1));
        assert!(calls.cancel(2));
        assert!(calls.is_cancelled(2));
        assert!(!calls.is_cancelled(1));
        assert!(!calls.cancel(3), "not in flight");
    }
}
