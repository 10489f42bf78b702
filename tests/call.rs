//! Blocking calls: many threads on one client (reading replies themselves, beside `go` calls),
//! many clients, several services, both codecs.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod util;

use std::collections::HashSet;
use std::thread;
use std::time::Duration;

use netrpc::{Client, CodecKind, Server};
use util::{Args, ArithClient, ArithServer, Calculator, ProbeClient, Quotient, TestServer};

#[test]
fn typed_and_untyped_calls_return_the_methods_replies() {
    let server = TestServer::start();
    let arith = server.arith();
    assert_eq!(arith.multiply(&Args { a: 7, b: 8 }).unwrap(), 56);
    assert_eq!(arith.sum(&Args { a: 7, b: 8 }).unwrap(), 15);
    assert_eq!(
        arith.divide(&Args { a: 17, b: 5 }).unwrap(),
        Quotient { quo: 3, rem: 2 }
    );
    let untyped: i64 = arith
        .client()
        .call("Arith.Multiply", &Args { a: -3, b: 9 })
        .unwrap();
    assert_eq!(untyped, -27);
    let by_constant: i64 = arith
        .client()
        .call(ArithClient::SUM, &Args { a: 1, b: 2 })
        .unwrap();
    assert_eq!(by_constant, 3);
    assert_eq!(ArithClient::MULTIPLY, "Arith.Multiply");
}

#[test]
fn eight_threads_sharing_one_client_each_get_their_own_replies() {
    let server = TestServer::start();
    let arith = server.arith();
    let threads: Vec<_> = (0..8i64)
        .map(|t| {
            let arith = arith.clone();
            thread::spawn(move || {
                for i in 0..1_000i64 {
                    let args = Args {
                        a: t * 1_000_000 + i,
                        b: 3,
                    };
                    assert_eq!(
                        arith.multiply(&args).unwrap(),
                        args.a * 3,
                        "thread {t} call {i}"
                    );
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("caller thread finished");
    }
    assert_eq!(arith.client().pending_calls(), 0);
}

#[test]
fn blocking_callers_reading_replies_themselves_complete_go_calls_too_and_lose_none() {
    // A blocking caller reads the connection itself while nobody else does, and hands the
    // reading back to the loop after: every reply it reads, its own or a `go` call's, must
    // reach its call, and readiness arriving during a hand-over must not be lost (a lost one
    // would leave a call waiting for its 5 s deadline).
    let server = TestServer::start();
    let client = Client::builder()
        .call_timeout(Duration::from_secs(5))
        .dial(server.addr())
        .unwrap();
    let started = std::time::Instant::now();
    let threads: Vec<_> = (0..6i64)
        .map(|t| {
            let client = client.clone();
            thread::spawn(move || {
                let (done, completions) = netrpc::done_channel::<i64>();
                for i in 0..500i64 {
                    let a = t * 1_000_000 + i;
                    if t % 2 == 0 {
                        client.go_with("Arith.Multiply", &Args { a, b: 5 }, &done);
                    }
                    let product: i64 = client.call("Arith.Multiply", &Args { a, b: 3 }).unwrap();
                    assert_eq!(product, a * 3, "thread {t} call {i}");
                }
                let go_calls = if t % 2 == 0 { 500 } else { 0 };
                let mut sum = 0;
                for _ in 0..go_calls {
                    let completion = completions.recv_timeout(Duration::from_secs(10)).unwrap();
                    sum += completion.result.unwrap();
                }
                let want: i64 = (0..go_calls).map(|i| (t * 1_000_000 + i) * 5).sum();
                assert_eq!(sum, want, "thread {t}: every go call completed once");
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("caller thread finished");
    }
    assert_eq!(client.pending_calls(), 0);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a call waited for its deadline: {:?}",
        started.elapsed()
    );
}

#[test]
fn many_clients_call_one_server_concurrently() {
    let server = TestServer::start();
    let addr = server.addr();
    let threads: Vec<_> = (0..16i64)
        .map(|t| {
            thread::spawn(move || {
                let arith = ArithClient::new(Client::dial(addr).unwrap());
                (0..200i64)
                    .map(|i| arith.sum(&Args { a: t, b: i }).unwrap())
                    .sum::<i64>()
            })
        })
        .collect();
    for (t, thread) in threads.into_iter().enumerate() {
        let total = thread.join().unwrap();
        assert_eq!(total, (0..200i64).map(|i| t as i64 + i).sum::<i64>());
    }
}

#[test]
fn several_services_share_one_connection() {
    let server = TestServer::start();
    let client = server.client();
    let arith = ArithClient::new(client.clone());
    let probe = ProbeClient::new(client);
    assert_eq!(arith.multiply(&Args { a: 2, b: 21 }).unwrap(), 42);
    assert_eq!(probe.echo(&b"hello".to_vec()).unwrap(), b"hello");
    assert_eq!(probe.sleep(&1).unwrap(), 1);
}

#[test]
fn register_name_serves_a_service_under_another_name() {
    let server = Server::new();
    server
        .register_name("Calculator", ArithServer::new(Calculator))
        .unwrap();
    let running = server.serve("127.0.0.1:0").unwrap();
    let client = Client::dial(running.local_addr()).unwrap();
    let renamed = ArithClient::with_service_name(client.clone(), "Calculator");
    assert_eq!(renamed.multiply(&Args { a: 3, b: 4 }).unwrap(), 12);
    let direct: i64 = client.call("Calculator.Sum", &Args { a: 3, b: 4 }).unwrap();
    assert_eq!(direct, 7);
    let err = ArithClient::new(client)
        .multiply(&Args { a: 1, b: 1 })
        .unwrap_err();
    assert!(
        matches!(err, netrpc::RpcError::UnknownService { .. }),
        "{err:?}"
    );
}

#[test]
fn registering_a_name_twice_or_with_a_dot_is_refused() {
    let server = Server::new();
    server.register(ArithServer::new(Calculator)).unwrap();
    for name in ["Arith", "", "A.B"] {
        let err = server
            .register_name(name, ArithServer::new(Calculator))
            .unwrap_err();
        assert!(
            matches!(err, netrpc::RpcError::InvalidRegistration { .. }),
            "{name}: {err:?}"
        );
    }
}

#[test]
fn postcard_and_json_clients_are_served_side_by_side() {
    let server = TestServer::start();
    let postcard = ArithClient::new(server.client());
    let json = ArithClient::new(
        Client::builder()
            .codec(CodecKind::Json)
            .dial(server.addr())
            .unwrap(),
    );
    assert_eq!(json.client().config().codec, CodecKind::Json);
    for i in 0..50 {
        let args = Args { a: i, b: i + 1 };
        assert_eq!(postcard.multiply(&args).unwrap(), i * (i + 1));
        assert_eq!(json.multiply(&args).unwrap(), i * (i + 1));
    }
    assert_eq!(
        json.divide(&Args { a: 9, b: 2 }).unwrap(),
        Quotient { quo: 4, rem: 1 }
    );
}

#[test]
fn sequence_ids_are_never_reused_on_a_connection() {
    let server = TestServer::start();
    let arith = server.arith();
    let seqs: HashSet<u64> = (0..100)
        .map(|i| arith.sum_go(&Args { a: i, b: 0 }).seq())
        .collect();
    assert_eq!(seqs.len(), 100);
}

#[test]
fn serve_conn_serves_a_connection_the_caller_accepted() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new();
    server.register(ArithServer::new(Calculator)).unwrap();
    let serving = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        server.serve_conn(stream)
    });
    let arith = ArithClient::new(Client::dial(addr).unwrap());
    assert_eq!(arith.multiply(&Args { a: 5, b: 5 }).unwrap(), 25);
    arith.client().close();
    // ServeConn returns once the client hangs up.
    serving.join().unwrap().unwrap();
}

#[test]
fn serve_conn_connections_get_the_idle_timeout_like_served_ones() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::builder()
        .idle_timeout(Duration::from_millis(100))
        .build();
    server.register(ArithServer::new(Calculator)).unwrap();
    let (returned_tx, returned) = crossbeam_channel::bounded(1);
    thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let _ = returned_tx.send(server.serve_conn(stream));
    });
    let arith = ArithClient::new(Client::dial(addr).unwrap());
    assert_eq!(arith.multiply(&Args { a: 5, b: 5 }).unwrap(), 25);
    // Idle past the timeout: the server says go-away and closes, so ServeConn returns.
    returned
        .recv_timeout(Duration::from_secs(5))
        .expect("serve_conn returns once the idle connection is closed")
        .unwrap();
    let err = arith.multiply(&Args { a: 5, b: 5 }).unwrap_err();
    assert!(matches!(err, netrpc::RpcError::ShuttingDown), "{err:?}");
}

/// A service with one method of the given name.
struct OneMethod(&'static str);

impl netrpc::Service for OneMethod {
    const NAME: &'static str = "One";

    fn into_method_table(self) -> netrpc::core::MethodTable {
        let mut table = netrpc::core::MethodTable::new();
        table.add(self.0, |x: i64| Ok::<_, netrpc::ServiceError>(x));
        table
    }
}

#[test]
fn a_method_name_with_a_dot_or_empty_is_refused_at_registration() {
    // "One.Get.All" would be looked up as method "All" of service "One.Get": never reached.
    for name in ["Get.All", ""] {
        let err = Server::new().register(OneMethod(name)).unwrap_err();
        assert!(
            matches!(err, netrpc::RpcError::InvalidRegistration { .. }),
            "{name:?}: {err:?}"
        );
    }
    assert!(Server::new().register(OneMethod("Get")).is_ok());
}
