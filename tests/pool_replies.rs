//! Replies written by pool workers: a worker corks its reply while more calls of its
//! connection wait for a worker, and the worker that takes the last of them has them written
//! (by a flush queued on the pool, or with its own reply).
//! Whatever the workers do, every reply leaves, and none waits for another call's handler.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod util;

use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use netrpc::{done_channel, Client, Completion, Server};
use util::{pipeline, send_burst_with_a_block, wait_until, ProbeClient, TestServer};

/// Long enough for any reply on loopback; far shorter than a blocked call's 10 s.
const PROMPTLY: Duration = Duration::from_secs(3);

#[test]
fn with_the_pool_full_a_finished_reply_does_not_wait_for_blocked_workers() {
    // Two workers: one blocks on the first call, the other runs the quick second call and
    // then takes the third, which blocks too, while the fourth waits for a worker. A reply
    // corked behind that fourth call would wait until a blocked call is released.
    let server = TestServer::start_with(Server::builder().max_workers(2).build());
    let client = server.client();
    let (done, completions) = done_channel::<u64>();
    let batch = client.batch();
    batch.go_with(ProbeClient::BLOCK, &1u64, &done);
    let quick = batch.go_with(ProbeClient::SLEEP, &0u64, &done);
    batch.go_with(ProbeClient::BLOCK, &2u64, &done);
    batch.go_with(ProbeClient::SLEEP, &0u64, &done);
    batch.send();

    let first = completions.recv_timeout(PROMPTLY).expect("the quick reply");
    assert_eq!(first.seq, quick, "the quick call answers first");
    assert_eq!(first.result.unwrap(), 0);
    assert!(
        completions
            .recv_timeout(Duration::from_millis(200))
            .is_err(),
        "everything else waits for a worker or a release"
    );

    // Either blocked call may take the first release; its worker then runs the fourth call.
    server.release(1);
    let mut released: Vec<u64> = (0..2).map(|_| next_ok(&completions)).collect();
    released.sort_unstable();
    assert_eq!(released[0], 0, "the fourth call");
    let first_released = released[1];
    assert!([1, 2].contains(&first_released), "{released:?}");
    server.release(1);
    assert_eq!(
        next_ok(&completions),
        3 - first_released,
        "the other blocked call"
    );
    assert_all_counted_out(&server);
}

#[test]
fn replies_queued_before_a_blocking_call_leave_while_it_blocks() {
    // Thirty quick calls and one that blocks, sent in one write: whatever was corked when a
    // worker takes the blocking call still leaves while it blocks.
    let server = TestServer::start();
    let client = server.client();
    let completions = send_burst_with_a_block(&client, 30, 15);
    assert_quick_replies_leave_while_blocked(&server, &completions, 30, 15);
}

#[test]
fn replies_corked_behind_a_burst_that_ends_in_a_blocking_call_leave_while_it_blocks() {
    // The blocking call is the last of the burst, so its worker is the one that sees to the
    // corked replies: it must not hold them while its handler blocks.
    let server = TestServer::start();
    let client = server.client();
    for _ in 0..3 {
        let completions = send_burst_with_a_block(&client, 30, 30);
        assert_quick_replies_leave_while_blocked(&server, &completions, 30, 30);
    }
    assert_all_counted_out(&server);
}

/// The `quick` replies arrive while the burst's blocking call blocks; released, it answers
/// `at`.
fn assert_quick_replies_leave_while_blocked(
    server: &TestServer,
    completions: &Receiver<Completion<u64>>,
    quick: usize,
    at: usize,
) {
    for _ in 0..quick {
        let completion = completions.recv_timeout(PROMPTLY).expect("a quick reply");
        assert_eq!(completion.result.unwrap(), 0);
    }
    server.release(1);
    let blocked = completions
        .recv_timeout(PROMPTLY)
        .expect("the released call");
    assert_eq!(blocked.result.unwrap(), at as u64);
}

#[test]
fn a_finished_reply_leaves_while_every_worker_computes_and_calls_wait() {
    // A quick call, then more computing calls than the pool has workers, in one write. The
    // quick call's reply is corked (calls of its connection wait for a worker), and then
    // every worker computes: none is blocked, so the pool adds a thread only every 50 ms
    // without progress, and the last waiting call is taken seconds later. The reply must
    // not wait for that: the loop writes corked replies after about a millisecond.
    let server = TestServer::start();
    let client = server.client();
    let cores = thread::available_parallelism().map_or(1, |cores| cores.get());
    let spinning = cores as u64 + 40;
    let (done, completions) = done_channel::<u64>();
    let batch = client.batch();
    let quick = batch.go_with(ProbeClient::SLEEP, &0u64, &done);
    for id in 1..=spinning {
        batch.go_with(ProbeClient::BUSY_BLOCK, &id, &done);
    }
    let sent = Instant::now();
    batch.send();

    let first = completions.recv_timeout(Duration::from_secs(1));
    let waited = sent.elapsed();
    server.release(spinning as usize); // whatever happened, let the computing calls end
    let first = first.expect("the quick reply while the others compute");
    assert_eq!(first.seq, quick, "after {waited:?}");
    assert_eq!(first.result.unwrap(), 0);
    let mut ids: Vec<u64> = (0..spinning).map(|_| next_ok(&completions)).collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=spinning).collect::<Vec<_>>());
    assert_all_counted_out(&server);
}

#[test]
fn every_reply_arrives_when_many_connections_pipeline_through_the_pool() {
    // Four connections with 64 calls in flight each keep calls waiting in the pool's queue,
    // so workers cork replies and flush each other's. A reply left corked would fail its
    // call with a timeout.
    let server = TestServer::start();
    let drivers: Vec<_> = (0..4i64)
        .map(|conn| {
            let client = Client::builder()
                .call_timeout(Duration::from_secs(20))
                .dial(server.addr())
                .unwrap();
            thread::spawn(move || pipeline(&client, conn, 1_500, 64))
        })
        .collect();
    for driver in drivers {
        driver.join().unwrap();
    }
    assert_all_counted_out(&server);
}

/// Waits until no call is counted in flight. A worker sends its reply before it counts its
/// call out, so the last reply may arrive a moment before the count reaches 0.
fn assert_all_counted_out(server: &TestServer) {
    wait_until("no call left in flight", Duration::from_secs(5), || {
        server.server.stats().in_flight_calls == 0
    });
}

/// The next completion's value, which must come promptly and be a success.
fn next_ok(completions: &Receiver<Completion<u64>>) -> u64 {
    let completion = completions.recv_timeout(PROMPTLY).expect("a reply");
    completion.result.unwrap()
}
