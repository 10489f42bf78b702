//! `CodecError`: why a value could not be encoded or decoded.

use std::fmt;

/// A codec failure. Each variant names the codec (`"postcard"`, `"json"`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecError {
    /// The value could not be encoded.
    Encode {
        /// The codec's name.
        codec: &'static str,
        /// What failed.
        detail: String,
    },
    /// The bytes are not a valid encoding of the expected type.
    Decode {
        /// The codec's name.
        codec: &'static str,
        /// What failed.
        detail: String,
    },
    /// The bytes held a valid value followed by more bytes.
    TrailingBytes {
        /// The codec's name.
        codec: &'static str,
        /// How many bytes were left over.
        count: usize,
    },
    /// The value nests deeper than the decoder allows.
    TooDeep {
        /// The codec's name.
        codec: &'static str,
        /// The depth limit.
        limit: usize,
    },
    /// The input declares more sequence or map elements than the decoder allows.
    TooManyElements {
        /// The codec's name.
        codec: &'static str,
        /// The element budget.
        limit: usize,
    },
}

impl CodecError {
    /// The name of the codec that failed.
    pub fn codec(&self) -> &'static str {
        match self {
            CodecError::Encode { codec, .. }
            | CodecError::Decode { codec, .. }
            | CodecError::TrailingBytes { codec, .. }
            | CodecError::TooDeep { codec, .. }
            | CodecError::TooManyElements { codec, .. } => codec,
        }
    }
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::Encode { codec, detail } => write!(f, "{codec} encode failed: {detail}"),
            CodecError::Decode { codec, detail } => write!(f, "{codec} decode failed: {detail}"),
            CodecError::TrailingBytes { codec, count } => {
                write!(
                    f,
                    "{codec} decode failed: {count} trailing bytes after the value"
                )
            }
            CodecError::TooDeep { codec, limit } => {
                write!(
                    f,
                    "{codec} decode failed: value nests deeper than {limit} levels"
                )
            }
            CodecError::TooManyElements { codec, limit } => {
                write!(
                    f,
                    "{codec} decode failed: more than {limit} elements declared"
                )
            }
        }
    }
}

impl std::error::Error for CodecError {}
