//! The postcard codec: compact binary, the default.
//!
//! postcard itself ignores trailing bytes and has no depth limit; this wrapper rejects trailing
//! bytes, and runs every decode through [`crate::guard`], which bounds depth and element counts.

use bytes::{BufMut, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::Codec;
use crate::error::CodecError;
use crate::guard;

/// Wire id of [`Postcard`].
pub const POSTCARD_ID: u8 = 1;

/// The postcard codec (<https://postcard.jamesmunns.com>), id 1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Postcard;

impl Codec for Postcard {
    fn id(&self) -> u8 {
        POSTCARD_ID
    }

    fn name(&self) -> &'static str {
        "postcard"
    }

    fn encode<T: Serialize + ?Sized>(
        &self,
        value: &T,
        out: &mut BytesMut,
    ) -> Result<(), CodecError> {
        // `to_io` streams into the buffer through `Write`; the buffer grows as needed.
        postcard::to_io(value, out.writer())
            .map(|_| ())
            .map_err(|err| CodecError::Encode {
                codec: "postcard",
                detail: err.to_string(),
            })
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        let mut deserializer = postcard::Deserializer::from_bytes(bytes);
        let value = guard::decode(&mut deserializer, "postcard", bytes.len())?;
        let rest = deserializer.finalize().map_err(|err| CodecError::Decode {
            codec: "postcard",
            detail: err.to_string(),
        })?;
        if !rest.is_empty() {
            return Err(CodecError::TrailingBytes {
                codec: "postcard",
                count: rest.len(),
            });
        }
        Ok(value)
    }
}
