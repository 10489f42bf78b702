//! Every error class, seen by a caller, with the connection still serving afterwards.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::BytesMut;
use netrpc::transport::{Frame, FrameDecoder, FrameKind, FrameLimits};
use netrpc::{done_channel, Client, Codec, CodecKind, ErrorBody, ErrorCode, RpcError, Server};
use util::evil::EvilClient;
use util::{
    assert_back_to_idle, assert_healthy, Args, ArithClient, Colour, Label, ProbeClient, TestServer,
};

fn assert_still_serving(client: &Client) {
    let product: i64 = client.call("Arith.Multiply", &Args { a: 6, b: 7 }).unwrap();
    assert_eq!(product, 42);
}

#[test]
fn a_methods_own_error_arrives_as_its_text() {
    let server = TestServer::start();
    let arith = server.arith();
    let err = arith.divide(&Args { a: 1, b: 0 }).unwrap_err();
    assert!(
        matches!(&err, RpcError::Method { message } if message == "divide by zero"),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    assert_still_serving(arith.client());
}

#[test]
fn unknown_service_and_unknown_method_are_distinct() {
    let server = TestServer::start();
    let client = server.client();
    let err = client
        .call::<_, i64>("Nope.Multiply", &Args { a: 1, b: 2 })
        .unwrap_err();
    assert!(
        matches!(&err, RpcError::UnknownService { name } if name == "Nope.Multiply"),
        "{err:?}"
    );
    let err = client
        .call::<_, i64>("Arith.Nope", &Args { a: 1, b: 2 })
        .unwrap_err();
    assert!(
        matches!(&err, RpcError::UnknownMethod { name } if name == "Arith.Nope"),
        "{err:?}"
    );
    for bad in ["Arith", ""] {
        let err = client
            .call::<_, i64>(bad, &Args { a: 1, b: 2 })
            .unwrap_err();
        assert!(matches!(err, RpcError::Protocol { .. }), "{bad:?}: {err:?}");
    }
    assert_still_serving(&client);
}

#[test]
fn undecodable_arguments_are_a_bad_request() {
    let server = TestServer::start();
    let client = server.client();
    // Probe.Echo takes bytes; Arith.Multiply expects two integers.
    let err = client
        .call::<_, i64>("Arith.Multiply", &vec![0xffu8; 3])
        .unwrap_err();
    assert!(matches!(err, RpcError::BadRequest { .. }), "{err:?}");
    assert_still_serving(&client);
}

#[test]
fn every_kind_of_undecodable_body_is_a_bad_request_and_the_connection_stays_in_sync() {
    let server = TestServer::start();
    let good = Label {
        name: "ab".to_owned(),
        colour: Colour::Green,
        weight: 5,
    };
    let postcard_bad: [(&str, &[u8]); 8] = [
        ("random bytes", &[0xff; 8]),
        ("truncated", &[0x02, b'a', b'b', 0x01]),
        ("trailing bytes", &[0x02, b'a', b'b', 0x01, 0x05, 0x00]),
        ("wrong type (Args)", &[0x0e, 0x10]),
        ("invalid utf-8", &[0x02, 0xff, 0xfe, 0x01, 0x05]),
        ("bad enum tag", &[0x02, b'a', b'b', 0x07, 0x05]),
        (
            "overlong varint",
            &[0x02, b'a', b'b', 0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
        ),
        ("empty", &[]),
    ];
    let json_bad: [(&str, &[u8]); 8] = [
        ("random bytes", &[0xff; 8]),
        ("truncated", br#"{"name":"ab","colour":"Green""#),
        (
            "trailing bytes",
            br#"{"name":"ab","colour":"Green","weight":5} x"#,
        ),
        ("wrong type", br#"{"name":1,"colour":"Green","weight":5}"#),
        (
            "invalid utf-8",
            b"{\"name\":\"\xff\xfe\",\"colour\":\"Green\",\"weight\":5}",
        ),
        (
            "bad enum tag",
            br#"{"name":"ab","colour":"Blue","weight":5}"#,
        ),
        (
            "number out of range",
            br#"{"name":"ab","colour":"Green","weight":-1}"#,
        ),
        ("empty", b""),
    ];
    let mut evil = EvilClient::connect(server.addr());
    let mut seq = 0;
    for (codec, cases) in [
        (CodecKind::Postcard, postcard_bad),
        (CodecKind::Json, json_bad),
    ] {
        let mut good_body = BytesMut::new();
        codec.encode(&good, &mut good_body).unwrap();
        for (what, body) in cases {
            seq += 2;
            evil.send_frames(&[
                Frame::request(seq, "Probe.Label", codec.id(), body.to_vec()),
                Frame::request(
                    seq + 1,
                    "Probe.Label",
                    codec.id(),
                    good_body.clone().freeze(),
                ),
            ]);
            let mut replies = evil.read_frames(2);
            replies.sort_by_key(|frame| frame.seq);
            let bad = ErrorBody::decode(&replies[0].body).unwrap();
            assert_eq!(
                (replies[0].kind, bad.code),
                (FrameKind::Error, ErrorCode::BadRequest),
                "{codec:?} {what}"
            );
            let answer: String = codec.decode(&replies[1].body).unwrap();
            assert_eq!(answer, "ab Green 5", "{codec:?} after {what}");
        }
    }
    assert_eq!(
        server.labels_run.load(std::sync::atomic::Ordering::SeqCst),
        16,
        "only the good bodies reached the handler"
    );
}

#[test]
fn a_reply_over_the_servers_limit_fails_only_that_call() {
    let server = TestServer::start();
    let client = server.client();
    let probe = ProbeClient::new(client.clone());
    let over = FrameLimits::default().max_body_len as u32 + 1;
    let err = probe.fill(&over).unwrap_err();
    assert!(matches!(err, RpcError::FrameTooLarge { .. }), "{err:?}");
    assert_eq!(probe.fill(&1000).unwrap().len(), 1000);
    assert_still_serving(&client);
}

/// A test server that takes request bodies of 64 KiB at most.
fn server_with_a_64_kib_limit() -> TestServer {
    TestServer::start_with(
        Server::builder()
            .limits(FrameLimits::with_max_body_len(64 * 1024))
            .build(),
    )
}

#[test]
fn a_request_over_the_servers_limit_fails_that_call_with_frame_too_large() {
    // The server answers the request's header with an error frame while the client is
    // still writing the body, then drains the rest before it closes. Were the close to reset
    // the connection (it did before the drain; it still may if the drain ends first), the
    // client's write would fail with the error frame waiting in its socket: the caller must
    // be told why (not `ConnectionLost`, which most tries gave before the client read it
    // first).
    let server = server_with_a_64_kib_limit();
    // A string encodes in one piece (a `Vec<u8>` byte by byte, slow in a debug build).
    let label = |len| Label {
        name: "x".repeat(len),
        colour: Colour::Red,
        weight: 1,
    };
    // 3 MiB: the caller's own write fails. Nearly the client's 4 MiB limit: the socket takes
    // less than the request, the loop writes the rest, and its write fails while the caller
    // reads the socket.
    let (large, larger) = (label(3 * 1024 * 1024), label(4000 * 1024));
    for round in 0..300 {
        let client = server.client();
        // A lone blocking call is read by its caller (the case that failed); a `go_with`
        // call is read by the loop.
        let result = match round % 4 {
            0 => ProbeClient::new(client).label(&larger),
            3 => {
                let (done, completions) = done_channel::<String>();
                client.go_with("Probe.Label", &large, &done);
                let completion = completions.recv_timeout(Duration::from_secs(10));
                completion.expect("the call ends").result
            }
            _ => ProbeClient::new(client).label(&large),
        };
        let err = result.unwrap_err();
        assert!(
            matches!(&err, RpcError::FrameTooLarge { detail, .. } if detail.contains("65536")),
            "round {round}: {err:?}"
        );
    }
    assert_back_to_idle(&server.server);
    assert_healthy(server.addr());
}

/// Sends a request header declaring a body over `server`'s 64 KiB limit, and reads the
/// error frame the server answers with; returns the socket.
fn declare_too_much_and_read_the_answer(server: &TestServer) -> TcpStream {
    let mut client = EvilClient::connect(server.addr());
    client.send_raw(&util::evil::header_declaring(3, 1024 * 1024));
    let answer = client.read_frames(1);
    assert_eq!((answer[0].kind, answer[0].seq), (FrameKind::Error, 3));
    client.stream
}

#[test]
fn after_an_error_frame_the_server_ends_its_stream_and_takes_what_the_peer_still_sends() {
    let server = server_with_a_64_kib_limit();
    let mut socket = declare_too_much_and_read_the_answer(&server);
    // The end of the server's stream follows the error frame, before any close.
    assert_eq!(socket.read(&mut [0u8; 64]).unwrap(), 0);
    // What the peer still sends is taken (no reset), until its own end closes the connection.
    socket.write_all(&[0u8; 256 * 1024]).unwrap();
    socket.shutdown(std::net::Shutdown::Write).unwrap();
    util::wait_until(
        "the drained connection closed",
        Duration::from_secs(5),
        || server.server.stats().open_connections == 0,
    );
    assert_back_to_idle(&server.server);
    assert_healthy(server.addr());
}

#[test]
fn a_peer_that_never_ends_its_stream_after_an_error_frame_is_closed_after_the_grace() {
    let server = server_with_a_64_kib_limit();
    // One peer stays silent and open, another writes for ever: neither holds its slot past
    // the close grace (1 s).
    let silent = declare_too_much_and_read_the_answer(&server);
    let mut endless = declare_too_much_and_read_the_answer(&server);
    let started = std::time::Instant::now();
    let write_failed = loop {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the server still takes the endless peer's bytes after 10 s"
        );
        if let Err(err) = endless.write_all(&[0u8; 64 * 1024]) {
            break err;
        }
    };
    assert!(
        matches!(
            write_failed.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        ),
        "{write_failed:?}"
    );
    util::wait_until("both connections closed", Duration::from_secs(5), || {
        server.server.stats().open_connections == 0
    });
    drop(silent);
    assert_back_to_idle(&server.server);
    assert_healthy(server.addr());
}

#[test]
fn a_reply_over_the_clients_limit_fails_that_call_with_frame_too_large() {
    let server = TestServer::start();
    let limits = FrameLimits {
        max_body_len: 64 * 1024,
        ..FrameLimits::default()
    };
    let client = Client::builder()
        .limits(limits)
        .dial(server.addr())
        .unwrap();
    let probe = ProbeClient::new(client.clone());
    let err = probe.fill(&(128 * 1024)).unwrap_err();
    assert!(
        matches!(err, RpcError::FrameTooLarge { declared: Some(d), limit: Some(l), .. }
            if d > l && l == 64 * 1024),
        "{err:?}"
    );
    // The stream cannot be resynchronised without reading the body: the connection is over
    // (a call racing its close fails with the close's `Protocol` error instead).
    let later = probe.fill(&1).unwrap_err();
    assert!(
        matches!(later, RpcError::Shutdown | RpcError::Protocol { .. }),
        "{later:?}"
    );
    assert_healthy(server.addr());
}

#[test]
fn a_reply_of_the_wrong_type_is_a_decode_error_for_that_call_only() {
    let server = TestServer::start();
    let client = server.client();
    let err = client
        .call::<_, String>("Probe.Echo", &vec![0xffu8, 0xfe])
        .unwrap_err();
    assert!(matches!(err, RpcError::Decode(_)), "{err:?}");
    assert_still_serving(&client);
}

#[test]
fn a_handler_panic_is_an_error_for_its_caller_and_nobody_else() {
    let server = TestServer::start();
    let client = server.client();
    let probe = ProbeClient::new(client.clone());
    for i in 0..20 {
        let err = probe.panic(&format!("boom {i}")).unwrap_err();
        assert!(
            matches!(&err, RpcError::HandlerPanicked { message } if message == &format!("boom {i}")),
            "{err:?}"
        );
        assert_still_serving(&client);
    }
    assert_healthy(server.addr());
}

#[test]
fn an_argument_over_the_frame_limit_fails_before_sending_and_the_client_stays_usable() {
    let server = TestServer::start();
    let client = server.client();
    let probe = ProbeClient::new(client.clone());
    let too_big = vec![7u8; 5 * 1024 * 1024];
    let err = probe.echo(&too_big).unwrap_err();
    assert!(
        matches!(err, RpcError::FrameTooLarge { declared: Some(d), limit: Some(l), .. } if d > l),
        "{err:?}"
    );
    assert_eq!(
        probe.echo(&vec![1u8; 1024 * 1024]).unwrap().len(),
        1024 * 1024
    );
    assert_still_serving(&client);
}

#[test]
fn dialing_a_closed_port_is_unreachable_and_retryable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = Client::dial_timeout(addr, Duration::from_secs(2)).unwrap_err();
    assert!(matches!(err, RpcError::Unreachable { .. }), "{err:?}");
    assert!(err.is_retryable());
}

/// Sends raw frames from an evil client and reads the server's answers.
fn raw_exchange(addr: std::net::SocketAddr, frames: &[Frame], replies: usize) -> Vec<Frame> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut out = BytesMut::new();
    for frame in frames {
        frame.encode(&mut out, &FrameLimits::default()).unwrap();
    }
    stream.write_all(&out).unwrap();
    let mut decoder = FrameDecoder::new(FrameLimits::default());
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < replies {
        let n = stream.read(&mut buf).expect("server answers within 5 s");
        assert!(n > 0, "server closed before answering");
        decoder.handle_bytes(&buf[..n]);
        while let Some(frame) = decoder.poll_frame().unwrap() {
            got.push(frame);
        }
    }
    got
}

#[test]
fn an_unknown_codec_gets_a_codec_independent_error_and_the_connection_keeps_serving() {
    let server = TestServer::start();
    let mut args = BytesMut::new();
    netrpc::CodecKind::Postcard
        .encode(&Args { a: 2, b: 3 }, &mut args)
        .unwrap();
    let frames = [
        Frame::request(1, "Arith.Multiply", 9, args.clone().freeze()),
        Frame::request(2, "Arith.Multiply", 1, args.freeze()),
    ];
    let replies = raw_exchange(server.addr(), &frames, 2);
    let unsupported = replies.iter().find(|f| f.seq == 1).unwrap();
    assert_eq!(unsupported.kind, FrameKind::Error);
    assert_eq!(unsupported.codec, 0);
    let body = ErrorBody::decode(&unsupported.body).unwrap();
    assert_eq!(body.code, ErrorCode::UnsupportedCodec);
    assert!(body.message.contains("codec id 9"), "{}", body.message);
    let answered = replies.iter().find(|f| f.seq == 2).unwrap();
    assert_eq!(answered.kind, FrameKind::Response);
}

#[test]
fn a_json_client_of_a_postcard_only_server_gets_unsupported_codec_not_a_wrong_value() {
    let server = TestServer::start_with(Server::builder().codecs(&[CodecKind::Postcard]).build());
    let json = ArithClient::new(
        Client::builder()
            .codec(CodecKind::Json)
            .dial(server.addr())
            .unwrap(),
    );
    let err = json.multiply(&Args { a: 2, b: 3 }).unwrap_err();
    assert!(matches!(err, RpcError::UnsupportedCodec { .. }), "{err:?}");
    assert_eq!(
        server
            .server
            .stats()
            .call_errors(ErrorCode::UnsupportedCodec),
        1
    );
    let postcard = server.arith();
    assert_eq!(postcard.multiply(&Args { a: 2, b: 3 }).unwrap(), 6);
}

#[test]
fn a_non_utf8_method_name_is_a_protocol_error_for_that_call() {
    let server = TestServer::start();
    let frames = [
        Frame::request(5, &b"Arith.\xff"[..], 1, &b"\x04\x06"[..]),
        Frame::request(6, "Arith.Multiply", 1, &b"\x04\x06"[..]),
    ];
    let replies = raw_exchange(server.addr(), &frames, 2);
    let bad = replies.iter().find(|f| f.seq == 5).unwrap();
    assert_eq!(
        ErrorBody::decode(&bad.body).unwrap().code,
        ErrorCode::Protocol
    );
    let good = replies.iter().find(|f| f.seq == 6).unwrap();
    assert_eq!(good.kind, FrameKind::Response);
    assert_eq!(&good.body[..], b"\x0c", "postcard 6 (zigzag 12)");
}

#[test]
fn ping_is_answered_with_pong() {
    let server = TestServer::start();
    let replies = raw_exchange(server.addr(), &[Frame::new(FrameKind::Ping, 77)], 1);
    assert_eq!(replies[0].kind, FrameKind::Pong);
    assert_eq!(replies[0].seq, 77);
}

#[test]
fn each_request_runs_the_method_and_codec_it_names_when_a_connection_switches_between_them() {
    // The server remembers the method a connection resolved last; switching methods,
    // services and codecs on one connection must never answer with the previous one.
    let server = TestServer::start();
    let encode = |codec: CodecKind, value: &dyn Fn(&mut BytesMut, CodecKind)| {
        let mut out = BytesMut::new();
        value(&mut out, codec);
        out.freeze()
    };
    let args =
        |out: &mut BytesMut, codec: CodecKind| codec.encode(&Args { a: 2, b: 3 }, out).unwrap();
    let ms = |out: &mut BytesMut, codec: CodecKind| codec.encode(&7u64, out).unwrap();
    let (postcard, json) = (CodecKind::Postcard, CodecKind::Json);
    let frames = [
        Frame::request(1, "Arith.Multiply", postcard.id(), encode(postcard, &args)),
        Frame::request(2, "Arith.Multiply", 9, encode(postcard, &args)),
        Frame::request(3, "Probe.Sleep", postcard.id(), encode(postcard, &ms)),
        Frame::request(4, "Arith.Nope", postcard.id(), encode(postcard, &args)),
        Frame::request(5, "Arith.Multiply", json.id(), encode(json, &args)),
        Frame::request(6, "Arith.Multiply", postcard.id(), encode(postcard, &args)),
    ];
    let replies = raw_exchange(server.addr(), &frames, frames.len());
    let reply = |seq: u64| replies.iter().find(|f| f.seq == seq).unwrap();
    let error_code = |seq: u64| ErrorBody::decode(&reply(seq).body).unwrap().code;
    let value = |seq: u64, codec: CodecKind| -> i64 {
        assert_eq!(reply(seq).kind, FrameKind::Response, "call {seq}");
        codec.decode(&reply(seq).body).unwrap()
    };
    assert_eq!(value(1, postcard), 6);
    assert_eq!(error_code(2), ErrorCode::UnsupportedCodec);
    let slept: u64 = postcard.decode(&reply(3).body).unwrap();
    assert_eq!(slept, 7, "Probe.Sleep answered as Arith.Multiply");
    assert_eq!(error_code(4), ErrorCode::UnknownMethod);
    assert_eq!(value(5, json), 6);
    assert_eq!(value(6, postcard), 6);
}

#[test]
fn a_method_name_over_the_servers_limit_is_a_protocol_error_not_a_lost_connection() {
    // The client's own limit lets the name through; the server's is tighter. The server
    // tells the caller why before it closes: a lost connection would read as retryable.
    let limits = FrameLimits {
        max_name_len: 8,
        ..FrameLimits::default()
    };
    let server = TestServer::start_with(Server::builder().limits(limits).build());
    let client = server.client();
    let err = client
        .call::<_, i64>("Arith.Multiply", &Args { a: 6, b: 7 })
        .unwrap_err();
    assert!(
        matches!(&err, RpcError::Protocol { detail } if detail.contains("8")),
        "{err:?}"
    );
    assert!(!err.is_retryable(), "{err:?}");
}

#[test]
fn metadata_over_the_servers_limit_is_a_protocol_error_not_a_lost_connection() {
    let limits = FrameLimits {
        max_metadata_len: 16,
        ..FrameLimits::default()
    };
    let server = TestServer::start_with(Server::builder().limits(limits).build());
    let mut evil = EvilClient::connect(server.addr());
    let mut frame = util::evil::request(7, "Arith.Multiply", &Args { a: 6, b: 7 });
    frame.metadata = vec![0u8; 64].into();
    evil.send_frames(&[frame]);
    let replies = evil.read_until_closed();
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!((replies[0].kind, replies[0].seq), (FrameKind::Error, 7));
    let body = ErrorBody::decode(&replies[0].body).unwrap();
    assert_eq!(body.code, ErrorCode::Protocol, "{body:?}");
    assert_healthy(server.addr());
}
