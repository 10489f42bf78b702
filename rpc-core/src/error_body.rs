//! The body of an error-response frame: a 2-byte error code and a UTF-8 message.
//!
//! The format does not depend on any codec, so every client can read why its call failed, even
//! a client whose codec the server does not have.
//!
//! | offset | size | field                                   |
//! |-------:|-----:|-----------------------------------------|
//! |      0 |    2 | `code`, big-endian ([`ErrorCode`])      |
//! |      2 |    … | `message`, UTF-8, to the end of the body |

use std::borrow::Cow;

use bytes::{BufMut, BytesMut};
use rpc_transport::{Frame, FrameKind};

/// Why a call failed, as carried on the wire in an error frame.
///
/// Codes are stable: new ones may be added, old ones never change meaning. A client that reads
/// a code it does not know treats the call as failed with that code and message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// No service of that name is registered (Go: "can't find service").
    UnknownService,
    /// The service has no method of that name (Go: "can't find method").
    UnknownMethod,
    /// The request body did not decode as the method's argument type.
    BadRequest,
    /// The method itself returned an error; the message is its text (Go: `ServerError`).
    Service,
    /// The handler panicked; the message is the panic's text.
    HandlerPanicked,
    /// The frame's body was over the receiver's size limit.
    FrameTooLarge,
    /// The frame's codec id names no codec the server has.
    UnsupportedCodec,
    /// The server is at its limit of calls; nothing was processed, so the call may be retried.
    Throttled,
    /// The server is shutting down; nothing was processed, so the call may be retried elsewhere.
    ShuttingDown,
    /// The call's deadline passed before the server ran it.
    DeadlineExceeded,
    /// The request broke the protocol (for example a method name that is not UTF-8).
    Protocol,
    /// The server failed for another reason (for example, the reply failed to encode).
    Internal,
    /// A code this version does not know, kept as received.
    Other(u16),
}

impl ErrorCode {
    /// The code for a wire value.
    pub fn from_u16(code: u16) -> ErrorCode {
        match code {
            1 => ErrorCode::UnknownService,
            2 => ErrorCode::UnknownMethod,
            3 => ErrorCode::BadRequest,
            4 => ErrorCode::Service,
            5 => ErrorCode::HandlerPanicked,
            6 => ErrorCode::FrameTooLarge,
            7 => ErrorCode::UnsupportedCodec,
            8 => ErrorCode::Throttled,
            9 => ErrorCode::ShuttingDown,
            10 => ErrorCode::DeadlineExceeded,
            11 => ErrorCode::Protocol,
            12 => ErrorCode::Internal,
            other => ErrorCode::Other(other),
        }
    }

    /// The wire value of this code.
    pub fn as_u16(self) -> u16 {
        match self {
            ErrorCode::UnknownService => 1,
            ErrorCode::UnknownMethod => 2,
            ErrorCode::BadRequest => 3,
            ErrorCode::Service => 4,
            ErrorCode::HandlerPanicked => 5,
            ErrorCode::FrameTooLarge => 6,
            ErrorCode::UnsupportedCodec => 7,
            ErrorCode::Throttled => 8,
            ErrorCode::ShuttingDown => 9,
            ErrorCode::DeadlineExceeded => 10,
            ErrorCode::Protocol => 11,
            ErrorCode::Internal => 12,
            ErrorCode::Other(code) => code,
        }
    }
}

/// A decoded error-response body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorBody<'a> {
    /// Why the call failed.
    pub code: ErrorCode,
    /// Human-readable detail; for [`ErrorCode::Service`], the method's own error text.
    pub message: Cow<'a, str>,
}

impl<'a> ErrorBody<'a> {
    /// An error body with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<Cow<'a, str>>) -> Self {
        ErrorBody {
            code,
            message: message.into(),
        }
    }

    /// Appends the encoded body to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(2 + self.message.len());
        out.put_u16(self.code.as_u16());
        out.put_slice(self.message.as_bytes());
    }

    /// Reads a body. Invalid UTF-8 in the message is replaced, never refused: the code alone
    /// says what happened.
    ///
    /// Returns `None` if the body is shorter than the 2-byte code.
    pub fn decode(bytes: &'a [u8]) -> Option<ErrorBody<'a>> {
        let (code, message) = bytes.split_first_chunk::<2>()?;
        Some(ErrorBody {
            code: ErrorCode::from_u16(u16::from_be_bytes(*code)),
            message: String::from_utf8_lossy(message),
        })
    }
}

/// An error-response frame for call `seq`: codec 0, body [`ErrorBody`].
pub(crate) fn error_frame(seq: u64, code: ErrorCode, message: &str) -> Frame {
    let mut body = BytesMut::new();
    ErrorBody::new(code, message).encode(&mut body);
    let mut frame = Frame::new(FrameKind::Error, seq);
    frame.body = body.freeze();
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips() {
        for value in 0..=20u16 {
            assert_eq!(ErrorCode::from_u16(value).as_u16(), value);
        }
        assert_eq!(ErrorCode::from_u16(2), ErrorCode::UnknownMethod);
        assert_eq!(ErrorCode::from_u16(999), ErrorCode::Other(999));
    }

    #[test]
    fn bodies_round_trip_and_match_the_documented_bytes() {
        let body = ErrorBody::new(ErrorCode::Service, "divide by zero");
        let mut out = BytesMut::new();
        body.encode(&mut out);
        assert_eq!(&out[..2], &[0x00, 0x04]);
        assert_eq!(&out[2..], b"divide by zero");
        assert_eq!(ErrorBody::decode(&out), Some(body));
    }

    #[test]
    fn short_bodies_and_bad_utf8_are_handled() {
        assert_eq!(ErrorBody::decode(&[]), None);
        assert_eq!(ErrorBody::decode(&[0]), None);
        let decoded = ErrorBody::decode(&[0, 11, 0xff]).unwrap();
        assert_eq!(decoded.code, ErrorCode::Protocol);
        assert_eq!(decoded.message, "\u{fffd}");
    }
}
