//! The jsonrpc client and server when connections end, stall or idle under them: a caller of
//! `go` is never blocked, a call that timed out is never sent late, a connection busy with a
//! call is not closed as idle, and a peer that reads nothing cannot make the server queue
//! more than its cap of responses.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod util;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use netrpc::core::MethodTable;
use netrpc::transport::FrameLimits;
use netrpc::{Call, JsonRpcClient, JsonRpcHandle, RpcError, Server, Service, ServiceError};
use util::{assert_back_to_idle, wait_until};

/// `Tally.Sleep(ms)` returns `ms` after sleeping that long; `Tally.Echo(text)` returns its
/// argument; `Tally.Fill(len)` returns a string of `len` bytes; `Tally.Count(n)` returns `n`
/// and counts its runs in `runs`, so a test can tell whether the server ever ran a call.
struct Tally {
    runs: Arc<AtomicUsize>,
}

impl Service for Tally {
    const NAME: &'static str = "Tally";

    fn into_method_table(self) -> MethodTable {
        let mut table = MethodTable::new();
        table.add("Sleep", |ms: u64| {
            thread::sleep(Duration::from_millis(ms));
            Ok::<_, ServiceError>(ms)
        });
        table.add("Echo", |text: String| Ok::<_, ServiceError>(text));
        table.add("Fill", |len: usize| Ok::<_, ServiceError>("x".repeat(len)));
        let runs = self.runs;
        table.add("Count", move |n: u64| {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ServiceError>(n)
        });
        table
    }
}

/// Registers `Tally` on `server`; returns the count of `Tally.Count` runs.
fn register_tally(server: &Server) -> Arc<AtomicUsize> {
    let runs = Arc::new(AtomicUsize::new(0));
    let tally = Tally {
        runs: Arc::clone(&runs),
    };
    server.register(tally).expect("register Tally");
    runs
}

/// `server`, with `Tally`, serving jsonrpc on 127.0.0.1:0.
fn serve_tally(server: Server) -> (Server, JsonRpcHandle) {
    register_tally(&server);
    let handle = server.serve_jsonrpc("127.0.0.1:0").expect("serve jsonrpc");
    (server, handle)
}

/// Runs `work` on a thread of its own and fails, naming `what`, if it has not returned
/// within `limit`: a hang shows as a failure, not as a test run that never ends (the stuck
/// threads are left behind).
fn within(limit: Duration, what: &str, work: impl FnOnce() + Send + 'static) {
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    thread::spawn(move || {
        work();
        let _ = done_tx.send(());
    });
    if done_rx.recv_timeout(limit).is_err() {
        panic!("{what}: not done within {limit:?} (a thread is stuck)");
    }
}

#[test]
fn go_never_blocks_its_caller_while_the_connection_ends_under_it() {
    // Callers keep starting calls while the client is closed under them: a call registered
    // just before the connection ends is failed by the reader, and its caller learns of the
    // end too; it must not also try to deliver a second result into its one-slot channel.
    let (_server, handle) = serve_tally(Server::new());
    let addr = handle.local_addr();
    within(
        Duration::from_secs(60),
        "200 rounds of go() racing close()",
        move || {
            for _ in 0..200 {
                let client = Arc::new(JsonRpcClient::dial(addr).unwrap());
                let callers: Vec<_> = (0..4)
                    .map(|_| {
                        let client = Arc::clone(&client);
                        thread::spawn(move || {
                            let mut after_close = 0;
                            while after_close < 200 {
                                let _call: Call<u64> = client.go("Tally.Count", &1u64);
                                if client.is_closed() {
                                    after_close += 1;
                                }
                            }
                        })
                    })
                    .collect();
                thread::sleep(Duration::from_millis(2));
                client.close();
                for caller in callers {
                    caller.join().unwrap();
                }
            }
        },
    );
}

#[test]
fn a_connection_that_sends_nothing_is_closed_after_the_first_frame_timeout_when_slots_run_short() {
    // Each jsonrpc connection holds a slot and two threads: a socket that never speaks must
    // not hold them for ever once the server is short of slots (here it holds one of two).
    // The timeout leaves the client dialled below a second to send its first request.
    let first_frame_timeout = Duration::from_secs(1);
    let server = Server::builder()
        .first_frame_timeout(Some(first_frame_timeout))
        .max_connections(2)
        .build();
    let (server, handle) = serve_tally(server);
    let opened = Instant::now();
    let mut silent = TcpStream::connect(handle.local_addr()).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let read = silent.read(&mut [0u8; 64]);
    assert!(matches!(read, Ok(0)), "the server closes it: {read:?}");
    assert!(
        opened.elapsed() >= first_frame_timeout,
        "not before its time"
    );
    assert_eq!(server.stats().first_frame_timeouts, 1);
    // A connection whose first request came in time stays open past the timeout.
    let client = JsonRpcClient::dial(handle.local_addr()).unwrap();
    assert_eq!(client.call::<_, u64>("Tally.Count", &1u64).unwrap(), 1);
    thread::sleep(first_frame_timeout * 2);
    assert_eq!(client.call::<_, u64>("Tally.Count", &2u64).unwrap(), 2);
    assert_eq!(server.stats().first_frame_timeouts, 1);
}

#[test]
fn a_client_that_dials_ahead_and_calls_later_keeps_its_connection_while_the_server_has_room() {
    // Go's jsonrpc client sends nothing until its first call: a program that dials at start
    // and calls minutes later must find its connection open, unless the server needs the
    // slot (at half its connections or more, checked once per first-frame timeout).
    // Half a second: `third` below, dialled once the server is short, has that long to send
    // its first request before its own check would close it.
    let first_frame_timeout = Duration::from_millis(500);
    let server = Server::builder()
        .first_frame_timeout(Some(first_frame_timeout))
        .max_connections(5)
        .build();
    let (server, handle) = serve_tally(server);
    let ahead = JsonRpcClient::dial(handle.local_addr()).unwrap();
    thread::sleep(first_frame_timeout * 3);
    assert_eq!(ahead.call::<_, u64>("Tally.Count", &7u64).unwrap(), 7);

    // One that is still silent when the server runs short (three of five open) is closed at
    // its next check.
    let mut silent = TcpStream::connect(handle.local_addr()).unwrap();
    thread::sleep(first_frame_timeout * 3);
    assert_eq!(server.stats().first_frame_timeouts, 0, "room enough so far");
    let third = JsonRpcClient::dial(handle.local_addr()).unwrap();
    assert_eq!(third.call::<_, u64>("Tally.Count", &8u64).unwrap(), 8);
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let read = silent.read(&mut [0u8; 64]);
    assert!(matches!(read, Ok(0)), "closed at its next check: {read:?}");
    assert_eq!(server.stats().first_frame_timeouts, 1);
    // The clients that had called are untouched.
    assert_eq!(ahead.call::<_, u64>("Tally.Count", &9u64).unwrap(), 9);
    assert_eq!(third.call::<_, u64>("Tally.Count", &10u64).unwrap(), 10);
}

/// Time on a CPU of each thread of this process whose name starts with `prefix`, by thread
/// id, from `/proc/self/task/*/schedstat` (nanoseconds, where `stat` counts 10 ms ticks and
/// misses threads that wake often for a moment each); `None` without `/proc`.
fn cpu_of_threads_named(prefix: &str) -> Option<HashMap<u32, Duration>> {
    let mut threads = HashMap::new();
    for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let path = entry.path();
        let named =
            std::fs::read_to_string(path.join("comm")).is_ok_and(|name| name.starts_with(prefix));
        let tid = entry.file_name().to_str().and_then(|tid| tid.parse().ok());
        let on_cpu = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|stat| stat.split_whitespace().next()?.parse().ok());
        if let (true, Some(tid), Some(on_cpu)) = (named, tid, on_cpu) {
            threads.insert(tid, Duration::from_nanos(on_cpu));
        }
    }
    Some(threads)
}

#[test]
fn silent_connections_kept_under_a_zero_first_frame_timeout_do_not_poll() {
    // With room on the server a silent connection is looked at again every timeout, but a
    // second apart at least: a zero (or tiny) timeout must not make each of them a loop
    // that reads with a 1 ms timeout, over and over.
    const SILENT: usize = 100;
    let Some(before) = cpu_of_threads_named("netrpc-jsonrpc-") else {
        eprintln!("no /proc/self/task here: nothing to check");
        return;
    };
    let server = Server::builder()
        .first_frame_timeout(Some(Duration::ZERO))
        .max_connections(1_000)
        .build();
    let (server, handle) = serve_tally(server);
    let silent: Vec<_> = (0..SILENT)
        .map(|_| TcpStream::connect(handle.local_addr()).unwrap())
        .collect();
    wait_until(
        "every silent connection accepted",
        Duration::from_secs(10),
        || server.stats().open_connections == SILENT,
    );
    let start = cpu_of_threads_named("netrpc-jsonrpc-").unwrap();
    thread::sleep(Duration::from_secs(1));
    let end = cpu_of_threads_named("netrpc-jsonrpc-").unwrap();
    // The threads started since `before` and alive all second (this server's, and perhaps a
    // few of a test running beside this one) that were on a CPU for half a millisecond or
    // more: each of 100 polling readers took 2 ms; a reader that waits, a few microseconds.
    let busy = end
        .iter()
        .filter(|(tid, _)| !before.contains_key(tid))
        .filter_map(|(tid, now)| Some(now.saturating_sub(*start.get(tid)?)))
        .filter(|spent| *spent >= Duration::from_micros(500))
        .count();
    assert!(
        busy < SILENT / 2,
        "{busy} of {SILENT} silent connections' threads were busy for 0.5 ms or more"
    );
    assert_eq!(server.stats().first_frame_timeouts, 0, "room enough: kept");
    drop(silent);
}

#[test]
fn the_idle_timeout_counts_from_the_end_of_the_last_call_not_from_its_request() {
    // A call of 500 ms under a 600 ms idle timeout: its request is the last one read, at 0,
    // and the connection was busy until 500 ms. Idle from then, it must stay open for a call
    // at 650 ms.
    let server = Server::builder()
        .idle_timeout(Duration::from_millis(600))
        .build();
    let (server, handle) = serve_tally(server);
    let client = JsonRpcClient::dial(handle.local_addr()).unwrap();
    assert_eq!(client.call::<_, u64>("Tally.Sleep", &500u64).unwrap(), 500);
    thread::sleep(Duration::from_millis(150));
    let echoed: String = client.call("Tally.Echo", "still open").unwrap();
    assert_eq!(echoed, "still open");
    assert_eq!(server.stats().idle_closes, 0);
}

#[test]
fn a_pipelined_request_waiting_out_a_long_call_is_read_not_closed_as_idle() {
    // One call in flight at a time: the second request, sent 20 ms after the first, waits in
    // the socket for 2 s while the first runs, longer than the 1 s idle timeout. The
    // connection was busy all along; the second call must be read and answered.
    let server = Server::builder()
        .max_in_flight_per_conn(1)
        .idle_timeout(Duration::from_secs(1))
        .build();
    let (server, handle) = serve_tally(server);
    let client = JsonRpcClient::dial(handle.local_addr()).unwrap();
    let first: Call<u64> = client.go("Tally.Sleep", &2000u64);
    thread::sleep(Duration::from_millis(20));
    let second: Call<String> = client.go("Tally.Echo", "second");
    assert_eq!(first.wait().unwrap(), 2000);
    assert_eq!(second.wait().unwrap(), "second");
    assert_eq!(server.stats().idle_closes, 0);
}

#[test]
fn a_request_sent_while_the_peer_reads_no_replies_is_read_once_it_does() {
    // The peer asks for a 16 MiB reply and reads nothing: with more than 64 KiB of replies
    // unwritten, the server stops reading requests (one call in flight at a time, so it
    // stops as soon as that call ends). The peer's second request, sent once the reply has
    // begun to arrive, waits in the socket while the peer reads nothing for 1.5 s, past the
    // 1 s idle timeout. When the peer reads, the server must read that request and answer
    // it, not close the connection as idle without looking.
    let server = Server::builder()
        .max_in_flight_per_conn(1)
        .idle_timeout(Duration::from_secs(1))
        .max_queued_bytes(64 * 1024)
        .limits(FrameLimits {
            max_body_len: 64 * 1024 * 1024,
            ..FrameLimits::default()
        })
        .build();
    let (server, handle) = serve_tally(server);
    let mut stream = TcpStream::connect(handle.local_addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let large = "x".repeat(16 * 1024 * 1024);
    let first = format!(r#"{{"method":"Tally.Echo","params":["{large}"],"id":1}}"#);
    stream.write_all(first.as_bytes()).unwrap();
    stream
        .peek(&mut [0u8; 1])
        .expect("the first reply beginning within 5 s");
    stream
        .write_all(br#"{"method":"Tally.Echo","params":["second"],"id":2}"#)
        .unwrap();
    thread::sleep(Duration::from_millis(1500));
    let mut replies = BufReader::new(stream);
    let mut reply = String::new();
    replies.read_line(&mut reply).expect("the first reply");
    assert!(
        reply.starts_with(r#"{"id":1,"result":"xxx"#),
        "{:.80}",
        reply
    );
    reply.clear();
    replies.read_line(&mut reply).expect("the second reply");
    assert_eq!(
        reply.trim_end(),
        r#"{"id":2,"result":"second","error":null}"#
    );
    assert_eq!(server.stats().idle_closes, 0);
}

#[test]
fn a_call_that_timed_out_while_queued_is_never_sent_to_the_server() {
    // The server reads nothing for 1.5 s, then serves. A 16 MiB request fills the sockets'
    // buffers first, so the next call's request waits in the client's queue; that call times
    // out at 200 ms, long before the server reads again. Its caller was told it failed: the
    // server must never run it.
    let large = FrameLimits {
        max_body_len: 64 * 1024 * 1024,
        ..FrameLimits::default()
    };
    // One call in flight at a time, so the server reads the last request only once every
    // call before it has run.
    let server = Server::builder()
        .limits(large)
        .max_in_flight_per_conn(1)
        .build();
    let runs = register_tally(&server);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        thread::sleep(Duration::from_millis(1500));
        server.serve_jsonrpc_conn(stream).unwrap();
    });
    let client = JsonRpcClient::builder()
        .limits(large)
        .max_unsent_bytes(64 * 1024 * 1024)
        .call_timeout(Duration::from_secs(30))
        .dial(addr)
        .unwrap();
    let filler = "x".repeat(16 * 1024 * 1024);
    let filling: Call<String> = client.go("Tally.Echo", &filler);
    let timed_out = client.call_timeout::<_, u64>("Tally.Count", &1u64, Duration::from_millis(200));
    assert!(
        matches!(timed_out, Err(RpcError::Timeout { .. })),
        "{timed_out:?}"
    );
    assert_eq!(filling.wait().unwrap().len(), filler.len());
    // Requests are read in order, one call at a time: once a later call is answered, every
    // request written before it has been read and run.
    let echoed: String = client.call("Tally.Echo", "after").unwrap();
    assert_eq!(echoed, "after");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "the server ran a call whose caller was told it timed out"
    );
    client.close();
    serving.join().unwrap();
}

#[test]
fn small_requests_for_large_responses_never_read_are_held_near_the_cap() {
    // One write of small requests for large responses, and nothing read: the reading thread
    // checks the cap before each request, but every request is read before any response is
    // queued. Each call must look at the cap itself before it runs, or the server queues
    // every response (here 48 MiB against a 1 MiB cap; 1.27 GB in the run that found it).
    const REQUESTS: usize = 192;
    const RESPONSE: usize = 256 * 1024;
    let (server, handle) = serve_tally(Server::new());
    let cap = server.config().max_queued_bytes;
    let mut stream = TcpStream::connect(handle.local_addr()).unwrap();
    let requests = fill_requests(REQUESTS, RESPONSE);
    stream.write_all(requests.as_bytes()).unwrap();
    wait_until_past_the_cap(&server);
    thread::sleep(Duration::from_millis(500));
    // The cap, plus a response for each handler that passed the check at once, plus one.
    let stats = server.stats();
    let bound = cap + (stats.max_running_handlers + 1) * (RESPONSE + 64);
    assert!(
        stats.queued_outbound_bytes <= bound,
        "{} bytes queued, over {bound}: {stats:?}",
        stats.queued_outbound_bytes
    );

    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut responses = BufReader::new(&stream);
    let mut seen = HashSet::new();
    for _ in 0..REQUESTS {
        let mut line = String::new();
        responses.read_line(&mut line).expect("every response");
        // `{"id":N,"result":"xx...x","error":null}`, as Go's server writes it.
        let (id, rest) = line
            .strip_prefix(r#"{"id":"#)
            .and_then(|line| line.split_once(r#","result":""#))
            .unwrap_or_else(|| panic!("{line:.80}"));
        let result = rest.trim_end().strip_suffix(r#"","error":null}"#);
        assert_eq!(result.map(str::len), Some(RESPONSE), "{line:.80}");
        assert!(seen.insert(id.to_owned()), "id {id} twice");
    }
    assert_eq!(seen.len(), REQUESTS);
    drop(responses);
    drop(stream);
    assert_back_to_idle(&server);
    assert_eq!(server.stats().queued_outbound_bytes, 0);
}

#[test]
fn calls_held_for_a_peer_that_leaves_are_dropped_unrun_and_counted_out() {
    let (server, handle) = serve_tally(Server::new());
    let stream = ask_past_the_cap_and_read_nothing(&server, &handle);
    let before = server.stats();
    assert!(before.in_flight_calls > 0, "calls held: {before:?}");
    drop(stream);
    assert_back_to_idle(&server);
    let after = server.stats();
    assert!(after.dropped_replies > before.dropped_replies, "{after:?}");
    assert_eq!(after.queued_outbound_bytes, 0);
    let client = JsonRpcClient::dial(handle.local_addr()).unwrap();
    let echoed: String = client.call("Tally.Echo", "still serving").unwrap();
    assert_eq!(echoed, "still serving");
}

#[test]
fn a_graceful_shutdown_ends_calls_held_for_a_peer_that_never_reads() {
    // The held calls wait for a peer that never reads: the grace runs out, and the
    // connection and its held calls go with the listener, counted out of flight.
    let (server, handle) = serve_tally(Server::new());
    let stream = ask_past_the_cap_and_read_nothing(&server, &handle);
    let started = Instant::now();
    assert!(
        !handle.shutdown_gracefully(Duration::from_millis(300)),
        "calls waiting for a peer that never reads cannot finish"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_back_to_idle(&server);
    assert_eq!(server.stats().queued_outbound_bytes, 0);
    drop(stream);
}

#[test]
fn calls_held_for_a_peer_that_reads_a_trickle_are_refused_after_the_hold_limit() {
    // A peer that reads a little now and then keeps every write making progress, so the
    // write timeout never ends its connection; its held calls must not keep their places
    // among the server's `max_calls` for as long as it trickles (here about a minute): after
    // `frame_timeout` held, each is answered `Throttled`, unrun, and its place is free.
    const REQUESTS: usize = 200;
    const RESPONSE: usize = 32 * 1024;
    let server = Server::builder()
        .max_calls(300)
        .max_queued_bytes(64 * 1024)
        .limits(FrameLimits {
            frame_timeout: Some(Duration::from_secs(1)),
            ..FrameLimits::default()
        })
        .build();
    let (server, handle) = serve_tally(server);
    let mut stream = TcpStream::connect(handle.local_addr()).unwrap();
    stream
        .write_all(fill_requests(REQUESTS, RESPONSE).as_bytes())
        .unwrap();
    wait_until_past_the_cap(&server);
    assert!(server.stats().in_flight_calls > 20, "{:?}", server.stats());
    let mut responses = BufReader::new(stream);
    let mut lines = Vec::new();
    let started = Instant::now();
    // 8 KiB every 50 ms: 160 KiB/s, where the responses asked for are 6.4 MB.
    let throttled = || server.stats().call_errors(netrpc::ErrorCode::Throttled);
    while throttled() == 0 || server.stats().in_flight_calls > 10 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "places still held after 5 s: {:?}",
            server.stats()
        );
        let mut chunk = vec![0u8; 8 * 1024];
        let read = std::io::Read::read(&mut responses, &mut chunk).unwrap();
        lines.extend_from_slice(&chunk[..read]);
        thread::sleep(Duration::from_millis(50));
    }
    responses
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answered = HashSet::new();
    let mut refused = 0;
    let mut pending = String::from_utf8(lines).unwrap();
    while answered.len() < REQUESTS {
        if !pending.contains('\n') {
            responses.read_line(&mut pending).expect("every response");
            continue;
        }
        let (line, rest) = pending.split_once('\n').unwrap();
        let id: String = line
            .strip_prefix(r#"{"id":"#)
            .and_then(|line| line.split(',').next())
            .unwrap_or_else(|| panic!("{line:.80}"))
            .to_owned();
        if line.contains("unrun: the client left") {
            refused += 1;
        } else {
            assert!(line.contains(r#""error":null"#), "{line:.120}");
        }
        assert!(answered.insert(id.clone()), "id {id} twice");
        pending = rest.to_owned();
    }
    assert!(refused > 0);
    assert_eq!(
        server.stats().call_errors(netrpc::ErrorCode::Throttled),
        refused
    );
    drop(responses);
    assert_back_to_idle(&server);
}

/// A connection to `handle` that asks for 64 responses of 256 KiB and reads none: returned
/// once `server` holds more than its cap of them.
fn ask_past_the_cap_and_read_nothing(server: &Server, handle: &JsonRpcHandle) -> TcpStream {
    let mut stream = TcpStream::connect(handle.local_addr()).unwrap();
    stream
        .write_all(fill_requests(64, 256 * 1024).as_bytes())
        .unwrap();
    wait_until_past_the_cap(server);
    stream
}

/// `count` requests (ids 1 to `count`) for `Tally.Fill` responses of `len` bytes each.
fn fill_requests(count: usize, len: usize) -> String {
    (1..=count)
        .map(|id| format!(r#"{{"method":"Tally.Fill","params":[{len}],"id":{id}}}"#))
        .collect()
}

/// Waits (at most 5 s) until `server` has more than its cap of responses queued.
fn wait_until_past_the_cap(server: &Server) {
    let cap = server.config().max_queued_bytes;
    wait_until("responses queue up", Duration::from_secs(5), || {
        server.stats().queued_outbound_bytes > cap
    });
}
