//! Whole jsonrpc messages on their way out of one connection: the threads that make them
//! queue them and go on at once; the connection's own writer thread writes them.
//!
//! On the server the messages are responses: a worker that wrote its response itself would
//! block in the write while the peer reads nothing (for up to the frame timeout per system
//! call, and a peer reading a little now and then restarts that clock), and every other
//! worker finishing a call of that connection would queue behind it: one connection asking
//! for large replies it never reads could hold the whole pool. Its reading thread waits
//! while more than the server's `max_queued_bytes` wait here. On the client they are
//! requests: a caller that wrote its request itself could not keep its own deadline while
//! the server reads slowly; it refuses a call while more than `max_unsent_bytes` wait.
//! Either way only the connection's own threads wait for its peer.
//!
//! A client's request carries its call's id: one whose call has ended before the writer
//! reaches it (timed out while the server read slowly) is dropped unwritten, so the server
//! never runs a call its caller was told had failed. Once begun, a message is written whole.
//!
//! A server's queue has a cap (`max_queued_bytes`) and holds calls as well as messages. Its
//! reading thread waits before each request while the queue is past the cap, but one read
//! can bring hundreds of small requests for large responses before any response is queued;
//! so a worker about to run a call of a connection whose queue is past the cap hands the call
//! to the queue ([`WriteQueue::hold`]) and goes on with other work. The writer releases the
//! held calls once what it has written brings the queue back under the cap (each is checked
//! again before it runs), and at the end (a failed write, or `finish`) releases them as
//! [`Release::Closed`], never to run; a call held longer than the queue's hold limit is
//! released as [`Release::Expired`] (looked at while the reading thread waits for room, and
//! as responses are written), to be answered with an error unrun. The queue's bytes are also counted in the server's
//! total, for `ServerStats::queued_outbound_bytes`.

use std::collections::VecDeque;
use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::BytesMut;

/// The queue (see the module doc).
#[derive(Default)]
pub(crate) struct WriteQueue {
    state: Mutex<QueueState>,
    /// Signalled when a message is queued, when one has been written, and at the end.
    changed: Condvar,
    /// A server's: past how many bytes calls are held, and the server's count of queued
    /// bytes this queue adds to. A client's queue has none.
    responses: Option<ResponseCap>,
}

/// What a server's queue of responses answers to.
struct ResponseCap {
    cap: usize,
    server_total: Arc<AtomicUsize>,
    /// How long a call may be held (counted from when it was first held); `None`: as long
    /// as the connection lasts.
    hold_limit: Option<Duration>,
}

#[derive(Default)]
struct QueueState {
    messages: VecDeque<Queued>,
    /// Bytes queued or being written.
    bytes: usize,
    /// Calls held while the queue is past its cap, in the order held.
    held: Vec<Held>,
    /// No message will be queued any more: the writer ends once the queue is empty.
    finishing: bool,
    /// A write failed (the socket is shut down): nothing more is written.
    failed: bool,
}

/// A call held by [`WriteQueue::hold`]: called once, when released.
pub(crate) type HeldCall = Box<dyn FnOnce(Release) + Send>;

/// A held call, and since when it has been held (first held, if it was held before).
struct Held {
    since: Instant,
    call: HeldCall,
}

/// Why a held call is released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Release {
    /// The queue is back under its cap: the call may run.
    Room,
    /// The connection is ending (or the write failed): its response could never be sent.
    Closed,
    /// Held past the queue's hold limit: the peer reads too slowly for the call to run;
    /// it should be answered with an error, so that it frees its place among the calls in
    /// flight.
    Expired,
}

/// One message waiting to be written.
#[derive(Debug)]
struct Queued {
    bytes: BytesMut,
    /// The id of the client call this request is for: written only while the call waits.
    call_id: Option<u64>,
}

impl WriteQueue {
    /// A server's queue of responses: calls are held past `cap` bytes, for `hold_limit` at
    /// most, and the bytes queued are also counted in `server_total`.
    pub(crate) fn for_responses(
        cap: usize,
        hold_limit: Option<Duration>,
        server_total: Arc<AtomicUsize>,
    ) -> Self {
        let responses = ResponseCap {
            cap,
            server_total,
            hold_limit,
        };
        WriteQueue {
            responses: Some(responses),
            ..WriteQueue::default()
        }
    }

    /// Queues one whole message for the writer. False if it will never be written (a write
    /// failed, or the connection is ending).
    pub(crate) fn push(&self, message: BytesMut) -> bool {
        self.enqueue(Queued {
            bytes: message,
            call_id: None,
        })
    }

    /// Queues the request of client call `call_id`, to be written only if that call still
    /// waits when the writer reaches it (see [`WriteQueue::write_requests_to`]). False as
    /// for [`WriteQueue::push`].
    pub(crate) fn push_request(&self, call_id: u64, request: BytesMut) -> bool {
        self.enqueue(Queued {
            bytes: request,
            call_id: Some(call_id),
        })
    }

    /// Bytes queued or being written.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// True if a server's queue holds more than its cap (a worker's look before it runs a
    /// call; [`WriteQueue::hold`] looks again under the lock).
    pub(crate) fn is_past_cap(&self) -> bool {
        self.responses.is_some() && self.past_cap(&self.lock())
    }

    /// Holds `call`, held since `since`, until the writer brings the queue back under its
    /// cap (then releases it as [`Release::Room`]), the connection ends
    /// ([`Release::Closed`]), or the hold limit passes ([`Release::Expired`], looked at as
    /// the reading thread waits and as responses are written). If one of these holds
    /// already, `call` is released at once, on this thread.
    pub(crate) fn hold(&self, since: Instant, call: HeldCall) {
        let mut state = self.lock();
        let release = if state.failed || state.finishing {
            Release::Closed
        } else if self.expired(since, Instant::now()) {
            Release::Expired
        } else if self.past_cap(&state) {
            state.held.push(Held { since, call });
            return;
        } else {
            Release::Room
        };
        drop(state);
        call(release);
    }

    /// Releases the calls held past the hold limit as [`Release::Expired`].
    pub(crate) fn expire_held(&self) {
        let now = Instant::now();
        let mut state = self.lock();
        if !state.held.iter().any(|held| self.expired(held.since, now)) {
            return;
        }
        let (expired, kept) = std::mem::take(&mut state.held)
            .into_iter()
            .partition(|held| self.expired(held.since, now));
        state.held = kept;
        drop(state);
        release_all(expired, Release::Expired);
    }

    /// Blocks while more than `cap` bytes wait to be written, until `stop` is set or a write
    /// fails: the server's reading thread asks before each request.
    pub(crate) fn wait_at_most(&self, cap: usize, stop: &AtomicBool) {
        let mut state = self.lock();
        while state.bytes > cap && !state.failed && !stop.load(Ordering::SeqCst) {
            state = self
                .changed
                .wait_timeout(state, STOP_CHECK)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            if !state.held.is_empty() {
                drop(state);
                self.expire_held();
                state = self.lock();
            }
        }
    }

    /// No more messages: the writer writes what is queued, then ends. Held calls are
    /// released as [`Release::Closed`], on this thread.
    pub(crate) fn finish(&self) {
        let mut state = self.lock();
        state.finishing = true;
        let held = std::mem::take(&mut state.held);
        drop(state);
        self.changed.notify_all();
        release_all(held, Release::Closed);
    }

    /// The writer thread's work: writes queued messages to `stream`, in the order queued,
    /// until [`WriteQueue::finish`] and an empty queue, or a write fails (the socket is then
    /// shut down both ways, so the reading thread stops too).
    pub(crate) fn write_to(&self, stream: &TcpStream) {
        self.write_requests_to(stream, |_| true);
    }

    /// As [`WriteQueue::write_to`], but a request of a client call for which `call_waits`
    /// is false when its turn comes (the call timed out, or the connection ended) is
    /// dropped unwritten.
    pub(crate) fn write_requests_to(&self, stream: &TcpStream, call_waits: impl Fn(u64) -> bool) {
        loop {
            let batch = {
                let mut state = self.lock();
                while state.messages.is_empty() && !state.finishing && !state.failed {
                    state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
                }
                if state.messages.is_empty() || state.failed {
                    return;
                }
                std::mem::take(&mut state.messages)
            };
            for message in batch {
                let unwanted = message.call_id.is_some_and(|id| !call_waits(id));
                if !unwanted && self.write_whole(stream, &message.bytes).is_err() {
                    let _ = stream.shutdown(Shutdown::Both);
                    let mut state = self.lock();
                    state.failed = true;
                    state.messages.clear();
                    let all = state.bytes;
                    self.uncount(&mut state, all);
                    let held = std::mem::take(&mut state.held);
                    drop(state);
                    self.changed.notify_all();
                    release_all(held, Release::Closed);
                    return;
                }
                self.written(message.bytes.len());
            }
        }
    }

    /// Writes `bytes` whole, [`WRITE_PIECE`] at most per system call. A peer reading a
    /// trickle can hold one large message for many seconds, every write making progress (a
    /// blocking write returns only once it has taken all it was given): the hold limit is
    /// looked at after each piece, so calls held meanwhile are refused in time.
    fn write_whole(&self, mut stream: &TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            match stream.write(&bytes[..bytes.len().min(WRITE_PIECE)]) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(written) => bytes = &bytes[written..],
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            }
            if !bytes.is_empty() {
                self.expire_held();
            }
        }
        Ok(())
    }

    /// `len` bytes are off the queue (written, or dropped unwritten): wakes whoever waits
    /// for room, and releases the held calls if the queue is back under its cap.
    fn written(&self, len: usize) {
        let mut state = self.lock();
        self.uncount(&mut state, len);
        let past_cap = self.past_cap(&state);
        let held = if state.held.is_empty() || past_cap {
            Vec::new()
        } else {
            std::mem::take(&mut state.held)
        };
        let any_held = past_cap && !state.held.is_empty();
        drop(state);
        self.changed.notify_all();
        release_all(held, Release::Room);
        if any_held {
            self.expire_held();
        }
    }

    fn enqueue(&self, message: Queued) -> bool {
        let mut state = self.lock();
        if state.failed || state.finishing {
            return false;
        }
        let len = message.bytes.len();
        state.bytes += len;
        if let Some(responses) = &self.responses {
            responses.server_total.fetch_add(len, Ordering::Relaxed);
        }
        state.messages.push_back(message);
        drop(state);
        self.changed.notify_all();
        true
    }

    /// Takes `len` bytes off the queue's count and the server's.
    fn uncount(&self, state: &mut QueueState, len: usize) {
        state.bytes -= len;
        if let Some(responses) = &self.responses {
            responses.server_total.fetch_sub(len, Ordering::Relaxed);
        }
    }

    /// True if a call held since `since` is past the hold limit at `now`.
    fn expired(&self, since: Instant, now: Instant) -> bool {
        let limit = self.responses.as_ref().and_then(|r| r.hold_limit);
        limit.is_some_and(|limit| now.saturating_duration_since(since) >= limit)
    }

    /// True if a server's queue holds more than its cap.
    fn past_cap(&self, state: &QueueState) -> bool {
        self.responses
            .as_ref()
            .is_some_and(|responses| state.bytes > responses.cap)
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // Plain counts and buffers: a poisoned lock still holds sound data.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Releases each of `held`, in the order held.
fn release_all(held: Vec<Held>, release: Release) {
    for held in held {
        (held.call)(release);
    }
}

/// The most one write system call is given (see [`WriteQueue::write_whole`]).
const WRITE_PIECE: usize = 256 * 1024;

/// How often a waiting reader looks at the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::sync::Arc;
    use std::thread;

    use crate::socket_pair as pair;

    #[test]
    fn messages_are_written_in_order_and_the_writer_ends_after_finish() {
        let (ours, mut peer) = pair();
        let queue = Arc::new(WriteQueue::default());
        let writer = {
            let queue = Arc::clone(&queue);
            thread::spawn(move || queue.write_to(&ours))
        };
        assert!(queue.push(BytesMut::from(&b"one "[..])));
        assert!(queue.push(BytesMut::from(&b"two"[..])));
        queue.finish();
        assert!(
            !queue.push(BytesMut::from(&b"late"[..])),
            "nothing is queued after finish"
        );
        writer.join().unwrap();
        let mut written = String::new();
        peer.read_to_string(&mut written).unwrap();
        assert_eq!(written, "one two");
    }

    #[test]
    fn a_request_whose_call_has_ended_is_dropped_unwritten() {
        let (ours, mut peer) = pair();
        let queue = Arc::new(WriteQueue::default());
        assert!(queue.push_request(1, BytesMut::from(&b"one "[..])));
        assert!(queue.push_request(2, BytesMut::from(&b"two "[..])));
        assert!(queue.push(BytesMut::from(&b"reply"[..])));
        queue.finish();
        let ended = 2;
        queue.write_requests_to(&ours, |id| id != ended);
        assert_eq!(
            queue.queued_bytes(),
            0,
            "the dropped request's bytes are not counted"
        );
        drop(ours);
        let mut written = String::new();
        peer.read_to_string(&mut written).unwrap();
        assert_eq!(written, "one reply");
    }

    /// A held call that reports how it was released on `released`.
    fn reporting(released: &crossbeam_channel::Sender<Release>) -> HeldCall {
        let released = released.clone();
        Box::new(move |release| {
            let _ = released.send(release);
        })
    }

    #[test]
    fn a_held_call_is_released_once_the_writer_brings_the_queue_under_its_cap() {
        let (ours, mut peer) = pair();
        let total = Arc::new(AtomicUsize::new(0));
        let queue = Arc::new(WriteQueue::for_responses(10, None, Arc::clone(&total)));
        let (released, release) = crossbeam_channel::unbounded();
        queue.hold(Instant::now(), reporting(&released));
        assert_eq!(
            release.try_recv(),
            Ok(Release::Room),
            "under the cap: at once"
        );
        assert!(queue.push(BytesMut::from(&b"more than ten bytes"[..])));
        assert!(queue.is_past_cap());
        assert_eq!(
            total.load(Ordering::SeqCst),
            19,
            "counted in the server's total"
        );
        queue.hold(Instant::now(), reporting(&released));
        assert!(release.try_recv().is_err(), "held while past the cap");
        let writer = {
            let queue = Arc::clone(&queue);
            thread::spawn(move || queue.write_to(&ours))
        };
        let timeout = Duration::from_secs(5);
        assert_eq!(release.recv_timeout(timeout), Ok(Release::Room));
        assert_eq!(total.load(Ordering::SeqCst), 0);
        queue.finish();
        writer.join().unwrap();
        let mut written = String::new();
        peer.read_to_string(&mut written).unwrap();
        assert_eq!(written, "more than ten bytes");
    }

    #[test]
    fn held_calls_are_released_as_closed_at_the_end_and_none_is_held_after_it() {
        let queue = WriteQueue::for_responses(0, None, Arc::new(AtomicUsize::new(0)));
        let (released, release) = crossbeam_channel::unbounded();
        assert!(queue.push(BytesMut::from(&b"unwritten"[..])));
        queue.hold(Instant::now(), reporting(&released));
        assert!(release.try_recv().is_err());
        queue.finish();
        assert_eq!(release.try_recv(), Ok(Release::Closed));
        queue.hold(Instant::now(), reporting(&released));
        assert_eq!(
            release.try_recv(),
            Ok(Release::Closed),
            "after the end: at once"
        );
    }

    #[test]
    fn a_call_held_past_the_hold_limit_is_released_as_expired() {
        let limit = Duration::from_millis(100);
        let queue = WriteQueue::for_responses(0, Some(limit), Arc::new(AtomicUsize::new(0)));
        let (released, release) = crossbeam_channel::unbounded();
        assert!(queue.push(BytesMut::from(&b"unwritten"[..])));
        let long_ago = Instant::now() - limit;
        queue.hold(long_ago, reporting(&released));
        assert_eq!(
            release.try_recv(),
            Ok(Release::Expired),
            "held too long: at once"
        );
        queue.hold(Instant::now(), reporting(&released));
        queue.expire_held();
        assert!(release.try_recv().is_err(), "not yet");
        // The reading thread's wait for room looks at the held calls as it waits.
        let stop = AtomicBool::new(false);
        thread::scope(|scope| {
            scope.spawn(|| queue.wait_at_most(0, &stop));
            assert_eq!(release.recv_timeout(5 * limit), Ok(Release::Expired));
            stop.store(true, Ordering::SeqCst);
        });
    }

    #[test]
    fn the_hold_limit_is_kept_while_one_long_message_is_written() {
        // A peer reading a trickle holds the writer inside one message for as long as it
        // likes: a call held meanwhile must be refused at the limit, not when the message
        // ends (here after seconds).
        let (ours, mut peer) = pair();
        let limit = Duration::from_millis(100);
        let queue = Arc::new(WriteQueue::for_responses(
            0,
            Some(limit),
            Arc::new(AtomicUsize::new(0)),
        ));
        let (released, release) = crossbeam_channel::unbounded();
        assert!(queue.push(BytesMut::zeroed(32 * 1024 * 1024)));
        queue.hold(Instant::now(), reporting(&released));
        let writer = {
            let queue = Arc::clone(&queue);
            thread::spawn(move || queue.write_to(&ours))
        };
        let started = Instant::now();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut read = 0;
        while release.try_recv().is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "not refused after 5 s"
            );
            read += peer.read(&mut chunk).unwrap();
            thread::sleep(Duration::from_millis(5));
        }
        // Before the limit was kept inside a message: refused only when the writer had
        // written it all, the peer having read 29.8 of its 32 MiB.
        assert!(
            read < 16 * 1024 * 1024,
            "refused after {read} bytes were read"
        );
        queue.finish();
        drop(peer);
        writer.join().unwrap();
    }

    #[test]
    fn a_failed_write_drops_the_queue_and_releases_a_waiting_reader() {
        let (ours, peer) = pair();
        drop(peer);
        let queue = Arc::new(WriteQueue::default());
        let writer = {
            let queue = Arc::clone(&queue);
            thread::spawn(move || queue.write_to(&ours))
        };
        // Writes to a closed peer fail once the reset arrives; keep queueing until then.
        while queue.push(BytesMut::zeroed(64 * 1024)) {
            thread::sleep(Duration::from_millis(1));
        }
        queue.wait_at_most(0, &AtomicBool::new(false));
        writer.join().unwrap();
    }
}
