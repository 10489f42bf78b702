//! The fixed frame header: its byte layout, the frame kinds, and reading and writing it.
//!
//! This is the one place the wire format is defined in code; `docs/PROTOCOL.md` is the same
//! table for readers of a packet capture or authors of a client in another language.
//!
//! # Layout
//!
//! Every frame starts with a 28-byte header. All integers are big-endian (network order).
//!
//! | offset | size | field          | meaning                                                    |
//! |-------:|-----:|----------------|------------------------------------------------------------|
//! |      0 |    2 | `magic`        | `0x4E 0x52` (ASCII `NR`)                                    |
//! |      2 |    1 | `version`      | protocol version, `1`                                       |
//! |      3 |    1 | `kind`         | [`FrameKind`]: 1 request .. 7 go-away                       |
//! |      4 |    1 | `flags`        | reserved: senders write 0, receivers ignore unknown bits    |
//! |      5 |    1 | `codec`        | codec id of the body (1 postcard, 2 JSON; 0 = no body)      |
//! |      6 |    2 | `name_len`     | length of the method name that follows the header           |
//! |      8 |    8 | `seq`          | sequence id chosen by the caller, echoed in the reply       |
//! |     16 |    4 | `deadline_ms`  | relative deadline in milliseconds, 0 = none                 |
//! |     20 |    4 | `metadata_len` | length of the metadata section                              |
//! |     24 |    4 | `body_len`     | length of the body                                          |
//! |     28 |    … | name, metadata, body, in that order, with the lengths above             |
//!
//! # Example
//!
//! A request for `Arith.Multiply` with sequence id 1, a 10 s deadline, no metadata and the
//! 2-byte postcard body `0e 10` (A = 7, B = 8):
//!
//! ```text
//! 4e 52 01 01 00 01 00 0e  00 00 00 00 00 00 00 01   magic, v1, request, flags, postcard, name_len 14, seq 1
//! 00 00 27 10 00 00 00 00  00 00 00 02               deadline 10000 ms, metadata 0, body 2
//! 41 72 69 74 68 2e 4d 75  6c 74 69 70 6c 79         "Arith.Multiply"
//! 0e 10                                              body
//! ```

use byteorder::{BigEndian, ByteOrder};
use bytes::BufMut;

use crate::error::TransportError;
use crate::limits::FrameLimits;

/// The two bytes every frame starts with: ASCII `NR`.
pub const MAGIC: u16 = 0x4E52;

/// The protocol version this crate speaks and accepts.
pub const VERSION: u8 = 1;

/// Length in bytes of the fixed header that starts every frame.
pub const HEADER_LEN: usize = 28;

/// What a frame is for; the `kind` byte of the header.
///
/// Requests flow from client to server; responses and error responses flow back under the
/// request's sequence id. The other kinds manage the connection itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// A call: `name` is `Service.Method`, the body holds the encoded argument.
    Request = 1,
    /// A successful reply: the body holds the encoded reply value.
    Response = 2,
    /// A failed call: the body is a codec-independent error (see `docs/PROTOCOL.md`).
    Error = 3,
    /// The caller gave up on the call with this `seq`; the server may skip or abandon it.
    Cancel = 4,
    /// A liveness probe; the peer answers with a [`FrameKind::Pong`] carrying the same `seq`.
    Ping = 5,
    /// The answer to a [`FrameKind::Ping`].
    Pong = 6,
    /// The sender is shutting down: `seq` is the last request it accepted; later ones are refused.
    GoAway = 7,
}

impl FrameKind {
    /// Every kind, in wire order.
    pub const ALL: [FrameKind; 7] = [
        FrameKind::Request,
        FrameKind::Response,
        FrameKind::Error,
        FrameKind::Cancel,
        FrameKind::Ping,
        FrameKind::Pong,
        FrameKind::GoAway,
    ];

    /// The kind for a wire byte, or `None` if the byte names no kind.
    pub const fn from_u8(byte: u8) -> Option<FrameKind> {
        match byte {
            1 => Some(FrameKind::Request),
            2 => Some(FrameKind::Response),
            3 => Some(FrameKind::Error),
            4 => Some(FrameKind::Cancel),
            5 => Some(FrameKind::Ping),
            6 => Some(FrameKind::Pong),
            7 => Some(FrameKind::GoAway),
            _ => None,
        }
    }

    /// The wire byte for this kind.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// A lowercase name for messages and statistics, e.g. `"request"`.
    pub const fn name(self) -> &'static str {
        match self {
            FrameKind::Request => "request",
            FrameKind::Response => "response",
            FrameKind::Error => "error",
            FrameKind::Cancel => "cancel",
            FrameKind::Ping => "ping",
            FrameKind::Pong => "pong",
            FrameKind::GoAway => "go-away",
        }
    }
}

/// The fixed 28-byte header of one frame, as plain integers.
///
/// The lengths say how many bytes of name, metadata and body follow the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// What the frame is for.
    pub kind: FrameKind,
    /// Reserved flag bits; 0 in version 1.
    pub flags: u8,
    /// Codec id of the body; 0 when the body is not codec-encoded.
    pub codec: u8,
    /// Sequence id: chosen by the caller for a request, echoed by its reply.
    pub seq: u64,
    /// Relative deadline in milliseconds from when the frame was sent; 0 means none.
    pub deadline_ms: u32,
    /// Length of the method name in bytes.
    pub name_len: u16,
    /// Length of the metadata section in bytes.
    pub metadata_len: u32,
    /// Length of the body in bytes.
    pub body_len: u32,
}

impl FrameHeader {
    /// Reads and validates a header from exactly [`HEADER_LEN`] bytes.
    ///
    /// Every check uses the header alone, so a hostile length is refused before any buffer
    /// grows to hold it.
    ///
    /// # Errors
    ///
    /// [`TransportError::BadMagic`], [`TransportError::UnsupportedVersion`],
    /// [`TransportError::UnknownKind`], [`TransportError::NameTooLong`],
    /// [`TransportError::MetadataTooLarge`] or [`TransportError::FrameTooLarge`] when the
    /// header breaks the format or `limits`.
    pub fn parse(bytes: &[u8; HEADER_LEN], limits: &FrameLimits) -> Result<Self, TransportError> {
        check_prefix(bytes)?;
        let kind =
            FrameKind::from_u8(bytes[3]).ok_or(TransportError::UnknownKind { got: bytes[3] })?;
        let header = FrameHeader {
            kind,
            flags: bytes[4],
            codec: bytes[5],
            name_len: BigEndian::read_u16(&bytes[6..8]),
            seq: BigEndian::read_u64(&bytes[8..16]),
            deadline_ms: BigEndian::read_u32(&bytes[16..20]),
            metadata_len: BigEndian::read_u32(&bytes[20..24]),
            body_len: BigEndian::read_u32(&bytes[24..28]),
        };
        header.check(limits)?;
        Ok(header)
    }

    /// Checks the three lengths against `limits`.
    ///
    /// # Errors
    ///
    /// [`TransportError::NameTooLong`], [`TransportError::MetadataTooLarge`] or
    /// [`TransportError::FrameTooLarge`], each carrying `seq` and `kind`, so a server can tell
    /// the sender why its frame was refused.
    pub fn check(&self, limits: &FrameLimits) -> Result<(), TransportError> {
        if usize::from(self.name_len) > limits.max_name_len {
            return Err(TransportError::NameTooLong {
                seq: self.seq,
                kind: self.kind,
                len: usize::from(self.name_len),
                limit: limits.max_name_len,
            });
        }
        if self.metadata_len as usize > limits.max_metadata_len {
            return Err(TransportError::MetadataTooLarge {
                seq: self.seq,
                kind: self.kind,
                len: self.metadata_len as usize,
                limit: limits.max_metadata_len,
            });
        }
        if self.body_len as usize > limits.max_body_len {
            return Err(TransportError::FrameTooLarge {
                seq: self.seq,
                kind: self.kind,
                declared: self.body_len as usize,
                limit: limits.max_body_len,
            });
        }
        Ok(())
    }

    /// Bytes that follow the header: name, metadata and body together.
    pub fn payload_len(&self) -> usize {
        usize::from(self.name_len) + self.metadata_len as usize + self.body_len as usize
    }

    /// Appends the 28 header bytes to `out`.
    pub fn write_to(&self, out: &mut impl BufMut) {
        out.put_u16(MAGIC);
        out.put_u8(VERSION);
        out.put_u8(self.kind.as_u8());
        out.put_u8(self.flags);
        out.put_u8(self.codec);
        out.put_u16(self.name_len);
        out.put_u64(self.seq);
        out.put_u32(self.deadline_ms);
        out.put_u32(self.metadata_len);
        out.put_u32(self.body_len);
    }
}

/// Offset of `body_len` inside the header, for patching it after a body is encoded in place.
pub(crate) const BODY_LEN_OFFSET: usize = 24;

/// Checks the magic and version bytes of a header that may not have fully arrived yet.
///
/// `bytes` is the start of a frame, of any length: the checks that its length allows are made,
/// the rest wait. This lets a receiver refuse a peer speaking another protocol (an HTTP request,
/// say) from its first bytes, without waiting for a whole header that may never come.
///
/// # Errors
///
/// [`TransportError::BadMagic`] or [`TransportError::UnsupportedVersion`].
pub fn check_prefix(bytes: &[u8]) -> Result<(), TransportError> {
    // Magic is judged on both its bytes, so the error (which quotes them) is the same however
    // the stream was split.
    match bytes {
        [first, second, ..] if u16::from_be_bytes([*first, *second]) != MAGIC => {
            Err(TransportError::BadMagic {
                got: u16::from_be_bytes([*first, *second]),
            })
        }
        [_, _, version, ..] if *version != VERSION => Err(TransportError::UnsupportedVersion {
            got: *version,
            supported: VERSION,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(kind: FrameKind) -> FrameHeader {
        FrameHeader {
            kind,
            flags: 0,
            codec: 1,
            seq: 0x0102_0304_0506_0708,
            deadline_ms: 10_000,
            name_len: 14,
            metadata_len: 3,
            body_len: 2,
        }
    }

    fn to_array(header: &FrameHeader) -> [u8; HEADER_LEN] {
        let mut out = Vec::new();
        header.write_to(&mut out);
        out.try_into()
            .expect("write_to writes exactly HEADER_LEN bytes")
    }

    #[test]
    fn every_kind_round_trips_through_the_header() {
        for kind in FrameKind::ALL {
            let header = sample(kind);
            let parsed = FrameHeader::parse(&to_array(&header), &FrameLimits::default());
            assert_eq!(parsed, Ok(header), "kind {kind:?}");
        }
    }

    #[test]
    fn header_bytes_match_the_documented_layout() {
        let header = FrameHeader {
            kind: FrameKind::Request,
            flags: 0,
            codec: 1,
            seq: 1,
            deadline_ms: 10_000,
            name_len: 14,
            metadata_len: 0,
            body_len: 2,
        };
        let expected = [
            0x4e, 0x52, 0x01, 0x01, 0x00, 0x01, 0x00, 0x0e, 0, 0, 0, 0, 0, 0, 0, 1, 0x00, 0x00,
            0x27, 0x10, 0, 0, 0, 0, 0, 0, 0, 2,
        ];
        assert_eq!(to_array(&header), expected);
    }

    #[test]
    fn kind_bytes_round_trip_and_unknown_bytes_are_none() {
        for kind in FrameKind::ALL {
            assert_eq!(FrameKind::from_u8(kind.as_u8()), Some(kind));
        }
        for byte in [0u8, 8, 0x7f, 0xff] {
            assert_eq!(FrameKind::from_u8(byte), None);
        }
    }

    #[test]
    fn bad_magic_version_and_kind_are_refused() {
        let limits = FrameLimits::default();
        let good = to_array(&sample(FrameKind::Request));

        let mut bytes = good;
        bytes[0] = b'G';
        bytes[1] = b'E';
        assert_eq!(
            FrameHeader::parse(&bytes, &limits),
            Err(TransportError::BadMagic { got: 0x4745 })
        );
        for version in [0u8, 2, 255] {
            let mut bytes = good;
            bytes[2] = version;
            assert_eq!(
                FrameHeader::parse(&bytes, &limits),
                Err(TransportError::UnsupportedVersion {
                    got: version,
                    supported: VERSION
                })
            );
        }
        for kind in [0u8, 8, 0xff] {
            let mut bytes = good;
            bytes[3] = kind;
            assert_eq!(
                FrameHeader::parse(&bytes, &limits),
                Err(TransportError::UnknownKind { got: kind })
            );
        }
    }

    #[test]
    fn lengths_over_the_limits_are_refused_from_the_header() {
        let limits = FrameLimits::default();
        let mut header = sample(FrameKind::Request);
        header.name_len = (limits.max_name_len + 1) as u16;
        assert_eq!(
            FrameHeader::parse(&to_array(&header), &limits),
            Err(TransportError::NameTooLong {
                seq: header.seq,
                kind: FrameKind::Request,
                len: limits.max_name_len + 1,
                limit: limits.max_name_len
            })
        );

        let mut header = sample(FrameKind::Request);
        header.metadata_len = u32::MAX;
        assert!(matches!(
            FrameHeader::parse(&to_array(&header), &limits),
            Err(TransportError::MetadataTooLarge { .. })
        ));

        for declared in [limits.max_body_len as u32 + 1, u32::MAX] {
            let mut header = sample(FrameKind::Request);
            header.body_len = declared;
            assert_eq!(
                FrameHeader::parse(&to_array(&header), &limits),
                Err(TransportError::FrameTooLarge {
                    seq: header.seq,
                    kind: FrameKind::Request,
                    declared: declared as usize,
                    limit: limits.max_body_len
                })
            );
        }
    }

    #[test]
    fn body_at_exactly_the_limit_is_accepted() {
        let limits = FrameLimits::default();
        let mut header = sample(FrameKind::Response);
        header.body_len = limits.max_body_len as u32;
        assert_eq!(FrameHeader::parse(&to_array(&header), &limits), Ok(header));
    }
}
