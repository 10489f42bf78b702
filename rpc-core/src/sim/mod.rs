//! A deterministic simulated network for testing distributed code (SEEDS §8; Go: MIT 6.824's
//! `labrpc`): calls travel between named client ends and named servers through one process,
//! with seeded drops, delays and reordering, disconnects and partitions, and RPC counts, and no
//! socket anywhere.
//!
//! The client is netrpc's own [`crate::Client`], so typed clients (`ArithClient::new(client)`,
//! [`crate::cluster::TaskQueueClient`]) and [`crate::cluster::run_worker`] run unchanged; the
//! server is a [`crate::Server`] with its services, middleware and worker pool.
//!
//! ```text
//!  Client ("end-1") ── request ──► SimNetwork ── at now + delay ──► Server "kv-1"
//!   pending calls                   fate(seed, end, n)               lookup, worker pool
//!        ▲                          timer heap, 1 thread                   │
//!        └──────────── reply ◄───── drop? delay? ◄──────────── reply ──────┘
//! ```
//!
//! | labrpc | here |
//! |---|---|
//! | `MakeNetwork()` | [`SimNetwork::new`]`(seed)` |
//! | `net.MakeEnd(name)` | [`SimNetwork::client`]`(name)`: a real [`crate::Client`] |
//! | `net.AddServer(name, server)`, `DeleteServer` | [`SimNetwork::add_server`], [`SimNetwork::delete_server`] |
//! | `net.Connect(end, server)`, `Enable(end, bool)` | [`SimNetwork::connect`], [`SimNetwork::enable`] |
//! | `Reliable(false)` (10% loss, 0-27 ms delays) | [`SimNetwork::set_reliable`], [`SimNetwork::set_drop_rate`] |
//! | `LongDelays`, `LongReordering` | [`SimNetwork::set_long_delays`], [`SimNetwork::set_long_reordering`] |
//! | (tests split the network by hand) | [`SimNetwork::partition`], [`SimNetwork::heal`] |
//! | `GetCount(server)`, `GetTotalBytes()` | [`SimNetwork::rpc_count`], [`SimNetwork::total_bytes`], [`SimNetwork::stats`] |
//!
//! # What a caller sees
//!
//! | what happens | the call gets |
//! |---|---|
//! | request or reply dropped; path broken while a message travels | [`crate::RpcError::Timeout`] at its own deadline, as over a real network |
//! | end disabled, connected to no server or to one not on the network, or partitioned from it | [`crate::RpcError::Unreachable`] (retryable) after a short delay (up to 100 ms, or 7 s with long delays) |
//! | the network dropped | pending calls: [`crate::RpcError::ConnectionLost`]; later calls: [`crate::RpcError::Shutdown`] |
//!
//! labrpc instead makes every failed call return `false` after a delay; netrpc's caller
//! already handles timeouts, so a lost message looks exactly like one lost on a socket.
//!
//! # Determinism
//!
//! Each message's fate is a pure function of the seed, the end's name and the message's index
//! on that end ([`Fate::decide`]): request `n` of end `E` is dropped, and delayed by the same
//! amount, in every run with the same seed, whatever other threads do. Its reply's fate is
//! drawn from the same numbers, keyed by the request. A shared generator advanced in arrival
//! order would not give this: racing threads would take each other's numbers.
//!
//! Deterministic: which requests and replies are dropped, every delay, which calls are
//! unreachable, and so each call's outcome whenever its delays are well inside its timeout and
//! one thread calls through the end. Not deterministic: which of several threads sharing one
//! end sends message `n`; the exact instants (delays are real time on a real clock, handlers
//! run on real threads); and so the order in which a server sees calls from different ends.
//!
//! # Threads and bounds
//!
//! One scheduler thread per network runs a heap of timed events (deliver a request, a reply,
//! a failure; check a client's `go` deadlines); handlers run on the server's worker pool.
//! At most [`MAX_QUEUED_MESSAGES`] messages are in flight; beyond that a message is dropped
//! and counted in [`SimStats::overflowed`]. Dropping the last [`SimNetwork`] handle stops the
//! thread.

pub(crate) mod dispatch;
pub(crate) mod end;
mod fate;
mod network;
pub(crate) mod router;
mod scheduler;
mod stats;

pub(crate) use end::SimLink;
pub use fate::{
    Fate, SimConditions, DEFAULT_DROP_RATE, DEFAULT_MAX_DELAY, DEFAULT_REORDER_DELAY,
    LONG_UNREACHABLE_DELAY, SHORT_UNREACHABLE_DELAY,
};
pub use network::SimNetwork;
pub use scheduler::MAX_QUEUED_MESSAGES;
pub use stats::SimStats;
