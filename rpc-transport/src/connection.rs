//! `Connection`: a shared handle to one TCP connection, through which any thread sends frames.
//!
//! Only the event loop reads from the socket. Writing is shared: the first thread with bytes to
//! send writes them itself, straight to the socket, and keeps writing whatever other threads
//! queued meanwhile (so concurrent senders are batched into few system calls). When the socket
//! is full, the remaining bytes stay queued and the event loop is asked to watch for
//! writability; it finishes the job when the peer has read enough. The loop thread itself only
//! ever holds the queue's lock for a copy, never across a blocking call.
//!
//! Three ways to send, by who writes: `send` (this thread, now), `send_batched` (the loop, at
//! the end of its turn, with everything else queued by then; or, with a limit set by
//! `set_batched_write_at`, the sender that reaches it) and `send_corked` (whoever flushes
//! next: the sender's own `flush` once its burst is queued).
//!
//! With TLS ([`crate::tls`]), `send` encrypts under the session's lock straight into the queue,
//! so the queue holds records in the order rustls numbered them, and the loop passes what it
//! reads through the session before the frame decoder. Without TLS that costs one `None` check.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::ops::{ControlFlow, Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mio::net::TcpStream;

use crate::clock::deadline_after;
use crate::error::TransportError;
use crate::frame::Frame;
use crate::handler::CloseReason;
use crate::limits::FrameLimits;
use crate::loop_handle::{Command, ConnCommand, ConnKey, LoopHandle};
use crate::read_turn::{Inbox, OnFrame, ReadHere, ReadSide, LOOP_TURN_WAIT};
use crate::tls::session::TlsLayer;

/// A cheap, cloneable handle to one connection owned by an event loop.
///
/// `Send + Sync`: any thread may [`send`](Connection::send) or [`close`](Connection::close).
/// Frames are written whole and in the order their `send` calls took the queue's lock.
#[derive(Debug, Clone)]
pub struct Connection {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// The loop's slot for this connection and the generation that tells it from the slot's
    /// earlier and later occupants.
    key: ConnKey,
    stream: TcpStream,
    peer_addr: SocketAddr,
    local_addr: SocketAddr,
    limits: FrameLimits,
    loop_handle: LoopHandle,
    /// Guards the outbound queue and the flags that say who is writing it.
    out: Mutex<OutQueue>,
    /// The queue's length as its lock was last released ([`OutGuard`]): `queued_len`, asked
    /// once per call by a client and once per frame by a server, reads it without the lock.
    out_len: AtomicUsize,
    /// Guards the earliest timer this connection has asked the loop for.
    timer: Mutex<Option<Instant>>,
    /// The loop stopped reading this connection because its handler asked (backpressure).
    read_paused: AtomicBool,
    /// The frame decoder, and whether the loop or a waiting caller reads the socket now.
    read: ReadSide,
    /// The TLS session, on a TLS connection. Its lock is taken before `out`'s.
    /// Boxed: a TLS session is over a kilobyte, and a plaintext connection (most of them)
    /// should not carry its size.
    tls: Option<Box<TlsLayer>>,
}

#[derive(Debug, Default)]
struct OutQueue {
    /// Bytes accepted by `send` and not yet written to the socket.
    buf: BytesMut,
    /// Bytes a writer took from `buf` and is writing now, outside the lock: still counted
    /// queued ([`Connection::queued_len`]) until the socket has taken them.
    writing: usize,
    /// A thread (or the loop) is writing outside the lock; others just append.
    flushing: bool,
    /// The socket was full: the loop watches for writability and will flush.
    loop_flushes: bool,
    /// `send_batched` asked the loop to flush at the end of its turn; not yet done.
    flush_requested: bool,
    /// `send_batched` calls since a write last took the queue.
    batched_sends: usize,
    /// The `send_batched` call that writes at once (`Connection::set_batched_write_at`).
    batched_write_at: usize,
    /// No more sends are accepted.
    closed: bool,
    /// Close the connection as soon as the queue is empty.
    close_when_flushed: bool,
    /// The loop is set to look at held bytes ([`Connection::send_corked_for`]).
    held_look_set: bool,
    /// When the oldest held bytes still queued must be written: set by the first held bytes
    /// after a write took the queue, cleared by the next.
    held_until: Option<Instant>,
    /// The hold of the last held bytes, and whether any came since the loop last looked:
    /// while they keep coming the loop keeps looking, so they need not ask it to.
    hold: Duration,
    held_since_look: bool,
}

/// The outbound queue's lock, held: on release it records the queue's length in `len`, so
/// that every change to the queue, wherever made, shows in [`Connection::queued_len`].
struct OutGuard<'a> {
    queue: MutexGuard<'a, OutQueue>,
    len: &'a AtomicUsize,
}

impl Deref for OutGuard<'_> {
    type Target = OutQueue;

    fn deref(&self) -> &OutQueue {
        &self.queue
    }
}

impl DerefMut for OutGuard<'_> {
    fn deref_mut(&mut self) -> &mut OutQueue {
        &mut self.queue
    }
}

impl OutQueue {
    /// Bytes are queued and nobody is writing them (no sender, nor the loop after a full
    /// socket): a flush now would write them.
    fn waits_for_a_writer(&self) -> bool {
        !self.buf.is_empty() && !self.flushing && !self.loop_flushes
    }

    /// Takes the queued bytes for a writer, which starts the count of batched sends anew.
    fn take_for_write(&mut self) -> BytesMut {
        self.batched_sends = 0;
        self.held_until = None;
        self.writing = self.buf.len();
        std::mem::take(&mut self.buf)
    }
}

impl Drop for OutGuard<'_> {
    fn drop(&mut self) {
        // Still under the lock (the field drops after this), so stores follow lock order.
        let queued = self.queue.buf.len() + self.queue.writing;
        self.len.store(queued, Ordering::Relaxed);
    }
}

/// How long a connection closing once it has told its peer why (an alert after a TLS
/// failure, an error frame after bad bytes, a server's go-away) waits for that, and what was
/// queued before it, to be written ([`Connection::close_when_flushed_within`]): a peer that
/// reads nothing cannot hold the connection, and the calls on it, open for ever
/// (`tests/bad_input.rs`, `tests/faults.rs`).
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What a flush left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlushOutcome {
    /// Everything was written (or someone else is writing).
    Done,
    /// The socket is full; bytes remain queued for the loop.
    Blocked,
    /// Everything was written and the connection asked to close once flushed.
    CloseNow,
}

impl Connection {
    pub(crate) fn new(
        key: ConnKey,
        stream: TcpStream,
        limits: FrameLimits,
        loop_handle: LoopHandle,
        tls: Option<rustls::Connection>,
    ) -> io::Result<Connection> {
        let peer_addr = stream.peer_addr()?;
        let local_addr = stream.local_addr()?;
        Ok(Connection {
            shared: Arc::new(Shared {
                key,
                stream,
                peer_addr,
                local_addr,
                limits,
                loop_handle,
                out: Mutex::new(OutQueue {
                    batched_write_at: usize::MAX,
                    ..OutQueue::default()
                }),
                out_len: AtomicUsize::new(0),
                timer: Mutex::new(None),
                read_paused: AtomicBool::new(false),
                read: ReadSide::new(limits),
                tls: tls.map(|conn| Box::new(TlsLayer::new(conn))),
            }),
        })
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.peer_addr
    }

    /// This side's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The frame limits of this connection.
    pub fn limits(&self) -> &FrameLimits {
        &self.shared.limits
    }

    /// The loop's slot index for this connection; unique among the loop's open connections.
    ///
    /// A slot is reused once its connection has closed, so a closed connection may share its
    /// token with a newer one. Commands sent through this handle (say a late
    /// [`Connection::close`]) carry a generation as well, and never reach the newer connection.
    pub fn token(&self) -> usize {
        self.shared.key.index
    }

    /// The slot and generation the loop knows this connection by.
    pub(crate) fn key(&self) -> ConnKey {
        self.shared.key
    }

    /// Encodes and sends one frame.
    ///
    /// # Errors
    ///
    /// A limit error from [`Frame::encode`] (nothing is sent), or as [`Connection::send`].
    pub fn send_frame(&self, frame: &Frame) -> Result<(), TransportError> {
        let mut bytes = BytesMut::with_capacity(frame.encoded_len());
        frame.encode(&mut bytes, &self.shared.limits)?;
        self.send(&bytes)
    }

    /// Encodes one frame and queues it as [`Connection::send_batched`] does: for answers that
    /// may come in floods (pongs), one write per turn of the loop instead of one each.
    ///
    /// # Errors
    ///
    /// A limit error from [`Frame::encode`] (nothing is queued), or as
    /// [`Connection::send_batched`].
    pub fn send_frame_batched(&self, frame: &Frame) -> Result<(), TransportError> {
        let mut bytes = BytesMut::with_capacity(frame.encoded_len());
        frame.encode(&mut bytes, &self.shared.limits)?;
        self.send_batched(&bytes)
    }

    /// Sends already-encoded bytes (one or more whole frames). Never blocks on the socket: what
    /// cannot be written now is queued and written by the event loop when the peer reads.
    ///
    /// # Errors
    ///
    /// [`TransportError::Closed`] if the connection is closed or closing; an I/O error if the
    /// socket failed (the connection is then closed).
    pub fn send(&self, bytes: &[u8]) -> Result<(), TransportError> {
        match self.enqueue(bytes, Enqueue::WriteNow)? {
            Queued::Write => self.write_as_sender(),
            // Whoever is writing will take these bytes too (only held corked bytes set a
            // loop write).
            Queued::Left | Queued::AskLoop | Queued::FlushAt(_) => Ok(()),
        }
    }

    /// Queues `bytes` without writing them and without asking the loop to: they leave with
    /// the next [`Connection::flush`], [`Connection::send`] or loop flush, together with
    /// everything queued by then (the idea of Linux's `TCP_CORK`).
    ///
    /// For a thread that sends a burst of frames and then waits: it corks each one and
    /// flushes once, so the burst costs one system call and no wake-up of the loop. The
    /// caller must flush: corked bytes that nothing flushes stay queued.
    ///
    /// # Errors
    ///
    /// [`TransportError::Closed`] if the connection is closed or closing.
    pub fn send_corked(&self, bytes: &[u8]) -> Result<(), TransportError> {
        self.enqueue(bytes, Enqueue::Corked)?;
        Ok(())
    }

    /// Queues `bytes` corked, as [`Connection::send_corked`], but for about `hold` at most:
    /// whatever no flush or send has written by then, the event loop writes. For a sender
    /// that expects others to flush soon and must not strand its bytes if they do not.
    ///
    /// Costs the loop one look per `hold` at most while held bytes keep coming, and a write
    /// only when some have waited out their hold. The loop's clock counts whole
    /// milliseconds, so a hold under one is a millisecond.
    ///
    /// # Errors
    ///
    /// [`TransportError::Closed`] if the connection is closed or closing.
    pub fn send_corked_for(&self, bytes: &[u8], hold: Duration) -> Result<(), TransportError> {
        if let Queued::FlushAt(at) = self.enqueue(bytes, Enqueue::Held(hold))? {
            self.post(ConnCommand::FlushAt(at));
        }
        Ok(())
    }

    /// Loop side, at a look set by [`Connection::send_corked_for`]: whether held bytes have
    /// waited out their hold (the loop must write them), and when to look next, if at all.
    /// The loop keeps looking while held bytes keep coming, so that they do not each ask it.
    pub(crate) fn look_at_held(&self, now: Instant) -> (bool, Option<Instant>) {
        let mut out = self.lock_out();
        let due = out.held_until.is_some_and(|until| until <= now);
        let next = match out.held_until {
            Some(until) if !due => Some(until),
            _ if out.held_since_look => Some(deadline_after(now, out.hold)),
            _ => None,
        };
        out.held_since_look = false;
        out.held_look_set = next.is_some();
        (due, next)
    }

    /// True if bytes wait in the queue and nobody is writing them: what a
    /// [`Connection::flush`] now would write. (A write in progress takes whatever is queued
    /// behind it too; [`Connection::queued_len`] counts its bytes, this does not.)
    pub fn has_unflushed(&self) -> bool {
        let out = self.lock_out();
        !out.closed && out.waits_for_a_writer()
    }

    /// Writes what is queued (by [`Connection::send_corked`], say) now, from this thread,
    /// unless another writer is at it, which then writes these bytes too. Never blocks on the
    /// socket: what it does not take is left to the event loop, as with
    /// [`Connection::send`].
    ///
    /// # Errors
    ///
    /// As [`Connection::send`].
    pub fn flush(&self) -> Result<(), TransportError> {
        {
            let mut out = self.lock_out();
            if out.closed {
                return Err(TransportError::Closed);
            }
            if !out.waits_for_a_writer() {
                return Ok(());
            }
            out.flushing = true;
        }
        self.write_as_sender()
    }

    /// Writes the queue from a sending thread (which has set `flushing`), and leaves to the
    /// loop what the socket did not take.
    fn write_as_sender(&self) -> Result<(), TransportError> {
        match self.write_queue() {
            Ok(FlushOutcome::Done) => Ok(()),
            Ok(FlushOutcome::Blocked) => {
                self.post(ConnCommand::WantWrite);
                Ok(())
            }
            Ok(FlushOutcome::CloseNow) => {
                self.post(ConnCommand::Flushed);
                Ok(())
            }
            Err(err) => {
                let err = TransportError::from(err);
                self.fail(err.clone());
                Err(err)
            }
        }
    }

    /// Queues `bytes` for the event loop to write at the end of its current turn, together
    /// with everything else queued by then: many frames, one system call. With a limit set
    /// ([`Connection::set_batched_write_at`]), the send that reaches it writes at once
    /// instead, from this thread.
    ///
    /// Use it where frames come in bursts (replies to a batch of pipelined requests, calls
    /// issued while others are in flight); [`Connection::send`] writes at once and suits a
    /// lone frame. Called on the loop thread itself (from a handler), it costs no wake-up.
    ///
    /// # Errors
    ///
    /// [`TransportError::Closed`] if the connection is closed or closing.
    pub fn send_batched(&self, bytes: &[u8]) -> Result<(), TransportError> {
        match self.enqueue(bytes, Enqueue::Batched)? {
            Queued::Write => self.write_as_sender(),
            Queued::AskLoop => {
                self.post(ConnCommand::Flush);
                Ok(())
            }
            Queued::Left | Queued::FlushAt(_) => Ok(()),
        }
    }

    /// Makes the `sends`th [`Connection::send_batched`] call since the last write write the
    /// queue at once, from its own thread, instead of leaving it for the end of the loop's
    /// turn: a long burst then reaches the peer in pieces, and the peer works on the first
    /// while the rest is made. The default, `usize::MAX`, sets no limit; zero counts as one.
    pub fn set_batched_write_at(&self, sends: usize) {
        self.lock_out().batched_write_at = sends;
    }

    /// Sets how long a caller in [`Connection::read_here`] polls the socket without blocking
    /// before it sleeps (see [`crate::busy_poll`]); zero, the default, sleeps at once.
    pub fn set_busy_poll(&self, busy_poll: crate::BusyPoll) {
        self.read_side().set_busy_poll(busy_poll);
    }

    /// Reads the socket on this thread, for a caller waiting for a reply: until at least one
    /// frame has gone to `on_frame`, `deadline` passes, or `stop` returns true (checked
    /// before each wait; say, "my reply arrived some other way").
    ///
    /// The event loop keeps off the socket meanwhile and takes it back after; it also takes
    /// over anything this side cannot act on (end of stream, an error, bad bytes, and half a
    /// frame, whose timeout only the loop keeps). A turn the loop is taking now is waited
    /// out (it never blocks; a bound of 2 ms covers a loop thread kept off its CPU). On a
    /// TLS connection the caller decrypts what it reads, under the session's lock as the loop
    /// does, and writes what TLS answers with; bytes TLS refuses go to the loop, which
    /// writes the alert and closes. Returns [`ReadHere::Elsewhere`] at once when another
    /// caller is reading now, while a TLS handshake runs (the loop's to finish), or if no
    /// poller could be made: wait for what the loop delivers then.
    /// The first call makes a poller of the connection's own (one file descriptor, kept
    /// until the connection is dropped).
    pub fn read_here(
        &self,
        deadline: Instant,
        stop: &dyn Fn() -> bool,
        on_frame: &mut dyn FnMut(Frame),
    ) -> ReadHere {
        let mut take_all = |frame| {
            on_frame(frame);
            ControlFlow::Continue(())
        };
        self.take_read_turn(deadline, stop, LOOP_TURN_WAIT, &mut take_all)
    }

    /// Reads the socket on this thread if nobody else is reading it, for a server's pool
    /// worker that has just answered a call and waits a moment for the connection's next
    /// requests: until at least one frame has gone to `on_frame`, `deadline` passes, or
    /// `on_frame` breaks off (it returns [`ControlFlow::Break`]: the loop reads the rest).
    ///
    /// As [`Connection::read_here`] in all else, but it never waits out a turn the loop
    /// holds: the loop is reading then, and delivers what it reads as usual.
    pub fn read_next_here(
        &self,
        deadline: Instant,
        on_frame: &mut dyn FnMut(Frame) -> ControlFlow<()>,
    ) -> ReadHere {
        self.take_read_turn(deadline, &|| false, Duration::ZERO, on_frame)
    }

    /// A read turn on this thread: what [`Connection::read_here`] and
    /// [`Connection::read_next_here`] share.
    fn take_read_turn(
        &self,
        deadline: Instant,
        stop: &dyn Fn() -> bool,
        loop_turn_wait: Duration,
        on_frame: &mut OnFrame<'_>,
    ) -> ReadHere {
        if self.lock_out().closed || self.is_handshaking() {
            return ReadHere::Elsewhere;
        }
        let had_poller = self.shared.read.has_caller_poller();
        let unwinding = LoopReadsOnUnwind(self);
        let mut tls_records = false;
        let mut feed = |bytes: &[u8], inbox: &mut Inbox| {
            tls_records |= self.handle_read(bytes, inbox)?;
            Ok(())
        };
        let (outcome, loop_must_read) = self.shared.read.read_here(
            &self.shared.stream,
            deadline,
            stop,
            loop_turn_wait,
            on_frame,
            &mut feed,
        );
        std::mem::forget(unwinding);
        if tls_records {
            // TLS answered what it read (a key update, say): nobody else may write that. A
            // failed write closes the connection, which the caller then learns of.
            let _ = self.flush();
        }
        if !had_poller && self.shared.read.has_caller_poller() {
            self.post(ConnCommand::WatchBehindCaller);
        }
        if loop_must_read {
            self.post(ConnCommand::ReadAgain);
        }
        outcome
    }

    /// The decoder and read turn, for the loop.
    pub(crate) fn read_side(&self) -> &ReadSide {
        &self.shared.read
    }

    /// True if this connection runs TLS ([`crate::LoopHandle::adopt_tls`]).
    pub fn is_tls(&self) -> bool {
        self.shared.tls.is_some()
    }

    /// Waits until the TLS handshake has settled, at most `timeout`: finished, and past the
    /// point where the peer could still refuse this side. Returns at once on a plaintext
    /// connection.
    ///
    /// In TLS 1.3 a client finishes its handshake before the server has checked the client's
    /// certificate; the server's verdict comes with its next record (a session ticket, data,
    /// or an alert). A client's handshake therefore settles only when that record arrives,
    /// so send something the server answers (netrpc's hello ping) before waiting.
    ///
    /// Frames sent before the handshake finishes are held and sent after it, so waiting is
    /// needed only to learn early whether the peer was accepted (a dialer reports a refused
    /// certificate from `dial` rather than from the first call).
    ///
    /// # Errors
    ///
    /// What ended the handshake ([`TransportError::Tls`] naming the refused certificate,
    /// [`TransportError::TlsHandshakeClosed`], ...), or
    /// [`TransportError::TlsHandshakeTimeout`] if it had not finished within `timeout`.
    pub fn wait_for_handshake(&self, timeout: Duration) -> Result<(), TransportError> {
        match &self.shared.tls {
            None => Ok(()),
            Some(tls) => tls.wait_for_handshake(timeout),
        }
    }

    /// Asks the loop to read this connection again if it is holding back because the handler
    /// asked ([`crate::FrameHandler::pause_reading`]), say because a call in flight finished.
    /// Cheap when reading is not paused. The loop asks the handler again before reading.
    pub fn resume_reading(&self) {
        if self.shared.read_paused.load(Ordering::SeqCst) {
            self.post(ConnCommand::ResumeReading);
        }
    }

    /// Whether the loop is holding back reading this connection because its handler asked.
    pub fn is_read_paused(&self) -> bool {
        self.shared.read_paused.load(Ordering::SeqCst)
    }

    /// Set by the loop as it stops and starts reading this connection.
    pub(crate) fn set_read_paused(&self, paused: bool) {
        self.shared.read_paused.store(paused, Ordering::SeqCst);
    }

    /// Bytes accepted by `send` but not yet written to the socket (with TLS: record bytes,
    /// plus plaintext held until the handshake finishes), as of the last change to the
    /// queue, counting a writer's batch while its system call runs: zero means the socket
    /// has taken everything (a graceful shutdown waits for that). Without TLS it takes no
    /// lock (it is read once per call).
    pub fn queued_len(&self) -> usize {
        // Held plaintext first: a handshake finishing between the two reads moves it into the
        // queue, where it is counted twice for a moment rather than not at all.
        let early = self
            .shared
            .tls
            .as_ref()
            .map_or(0, |tls| tls.lock().early_len());
        early + self.shared.out_len.load(Ordering::Relaxed)
    }

    /// Closes the connection now; queued bytes are dropped. Idempotent.
    pub fn close(&self) {
        if self.mark_closing() {
            self.post(ConnCommand::Close);
        }
    }

    /// Closes the connection now because a write from this thread failed: the loop closes it
    /// with `err` as the reason (the peer is gone), not as a close this side asked for.
    fn fail(&self, err: TransportError) {
        if self.mark_closing() {
            self.post(ConnCommand::Fail(err));
        }
    }

    /// Refuses further sends and drops queued bytes; true the first time.
    fn mark_closing(&self) -> bool {
        let mut out = self.lock_out();
        let first = !out.closed;
        out.closed = true;
        out.buf = BytesMut::new();
        first
    }

    /// Refuses further sends and closes the connection once queued bytes are written.
    pub fn close_when_flushed(&self) {
        let close_now = {
            let mut out = self.lock_out();
            if out.closed || out.close_when_flushed {
                return;
            }
            out.close_when_flushed = true;
            out.buf.is_empty() && !out.flushing && !out.loop_flushes
        };
        if close_now {
            self.post(ConnCommand::Flushed);
        }
    }

    /// Closes the connection once queued bytes are written, as
    /// [`Connection::close_when_flushed`], or after `grace` if they are not written by then:
    /// for a close that tells the peer why (a go-away, an error frame), which a peer that
    /// reads nothing must not be able to hold off for ever.
    pub fn close_when_flushed_within(&self, grace: Duration) {
        self.close_when_flushed();
        if !self.lock_out().closed {
            self.post(ConnCommand::CloseBy(deadline_after(Instant::now(), grace)));
        }
    }

    /// True once [`Connection::close`] or [`Connection::close_when_flushed`] was called, or the
    /// loop closed the connection.
    pub fn is_closed(&self) -> bool {
        let out = self.lock_out();
        out.closed || out.close_when_flushed
    }

    /// Asks the loop to call [`crate::FrameHandler::handle_timer`] at `at` (or earlier, if an
    /// earlier timer is already set). Cheap when a timer at or before `at` is already set.
    pub fn schedule_timer(&self, at: Instant) {
        {
            let mut timer = self.lock_timer();
            if matches!(*timer, Some(current) if current <= at) {
                return;
            }
            *timer = Some(at);
        }
        self.post(ConnCommand::Timer(at));
    }

    /// Loop side: true if `at` is the handler timer now set (other heap entries are stale).
    pub(crate) fn timer_is(&self, at: Instant) -> bool {
        *self.lock_timer() == Some(at)
    }

    /// Loop side: takes the timer if `at` is still the one set (stale heap entries are skipped).
    pub(crate) fn take_timer_if(&self, at: Instant) -> bool {
        let mut timer = self.lock_timer();
        if *timer == Some(at) {
            *timer = None;
            true
        } else {
            false
        }
    }

    pub(crate) fn stream(&self) -> &TcpStream {
        &self.shared.stream
    }

    /// Loop side: marks the connection closed so later sends fail, and fails a TLS handshake
    /// still running with `reason`.
    pub(crate) fn mark_closed(&self, reason: &CloseReason) {
        {
            let mut out = self.lock_out();
            out.closed = true;
            out.buf = BytesMut::new();
        }
        if let Some(tls) = &self.shared.tls {
            tls.handle_close(reason);
        }
    }

    /// Loop side (or a reading caller's): hands bytes read from the socket to the inbox's
    /// decoder, through TLS on a TLS connection (noting whether TLS now holds part of a
    /// record). Returns true if TLS queued records to send (handshake messages, alerts): the
    /// loop then writes them with [`Connection::flush_now`], since no send may come.
    ///
    /// # Errors
    ///
    /// [`TransportError::Tls`]: the connection must close (an alert saying why is queued).
    pub(crate) fn handle_read(
        &self,
        bytes: &[u8],
        inbox: &mut Inbox,
    ) -> Result<bool, TransportError> {
        let Some(tls) = &self.shared.tls else {
            inbox.decoder.handle_bytes(bytes);
            return Ok(false);
        };
        let mut session = tls.lock();
        let (result, queued) = {
            let mut out = self.lock_out();
            let before = out.buf.len();
            let result = session.handle_ciphertext(bytes, &mut inbox.decoder, &mut out.buf);
            (result, out.buf.len() > before)
        };
        // During the handshake its own deadline holds the peer to time.
        inbox.tls_mid_record = session.is_mid_record() && !session.is_handshaking();
        inbox.tls_closed = session.peer_closed();
        drop(session);
        let progress = result?; // the loop closes the connection, which wakes the waiters
        if progress.settled {
            tls.notify();
        }
        Ok(queued)
    }

    /// Loop side: queues the records TLS has ready before anything was read (a client's
    /// hello); true if there are any, to be written with [`Connection::flush_now`].
    pub(crate) fn queue_tls_records(&self) -> bool {
        let Some(tls) = &self.shared.tls else {
            return false;
        };
        let mut session = tls.lock();
        let mut out = self.lock_out();
        let before = out.buf.len();
        session.poll_records(&mut out.buf);
        out.buf.len() > before
    }

    /// True while a TLS handshake runs (never on a plaintext connection): nothing sent on the
    /// connection can reach the peer yet, and no frame has come from it.
    pub fn is_handshaking(&self) -> bool {
        self.shared
            .tls
            .as_ref()
            .is_some_and(|tls| tls.lock().is_handshaking())
    }

    /// Loop side: writes queued bytes now, unless another writer is at it.
    pub(crate) fn flush_now(&self) -> io::Result<FlushOutcome> {
        {
            let mut out = self.lock_out();
            if out.flushing || out.loop_flushes || out.closed {
                return Ok(FlushOutcome::Done);
            }
            out.flushing = true;
        }
        self.write_queue()
    }

    /// Loop side: writes what [`Connection::send_batched`] queued, unless another writer
    /// already took it.
    pub(crate) fn flush_requested(&self) -> io::Result<FlushOutcome> {
        {
            let mut out = self.lock_out();
            if !out.flush_requested {
                return Ok(FlushOutcome::Done);
            }
            out.flush_requested = false;
            if out.flushing || out.loop_flushes || out.closed {
                return Ok(FlushOutcome::Done);
            }
            out.flushing = true;
        }
        self.write_queue()
    }

    /// Loop side: the socket became writable while the loop owns flushing.
    pub(crate) fn flush_from_loop(&self) -> io::Result<FlushOutcome> {
        {
            let mut out = self.lock_out();
            if out.flushing || !out.loop_flushes {
                return Ok(FlushOutcome::Done);
            }
            out.flushing = true;
        }
        self.write_queue()
    }

    /// Writes queued bytes until the queue is empty or the socket is full. The caller has set
    /// `flushing`; this clears it before returning.
    fn write_queue(&self) -> io::Result<FlushOutcome> {
        let mut batch = self.lock_out().take_for_write();
        loop {
            let written = match write_until_blocked(&self.shared.stream, &batch) {
                Ok(written) => written,
                Err(err) => {
                    let mut out = self.lock_out();
                    out.flushing = false;
                    out.writing = 0;
                    return Err(err);
                }
            };
            let mut out = self.lock_out();
            out.writing = 0;
            if written < batch.len() {
                // Socket full: put the rest back in front of whatever arrived meanwhile.
                let mut rest = batch.split_off(written);
                rest.extend_from_slice(&out.buf);
                out.buf = rest;
                out.flushing = false;
                // A sender only flushes while the loop does not, so this is always news to
                // the loop when `who` is a sender; the loop itself just keeps its interest.
                out.loop_flushes = true;
                return Ok(FlushOutcome::Blocked);
            }
            if out.buf.is_empty() || out.closed {
                out.flushing = false;
                out.loop_flushes = false;
                return Ok(if out.close_when_flushed {
                    FlushOutcome::CloseNow
                } else {
                    FlushOutcome::Done
                });
            }
            batch = out.take_for_write();
        }
    }

    /// Appends `bytes` to the queue (encrypted, with TLS), and says what the sender must do
    /// next.
    fn enqueue(&self, bytes: &[u8], how: Enqueue) -> Result<Queued, TransportError> {
        let mut session = self.shared.tls.as_deref().map(TlsLayer::lock);
        let mut out = self.lock_out();
        if out.closed || out.close_when_flushed {
            return Err(TransportError::Closed);
        }
        match session.as_mut() {
            None => out.buf.extend_from_slice(bytes),
            Some(session) => session.handle_plaintext(bytes, &mut out.buf)?,
        }
        if out.flushing || out.loop_flushes {
            return Ok(Queued::Left);
        }
        match how {
            Enqueue::WriteNow => {
                out.flushing = true;
                Ok(Queued::Write)
            }
            Enqueue::Batched => {
                out.batched_sends += 1;
                if out.batched_sends >= out.batched_write_at {
                    out.flushing = true;
                    Ok(Queued::Write)
                } else if out.flush_requested {
                    Ok(Queued::Left)
                } else {
                    out.flush_requested = true;
                    Ok(Queued::AskLoop)
                }
            }
            Enqueue::Corked => Ok(Queued::Left),
            Enqueue::Held(hold) => {
                out.hold = hold;
                out.held_since_look = true;
                if out.held_until.is_some() {
                    return Ok(Queued::Left); // older held bytes set the moment
                }
                let at = deadline_after(Instant::now(), hold);
                out.held_until = Some(at);
                if out.held_look_set {
                    return Ok(Queued::Left); // the loop looks by then, and sets its next look
                }
                out.held_look_set = true;
                Ok(Queued::FlushAt(at))
            }
        }
    }

    /// Sends the loop a command about this connection; the loop ignores it once this
    /// connection no longer holds its slot.
    fn post(&self, command: ConnCommand) {
        self.shared
            .loop_handle
            .command(Command::Conn(self.key(), command));
    }

    fn lock_out(&self) -> OutGuard<'_> {
        // A panic while holding this lock leaves the queue consistent (every update is a
        // single assignment), so a poisoned lock is safe to keep using.
        let queue = self
            .shared
            .out
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        OutGuard {
            queue,
            len: &self.shared.out_len,
        }
    }

    fn lock_timer(&self) -> MutexGuard<'_, Option<Instant>> {
        self.shared
            .timer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Who writes bytes just queued: the sender at once, the loop at the end of its turn, or
/// whoever flushes next.
#[derive(Debug, Clone, Copy)]
enum Enqueue {
    WriteNow,
    Batched,
    Corked,
    /// Corked, written by the loop after this long if nobody has by then.
    Held(Duration),
}

/// What a sender does once its bytes are queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queued {
    /// Write the queue: this sender became the writer.
    Write,
    /// Ask the loop to write at the end of its turn.
    AskLoop,
    /// Nothing: a writer at work, a flush already asked for, or corked bytes take them.
    Left,
    /// Ask the loop to write the queue at this moment (held corked bytes).
    FlushAt(Instant),
}

/// Writes as much of `bytes` as the socket takes without blocking; returns how much it took.
fn write_until_blocked(mut stream: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < bytes.len() {
        match stream.write(&bytes[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        }
    }
    Ok(written)
}

/// Armed while a caller reads its connection: if the caller's `on_frame` unwinds, frees the
/// read turn and has the loop read the connection, so that it is never left unread. Disarmed
/// with `mem::forget` on a normal return.
struct LoopReadsOnUnwind<'a>(&'a Connection);

impl Drop for LoopReadsOnUnwind<'_> {
    fn drop(&mut self) {
        self.0.shared.read.give_back_after_unwind();
        self.0.post(ConnCommand::ReadAgain);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plaintext_connection_does_not_carry_the_size_of_a_tls_session() {
        // An idle connection costs about 670 bytes in all (tests/scale.rs); a TLS session held
        // inline added over a kilobyte to every connection, TLS or not. (The frame decoder
        // lives here too, moved from the loop's slot so that a caller can read; 528 bytes.)
        let shared = std::mem::size_of::<Shared>();
        assert!(shared <= 640, "Shared is {shared} bytes");
    }
}
