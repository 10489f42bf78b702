//! `Frame`: one whole message (header fields, method name, metadata, body), and its encoder.
//!
//! The encoder refuses to produce a frame the peer's decoder would refuse. [`FrameBuilder`]
//! lets a caller write the header first and encode the body straight into the same buffer,
//! so no body is copied.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::TransportError;
use crate::header::{FrameHeader, FrameKind, BODY_LEN_OFFSET, HEADER_LEN};
use crate::limits::FrameLimits;

/// One frame: the header's fixed fields plus the three variable sections.
///
/// The sections are [`Bytes`], so a decoded frame shares the read buffer instead of copying it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the frame is for.
    pub kind: FrameKind,
    /// Reserved flag bits; 0 in version 1.
    pub flags: u8,
    /// Codec id of the body; 0 when the body is not codec-encoded.
    pub codec: u8,
    /// Sequence id: chosen by the caller for a request, echoed by its reply.
    pub seq: u64,
    /// Relative deadline in milliseconds; 0 means none.
    pub deadline_ms: u32,
    /// Method name (`Service.Method`) for requests; empty otherwise. Not checked for UTF-8 here:
    /// the stream stays in sync, so a bad name is the core's call error, not a framing error.
    pub name: Bytes,
    /// Metadata section (see [`crate::Metadata`]); empty by default.
    pub metadata: Bytes,
    /// The body: encoded argument, reply, or error, depending on `kind`.
    pub body: Bytes,
}

impl Frame {
    /// This frame's head, borrowing its name and metadata.
    pub fn head(&self) -> FrameHead<'_> {
        FrameHead {
            kind: self.kind,
            flags: self.flags,
            codec: self.codec,
            seq: self.seq,
            deadline_ms: self.deadline_ms,
            name: &self.name,
            metadata: &self.metadata,
        }
    }

    /// A frame of `kind` with the given `seq`, no codec, and empty sections.
    pub fn new(kind: FrameKind, seq: u64) -> Self {
        Frame {
            kind,
            flags: 0,
            codec: 0,
            seq,
            deadline_ms: 0,
            name: Bytes::new(),
            metadata: Bytes::new(),
            body: Bytes::new(),
        }
    }

    /// A request calling `name` with an encoded argument `body` in codec `codec`.
    pub fn request(seq: u64, name: impl Into<Bytes>, codec: u8, body: impl Into<Bytes>) -> Self {
        Frame {
            codec,
            name: name.into(),
            body: body.into(),
            ..Frame::new(FrameKind::Request, seq)
        }
    }

    /// The header describing this frame.
    ///
    /// Section lengths beyond the wire fields' range are saturated; [`Frame::encode`] refuses
    /// them with a typed error before that matters.
    pub fn header(&self) -> FrameHeader {
        FrameHeader {
            kind: self.kind,
            flags: self.flags,
            codec: self.codec,
            seq: self.seq,
            deadline_ms: self.deadline_ms,
            name_len: u16::try_from(self.name.len()).unwrap_or(u16::MAX),
            metadata_len: u32::try_from(self.metadata.len()).unwrap_or(u32::MAX),
            body_len: u32::try_from(self.body.len()).unwrap_or(u32::MAX),
        }
    }

    /// Total encoded length: header plus sections.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.name.len() + self.metadata.len() + self.body.len()
    }

    /// Appends the encoded frame to `out`.
    ///
    /// # Errors
    ///
    /// [`TransportError::NameTooLong`], [`TransportError::MetadataTooLarge`] or
    /// [`TransportError::FrameTooLarge`] if a section breaks `limits`; nothing is written then.
    pub fn encode(&self, out: &mut BytesMut, limits: &FrameLimits) -> Result<(), TransportError> {
        check_section_lens(self, limits)?;
        out.reserve(self.encoded_len());
        self.header().write_to(out);
        out.put_slice(&self.name);
        out.put_slice(&self.metadata);
        out.put_slice(&self.body);
        Ok(())
    }
}

/// The parts of a frame that precede its body, borrowed: what [`FrameBuilder::start`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead<'a> {
    /// What the frame is for.
    pub kind: FrameKind,
    /// Reserved flag bits; 0 in version 1.
    pub flags: u8,
    /// Codec id of the body.
    pub codec: u8,
    /// Sequence id.
    pub seq: u64,
    /// Relative deadline in milliseconds; 0 means none.
    pub deadline_ms: u32,
    /// Method name (requests only).
    pub name: &'a [u8],
    /// Metadata section.
    pub metadata: &'a [u8],
}

impl<'a> FrameHead<'a> {
    /// A head of `kind` for `seq` with no codec, deadline, name or metadata.
    pub fn new(kind: FrameKind, seq: u64) -> Self {
        FrameHead {
            kind,
            flags: 0,
            codec: 0,
            seq,
            deadline_ms: 0,
            name: &[],
            metadata: &[],
        }
    }
}

/// Checks real section lengths (not the saturated header fields) against `limits`.
fn check_section_lens(frame: &Frame, limits: &FrameLimits) -> Result<(), TransportError> {
    check_name_and_metadata_lens(frame.kind, frame.seq, &frame.name, &frame.metadata, limits)?;
    check_body_len(frame.kind, frame.seq, frame.body.len(), limits)
}

fn check_name_and_metadata_lens(
    kind: FrameKind,
    seq: u64,
    name: &[u8],
    metadata: &[u8],
    limits: &FrameLimits,
) -> Result<(), TransportError> {
    // The wire fields are a u16 and a u32, so larger limits still stop there.
    let name_limit = limits.max_name_len.min(u16::MAX as usize);
    if name.len() > name_limit {
        return Err(TransportError::NameTooLong {
            seq,
            kind,
            len: name.len(),
            limit: name_limit,
        });
    }
    let metadata_limit = limits.max_metadata_len.min(u32::MAX as usize);
    if metadata.len() > metadata_limit {
        return Err(TransportError::MetadataTooLarge {
            seq,
            kind,
            len: metadata.len(),
            limit: metadata_limit,
        });
    }
    Ok(())
}

fn check_body_len(
    kind: FrameKind,
    seq: u64,
    body_len: usize,
    limits: &FrameLimits,
) -> Result<(), TransportError> {
    // The wire field is a u32, so a limit above 4 GiB still stops at u32::MAX.
    let limit = limits.max_body_len.min(u32::MAX as usize);
    if body_len > limit {
        return Err(TransportError::FrameTooLarge {
            seq,
            kind,
            declared: body_len,
            limit,
        });
    }
    Ok(())
}

/// Writes a frame whose body is encoded in place, straight after its header.
///
/// ```
/// use bytes::{BufMut, BytesMut};
/// use rpc_transport::{FrameBuilder, FrameHead, FrameKind, FrameLimits};
///
/// let mut out = BytesMut::new();
/// let mut head = FrameHead::new(FrameKind::Response, 7);
/// head.codec = 1;
/// let builder = FrameBuilder::start(&mut out, &head, &FrameLimits::default())?;
/// out.put_slice(b"\x2a"); // the body, written by a codec
/// builder.finish(&mut out)?;
/// assert_eq!(out.len(), 28 + 1);
/// # Ok::<(), rpc_transport::TransportError>(())
/// ```
#[derive(Debug)]
#[must_use = "a started frame must be finished, or its header claims an empty body"]
pub struct FrameBuilder {
    start: usize,
    body_start: usize,
    kind: FrameKind,
    seq: u64,
    limits: FrameLimits,
}

impl FrameBuilder {
    /// Writes the header (with a body length still to be patched), name and metadata of
    /// `head`. The caller then appends the body to `out`.
    ///
    /// # Errors
    ///
    /// [`TransportError::NameTooLong`] or [`TransportError::MetadataTooLarge`]; nothing is
    /// written then.
    pub fn start(
        out: &mut BytesMut,
        head: &FrameHead<'_>,
        limits: &FrameLimits,
    ) -> Result<FrameBuilder, TransportError> {
        check_name_and_metadata_lens(head.kind, head.seq, head.name, head.metadata, limits)?;
        let start = out.len();
        let header = FrameHeader {
            kind: head.kind,
            flags: head.flags,
            codec: head.codec,
            seq: head.seq,
            deadline_ms: head.deadline_ms,
            // Both fit: checked against limits no larger than the wire fields just above.
            name_len: head.name.len() as u16,
            metadata_len: head.metadata.len() as u32,
            body_len: 0, // patched by `finish`
        };
        // Room for a small body too, so that encoding one (most calls' arguments and
        // replies) does not grow the buffer a second time.
        out.reserve(HEADER_LEN + head.name.len() + head.metadata.len() + SMALL_BODY_ROOM);
        header.write_to(out);
        out.put_slice(head.name);
        out.put_slice(head.metadata);
        Ok(FrameBuilder {
            start,
            body_start: out.len(),
            kind: head.kind,
            seq: head.seq,
            limits: *limits,
        })
    }

    /// Patches the body length into the header once the body has been appended.
    ///
    /// # Errors
    ///
    /// [`TransportError::FrameTooLarge`] if the body broke the limit; the whole frame is then
    /// removed from `out`, which is left as it was before [`FrameBuilder::start`].
    pub fn finish(self, out: &mut BytesMut) -> Result<(), TransportError> {
        let body_len = out.len() - self.body_start;
        if let Err(err) = check_body_len(self.kind, self.seq, body_len, &self.limits) {
            out.truncate(self.start);
            return Err(err);
        }
        let at = self.start + BODY_LEN_OFFSET;
        // check_body_len capped body_len at u32::MAX, so the cast is exact.
        out[at..at + 4].copy_from_slice(&(body_len as u32).to_be_bytes());
        Ok(())
    }

    /// Abandons the frame, removing everything written since [`FrameBuilder::start`].
    pub fn abandon(self, out: &mut BytesMut) {
        out.truncate(self.start);
    }
}

/// Body bytes [`FrameBuilder::start`] makes room for beyond the head: most arguments and
/// replies are smaller.
const SMALL_BODY_ROOM: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoder_refuses_an_oversized_body_and_writes_nothing() {
        let limits = FrameLimits::with_max_body_len(8);
        let frame = Frame::request(1, "Arith.Multiply", 1, vec![0u8; 9]);
        let mut out = BytesMut::new();
        let err = frame.encode(&mut out, &limits).unwrap_err();
        assert_eq!(
            err,
            TransportError::FrameTooLarge {
                seq: 1,
                kind: FrameKind::Request,
                declared: 9,
                limit: 8
            }
        );
        assert!(out.is_empty());
    }

    #[test]
    fn encoder_refuses_long_names_and_metadata() {
        let limits = FrameLimits::default();
        let long_name = Frame::request(1, vec![b'a'; 256], 1, Bytes::new());
        assert!(matches!(
            long_name.encode(&mut BytesMut::new(), &limits),
            Err(TransportError::NameTooLong { len: 256, .. })
        ));
        let mut big_metadata = Frame::new(FrameKind::Request, 1);
        big_metadata.metadata = Bytes::from(vec![0u8; limits.max_metadata_len + 1]);
        assert!(matches!(
            big_metadata.encode(&mut BytesMut::new(), &limits),
            Err(TransportError::MetadataTooLarge { .. })
        ));
    }

    #[test]
    fn builder_matches_whole_frame_encoding() {
        let limits = FrameLimits::default();
        let mut whole = Frame::request(9, "Arith.Sum", 1, &b"\x0e\x10"[..]);
        whole.deadline_ms = 250;
        let mut expected = BytesMut::new();
        whole.encode(&mut expected, &limits).unwrap();

        let mut out = BytesMut::from(&b"previous"[..]);
        let builder = FrameBuilder::start(&mut out, &whole.head(), &limits).unwrap();
        out.put_slice(b"\x0e\x10");
        builder.finish(&mut out).unwrap();
        assert_eq!(&out[..8], b"previous");
        assert_eq!(&out[8..], &expected[..]);
    }

    #[test]
    fn builder_removes_an_oversized_frame_and_keeps_earlier_bytes() {
        let limits = FrameLimits::with_max_body_len(4);
        let mut out = BytesMut::from(&b"keep"[..]);
        let builder =
            FrameBuilder::start(&mut out, &FrameHead::new(FrameKind::Response, 3), &limits)
                .unwrap();
        out.put_slice(&[0u8; 5]);
        assert!(matches!(
            builder.finish(&mut out),
            Err(TransportError::FrameTooLarge { declared: 5, .. })
        ));
        assert_eq!(&out[..], b"keep");
    }
}
