//! Middleware bench: what the chain costs per call, measured end to end over loopback
//! beside the same call with no middleware, so the difference is the chain's overhead.
//!
//! - `middleware/none/sequential`: one blocking `Arith.Multiply` round trip, no middleware,
//!   against a service on the worker pool ("sequential" names the calls, one after another;
//!   the dispatch is the pool's).
//! - `middleware/chain3/sequential`: the same, with client `Tracing` + `Logging` (to a sink
//!   that only counts) and server `Logging` + `RateLimit` (never reached) + `Logging`: five
//!   middleware in all, three of them on the server (hence the name).
//! - `middleware/{none,chain3}/inline`: the same against an inline service (no thread hop),
//!   where the chain's share of a call is largest.
//!
//! `cargo bench --bench middleware`; `-- --quick` for a smoke run.

#![allow(clippy::unwrap_used)] // a bench that fails should stop loudly

#[path = "../examples/support/arith.rs"]
mod arith;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arith::{Args, ArithServer, Calculator};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use netrpc::core::middleware::{Logging, RateLimit, Tracing};
use netrpc::{Client, Server, ServerHandle};

const ARGS: Args = Args { a: 7, b: 8 };

/// A logging sink that only counts, so the bench measures the chain, not a terminal.
fn counting_logger(count: &Arc<AtomicU64>) -> Logging {
    let count = Arc::clone(count);
    Logging::to(move |_| {
        count.fetch_add(1, Ordering::Relaxed);
    })
}

fn start(with_chain: bool, inline: bool, count: &Arc<AtomicU64>) -> (ServerHandle, Client) {
    let mut builder = Server::builder();
    if with_chain {
        builder = builder
            .middleware(counting_logger(count))
            .middleware(RateLimit::per_second(1e12, u32::MAX))
            .middleware(counting_logger(count));
    }
    let server = builder.build();
    if inline {
        server
            .register_inline(ArithServer::new(Calculator))
            .unwrap();
    } else {
        server.register(ArithServer::new(Calculator)).unwrap();
    }
    let running = server.serve("127.0.0.1:0").unwrap();
    let mut client = Client::builder();
    if with_chain {
        client = client
            .middleware(Tracing::new())
            .middleware(counting_logger(count));
    }
    let client = client.dial(running.local_addr()).unwrap();
    (running, client)
}

fn chain_overhead(c: &mut Criterion) {
    let mut group = c.benchmark_group("middleware");
    group.throughput(Throughput::Elements(1));
    let count = Arc::new(AtomicU64::new(0));
    for (name, with_chain) in [("none", false), ("chain3", true)] {
        for (dispatch, inline) in [("sequential", false), ("inline", true)] {
            let (_running, client) = start(with_chain, inline, &count);
            group.bench_function(format!("{name}/{dispatch}"), |b| {
                b.iter(|| {
                    let product: i64 = client.call("Arith.Multiply", &ARGS).unwrap();
                    assert_eq!(product, 56);
                })
            });
        }
    }
    group.finish();
    assert!(count.load(Ordering::Relaxed) > 0, "the chain ran");
}

criterion_group!(benches, chain_overhead);
criterion_main!(benches);
