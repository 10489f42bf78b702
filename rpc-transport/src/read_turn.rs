//! `ReadSide`: a connection's frame decoder, and whose turn it is to read the socket.
//!
//! The event loop reads every connection. A thread that waits for a reply on a client
//! connection may take a turn and read the reply itself ([`crate::Connection::read_here`]):
//! its reply then reaches it with no wake-up of the loop and no hand-off between threads,
//! the way a blocking socket read does. Whoever has the turn owns the decoder; the other
//! keeps off the socket.
//!
//! ```text
//!   FREE ──loop takes──► LOOP ──loop done──► FREE
//!   FREE ──caller takes─► CALLER ──caller done──► FREE
//! ```
//!
//! A caller that finds the loop reading waits for that turn to end (loop turns never block)
//! and then takes its own; one that finds another caller reading leaves its replies to come
//! through the loop.
//!
//! Readiness the loop sees during a caller's turn is not lost: the loop marks it `missed`,
//! and a caller ending its turn with `missed` set reads again (or, if the loop has taken the
//! turn meanwhile, leaves the reading to it). What a caller cannot act on itself (end of
//! stream, a socket error, bytes that break the frame format) it hands back for the loop,
//! which then reads once more.
//!
//! Half frames are always the loop's, because only the loop keeps the frame timeout: a caller
//! whose read ends inside a frame gives the turn back at once, and a caller never starts a
//! turn while the decoder holds part of a frame. So a peer that stalls mid-reply meets the
//! frame timeout, not the caller's whole deadline, and the loop's clock is never left running
//! for a frame a caller finished.

use std::io::{self, Read};
use std::ops::ControlFlow;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::busy_poll::BusyPoll;
use crate::decoder::FrameDecoder;
use crate::error::TransportError;
use crate::exclusive_wake;
use crate::frame::Frame;
use crate::limits::FrameLimits;

/// What [`crate::Connection::read_here`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadHere {
    /// This many frames arrived and were handed over (at least one).
    Frames(usize),
    /// Nothing arrived before the deadline, or `stop` said to stop waiting.
    Nothing,
    /// The loop or another caller is reading the connection now, or it cannot be read from
    /// here (a TLS handshake still running, no poller to be had): wait for what the loop
    /// delivers.
    Elsewhere,
}

/// A connection's decoder and read turn, shared by the loop and waiting callers.
#[derive(Debug)]
pub(crate) struct ReadSide {
    turn: AtomicU8,
    /// The loop saw readiness while a caller had the turn.
    missed: AtomicBool,
    inbox: Mutex<Inbox>,
    /// A caller's own poller on this socket, made on the first caller turn; `None` if it
    /// could not be made (out of file descriptors), and callers then leave reading to the
    /// loop. Boxed: only a client's callers read, and a server's connections should not
    /// carry a poller's size.
    caller_poll: OnceLock<Option<Box<Mutex<CallerPoll>>>>,
    /// A waiting caller's busy-poll budget, in nanoseconds ([`crate::busy_poll`]).
    busy_poll_nanos: AtomicU64,
}

/// The decoder, and what a caller left for the loop.
#[derive(Debug)]
pub(crate) struct Inbox {
    pub(crate) decoder: FrameDecoder,
    /// How a caller's turn ended that only the loop can act on. Boxed: it is rare, and an
    /// idle connection should not carry an error's size (`tests/scale.rs`).
    handed_back: Option<Box<HandedBack>>,
    /// TLS holds part of a record (`tls/record_cursor.rs`): a frame may have begun that the
    /// decoder has not seen yet.
    pub(crate) tls_mid_record: bool,
    /// The peer's TLS close_notify has arrived: once the frames before it are delivered,
    /// its stream has ended, as at the socket's end of stream (its TCP close may never
    /// come).
    pub(crate) tls_closed: bool,
}

impl Inbox {
    /// Leaves `what` for the loop: callers keep off the socket until it has acted.
    fn hand_back(&mut self, what: HandedBack) {
        self.handed_back = Some(Box::new(what));
    }

    /// True while a caller's hand-back waits for the loop.
    pub(crate) fn has_handed_back(&self) -> bool {
        self.handed_back.is_some()
    }

    /// What a caller left for the loop, taken (the loop acts on it).
    pub(crate) fn take_handed_back(&mut self) -> Option<HandedBack> {
        self.handed_back.take().map(|what| *what)
    }

    /// True while part of a message has arrived but not all of it: a frame the decoder
    /// holds part of, or a TLS record that has begun.
    pub(crate) fn is_mid_message(&self) -> bool {
        self.tls_mid_record || self.decoder.is_mid_frame()
    }
}

/// What a caller met and left for the loop.
#[derive(Debug)]
pub(crate) enum HandedBack {
    /// The peer's bytes broke the frame format; the decoder is failed.
    FrameError(TransportError),
    /// TLS refused the peer's bytes; an alert saying why is queued for the loop to write.
    TlsFailed(TransportError),
    /// The socket failed.
    Failed(TransportError),
    /// The peer closed its side; the loop's next read sees it again.
    Eof,
}

/// Turns bytes read from the socket into decoder input: plaintext goes straight in, TLS
/// records are decrypted first (`Connection::handle_read`). An error is TLS refusing the
/// bytes: the connection must close.
pub(crate) type Feed<'a> = dyn FnMut(&[u8], &mut Inbox) -> Result<(), TransportError> + 'a;

/// Takes each whole frame a turn reads; `Break` ends the turn early, leaving the rest (in the
/// decoder and the socket) for the loop.
pub(crate) type OnFrame<'a> = dyn FnMut(Frame) -> ControlFlow<()> + 'a;

#[derive(Debug)]
struct CallerPoll {
    poll: Poll,
    events: Events,
}

/// Whose turn it is.
const FREE: u8 = 0;
const LOOP: u8 = 1;
const CALLER: u8 = 2;

/// The longest a caller sleeps in one wait before looking at its `stop` condition again: a
/// guard, since every way its wait can end (a reply, a close) also wakes its poller.
const CALLER_WAIT_SLICE: Duration = Duration::from_millis(100);

/// The longest a caller starting its wait waits for the loop to end a turn: a loop turn reads
/// until the socket has nothing more, or a megabyte at most, so this bounds a loop thread
/// kept off its CPU.
pub(crate) const LOOP_TURN_WAIT: Duration = Duration::from_millis(2);

/// Bytes a caller reads per system call.
const CALLER_READ_CHUNK: usize = 16 * 1024;

/// Most bytes a caller reads in one go before it looks at its deadline again and leaves the
/// rest to the loop: a peer that writes faster than its frames are handled (a flood of
/// replies for no call) would otherwise keep the caller reading past its deadline for as
/// long as the flood lasts (`tests/bad_input.rs`). A reply larger than this is finished by
/// the loop.
const CALLER_DRAIN_BUDGET: usize = 64 * CALLER_READ_CHUNK;

impl ReadSide {
    pub(crate) fn new(limits: FrameLimits) -> ReadSide {
        ReadSide {
            turn: AtomicU8::new(FREE),
            missed: AtomicBool::new(false),
            inbox: Mutex::new(Inbox {
                decoder: FrameDecoder::new(limits),
                handed_back: None,
                tls_mid_record: false,
                tls_closed: false,
            }),
            caller_poll: OnceLock::new(),
            busy_poll_nanos: AtomicU64::new(0),
        }
    }

    /// Sets how long a waiting caller polls without blocking before it sleeps.
    pub(crate) fn set_busy_poll(&self, busy_poll: BusyPoll) {
        let nanos = u64::try_from(busy_poll.budget().as_nanos()).unwrap_or(u64::MAX);
        self.busy_poll_nanos.store(nanos, Ordering::Relaxed);
    }

    fn busy_poll(&self) -> BusyPoll {
        BusyPoll::new(Duration::from_nanos(
            self.busy_poll_nanos.load(Ordering::Relaxed),
        ))
    }

    /// Whether a caller's poller watches the socket (made on the first caller turn).
    pub(crate) fn has_caller_poller(&self) -> bool {
        matches!(self.caller_poll.get(), Some(Some(_)))
    }

    /// The decoder and hand-backs. Only the holder of the turn reads or feeds the decoder;
    /// others may look (the loop's frame clock asks whether a frame is half read).
    pub(crate) fn inbox(&self) -> MutexGuard<'_, Inbox> {
        // Every update is one call into the decoder or one assignment: a panic elsewhere
        // leaves nothing half done.
        self.inbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loop side: takes the turn; false if a caller has it (the caller then reads again
    /// before it gives the turn back, so this readiness is not lost).
    ///
    /// # Panics
    ///
    /// In debug builds, if the loop holds the turn already (see [`ReadSide::loop_reads`]):
    /// it would wait for itself.
    pub(crate) fn begin_loop(&self) -> bool {
        loop {
            match self
                .turn
                .compare_exchange(FREE, LOOP, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return true,
                Err(LOOP) => {
                    debug_assert!(false, "the loop asked for the read turn it holds");
                    return false;
                }
                Err(_) => {}
            }
            self.missed.store(true, Ordering::SeqCst);
            // The caller may have given the turn back before it could see `missed`.
            if self.turn.load(Ordering::SeqCst) == CALLER {
                return false;
            }
        }
    }

    /// Loop side: true while the loop holds the turn (it is reading the connection now,
    /// further up its own stack).
    pub(crate) fn loop_reads(&self) -> bool {
        self.turn.load(Ordering::SeqCst) == LOOP
    }

    /// Loop side: gives the turn back.
    pub(crate) fn end_loop(&self) {
        self.turn.store(FREE, Ordering::SeqCst);
    }

    /// Caller side: frees the turn after `on_frame` unwound out of a caller's read, whatever
    /// state it was left in; the loop must then read the connection again.
    pub(crate) fn give_back_after_unwind(&self) {
        self.turn.store(FREE, Ordering::SeqCst);
    }

    /// Caller side: takes the turn if nobody has it.
    fn begin_caller(&self) -> bool {
        self.turn
            .compare_exchange(FREE, CALLER, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// Caller side, starting a wait: takes the turn, first waiting out a turn the loop holds
    /// (at most `bound`, [`LOOP_TURN_WAIT`] outside tests, and only while `stop` says the wait
    /// is still needed). A loop turn never blocks, so it ends soon; without this wait a
    /// caller that met one (the loop reading the pong to the client's hello, say) would leave
    /// every reply of its wait to the loop. False if another caller has the turn (its turn
    /// may last its whole wait), or the loop's turn outlasted the bound.
    fn begin_caller_after_loop(&self, stop: &dyn Fn() -> bool, bound: Duration) -> bool {
        let mut gave_up_at = None;
        while !self.begin_caller() {
            // Read again after the failed take: a turn the loop has just ended is tried anew.
            if self.turn.load(Ordering::SeqCst) == CALLER {
                return false;
            }
            let now = Instant::now();
            if stop() || now >= *gave_up_at.get_or_insert(now + bound) {
                return false;
            }
            std::thread::yield_now();
        }
        true
    }

    /// Caller side: reads `stream` on this thread, passing what it reads through `feed`, until
    /// at least one frame has gone to `on_frame`, `deadline` passes, `stop` returns true, or
    /// `on_frame` breaks. A turn the loop holds is waited out for at most `loop_turn_wait`.
    /// Returns what happened, and whether the loop must read the connection now (something
    /// was handed back to it, or `on_frame` broke off before the socket was drained).
    pub(crate) fn read_here(
        &self,
        stream: &TcpStream,
        deadline: Instant,
        stop: &dyn Fn() -> bool,
        loop_turn_wait: Duration,
        on_frame: &mut OnFrame<'_>,
        feed: &mut Feed<'_>,
    ) -> (ReadHere, bool) {
        let Some(poller) = self.caller_poll.get_or_init(|| new_poller(stream)) else {
            return (ReadHere::Elsewhere, false);
        };
        if !self.begin_caller_after_loop(stop, loop_turn_wait) {
            return (ReadHere::Elsewhere, false);
        }
        if self.left_to_loop() {
            // The loop has yet to act on what an earlier turn left it, or holds half a frame
            // whose clock it keeps: it reads next, and so sees any readiness missed meanwhile.
            self.turn.store(FREE, Ordering::SeqCst);
            return (ReadHere::Elsewhere, true);
        }
        let mut poller = poller.lock().unwrap_or_else(|p| p.into_inner());
        let mut delivered = 0;
        let mut hand_back = false;
        loop {
            match self.drain(stream, on_frame, feed) {
                Drain::Frames(count) => delivered += count,
                Drain::HandBack(count) => {
                    delivered += count;
                    hand_back = true;
                    break;
                }
                Drain::Stopped(count) => {
                    // The rest is the loop's to read; it reads next, so nothing missed
                    // meanwhile waits.
                    drop(poller);
                    self.turn.store(FREE, Ordering::SeqCst);
                    let outcome = match delivered + count {
                        0 => ReadHere::Elsewhere, // a frame larger than the budget
                        all => ReadHere::Frames(all),
                    };
                    return (outcome, true);
                }
            }
            if self.inbox().is_mid_message() {
                hand_back = true; // half a frame: the loop's, with its frame timeout
                break;
            }
            if delivered > 0 || stop() {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let wait = deadline.duration_since(now).min(CALLER_WAIT_SLICE);
            let CallerPoll { poll, events } = &mut *poller;
            match self.busy_poll().poll_as_caller(poll, events, Some(wait)) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    hand_back = true;
                    break;
                }
            }
        }
        drop(poller);
        let hand_back = self.end_caller(stream, on_frame, feed, &mut delivered) || hand_back;
        let outcome = match (delivered, hand_back) {
            // The loop finishes the connection's story (an error, its end, half a frame):
            // wait for it.
            (_, true) => ReadHere::Elsewhere,
            (0, false) => ReadHere::Nothing,
            (count, false) => ReadHere::Frames(count),
        };
        (outcome, hand_back)
    }

    /// Whether the loop must read before any caller: it has a hand-back to act on, or the
    /// decoder holds part of a frame.
    fn left_to_loop(&self) -> bool {
        let inbox = self.inbox();
        // A failed decoder reads nothing more: the connection is closing, and what its peer
        // still sends is the loop's to drop (a caller feeding it through TLS meanwhile would
        // break the session the loop's close still writes through).
        inbox.has_handed_back() || inbox.is_mid_message() || inbox.decoder.is_failed()
    }

    /// Gives the caller's turn back; if the loop saw readiness meanwhile, takes the turn once
    /// more and reads what came, so that nothing waits unread. True if something was handed
    /// back for the loop (a read that ended inside a frame included).
    fn end_caller(
        &self,
        stream: &TcpStream,
        on_frame: &mut OnFrame<'_>,
        feed: &mut Feed<'_>,
        delivered: &mut usize,
    ) -> bool {
        loop {
            self.turn.store(FREE, Ordering::SeqCst);
            if !self.missed.swap(false, Ordering::SeqCst) {
                return false;
            }
            if !self.begin_caller() {
                return false; // the loop took the turn: it reads what came
            }
            let hand_back = match self.drain(stream, on_frame, feed) {
                Drain::Frames(count) => {
                    *delivered += count;
                    self.inbox().is_mid_message()
                }
                Drain::HandBack(count) | Drain::Stopped(count) => {
                    *delivered += count;
                    true
                }
            };
            if hand_back {
                self.turn.store(FREE, Ordering::SeqCst);
                return true;
            }
        }
    }

    /// Reads until the socket has nothing more, through `feed`, handing every whole frame to
    /// `on_frame` (until it breaks).
    fn drain(
        &self,
        mut stream: &TcpStream,
        on_frame: &mut OnFrame<'_>,
        feed: &mut Feed<'_>,
    ) -> Drain {
        let mut chunk = [0u8; CALLER_READ_CHUNK];
        let mut inbox = self.inbox();
        if inbox.has_handed_back() {
            return Drain::HandBack(0); // not read past what the loop has yet to see
        }
        let mut delivered = 0;
        let mut read = 0;
        loop {
            loop {
                match inbox.decoder.poll_frame() {
                    Ok(Some(frame)) => {
                        delivered += 1;
                        if on_frame(frame).is_break() {
                            return Drain::Stopped(delivered);
                        }
                    }
                    Ok(None) => break,
                    Err(err) => {
                        inbox.hand_back(HandedBack::FrameError(err));
                        return Drain::HandBack(delivered);
                    }
                }
            }
            if read >= CALLER_DRAIN_BUDGET {
                return Drain::Stopped(delivered);
            }
            if inbox.tls_closed {
                inbox.hand_back(HandedBack::Eof);
                return Drain::HandBack(delivered);
            }
            match stream.read(&mut chunk) {
                // End of stream: the loop reads it again and closes as it always does.
                Ok(0) => {
                    inbox.hand_back(HandedBack::Eof);
                    return Drain::HandBack(delivered);
                }
                Ok(n) => {
                    read += n;
                    if let Err(err) = feed(&chunk[..n], &mut inbox) {
                        inbox.hand_back(HandedBack::TlsFailed(err));
                        return Drain::HandBack(delivered);
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    return Drain::Frames(delivered)
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    inbox.hand_back(HandedBack::Failed(err.into()));
                    return Drain::HandBack(delivered);
                }
            }
        }
    }
}

/// How a caller's read ended.
enum Drain {
    /// The socket has nothing more for now; this many frames were handed over.
    Frames(usize),
    /// The loop must take over (end of stream, an error), after this many frames.
    HandBack(usize),
    /// The reader broke off after this many frames (or read its budget); the loop reads the
    /// rest.
    Stopped(usize),
}

/// A poller of its own for a caller waiting on `stream`: a second epoll on the same socket,
/// edge-triggered like the loop's, and exclusive where the system allows, so that the loop,
/// once it registers behind it, is not woken for what a sleeping caller reads
/// (`exclusive_wake.rs`). `None` if the system refuses one.
fn new_poller(stream: &TcpStream) -> Option<Box<Mutex<CallerPoll>>> {
    let poll = Poll::new().ok()?;
    let fd = stream.as_raw_fd();
    let exclusive = exclusive_wake::register(poll.registry(), stream, 0, Interest::READABLE);
    if exclusive.is_err() {
        poll.registry()
            .register(&mut SourceFd(&fd), Token(0), Interest::READABLE)
            .ok()?;
    }
    Some(Box::new(Mutex::new(CallerPoll {
        poll,
        events: Events::with_capacity(4),
    })))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly by design

    use std::io::Write;
    use std::net::TcpListener;

    use bytes::BytesMut;

    use super::*;

    /// A non-blocking socket for the side under test, and its blocking peer.
    fn pair() -> (TcpStream, std::net::TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (peer, _) = listener.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        (TcpStream::from_std(ours), peer)
    }

    fn frame_bytes(seq: u64) -> Vec<u8> {
        let mut out = BytesMut::new();
        Frame::request(seq, "Echo.Echo", 1, &b"hi"[..])
            .encode(&mut out, &FrameLimits::default())
            .unwrap();
        out.to_vec()
    }

    #[test]
    fn the_loop_keeps_off_while_a_caller_has_the_turn_and_gets_it_after() {
        let side = ReadSide::new(FrameLimits::default());
        assert!(side.begin_caller());
        assert!(!side.begin_loop(), "the loop read during a caller's turn");
        assert!(!side.begin_caller(), "two callers had the turn at once");
        side.turn.store(FREE, Ordering::SeqCst);
        assert!(side.begin_loop());
        assert!(!side.begin_caller(), "a caller read during the loop's turn");
        side.end_loop();
        assert!(side.begin_caller());
    }

    #[test]
    fn a_caller_starting_its_wait_waits_out_a_loop_turn_but_not_another_callers() {
        let side = ReadSide::new(FrameLimits::default());
        let never = || false;
        assert!(side.begin_loop());
        std::thread::scope(|scope| {
            let caller =
                scope.spawn(|| side.begin_caller_after_loop(&never, Duration::from_secs(60)));
            std::thread::sleep(Duration::from_millis(50));
            side.end_loop();
            assert!(
                caller.join().unwrap(),
                "the caller took the turn the loop ended"
            );
        });
        assert!(
            !side.begin_caller_after_loop(&never, Duration::from_secs(60)),
            "a second caller waited for the first, whose turn may last its whole wait"
        );
        side.turn.store(LOOP, Ordering::SeqCst);
        assert!(
            !side.begin_caller_after_loop(&|| true, Duration::from_secs(60)),
            "a caller whose reply has come went on waiting for the loop"
        );
        assert!(!side.begin_caller_after_loop(&never, Duration::from_millis(5)));
    }

    #[test]
    fn a_frame_arriving_while_the_loop_is_kept_off_is_read_before_the_turn_is_given_back() {
        let (ours, mut peer) = pair();
        let side = ReadSide::new(FrameLimits::default());
        assert!(side.begin_caller());
        // The caller has read everything so far; now readiness comes, and the loop, kept
        // off, only marks it.
        peer.write_all(&frame_bytes(7)).unwrap();
        thread_wait_readable(&ours);
        assert!(!side.begin_loop());

        let mut got = Vec::new();
        let mut delivered = 0;
        let handed_back = side.end_caller(
            &ours,
            &mut |frame| {
                got.push(frame.seq);
                ControlFlow::Continue(())
            },
            &mut plain,
            &mut delivered,
        );
        assert!(!handed_back);
        assert_eq!(got, vec![7], "the caller read what the loop was kept from");
        assert_eq!(delivered, 1);
        assert!(side.begin_loop(), "the turn was given back");
    }

    #[test]
    fn end_of_stream_met_by_a_caller_is_handed_back_and_callers_keep_off_until_the_loop_acts() {
        let (ours, peer) = pair();
        let side = ReadSide::new(FrameLimits::default());
        drop(peer);
        thread_wait_readable(&ours);
        let deadline = Instant::now() + Duration::from_secs(5);
        let (outcome, loop_must_read) = read_no_frame(&side, &ours, deadline);
        assert_eq!(outcome, ReadHere::Elsewhere);
        assert!(loop_must_read);
        assert!(matches!(
            side.inbox().handed_back.as_deref(),
            Some(HandedBack::Eof)
        ));
        let (again, _) = read_no_frame(&side, &ours, deadline);
        assert_eq!(
            again,
            ReadHere::Elsewhere,
            "a caller read past the hand-back"
        );
    }

    #[test]
    fn after_a_frame_error_no_caller_reads_the_socket() {
        let (ours, mut peer) = pair();
        let side = ReadSide::new(FrameLimits::default());
        side.inbox().decoder.handle_bytes(b"GET / HTTP/1.1\r\n\r\n");
        assert!(side.inbox().decoder.poll_frame().is_err(), "bad magic");
        peer.write_all(b"more bytes the loop drains").unwrap();
        thread_wait_readable(&ours);
        let deadline = Instant::now() + Duration::from_secs(5);
        let (outcome, loop_must_read) = read_no_frame(&side, &ours, deadline);
        assert_eq!((outcome, loop_must_read), (ReadHere::Elsewhere, true));
        let mut unread = [0u8; 64];
        let left = (&ours).read(&mut unread).unwrap();
        assert_eq!(
            &unread[..left],
            b"more bytes the loop drains",
            "a caller read them"
        );
    }

    #[test]
    fn half_a_frame_goes_to_the_loop_and_no_caller_finishes_it() {
        let (ours, mut peer) = pair();
        let side = ReadSide::new(FrameLimits::default());
        let bytes = frame_bytes(3);
        peer.write_all(&bytes[..10]).unwrap();
        thread_wait_readable(&ours);
        let deadline = Instant::now() + Duration::from_secs(5);
        let (outcome, loop_must_read) = read_no_frame(&side, &ours, deadline);
        assert_eq!(
            (outcome, loop_must_read),
            (ReadHere::Elsewhere, true),
            "a read ending inside a frame hands it to the loop at once, with its frame timeout"
        );

        peer.write_all(&bytes[10..]).unwrap();
        thread_wait_readable(&ours);
        // No caller finishes a frame whose clock the loop keeps.
        let (again, _) = read_no_frame(&side, &ours, deadline);
        assert_eq!(again, ReadHere::Elsewhere);
        assert!(side.begin_loop(), "the turn is free for the loop");
    }

    #[test]
    fn a_reader_that_breaks_off_leaves_the_rest_to_the_loop() {
        let (ours, mut peer) = pair();
        let side = ReadSide::new(FrameLimits::default());
        let mut bytes = Vec::new();
        for seq in 1..=3 {
            bytes.extend_from_slice(&frame_bytes(seq));
        }
        peer.write_all(&bytes).unwrap();
        thread_wait_readable(&ours);
        let mut got = Vec::new();
        let (outcome, loop_must_read) = side.read_here(
            &ours,
            Instant::now() + Duration::from_secs(5),
            &|| false,
            Duration::ZERO,
            &mut |frame| {
                got.push(frame.seq);
                ControlFlow::Break(())
            },
            &mut plain,
        );
        assert_eq!((outcome, loop_must_read), (ReadHere::Frames(1), true));
        assert_eq!(got, vec![1], "nothing is handed over past the break");
        assert!(side.begin_loop(), "the turn is the loop's again");
        let mut inbox = side.inbox();
        let rest: Vec<u64> = std::iter::from_fn(|| inbox.decoder.poll_frame().unwrap())
            .map(|frame| frame.seq)
            .collect();
        assert_eq!(rest, vec![2, 3], "the loop finds the rest in order");
    }

    #[test]
    fn a_reader_that_will_not_wait_leaves_a_loop_turn_alone() {
        let (ours, _peer) = pair();
        let side = ReadSide::new(FrameLimits::default());
        assert!(side.begin_loop());
        let started = Instant::now();
        let (outcome, loop_must_read) = side.read_here(
            &ours,
            started + Duration::from_secs(5),
            &|| false,
            Duration::ZERO,
            &mut |_| panic!("no frame"),
            &mut plain,
        );
        assert_eq!((outcome, loop_must_read), (ReadHere::Elsewhere, false));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "it returned without waiting for the loop's turn or the deadline"
        );
    }

    /// A caller's read of plaintext `ours` that must deliver no frame.
    fn read_no_frame(side: &ReadSide, ours: &TcpStream, deadline: Instant) -> (ReadHere, bool) {
        side.read_here(
            ours,
            deadline,
            &|| false,
            LOOP_TURN_WAIT,
            &mut |_| panic!("no frame"),
            &mut plain,
        )
    }

    /// A plaintext connection's feed: bytes go straight to the decoder.
    fn plain(bytes: &[u8], inbox: &mut Inbox) -> Result<(), TransportError> {
        inbox.decoder.handle_bytes(bytes);
        Ok(())
    }

    /// Returns once `stream` has bytes (or end of stream) to read, within 5 s.
    fn thread_wait_readable(stream: &TcpStream) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut probe = [0u8; 1];
        while Instant::now() < deadline {
            match stream.peek(&mut probe) {
                Ok(_) => return,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(err) => panic!("{err}"),
            }
        }
        panic!("nothing to read within 5 s");
    }
}
