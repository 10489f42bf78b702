//! Go `net/rpc/jsonrpc` compatibility, both ways, against real Go programs
//! (`interop/go/`, built here with `go build`), and the jsonrpc server and client against bad
//! peers over raw sockets.
//!
//! The Go tests print a SKIPPED line and pass if `go` is not on PATH; `.ci/run` installs it.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod util;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use netrpc::core::middleware::{CallContext, Next, ServerMiddleware};
use netrpc::core::DispatchError;
use netrpc::core::MethodTable;
use netrpc::transport::{FrameLimits, TransportError};
use netrpc::{Call, ErrorCode, JsonRpcClient, JsonRpcHandle, RpcError, Server, Service};
use util::{assert_back_to_idle, wait_until, Args, ArithServer, Calculator, Quotient};

// ---- Go programs ----

struct GoPrograms {
    server: PathBuf,
    client: PathBuf,
}

/// Builds `interop/go` once per test run; `None` (after saying so) if Go is not installed.
fn go_programs() -> Option<&'static GoPrograms> {
    static BUILT: OnceLock<Option<GoPrograms>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            if Command::new("go").arg("version").output().is_err() {
                eprintln!("SKIPPED: `go` is not on PATH (apt-get install golang-go to run this)");
                return None;
            }
            let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("go-interop");
            std::fs::create_dir_all(&out).expect("create the Go output directory");
            let built = Command::new("go")
                .args(["build", "-o"])
                .arg(format!("{}/", out.display()))
                .args(["./arith_server", "./arith_client"])
                .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/interop/go"))
                .env("GOCACHE", out.join("cache"))
                .env("GOPATH", out.join("gopath"))
                .env("GOPROXY", "off")
                .env("GOTOOLCHAIN", "local")
                .env("CGO_ENABLED", "0")
                .output()
                .expect("run go build");
            assert!(
                built.status.success(),
                "go build failed:\n{}",
                String::from_utf8_lossy(&built.stderr)
            );
            Some(GoPrograms {
                server: out.join("arith_server"),
                client: out.join("arith_client"),
            })
        })
        .as_ref()
}

/// A child process killed when dropped, so a failing test leaves nothing running.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the Go server and returns it with the address it printed.
fn start_go_server(programs: &GoPrograms) -> (ChildGuard, String) {
    let mut child = Command::new(&programs.server)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the Go server");
    let stdout = child.stdout.take().expect("piped stdout");
    let guard = ChildGuard(child);
    let (line_tx, line_rx) = crossbeam_channel::bounded(1);
    thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = line_tx.send(line);
    });
    let line = line_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the Go server prints LISTENING within 10 s");
    let addr = line
        .strip_prefix("LISTENING ")
        .unwrap_or_else(|| panic!("unexpected first line from the Go server: {line:?}"))
        .trim()
        .to_owned();
    (guard, addr)
}

/// Runs the Go client against `addr`, its first call `wait` after it dials; returns its
/// exit success and its output.
fn run_go_client(programs: &GoPrograms, addr: &str, wait: Duration) -> (bool, String, String) {
    let child = Command::new(&programs.client)
        .arg(addr)
        .arg(format!("{}ms", wait.as_millis()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the Go client");
    let mut guard = ChildGuard(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = guard.0.try_wait().expect("poll the Go client") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the Go client did not finish in 60 s"
        );
        thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut pipe) = guard.0.stdout.take() {
        let _ = pipe.read_to_string(&mut stdout);
    }
    if let Some(mut pipe) = guard.0.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    (status.success(), stdout, stderr)
}

// ---- netrpc servers ----

/// A server with `Arith` and `Misc`, serving jsonrpc on 127.0.0.1:0.
fn start_server(server: Server) -> (Server, JsonRpcHandle) {
    server
        .register(ArithServer::new(Calculator))
        .expect("register Arith");
    server.register(Misc).expect("register Misc");
    let handle = server.serve_jsonrpc("127.0.0.1:0").expect("serve jsonrpc");
    (server, handle)
}

/// Small limits, so the size and timeout tests are quick.
fn strict_server() -> Server {
    Server::builder()
        .limits(FrameLimits {
            max_body_len: 64 * 1024,
            frame_timeout: Some(Duration::from_millis(300)),
            ..FrameLimits::default()
        })
        .build()
}

/// `Misc.Fill(n)` returns a string of `n` bytes; `Misc.Panic(text)` panics with it;
/// `Misc.Sleep(ms)` returns `ms` after sleeping that long.
struct Misc;

impl Service for Misc {
    const NAME: &'static str = "Misc";

    fn into_method_table(self) -> MethodTable {
        let mut table = MethodTable::new();
        table.add("Fill", |len: usize| {
            Ok::<_, netrpc::ServiceError>("x".repeat(len))
        });
        table.add("Sleep", |ms: u64| {
            thread::sleep(Duration::from_millis(ms));
            Ok::<_, netrpc::ServiceError>(ms)
        });
        table.add(
            "Panic",
            |text: String| -> Result<u8, netrpc::ServiceError> { panic!("{text}") },
        );
        table
    }
}

/// A raw connection that speaks jsonrpc by hand, one line at a time.
struct Raw {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Raw {
    fn connect(handle: &JsonRpcHandle) -> Raw {
        let stream = TcpStream::connect(handle.local_addr()).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        Raw {
            writer: stream.try_clone().expect("clone"),
            reader: BufReader::new(stream),
        }
    }

    fn send(&mut self, text: &str) {
        self.writer.write_all(text.as_bytes()).expect("send");
    }

    /// The next response line, without its newline.
    fn line(&mut self) -> String {
        let mut line = String::new();
        let read = self
            .reader
            .read_line(&mut line)
            .expect("a response within 5 s");
        assert!(read > 0, "connection closed while a response was awaited");
        line.trim_end().to_owned()
    }

    fn call(&mut self, request: &str) -> String {
        self.send(request);
        self.line()
    }

    /// Waits for the server to close (end of stream or reset); returns what it said first.
    fn closed(&mut self) -> Vec<String> {
        let mut said = Vec::new();
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => return said,
                Ok(_) => said.push(line.trim_end().to_owned()),
                Err(err) if err.kind() == ErrorKind::ConnectionReset => return said,
                Err(err) => panic!("expected the server to close within 5 s: {err}"),
            }
        }
    }
}

fn cannot_decode(detail: &str) -> String {
    format!(r#"{{"id":null,"result":null,"error":"rpc: server cannot decode request: {detail}"}}"#)
}

// ---- (a) a Go client calling netrpc ----

#[test]
fn a_go_client_calls_a_netrpc_jsonrpc_server() {
    let Some(programs) = go_programs() else {
        return;
    };
    let (server, handle) = start_server(Server::new());
    let addr = handle.local_addr().to_string();
    let (ok, stdout, stderr) = run_go_client(programs, &addr, Duration::ZERO);
    assert!(ok, "the Go client failed:\n{stdout}{stderr}");
    assert_eq!(stdout, GO_CLIENT_OUTPUT);
    let stats = server.stats();
    assert_eq!(stats.call_errors(ErrorCode::Service), 1);
    assert_eq!(stats.call_errors(ErrorCode::UnknownMethod), 1);
    assert_eq!(stats.call_errors(ErrorCode::UnknownService), 1);
    assert_back_to_idle(&server);
}

/// What the Go client prints when every check passes.
const GO_CLIENT_OUTPUT: &str = "\
multiply 56
sum 15
divide 3 2
divide_by_zero error: divide by zero
unknown_method error: rpc: can't find method Arith.Foo
unknown_service error: rpc: can't find service Nope.Foo
after_errors 42
concurrent 1000 ok
";

#[test]
fn a_go_client_that_dials_ahead_and_calls_later_is_served() {
    // Go's client sends nothing until its first call: past the first-frame timeout, with the
    // server far from its connection limit, its connection must still be open.
    let Some(programs) = go_programs() else {
        return;
    };
    let first_frame_timeout = Duration::from_millis(200);
    let server = Server::builder()
        .first_frame_timeout(Some(first_frame_timeout))
        .build();
    let (server, handle) = start_server(server);
    let addr = handle.local_addr().to_string();
    let (ok, stdout, stderr) = run_go_client(programs, &addr, first_frame_timeout * 4);
    assert!(ok, "the Go client failed:\n{stdout}{stderr}");
    assert_eq!(stdout, GO_CLIENT_OUTPUT);
    assert_eq!(server.stats().first_frame_timeouts, 0);
}

// ---- (b) netrpc calling a Go server ----

#[test]
fn a_netrpc_client_calls_a_go_jsonrpc_server() {
    let Some(programs) = go_programs() else {
        return;
    };
    let (mut go_server, addr) = start_go_server(programs);
    let client = JsonRpcClient::dial(addr.as_str()).expect("dial the Go server");
    let args = Args { a: 7, b: 8 };
    assert_eq!(client.call::<_, i64>("Arith.Multiply", &args).unwrap(), 56);
    assert_eq!(client.call::<_, i64>("Arith.Sum", &args).unwrap(), 15);
    let quotient: Quotient = client.call("Arith.Divide", &Args { a: 17, b: 5 }).unwrap();
    assert_eq!(quotient, Quotient { quo: 3, rem: 2 });
    match client.call::<_, Quotient>("Arith.Divide", &Args { a: 1, b: 0 }) {
        Err(RpcError::Method { message }) => assert_eq!(message, "divide by zero"),
        other => panic!("divide by zero gave {other:?}"),
    }
    match client.call::<_, i64>("Arith.Foo", &args) {
        Err(RpcError::UnknownMethod { name }) => assert_eq!(name, "Arith.Foo"),
        other => panic!("Arith.Foo gave {other:?}"),
    }
    match client.call::<_, i64>("Nope.Foo", &args) {
        Err(RpcError::UnknownService { name }) => assert_eq!(name, "Nope.Foo"),
        other => panic!("Nope.Foo gave {other:?}"),
    }

    concurrent_calls_from_threads(&client, 4, 250);

    // The Go server dies: the connection ends, and later calls fail with Shutdown.
    go_server.0.kill().expect("kill the Go server");
    wait_until(
        "the client sees the connection end",
        Duration::from_secs(5),
        || client.is_closed(),
    );
    assert!(matches!(
        client.call::<_, i64>("Arith.Multiply", &args),
        Err(RpcError::Shutdown)
    ));
}

/// `threads` threads each start `per_thread` `go` calls, then check every result.
fn concurrent_calls_from_threads(client: &JsonRpcClient, threads: i64, per_thread: i64) {
    thread::scope(|scope| {
        for t in 0..threads {
            scope.spawn(move || {
                let calls: Vec<(i64, Call<i64>)> = (0..per_thread)
                    .map(|i| {
                        let a = t * per_thread + i;
                        (a, client.go("Arith.Multiply", &Args { a, b: 3 }))
                    })
                    .collect();
                for (a, call) in calls {
                    assert_eq!(call.wait().expect("concurrent call"), a * 3);
                }
            });
        }
    });
    assert_eq!(client.pending_calls(), 0);
}

// ---- netrpc with itself over jsonrpc (no Go needed) ----

#[test]
fn netrpc_client_and_server_agree_over_jsonrpc_under_concurrency() {
    let (server, handle) = start_server(Server::new());
    let client = JsonRpcClient::dial(handle.local_addr()).expect("dial");
    concurrent_calls_from_threads(&client, 4, 250);
    let filled: String = client.call("Misc.Fill", &3usize).unwrap();
    assert_eq!(filled, "xxx");
    match client.call::<_, u8>("Misc.Panic", &"boom") {
        Err(RpcError::Method { message }) => assert_eq!(message, "handler panicked: boom"),
        other => panic!("a panicking handler gave {other:?}"),
    }
    assert_eq!(
        client
            .call::<_, i64>("Arith.Sum", &Args { a: 1, b: 2 })
            .unwrap(),
        3
    );
    drop(client);
    assert_back_to_idle(&server);
}

#[test]
fn serve_jsonrpc_conn_serves_one_accepted_connection_until_it_closes() {
    let server = Server::new();
    server.register(ArithServer::new(Calculator)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = server.clone();
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        let _ = done_tx.send(serving.serve_jsonrpc_conn(stream));
    });
    let client = JsonRpcClient::dial(addr).unwrap();
    assert_multiplies(&client);
    assert!(
        done_rx.try_recv().is_err(),
        "still serving while the client is open"
    );
    drop(client);
    let served = done_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("serve_jsonrpc_conn returns once the client closes");
    assert!(served.is_ok(), "{served:?}");
    assert_back_to_idle(&server);
}

#[test]
fn shutdown_closes_jsonrpc_connections_and_later_calls_fail_with_shutdown() {
    let (server, handle) = start_server(Server::new());
    let client = JsonRpcClient::dial(handle.local_addr()).unwrap();
    assert_eq!(
        client
            .call::<_, i64>("Arith.Sum", &Args { a: 1, b: 1 })
            .unwrap(),
        2
    );
    assert_eq!(handle.open_connections(), 1);
    handle.shutdown();
    wait_until("the client sees the close", Duration::from_secs(5), || {
        client.is_closed()
    });
    assert!(matches!(
        client.call::<_, i64>("Arith.Sum", &Args { a: 1, b: 1 }),
        Err(RpcError::Shutdown)
    ));
    assert!(
        TcpStream::connect(handle.local_addr()).is_err(),
        "listener closed"
    );
    assert_back_to_idle(&server);
}

/// A jsonrpc server, a client of it, and that client's `Misc.Sleep(ms)` call, in flight.
fn a_sleeping_call(ms: u64) -> (JsonRpcHandle, JsonRpcClient, Call<u64>) {
    let (server, handle) = start_server(Server::new());
    let client = JsonRpcClient::dial(handle.local_addr()).unwrap();
    let sleeping = client.go::<_, u64>("Misc.Sleep", &ms);
    wait_until("the call in flight", Duration::from_secs(5), || {
        server.stats().in_flight_calls == 1
    });
    (handle, client, sleeping)
}

#[test]
fn a_graceful_shutdown_answers_the_calls_in_flight_then_closes() {
    let (handle, client, sleeping) = a_sleeping_call(300);
    let started = Instant::now();
    assert!(handle.shutdown_gracefully(Duration::from_secs(5)));
    assert_eq!(sleeping.wait().unwrap(), 300);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(handle.open_connections(), 0);
    let later = client.call::<_, i64>("Arith.Sum", &Args { a: 1, b: 1 });
    assert!(later.is_err(), "{later:?}");
}

#[test]
fn a_graceful_shutdown_past_its_grace_closes_what_is_left() {
    let (handle, _client, sleeping) = a_sleeping_call(2000);
    assert!(!handle.shutdown_gracefully(Duration::from_millis(200)));
    assert!(sleeping.wait().is_err());
    assert_eq!(handle.open_connections(), 0);
}

#[test]
fn a_zero_frame_timeout_still_serves_jsonrpc() {
    // A socket refuses a zero timeout: the connection must not fail to start for it.
    let limits = FrameLimits {
        frame_timeout: Some(Duration::ZERO),
        ..FrameLimits::default()
    };
    let (_server, handle) = start_server(Server::builder().limits(limits).build());
    let client = JsonRpcClient::builder()
        .limits(limits)
        .dial(handle.local_addr())
        .unwrap();
    assert_multiplies(&client);
}

#[test]
fn over_the_connection_cap_a_jsonrpc_client_is_told_and_closed() {
    let (server, handle) = start_server(Server::builder().max_connections(1).build());
    let first = JsonRpcClient::dial(handle.local_addr()).unwrap();
    assert_eq!(
        first
            .call::<_, i64>("Arith.Sum", &Args { a: 1, b: 1 })
            .unwrap(),
        2
    );
    let mut second = Raw::connect(&handle);
    let said = second.closed();
    let refusal = "server at its limit of 1 connections; try again later";
    let refusal = format!(r#"{{"id":null,"result":null,"error":"{refusal}"}}"#);
    assert_eq!(said, vec![refusal]);
    assert_eq!(server.stats().refused_connections, 1);
    assert_eq!(
        first
            .call::<_, i64>("Arith.Sum", &Args { a: 2, b: 2 })
            .unwrap(),
        4
    );
}

// ---- (c) bad input to the netrpc jsonrpc server ----

#[test]
fn bytes_that_are_not_a_json_object_get_one_error_and_the_connection_closes() {
    let (server, handle) = start_server(strict_server());
    let cases = [
        (
            "hello\n",
            cannot_decode("expected a JSON object, found a value starting with `h`"),
        ),
        (
            "[1,2,3]\n",
            cannot_decode("expected a JSON object, found a value starting with `[`"),
        ),
        (
            "42\n",
            cannot_decode("expected a JSON object, found a value starting with `4`"),
        ),
        (
            "\u{0}\n",
            cannot_decode("expected a JSON object, found a value starting with byte 0x00"),
        ),
    ];
    for (input, expected) in cases {
        let mut raw = Raw::connect(&handle);
        raw.send(input);
        assert_eq!(raw.closed(), vec![expected], "for {input:?}");
    }
    // Braces that balance but hold no JSON: the codec's error, then the close.
    let mut raw = Raw::connect(&handle);
    raw.send("{not json}\n");
    let said = raw.closed();
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(
        said[0].starts_with(
            r#"{"id":null,"result":null,"error":"rpc: server cannot decode request: "#
        ),
        "{said:?}"
    );
    // A method that is not a string: Go closes too.
    let mut raw = Raw::connect(&handle);
    raw.send(r#"{"method":5,"params":[1],"id":1}"#);
    assert_eq!(
        raw.closed(),
        vec![cannot_decode(
            "`method` is a number, not of the expected type"
        )]
    );
    assert_eq!(server.stats().frame_errors, 6);
    assert_back_to_idle(&server);
    util_healthy(&handle);
}

#[test]
fn a_value_over_the_size_limit_closes_the_connection() {
    let (server, handle) = start_server(strict_server());
    let mut raw = Raw::connect(&handle);
    let huge = format!(
        r#"{{"method":"Misc.Fill","params":["{}"],"id":1}}"#,
        "a".repeat(200_000)
    );
    // The server stops reading at the limit, so the end of this write may fail.
    let _ = raw.writer.write_all(huge.as_bytes());
    let said = raw.closed();
    let refusal = cannot_decode("JSON value exceeds the 65536-byte limit");
    assert!(said.is_empty() || said == vec![refusal], "{said:?}");
    assert_eq!(server.stats().frame_errors, 1);
    assert_back_to_idle(&server);
    util_healthy(&handle);
}

#[test]
fn half_a_value_then_silence_is_closed_after_the_frame_timeout_while_others_are_served() {
    let (server, handle) = start_server(strict_server());
    let mut raw = Raw::connect(&handle);
    let started = Instant::now();
    raw.send(r#"{"method":"Arith.Multiply","params":[{"A":7,"#);
    let client = JsonRpcClient::dial(handle.local_addr()).unwrap();
    assert_multiplies(&client);
    assert_eq!(raw.closed(), Vec::<String>::new());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "closed after {waited:?}, before the timeout"
    );
    assert_eq!(server.stats().frame_timeouts, 1);
    assert_eq!(
        client
            .call::<_, i64>("Arith.Multiply", &Args { a: 2, b: 3 })
            .unwrap(),
        6
    );
    drop(client);
    assert_back_to_idle(&server);
}

#[test]
fn a_request_arriving_slowly_is_held_to_the_frame_timeout_not_the_idle_timeout() {
    let server = Server::builder()
        .idle_timeout(Duration::from_millis(300))
        .limits(FrameLimits {
            frame_timeout: Some(Duration::from_secs(5)),
            ..FrameLimits::default()
        })
        .build();
    let (server, handle) = start_server(server);
    let mut raw = Raw::connect(&handle);
    thread::sleep(Duration::from_millis(100));
    raw.send(r#"{"method":"Arith.Multiply","params":[{"A":7,"#);
    thread::sleep(Duration::from_millis(450));
    let reply = raw.call(r#""B":6}],"id":1}"#);
    assert_eq!(reply, r#"{"id":1,"result":42,"error":null}"#);
    assert_eq!(server.stats().idle_closes, 0);
}

/// Refuses `Arith.Divide` (as an authorisation middleware would) and records the method
/// and the current call context of everything it lets through.
#[derive(Debug, Default)]
struct Gate {
    seen: std::sync::Mutex<Vec<String>>,
}

impl ServerMiddleware for Gate {
    fn handle(&self, call: &CallContext, next: Next<'_>) -> Result<(), DispatchError> {
        if call.method() == "Arith.Divide" {
            return Err(DispatchError::new(ErrorCode::Service, "not allowed"));
        }
        let current = CallContext::current().map(|c| c.method().to_owned());
        self.seen
            .lock()
            .unwrap()
            .push(format!("{} {current:?}", call.method()));
        next.run()
    }
}

#[test]
fn jsonrpc_calls_pass_through_the_servers_middleware_and_are_counted() {
    let gate = std::sync::Arc::new(Gate::default());
    let server = Server::builder()
        .middleware(GateRef(std::sync::Arc::clone(&gate)))
        .build();
    let (server, handle) = start_server(server);
    let client = JsonRpcClient::dial(handle.local_addr()).unwrap();
    let refused = client
        .call::<_, Quotient>("Arith.Divide", &Args { a: 7, b: 2 })
        .unwrap_err();
    assert!(
        matches!(&refused, RpcError::Method { message } if message == "not allowed"),
        "{refused:?}"
    );
    assert_multiplies(&client);
    assert_eq!(
        *gate.seen.lock().unwrap(),
        vec![r#"Arith.Multiply Some("Arith.Multiply")"#.to_owned()]
    );
    let stats = server.method_stats();
    let count = |method: &str| {
        stats
            .iter()
            .find(|m| m.service == "Arith" && m.method == method)
            .map(|m| (m.calls, m.errors))
    };
    assert_eq!(count("Multiply"), Some((1, 0)));
    assert_eq!(count("Divide"), Some((1, 1)));
}

/// A shared [`Gate`], so the test can look at it after the server took its middleware.
#[derive(Debug)]
struct GateRef(std::sync::Arc<Gate>);

impl ServerMiddleware for GateRef {
    fn handle(&self, call: &CallContext, next: Next<'_>) -> Result<(), DispatchError> {
        self.0.handle(call, next)
    }
}

#[test]
fn a_peer_that_reads_no_replies_holds_no_worker_other_connections_need() {
    // Two workers, and a peer asking for 60 replies of a megabyte that it never reads: its
    // replies must wait in its own connection, not in workers blocked writing them.
    let server = Server::builder()
        .max_workers(2)
        .limits(FrameLimits {
            frame_timeout: Some(Duration::from_secs(30)),
            ..FrameLimits::default()
        })
        .build();
    let (server, handle) = start_server(server);
    let mut hog = Raw::connect(&handle);
    let requests: String = (0..60)
        .map(|id| format!(r#"{{"method":"Misc.Fill","params":[1000000],"id":{id}}}"#))
        .collect();
    hog.send(&requests);
    thread::sleep(Duration::from_secs(1));
    let client = JsonRpcClient::builder()
        .call_timeout(Duration::from_secs(3))
        .dial(handle.local_addr())
        .unwrap();
    assert_multiplies(&client);
    // The hog's reading waits while its unread replies pass the server's cap.
    assert!(server.stats().in_flight_calls < 60, "{:?}", server.stats());
    drop(hog);
}

/// File descriptors this process has open.
fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn a_jsonrpc_connection_costs_the_server_one_descriptor() {
    // `default_max_connections` reckons one descriptor per connection, so a jsonrpc one
    // must not take three (the socket, a clone to write, a clone to shut it down).
    const CONNS: usize = 20;
    let (_server, handle) = start_server(Server::new());
    let before = open_descriptors();
    let clients: Vec<BufReader<TcpStream>> = (0..CONNS)
        .map(|id| {
            let mut stream = TcpStream::connect(handle.local_addr()).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let request =
                format!(r#"{{"method":"Arith.Sum","params":[{{"A":1,"B":2}}],"id":{id}}}"#);
            stream.write_all(request.as_bytes()).unwrap();
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            assert!(line.contains(r#""result":3"#), "{line}");
            reader
        })
        .collect();
    let added = open_descriptors() - before;
    // Each client holds one; the server, one per connection.
    assert!(
        added <= 2 * CONNS + 2,
        "{added} descriptors for {CONNS} connections"
    );
    drop(clients);
}

#[test]
fn bad_params_names_and_arguments_are_answered_and_the_connection_keeps_serving() {
    let (server, handle) = start_server(strict_server());
    let mut raw = Raw::connect(&handle);
    let error = |id: &str, text: &str| format!(r#"{{"id":{id},"result":null,"error":"{text}"}}"#);
    let exchanges = [
        (
            r#"{"method":"Arith.Multiply","params":{"A":1,"B":2},"id":1}"#,
            error(
                "1",
                "params must be an array holding the argument, found an object",
            ),
        ),
        (
            r#"{"method":"Arith.Multiply","id":2}"#,
            error("2", "jsonrpc: request body missing params"),
        ),
        (
            r#"{"method":"Arith.Multiply","params":null,"id":3}"#,
            error("3", "jsonrpc: request body missing params"),
        ),
        (
            r#"{"method":"Arith.Multiply","params":[],"id":4}"#,
            error("4", "params is an empty array: expected one argument"),
        ),
        (
            r#"{"method":"Arith.Multiply","params":[{"A":1,"B":2},{"A":3,"B":4}],"id":5}"#,
            error("5", "params holds 2 values: expected one argument"),
        ),
        (
            r#"{"method":"Arith.Foo","params":[{"A":1,"B":2}],"id":6}"#,
            error("6", "rpc: can't find method Arith.Foo"),
        ),
        (
            r#"{"method":"Nope.Foo","params":[{"A":1,"B":2}],"id":7}"#,
            error("7", "rpc: can't find service Nope.Foo"),
        ),
        (
            r#"{"method":"Multiply","params":[{"A":1,"B":2}],"id":8}"#,
            error("8", "rpc: service/method request ill-formed: Multiply"),
        ),
        (
            r#"{"method":"Misc.Fill","params":[70000],"id":9}"#,
            error("9", "reply of 70034 bytes exceeds the 65536-byte limit"),
        ),
        (
            r#"{"method":"Arith.Multiply","params":[{"A":7,"B":8}],"id":"abc"}"#,
            r#"{"id":"abc","result":56,"error":null}"#.to_owned(),
        ),
        (
            r#"{"method":"Arith.Multiply","params":[{"A":7,"B":8}]}"#,
            r#"{"id":null,"result":56,"error":null}"#.to_owned(),
        ),
    ];
    for (request, expected) in exchanges {
        assert_eq!(raw.call(request), expected, "for {request}");
    }
    // An argument of the wrong shape: the codec's text, and the connection goes on.
    let answer = raw.call(r#"{"method":"Arith.Multiply","params":[{"A":"x","B":1}],"id":10}"#);
    assert!(
        answer.starts_with(r#"{"id":10,"result":null,"error":""#),
        "{answer}"
    );
    let nested = format!(
        r#"{{"method":"Arith.Multiply","params":[{}1{}],"id":11}}"#,
        "[".repeat(300),
        "]".repeat(300)
    );
    let answer = raw.call(&nested);
    assert!(
        answer.starts_with(r#"{"id":11,"result":null,"error":""#),
        "{answer}"
    );
    assert_eq!(
        raw.call(r#"{"method":"Arith.Sum","params":[{"A":7,"B":8}],"id":12}"#),
        r#"{"id":12,"result":15,"error":null}"#
    );
    let stats = server.stats();
    assert_eq!(stats.call_errors(ErrorCode::BadRequest), 7);
    assert_eq!(stats.frame_errors, 0);
    drop(raw);
    assert_back_to_idle(&server);
}

#[test]
fn pipelined_requests_sent_byte_by_byte_are_all_answered_by_id() {
    let (server, handle) = start_server(Server::new());
    let mut raw = Raw::connect(&handle);
    raw.writer.set_nodelay(true).unwrap();
    let mut requests = String::new();
    for id in 0..20 {
        let request =
            format!(r#"{{"method":"Arith.Multiply","params":[{{"A":{id},"B":2}}],"id":"r{id}"}}"#);
        // Whitespace between values, as Go's decoder allows.
        requests.push_str(&request);
        requests.push_str(" \n\t");
    }
    for byte in requests.as_bytes() {
        raw.writer.write_all(&[*byte]).expect("send a byte");
    }
    let mut answers: Vec<String> = (0..20).map(|_| raw.line()).collect();
    answers.sort();
    let mut expected: Vec<String> = (0..20)
        .map(|id| format!(r#"{{"id":"r{id}","result":{},"error":null}}"#, id * 2))
        .collect();
    expected.sort();
    assert_eq!(answers, expected);
    drop(raw);
    assert_back_to_idle(&server);
}

// ---- the jsonrpc client against bad servers ----

/// A one-connection server that runs `script` on the accepted socket.
fn fake_server(script: impl FnOnce(TcpStream) + Send + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    thread::spawn(move || {
        if let Ok((stream, _)) = listener.accept() {
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            script(stream);
        }
    });
    addr
}

#[test]
fn a_call_to_a_server_that_reads_nothing_times_out_by_its_own_deadline() {
    // Its request (16 MiB, more than the sockets' buffers hold) cannot all be written: the
    // call must still end at its timeout (plus the time to encode it, a second or two in a
    // debug build on a loaded machine), not when the socket's write timeout (30 s) gives up
    // on the server, which holds the connection for 15 s.
    let addr = fake_server(|stream| {
        thread::sleep(Duration::from_secs(15));
        drop(stream);
    });
    let client = JsonRpcClient::builder()
        .limits(FrameLimits {
            max_body_len: 64 * 1024 * 1024,
            frame_timeout: Some(Duration::from_secs(30)),
            ..FrameLimits::default()
        })
        .dial(addr.as_str())
        .unwrap();
    let big = "x".repeat(16 * 1024 * 1024);
    let started = Instant::now();
    let err = client
        .call_timeout::<_, String>("Misc.Echo", &big, Duration::from_millis(200))
        .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, RpcError::Timeout { .. }), "{err:?}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    // Its bytes still wait, past `max_unsent_bytes` (4 MiB): the next call is refused unsent.
    let next = client
        .call_timeout::<_, String>("Misc.Echo", "small", Duration::from_millis(200))
        .unwrap_err();
    assert!(matches!(next, RpcError::Throttled), "{next:?}");
}

fn read_request(stream: &TcpStream) -> String {
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .expect("a request");
    line
}

#[test]
fn a_silent_server_times_out_calls_and_a_late_reply_is_discarded() {
    let addr = fake_server(|mut stream| {
        let first = read_request(&stream);
        assert!(first.ends_with("\"id\":0}\n"), "{first}");
        thread::sleep(Duration::from_millis(400));
        let _ = stream.write_all(b"{\"id\":0,\"result\":56,\"error\":null}\n");
        thread::sleep(Duration::from_secs(2));
    });
    let client = JsonRpcClient::builder()
        .call_timeout(Duration::from_millis(150))
        .dial(addr.as_str())
        .unwrap();
    let started = Instant::now();
    match client.call::<_, i64>("Arith.Multiply", &Args { a: 7, b: 8 }) {
        Err(RpcError::Timeout { after }) => assert_eq!(after, Duration::from_millis(150)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    let call: Call<i64> = client.go("Arith.Multiply", &Args { a: 1, b: 1 });
    assert!(matches!(call.wait(), Err(RpcError::Timeout { .. })));
    assert!(started.elapsed() < Duration::from_secs(2));
    wait_until(
        "the late reply is discarded",
        Duration::from_secs(5),
        || client.discarded_replies() == 1,
    );
    assert_eq!(client.pending_calls(), 0);
}

#[test]
fn a_go_calls_timeout_is_delivered_while_a_response_arrives_half_written() {
    // The server starts a response and stops: the reader thread is inside a value, which its
    // frame timeout (10 s) would end. The call's own timeout must still be delivered on its
    // channel by its time, not at the frame timeout.
    let addr = fake_server(|mut stream| {
        read_request(&stream);
        let _ = stream.write_all(b"{\"id\":");
        thread::sleep(Duration::from_secs(12));
    });
    let client = JsonRpcClient::builder()
        .call_timeout(Duration::from_millis(300))
        .dial(addr.as_str())
        .unwrap();
    let started = Instant::now();
    let call: Call<i64> = client.go("Arith.Multiply", &Args { a: 1, b: 1 });
    let done = call
        .done()
        .recv_timeout(Duration::from_secs(5))
        .expect("the timeout is delivered before the frame timeout");
    assert!(matches!(done, Err(RpcError::Timeout { .. })), "{done:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(client.pending_calls(), 0);
}

#[test]
fn a_server_closing_mid_call_fails_it_with_connection_lost_then_later_calls_shutdown() {
    let addr = fake_server(|stream| {
        read_request(&stream);
    });
    let client = JsonRpcClient::dial(addr.as_str()).unwrap();
    match client.call::<_, i64>("Arith.Multiply", &Args { a: 7, b: 8 }) {
        Err(err @ RpcError::ConnectionLost { .. }) => assert!(err.is_retryable()),
        other => panic!("expected ConnectionLost, got {other:?}"),
    }
    assert!(client.is_closed());
    assert!(matches!(
        client.call::<_, i64>("Arith.Multiply", &Args { a: 7, b: 8 }),
        Err(RpcError::Shutdown)
    ));
}

#[test]
fn a_garbage_reply_fails_the_pending_call_and_closes_the_client() {
    let addr = fake_server(|mut stream| {
        read_request(&stream);
        let _ = stream.write_all(b"{\"id\":0,\"result\":1,\"error\":{\"code\":1}}\n");
        thread::sleep(Duration::from_secs(2));
    });
    let client = JsonRpcClient::dial(addr.as_str()).unwrap();
    match client.call::<_, i64>("Arith.Multiply", &Args { a: 7, b: 8 }) {
        Err(RpcError::ConnectionLost {
            cause: Some(TransportError::Io(err)),
        }) => assert_eq!(err.kind(), ErrorKind::InvalidData, "{err}"),
        other => panic!("expected ConnectionLost, got {other:?}"),
    }
    assert!(client.is_closed());
}

/// A fresh jsonrpc client's call succeeds.
fn util_healthy(handle: &JsonRpcHandle) {
    let client = JsonRpcClient::dial(handle.local_addr()).expect("dial for health probe");
    assert_multiplies(&client);
}

/// `client` calls `Arith.Multiply` (6 x 7) and gets 42.
fn assert_multiplies(client: &JsonRpcClient) {
    let product: i64 = client
        .call("Arith.Multiply", &Args { a: 6, b: 7 })
        .expect("Arith.Multiply answers");
    assert_eq!(product, 42);
}

#[test]
fn jsonrpc_client_and_handle_can_be_shared_between_threads() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<JsonRpcClient>();
    assert_send_sync::<JsonRpcHandle>();
}
