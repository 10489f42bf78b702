//! The JSON codec: readable, and what other languages speak.
//!
//! serde_json already rejects trailing characters and limits nesting to 128; decoding still
//! goes through [`crate::guard`] so both codecs behave the same on hostile input.

use bytes::{BufMut, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::Codec;
use crate::error::CodecError;
use crate::guard;

/// Wire id of [`Json`].
pub const JSON_ID: u8 = 2;

/// The JSON codec (serde_json), id 2.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Json;

impl Codec for Json {
    fn id(&self) -> u8 {
        JSON_ID
    }

    fn name(&self) -> &'static str {
        "json"
    }

    fn encode<T: Serialize + ?Sized>(
        &self,
        value: &T,
        out: &mut BytesMut,
    ) -> Result<(), CodecError> {
        serde_json::to_writer(out.writer(), value).map_err(|err| CodecError::Encode {
            codec: "json",
            detail: err.to_string(),
        })
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        let mut deserializer = serde_json::Deserializer::from_slice(bytes);
        let value = guard::decode(&mut deserializer, "json", bytes.len())?;
        deserializer.end().map_err(|err| CodecError::Decode {
            codec: "json",
            detail: err.to_string(),
        })?;
        Ok(value)
    }
}
