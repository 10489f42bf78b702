//! The malformed-input suite (shared/RELIABILITY.md, figures for rows 1-7, 16 and 17): well
//! over a thousand distinct bad inputs, each sent over its own loopback connection, then the
//! check that nothing panicked, nothing hung and nothing leaked.
//!
//! The inputs are generated, not random at run time: every truncation and many one-byte
//! mutations of good requests, ill-formed method names, undecodable bodies, seeded
//! pseudo-random streams, and every committed `frame_decode` fuzz input. Each connection
//! writes its input, shuts down its write side and reads until the server closes (5 s at
//! most: longer is a hang). Run with `--nocapture` for the figures.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod util;

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use bytes::BytesMut;
use netrpc::transport::{Frame, FrameLimits};
use netrpc::{Codec, CodecKind};
use util::evil::valid_request_bytes;
use util::{assert_back_to_idle, assert_healthy, Args, TestServer};

/// Panics anywhere in this process (server threads included) since the hook was installed.
static PANICS: AtomicUsize = AtomicUsize::new(0);

/// A small deterministic generator (xorshift64), so every run sends the same inputs.
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// A request frame's bytes with any name, codec and body.
fn frame_bytes(name: &[u8], codec: u8, body: &[u8]) -> Vec<u8> {
    let frame = Frame::request(7, name.to_vec(), codec, body.to_vec());
    let mut out = BytesMut::new();
    frame.encode(&mut out, &FrameLimits::default()).unwrap();
    out.to_vec()
}

/// Every input of the suite, without repeats.
fn malformed_inputs() -> BTreeSet<Vec<u8>> {
    let mut inputs = BTreeSet::new();
    let postcard = valid_request_bytes();
    let mut json_args = BytesMut::new();
    CodecKind::Json
        .encode(&Args { a: 7, b: 8 }, &mut json_args)
        .unwrap();
    let json = frame_bytes(b"Arith.Multiply", CodecKind::Json.id(), &json_args);
    for good in [&postcard, &json] {
        // Cut at every length; then each byte replaced by four others.
        for len in 1..good.len() {
            inputs.insert(good[..len].to_vec());
        }
        for offset in 0..good.len() {
            for byte in [0x00, 0xff, good[offset] ^ 0x01, good[offset] ^ 0x80] {
                let mut mutated = good.clone();
                mutated[offset] = byte;
                inputs.insert(mutated);
            }
        }
        // A good frame, then garbage on the same connection.
        inputs.insert([good.as_slice(), b"GET / HTTP/1.1\r\n\r\n"].concat());
    }
    let names: [&[u8]; 10] = [
        b"",
        b"Arith",
        b".",
        b"Arith.",
        b".Multiply",
        b"Nope.Multiply",
        b"Arith.Nope",
        b"Arith.\xff\xfe",
        b"a.b.c",
        &[b'x'; 255],
    ];
    for name in names {
        inputs.insert(frame_bytes(name, CodecKind::Postcard.id(), &[0x0e, 0x10]));
    }
    let mut random = Xorshift(0x9e37_79b9_7f4a_7c15);
    for codec in [CodecKind::Postcard.id(), CodecKind::Json.id(), 0, 9] {
        for _ in 0..100 {
            let len = (random.next() % 48) as usize;
            let body = random.bytes(len);
            inputs.insert(frame_bytes(b"Arith.Multiply", codec, &body));
        }
    }
    for _ in 0..300 {
        let len = 1 + (random.next() % 256) as usize;
        inputs.insert(random.bytes(len));
    }
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/frame_decode");
    for entry in std::fs::read_dir(corpus).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        // The target's first byte picks chunk sizes; the rest is the byte stream.
        if data.len() > 1 {
            inputs.insert(data[1..].to_vec());
        }
    }
    inputs
}

/// Sends `input`, half-closes, and reads until the server closes. Returns the bytes it sent
/// back, or `None` if it did not close within 5 s.
fn exchange(addr: SocketAddr, input: &[u8]) -> Option<usize> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // The server may close before reading everything: a failed write is an answer too.
    let _ = stream.write_all(input);
    let _ = stream.shutdown(Shutdown::Write);
    let mut received = 0;
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(received),
            Ok(n) => received += n,
            Err(err) if err.kind() == ErrorKind::ConnectionReset => return Some(received),
            Err(_) => return None,
        }
    }
}

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn a_thousand_malformed_inputs_cause_no_panic_no_hang_and_no_leak() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));
    let server = TestServer::start();
    assert_healthy(server.addr());
    let fds_before = open_descriptors();
    let inputs: Arc<Vec<Vec<u8>>> = Arc::new(malformed_inputs().into_iter().collect());
    assert!(inputs.len() >= 1_000, "only {} inputs", inputs.len());
    let addr = server.addr();
    let workers: Vec<_> = (0..4)
        .map(|worker| {
            let inputs = Arc::clone(&inputs);
            thread::spawn(move || {
                let (mut answered, mut hung) = (0, Vec::new());
                for input in inputs.iter().skip(worker).step_by(4) {
                    match exchange(addr, input) {
                        Some(0) => {}
                        Some(_) => answered += 1,
                        None => hung.push(input.clone()),
                    }
                }
                (answered, hung)
            })
        })
        .collect();
    let (mut answered, mut hung) = (0, Vec::new());
    for worker in workers {
        let (a, h) = worker.join().unwrap();
        answered += a;
        hung.extend(h);
    }
    assert!(hung.is_empty(), "no close within 5 s for {hung:02x?}");
    assert_back_to_idle(&server.server);
    let stats = server.server.stats();
    let fds_after = open_descriptors();
    assert!(
        fds_after <= fds_before + 2,
        "descriptors: {fds_before} before, {fds_after} after"
    );
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "panics");
    assert_healthy(server.addr());
    let call_errors: u64 = stats.call_errors.iter().sum();
    println!(
        "{} malformed inputs over {} connections: {answered} answered with frames, {} \
         connection errors, {call_errors} call errors, 0 panics, 0 hangs; open connections \
         {}, calls in flight {}, descriptors {fds_before} before and {fds_after} after",
        inputs.len(),
        stats.accepted_connections,
        stats.frame_errors,
        stats.open_connections,
        stats.in_flight_calls,
    );
}
