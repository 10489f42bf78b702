//! docs/PROTOCOL.md against the real server: the worked example's bytes are read out of the
//! document itself, sent over a raw socket, and the server's reply must equal the document's
//! bytes exactly. The example service's table of bodies in §8 (what the client encodes and the
//! server answers, in both codecs) and the connection-error rules of §9 are checked the same
//! way.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::BytesMut;
use netrpc::transport::{Frame, FrameDecoder, FrameKind, FrameLimits};
use netrpc::{Codec, CodecKind, ErrorBody, ErrorCode};
use util::{Args, TestServer};

const PROTOCOL_MD: &str = include_str!("../docs/PROTOCOL.md");

/// The hex bytes of every ```text block in section 8, in order.
///
/// A line is `offset  hex hex ...  comment`; a line indented by eight spaces continues the
/// previous one with more hex bytes. Anything after the bytes is commentary.
fn worked_example_blocks() -> Vec<Vec<u8>> {
    let section = PROTOCOL_MD
        .split("## 8. Worked example")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    let mut blocks = Vec::new();
    for block in section.split("```text\n").skip(1) {
        let body = block.split("```").next().unwrap();
        let mut bytes = Vec::new();
        for line in body.lines() {
            let mut tokens = line.split_whitespace();
            if !line.starts_with("        ") {
                // Skip the offset column (and the table's title line).
                match tokens.next() {
                    Some(offset) if offset.parse::<usize>() == Ok(bytes.len()) => {}
                    Some(_) => continue,
                    None => continue,
                }
            }
            bytes.extend(
                tokens
                    .take_while(|token| token.len() == 2)
                    .map_while(|token| u8::from_str_radix(token, 16).ok()),
            );
        }
        blocks.push(bytes);
    }
    blocks
}

fn connect(server: &TestServer) -> TcpStream {
    let socket = TcpStream::connect(server.addr()).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    socket
}

/// Reads exactly one frame and returns its bytes.
fn read_frame_bytes(socket: &mut TcpStream) -> Vec<u8> {
    let mut decoder = FrameDecoder::new(FrameLimits::default());
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while decoder.poll_frame().unwrap().is_none() {
        // One byte at a time, so nothing of a following frame is swallowed.
        assert_eq!(
            socket.read(&mut byte).unwrap(),
            1,
            "connection closed early"
        );
        raw.push(byte[0]);
        decoder.handle_bytes(&byte);
    }
    raw
}

fn encode(frame: &Frame) -> Vec<u8> {
    let mut out = BytesMut::new();
    frame.encode(&mut out, &FrameLimits::default()).unwrap();
    out.to_vec()
}

fn assert_closed(socket: &mut TcpStream) {
    let mut rest = Vec::new();
    socket.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "no more frames: {rest:02x?}");
}

#[test]
fn the_worked_example_is_what_the_server_sends() {
    let blocks = worked_example_blocks();
    let [request, response, error] = &blocks[..] else {
        panic!("expected three byte blocks in section 8, found {blocks:02x?}");
    };
    assert_eq!(request.len(), 44, "the request is 44 bytes: {request:02x?}");
    assert_eq!(response.len(), 29);
    assert_eq!(error.len(), 44);

    let server = TestServer::start();
    let mut socket = connect(&server);
    socket.write_all(request).unwrap();
    assert_eq!(&read_frame_bytes(&mut socket), response);

    let divide = Frame::request(2, "Arith.Divide", 1, vec![0x02, 0x00]);
    socket.write_all(&encode(&divide)).unwrap();
    assert_eq!(&read_frame_bytes(&mut socket), error);
    let body = ErrorBody::decode(&error[28..]).unwrap();
    assert_eq!(body, ErrorBody::new(ErrorCode::Service, "divide by zero"));
}

#[test]
fn the_json_variant_is_answered_in_json() {
    let server = TestServer::start();
    let mut socket = connect(&server);
    let request = Frame::request(3, "Arith.Multiply", 2, &br#"{"A":7,"B":8}"#[..]);
    socket.write_all(&encode(&request)).unwrap();
    let reply = read_frame_bytes(&mut socket);
    assert_eq!(
        &reply[..8],
        &[0x4e, 0x52, 0x01, 0x02, 0x00, 0x02, 0x00, 0x00]
    );
    assert_eq!(&reply[24..], &[0, 0, 0, 2, b'5', b'6']);
}

#[test]
fn a_foreign_protocol_is_closed_at_once() {
    let server = TestServer::start();
    let mut socket = connect(&server);
    socket.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    assert_closed(&mut socket);
    util::assert_healthy(server.addr());
}

#[test]
fn another_version_gets_a_protocol_error_under_seq_0_then_a_close() {
    let server = TestServer::start();
    let mut socket = connect(&server);
    let mut request = encode(&Frame::request(1, "Arith.Multiply", 1, vec![0x0e, 0x10]));
    request[2] = 2;
    socket.write_all(&request).unwrap();
    let reply = read_frame_bytes(&mut socket);
    let mut decoder = FrameDecoder::new(FrameLimits::default());
    decoder.handle_bytes(&reply);
    let frame = decoder.poll_frame().unwrap().unwrap();
    assert_eq!(
        (frame.kind, frame.seq, frame.codec),
        (FrameKind::Error, 0, 0)
    );
    assert_eq!(
        ErrorBody::decode(&frame.body).unwrap().code,
        ErrorCode::Protocol
    );
    assert_closed(&mut socket);
}

#[test]
fn a_request_with_seq_0_gets_a_protocol_error_under_seq_0_then_a_close() {
    let server = TestServer::start();
    let mut socket = connect(&server);
    let request = encode(&Frame::request(0, "Arith.Multiply", 1, vec![0x0e, 0x10]));
    socket.write_all(&request).unwrap();
    let reply = read_frame_bytes(&mut socket);
    let mut decoder = FrameDecoder::new(FrameLimits::default());
    decoder.handle_bytes(&reply);
    let frame = decoder.poll_frame().unwrap().unwrap();
    assert_eq!((frame.kind, frame.seq), (FrameKind::Error, 0));
    let body = ErrorBody::decode(&frame.body).unwrap();
    assert_eq!(body.code, ErrorCode::Protocol);
    assert!(body.message.contains("reserved"), "{body:?}");
    assert_closed(&mut socket);
}

#[test]
fn a_bad_method_name_is_a_call_error_and_the_connection_stays_open() {
    let server = TestServer::start();
    let mut socket = connect(&server);
    for (seq, name, code) in [
        (1, &b"NoDot"[..], ErrorCode::Protocol),
        (2, &b"Arith.\xff"[..], ErrorCode::Protocol),
        (3, &b"Nope.Multiply"[..], ErrorCode::UnknownService),
        (4, &b"Arith.Nope"[..], ErrorCode::UnknownMethod),
    ] {
        let request = Frame::request(
            seq,
            bytes::Bytes::copy_from_slice(name),
            1,
            vec![0x0e, 0x10],
        );
        socket.write_all(&encode(&request)).unwrap();
        let reply = read_frame_bytes(&mut socket);
        assert_eq!(reply[3], FrameKind::Error as u8, "{name:?}");
        assert_eq!(&reply[8..16], &seq.to_be_bytes());
        assert_eq!(
            ErrorBody::decode(&reply[28..]).unwrap().code,
            code,
            "{name:?}"
        );
    }
    socket
        .write_all(&encode(&Frame::request(
            5,
            "Arith.Multiply",
            1,
            vec![0x0e, 0x10],
        )))
        .unwrap();
    assert_eq!(read_frame_bytes(&mut socket).last(), Some(&0x70));
}

#[test]
fn ping_is_answered_with_pong_under_the_same_seq() {
    let server = TestServer::start();
    let mut socket = connect(&server);
    socket
        .write_all(&encode(&Frame::new(FrameKind::Ping, 77)))
        .unwrap();
    let reply = read_frame_bytes(&mut socket);
    assert_eq!(reply[3], FrameKind::Pong as u8);
    assert_eq!(&reply[8..16], &77u64.to_be_bytes());
}

/// The rows of the example table in section 8: call, postcard body, JSON body, postcard reply,
/// JSON reply, each cell as written.
fn example_table_rows() -> Vec<Vec<String>> {
    let section = PROTOCOL_MD
        .split("## 8. Worked example")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    section
        .lines()
        .filter(|line| line.starts_with("| `") && line.contains(")` |"))
        .map(|line| {
            line.trim_matches('|')
                .split(" | ")
                .map(|cell| cell.trim().to_owned())
                .collect()
        })
        .collect()
}

/// The text between the first pair of backticks of `cell`.
fn quoted(cell: &str) -> &str {
    cell.split('`').nth(1).unwrap()
}

fn hex_bytes(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|byte| u8::from_str_radix(byte, 16).unwrap())
        .collect()
}

#[test]
fn the_example_table_is_what_client_and_server_send() {
    let rows = example_table_rows();
    assert_eq!(rows.len(), 7, "{rows:?}");
    let server = TestServer::start();
    let mut socket = connect(&server);
    // A fresh seq for every request: a seq is freed only just after its reply is sent (§4).
    let mut seq = 0u64;
    for row in &rows {
        let [call, postcard, json, postcard_reply, json_reply] = &row[..] else {
            panic!("five cells: {row:?}");
        };
        // `Divide(-7, 2)` → method "Divide", A = -7, B = 2.
        let call = quoted(call);
        let (method, args) = call.trim_end_matches(')').split_once('(').unwrap();
        let (a, b) = args.split_once(", ").unwrap();
        let args = Args {
            a: a.parse().unwrap(),
            b: b.parse().unwrap(),
        };
        let cases = [
            (
                CodecKind::Postcard,
                hex_bytes(quoted(postcard)),
                postcard_reply,
            ),
            (
                CodecKind::Json,
                quoted(json).as_bytes().to_vec(),
                json_reply,
            ),
        ];
        for (codec, body, reply) in cases {
            seq += 1;
            let mut encoded = BytesMut::new();
            codec.encode(&args, &mut encoded).unwrap();
            assert_eq!(
                &encoded[..],
                &body[..],
                "the client's {codec:?} body for {call}"
            );

            let name = format!("Arith.{method}");
            let request = Frame::request(seq, name.into_bytes(), codec.id(), body);
            socket.write_all(&encode(&request)).unwrap();
            let answer = read_frame_bytes(&mut socket);
            assert_eq!(&answer[8..16], &seq.to_be_bytes());
            if reply.starts_with("Error frame") || reply == "the same" {
                assert_eq!(answer[3], FrameKind::Error as u8, "{call} {codec:?}");
                let body = ErrorBody::decode(&answer[28..]).unwrap();
                assert_eq!(
                    body,
                    ErrorBody::new(ErrorCode::Service, quoted(postcard_reply))
                );
            } else {
                assert_eq!(answer[3], FrameKind::Response as u8, "{call} {codec:?}");
                assert_eq!(answer[5], codec.id());
                let expected = match codec {
                    CodecKind::Postcard => hex_bytes(quoted(reply)),
                    _ => quoted(reply).as_bytes().to_vec(),
                };
                assert_eq!(&answer[28..], &expected[..], "{call} {codec:?}");
            }
        }
    }
}

#[test]
fn the_version_is_checked_on_every_frame_not_only_the_first() {
    let server = TestServer::start();
    let mut socket = connect(&server);
    socket
        .write_all(&encode(&Frame::request(
            1,
            "Arith.Multiply",
            1,
            vec![0x0e, 0x10],
        )))
        .unwrap();
    assert_eq!(read_frame_bytes(&mut socket).last(), Some(&0x70));
    let mut request = encode(&Frame::request(2, "Arith.Multiply", 1, vec![0x0e, 0x10]));
    request[2] = 2;
    socket.write_all(&request).unwrap();
    let reply = read_frame_bytes(&mut socket);
    assert_eq!(reply[3], FrameKind::Error as u8);
    assert_eq!(&reply[8..16], &0u64.to_be_bytes());
    assert_eq!(
        ErrorBody::decode(&reply[28..]).unwrap().code,
        ErrorCode::Protocol
    );
    assert_closed(&mut socket);
}
