//! Discovery feeding load balancing (SEEDS §7): a `BalancedClient` following a registry's
//! `Watcher` through `Discovery` picks up a new server and drops a departed one without a
//! restart, and a `HealthChecker`'s healthy list drops a server that stopped answering.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod util;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use netrpc::cluster::{
    BalancedClient, Discovery, HealthChecker, Instance, MemoryRegistry, Registration, Registry,
};
use util::{wait_until, Args, TestServer};

/// Which servers (by address) answer `calls` calls through `client`.
fn answering(client: &BalancedClient, servers: &[&TestServer], calls: usize) -> HashSet<String> {
    let before: Vec<u64> = servers.iter().map(|s| calls_served(s)).collect();
    for _ in 0..calls {
        let product: i64 = client.call("Arith.Multiply", &Args { a: 6, b: 7 }).unwrap();
        assert_eq!(product, 42);
    }
    servers
        .iter()
        .zip(before)
        .filter(|(server, before)| calls_served(server) > *before)
        .map(|(server, _)| server.addr().to_string())
        .collect()
}

fn calls_served(server: &TestServer) -> u64 {
    server
        .server
        .method_stats()
        .iter()
        .filter(|m| m.service == "Arith")
        .map(|m| m.calls)
        .sum()
}

fn instance(server: &TestServer) -> Instance {
    Instance::new("Arith", server.addr().to_string())
}

#[test]
fn a_balanced_client_follows_the_registry_as_servers_come_and_go() {
    let registry = MemoryRegistry::new();
    let shared: Arc<dyn Registry> = Arc::new(registry.clone());
    let servers = [
        TestServer::start(),
        TestServer::start(),
        TestServer::start(),
    ];
    let [a, b, c] = &servers;
    let ttl = Duration::from_secs(5);
    let _a = Registration::start(Arc::clone(&shared), instance(a), ttl).unwrap();
    let b_registration = Registration::start(Arc::clone(&shared), instance(b), ttl).unwrap();
    let client = BalancedClient::new(Vec::new());
    let discovery = Discovery::follow(registry.watch("Arith").unwrap(), &client);
    assert_eq!(client.endpoints().len(), 2, "the registered two, at once");
    let all = [a, b, c];
    let expect = |set: &[&TestServer]| -> HashSet<String> {
        set.iter().map(|s| s.addr().to_string()).collect()
    };
    assert_eq!(answering(&client, &all, 10), expect(&[a, b]));

    // A third server registers: it gets calls, with no restart of the client.
    let _c = Registration::start(Arc::clone(&shared), instance(c), ttl).unwrap();
    wait_until("three endpoints", Duration::from_secs(5), || {
        client.endpoints().len() == 3
    });
    assert_eq!(answering(&client, &all, 12), expect(&[a, b, c]));

    // `b` leaves (its registration dropped, as when its process stops): no more calls to it.
    b_registration.deregister().unwrap();
    wait_until("two endpoints again", Duration::from_secs(5), || {
        client.endpoints().len() == 2
    });
    assert_eq!(answering(&client, &all, 12), expect(&[a, c]));
    assert!(discovery.updates() >= 2);
    assert!(discovery.is_following());
    discovery.stop();
}

#[test]
fn a_balanced_client_following_health_checks_drops_a_server_that_stopped_answering() {
    let registry = MemoryRegistry::new();
    let (a, b) = (TestServer::start(), TestServer::start());
    for server in [&a, &b] {
        registry
            .register(&instance(server), Duration::from_secs(30))
            .unwrap();
    }
    let health = HealthChecker::builder()
        .interval(Duration::from_millis(50))
        .timeout(Duration::from_millis(200))
        .unhealthy_after(2)
        .start(registry.watch("Arith").unwrap())
        .unwrap();
    let client = BalancedClient::new(Vec::new());
    let _discovery = Discovery::follow(health.watch(), &client);
    wait_until("both healthy", Duration::from_secs(5), || {
        client.endpoints().len() == 2
    });
    let b_addr = b.addr().to_string();
    b.handle.shutdown();
    // Still registered, but no longer answering probes: the client stops using it.
    wait_until(
        "b dropped by the health checker",
        Duration::from_secs(5),
        || client.endpoints().iter().all(|e| e.addr != b_addr),
    );
    assert_eq!(registry.list("Arith").unwrap().len(), 2);
    for _ in 0..10 {
        let product: i64 = client.call("Arith.Multiply", &Args { a: 6, b: 7 }).unwrap();
        assert_eq!(product, 42);
    }
}

/// A registry listing `count` instances that nobody serves.
fn registry_of(count: usize) -> MemoryRegistry {
    let registry = MemoryRegistry::new();
    for port in 0..count {
        let instance = Instance::new("Slow", format!("127.0.0.1:{}", 20_000 + port));
        registry
            .register(&instance, Duration::from_secs(60))
            .unwrap();
    }
    registry
}

#[test]
fn a_health_checker_stops_within_one_probe_timeout_even_mid_round() {
    // 48 instances are three batches of 16 probes; each probe takes the whole timeout.
    let registry = registry_of(48);
    let checker = HealthChecker::builder()
        .timeout(Duration::from_millis(200))
        .probe(|_, timeout| {
            std::thread::sleep(timeout);
            Ok(())
        })
        .start(registry.watch("Slow").unwrap())
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let started = std::time::Instant::now();
    drop(checker);
    let took = started.elapsed();
    assert!(took < Duration::from_millis(350), "stopped after {took:?}");
}

#[test]
fn a_health_checker_whose_registry_closes_closes_its_own_watch() {
    let registry = registry_of(1);
    let checker = HealthChecker::builder()
        .interval(Duration::from_millis(20))
        .probe(|_, _| Ok(()))
        .start(registry.watch("Slow").unwrap())
        .unwrap();
    let mut healthy = checker.watch();
    drop(registry);
    let started = std::time::Instant::now();
    loop {
        match healthy.changed(Duration::from_millis(100)) {
            Err(netrpc::cluster::RegistryError::Closed) => break,
            _ => assert!(
                started.elapsed() < Duration::from_secs(2),
                "the healthy list never closed"
            ),
        }
    }
}
