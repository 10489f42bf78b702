//! Frame decoder: turns bytes read from a socket, in any chunking, into whole frames.
//!
//! It owns no socket (sans-I/O): the event loop hands it what `read` returned with
//! [`FrameDecoder::handle_bytes`] and takes frames out with [`FrameDecoder::poll_frame`].
//! Its buffer grows only with bytes that actually arrived, never with a declared length, and
//! is released whenever it empties, so an idle connection holds no buffer at all.

use bytes::{Buf, Bytes, BytesMut};

use crate::error::TransportError;
use crate::frame::Frame;
use crate::header::{check_prefix, FrameHeader, HEADER_LEN};
use crate::limits::FrameLimits;

/// Incremental decoder for one connection's inbound byte stream.
///
/// Contract: feed bytes in arrival order; call [`FrameDecoder::poll_frame`] until it returns
/// `Ok(None)` (several pipelined frames may be buffered). Magic and version are checked as
/// soon as their bytes arrive, the whole header as soon as its 28 bytes are in, before the rest of
/// the frame arrives. After an error the stream cannot be
/// resynchronised: the decoder is *failed*, ignores further input and keeps returning `Ok(None)`;
/// the connection should be closed.
#[derive(Debug)]
pub struct FrameDecoder {
    limits: FrameLimits,
    buf: BytesMut,
    /// Header of the frame being received, once validated.
    header: Option<FrameHeader>,
    failed: bool,
}

impl FrameDecoder {
    /// A decoder that enforces `limits`.
    pub fn new(limits: FrameLimits) -> Self {
        FrameDecoder {
            limits,
            buf: BytesMut::new(),
            header: None,
            failed: false,
        }
    }

    /// The limits this decoder enforces.
    pub fn limits(&self) -> &FrameLimits {
        &self.limits
    }

    /// Input: bytes that arrived from the peer.
    pub fn handle_bytes(&mut self, bytes: &[u8]) {
        if !self.failed {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Input: the peer closed its write side.
    ///
    /// # Errors
    ///
    /// [`TransportError::Truncated`] if the stream ended inside a frame. Ending exactly between
    /// frames is a normal close and returns `Ok(())`.
    pub fn handle_eof(&mut self) -> Result<(), TransportError> {
        if self.failed || !self.is_mid_frame() {
            return Ok(());
        }
        self.failed = true;
        let buffered = self.buffered_len();
        self.buf = BytesMut::new();
        Err(TransportError::Truncated { buffered })
    }

    /// Output: the next whole frame, or `None` until more bytes arrive.
    ///
    /// # Errors
    ///
    /// Any header error of [`FrameHeader::parse`]; the decoder is failed afterwards.
    pub fn poll_frame(&mut self) -> Result<Option<Frame>, TransportError> {
        if self.failed {
            return Ok(None);
        }
        let header = match self.header {
            Some(header) => header,
            None => match self.take_header() {
                Ok(Some(header)) => header,
                Ok(None) => return Ok(None),
                Err(err) => {
                    self.failed = true;
                    self.buf = BytesMut::new();
                    return Err(err);
                }
            },
        };
        if self.buf.len() < header.payload_len() {
            return Ok(None);
        }
        self.header = None;
        let frame = Frame {
            kind: header.kind,
            flags: header.flags,
            codec: header.codec,
            seq: header.seq,
            deadline_ms: header.deadline_ms,
            name: take_section(&mut self.buf, usize::from(header.name_len)),
            metadata: take_section(&mut self.buf, header.metadata_len as usize),
            body: take_section(&mut self.buf, header.body_len as usize),
        };
        if self.buf.is_empty() {
            // Give the allocation back (the frame may still share it): idle connections should
            // cost no buffer memory.
            self.buf = BytesMut::new();
        }
        Ok(Some(frame))
    }

    /// True while part of a frame has arrived but not all of it.
    pub fn is_mid_frame(&self) -> bool {
        self.header.is_some() || !self.buf.is_empty()
    }

    /// Bytes received but not yet returned as frames (including a parsed header's 28 bytes).
    pub fn buffered_len(&self) -> usize {
        self.buf.len() + if self.header.is_some() { HEADER_LEN } else { 0 }
    }

    /// True once a header error has been returned; the connection should be closed.
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    fn take_header(&mut self) -> Result<Option<FrameHeader>, TransportError> {
        let Some(bytes) = self.buf.get(..HEADER_LEN) else {
            // Refuse another protocol from its first bytes rather than waiting for 28 of them.
            check_prefix(&self.buf)?;
            return Ok(None);
        };
        let bytes: &[u8; HEADER_LEN] = bytes
            .try_into()
            .expect("the slice is exactly HEADER_LEN bytes long");
        let header = FrameHeader::parse(bytes, &self.limits)?;
        self.buf.advance(HEADER_LEN);
        self.header = Some(header);
        Ok(Some(header))
    }
}

/// The next `len` bytes of `buf` as a frame section, sharing `buf`'s allocation; an empty
/// section (a reply's name, metadata nobody sent) shares nothing, so it costs no reference
/// count to take and to drop.
fn take_section(buf: &mut BytesMut, len: usize) -> Bytes {
    if len == 0 {
        Bytes::new()
    } else {
        buf.split_to(len).freeze()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::header::FrameKind;

    fn sample_frames() -> Vec<Frame> {
        let mut frames = Vec::new();
        for (i, kind) in FrameKind::ALL.into_iter().enumerate() {
            let mut frame = Frame::new(kind, i as u64 * 1_000_003);
            frame.codec = 1;
            frame.deadline_ms = i as u32 * 7;
            if kind == FrameKind::Request {
                frame.name = Bytes::from_static(b"Arith.Multiply");
                frame.metadata = Bytes::from_static(b"\x05trace\x00\x02ab");
            }
            frame.body = Bytes::from(vec![i as u8; i * 3]);
            frames.push(frame);
        }
        frames.push(Frame::request(u64::MAX, "Arith.Sum", 2, vec![7u8; 70_000]));
        frames
    }

    fn encode_all(frames: &[Frame]) -> Vec<u8> {
        let mut out = BytesMut::new();
        for frame in frames {
            frame.encode(&mut out, &FrameLimits::default()).unwrap();
        }
        out.to_vec()
    }

    /// Feeds `bytes` in chunks of `chunk` bytes, polling after each chunk until `None`.
    fn decode_in_chunks(bytes: &[u8], chunk: usize) -> Result<Vec<Frame>, TransportError> {
        let mut decoder = FrameDecoder::new(FrameLimits::default());
        let mut frames = Vec::new();
        for piece in bytes.chunks(chunk) {
            decoder.handle_bytes(piece);
            while let Some(frame) = decoder.poll_frame()? {
                frames.push(frame);
            }
        }
        decoder.handle_eof()?;
        Ok(frames)
    }

    #[test]
    fn pipelined_frames_decode_whole() {
        let frames = sample_frames();
        let bytes = encode_all(&frames);
        assert_eq!(decode_in_chunks(&bytes, bytes.len()).unwrap(), frames);
    }

    #[test]
    fn frames_decode_byte_by_byte() {
        let frames = sample_frames();
        let bytes = encode_all(&frames);
        assert_eq!(decode_in_chunks(&bytes, 1).unwrap(), frames);
    }

    #[test]
    fn frames_decode_in_every_small_chunk_size() {
        let frames = sample_frames();
        let bytes = encode_all(&frames);
        for chunk in [2, 3, 5, 13, 27, 28, 29, 64, 4096, 65_536] {
            assert_eq!(
                decode_in_chunks(&bytes, chunk).unwrap(),
                frames,
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn a_split_at_every_offset_inside_the_first_header_decodes_the_same() {
        let frames = sample_frames();
        let bytes = encode_all(&frames);
        for split in 1..HEADER_LEN + 20 {
            let mut decoder = FrameDecoder::new(FrameLimits::default());
            let mut out = Vec::new();
            for piece in [&bytes[..split], &bytes[split..]] {
                decoder.handle_bytes(piece);
                while let Some(frame) = decoder.poll_frame().unwrap() {
                    out.push(frame);
                }
            }
            assert_eq!(out, frames, "split at {split}");
        }
    }

    #[test]
    fn eof_between_frames_is_a_normal_close() {
        let mut decoder = FrameDecoder::new(FrameLimits::default());
        decoder.handle_bytes(&encode_all(&sample_frames()[..1]));
        assert!(decoder.poll_frame().unwrap().is_some());
        assert_eq!(decoder.handle_eof(), Ok(()));
    }

    #[test]
    fn eof_at_every_length_inside_a_frame_is_truncated() {
        let bytes = encode_all(&sample_frames()[..1]);
        for len in 1..bytes.len() {
            let mut decoder = FrameDecoder::new(FrameLimits::default());
            decoder.handle_bytes(&bytes[..len]);
            assert_eq!(decoder.poll_frame(), Ok(None), "len {len}");
            assert_eq!(
                decoder.handle_eof(),
                Err(TransportError::Truncated { buffered: len }),
                "len {len}"
            );
        }
    }

    #[test]
    fn header_errors_surface_before_the_rest_of_the_frame_arrives() {
        let cases: [(&[u8], TransportError); 4] = [
            (
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\0",
                TransportError::BadMagic { got: 0x4745 },
            ),
            (&[0u8; HEADER_LEN], TransportError::BadMagic { got: 0 }),
            (
                &[
                    0x4e, 0x52, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0,
                    0, 0, 0, 0,
                ],
                TransportError::UnsupportedVersion {
                    got: 0,
                    supported: 1,
                },
            ),
            (
                &[
                    0x4e, 0x52, 1, 0xff, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0,
                    0, 0, 0, 0, 0,
                ],
                TransportError::UnknownKind { got: 0xff },
            ),
        ];
        for (bytes, expected) in cases {
            let mut decoder = FrameDecoder::new(FrameLimits::default());
            decoder.handle_bytes(bytes);
            assert_eq!(decoder.poll_frame(), Err(expected));
            assert!(decoder.is_failed());
            decoder.handle_bytes(&encode_all(&sample_frames()));
            assert_eq!(
                decoder.poll_frame(),
                Ok(None),
                "a failed decoder stays failed"
            );
        }
    }

    #[test]
    fn another_protocol_is_refused_from_its_first_bytes() {
        let cases: [(&[u8], TransportError); 3] = [
            (b"GE", TransportError::BadMagic { got: 0x4745 }),
            (
                b"GET / HTTP/1.1\r\n",
                TransportError::BadMagic { got: 0x4745 },
            ),
            (
                &[0x4e, 0x52, 2],
                TransportError::UnsupportedVersion {
                    got: 2,
                    supported: 1,
                },
            ),
        ];
        for (bytes, expected) in cases {
            let mut decoder = FrameDecoder::new(FrameLimits::default());
            decoder.handle_bytes(bytes);
            assert_eq!(decoder.poll_frame(), Err(expected));
        }
        for prefix in [&[0x4e, 0x52, 1][..], b"G"] {
            let mut decoder = FrameDecoder::new(FrameLimits::default());
            decoder.handle_bytes(prefix);
            assert_eq!(decoder.poll_frame(), Ok(None), "{prefix:?} waits for more");
        }
    }

    #[test]
    fn oversized_body_is_refused_from_the_header_without_growing_the_buffer() {
        let limits = FrameLimits::default();
        for declared in [limits.max_body_len as u32 + 1, u32::MAX] {
            let mut header = Frame::request(42, "Arith.Multiply", 1, Bytes::new()).header();
            header.body_len = declared;
            let mut bytes = Vec::new();
            header.write_to(&mut bytes);

            let mut decoder = FrameDecoder::new(limits);
            decoder.handle_bytes(&bytes);
            assert!(
                decoder.buf.capacity() < 1024,
                "no reservation from the header"
            );
            assert_eq!(
                decoder.poll_frame(),
                Err(TransportError::FrameTooLarge {
                    seq: 42,
                    kind: FrameKind::Request,
                    declared: declared as usize,
                    limit: limits.max_body_len
                })
            );
            assert_eq!(decoder.buf.capacity(), 0, "buffer released after the error");
        }
    }

    #[test]
    fn buffer_follows_arrived_bytes_not_declared_length() {
        let limits = FrameLimits::default();
        let mut header = Frame::request(1, "", 1, Bytes::new()).header();
        header.body_len = limits.max_body_len as u32;
        let mut bytes = Vec::new();
        header.write_to(&mut bytes);
        let mut decoder = FrameDecoder::new(limits);
        decoder.handle_bytes(&bytes);
        decoder.handle_bytes(&[0u8; 100]);
        assert_eq!(decoder.poll_frame(), Ok(None));
        assert!(
            decoder.buf.capacity() < 64 * 1024,
            "capacity {}",
            decoder.buf.capacity()
        );
        assert_eq!(decoder.buffered_len(), HEADER_LEN + 100);
    }

    #[test]
    fn names_over_the_limit_are_refused() {
        let limits = FrameLimits::default();
        let mut header = Frame::request(1, "", 1, Bytes::new()).header();
        header.name_len = u16::MAX;
        let mut bytes = Vec::new();
        header.write_to(&mut bytes);
        let mut decoder = FrameDecoder::new(limits);
        decoder.handle_bytes(&bytes);
        assert_eq!(
            decoder.poll_frame(),
            Err(TransportError::NameTooLong {
                seq: 1,
                kind: FrameKind::Request,
                len: u16::MAX as usize,
                limit: limits.max_name_len
            })
        );
    }

    #[test]
    fn buffer_is_released_once_drained() {
        let mut decoder = FrameDecoder::new(FrameLimits::default());
        decoder.handle_bytes(&encode_all(&sample_frames()));
        while decoder.poll_frame().unwrap().is_some() {}
        assert_eq!(decoder.buf.capacity(), 0);
        assert!(!decoder.is_mid_frame());
    }
}
