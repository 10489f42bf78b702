//! A thread waiting for `go` calls reads their replies itself (`Client::recv_completion` for
//! `go_with` completions, `Call::wait` for a `Call`), and every way a call can end still
//! reaches it.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod util;

use std::collections::HashMap;
use std::io::Read;
use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use netrpc::{done_channel, Client, Completion, RpcError};
use util::{Args, DecodedOn, TestServer};

/// Waits (reading) for the next completion on `completions`, which must be a failure: returns
/// its seq and error.
fn next_failure<R: std::fmt::Debug>(
    client: &Client,
    completions: &Receiver<Completion<R>>,
) -> (u64, RpcError) {
    let completion = client
        .recv_completion(completions, Duration::from_secs(30))
        .expect("a completion within 30 s, no hang");
    match completion.result {
        Err(err) => (completion.seq, err),
        Ok(value) => panic!("call {} succeeded with {value:?}", completion.seq),
    }
}

#[test]
fn the_waiting_thread_reads_and_decodes_its_reply_itself() {
    let server = TestServer::start();
    let client = server.client();
    let (done, completions) = done_channel::<DecodedOn>();
    // The reply comes 200 ms later, long after the caller has started reading.
    client.go_with("Probe.Sleep", &200u64, &done);
    let completion = client
        .recv_completion(&completions, Duration::from_secs(10))
        .unwrap();
    let reply = completion.result.unwrap();
    assert_eq!(reply.ms, 200);
    assert_eq!(
        reply.thread,
        thread::current().id(),
        "the reply was decoded by the waiting thread, not handed over by the client's loop"
    );
}

#[test]
fn call_wait_reads_and_decodes_its_reply_on_the_waiting_thread() {
    let server = TestServer::start();
    let client = server.client();
    let call = client.go::<_, DecodedOn>("Probe.Sleep", &200u64);
    let reply = call.wait().unwrap();
    assert_eq!(reply.ms, 200);
    assert_eq!(reply.thread, thread::current().id());
}

#[test]
fn call_wait_gets_the_timeout_of_a_call_whose_deadline_passes_while_it_reads() {
    let server = TestServer::start();
    let client = server.client();
    let call = client.go_timeout::<_, u64>("Probe.Sleep", &3_000u64, Duration::from_millis(200));
    let started = Instant::now();
    assert!(matches!(call.wait(), Err(RpcError::Timeout { .. })));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the timeout came from the call's deadline, not from the reply"
    );
}

#[test]
fn dropping_the_client_fails_a_call_another_thread_waits_on_with_shutdown() {
    let server = TestServer::start();
    let client = server.client();
    let call = client.go::<_, u64>("Probe.Sleep", &3_000u64);
    let waiter = thread::spawn(move || call.wait());
    thread::sleep(Duration::from_millis(100));
    drop(client);
    let outcome = waiter.join().unwrap();
    assert!(
        matches!(outcome, Err(RpcError::Shutdown)),
        "a waiting thread must not keep a dropped client's connection open: got {outcome:?}"
    );
}

#[test]
fn two_thousand_calls_with_64_in_flight_each_complete_once_with_their_own_reply() {
    let server = TestServer::start();
    let client = server.client();
    let (done, completions) = done_channel::<i64>();
    let mut expected = HashMap::new();
    let start = |i: i64, expected: &mut HashMap<u64, i64>| {
        let seq = client.go_with("Arith.Multiply", &Args { a: i, b: 3 }, &done);
        expected.insert(seq, i * 3);
    };
    for i in 0..64 {
        start(i, &mut expected);
    }
    let mut next = 64;
    let mut completed = 0;
    while completed < 2_000 {
        let completion = client
            .recv_completion(&completions, Duration::from_secs(10))
            .expect("a completion within 10 s");
        let want = expected
            .remove(&completion.seq)
            .expect("a call that was pending, completed once");
        assert_eq!(completion.result.unwrap(), want);
        completed += 1;
        if next < 2_000 {
            start(next, &mut expected);
            next += 1;
        }
    }
    assert!(expected.is_empty());
    assert_eq!(client.pending_calls(), 0);
}

#[test]
fn blocking_calls_on_other_threads_get_their_replies_while_one_thread_reads() {
    let server = TestServer::start();
    let client = server.client();
    thread::scope(|scope| {
        for t in 0..3i64 {
            let client = &client;
            scope.spawn(move || {
                for i in (0..300i64).map(|i| t * 1_000 + i) {
                    let product: i64 = client.call("Arith.Multiply", &Args { a: i, b: 2 }).unwrap();
                    assert_eq!(product, i * 2);
                }
            });
        }
        let (done, completions) = done_channel::<i64>();
        for round in 0..100i64 {
            for i in 0..8 {
                client.go_with("Arith.Multiply", &Args { a: round, b: i }, &done);
            }
            let mut products: Vec<i64> = (0..8)
                .map(|_| {
                    client
                        .recv_completion(&completions, Duration::from_secs(10))
                        .unwrap()
                        .result
                        .unwrap()
                })
                .collect();
            products.sort_unstable();
            assert_eq!(products, (0..8).map(|i| round * i).collect::<Vec<_>>());
        }
    });
}

#[test]
fn a_call_whose_deadline_passes_while_the_thread_reads_completes_with_timeout() {
    let server = TestServer::start();
    let client = Client::builder()
        .call_timeout(Duration::from_millis(200))
        .dial(server.addr())
        .unwrap();
    let (done, completions) = done_channel::<u64>();
    let seq = client.go_with("Probe.Sleep", &3_000u64, &done);
    let started = Instant::now();
    let (failed, err) = next_failure(&client, &completions);
    assert_eq!(failed, seq);
    assert!(matches!(err, RpcError::Timeout { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the timeout came from the call's deadline, not from the reply"
    );
}

#[test]
fn a_cancel_from_another_thread_reaches_the_reading_thread() {
    let server = TestServer::start();
    let client = server.client();
    let (done, completions) = done_channel::<u64>();
    let seq = client.go_with("Probe.Sleep", &5_000u64, &done);
    thread::scope(|scope| {
        scope.spawn(|| {
            thread::sleep(Duration::from_millis(50));
            assert!(client.cancel(seq));
        });
        let (failed, err) = next_failure(&client, &completions);
        assert_eq!(failed, seq);
        assert!(matches!(err, RpcError::Cancelled), "{err:?}");
    });
}

#[test]
fn a_peer_that_hangs_up_fails_the_calls_the_thread_waits_for() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        // Take the requests' first bytes, then hang up without a reply.
        let mut some = [0u8; 16];
        let _ = stream.read(&mut some);
    });
    let client = Client::dial(addr).unwrap();
    let (done, completions) = done_channel::<i64>();
    for i in 0..4 {
        client.go_with("Arith.Multiply", &Args { a: i, b: 1 }, &done);
    }
    for _ in 0..4 {
        let (_, err) = next_failure(&client, &completions);
        assert!(
            matches!(err, RpcError::ConnectionLost { .. } | RpcError::Shutdown),
            "{err:?}"
        );
    }
    peer.join().unwrap();
    assert!(client.is_closed());
}

#[test]
fn closing_the_client_on_another_thread_fails_the_calls_a_reading_thread_waits_for() {
    let server = TestServer::start();
    let client = server.client();
    let (done, completions) = done_channel::<u64>();
    for _ in 0..3 {
        client.go_with("Probe.Sleep", &3_000u64, &done);
    }
    thread::scope(|scope| {
        scope.spawn(|| {
            thread::sleep(Duration::from_millis(50));
            client.close();
        });
        for _ in 0..3 {
            let (_, err) = next_failure(&client, &completions);
            assert!(matches!(err, RpcError::Shutdown), "{err:?}");
        }
    });
}

#[test]
fn with_nothing_pending_it_times_out() {
    let server = TestServer::start();
    let client = server.client();
    let (_done, completions) = done_channel::<i64>();
    assert_eq!(
        client
            .recv_completion(&completions, Duration::from_millis(50))
            .unwrap_err(),
        RecvTimeoutError::Timeout
    );
}
