//! # rpc-transport: frames to sockets and back
//!
//! The transport layer of netrpc. It defines the binary frame format (a 28-byte header of plain
//! integers, then a method name, a metadata section and an opaque body) and moves frames over
//! TCP. It knows nothing of serde, services or calls: what a body means belongs to `rpc-core`
//! and `rpc-codec`.
//!
//! ```text
//!   rpc-core                    rpc-transport                          socket
//!  ┌────────┐  Frame   ┌──────────────┐  bytes   ┌─────────────┐
//!  │ client │ ───────► │ Frame::encode│ ───────► │             │ ──► peer
//!  │ server │ ◄─────── │ FrameDecoder │ ◄─────── │ (event loop)│ ◄── peer
//!  └────────┘  Frame   └──────────────┘  bytes   └─────────────┘
//! ```
//!
//! The format is documented byte by byte in [`header`] and in `docs/PROTOCOL.md`.
//!
//! A connection may run TLS ([`tls`], with rustls): frames are encrypted on their way to the
//! socket and decrypted on their way to the decoder, and nothing above the transport changes.
//!
//! # Example
//!
//! Encode a request and decode it again, fed one byte at a time:
//!
//! ```
//! use bytes::BytesMut;
//! use rpc_transport::{Frame, FrameDecoder, FrameLimits};
//!
//! let request = Frame::request(1, "Arith.Multiply", 1, &b"\x0e\x10"[..]);
//! let mut wire = BytesMut::new();
//! request.encode(&mut wire, &FrameLimits::default())?;
//!
//! let mut decoder = FrameDecoder::new(FrameLimits::default());
//! let mut frames = Vec::new();
//! for byte in wire.iter() {
//!     decoder.handle_bytes(&[*byte]);
//!     while let Some(frame) = decoder.poll_frame()? {
//!         frames.push(frame);
//!     }
//! }
//! assert_eq!(frames, vec![request]);
//! # Ok::<(), rpc_transport::TransportError>(())
//! ```

pub mod busy_poll;
pub mod clock;
pub mod connection;
pub mod decoder;
pub mod error;
pub mod event_loop;
mod exclusive_wake;
pub mod frame;
mod frame_clock;
pub mod hand_off;
pub mod handler;
pub mod header;
pub mod limits;
pub mod loop_handle;
pub mod metadata;
mod read_turn;
mod timer_heap;
pub mod tls;

pub use busy_poll::{BusyPoll, MAX_BUSY_POLL};
pub use connection::{Connection, CLOSE_GRACE};
pub use decoder::FrameDecoder;
pub use error::TransportError;
pub use event_loop::{
    spawn_loop, spawn_loop_handing_off, spawn_loop_with, LoopThread, READ_PAUSE_RECHECK,
};
pub use frame::{Frame, FrameBuilder, FrameHead};
pub use hand_off::AfterTurn;
pub use handler::{CloseReason, EofAction, FrameHandler};
pub use header::{FrameHeader, FrameKind, HEADER_LEN, MAGIC, VERSION};
pub use limits::{
    FrameLimits, DEFAULT_FRAME_TIMEOUT, DEFAULT_MAX_BODY_LEN, DEFAULT_MAX_METADATA_LEN,
    DEFAULT_MAX_NAME_LEN,
};
pub use loop_handle::{Acceptor, LoopHandle, MakeHandler};
pub use metadata::{Metadata, MetadataBuilder, MetadataError, MetadataIter};
pub use read_turn::ReadHere;
