//! The reliability matrix (shared/RELIABILITY.md), fault rows: handler panics, stuck handlers
//! against caps and deadlines, clients vanishing mid-call, a client that never reads, a
//! connection flood, many concurrent calls, half-close, graceful shutdown and the idle
//! timeout. Every wait is bounded; after each fault the server's statistics return to idle.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod util;

use std::collections::HashSet;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use netrpc::transport::{FrameKind, FrameLimits};
use netrpc::{done_channel, service, Client, ErrorBody, ErrorCode, RpcError, Server};
use util::evil::{request, EvilClient};
use util::{assert_back_to_idle, assert_healthy, wait_until, Args, Colour, Label, TestServer};

#[test]
fn panics_become_errors_for_their_callers_only() {
    let server = TestServer::start();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let client = server.client();
            thread::spawn(move || {
                let (mut panicked, mut correct) = (0, 0);
                for i in 0..50i64 {
                    match client.call::<_, u64>("Probe.Panic", &format!("boom {i}")) {
                        Err(RpcError::HandlerPanicked { .. }) => panicked += 1,
                        other => panic!("expected a panic error, got {other:?}"),
                    }
                    if client
                        .call::<_, i64>("Arith.Sum", &Args { a: i, b: 1 })
                        .unwrap()
                        == i + 1
                    {
                        correct += 1;
                    }
                }
                (panicked, correct)
            })
        })
        .collect();
    for thread in threads {
        assert_eq!(thread.join().unwrap(), (50, 50));
    }
    assert_eq!(
        server
            .server
            .stats()
            .call_errors(ErrorCode::HandlerPanicked),
        200
    );
    // Counted out just after each reply is written.
    wait_until(
        "no call in flight or running",
        Duration::from_secs(5),
        || {
            let stats = server.server.stats();
            (stats.in_flight_calls, stats.running_handlers) == (0, 0)
        },
    );
    assert_healthy(server.addr());
}

#[test]
fn stuck_handlers_fill_the_per_connection_cap_and_the_next_call_is_throttled() {
    let server = TestServer::start_with(Server::builder().max_in_flight_per_conn(4).build());
    let client = server.client();
    let stuck: Vec<_> = (0..4u64)
        .map(|id| client.go::<_, u64>("Probe.Block", &id))
        .collect();
    wait_until("four handlers running", Duration::from_secs(5), || {
        server.server.stats().running_handlers == 4
    });
    let started = Instant::now();
    let err = client.call::<_, u64>("Probe.Block", &5u64).unwrap_err();
    assert!(matches!(err, RpcError::Throttled), "{err:?}");
    assert!(err.is_retryable());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once"
    );
    server.release(4);
    for call in stuck {
        call.wait().unwrap();
    }
    assert_eq!(server.server.stats().max_running_handlers, 4);
    assert_eq!(client.call::<_, u64>("Probe.Sleep", &0u64).unwrap(), 0);
}

#[test]
fn a_request_whose_deadline_passed_in_the_queue_is_not_run() {
    let server = TestServer::start_with(Server::builder().max_workers(1).build());
    let client = server.client();
    let blocker = client.go::<_, u64>("Probe.Block", &1u64);
    wait_until("the only worker is busy", Duration::from_secs(5), || {
        server.server.stats().running_handlers == 1
    });
    let err = client
        .call_timeout::<_, u64>("Probe.Sleep", &0u64, Duration::from_millis(100))
        .unwrap_err();
    assert!(matches!(err, RpcError::Timeout { .. }), "{err:?}");
    thread::sleep(Duration::from_millis(150));
    server.release(1);
    blocker.wait().unwrap();
    wait_until(
        "the expired call was answered without running",
        Duration::from_secs(5),
        || {
            server
                .server
                .stats()
                .call_errors(ErrorCode::DeadlineExceeded)
                == 1
        },
    );
    wait_until("its late reply discarded", Duration::from_secs(5), || {
        client.discarded_replies() == 1
    });
    assert_eq!(client.call::<_, u64>("Probe.Sleep", &0u64).unwrap(), 0);
}

#[test]
fn a_cancelled_call_completes_at_once_and_the_server_skips_it() {
    let server = TestServer::start_with(Server::builder().max_workers(1).build());
    let client = server.client();
    let blocker = client.go::<_, u64>("Probe.Block", &1u64);
    wait_until("the only worker is busy", Duration::from_secs(5), || {
        server.server.stats().running_handlers == 1
    });
    let label = Label {
        name: "queued".to_owned(),
        colour: Colour::Red,
        weight: 1,
    };
    let queued = client.go::<_, String>("Probe.Label", &label);
    wait_until(
        "the server holds both calls",
        Duration::from_secs(5),
        || server.server.stats().in_flight_calls == 2,
    );
    assert!(client.cancel(queued.seq()));
    assert!(!client.cancel(queued.seq()), "a call is cancelled once");
    let err = queued.wait().unwrap_err();
    assert!(matches!(err, RpcError::Cancelled), "{err:?}");
    wait_until("the server has the cancel", Duration::from_secs(5), || {
        server.server.stats().cancels == 1
    });
    server.release(1);
    assert_eq!(blocker.wait().unwrap(), 1);
    wait_until("the server skipped it", Duration::from_secs(5), || {
        server
            .server
            .stats()
            .call_errors(ErrorCode::DeadlineExceeded)
            == 1
    });
    assert_eq!(server.labels_run.load(Ordering::SeqCst), 0, "never ran");
    wait_until("its answer discarded", Duration::from_secs(5), || {
        client.discarded_replies() == 1
    });
    assert_eq!(
        client.call::<_, String>("Probe.Label", &label).unwrap(),
        "queued Red 1"
    );
}

#[test]
fn clients_vanishing_mid_call_leave_nothing_behind() {
    let server = TestServer::start();
    for round in 0..100 {
        let mut evil = EvilClient::connect(server.addr());
        evil.send_frames(&[request(1, "Probe.Sleep", &30u64)]);
        if round % 2 == 0 {
            // RST: close with unread data in our receive buffer.
            evil.send_frames(&[request(2, "Arith.Multiply", &Args { a: 1, b: 1 })]);
            thread::sleep(Duration::from_millis(5));
        } else {
            evil.stream.shutdown(Shutdown::Both).unwrap();
        }
        drop(evil);
    }
    assert_back_to_idle(&server.server);
    assert!(server.server.stats().dropped_replies >= 1);
    assert_healthy(server.addr());
}

#[test]
fn a_client_that_never_reads_is_held_back_and_gets_every_reply_later() {
    const CAP: usize = 256 * 1024;
    const REQUESTS: u64 = 2_000;
    const REPLY: usize = 4 * 1024;
    let server = TestServer::start_with(Server::builder().max_queued_bytes(CAP).build());
    let mut evil = EvilClient::connect(server.addr());
    let payload = vec![7u8; REPLY];
    let frames: Vec<_> = (1..=REQUESTS)
        .map(|seq| request(seq, "Probe.Echo", &payload))
        .collect();
    let writer = {
        let mut stream = evil.stream.try_clone().unwrap();
        thread::spawn(move || {
            let mut out = bytes::BytesMut::new();
            for frame in &frames {
                frame.encode(&mut out, &Default::default()).unwrap();
            }
            std::io::Write::write_all(&mut stream, &out).unwrap();
        })
    };
    wait_until("the server stops reading", Duration::from_secs(5), || {
        server.server.stats().read_pauses > 0
    });
    thread::sleep(Duration::from_millis(300));
    // The cap is checked before each read; replies to requests already read still join the
    // queue, so it may pass the cap by those (RELIABILITY.md's goal: cap + 2 MiB).
    let stats = server.server.stats();
    let bound = CAP + 2 * 1024 * 1024;
    assert!(
        stats.queued_outbound_bytes <= bound,
        "{} > {bound}",
        stats.queued_outbound_bytes
    );
    assert_healthy(server.addr());

    read_every_reply_once(&mut evil, REQUESTS);
    writer.join().unwrap();
    drop(evil);
    assert_back_to_idle(&server.server);
}

#[test]
fn small_requests_for_large_replies_never_read_are_held_near_the_cap() {
    // All in one write: the loop reads them all before any reply says how large they are.
    assert_large_replies_never_read_are_held_near_the_cap(
        Server::builder().limits(slow_reader_limits()).build(),
        Sending::AllAtOnce,
    );
}

#[test]
fn small_requests_for_large_replies_never_read_are_held_near_the_cap_with_worker_reads() {
    // In bursts, the first for small replies: a worker reading the later ones as they come
    // (up to 64 at a time, run in turn) finds nothing yet that says how large they are.
    assert_large_replies_never_read_are_held_near_the_cap(
        Server::builder()
            .worker_reads(true)
            .limits(slow_reader_limits())
            .build(),
        Sending::SmallFirstThenBursts,
    );
}

#[test]
fn calls_held_back_for_a_peer_that_never_reads_end_at_their_deadline_and_free_their_places() {
    // The calls past the cap wait unrun for the peer to read; a peer that never does must
    // not hold the server's places for calls in flight past the calls' own deadlines, or a
    // few such peers would leave every other client `Throttled`.
    let server = TestServer::start_with(
        Server::builder()
            .max_calls(100)
            .max_queued_bytes(64 * 1024)
            .build(),
    );
    let mut evil = EvilClient::connect(server.addr());
    let frames: Vec<_> = (1..=90u64)
        .map(|seq| {
            let mut frame = request(seq, "Probe.Fill", &(128 * 1024u32));
            frame.deadline_ms = 300;
            frame
        })
        .collect();
    evil.send_frames(&frames);
    wait_until("calls wait for the peer", Duration::from_secs(5), || {
        server.server.stats().in_flight_calls > 10
    });
    wait_until("their places freed", Duration::from_secs(5), || {
        server.server.stats().in_flight_calls == 0
    });
    let others = server.client();
    let calls: Vec<_> = (0..90)
        .map(|i| others.go::<_, i64>("Arith.Multiply", &Args { a: i, b: 2 }))
        .collect();
    for (i, call) in (0..).zip(calls) {
        assert_eq!(call.wait().unwrap(), i * 2);
    }
    let stats = server.server.stats();
    assert!(
        stats.call_errors(ErrorCode::DeadlineExceeded) > 0,
        "{stats:?}"
    );
}

#[test]
fn calls_held_back_for_a_peer_that_reads_a_trickle_are_refused_after_the_frame_timeout() {
    // A peer that reads a little now and then keeps every write making progress, so no
    // write timeout ends its connection; its calls sent with no deadline must not keep their
    // places among the server's calls in flight for as long as it trickles (here about a
    // minute): after the frame timeout, each is answered `Throttled`, unrun.
    const REQUESTS: u64 = 200;
    // One worker, held by a blocked call while the requests are read: every one of them is
    // in flight before any reply says how large they are. (Were the replies' size known
    // first, as a worker free to run one while the loop is still reading can make it on a
    // loaded machine, the loop would pause reading after a few, whose replies the sockets'
    // buffers then take whole: nothing would wait for the peer, which is not this test.)
    let server = TestServer::start_with(
        Server::builder()
            .max_workers(1)
            .max_queued_bytes(64 * 1024)
            .limits(FrameLimits {
                frame_timeout: Some(Duration::from_secs(1)),
                ..FrameLimits::default()
            })
            .build(),
    );
    let mut evil = EvilClient::connect(server.addr());
    let block = request(REQUESTS + 1, "Probe.Block", &0u64);
    evil.send_frames(&[block]);
    wait_until("the worker blocked", Duration::from_secs(5), || {
        server.server.stats().running_handlers == 1
    });
    let frames: Vec<_> = (1..=REQUESTS)
        .map(|seq| request(seq, "Probe.Fill", &(32 * 1024u32)))
        .collect();
    evil.send_frames(&frames);
    wait_until("every request in flight", Duration::from_secs(5), || {
        server.server.stats().in_flight_calls == REQUESTS as usize + 1
    });
    server.release(1);
    let started = Instant::now();
    let throttled = || server.server.stats().call_errors(ErrorCode::Throttled);
    // 8 KiB every 50 ms: 160 KiB/s, where the replies asked for are 6.4 MB.
    while throttled() == 0 || server.server.stats().in_flight_calls > 10 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "places still held after 5 s: {:?}",
            server.server.stats()
        );
        evil.read_some(8 * 1024);
        thread::sleep(Duration::from_millis(50));
    }
    let mut seen = HashSet::new();
    let mut refused = 0;
    for reply in evil.read_frames(REQUESTS as usize + 1) {
        assert!(seen.insert(reply.seq), "seq {} twice", reply.seq);
        if reply.kind == FrameKind::Error {
            let body = ErrorBody::decode(&reply.body).unwrap();
            assert_eq!(body.code, ErrorCode::Throttled, "{}", body.message);
            refused += 1;
        }
    }
    assert!(refused > 0);
    assert_eq!(throttled(), refused);
    drop(evil);
    assert_back_to_idle(&server.server);
}

#[test]
fn calls_held_back_for_a_peer_that_leaves_are_dropped_and_counted_out() {
    // The peer asks for more than the cap and goes away without reading: its calls held
    // back never run, and the server is left with nothing in flight.
    let server = TestServer::start();
    let evil = ask_past_the_cap_and_read_nothing(&server);
    let before = server.server.stats().dropped_replies;
    drop(evil);
    assert_back_to_idle(&server.server);
    let stats = server.server.stats();
    assert!(stats.dropped_replies > before, "{stats:?}");
    assert_healthy(server.addr());
}

#[test]
fn a_graceful_shutdown_ends_calls_held_back_for_a_peer_that_never_reads() {
    // The calls wait for a peer that never reads: the grace runs out (they did not
    // finish), and the connection and its held-back calls go with the server.
    let server = TestServer::start();
    let evil = ask_past_the_cap_and_read_nothing(&server);
    let started = Instant::now();
    assert!(
        !server
            .handle
            .shutdown_gracefully(Duration::from_millis(300)),
        "calls waiting for a peer that never reads cannot finish"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_back_to_idle(&server.server);
    drop(evil);
}

/// A raw client that asks `server` for 16 MiB of replies in 64 calls and reads none,
/// returned once the replies queued for it have reached the server's cap.
fn ask_past_the_cap_and_read_nothing(server: &TestServer) -> EvilClient {
    let cap = server.server.config().max_queued_bytes;
    let mut evil = EvilClient::connect(server.addr());
    let frames: Vec<_> = (1..=64u64)
        .map(|seq| request(seq, "Probe.Fill", &(256 * 1024u32)))
        .collect();
    evil.send_frames(&frames);
    wait_until("replies queue up", Duration::from_secs(5), || {
        server.server.stats().queued_outbound_bytes >= cap
    });
    evil
}

/// How the requests of [`assert_large_replies_never_read_are_held_near_the_cap`] are sent.
#[derive(Clone, Copy, PartialEq)]
enum Sending {
    AllAtOnce,
    SmallFirstThenBursts,
}

/// Limits for a test whose client reads 64 MB in the end: a call held for it is refused
/// after the frame timeout (10 s by default), and in a debug build on a loaded machine the
/// reading alone can take that long. Refusing held calls is another test's subject.
fn slow_reader_limits() -> FrameLimits {
    FrameLimits {
        frame_timeout: Some(Duration::from_secs(60)),
        ..FrameLimits::default()
    }
}

/// Each request is a few bytes and asks for a quarter mebibyte, and a peer reads none of
/// the replies. The cap must hold anyway: a call whose connection has the cap unread waits
/// to run. Then every reply is read, each once.
fn assert_large_replies_never_read_are_held_near_the_cap(server: Server, sending: Sending) {
    const REQUESTS: u64 = 256;
    const BURST: usize = 16;
    const REPLY: u32 = 256 * 1024;
    let server = TestServer::start_with(server);
    let cap = server.server.config().max_queued_bytes;
    let mut evil = EvilClient::connect(server.addr());
    let small_first = sending == Sending::SmallFirstThenBursts;
    let frames: Vec<_> = (1..=REQUESTS)
        .map(|seq| match seq {
            1..=16 if small_first => request(seq, "Probe.Fill", &16u32),
            _ => request(seq, "Probe.Fill", &REPLY),
        })
        .collect();
    match sending {
        Sending::AllAtOnce => evil.send_frames(&frames),
        Sending::SmallFirstThenBursts => {
            for burst in frames.chunks(BURST) {
                evil.send_frames(burst);
                thread::sleep(Duration::from_millis(2));
            }
        }
    }
    wait_until("replies queue up", Duration::from_secs(5), || {
        server.server.stats().queued_outbound_bytes >= cap
    });
    thread::sleep(Duration::from_millis(500));
    // The cap, plus a reply for each handler that passed the check at once (each checks
    // before it runs), plus one: RELIABILITY.md's goal is the cap plus 2 MiB, which holds
    // while the pool runs eight such handlers at most.
    let stats = server.server.stats();
    let bound = cap + (stats.max_running_handlers + 1) * REPLY as usize;
    assert!(
        stats.queued_outbound_bytes <= bound,
        "{} bytes queued, over {bound}: {stats:?}",
        stats.queued_outbound_bytes
    );
    assert_healthy(server.addr());

    read_every_reply_once(&mut evil, REQUESTS);
    drop(evil);
    assert_back_to_idle(&server.server);
}

/// Reads `count` replies from `evil`: each a response, none twice (so every request of
/// sequence ids 1 to `count` is answered once).
fn read_every_reply_once(evil: &mut EvilClient, count: u64) {
    let mut seen = HashSet::new();
    for reply in evil.read_frames(count as usize) {
        assert_eq!(reply.kind, FrameKind::Response, "seq {}", reply.seq);
        assert!(seen.insert(reply.seq), "seq {} twice", reply.seq);
    }
    assert_eq!(seen.len() as u64, count);
}

#[test]
fn connections_beyond_the_cap_are_closed_at_once_and_others_keep_being_served() {
    let server = TestServer::start_with(Server::builder().max_connections(10).build());
    let client = server.client();
    let held: Vec<TcpStream> = (0..9)
        .map(|_| TcpStream::connect(server.addr()).unwrap())
        .collect();
    wait_until("ten connections open", Duration::from_secs(5), || {
        server.server.stats().open_connections == 10
    });
    for _ in 0..20 {
        let mut extra = EvilClient::connect(server.addr());
        assert!(extra.time_until_closed() < Duration::from_secs(1));
    }
    assert_eq!(server.server.stats().refused_connections, 20);
    assert_eq!(
        client
            .call::<_, i64>("Arith.Sum", &Args { a: 1, b: 2 })
            .unwrap(),
        3
    );
    drop(held);
    drop(client);
    assert_back_to_idle(&server.server);
    assert_healthy(server.addr());
}

#[test]
fn eight_thousand_concurrent_calls_each_complete_once_with_their_own_reply() {
    let server = TestServer::start();
    let threads: Vec<_> = (0..8i64)
        .map(|client_id| {
            let client = server.client();
            thread::spawn(move || {
                let (done, completions) = done_channel::<i64>();
                let mut expected = std::collections::HashMap::new();
                for i in 0..1_000i64 {
                    let seq = client.go_with(
                        "Arith.Sum",
                        &Args {
                            a: i,
                            b: client_id * 10_000,
                        },
                        &done,
                    );
                    expected.insert(seq, i + client_id * 10_000);
                }
                for _ in 0..1_000 {
                    let completion = completions.recv_timeout(Duration::from_secs(10)).unwrap();
                    let want = expected.remove(&completion.seq).expect("completed once");
                    assert_eq!(completion.result.unwrap(), want);
                }
                assert!(expected.is_empty());
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    // A worker counts its call out just after writing the reply: wait for the last ones.
    wait_until("no call left in flight", Duration::from_secs(5), || {
        server.server.stats().in_flight_calls == 0
    });
}

#[test]
fn a_half_closed_client_gets_every_reply_then_eof() {
    let server = TestServer::start();
    let mut evil = EvilClient::connect(server.addr());
    evil.send_frames(&[
        request(1, "Probe.Sleep", &100u64),
        request(2, "Probe.Sleep", &50u64),
        request(3, "Probe.Sleep", &0u64),
    ]);
    evil.stream.shutdown(Shutdown::Write).unwrap();
    let started = Instant::now();
    let mut seqs: Vec<u64> = evil.read_until_closed().iter().map(|f| f.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, vec![1, 2, 3]);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_back_to_idle(&server.server);
}

#[test]
fn graceful_shutdown_lets_calls_in_flight_finish_and_refuses_later_ones() {
    let server = TestServer::start();
    let client = server.client();
    let calls: Vec<_> = (0..20)
        .map(|_| client.go::<_, u64>("Probe.Sleep", &200u64))
        .collect();
    wait_until("twenty calls in flight", Duration::from_secs(5), || {
        server.server.stats().in_flight_calls == 20
    });
    let started = Instant::now();
    let shutdown = thread::scope(|scope| {
        let shutting = scope.spawn(|| server.handle.shutdown_gracefully(Duration::from_secs(2)));
        thread::sleep(Duration::from_millis(50));
        let late = client.call::<_, u64>("Probe.Sleep", &0u64).unwrap_err();
        assert!(late.is_retryable(), "{late:?}");
        assert!(matches!(late, RpcError::ShuttingDown), "{late:?}");
        shutting.join().unwrap()
    });
    assert!(shutdown, "every call finished within the grace");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    for call in calls {
        assert_eq!(call.wait().unwrap(), 200);
    }
    assert!(
        server.handle.shutdown_gracefully(Duration::from_secs(2)),
        "idempotent"
    );
    assert!(Client::dial(server.addr()).is_err(), "no longer accepting");
}

#[test]
fn graceful_shutdown_writes_finished_replies_a_slow_reader_has_not_taken_yet() {
    // Four 4 MB replies to a client that reads only after the shutdown began: the calls end
    // at once, but most of their bytes still wait in the server's queue (the socket holds a
    // few megabytes). Those replies are finished work: the shutdown waits, within its grace,
    // for the client to take them, and only then closes.
    const REPLY: u32 = 4_000_000;
    let server = TestServer::start();
    let mut evil = EvilClient::connect(server.addr());
    let frames: Vec<_> = (1..=4u64)
        .map(|seq| request(seq, "Probe.Fill", &REPLY))
        .collect();
    evil.send_frames(&frames);
    wait_until(
        "every call answered, replies queued",
        Duration::from_secs(5),
        || {
            let stats = server.server.stats();
            stats.in_flight_calls == 0 && stats.queued_outbound_bytes > 0
        },
    );
    let shutdown = thread::scope(|scope| {
        let shutting = scope.spawn(|| server.handle.shutdown_gracefully(Duration::from_secs(10)));
        thread::sleep(Duration::from_millis(200)); // a slow reader
        let replies = evil.read_frames(4);
        let mut seqs: Vec<u64> = replies.iter().map(|reply| reply.seq).collect();
        seqs.sort_unstable(); // the pool runs the calls side by side
        assert_eq!(seqs, [1, 2, 3, 4]);
        for reply in &replies {
            assert_eq!(reply.kind, FrameKind::Response);
            assert!(reply.body.len() > REPLY as usize, "{}", reply.body.len());
        }
        shutting.join().unwrap()
    });
    assert!(shutdown, "every reply written within the grace");
    let after = evil.read_until_closed();
    assert!(
        after.iter().all(|frame| frame.kind == FrameKind::GoAway),
        "then only the go-away, and the close: {after:?}"
    );
}

#[test]
fn graceful_shutdown_gives_up_after_the_grace() {
    let server = TestServer::start();
    let client = server.client();
    let stuck = client.go::<_, u64>("Probe.Block", &1u64);
    wait_until("one call in flight", Duration::from_secs(5), || {
        server.server.stats().in_flight_calls == 1
    });
    let started = Instant::now();
    assert!(!server.handle.shutdown_gracefully(Duration::from_millis(50)));
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    let err = stuck.wait().unwrap_err();
    assert!(matches!(err, RpcError::ConnectionLost { .. }), "{err:?}");
    server.release(1);

    let idle = TestServer::start();
    let started = Instant::now();
    assert!(idle.handle.shutdown_gracefully(Duration::from_secs(5)));
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "immediate when idle"
    );
}

#[test]
fn an_idle_connection_whose_client_never_reads_is_closed_all_the_same() {
    // A client asks for megabytes of replies and reads none: its calls end, the server stops
    // reading it (its replies pass the queue's cap), and the idle timeout then tells it to go
    // away. The close waits for the queued replies and the go-away to be written, which
    // never happens: it must come after a short grace all the same, and free the slot.
    let server = TestServer::start_with(
        Server::builder()
            .idle_timeout(Duration::from_millis(200))
            .build(),
    );
    let mut evil = EvilClient::connect(server.addr());
    let fills: Vec<_> = (1..=100u64)
        .map(|seq| request(seq, "Probe.Fill", &(64 * 1024u32)))
        .collect();
    evil.send_frames(&fills);
    wait_until(
        "the idle connection told to go away",
        Duration::from_secs(5),
        || server.server.stats().idle_closes == 1,
    );
    wait_until("its slot freed", Duration::from_secs(5), || {
        server.server.stats().open_connections == 0
    });
    drop(evil);
    assert_back_to_idle(&server.server);
}

#[test]
fn idle_connections_are_told_to_go_away_then_closed_and_busy_ones_are_kept() {
    let idle_timeout = Duration::from_millis(200);
    let server = TestServer::start_with(Server::builder().idle_timeout(idle_timeout).build());
    let silent_since = Instant::now();
    let mut silent = EvilClient::connect(server.addr());
    let idle = server.arith();
    assert_eq!(idle.multiply(&Args { a: 2, b: 3 }).unwrap(), 6);
    let busy = server.client();
    let long_call = busy.go::<_, u64>("Probe.Sleep", &700u64);
    let chatty = server.arith();
    thread::scope(|scope| {
        scope.spawn(|| {
            for _ in 0..14 {
                assert_eq!(chatty.multiply(&Args { a: 1, b: 1 }).unwrap(), 1);
                thread::sleep(Duration::from_millis(50));
            }
        });
        // A connection that never sent a byte: a go-away, then the close.
        let frames = silent.read_until_closed();
        let closed_after = silent_since.elapsed();
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(frames[0].kind, FrameKind::GoAway);
        assert!(
            closed_after >= idle_timeout && closed_after < Duration::from_secs(2),
            "closed after {closed_after:?}"
        );
    });
    // The client idle since its one call was closed too; it learns to dial again.
    let err = idle.multiply(&Args { a: 2, b: 3 }).unwrap_err();
    assert!(matches!(err, RpcError::ShuttingDown), "{err:?}");
    assert!(err.is_retryable());
    // A call in flight longer than the timeout, and a client calling every 50 ms, were kept.
    assert_eq!(long_call.wait().unwrap(), 700);
    assert_eq!(chatty.multiply(&Args { a: 6, b: 7 }).unwrap(), 42);
    assert_eq!(server.server.stats().idle_closes, 2);
    drop((busy, chatty));
    assert_back_to_idle(&server.server);
}

#[test]
fn a_server_that_stops_reading_cannot_grow_the_clients_unsent_queue_past_its_cap() {
    // A peer that accepts and never reads: requests pile up once the socket buffers are full.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let holder = thread::spawn(move || listener.accept().map(|(stream, _)| stream));
    let cap = 1024 * 1024;
    let client = Client::builder()
        .max_pending_calls(4)
        .max_unsent_bytes(cap)
        .call_timeout(Duration::from_millis(5))
        .dial(addr)
        .unwrap();
    let payload = vec![0x5a_u8; 64 * 1024];
    let (mut timed_out, mut throttled) = (0, 0);
    for _ in 0..400 {
        match client.call::<_, Vec<u8>>("Probe.Echo", &payload) {
            Err(RpcError::Timeout { .. }) => timed_out += 1,
            Err(RpcError::Throttled) => throttled += 1,
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    let unsent = client.unsent_bytes();
    println!("{timed_out} timed out, {throttled} throttled, {unsent} bytes unsent");
    // Past the cap by one request at most (each call checks before it queues).
    assert!(
        unsent <= cap + payload.len() + 1024,
        "{unsent} bytes unsent"
    );
    assert!(throttled > 0, "the cap was never reached");
    drop(holder.join().unwrap());
}

service! {
    /// A pooled method that waits for its release: keeps a graceful shutdown waiting.
    pub trait Hold {
        const NAME = "Hold";
        type Server = HoldServer;
        type Client = HoldClient;
        /// Waits until released (10 s at most), then returns `id`.
        #[rpc(name = "Wait", go = wait_go, const = WAIT)]
        fn wait(id: u64) -> u64;
    }
}

/// The `Hold` implementation: each message on its channel releases one call.
struct Holder(crossbeam_channel::Receiver<()>);

impl Hold for Holder {
    fn wait(&self, id: u64) -> Result<u64, netrpc::ServiceError> {
        let _ = self.0.recv_timeout(Duration::from_secs(10));
        Ok(id)
    }
}

#[test]
fn a_connection_accepted_as_a_graceful_shutdown_begins_is_told_to_go_away_too() {
    // One event loop, held by inline calls that block. While it is held by `second`'s call,
    // the shutdown's go-away pass runs; connection `late`, made while the loop was held by
    // `first`'s, is accepted or adopted only after that pass. A pooled call keeps the
    // shutdown waiting, so `late` then lives through the grace: it must be told to go away
    // like the others, and its requests refused with the retryable `ShuttingDown`.
    let (prober, release) = util::Prober::releasable();
    let (hold_release, hold) = crossbeam_channel::unbounded();
    let server = Server::builder().event_loops(1).build();
    server
        .register_inline(util::ProbeServer::new(prober))
        .unwrap();
    server.register(HoldServer::new(Holder(hold))).unwrap();
    let handle = server.serve("127.0.0.1:0").unwrap();
    let block = |seq: u64| request(seq + 1, "Probe.Block", &seq);
    let mut keeper = EvilClient::connect(handle.local_addr());
    keeper.send_frames(&[request(1, "Hold.Wait", &1u64)]);
    wait_until("the pooled call in flight", Duration::from_secs(5), || {
        server.stats().in_flight_calls == 1
    });
    // Each step is waited for, not slept on. A connection answers a call before the test
    // goes on with it: the loop reads a socket it adopts at once, from its commands, so a
    // request sent before then would block the loop there, with the commands behind it
    // (`second`'s adoption, `first`'s reply flush) waiting.
    let adopted = || {
        let mut client = EvilClient::connect(handle.local_addr());
        client.send_frames(&[request(1, "Probe.Echo", &vec![1u8])]);
        assert_eq!(client.read_frames(1)[0].kind, FrameKind::Response);
        client
    };
    let (mut first, mut second) = (adopted(), adopted());
    let calls_running = |count: usize| {
        wait_until(
            "the inline call holds the loop",
            Duration::from_secs(5),
            || server.stats().in_flight_calls == count,
        )
    };
    first.send_frames(&[block(1)]);
    calls_running(2); // the loop blocks in `first`'s call
    second.send_frames(&[block(2)]);
    let mut late = EvilClient::connect(handle.local_addr());
    release.send(()).unwrap(); // the next turn: `second`'s call and `late`'s accept
    assert_eq!(first.read_frames(1)[0].kind, FrameKind::Response);
    calls_running(2); // the loop blocks in `second`'s call
    thread::scope(|scope| {
        let shutting = scope.spawn(|| handle.shutdown_gracefully(Duration::from_secs(5)));
        // The go-away pass has run once `keeper` is told (the shutdown thread writes it).
        assert_eq!(keeper.read_frames(1)[0].kind, FrameKind::GoAway);
        release.send(()).unwrap(); // the loop goes on, and takes `late` in
        late.send_frames(&[request(1, "Probe.Echo", &vec![1u8])]);
        let frames = late.read_frames(2);
        assert_eq!(frames[0].kind, FrameKind::GoAway, "{frames:?}");
        assert_eq!(
            (frames[1].kind, frames[1].seq),
            (FrameKind::Error, 1),
            "{frames:?}"
        );
        let body = netrpc::ErrorBody::decode(&frames[1].body).unwrap();
        assert_eq!(body.code, ErrorCode::ShuttingDown);
        hold_release.send(()).unwrap();
        assert!(shutting.join().unwrap());
    });
    drop((keeper, first, second));
}

#[test]
fn the_idle_timeout_counts_from_the_end_of_the_last_call_not_from_its_request() {
    // A call of 250 ms under a 300 ms idle timeout: its request is the last frame, at 0,
    // and the first idle check comes at 300 ms, 50 ms after the reply. The connection was
    // busy until then, so it must stay open for a call right after.
    let server = TestServer::start_with(
        Server::builder()
            .idle_timeout(Duration::from_millis(300))
            .build(),
    );
    let client = server.client();
    assert_eq!(client.call::<_, u64>("Probe.Sleep", &250u64).unwrap(), 250);
    thread::sleep(Duration::from_millis(100));
    let product: i64 = client.call("Arith.Multiply", &Args { a: 6, b: 7 }).unwrap();
    assert_eq!(product, 42);
    assert_eq!(server.server.stats().idle_closes, 0);
}
