//! tarpc-load: netrpc's `loadgen` shapes driven through tarpc, for a side-by-side figure.
//!
//! One process on 127.0.0.1, as `loadgen --inproc`: a tarpc server (bincode over TCP) with
//! one method, `multiply(i64, i64) -> i64` (netrpc's `Arith.Multiply`), and CONNS client
//! connections, each kept at INFLIGHT calls in flight by that many tasks. Prints calls per
//! second and latency percentiles over the measured window, in loadgen's format, so that
//! `../compare.sh` can put the line beside loadgen's raw TCP baseline of the same shape.
//!
//! ```text
//! cargo run --release -- [--conns N] [--inflight N] [--seconds S] [--warmup S]
//!                        [--runtime multi|current] [--server-thread]
//! ```
//!
//! With `--runtime current` everything (server and clients) runs on one thread unless
//! `--server-thread` gives the server a current-thread runtime of its own on a second thread,
//! the way netrpc's server loop and caller threads are apart (and two processes would be).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::prelude::*;
use tarpc::server::{self, Channel};
use tarpc::tokio_serde::formats::Bincode;
use tarpc::{client, context};

/// The service: netrpc's `Arith.Multiply`.
#[tarpc::service]
trait Arith {
    async fn multiply(a: i64, b: i64) -> i64;
}

#[derive(Clone)]
struct ArithServer;

impl Arith for ArithServer {
    async fn multiply(self, _: context::Context, a: i64, b: i64) -> i64 {
        a.wrapping_mul(b)
    }
}

/// The shape of one run.
struct Shape {
    conns: usize,
    inflight: usize,
    seconds: f64,
    warmup: f64,
    current_thread: bool,
    server_thread: bool,
}

/// Where the run is: the drivers count and time calls only while `MEASURING`.
const WARMING_UP: u8 = 0;
const MEASURING: u8 = 1;
const DONE: u8 = 2;

fn main() {
    let shape = match parse_args() {
        Ok(shape) => shape,
        Err(message) => {
            eprintln!("tarpc-load: {message}");
            std::process::exit(2);
        }
    };
    let runtime = if shape.current_thread {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    let runtime = runtime.expect("a tokio runtime");
    let latencies = runtime.block_on(run(&shape));
    report(&shape, latencies);
}

fn parse_args() -> Result<Shape, String> {
    let mut shape = Shape {
        conns: 1,
        inflight: 1,
        seconds: 5.0,
        warmup: 1.0,
        current_thread: false,
        server_thread: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--conns" => shape.conns = value()?.parse().map_err(|e| format!("--conns: {e}"))?,
            "--inflight" => {
                shape.inflight = value()?.parse().map_err(|e| format!("--inflight: {e}"))?;
            }
            "--seconds" => {
                shape.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?;
            }
            "--warmup" => shape.warmup = value()?.parse().map_err(|e| format!("--warmup: {e}"))?,
            "--runtime" => match value()?.as_str() {
                "multi" => shape.current_thread = false,
                "current" => shape.current_thread = true,
                other => return Err(format!("--runtime: multi or current, not {other}")),
            },
            "--server-thread" => shape.server_thread = true,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if shape.conns == 0 || shape.inflight == 0 || shape.seconds <= 0.0 {
        return Err("--conns, --inflight and --seconds must be positive".to_owned());
    }
    Ok(shape)
}

/// Serves on 127.0.0.1, drives the shape, and returns the latency of every call completed in
/// the measured window, in nanoseconds.
async fn run(shape: &Shape) -> Vec<u64> {
    let addr = if shape.server_thread {
        serve_on_own_thread()
    } else {
        serve().await
    };
    let phase = Arc::new(AtomicU8::new(WARMING_UP));
    let mut drivers = Vec::new();
    for _ in 0..shape.conns {
        let transport = tarpc::serde_transport::tcp::connect(addr, Bincode::default)
            .await
            .expect("connected");
        let client = ArithClient::new(client::Config::default(), transport).spawn();
        for _ in 0..shape.inflight {
            drivers.push(tokio::spawn(drive(client.clone(), Arc::clone(&phase))));
        }
    }
    tokio::time::sleep(Duration::from_secs_f64(shape.warmup)).await;
    phase.store(MEASURING, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs_f64(shape.seconds)).await;
    phase.store(DONE, Ordering::SeqCst);
    let mut latencies = Vec::new();
    for driver in drivers {
        latencies.extend(driver.await.expect("a driver task"));
    }
    latencies
}

/// Starts the server on an ephemeral port; returns its address.
async fn serve() -> SocketAddr {
    let listener = tarpc::serde_transport::tcp::listen("127.0.0.1:0", Bincode::default)
        .await
        .expect("listening on 127.0.0.1");
    let addr = listener.local_addr();
    tokio::spawn(
        listener
            .filter_map(|conn| future::ready(conn.ok()))
            .map(server::BaseChannel::with_defaults)
            .for_each(|channel| async move {
                tokio::spawn(channel.execute(ArithServer.serve()).for_each(
                    |response| async move {
                        tokio::spawn(response);
                    },
                ));
            }),
    );
    addr
}

/// Starts the server in a current-thread runtime of its own, on a thread of its own (it lives
/// as long as the process); returns its address.
fn serve_on_own_thread() -> SocketAddr {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime for the server");
        runtime.block_on(async move {
            addr_tx.send(serve().await).expect("the address taken");
            future::pending::<()>().await;
        });
    });
    addr_rx.recv().expect("the server's address")
}

/// Keeps one call in flight on `client` until the run is done; returns the latencies of the
/// calls completed while measuring.
async fn drive(client: ArithClient, phase: Arc<AtomicU8>) -> Vec<u64> {
    let mut latencies = Vec::new();
    loop {
        let phase_at_start = phase.load(Ordering::Relaxed);
        if phase_at_start == DONE {
            return latencies;
        }
        let started = Instant::now();
        let product = client
            .multiply(context::current(), 7, 8)
            .await
            .expect("a reply");
        assert_eq!(product, 56);
        // Only calls wholly inside the measured window count.
        if phase_at_start == MEASURING && phase.load(Ordering::Relaxed) == MEASURING {
            latencies.push(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
        }
    }
}

/// Prints the run in loadgen's format.
fn report(shape: &Shape, mut latencies: Vec<u64>) {
    latencies.sort_unstable();
    let calls = latencies.len();
    let per_second = calls as f64 / shape.seconds;
    let at = |fraction: f64| {
        let index = ((calls as f64 * fraction) as usize).min(calls.saturating_sub(1));
        latencies.get(index).copied().unwrap_or(0) as f64 / 1_000.0
    };
    println!(
        "tarpc-load: {} conn(s) x {} in flight, bincode, multiply, {:.1} s measured after {:.1} s warm-up, {} runtime{}",
        shape.conns,
        shape.inflight,
        shape.seconds,
        shape.warmup,
        if shape.current_thread { "current-thread" } else { "multi-thread" },
        if shape.server_thread { ", server on a thread of its own" } else { "" },
    );
    println!(
        "tarpc        {:>10.0} calls/s   p50 {:.1} µs  p99 {:.1} µs  ({calls} calls)",
        per_second,
        at(0.50),
        at(0.99),
    );
}
