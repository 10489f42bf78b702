//! Shared test helpers: servers on 127.0.0.1:0, the tutorials' `Arith`, and a `Probe` service
//! whose methods sleep, block until released, panic, or echo.

#![allow(dead_code, unused_imports, unreachable_pub)] // each test file uses part of this module

#[path = "../../examples/support/arith.rs"]
pub mod arith;
pub mod child;
pub mod evil;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use netrpc::{service, Client, Completion, Server, ServerHandle, ServiceError};

pub use arith::{Args, ArithClient, ArithServer, Calculator, Quotient};

service! {
    /// Methods that misbehave on purpose.
    pub trait Probe {
        const NAME = "Probe";
        type Server = ProbeServer;
        type Client = ProbeClient;

        /// Sleeps `ms` milliseconds, then returns `ms`.
        #[rpc(name = "Sleep", go = sleep_go, const = SLEEP)]
        fn sleep(ms: u64) -> u64;
        /// Waits until the test releases it (at most 10 s), then returns `id`.
        #[rpc(name = "Block", go = block_go, const = BLOCK)]
        fn block(id: u64) -> u64;
        /// Panics with `message`.
        #[rpc(name = "Panic", go = panic_go, const = PANIC)]
        fn panic(message: String) -> u64;
        /// Returns its argument.
        #[rpc(name = "Echo", go = echo_go, const = ECHO)]
        fn echo(bytes: Vec<u8>) -> Vec<u8>;
        /// Returns `len` bytes: a reply as large as the test wants.
        #[rpc(name = "Fill", go = fill_go, const = FILL)]
        fn fill(len: u32) -> Vec<u8>;
        /// Describes a label; counts its runs, so a test can tell a body was never decoded.
        #[rpc(name = "Label", go = label_go, const = LABEL)]
        fn label(label: Label) -> String;
        /// Computes (holds its core, never sleeps) for `us` microseconds, then returns `us`.
        #[rpc(name = "Spin", go = spin_go, const = SPIN)]
        fn spin(us: u64) -> u64;
        /// As `Block`, but computing while it waits (polls for its release, never sleeps):
        /// to the pool it looks busy, not blocked.
        #[rpc(name = "BusyBlock", go = busy_block_go, const = BUSY_BLOCK)]
        fn busy_block(id: u64) -> u64;
    }
}

/// A `Probe.Sleep` reply that remembers the thread it was decoded on: tells whether a caller
/// read its reply itself or the client's loop did.
#[derive(Debug)]
pub struct DecodedOn {
    pub ms: u64,
    pub thread: std::thread::ThreadId,
}

impl<'de> serde::Deserialize<'de> for DecodedOn {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(DecodedOn {
            ms: <u64 as serde::Deserialize>::deserialize(deserializer)?,
            thread: std::thread::current().id(),
        })
    }
}

/// An argument with a string, an enum and a number: every way a body can fail to decode.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Label {
    pub name: String,
    pub colour: Colour,
    pub weight: u32,
}

/// The enum inside a [`Label`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Colour {
    Red,
    Green,
}

/// The `Probe` implementation; `release` lets blocked calls go.
pub struct Prober {
    release: Receiver<()>,
    /// How many times `Label` ran.
    labels_run: Arc<AtomicUsize>,
}

impl Prober {
    /// A prober nobody can release: its `Block` calls fail at once.
    pub fn new() -> Self {
        let (_, release) = crossbeam_channel::bounded(0);
        Prober {
            release,
            labels_run: Arc::default(),
        }
    }

    /// A prober and the sender whose every message lets one blocked `Block` call return.
    pub fn releasable() -> (Prober, Sender<()>) {
        let (release_tx, release) = crossbeam_channel::unbounded();
        let prober = Prober {
            release,
            labels_run: Arc::default(),
        };
        (prober, release_tx)
    }
}

impl Probe for Prober {
    fn sleep(&self, ms: u64) -> Result<u64, ServiceError> {
        std::thread::sleep(Duration::from_millis(ms));
        Ok(ms)
    }

    fn block(&self, id: u64) -> Result<u64, ServiceError> {
        self.release
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| ServiceError::new("never released"))?;
        Ok(id)
    }

    fn panic(&self, message: String) -> Result<u64, ServiceError> {
        panic!("{message}");
    }

    fn echo(&self, bytes: Vec<u8>) -> Result<Vec<u8>, ServiceError> {
        Ok(bytes)
    }

    fn fill(&self, len: u32) -> Result<Vec<u8>, ServiceError> {
        Ok(vec![0x5a; len as usize])
    }

    fn spin(&self, us: u64) -> Result<u64, ServiceError> {
        let until = Instant::now() + Duration::from_micros(us);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        Ok(us)
    }

    fn busy_block(&self, id: u64) -> Result<u64, ServiceError> {
        let until = Instant::now() + Duration::from_secs(10);
        while self.release.try_recv().is_err() {
            if Instant::now() > until {
                return Err(ServiceError::new("never released"));
            }
            std::hint::spin_loop();
        }
        Ok(id)
    }

    fn label(&self, label: Label) -> Result<String, ServiceError> {
        self.labels_run.fetch_add(1, Ordering::SeqCst);
        Ok(format!(
            "{} {:?} {}",
            label.name, label.colour, label.weight
        ))
    }
}

/// A running server with `Arith` and `Probe`, and the sender that releases blocked calls.
pub struct TestServer {
    pub handle: ServerHandle,
    pub server: Server,
    pub release: Sender<()>,
    /// How many times `Probe.Label` ran.
    pub labels_run: Arc<AtomicUsize>,
}

impl TestServer {
    /// Starts a server on 127.0.0.1:0 with default settings.
    pub fn start() -> TestServer {
        TestServer::start_with(Server::new())
    }

    /// A server for `connections` idle sockets: room for them all, and no first-frame
    /// timeout (which closes sockets that never send a frame) closing the first while the
    /// rest still connect or while their cost is measured.
    pub fn start_for_idle(connections: usize) -> TestServer {
        TestServer::start_with(
            Server::builder()
                .max_connections(connections + 10)
                .first_frame_timeout(None)
                .build(),
        )
    }

    /// Registers `Arith` and `Probe` on `server` and serves on 127.0.0.1:0.
    pub fn start_with(server: Server) -> TestServer {
        let (prober, release_tx) = Prober::releasable();
        let labels_run = Arc::clone(&prober.labels_run);
        server
            .register(ArithServer::new(Calculator))
            .expect("register Arith");
        server
            .register(ProbeServer::new(prober))
            .expect("register Probe");
        let handle = server.serve("127.0.0.1:0").expect("serve on loopback");
        TestServer {
            handle,
            server,
            release: release_tx,
            labels_run,
        }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.handle.local_addr()
    }

    pub fn client(&self) -> Client {
        Client::dial(self.addr()).expect("dial the test server")
    }

    pub fn arith(&self) -> ArithClient {
        ArithClient::new(self.client())
    }

    /// Lets `count` blocked `Probe.Block` calls return.
    pub fn release(&self, count: usize) {
        for _ in 0..count {
            self.release.send(()).expect("release a blocked call");
        }
    }
}

/// Sends `quick` calls of `Probe.Sleep(0)` and one `Probe.Block(at)` placed at index `at`,
/// all in one write (one `Client::batch`); returns the channel their completions arrive on.
pub fn send_burst_with_a_block(
    client: &Client,
    quick: usize,
    at: usize,
) -> Receiver<Completion<u64>> {
    let (done, completions) = netrpc::done_channel::<u64>();
    let batch = client.batch();
    for index in 0..=quick {
        if index == at {
            batch.go_with(ProbeClient::BLOCK, &(at as u64), &done);
        } else {
            batch.go_with(ProbeClient::SLEEP, &0u64, &done);
        }
    }
    batch.send();
    completions
}

/// Runs `total` calls with `in_flight` outstanding at once, each checked against its own
/// arguments.
pub fn pipeline(client: &Client, conn: i64, total: i64, in_flight: i64) {
    let (done, completions) = netrpc::done_channel::<i64>();
    let mut expected = HashMap::new();
    for i in 0..total {
        if i >= in_flight {
            check_next(client, &completions, &mut expected);
        }
        let seq = client.go_with("Arith.Multiply", &Args { a: i, b: conn }, &done);
        expected.insert(seq, i * conn);
    }
    while !expected.is_empty() {
        check_next(client, &completions, &mut expected);
    }
}

/// Takes the next completion and checks it is one of `expected`, with its product.
fn check_next(
    client: &Client,
    completions: &Receiver<Completion<i64>>,
    expected: &mut HashMap<u64, i64>,
) {
    let completion = client
        .recv_completion(completions, Duration::from_secs(20))
        .expect("every call completes");
    let want = expected.remove(&completion.seq).expect("a call of ours");
    assert_eq!(completion.result.expect("the call succeeds"), want);
}

/// A fresh client's call must succeed: the server goes on serving everyone else.
pub fn assert_healthy(addr: std::net::SocketAddr) {
    let arith = ArithClient::new(Client::dial(addr).expect("dial for health probe"));
    assert_eq!(
        arith
            .multiply(&Args { a: 6, b: 7 })
            .expect("health probe call"),
        42
    );
}

/// The results of the next `count` completions (each within 10 s, read with
/// `Client::recv_completion`), sorted: for calls whose replies may come in any order.
pub fn sorted_results(
    client: &Client,
    completions: &Receiver<Completion<i64>>,
    count: usize,
) -> Vec<i64> {
    let mut results: Vec<i64> = (0..count)
        .map(|_| {
            let completion = client
                .recv_completion(completions, Duration::from_secs(10))
                .expect("every call completes within 10 s");
            completion.result.expect("the call succeeds")
        })
        .collect();
    results.sort_unstable();
    results
}

/// Polls `condition` every 5 ms until it holds, failing with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until the server holds no connection and no call (a leak check), at most 5 s.
pub fn assert_back_to_idle(server: &Server) {
    wait_until(
        "no connections or calls left",
        Duration::from_secs(5),
        || {
            let stats = server.stats();
            stats.open_connections == 0 && stats.in_flight_calls == 0 && stats.running_handlers == 0
        },
    );
}
