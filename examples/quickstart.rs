//! Quickstart: an `Arith` server and a client in one process, over real TCP on 127.0.0.1.
//!
//! Go: `rpc.Register(new(Arith))`, `rpc.Dial`, `client.Call("Arith.Multiply", ...)` and
//! `client.Go(...)`, as in every tutorial of SEEDS §1.
//!
//! Run: `cargo run --example quickstart`
//!
//! Prints the server's address, a blocking call's reply, a `go` call's reply, three `go` calls
//! sent in one batch, three calls gathered on one channel, the method's own error for a
//! division by zero, and the same call made untyped.

#[path = "support/arith.rs"]
mod arith;

use std::error::Error;
use std::time::Duration;

use arith::{Args, ArithClient, ArithServer, Calculator};
use netrpc::{done_channel, Client, Server};

fn main() -> Result<(), Box<dyn Error>> {
    // Server: register the service under its own name, "Arith", and listen on a free port.
    let server = Server::new();
    server.register(ArithServer::new(Calculator))?;
    let running = server.serve("127.0.0.1:0")?;
    println!("server listening on {}", running.local_addr());

    // Client: dial, then call through the typed client the service! macro generated.
    let arith = ArithClient::new(Client::dial(running.local_addr())?);
    let args = Args { a: 7, b: 8 };

    let product = arith.multiply(&args)?;
    println!("call  Arith.Multiply({}, {}) = {product}", args.a, args.b);

    // go: returns at once; the reply arrives on the call's channel (Go: Call.Done).
    let pending = arith.sum_go(&args);
    println!("go    Arith.Sum started as call #{}", pending.seq());
    let sum = pending.wait()?;
    println!("go    Arith.Sum({}, {}) = {sum}", args.a, args.b);

    // A batch: go calls queued together and written in one system call when it is dropped.
    let products: Vec<_> = {
        let batch = arith.client().batch();
        (1..=3)
            .map(|b| {
                (
                    b,
                    batch.go::<_, i64>(ArithClient::MULTIPLY, &Args { a: 7, b }),
                )
            })
            .collect()
    };
    for (b, call) in products {
        println!("batch Arith.Multiply(7, {b}) = {}", call.wait()?);
    }

    // Many calls, one channel for their completions (Go: one `done` channel for many Go
    // calls). recv_completion reads the replies on this thread while it waits.
    let (done, completions) = done_channel::<i64>();
    for b in 4..=6 {
        let seq = arith
            .client()
            .go_with(ArithClient::MULTIPLY, &Args { a: 7, b }, &done);
        println!("go_with call {seq}: Arith.Multiply(7, {b}) started");
    }
    for _ in 4..=6 {
        let completion = arith
            .client()
            .recv_completion(&completions, Duration::from_secs(5))?;
        println!("go_with call {} = {}", completion.seq, completion.result?);
    }

    // A method's own error travels back as a string (Go: ServerError).
    match arith.divide(&Args { a: 1, b: 0 }) {
        Ok(quotient) => println!("call  Arith.Divide(1, 0) = {quotient:?} (unexpected)"),
        Err(err) => println!(
            "call  Arith.Divide(1, 0) failed: {err} (method error: {})",
            err.is_method_error()
        ),
    }

    // The untyped form works too, with the name constant or a plain string.
    let quotient: arith::Quotient = arith.client().call("Arith.Divide", &Args { a: 17, b: 5 })?;
    println!(
        "call  Arith.Divide(17, 5) = {} rem {} (untyped)",
        quotient.quo, quotient.rem
    );

    arith.client().close();
    running.shutdown();
    println!("done");
    Ok(())
}
