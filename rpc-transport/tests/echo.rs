//! The event loop over real sockets: an echo handler, pipelined and split frames, a socket
//! that fills up (the loop must finish the writes), and many threads sending on one
//! connection (frames must never interleave).

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use crossbeam_channel::Sender;
use rpc_transport::{
    spawn_loop, CloseReason, Connection, Frame, FrameDecoder, FrameHandler, FrameLimits,
};

/// How the echo server writes its replies.
#[derive(Debug, Clone, Copy)]
enum Sending {
    /// `Connection::send_frame`: written at once by the sending thread.
    Direct,
    /// `Connection::send_batched`: queued for the loop to write at the end of its turn.
    Batched,
    /// `Connection::send_corked`, then `Connection::flush`: queued, then written by this
    /// thread or whoever is writing already.
    Corked,
}

impl Sending {
    fn send(self, conn: &Connection, frame: &Frame) {
        match self {
            Sending::Direct => {
                let _ = conn.send_frame(frame);
            }
            Sending::Batched | Sending::Corked => {
                let mut bytes = BytesMut::new();
                frame.encode(&mut bytes, conn.limits()).unwrap();
                if matches!(self, Sending::Batched) {
                    let _ = conn.send_batched(&bytes);
                } else if conn.send_corked(&bytes).is_ok() {
                    let _ = conn.flush();
                }
            }
        }
    }
}

/// Echoes every frame back, either from the loop thread or from `senders` worker threads.
struct Echo {
    workers: Option<Vec<Sender<(Connection, Frame)>>>,
    next: usize,
    closed: Sender<CloseReason>,
    sending: Sending,
}

impl FrameHandler for Echo {
    fn handle_frame(&mut self, conn: &Connection, frame: Frame) {
        match &self.workers {
            None => self.sending.send(conn, &frame),
            Some(workers) => {
                self.next = (self.next + 1) % workers.len();
                workers[self.next].send((conn.clone(), frame)).unwrap();
            }
        }
    }

    fn handle_close(&mut self, _conn: &Connection, reason: CloseReason) {
        let _ = self.closed.send(reason);
    }
}

struct EchoServer {
    addr: std::net::SocketAddr,
    closed: crossbeam_channel::Receiver<CloseReason>,
    handle: rpc_transport::LoopHandle,
}

fn start_echo(worker_threads: usize) -> EchoServer {
    start_echo_with(worker_threads, Sending::Direct)
}

fn start_echo_with(worker_threads: usize, sending: Sending) -> EchoServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed_tx, closed_rx) = crossbeam_channel::unbounded();
    let acceptor = Box::new(move |stream: TcpStream, own: &rpc_transport::LoopHandle| {
        let workers = (worker_threads > 0).then(|| {
            (0..worker_threads)
                .map(|_| {
                    let (tx, rx) = crossbeam_channel::unbounded::<(Connection, Frame)>();
                    thread::spawn(move || {
                        for (conn, frame) in rx {
                            sending.send(&conn, &frame);
                        }
                    });
                    tx
                })
                .collect()
        });
        let closed = closed_tx.clone();
        own.adopt(
            stream,
            FrameLimits::default(),
            Box::new(move |_| {
                Box::new(Echo {
                    workers,
                    next: 0,
                    closed,
                    sending,
                })
            }),
        )
        .unwrap();
    });
    let (handle, _thread) = spawn_loop("echo-loop", Some((listener, acceptor))).unwrap();
    EchoServer {
        addr,
        closed: closed_rx,
        handle,
    }
}

fn frames(count: usize, body_len: usize) -> Vec<Frame> {
    (0..count)
        .map(|i| {
            let body: Vec<u8> = (0..body_len).map(|j| (i + j) as u8).collect();
            Frame::request(i as u64, "Echo.Echo", 1, Bytes::from(body))
        })
        .collect()
}

fn encode(frames: &[Frame]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for frame in frames {
        frame.encode(&mut out, &FrameLimits::default()).unwrap();
    }
    out.to_vec()
}

fn read_frames(stream: &mut TcpStream, count: usize) -> Vec<Frame> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut decoder = FrameDecoder::new(FrameLimits::default());
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while got.len() < count {
        let n = stream.read(&mut buf).expect("echo arrives within 10 s");
        assert!(n > 0, "closed after {} of {count} frames", got.len());
        decoder.handle_bytes(&buf[..n]);
        while let Some(frame) = decoder.poll_frame().unwrap() {
            got.push(frame);
        }
    }
    got
}

#[test]
fn pipelined_frames_in_one_write_all_come_back() {
    let server = start_echo(0);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    let sent = frames(3, 10);
    let mut bytes = encode(&sent);
    let fourth = encode(&frames(4, 10)[3..]);
    bytes.extend_from_slice(&fourth[..10]); // half a fourth frame
    stream.write_all(&bytes).unwrap();
    assert_eq!(read_frames(&mut stream, 3), sent);
    stream.write_all(&fourth[10..]).unwrap();
    assert_eq!(read_frames(&mut stream, 1)[0].seq, 3);
}

#[test]
fn a_large_frame_arriving_in_small_pieces_comes_back_whole() {
    let server = start_echo(0);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    let sent = frames(1, 1024 * 1024);
    for piece in encode(&sent).chunks(64 * 1024) {
        stream.write_all(piece).unwrap();
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(read_frames(&mut stream, 1), sent);
}

#[test]
fn writes_that_fill_the_socket_are_finished_by_the_loop() {
    for sending in [Sending::Direct, Sending::Batched, Sending::Corked] {
        let server = start_echo_with(0, sending);
        let mut stream = TcpStream::connect(server.addr).unwrap();
        let sent = frames(200, 64 * 1024); // 12.8 MiB each way: far beyond the socket buffers
        let bytes = encode(&sent);
        let mut writer = stream.try_clone().unwrap();
        let writing = thread::spawn(move || writer.write_all(&bytes).unwrap());
        thread::sleep(Duration::from_millis(200)); // let the echoes back up
        assert_eq!(read_frames(&mut stream, 200), sent, "{sending:?}");
        writing.join().unwrap();
    }
}

#[test]
fn many_threads_sending_on_one_connection_never_interleave_frames() {
    for sending in [Sending::Direct, Sending::Batched, Sending::Corked] {
        assert_threads_never_interleave(sending);
    }
}

#[test]
fn batched_sends_from_the_loop_thread_all_arrive_in_order() {
    let server = start_echo_with(0, Sending::Batched);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    let sent = frames(1_000, 20);
    stream.write_all(&encode(&sent)).unwrap();
    assert_eq!(read_frames(&mut stream, 1_000), sent);
}

fn assert_threads_never_interleave(sending: Sending) {
    let server = start_echo_with(8, sending);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    let sent = frames(2_000, 3_000);
    let bytes = encode(&sent);
    let mut writer = stream.try_clone().unwrap();
    let writing = thread::spawn(move || writer.write_all(&bytes).unwrap());
    let got = read_frames(&mut stream, 2_000);
    writing.join().unwrap();
    let mut seqs = HashSet::new();
    for frame in &got {
        assert_eq!(
            frame, &sent[frame.seq as usize],
            "frame {} intact",
            frame.seq
        );
        assert!(seqs.insert(frame.seq), "frame {} twice", frame.seq);
    }
    assert_eq!(seqs.len(), 2_000);
}

#[test]
fn bad_bytes_close_the_connection_with_a_typed_reason() {
    let server = start_echo(0);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let reason = server.closed.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(
        matches!(
            reason,
            CloseReason::Error(rpc_transport::TransportError::BadMagic { .. })
        ),
        "{reason:?}"
    );
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(
        stream.read(&mut [0u8; 16]).unwrap(),
        0,
        "the server closed the socket"
    );
}

#[test]
fn eof_between_frames_is_a_clean_close_and_inside_a_frame_is_truncated() {
    let server = start_echo(0);
    let clean = TcpStream::connect(server.addr).unwrap();
    clean.shutdown(std::net::Shutdown::Write).unwrap();
    let reason = server.closed.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(reason, CloseReason::PeerClosed);

    let mut torn = TcpStream::connect(server.addr).unwrap();
    torn.write_all(&encode(&frames(1, 100))[..40]).unwrap();
    torn.shutdown(std::net::Shutdown::Write).unwrap();
    let reason = server.closed.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        reason,
        CloseReason::Error(rpc_transport::TransportError::Truncated { buffered: 40 })
    );
}

#[test]
fn loop_shutdown_closes_every_connection() {
    let server = start_echo(0);
    let mut streams: Vec<_> = (0..5)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    // Make sure all five are adopted before shutting down.
    for stream in &mut streams {
        stream.write_all(&encode(&frames(1, 1))).unwrap();
        read_frames(stream, 1);
    }
    server.handle.shutdown();
    for _ in 0..5 {
        let reason = server.closed.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(reason, CloseReason::LoopShutdown);
    }
    for stream in &mut streams {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(stream.read(&mut [0u8; 1]).unwrap_or(0), 0);
    }
}
