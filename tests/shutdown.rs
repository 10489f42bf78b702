//! Ending connections: the server going away and the client closing. No call hangs.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod util;

use std::thread;
use std::time::{Duration, Instant};

use netrpc::RpcError;
use util::{Args, ProbeClient, TestServer};

#[test]
fn server_shutdown_fails_every_pending_call_promptly_and_later_calls_fast() {
    let server = TestServer::start();
    let client = server.client();
    let probe = ProbeClient::new(client.clone());
    let go_calls: Vec<_> = (0..20).map(|i| probe.block_go(&i)).collect();
    let blocking: Vec<_> = (0..5)
        .map(|i| {
            let probe = probe.clone();
            thread::spawn(move || probe.block(&i))
        })
        .collect();
    util::wait_until("calls to reach the server", Duration::from_secs(5), || {
        client.pending_calls() == 25
    });

    let killed_at = Instant::now();
    server.handle.shutdown();
    for call in go_calls {
        let err = call.wait().unwrap_err();
        assert!(matches!(err, RpcError::ConnectionLost { .. }), "{err:?}");
    }
    for thread in blocking {
        let err = thread.join().unwrap().unwrap_err();
        assert!(matches!(err, RpcError::ConnectionLost { .. }), "{err:?}");
    }
    assert!(
        killed_at.elapsed() < Duration::from_secs(2),
        "{:?}",
        killed_at.elapsed()
    );
    server.release(25); // let the blocked handlers finish; their replies go nowhere

    let started = Instant::now();
    let err = probe.sleep(&0).unwrap_err();
    assert!(matches!(err, RpcError::Shutdown), "{err:?}");
    assert!(started.elapsed() < Duration::from_millis(500));
    assert!(client.is_closed());
}

#[test]
fn closing_the_client_fails_pending_calls_with_shutdown() {
    let server = TestServer::start();
    let client = server.client();
    let probe = ProbeClient::new(client.clone());
    let pending: Vec<_> = (0..10).map(|i| probe.block_go(&i)).collect();
    util::wait_until("calls to be sent", Duration::from_secs(5), || {
        client.pending_calls() == 10
    });
    client.close();
    client.close(); // idempotent
    for call in pending {
        let err = call.wait().unwrap_err();
        assert!(matches!(err, RpcError::Shutdown), "closed by me: {err:?}");
    }
    let err = client
        .call::<_, i64>("Arith.Multiply", &Args { a: 1, b: 1 })
        .unwrap_err();
    assert!(matches!(err, RpcError::Shutdown), "{err:?}");
    server.release(10);
    util::assert_healthy(server.addr());
}

#[test]
fn a_server_process_that_vanishes_is_seen_as_connection_lost() {
    // An "evil server" that accepts and then drops the connection without answering.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepter = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        thread::sleep(Duration::from_millis(100));
        drop(stream);
    });
    let client = netrpc::Client::dial(addr).unwrap();
    let call = client.go::<_, i64>("Arith.Multiply", &Args { a: 1, b: 2 });
    let err = call.wait().unwrap_err();
    assert!(matches!(err, RpcError::ConnectionLost { .. }), "{err:?}");
    assert!(err.is_retryable());
    accepter.join().unwrap();
}

#[test]
fn shutdown_is_idempotent_and_prompt_when_idle() {
    let server = TestServer::start();
    let started = Instant::now();
    server.handle.shutdown();
    server.handle.shutdown();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(netrpc::Client::dial_timeout(server.addr(), Duration::from_millis(500)).is_err());
}
