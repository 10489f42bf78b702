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

use std::collections::VecDeque;
use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;

/// The queue (see the module doc).
#[derive(Debug, Default)]
pub(crate) struct WriteQueue {
    state: Mutex<QueueState>,
    /// Signalled when a message is queued, when one has been written, and at the end.
    changed: Condvar,
}

#[derive(Debug, Default)]
struct QueueState {
    messages: VecDeque<Queued>,
    /// Bytes queued or being written.
    bytes: usize,
    /// No message will be queued any more: the writer ends once the queue is empty.
    finishing: bool,
    /// A write failed (the socket is shut down): nothing more is written.
    failed: bool,
}

/// One message waiting to be written.
#[derive(Debug)]
struct Queued {
    bytes: BytesMut,
    /// The id of the client call this request is for: written only while the call waits.
    call_id: Option<u64>,
}

impl WriteQueue {
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
        }
    }

    /// No more messages: the writer writes what is queued, then ends.
    pub(crate) fn finish(&self) {
        self.lock().finishing = true;
        self.changed.notify_all();
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
                if message.call_id.is_some_and(|id| !call_waits(id)) {
                    self.lock().bytes -= message.bytes.len();
                    self.changed.notify_all();
                    continue;
                }
                let mut stream = stream;
                if stream.write_all(&message.bytes).is_err() {
                    let _ = stream.shutdown(Shutdown::Both);
                    let mut state = self.lock();
                    state.failed = true;
                    state.messages.clear();
                    state.bytes = 0;
                    drop(state);
                    self.changed.notify_all();
                    return;
                }
                self.lock().bytes -= message.bytes.len();
                self.changed.notify_all();
            }
        }
    }

    fn enqueue(&self, message: Queued) -> bool {
        let mut state = self.lock();
        if state.failed || state.finishing {
            return false;
        }
        state.bytes += message.bytes.len();
        state.messages.push_back(message);
        drop(state);
        self.changed.notify_all();
        true
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // Plain counts and buffers: a poisoned lock still holds sound data.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How often a waiting reader looks at the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::sync::Arc;
    use std::thread;

    use crate::jsonrpc::socket_pair as pair;

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
