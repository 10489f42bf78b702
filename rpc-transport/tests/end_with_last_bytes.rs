//! An end of stream that arrives together with the peer's last bytes, both reported by one
//! readiness event: the loop must see the end as well as the bytes, since no later event
//! reports it again. A loop that stopped reading at a short read (one `recvfrom` fewer per
//! readiness; docs/BENCHMARKS.md, "What was tried and not kept") would miss it unless it read
//! on whenever the event says the peer closed.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use crossbeam_channel::{Receiver, Sender};
use rpc_transport::{spawn_loop, CloseReason, Connection, Frame, FrameHandler, FrameLimits};

/// The method whose frame keeps the loop thread busy for [`STALL`].
const STALL_METHOD: &str = "Test.Stall";

/// How long a stall frame holds the loop: long enough for another peer's bytes and end to
/// arrive while it cannot read, so that one readiness event reports both.
const STALL: Duration = Duration::from_millis(300);

/// Reports every frame's sequence id and every close; stalls the loop on a stall frame.
struct Recorder {
    frames: Sender<u64>,
    closed: Sender<CloseReason>,
}

impl FrameHandler for Recorder {
    fn handle_frame(&mut self, _conn: &Connection, frame: Frame) {
        if frame.name == STALL_METHOD.as_bytes() {
            thread::sleep(STALL);
        }
        let _ = self.frames.send(frame.seq);
    }

    fn handle_close(&mut self, _conn: &Connection, reason: CloseReason) {
        let _ = self.closed.send(reason);
    }
}

struct Server {
    addr: SocketAddr,
    frames: Receiver<u64>,
    closed: Receiver<CloseReason>,
}

fn start_server() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (frames_tx, frames) = crossbeam_channel::unbounded();
    let (closed_tx, closed) = crossbeam_channel::unbounded();
    let acceptor = Box::new(move |stream: TcpStream, own: &rpc_transport::LoopHandle| {
        let (frames, closed) = (frames_tx.clone(), closed_tx.clone());
        own.adopt(
            stream,
            FrameLimits::default(),
            Box::new(move |_| Box::new(Recorder { frames, closed })),
        )
        .unwrap();
    });
    // The loop thread ends with the test process.
    let (_handle, _thread) = spawn_loop("end-with-bytes", Some((listener, acceptor))).unwrap();
    Server {
        addr,
        frames,
        closed,
    }
}

fn frame_bytes(seq: u64, method: &str) -> Vec<u8> {
    let mut out = BytesMut::new();
    Frame::request(seq, method.to_owned(), 1, Bytes::from_static(b"body"))
        .encode(&mut out, &FrameLimits::default())
        .unwrap();
    out.to_vec()
}

#[test]
fn an_end_arriving_with_the_last_frame_while_the_loop_is_busy_closes_the_connection() {
    let server = start_server();
    let wait = Duration::from_secs(5);

    // Both connections adopted and read once, so what follows comes through readiness.
    let mut staller = TcpStream::connect(server.addr).unwrap();
    let mut closer = TcpStream::connect(server.addr).unwrap();
    staller.write_all(&frame_bytes(1, "Test.Hello")).unwrap();
    closer.write_all(&frame_bytes(2, "Test.Hello")).unwrap();
    let mut hellos = [server.frames.recv_timeout(wait).unwrap(), 0];
    hellos[1] = server.frames.recv_timeout(wait).unwrap();
    hellos.sort_unstable();
    assert_eq!(hellos, [1, 2]);

    // The loop sleeps in the stall frame's handler while the last frame and the end arrive.
    staller.write_all(&frame_bytes(3, STALL_METHOD)).unwrap();
    thread::sleep(STALL / 6);
    closer.write_all(&frame_bytes(4, "Test.Last")).unwrap();
    closer.shutdown(std::net::Shutdown::Write).unwrap();

    assert_eq!(server.frames.recv_timeout(wait).unwrap(), 3);
    assert_eq!(
        server.frames.recv_timeout(wait).unwrap(),
        4,
        "the last frame was delivered"
    );
    assert_eq!(
        server.closed.recv_timeout(wait),
        Ok(CloseReason::PeerClosed),
        "the end that came with the last frame closed the connection"
    );
    drop(staller);
}
