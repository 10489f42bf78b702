//! Non-blocking calls: `go` handles, shared completion channels, and no lost completions.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod util;

use std::collections::HashSet;
use std::thread;
use std::time::{Duration, Instant};

use netrpc::{done_channel, Client, RpcError, Server};
use util::{Args, ProbeClient, TestServer};

#[test]
fn go_returns_at_once_and_the_reply_arrives_on_done() {
    let server = TestServer::start();
    let probe = ProbeClient::new(server.client());
    let started = Instant::now();
    let call = probe.sleep_go(&200);
    assert!(
        started.elapsed() < Duration::from_millis(150),
        "go must not wait for the reply"
    );
    let reply = call
        .done()
        .recv_timeout(Duration::from_secs(5))
        .expect("completion arrives");
    assert_eq!(reply.unwrap(), 200);
}

#[test]
fn go_calls_from_many_threads_each_complete_once_with_their_own_reply() {
    let server = TestServer::start();
    let arith = server.arith();
    let threads: Vec<_> = (0..8i64)
        .map(|t| {
            let arith = arith.clone();
            thread::spawn(move || {
                // 8 × 100 calls share one connection: within the server's default cap of
                // 1,000 in flight per connection, beyond which calls are `Throttled`.
                let calls: Vec<_> = (0..100i64)
                    .map(|i| {
                        (
                            i,
                            arith.multiply_go(&Args {
                                a: t * 10_000 + i,
                                b: 2,
                            }),
                        )
                    })
                    .collect();
                for (i, call) in calls {
                    assert_eq!(call.wait().unwrap(), (t * 10_000 + i) * 2);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

#[test]
fn ten_thousand_calls_sharing_one_channel_all_complete_exactly_once() {
    // All 10,000 may be in flight on the one connection at once: raise the default caps of
    // 1,000 (server and client), beyond which the surplus would be `Throttled`.
    let server = TestServer::start_with(Server::builder().max_in_flight_per_conn(10_000).build());
    let client = Client::builder()
        .max_pending_calls(10_000)
        .dial(server.addr())
        .unwrap();
    let (done_tx, done_rx) = done_channel::<i64>();
    let mut expected = std::collections::HashMap::new();
    for i in 0..10_000i64 {
        let seq = client.go_with("Arith.Multiply", &Args { a: i, b: 7 }, &done_tx);
        expected.insert(seq, i * 7);
    }
    let mut seen = HashSet::new();
    for _ in 0..10_000 {
        let completion = done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("every completion arrives");
        assert!(
            seen.insert(completion.seq),
            "seq {} completed twice",
            completion.seq
        );
        assert_eq!(completion.method, "Arith.Multiply");
        assert_eq!(completion.result.unwrap(), expected[&completion.seq]);
    }
    assert!(
        done_rx.try_recv().is_err(),
        "no completion beyond the 10,000 calls"
    );
    assert_eq!(client.pending_calls(), 0);
}

#[test]
fn calls_beyond_the_clients_pending_cap_are_throttled_without_being_sent() {
    let server = TestServer::start();
    let client = Client::builder()
        .max_pending_calls(3)
        .dial(server.addr())
        .unwrap();
    let stuck: Vec<_> = (0..3u64)
        .map(|id| client.go::<_, u64>("Probe.Block", &id))
        .collect();
    let refused = client.go::<_, u64>("Probe.Block", &3u64);
    let err = refused.wait().unwrap_err();
    assert!(matches!(err, RpcError::Throttled), "{err:?}");
    util::wait_until("the server has the three", Duration::from_secs(5), || {
        server.server.stats().in_flight_calls == 3
    });
    server.release(3);
    for call in stuck {
        call.wait().unwrap();
    }
    // Had the refused call reached the server, it would be blocked there for 10 s.
    util::wait_until("nothing left in flight", Duration::from_secs(2), || {
        server.server.stats().in_flight_calls == 0
    });
    assert_eq!(client.call::<_, u64>("Probe.Sleep", &0u64).unwrap(), 0);
}

#[test]
fn completions_are_kept_while_nobody_reads_the_channel() {
    let server = TestServer::start();
    let client = server.client();
    let (done_tx, done_rx) = done_channel::<i64>();
    for i in 0..500i64 {
        client.go_with("Arith.Sum", &Args { a: i, b: 1 }, &done_tx);
    }
    util::wait_until("all calls answered", Duration::from_secs(5), || {
        client.pending_calls() == 0
    });
    assert_eq!(done_rx.len(), 500, "every completion waits in the channel");
}

#[test]
fn replies_arriving_out_of_order_are_matched_by_sequence_id() {
    let server = TestServer::start();
    let probe = ProbeClient::new(server.client());
    // The slowest call is sent first, so replies come back in reverse order.
    let calls: Vec<_> = [300u64, 200, 100, 0]
        .iter()
        .map(|ms| (*ms, probe.sleep_go(ms)))
        .collect();
    for (ms, call) in calls {
        assert_eq!(call.wait().unwrap(), ms);
    }
}

/// A reply type whose `Deserialize` panics: user code that `go` runs on the client event loop.
#[derive(Debug)]
struct Explosive;

impl<'de> serde::Deserialize<'de> for Explosive {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        panic!("explosive reply type")
    }
}

#[test]
fn a_panicking_reply_type_fails_its_call_and_the_shared_client_loop_lives_on() {
    let server = TestServer::start();
    let client = server.client();
    let args = Args { a: 6, b: 7 };
    let err = client
        .go::<_, Explosive>("Arith.Multiply", &args)
        .wait()
        .unwrap_err();
    assert!(
        matches!(&err, RpcError::Decode(_)) && format!("{err:?}").contains("panicked"),
        "{err:?}"
    );
    let (done, completions) = done_channel::<Explosive>();
    client.go_with("Arith.Multiply", &args, &done);
    let completion = completions.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(matches!(completion.result, Err(RpcError::Decode(_))));
    // The loop that ran those completions serves every client of the process.
    let other = Client::dial(server.addr()).expect("dialing still works");
    assert_eq!(other.call::<_, i64>("Arith.Multiply", &args).unwrap(), 42);
    let timed_out = other
        .go_timeout::<_, u64>("Probe.Sleep", &2_000u64, Duration::from_millis(50))
        .wait()
        .unwrap_err();
    assert!(
        matches!(timed_out, RpcError::Timeout { .. }),
        "{timed_out:?}"
    );
    assert_eq!(client.call::<_, i64>("Arith.Multiply", &args).unwrap(), 42);
}

#[test]
fn try_result_returns_the_result_once_then_none() {
    let server = TestServer::start();
    let client = server.client();
    let call = client.go::<_, i64>("Arith.Multiply", &Args { a: 6, b: 7 });
    assert_eq!(result_of(&call).unwrap(), 42);
    // The channel is empty and its sender gone now: that is not a second result.
    std::thread::sleep(Duration::from_millis(20));
    assert!(call.try_result().is_none());
}

#[test]
fn waiting_on_a_call_whose_result_was_taken_returns_at_once() {
    let server = TestServer::start();
    let client = Client::builder()
        .call_timeout(Duration::from_secs(3))
        .dial(server.addr())
        .unwrap();
    let call = client.go::<_, i64>("Arith.Multiply", &Args { a: 6, b: 7 });
    assert_eq!(result_of(&call).unwrap(), 42);
    let started = Instant::now();
    assert!(matches!(call.wait(), Err(RpcError::Shutdown)));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "waited {:?} for a result already taken",
        started.elapsed()
    );
}

#[test]
fn threads_racing_for_a_calls_result_get_it_once_between_them() {
    let server = TestServer::start();
    let client = server.client();
    for _ in 0..2_000 {
        let call = client.go::<_, i64>("Arith.Multiply", &Args { a: 6, b: 7 });
        let deadline = Instant::now() + Duration::from_secs(5);
        while call.done().is_empty() {
            assert!(Instant::now() < deadline, "no result");
            thread::yield_now();
        }
        let results: Vec<_> = thread::scope(|scope| {
            let racers: Vec<_> = (0..2).map(|_| scope.spawn(|| call.try_result())).collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let got: Vec<_> = results.into_iter().flatten().collect();
        assert_eq!(got.len(), 1, "one result between two threads: {got:?}");
        assert_eq!(*got[0].as_ref().unwrap(), 42);
    }
}

/// Polls `call` until its result arrives (within 5 s).
fn result_of(call: &netrpc::Call<i64>) -> Result<i64, RpcError> {
    let started = Instant::now();
    loop {
        if let Some(result) = call.try_result() {
            return result;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "no result");
        thread::sleep(Duration::from_millis(1));
    }
}
