//! Retries with backoff (SEEDS §6) over loopback: refusals where nothing ran are retried until
//! the server has room or comes up, a method's own error never is, a timeout only for an
//! idempotent method, the budget caps retries against a dead server, and a seeded client
//! replays its waits; a client closed while it dials leaves no connection open.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod util;

#[path = "../examples/support/certs.rs"]
mod certs;

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use certs::Authority;
use netrpc::cluster::{Jitter, RetryBudget, RetryPolicy, RetryingClient, Rng};
use netrpc::{ErrorCode, RpcError, Server, ServerHandle};
use util::{wait_until, Args, ArithServer, Calculator, TestServer};

/// An address nothing listens on: connecting is refused at once.
fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn serve_arith_at(addr: SocketAddr) -> ServerHandle {
    let server = Server::new();
    server.register(ArithServer::new(Calculator)).unwrap();
    server.serve(addr).unwrap()
}

fn quick_policy() -> RetryPolicy {
    RetryPolicy::default()
        .max_attempts(50)
        .initial_backoff(Duration::from_millis(10))
        .max_backoff(Duration::from_millis(50))
}

fn multiply(client: &RetryingClient) -> Result<i64, RpcError> {
    client.call_timeout(
        "Arith.Multiply",
        &Args { a: 6, b: 7 },
        Duration::from_secs(5),
    )
}

#[test]
fn a_throttled_call_is_retried_until_the_server_has_room() {
    let server = TestServer::start_with(Server::builder().max_in_flight_per_conn(1).build());
    let client = RetryingClient::builder(server.addr().to_string())
        .policy(quick_policy())
        .build();
    let sleeper = client.clone();
    let sleeping = thread::spawn(move || sleeper.call::<_, u64>("Probe.Sleep", &300u64));
    wait_until("the sleep call in flight", Duration::from_secs(5), || {
        server.server.stats().in_flight_calls == 1
    });

    assert_eq!(multiply(&client).unwrap(), 42);
    assert_eq!(sleeping.join().unwrap().unwrap(), 300);
    let stats = client.stats();
    assert!(stats.retries >= 1, "{stats:?}");
    assert_eq!(stats.dials, 1, "both calls share one connection: {stats:?}");
    assert!(server.server.stats().call_errors(ErrorCode::Throttled) >= 1);
}

#[test]
fn a_server_started_late_is_reached_after_unreachable_attempts() {
    let addr = dead_addr();
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&errors);
    let client = RetryingClient::builder(addr.to_string())
        .policy(quick_policy())
        .on_retry(move |notice| seen.lock().unwrap().push(notice.error.clone()))
        .build();
    let starting = thread::spawn(move || {
        thread::sleep(Duration::from_millis(200));
        serve_arith_at(addr)
    });

    let product = multiply(&client);
    let _server = starting.join().unwrap();
    assert_eq!(product.unwrap(), 42);
    let errors = errors.lock().unwrap();
    assert!(!errors.is_empty());
    assert!(
        errors
            .iter()
            .all(|err| matches!(err, RpcError::Unreachable { .. })),
        "{errors:?}"
    );
    let stats = client.stats();
    assert_eq!(
        stats.dials, stats.attempts,
        "every failed attempt dials again"
    );
    assert_eq!(stats.retries + 1, stats.attempts);
}

#[test]
fn a_method_error_is_returned_at_once_and_never_retried() {
    let server = TestServer::start();
    let client = RetryingClient::builder(server.addr().to_string())
        .policy(quick_policy().idempotent(true))
        .build();

    let err = client
        .call::<_, util::Quotient>("Arith.Divide", &Args { a: 1, b: 0 })
        .unwrap_err();
    assert!(
        matches!(&err, RpcError::Method { message } if message == "divide by zero"),
        "{err:?}"
    );
    assert_eq!(client.stats().attempts, 1);
    assert_eq!(client.stats().retries, 0);
    assert_eq!(server.server.stats().call_errors(ErrorCode::Service), 1);

    let err = client.call::<_, i64>("Arith.Nope", &0u8).unwrap_err();
    assert!(matches!(err, RpcError::UnknownMethod { .. }), "{err:?}");
    assert_eq!(client.stats().attempts, 2, "one attempt per call");
}

#[test]
fn a_timeout_is_retried_only_when_the_method_is_marked_idempotent() {
    let server = TestServer::start();
    let client = RetryingClient::new(server.addr().to_string());
    let policy = quick_policy()
        .max_attempts(3)
        .attempt_timeout(Duration::from_millis(50));
    let slow = |policy: &RetryPolicy| {
        client.call_with::<_, u64>(policy, "Probe.Sleep", &300u64, Duration::from_secs(5))
    };

    let err = slow(&policy).unwrap_err();
    assert!(matches!(err, RpcError::Timeout { .. }), "{err:?}");
    assert_eq!(client.stats().attempts, 1, "it may have run: not retried");

    let err = slow(&policy.clone().idempotent(true)).unwrap_err();
    assert!(matches!(err, RpcError::Timeout { .. }), "{err:?}");
    assert_eq!(client.stats().attempts, 4, "1 + 3 attempts");
    assert_eq!(client.stats().retries, 2);
}

#[test]
fn no_wait_is_started_that_would_end_past_the_deadline() {
    let client = RetryingClient::builder(dead_addr().to_string())
        .policy(
            RetryPolicy::default()
                .max_attempts(100)
                .initial_backoff(Duration::from_millis(400))
                .jitter(Jitter::None),
        )
        .build();
    let err = client
        .call_timeout::<_, i64>(
            "Arith.Multiply",
            &Args { a: 1, b: 1 },
            Duration::from_millis(300),
        )
        .unwrap_err();
    assert!(matches!(err, RpcError::Unreachable { .. }), "{err:?}");
    assert_eq!(
        client.stats().retries,
        0,
        "a 400 ms wait cannot fit in 300 ms"
    );
}

#[test]
fn the_budget_caps_retries_against_a_dead_server() {
    let client = RetryingClient::builder(dead_addr().to_string())
        .policy(
            RetryPolicy::default()
                .max_attempts(5)
                .initial_backoff(Duration::from_millis(1))
                .jitter(Jitter::None),
        )
        .budget(RetryBudget::new(0.1, 0.0))
        .build();

    for _ in 0..20 {
        let err = multiply(&client).unwrap_err();
        assert!(matches!(err, RpcError::Unreachable { .. }), "{err:?}");
    }
    let stats = client.stats();
    // Each call earns a tenth of a retry: calls 10 and 20 retry once, then every call is
    // refused its (next) retry, though the policy allows 4.
    assert_eq!(stats.retries, 2, "{stats:?}");
    assert_eq!(stats.budget_exhausted, 20, "{stats:?}");
    assert_eq!(stats.attempts, 22, "{stats:?}");
}

#[test]
fn without_jitter_the_waits_double_up_to_the_maximum() {
    let waits = waits_against_a_dead_server(Jitter::None, 0);
    let ms = Duration::from_millis;
    assert_eq!(waits, [ms(5), ms(10), ms(20), ms(40), ms(40)]);
}

#[test]
fn clients_with_the_same_seed_wait_the_same_jittered_times() {
    let first = waits_against_a_dead_server(Jitter::Full, 7);
    assert_eq!(first, waits_against_a_dead_server(Jitter::Full, 7));
    assert_ne!(first, waits_against_a_dead_server(Jitter::Full, 8));
    let policy = backoff_policy(Jitter::Full);
    let mut rng = Rng::with_seed(7);
    let expected: Vec<Duration> = (1..=5)
        .map(|retry| policy.backoff(retry, Duration::ZERO, &mut rng))
        .collect();
    assert_eq!(first, expected);
}

fn backoff_policy(jitter: Jitter) -> RetryPolicy {
    RetryPolicy::default()
        .max_attempts(6)
        .initial_backoff(Duration::from_millis(5))
        .max_backoff(Duration::from_millis(40))
        .jitter(jitter)
}

/// The waits of one call of 6 attempts against a dead server.
fn waits_against_a_dead_server(jitter: Jitter, seed: u64) -> Vec<Duration> {
    let waits = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&waits);
    let client = RetryingClient::builder(dead_addr().to_string())
        .policy(backoff_policy(jitter))
        .budget(RetryBudget::unlimited())
        .rng(Rng::with_seed(seed))
        .on_retry(move |notice| seen.lock().unwrap().push(notice.backoff))
        .build();
    multiply(&client).unwrap_err();
    let stats = client.stats();
    assert_eq!(stats.attempts, 6, "{stats:?}");
    let waits = waits.lock().unwrap().clone();
    assert_eq!(stats.backoff_total, waits.iter().sum::<Duration>());
    waits
}

#[test]
fn a_connection_closed_by_the_server_is_dialed_again() {
    let server = TestServer::start_with(
        Server::builder()
            .idle_timeout(Duration::from_millis(100))
            .build(),
    );
    let client = RetryingClient::builder(server.addr().to_string())
        .policy(quick_policy().idempotent(true))
        .build();
    assert_eq!(multiply(&client).unwrap(), 42);
    wait_until("the idle connection closed", Duration::from_secs(5), || {
        server.server.stats().idle_closes == 1
    });

    assert_eq!(multiply(&client).unwrap(), 42);
    assert_eq!(client.stats().dials, 2);
}

#[test]
fn a_closed_retrying_client_fails_with_shutdown_and_does_not_redial() {
    let server = TestServer::start();
    let client = RetryingClient::new(server.addr().to_string());
    assert_eq!(multiply(&client).unwrap(), 42);
    client.close();
    let err = multiply(&client).unwrap_err();
    assert!(matches!(err, RpcError::Shutdown), "{err:?}");
    assert_eq!(client.stats().dials, 1);
    assert_eq!(client.stats().attempts, 1);
}

#[test]
fn callers_waiting_for_another_callers_dial_keep_their_own_deadline() {
    // A TLS handshake with a peer that accepts and says nothing: each dial takes the whole
    // connect timeout (1 s). Three callers with 1.5 s each start together; whoever waits for
    // another's dial must still be answered by its own deadline.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let keep = thread::spawn(move || {
        let held: Vec<_> = silent.incoming().take(8).collect();
        thread::sleep(Duration::from_secs(5));
        drop(held);
    });
    let tls = netrpc::tls::client_config(netrpc::tls::RootCertStore::empty(), None).unwrap();
    let config = netrpc::core::ClientConfig {
        tls: Some(netrpc::tls::ClientTls::new(tls, "localhost").unwrap()),
        connect_timeout: Duration::from_secs(1),
        ..netrpc::core::ClientConfig::default()
    };
    let client = RetryingClient::builder(addr.to_string())
        .client_config(config)
        .policy(RetryPolicy::default().max_attempts(1))
        .build();
    let started = std::time::Instant::now();
    let callers: Vec<_> = (0..3)
        .map(|_| {
            let client = client.clone();
            thread::spawn(move || {
                let result = client.call_timeout::<_, i64>(
                    "Arith.Multiply",
                    &Args { a: 6, b: 7 },
                    Duration::from_millis(1500),
                );
                (result, started.elapsed())
            })
        })
        .collect();
    for caller in callers {
        let (result, took) = caller.join().unwrap();
        assert!(result.is_err(), "{result:?}");
        assert!(
            took < Duration::from_millis(2000),
            "answered after {took:?}: {result:?}"
        );
    }
    drop(keep);
}

#[test]
fn a_client_closed_while_dialing_fails_its_callers_with_shutdown_and_closes_the_new_connection() {
    // TLS, so that the dial waits for the server's side of the handshake, which the proxy
    // holds back until the test has closed the client.
    let ca = Authority::new("netrpc test ca").unwrap();
    let (chain, key) = ca.server().unwrap().pair();
    let server_tls = netrpc::tls::server_config(chain, key, None).unwrap();
    let server = TestServer::start_with(Server::builder().tls(server_tls).build());
    let proxy = HeldProxy::start(server.addr());
    let client_tls = netrpc::tls::client_config(ca.roots().unwrap(), None).unwrap();
    let config = netrpc::core::ClientConfig {
        tls: Some(netrpc::tls::ClientTls::new(client_tls, "localhost").unwrap()),
        connect_timeout: Duration::from_secs(5),
        ..netrpc::core::ClientConfig::default()
    };
    let client = RetryingClient::builder(proxy.addr.to_string())
        .client_config(config)
        .policy(quick_policy())
        .build();
    // One caller dials; the other waits for its dial.
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let client = client.clone();
            thread::spawn(move || multiply(&client))
        })
        .collect();
    proxy
        .accepted
        .recv_timeout(Duration::from_secs(5))
        .expect("the proxy accepted the dial");
    wait_until(
        "both callers past their first check",
        Duration::from_secs(5),
        || client.stats().attempts == 2,
    );

    client.close();
    proxy.release.send(()).unwrap();
    for caller in callers {
        let result = caller.join().unwrap();
        assert!(matches!(result, Err(RpcError::Shutdown)), "{result:?}");
    }
    assert_eq!(client.stats().dials, 1, "nobody dials after close");
    wait_until(
        "the server to see the connection end",
        Duration::from_secs(5),
        || {
            let stats = server.server.stats();
            stats.accepted_connections == 1 && stats.open_connections == 0
        },
    );
}

/// A proxy in front of `upstream` for one connection, which it accepts at once (so a dial's
/// TCP connect succeeds) but joins to `upstream` only when told to, so that a TLS dial
/// through it hangs in its handshake for as long as the test wants.
struct HeldProxy {
    addr: SocketAddr,
    /// Fires when the proxy has accepted its connection.
    accepted: Receiver<()>,
    /// Joins the accepted connection to `upstream`.
    release: Sender<()>,
}

impl HeldProxy {
    fn start(upstream: SocketAddr) -> HeldProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (accepted_tx, accepted) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        thread::spawn(move || {
            let (downstream, _) = listener.accept().unwrap();
            accepted_tx.send(()).unwrap();
            if released.recv_timeout(Duration::from_secs(10)).is_err() {
                return;
            }
            let upstream = TcpStream::connect(upstream).unwrap();
            pipe(
                downstream.try_clone().unwrap(),
                upstream.try_clone().unwrap(),
            );
            pipe(upstream, downstream);
        });
        HeldProxy {
            addr,
            accepted,
            release,
        }
    }
}

/// Copies `from` to `to` on a thread until `from` ends, then ends `to`'s sending side, so
/// that each end sees the other close.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    thread::spawn(move || {
        let _ = io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}
