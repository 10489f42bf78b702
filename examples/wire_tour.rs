//! Wire tour: what netrpc puts on the socket, byte by byte (SEEDS §5).
//!
//! Starts an `Arith` server on 127.0.0.1, then plays a client by hand over a plain
//! `TcpStream`: it builds request frames, prints every field of every byte it sends, and prints
//! the reply bytes the server sent back the same way. It shows, in both codecs:
//!
//! 1. a request for `Arith.Multiply` with `A = 7, B = 8`, and its response (56);
//! 2. `Arith.Divide` by zero, and the error response the method's error becomes;
//! 3. the response fed to a [`FrameDecoder`] one byte at a time: no frame until the last byte.
//!
//! Run: `cargo run --example wire_tour`. The layout it prints is the one `docs/PROTOCOL.md`
//! specifies.

#[path = "support/arith.rs"]
mod arith;

use std::error::Error;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use arith::{Args, ArithServer, Calculator};
use bytes::BytesMut;
use netrpc::transport::{Frame, FrameDecoder, FrameKind, FrameLimits, HEADER_LEN};
use netrpc::{Codec, CodecKind, ErrorBody, Server};

/// The header's fields: offset, size and name, in wire order (see `docs/PROTOCOL.md`).
const HEADER_FIELDS: [(usize, usize, &str); 10] = [
    (0, 2, "magic \"NR\""),
    (2, 1, "version"),
    (3, 1, "kind"),
    (4, 1, "flags"),
    (5, 1, "codec id"),
    (6, 2, "name_len"),
    (8, 8, "seq"),
    (16, 4, "deadline_ms"),
    (20, 4, "metadata_len"),
    (24, 4, "body_len"),
];

fn main() -> Result<(), Box<dyn Error>> {
    let server = Server::new();
    server.register(ArithServer::new(Calculator))?;
    let running = server.serve("127.0.0.1:0")?;
    let mut socket = TcpStream::connect(running.local_addr())?;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    println!(
        "server on {}; speaking the protocol by hand\n",
        running.local_addr()
    );

    let mut seq = 0;
    for codec in [CodecKind::Postcard, CodecKind::Json] {
        for (method, args) in [
            ("Arith.Multiply", Args { a: 7, b: 8 }),
            ("Arith.Divide", Args { a: 1, b: 0 }),
        ] {
            seq += 1;
            let mut body = BytesMut::new();
            codec.encode(&args, &mut body)?;
            let mut request = Frame::request(seq, method, codec.id(), body.freeze());
            request.deadline_ms = 10_000;
            let mut bytes = BytesMut::new();
            request.encode(&mut bytes, &FrameLimits::default())?;
            println!(
                "=== {method}(A={}, B={}) in {}: request, {} bytes",
                args.a,
                args.b,
                codec.name(),
                bytes.len()
            );
            dump(&bytes);
            socket.write_all(&bytes)?;

            let (reply, reply_bytes) = read_frame(&mut socket)?;
            println!("--- reply, {} bytes", reply_bytes.len());
            dump(&reply_bytes);
            explain_reply(codec, &reply)?;
        }
    }

    byte_by_byte(&mut socket, seq + 1)?;
    running.shutdown();
    Ok(())
}

/// Prints a frame's bytes field by field: the header, then name, metadata and body.
fn dump(bytes: &[u8]) {
    for (offset, size, name) in HEADER_FIELDS {
        let field = &bytes[offset..offset + size];
        println!(
            "  {offset:>2}  {:<24} {name} = {}",
            hex(field),
            field_value(name, field)
        );
    }
    let read_len = |offset: usize, size: usize| {
        bytes[offset..offset + size]
            .iter()
            .fold(0usize, |acc, &b| acc << 8 | usize::from(b))
    };
    let name_end = HEADER_LEN + read_len(6, 2);
    let metadata_end = name_end + read_len(20, 4);
    for (label, section) in [
        ("name", &bytes[HEADER_LEN..name_end]),
        ("metadata", &bytes[name_end..metadata_end]),
        ("body", &bytes[metadata_end..]),
    ] {
        if !section.is_empty() {
            println!("  {label}: {}", hex(section));
            println!(
                "  {:width$}  {:?}",
                "",
                printable(section),
                width = label.len()
            );
        }
    }
}

/// A header field's meaning, for the dump.
fn field_value(name: &str, field: &[u8]) -> String {
    let number = field.iter().fold(0u64, |acc, &b| acc << 8 | u64::from(b));
    match name {
        "magic \"NR\"" => format!("0x{number:04x}"),
        "kind" => match FrameKind::from_u8(field[0]) {
            Some(kind) => format!("{number} ({kind:?})"),
            None => format!("{number} (unknown)"),
        },
        "codec id" => match CodecKind::from_id(field[0]) {
            Some(codec) => format!("{number} ({})", codec.name()),
            None => format!("{number} (none: not a codec-encoded body)"),
        },
        _ => number.to_string(),
    }
}

/// Reads one whole frame from the socket, returning it and the exact bytes it came in.
fn read_frame(socket: &mut TcpStream) -> Result<(Frame, Vec<u8>), Box<dyn Error>> {
    let mut decoder = FrameDecoder::new(FrameLimits::default());
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(frame) = decoder.poll_frame()? {
            return Ok((frame, raw));
        }
        let n = socket.read(&mut chunk)?;
        if n == 0 {
            return Err("the server closed the connection".into());
        }
        raw.extend_from_slice(&chunk[..n]);
        decoder.handle_bytes(&chunk[..n]);
    }
}

/// Says what a reply means: a decoded value, or the error body's code and message.
fn explain_reply(codec: CodecKind, reply: &Frame) -> Result<(), Box<dyn Error>> {
    match reply.kind {
        FrameKind::Response => {
            let value: i64 = codec.decode(&reply.body)?;
            println!("  => response to #{}: {value}\n", reply.seq);
        }
        FrameKind::Error => {
            let error = ErrorBody::decode(&reply.body).ok_or("error body too short")?;
            println!(
                "  => error response to #{}: code {} ({:?}), message {:?}\n",
                reply.seq,
                error.code.as_u16(),
                error.code,
                error.message
            );
        }
        other => println!("  => unexpected {other:?} frame\n"),
    }
    Ok(())
}

/// Sends one more request and feeds its reply to a decoder one byte at a time.
fn byte_by_byte(socket: &mut TcpStream, seq: u64) -> Result<(), Box<dyn Error>> {
    let mut body = BytesMut::new();
    CodecKind::Postcard.encode(&Args { a: 6, b: 7 }, &mut body)?;
    let request = Frame::request(
        seq,
        "Arith.Multiply",
        CodecKind::Postcard.id(),
        body.freeze(),
    );
    let mut bytes = BytesMut::new();
    request.encode(&mut bytes, &FrameLimits::default())?;
    socket.write_all(&bytes)?;
    let (_, reply_bytes) = read_frame(socket)?;

    println!(
        "=== the reply to #{seq}, fed to a fresh decoder one byte at a time ({} bytes)",
        reply_bytes.len()
    );
    let mut decoder = FrameDecoder::new(FrameLimits::default());
    for (i, byte) in reply_bytes.iter().enumerate() {
        decoder.handle_bytes(&[*byte]);
        match decoder.poll_frame()? {
            None if i + 1 == HEADER_LEN => {
                println!(
                    "  byte {:>2}: header complete and checked, body still to come",
                    i + 1
                )
            }
            None => {}
            Some(frame) => {
                let value: i64 = CodecKind::Postcard.decode(&frame.body)?;
                println!(
                    "  byte {:>2}: whole frame: {:?} #{} = {value}",
                    i + 1,
                    frame.kind,
                    frame.seq
                );
            }
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn printable(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '.'
            }
        })
        .collect()
}
