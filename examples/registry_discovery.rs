//! Service registry and discovery (SEEDS §7): servers register with a TTL and heartbeats, a
//! client watches the registry and a health checker, and calls whichever instances are live.
//!
//! Starts two `Arith` servers on 127.0.0.1, each kept registered by a `Registration`
//! (heartbeat every TTL/3). A client watches the healthy instances and calls each. Then one
//! server stops while its heartbeat goes on: the health checker's Ping probes fail and it is
//! dropped from the healthy list; the other server's registration is dropped, which
//! deregisters it. The articles' production registries are Consul and etcd: with `--etcd
//! host:port` the same code runs on `EtcdRegistry` instead of the in-process `MemoryRegistry`.
//!
//! Run: `cargo run --example registry_discovery` (or add `-- --etcd 127.0.0.1:2379`)
//!
//! Prints each change the client sees and each call's result, then `done`.

#[path = "support/args.rs"]
mod args;
#[path = "support/arith.rs"]
mod arith;

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use arith::{Args, ArithClient, ArithServer, Calculator};
use netrpc::cluster::{
    EtcdRegistry, HealthChecker, Instance, MemoryRegistry, Registration, Registry, Watcher,
};
use netrpc::{Client, Server, ServerHandle};

const USAGE: &str = "registry_discovery [--etcd host:port]";

fn main() -> Result<(), Box<dyn Error>> {
    let flags = args::Flags::parse(USAGE)?;
    let registry: Arc<dyn Registry> = match flags.get_str("etcd") {
        Some(addr) => {
            println!("registry: etcd at {addr}");
            Arc::new(EtcdRegistry::new(addr).with_prefix("/netrpc-example/"))
        }
        None => {
            println!("registry: in-process");
            Arc::new(MemoryRegistry::new())
        }
    };

    let (first, second) = (start_arith()?, start_arith()?);
    let ttl = Duration::from_secs(2);
    let first_registration = register(&registry, &first, "a", ttl)?;
    let second_registration = register(&registry, &second, "b", ttl)?;

    let checker = HealthChecker::builder()
        .interval(Duration::from_millis(200))
        .timeout(Duration::from_millis(300))
        .unhealthy_after(2)
        .start(registry.watch("Arith")?)?;
    let mut healthy = checker.watch();
    let mut live = healthy.current();
    call_each(&live)?;

    println!("-- stopping the server in zone a (its heartbeat goes on)");
    first.shutdown();
    live = wait_for_change(&mut healthy, &live)?;
    call_each(&live)?;

    println!("-- dropping zone b's registration (deregisters it)");
    drop(second_registration);
    live = wait_for_change(&mut healthy, &live)?;
    call_each(&live)?;

    drop(first_registration);
    checker.stop();
    second.shutdown();
    println!("done");
    Ok(())
}

fn start_arith() -> Result<ServerHandle, Box<dyn Error>> {
    let server = Server::new();
    server.register(ArithServer::new(Calculator))?;
    Ok(server.serve("127.0.0.1:0")?)
}

fn register(
    registry: &Arc<dyn Registry>,
    server: &ServerHandle,
    zone: &str,
    ttl: Duration,
) -> Result<Registration, Box<dyn Error>> {
    let instance =
        Instance::new("Arith", server.local_addr().to_string()).with_metadata("zone", zone);
    let registration = Registration::start(Arc::clone(registry), instance, ttl)?;
    println!(
        "registered {} (zone {zone}), lease {} for {:?}",
        server.local_addr(),
        registration.lease().id,
        registration.lease().ttl
    );
    Ok(registration)
}

/// Waits (at most 10 s) for the healthy list to differ from `before`, and prints it.
fn wait_for_change(
    healthy: &mut Watcher,
    before: &[Instance],
) -> Result<Vec<Instance>, Box<dyn Error>> {
    let now = healthy
        .changed(Duration::from_secs(10))?
        .ok_or("no change within 10 s")?;
    let addrs: Vec<&str> = now.iter().map(|i| i.addr.as_str()).collect();
    println!(
        "healthy instances: {} -> {} {addrs:?}",
        before.len(),
        now.len()
    );
    Ok(now)
}

fn call_each(instances: &[Instance]) -> Result<(), Box<dyn Error>> {
    for instance in instances {
        let arith = ArithClient::new(Client::dial(&instance.addr)?);
        let product = arith.multiply(&Args { a: 6, b: 7 })?;
        println!(
            "  {} (zone {}): 6 * 7 = {product}",
            instance.addr,
            instance.metadata.get("zone").map_or("?", String::as_str)
        );
    }
    Ok(())
}
