//! Go `net/rpc/jsonrpc` compatibility: the same services and calls over Go's JSON wire, so a
//! Go program can call a netrpc server ([`crate::Server::serve_jsonrpc`], Go's side:
//! `jsonrpc.Dial`) and netrpc can call a Go server ([`JsonRpcClient`], Go's side:
//! `jsonrpc.ServeConn`).
//!
//! The wire is JSON-RPC 1.0 as Go writes it: each direction of a TCP connection carries a
//! stream of JSON objects with no framing (Go writes a newline after each; whitespace between
//! objects is skipped). Requests may be pipelined and are answered in any order, matched by
//! `id`.
//!
//! ```text
//! client → server  {"method":"Arith.Multiply","params":[{"A":7,"B":8}],"id":0}
//! server → client  {"id":0,"result":56,"error":null}
//! server → client  {"id":1,"result":null,"error":"divide by zero"}
//! ```
//!
//! - `params` is an array holding the one argument; `id` is a `uint64` from Go's client, but
//!   the server echoes any JSON value verbatim (`null` if absent).
//! - On success `error` is `null`; on failure `result` is `null` and `error` the text. Go's
//!   server texts for unknown names are `rpc: can't find service S.M`, `rpc: can't find
//!   method S.M` and `rpc: service/method request ill-formed: X`; netrpc's server uses the same.
//! - Go field names are capitalised on the wire (`Args{A, B}` is `{"A":7,"B":8}`): give Rust
//!   types `#[serde(rename_all = "PascalCase")]`, as `examples/support/arith.rs` does.
//!
//! Bounds: a message is at most `limits.max_body_len` bytes (4 MiB by default) and must arrive
//! whole within `limits.frame_timeout` (10 s) of its first byte; nesting is capped by the JSON
//! codec's guard. Breaking a bound closes the connection.
//!
//! Differences from Go: a `params` array of more or fewer than one value is refused (Go takes
//! the first, or the zero value); the server answers bytes it cannot read with one error
//! response (id `null`) before closing (Go closes silently); a response with both `result` and
//! `error` `null` decodes as the reply `null` (Go's client fails the connection).

mod client;
mod client_pending;
mod message;
mod reader;
mod server;
mod server_conn;
mod stream;
mod write_queue;

pub use client::{JsonRpcClient, JsonRpcClientBuilder};
pub use server::JsonRpcHandle;
