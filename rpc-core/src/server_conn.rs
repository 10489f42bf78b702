//! One server connection: turns request frames into jobs on the worker pool, and their results
//! into reply frames.
//!
//! Runs on the event loop, so nothing here blocks: the lookup of the method is a map access,
//! and the handler itself runs on a pool thread, which writes its reply straight to the socket.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use rpc_codec::{Codec, CodecKind};
use rpc_transport::{
    CloseReason, Connection, EofAction, Frame, FrameBuilder, FrameHandler, FrameHead, FrameKind,
    TransportError,
};

use crate::error_body::{error_frame, ErrorCode};
use crate::server::ServerShared;
use crate::service::{Dispatch, DispatchError, MethodHandler};

/// The [`FrameHandler`] of one accepted connection.
pub(crate) struct ServerConn {
    server: Arc<ServerShared>,
    calls: Arc<ConnCalls>,
}

/// What the loop and the workers of one connection share.
#[derive(Debug, Default)]
struct ConnCalls {
    /// Requests dispatched and not yet answered.
    in_flight: AtomicUsize,
    /// The peer half-closed: close once `in_flight` reaches zero.
    peer_done: AtomicBool,
}

impl ServerConn {
    pub(crate) fn new(server: Arc<ServerShared>) -> Self {
        ServerConn {
            server,
            calls: Arc::default(),
        }
    }

    fn dispatch(&mut self, conn: &Connection, request: Frame) {
        match self.lookup(&request) {
            Ok((codec, handler, Dispatch::Inline)) => {
                // On the loop thread: the reply joins the others of this read in one write.
                let reply = run_handler(&handler, codec, &request, conn);
                let _ = conn.send_batched(&reply);
            }
            Ok((codec, handler, Dispatch::Pool)) => {
                self.calls.in_flight.fetch_add(1, Ordering::SeqCst);
                let conn = conn.clone();
                let calls = Arc::clone(&self.calls);
                self.server.pool.execute(Box::new(move || {
                    let reply = run_handler(&handler, codec, &request, &conn);
                    // A failed send means the peer is gone; the loop is closing the connection.
                    let _ = conn.send(&reply);
                    calls.finish_one(&conn);
                }));
            }
            Err(err) => {
                let _ = conn.send_frame(&error_frame(request.seq, err.code, &err.message));
            }
        }
    }

    /// Finds the codec and method a request names; every failure is a call error.
    fn lookup(
        &self,
        request: &Frame,
    ) -> Result<(CodecKind, MethodHandler, Dispatch), DispatchError> {
        let codec = CodecKind::from_id(request.codec).ok_or_else(|| {
            DispatchError::new(
                ErrorCode::UnsupportedCodec,
                format!("codec id {} is not supported by this server", request.codec),
            )
        })?;
        let name = std::str::from_utf8(&request.name).map_err(|_| {
            DispatchError::new(ErrorCode::Protocol, "method name is not valid utf-8")
        })?;
        let Some((service, method)) = name.rsplit_once('.') else {
            return Err(DispatchError::new(
                ErrorCode::Protocol,
                format!("ill-formed method name `{name}`: expected `Service.Method`"),
            ));
        };
        let table = self.server.service(service).ok_or_else(|| {
            DispatchError::new(
                ErrorCode::UnknownService,
                format!("unknown service `{service}`"),
            )
        })?;
        let handler = table.get(method).cloned().ok_or_else(|| {
            DispatchError::new(ErrorCode::UnknownMethod, format!("unknown method `{name}`"))
        })?;
        Ok((codec, handler, table.dispatch()))
    }
}

impl ConnCalls {
    fn finish_one(&self, conn: &Connection) {
        let left = self.in_flight.fetch_sub(1, Ordering::SeqCst) - 1;
        if left == 0 && self.peer_done.load(Ordering::SeqCst) {
            conn.close_when_flushed();
        }
    }
}

impl FrameHandler for ServerConn {
    fn handle_frame(&mut self, conn: &Connection, frame: Frame) {
        match frame.kind {
            FrameKind::Request => self.dispatch(conn, frame),
            FrameKind::Ping => {
                let _ = conn.send_frame(&Frame::new(FrameKind::Pong, frame.seq));
            }
            // Cancel is advisory and handlers cannot be interrupted; the reply of a cancelled
            // call is discarded by the client. Other kinds have no meaning client-to-server.
            _ => {}
        }
    }

    fn handle_frame_error(&mut self, conn: &Connection, error: &TransportError) {
        // Tell the sender why, where the header was intact enough to say to whom.
        let reply = match error {
            TransportError::FrameTooLarge {
                seq,
                kind: FrameKind::Request,
                ..
            } => Some(error_frame(
                *seq,
                ErrorCode::FrameTooLarge,
                &error.to_string(),
            )),
            TransportError::UnsupportedVersion { .. } => {
                Some(error_frame(0, ErrorCode::Protocol, &error.to_string()))
            }
            _ => None,
        };
        if let Some(reply) = reply {
            let _ = conn.send_frame(&reply);
        }
    }

    fn handle_eof(&mut self, conn: &Connection) -> EofAction {
        // Half-close: the peer sent its last request. Answer what is in flight, then close.
        self.calls.peer_done.store(true, Ordering::SeqCst);
        if self.calls.in_flight.load(Ordering::SeqCst) == 0 {
            conn.close_when_flushed();
        }
        EofAction::KeepWriting
    }

    fn handle_close(&mut self, _conn: &Connection, _reason: CloseReason) {}
}

/// Runs one call and returns its encoded reply frame (a response or an error).
///
/// A panic in the handler is caught here and becomes [`ErrorCode::HandlerPanicked`], so a
/// faulty method never takes down its worker, its connection or the server.
fn run_handler(
    handler: &MethodHandler,
    codec: CodecKind,
    request: &Frame,
    conn: &Connection,
) -> BytesMut {
    let mut out = BytesMut::new();
    let mut head = FrameHead::new(FrameKind::Response, request.seq);
    head.codec = codec.id();
    let builder = match FrameBuilder::start(&mut out, &head, conn.limits()) {
        Ok(builder) => builder,
        Err(err) => return encode_error(request.seq, ErrorCode::Internal, &err.to_string()),
    };
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| handler(codec, &request.body, &mut out)));
    let failure = match outcome {
        Ok(Ok(())) => match builder.finish(&mut out) {
            Ok(()) => return out,
            Err(err) => DispatchError::new(ErrorCode::FrameTooLarge, format!("reply: {err}")),
        },
        Ok(Err(err)) => {
            builder.abandon(&mut out);
            err
        }
        Err(payload) => {
            builder.abandon(&mut out);
            DispatchError::new(ErrorCode::HandlerPanicked, panic_message(payload.as_ref()))
        }
    };
    encode_error(request.seq, failure.code, &failure.message)
}

fn encode_error(seq: u64, code: ErrorCode, message: &str) -> BytesMut {
    let mut out = BytesMut::new();
    // Error frames have no name or metadata and a short body, so no limit can refuse them.
    let _ = error_frame(seq, code, message).encode(&mut out, &Default::default());
    out
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}
