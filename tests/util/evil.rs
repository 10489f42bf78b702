//! The evil client: a raw `TcpStream` that writes hand-built frames or bytes and reads
//! whatever comes back, every read bounded by a timeout.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use netrpc::transport::{Frame, FrameDecoder, FrameLimits};

use super::Args;
use netrpc::{Codec, CodecKind};

/// How long any read of the evil client waits.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A raw connection to a server.
pub struct EvilClient {
    pub stream: TcpStream,
    decoder: FrameDecoder,
}

impl EvilClient {
    pub fn connect(addr: SocketAddr) -> EvilClient {
        let stream = TcpStream::connect(addr).expect("connect the evil client");
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("set a read timeout");
        EvilClient {
            stream,
            decoder: FrameDecoder::new(FrameLimits::default()),
        }
    }

    /// Wraps an accepted stream (the evil server's side).
    pub fn from_stream(stream: TcpStream) -> EvilClient {
        EvilClient {
            stream,
            decoder: FrameDecoder::new(FrameLimits::default()),
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write raw bytes");
    }

    pub fn send_frames(&mut self, frames: &[Frame]) {
        let mut out = BytesMut::new();
        for frame in frames {
            frame
                .encode(&mut out, &FrameLimits::default())
                .expect("encode a frame");
        }
        self.send_raw(&out);
    }

    /// Reads until `count` frames have arrived; returns those, leaving later ones for the
    /// next read.
    pub fn read_frames(&mut self, count: usize) -> Vec<Frame> {
        let mut frames = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            while frames.len() < count {
                match self.decoder.poll_frame().expect("server frames decode") {
                    Some(frame) => frames.push(frame),
                    None => break,
                }
            }
            if frames.len() >= count {
                return frames;
            }
            let n = self.stream.read(&mut buf).expect("server answers in time");
            assert!(
                n > 0,
                "server closed after {} of {count} frames",
                frames.len()
            );
            self.decoder.handle_bytes(&buf[..n]);
        }
    }

    /// Reads at most `max` bytes (waiting for some), keeping them for the next
    /// [`EvilClient::read_frames`]: a peer that reads a trickle.
    pub fn read_some(&mut self, max: usize) {
        let mut buf = vec![0u8; max];
        let n = self.stream.read(&mut buf).expect("server sends in time");
        self.decoder.handle_bytes(&buf[..n]);
    }

    /// Reads frames until the server closes; panics if it does not within the read timeout.
    pub fn read_until_closed(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            while let Some(frame) = self.decoder.poll_frame().expect("server frames decode") {
                frames.push(frame);
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return frames,
                Ok(n) => self.decoder.handle_bytes(&buf[..n]),
                Err(err) if err.kind() == ErrorKind::ConnectionReset => return frames,
                Err(err) => panic!("the server did not close the connection: {err}"),
            }
        }
    }

    /// Time until the server closes the connection (reading and discarding what it sends).
    pub fn time_until_closed(&mut self) -> Duration {
        let started = Instant::now();
        self.read_until_closed();
        started.elapsed()
    }
}

/// A request frame for `method` with `args` encoded in postcard.
pub fn request<A: serde::Serialize>(seq: u64, method: &str, args: &A) -> Frame {
    let mut body = BytesMut::new();
    CodecKind::Postcard
        .encode(args, &mut body)
        .expect("encode the arguments");
    Frame::request(
        seq,
        method.to_owned(),
        CodecKind::Postcard.id(),
        body.freeze(),
    )
}

/// The bytes of a good `Arith.Multiply` request (7 × 8), seq 1, in postcard.
pub fn valid_request_bytes() -> Vec<u8> {
    let mut out = BytesMut::new();
    request(1, "Arith.Multiply", &Args { a: 7, b: 8 })
        .encode(&mut out, &FrameLimits::default())
        .expect("encode a request");
    out.to_vec()
}

/// A request header for `Arith.Multiply` with seq `seq` that declares a body of `declared`
/// bytes, followed by the method name and no body.
pub fn header_declaring(seq: u64, declared: u32) -> Vec<u8> {
    let mut header = request(seq, "Arith.Multiply", &Args { a: 1, b: 2 }).header();
    header.body_len = declared;
    let mut bytes = Vec::new();
    header.write_to(&mut bytes);
    bytes.extend_from_slice(b"Arith.Multiply");
    bytes
}
