//! Scale checks (ignored by default: run with
//! `cargo test --release --test scale -- --ignored --nocapture`):
//! 10,000 idle connections held by one server, with its memory growth per connection, and
//! 8,000 concurrent `go` calls with none lost or duplicated.
//!
//! The client sockets live in a child process (this test binary re-executed with
//! `NETRPC_SCALE_CHILD` set), because the descriptor limit is per process.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use netrpc::Server;
use util::{assert_healthy, wait_until, TestServer};

const CONNECTIONS: usize = 10_000;
const CHILD_VAR: &str = "NETRPC_SCALE_CHILD";

fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The child: opens the connections, reports, and holds them until its stdin closes.
#[test]
#[ignore = "scale check: run explicitly"]
fn scale_child() {
    let Ok(target) = std::env::var(CHILD_VAR) else {
        return;
    };
    let (addr, count) = target.split_once(',').unwrap();
    let count: usize = count.parse().unwrap();
    let mut held = Vec::with_capacity(count);
    for batch in 0..count.div_ceil(500) {
        for _ in 0..500.min(count - batch * 500) {
            held.push(TcpStream::connect(addr).unwrap());
        }
        std::thread::sleep(Duration::from_millis(20)); // let the accept queue drain
    }
    println!("CONNECTED {}", held.len());
    std::io::stdout().flush().unwrap();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

#[test]
#[ignore = "scale check: run explicitly"]
fn ten_thousand_idle_connections_cost_little_memory() {
    let server =
        TestServer::start_with(Server::builder().max_connections(CONNECTIONS + 10).build());
    assert_healthy(server.addr());
    let before = resident_kib();
    let started = Instant::now();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "scale_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_VAR, format!("{},{CONNECTIONS}", server.addr()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let connected = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|line| {
            line.split_once("CONNECTED ")
                .map(|(_, n)| n.trim().to_owned())
        })
        .expect("the child reports its connections");
    // Keep reading the child's output so its last lines never meet a closed pipe.
    let drain = std::thread::spawn(move || lines.for_each(drop));
    assert_eq!(connected, CONNECTIONS.to_string());
    wait_until("every connection accepted", Duration::from_secs(60), || {
        server.server.stats().open_connections == CONNECTIONS
    });
    let after = resident_kib();
    let growth = after.saturating_sub(before);
    println!(
        "{CONNECTIONS} idle connections: server RSS +{growth} KiB ({:.0} bytes each), \
         connected in {:?}",
        growth as f64 * 1024.0 / CONNECTIONS as f64,
        started.elapsed()
    );
    assert!(
        growth < 10 * 1024,
        "at most 10 MiB for {CONNECTIONS} idle connections"
    );
    assert_healthy(server.addr());

    drop(child.stdin.take()); // the child exits and its sockets close
    child.wait().unwrap();
    drain.join().unwrap();
    wait_until("every connection closed", Duration::from_secs(10), || {
        server.server.stats().open_connections == 0
    });
}
