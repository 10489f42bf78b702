//! Call benches: netrpc beside a raw-socket baseline of the same shape, in the same group, so
//! the HTML report shows them side by side.
//!
//! - `call_sequential/{raw_tcp,netrpc/postcard,netrpc/json,netrpc_inline/postcard}`: one
//!   blocking round trip of `Arith.Multiply` (raw: 16 bytes out, 8 back) per iteration.
//! - `call_pipelined/{raw_tcp,netrpc,netrpc_inline,netrpc_inline_batch}/{conns}x{in_flight}`:
//!   4,096 calls per connection with that many in flight, raw pipelining with grouped writes;
//!   one thread per connection, started once per sample (`time_on_threads`).
//!   `netrpc` and `netrpc_inline` start each new call on its own (`go_with`) as one completes;
//!   `netrpc_inline_batch` takes every completion that has arrived and starts as many calls in
//!   one `Client::batch`, as the raw client writes as many requests as replies arrived.
//! - `call_sequential/{netrpc_busy_poll,netrpc_inline_busy_poll}/postcard` and
//!   `call_pipelined/netrpc_inline_batch_busy_poll/*`: the same as their counterparts
//!   without the suffix, with busy polling on at both ends ([`BUSY_POLL`];
//!   `ServerBuilder::busy_poll`, `ClientBuilder::busy_poll`).
//!
//! Everything runs on 127.0.0.1 in this process. `cargo bench --bench call -- --quick` is a
//! fast smoke run; `cargo run --release --example loadgen` gives latency percentiles.

#![allow(clippy::unwrap_used)] // a bench that fails should stop loudly

#[path = "../examples/support/arith.rs"]
mod arith;
#[path = "../examples/support/raw_tcp.rs"]
mod raw_tcp;

use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use arith::{Args, ArithServer, Calculator};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use netrpc::{done_channel, Client, CodecKind, Server, ServerHandle};
use raw_tcp::{RawClient, RawServer, Shape};

const ARGS: Args = Args { a: 7, b: 8 };
const CALLS_PER_CONN: usize = 4_096;

/// The busy-poll budget of the `*_busy_poll` benches, at both ends.
const BUSY_POLL: Duration = Duration::from_micros(50);

fn start_server(inline: bool, busy_poll: Duration) -> ServerHandle {
    let server = Server::builder().busy_poll(busy_poll).build();
    if inline {
        server
            .register_inline(ArithServer::new(Calculator))
            .unwrap();
    } else {
        server.register(ArithServer::new(Calculator)).unwrap();
    }
    server.serve("127.0.0.1:0").unwrap()
}

fn dial(running: &ServerHandle, codec: CodecKind, busy_poll: Duration) -> Client {
    Client::builder()
        .codec(codec)
        .busy_poll(busy_poll)
        .dial(running.local_addr())
        .unwrap()
}

fn sequential(c: &mut Criterion) {
    let mut group = c.benchmark_group("call_sequential");
    group.throughput(Throughput::Elements(1));

    let raw = RawServer::start(Shape::ARITH).unwrap();
    let mut raw_client = RawClient::connect(raw.addr(), Shape::ARITH).unwrap();
    group.bench_function("raw_tcp/arith", |b| {
        b.iter(|| raw_client.exchange(1, 1).unwrap())
    });

    for (name, codec, inline, busy_poll) in [
        (
            "netrpc/postcard",
            CodecKind::Postcard,
            false,
            Duration::ZERO,
        ),
        ("netrpc/json", CodecKind::Json, false, Duration::ZERO),
        (
            "netrpc_busy_poll/postcard",
            CodecKind::Postcard,
            false,
            BUSY_POLL,
        ),
        (
            "netrpc_inline/postcard",
            CodecKind::Postcard,
            true,
            Duration::ZERO,
        ),
        (
            "netrpc_inline_busy_poll/postcard",
            CodecKind::Postcard,
            true,
            BUSY_POLL,
        ),
    ] {
        let running = start_server(inline, busy_poll);
        let client = dial(&running, codec, busy_poll);
        group.bench_function(name, |b| {
            b.iter(|| {
                let product: i64 = client.call("Arith.Multiply", &ARGS).unwrap();
                assert_eq!(product, 56);
            })
        });
    }
    group.finish();
}

/// Completes `total` calls on `client` with `inflight` outstanding; with `batch`, the calls
/// started on each wake-up go out in one `Client::batch`.
fn netrpc_exchange(client: &Client, total: usize, inflight: usize, batch: bool) {
    let (done, completions) = done_channel::<i64>();
    let mut sent = 0;
    let start = |count: usize, sent: &mut usize| {
        let count = count.min(total - *sent);
        let batch = batch.then(|| client.batch());
        for _ in 0..count {
            match &batch {
                Some(batch) => batch.go_with("Arith.Multiply", &ARGS, &done),
                None => client.go_with("Arith.Multiply", &ARGS, &done),
            };
        }
        *sent += count;
    };
    start(inflight, &mut sent);
    let mut received = 0;
    while received < total {
        // The driver reads replies itself while nobody else does, as loadgen's does.
        let first = client
            .recv_completion(&completions, Duration::from_secs(60))
            .unwrap();
        let mut completed = 0;
        for completion in std::iter::once(first).chain(completions.try_iter()) {
            assert_eq!(completion.result.unwrap(), 56);
            completed += 1;
        }
        received += completed;
        start(completed, &mut sent);
    }
}

/// Runs `exchange` `iters` times on each of `clients`, one thread per client, all starting
/// together; returns the time from the start to the last one's end. The threads start once
/// per criterion sample, not once per iteration: starting and joining them every iteration
/// was a fixed cost that weighed far more on raw TCP's iterations (a few milliseconds) than
/// on netrpc's, and flattered netrpc's ratio at 4 x 16 several times over.
fn time_on_threads<C: Send>(
    clients: &mut [C],
    iters: u64,
    exchange: impl Fn(&mut C) + Sync,
) -> Duration {
    let ready = Barrier::new(clients.len() + 1);
    let started = thread::scope(|scope| {
        for client in clients.iter_mut() {
            let (ready, exchange) = (&ready, &exchange);
            scope.spawn(move || {
                ready.wait();
                for _ in 0..iters {
                    exchange(client);
                }
            });
        }
        ready.wait();
        Instant::now()
    });
    started.elapsed()
}

fn pipelined(c: &mut Criterion) {
    let mut group = c.benchmark_group("call_pipelined");
    group.measurement_time(Duration::from_secs(3));
    group.sample_size(20);
    let raw = RawServer::start(Shape::ARITH).unwrap();
    let pool = start_server(false, Duration::ZERO);
    let inline = start_server(true, Duration::ZERO);
    let inline_busy = start_server(true, BUSY_POLL);

    for conns in [1usize, 4] {
        for inflight in [1usize, 16, 64] {
            let shape = format!("{conns}x{inflight}");
            group.throughput(Throughput::Elements((conns * CALLS_PER_CONN) as u64));

            let mut raw_clients: Vec<RawClient> = (0..conns)
                .map(|_| RawClient::connect(raw.addr(), Shape::ARITH).unwrap())
                .collect();
            group.bench_function(BenchmarkId::new("raw_tcp", &shape), |b| {
                b.iter_custom(|iters| {
                    time_on_threads(&mut raw_clients, iters, |client| {
                        client.exchange(CALLS_PER_CONN, inflight).unwrap();
                    })
                })
            });

            for (name, running, batch, busy_poll) in [
                ("netrpc", &pool, false, Duration::ZERO),
                ("netrpc_inline", &inline, false, Duration::ZERO),
                ("netrpc_inline_batch", &inline, true, Duration::ZERO),
                (
                    "netrpc_inline_batch_busy_poll",
                    &inline_busy,
                    true,
                    BUSY_POLL,
                ),
            ] {
                let mut clients: Vec<Client> = (0..conns)
                    .map(|_| dial(running, CodecKind::Postcard, busy_poll))
                    .collect();
                group.bench_function(BenchmarkId::new(name, &shape), |b| {
                    b.iter_custom(|iters| {
                        time_on_threads(&mut clients, iters, |client| {
                            netrpc_exchange(client, CALLS_PER_CONN, inflight, batch);
                        })
                    })
                });
            }
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = sequential, pipelined
}
criterion_main!(benches);
