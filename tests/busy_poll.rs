//! Busy polling (`ServerBuilder::busy_poll`, `ClientBuilder::busy_poll`): with it on at both
//! ends, calls of every shape and dispatch complete as without it, and once the calls stop
//! the server's loops and the waiting callers go to sleep: an idle process spends next to no
//! CPU time.
//!
//! One test in this file, so that the process's CPU time is this test's alone.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

#[path = "../examples/support/cpu_time.rs"]
mod cpu_time;
mod util;

use std::thread;
use std::time::Duration;

use netrpc::{done_channel, Client, Server};
use util::{sorted_results, Args, ArithClient, ArithServer, Calculator, TestServer};

/// Long enough to be worth it on a machine whose idle CPUs wake slowly; the test only needs
/// it to be far shorter than the idle window below.
const BUDGET: Duration = Duration::from_micros(200);

#[test]
fn busy_polling_serves_every_shape_then_sleeps_when_idle() {
    let pooled = TestServer::start_with(Server::builder().busy_poll(BUDGET).build());
    let inline = Server::builder().busy_poll(BUDGET).build();
    inline
        .register_inline(ArithServer::new(Calculator))
        .unwrap();
    let inline_handle = inline.serve("127.0.0.1:0").unwrap();

    for addr in [pooled.addr(), inline_handle.local_addr()] {
        let client = Client::builder().busy_poll(BUDGET).dial(addr).unwrap();
        let arith = ArithClient::new(client.clone());
        // Sequential blocking calls: the caller reads each reply itself, busy polling first.
        for a in 0..200 {
            assert_eq!(arith.multiply(&Args { a, b: 3 }).unwrap(), a * 3);
        }
        // 64 in flight, started in one batch, read by the waiting thread.
        let (done, completions) = done_channel::<i64>();
        let batch = client.batch();
        for a in 0..64i64 {
            batch.go_with("Arith.Multiply", &Args { a, b: 5 }, &done);
        }
        batch.send();
        let products = sorted_results(&client, &completions, 64);
        assert_eq!(products, (0..64).map(|a| a * 5).collect::<Vec<_>>());
    }

    // Idle: nothing is sent for half a second. A loop or caller that kept spinning would
    // spend about that much CPU time; sleeping ones spend almost none.
    thread::sleep(Duration::from_millis(100));
    let Some(before) = cpu_time::process_cpu_time() else {
        eprintln!("no /proc/self/stat here: the idle check is skipped");
        return;
    };
    thread::sleep(Duration::from_millis(500));
    let spent = cpu_time::process_cpu_time().unwrap() - before;
    assert!(
        spent < Duration::from_millis(200),
        "an idle process spent {spent:?} of CPU in 500 ms: something keeps spinning"
    );
}
