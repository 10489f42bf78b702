//! `TransportError`: everything that can go wrong while framing bytes or moving them.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::header::FrameKind;

/// A failure of the transport layer: a frame that breaks the format or a limit, or socket I/O.
///
/// Format errors are *connection errors*: once a header cannot be trusted, the byte stream cannot
/// be resynchronised, so the connection must be closed. The three limit errors
/// ([`TransportError::NameTooLong`], [`TransportError::MetadataTooLarge`],
/// [`TransportError::FrameTooLarge`]) come from a header that was otherwise intact: they carry
/// the frame's `seq` and kind, so a server can tell the sender why before closing.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum TransportError {
    /// The first two bytes of a frame were not `NR` (for example, an HTTP request).
    BadMagic {
        /// The two bytes found, big-endian.
        got: u16,
    },
    /// The peer speaks a protocol version this crate does not.
    UnsupportedVersion {
        /// The version byte found.
        got: u8,
        /// The version this crate speaks.
        supported: u8,
    },
    /// The kind byte names no [`FrameKind`].
    UnknownKind {
        /// The kind byte found.
        got: u8,
    },
    /// The method name is longer than the configured limit.
    NameTooLong {
        /// Sequence id of the refused frame.
        seq: u64,
        /// Kind of the refused frame.
        kind: FrameKind,
        /// Declared length in bytes.
        len: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The metadata section is larger than the configured limit.
    MetadataTooLarge {
        /// Sequence id of the refused frame.
        seq: u64,
        /// Kind of the refused frame.
        kind: FrameKind,
        /// Declared length in bytes.
        len: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The body is larger than the configured limit (on reading: declared in a header; on
    /// writing: the encoded body).
    FrameTooLarge {
        /// Sequence id of the refused frame.
        seq: u64,
        /// Kind of the refused frame.
        kind: FrameKind,
        /// Body length in bytes.
        declared: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The peer closed the connection in the middle of a frame.
    Truncated {
        /// Bytes of the unfinished frame that had arrived.
        buffered: usize,
    },
    /// A frame took longer than the frame read timeout to arrive in full.
    FrameTimeout,
    /// The connection is closed; nothing more can be sent on it.
    Closed,
    /// A socket operation failed.
    Io(Arc<io::Error>),
    /// TLS refused the peer or its bytes: a certificate not trusted (or missing where one is
    /// required), no protocol version or cipher both sides speak, bytes that are not TLS
    /// (say, a plaintext netrpc peer), or a record that does not decrypt. The text is
    /// rustls's own description, which names the problem (`UnknownIssuer`, `NotValidForName`).
    Tls {
        /// What rustls reported.
        error: rustls::Error,
    },
    /// The TLS handshake did not finish within the frame timeout
    /// ([`crate::FrameLimits::frame_timeout`]) counted from when the connection was adopted.
    TlsHandshakeTimeout {
        /// The timeout that passed.
        after: Duration,
    },
    /// The peer closed the connection before the TLS handshake finished: typically a
    /// plaintext server, which closes on the TLS client's first bytes.
    TlsHandshakeClosed,
    /// A TLS 1.3 client's handshake finished, but the server sent nothing after it within
    /// the timeout (no session ticket, no answer to the first frame), so whether it accepted
    /// this client cannot be known: a server that is stuck, or not a netrpc server.
    TlsServerSilent {
        /// The timeout that passed.
        after: Duration,
    },
}

impl TransportError {
    /// True for errors in the frames a peer sent (as opposed to local I/O, a closed socket,
    /// or TLS, which [`TransportError::is_tls`] tells).
    pub fn is_protocol_violation(&self) -> bool {
        !matches!(
            self,
            TransportError::Closed | TransportError::Io(_) | TransportError::FrameTimeout
        ) && !self.is_tls()
    }

    /// True for TLS failures: a refused handshake or record, a handshake that timed out or
    /// that the peer closed.
    pub fn is_tls(&self) -> bool {
        matches!(
            self,
            TransportError::Tls { .. }
                | TransportError::TlsHandshakeTimeout { .. }
                | TransportError::TlsHandshakeClosed
                | TransportError::TlsServerSilent { .. }
        )
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // 0x15 (alert) or 0x16 (handshake) then 0x03 (major version 3) opens a TLS record.
            TransportError::BadMagic { got }
                if matches!(got >> 8, 0x15 | 0x16) && got & 0xff == 3 =>
            {
                write!(
                    f,
                    "bad magic 0x{got:04x}: a tls record, not a netrpc frame (is the peer using tls?)"
                )
            }
            TransportError::BadMagic { got } => {
                write!(f, "bad magic 0x{got:04x}: not a netrpc frame")
            }
            TransportError::UnsupportedVersion { got, supported } => {
                write!(
                    f,
                    "unsupported protocol version {got} (this side speaks {supported})"
                )
            }
            TransportError::UnknownKind { got } => write!(f, "unknown frame kind {got}"),
            TransportError::NameTooLong { len, limit, .. } => {
                write!(
                    f,
                    "method name of {len} bytes exceeds the {limit}-byte limit"
                )
            }
            TransportError::MetadataTooLarge { len, limit, .. } => {
                write!(f, "metadata of {len} bytes exceeds the {limit}-byte limit")
            }
            TransportError::FrameTooLarge {
                seq,
                kind,
                declared,
                limit,
            } => write!(
                f,
                "{} frame {seq} with a body of {declared} bytes exceeds the {limit}-byte limit",
                kind.name()
            ),
            TransportError::Truncated { buffered } => {
                write!(
                    f,
                    "connection closed inside a frame ({buffered} bytes of it had arrived)"
                )
            }
            TransportError::FrameTimeout => {
                write!(
                    f,
                    "a frame did not arrive in full within the frame read timeout"
                )
            }
            TransportError::Closed => write!(f, "connection closed"),
            TransportError::Io(_) => write!(f, "socket i/o failed"),
            TransportError::Tls { error } => write!(f, "tls failed: {error}"),
            TransportError::TlsHandshakeTimeout { after } => write!(
                f,
                "tls handshake did not finish within {:.3} s",
                after.as_secs_f64()
            ),
            TransportError::TlsServerSilent { after } => write!(
                f,
                "tls handshake finished, but the server sent nothing after it within {:.3} s \
                 (no session ticket, no answer to the first frame)",
                after.as_secs_f64()
            ),
            TransportError::TlsHandshakeClosed => write!(
                f,
                "peer closed the connection during the tls handshake (is it serving tls?)"
            ),
        }
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TransportError::Io(err) => Some(err.as_ref()),
            _ => None,
        }
    }
}

impl From<io::Error> for TransportError {
    fn from(err: io::Error) -> Self {
        TransportError::Io(Arc::new(err))
    }
}

/// Equality compares variants and fields; two I/O errors are equal when their kinds are.
///
/// Every other variant's `Display` text names all of its fields, so equal text means equal
/// values; this keeps the comparison in one line instead of a match that must grow with the enum.
impl PartialEq for TransportError {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (TransportError::Io(a), TransportError::Io(b)) => a.kind() == b.kind(),
            _ => self.to_string() == other.to_string() && !matches!(self, TransportError::Io(_)),
        }
    }
}
