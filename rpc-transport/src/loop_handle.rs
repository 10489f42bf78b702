//! `LoopHandle`: how other threads reach an event loop. A command channel plus a
//! `mio::Waker`; the commands themselves (adopt a socket, and what a [`Connection`] asks of the
//! loop about itself, keyed by `ConnKey` so a stale handle cannot touch a newer connection);
//! and the handshake that lets `adopt_and_wait` give up without leaving a connection behind.
//! The loop that runs the commands lives in `event_loop.rs`.

use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, SendError, Sender};
use mio::net::TcpStream;
use mio::Waker;

use crate::connection::Connection;
use crate::error::TransportError;
use crate::handler::FrameHandler;
use crate::limits::FrameLimits;

/// Builds the handler of a newly adopted connection, on the loop thread.
pub type MakeHandler = Box<dyn FnOnce(&Connection) -> Box<dyn FrameHandler> + Send>;

/// Receives each accepted socket and the accepting loop's own handle; typically hands the
/// socket to one of several loops (this one included) with [`LoopHandle::adopt`].
pub type Acceptor = Box<dyn FnMut(std::net::TcpStream, &LoopHandle) + Send>;

/// A handle other threads use to reach an event loop. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LoopHandle {
    commands: Sender<Command>,
    waker: Arc<Waker>,
    /// Tells this loop apart from others, so the loop thread can skip waking itself.
    loop_id: usize,
}

impl LoopHandle {
    /// A handle for a new loop whose poller owns `waker`, and the receiving end of its
    /// command channel, for the loop.
    pub(crate) fn new(waker: Arc<Waker>) -> (LoopHandle, Receiver<Command>) {
        let (commands, received) = crossbeam_channel::unbounded();
        let handle = LoopHandle {
            commands,
            waker,
            loop_id: NEXT_LOOP_ID.fetch_add(1, Ordering::Relaxed),
        };
        (handle, received)
    }

    /// Marks the calling thread as this loop's own: commands it sends need no wake-up.
    pub(crate) fn mark_current_thread(&self) {
        CURRENT_LOOP.with(|current| current.set(self.loop_id));
    }

    /// Unmarks the calling thread, which lets go of the loop (`hand_off.rs`): its commands
    /// wake the loop again, wherever it runs.
    pub(crate) fn unmark_current_thread(&self) {
        CURRENT_LOOP.with(|current| current.set(NO_LOOP));
    }

    /// Hands an already-connected socket to the loop, which builds its handler with
    /// `make_handler` and starts reading. Returns at once.
    ///
    /// # Errors
    ///
    /// If the socket cannot be made non-blocking.
    pub fn adopt(
        &self,
        stream: std::net::TcpStream,
        limits: FrameLimits,
        make_handler: MakeHandler,
    ) -> io::Result<()> {
        self.adopt_with(stream, limits, None, make_handler)
    }

    /// Like [`LoopHandle::adopt`], with TLS: `tls` (from [`crate::tls::server_session`] or
    /// [`crate::tls::ClientTls::session`]) encrypts every frame sent and decrypts every byte
    /// read. The handshake starts at once and must finish within `limits.frame_timeout`, or
    /// the connection closes with [`crate::TransportError::TlsHandshakeTimeout`].
    ///
    /// # Errors
    ///
    /// If the socket cannot be made non-blocking.
    pub fn adopt_tls(
        &self,
        stream: std::net::TcpStream,
        limits: FrameLimits,
        tls: rustls::Connection,
        make_handler: MakeHandler,
    ) -> io::Result<()> {
        self.adopt_with(stream, limits, Some(tls), make_handler)
    }

    fn adopt_with(
        &self,
        stream: std::net::TcpStream,
        limits: FrameLimits,
        tls: Option<rustls::Connection>,
        make_handler: MakeHandler,
    ) -> io::Result<()> {
        stream.set_nonblocking(true)?;
        self.command(Command::Adopt {
            stream: TcpStream::from_std(stream),
            limits,
            tls: tls.map(Box::new),
            make_handler,
            waiter: None,
        });
        Ok(())
    }

    /// Like [`LoopHandle::adopt`], but waits (at most `timeout`) for the loop to register the
    /// socket, and returns its [`Connection`].
    ///
    /// An adoption that times out is cancelled: the loop closes the socket when it reaches the
    /// request, and `make_handler` is dropped without being called. If the loop takes the
    /// socket just as `timeout` runs out, this waits the moment the loop needs to finish and
    /// returns the connection, so either the caller owns the connection or it is closed.
    ///
    /// # Errors
    ///
    /// If the socket cannot be made non-blocking, the registration error, or `TimedOut` if the
    /// loop did not answer in time (for example because it is busy or has shut down).
    pub fn adopt_and_wait(
        &self,
        stream: std::net::TcpStream,
        limits: FrameLimits,
        make_handler: MakeHandler,
        timeout: Duration,
    ) -> io::Result<Connection> {
        self.adopt_and_wait_with(stream, limits, None, make_handler, timeout)
    }

    /// Like [`LoopHandle::adopt_and_wait`], with TLS as in [`LoopHandle::adopt_tls`]. Returns
    /// once the loop has the socket, not once the handshake is done: see
    /// [`Connection::wait_for_handshake`].
    ///
    /// # Errors
    ///
    /// As [`LoopHandle::adopt_and_wait`].
    pub fn adopt_tls_and_wait(
        &self,
        stream: std::net::TcpStream,
        limits: FrameLimits,
        tls: rustls::Connection,
        make_handler: MakeHandler,
        timeout: Duration,
    ) -> io::Result<Connection> {
        self.adopt_and_wait_with(stream, limits, Some(tls), make_handler, timeout)
    }

    fn adopt_and_wait_with(
        &self,
        stream: std::net::TcpStream,
        limits: FrameLimits,
        tls: Option<rustls::Connection>,
        make_handler: MakeHandler,
        timeout: Duration,
    ) -> io::Result<Connection> {
        stream.set_nonblocking(true)?;
        let (answer, adopted) = crossbeam_channel::bounded(1);
        let state = Arc::new(AtomicU8::new(WAITING));
        self.command(Command::Adopt {
            stream: TcpStream::from_std(stream),
            limits,
            tls: tls.map(Box::new),
            make_handler,
            waiter: Some(AdoptWaiter {
                state: Arc::clone(&state),
                answer,
            }),
        });
        let not_adopted = || {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "event loop did not adopt the connection",
            )
        };
        if let Ok(result) = adopted.recv_timeout(timeout) {
            return result;
        }
        let gave_up = state
            .compare_exchange(WAITING, ABANDONED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if gave_up {
            // The loop will find the request abandoned and drop the socket (or the loop is
            // gone, and the socket with it).
            return Err(not_adopted());
        }
        // The loop claimed the socket first and is adopting it now: its answer is moments
        // away, or the channel disconnects if the loop thread dies meanwhile.
        adopted.recv().unwrap_or_else(|_| Err(not_adopted()))
    }

    /// Asks the loop to stop accepting: its listener (if any) is closed; connections stay.
    pub fn stop_accepting(&self) {
        self.command(Command::StopAccepting);
    }

    /// Asks the loop to close every connection and exit. Idempotent; returns at once.
    pub fn shutdown(&self) {
        self.command(Command::Shutdown);
    }

    pub(crate) fn command(&self, command: Command) {
        // If the loop has exited, nobody is left to act on the command: dropping it is right
        // (a connection of a dead loop is already closed).
        if self.commands.send(command).is_ok() && !self.is_current_thread() {
            // The loop thread itself runs its commands before it next sleeps: no wake needed.
            let _ = self.waker.wake();
        }
    }

    /// True when called on this loop's own thread (from a handler).
    fn is_current_thread(&self) -> bool {
        CURRENT_LOOP.with(|current| current.get() == self.loop_id)
    }
}

/// Which connection a command or timer is for: its slot and the generation of the connection
/// in it.
///
/// Slots are reused, so an index alone may name a newer connection than the sender meant: a
/// `Close` posted by an old handle just as the loop closed that connection would close the
/// next one adopted into the slot. The loop drops every command and timer whose generation
/// is not the slot's. The mio `Token` stays the bare index: readiness events need no
/// generation, because a closed slot is deregistered at once and reused only from the loop's
/// next turn, so no event polled for the old connection can reach the new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ConnKey {
    /// The slot, and the mio `Token` of the connection's socket.
    pub(crate) index: usize,
    /// Counts adoptions on this loop: no two connections of a loop share one.
    pub(crate) generation: u64,
}

pub(crate) enum Command {
    Adopt {
        stream: TcpStream,
        limits: FrameLimits,
        /// The TLS session of a TLS connection (boxed: it is large, and every command is
        /// as large as the largest).
        tls: Option<Box<rustls::Connection>>,
        make_handler: MakeHandler,
        /// Present when someone waits for the connection (`adopt_and_wait`).
        waiter: Option<AdoptWaiter>,
    },
    /// A command from one connection's handle; ignored unless that connection still holds
    /// the slot.
    Conn(ConnKey, ConnCommand),
    StopAccepting,
    Shutdown,
}

/// What a [`Connection`] asks of the loop about itself.
#[derive(Debug, Clone)]
pub(crate) enum ConnCommand {
    /// Watch the socket for writability: the loop finishes a blocked write.
    WantWrite,
    /// Write what `send_batched` queued on this connection.
    Flush,
    /// Close now ([`Connection::close`]).
    ///
    /// [`Connection::close`]: crate::Connection::close
    Close,
    /// Everything queued is written, and the connection was to close then
    /// ([`Connection::close_when_flushed`]): close, or drain first after a frame error.
    ///
    /// [`Connection::close_when_flushed`]: crate::Connection::close_when_flushed
    Flushed,
    /// Read the connection again if its handler had paused it.
    ResumeReading,
    /// Read the connection now: a caller that read it handed something back.
    ReadAgain,
    /// A caller's poller now watches the socket: register the loop's interest again, behind
    /// it, so that a reply wakes a sleeping caller alone (`exclusive_wake.rs`).
    WatchBehindCaller,
    /// Call the handler's `handle_timer` at this moment.
    Timer(Instant),
    /// Write the queue at this moment: bytes corked with a hold (`send_corked_for`).
    FlushAt(Instant),
    /// A sender's write failed with this error: close with it as the reason.
    Fail(TransportError),
    /// Close at this moment if still open (`close_when_flushed_within`).
    CloseBy(Instant),
}

/// The loop's side of an `adopt_and_wait`: settles, once, whether the loop adopts the socket
/// or the waiter has given up, so that a timed-out adoption never leaves a connection behind.
pub(crate) struct AdoptWaiter {
    /// `WAITING`, then either `CLAIMED` by the loop or `ABANDONED` by the waiter, never both.
    state: Arc<AtomicU8>,
    answer: Sender<io::Result<Connection>>,
}

impl AdoptWaiter {
    /// Loop side: true if the waiter still waits, and will now wait for [`AdoptWaiter::answer`];
    /// false if it gave up, and the socket must just be dropped (which closes it).
    pub(crate) fn claim(&self) -> bool {
        self.state
            .compare_exchange(WAITING, CLAIMED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// Loop side: hands the result of a claimed adoption to the waiter.
    pub(crate) fn answer(self, result: io::Result<Connection>) {
        // The waiter of a claimed adoption waits for this answer without a deadline; only its
        // thread unwinding drops the receiver. Then nobody owns the connection: close it.
        if let Err(SendError(Ok(conn))) = self.answer.send(result) {
            conn.close();
        }
    }
}

thread_local! {
    /// The id of the loop running on this thread; `NO_LOOP` on threads that run none.
    static CURRENT_LOOP: Cell<usize> = const { Cell::new(NO_LOOP) };
}

/// `CURRENT_LOOP` of a thread that runs no loop.
const NO_LOOP: usize = 0;

/// Ids for loops, from 1 (`NO_LOOP` is 0).
static NEXT_LOOP_ID: AtomicUsize = AtomicUsize::new(1);

/// [`AdoptWaiter`] states: the waiter waits, the loop claimed the socket, the waiter gave up.
const WAITING: u8 = 0;
const CLAIMED: u8 = 1;
const ABANDONED: u8 = 2;
