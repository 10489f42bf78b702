//! # netrpc: an RPC framework built by hand from sockets up
//!
//! netrpc follows Go's `net/rpc`: a service is a type whose methods take one argument and
//! return one reply or an error; a client calls `"Service.Method"` over TCP, blocking (`call`)
//! or not (`go`). It is built in three small layers, each usable and readable on its own:
//!
//! ```text
//!            your code: services and callers
//!                          │
//!   rpc-core     calls  <-> frames   Server, Client, Call, service!, RpcError
//!        │                   │
//!   rpc-codec    values <-> bytes    Codec trait, postcard (default), JSON
//!                            │
//!   rpc-transport frames <-> sockets  frame header, FrameDecoder, mio event loop
//! ```
//!
//! This crate is the facade: it re-exports the layers so users depend on `netrpc` alone.
//! The wire format is specified in `docs/PROTOCOL.md`.

pub use rpc_codec as codec;
pub use rpc_core as core;
pub use rpc_transport as transport;
