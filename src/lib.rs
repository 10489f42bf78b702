//! # netrpc: an RPC framework built by hand from sockets up
//!
//! netrpc follows Go's `net/rpc`: a service is a type whose methods take one argument and
//! return one reply or an error; a client calls `"Service.Method"` over TCP, blocking
//! ([`Client::call`]) or not ([`Client::go`]). No async runtime: a few event-loop threads move
//! bytes, a pool of worker threads runs handlers, and callers block only themselves.
//!
//! It is built in three small layers, each usable and readable on its own:
//!
//! ```text
//!            your code: services and callers
//!                          │
//!   rpc-core      calls  <-> frames   Server, Client, Call, service!, RpcError
//!        │                   │
//!   rpc-codec     values <-> bytes    Codec trait, postcard (default), JSON
//!                            │
//!   rpc-transport frames <-> sockets  frame header, FrameDecoder, mio event loop
//! ```
//!
//! This crate is the facade: it re-exports the layers so users depend on `netrpc` alone.
//! The wire format is specified in `docs/PROTOCOL.md`, and the path of one call through the
//! code in `docs/ARCHITECTURE.md`.
//!
//! # Example
//!
//! ```
//! use netrpc::{service, Client, Server, ServiceError};
//!
//! service! {
//!     /// Squares numbers.
//!     pub trait Square {
//!         const NAME = "Square";
//!         type Server = SquareServer;
//!         type Client = SquareClient;
//!
//!         #[rpc(name = "Of", go = of_go, const = OF)]
//!         fn of(x: i64) -> i64;
//!     }
//! }
//!
//! struct Squarer;
//! impl Square for Squarer {
//!     fn of(&self, x: i64) -> Result<i64, ServiceError> {
//!         x.checked_mul(x).ok_or_else(|| "overflow".into())
//!     }
//! }
//!
//! let server = Server::new();
//! server.register(SquareServer::new(Squarer))?;
//! let running = server.serve("127.0.0.1:0")?;
//!
//! let client = Client::dial(running.local_addr())?;
//! let square = SquareClient::new(client.clone());
//! assert_eq!(square.of(&12)?, 144);
//! assert_eq!(square.of_go(&3).wait()?, 9);
//! let untyped: i64 = client.call("Square.Of", &5i64)?;
//! assert_eq!(untyped, 25);
//! # Ok::<(), netrpc::RpcError>(())
//! ```

pub use rpc_codec as codec;
pub use rpc_core as core;
pub use rpc_core::cluster;
pub use rpc_transport as transport;
pub use rpc_transport::tls;

pub use rpc_codec::{Codec, CodecError, CodecKind};
pub use rpc_core::{
    done_channel, service, Batch, Call, Client, ClientBuilder, Completion, DoneSender, ErrorBody,
    ErrorCode, RpcError, Server, ServerBuilder, ServerHandle, Service, ServiceError,
};
#[cfg(feature = "json")]
pub use rpc_core::{JsonRpcClient, JsonRpcClientBuilder, JsonRpcHandle};
