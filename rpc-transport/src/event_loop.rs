//! The event loop: one thread, one `mio::Poll`, many connections, never blocking.
//!
//! The loop owns every socket's read side and its [`FrameHandler`]; the frame decoder lives
//! in the connection, since a caller waiting for a reply may take a turn at reading the
//! socket itself (`read_turn.rs`), and the loop then keeps off it. Other threads reach the
//! loop through a [`LoopHandle`] (`loop_handle.rs`): a command channel plus a
//! `mio::Waker`. Each turn
//! of the loop waits for readiness (or the next timer), then:
//!
//! 1. accepts pending connections, if it has a listener (until `WouldBlock`, or
//!    `MAX_ACCEPTS_PER_TURN` of them, the rest at the end of the turn);
//! 2. reads each readable socket until `WouldBlock`, hands whole frames to its handler;
//! 3. flushes each writable socket whose queue the loop owns, and drops write interest once
//!    the queue is empty (interest follows state: writable only while output is queued);
//! 4. runs commands from other threads (adopt, close, want-write, timer), dropping those
//!    meant for a connection that has since closed (see `ConnKey`);
//! 5. fires due timers.
//!
//! On a TLS connection the bytes read pass through its TLS session (`tls/session.rs`) on
//! their way to the decoder, and the loop writes at once what the session wants to send
//! (handshake messages, alerts): no application write may come to carry them.
//!
//! Spurious events are harmless: every read and write simply stops at `WouldBlock`.

use std::io::{self, Read};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::busy_poll::BusyPoll;
use crate::clock::deadline_after;
use crate::connection::{Connection, FlushOutcome, CLOSE_GRACE};
use crate::decoder::FrameDecoder;
use crate::error::TransportError;
use crate::exclusive_wake;
use crate::frame_clock::{Fired, FrameClock};
use crate::hand_off::{self, AfterTurn, Phase, Watched};
use crate::handler::{CloseReason, EofAction, FrameHandler};
use crate::limits::FrameLimits;
use crate::loop_handle::{Acceptor, Command, ConnCommand, ConnKey, LoopHandle, MakeHandler};
use crate::read_turn::HandedBack;
use crate::timer_heap::TimerHeap;

/// Starts an event loop on a new thread named `name`.
///
/// With a listener, the loop accepts connections and passes each socket to `acceptor`.
///
/// # Errors
///
/// If the `Poll`, the waker or the listener's registration cannot be created.
pub fn spawn_loop(
    name: &str,
    listener: Option<(std::net::TcpListener, Acceptor)>,
) -> io::Result<(LoopHandle, JoinHandle<()>)> {
    spawn_loop_with(name, listener, BusyPoll::default())
}

/// [`spawn_loop`] for a loop that polls without blocking for up to `busy_poll`'s budget
/// before each sleep (see [`crate::busy_poll`]).
///
/// # Errors
///
/// As [`spawn_loop`].
pub fn spawn_loop_with(
    name: &str,
    listener: Option<(std::net::TcpListener, Acceptor)>,
    busy_poll: BusyPoll,
) -> io::Result<(LoopHandle, JoinHandle<()>)> {
    let mut event_loop = EventLoop::new(listener, busy_poll)?;
    let handle = event_loop.handle.clone();
    let thread = thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            event_loop.handle.mark_current_thread();
            event_loop.run();
        })?;
    Ok((handle, thread))
}

/// [`spawn_loop_with`] for a loop whose thread runs `work` after each turn, away from the
/// loop, and which a new thread takes over when that work runs long (`hand_off.rs`).
///
/// # Errors
///
/// As [`spawn_loop`].
pub fn spawn_loop_handing_off(
    name: &str,
    listener: Option<(std::net::TcpListener, Acceptor)>,
    busy_poll: BusyPoll,
    work: Arc<dyn AfterTurn>,
) -> io::Result<(LoopHandle, LoopThread)> {
    let event_loop = EventLoop::new(listener, busy_poll)?;
    let handle = event_loop.handle.clone();
    let seat = Arc::new(SeatedLoop {
        name: name.to_owned(),
        event_loop: Mutex::new(event_loop),
        work,
        phase: Phase::default(),
        ended: Mutex::new(false),
        ended_signal: Condvar::new(),
        runner: Mutex::new(None),
    });
    let first = Arc::clone(&seat);
    thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || first.run())?;
    hand_off::watch(Arc::downgrade(&seat) as Weak<dyn Watched>);
    Ok((handle, LoopThread { seat }))
}

/// The thread, or in turn the threads, running a loop of [`spawn_loop_handing_off`].
#[derive(Debug)]
pub struct LoopThread {
    seat: Arc<SeatedLoop>,
}

impl LoopThread {
    /// Waits until the loop has exited (after [`LoopHandle::shutdown`]); returns at once
    /// when called on the loop's own thread, which would wait for itself.
    pub fn join(self) {
        if self.seat.runs_on_current_thread() {
            return;
        }
        let mut ended = self
            .seat
            .ended
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while !*ended {
            ended = self
                .seat
                .ended_signal
                .wait(ended)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// A loop that threads take turns at running ([`spawn_loop_handing_off`]).
struct SeatedLoop {
    name: String,
    /// The loop, held by the thread that runs it (and let go while it runs the work).
    event_loop: Mutex<EventLoop>,
    work: Arc<dyn AfterTurn>,
    phase: Phase,
    /// The loop has exited.
    ended: Mutex<bool>,
    ended_signal: Condvar,
    /// The thread running the loop now.
    runner: Mutex<Option<thread::ThreadId>>,
}

impl std::fmt::Debug for SeatedLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeatedLoop")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl SeatedLoop {
    /// A thread's time at the loop: turns, each followed by the work if any waits, until
    /// the loop exits or another thread takes it over during a run of the work.
    fn run(self: Arc<Self>) {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        let mut event_loop = self.take_seat();
        loop {
            if !event_loop.turn(&mut events) {
                drop(event_loop);
                self.exited();
                return;
            }
            if !self.work.has_work() {
                continue;
            }
            let run = self.phase.begin();
            event_loop.handle.unmark_current_thread();
            self.work.leave();
            drop(event_loop);
            self.work.run();
            if !self.phase.end(run) {
                return; // the loop runs on another thread now
            }
            event_loop = self.take_seat();
        }
    }

    /// Takes the loop for the calling thread.
    fn take_seat(&self) -> std::sync::MutexGuard<'_, EventLoop> {
        let event_loop = self
            .event_loop
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *self.runner.lock().unwrap_or_else(PoisonError::into_inner) = Some(thread::current().id());
        event_loop.handle.mark_current_thread();
        Arc::clone(&self.work).enter();
        event_loop
    }

    fn exited(&self) {
        *self.ended.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.ended_signal.notify_all();
    }

    fn runs_on_current_thread(&self) -> bool {
        *self.runner.lock().unwrap_or_else(PoisonError::into_inner) == Some(thread::current().id())
    }
}

impl Watched for SeatedLoop {
    fn phase(&self) -> &Phase {
        &self.phase
    }

    fn work(&self) -> &dyn AfterTurn {
        &*self.work
    }

    fn start_taker(self: Arc<Self>, go: Receiver<bool>) -> bool {
        let name = self.name.clone();
        thread::Builder::new()
            .name(name)
            .spawn(move || {
                if go.recv() == Ok(true) {
                    self.run();
                }
            })
            .is_ok()
    }
}

impl EventLoop {
    /// A loop with its poller, its waker and, if given, its listener registered.
    fn new(
        listener: Option<(std::net::TcpListener, Acceptor)>,
        busy_poll: BusyPoll,
    ) -> io::Result<EventLoop> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (handle, commands_rx) = LoopHandle::new(waker);
        let listener = match listener {
            Some((listener, acceptor)) => {
                listener.set_nonblocking(true)?;
                let mut listener = TcpListener::from_std(listener);
                poll.registry()
                    .register(&mut listener, LISTENER, Interest::READABLE)?;
                Some(ListenerState {
                    listener,
                    acceptor,
                    paused_until: None,
                    more_waiting: false,
                })
            }
            None => None,
        };
        Ok(EventLoop {
            poll,
            handle,
            commands: commands_rx,
            slots: Vec::new(),
            next_generation: 0,
            free: Vec::new(),
            closed_this_turn: Vec::new(),
            read_again: Vec::new(),
            listener,
            timers: TimerHeap::new(),
            scratch: vec![0; READ_CHUNK],
            busy_poll,
        })
    }
}

struct EventLoop {
    poll: Poll,
    handle: LoopHandle,
    commands: Receiver<Command>,
    slots: Vec<Option<Slot>>,
    /// The generation of the next adopted connection (see [`ConnKey`]).
    next_generation: u64,
    /// Slot indices ready for reuse.
    free: Vec<usize>,
    /// Slots closed during this turn: reused only from the next turn, so a stale event for a
    /// closed token can never reach a new connection.
    closed_this_turn: Vec<usize>,
    /// Connections whose reading stopped at [`MAX_READ_PER_TURN`] with bytes left: read
    /// again at the end of the turn, after every other connection's events and the timers.
    read_again: Vec<ConnKey>,
    listener: Option<ListenerState>,
    /// (when, which connection, what) of every timer; stale entries are skipped when they
    /// fire, and dropped before they pile up (`timer_heap.rs`, `drop_stale_timers`).
    timers: TimerHeap<(ConnKey, LoopTimer)>,
    /// One read buffer for every connection: an idle connection holds no buffer of its own.
    scratch: Vec<u8>,
    /// How long the loop polls without blocking before it sleeps.
    busy_poll: BusyPoll,
}

struct Slot {
    /// The connection; its decoder lives in it too (`read_turn.rs`), since a waiting caller
    /// may read the socket in the loop's stead.
    conn: Connection,
    handler: Box<dyn FrameHandler>,
    write_interest: bool,
    /// The socket is registered behind a caller's poller (`exclusive_wake.rs`).
    behind_caller: bool,
    /// Why the connection is closing, once known, for when the close completes. Boxed: it
    /// is rare, and every idle connection's slot should not carry an error's size.
    close_reason: Option<Box<CloseReason>>,
    /// A `ResumeReading` timer is pending for this paused connection.
    recheck_armed: bool,
    /// A write failed: the connection closes once the loop has read what the socket still
    /// holds, over as many turns as its frames take (`close_after_failed_write`).
    close_once_read: bool,
    /// When the frame now arriving started (the read that began it), and its one timer.
    frame_clock: FrameClock,
    /// Whether the connection drains what its peer still sends before it closes.
    linger: Linger,
}

/// A connection's drain before closing, after a frame error whose handler asks for one
/// ([`FrameHandler::drain_after_frame_error`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Linger {
    /// Close when asked.
    Off,
    /// Drain once what is queued (the error frame) is written, instead of closing then.
    AfterFlush,
    /// Shut for writing; the peer's bytes are read and dropped until its end of stream or
    /// the close grace.
    Draining,
}

/// What a loop timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum LoopTimer {
    /// A timer the connection's handler asked for.
    Handler,
    /// The frame timeout of the frame the slot's `frame_clock` times.
    FrameDeadline,
    /// Re-check whether a paused connection may be read again.
    ResumeReading,
    /// The TLS handshake must have finished by now.
    HandshakeDeadline,
    /// A connection closing once it has told its peer why (`close_when_flushed_within`)
    /// closes now, told or not.
    CloseGrace,
    /// Write what is queued: bytes corked with a hold have waited long enough.
    HeldFlush,
}

impl Slot {
    /// Records why the connection is closing.
    fn set_close_reason(&mut self, reason: CloseReason) {
        self.close_reason = Some(Box::new(reason));
    }

    /// Records why the connection is closing, unless an error found earlier already says.
    fn set_close_reason_unless_error(&mut self, reason: CloseReason) {
        if !matches!(self.close_reason.as_deref(), Some(CloseReason::Error(_))) {
            self.set_close_reason(reason);
        }
    }

    /// Why the connection is closing, if known, taken for the close.
    fn take_close_reason(&mut self) -> Option<CloseReason> {
        self.close_reason.take().map(|reason| *reason)
    }

    /// Readiness the loop watches the socket for: reading always, writing while a write is
    /// unfinished.
    fn interest(&self) -> Interest {
        if self.write_interest {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        }
    }
}

struct ListenerState {
    listener: TcpListener,
    acceptor: Acceptor,
    /// Accepting is paused until then after an error such as `EMFILE`.
    paused_until: Option<Instant>,
    /// Accepting stopped at [`MAX_ACCEPTS_PER_TURN`]: accept again at the end of the turn.
    more_waiting: bool,
}

impl EventLoop {
    fn run(&mut self) {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        while self.turn(&mut events) {}
    }

    /// One turn: waits for readiness (or the next timer), handles the events, the commands
    /// and the due timers. False once the loop has shut down (every connection closed).
    fn turn(&mut self, events: &mut Events) -> bool {
        // Commands this thread queued for itself (after `run_commands`, say from a timer
        // handler) did not wake the poller, nor will reads and accepts left for later:
        // do not sleep on them.
        let work_left =
            !self.commands.is_empty() || !self.read_again.is_empty() || self.accept_again();
        let timeout = if work_left {
            Some(Duration::ZERO)
        } else {
            self.next_wakeup()
                .map(|at| at.saturating_duration_since(Instant::now()))
        };
        let busy_poll = self.busy_poll;
        if let Err(err) = busy_poll.poll(&mut self.poll, events, timeout) {
            if err.kind() == io::ErrorKind::Interrupted {
                return true;
            }
            // Poll itself failing is unrecoverable for this loop: close everything so no
            // caller waits forever, then exit.
            self.close_all();
            return false;
        }
        for event in events.iter() {
            match event.token() {
                WAKER => {} // commands are drained below on every turn
                LISTENER => self.accept_ready(),
                Token(index) => {
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        self.read_ready(index);
                    }
                    if event.is_writable() {
                        self.write_ready(index);
                    }
                }
            }
        }
        if !self.run_commands() {
            self.close_all();
            return false;
        }
        self.fire_timers();
        for key in std::mem::take(&mut self.read_again) {
            if self.is_open(key) {
                self.read_ready(key.index);
            }
        }
        if self.accept_again() {
            self.accept_ready();
        }
        if self.timers.wants_compacting() {
            self.drop_stale_timers();
        }
        self.free.append(&mut self.closed_this_turn);
        true
    }

    /// Drops the timers nobody waits for any more: those of connections gone (or going: a
    /// slot closed this turn is empty already), and a handler's timers other than the one
    /// its connection has set (`Connection::schedule_timer` posts a new entry for every
    /// instant it sets, so the one set always has its own).
    fn drop_stale_timers(&mut self) {
        let slots = &self.slots;
        self.timers.compact(|at, (key, timer)| {
            let slot = slots.get(key.index).and_then(Option::as_ref);
            slot.is_some_and(|slot| {
                slot.conn.key() == key && (timer != LoopTimer::Handler || slot.conn.timer_is(at))
            })
        });
    }

    fn next_wakeup(&self) -> Option<Instant> {
        let timer = self.timers.peek().map(|(at, _)| at);
        let resume = self.listener.as_ref().and_then(|l| l.paused_until);
        match (timer, resume) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn accept_ready(&mut self) {
        let Some(state) = self.listener.as_mut() else {
            return;
        };
        state.more_waiting = false;
        if state.paused_until.is_some() {
            return;
        }
        for _ in 0..MAX_ACCEPTS_PER_TURN {
            match state.listener.accept() {
                Ok((stream, _)) => {
                    // Small RPC frames must not wait for Nagle's algorithm.
                    let _ = stream.set_nodelay(true);
                    (state.acceptor)(stream.into(), &self.handle);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if is_transient_accept_error(&err) => continue,
                Err(_) => {
                    // Out of file descriptors or memory: retrying now would spin. Stop
                    // listening for a while; existing connections keep being served.
                    let _ = self.poll.registry().deregister(&mut state.listener);
                    state.paused_until = Some(deadline_after(Instant::now(), ACCEPT_PAUSE));
                    return;
                }
            }
        }
        // More may wait, and no new readiness event will say so: accept them after the
        // turn's other work.
        state.more_waiting = true;
    }

    /// The last accepting stopped at [`MAX_ACCEPTS_PER_TURN`] with connections maybe waiting.
    fn accept_again(&self) -> bool {
        self.listener.as_ref().is_some_and(|l| l.more_waiting)
    }

    fn resume_accepting_if_due(&mut self) {
        let Some(state) = self.listener.as_mut() else {
            return;
        };
        if matches!(state.paused_until, Some(at) if at <= Instant::now()) {
            state.paused_until = None;
            let registered =
                self.poll
                    .registry()
                    .register(&mut state.listener, LISTENER, Interest::READABLE);
            if registered.is_ok() {
                self.accept_ready();
            } else if let Some(state) = self.listener.as_mut() {
                state.paused_until = Some(deadline_after(Instant::now(), ACCEPT_PAUSE));
            }
        }
    }

    /// Reads a ready (or resumed) connection until `WouldBlock`, handing whole frames to its
    /// handler, and acts on how the reading ended. Skipped while a caller reads the
    /// connection itself (`read_turn.rs`): it reads again before it gives the turn back.
    fn read_ready(&mut self, index: usize) {
        let Some(slot) = self.slots.get(index).and_then(Option::as_ref) else {
            return; // spurious or stale event
        };
        if slot.linger == Linger::Draining {
            self.drain(index);
            return;
        }
        let conn = slot.conn.clone();
        if conn.read_side().begin_loop() {
            self.read_in_turn(index);
            conn.read_side().end_loop();
        }
    }

    /// [`EventLoop::read_ready`] with the read turn taken.
    fn read_in_turn(&mut self, index: usize) {
        // One pass per round of reading. A pause that follows progress (a frame delivered or
        // bytes read) asks the handler again at once: its reason may already be gone, and a
        // `resume_reading` sent meanwhile may have found the connection not yet paused. A
        // pause without progress waits for a resume or the recheck timer instead, so a handler
        // that keeps changing its mind cannot hold the loop. The bytes read count across
        // passes against the turn's budget.
        let mut read_this_turn = 0;
        let mut frames_this_turn = 0;
        loop {
            let Some(slot) = self.slots.get_mut(index).and_then(Option::as_mut) else {
                return; // spurious or stale event
            };
            if slot.handler.pause_reading(&slot.conn) {
                // Closing after a failed write: its replies cannot be sent, so there is no
                // resuming to wait for.
                if slot.close_once_read {
                    self.close_slot_with_pending_reason(index);
                } else {
                    self.hold_back_reading(index);
                }
                return;
            }
            slot.conn.set_read_paused(false);
            let conn = slot.conn.clone();
            let mut stream = conn.stream();
            let mut frame_done = false;
            let mut bytes_read = false;
            let mut tls_records = false;
            let mut inbox = conn.read_side().inbox();
            let outcome = loop {
                // What a caller reading this connection left for the loop goes first.
                match inbox.take_handed_back() {
                    Some(HandedBack::FrameError(err)) => break ReadOutcome::FrameError(err),
                    Some(HandedBack::TlsFailed(err)) => break ReadOutcome::TlsFailed(err),
                    Some(HandedBack::Failed(err)) => break ReadOutcome::Failed(err),
                    Some(HandedBack::Eof) | None => {}
                }
                // Frames left in the decoder by an earlier pause or turn go first.
                let budget = MAX_FRAMES_PER_TURN - frames_this_turn;
                let delivered =
                    deliver_frames(&mut slot.handler, &conn, &mut inbox.decoder, budget);
                match delivered {
                    Ok(Delivered::All(count)) => {
                        frame_done |= count > 0;
                        frames_this_turn += count;
                    }
                    Ok(Delivered::Paused(count)) => {
                        frame_done |= count > 0;
                        frames_this_turn += count;
                        break ReadOutcome::Paused;
                    }
                    Ok(Delivered::OutOfTurn) => {
                        frame_done = true;
                        break ReadOutcome::Yielded;
                    }
                    Err(err) => break ReadOutcome::FrameError(err),
                }
                if read_this_turn >= MAX_READ_PER_TURN {
                    break ReadOutcome::Yielded;
                }
                // The peer's close_notify ends its stream, whether or not TCP's end follows.
                if inbox.tls_closed {
                    break ReadOutcome::Eof;
                }
                match stream.read(&mut self.scratch) {
                    Ok(0) => break ReadOutcome::Eof,
                    Ok(n) => {
                        bytes_read = true;
                        read_this_turn += n;
                        match conn.handle_read(&self.scratch[..n], &mut inbox) {
                            Ok(queued) => tls_records |= queued,
                            Err(err) => break ReadOutcome::TlsFailed(err),
                        }
                    }
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                        break ReadOutcome::Drained
                    }
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                    Err(err) => break ReadOutcome::Failed(err.into()),
                }
            };
            // The clock starts again with each frame delivered, and wherever it disagrees with
            // the inbox: a message begun, or none left (a TLS record may end, a key update say,
            // with no frame delivered and none begun).
            let mid_message = inbox.is_mid_message();
            drop(inbox);
            let restart_clock = frame_done || slot.frame_clock.is_running() != mid_message;
            if tls_records {
                // Handshake messages or an alert: nobody else may write them.
                self.flush_now(index);
            }
            if restart_clock {
                self.start_frame_clock(index);
            }
            let Some(slot) = self.slots.get_mut(index).and_then(Option::as_mut) else {
                return;
            };
            let yielded = matches!(outcome, ReadOutcome::Yielded);
            match outcome {
                ReadOutcome::Drained => {}
                ReadOutcome::Yielded => self.read_again.push(slot.conn.key()),
                // Bytes may remain in the socket: ask again now (see above), or come back
                // for them once unpaused.
                ReadOutcome::Paused if frame_done || bytes_read => continue,
                ReadOutcome::Paused => self.hold_back_reading(index),
                ReadOutcome::Eof if slot.conn.is_handshaking() => {
                    let reason = CloseReason::Error(TransportError::TlsHandshakeClosed);
                    self.close_slot(index, reason);
                }
                ReadOutcome::Eof => match conn.read_side().inbox().decoder.handle_eof() {
                    Err(err) => self.close_slot(index, CloseReason::Error(err)),
                    Ok(()) => {
                        if slot.handler.handle_eof(&slot.conn) == EofAction::Close {
                            self.close_slot(index, CloseReason::PeerClosed);
                        } else {
                            // An error found earlier (a failed write) stays the reason.
                            slot.set_close_reason_unless_error(CloseReason::PeerClosed);
                        }
                    }
                },
                ReadOutcome::FrameError(err) => {
                    slot.handler.handle_frame_error(&slot.conn, &err);
                    if slot.handler.drain_after_frame_error(&err) {
                        slot.linger = Linger::AfterFlush;
                    }
                    slot.set_close_reason(CloseReason::Error(err));
                    // Let an error frame queued by the handler reach the peer before closing
                    // (draining first, if asked), or close after a grace period if the peer
                    // does not read it (nor what was queued before it), or does not end.
                    slot.conn.close_when_flushed();
                    self.close_after_grace(index);
                }
                ReadOutcome::TlsFailed(err) => {
                    // Close once the alert telling the peer why is written (whoever writes
                    // it), or after a grace period if the peer does not read it.
                    slot.set_close_reason(CloseReason::Error(err));
                    slot.conn.close_when_flushed();
                    self.close_after_grace(index);
                    self.flush_now(index);
                }
                ReadOutcome::Failed(err) => self.close_slot(index, CloseReason::Error(err)),
            }
            // A connection closing after a failed write (found before this read, or by a
            // write the outcome's handling made: an alert, say) closes once its reading has
            // not stopped at the turn's budget.
            let closing = self
                .slots
                .get(index)
                .and_then(Option::as_ref)
                .is_some_and(|slot| slot.close_once_read);
            if closing && !yielded {
                self.close_slot_with_pending_reason(index);
            }
            return;
        }
    }

    /// Backpressure: leaves the bytes in the socket, so TCP slows the peer down. Writes,
    /// `Connection::resume_reading` and a periodic timer bring the loop back.
    fn hold_back_reading(&mut self, index: usize) {
        let Some(slot) = self.slots.get_mut(index).and_then(Option::as_mut) else {
            return;
        };
        slot.conn.set_read_paused(true);
        if !slot.recheck_armed {
            slot.recheck_armed = true;
            let at = deadline_after(Instant::now(), READ_PAUSE_RECHECK);
            let key = slot.conn.key();
            self.timers.push(at, (key, LoopTimer::ResumeReading));
        }
    }

    /// Notes when the frame now arriving began (if one is partly here) and arms its timeout.
    fn start_frame_clock(&mut self, index: usize) {
        let Some(slot) = self.slots.get_mut(index).and_then(Option::as_mut) else {
            return;
        };
        if !slot.conn.read_side().inbox().is_mid_message() {
            slot.frame_clock.stop();
            return;
        }
        let timeout = slot.conn.limits().frame_timeout;
        if let Some(at) = slot.frame_clock.start(Instant::now(), timeout) {
            let key = slot.conn.key();
            self.timers.push(at, (key, LoopTimer::FrameDeadline));
        }
    }

    /// Reads a paused connection again (`read_ready` asks its handler first).
    fn resume_reading(&mut self, index: usize) {
        let paused = self
            .slots
            .get(index)
            .and_then(Option::as_ref)
            .is_some_and(|slot| slot.conn.is_read_paused());
        if paused {
            self.read_ready(index);
        }
    }

    fn write_ready(&mut self, index: usize) {
        let Some(slot) = self.slots.get_mut(index).and_then(Option::as_mut) else {
            return;
        };
        match slot.conn.flush_from_loop() {
            Ok(FlushOutcome::Blocked) => {}
            Ok(FlushOutcome::Done) => {
                let read_paused = slot.conn.is_read_paused();
                if slot.write_interest {
                    slot.write_interest = false;
                    let _ = self.set_interest(index);
                }
                if read_paused {
                    self.read_ready(index);
                }
            }
            Ok(FlushOutcome::CloseNow) => self.close_when_flushed(index),
            Err(err) => self.close_after_failed_write(index, err.into()),
        }
    }

    fn flush_requested(&mut self, index: usize) {
        let Some(slot) = self.slots.get_mut(index).and_then(Option::as_mut) else {
            return;
        };
        let outcome = slot.conn.flush_requested();
        self.handle_flush_outcome(index, outcome);
    }

    /// Writes the connection's queue now (say, TLS records the loop itself queued).
    fn flush_now(&mut self, index: usize) {
        let Some(slot) = self.slots.get_mut(index).and_then(Option::as_mut) else {
            return;
        };
        let outcome = slot.conn.flush_now();
        self.handle_flush_outcome(index, outcome);
    }

    fn handle_flush_outcome(&mut self, index: usize, outcome: io::Result<FlushOutcome>) {
        match outcome {
            Ok(FlushOutcome::Done) => {}
            Ok(FlushOutcome::Blocked) => self.want_write(index),
            Ok(FlushOutcome::CloseNow) => self.close_when_flushed(index),
            Err(err) => self.close_after_failed_write(index, err.into()),
        }
    }

    /// A write failed: the peer closed or reset the connection, perhaps after saying why in
    /// a frame that waits unread in the socket (a server's error frame for a request over
    /// its limits, sent as it closed while the request was still being written). The
    /// handler gets what can still be read, then the connection closes, with the write's
    /// error as the reason (unless an earlier error was already waiting to close it; not
    /// the end of stream or reset the read may meet).
    ///
    /// Who reads: the loop, which closes the connection once a read of it has not stopped
    /// at the turn's budget of bytes or frames (more frames than a turn takes are read over
    /// the next turns, `close_once_read`): now, or when the read it is in the middle of
    /// ends (the failed write was its own, of TLS records). If a caller holds the read turn,
    /// the caller reads those frames and hands the end of stream back to the loop, which
    /// then closes it. Either way the close comes after [`CLOSE_GRACE`] at the latest.
    fn close_after_failed_write(&mut self, index: usize, err: TransportError) {
        let Some(slot) = self.slots.get_mut(index).and_then(Option::as_mut) else {
            return;
        };
        slot.set_close_reason_unless_error(CloseReason::Error(err));
        slot.close_once_read = true;
        let conn = slot.conn.clone();
        self.close_after_grace(index);
        if !conn.read_side().loop_reads() && conn.read_side().begin_loop() {
            self.read_in_turn(index);
            conn.read_side().end_loop();
        }
    }

    /// Closes the connection at `index` [`CLOSE_GRACE`] from now if it is still open then:
    /// the bound on a close that waits for its peer (to read an error frame or an alert, to
    /// end a drain) or for a caller to hand its read turn back. The loop's own timer, set
    /// whatever the connection was told before (a `Connection::close_when_flushed_within`
    /// asks for one only of a connection not yet closed).
    fn close_after_grace(&mut self, index: usize) {
        let Some(slot) = self.slots.get(index).and_then(Option::as_ref) else {
            return;
        };
        let at = deadline_after(Instant::now(), CLOSE_GRACE);
        self.timers
            .push(at, (slot.conn.key(), LoopTimer::CloseGrace));
    }

    /// Runs queued commands; returns false when asked to shut down.
    fn run_commands(&mut self) -> bool {
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Adopt {
                    stream,
                    limits,
                    tls,
                    make_handler,
                    waiter,
                } => match waiter {
                    None => {
                        // Nobody waits: on failure the socket is dropped, which closes it.
                        let _ = self.adopt(stream, limits, tls, make_handler);
                    }
                    Some(waiter) if waiter.claim() => {
                        waiter.answer(self.adopt(stream, limits, tls, make_handler));
                    }
                    // The waiter timed out and left: dropping the socket closes it.
                    Some(_) => drop(stream),
                },
                Command::Conn(key, command) => {
                    if self.is_open(key) {
                        self.run_conn_command(key, command);
                    }
                }
                Command::StopAccepting => {
                    if let Some(mut state) = self.listener.take() {
                        let _ = self.poll.registry().deregister(&mut state.listener);
                    }
                }
                Command::Shutdown => return false,
            }
        }
        true
    }

    /// Whether the connection `key` names still holds its slot.
    fn is_open(&self, key: ConnKey) -> bool {
        self.slots
            .get(key.index)
            .and_then(Option::as_ref)
            .is_some_and(|slot| slot.conn.key() == key)
    }

    /// Runs one connection's command; the caller checked that the connection is open.
    fn run_conn_command(&mut self, key: ConnKey, command: ConnCommand) {
        let index = key.index;
        match command {
            ConnCommand::WantWrite => self.want_write(index),
            ConnCommand::Flush => self.flush_requested(index),
            ConnCommand::Close => self.close_slot_with_pending_reason(index),
            ConnCommand::Flushed => self.close_when_flushed(index),
            ConnCommand::Fail(err) => self.close_after_failed_write(index, err),
            ConnCommand::CloseBy(at) => self.timers.push(at, (key, LoopTimer::CloseGrace)),
            ConnCommand::ResumeReading => self.resume_reading(index),
            ConnCommand::ReadAgain => self.read_ready(index),
            ConnCommand::WatchBehindCaller => self.watch_behind_caller(index),
            ConnCommand::Timer(at) => self.timers.push(at, (key, LoopTimer::Handler)),
            ConnCommand::FlushAt(at) => {
                self.timers.push(at, (key, LoopTimer::HeldFlush));
            }
        }
    }

    fn adopt(
        &mut self,
        mut stream: TcpStream,
        limits: FrameLimits,
        tls: Option<Box<rustls::Connection>>,
        make_handler: MakeHandler,
    ) -> io::Result<Connection> {
        let index = self.free.pop().unwrap_or(self.slots.len());
        let registered =
            self.poll
                .registry()
                .register(&mut stream, Token(index), Interest::READABLE);
        if let Err(err) = registered {
            // Out of memory or of epoll watches: the slot stays free for the next one.
            self.free.push(index);
            return Err(err);
        }
        let key = ConnKey {
            index,
            generation: self.next_generation,
        };
        self.next_generation += 1;
        let tls = tls.map(|session| *session);
        let conn = match Connection::new(key, stream, limits, self.handle.clone(), tls) {
            Ok(conn) => conn,
            Err(err) => {
                // peer_addr fails if the peer already reset the connection.
                self.free.push(index);
                return Err(err);
            }
        };
        let handler = make_handler(&conn);
        let slot = Slot {
            conn: conn.clone(),
            handler,
            write_interest: false,
            behind_caller: false,
            close_reason: None,
            linger: Linger::Off,
            recheck_armed: false,
            close_once_read: false,
            frame_clock: FrameClock::default(),
        };
        if index == self.slots.len() {
            self.slots.push(Some(slot));
        } else {
            self.slots[index] = Some(slot);
        }
        if conn.is_tls() {
            self.start_handshake(index);
        }
        // Bytes may have arrived before registration; edge-triggered readiness would not
        // report them, so read once now.
        self.read_ready(index);
        Ok(conn)
    }

    /// Arms the handshake's deadline and sends what TLS says first (a client's hello).
    fn start_handshake(&mut self, index: usize) {
        let Some(slot) = self.slots.get_mut(index).and_then(Option::as_mut) else {
            return;
        };
        if let Some(timeout) = slot.conn.limits().frame_timeout {
            let at = deadline_after(Instant::now(), timeout);
            let key = slot.conn.key();
            self.timers.push(at, (key, LoopTimer::HandshakeDeadline));
        }
        if slot.conn.queue_tls_records() {
            self.flush_now(index);
        }
    }

    fn want_write(&mut self, index: usize) {
        let Some(slot) = self.slots.get_mut(index).and_then(Option::as_mut) else {
            return;
        };
        if !slot.write_interest {
            slot.write_interest = true;
            if let Err(err) = self.set_interest(index) {
                self.close_slot(index, CloseReason::Error(err.into()));
            }
        }
    }

    /// A caller's poller watches the connection now: the loop's registration moves behind it
    /// (`exclusive_wake.rs`) and stays there. Where that cannot be had (not Linux), the
    /// ordinary registration stays and `behind_caller` stays false.
    fn watch_behind_caller(&mut self, index: usize) {
        let Some(slot) = self.slots.get(index).and_then(Option::as_ref) else {
            return;
        };
        if slot.behind_caller {
            return;
        }
        let stream = slot.conn.stream();
        let registry = self.poll.registry();
        let moved =
            exclusive_wake::reregister_behind(registry, stream, index, slot.interest()).is_ok();
        if moved {
            if let Some(slot) = self.slots.get_mut(index).and_then(Option::as_mut) {
                slot.behind_caller = true;
            }
            return;
        }
        // The removal may have worked and the new registration not: register as usual (a
        // registration still in place is left as it is).
        let fd = stream.as_raw_fd();
        match registry.register(&mut SourceFd(&fd), Token(index), slot.interest()) {
            Err(err) if err.kind() != io::ErrorKind::AlreadyExists => {
                self.close_slot(index, CloseReason::Error(err.into()));
            }
            _ => {}
        }
    }

    /// Registers the slot's socket again with its interest ([`Slot::interest`]): behind a
    /// caller's poller if `behind_caller`, else with mio as usual.
    fn set_interest(&self, index: usize) -> io::Result<()> {
        let Some(slot) = self.slots.get(index).and_then(Option::as_ref) else {
            return Ok(());
        };
        let stream = slot.conn.stream();
        let registry = self.poll.registry();
        if slot.behind_caller {
            return exclusive_wake::reregister_behind(registry, stream, index, slot.interest());
        }
        // The stream lives in the shared Connection, so the loop has no `&mut TcpStream` to
        // give mio; its file descriptor identifies the same registration.
        let fd = stream.as_raw_fd();
        registry.reregister(&mut SourceFd(&fd), Token(index), slot.interest())
    }

    fn fire_timers(&mut self) {
        self.resume_accepting_if_due();
        let now = Instant::now();
        while let Some((at, (key, timer))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            if !self.is_open(key) {
                continue; // the connection this timer was for is gone
            }
            let index = key.index;
            let Some(slot) = self.slots.get_mut(index).and_then(Option::as_mut) else {
                continue;
            };
            match timer {
                LoopTimer::Handler => {
                    if slot.conn.take_timer_if(at) {
                        if let Some(next) = slot.handler.handle_timer(&slot.conn, now) {
                            slot.conn.schedule_timer(next);
                        }
                    }
                }
                LoopTimer::FrameDeadline => {
                    let timeout = slot.conn.limits().frame_timeout;
                    let held_back = slot.conn.is_read_paused();
                    match slot.frame_clock.fire(now, timeout, held_back) {
                        Fired::SetTimer(at) => {
                            self.timers.push(at, (key, LoopTimer::FrameDeadline));
                        }
                        Fired::Expired => {
                            self.close_slot(
                                index,
                                CloseReason::Error(TransportError::FrameTimeout),
                            );
                        }
                        Fired::Idle => {}
                    }
                }
                LoopTimer::ResumeReading => {
                    slot.recheck_armed = false;
                    self.resume_reading(index);
                }
                LoopTimer::CloseGrace => self.close_slot_with_pending_reason(index),
                LoopTimer::HeldFlush => {
                    let (due, next) = slot.conn.look_at_held(now);
                    if let Some(next) = next {
                        self.timers.push(next, (key, LoopTimer::HeldFlush));
                    }
                    if due {
                        self.flush_now(index);
                    }
                }
                LoopTimer::HandshakeDeadline => {
                    if let (true, Some(after)) =
                        (slot.conn.is_handshaking(), slot.conn.limits().frame_timeout)
                    {
                        let reason = TransportError::TlsHandshakeTimeout { after };
                        self.close_slot(index, CloseReason::Error(reason));
                    }
                }
            }
        }
    }

    /// Closes a connection whose queue is written, as it was told to then: at once, unless
    /// it drains first ([`Linger`]); told again while it drains, nothing changes (its end of
    /// stream or the close grace ends the drain, and `Connection::close` at once).
    fn close_when_flushed(&mut self, index: usize) {
        let Some(slot) = self.slots.get_mut(index).and_then(Option::as_mut) else {
            return;
        };
        match slot.linger {
            Linger::Off => self.close_slot_with_pending_reason(index),
            Linger::AfterFlush => {
                slot.linger = Linger::Draining;
                // The peer reads the end of our stream after the error frame.
                let _ = slot.conn.stream().shutdown(Shutdown::Write);
                if slot.write_interest {
                    slot.write_interest = false;
                    let _ = self.set_interest(index);
                }
                self.drain(index);
            }
            Linger::Draining => {}
        }
    }

    /// Reads and drops what a draining connection's peer sent, up to the turn's read budget
    /// (then again at the end of the turn); closes it at the peer's end of stream or a
    /// failed read. The close grace set with the error bounds how long this goes on.
    fn drain(&mut self, index: usize) {
        let Some(slot) = self.slots.get(index).and_then(Option::as_ref) else {
            return;
        };
        let conn = slot.conn.clone();
        let mut stream = conn.stream();
        let mut drained = 0;
        loop {
            if drained >= MAX_READ_PER_TURN {
                self.read_again.push(conn.key());
                return;
            }
            match stream.read(&mut self.scratch) {
                Ok(0) => break,
                Ok(n) => drained += n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.close_slot_with_pending_reason(index);
    }

    fn close_slot_with_pending_reason(&mut self, index: usize) {
        let reason = self
            .slots
            .get_mut(index)
            .and_then(Option::as_mut)
            .and_then(Slot::take_close_reason)
            .unwrap_or(CloseReason::Local);
        self.close_slot(index, reason);
    }

    /// Closes the connection at `index` and tells its handler why. A failure found earlier,
    /// whose close was waiting for its alert or error frame to be written, is the reason
    /// given: what the peer did after it (closing too, say) is only its consequence.
    fn close_slot(&mut self, index: usize, reason: CloseReason) {
        let Some(mut slot) = self.slots.get_mut(index).and_then(Option::take) else {
            return;
        };
        let reason = match slot.take_close_reason() {
            Some(first @ CloseReason::Error(_)) => first,
            _ => reason,
        };
        slot.conn.mark_closed(&reason);
        let stream = slot.conn.stream();
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&stream.as_raw_fd()));
        // Other threads may still hold the Connection (and so the fd); shutting the socket
        // down tells the peer now instead of when the last handle is dropped.
        let _ = stream.shutdown(Shutdown::Both);
        slot.handler.handle_close(&slot.conn, reason);
        self.closed_this_turn.push(index);
    }

    fn close_all(&mut self) {
        for index in 0..self.slots.len() {
            self.close_slot(index, CloseReason::LoopShutdown);
        }
        // Anyone waiting on an adoption learns the loop is gone.
        while let Ok(command) = self.commands.try_recv() {
            if let Command::Adopt {
                waiter: Some(waiter),
                ..
            } = command
            {
                // The socket in the command is dropped, so closed, whoever settles first.
                waiter.answer(Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "event loop shut down",
                )));
            }
        }
    }
}

enum ReadOutcome {
    Drained,
    /// [`MAX_READ_PER_TURN`] bytes were read and more may wait: the rest after the others.
    Yielded,
    /// The handler asked to stop reading (backpressure).
    Paused,
    Eof,
    FrameError(TransportError),
    /// TLS refused the peer's bytes.
    TlsFailed(TransportError),
    Failed(TransportError),
}

/// How many frames [`deliver_frames`] handed over, and why it stopped.
enum Delivered {
    /// Every whole frame buffered was delivered.
    All(usize),
    /// The handler asked to stop reading: the rest stay in the decoder for later.
    Paused(usize),
    /// The turn's budget of frames was used up (and at least one frame delivered): the rest
    /// stay in the decoder for the connection's next turn.
    OutOfTurn,
}

/// Hands the whole frames buffered in the decoder to the handler, `budget` of them at most,
/// asking before each one whether it wants reading paused: one read can hold hundreds of
/// small requests, and each may add a reply to the connection's queue.
fn deliver_frames(
    handler: &mut Box<dyn FrameHandler>,
    conn: &Connection,
    decoder: &mut FrameDecoder,
    budget: usize,
) -> Result<Delivered, TransportError> {
    let mut delivered = 0;
    loop {
        if handler.pause_reading(conn) {
            conn.set_read_paused(true);
            return Ok(Delivered::Paused(delivered));
        }
        if delivered >= budget {
            return Ok(Delivered::OutOfTurn);
        }
        let Some(frame) = decoder.poll_frame()? else {
            return Ok(Delivered::All(delivered));
        };
        handler.handle_frame(conn, frame);
        delivered += 1;
    }
}

/// Errors from `accept` that concern one half-open connection, not the listener.
fn is_transient_accept_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::Interrupted
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

const WAKER: Token = Token(usize::MAX);
const LISTENER: Token = Token(usize::MAX - 1);

/// Bytes read per `read` call into the shared scratch buffer.
const READ_CHUNK: usize = 64 * 1024;

/// Most bytes the loop reads from one connection before it serves the others and its
/// timers: a peer that writes faster than its frames are handled (a flood of replies for no
/// call) would otherwise keep the loop reading it for ever, and every other connection of
/// the loop, and every deadline, waiting (`tests/bad_input.rs`). A megabyte is sixteen reads,
/// far more than a turn of ordinary traffic.
const MAX_READ_PER_TURN: usize = 16 * READ_CHUNK;

/// Most frames the loop hands over from one connection before it serves the others and its
/// timers: a megabyte of the smallest frames is 43,000 of them (a flood of pings, each
/// answered), which kept a neighbour's replies waiting for a second and more in a debug
/// build (`tests/bad_input.rs`). Pipelined calls arrive a few dozen to a read.
const MAX_FRAMES_PER_TURN: usize = 1024;

/// Most connections the loop accepts in one go before it serves its connections, commands
/// and timers: a flood of connecting sockets (each refused at once, say, over the server's
/// connection limit) would otherwise keep the loop accepting for as long as it lasts
/// (`tests/accept.rs`).
const MAX_ACCEPTS_PER_TURN: usize = 64;

/// How often a connection paused by [`FrameHandler::pause_reading`] is asked again.
pub const READ_PAUSE_RECHECK: Duration = Duration::from_millis(10);

/// Readiness events taken per `poll`.
const EVENTS_CAPACITY: usize = 1024;

/// How long accepting pauses after an error such as `EMFILE`.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly by design

    use std::io::Write;
    use std::net::TcpListener;

    use super::*;
    use crate::frame::Frame;

    struct Quiet;

    impl FrameHandler for Quiet {
        fn handle_frame(&mut self, conn: &Connection, frame: Frame) {
            let _ = conn.send_frame(&frame);
        }

        fn handle_close(&mut self, _conn: &Connection, _reason: CloseReason) {}
    }

    fn adopt(handle: &LoopHandle, listener: &TcpListener) -> (Connection, std::net::TcpStream) {
        let ours = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (peer, _) = listener.accept().unwrap();
        let conn = handle
            .adopt_and_wait(
                ours,
                FrameLimits::default(),
                Box::new(|_| Box::new(Quiet)),
                Duration::from_secs(5),
            )
            .expect("the loop adopts within 5 s");
        (conn, peer)
    }

    #[test]
    fn late_commands_for_an_old_connection_leave_the_new_one_in_its_slot_open() {
        let (handle, _thread) = spawn_loop("stale-commands", None).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (old, _old_peer) = adopt(&handle, &listener);
        old.close();
        // A closed slot is reused from the loop's next turn: adopt until one lands in it,
        // keeping the others open so that their slots stay taken.
        let mut others = Vec::new();
        let (new, mut new_peer) = loop {
            let (conn, peer) = adopt(&handle, &listener);
            if conn.token() == old.token() {
                break (conn, peer);
            }
            assert!(others.len() < 10, "no new connection reused the old slot");
            others.push((conn, peer));
        };

        // What an old handle's sender may post after the loop closed it (say a `send` that
        // saw the socket full just as the peer reset): it must not reach the new connection.
        let key = old.key();
        for command in [
            ConnCommand::WantWrite,
            ConnCommand::Flush,
            ConnCommand::ResumeReading,
            ConnCommand::Timer(Instant::now()),
            ConnCommand::FlushAt(Instant::now()),
            ConnCommand::Close,
        ] {
            handle.command(Command::Conn(key, command));
        }
        drop(adopt(&handle, &listener)); // every command above has run

        assert!(
            !new.is_closed(),
            "a late close for the old connection closed the new one"
        );
        let frame = Frame::request(1, "Echo.Echo", 1, &b"ping"[..]);
        let mut bytes = bytes::BytesMut::new();
        frame.encode(&mut bytes, &FrameLimits::default()).unwrap();
        new_peer.write_all(&bytes).unwrap();
        new_peer
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut echo = vec![0u8; bytes.len()];
        io::Read::read_exact(&mut new_peer, &mut echo).expect("the echo arrives within 5 s");
        assert_eq!(echo, bytes.to_vec());
    }
}
