//! Deadlines: a call fails at its deadline, the late reply is discarded, and slow handlers
//! never stall other calls.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod util;

use std::thread;
use std::time::{Duration, Instant};

use netrpc::RpcError;
use util::{Args, ProbeClient, TestServer};

#[test]
fn a_blocking_call_times_out_and_its_late_reply_is_discarded() {
    let server = TestServer::start();
    let client = server.client();
    let started = Instant::now();
    let err = client
        .call_timeout::<_, u64>("Probe.Block", &1u64, Duration::from_millis(100))
        .unwrap_err();
    assert!(
        matches!(err, RpcError::Timeout { after } if after == Duration::from_millis(100)),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(1));

    server.release(1);
    util::wait_until(
        "the late reply to be discarded",
        Duration::from_secs(5),
        || client.discarded_replies() == 1,
    );
    let product: i64 = client.call("Arith.Multiply", &Args { a: 3, b: 3 }).unwrap();
    assert_eq!(product, 9);
}

#[test]
fn a_go_call_times_out_at_its_deadline() {
    let server = TestServer::start();
    let client = server.client();
    let call = client.go_timeout::<_, u64>("Probe.Block", &2u64, Duration::from_millis(100));
    let result = call
        .done()
        .recv_timeout(Duration::from_secs(2))
        .expect("the deadline completes the call");
    assert!(
        matches!(result, Err(RpcError::Timeout { .. })),
        "{result:?}"
    );
    assert_eq!(client.pending_calls(), 0);
    server.release(1);
    util::wait_until(
        "the late reply to be discarded",
        Duration::from_secs(5),
        || client.discarded_replies() == 1,
    );
    assert_eq!(ProbeClient::new(client).sleep(&1).unwrap(), 1);
}

#[test]
fn go_calls_with_mixed_deadlines_each_time_out_at_their_own() {
    // The loop keeps one timer per connection, at the earliest deadline; a call with a
    // shorter timeout than those before it must move it, and the later ones must still fire.
    let server = TestServer::start();
    let client = server.client();
    let started = Instant::now();
    let long = client.go_timeout::<_, u64>("Probe.Block", &1u64, Duration::from_millis(600));
    let short = client.go_timeout::<_, u64>("Probe.Block", &2u64, Duration::from_millis(100));
    let short_result = short
        .done()
        .recv_timeout(Duration::from_secs(5))
        .expect("the short deadline completes its call");
    assert!(
        matches!(short_result, Err(RpcError::Timeout { .. })),
        "{short_result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "the short call waited for the long one's deadline: {:?}",
        started.elapsed()
    );
    let long_result = long
        .done()
        .recv_timeout(Duration::from_secs(5))
        .expect("the long deadline completes its call");
    assert!(
        matches!(long_result, Err(RpcError::Timeout { .. })),
        "{long_result:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(600));
    server.release(2);
}

#[test]
fn sixty_four_concurrent_callers_of_a_100ms_handler_finish_together() {
    let server = TestServer::start();
    let probe = ProbeClient::new(server.client());
    let started = Instant::now();
    let callers: Vec<_> = (0..64)
        .map(|_| {
            let probe = probe.clone();
            thread::spawn(move || probe.sleep(&100))
        })
        .collect();
    for caller in callers {
        assert_eq!(caller.join().unwrap().unwrap(), 100);
    }
    // A hang detector, not a benchmark: one at a time would take 6.4 s.
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_slow_handler_does_not_stall_fast_calls_on_the_same_connection() {
    let server = TestServer::start();
    let client = server.client();
    let slow = client.go::<_, u64>("Probe.Block", &9u64);
    for i in 0..100 {
        let sum: i64 = client.call("Arith.Sum", &Args { a: i, b: 1 }).unwrap();
        assert_eq!(sum, i + 1);
    }
    server.release(1);
    assert_eq!(slow.wait().unwrap(), 9);
}
