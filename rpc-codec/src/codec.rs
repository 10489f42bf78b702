//! The `Codec` trait: the one extension point of this crate.

use bytes::BytesMut;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::CodecError;

/// Turns serde values into bytes and back.
///
/// A codec is a value (usually zero-sized) so that a runtime choice, [`crate::CodecKind`],
/// can implement the trait too. Decoding must be strict (no trailing bytes), must never
/// panic, and must bound the memory and stack a hostile input can claim.
pub trait Codec {
    /// The stable one-byte id carried in each frame header.
    fn id(&self) -> u8;

    /// A lowercase name for messages, e.g. `"postcard"`.
    fn name(&self) -> &'static str;

    /// Appends the encoding of `value` to `out`.
    ///
    /// # Errors
    ///
    /// [`CodecError::Encode`] if the value cannot be represented in this codec.
    fn encode<T: Serialize + ?Sized>(
        &self,
        value: &T,
        out: &mut BytesMut,
    ) -> Result<(), CodecError>;

    /// Decodes one value that fills `bytes` exactly.
    ///
    /// # Errors
    ///
    /// [`CodecError::Decode`], [`CodecError::TrailingBytes`], [`CodecError::TooDeep`] or
    /// [`CodecError::TooManyElements`].
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError>;
}
