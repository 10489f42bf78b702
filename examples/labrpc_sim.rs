//! A simulated network: `Arith` calls through seeded loss and delay, retried until they get
//! through, with no socket; the same seed replays every message's fate.
//!
//! Tutorial: MIT 6.824's `labrpc` ("an in-process simulated network ... drop, delay, reorder,
//! disconnect a server, count RPCs, all deterministically"), SEEDS §8. netrpc's own `Client`
//! and `Server` run over it unchanged.
//!
//! Run: `cargo run --example labrpc_sim` (or `-- --seed 7 --drop 0.5`)
//!
//! Prints the fates the network has decided for the first requests of one end, then runs the
//! same scenario twice with that seed (three ends, two `Arith` servers, 30% loss each way, each
//! call retried until it succeeds): the calls, attempts and retries, the messages sent and
//! dropped, each server's RPC count, every call's attempts (`.` lost, `+` answered), and
//! whether the two runs agree (they do). Last, a disabled end fails at once with
//! `Unreachable`, and works again once enabled.

#[path = "support/args.rs"]
mod args;
#[path = "support/arith.rs"]
mod arith;

use std::error::Error;
use std::thread;
use std::time::{Duration, Instant};

use arith::{Args, ArithClient, ArithServer, Calculator};
use netrpc::core::sim::{SimConditions, SimNetwork};
use netrpc::{Client, RpcError, Server};

const USAGE: &str = "labrpc_sim [--seed N] [--drop RATE]";
const ENDS: [&str; 3] = ["client-1", "client-2", "client-3"];
const CALLS_PER_END: i64 = 8;
const MAX_ATTEMPTS: u32 = 10;
const CALL_TIMEOUT: Duration = Duration::from_millis(120);

/// What one run saw: each end's calls as a string of attempts (`.` lost, `+` answered).
struct Run {
    outcomes: Vec<String>,
    attempts: u32,
    rpc_counts: Vec<(String, u64)>,
    sent: u64,
    dropped: u64,
    total_bytes: u64,
}

fn main() -> Result<(), Box<dyn Error>> {
    let flags = args::Flags::parse(USAGE)?;
    let seed: u64 = flags.get("seed", 6824)?;
    let drop_rate: f64 = flags.get("drop", 0.3)?;
    let conditions = SimConditions {
        reliable: false,
        drop_rate,
        max_delay: Duration::from_millis(20),
        ..SimConditions::default()
    };

    let preview = SimNetwork::new(seed)?;
    preview.set_conditions(conditions);
    println!("seed {seed}: fates of the first requests of `client-1`, decided before any call");
    for message in 0..6 {
        let fate = preview.fate("client-1", message);
        let request = match fate.request_dropped {
            true => "dropped".to_owned(),
            false => format!("delayed {:>2} ms", fate.request_delay.as_millis()),
        };
        let reply = match fate.reply_dropped {
            true => "dropped".to_owned(),
            false => format!("delayed {:>2} ms", fate.reply_delay.as_millis()),
        };
        println!("  message {message}: request {request:<14} reply {reply}");
    }

    let first = run(seed, conditions)?;
    let second = run(seed, conditions)?;
    for (label, result) in [("run 1", &first), ("run 2", &second)] {
        let calls = ENDS.len() as i64 * CALLS_PER_END;
        let counts: Vec<String> = result
            .rpc_counts
            .iter()
            .map(|(server, count)| format!("{server} {count}"))
            .collect();
        println!(
            "{label}: {calls} calls in {} attempts ({} retries); {} messages sent, {} dropped, \
             {} bytes; rpc counts: {}",
            result.attempts,
            i64::from(result.attempts) - calls,
            result.sent,
            result.dropped,
            result.total_bytes,
            counts.join(", "),
        );
        for (end, outcome) in ENDS.iter().zip(&result.outcomes) {
            println!("  {end}: {outcome}");
        }
    }
    let same = first.outcomes == second.outcomes && first.rpc_counts == second.rpc_counts;
    println!("the two runs with seed {seed} agree on every message: {same}");

    disabled_end_fails_fast(seed)?;
    if !same {
        return Err("the same seed gave different fates".into());
    }
    Ok(())
}

/// Three ends, each on its own thread, call `Arith.Multiply` through a lossy network; a lost
/// call is retried until it is answered.
fn run(seed: u64, conditions: SimConditions) -> Result<Run, Box<dyn Error>> {
    let net = SimNetwork::new(seed)?;
    for name in ["arith-1", "arith-2"] {
        let server = Server::new();
        server.register(ArithServer::new(Calculator))?;
        net.add_server(name, &server);
    }
    net.set_conditions(conditions);
    let workers: Vec<_> = ENDS
        .iter()
        .enumerate()
        .map(|(index, end)| {
            net.connect(end, if index == 2 { "arith-2" } else { "arith-1" });
            let builder = Client::builder().call_timeout(CALL_TIMEOUT);
            let arith = ArithClient::new(net.client_with(end, builder));
            thread::spawn(move || call_with_retries(&arith))
        })
        .collect();
    let mut outcomes = Vec::new();
    let mut attempts = 0;
    for worker in workers {
        let (outcome, tries) = worker.join().map_err(|_| "a caller thread panicked")??;
        outcomes.push(outcome);
        attempts += tries;
    }
    let stats = net.stats();
    Ok(Run {
        outcomes,
        attempts,
        rpc_counts: ["arith-1", "arith-2"]
            .iter()
            .map(|name| (name.to_string(), net.rpc_count(name)))
            .collect(),
        sent: stats.requests_sent + stats.replies_sent,
        dropped: stats.requests_dropped + stats.replies_dropped,
        total_bytes: stats.total_bytes,
    })
}

/// Makes every call succeed, retrying timeouts; returns the attempts as text and their count.
fn call_with_retries(arith: &ArithClient) -> Result<(String, u32), String> {
    let mut outcome = String::new();
    let mut attempts = 0;
    for i in 1..=CALLS_PER_END {
        let args = Args { a: i, b: i + 1 };
        let mut tries = 0;
        loop {
            tries += 1;
            match arith.multiply(&args) {
                Ok(product) if product == i * (i + 1) => {
                    outcome.push('+');
                    break;
                }
                Ok(wrong) => return Err(format!("{i} * {} gave {wrong}", i + 1)),
                Err(RpcError::Timeout { .. }) if tries < MAX_ATTEMPTS => outcome.push('.'),
                Err(err) => return Err(format!("call {i} failed: {err}")),
            }
        }
        outcome.push(' ');
        attempts += tries;
    }
    Ok((outcome.trim_end().to_owned(), attempts))
}

/// labrpc's `Enable(end, false)`: the call fails at once instead of waiting for its deadline.
fn disabled_end_fails_fast(seed: u64) -> Result<(), Box<dyn Error>> {
    let net = SimNetwork::new(seed)?;
    let server = Server::new();
    server.register(ArithServer::new(Calculator))?;
    net.add_server("arith-1", &server);
    net.connect("client-1", "arith-1");
    let builder = Client::builder().call_timeout(Duration::from_secs(5));
    let arith = ArithClient::new(net.client_with("client-1", builder));
    net.enable("client-1", false);
    let started = Instant::now();
    match arith.multiply(&Args { a: 6, b: 7 }) {
        Err(err @ RpcError::Unreachable { .. }) => println!(
            "disabled end: unreachable after {} ms, not at the 5 s deadline ({err})",
            started.elapsed().as_millis()
        ),
        other => return Err(format!("a disabled end should be unreachable: {other:?}").into()),
    }
    net.enable("client-1", true);
    println!(
        "re-enabled: 6 * 7 = {}",
        arith.multiply(&Args { a: 6, b: 7 })?
    );
    Ok(())
}
