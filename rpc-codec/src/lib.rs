//! # rpc-codec: values to bytes and back
//!
//! The codec layer of netrpc. A [`Codec`] turns any serde value into bytes and decodes bytes
//! into any owned serde value, strictly: trailing bytes are an error, nothing panics, and
//! hostile input is bounded (see below). It knows nothing of sockets or frames: the transport
//! carries the bytes, and the frame header carries the codec's one-byte id.
//!
//! ```text
//!   Args { a: 7, b: 8 } ──encode──► [0e 10] (postcard)  or  {"a":7,"b":8} (JSON)
//!   Args { a: 7, b: 8 } ◄──decode── same bytes; extra bytes, bad data or hostile
//!                                   nesting ──► CodecError
//! ```
//!
//! Two codecs ship: [`Postcard`] (id 1, compact, the default) and [`Json`] (id 2, readable,
//! behind the default `json` feature). [`CodecKind`] picks one at run time.
//!
//! # Example
//!
//! ```
//! use bytes::BytesMut;
//! use rpc_codec::{Codec, CodecKind};
//!
//! let mut bytes = BytesMut::new();
//! CodecKind::Postcard.encode(&(7i64, 8i64), &mut bytes)?;
//! assert_eq!(&bytes[..], &[0x0e, 0x10]);
//! let back: (i64, i64) = CodecKind::Postcard.decode(&bytes)?;
//! assert_eq!(back, (7, 8));
//! # Ok::<(), rpc_codec::CodecError>(())
//! ```
//!
//! # Hostile input
//!
//! Both codecs decode through one guard ([`guard`]) with the same limits:
//!
//! | input | postcard alone | serde_json alone | with the guard (both codecs) |
//! |---|---|---|---|
//! | deep nesting (a recursive type) | no limit: overflows the stack and aborts the process | fails at depth 128 | [`CodecError::TooDeep`] past [`MAX_DECODE_DEPTH`] (100) levels |
//! | a collection of zero-sized elements declaring `u32::MAX` of them (5 bytes), e.g. `BTreeSet<()>` | loops `u32::MAX` times: about 3 s of CPU per 5-byte message (release build) | impossible (each element needs bytes) | [`CodecError::TooManyElements`] once elements exceed input length + 4,096 |
//! | a collection declaring `u32::MAX` elements, little data | serde caps the pre-allocation at 1 MiB; fails at end of input | fails at end of input | the declared length passed to the visitor is capped at the remaining budget, so reservations follow the input's length |
//! | trailing bytes | ignored (JSON bytes may decode as a wrong value) | rejected | [`CodecError::TrailingBytes`] / [`CodecError::Decode`] |
//!
//! The framework's frame limit (4 MiB by default) bounds the input itself. Every row is a test
//! in `rpc-codec/tests/hostile_input.rs`, each run in a child process so that a stack overflow
//! fails one test rather than the run; `cargo test -p rpc-codec --test hostile_input --
//! --nocapture` prints each error with its decode time and peak-memory growth.

mod codec;
mod error;
pub mod guard;
#[cfg(feature = "json")]
mod json;
mod kind;
mod postcard;

pub use codec::Codec;
pub use error::CodecError;
pub use guard::MAX_DECODE_DEPTH;
#[cfg(feature = "json")]
pub use json::{Json, JSON_ID};
pub use kind::CodecKind;
pub use postcard::{Postcard, POSTCARD_ID};
