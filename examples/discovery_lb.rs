//! Discovery and client-side load balancing (SEEDS §7): servers register in a registry, one
//! `BalancedClient` follows the registry (`Discovery`), a policy picks the server of each
//! call, a server is killed mid-run and another joins, and no call fails.
//!
//! The tutorials' counterpart is a client that asks a registry for the live instances of a
//! service and spreads its calls over them (round robin, random, weighted round robin, least
//! active requests, or a dynamic weight from response time and calls in flight); Go's gRPC
//! calls this a balancer. For each of the five policies it starts three `WorkerService`
//! servers on 127.0.0.1 (`a` with weight 3, `b` and `c` with weight 1, `c` taking 2 ms per
//! call) and makes 300 calls one after another: at call 100 server `b` is shut down (its
//! connection cut, as if the process died, and its registration gone with it), and at call 200
//! a fourth server `d` registers. The servers register in an in-process `MemoryRegistry`
//! with heartbeats (`Registration`); the client learns of each change through the registry's
//! `Watcher`, followed by `Discovery` (the same code works on `EtcdRegistry`). `DoTask` is
//! idempotent, so the client is built `idempotent(true)`: a call whose connection is cut
//! under it moves to another server too.
//!
//! Run: `cargo run --example discovery_lb`
//!
//! Prints one line per policy: how many calls each server answered, and how many calls
//! failed (always 0; the example exits with an error otherwise). With one caller no call is
//! in flight when the next is picked, so least active breaks its ties in turn and matches
//! round robin, while peak EWMA steers away from the slow `c` by latency alone;
//! `tests/cluster_balance.rs` shows least active under concurrent callers.

#[path = "support/worker.rs"]
mod worker;

use std::collections::HashMap;
use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use netrpc::cluster::{
    BalancedClient, Balancer, Discovery, Instance, LeastActive, MemoryRegistry, PeakEwma, Random,
    Registration, Registry, RoundRobin, WeightedRoundRobin,
};
use netrpc::{Server, ServerHandle};
use worker::{Task, TaskReply, Worker, WorkerServiceServer};

const CALLS: u64 = 300;
const KILL_AT: u64 = 100;
const JOIN_AT: u64 = 200;
const SERVICE: &str = "WorkerService";
/// Registrations live this long without a heartbeat (renewed every third of it).
const TTL: Duration = Duration::from_secs(5);

fn main() -> Result<(), Box<dyn Error>> {
    println!("{CALLS} calls per policy; `b` killed at call {KILL_AT}, `d` registers at {JOIN_AT}");
    println!("weights a 3, b 1, c 1 (slow: 2 ms a call), d 1\n");
    let policies: Vec<(&str, Box<dyn Balancer>)> = vec![
        ("round robin", Box::new(RoundRobin::new())),
        ("random", Box::new(Random::with_seed(7))),
        ("weighted round robin", Box::new(WeightedRoundRobin::new())),
        ("least active", Box::new(LeastActive::new())),
        ("peak EWMA (P2C)", Box::new(PeakEwma::with_seed(7))),
    ];
    let mut failed_total = 0;
    for (name, balancer) in policies {
        let run = run_policy(balancer)?;
        let counts: Vec<String> = ["a", "b", "c", "d"]
            .iter()
            .map(|id| format!("{id} {:>3}", run.answered.get(*id).copied().unwrap_or(0)))
            .collect();
        println!(
            "{name:<21} {}   failed {}   ({:.0} ms)",
            counts.join("  "),
            run.failed,
            run.elapsed.as_secs_f64() * 1e3
        );
        failed_total += run.failed;
    }
    if failed_total > 0 {
        return Err(format!("{failed_total} calls failed").into());
    }
    Ok(())
}

/// What one policy's run did.
struct Run {
    answered: HashMap<String, usize>,
    failed: usize,
    elapsed: Duration,
}

fn run_policy(balancer: Box<dyn Balancer>) -> Result<Run, Box<dyn Error>> {
    let a = start("a", Duration::ZERO)?;
    let b = start("b", Duration::ZERO)?;
    let c = start("c", Duration::from_millis(2))?;
    let d = start("d", Duration::ZERO)?;
    let registry = MemoryRegistry::new();
    let shared: Arc<dyn Registry> = Arc::new(registry.clone());
    let register = |server: &ServerHandle, weight| {
        let instance = Instance::new(SERVICE, server.local_addr().to_string()).with_weight(weight);
        Registration::start(Arc::clone(&shared), instance, TTL)
    };
    let _a = register(&a, 3)?;
    let mut b_registration = Some(register(&b, 1)?);
    let _c = register(&c, 1)?;
    let mut d_registration = None;
    let client = BalancedClient::builder()
        .balancer(balancer)
        .idempotent(true)
        .call_timeout(Duration::from_secs(2))
        .build(Vec::new());
    let _discovery = Discovery::follow(registry.watch(SERVICE)?, &client);

    let started = Instant::now();
    let mut answered = HashMap::new();
    let mut failed = 0;
    for id in 0..CALLS {
        if id == KILL_AT {
            // The process dies: its connections are cut, its heartbeat stops.
            b.shutdown();
            b_registration.take();
        }
        if id == JOIN_AT {
            d_registration = Some(register(&d, 1)?);
        }
        let task = Task {
            id,
            text: format!("call {id}"),
        };
        match client.call::<_, TaskReply>("WorkerService.DoTask", &task) {
            Ok(reply) => *answered.entry(reply.worker_id).or_insert(0) += 1,
            Err(err) => {
                eprintln!("call {id} failed: {err}");
                failed += 1;
            }
        }
    }
    drop(d_registration);
    Ok(Run {
        answered,
        failed,
        elapsed: started.elapsed(),
    })
}

/// A worker server on loopback answering with `id` after `delay`.
fn start(id: &str, delay: Duration) -> Result<ServerHandle, Box<dyn Error>> {
    let server = Server::new();
    server.register(WorkerServiceServer::new(Worker {
        id: id.to_owned(),
        delay,
    }))?;
    Ok(server.serve("127.0.0.1:0")?)
}
