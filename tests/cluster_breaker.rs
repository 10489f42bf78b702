//! Circuit breaker (SEEDS §6) over loopback: it opens after failures against a dead address,
//! then fails fast without dialing; after the cooldown one trial goes through while the others
//! fail fast, closing the breaker when the server is back and reopening it when it is not.
//! A retrying caller that never reached the endpoint does not count against it.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod util;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use netrpc::cluster::{Breaker, BreakerPolicy, BreakerState, RetryPolicy, RetryingClient};
use netrpc::{Client, RpcError, Server, ServerHandle};
use util::{wait_until, Args, ArithServer, Calculator, ProbeServer, Prober};

/// An address nothing listens on now: connecting is refused at once.
fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn serve_at(addr: SocketAddr) -> ServerHandle {
    let server = Server::new();
    server.register(ArithServer::new(Calculator)).unwrap();
    server.register(ProbeServer::new(Prober::new())).unwrap();
    server.serve(addr).unwrap()
}

fn breaker(addr: SocketAddr, failures: u32, cooldown: Duration) -> Breaker {
    let policy = BreakerPolicy::default()
        .consecutive_failures(failures)
        .cooldown(cooldown);
    Breaker::new(addr.to_string(), policy)
}

/// Dials `addr` and multiplies, counting the dials.
fn multiply_at(addr: SocketAddr, dials: &AtomicUsize) -> Result<i64, RpcError> {
    dials.fetch_add(1, Ordering::SeqCst);
    Client::dial_timeout(addr, Duration::from_secs(2))?.call("Arith.Multiply", &Args { a: 6, b: 7 })
}

fn wait_for_half_open(breaker: &Breaker) {
    wait_until("the cooldown to pass", Duration::from_secs(5), || {
        breaker.state() == BreakerState::HalfOpen
    });
}

#[test]
fn a_breaker_opens_after_failures_and_then_fails_fast_without_dialing() {
    let addr = dead_addr();
    let breaker = breaker(addr, 3, Duration::from_secs(60));
    let dials = AtomicUsize::new(0);
    for _ in 0..3 {
        let err = breaker.call(|| multiply_at(addr, &dials)).unwrap_err();
        assert!(matches!(err, RpcError::Unreachable { .. }), "{err:?}");
    }
    assert_eq!(breaker.state(), BreakerState::Open);

    for _ in 0..5 {
        let err = breaker.call(|| multiply_at(addr, &dials)).unwrap_err();
        assert!(
            matches!(&err, RpcError::CircuitOpen { endpoint, retry_after }
                if *endpoint == addr.to_string() && *retry_after > Duration::from_secs(50)),
            "{err:?}"
        );
    }
    assert_eq!(dials.load(Ordering::SeqCst), 3, "no dial while open");
    assert_eq!(breaker.rejected_calls(), 5);
    assert_eq!(breaker.times_opened(), 1);
}

#[test]
fn a_trial_after_the_cooldown_closes_the_breaker_when_the_server_is_back() {
    let addr = dead_addr();
    let breaker = Arc::new(breaker(addr, 2, Duration::from_millis(50)));
    let dials = AtomicUsize::new(0);
    for _ in 0..2 {
        breaker.call(|| multiply_at(addr, &dials)).unwrap_err();
    }
    assert_eq!(breaker.state(), BreakerState::Open);
    let _server = serve_at(addr);
    wait_for_half_open(&breaker);

    // The trial is a slow call; while it runs, other calls fail fast.
    let client = Client::dial(addr).unwrap();
    let trial_breaker = Arc::clone(&breaker);
    let trial_client = client.clone();
    let trial = thread::spawn(move || {
        trial_breaker.call(|| trial_client.call::<_, u64>("Probe.Sleep", &200u64))
    });
    wait_until("the trial call in flight", Duration::from_secs(5), || {
        client.pending_calls() == 1
    });
    let err = breaker.allow().unwrap_err();
    assert!(
        matches!(err, RpcError::CircuitOpen { retry_after, .. } if retry_after.is_zero()),
        "{err:?}"
    );
    assert_eq!(trial.join().unwrap().unwrap(), 200);

    assert_eq!(breaker.state(), BreakerState::Closed);
    assert_eq!(breaker.call(|| multiply_at(addr, &dials)).unwrap(), 42);
}

#[test]
fn a_failed_trial_opens_the_breaker_again() {
    let addr = dead_addr();
    let breaker = breaker(addr, 1, Duration::from_millis(50));
    let dials = AtomicUsize::new(0);
    breaker.call(|| multiply_at(addr, &dials)).unwrap_err();
    wait_for_half_open(&breaker);

    let err = breaker.call(|| multiply_at(addr, &dials)).unwrap_err();
    assert!(matches!(err, RpcError::Unreachable { .. }), "{err:?}");
    assert_eq!(breaker.state(), BreakerState::Open);
    assert_eq!(breaker.times_opened(), 2);
    assert_eq!(dials.load(Ordering::SeqCst), 2, "one dial, then one trial");
}

#[test]
fn a_retrying_client_stops_retrying_at_an_open_breaker() {
    let addr = dead_addr();
    let breaker = Arc::new(breaker(addr, 2, Duration::from_secs(60)));
    let client = RetryingClient::builder(addr.to_string())
        .policy(
            RetryPolicy::default()
                .max_attempts(10)
                .initial_backoff(Duration::from_millis(1)),
        )
        .breaker(Arc::clone(&breaker))
        .build();
    let multiply = || client.call::<_, i64>("Arith.Multiply", &Args { a: 6, b: 7 });

    // The second failure opens the breaker: the call ends with it, without another wait.
    let err = multiply().unwrap_err();
    assert!(matches!(err, RpcError::Unreachable { .. }), "{err:?}");
    let stats = client.stats();
    assert_eq!(
        (stats.attempts, stats.dials, stats.retries),
        (2, 2, 1),
        "{stats:?}"
    );
    assert_eq!(breaker.state(), BreakerState::Open);

    let err = multiply().unwrap_err();
    assert!(matches!(err, RpcError::CircuitOpen { .. }), "{err:?}");
    let stats = client.stats();
    assert_eq!(
        (stats.attempts, stats.dials, stats.retries),
        (2, 2, 1),
        "{stats:?}"
    );
    assert_eq!(breaker.rejected_calls(), 1);
}

#[test]
fn method_errors_through_the_breaker_keep_it_closed() {
    let server = util::TestServer::start();
    let breaker = breaker(server.addr(), 2, Duration::from_secs(60));
    let client = server.client();
    for _ in 0..5 {
        let err = breaker
            .call(|| client.call::<_, util::Quotient>("Arith.Divide", &Args { a: 1, b: 0 }))
            .unwrap_err();
        assert!(err.is_method_error(), "{err:?}");
    }
    assert_eq!(breaker.state(), BreakerState::Closed);
}

#[test]
fn a_caller_out_of_time_while_another_dials_does_not_count_against_the_endpoint() {
    // A TLS peer that accepts and says nothing: the dial hangs for its whole 1 s timeout.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let tls = netrpc::tls::client_config(netrpc::tls::RootCertStore::empty(), None).unwrap();
    let config = netrpc::core::ClientConfig {
        tls: Some(netrpc::tls::ClientTls::new(tls, "localhost").unwrap()),
        connect_timeout: Duration::from_secs(1),
        ..netrpc::core::ClientConfig::default()
    };
    // One failure would open it.
    let breaker = Arc::new(breaker(addr, 1, Duration::from_secs(60)));
    let client = RetryingClient::builder(addr.to_string())
        .client_config(config)
        .policy(RetryPolicy::default().max_attempts(1))
        .breaker(Arc::clone(&breaker))
        .build();
    let multiply = |client: &RetryingClient, timeout| {
        client.call_timeout::<_, i64>("Arith.Multiply", &Args { a: 6, b: 7 }, timeout)
    };
    let dialer = client.clone();
    let dialing = thread::spawn(move || multiply(&dialer, Duration::from_secs(5)));
    wait_until("the first caller dialing", Duration::from_secs(5), || {
        client.stats().dials == 1
    });

    // This caller waits for that dial, runs out of time before it ends, and never dials.
    let err = multiply(&client, Duration::from_millis(200)).unwrap_err();
    assert!(matches!(err, RpcError::Timeout { .. }), "{err:?}");
    assert_eq!(client.stats().dials, 1);
    assert_eq!(
        breaker.state(),
        BreakerState::Closed,
        "the endpoint was not tried"
    );
    dialing.join().unwrap().unwrap_err();
    drop(silent);
}
