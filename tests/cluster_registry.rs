//! Service registry and discovery (SEEDS §7): registration with a TTL, heartbeats, expiry,
//! deregistration on drop and watches, as one behaviour suite run against both backends (in
//! memory and etcd); etcd's own lease and watch; health checks against a real server that is
//! stopped and started again.
//!
//! The etcd tests use the etcd at `NETRPC_ETCD` (`host:port`, as `.ci/run` sets it); without
//! it they start a throwaway `etcd` from the PATH on free loopback ports, and without that
//! binary they print why and skip.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod util;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use netrpc::cluster::etcd::{base64, HttpClient};
use netrpc::cluster::{
    ping_probe, EtcdRegistry, HealthChecker, Instance, MemoryRegistry, Registration, Registry,
    RegistryError, Watcher,
};
use netrpc::{RpcError, Server};
use util::{wait_until, ArithServer, Calculator};

/// The behaviour every backend shares, written once against the trait. `ttl` is the TTL to
/// ask for; tests read the granted one from the lease.
mod suite {
    use super::*;

    pub(super) fn registers_lists_and_deregisters(registry: &dyn Registry, ttl: Duration) {
        let a = Instance::new("Arith", "127.0.0.1:7001").with_metadata("zone", "a");
        let b = Instance::new("Arith", "127.0.0.1:7002").with_weight(5);
        let other = Instance::new("Other", "127.0.0.1:7003");
        let lease_b = registry.register(&b, ttl).unwrap();
        let lease_a = registry.register(&a, ttl).unwrap();
        registry.register(&other, ttl).unwrap();
        assert!(
            lease_a.ttl >= ttl,
            "the granted ttl is never shorter than asked"
        );
        assert_eq!(registry.list("Arith").unwrap(), vec![a.clone(), b.clone()]);
        assert!(registry.list("Nobody").unwrap().is_empty());
        registry.deregister(lease_b).unwrap();
        assert_eq!(registry.list("Arith").unwrap(), vec![a]);
        assert!(matches!(
            registry.deregister(lease_b),
            Err(RegistryError::LeaseNotFound { .. })
        ));
        let bad = Instance::new("Ar/ith", "127.0.0.1:1");
        assert!(matches!(
            registry.register(&bad, ttl),
            Err(RegistryError::InvalidInstance { .. })
        ));
    }

    pub(super) fn expires_without_heartbeat(registry: &dyn Registry, ttl: Duration) {
        let instance = Instance::new("Expiring", "127.0.0.1:7010");
        let lease = registry.register(&instance, ttl).unwrap();
        assert_eq!(registry.list("Expiring").unwrap(), vec![instance]);
        let registered = Instant::now();
        wait_until(
            "the unrenewed instance to expire",
            lease.ttl + SLACK,
            || registry.list("Expiring").unwrap().is_empty(),
        );
        assert!(
            registered.elapsed() >= lease.ttl - Duration::from_millis(50),
            "expired after {:?}, before its ttl of {:?}",
            registered.elapsed(),
            lease.ttl
        );
        assert!(matches!(
            registry.renew(lease),
            Err(RegistryError::LeaseNotFound { .. })
        ));
    }

    pub(super) fn heartbeat_keeps_alive_and_drop_deregisters(
        registry: Arc<dyn Registry>,
        ttl: Duration,
    ) {
        let instance = Instance::new("Beating", "127.0.0.1:7020");
        let registration =
            Registration::start(Arc::clone(&registry), instance.clone(), ttl).unwrap();
        let granted = registration.lease().ttl;
        // Past the TTL plus the backend's expiry granularity: only heartbeats keep it listed.
        thread::sleep(granted + granted / 2 + Duration::from_millis(500));
        assert_eq!(registry.list("Beating").unwrap(), vec![instance]);
        assert!(
            registration.renewals() >= 2,
            "{} renewals",
            registration.renewals()
        );
        assert_eq!(registration.reregistrations(), 0);
        drop(registration);
        assert!(
            registry.list("Beating").unwrap().is_empty(),
            "dropping the registration deregisters at once"
        );
    }

    pub(super) fn watch_sees_add_expiry_and_remove(registry: &dyn Registry, ttl: Duration) {
        let mut watcher = registry.watch("Watched").unwrap();
        assert!(watcher.current().is_empty());
        let a = Instance::new("Watched", "127.0.0.1:7030");
        let b = Instance::new("Watched", "127.0.0.1:7031");
        let lease_a = registry.register(&a, Duration::from_secs(30)).unwrap();
        assert_eq!(next_change(&mut watcher, "a registered"), vec![a.clone()]);
        registry.register(&b, ttl).unwrap();
        assert_eq!(
            next_change(&mut watcher, "b registered"),
            vec![a.clone(), b.clone()]
        );
        assert_eq!(next_change(&mut watcher, "b expired"), vec![a.clone()]);
        registry.deregister(lease_a).unwrap();
        assert!(next_change(&mut watcher, "a deregistered").is_empty());
        registry
            .register(&Instance::new("Unwatched", "127.0.0.1:7032"), ttl)
            .unwrap();
        assert_eq!(
            watcher.changed(Duration::from_millis(300)).unwrap(),
            None,
            "another service's change is not this watcher's"
        );
    }

    fn next_change(watcher: &mut Watcher, what: &str) -> Vec<Instance> {
        match watcher.changed(Duration::from_secs(6)) {
            Ok(Some(instances)) => instances,
            other => panic!("waiting for the watch to see {what}: {other:?}"),
        }
    }
}

/// Slack for timed expectations on a loaded 2-core machine; etcd checks leases every 500 ms.
const SLACK: Duration = Duration::from_secs(3);
/// TTL asked of the in-memory registry.
const MEMORY_TTL: Duration = Duration::from_millis(300);
/// TTL asked of etcd (it grants at least its minimum, 2 s by default).
const ETCD_TTL: Duration = Duration::from_secs(1);

#[test]
fn memory_registry_registers_lists_and_deregisters() {
    suite::registers_lists_and_deregisters(&MemoryRegistry::new(), MEMORY_TTL);
}

#[test]
fn memory_registry_expires_an_instance_without_heartbeat() {
    suite::expires_without_heartbeat(&MemoryRegistry::new(), MEMORY_TTL);
}

#[test]
fn memory_registry_heartbeat_keeps_alive_and_drop_deregisters() {
    suite::heartbeat_keeps_alive_and_drop_deregisters(Arc::new(MemoryRegistry::new()), MEMORY_TTL);
}

#[test]
fn memory_registry_watch_sees_add_expiry_and_remove() {
    suite::watch_sees_add_expiry_and_remove(&MemoryRegistry::new(), MEMORY_TTL);
}

#[test]
fn etcd_registry_registers_lists_and_deregisters() {
    if let Some(etcd) = etcd_registry("list") {
        suite::registers_lists_and_deregisters(&etcd, ETCD_TTL);
    }
}

#[test]
fn etcd_registry_expires_an_instance_without_heartbeat() {
    if let Some(etcd) = etcd_registry("expiry") {
        suite::expires_without_heartbeat(&etcd, ETCD_TTL);
    }
}

#[test]
fn etcd_registry_heartbeat_keeps_alive_and_drop_deregisters() {
    if let Some(etcd) = etcd_registry("heartbeat") {
        suite::heartbeat_keeps_alive_and_drop_deregisters(Arc::new(etcd), ETCD_TTL);
    }
}

#[test]
fn etcd_registry_watch_sees_add_expiry_and_remove() {
    if let Some(etcd) = etcd_registry("watch") {
        suite::watch_sees_add_expiry_and_remove(&etcd, ETCD_TTL);
    }
}

#[test]
fn etcd_lease_expiry_deletes_the_key_itself() {
    let Some(etcd) = etcd_registry("lease") else {
        return;
    };
    let instance = Instance::new("Leased", "127.0.0.1:7040");
    let lease = etcd.register(&instance, ETCD_TTL).unwrap();
    let key = etcd.key_of(&instance);
    let raw = HttpClient::new(etcd_addr().unwrap());
    let range = format!(r#"{{"key":"{}"}}"#, base64::encode(key.as_bytes()));
    let stored = |raw: &HttpClient| {
        let body = raw.post("/v3/kv/range", range.as_bytes()).unwrap().body;
        String::from_utf8(body).unwrap()
    };
    let before = stored(&raw);
    assert!(
        before.contains(&format!(r#""lease":"{}""#, lease.id)),
        "{before}"
    );
    wait_until(
        "etcd to revoke the lease and its key",
        lease.ttl + SLACK,
        || !stored(&raw).contains("\"kvs\""),
    );
}

#[test]
fn etcd_watch_picks_up_a_new_instance_from_another_client() {
    let Some(etcd) = etcd_registry("watch-latency") else {
        return;
    };
    let mut watcher = etcd.watch("Late").unwrap();
    // A second registry object: the change comes through etcd, not through shared memory.
    let writer = etcd.clone();
    let instance = Instance::new("Late", "127.0.0.1:7050");
    let registered = Instant::now();
    let lease = writer.register(&instance, Duration::from_secs(10)).unwrap();
    let seen = watcher.changed(Duration::from_secs(5)).unwrap();
    let latency = registered.elapsed();
    assert_eq!(seen, Some(vec![instance]));
    println!("etcd watch: a registration seen after {latency:?} (register included)");
    writer.deregister(lease).unwrap();
    assert_eq!(
        watcher.changed(Duration::from_secs(5)).unwrap(),
        Some(Vec::new())
    );
}

#[test]
fn health_checker_drops_a_stopped_server_and_restores_it_when_it_returns() {
    let registry = MemoryRegistry::new();
    let server = start_arith("127.0.0.1:0");
    let addr = server.local_addr();
    let instance = Instance::new("Arith", addr.to_string());
    let _registration = Registration::start(
        Arc::new(registry.clone()),
        instance.clone(),
        Duration::from_secs(30),
    )
    .unwrap();
    let checker = HealthChecker::builder()
        .interval(Duration::from_millis(100))
        .timeout(Duration::from_millis(500))
        .unhealthy_after(2)
        .healthy_after(2)
        .start(registry.watch("Arith").unwrap())
        .unwrap();
    let mut healthy = checker.watch();
    wait_until("a first round of probes", SLACK, || checker.rounds() >= 1);
    assert_eq!(checker.healthy(), vec![instance.clone()]);

    server.shutdown();
    wait_until("the stopped server to turn unhealthy", SLACK, || {
        checker.healthy().is_empty()
    });
    let status = &checker.statuses()[0];
    assert!(status.consecutive_failures >= 2, "{status:?}");
    assert!(
        matches!(status.last_error, Some(RpcError::Unreachable { .. })),
        "{status:?}"
    );
    assert_eq!(
        registry.list("Arith").unwrap(),
        vec![instance.clone()],
        "the heartbeat still holds it in the registry: health is the checker's view"
    );

    let restarted = start_arith(&addr.to_string());
    wait_until("the restarted server to be healthy again", SLACK, || {
        checker.healthy() == vec![instance.clone()]
    });
    let mut changes = Vec::new();
    while let Ok(Some(snapshot)) = healthy.changed(Duration::ZERO) {
        changes.push(snapshot);
    }
    assert_eq!(
        changes.last(),
        Some(&vec![instance]),
        "watchers see the return"
    );
    checker.stop();
    restarted.shutdown();
}

#[test]
fn health_checker_forgets_deregistered_instances_at_once() {
    let registry = MemoryRegistry::new();
    let lease = registry
        .register(
            &Instance::new("Arith", "127.0.0.1:1"),
            Duration::from_secs(30),
        )
        .unwrap();
    let checker = HealthChecker::builder()
        .interval(Duration::from_secs(60))
        .start(registry.watch("Arith").unwrap())
        .unwrap();
    assert_eq!(
        checker.healthy().len(),
        1,
        "registered instances start healthy"
    );
    registry.deregister(lease).unwrap();
    wait_until("the checker to follow the registry", SLACK, || {
        checker.healthy().is_empty() && checker.statuses().is_empty()
    });
}

#[test]
fn ping_probe_tells_a_netrpc_server_from_silent_and_foreign_peers() {
    let server = start_arith("127.0.0.1:0");
    let timeout = Duration::from_millis(300);
    let live = Instance::new("Arith", server.local_addr().to_string());
    ping_probe(&live, timeout).unwrap();

    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let started = Instant::now();
    let err = ping_probe(
        &Instance::new("S", silent.local_addr().unwrap().to_string()),
        timeout,
    )
    .unwrap_err();
    assert!(matches!(err, RpcError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < timeout + SLACK);

    let foreign = TcpListener::bind("127.0.0.1:0").unwrap();
    let foreign_addr = foreign.local_addr().unwrap().to_string();
    let peer = thread::spawn(move || {
        let (mut conn, _) = foreign.accept().unwrap();
        let mut buf = [0u8; 64];
        let _ = conn.read(&mut buf);
        let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
    });
    let err = ping_probe(&Instance::new("F", foreign_addr), timeout).unwrap_err();
    assert!(matches!(err, RpcError::Protocol { .. }), "{err}");
    peer.join().unwrap();
    server.shutdown();
}

fn start_arith(addr: &str) -> netrpc::ServerHandle {
    let server = Server::new();
    server.register(ArithServer::new(Calculator)).unwrap();
    // A restarted server may find its port briefly held; retry for a bounded time.
    let deadline = Instant::now() + SLACK;
    loop {
        match server.serve(addr) {
            Ok(handle) => return handle,
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
            Err(err) => panic!("serving Arith on {addr}: {err}"),
        }
    }
}

/// An etcd registry under a prefix of its own (tests share one etcd), or `None` when no etcd
/// can be had.
fn etcd_registry(test: &str) -> Option<EtcdRegistry> {
    let addr = etcd_addr()?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let prefix = format!("/netrpc-test/{}-{nanos}/{test}/", std::process::id());
    Some(EtcdRegistry::new(addr).with_prefix(prefix))
}

/// `NETRPC_ETCD`, or a throwaway etcd started once for this test binary.
fn etcd_addr() -> Option<String> {
    static ADDR: OnceLock<Option<String>> = OnceLock::new();
    ADDR.get_or_init(|| {
        // An empty value counts as unset.
        if let Some(addr) = std::env::var("NETRPC_ETCD")
            .ok()
            .filter(|addr| !addr.is_empty())
        {
            return Some(addr);
        }
        let started = start_throwaway_etcd();
        if started.is_none() {
            println!("skipping: NETRPC_ETCD is unset and no `etcd` binary is on the PATH");
        }
        started
    })
    .clone()
}

/// Starts etcd on two free loopback ports in a temporary directory, under a shell that kills
/// it and removes the directory when this process exits (its stdin pipe closes).
fn start_throwaway_etcd() -> Option<String> {
    let found = Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .status();
    if !found.is_ok_and(|status| status.success()) {
        return None;
    }
    let free_port = || {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (client_port, peer_port) = (free_port(), free_port());
    let dir: PathBuf = std::env::temp_dir().join(format!("netrpc-etcd-{}", std::process::id()));
    let client_url = format!("http://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let script = format!(
        "etcd --data-dir '{dir}' --name netrpc-test \
         --listen-client-urls {client_url} --advertise-client-urls {client_url} \
         --listen-peer-urls {peer_url} --initial-advertise-peer-urls {peer_url} \
         --initial-cluster netrpc-test={peer_url} >'{dir}.log' 2>&1 & \
         pid=$!; cat >/dev/null; kill $pid; wait $pid 2>/dev/null; rm -rf '{dir}' '{dir}.log'",
        dir = dir.display()
    );
    let child: Child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .spawn()
        .ok()?;
    // The child handle (and its stdin pipe) must live as long as the process: leak it.
    std::mem::forget(child);
    let addr = format!("127.0.0.1:{client_port}");
    let probe = HttpClient::new(addr.clone()).timeout(Duration::from_millis(500));
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if probe
            .post("/v3/kv/range", br#"{"key":"AA=="}"#)
            .is_ok_and(|r| r.status == 200)
        {
            println!("started a throwaway etcd on {addr}");
            return Some(addr);
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "etcd did not answer on {addr} within 15 s (log: {}.log)",
        dir.display()
    );
}

/// A memory registry with faults to order: its renewals fail while `down` is set (the
/// registry unreachable), and with `granted` set it claims to grant every lease for that
/// long, whatever was asked.
#[derive(Debug)]
struct Tweaked {
    inner: MemoryRegistry,
    down: std::sync::atomic::AtomicBool,
    granted: Option<Duration>,
}

impl Tweaked {
    fn new(granted: Option<Duration>) -> Tweaked {
        Tweaked {
            inner: MemoryRegistry::new(),
            down: std::sync::atomic::AtomicBool::new(false),
            granted,
        }
    }
}

impl Registry for Tweaked {
    fn register(
        &self,
        instance: &Instance,
        ttl: Duration,
    ) -> Result<netrpc::cluster::Lease, RegistryError> {
        let lease = self.inner.register(instance, ttl)?;
        Ok(netrpc::cluster::Lease {
            ttl: self.granted.unwrap_or(lease.ttl),
            ..lease
        })
    }

    fn renew(&self, lease: netrpc::cluster::Lease) -> Result<(), RegistryError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(RegistryError::Backend {
                message: "registry unreachable".to_owned(),
            });
        }
        self.inner.renew(lease)
    }

    fn deregister(&self, lease: netrpc::cluster::Lease) -> Result<(), RegistryError> {
        self.inner.deregister(lease)
    }

    fn list(&self, service: &str) -> Result<Vec<Instance>, RegistryError> {
        self.inner.list(service)
    }

    fn watch(&self, service: &str) -> Result<Watcher, RegistryError> {
        self.inner.watch(service)
    }
}

#[test]
fn a_registry_outage_shorter_than_the_ttl_does_not_let_the_lease_lapse() {
    // TTL 1 s: heartbeats at about 333 and 667 ms both fall in an outage from 300 to 700 ms,
    // and the lease (last renewed at 0) runs out at 1 s, just as the third heartbeat comes:
    // unless a renewal after the outage comes sooner than that, the instance goes and has to
    // register again (a watcher sees it leave and come back).
    let registry = Arc::new(Tweaked::new(None));
    let instance = Instance::new("Arith", "127.0.0.1:7100");
    let started = Instant::now();
    let registration =
        Registration::start(registry.clone(), instance, Duration::from_secs(1)).unwrap();
    while started.elapsed() < Duration::from_millis(1600) {
        let at = started.elapsed();
        let outage = at >= Duration::from_millis(300) && at < Duration::from_millis(700);
        registry
            .down
            .store(outage, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            registry.list("Arith").unwrap().len(),
            1,
            "not listed at {at:?} ({} failures, {} renewals)",
            registration.failures(),
            registration.renewals()
        );
        thread::sleep(Duration::from_millis(10));
    }
    assert!(registration.failures() >= 2, "{}", registration.failures());
    assert_eq!(registration.reregistrations(), 0, "the lease lapsed");
}

#[test]
fn a_heartbeat_paces_itself_by_the_granted_ttl_or_the_asked_one_when_zero_was_granted() {
    let instance = Instance::new("Arith", "127.0.0.1:7110");
    // Granted zero on a 3 s ask: renewals every second, not in a tight loop.
    let zero = Arc::new(Tweaked::new(Some(Duration::ZERO)));
    let registration = Registration::start(zero, instance.clone(), Duration::from_secs(3)).unwrap();
    thread::sleep(Duration::from_millis(500));
    assert!(
        registration.renewals() + registration.failures() <= 5,
        "{} renewals and {} failures in 500 ms",
        registration.renewals(),
        registration.failures()
    );
    drop(registration);
    // Granted 3 s on a 100 ms ask, as etcd rounds up: renewed every second, not every 33 ms.
    let longer = Arc::new(Tweaked::new(Some(Duration::from_secs(3))));
    let registration = Registration::start(longer, instance, Duration::from_millis(100)).unwrap();
    thread::sleep(Duration::from_millis(500));
    assert!(
        registration.renewals() + registration.failures() <= 2,
        "{} renewals and {} failures in 500 ms",
        registration.renewals(),
        registration.failures()
    );
}
