//! A server in another process: killed with SIGKILL mid-call, and run out of file descriptors
//! (`prlimit --nofile=64`). The child is this test binary re-executed with
//! `NETRPC_CHILD_SERVER` set; it serves until its stdin closes, so it never outlives the test.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod util;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::process::Child;
use std::thread;
use std::time::{Duration, Instant};

use netrpc::{done_channel, Client, RpcError, Server};
use util::{Args, ArithClient, TestServer};

const CHILD_VAR: &str = "NETRPC_CHILD_SERVER";

/// The child side: serves until stdin closes.
#[test]
fn child_server() {
    if std::env::var(CHILD_VAR).is_err() {
        return;
    }
    // A cap above the descriptor limit on purpose: the accept loop's EMFILE path is tested.
    let server = TestServer::start_with(Server::builder().max_connections(100_000).build());
    println!("LISTENING {}", server.addr());
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

/// Starts the child server, optionally under `prlimit`, and returns it with its address.
fn spawn_child(nofile: Option<u32>) -> (Child, SocketAddr) {
    let limit = nofile.map(|limit| format!("--nofile={limit}:{limit}"));
    let wrapper: Vec<&str> = match &limit {
        Some(limit) => vec!["prlimit", limit],
        None => Vec::new(),
    };
    let mut child = util::child::spawn_test("child_server", CHILD_VAR, "1", &wrapper);
    let (addr, _drain) = util::child::await_report(&mut child, "LISTENING");
    (child, addr.parse().unwrap())
}

#[test]
fn a_server_killed_mid_call_fails_every_pending_call_promptly() {
    let (mut child, addr) = spawn_child(None);
    let client = Client::dial(addr).unwrap();
    let (done, completions) = done_channel::<u64>();
    for _ in 0..100 {
        client.go_with("Probe.Sleep", &5_000u64, &done);
    }
    let blocking: Vec<_> = (0..10)
        .map(|_| {
            let client = client.clone();
            thread::spawn(move || client.call::<_, u64>("Probe.Sleep", &5_000u64))
        })
        .collect();
    util::wait_until("all 110 calls pending", Duration::from_secs(5), || {
        client.pending_calls() == 110
    });
    child.kill().unwrap();
    let killed_at = Instant::now();
    for _ in 0..100 {
        let completion = completions.recv_timeout(Duration::from_secs(2)).unwrap();
        let err = completion.result.unwrap_err();
        assert!(matches!(err, RpcError::ConnectionLost { .. }), "{err:?}");
    }
    for call in blocking {
        let err = call.join().unwrap().unwrap_err();
        assert!(matches!(err, RpcError::ConnectionLost { .. }), "{err:?}");
    }
    assert!(
        killed_at.elapsed() < Duration::from_secs(2),
        "{:?}",
        killed_at.elapsed()
    );
    let started = Instant::now();
    let err = client.call::<_, u64>("Probe.Sleep", &0u64).unwrap_err();
    assert!(matches!(err, RpcError::Shutdown), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "later calls fail fast"
    );
    child.wait().unwrap();
}

/// CPU time (user + system) of process `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = stat.rsplit_once(')').unwrap().1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); after the name, field 3 is at index 0.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// How many file descriptors process `pid` has open.
fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

#[test]
fn out_of_descriptors_the_server_pauses_accepting_and_recovers() {
    let (mut child, addr) = spawn_child(Some(64));
    let arith = ArithClient::new(Client::dial(addr).unwrap());
    // prlimit runs the test binary in place, so the child's pid is the server's.
    let pid = child.id();
    // 120 connections: well past the 64 descriptors, and within the listen backlog of 128, so
    // the ones the server cannot accept wait in the kernel's queue instead of in `connect`.
    let flood: Vec<TcpStream> = (0..120)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok())
        .collect();
    assert!(flood.len() > 64, "only {} connected", flood.len());
    util::wait_until(
        "the server to use up its 64 descriptors",
        Duration::from_secs(2),
        || open_descriptors(pid) >= 64,
    );
    let ticks_before = cpu_ticks(pid);
    thread::sleep(Duration::from_secs(2));
    let ticks = cpu_ticks(pid) - ticks_before;
    assert!(
        ticks < 50,
        "the server spun on EMFILE: {ticks} ticks of CPU in 2 s"
    );
    assert_eq!(
        arith.multiply(&Args { a: 6, b: 7 }).unwrap(),
        42,
        "existing clients served"
    );
    drop(flood);
    util::wait_until(
        "new connections accepted again",
        Duration::from_secs(5),
        || {
            Client::dial(addr)
                .ok()
                .and_then(|client| ArithClient::new(client).multiply(&Args { a: 2, b: 3 }).ok())
                == Some(6)
        },
    );
    println!("EMFILE: {ticks} clock ticks of server CPU over 2 s while out of descriptors");
    drop(child.stdin.take());
    child.wait().unwrap();
}
