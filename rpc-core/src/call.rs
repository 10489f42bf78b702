//! `Call` and `Completion`: how the result of a `go` call reaches the caller.
//!
//! A completion is never dropped: each `Call` owns a channel with room for its one result,
//! and [`DoneSender`] (for gathering many calls on one channel) can only be made unbounded.
//! So the event loop's send never blocks and never fails for want of room, unlike Go's
//! `Call.done`, which drops a reply when the caller's channel is full.
//!
//! [`Call::wait`] does more than receive: through `ReplyReader` it reads the client's
//! connection on the waiting thread while nobody else does, so a reply reaches its caller
//! without a hand-off from the client's event loop.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use rpc_transport::clock::deadline_after;

use crate::error::RpcError;

/// A call in flight, returned by [`crate::Client::go`] (Go: `*rpc.Call`).
///
/// Its result arrives on [`Call::done`] exactly once: the reply, the method's error, a
/// timeout at the call's deadline, or a connection error. Dropping a `Call` does not cancel
/// it; the result is then discarded. To give up on it, pass [`Call::seq`] to
/// [`crate::Client::cancel`].
pub struct Call<R> {
    seq: u64,
    timeout: Duration,
    done: Receiver<Result<R, RpcError>>,
    /// The client's connection, for [`Call::wait`] to read its reply itself; weak, so that
    /// a `Call` never keeps a dropped client's connection open.
    reader: Option<Weak<dyn ReplyReader>>,
    /// [`Call::try_result`] has returned the result: the channel, empty and disconnected
    /// now, must not read as a second one. A lock, not a flag: two threads trying at once
    /// must not see one the result and the other the emptied channel as `Shutdown`.
    taken: Mutex<bool>,
}

/// Reads a client's replies on the thread that waits for one (the client's connection).
pub(crate) trait ReplyReader: Send + Sync {
    /// Reads replies on this thread, completing each call they answer, while nobody else
    /// reads the connection: until `arrived` returns true, `limit` passes, or the earliest
    /// deadline of the client's pending calls comes (the loop delivers their timeouts).
    fn read_replies(&self, limit: Instant, arrived: &dyn Fn() -> bool);
}

impl<R> Call<R> {
    pub(crate) fn new(seq: u64, timeout: Duration, done: Receiver<Result<R, RpcError>>) -> Self {
        Call {
            seq,
            timeout,
            done,
            reader: None,
            taken: Mutex::new(false),
        }
    }

    /// Lets [`Call::wait`] read the reply from `reader` on the waiting thread.
    pub(crate) fn read_by(mut self, reader: Weak<dyn ReplyReader>) -> Self {
        self.reader = Some(reader);
        self
    }

    /// The call's sequence id on its connection.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The channel the result arrives on (Go: `Call.Done`); usable in `crossbeam_channel::select!`.
    /// The result comes once; after it the channel is empty and disconnected, which a second
    /// `recv` reports as an error: that is not a second result.
    pub fn done(&self) -> &Receiver<Result<R, RpcError>> {
        &self.done
    }

    /// Blocks until the result arrives. While nobody else is reading the client's
    /// connection, this thread reads the replies itself, as a blocking call does (see
    /// [`crate::Client::recv_completion`]); otherwise the client's event loop delivers.
    ///
    /// # Errors
    ///
    /// The call's error. The client's event loop fails the call at its deadline; should
    /// that loop be gone, this still returns [`RpcError::Timeout`] shortly after the deadline.
    /// If [`Call::try_result`] has taken the result already, [`RpcError::Shutdown`] at once.
    pub fn wait(self) -> Result<R, RpcError> {
        if *self.taken.lock().unwrap_or_else(PoisonError::into_inner) {
            return Err(RpcError::Shutdown);
        }
        let limit = deadline_after(Instant::now(), self.timeout.saturating_add(WAIT_GRACE));
        if let Some(reader) = self.reader.as_ref().and_then(Weak::upgrade) {
            // Once this wait holds the client's last handle, the client was dropped: stop
            // reading, so that dropping `reader` closes the connection as that drop would
            // have, and the call fails with `Shutdown`.
            let dropped = || Arc::strong_count(&reader) == 1;
            reader.read_replies(limit, &|| !self.done.is_empty() || dropped());
        }
        match self.done.recv_deadline(limit) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => Err(RpcError::Timeout {
                after: self.timeout,
            }),
            Err(RecvTimeoutError::Disconnected) => Err(RpcError::Shutdown),
        }
    }

    /// The result, if it has arrived and was not taken already: it is returned once, and
    /// `None` every time after.
    pub fn try_result(&self) -> Option<Result<R, RpcError>> {
        // Only a flag is set under the lock: a panic cannot leave it half done.
        let mut taken = self.taken.lock().unwrap_or_else(PoisonError::into_inner);
        if *taken {
            return None;
        }
        let result = match self.done.try_recv() {
            Ok(result) => result,
            Err(TryRecvError::Empty) => return None,
            Err(TryRecvError::Disconnected) => Err(RpcError::Shutdown),
        };
        *taken = true;
        Some(result)
    }
}

impl<R> fmt::Debug for Call<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("seq", &self.seq)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The result of one call gathered on a shared channel (see [`crate::Client::go_with`]).
#[derive(Debug)]
pub struct Completion<R> {
    /// The call's sequence id, as returned by `go_with`.
    pub seq: u64,
    /// The `Service.Method` called.
    pub method: String,
    /// The reply or the error.
    pub result: Result<R, RpcError>,
}

/// The sending half of a channel that gathers many calls' completions.
///
/// Made only by [`done_channel`], which makes it unbounded: a completion can never be dropped
/// for lack of room, and delivering one never blocks the event loop.
pub struct DoneSender<R> {
    sender: Sender<Completion<R>>,
}

impl<R> DoneSender<R> {
    pub(crate) fn send(&self, completion: Completion<R>) {
        // Fails only if every receiver is gone: nobody is left to want the result.
        let _ = self.sender.send(completion);
    }
}

impl<R> Clone for DoneSender<R> {
    fn clone(&self) -> Self {
        DoneSender {
            sender: self.sender.clone(),
        }
    }
}

impl<R> fmt::Debug for DoneSender<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DoneSender").finish_non_exhaustive()
    }
}

/// A channel to gather the completions of many `go_with` calls (Go: passing one `done`
/// channel to many `Client.Go` calls).
pub fn done_channel<R>() -> (DoneSender<R>, Receiver<Completion<R>>) {
    let (sender, receiver) = crossbeam_channel::unbounded();
    (DoneSender { sender }, receiver)
}

/// Extra time `Call::wait` allows past the deadline before giving up on the event loop.
const WAIT_GRACE: Duration = Duration::from_secs(2);
