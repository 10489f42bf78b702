//! Middleware: logging on both sides, a token-bucket rate limit, and trace ids that a handler
//! reads, all around ordinary `Arith` calls over 127.0.0.1.
//!
//! Tutorial: "middleware around every call: logging (method, status, latency), rate limiting
//! (token bucket), tracing (a trace/span id carried with the call)", SEEDS §7. Go's net/rpc has
//! none; gRPC calls them interceptors.
//!
//! Run: `cargo run --example middleware`
//!
//! Prints one log line per call from the client and from the server, the trace ids the
//! server's handler saw, and the fourth call refused by the server's rate limit of three calls
//! at once (`Throttled`, retryable).

#[path = "support/arith.rs"]
mod arith;

use std::error::Error;

use arith::{Args, ArithClient, ArithServer, Calculator};
use netrpc::core::middleware::{CallContext, Logging, RateLimit, Tracing};
use netrpc::{service, Client, RpcError, Server, ServiceError};

service! {
    /// Tells the caller which trace its call belongs to.
    pub trait Whoami {
        const NAME = "Whoami";
        type Server = WhoamiServer;
        type Client = WhoamiClient;

        /// The trace ids this handler sees, as text.
        #[rpc(name = "Trace", go = trace_go, const = TRACE)]
        fn trace(nothing: ()) -> String;
    }
}

struct Handler;

impl Whoami for Handler {
    fn trace(&self, _: ()) -> Result<String, ServiceError> {
        // No extra parameter: the call's context is current on the handler's thread.
        let context = CallContext::current().ok_or("not inside a call")?;
        let ids = context.trace().ok_or("the caller sent no trace ids")?;
        Ok(format!(
            "{} called from {}: {ids}",
            context.method(),
            context.peer_addr()
        ))
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    // Server: log every call, and allow 3 calls at once, refilled at 1 a second.
    let server = Server::builder()
        .middleware(Logging::to(|record| println!("  [log] {record}")))
        .middleware(RateLimit::per_second(1.0, 3))
        .build();
    server.register(ArithServer::new(Calculator))?;
    server.register(WhoamiServer::new(Handler))?;
    let running = server.serve("127.0.0.1:0")?;

    // Client: trace ids on every call, and a log line per call.
    let client = Client::builder()
        .middleware(Tracing::new())
        .middleware(Logging::to(|record| println!("  [log] {record}")))
        .dial(running.local_addr())?;

    println!("a traced call:");
    let whoami = WhoamiClient::new(client.clone());
    println!("  handler saw: {}", whoami.trace(&())?);

    println!("three more calls at once; the limit allows three, and the traced call took one:");
    let arith = ArithClient::new(client);
    for a in 1..=3 {
        match arith.multiply(&Args { a, b: 10 }) {
            Ok(product) => println!("  Arith.Multiply({a}, 10) = {product}"),
            Err(RpcError::Throttled) => println!("  Arith.Multiply({a}, 10): throttled, try later"),
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}
