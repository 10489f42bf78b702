//! The simulated network (SEEDS §8, labrpc): netrpc's own clients and servers talking through
//! seeded drops, delays, reordering, disconnects and partitions, with no socket; each
//! message's fate replays from the seed; the pull-mode master/worker completes every task
//! exactly once through 30% loss.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod util;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use netrpc::cluster::{run_worker, TaskQueue, TaskQueueClient, WorkerExit};
use netrpc::core::sim::{SimConditions, SimNetwork};
use netrpc::{done_channel, Client, RpcError, Server};
use util::{Args, ArithClient, ArithServer, Calculator};

const SHORT: Duration = Duration::from_millis(150);

fn arith_server() -> Server {
    let server = Server::new();
    server.register(ArithServer::new(Calculator)).unwrap();
    server
}

/// A network with server `arith` and `ends` connected to it.
fn arith_network(seed: u64, ends: &[&str]) -> SimNetwork {
    let net = SimNetwork::new(seed).unwrap();
    net.add_server("arith", &arith_server());
    for end in ends {
        net.connect(end, "arith");
    }
    net
}

fn client(net: &SimNetwork, end: &str, timeout: Duration) -> ArithClient {
    ArithClient::new(net.client_with(end, Client::builder().call_timeout(timeout)))
}

/// Unreliable with `drop_rate`, and delays small enough to stay well inside [`SHORT`].
fn lossy(drop_rate: f64) -> SimConditions {
    SimConditions {
        reliable: false,
        drop_rate,
        max_delay: Duration::from_millis(10),
        ..SimConditions::default()
    }
}

/// Each end's calls, one thread per end: true where the call succeeded.
fn outcomes_of_a_lossy_run(seed: u64) -> Vec<Vec<bool>> {
    let ends = ["a", "b", "c", "d"];
    let net = arith_network(seed, &ends);
    net.set_conditions(lossy(0.3));
    let threads: Vec<_> = ends
        .iter()
        .map(|end| {
            let arith = client(&net, end, SHORT);
            thread::spawn(move || {
                (0..12)
                    .map(|i| match arith.multiply(&Args { a: i, b: 3 }) {
                        Ok(product) => {
                            assert_eq!(product, i * 3);
                            true
                        }
                        Err(RpcError::Timeout { .. }) => false,
                        Err(other) => panic!("a lost message times out, got {other:?}"),
                    })
                    .collect()
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn the_same_seed_gives_every_call_the_same_fate_and_another_seed_another() {
    let first = outcomes_of_a_lossy_run(2024);
    let again = outcomes_of_a_lossy_run(2024);
    assert_eq!(first, again, "same seed, same outcome for every call");
    assert_ne!(first, outcomes_of_a_lossy_run(2025));

    // And the outcomes are the fates the network announces before any call is made.
    let net = arith_network(2024, &[]);
    net.set_conditions(lossy(0.3));
    for (end, outcomes) in ["a", "b", "c", "d"].iter().zip(&first) {
        for (message, &succeeded) in outcomes.iter().enumerate() {
            let fate = net.fate(end, message as u64);
            assert_eq!(succeeded, !fate.request_dropped && !fate.reply_dropped);
        }
    }
    let all: Vec<bool> = first.concat();
    assert!(all.contains(&true) && all.contains(&false), "{all:?}");
}

#[test]
fn reliable_network_answers_every_arith_call_and_counts_them() {
    let net = arith_network(1, &["end-1"]);
    let arith = client(&net, "end-1", Duration::from_secs(5));
    for i in 0..10 {
        assert_eq!(arith.multiply(&Args { a: i, b: 7 }).unwrap(), i * 7);
    }
    assert_eq!(arith.sum_go(&Args { a: 2, b: 3 }).wait().unwrap(), 5);
    let err = arith.divide(&Args { a: 1, b: 0 }).unwrap_err();
    assert!(err.is_method_error(), "{err:?}");
    // A batch has nothing to cork on a simulated end: each call is sent as it starts.
    let batched: Vec<_> = {
        let batch = arith.client().batch();
        (0..3i64)
            .map(|i| batch.go::<_, i64>(ArithClient::SUM, &Args { a: i, b: 1 }))
            .collect()
    };
    for (i, call) in (0i64..).zip(batched) {
        assert_eq!(call.wait().unwrap(), i + 1);
    }

    assert_eq!(net.rpc_count("arith"), 15);
    let stats = net.stats();
    assert_eq!(stats.requests_sent, 15);
    assert_eq!(stats.replies_delivered, 15);
    assert_eq!(stats.requests_dropped + stats.replies_dropped, 0);
    assert!(net.total_bytes() > 15 * 28, "at least a header per message");
    let untyped: Result<i64, _> = arith.client().call("Arith.Nope", &Args { a: 1, b: 1 });
    assert!(matches!(untyped, Err(RpcError::UnknownMethod { .. })));
}

#[test]
fn lossy_calls_time_out_or_succeed_and_none_hangs() {
    let net = arith_network(7, &[]);
    net.set_conditions(lossy(0.3));
    let deadline = Instant::now() + Duration::from_secs(10);
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let name = format!("end-{t}");
            net.connect(&name, "arith");
            let arith = client(&net, &name, SHORT);
            thread::spawn(move || {
                let mut ok = 0;
                for i in 0..10 {
                    // Half blocking calls, half `go` calls timed out by the network's timer.
                    let result = if i % 2 == 0 {
                        arith.multiply(&Args { a: i, b: t })
                    } else {
                        let call = arith.multiply_go(&Args { a: i, b: t });
                        let waited = call.done().recv_timeout(SHORT * 4);
                        waited.expect("the network's timer fails a `go` call at its deadline")
                    };
                    match result {
                        Ok(product) => {
                            assert_eq!(product, i * t);
                            ok += 1;
                        }
                        Err(RpcError::Timeout { .. }) => {}
                        Err(other) => panic!("expected a reply or a timeout, got {other:?}"),
                    }
                }
                ok
            })
        })
        .collect();
    let succeeded: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(
        Instant::now() < deadline,
        "60 calls of 150 ms took over 10 s"
    );
    // About half the calls lose a request or a reply at 30% each way.
    assert!(
        (10..=50).contains(&succeeded),
        "{succeeded} of 60 succeeded"
    );
    let stats = net.stats();
    assert_eq!(stats.requests_sent, 60);
    assert!(
        stats.requests_dropped > 0 && stats.replies_dropped > 0,
        "{stats:?}"
    );
}

#[test]
fn a_disabled_end_fails_fast_with_unreachable_and_works_again_when_enabled() {
    let net = arith_network(3, &["end-1"]);
    let arith = client(&net, "end-1", Duration::from_secs(5));
    assert_eq!(arith.sum(&Args { a: 1, b: 2 }).unwrap(), 3);

    net.enable("end-1", false);
    let started = Instant::now();
    let err = arith.sum(&Args { a: 1, b: 2 }).unwrap_err();
    assert!(matches!(err, RpcError::Unreachable { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "failed at once, not at the 5 s deadline"
    );
    let go_err = arith.sum_go(&Args { a: 1, b: 2 }).wait().unwrap_err();
    assert!(matches!(go_err, RpcError::Unreachable { .. }), "{go_err:?}");

    net.enable("end-1", true);
    assert_eq!(arith.sum(&Args { a: 4, b: 5 }).unwrap(), 9);
    assert_eq!(
        net.rpc_count("arith"),
        2,
        "unreachable calls never reach the server"
    );
    assert_eq!(net.stats().unreachable, 2);

    // An end connected to nothing, and a server taken off the network, are unreachable too.
    let lonely = client(&net, "lonely", Duration::from_secs(5));
    assert!(matches!(
        lonely.sum(&Args { a: 1, b: 1 }),
        Err(RpcError::Unreachable { .. })
    ));
    net.delete_server("arith");
    assert!(matches!(
        arith.sum(&Args { a: 1, b: 1 }),
        Err(RpcError::Unreachable { .. })
    ));
}

#[test]
fn a_partition_cuts_a_server_off_from_one_end_but_not_another() {
    let net = arith_network(5, &["near", "far"]);
    let near = client(&net, "near", Duration::from_secs(5));
    let far = client(&net, "far", Duration::from_secs(5));

    net.partition(&[&["near", "arith"], &["far"]]);
    assert_eq!(near.multiply(&Args { a: 6, b: 7 }).unwrap(), 42);
    let err = far.multiply(&Args { a: 6, b: 7 }).unwrap_err();
    assert!(matches!(err, RpcError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains("arith"), "{err}");

    net.heal();
    assert_eq!(far.multiply(&Args { a: 6, b: 7 }).unwrap(), 42);
    assert_eq!(net.rpc_count("arith"), 2);
}

#[test]
fn long_reordering_delivers_replies_out_of_order_each_to_its_own_call() {
    let net = arith_network(11, &["end-1"]);
    net.set_conditions(SimConditions {
        long_reordering: true,
        reorder_delay: Duration::from_millis(100),
        ..SimConditions::default()
    });
    let client = net.client_with(
        "end-1",
        Client::builder().call_timeout(Duration::from_secs(5)),
    );
    let (done, completions) = done_channel::<i64>();
    let mut factor_of_seq = std::collections::HashMap::new();
    for i in 0..30i64 {
        let seq = client.go_with("Arith.Multiply", &Args { a: i, b: i }, &done);
        factor_of_seq.insert(seq, i);
    }
    let mut arrival = Vec::new();
    for _ in 0..30 {
        // A simulated end has no socket to read: this waits on the channel.
        let completion = client
            .recv_completion(&completions, Duration::from_secs(5))
            .unwrap();
        let i = factor_of_seq[&completion.seq];
        assert_eq!(
            completion.result.unwrap(),
            i * i,
            "call {i} got its own reply"
        );
        arrival.push(completion.seq);
    }
    let mut sorted = arrival.clone();
    sorted.sort_unstable();
    assert_ne!(arrival, sorted, "replies overtook each other");
    assert_eq!(arrival.iter().collect::<HashSet<_>>().len(), 30);
}

#[test]
fn dropping_the_network_fails_pending_calls_and_refuses_later_ones() {
    let net = arith_network(13, &["end-1"]);
    net.set_conditions(lossy(1.0)); // every message lost: the call would wait for its deadline
    let arith = client(&net, "end-1", Duration::from_secs(30));
    let pending = arith.multiply_go(&Args { a: 2, b: 2 });
    drop(net);
    let err = pending.done().recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(
        matches!(err, Err(RpcError::ConnectionLost { .. })),
        "{err:?}"
    );
    let later = arith.multiply(&Args { a: 2, b: 2 }).unwrap_err();
    assert!(matches!(later, RpcError::Shutdown), "{later:?}");
    assert!(arith.client().is_closed());
}

#[test]
fn pull_mode_master_worker_completes_every_task_exactly_once_under_30_percent_loss() {
    const TASKS: u64 = 20;
    let queue: TaskQueue<u64, u64> =
        TaskQueue::with_lease((0..TASKS).collect(), Duration::from_millis(300), None);
    let master = Server::new();
    master.register(queue.service()).unwrap();
    let net = SimNetwork::new(99).unwrap();
    net.add_server("master", &master);
    net.set_conditions(lossy(0.3));

    let processed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(20);
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let id = format!("worker-{w}");
            net.connect(&id, "master");
            let client = net.client_with(&id, Client::builder().call_timeout(SHORT));
            let tasks: TaskQueueClient<u64, u64> = TaskQueueClient::new(client);
            let processed = Arc::clone(&processed);
            thread::spawn(move || {
                // run_worker retries a timed-out call a few times (WORKER_RETRIES), but at 30%
                // loss each way a run of lost messages still happens; then it reports the
                // master gone, and through a lossy network that is a lost message: start again.
                let mut restarts = 0;
                loop {
                    let summary = run_worker(&tasks, &id, |_, n| {
                        processed.fetch_add(1, Ordering::Relaxed);
                        n * 10
                    });
                    match summary.exit {
                        WorkerExit::NoMoreTasks => return restarts,
                        WorkerExit::MasterGone(err) => {
                            assert!(err.is_retryable(), "{err:?}");
                            assert!(Instant::now() < deadline, "workers gave up: {err}");
                            restarts += 1;
                        }
                    }
                }
            })
        })
        .collect();
    let restarts: u32 = workers.into_iter().map(|w| w.join().unwrap()).sum();

    assert!(queue.wait_done(Duration::from_secs(5)));
    let results = queue.results().unwrap();
    assert_eq!(results, (0..TASKS).map(|n| n * 10).collect::<Vec<_>>());
    let stats = queue.stats();
    assert_eq!(stats.completed, TASKS as usize);
    assert_eq!(stats.accepted, TASKS, "each task accepted exactly once");
    assert!(
        processed.load(Ordering::Relaxed) >= TASKS,
        "at least once each"
    );
    println!("{restarts} worker restarts");
    let net_stats = net.stats();
    assert!(net_stats.requests_dropped + net_stats.replies_dropped > 0);
    assert_eq!(net.rpc_count("master"), net_stats.requests_delivered);
}

#[test]
fn the_servers_cap_on_calls_in_flight_holds_over_the_simulated_network_too() {
    let (prober, release) = util::Prober::releasable();
    let server = Server::builder().max_calls(2).build();
    server.register(util::ProbeServer::new(prober)).unwrap();
    let net = SimNetwork::new(7).unwrap();
    net.add_server("probe", &server);
    net.connect("a", "probe");
    let client = net.client_with("a", Client::builder().call_timeout(Duration::from_secs(5)));
    let calls: Vec<_> = (0..5u64)
        .map(|i| client.go::<_, u64>("Probe.Block", &i))
        .collect();
    thread::sleep(Duration::from_millis(300));
    assert!(
        server.stats().in_flight_calls <= 2,
        "{} calls in flight past the cap of 2",
        server.stats().in_flight_calls
    );
    for _ in 0..5 {
        let _ = release.send(());
    }
    let throttled = calls
        .into_iter()
        .filter(|call| matches!(call_result(call), Err(RpcError::Throttled)))
        .count();
    assert_eq!(throttled, 3);
}

/// A `go` call's result, within 5 s.
fn call_result(call: &netrpc::Call<u64>) -> Result<u64, RpcError> {
    call.done()
        .recv_timeout(Duration::from_secs(5))
        .expect("the call completes")
}
