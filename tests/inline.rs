//! Inline dispatch (`Server::register_inline`): handlers run on the event loop, replies to a
//! burst leave together (every 32nd written at once, unless both ends busy poll), and a
//! panic is still an error for its caller only.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod util;

use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use netrpc::{done_channel, Client, Completion, RpcError, Server, ServerHandle};
use util::{Args, ArithClient, ArithServer, Calculator, ProbeClient, ProbeServer, Prober};

fn start_inline() -> netrpc::ServerHandle {
    let server = Server::new();
    server
        .register_inline(ArithServer::new(Calculator))
        .unwrap();
    server
        .register_inline(ProbeServer::new(Prober::new()))
        .unwrap();
    server.serve("127.0.0.1:0").unwrap()
}

#[test]
fn inline_methods_answer_blocking_and_pipelined_calls() {
    let running = start_inline();
    let arith = ArithClient::new(Client::dial(running.local_addr()).unwrap());
    assert_eq!(arith.multiply(&Args { a: 7, b: 8 }).unwrap(), 56);

    let (done, completions) = done_channel::<i64>();
    let mut expected = std::collections::HashMap::new();
    // 1,000: as many as a client may have pending by default.
    for a in 0..1_000i64 {
        let seq = arith
            .client()
            .go_with("Arith.Sum", &Args { a, b: 1 }, &done);
        expected.insert(seq, a + 1);
    }
    for _ in 0..1_000 {
        let completion = completions
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        assert_eq!(completion.result.unwrap(), expected[&completion.seq]);
    }
}

#[test]
fn an_inline_panic_is_an_error_for_its_caller_and_the_loop_keeps_serving() {
    let running = start_inline();
    let client = Client::dial(running.local_addr()).unwrap();
    let probe = ProbeClient::new(client.clone());
    let err = probe.panic(&"inline boom".to_owned()).unwrap_err();
    assert!(matches!(err, RpcError::HandlerPanicked { .. }), "{err:?}");
    let arith = ArithClient::new(client);
    assert_eq!(arith.multiply(&Args { a: 6, b: 7 }).unwrap(), 42);
    util::assert_healthy(running.local_addr());
}

/// Replies an inline loop sends before it writes them at once (`INLINE_REPLIES_PER_WRITE` in
/// `rpc-core/src/server_conn.rs`).
const REPLIES_PER_WRITE: usize = 32;

/// Quick calls in each burst: eight more than one write takes.
const QUICK_CALLS: usize = REPLIES_PER_WRITE + 8;

/// The busy-poll budget of the tests that spin.
const BUSY_POLL: Duration = Duration::from_micros(50);

/// Serves `Probe` inline on a server that busy polls for `busy_poll`; the sender releases its
/// blocked `Block` calls.
fn start_inline_probe(busy_poll: Duration) -> (ServerHandle, Sender<()>) {
    let server = Server::builder().busy_poll(busy_poll).build();
    let (prober, release) = Prober::releasable();
    server.register_inline(ProbeServer::new(prober)).unwrap();
    (server.serve("127.0.0.1:0").unwrap(), release)
}

/// From a client that busy polls for `busy_poll`, sends [`QUICK_CALLS`] calls of
/// `Probe.Sleep(0)` and then one `Probe.Block` in one write, so that the server's loop reads
/// them in one turn and is held by the last; returns the client and the channel their
/// completions arrive on.
///
/// A call answered first makes sure the server read the client's hello in an earlier turn:
/// read with the burst, its pong (batched too) would be one of the 32 frames of the first
/// write.
fn burst_ending_in_a_block(
    running: &ServerHandle,
    busy_poll: Duration,
) -> (Client, Receiver<Completion<u64>>) {
    let client = Client::builder()
        .busy_poll(busy_poll)
        .dial(running.local_addr())
        .unwrap();
    let slept: u64 = client.call(ProbeClient::SLEEP, &0u64).unwrap();
    assert_eq!(slept, 0);
    let completions = util::send_burst_with_a_block(&client, QUICK_CALLS, QUICK_CALLS);
    (client, completions)
}

/// The first [`REPLIES_PER_WRITE`] replies arrive while the loop is held in `Block` (up to
/// 10 s), with the other eight queued behind them; the rest arrive once it is released.
fn assert_first_replies_arrive_while_held(
    completions: &Receiver<Completion<u64>>,
    release: &Sender<()>,
) {
    for _ in 0..REPLIES_PER_WRITE {
        let completion = completions
            .recv_timeout(Duration::from_secs(5))
            .expect("a reply of the first 32 while the loop is held");
        assert_eq!(completion.result.unwrap(), 0);
    }
    release.send(()).unwrap();
    let mut rest: Vec<u64> = (0..QUICK_CALLS - REPLIES_PER_WRITE + 1)
        .map(|_| {
            let completion = completions.recv_timeout(Duration::from_secs(5)).unwrap();
            completion.result.unwrap()
        })
        .collect();
    rest.sort_unstable();
    let block = QUICK_CALLS as u64; // `Block` answers its index in the burst
    assert_eq!(
        rest,
        [0, 0, 0, 0, 0, 0, 0, 0, block],
        "the other eight, then Block's"
    );
}

#[test]
fn the_first_replies_of_a_long_inline_burst_arrive_while_the_loop_still_runs_it() {
    let (running, release) = start_inline_probe(Duration::ZERO);
    let (_client, completions) = burst_ending_in_a_block(&running, Duration::ZERO);
    assert_first_replies_arrive_while_held(&completions, &release);
}

#[test]
fn a_busy_polling_server_splits_a_long_burst_for_a_client_that_sleeps() {
    let (running, release) = start_inline_probe(BUSY_POLL);
    let (_client, completions) = burst_ending_in_a_block(&running, Duration::ZERO);
    assert_first_replies_arrive_while_held(&completions, &release);
}

#[test]
fn where_both_ends_busy_poll_a_turns_replies_leave_together_at_its_end() {
    let (running, release) = start_inline_probe(BUSY_POLL);
    let (_client, completions) = burst_ending_in_a_block(&running, BUSY_POLL);
    // The client's hello said its callers spin: a write mid-turn would wake its loop too, so
    // nothing leaves while the loop is held.
    assert!(
        completions
            .recv_timeout(Duration::from_millis(300))
            .is_err(),
        "a reply left before the turn ended"
    );
    release.send(()).unwrap();
    for _ in 0..=QUICK_CALLS {
        completions.recv_timeout(Duration::from_secs(5)).unwrap();
    }
}
