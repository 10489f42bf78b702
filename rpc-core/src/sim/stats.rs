//! `SimStats`: what happened to the messages of a simulated network, counted as it runs.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of a [`super::SimNetwork`]'s messages since it was made (see
/// [`super::SimNetwork::stats`]). Every request sent is, in the end, exactly one of dropped,
/// unreachable, overflowed, lost in flight or delivered (once its delay has passed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SimStats {
    /// Requests clients sent into the network.
    pub requests_sent: u64,
    /// Requests the unreliable network dropped; their callers time out.
    pub requests_dropped: u64,
    /// Requests that reached a server (the sum of every server's `rpc_count`).
    pub requests_delivered: u64,
    /// Calls that failed with `Unreachable`: the end disabled, connected to no server or to
    /// one not on the network, or partitioned from it.
    pub unreachable: u64,
    /// Replies servers sent back.
    pub replies_sent: u64,
    /// Replies the unreliable network dropped; their callers time out.
    pub replies_dropped: u64,
    /// Replies that reached their client end.
    pub replies_delivered: u64,
    /// Requests or replies lost because the path broke while they travelled (the end was
    /// disabled, reconnected or partitioned, or the server removed); their callers time out.
    pub lost_in_flight: u64,
    /// Messages refused because the network already held its maximum in flight.
    pub overflowed: u64,
    /// Bytes of every request and reply frame sent into the network (labrpc's total bytes).
    pub total_bytes: u64,
}

/// The live counters behind [`SimStats`].
#[derive(Debug, Default)]
pub(crate) struct SimCounters {
    pub(crate) requests_sent: AtomicU64,
    pub(crate) requests_dropped: AtomicU64,
    pub(crate) requests_delivered: AtomicU64,
    pub(crate) unreachable: AtomicU64,
    pub(crate) replies_sent: AtomicU64,
    pub(crate) replies_dropped: AtomicU64,
    pub(crate) replies_delivered: AtomicU64,
    pub(crate) lost_in_flight: AtomicU64,
    pub(crate) overflowed: AtomicU64,
    pub(crate) total_bytes: AtomicU64,
}

impl SimCounters {
    /// Adds one to `counter`.
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `bytes` to the byte count.
    pub(crate) fn add_bytes(&self, bytes: usize) {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        self.total_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> SimStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        SimStats {
            requests_sent: load(&self.requests_sent),
            requests_dropped: load(&self.requests_dropped),
            requests_delivered: load(&self.requests_delivered),
            unreachable: load(&self.unreachable),
            replies_sent: load(&self.replies_sent),
            replies_dropped: load(&self.replies_dropped),
            replies_delivered: load(&self.replies_delivered),
            lost_in_flight: load(&self.lost_in_flight),
            overflowed: load(&self.overflowed),
            total_bytes: load(&self.total_bytes),
        }
    }
}
