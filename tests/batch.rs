//! Batches (`Client::batch`): `go` calls queued together and written by the caller when the
//! batch is sent or dropped. Each call still completes exactly once, with its own reply.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod util;

use std::collections::HashMap;
use std::thread;
use std::time::Duration;

use netrpc::{done_channel, Client, RpcError, Server};
use util::{Args, TestServer};

#[test]
fn calls_in_a_batch_wait_for_it_then_each_completes_once_with_its_own_reply() {
    let server = TestServer::start();
    let client = server.client();
    let (done, completions) = done_channel::<i64>();
    let mut expected = HashMap::new();

    let batch = client.batch();
    for i in 0..200i64 {
        let seq = batch.go_with("Arith.Multiply", &Args { a: i, b: 3 }, &done);
        expected.insert(seq, i * 3);
    }
    let single = batch.go::<_, i64>("Arith.Sum", &Args { a: 40, b: 2 });
    // Nothing asks for a write: given time, the frames are still queued and no reply came.
    thread::sleep(Duration::from_millis(100));
    assert!(client.unsent_bytes() > 0, "the batch's frames are queued");
    assert_eq!(completions.len(), 0);
    assert_eq!(server.server.stats().in_flight_calls, 0);

    batch.send();
    for _ in 0..200 {
        let completion = completions
            .recv_timeout(Duration::from_secs(10))
            .expect("every call of the batch completes");
        let want = expected.remove(&completion.seq).expect("once per call");
        assert_eq!(completion.result.unwrap(), want);
    }
    assert_eq!(single.wait().unwrap(), 42);
    assert_eq!(client.unsent_bytes(), 0);
}

#[test]
fn dropping_a_batch_writes_it() {
    let server = TestServer::start();
    let client = server.client();
    let calls: Vec<_> = {
        let batch = client.batch();
        (0..10i64)
            .map(|i| batch.go::<_, i64>("Arith.Sum", &Args { a: i, b: 1 }))
            .collect()
    };
    for (i, call) in (0i64..).zip(calls) {
        assert_eq!(call.wait().unwrap(), i + 1);
    }
}

#[test]
fn a_batch_larger_than_the_clients_unsent_cap_writes_as_it_goes_and_nothing_is_refused() {
    let server = TestServer::start_with(Server::builder().max_in_flight_per_conn(5_000).build());
    let client = Client::builder()
        .max_unsent_bytes(16 * 1024)
        .max_pending_calls(5_000)
        .dial(server.addr())
        .unwrap();
    let (done, completions) = done_channel::<Vec<u8>>();
    let payload = vec![7u8; 100];
    {
        let batch = client.batch();
        for _ in 0..3_000 {
            batch.go_with("Probe.Echo", &payload, &done);
            assert!(
                client.unsent_bytes() < 16 * 1024,
                "the batch wrote before reaching the cap"
            );
        }
    }
    for _ in 0..3_000 {
        let completion = completions
            .recv_timeout(Duration::from_secs(10))
            .expect("every call completes");
        assert_eq!(completion.result.unwrap(), payload, "none throttled");
    }
}

#[test]
fn a_batch_on_a_closed_client_fails_each_call_at_once() {
    let server = TestServer::start();
    let client = server.client();
    client.close();
    let batch = client.batch();
    let calls: Vec<_> = (0..3i64)
        .map(|i| batch.go::<_, i64>("Arith.Sum", &Args { a: i, b: 1 }))
        .collect();
    for call in calls {
        let err = call.done().recv_timeout(Duration::from_secs(1)).unwrap();
        assert!(matches!(err, Err(RpcError::Shutdown)), "{err:?}");
    }
}

#[test]
fn batches_from_many_threads_on_one_client_never_mix_up_replies() {
    let server = TestServer::start();
    let client = server.client();
    let threads: Vec<_> = (0..4i64)
        .map(|t| {
            let client = client.clone();
            thread::spawn(move || {
                let (done, completions) = done_channel::<i64>();
                let mut expected = HashMap::new();
                for round in 0..20i64 {
                    let batch = client.batch();
                    for i in 0..10i64 {
                        let a = t * 1_000_000 + round * 100 + i;
                        let seq = batch.go_with("Arith.Multiply", &Args { a, b: 2 }, &done);
                        expected.insert(seq, a * 2);
                    }
                    batch.send();
                    for _ in 0..10 {
                        let completion = completions.recv_timeout(Duration::from_secs(10)).unwrap();
                        let want = expected.remove(&completion.seq).expect("once per call");
                        assert_eq!(completion.result.unwrap(), want);
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

#[test]
fn waiting_on_a_call_of_a_batch_not_yet_sent_writes_the_batch() {
    // Without the write, the wait would end at the deadline (and the Cancel the timeout
    // sends would carry the request out after its caller was told it timed out).
    let server = TestServer::start();
    let client = server.client();
    let batch = client.batch();
    let first =
        batch.go_timeout::<_, i64>("Arith.Sum", &Args { a: 1, b: 2 }, Duration::from_secs(2));
    let (done, completions) = done_channel::<i64>();
    batch.go_with("Arith.Sum", &Args { a: 3, b: 4 }, &done);
    let started = std::time::Instant::now();
    assert_eq!(first.wait().unwrap(), 3);
    let completion = client
        .recv_completion(&completions, Duration::from_secs(2))
        .unwrap();
    assert_eq!(completion.result.unwrap(), 7);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    drop(batch);
}
