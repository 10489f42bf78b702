//! The reliability matrix (shared/RELIABILITY.md), bad-input rows: truncated headers,
//! pipelined and split frames, bad magic/version/kind, oversized lengths, over-long names,
//! slowloris, duplicate sequence ids, and an evil server's garbage, reordered, duplicated and
//! unknown replies, pings it never reads the pongs of, replies for no call written faster
//! than the client can handle them, and garbage from a server that reads nothing. After each
//! fault the server holds nothing and a fresh client's call succeeds.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod util;

use std::io::Write;
use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use netrpc::transport::{Frame, FrameKind, FrameLimits, HEADER_LEN};
use netrpc::{done_channel, Client, Codec, ErrorBody, ErrorCode, RpcError, Server};
use util::evil::{header_declaring, request, valid_request_bytes, EvilClient};
use util::{assert_back_to_idle, assert_healthy, Args, TestServer};

#[test]
fn a_frame_cut_at_every_length_then_eof_leaves_nothing_behind() {
    let server = TestServer::start();
    let bytes = valid_request_bytes();
    for len in 1..bytes.len() {
        let mut evil = EvilClient::connect(server.addr());
        evil.send_raw(&bytes[..len]);
        evil.stream.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(
            evil.read_until_closed().is_empty(),
            "no reply to a torn frame"
        );
    }
    assert_back_to_idle(&server.server);
    assert_eq!(server.server.stats().frame_errors, bytes.len() as u64 - 1);
    assert_healthy(server.addr());
}

#[test]
fn a_call_sent_one_byte_at_a_time_succeeds() {
    let server = TestServer::start();
    let mut evil = EvilClient::connect(server.addr());
    evil.stream.set_nodelay(true).unwrap();
    for byte in valid_request_bytes() {
        evil.send_raw(&[byte]);
        evil.stream.flush().unwrap();
    }
    let reply = evil.read_frames(1);
    assert_eq!(
        (reply[0].kind, &reply[0].body[..]),
        (FrameKind::Response, &[0x70][..])
    );
}

/// The bytes of `frames`, back to back.
fn encode_all(frames: &[netrpc::transport::Frame]) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    for frame in frames {
        frame.encode(&mut out, &FrameLimits::default()).unwrap();
    }
    out.to_vec()
}

#[test]
fn three_frames_and_half_a_fourth_in_one_write_get_three_replies_then_the_fourth() {
    let server = TestServer::start();
    let requests: Vec<_> = (1..=4i64)
        .map(|seq| request(seq as u64, "Arith.Multiply", &Args { a: seq, b: 10 }))
        .collect();
    let bytes = encode_all(&requests);
    let cut = bytes.len() - 10;
    let mut evil = EvilClient::connect(server.addr());
    let started = Instant::now();
    evil.send_raw(&bytes[..cut]);
    let mut first = evil.read_frames(3);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answered from one read"
    );
    first.sort_by_key(|frame| frame.seq);
    assert_eq!(first.iter().map(|f| f.seq).collect::<Vec<_>>(), [1, 2, 3]);
    evil.send_raw(&bytes[cut..]);
    let last = evil.read_frames(1);
    assert_eq!((last[0].kind, last[0].seq), (FrameKind::Response, 4));
    assert_eq!(&last[0].body[..], &[80], "postcard 40 (zigzag 80)");
}

#[test]
fn a_one_mebibyte_body_arriving_in_64_kib_pieces_is_answered() {
    let server = TestServer::start();
    let payload: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let bytes = encode_all(&[request(1, "Probe.Echo", &payload)]);
    let mut evil = EvilClient::connect(server.addr());
    evil.stream.set_nodelay(true).unwrap();
    for piece in bytes.chunks(64 * 1024) {
        evil.send_raw(piece);
        thread::sleep(Duration::from_millis(2));
    }
    let reply = evil.read_frames(1);
    assert_eq!(reply[0].kind, FrameKind::Response);
    let echoed: Vec<u8> = netrpc::CodecKind::Postcard.decode(&reply[0].body).unwrap();
    assert_eq!(echoed, payload);
}

#[test]
fn bad_magic_version_and_kind_close_the_connection_at_once() {
    let server = TestServer::start();
    let good = valid_request_bytes();
    let with = |offset: usize, byte: u8| {
        let mut bytes = good.clone();
        bytes[offset] = byte;
        bytes
    };
    let inputs: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        vec![0; 16],
        with(2, 0),
        with(2, 255),
        with(3, 0xff),
        with(3, 0),
    ];
    for input in &inputs {
        let mut evil = EvilClient::connect(server.addr());
        evil.send_raw(input);
        let closed_after = evil.time_until_closed();
        assert!(
            closed_after < Duration::from_secs(1),
            "{input:02x?}: {closed_after:?}"
        );
    }
    assert_back_to_idle(&server.server);
    assert_eq!(server.server.stats().frame_errors, inputs.len() as u64);
    assert_healthy(server.addr());
}

#[test]
fn an_oversized_declared_body_gets_frame_too_large_under_its_seq_then_a_close() {
    let server = TestServer::start();
    for declared in [FrameLimits::default().max_body_len as u32 + 1, u32::MAX] {
        let mut evil = EvilClient::connect(server.addr());
        evil.send_raw(&header_declaring(42, declared)); // the name, and no body at all
        let frames = evil.read_until_closed();
        assert_eq!(frames.len(), 1, "exactly the error frame");
        assert_eq!((frames[0].kind, frames[0].seq), (FrameKind::Error, 42));
        let body = ErrorBody::decode(&frames[0].body).unwrap();
        assert_eq!(body.code, ErrorCode::FrameTooLarge);
        assert!(
            body.message.contains(&declared.to_string()),
            "{}",
            body.message
        );
    }
    assert_back_to_idle(&server.server);
    assert_healthy(server.addr());
}

#[test]
fn a_name_over_the_cap_is_answered_then_the_connection_closes() {
    let server = TestServer::start();
    let long = format!("Arith.{}", "x".repeat(300));
    let mut header = request(1, "Arith.Multiply", &Args { a: 1, b: 2 }).header();
    header.name_len = long.len() as u16;
    let mut bytes = Vec::new();
    header.write_to(&mut bytes);
    let mut evil = EvilClient::connect(server.addr());
    evil.send_raw(&bytes);
    // The header was intact: the sender is told why under its seq, and nothing more is read.
    let frames = evil.read_until_closed();
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!((frames[0].kind, frames[0].seq), (FrameKind::Error, 1));
    let body = ErrorBody::decode(&frames[0].body).unwrap();
    assert_eq!(body.code, ErrorCode::Protocol, "{}", body.message);
    assert_back_to_idle(&server.server);
    assert_healthy(server.addr());
}

#[test]
fn a_trickled_frame_is_cut_off_at_the_frame_timeout_not_extended_per_byte() {
    let limits = FrameLimits {
        frame_timeout: Some(Duration::from_millis(300)),
        ..FrameLimits::default()
    };
    let server = TestServer::start_with(Server::builder().limits(limits).build());
    let bytes = valid_request_bytes();
    for cut in [HEADER_LEN - 1, bytes.len() - 1] {
        let mut evil = EvilClient::connect(server.addr());
        let started = Instant::now();
        let trickle = {
            let mut stream = evil.stream.try_clone().unwrap();
            let bytes = bytes[..cut].to_vec();
            thread::spawn(move || {
                for byte in bytes {
                    if stream.write_all(&[byte]).is_err() {
                        return;
                    }
                    thread::sleep(Duration::from_millis(100));
                }
            })
        };
        evil.read_until_closed();
        let closed_after = started.elapsed();
        assert!(
            closed_after >= Duration::from_millis(250) && closed_after < Duration::from_secs(2),
            "closed after {closed_after:?}"
        );
        trickle.join().unwrap();
        assert_healthy(server.addr());
    }
    assert_eq!(server.server.stats().frame_timeouts, 2);
    assert_back_to_idle(&server.server);
}

#[test]
fn a_duplicate_sequence_id_in_flight_is_ignored_and_counted() {
    let server = TestServer::start();
    let mut evil = EvilClient::connect(server.addr());
    let sleep = request(5, "Probe.Sleep", &200u64);
    evil.send_frames(&[sleep.clone(), sleep]);
    evil.send_frames(&[request(6, "Arith.Multiply", &Args { a: 2, b: 3 })]);
    let replies = evil.read_frames(2);
    let seqs: Vec<u64> = replies.iter().map(|f| f.seq).collect();
    assert_eq!(seqs, vec![6, 5], "one reply for seq 5, after the fast call");
    evil.stream
        .set_read_timeout(Some(Duration::from_millis(400)))
        .unwrap();
    let mut extra = [0u8; 1];
    assert!(
        std::io::Read::read(&mut evil.stream, &mut extra).is_err(),
        "no second reply for the duplicate"
    );
    assert_eq!(server.server.stats().duplicate_requests, 1);
}

#[test]
fn a_duplicate_id_is_ignored_whatever_it_names_and_while_draining() {
    let server = TestServer::start();
    let mut evil = EvilClient::connect(server.addr());
    evil.send_frames(&[request(5, "Probe.Sleep", &300u64)]);
    util::wait_until("the call in flight", Duration::from_secs(5), || {
        server.server.stats().in_flight_calls == 1
    });
    // Each of these would get an error frame with seq 5 if it were not a duplicate.
    let mut unknown_codec = request(5, "Arith.Multiply", &Args { a: 1, b: 2 });
    unknown_codec.codec = 99;
    evil.send_frames(&[
        request(5, "Nope.Method", &0u64),
        request(5, "Probe.Nope", &0u64),
        request(5, "no-dot", &0u64),
        unknown_codec,
    ]);
    util::wait_until("four duplicates counted", Duration::from_secs(5), || {
        server.server.stats().duplicate_requests == 4
    });
    // Draining: the go-away frame, then a duplicate that must not get `ShuttingDown`.
    let draining = thread::spawn({
        let handle = server.handle;
        move || handle.shutdown_gracefully(Duration::from_secs(5))
    });
    let go_away = evil.read_frames(1);
    assert_eq!((go_away[0].kind, go_away[0].seq), (FrameKind::GoAway, 5));
    evil.send_frames(&[request(5, "Probe.Sleep", &0u64)]);
    let replies = evil.read_until_closed();
    assert_eq!(replies.len(), 1, "one reply for seq 5: {replies:?}");
    assert_eq!((replies[0].kind, replies[0].seq), (FrameKind::Response, 5));
    assert!(draining.join().unwrap(), "the call in flight finished");
    assert_eq!(server.server.stats().duplicate_requests, 5);
}

/// An evil server: accepts one connection, reads the client's hello, and answers whatever
/// `script` writes.
fn evil_server(script: impl FnOnce(&mut EvilClient) + Send + 'static) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(util::evil::READ_TIMEOUT))
            .unwrap();
        let mut peer = EvilClient::from_stream(stream);
        // A netrpc client's first frame is its hello: a ping with seq 0.
        let hello = peer.read_frames(1);
        assert_eq!((hello[0].kind, hello[0].seq), (FrameKind::Ping, 0));
        script(&mut peer);
    });
    addr
}

#[test]
fn a_server_answering_garbage_fails_call_and_go_with_protocol() {
    let addr = evil_server(|peer| {
        peer.read_frames(2);
        peer.send_raw(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        thread::sleep(Duration::from_millis(200));
    });
    let client = Client::dial(addr).unwrap();
    let pending = client.go::<_, i64>("Arith.Multiply", &Args { a: 1, b: 2 });
    let started = Instant::now();
    let err = client
        .call::<_, i64>("Arith.Multiply", &Args { a: 1, b: 2 })
        .unwrap_err();
    assert!(matches!(err, RpcError::Protocol { .. }), "{err:?}");
    let err = pending.wait().unwrap_err();
    assert!(matches!(err, RpcError::Protocol { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
}

/// Reads the client's first request from `peer` and encodes a reply to it (the answer 7).
fn reply_to_the_first_request(peer: &mut EvilClient) -> bytes::BytesMut {
    let requests = peer.read_frames(1);
    let mut reply = request(requests[0].seq, "", &7i64);
    reply.kind = FrameKind::Response;
    reply.name = bytes::Bytes::new();
    let mut bytes = bytes::BytesMut::new();
    reply.encode(&mut bytes, &FrameLimits::default()).unwrap();
    bytes
}

#[test]
fn a_server_that_dies_mid_reply_fails_its_calls_with_the_retryable_connection_lost() {
    // A server killed while writing a reply leaves part of a frame and then its end of
    // stream. That is a lost connection, as an end between frames is, not a broken protocol:
    // a retrying client may try again elsewhere, and later calls get `Shutdown`.
    for in_header in [true, false] {
        let addr = evil_server(move |peer| {
            let bytes = reply_to_the_first_request(peer);
            let cut = if in_header {
                HEADER_LEN - 4
            } else {
                bytes.len() - 1
            };
            peer.send_raw(&bytes[..cut]);
            peer.stream.shutdown(std::net::Shutdown::Write).unwrap();
            thread::sleep(Duration::from_secs(1));
        });
        let client = Client::dial(addr).unwrap();
        let err = client
            .call::<_, i64>("Arith.Multiply", &Args { a: 1, b: 2 })
            .unwrap_err();
        assert!(
            matches!(
                err,
                RpcError::ConnectionLost {
                    cause: Some(netrpc::transport::TransportError::Truncated { .. })
                }
            ),
            "cut in the header: {in_header}; {err:?}"
        );
        assert!(err.is_retryable(), "{err:?}");
        let later = client
            .call::<_, i64>("Arith.Multiply", &Args { a: 1, b: 2 })
            .unwrap_err();
        assert!(matches!(later, RpcError::Shutdown), "{later:?}");
    }
}

#[test]
fn a_server_that_stalls_mid_reply_fails_the_reading_caller_at_the_frame_timeout() {
    // The waiting caller reads the socket itself; half a frame is the loop's to time out.
    for waiter in ["plain recv", "blocking call", "recv_completion"] {
        let addr = evil_server(|peer| {
            let bytes = reply_to_the_first_request(peer);
            peer.send_raw(&bytes[..HEADER_LEN - 4]);
            thread::sleep(Duration::from_secs(3));
        });
        let client = Client::builder()
            .limits(FrameLimits {
                frame_timeout: Some(Duration::from_millis(200)),
                ..FrameLimits::default()
            })
            .call_timeout(Duration::from_secs(20))
            .dial(addr)
            .unwrap();
        let started = Instant::now();
        let result = if waiter == "blocking call" {
            client.call::<_, i64>("Arith.Multiply", &Args { a: 1, b: 7 })
        } else if waiter == "plain recv" {
            let (done, completions) = done_channel::<i64>();
            client.go_with("Arith.Multiply", &Args { a: 1, b: 7 }, &done);
            completions
                .recv_timeout(Duration::from_secs(30))
                .unwrap()
                .result
        } else {
            let (done, completions) = done_channel::<i64>();
            client.go_with("Arith.Multiply", &Args { a: 1, b: 7 }, &done);
            client
                .recv_completion(&completions, Duration::from_secs(30))
                .unwrap()
                .result
        };
        let err = result.unwrap_err();
        assert!(
            matches!(err, RpcError::ConnectionLost { .. }),
            "{waiter}: {err:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{waiter}: failed by the frame timeout, not the call's 20 s deadline"
        );
    }
}

#[test]
fn reordered_duplicated_and_unknown_replies_complete_each_call_once() {
    let addr = evil_server(|peer| {
        let requests = peer.read_frames(3);
        let reply = |seq: u64, value: i64| {
            let mut frame = request(seq, "", &value);
            frame.kind = FrameKind::Response;
            frame.name = bytes::Bytes::new();
            frame
        };
        let seqs: Vec<u64> = requests.iter().map(|r| r.seq).collect();
        peer.send_frames(&[
            reply(seqs[2], 30),
            reply(999_999, 0),
            reply(seqs[1], 20),
            reply(seqs[1], 21),
            reply(seqs[0], 10),
        ]);
        thread::sleep(Duration::from_millis(500));
    });
    let client = Client::dial(addr).unwrap();
    let (done, completions) = done_channel::<i64>();
    let mut expected = std::collections::HashMap::new();
    for value in [10, 20, 30] {
        let seq = client.go_with("Any.Method", &(), &done);
        expected.insert(seq, value);
    }
    for _ in 0..3 {
        let completion = completions.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(
            completion.result.unwrap(),
            expected.remove(&completion.seq).unwrap()
        );
    }
    assert!(
        completions
            .recv_timeout(Duration::from_millis(200))
            .is_err(),
        "never twice"
    );
    util::wait_until("both stray replies counted", Duration::from_secs(2), || {
        client.discarded_replies() == 2
    });
    assert!(!client.is_closed(), "the connection stays usable");
}

#[test]
fn a_server_that_pings_without_reading_cannot_grow_the_clients_queue_of_pongs() {
    // 40 MB of pings, and none of the pongs read: once the socket is full, every pong would
    // wait in the client's queue. The client stops answering pings while bytes wait unsent,
    // so its memory stays bounded.
    const PINGS: u64 = 40 * 1024 * 1024 / HEADER_LEN as u64;
    let (flooded_tx, flooded) = crossbeam_channel::bounded(1);
    let (done_tx, done) = crossbeam_channel::bounded::<()>(1);
    let addr = evil_server(move |peer| {
        let mut pings = bytes::BytesMut::new();
        for seq in 1..=PINGS {
            Frame::new(FrameKind::Ping, seq)
                .encode(&mut pings, &FrameLimits::default())
                .unwrap();
        }
        peer.send_raw(&pings); // returns once the client has read them all
        flooded_tx.send(()).unwrap();
        let _ = done.recv_timeout(Duration::from_secs(10)); // hold the connection open
    });
    let client = Client::dial(addr).unwrap();
    flooded
        .recv_timeout(Duration::from_secs(30))
        .expect("the client reads the pings");
    thread::sleep(Duration::from_millis(200)); // the last pings still in its loop's hands
    let unsent = client.unsent_bytes();
    assert!(unsent <= 1024 * 1024, "{unsent} bytes of pongs queued");
    drop(done_tx);
}

/// Held by each test that floods a client: the client loop is shared by every client of the
/// process, so two floods at once (tests run side by side) would load it twice over, and
/// each test checks what one flood leaves to the others.
fn one_flood_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static FLOODS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    FLOODS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A reply for no call (seq 999,999).
fn stray_reply() -> Frame {
    let mut reply = Frame::new(FrameKind::Response, 999_999);
    reply.body = bytes::Bytes::from_static(b"junk");
    reply
}

/// An evil server that writes `frame` over and over, as fast as it can, for `seconds` (or
/// until the client goes), and reads whatever the client sends meanwhile (pongs).
fn flooding_server(frame: Frame, seconds: u64) -> std::net::SocketAddr {
    evil_server(move |peer| {
        let mut frames = bytes::BytesMut::new();
        while frames.len() < 64 * 1024 {
            frame.encode(&mut frames, &FrameLimits::default()).unwrap();
        }
        let mut reading = peer.stream.try_clone().unwrap();
        thread::spawn(move || std::io::copy(&mut reading, &mut std::io::sink()));
        let until = Instant::now() + Duration::from_secs(seconds);
        while Instant::now() < until && peer.stream.write_all(&frames).is_ok() {}
    })
}

#[test]
fn a_caller_reading_its_connection_answers_every_ping_of_a_server_that_reads_the_pongs() {
    // 20,000 pings in one write while a blocking call reads its own connection: the pongs
    // are corked as it reads, and must leave before they pass the cap on unsent bytes meant
    // for a server that reads nothing (they were dropped past 2,341).
    const PINGS: u64 = 20_000;
    let pongs = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = std::sync::Arc::clone(&pongs);
    let addr = evil_server(move |peer| {
        peer.read_frames(1); // the call's request
        let mut reading = peer.stream.try_clone().unwrap();
        thread::spawn(move || {
            let mut decoder = netrpc::transport::FrameDecoder::new(FrameLimits::default());
            let mut buf = [0u8; 16 * 1024];
            let until = Instant::now() + Duration::from_secs(10);
            while Instant::now() < until {
                match std::io::Read::read(&mut reading, &mut buf) {
                    Ok(0) => return,
                    Ok(n) => decoder.handle_bytes(&buf[..n]),
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(err) if err.kind() == std::io::ErrorKind::TimedOut => continue,
                    Err(_) => return,
                }
                while let Ok(Some(frame)) = decoder.poll_frame() {
                    if frame.kind == FrameKind::Pong {
                        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            }
        });
        let mut pings = bytes::BytesMut::new();
        for seq in 1..=PINGS {
            Frame::new(FrameKind::Ping, seq)
                .encode(&mut pings, &FrameLimits::default())
                .unwrap();
        }
        peer.send_raw(&pings);
        thread::sleep(Duration::from_secs(5)); // never answers the call
    });
    let client = Client::builder()
        .call_timeout(Duration::from_millis(1_500))
        .dial(addr)
        .unwrap();
    let err = client
        .call::<_, i64>("Arith.Multiply", &Args { a: 1, b: 2 })
        .unwrap_err();
    assert!(matches!(err, RpcError::Timeout { .. }), "{err:?}");
    util::wait_until("every ping answered", Duration::from_secs(5), || {
        pongs.load(std::sync::atomic::Ordering::SeqCst) == PINGS
    });
}

#[test]
fn a_server_flooding_one_connection_leaves_the_client_loop_serving_the_others() {
    timers_keep_their_time_beside(flooding_server(stray_reply(), 5));
}

#[test]
fn a_server_flooding_pings_and_reading_the_pongs_leaves_the_client_loop_serving_the_others() {
    // Each pong was written as its ping was read: one system call per 24-byte frame kept
    // the loop on this connection for seconds (replies to a neighbour 1.5-5.9 s late).
    timers_keep_their_time_beside(flooding_server(Frame::new(FrameKind::Ping, 5), 5));
}

#[test]
fn a_client_flooding_pings_and_reading_the_pongs_leaves_the_server_loop_serving_the_others() {
    // The server's side of the same: one loop, one client pinging as fast as it can (and
    // reading the pongs, so that no back-pressure stops it), another client calling.
    let _alone = one_flood_at_a_time();
    let server = TestServer::start_with(Server::builder().event_loops(1).build());
    let flooder = EvilClient::connect(server.addr());
    let mut reading = flooder.stream.try_clone().unwrap();
    thread::spawn(move || std::io::copy(&mut reading, &mut std::io::sink()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pinging = {
        let stop = std::sync::Arc::clone(&stop);
        let mut stream = flooder.stream;
        thread::spawn(move || {
            let mut pings = bytes::BytesMut::new();
            while pings.len() < 64 * 1024 {
                Frame::new(FrameKind::Ping, 5)
                    .encode(&mut pings, &FrameLimits::default())
                    .unwrap();
            }
            let until = Instant::now() + Duration::from_secs(20);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < until {
                if stream.write_all(&pings).is_err() {
                    break;
                }
            }
        })
    };
    thread::sleep(Duration::from_millis(200)); // the flood is on
    let client = Client::builder()
        .call_timeout(Duration::from_secs(2))
        .dial(server.addr())
        .expect("a new client is greeted while the other one floods");
    for a in 0..10 {
        let product: i64 = client
            .call("Arith.Multiply", &Args { a, b: 2 })
            .expect("answered while the other client floods");
        assert_eq!(product, a * 2);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    pinging.join().unwrap();
}

/// The client loop reads the `flooding` server's connection (no caller waits on it); it must
/// still get round to the other connections it serves: a call to a server that never
/// answers times out on time, and calls to a healthy server complete promptly (within 2 s,
/// a hang detector).
fn timers_keep_their_time_beside(flooding: std::net::SocketAddr) {
    let _alone = one_flood_at_a_time();
    let flooding = Client::dial(flooding).unwrap();
    let silent = evil_server(|_| thread::sleep(Duration::from_secs(5)));
    let client = Client::builder()
        .call_timeout(Duration::from_millis(300))
        .dial(silent)
        .unwrap();
    thread::sleep(Duration::from_millis(200)); // the flood is on
    let (done, completions) = done_channel::<i64>();
    let started = Instant::now();
    client.go_with("Arith.Multiply", &Args { a: 1, b: 2 }, &done);
    let completion = completions
        .recv_timeout(Duration::from_secs(3))
        .expect("the timeout fires while the other connection floods");
    assert!(
        matches!(completion.result, Err(RpcError::Timeout { .. })),
        "{:?}",
        completion.result
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let healthy = TestServer::start();
    let neighbour = Client::dial(healthy.addr()).unwrap();
    for a in 0..10 {
        let (done, completions) = done_channel::<i64>();
        neighbour.go_with("Arith.Multiply", &Args { a, b: 2 }, &done);
        let completion = completions
            .recv_timeout(Duration::from_secs(2))
            .expect("a healthy server's reply is delivered while the other connection floods");
        assert_eq!(completion.result.unwrap(), a * 2);
    }
    drop(flooding);
}

#[test]
fn a_server_flooding_a_waiting_callers_connection_cannot_hold_the_call_past_its_deadline() {
    // A blocking call reads its own connection; the server answers with an endless stream of
    // replies for no call. The caller must give up at its deadline, not read for ever.
    let _alone = one_flood_at_a_time();
    let client = Client::builder()
        .call_timeout(Duration::from_millis(300))
        .dial(flooding_server(stray_reply(), 5))
        .unwrap();
    let started = Instant::now();
    let err = client
        .call::<_, i64>("Arith.Multiply", &Args { a: 1, b: 2 })
        .unwrap_err();
    assert!(matches!(err, RpcError::Timeout { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_server_sending_garbage_while_not_reading_still_fails_the_calls_promptly() {
    // The client has bytes queued that the server never reads, and the server then sends
    // bytes that are no frame. The client would close the connection once its queue is
    // written, which never happens: it must close anyway after a short grace, failing its
    // calls with `Protocol`, not leave them to their deadlines.
    let (garbage_tx, garbage) = crossbeam_channel::bounded::<()>(1);
    let addr = evil_server(move |peer| {
        let _ = garbage.recv_timeout(Duration::from_secs(10));
        peer.send_raw(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        thread::sleep(Duration::from_secs(10)); // never reads
    });
    let client = Client::builder()
        .call_timeout(Duration::from_secs(30))
        .dial(addr)
        .unwrap();
    let (done, completions) = done_channel::<Vec<u8>>();
    let mut calls = 0;
    loop {
        assert!(calls < 20, "the socket never filled");
        client.go_with("Probe.Echo", &vec![7u8; 1024 * 1024], &done);
        calls += 1;
        thread::sleep(Duration::from_millis(50)); // the loop writes what the socket takes
        if client.unsent_bytes() > 0 {
            break; // the socket is full: the rest waits for a reader that never comes
        }
    }
    garbage_tx.send(()).unwrap();
    let started = Instant::now();
    for _ in 0..calls {
        let completion = completions
            .recv_timeout(Duration::from_secs(10))
            .expect("every call fails well before its deadline");
        let result = completion.result;
        assert!(
            matches!(result, Err(RpcError::Protocol { .. })),
            "{result:?}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
