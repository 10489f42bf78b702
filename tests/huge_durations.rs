//! `Duration::MAX` (or any huge duration) means "no limit" to a user, and must never panic
//! on `Instant + Duration` overflow: in the caller's thread, a client event loop, or a server
//! loop (where a panic would end the loop for every connection on it).

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod util;

use std::time::Duration;

use netrpc::{Client, Server};
use util::{Args, TestServer};

const HUGE: Duration = Duration::MAX;

#[test]
fn calls_with_a_huge_timeout_complete() {
    let server = TestServer::start();
    let client = Client::builder()
        .call_timeout(HUGE)
        .dial(server.addr())
        .unwrap();
    let args = Args { a: 6, b: 7 };
    assert_eq!(client.call::<_, i64>("Arith.Multiply", &args).unwrap(), 42);
    assert_eq!(
        client.go::<_, i64>("Arith.Multiply", &args).wait().unwrap(),
        42
    );
    // A client kept alive: dropping the last handle closes it, failing its pending calls.
    let other = server.client();
    let call = other.go_timeout::<_, i64>("Arith.Multiply", &args, HUGE);
    assert_eq!(call.wait().unwrap(), 42);
    let blocking = other.call_timeout::<_, i64>("Arith.Multiply", &args, HUGE);
    assert_eq!(blocking.unwrap(), 42);
}

#[test]
fn a_server_with_huge_timeouts_serves_and_shuts_down() {
    let server = TestServer::start_with(
        Server::builder()
            .idle_timeout(HUGE)
            .first_frame_timeout(Some(HUGE))
            .build(),
    );
    util::assert_healthy(server.addr());
    assert!(server.handle.shutdown_gracefully(HUGE), "nothing in flight");
}
