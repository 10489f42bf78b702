//! The event loop's commands and timers over real sockets: adoptions that time out, handles
//! that outlive their connection, handlers that pause after every frame, corked frames that
//! wait for a flush (or, corked with a hold, for the loop's write), batched frames that
//! leave before the loop's turn ends once enough wait, deadlines so far off that
//! `Instant + Duration` would overflow, a caller that unwinds while it holds the read turn,
//! a peer that closes while a frame error's close waits for its flush, a peer whose last
//! frame and end arrive together while the loop is busy, a sender whose write meets the
//! peer's reset before the loop does, and the drain after a frame error ending however the
//! connection was told to close.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::cell::Cell;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use crossbeam_channel::{Receiver, Sender};
use rpc_transport::clock::deadline_after;
use rpc_transport::{
    spawn_loop, CloseReason, Connection, Frame, FrameDecoder, FrameHandler, FrameLimits,
    LoopHandle, MakeHandler, TransportError,
};

/// Echoes every frame back; reports each close with the connection's address.
struct Echo {
    closed: Sender<(std::net::SocketAddr, CloseReason)>,
}

impl FrameHandler for Echo {
    fn handle_frame(&mut self, conn: &Connection, frame: Frame) {
        let _ = conn.send_frame(&frame);
    }

    fn handle_close(&mut self, conn: &Connection, reason: CloseReason) {
        let _ = self.closed.send((conn.local_addr(), reason));
    }
}

/// A loop without a listener, fed socket pairs by the test.
struct Harness {
    handle: LoopHandle,
    listener: TcpListener,
    closed_tx: Sender<(std::net::SocketAddr, CloseReason)>,
    closed: Receiver<(std::net::SocketAddr, CloseReason)>,
}

impl Harness {
    fn new(name: &str) -> Harness {
        let (handle, _thread) = spawn_loop(name, None).unwrap();
        let (closed_tx, closed) = crossbeam_channel::unbounded();
        Harness {
            handle,
            listener: TcpListener::bind("127.0.0.1:0").unwrap(),
            closed_tx,
            closed,
        }
    }

    /// A connected pair: the side to hand to the loop, and the test's peer.
    fn pair(&self) -> (TcpStream, TcpStream) {
        let ours = TcpStream::connect(self.listener.local_addr().unwrap()).unwrap();
        let (peer, _) = self.listener.accept().unwrap();
        (ours, peer)
    }

    fn echo(&self) -> MakeHandler {
        let closed = self.closed_tx.clone();
        Box::new(move |_| Box::new(Echo { closed }))
    }

    /// Adopts one end of a new pair with an echo handler; returns its connection and the peer.
    fn adopt_echo(&self, limits: FrameLimits) -> (Connection, TcpStream) {
        self.adopt(limits, self.echo())
    }

    /// Adopts one end of a new pair with `make_handler`; returns its connection and the peer.
    fn adopt(&self, limits: FrameLimits, make_handler: MakeHandler) -> (Connection, TcpStream) {
        let (ours, peer) = self.pair();
        let conn = self
            .handle
            .adopt_and_wait(ours, limits, make_handler, Duration::from_secs(5))
            .expect("the loop adopts within 5 s");
        (conn, peer)
    }

    /// Returns once the loop has run every command queued before this call: commands run in
    /// order, and an adoption answers only when the loop reaches it.
    fn sync(&self) {
        let (conn, _peer) = self.adopt_echo(FrameLimits::default());
        conn.close();
    }
}

fn encode(frame: &Frame) -> Vec<u8> {
    let mut out = BytesMut::new();
    frame.encode(&mut out, &FrameLimits::default()).unwrap();
    out.to_vec()
}

fn read_frame(stream: &mut TcpStream) -> Frame {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut decoder = FrameDecoder::new(FrameLimits::default());
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).expect("the echo arrives within 10 s");
        assert!(n > 0, "the connection closed before its echo arrived");
        decoder.handle_bytes(&buf[..n]);
        if let Some(frame) = decoder.poll_frame().unwrap() {
            return frame;
        }
    }
}

fn assert_echoes(peer: &mut TcpStream, seq: u64) {
    let frame = Frame::request(seq, "Echo.Echo", 1, &b"ping"[..]);
    peer.write_all(&encode(&frame)).unwrap();
    assert_eq!(read_frame(peer), frame);
}

/// Fails unless `peer` reads end-of-file within 5 s: the loop's side of it is closed.
fn assert_sees_eof(peer: &mut TcpStream, what: &str) {
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    match peer.read(&mut [0u8; 16]) {
        Ok(0) => {}
        Err(err) if err.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("{what}: expected EOF within 5 s, got {other:?}"),
    }
}

/// Holds the loop thread inside `handle_frame` until released (or for 10 s at most): a fake
/// for a loop too busy to answer an adoption in time.
struct Stall {
    entered: Sender<()>,
    release: Receiver<()>,
}

impl FrameHandler for Stall {
    fn handle_frame(&mut self, _conn: &Connection, _frame: Frame) {
        let _ = self.entered.send(());
        let _ = self.release.recv_timeout(Duration::from_secs(10));
    }

    fn handle_close(&mut self, _conn: &Connection, _reason: CloseReason) {}
}

/// Adopts `count` sockets with `timeout`; returns the peers, the connections the caller got,
/// and how many adoptions timed out.
fn adopt_many(
    harness: &Harness,
    count: usize,
    timeout: Duration,
) -> (Vec<TcpStream>, Vec<Connection>, usize) {
    let mut peers = Vec::new();
    let mut owned = Vec::new();
    let mut timed_out = 0;
    for _ in 0..count {
        let (ours, peer) = harness.pair();
        match harness
            .handle
            .adopt_and_wait(ours, FrameLimits::default(), harness.echo(), timeout)
        {
            Ok(conn) => owned.push(conn),
            Err(err) => {
                assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
                timed_out += 1;
            }
        }
        peers.push(peer);
    }
    (peers, owned, timed_out)
}

/// Holds the loop thread in a `Stall` handler; returns once it is held, with the sender that
/// releases it and the stalling connection's peer (kept open while the test runs).
fn stall_the_loop(harness: &Harness) -> (Sender<()>, TcpStream) {
    let (ours, mut stalling_peer) = harness.pair();
    let (entered_tx, entered) = crossbeam_channel::bounded(1);
    let (release, release_rx) = crossbeam_channel::bounded(1);
    let stall = Box::new(move |_: &Connection| -> Box<dyn FrameHandler> {
        Box::new(Stall {
            entered: entered_tx,
            release: release_rx,
        })
    });
    harness
        .handle
        .adopt_and_wait(ours, FrameLimits::default(), stall, Duration::from_secs(5))
        .unwrap();
    stalling_peer
        .write_all(&encode(&Frame::request(1, "Stall", 1, &b""[..])))
        .unwrap();
    entered
        .recv_timeout(Duration::from_secs(5))
        .expect("the loop thread stalls in the handler within 5 s");
    (release, stalling_peer)
}

#[test]
fn an_adoption_that_times_out_leaves_no_connection_behind() {
    let harness = Harness::new("adopt-timeout");
    let (release, _stalling_peer) = stall_the_loop(&harness);

    // The loop is stuck: every adoption times out, and is left queued behind the stall.
    let (mut peers, _, timed_out) = adopt_many(&harness, 20, Duration::from_millis(1));
    assert_eq!(
        timed_out, 20,
        "adoptions that timed out while the loop was stuck"
    );
    release.send(()).unwrap();

    // A free loop and no time at all: the waiter and the loop race; whoever wins, the socket
    // ends up either with the caller (who closes it) or closed.
    let (racing_peers, owned, _) = adopt_many(&harness, 20, Duration::ZERO);
    peers.extend(racing_peers);
    for conn in &owned {
        conn.close();
    }
    harness.sync();
    for (i, peer) in peers.iter_mut().enumerate() {
        assert_sees_eof(peer, &format!("peer {i} of a timed-out or closed adoption"));
    }
}

#[test]
fn commands_from_an_old_handle_leave_the_new_connection_in_its_slot_open() {
    let harness = Harness::new("old-handle");
    let (old, _old_peer) = harness.adopt_echo(FrameLimits::default());
    old.close();
    let (addr, reason) = harness.closed.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!((addr, reason), (old.local_addr(), CloseReason::Local));

    let (new, mut new_peer) = harness.adopt_echo(FrameLimits::default());
    assert_eq!(
        new.token(),
        old.token(),
        "the new connection reuses the old slot"
    );

    old.close();
    old.close_when_flushed();
    old.resume_reading();
    old.schedule_timer(Instant::now());
    assert!(
        old.send(b"late").is_err(),
        "a closed connection refuses sends"
    );
    assert!(old.send_batched(b"late").is_err());
    harness.sync();

    assert!(!new.is_closed(), "the old handle closed the new connection");
    assert_echoes(&mut new_peer, 1);
}

/// Asks for a pause right after each frame, and lets reading go on when asked again: the loop
/// comes back at once, frame after frame.
struct PauseAfterEachFrame {
    owes_pause: Cell<bool>,
    frames: usize,
    expected: usize,
    done: Sender<usize>,
}

impl FrameHandler for PauseAfterEachFrame {
    fn handle_frame(&mut self, _conn: &Connection, _frame: Frame) {
        self.frames += 1;
        self.owes_pause.set(true);
        if self.frames == self.expected {
            let _ = self.done.send(self.frames);
        }
    }

    fn pause_reading(&self, _conn: &Connection) -> bool {
        self.owes_pause.replace(false)
    }

    fn handle_close(&mut self, _conn: &Connection, _reason: CloseReason) {
        let _ = self.done.send(self.frames);
    }
}

#[test]
fn a_handler_pausing_after_every_frame_gets_every_frame_of_a_long_burst() {
    const FRAMES: usize = 200_000;
    let harness = Harness::new("pause-each");
    let (ours, mut peer) = harness.pair();
    let (done_tx, done) = crossbeam_channel::unbounded();
    harness
        .handle
        .adopt_and_wait(
            ours,
            FrameLimits::default(),
            Box::new(move |_| {
                Box::new(PauseAfterEachFrame {
                    owes_pause: Cell::new(false),
                    frames: 0,
                    expected: FRAMES,
                    done: done_tx,
                })
            }),
            Duration::from_secs(5),
        )
        .unwrap();
    let mut burst = Vec::new();
    for seq in 0..FRAMES {
        burst.extend_from_slice(&encode(&Frame::request(seq as u64, "E", 1, &b""[..])));
    }
    let writing = thread::spawn(move || {
        peer.write_all(&burst).unwrap();
        peer
    });
    let got = done
        .recv_timeout(Duration::from_secs(30))
        .expect("the handler sees every frame within 30 s");
    assert_eq!(got, FRAMES, "frames delivered before the connection closed");
    drop(writing.join().unwrap());
}

#[test]
fn a_frame_timeout_of_duration_max_lets_a_half_frame_finish() {
    let harness = Harness::new("huge-frame-timeout");
    let limits = FrameLimits {
        frame_timeout: Some(Duration::MAX),
        ..FrameLimits::default()
    };
    let (ours, mut peer) = harness.pair();
    let frame = Frame::request(7, "Echo.Echo", 1, &b"a body of some length"[..]);
    let bytes = encode(&frame);
    // Half a frame is waiting before the loop first reads: its frame clock starts at adoption.
    peer.write_all(&bytes[..bytes.len() / 2]).unwrap();
    let conn = harness
        .handle
        .adopt_and_wait(ours, limits, harness.echo(), Duration::from_secs(5))
        .expect("the loop adopts a connection whose first frame is half here");
    harness.sync();
    assert!(!conn.is_closed(), "the half frame closed the connection");
    peer.write_all(&bytes[bytes.len() / 2..]).unwrap();
    assert_eq!(read_frame(&mut peer), frame);
    assert_echoes(&mut peer, 8);
}

#[test]
fn a_timer_in_the_far_future_leaves_the_loop_serving() {
    let harness = Harness::new("far-timer");
    let (conn, mut peer) = harness.adopt_echo(FrameLimits::default());
    conn.schedule_timer(deadline_after(Instant::now(), Duration::MAX));
    harness.sync();
    assert_echoes(&mut peer, 1);
    let (_other, mut other_peer) = harness.adopt_echo(FrameLimits::default());
    assert_echoes(&mut other_peer, 2);
}

#[test]
fn corked_frames_wait_for_a_flush_then_leave_together_in_order() {
    let harness = Harness::new("corked");
    let (conn, mut peer) = harness.adopt_echo(FrameLimits::default());
    let frames: Vec<Frame> = (1..=100)
        .map(|seq| Frame::request(seq, "Echo.Echo", 1, &b"corked"[..]))
        .collect();
    let mut total = 0;
    for frame in &frames {
        let bytes = encode(frame);
        total += bytes.len();
        conn.send_corked(&bytes).unwrap();
    }

    // Nobody was asked to write: the loop runs its turns (an adoption is a full turn) and
    // the peer still sees nothing.
    harness.sync();
    assert_eq!(conn.queued_len(), total);
    assert_nothing_arrives(&mut peer, "corked bytes were written before the flush");

    conn.flush().unwrap();
    assert_eq!(read_frames(&mut peer, frames.len()), frames);
    assert_eq!(conn.queued_len(), 0);

    conn.close();
    assert!(matches!(
        conn.send_corked(&encode(&frames[0])),
        Err(rpc_transport::TransportError::Closed)
    ));
    assert!(matches!(
        conn.flush(),
        Err(rpc_transport::TransportError::Closed)
    ));
}

#[test]
fn frames_corked_with_a_hold_leave_when_nobody_flushes_them() {
    let harness = Harness::new("held");
    let (conn, mut peer) = harness.adopt_echo(FrameLimits::default());
    let frames: Vec<Frame> = (1..=3)
        .map(|seq| Frame::request(seq, "Echo.Echo", 1, &b"held"[..]))
        .collect();
    let hold = Duration::from_millis(20);
    for frame in &frames[..2] {
        conn.send_corked_for(&encode(frame), hold).unwrap();
    }
    harness.sync();
    assert!(conn.queued_len() > 0, "written before the hold ran out");

    // No flush: the loop writes them once the hold has passed, in order.
    assert_eq!(read_frames(&mut peer, 2), frames[..2]);
    assert_eq!(conn.queued_len(), 0);

    // The next held frame sets a write of its own.
    conn.send_corked_for(&encode(&frames[2]), hold).unwrap();
    assert_eq!(read_frames(&mut peer, 1), frames[2..]);

    conn.close();
    assert!(matches!(
        conn.send_corked_for(&encode(&frames[0]), hold),
        Err(rpc_transport::TransportError::Closed)
    ));
}

/// Reads exactly `count` frames from `peer` (10 s at most).
fn read_frames(peer: &mut TcpStream, count: usize) -> Vec<Frame> {
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut decoder = FrameDecoder::new(FrameLimits::default());
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while got.len() < count {
        let n = peer.read(&mut buf).expect("the frames arrive within 10 s");
        assert!(n > 0, "closed after {} frames", got.len());
        decoder.handle_bytes(&buf[..n]);
        while let Some(frame) = decoder.poll_frame().unwrap() {
            got.push(frame);
        }
    }
    got
}

/// Fails if `peer` can read anything within 200 ms.
fn assert_nothing_arrives(peer: &mut TcpStream, what: &str) {
    peer.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let early = peer.read(&mut [0u8; 64]);
    assert!(
        matches!(&early, Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "{what}: {early:?}"
    );
}

#[test]
fn batched_frames_leave_at_once_when_enough_wait_for_a_busy_loop() {
    const WRITE_AT: usize = 8;
    let harness = Harness::new("batched");
    let (conn, mut peer) = harness.adopt_echo(FrameLimits::default());
    conn.set_batched_write_at(WRITE_AT);
    let (release, _stalling_peer) = stall_the_loop(&harness);
    let frames: Vec<Frame> = (1..=WRITE_AT as u64 * 2 - 1)
        .map(|seq| Frame::request(seq, "Echo.Echo", 1, &b"batched"[..]))
        .collect();
    let (first, rest) = frames.split_at(WRITE_AT);
    let (last, before_last) = first.split_last().unwrap();

    // The loop cannot end its turn: batched frames wait for it, up to the limit.
    for frame in before_last {
        conn.send_batched(&encode(frame)).unwrap();
    }
    assert_nothing_arrives(&mut peer, "batched bytes were written before the limit");
    conn.send_batched(&encode(last)).unwrap();
    assert_eq!(
        read_frames(&mut peer, first.len()),
        first,
        "the send that reached the limit wrote every waiting frame, in order"
    );
    assert_eq!(conn.queued_len(), 0);

    // The count starts again after that write: fewer than the limit wait for the loop.
    for frame in rest {
        conn.send_batched(&encode(frame)).unwrap();
    }
    assert_nothing_arrives(
        &mut peer,
        "a second burst below the limit left before the loop",
    );
    release.send(()).unwrap();
    assert_eq!(read_frames(&mut peer, rest.len()), rest);
}

/// The peer's last frame and its end arrive while the loop is held, so one readiness event
/// reports both: the loop must act on the end too, since no later event reports it again. A
/// loop that stopped reading at a short read (one `recvfrom` fewer per readiness;
/// docs/BENCHMARKS.md, "What was tried and not kept") would miss it unless it read on
/// whenever the event says the peer closed.
#[test]
fn an_end_arriving_with_the_last_frame_while_the_loop_is_busy_closes_the_connection() {
    let harness = Harness::new("end-with-frame");
    let (conn, mut peer) = harness.adopt_echo(FrameLimits::default());
    let (release, _stalling_peer) = stall_the_loop(&harness);
    let last = Frame::request(7, "Echo.Echo", 1, &b"last"[..]);
    peer.write_all(&encode(&last)).unwrap();
    peer.shutdown(std::net::Shutdown::Write).unwrap();
    release.send(()).unwrap();

    assert_eq!(read_frame(&mut peer), last, "the last frame was handled");
    let (addr, reason) = harness.closed.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        (addr, reason),
        (conn.local_addr(), CloseReason::PeerClosed),
        "the end that came with the last frame closed the connection"
    );
}

#[test]
fn a_caller_whose_frame_callback_panics_leaves_the_connection_to_the_loop() {
    let harness = Harness::new("caller-panics");
    let (conn, mut peer) = harness.adopt_echo(FrameLimits::default());
    let first = Frame::request(1, "Echo.Echo", 1, &b"first"[..]);
    let second = Frame::request(2, "Echo.Echo", 1, &b"second"[..]);
    let mut both = encode(&first);
    both.extend(encode(&second));
    // The loop is held elsewhere, so the caller is the one to read both frames; its callback
    // unwinds on the first, with the second still in the decoder.
    let (release, _stalling_peer) = stall_the_loop(&harness);
    peer.write_all(&both).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        conn.read_here(deadline, &|| false, &mut |_| {
            panic!("the caller's callback fails")
        })
    }));
    assert!(unwound.is_err(), "the callback ran and unwound");
    release.send(()).unwrap();

    // The loop reads again: it delivers the frame left behind, then serves new ones.
    assert_eq!(read_frame(&mut peer), second);
    assert_echoes(&mut peer, 3);
}

/// Answers a frame error with more than the sockets between it and a peer that never reads
/// can hold, so the close waits for a flush that cannot finish; reports the error and the close.
struct FloodOnError {
    errors: Sender<()>,
    closed: Sender<CloseReason>,
}

impl FrameHandler for FloodOnError {
    fn handle_frame(&mut self, _conn: &Connection, _frame: Frame) {}

    fn handle_frame_error(&mut self, conn: &Connection, _error: &TransportError) {
        let body = vec![0u8; 1024 * 1024];
        for seq in 0..64 {
            let _ = conn.send_frame(&Frame::request(seq, "Flood.Flood", 1, body.clone()));
        }
        let _ = self.errors.send(());
    }

    fn handle_close(&mut self, _conn: &Connection, reason: CloseReason) {
        let _ = self.closed.send(reason);
    }
}

#[test]
fn a_peer_closing_after_a_frame_error_leaves_the_error_as_the_reason() {
    let harness = Harness::new("first-error-wins");
    let (ours, mut peer) = harness.pair();
    let (errors_tx, errors) = crossbeam_channel::unbounded();
    let (closed_tx, closed) = crossbeam_channel::unbounded();
    let make_handler: MakeHandler = Box::new(move |_| {
        Box::new(FloodOnError {
            errors: errors_tx,
            closed: closed_tx,
        })
    });
    let timeout = Duration::from_secs(5);
    let _conn = harness
        .handle
        .adopt_and_wait(ours, FrameLimits::default(), make_handler, timeout)
        .unwrap();
    peer.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    errors
        .recv_timeout(timeout)
        .expect("the loop finds the bad magic");
    // The error's close waits for 64 MiB this peer never reads; its end of file comes first.
    peer.shutdown(std::net::Shutdown::Write).unwrap();
    let reason = closed.recv_timeout(timeout).expect("the loop closes");
    assert!(
        matches!(reason, CloseReason::Error(TransportError::BadMagic { .. })),
        "the frame error, not the peer's close that followed it: {reason:?}"
    );
}

/// Answers a frame error with a small frame and asks for the drain before the close; with
/// `close_on_frame`, closes the connection on every whole frame; reports each close.
struct DrainOnError {
    close_on_frame: bool,
    closed: Sender<CloseReason>,
}

impl FrameHandler for DrainOnError {
    fn handle_frame(&mut self, conn: &Connection, _frame: Frame) {
        if self.close_on_frame {
            conn.close();
        }
    }

    fn handle_frame_error(&mut self, conn: &Connection, _error: &TransportError) {
        let _ = conn.send_frame(&Frame::request(0, "Drain.Why", 1, &b"bad magic"[..]));
    }

    fn drain_after_frame_error(&self, _error: &TransportError) -> bool {
        true
    }

    fn handle_close(&mut self, _conn: &Connection, reason: CloseReason) {
        let _ = self.closed.send(reason);
    }
}

/// Adopts one end of a new pair with a [`DrainOnError`] handler; returns the connection,
/// the peer and the handler's closes.
fn adopt_draining(
    harness: &Harness,
    close_on_frame: bool,
) -> (Connection, TcpStream, Receiver<CloseReason>) {
    let (closed_tx, closed) = crossbeam_channel::unbounded();
    let make_handler: MakeHandler = Box::new(move |_| {
        Box::new(DrainOnError {
            close_on_frame,
            closed: closed_tx,
        })
    });
    let (conn, peer) = harness.adopt(FrameLimits::default(), make_handler);
    (conn, peer, closed)
}

#[test]
fn a_connection_told_to_close_before_a_frame_error_in_the_same_read_still_closes() {
    // The frame closes the connection, and the bad bytes behind it in the same read ask
    // for a drain. The peer then stays silent: the drain must still end.
    let harness = Harness::new("close-then-drain");
    let (_conn, mut peer, closed) = adopt_draining(&harness, true);
    let mut bytes = encode(&Frame::request(1, "Echo.Echo", 1, &b"hi"[..]));
    bytes.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
    peer.write_all(&bytes).unwrap();
    let reason = closed
        .recv_timeout(Duration::from_secs(5))
        .expect("the connection closes within the grace, not held by the drain");
    assert!(
        matches!(reason, CloseReason::Error(TransportError::BadMagic { .. })),
        "{reason:?}"
    );
}

#[test]
fn a_draining_connection_closes_at_once_when_told_to() {
    let harness = Harness::new("close-while-draining");
    let (conn, mut peer, closed) = adopt_draining(&harness, false);
    peer.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    // The answer, then the end of the loop's stream: the drain has begun. The peer stays
    // open and silent, so only the grace (1 s) or a close ends it.
    assert_eq!(read_frame(&mut peer).name, "Drain.Why");
    assert_sees_eof(&mut peer, "the drain shuts the loop's side for writing");
    let told = Instant::now();
    conn.close();
    let reason = closed
        .recv_timeout(Duration::from_secs(5))
        .expect("the loop closes");
    assert!(
        told.elapsed() < rpc_transport::CLOSE_GRACE,
        "closed {:?} after Connection::close: at the grace, not at once",
        told.elapsed()
    );
    assert!(
        matches!(reason, CloseReason::Error(TransportError::BadMagic { .. })),
        "the frame error stays the reason: {reason:?}"
    );
}

#[test]
fn a_write_that_fails_on_a_senders_thread_closes_the_connection_with_that_error() {
    // The peer resets the connection (it closes with our bytes unread) while the loop is
    // busy elsewhere, so a sender's write meets the reset before the loop does. The handler
    // must hear of the failure, not of a close this side asked for: a client tells its
    // callers `ConnectionLost` (retryable) for the one and `Shutdown` for the other.
    let harness = Harness::new("sender-write-fails");
    let (conn, peer) = harness.adopt_echo(FrameLimits::default());
    let (release, _stalling_peer) = stall_the_loop(&harness);
    let frame = encode(&Frame::request(1, "Echo.Echo", 1, &b"unread"[..]));
    conn.send(&frame).unwrap();
    drop(peer); // unread bytes: the peer's kernel answers with a reset
    let failed = (0..100).find_map(|_| {
        thread::sleep(Duration::from_millis(10));
        conn.send(&frame).err()
    });
    assert!(failed.is_some(), "no write failed after the reset");
    release.send(()).unwrap();

    let (addr, reason) = harness.closed.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(addr, conn.local_addr());
    assert!(
        matches!(reason, CloseReason::Error(TransportError::Io(_))),
        "{reason:?}"
    );
}

#[test]
fn bytes_held_for_a_tls_handshake_that_failed_no_longer_count_as_queued() {
    let harness = Harness::new("tls-held-bytes");
    let (ours, peer) = harness.pair();
    let roots = rpc_transport::tls::RootCertStore::empty();
    let tls = rpc_transport::tls::ClientTls::new(
        rpc_transport::tls::client_config(roots, None).unwrap(),
        "localhost",
    )
    .unwrap();
    let conn = harness
        .handle
        .adopt_tls_and_wait(
            ours,
            FrameLimits::default(),
            tls.session().unwrap(),
            harness.echo(),
            Duration::from_secs(5),
        )
        .unwrap();
    // Sent during the handshake: held as plaintext until it finishes, which it never does.
    conn.send(&[0u8; 1000]).unwrap();
    drop(peer);
    let (_, reason) = harness
        .closed
        .recv_timeout(Duration::from_secs(5))
        .expect("the connection closes");
    // The peer's close reads as a reset (it left the client hello unread) or an end.
    assert!(matches!(reason, CloseReason::Error(_)), "{reason:?}");
    assert_eq!(conn.queued_len(), 0, "nothing will ever be written");
}

/// Counts the frames it is handed; asks for reading paused once it has `pause_after`;
/// reports its close.
struct CountFrames {
    frames: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pause_after: usize,
    closed: Sender<CloseReason>,
}

impl FrameHandler for CountFrames {
    fn handle_frame(&mut self, _conn: &Connection, _frame: Frame) {
        self.frames
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn pause_reading(&self, _conn: &Connection) -> bool {
        self.frames.load(std::sync::atomic::Ordering::SeqCst) >= self.pause_after
    }

    fn handle_close(&mut self, _conn: &Connection, reason: CloseReason) {
        let _ = self.closed.send(reason);
    }
}

/// The peer of a `CountFrames` connection sends `frames` pings and resets; a send then
/// fails while the loop is held. Returns the frames handed over, and how long after the
/// loop was let go the connection closed.
fn frames_then_a_failed_write(frames: u64, pause_after: usize) -> (u64, Duration) {
    let harness = Harness::new("failed-write");
    let handed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (closed_tx, closed) = crossbeam_channel::bounded(1);
    let counting: MakeHandler = {
        let handed = std::sync::Arc::clone(&handed);
        Box::new(move |_| {
            Box::new(CountFrames {
                frames: handed,
                pause_after,
                closed: closed_tx,
            })
        })
    };
    let (conn, mut peer) = harness.adopt(FrameLimits::default(), counting);
    // The loop is held, so the frames wait in the socket.
    let (release, _stalling_peer) = stall_the_loop(&harness);
    // A byte the peer never reads makes its close a reset.
    conn.send_frame(&Frame::new(rpc_transport::FrameKind::Ping, 1))
        .unwrap();
    let mut burst = BytesMut::new();
    for seq in 1..=frames {
        Frame::new(rpc_transport::FrameKind::Ping, seq)
            .encode(&mut burst, &FrameLimits::default())
            .unwrap();
    }
    peer.write_all(&burst).unwrap();
    drop(peer);
    let deadline = Instant::now() + Duration::from_secs(5);
    while conn
        .send_frame(&Frame::new(rpc_transport::FrameKind::Ping, 2))
        .is_ok()
    {
        assert!(
            Instant::now() < deadline,
            "a send fails once the peer reset"
        );
        thread::sleep(Duration::from_millis(10));
    }
    let released = Instant::now();
    release.send(()).unwrap();
    closed
        .recv_timeout(Duration::from_secs(5))
        .expect("the connection closes");
    let handed = handed.load(std::sync::atomic::Ordering::SeqCst) as u64;
    (handed, released.elapsed())
}

#[test]
fn every_frame_waiting_in_the_socket_when_a_write_fails_is_handed_over_before_the_close() {
    // The peer sends more frames than a turn of the loop hands over, then resets; a send
    // fails. The handler must still get every frame that arrived (say, replies to calls
    // that ran), over as many turns as they take, and then the close.
    const FRAMES: u64 = 2_000;
    let (handed, _) = frames_then_a_failed_write(FRAMES, usize::MAX);
    assert_eq!(handed, FRAMES, "every frame that arrived was handed over");
}

#[test]
fn a_paused_connection_whose_write_failed_closes_without_waiting_out_the_grace() {
    // Its handler paused reading (its replies were backing up); a failed write means they
    // will never be sent, so nothing can resume it: it closes now, not after CLOSE_GRACE.
    let (handed, took) = frames_then_a_failed_write(100, 10);
    assert_eq!(handed, 10, "no frame past the pause");
    assert!(
        took < rpc_transport::CLOSE_GRACE / 2,
        "closed {took:?} after the loop was let go"
    );
}
