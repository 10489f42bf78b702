//! Client-side load balancing over real servers on loopback (SEEDS §7): each policy spreads
//! calls as it promises, a slow server gets fewer calls from the load-aware policies, calls
//! survive a server going away, a new endpoint list takes effect at once, and an empty one is
//! a typed error.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod util;
#[path = "../examples/support/worker.rs"]
mod worker;

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::thread;
use std::time::Duration;

use netrpc::cluster::{
    BalancedClient, Endpoint, LeastActive, PeakEwma, Random, RoundRobin, WeightedRoundRobin,
};
use netrpc::{Client, RpcError, Server, ServerHandle};
use util::{ProbeClient, TestServer};
use worker::{Task, TaskReply, Worker, WorkerServiceServer};

/// A worker server on loopback answering with `id` after `delay`.
fn start_worker(id: &str, delay: Duration) -> ServerHandle {
    let server = Server::new();
    server
        .register(WorkerServiceServer::new(Worker {
            id: id.to_owned(),
            delay,
        }))
        .unwrap();
    server.serve("127.0.0.1:0").unwrap()
}

/// An address where nothing listens.
fn dead_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn task(id: u64) -> Task {
    Task {
        id,
        text: "hello".into(),
    }
}

/// Makes `count` calls one after another; returns how many each worker id answered.
fn call_many(client: &BalancedClient, count: u64) -> HashMap<String, usize> {
    let mut answered = HashMap::new();
    for id in 0..count {
        let reply: TaskReply = client.call("WorkerService.DoTask", &task(id)).unwrap();
        *answered.entry(reply.worker_id).or_insert(0) += 1;
    }
    answered
}

fn count(answered: &HashMap<String, usize>, id: &str) -> usize {
    answered.get(id).copied().unwrap_or(0)
}

fn endpoints(servers: &[ServerHandle]) -> Vec<Endpoint> {
    servers
        .iter()
        .map(|server| Endpoint::new(server.local_addr()))
        .collect()
}

#[test]
fn round_robin_spreads_calls_evenly_over_three_servers() {
    let servers: Vec<ServerHandle> = ["a", "b", "c"]
        .iter()
        .map(|id| start_worker(id, Duration::ZERO))
        .collect();
    let client = BalancedClient::builder()
        .balancer(RoundRobin::new())
        .build(endpoints(&servers));
    let answered = call_many(&client, 30);
    for id in ["a", "b", "c"] {
        assert_eq!(count(&answered, id), 10, "{answered:?}");
    }
    let stats = client.stats();
    assert!(stats
        .iter()
        .all(|s| s.calls == 10 && s.failures == 0 && s.connected));
    assert!(stats.iter().all(|s| s.in_flight == 0));
}

#[test]
fn weighted_round_robin_follows_the_weights_exactly() {
    let servers: Vec<ServerHandle> = ["a", "b", "c"]
        .iter()
        .map(|id| start_worker(id, Duration::ZERO))
        .collect();
    let weighted: Vec<Endpoint> = endpoints(&servers)
        .into_iter()
        .zip([5, 1, 1])
        .map(|(endpoint, weight)| endpoint.with_weight(weight))
        .collect();
    let client = BalancedClient::builder()
        .balancer(WeightedRoundRobin::new())
        .build(weighted);
    let answered = call_many(&client, 70);
    assert_eq!(
        (
            count(&answered, "a"),
            count(&answered, "b"),
            count(&answered, "c")
        ),
        (50, 10, 10)
    );
}

#[test]
fn random_with_a_seed_reaches_every_server() {
    let servers: Vec<ServerHandle> = ["a", "b", "c"]
        .iter()
        .map(|id| start_worker(id, Duration::ZERO))
        .collect();
    let client = BalancedClient::builder()
        .balancer(Random::with_seed(11))
        .build(endpoints(&servers));
    let answered = call_many(&client, 60);
    assert!(
        ["a", "b", "c"].iter().all(|id| count(&answered, id) > 5),
        "{answered:?}"
    );
}

#[test]
fn peak_ewma_sends_the_slow_server_fewer_calls() {
    let servers = [
        start_worker("fast-1", Duration::ZERO),
        start_worker("fast-2", Duration::ZERO),
        start_worker("slow", Duration::from_millis(30)),
    ];
    let client = BalancedClient::builder()
        .balancer(PeakEwma::with_seed(1))
        .build(endpoints(&servers));
    let answered = call_many(&client, 150);
    // Round robin would give it 50; once measured it loses every pairing until its estimate
    // decays, which takes seconds.
    assert!(count(&answered, "slow") <= 10, "{answered:?}");
    assert!(
        count(&answered, "slow") >= 1,
        "never measured: {answered:?}"
    );
    // One caller keeps nothing in flight, so latency alone decides: the faster of the two
    // fast ones wins their pairings, and each still wins every pairing with the slow one
    // (a third of the draws).
    assert!(
        count(&answered, "fast-1") >= 30 && count(&answered, "fast-2") >= 30,
        "{answered:?}"
    );
}

#[test]
fn least_active_sends_the_slow_server_fewer_calls_under_concurrency() {
    let servers = [
        start_worker("fast-1", Duration::ZERO),
        start_worker("fast-2", Duration::ZERO),
        start_worker("slow", Duration::from_millis(30)),
    ];
    let client = BalancedClient::builder()
        .balancer(LeastActive::new())
        .build(endpoints(&servers));
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            thread::spawn(move || call_many(&client, 50))
        })
        .collect();
    let mut answered: HashMap<String, usize> = HashMap::new();
    for caller in callers {
        for (id, n) in caller.join().unwrap() {
            *answered.entry(id).or_insert(0) += n;
        }
    }
    // Round robin would give it about 67 of 200; it holds each call 30 ms while the fast
    // ones answer at once, so it is rarely the least active.
    assert!(count(&answered, "slow") < 40, "{answered:?}");
    assert_eq!(answered.values().sum::<usize>(), 200);
}

#[test]
fn a_draining_server_refuses_new_calls_and_they_move_to_another() {
    let draining = TestServer::start();
    let other = TestServer::start();
    let client = BalancedClient::new(vec![Endpoint::new(draining.addr())]);
    let blocked = {
        let client = client.clone();
        thread::spawn(move || client.call::<_, u64>("Probe.Block", &7u64))
    };
    util::wait_until("the blocking call to run", Duration::from_secs(5), || {
        draining.server.stats().in_flight_calls == 1
    });
    client.set_endpoints(vec![
        Endpoint::new(draining.addr()),
        Endpoint::new(other.addr()),
    ]);
    thread::scope(|scope| {
        // Go-away on its connection, then new calls are refused `ShuttingDown` (nothing ran)
        // while the blocked call is given up to 5 s to finish.
        let drain = scope.spawn(|| draining.handle.shutdown_gracefully(Duration::from_secs(5)));
        util::wait_until(
            "the draining server marked down",
            Duration::from_secs(5),
            || {
                let slept: u64 = client.call("Probe.Sleep", &0u64).unwrap();
                assert_eq!(slept, 0);
                client.stats()[0].down
            },
        );
        let slept: u64 = client.call("Probe.Sleep", &1u64).unwrap();
        assert_eq!(slept, 1);
        draining.release(1);
        assert_eq!(blocked.join().unwrap().unwrap(), 7);
        assert!(
            drain.join().unwrap(),
            "the blocked call finished within the grace"
        );
    });
    assert!(client.stats()[1].calls >= 2);
}

#[test]
fn a_killed_server_loses_no_idempotent_call_while_calls_run() {
    let servers: Vec<ServerHandle> = ["a", "b", "c"]
        .iter()
        .map(|id| start_worker(id, Duration::from_millis(1)))
        .collect();
    let client = BalancedClient::builder()
        .idempotent(true)
        .build(endpoints(&servers));
    let callers: Vec<_> = (0..3)
        .map(|_| {
            let client = client.clone();
            thread::spawn(move || call_many(&client, 60))
        })
        .collect();
    util::wait_until("calls on every server", Duration::from_secs(5), || {
        client.stats().iter().all(|s| s.calls >= 3)
    });
    servers[1].shutdown();
    // `call_many` unwraps every reply: a failed call fails the test here.
    let total: usize = callers
        .into_iter()
        .map(|caller| caller.join().unwrap().values().sum::<usize>())
        .sum();
    assert_eq!(total, 180);
    let killed = &client.stats()[1];
    assert!(killed.down, "{killed:?}");
    assert!(killed.failures >= 1, "{killed:?}");
}

#[test]
fn a_killed_server_costs_at_most_one_call_that_may_have_run() {
    let servers: Vec<ServerHandle> = ["a", "b", "c"]
        .iter()
        .map(|id| start_worker(id, Duration::ZERO))
        .collect();
    let client = BalancedClient::new(endpoints(&servers));
    call_many(&client, 9);
    servers[1].shutdown();
    let mut lost = 0;
    for id in 0..30 {
        match client.call::<_, TaskReply>("WorkerService.DoTask", &task(id)) {
            Ok(reply) => assert_ne!(reply.worker_id, "b"),
            // The connection was cut under a sent call: it may have run, so it is not moved.
            Err(RpcError::ConnectionLost { .. }) => lost += 1,
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    assert!(lost <= 1, "{lost} calls lost");
    assert!(client.stats()[1].down);
}

#[test]
fn an_added_endpoint_starts_receiving_calls_and_a_removed_one_stops() {
    let servers: Vec<ServerHandle> = ["a", "b", "c"]
        .iter()
        .map(|id| start_worker(id, Duration::ZERO))
        .collect();
    let all = endpoints(&servers);
    let client = BalancedClient::builder()
        .balancer(LeastActive::new())
        .build(all[..2].to_vec());
    let before = call_many(&client, 10);
    assert_eq!(count(&before, "c"), 0);
    client.set_endpoints(all.clone());
    let after = call_many(&client, 30);
    assert_eq!(count(&after, "c"), 10, "{after:?}");
    // `a` is removed; the others keep their connections and counters.
    client.set_endpoints(all[1..].to_vec());
    let stats_before = client.stats();
    let last = call_many(&client, 10);
    assert_eq!(count(&last, "a"), 0, "{last:?}");
    let stats_after = client.stats();
    assert_eq!(stats_after.len(), 2);
    assert_eq!(stats_after[0].calls, stats_before[0].calls + 5);
}

#[test]
fn an_empty_endpoint_list_gives_a_typed_error() {
    let client = BalancedClient::new(Vec::new());
    let err = client
        .call::<_, TaskReply>("WorkerService.DoTask", &task(1))
        .unwrap_err();
    match &err {
        RpcError::Unreachable { source, .. } => assert_eq!(source.kind(), io::ErrorKind::NotFound),
        other => panic!("expected Unreachable, got {other:?}"),
    }
    // Emptied at run time: the same error, not a panic or a call to a removed server.
    let server = start_worker("a", Duration::ZERO);
    client.set_endpoints(vec![Endpoint::new(server.local_addr())]);
    call_many(&client, 2);
    client.set_endpoints(Vec::new());
    assert!(matches!(
        client.call::<_, TaskReply>("WorkerService.DoTask", &task(2)),
        Err(RpcError::Unreachable { .. })
    ));
}

#[test]
fn every_endpoint_down_gives_the_last_connection_error_quickly() {
    let client = BalancedClient::builder()
        .max_attempts(5)
        .build(vec![Endpoint::new(dead_addr()), Endpoint::new(dead_addr())]);
    for _ in 0..3 {
        let err = client
            .call::<_, TaskReply>("WorkerService.DoTask", &task(1))
            .unwrap_err();
        assert!(matches!(err, RpcError::Unreachable { .. }), "{err:?}");
    }
    let stats = client.stats();
    assert!(stats
        .iter()
        .all(|s| s.down && s.calls == 0 && s.failures == 3));
}

#[test]
fn a_method_error_is_returned_without_trying_another_server() {
    let servers = [TestServer::start(), TestServer::start()];
    let client = BalancedClient::new(servers.iter().map(|s| Endpoint::new(s.addr())).collect());
    let err = client
        .call::<_, util::Quotient>("Arith.Divide", &util::Args { a: 1, b: 0 })
        .unwrap_err();
    assert!(err.is_method_error(), "{err:?}");
    let calls: u64 = client.stats().iter().map(|s| s.calls).sum();
    assert_eq!(calls, 1);
    assert!(client.stats().iter().all(|s| s.failures == 0 && !s.down));
}

#[test]
fn a_throttled_server_passes_the_call_to_another() {
    let busy = TestServer::start_with(Server::builder().max_calls(1).build());
    let idle = TestServer::start();
    // Fill the busy server's one call slot.
    let blocker = ProbeClient::new(Client::dial(busy.addr()).unwrap());
    let blocked = blocker.block_go(&1);
    util::wait_until("the blocking call to run", Duration::from_secs(5), || {
        busy.server.stats().in_flight_calls == 1
    });
    let client = BalancedClient::new(vec![Endpoint::new(busy.addr()), Endpoint::new(idle.addr())]);
    for ms in 0..4u64 {
        let slept: u64 = client.call("Probe.Sleep", &ms).unwrap();
        assert_eq!(slept, ms);
    }
    let stats = client.stats();
    // Every call the busy one was offered moved to the idle one, which answered all four.
    assert!(stats[0].failures >= 1, "{stats:?}");
    assert_eq!(stats[0].failures, stats[0].calls, "{stats:?}");
    assert_eq!(stats[1].calls, 4, "{stats:?}");
    assert!(!stats[0].down, "busy is not down");
    busy.release(1);
    assert_eq!(blocked.wait().unwrap(), 1);
}

#[test]
fn close_fails_later_calls_with_shutdown() {
    let server = start_worker("a", Duration::ZERO);
    let client = BalancedClient::new(vec![Endpoint::new(server.local_addr())]);
    call_many(&client, 1);
    let other_handle = client.clone();
    client.close();
    assert!(matches!(
        other_handle.call::<_, TaskReply>("WorkerService.DoTask", &task(1)),
        Err(RpcError::Shutdown)
    ));
    assert!(!client.stats()[0].connected);
}

#[test]
fn every_endpoints_client_is_dialed_with_the_given_client_settings() {
    // Middleware stands for any client setting (TLS, limits, ...): the template carries all.
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = std::sync::Arc::clone(&seen);
    let logging = netrpc::core::middleware::Logging::to(move |_| {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    });
    let (a, b) = (
        start_worker("a", Duration::ZERO),
        start_worker("b", Duration::ZERO),
    );
    let client = BalancedClient::builder()
        .client(Client::builder().middleware(logging))
        .build(vec![
            Endpoint::new(a.local_addr()),
            Endpoint::new(b.local_addr()),
        ]);
    for id in 0..4 {
        let task = Task {
            id,
            text: "x".into(),
        };
        client
            .call::<_, TaskReply>("WorkerService.DoTask", &task)
            .unwrap();
    }
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 4);
}

#[test]
fn an_endpoint_that_only_times_out_is_set_aside_after_a_few() {
    // A host that accepts and then says nothing (hung, or its replies lost): every call
    // routed there costs the whole timeout, so it must stop being picked.
    let good = start_worker("good", Duration::ZERO);
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let hold = thread::spawn(move || {
        let held: Vec<_> = silent.incoming().take(4).collect();
        thread::sleep(Duration::from_secs(10));
        drop(held);
    });
    let client = BalancedClient::builder()
        .balancer(RoundRobin::new())
        .call_timeout(Duration::from_millis(200))
        .build(vec![
            Endpoint::new(good.local_addr().to_string()),
            Endpoint::new(silent_addr.to_string()),
        ]);
    let timeouts = (0..20)
        .filter(|i| {
            let outcome = client.call::<_, TaskReply>("WorkerService.DoTask", &task(*i));
            matches!(outcome, Err(RpcError::Timeout { .. }))
        })
        .count();
    assert!(timeouts <= 3, "{timeouts} of 20 calls timed out");
    drop(hold);
}

#[test]
fn close_fails_a_call_whose_dial_is_under_way_and_it_is_never_sent() {
    // A listener whose accept queue is full drops new SYNs: a dial to it waits for the
    // retransmission (about a second). `close` meanwhile: the call must end with `Shutdown`
    // when its dial completes, not be sent on the new connection.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    for _ in 0..1_000 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(50)) {
            Ok(stream) => queued.push(stream),
            Err(_) => break, // the queue is full
        }
    }
    let client = BalancedClient::builder()
        .call_timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(8))
        .build(vec![Endpoint::new(addr)]);
    let caller = {
        let client = client.clone();
        thread::spawn(move || client.call::<_, TaskReply>("WorkerService.DoTask", &task(1)))
    };
    util::wait_until(
        "the dial to wait on its SYN",
        Duration::from_secs(5),
        || a_connect_waits_on(addr.port()),
    );
    client.close();
    // The server takes the listener; the waiting SYN gets through on its retransmission.
    let server = Server::new();
    server
        .register(WorkerServiceServer::new(Worker {
            id: "late".to_owned(),
            delay: Duration::ZERO,
        }))
        .unwrap();
    let _serving = server.serve_listener(listener).unwrap();
    drop(queued);
    let result = caller.join().unwrap();
    assert!(matches!(result, Err(RpcError::Shutdown)), "{result:?}");
    let ran: u64 = server.method_stats().iter().map(|stats| stats.calls).sum();
    assert_eq!(ran, 0, "the call was never sent");
}

#[test]
fn close_fails_a_call_on_an_endpoint_the_list_no_longer_has() {
    // A slow call runs on an endpoint; `set_endpoints` removes it (its connection stays for
    // the call); `close` must still end that call with `Shutdown`.
    let slow = start_worker("slow", Duration::from_secs(2));
    let client = BalancedClient::builder()
        .call_timeout(Duration::from_secs(10))
        .build(vec![Endpoint::new(slow.local_addr())]);
    let caller = {
        let client = client.clone();
        thread::spawn(move || {
            let started = std::time::Instant::now();
            let result = client.call::<_, TaskReply>("WorkerService.DoTask", &task(1));
            (result, started.elapsed())
        })
    };
    util::wait_until("the call in flight", Duration::from_secs(5), || {
        client
            .stats()
            .iter()
            .any(|endpoint| endpoint.in_flight == 1)
    });
    client.set_endpoints(Vec::new());
    client.close();
    let (result, took) = caller.join().unwrap();
    assert!(matches!(result, Err(RpcError::Shutdown)), "{result:?}");
    assert!(
        took < Duration::from_secs(2),
        "ended by the close: {took:?}"
    );
}

/// True while a connect to `port` waits for its SYN to be answered (`SYN_SENT`, state 02,
/// in `/proc/net/tcp`); true if the table cannot be read (nothing to wait for then).
fn a_connect_waits_on(port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return true;
    };
    let remote_port = format!(":{port:04X}");
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let to_port = fields
            .get(2)
            .is_some_and(|remote| remote.ends_with(&remote_port));
        to_port && fields.get(3) == Some(&"02")
    })
}
