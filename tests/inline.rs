//! Inline dispatch (`Server::register_inline`): handlers run on the event loop, replies to a
//! burst leave together (every 32nd written at once, unless the server busy polls), and a
//! panic is still an error for its caller only.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod util;

use std::time::Duration;

use crossbeam_channel::Sender;
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

/// Serves `Probe` inline on `server`; the sender releases its blocked `Block` calls.
fn start_inline_probe(server: Server) -> (ServerHandle, Sender<()>) {
    let (prober, release) = Prober::releasable();
    server.register_inline(ProbeServer::new(prober)).unwrap();
    (server.serve("127.0.0.1:0").unwrap(), release)
}

/// Sends `quick` calls of `Probe.Sleep(0)` and then one `Probe.Block` in one write, so that
/// the server's loop reads them in one turn and is held by the last; returns the client and
/// the channel their completions arrive on.
fn burst_ending_in_a_block(
    running: &ServerHandle,
    quick: usize,
) -> (Client, crossbeam_channel::Receiver<Completion<u64>>) {
    let client = Client::dial(running.local_addr()).unwrap();
    let (done, completions) = done_channel::<u64>();
    let batch = client.batch();
    for _ in 0..quick {
        batch.go_with("Probe.Sleep", &0u64, &done);
    }
    batch.go_with("Probe.Block", &7u64, &done);
    drop(batch);
    (client, completions)
}

#[test]
fn the_first_replies_of_a_long_inline_burst_arrive_while_the_loop_still_runs_it() {
    let (running, release) = start_inline_probe(Server::new());
    let quick = REPLIES_PER_WRITE + 8;
    let (_client, completions) = burst_ending_in_a_block(&running, quick);
    // The loop is held in `Block` (up to 10 s) with eight quick replies queued behind the
    // first 32: those 32 must already be on their way.
    for _ in 0..REPLIES_PER_WRITE {
        let completion = completions
            .recv_timeout(Duration::from_secs(5))
            .expect("a reply of the first 32 while the loop is held");
        assert_eq!(completion.result.unwrap(), 0);
    }
    release.send(()).unwrap();
    let mut rest: Vec<u64> = (0..quick - REPLIES_PER_WRITE + 1)
        .map(|_| {
            let completion = completions.recv_timeout(Duration::from_secs(5)).unwrap();
            completion.result.unwrap()
        })
        .collect();
    rest.sort_unstable();
    assert_eq!(
        rest,
        [0, 0, 0, 0, 0, 0, 0, 0, 7],
        "the other eight, then Block's"
    );
}

#[test]
fn a_busy_polling_inline_server_writes_a_turns_replies_together_at_its_end() {
    let server = Server::builder()
        .busy_poll(Duration::from_micros(50))
        .build();
    let (running, release) = start_inline_probe(server);
    let quick = REPLIES_PER_WRITE + 8;
    let (_client, completions) = burst_ending_in_a_block(&running, quick);
    // No limit on a busy-polling server (its clients may spin, and a write mid-turn would
    // wake their loops too): nothing leaves while the loop is held.
    assert!(
        completions
            .recv_timeout(Duration::from_millis(300))
            .is_err(),
        "a reply left before the turn ended"
    );
    release.send(()).unwrap();
    for _ in 0..=quick {
        completions.recv_timeout(Duration::from_secs(5)).unwrap();
    }
}
