//! # rpc-core: calls to frames and back
//!
//! The core of netrpc: [`Server`], [`Client`] (blocking [`Client::call`] and Go-style
//! [`Client::go`]), [`RpcError`], and the [`service!`] macro. It turns calls into frames for
//! `rpc-transport` and values into bytes with `rpc-codec`; it never touches a socket itself.
//!
//! ```text
//!  Client::call("Arith.Multiply", &args)           Server (registered services)
//!        │ encode args (rpc-codec)                        ▲ decode args, run, encode reply
//!        ▼                                                │
//!   request frame ──── rpc-transport event loops ────► dispatch table ──► worker pool
//!   reply frame   ◄─────────────────────────────────── reply frame
//! ```

mod batch;
pub mod call;
mod catch_panic;
mod client;
mod client_builder;
mod client_conn;
mod client_loop;
pub mod cluster;
pub mod error;
pub mod error_body;
mod hello;
pub mod http;
#[cfg(feature = "json")]
pub mod jsonrpc;
mod link;
#[doc(hidden)]
pub mod macro_support;
mod macros;
pub mod middleware;
mod open_files;
mod pending;
mod pool;
mod reply_cork;
mod server;
mod server_config;
mod server_conn;
pub mod service;
pub mod sim;
mod stats;
mod thread_state;

pub use batch::{Batch, BATCH_WRITE_BYTES};
pub use call::{done_channel, Call, Completion, DoneSender};
pub use client::Client;
pub use client_builder::{
    ClientBuilder, ClientConfig, DEFAULT_CALL_TIMEOUT, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_PENDING_CALLS, DEFAULT_MAX_UNSENT_BYTES,
};
pub use error::RpcError;
pub use error_body::{ErrorBody, ErrorCode};
pub use http::{HttpConfig, HttpHandle, HttpStats};
#[cfg(feature = "json")]
pub use jsonrpc::{JsonRpcClient, JsonRpcClientBuilder, JsonRpcHandle};
pub use rpc_codec::CodecKind;
pub use server::{Server, ServerHandle};
pub use server_config::{
    default_max_connections, ServerBuilder, ServerConfig, DEFAULT_FIRST_FRAME_TIMEOUT,
    DEFAULT_MAX_CALLS, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_IN_FLIGHT_PER_CONN,
    DEFAULT_MAX_QUEUED_BYTES, DEFAULT_MAX_WORKERS, RESERVED_FILES,
};
pub use service::{Dispatch, DispatchError, MethodHandler, MethodTable, Service, ServiceError};
pub use stats::{MethodStats, ServerStats, ERROR_CODE_SLOTS};

/// Two ends of one loopback TCP connection (ours, the peer's), for the modules' tests.
#[cfg(test)]
fn socket_pair() -> (std::net::TcpStream, std::net::TcpStream) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ours = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (peer, _) = listener.accept().unwrap();
    (ours, peer)
}
