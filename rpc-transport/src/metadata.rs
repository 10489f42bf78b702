//! Metadata: the key/value section of a frame, for trace ids, auth tokens and the like.
//!
//! Layout, repeated until the section ends (big-endian lengths):
//!
//! | size        | field       |
//! |-------------|-------------|
//! | 1           | `key_len`   |
//! | `key_len`   | key (UTF-8) |
//! | 2           | `value_len` |
//! | `value_len` | value bytes |
//!
//! The section is empty by default, and a frame without metadata pays nothing for it.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

/// Builds a metadata section from key/value pairs.
///
/// ```
/// use rpc_transport::{Metadata, MetadataBuilder};
///
/// let section = MetadataBuilder::new().insert("trace-id", b"abc123").build();
/// let pairs: Vec<_> = Metadata::new(&section).iter().collect::<Result<_, _>>()?;
/// assert_eq!(pairs, vec![("trace-id", &b"abc123"[..])]);
/// # Ok::<(), rpc_transport::MetadataError>(())
/// ```
#[derive(Debug, Default, Clone)]
pub struct MetadataBuilder {
    buf: BytesMut,
}

impl MetadataBuilder {
    /// An empty section.
    pub fn new() -> Self {
        MetadataBuilder::default()
    }

    /// Appends one pair.
    ///
    /// # Panics
    ///
    /// If `key` is longer than 255 bytes or `value` longer than 65,535: both are programming
    /// errors in the caller, never something a peer can cause.
    pub fn insert(mut self, key: &str, value: &[u8]) -> Self {
        let key_len = u8::try_from(key.len()).expect("metadata keys are at most 255 bytes");
        let value_len =
            u16::try_from(value.len()).expect("metadata values are at most 65535 bytes");
        self.buf.put_u8(key_len);
        self.buf.put_slice(key.as_bytes());
        self.buf.put_u16(value_len);
        self.buf.put_slice(value);
        self
    }

    /// The encoded section, ready for [`crate::Frame::metadata`].
    pub fn build(self) -> Bytes {
        self.buf.freeze()
    }
}

/// A read-only view of a frame's metadata section.
#[derive(Debug, Clone, Copy)]
pub struct Metadata<'a> {
    bytes: &'a [u8],
}

impl<'a> Metadata<'a> {
    /// Views `bytes` as a metadata section.
    pub fn new(bytes: &'a [u8]) -> Self {
        Metadata { bytes }
    }

    /// The pairs in order. A malformed section yields one `Err` and then stops.
    pub fn iter(&self) -> MetadataIter<'a> {
        MetadataIter { rest: self.bytes }
    }

    /// The value of the first pair named `key`, ignoring a malformed tail.
    pub fn get(&self, key: &str) -> Option<&'a [u8]> {
        self.iter()
            .map_while(Result::ok)
            .find_map(|(k, v)| (k == key).then_some(v))
    }
}

/// Iterator over the pairs of a [`Metadata`] section.
#[derive(Debug, Clone)]
pub struct MetadataIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for MetadataIter<'a> {
    type Item = Result<(&'a str, &'a [u8]), MetadataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let item = read_pair(self.rest);
        self.rest = match item {
            Ok((_, _, rest)) => rest,
            Err(_) => &[],
        };
        Some(item.map(|(key, value, _)| (key, value)))
    }
}

/// A metadata section that does not follow the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetadataError {
    /// A length runs past the end of the section.
    Truncated,
    /// A key is not valid UTF-8.
    KeyNotUtf8,
}

impl fmt::Display for MetadataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetadataError::Truncated => write!(f, "metadata entry runs past the section end"),
            MetadataError::KeyNotUtf8 => write!(f, "metadata key is not valid utf-8"),
        }
    }
}

impl std::error::Error for MetadataError {}

fn read_pair(bytes: &[u8]) -> Result<(&str, &[u8], &[u8]), MetadataError> {
    let (&key_len, rest) = bytes.split_first().ok_or(MetadataError::Truncated)?;
    let (key, rest) = split(rest, usize::from(key_len))?;
    let (len_bytes, rest) = split(rest, 2)?;
    let value_len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
    let (value, rest) = split(rest, value_len)?;
    let key = std::str::from_utf8(key).map_err(|_| MetadataError::KeyNotUtf8)?;
    Ok((key, value, rest))
}

fn split(bytes: &[u8], at: usize) -> Result<(&[u8], &[u8]), MetadataError> {
    if bytes.len() < at {
        return Err(MetadataError::Truncated);
    }
    Ok(bytes.split_at(at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip_in_order() {
        let section = MetadataBuilder::new()
            .insert("trace-id", b"t1")
            .insert("", b"")
            .insert("auth", &[0xff; 300])
            .build();
        let pairs: Vec<_> = Metadata::new(&section)
            .iter()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(pairs.len(), 3);
        assert_eq!(pairs[0], ("trace-id", &b"t1"[..]));
        assert_eq!(pairs[1], ("", &b""[..]));
        assert_eq!(pairs[2].1.len(), 300);
        assert_eq!(
            Metadata::new(&section).get("auth").map(<[u8]>::len),
            Some(300)
        );
        assert_eq!(Metadata::new(&section).get("missing"), None);
    }

    #[test]
    fn truncated_sections_yield_one_error_at_every_length() {
        let section = MetadataBuilder::new().insert("key", b"value").build();
        for len in 1..section.len() {
            let items: Vec<_> = Metadata::new(&section[..len]).iter().collect();
            assert_eq!(items, vec![Err(MetadataError::Truncated)], "len {len}");
        }
    }

    #[test]
    fn non_utf8_keys_are_an_error() {
        let bytes = [1u8, 0xff, 0, 0];
        let items: Vec<_> = Metadata::new(&bytes).iter().collect();
        assert_eq!(items, vec![Err(MetadataError::KeyNotUtf8)]);
    }
}
