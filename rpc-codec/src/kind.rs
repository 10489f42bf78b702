//! `CodecKind`: the codec chosen at run time, by name or by wire id.

use bytes::BytesMut;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::Codec;
use crate::error::CodecError;
#[cfg(feature = "json")]
use crate::json::{Json, JSON_ID};
use crate::postcard::{Postcard, POSTCARD_ID};

/// One of the codecs this build has; implements [`Codec`] by dispatching to it.
///
/// A server finds the codec of each request with [`CodecKind::from_id`] and answers in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum CodecKind {
    /// [`Postcard`], the default.
    #[default]
    Postcard,
    /// [`Json`].
    #[cfg(feature = "json")]
    Json,
}

impl CodecKind {
    /// The codec with wire id `id`, if this build has it.
    pub const fn from_id(id: u8) -> Option<CodecKind> {
        match id {
            POSTCARD_ID => Some(CodecKind::Postcard),
            #[cfg(feature = "json")]
            JSON_ID => Some(CodecKind::Json),
            _ => None,
        }
    }

    /// Every codec this build has.
    pub fn all() -> &'static [CodecKind] {
        &[
            CodecKind::Postcard,
            #[cfg(feature = "json")]
            CodecKind::Json,
        ]
    }
}

impl Codec for CodecKind {
    fn id(&self) -> u8 {
        match self {
            CodecKind::Postcard => Postcard.id(),
            #[cfg(feature = "json")]
            CodecKind::Json => Json.id(),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            CodecKind::Postcard => Postcard.name(),
            #[cfg(feature = "json")]
            CodecKind::Json => Json.name(),
        }
    }

    fn encode<T: Serialize + ?Sized>(
        &self,
        value: &T,
        out: &mut BytesMut,
    ) -> Result<(), CodecError> {
        match self {
            CodecKind::Postcard => Postcard.encode(value, out),
            #[cfg(feature = "json")]
            CodecKind::Json => Json.encode(value, out),
        }
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        match self {
            CodecKind::Postcard => Postcard.decode(bytes),
            #[cfg(feature = "json")]
            CodecKind::Json => Json.decode(bytes),
        }
    }
}
