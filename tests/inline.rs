//! Inline dispatch (`Server::register_inline`): handlers run on the event loop, replies to a
//! burst leave together, and a panic is still an error for its caller only.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod util;

use netrpc::{done_channel, Client, RpcError, Server};
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
