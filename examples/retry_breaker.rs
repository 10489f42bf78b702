//! Retries with backoff and a circuit breaker (SEEDS §6): a client that rides out a server
//! starting late, and a breaker that stops calling a dead server, then closes when it is back.
//!
//! Go has neither in `net/rpc`; the tutorials (article 004) wrap `Client.Call` in a retry loop
//! with exponential backoff and a breaker that counts failures. Here `RetryingClient` retries
//! only what is safe to retry (never a method's own error), and `Breaker` fails fast with
//! `RpcError::CircuitOpen` while open.
//!
//! Run: `cargo run --example retry_breaker`
//!
//! Prints each retry (the failed attempt, its error, the jittered wait), the product once the
//! server is up, a method error returned after one attempt, then the breaker's state through
//! failures, fast failures, the cooldown and the trial call that closes it.

#[path = "support/arith.rs"]
mod arith;

use std::error::Error;
use std::net::{SocketAddr, TcpListener};
use std::thread;
use std::time::{Duration, Instant};

use arith::{Args, ArithServer, Calculator, Quotient};
use netrpc::cluster::{Breaker, BreakerPolicy, RetryPolicy, RetryingClient, Rng};
use netrpc::{Client, RpcError, Server, ServerHandle};

fn main() -> Result<(), Box<dyn Error>> {
    retry_until_the_server_is_up()?;
    breaker_opens_and_closes()?;
    Ok(())
}

/// A server that starts 300 ms late: the first attempts are refused, a later one succeeds.
fn retry_until_the_server_is_up() -> Result<(), Box<dyn Error>> {
    let addr = free_addr()?;
    let starting = thread::spawn(move || {
        thread::sleep(Duration::from_millis(300));
        serve_arith(addr)
    });
    let policy = RetryPolicy::default()
        .max_attempts(10)
        .initial_backoff(Duration::from_millis(25))
        .max_backoff(Duration::from_millis(200));
    let client = RetryingClient::builder(addr.to_string())
        .policy(policy)
        .rng(Rng::with_seed(2024))
        .on_retry(|notice| {
            println!(
                "  attempt {} failed ({}); retrying in {} ms",
                notice.attempt,
                notice.error,
                notice.backoff.as_millis()
            );
        })
        .build();

    println!("calling Arith.Multiply on {addr}, where the server starts in 300 ms:");
    let started = Instant::now();
    let product: i64 = client.call_timeout(
        "Arith.Multiply",
        &Args { a: 7, b: 8 },
        Duration::from_secs(5),
    )?;
    let stats = client.stats();
    println!(
        "  7 * 8 = {product} after {} attempts in {} ms",
        stats.attempts,
        started.elapsed().as_millis()
    );

    let divided: Result<Quotient, RpcError> = client.call("Arith.Divide", &Args { a: 1, b: 0 });
    let attempts = client.stats().attempts - stats.attempts;
    println!(
        "  1 / 0: {} (the method's own error: {attempts} attempt, never retried)",
        divided.map_or_else(|err| err.to_string(), |q| format!("{q:?}"))
    );
    client.close();
    let _server = starting
        .join()
        .map_err(|_| "the server thread panicked")??;
    Ok(())
}

/// A breaker in front of a dead server: opens, fails fast, and closes after a trial call
/// once the server is back.
fn breaker_opens_and_closes() -> Result<(), Box<dyn Error>> {
    let addr = free_addr()?;
    let cooldown = Duration::from_millis(200);
    let policy = BreakerPolicy::default()
        .consecutive_failures(3)
        .cooldown(cooldown);
    let breaker = Breaker::new(addr.to_string(), policy);
    let multiply = || -> Result<i64, RpcError> {
        Client::dial_timeout(addr, Duration::from_secs(1))?
            .call("Arith.Multiply", &Args { a: 6, b: 7 })
    };

    println!("\ncalling {addr}, where nothing listens, through a breaker (opens after 3):");
    for call in 1..=5 {
        let outcome = breaker.call(multiply);
        println!(
            "  call {call}: {} -> breaker {:?}",
            describe(&outcome),
            breaker.state()
        );
    }
    println!(
        "  {} calls failed fast without dialing",
        breaker.rejected_calls()
    );

    let _server = serve_arith(addr)?;
    println!(
        "server started; waiting out the {} ms cooldown",
        cooldown.as_millis()
    );
    thread::sleep(cooldown + Duration::from_millis(50));
    println!("  breaker {:?}: the next call is a trial", breaker.state());
    let outcome = breaker.call(multiply);
    println!(
        "  trial: {} -> breaker {:?}",
        describe(&outcome),
        breaker.state()
    );
    Ok(())
}

fn describe(outcome: &Result<i64, RpcError>) -> String {
    match outcome {
        Ok(product) => format!("ok {product}"),
        Err(err) => format!("error: {err}"),
    }
}

/// An address on loopback that nothing listens on (yet).
fn free_addr() -> Result<SocketAddr, Box<dyn Error>> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn serve_arith(addr: SocketAddr) -> Result<ServerHandle, RpcError> {
    let server = Server::new();
    server.register(ArithServer::new(Calculator))?;
    server.serve(addr)
}
