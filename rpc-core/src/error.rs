//! `RpcError`: every way a call can fail, as seen by the caller.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use rpc_codec::CodecError;
use rpc_transport::TransportError;

use crate::error_body::{ErrorBody, ErrorCode};

/// Why a call (or dialing, or registering) failed.
///
/// Library errors are distinct from a method's own error ([`RpcError::Method`]), and
/// [`RpcError::is_retryable`] says which failures are worth trying again.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum RpcError {
    /// The client was closed by this side; the call was not sent, or was abandoned
    /// (Go: `ErrShutdown`). Also returned for every call made after the connection ended.
    Shutdown,
    /// The connection ended while the call was pending: the peer went away or broke the
    /// protocol. The call may or may not have run.
    ConnectionLost {
        /// Why the connection ended, when known.
        cause: Option<TransportError>,
    },
    /// No reply arrived before the call's deadline; a late reply is discarded.
    Timeout {
        /// The deadline the call was given.
        after: Duration,
    },
    /// The caller gave up on the call with [`crate::Client::cancel`]; a late reply is
    /// discarded. The call may or may not have run.
    Cancelled,
    /// Dialing failed: nothing listens there, or the connect timed out.
    Unreachable {
        /// The address dialed.
        addr: String,
        /// The connect error.
        source: Arc<io::Error>,
    },
    /// The TLS handshake failed while dialing: the server's certificate is not trusted or
    /// does not name the address dialed, the server refused this client, the server does
    /// not speak TLS, or the handshake did not finish within the connect timeout. The cause
    /// names which. Nothing was sent.
    Tls {
        /// The address dialed.
        addr: String,
        /// What failed: [`TransportError::Tls`] (with rustls's reason, such as
        /// `UnknownIssuer`), [`TransportError::TlsHandshakeClosed`],
        /// [`TransportError::TlsHandshakeTimeout`] or [`TransportError::TlsServerSilent`].
        cause: TransportError,
    },
    /// The method ran and returned its own error, whose text this is (Go: `ServerError`).
    Method {
        /// The error text the method returned.
        message: String,
    },
    /// The server has no service of that name.
    UnknownService {
        /// The `Service.Method` name called.
        name: String,
    },
    /// The service has no method of that name.
    UnknownMethod {
        /// The `Service.Method` name called.
        name: String,
    },
    /// The server could not decode the call's argument as the method's argument type.
    BadRequest {
        /// The server's description of what failed.
        detail: String,
    },
    /// This side could not encode the argument; nothing was sent.
    Encode(CodecError),
    /// This side could not decode the reply.
    Decode(CodecError),
    /// A frame was over a size limit: this side's for an argument (nothing was sent), or the
    /// server's for a request or reply.
    FrameTooLarge {
        /// The body length, when known.
        declared: Option<usize>,
        /// The limit, when known.
        limit: Option<usize>,
        /// The server's message, when the server refused the frame.
        detail: String,
    },
    /// The handler panicked; the server caught it and goes on serving.
    HandlerPanicked {
        /// The panic's message.
        message: String,
    },
    /// The server does not have the codec the call was sent in.
    UnsupportedCodec {
        /// The server's message, naming the codec id.
        detail: String,
    },
    /// The server is at its limit of concurrent calls or of connections, or this client at
    /// its limit of pending calls ([`crate::ClientConfig::max_pending_calls`]) or of unsent
    /// bytes ([`crate::ClientConfig::max_unsent_bytes`]); nothing was processed.
    Throttled,
    /// The server is shutting down; nothing was processed, so another server may be tried.
    ShuttingDown,
    /// The peer broke the protocol (garbage bytes, an unreadable error frame, a reply in the
    /// wrong codec).
    Protocol {
        /// What was wrong.
        detail: String,
    },
    /// The server failed for another reason (for example, the reply failed to encode), or
    /// answered with an error code this version does not know.
    Internal {
        /// The server's message; for a code this version does not know, `error code N: `
        /// and the message.
        detail: String,
    },
    /// The service name given to `register_name` is empty, contains a dot, or is taken.
    InvalidRegistration {
        /// What was wrong.
        detail: String,
    },
    /// A circuit breaker ([`crate::cluster::Breaker`]) refused the call at once because its
    /// endpoint failed too often lately; nothing was sent. Another endpoint may be tried, or
    /// this one after `retry_after`.
    CircuitOpen {
        /// The endpoint the breaker guards.
        endpoint: String,
        /// How long until the breaker lets a trial call through; zero while a trial call is
        /// in flight (its outcome decides).
        retry_after: Duration,
    },
}

impl RpcError {
    /// True for failures worth retrying: timeouts, transient network failures, and refusals
    /// where the server processed nothing. Never for a method's own error.
    ///
    /// A timeout or a lost connection may have run the call: retry those only for idempotent
    /// methods ([`RpcError::is_unprocessed`] tells the cases that are always safe).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            RpcError::Timeout { .. }
                | RpcError::ConnectionLost { .. }
                | RpcError::Unreachable { .. }
                | RpcError::Throttled
                | RpcError::ShuttingDown
                | RpcError::CircuitOpen { .. }
        )
    }

    /// True if the call certainly did not run: nothing was sent (the dial failed, a circuit
    /// breaker refused it) or the server refused it before running it (throttled, shutting
    /// down). Retrying such a call is safe even for a method that is not idempotent.
    pub fn is_unprocessed(&self) -> bool {
        matches!(
            self,
            RpcError::Unreachable { .. }
                | RpcError::Tls { .. }
                | RpcError::Throttled
                | RpcError::ShuttingDown
                | RpcError::CircuitOpen { .. }
        )
    }

    /// True if the error was produced by the method itself rather than by netrpc.
    pub fn is_method_error(&self) -> bool {
        matches!(self, RpcError::Method { .. })
    }

    /// The error a caller sees for an error frame with `body` in reply to `method`.
    pub(crate) fn from_error_body(method: &str, body: &[u8]) -> RpcError {
        let Some(ErrorBody { code, message }) = ErrorBody::decode(body) else {
            return RpcError::Protocol {
                detail: format!("error frame of {} bytes has no error code", body.len()),
            };
        };
        let message = message.into_owned();
        match code {
            ErrorCode::UnknownService => RpcError::UnknownService {
                name: method.to_owned(),
            },
            ErrorCode::UnknownMethod => RpcError::UnknownMethod {
                name: method.to_owned(),
            },
            ErrorCode::BadRequest => RpcError::BadRequest { detail: message },
            ErrorCode::Service => RpcError::Method { message },
            ErrorCode::HandlerPanicked => RpcError::HandlerPanicked { message },
            ErrorCode::FrameTooLarge => RpcError::FrameTooLarge {
                declared: None,
                limit: None,
                detail: message,
            },
            ErrorCode::UnsupportedCodec => RpcError::UnsupportedCodec { detail: message },
            ErrorCode::Throttled => RpcError::Throttled,
            ErrorCode::ShuttingDown => RpcError::ShuttingDown,
            ErrorCode::DeadlineExceeded => RpcError::Timeout {
                after: Duration::ZERO,
            },
            ErrorCode::Protocol => RpcError::Protocol { detail: message },
            ErrorCode::Internal => RpcError::Internal { detail: message },
            // A newer server's code: kept in the text, so that it can be told apart.
            ErrorCode::Other(code) => RpcError::Internal {
                detail: format!("error code {code}: {message}"),
            },
        }
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RpcError::Shutdown => write!(f, "connection is shut down"),
            RpcError::ConnectionLost { .. } => {
                write!(f, "connection lost while the call was pending")
            }
            RpcError::Timeout { after } if after.is_zero() => {
                write!(f, "deadline passed before the server ran the call")
            }
            RpcError::Timeout { after } => {
                write!(f, "no reply within {:.3} s", after.as_secs_f64())
            }
            RpcError::Cancelled => write!(f, "call cancelled by the caller"),
            RpcError::Unreachable { addr, .. } => write!(f, "cannot connect to {addr}"),
            RpcError::Tls { addr, .. } => write!(f, "tls handshake with {addr} failed"),
            RpcError::Method { message } => write!(f, "{message}"),
            RpcError::UnknownService { name } => write!(f, "unknown service in `{name}`"),
            RpcError::UnknownMethod { name } => write!(f, "unknown method `{name}`"),
            RpcError::BadRequest { detail } => {
                write!(f, "server could not decode the argument: {detail}")
            }
            RpcError::Encode(_) => write!(f, "argument failed to encode"),
            RpcError::Decode(_) => write!(f, "reply failed to decode"),
            RpcError::FrameTooLarge {
                declared: Some(declared),
                limit: Some(limit),
                ..
            } => write!(
                f,
                "frame body of {declared} bytes exceeds the {limit}-byte limit"
            ),
            RpcError::FrameTooLarge { detail, .. } => write!(f, "frame too large: {detail}"),
            RpcError::HandlerPanicked { message } => write!(f, "handler panicked: {message}"),
            RpcError::UnsupportedCodec { detail } => write!(f, "unsupported codec: {detail}"),
            RpcError::Throttled => write!(f, "call limit reached; nothing was processed"),
            RpcError::ShuttingDown => write!(f, "server is shutting down; nothing was processed"),
            RpcError::Protocol { detail } => write!(f, "protocol violation: {detail}"),
            RpcError::Internal { detail } => write!(f, "server error: {detail}"),
            RpcError::InvalidRegistration { detail } => {
                write!(f, "cannot register service: {detail}")
            }
            RpcError::CircuitOpen {
                endpoint,
                retry_after,
            } => write!(
                f,
                "circuit open for {endpoint}; next trial in {:.3} s",
                retry_after.as_secs_f64()
            ),
        }
    }
}

impl std::error::Error for RpcError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RpcError::ConnectionLost { cause: Some(cause) } => Some(cause),
            RpcError::Tls { cause, .. } => Some(cause),
            RpcError::Unreachable { source, .. } => Some(source.as_ref()),
            RpcError::Encode(err) | RpcError::Decode(err) => Some(err),
            _ => None,
        }
    }
}

impl From<TransportError> for RpcError {
    /// Limit errors keep their numbers; anything else means the connection cannot be used.
    fn from(err: TransportError) -> Self {
        match err {
            TransportError::FrameTooLarge {
                declared, limit, ..
            } => RpcError::FrameTooLarge {
                declared: Some(declared),
                limit: Some(limit),
                detail: String::new(),
            },
            TransportError::NameTooLong { .. } | TransportError::MetadataTooLarge { .. } => {
                RpcError::Protocol {
                    detail: err.to_string(),
                }
            }
            TransportError::Closed => RpcError::Shutdown,
            other => RpcError::ConnectionLost { cause: Some(other) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + 'static>() {}

    #[test]
    fn rpc_error_is_send_sync_static() {
        assert_send_sync::<RpcError>();
    }

    #[test]
    fn an_error_code_this_version_does_not_know_keeps_its_number() {
        let body = |code: ErrorCode| {
            let mut bytes = bytes::BytesMut::new();
            ErrorBody::new(code, "from a newer server").encode(&mut bytes);
            bytes
        };
        let unknown = RpcError::from_error_body("A.b", &body(ErrorCode::Other(999)));
        let RpcError::Internal { detail } = &unknown else {
            panic!("{unknown:?}");
        };
        assert_eq!(detail, "error code 999: from a newer server");
        let internal = RpcError::from_error_body("A.b", &body(ErrorCode::Internal));
        let RpcError::Internal { detail } = &internal else {
            panic!("{internal:?}");
        };
        assert_eq!(detail, "from a newer server");
    }

    #[test]
    fn method_errors_are_never_retryable_and_timeouts_are() {
        assert!(!RpcError::Method {
            message: "x".into()
        }
        .is_retryable());
        assert!(RpcError::Method {
            message: "x".into()
        }
        .is_method_error());
        assert!(RpcError::Timeout {
            after: Duration::from_secs(1)
        }
        .is_retryable());
        assert!(RpcError::ConnectionLost { cause: None }.is_retryable());
        assert!(RpcError::Throttled.is_retryable());
        assert!(!RpcError::UnknownMethod { name: "A.b".into() }.is_retryable());
        assert!(!RpcError::Shutdown.is_retryable());
    }

    #[test]
    fn an_open_circuit_is_retryable_elsewhere_and_nothing_ran() {
        let err = RpcError::CircuitOpen {
            endpoint: "127.0.0.1:9".into(),
            retry_after: Duration::from_millis(250),
        };
        assert!(err.is_retryable());
        assert!(err.is_unprocessed());
        assert_eq!(
            err.to_string(),
            "circuit open for 127.0.0.1:9; next trial in 0.250 s"
        );
        assert!(RpcError::Throttled.is_unprocessed());
        assert!(!RpcError::ConnectionLost { cause: None }.is_unprocessed());
        assert!(!RpcError::Timeout {
            after: Duration::from_secs(1)
        }
        .is_unprocessed());
        assert!(!RpcError::Method {
            message: "x".into()
        }
        .is_unprocessed());
    }

    #[test]
    fn every_error_code_maps_to_its_variant() {
        let body = |code: ErrorCode, msg: &str| {
            let mut out = bytes::BytesMut::new();
            ErrorBody::new(code, msg).encode(&mut out);
            RpcError::from_error_body("Arith.Divide", &out)
        };
        assert!(
            matches!(body(ErrorCode::UnknownService, ""), RpcError::UnknownService { name } if name == "Arith.Divide")
        );
        assert!(matches!(
            body(ErrorCode::UnknownMethod, ""),
            RpcError::UnknownMethod { .. }
        ));
        assert!(matches!(
            body(ErrorCode::BadRequest, "x"),
            RpcError::BadRequest { .. }
        ));
        assert!(
            matches!(body(ErrorCode::Service, "divide by zero"), RpcError::Method { message } if message == "divide by zero")
        );
        assert!(matches!(
            body(ErrorCode::HandlerPanicked, "boom"),
            RpcError::HandlerPanicked { .. }
        ));
        assert!(matches!(
            body(ErrorCode::FrameTooLarge, ""),
            RpcError::FrameTooLarge { .. }
        ));
        assert!(matches!(
            body(ErrorCode::UnsupportedCodec, ""),
            RpcError::UnsupportedCodec { .. }
        ));
        assert!(matches!(
            body(ErrorCode::Throttled, ""),
            RpcError::Throttled
        ));
        assert!(matches!(
            body(ErrorCode::ShuttingDown, ""),
            RpcError::ShuttingDown
        ));
        assert!(matches!(
            body(ErrorCode::DeadlineExceeded, ""),
            RpcError::Timeout { .. }
        ));
        assert!(matches!(
            body(ErrorCode::Protocol, ""),
            RpcError::Protocol { .. }
        ));
        assert!(matches!(
            body(ErrorCode::Other(999), "new"),
            RpcError::Internal { .. }
        ));
        assert!(matches!(
            RpcError::from_error_body("A.b", &[1]),
            RpcError::Protocol { .. }
        ));
    }

    #[test]
    fn display_is_lowercase_and_names_the_value() {
        let err = RpcError::UnknownMethod {
            name: "Arith.Divide".into(),
        };
        assert_eq!(err.to_string(), "unknown method `Arith.Divide`");
        let err = RpcError::FrameTooLarge {
            declared: Some(9),
            limit: Some(8),
            detail: String::new(),
        };
        assert_eq!(
            err.to_string(),
            "frame body of 9 bytes exceeds the 8-byte limit"
        );
    }
}
