//! What an idle connection costs a server in heap: the memory a server holding many idle
//! clients relies on staying small. The scale check (`tests/scale.rs`, run by hand) measures
//! RSS for 10,000 connections from a child process; this check counts allocations for a few
//! hundred, in the ordinary suite, so per-connection state that creeps up fails here first.
//!
//! Memory is counted by a global allocator (`peak_alloc`) over the whole process, so this
//! binary holds one test.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod peak;
mod util;

use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use util::{assert_healthy, wait_until, TestServer};

/// Few enough for a default descriptor limit of 1,024 (each connection takes two here).
const CONNECTIONS: usize = 400;

/// The most heap one idle plaintext connection may hold in the server: its handle, decoder
/// and queues, its handler and call table, its loop slot and registry entry. 915-931 bytes
/// on 2026-12-07 (release, debug); 1,210 before the rare and client-only parts were boxed.
const HEAP_PER_IDLE_CONNECTION: usize = 1024;

/// The heap allocated now, once it has not changed for a few looks 50 ms apart (the loop may
/// still be setting up the last connections when the server has counted them).
fn settled_usage() -> usize {
    let mut last = peak::current_usage();
    let mut same = 0;
    while same < 3 {
        thread::sleep(Duration::from_millis(50));
        let now = peak::current_usage();
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    last
}

#[test]
fn an_idle_connection_costs_the_server_under_a_kilobyte_of_heap() {
    let _alone = peak::exclusive();
    let server = TestServer::start_for_idle(CONNECTIONS);
    assert_healthy(server.addr());
    let mut held = Vec::with_capacity(CONNECTIONS);
    let before = settled_usage();
    for _ in 0..CONNECTIONS {
        held.push(TcpStream::connect(server.addr()).unwrap());
    }
    wait_until("every connection accepted", Duration::from_secs(30), || {
        server.server.stats().open_connections == CONNECTIONS
    });
    let per_connection = settled_usage().saturating_sub(before) / CONNECTIONS;
    println!("{CONNECTIONS} idle connections: {per_connection} bytes of heap each");
    assert!(
        per_connection < HEAP_PER_IDLE_CONNECTION,
        "an idle connection holds {per_connection} bytes of heap in the server"
    );
    assert_healthy(server.addr());
    drop(held);
    wait_until("every connection closed", Duration::from_secs(10), || {
        server.server.stats().open_connections == 0
    });
}
