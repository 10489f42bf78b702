//! Limits a frame must respect: sizes, checked from the header before any memory is reserved,
//! and the time a frame may take to arrive.

use std::time::Duration;

/// Default cap on a frame body: 4 MiB (gRPC's default message size).
pub const DEFAULT_MAX_BODY_LEN: usize = 4 * 1024 * 1024;

/// Default cap on a method name: 255 bytes, plenty for `Service.Method`.
pub const DEFAULT_MAX_NAME_LEN: usize = 255;

/// Default cap on a frame's metadata section: 16 KiB (trace ids, auth tokens).
pub const DEFAULT_MAX_METADATA_LEN: usize = 16 * 1024;

/// Default frame timeout: a frame must arrive whole within 10 s of its first byte.
pub const DEFAULT_FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// The size limits one side of a connection enforces on the frames it reads and writes.
///
/// A frame over a limit is refused with a typed [`crate::TransportError`] raised from its
/// header alone: the decoder never reserves memory for a length it has not checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest body, in bytes. Default [`DEFAULT_MAX_BODY_LEN`].
    pub max_body_len: usize,
    /// Longest method name, in bytes (the wire field holds up to 65,535).
    /// Default [`DEFAULT_MAX_NAME_LEN`].
    pub max_name_len: usize,
    /// Largest metadata section, in bytes. Default [`DEFAULT_MAX_METADATA_LEN`].
    pub max_metadata_len: usize,
    /// Longest a frame may take to arrive, from its first byte to its last (not reset by each
    /// byte, so a peer trickling bytes cannot hold a connection open). On expiry the
    /// connection closes with [`crate::TransportError::FrameTimeout`]. `None`: no limit.
    /// Default [`DEFAULT_FRAME_TIMEOUT`].
    pub frame_timeout: Option<Duration>,
}

impl FrameLimits {
    /// Limits with a different body cap and the default name and metadata caps.
    pub fn with_max_body_len(max_body_len: usize) -> Self {
        FrameLimits {
            max_body_len,
            ..FrameLimits::default()
        }
    }
}

impl Default for FrameLimits {
    fn default() -> Self {
        FrameLimits {
            max_body_len: DEFAULT_MAX_BODY_LEN,
            max_name_len: DEFAULT_MAX_NAME_LEN,
            max_metadata_len: DEFAULT_MAX_METADATA_LEN,
            frame_timeout: Some(DEFAULT_FRAME_TIMEOUT),
        }
    }
}
