//! Connection slots cannot be held hostage: sockets that never speak are closed by the
//! first-frame timeout, the default cap is sized for thousands of idle connections, and a
//! client refused at the cap is told why (`Throttled`, retryable), never a bare `Shutdown`.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod util;

use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use netrpc::transport::FrameKind;
use netrpc::{ErrorBody, ErrorCode, RpcError, Server};
use util::evil::EvilClient;
use util::{assert_back_to_idle, wait_until, Args, TestServer};

#[test]
fn two_thousand_idle_sockets_do_not_lock_out_a_new_client() {
    // The default cap is under test, not the first-frame timeout (tested below): on a loaded
    // machine connecting 2,000 sockets can take longer than its 10 s, and it would then
    // close them before they are counted.
    let server = TestServer::start_with(
        Server::builder()
            .first_frame_timeout(Some(Duration::from_secs(120)))
            .build(),
    );
    let idle: Vec<TcpStream> = (0..2_000)
        .map(|_| TcpStream::connect(server.addr()).unwrap())
        .collect();
    wait_until(
        "the server to hold 2,000 idle connections",
        Duration::from_secs(20),
        || server.server.stats().open_connections == idle.len(),
    );
    let arith = server.arith();
    assert_eq!(arith.multiply(&Args { a: 6, b: 7 }).unwrap(), 42);
    assert_eq!(server.server.stats().refused_connections, 0);
    drop(idle);
    drop(arith);
    assert_back_to_idle(&server.server);
}

#[test]
fn a_client_over_the_connection_cap_is_told_it_is_throttled() {
    let server = TestServer::start_with(Server::builder().max_connections(2).build());
    let held: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(server.addr()).unwrap())
        .collect();
    wait_until("two connections held", Duration::from_secs(5), || {
        server.server.stats().open_connections == 2
    });
    // What a refused peer reads: one error frame about the connection (seq 0), then EOF.
    let mut raw = EvilClient::connect(server.addr());
    let frames = raw.read_until_closed();
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!((frames[0].kind, frames[0].seq), (FrameKind::Error, 0));
    let body = ErrorBody::decode(&frames[0].body).unwrap();
    assert_eq!(body.code, ErrorCode::Throttled);
    assert!(body.message.contains("limit of 2 connections"), "{body:?}");
    // What a netrpc client's caller sees: the retryable Throttled, on every call.
    let refused = server.arith();
    for _ in 0..2 {
        let err = refused.multiply(&Args { a: 1, b: 2 }).unwrap_err();
        assert!(matches!(err, RpcError::Throttled), "{err:?}");
        assert!(err.is_retryable());
    }
    assert_eq!(server.server.stats().refused_connections, 2);
    // Once a slot frees, a new client is served.
    drop(held);
    wait_until("the held slots to free", Duration::from_secs(5), || {
        server.server.stats().open_connections == 0
    });
    assert_eq!(server.arith().multiply(&Args { a: 6, b: 7 }).unwrap(), 42);
}

#[test]
fn a_socket_that_never_sends_a_frame_is_told_to_go_away_then_closed() {
    let timeout = Duration::from_millis(200);
    let server =
        TestServer::start_with(Server::builder().first_frame_timeout(Some(timeout)).build());
    let started = Instant::now();
    let mut silent = EvilClient::connect(server.addr());
    // Half a header is not a frame either.
    let mut half = EvilClient::connect(server.addr());
    half.send_raw(b"NR");
    for peer in [&mut silent, &mut half] {
        let frames = peer.read_until_closed();
        let closed_after = started.elapsed();
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!((frames[0].kind, frames[0].seq), (FrameKind::GoAway, 0));
        assert!(
            closed_after >= timeout && closed_after < Duration::from_secs(3),
            "closed after {closed_after:?}"
        );
    }
    assert_eq!(server.server.stats().first_frame_timeouts, 2);
    assert_back_to_idle(&server.server);
}

#[test]
fn a_netrpc_client_silent_past_the_first_frame_timeout_can_still_call() {
    let timeout = Duration::from_millis(100);
    let server =
        TestServer::start_with(Server::builder().first_frame_timeout(Some(timeout)).build());
    let arith = server.arith();
    // The client's hello (a ping as its first frame) counts as the first frame.
    thread::sleep(timeout * 4);
    assert_eq!(arith.multiply(&Args { a: 6, b: 7 }).unwrap(), 42);
    assert_eq!(server.server.stats().first_frame_timeouts, 0);
}

#[test]
fn the_default_connection_cap_fits_under_the_open_files_limit() {
    let cap = netrpc::core::default_max_connections();
    assert!((1..=netrpc::core::DEFAULT_MAX_CONNECTIONS).contains(&cap));
    assert_eq!(Server::new().config().max_connections, cap);
    assert_eq!(
        Server::new().config().first_frame_timeout,
        Some(netrpc::core::DEFAULT_FIRST_FRAME_TIMEOUT)
    );
}
