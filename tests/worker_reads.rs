//! Worker reads (`ServerBuilder::worker_reads`, opt-in): a pool worker that answered a call
//! reads its connection's next requests and runs them in turn. Every call is still answered; a
//! call read with one that blocks still gets its reply while that one blocks (the loop takes
//! over after about a millisecond); threads stay bounded with many connections; a handler that
//! panics fails its own call alone; bytes that break the framing close their connection alone;
//! a graceful shutdown while workers read ends every call promptly; a client that half-closes
//! after a burst a worker read still gets every reply; a cancel read with its call keeps the
//! call from running; and with the setting off (the default), the loop reads everything.
//! (That the idle timeout sees the requests a worker read is a unit test of
//! `ConnCalls::was_active`: a connection busy through its worker for longer than the timeout
//! is too rare to catch here.)

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod util;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use crossbeam_channel::Receiver;
use netrpc::transport::{Frame, FrameKind};
use netrpc::{
    done_channel, Client, Completion, ErrorBody, ErrorCode, RpcError, Server, ServerBuilder,
};
use util::evil::{request, EvilClient};
use util::{
    assert_back_to_idle, assert_healthy, pipeline, wait_until, Args, ArithClient, Colour, Label,
    ProbeClient, TestServer,
};

/// Long enough for any reply on loopback; far shorter than a blocked call's 10 s.
const PROMPTLY: Duration = Duration::from_secs(3);

/// Four connections with sixteen calls in flight each, every result checked.
fn pipeline_on_four_connections(server: &TestServer, calls: i64) {
    let drivers: Vec<_> = (1..=4i64)
        .map(|conn| {
            let client = Client::dial(server.addr()).unwrap();
            thread::spawn(move || pipeline(&client, conn, calls, 16))
        })
        .collect();
    for driver in drivers {
        driver.join().unwrap();
    }
}

/// No call error of any kind was counted.
fn assert_no_call_errors(server: &Server) {
    let stats = server.stats();
    assert_eq!(stats.call_errors.iter().sum::<u64>(), 0, "{stats:?}");
}

/// A test server whose workers read their connections.
fn start_with_worker_reads(builder: ServerBuilder) -> TestServer {
    TestServer::start_with(builder.worker_reads(true).build())
}

#[test]
fn pipelining_connections_are_read_by_their_workers_and_every_call_is_answered() {
    let server = start_with_worker_reads(Server::builder());
    pipeline_on_four_connections(&server, 2_000);
    let stats = server.server.stats();
    assert!(
        stats.frames_read_by_workers > 0,
        "workers read some requests themselves: {stats:?}"
    );
    assert_no_call_errors(&server.server);
    wait_until("no call left in flight", PROMPTLY, || {
        server.server.stats().in_flight_calls == 0
    });
}

#[test]
fn by_default_the_loop_reads_every_request() {
    let server = TestServer::start();
    pipeline_on_four_connections(&server, 500);
    assert_eq!(server.server.stats().frames_read_by_workers, 0);
    assert_no_call_errors(&server.server);
}

#[test]
fn calls_read_with_a_blocked_one_are_answered_while_it_blocks() {
    // A burst sent while the connection's worker waits for more: the worker reads it whole
    // and runs it in turn, so the calls behind the blocking one (and the replies of those
    // before it) are the loop's to rescue. Rounds repeat until a worker has read such a
    // burst; every round, worker-read or not, must answer the quick calls promptly.
    let server = start_with_worker_reads(Server::builder());
    let client = server.client();
    let mut read_by_a_worker = 0;
    for round in 0..40u64 {
        // Keep the connection busy so that a worker is reading it when the burst comes.
        let (warm, warmed) = done_channel::<u64>();
        let batch = client.batch();
        for _ in 0..16 {
            batch.go_with(ProbeClient::SLEEP, &0u64, &warm);
        }
        batch.send();
        warmed.recv_timeout(PROMPTLY).expect("a warm-up reply");

        let before = server.server.stats().frames_read_by_workers;
        let (done, completions) = done_channel::<u64>();
        let burst = client.batch();
        for index in 0..12u64 {
            let (method, arg) = if index == 4 {
                (ProbeClient::BLOCK, 1_000 + round)
            } else {
                (ProbeClient::SLEEP, 0)
            };
            burst.go_with(method, &arg, &done);
        }
        burst.send();
        for _ in 0..11 {
            let completion = completions.recv_timeout(PROMPTLY).expect("a quick reply");
            assert_eq!(completion.result.unwrap(), 0, "round {round}");
        }
        if server.server.stats().frames_read_by_workers >= before + 12 {
            read_by_a_worker += 1;
        }
        server.release(1);
        let blocked = completions
            .recv_timeout(PROMPTLY)
            .expect("the released call");
        assert_eq!(blocked.result.unwrap(), 1_000 + round);
        for _ in 1..16 {
            warmed
                .recv_timeout(PROMPTLY)
                .expect("the other warm-up replies");
        }
        if read_by_a_worker >= 3 {
            break;
        }
    }
    assert!(
        read_by_a_worker >= 1,
        "no burst was read by a worker in 40 rounds"
    );
    assert_no_call_errors(&server.server);
}

#[test]
fn many_pipelining_connections_do_not_each_get_a_thread() {
    // A worker reading a connection is not counted busy, so the pool starts threads for the
    // calls queued meanwhile; the cap on readers (four per core) is what bounds them.
    let server = start_with_worker_reads(Server::builder());
    let drivers: Vec<_> = (1..=16i64)
        .map(|conn| {
            let client = Client::dial(server.addr()).unwrap();
            thread::spawn(move || pipeline(&client, conn, 300, 16))
        })
        .collect();
    for driver in drivers {
        driver.join().unwrap();
    }
    let cores = thread::available_parallelism().map_or(1, usize::from);
    let threads = server.server.worker_threads();
    let stats = server.server.stats();
    assert!(
        threads <= cores * 5 + 3,
        "{threads} worker threads for 16 connections on {cores} cores: {stats:?}"
    );
    assert!(stats.frames_read_by_workers > 0, "{stats:?}");
    assert_no_call_errors(&server.server);
}

#[test]
fn a_graceful_shutdown_while_workers_read_lets_every_call_end_promptly() {
    // Workers are reading two busy connections when the server goes away: the calls in
    // flight finish, later ones are refused (or find the connection closed), no caller waits
    // past its deadline, and the drain completes within the grace.
    let server = start_with_worker_reads(Server::builder());
    let drivers: Vec<_> = (0..2)
        .map(|_| {
            let client = server.client();
            thread::spawn(move || pipeline_until_refused(&client))
        })
        .collect();
    wait_until("workers read the busy connections", PROMPTLY, || {
        server.server.stats().frames_read_by_workers > 1_000
    });
    assert!(
        server.handle.shutdown_gracefully(Duration::from_secs(5)),
        "the calls in flight finished within the grace"
    );
    for driver in drivers {
        let (answered, refused) = driver.join().unwrap();
        assert!(
            answered > 0 && refused > 0,
            "{answered} answered, {refused} refused"
        );
    }
    assert_eq!(server.server.stats().in_flight_calls, 0);
}

/// Keeps sixteen calls in flight until the server refuses them; returns the calls answered
/// and those refused (`ShuttingDown`, or `ConnectionLost` once the server has closed).
fn pipeline_until_refused(client: &Client) -> (u64, u64) {
    let (done, completions) = done_channel::<i64>();
    for i in 0..16i64 {
        client.go_with("Arith.Multiply", &Args { a: i, b: 1 }, &done);
    }
    let (mut in_flight, mut answered, mut refused) = (16, 0, 0);
    while in_flight > 0 {
        let completion = client
            .recv_completion(&completions, PROMPTLY)
            .expect("every call ends promptly");
        in_flight -= 1;
        match completion.result {
            Ok(_) => answered += 1,
            Err(RpcError::ShuttingDown | RpcError::ConnectionLost { .. }) => refused += 1,
            Err(other) => panic!("a call failed otherwise: {other:?}"),
        }
        if refused == 0 {
            client.go_with("Arith.Multiply", &Args { a: 1, b: 1 }, &done);
            in_flight += 1;
        }
    }
    (answered, refused)
}

#[test]
fn a_handler_that_panics_in_a_workers_read_fails_its_call_alone() {
    // Every seventh call of a busy connection panics while a worker runs that connection's
    // reads in turn: each gets `HandlerPanicked`, every other call its product, and the
    // worker goes on with the rest of its read.
    let server = start_with_worker_reads(Server::builder());
    let client = server.client();
    let (done, completions) = done_channel::<i64>();
    let mut expected = HashMap::new();
    for i in 0..2_000i64 {
        if i >= 16 {
            check_panic_or_product(&client, &completions, &mut expected);
        }
        let seq = if i % 7 == 0 {
            client.go_with(ProbeClient::PANIC, &format!("boom {i}"), &done)
        } else {
            client.go_with("Arith.Multiply", &Args { a: i, b: 3 }, &done)
        };
        expected.insert(seq, i);
    }
    while !expected.is_empty() {
        check_panic_or_product(&client, &completions, &mut expected);
    }
    let stats = server.server.stats();
    assert!(stats.frames_read_by_workers > 0, "{stats:?}");
    assert_eq!(
        ArithClient::new(server.client())
            .multiply(&Args { a: 6, b: 7 })
            .unwrap(),
        42
    );
    wait_until("no call left in flight", PROMPTLY, || {
        server.server.stats().in_flight_calls == 0
    });
}

/// Takes the next completion: a call numbered by a multiple of seven panicked with its
/// number, any other returned its number times three.
fn check_panic_or_product(
    client: &Client,
    completions: &Receiver<Completion<i64>>,
    expected: &mut HashMap<u64, i64>,
) {
    let completion = client
        .recv_completion(completions, PROMPTLY)
        .expect("every call ends promptly");
    let i = expected.remove(&completion.seq).expect("a call of ours");
    match completion.result {
        Err(RpcError::HandlerPanicked { message }) if i % 7 == 0 => {
            assert!(message.contains(&format!("boom {i}")), "{message}");
        }
        Ok(product) if i % 7 != 0 => assert_eq!(product, i * 3),
        other => panic!("call {i}: {other:?}"),
    }
}

#[test]
fn bytes_that_break_the_framing_on_a_connection_workers_read_close_it_alone() {
    // A raw client keeps sixteen requests in flight until workers read its connection, then
    // sends bytes that are no frame: whoever reads them (a worker, most likely) hands them
    // to the loop, which closes the connection and counts a frame error; nothing else is
    // disturbed.
    let server = start_with_worker_reads(Server::builder());
    let (mut evil, _, _) = pipeline_until_workers_read(&server, 500);
    evil.send_raw(&[0xFF; 64]);
    let replies = evil.read_until_closed();
    assert!(
        replies.len() <= 16,
        "{} replies after the bad bytes",
        replies.len()
    );
    wait_until("the frame error counted", PROMPTLY, || {
        server.server.stats().frame_errors == 1
    });
    assert_healthy(server.addr());
    assert_back_to_idle(&server.server);
}

/// A raw client keeping sixteen quick calls in flight until workers have read at least
/// `frames` more of its requests; returns it, its next sequence id and the replies it read.
fn pipeline_until_workers_read(server: &TestServer, frames: u64) -> (EvilClient, u64, usize) {
    let target = server.server.stats().frames_read_by_workers + frames;
    let mut evil = EvilClient::connect(server.addr());
    let quick = |seq: u64| request(seq, "Probe.Spin", &0u64);
    evil.send_frames(&(1..=16).map(quick).collect::<Vec<_>>());
    let mut next_seq = 17;
    let mut replies = 0;
    while server.server.stats().frames_read_by_workers < target {
        assert!(next_seq < 100_000, "no worker read the connection");
        replies += evil.read_frames(1).len();
        evil.send_frames(&[quick(next_seq)]);
        next_seq += 1;
    }
    (evil, next_seq, replies)
}

#[test]
fn requests_sent_before_a_half_close_are_all_answered_while_workers_read() {
    // Workers read the connection; the client sends a last burst of calls that compute for
    // 300 µs each and shuts its writing side. A worker that reads the burst runs it in turn
    // for about 6 ms, long after the connection's other calls ended: the requests it read
    // and has not run yet are in flight all the same, and the connection closes only once
    // every one is answered.
    let server = start_with_worker_reads(Server::builder());
    let mut bursts_read_by_workers = 0;
    for _ in 0..20 {
        let (mut evil, next_seq, replies) = pipeline_until_workers_read(&server, 40);
        let read_before = server.server.stats().frames_read_by_workers;
        let burst: Vec<_> = (next_seq..next_seq + 20)
            .map(|seq| request(seq, "Probe.Spin", &300u64))
            .collect();
        evil.send_frames(&burst);
        evil.stream.shutdown(std::net::Shutdown::Write).unwrap();
        let rest = evil.read_until_closed();
        assert_eq!(
            replies + rest.len(),
            next_seq as usize - 1 + 20,
            "every request answered"
        );
        if server.server.stats().frames_read_by_workers >= read_before + 20 {
            bursts_read_by_workers += 1;
            if bursts_read_by_workers == 3 {
                break;
            }
        }
    }
    assert!(bursts_read_by_workers > 0, "no worker read a last burst");
    assert_eq!(server.server.stats().dropped_replies, 0);
    assert_no_call_errors(&server.server);
}

#[test]
fn a_cancel_read_with_its_request_by_a_worker_keeps_the_call_from_running() {
    // A worker reads a call that computes for 300 µs, a `Probe.Label` call and a cancel of
    // that call, together. The cancel finds the call in flight, so when the worker comes to
    // it, it answers `DeadlineExceeded` without running it, as a pooled call would be.
    let server = start_with_worker_reads(Server::builder());
    let label = Label {
        name: "cancelled".into(),
        colour: Colour::Red,
        weight: 1,
    };
    let mut checked = 0;
    for _ in 0..20 {
        let (mut evil, seq, replies) = pipeline_until_workers_read(&server, 40);
        let read_before = server.server.stats().frames_read_by_workers;
        let labels_before = server.labels_run.load(Ordering::SeqCst);
        evil.send_frames(&[
            request(seq, "Probe.Spin", &300u64),
            request(seq + 1, "Probe.Label", &label),
            Frame::new(FrameKind::Cancel, seq + 1),
        ]);
        let in_flight = seq as usize - 1 - replies;
        let frames = evil.read_frames(in_flight + 2);
        if server.server.stats().frames_read_by_workers < read_before + 3 {
            continue; // the loop read them: whether the call ran is a race there
        }
        let cancelled = frames.iter().find(|frame| frame.seq == seq + 1).unwrap();
        assert_eq!(cancelled.kind, FrameKind::Error);
        let body = ErrorBody::decode(&cancelled.body).unwrap();
        assert_eq!(body.code, ErrorCode::DeadlineExceeded, "{}", body.message);
        assert_eq!(server.labels_run.load(Ordering::SeqCst), labels_before);
        checked += 1;
        if checked == 3 {
            break;
        }
    }
    assert!(checked > 0, "no worker read a cancel with its call");
}
