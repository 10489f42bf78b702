//! `Batch`: many `go` calls, one write.
//!
//! A `go` call's frame normally waits for the client event loop, which writes every frame
//! queued by the end of its turn. A thread that starts several calls at once (say, one for
//! each reply that just arrived) can do better: in a batch, each frame is only queued
//! ("corked"), and the batch writes them all from the caller's own thread when it is sent or
//! dropped. One system call, and no wake-up of the event loop. Replies, timeouts and errors
//! arrive exactly as for [`Client::go`]; only the writing differs. A thread that waits for
//! one of the batch's calls before sending it (`Call::wait`, `Client::recv_completion`)
//! writes what the batch has queued so far first.
//!
//! ```text
//!  caller thread                           client event loop
//!  let batch = client.batch();
//!  batch.go(..)  encode, queue  ┐
//!  batch.go(..)  encode, queue  ├─ nothing written, nobody woken
//!  batch.go(..)  encode, queue  ┘
//!  drop(batch)   one write ─────────────►  server
//!                                          reads the replies, completes each call
//! ```

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::call::{Call, DoneSender};
use crate::client::{CallKind, Client};

/// `go` calls written together, in one system call, when the batch is sent or dropped.
///
/// Made by [`Client::batch`]. A batch that has queued [`BATCH_WRITE_BYTES`] writes what it
/// holds at once and goes on, so a long batch never runs into
/// [`crate::ClientConfig::max_unsent_bytes`]. Calls that other threads start on the same
/// client meanwhile are written as usual, and may carry some of the batch's frames with them.
///
/// A batch that is leaked (`std::mem::forget`) leaves its frames queued until the client's
/// next write; its calls fail by their deadline at the latest.
///
/// # Examples
///
/// ```no_run
/// use rpc_core::{done_channel, Client};
///
/// let client = Client::dial("127.0.0.1:1234")?;
/// let (done, completions) = done_channel::<i64>();
/// {
///     let batch = client.batch();
///     for b in 1..=16i64 {
///         batch.go_with("Arith.Multiply", &(7i64, b), &done);
///     }
/// } // one write for all 16 calls
/// for _ in 0..16 {
///     let completion = completions.recv().expect("every call completes");
///     println!("call {}: {:?}", completion.seq, completion.result);
/// }
/// # Ok::<(), rpc_core::RpcError>(())
/// ```
#[derive(Debug)]
#[must_use = "a batch writes its calls when it is sent or dropped"]
pub struct Batch<'a> {
    client: &'a Client,
}

impl Client {
    /// Starts a [`Batch`]: `go` calls made through it are written together, by this thread,
    /// when it is sent or dropped.
    pub fn batch(&self) -> Batch<'_> {
        self.batch_opened();
        Batch { client: self }
    }
}

impl Batch<'_> {
    /// Like [`Client::go`]: the call's result arrives on the returned [`Call`].
    pub fn go<A, R>(&self, method: &str, args: &A) -> Call<R>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned + Send + 'static,
    {
        self.go_timeout(method, args, self.client.config().call_timeout)
    }

    /// Like [`Client::go_timeout`]: a deadline of `timeout` for this call.
    pub fn go_timeout<A, R>(&self, method: &str, args: &A, timeout: Duration) -> Call<R>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned + Send + 'static,
    {
        let call = self
            .client
            .start_go(method, args, timeout, CallKind::InBatch);
        self.write_if_large();
        call
    }

    /// Like [`Client::go_with`]: the call's [`crate::Completion`] goes to `done`. Returns
    /// the call's sequence id.
    pub fn go_with<A, R>(&self, method: &str, args: &A, done: &DoneSender<R>) -> u64
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned + Send + 'static,
    {
        let seq = self
            .client
            .start_go_with(method, args, done, CallKind::InBatch);
        self.write_if_large();
        seq
    }

    /// Writes the batch now; the same as dropping it. A failed write closes the connection,
    /// and the batch's calls then fail with the connection's error.
    pub fn send(self) {
        // Dropping writes.
    }

    /// Writes what the batch has queued once it reaches [`BATCH_WRITE_BYTES`] (or the
    /// client's own cap on unsent bytes, if lower), so the next call is not refused for it.
    fn write_if_large(&self) {
        let limit = BATCH_WRITE_BYTES.min(self.client.config().max_unsent_bytes);
        if self.client.unsent_bytes() >= limit {
            self.client.flush_batch();
        }
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        self.client.flush_batch();
        self.client.batch_sent();
    }
}

/// How many queued bytes make a [`Batch`] write before it is sent: large enough that a
/// write of small calls carries hundreds of them, small enough to stay far below the
/// client's default cap on unsent bytes.
pub const BATCH_WRITE_BYTES: usize = 64 * 1024;
