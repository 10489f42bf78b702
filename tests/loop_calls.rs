//! Loop calls (`ServerBuilder::loop_runs_calls`, opt-in): an event loop's thread runs the
//! pooled calls it read once its turn is done, and hands the loop to a new thread when one
//! runs long. Every call of many pipelining connections is answered; a call that blocks, or
//! one that spins, does not hold up another connection's calls, nor the calls read with it
//! (they go to the pool), and a method that ran long keeps off the loop after one hand-off;
//! a handler that panics fails its own call alone; and a server whose
//! loops changed threads still shuts down and returns to idle.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod util;

use std::thread;
use std::time::Duration;

use netrpc::{Client, RpcError, Server};
use util::{
    assert_back_to_idle, assert_healthy, pipeline, send_burst_with_a_block, wait_until,
    ProbeClient, TestServer,
};

/// Long enough for any reply on loopback; far shorter than a blocked call's 10 s.
const PROMPTLY: Duration = Duration::from_secs(3);

/// A test server with one event loop whose thread runs the pooled calls it reads.
fn start_with_loop_calls() -> TestServer {
    TestServer::start_with(
        Server::builder()
            .event_loops(1)
            .loop_runs_calls(true)
            .build(),
    )
}

/// Waits until a call that runs until released is running: on a loop's thread, which the
/// loop was then handed away from (more hand-offs than `hand_offs_before`), or on a worker.
/// A release sent before the call starts would let it return at once.
fn wait_until_it_runs(server: &TestServer, hand_offs_before: u64) {
    wait_until("the long call runs", PROMPTLY, || {
        let stats = server.server.stats();
        stats.loop_hand_offs > hand_offs_before || stats.running_handlers > 0
    });
}

/// Starts `method(arg)` (a call that runs until released) on `client`, checks that a call
/// on `other`, another connection, is answered while it runs, then releases it and checks
/// its answer.
fn other_is_served_while_it_runs(
    server: &TestServer,
    client: &Client,
    other: &Client,
    method: &str,
    arg: u64,
) {
    let hand_offs_before = server.server.stats().loop_hand_offs;
    let call = client.go::<_, u64>(method, &arg);
    wait_until_it_runs(server, hand_offs_before);
    let answer: u64 = other
        .call_timeout(ProbeClient::SLEEP, &0u64, PROMPTLY)
        .unwrap_or_else(|err| {
            panic!(
                "{method}({arg}): {err:?}, {:?} {:?}",
                server.server.stats(),
                server.server.method_stats()
            )
        });
    assert_eq!(answer, 0);
    server.release(1);
    assert_eq!(call.wait().unwrap(), arg);
}

#[test]
fn every_call_of_four_pipelining_connections_is_answered() {
    let server = start_with_loop_calls();
    let drivers: Vec<_> = (1..=4i64)
        .map(|conn| {
            let client = Client::dial(server.addr()).unwrap();
            thread::spawn(move || pipeline(&client, conn, 2_000, 16))
        })
        .collect();
    for driver in drivers {
        driver.join().unwrap();
    }
    let stats = server.server.stats();
    assert_eq!(stats.call_errors.iter().sum::<u64>(), 0, "{stats:?}");
    assert_back_to_idle(&server.server);
}

#[test]
fn a_blocked_call_does_not_hold_up_another_connections_calls() {
    let server = start_with_loop_calls();
    let blocked = server.client();
    let call = blocked.go::<_, u64>(ProbeClient::BLOCK, &7u64);
    // Until the loop is handed over, the blocked handler holds the loop's only thread.
    wait_until_it_runs(&server, 0);
    let other = server.client();
    for round in 0..20u64 {
        let answer: u64 = other
            .call_timeout(ProbeClient::SLEEP, &round, PROMPTLY)
            .expect("served while another connection's call blocks");
        assert_eq!(answer, round);
    }
    assert!(
        call.try_result().is_none(),
        "the blocked call is still blocked"
    );
    assert!(
        server.server.stats().loop_hand_offs >= 1,
        "the loop was handed over"
    );
    server.release(1);
    assert_eq!(call.wait().unwrap(), 7);
    assert_healthy(server.addr());
}

#[test]
fn a_method_that_ran_long_on_the_loop_keeps_off_it_after_one_hand_off() {
    let server = start_with_loop_calls();
    let client = server.client();
    let other = server.client();
    for round in 0..5u64 {
        other_is_served_while_it_runs(&server, &client, &other, ProbeClient::BLOCK, round);
    }
    // One for `Block`; on a loaded machine perhaps one more, for a `Sleep` call whose quick
    // run was kept off its core for two ticks (its method then keeps off the loop too).
    let hand_offs = server.server.stats().loop_hand_offs;
    assert!(
        (1..=2).contains(&hand_offs),
        "{hand_offs} hand-offs in 5 rounds"
    );
}

#[test]
fn calls_read_with_a_blocked_one_are_answered_while_it_blocks() {
    let server = start_with_loop_calls();
    let client = server.client();
    // Twelve calls in one write: one turn reads them all, the fifth blocks.
    let completions = send_burst_with_a_block(&client, 11, 4);
    for _ in 0..11 {
        let completion = completions.recv_timeout(PROMPTLY).expect("a quick reply");
        assert_eq!(completion.result.unwrap(), 0);
    }
    server.release(1);
    let released = completions
        .recv_timeout(PROMPTLY)
        .expect("the released call");
    assert_eq!(released.result.unwrap(), 4);
}

#[test]
fn a_call_that_spins_does_not_hold_up_the_loop() {
    // `BusyBlock` computes (spins) until released: the loop's thread is never asleep in it.
    let server = start_with_loop_calls();
    let (spinning, other) = (server.client(), server.client());
    other_is_served_while_it_runs(&server, &spinning, &other, ProbeClient::BUSY_BLOCK, 3);
}

#[test]
fn a_handler_that_panics_fails_its_own_call_alone() {
    let server = start_with_loop_calls();
    let client = server.client();
    for round in 0..50u64 {
        let panicked = client.call::<_, u64>(ProbeClient::PANIC, &format!("boom {round}"));
        assert!(
            matches!(panicked, Err(RpcError::HandlerPanicked { .. })),
            "expected HandlerPanicked, got {panicked:?}"
        );
        let answer: u64 = client.call(ProbeClient::SLEEP, &round).unwrap();
        assert_eq!(answer, round);
    }
}

#[test]
fn a_server_whose_loop_changed_threads_shuts_down_and_returns_to_idle() {
    let server = start_with_loop_calls();
    let client = server.client();
    for round in 0..3u64 {
        // `BusyBlock` first, then `Block`, and again: two hand-offs, each method's first run.
        let method = [ProbeClient::BUSY_BLOCK, ProbeClient::BLOCK][round as usize % 2];
        other_is_served_while_it_runs(&server, &client, &server.client(), method, round);
    }
    // One for each method that ran long (perhaps one more, for `Sleep`, on a loaded machine).
    let hand_offs = server.server.stats().loop_hand_offs;
    assert!(
        (2..=3).contains(&hand_offs),
        "{hand_offs} hand-offs in 3 rounds"
    );
    drop(client);
    assert_back_to_idle(&server.server);
    let TestServer { handle, .. } = server;
    let stopping = thread::spawn(move || handle.shutdown());
    wait_until("the shutdown returns", PROMPTLY, || stopping.is_finished());
}
