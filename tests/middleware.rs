//! Middleware around every call (SEEDS §7): logging on both sides, a token-bucket rate limit
//! answered `Throttled`, trace ids carried in the frame metadata and visible to handlers,
//! the chain's order, and a panicking middleware contained like a panicking handler.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod util;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use netrpc::core::middleware::{
    CallContext, LogRecord, Logging, Next, RateLimit, ServerMiddleware, Side, Tracing,
};
use netrpc::core::DispatchError;
use netrpc::{service, Client, RpcError, Server, ServiceError};
use util::{Args, ArithClient, TestServer};

service! {
    /// Reports the trace ids its handler sees, and those of a call it makes onwards.
    pub trait Traced {
        const NAME = "Traced";
        type Server = TracedServer;
        type Client = TracedClient;

        /// `[trace, span, parent or 0]` of this call, then of the onward call if `onward`.
        #[rpc(name = "Ids", go = ids_go, const = IDS)]
        fn ids(onward: bool) -> Vec<u64>;
    }
}

/// Calls `next` (with tracing) when asked to go onward.
struct Relay {
    next: Option<TracedClient>,
}

impl Traced for Relay {
    fn ids(&self, onward: bool) -> Result<Vec<u64>, ServiceError> {
        let context = CallContext::current().ok_or("no call context")?;
        let ids = context.trace().ok_or("no trace ids")?;
        let mut out = vec![ids.trace_id, ids.span_id, ids.parent_span_id.unwrap_or(0)];
        if let (true, Some(next)) = (onward, &self.next) {
            out.extend(next.ids(&false).map_err(|err| err.to_string())?);
        }
        Ok(out)
    }
}

fn records() -> (Logging, Arc<Mutex<Vec<LogRecord>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    (
        Logging::to(move |record| sink.lock().unwrap().push(record.clone())),
        seen,
    )
}

#[test]
fn logging_records_method_status_and_latency_on_both_sides() {
    let (server_log, server_seen) = records();
    let server = TestServer::start_with(Server::builder().middleware(server_log).build());
    let (client_log, client_seen) = records();
    let client = Client::builder()
        .middleware(client_log)
        .dial(server.addr())
        .unwrap();
    let arith = ArithClient::new(client);
    assert_eq!(arith.multiply(&Args { a: 6, b: 7 }).unwrap(), 42);
    let err = arith.divide(&Args { a: 1, b: 0 }).unwrap_err();
    assert!(matches!(err, RpcError::Method { .. }), "{err:?}");
    util::wait_until("two server records", Duration::from_secs(5), || {
        server_seen.lock().unwrap().len() == 2
    });
    let server_records = server_seen.lock().unwrap().clone();
    assert_eq!(server_records[0].side, Side::Server);
    assert_eq!(server_records[0].method, "Arith.Multiply");
    assert_eq!(server_records[0].status, "ok");
    assert_eq!(server_records[1].method, "Arith.Divide");
    assert!(
        server_records[1].status.contains("divide by zero"),
        "{server_records:?}"
    );
    let client_records = client_seen.lock().unwrap().clone();
    assert_eq!(client_records.len(), 2);
    assert_eq!(client_records[0].side, Side::Client);
    assert_eq!(client_records[0].status, "ok");
    assert_eq!(client_records[0].peer, server.addr());
    assert!(
        client_records[1].status.contains("divide by zero"),
        "{client_records:?}"
    );
    assert!(client_records[0]
        .to_string()
        .starts_with("client Arith.Multiply to 127.0.0.1:"));
}

#[test]
fn a_server_rate_limit_answers_throttled_past_its_burst() {
    // Three at once, then one every 1,000 s: the fourth call is over the limit.
    let limit = RateLimit::per_second(0.001, 3);
    let server = TestServer::start_with(Server::builder().middleware(limit).build());
    let arith = server.arith();
    for _ in 0..3 {
        assert_eq!(arith.multiply(&Args { a: 2, b: 3 }).unwrap(), 6);
    }
    let err = arith.multiply(&Args { a: 2, b: 3 }).unwrap_err();
    assert!(matches!(err, RpcError::Throttled), "{err:?}");
    assert!(err.is_retryable());
    assert_eq!(
        server
            .server
            .stats()
            .call_errors(netrpc::ErrorCode::Throttled),
        1
    );
}

#[test]
fn a_client_rate_limit_refuses_without_sending() {
    let server = TestServer::start();
    let client = Client::builder()
        .middleware(RateLimit::per_second(0.001, 2))
        .dial(server.addr())
        .unwrap();
    let arith = ArithClient::new(client);
    for _ in 0..2 {
        assert_eq!(arith.multiply(&Args { a: 2, b: 3 }).unwrap(), 6);
    }
    let err = arith.multiply(&Args { a: 2, b: 3 }).unwrap_err();
    assert!(matches!(err, RpcError::Throttled), "{err:?}");
    let stats = server.server.stats();
    assert_eq!(
        stats.call_errors(netrpc::ErrorCode::Throttled),
        0,
        "nothing was sent"
    );
}

#[test]
fn trace_ids_reach_handlers_and_continue_through_onward_calls() {
    let inner_server = Server::new();
    inner_server
        .register(TracedServer::new(Relay { next: None }))
        .unwrap();
    let inner = inner_server.serve("127.0.0.1:0").unwrap();
    let onward = Client::builder()
        .middleware(Tracing::new())
        .dial(inner.local_addr())
        .unwrap();
    let outer_server = Server::new();
    outer_server
        .register(TracedServer::new(Relay {
            next: Some(TracedClient::new(onward)),
        }))
        .unwrap();
    let outer = outer_server.serve("127.0.0.1:0").unwrap();
    let client = Client::builder()
        .middleware(Tracing::new())
        .dial(outer.local_addr())
        .unwrap();
    let ids = TracedClient::new(client).ids(&true).unwrap();
    let (outer_ids, inner_ids) = ids.split_at(3);
    assert_ne!(outer_ids[0], 0);
    assert_eq!(outer_ids[2], 0, "the first call has no parent");
    assert_eq!(inner_ids[0], outer_ids[0], "one trace");
    assert_ne!(inner_ids[1], outer_ids[1], "a new span");
    assert_eq!(inner_ids[2], outer_ids[1], "whose parent is the outer span");
    // Without the tracing middleware, a handler sees no trace ids.
    let plain = TracedClient::new(Client::dial(outer.local_addr()).unwrap());
    let err = plain.ids(&false).unwrap_err();
    assert!(
        matches!(&err, RpcError::Method { message } if message == "no trace ids"),
        "{err:?}"
    );
}

/// Records when it is entered and left.
#[derive(Debug)]
struct Order {
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
}

impl ServerMiddleware for Order {
    fn handle(&self, call: &CallContext, next: Next<'_>) -> Result<(), DispatchError> {
        self.log
            .lock()
            .unwrap()
            .push(format!("{} in {}", self.name, call.method()));
        let result = next.run();
        self.log.lock().unwrap().push(format!("{} out", self.name));
        result
    }
}

/// Panics on every call.
#[derive(Debug)]
struct Faulty;

impl ServerMiddleware for Faulty {
    fn handle(&self, _call: &CallContext, _next: Next<'_>) -> Result<(), DispatchError> {
        panic!("faulty middleware")
    }
}

#[test]
fn server_middleware_nests_in_order_and_a_panic_in_one_is_contained() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let order = |name| Order {
        name,
        log: Arc::clone(&log),
    };
    let server = TestServer::start_with(
        Server::builder()
            .middleware(order("first"))
            .middleware(order("second"))
            .build(),
    );
    assert_eq!(server.arith().multiply(&Args { a: 1, b: 1 }).unwrap(), 1);
    util::wait_until("both left", Duration::from_secs(5), || {
        log.lock().unwrap().len() == 4
    });
    assert_eq!(
        *log.lock().unwrap(),
        [
            "first in Arith.Multiply",
            "second in Arith.Multiply",
            "second out",
            "first out"
        ]
    );
    let faulty = TestServer::start_with(Server::builder().middleware(Faulty).build());
    let err = faulty.arith().multiply(&Args { a: 1, b: 1 }).unwrap_err();
    assert!(matches!(err, RpcError::HandlerPanicked { .. }), "{err:?}");
    util::assert_healthy(server.addr());
}

/// Panics after every call it sees.
#[derive(Debug)]
struct PanicsAfter;

impl netrpc::core::middleware::ClientMiddleware for PanicsAfter {
    fn after_call(&self, _call: &netrpc::core::middleware::CallRecord<'_>) {
        panic!("after_call panics");
    }
}

#[test]
fn a_client_middleware_panicking_after_a_call_loses_no_completion() {
    let server = TestServer::start();
    let client = Client::builder()
        .middleware(PanicsAfter)
        .dial(server.addr())
        .unwrap();
    let (done, completions) = netrpc::done_channel::<i64>();
    let seq = client.go_with("Arith.Multiply", &Args { a: 6, b: 7 }, &done);
    let completion = completions
        .recv_timeout(Duration::from_secs(5))
        .expect("the completion arrives");
    assert_eq!((completion.seq, completion.result.unwrap()), (seq, 42));
    let call = client.go::<_, i64>("Arith.Multiply", &Args { a: 2, b: 3 });
    assert_eq!(call.wait().unwrap(), 6);
    let product: i64 = client.call("Arith.Multiply", &Args { a: 3, b: 3 }).unwrap();
    assert_eq!(product, 9);
}

/// Panics before the calls whose argument's `a` is negative.
#[derive(Debug)]
struct PanicsBeforeNegative;

impl netrpc::core::middleware::ClientMiddleware for PanicsBeforeNegative {
    fn before_call(
        &self,
        _call: &mut netrpc::core::middleware::OutgoingCall<'_>,
    ) -> Result<(), RpcError> {
        if NEXT_IS_NEGATIVE.with(std::cell::Cell::get) {
            panic!("before_call panics");
        }
        Ok(())
    }
}

thread_local! {
    /// Whether `PanicsBeforeNegative` panics for this thread's next call.
    static NEXT_IS_NEGATIVE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[test]
fn a_client_middleware_panicking_before_a_call_reaches_its_caller_and_leaves_nothing_pending() {
    // `before_call` runs on the caller's thread: its panic is the caller's, as the docs say,
    // and the client goes on serving (nothing was registered or sent).
    let server = TestServer::start();
    let client = Client::builder()
        .middleware(PanicsBeforeNegative)
        .dial(server.addr())
        .unwrap();
    NEXT_IS_NEGATIVE.with(|next| next.set(true));
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        client.call::<_, i64>("Arith.Multiply", &Args { a: -1, b: 7 })
    }));
    NEXT_IS_NEGATIVE.with(|next| next.set(false));
    assert!(panicked.is_err(), "the panic reaches the caller");
    assert_eq!(client.pending_calls(), 0);
    let product: i64 = client.call("Arith.Multiply", &Args { a: 6, b: 7 }).unwrap();
    assert_eq!(product, 42);
}
