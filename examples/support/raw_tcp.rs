//! The raw-socket baseline: the fastest simple thing a TCP request/reply can be, to measure
//! netrpc against in the same run.
//!
//! No framing, no codec, no event loop: a thread per connection on each side, blocking
//! sockets with `TCP_NODELAY`, fixed-size messages. The server answers each `request_len`-byte
//! request with a `reply_len`-byte reply (for the `Arith` shape, 16 bytes holding two
//! little-endian `i64`s in, their product out; otherwise the request's first bytes echoed).
//! The pipelined client keeps `inflight` requests outstanding and, like any sensible pipelined
//! sender, groups its writes: after each read it sends as many new requests as replies it got,
//! in one `write`. [`Unbatched`] sends one `write` per message instead.
//!
//! Optionally each side busies itself for a fixed time after each read, before it writes
//! ([`RawServer::start_with_work`], [`RawLoad::work`]): a stand-in for the work an RPC stack
//! does per message, to see how much the baseline itself depends on each side's turnaround.

#![allow(dead_code, unreachable_pub)] // included by path; each user needs part of it

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

#[path = "histogram.rs"]
mod histogram;
pub use histogram::Histogram;

/// The size of one request and one reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Bytes per request.
    pub request_len: usize,
    /// Bytes per reply.
    pub reply_len: usize,
}

impl Shape {
    /// The tutorials' `Arith.Multiply`: two `i64`s in, one out.
    pub const ARITH: Shape = Shape {
        request_len: 16,
        reply_len: 8,
    };

    /// An echo of `len` bytes each way.
    pub fn echo(len: usize) -> Shape {
        Shape {
            request_len: len.max(1),
            reply_len: len.max(1),
        }
    }

    fn reply_to(&self, request: &[u8], out: &mut Vec<u8>) {
        if *self == Shape::ARITH {
            let a = i64::from_le_bytes(request[..8].try_into().unwrap_or_default());
            let b = i64::from_le_bytes(request[8..16].try_into().unwrap_or_default());
            out.extend_from_slice(&a.wrapping_mul(b).to_le_bytes());
        } else {
            out.extend_from_slice(&request[..self.reply_len.min(request.len())]);
            out.resize(out.len() + self.reply_len.saturating_sub(request.len()), 0);
        }
    }

    fn request(&self) -> Vec<u8> {
        let mut request = vec![0u8; self.request_len];
        if *self == Shape::ARITH {
            request[..8].copy_from_slice(&7i64.to_le_bytes());
            request[8..].copy_from_slice(&8i64.to_le_bytes());
        }
        request
    }
}

/// A raw TCP server on 127.0.0.1, a thread per connection. Stops when dropped.
pub struct RawServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl RawServer {
    /// Starts a server answering messages of `shape`.
    pub fn start(shape: Shape) -> io::Result<RawServer> {
        RawServer::start_with_work(shape, Duration::ZERO)
    }

    /// Starts a server answering messages of `shape` that busies itself for `work` after
    /// each read, before it writes the replies.
    pub fn start_with_work(shape: Shape, work: Duration) -> io::Result<RawServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stop);
        let acceptor = thread::Builder::new()
            .name("raw-accept".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if stop_flag.load(Ordering::SeqCst) {
                        return;
                    }
                    if let Ok(stream) = stream {
                        let _ = thread::Builder::new()
                            .name("raw-conn".into())
                            .spawn(move || serve_conn(stream, shape, work));
                    }
                }
            })?;
        Ok(RawServer {
            addr,
            stop,
            acceptor: Some(acceptor),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Answers every whole request in each read with one write, until the client closes.
fn serve_conn(mut stream: TcpStream, shape: Shape, work: Duration) {
    let _ = stream.set_nodelay(true);
    let mut input = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut output = Vec::new();
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        input.extend_from_slice(&chunk[..n]);
        let whole = input.len() / shape.request_len * shape.request_len;
        output.clear();
        for request in input[..whole].chunks_exact(shape.request_len) {
            shape.reply_to(request, &mut output);
        }
        input.drain(..whole);
        busy_for(work);
        if !output.is_empty() && stream.write_all(&output).is_err() {
            return;
        }
    }
}

/// How the pipelined client writes: grouped (one write per read's worth of replies) or one
/// write per message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writes {
    /// As many requests per write as replies just arrived.
    Grouped,
    /// One write per request.
    Unbatched,
}

/// What a raw client sends: messages of `shape`, `inflight` at a time, written `writes`-wise.
#[derive(Debug, Clone, Copy)]
pub struct RawLoad {
    /// Message sizes.
    pub shape: Shape,
    /// Requests kept outstanding.
    pub inflight: usize,
    /// How requests are written.
    pub writes: Writes,
    /// Busy time after each read that brought replies, before the next requests are written.
    pub work: Duration,
}

/// Spins for `work` (returns at once for zero): the CPU stays busy, as it would doing real
/// work, rather than sleeping.
fn busy_for(work: Duration) {
    if work.is_zero() {
        return;
    }
    let started = Instant::now();
    while started.elapsed() < work {
        std::hint::spin_loop();
    }
}

/// Keeps `load.inflight` requests outstanding on one connection to `addr` until `end`.
///
/// Replies completed at or after `record_from` go into `histogram`; every completed reply
/// bumps `progress`. Returns the number of replies recorded.
pub fn drive(
    addr: SocketAddr,
    load: RawLoad,
    record_from: Instant,
    end: Instant,
    histogram: &mut Histogram,
    progress: &AtomicU64,
) -> io::Result<u64> {
    let RawLoad {
        shape,
        inflight,
        writes,
        work,
    } = load;
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let request = shape.request();
    let mut sent_at: VecDeque<Instant> = VecDeque::with_capacity(inflight);
    let mut out = Vec::with_capacity(shape.request_len * inflight);
    let mut chunk = vec![0u8; (shape.reply_len * inflight).max(64 * 1024)];
    let mut buffered = 0usize;
    let mut recorded = 0;

    send_requests(
        &mut stream,
        &request,
        inflight.max(1),
        writes,
        &mut out,
        &mut sent_at,
    )?;
    while !sent_at.is_empty() {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buffered += n;
        let replies = buffered / shape.reply_len;
        buffered %= shape.reply_len;
        let now = Instant::now();
        for _ in 0..replies {
            let Some(started) = sent_at.pop_front() else {
                return Err(io::Error::other("more replies than requests"));
            };
            if now >= record_from {
                histogram.record(now - started);
                recorded += 1;
            }
        }
        progress.fetch_add(replies as u64, Ordering::Relaxed);
        if now < end && replies > 0 {
            busy_for(work);
            send_requests(
                &mut stream,
                &request,
                replies,
                writes,
                &mut out,
                &mut sent_at,
            )?;
        }
    }
    Ok(recorded)
}

/// The open-loop counterpart of [`drive`] (`loadgen --rate`): a request is due every
/// `interval` and is written when due (those due together in one write), or as soon as a
/// reply frees room if `inflight` are outstanding; each reply's latency counts from when its
/// request was due. A thread of its own reads the replies, as netrpc's client loop does, so
/// that sending keeps time whatever the replies do. Returns the number of replies recorded.
pub fn drive_at_rate(
    addr: SocketAddr,
    shape: Shape,
    inflight: usize,
    interval: Duration,
    window: (Instant, Instant),
    histogram: &mut Histogram,
    progress: &AtomicU64,
) -> io::Result<u64> {
    let (record_from, end) = window;
    let stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let request = shape.request();
    // When each request written was due, in order: replies come back in that order.
    let due_times = std::sync::Mutex::new(VecDeque::<Instant>::with_capacity(inflight));
    let outstanding = AtomicU64::new(0);
    thread::scope(|scope| {
        let reader = scope.spawn(|| -> io::Result<u64> {
            let mut chunk = vec![0u8; (shape.reply_len * inflight).max(64 * 1024)];
            let (mut buffered, mut recorded) = (0usize, 0u64);
            loop {
                let n = (&stream).read(&mut chunk)?;
                if n == 0 {
                    return Ok(recorded);
                }
                buffered += n;
                let replies = buffered / shape.reply_len;
                buffered %= shape.reply_len;
                let now = Instant::now();
                let mut due_times = due_times.lock().unwrap_or_else(|p| p.into_inner());
                for _ in 0..replies {
                    let due = due_times.pop_front().unwrap_or(now);
                    if now >= record_from {
                        histogram.record(now - due);
                        recorded += 1;
                    }
                }
                drop(due_times);
                outstanding.fetch_sub(replies as u64, Ordering::SeqCst);
                progress.fetch_add(replies as u64, Ordering::Relaxed);
            }
        });
        let mut next_due = Instant::now();
        let mut out = Vec::with_capacity(shape.request_len * inflight);
        let sent = loop {
            let now = Instant::now();
            if next_due >= end {
                break Ok(());
            }
            let room = inflight as u64 - outstanding.load(Ordering::SeqCst).min(inflight as u64);
            if next_due <= now && room > 0 {
                out.clear();
                let mut due_times = due_times.lock().unwrap_or_else(|p| p.into_inner());
                let mut count = 0;
                while next_due <= now && next_due < end && count < room {
                    out.extend_from_slice(&request);
                    due_times.push_back(next_due);
                    next_due += interval;
                    count += 1;
                }
                drop(due_times);
                outstanding.fetch_add(count, Ordering::SeqCst);
                if let Err(err) = (&stream).write_all(&out) {
                    break Err(err);
                }
            } else if room > 0 {
                thread::sleep(next_due - now);
            } else {
                thread::yield_now(); // full: a reply frees room
            }
        };
        // Let the last replies come (bounded), then end the reader.
        let drained_by = Instant::now() + Duration::from_secs(5);
        while outstanding.load(Ordering::SeqCst) > 0 && Instant::now() < drained_by {
            thread::sleep(Duration::from_millis(1));
        }
        let _ = stream.shutdown(std::net::Shutdown::Both);
        let recorded = reader
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("reader panicked")));
        sent.and(recorded)
    })
}

fn send_requests(
    stream: &mut TcpStream,
    request: &[u8],
    count: usize,
    writes: Writes,
    out: &mut Vec<u8>,
    sent_at: &mut VecDeque<Instant>,
) -> io::Result<()> {
    let now = Instant::now();
    match writes {
        Writes::Grouped => {
            out.clear();
            for _ in 0..count {
                out.extend_from_slice(request);
                sent_at.push_back(now);
            }
            stream.write_all(out)
        }
        Writes::Unbatched => {
            for _ in 0..count {
                sent_at.push_back(Instant::now());
                stream.write_all(request)?;
            }
            Ok(())
        }
    }
}

/// A raw client that completes a fixed number of messages, for benches.
pub struct RawClient {
    stream: TcpStream,
    shape: Shape,
    request: Vec<u8>,
    out: Vec<u8>,
    chunk: Vec<u8>,
}

impl RawClient {
    /// Connects to a [`RawServer`] of the same `shape`.
    pub fn connect(addr: SocketAddr, shape: Shape) -> io::Result<RawClient> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(RawClient {
            stream,
            shape,
            request: shape.request(),
            out: Vec::new(),
            chunk: vec![0; 64 * 1024],
        })
    }

    /// Completes `total` round trips with up to `inflight` outstanding, grouping writes.
    pub fn exchange(&mut self, total: usize, inflight: usize) -> io::Result<()> {
        let mut sent = 0;
        let mut received = 0;
        let mut buffered = 0;
        let first = inflight.clamp(1, total.max(1));
        self.send(first)?;
        sent += first;
        while received < total {
            let n = self.stream.read(&mut self.chunk)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            buffered += n;
            let replies = buffered / self.shape.reply_len;
            buffered %= self.shape.reply_len;
            received += replies;
            let more = replies.min(total - sent);
            if more > 0 {
                self.send(more)?;
                sent += more;
            }
        }
        Ok(())
    }

    fn send(&mut self, count: usize) -> io::Result<()> {
        self.out.clear();
        for _ in 0..count {
            self.out.extend_from_slice(&self.request);
        }
        self.stream.write_all(&self.out)
    }
}
