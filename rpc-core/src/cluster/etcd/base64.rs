//! Base64 (RFC 4648, standard alphabet, with padding): etcd's JSON gateway carries every key
//! and value as base64 text.

use std::error::Error;
use std::fmt;

/// Encodes `bytes` as padded standard base64.
///
/// ```
/// assert_eq!(rpc_core::cluster::etcd::base64::encode(b"foo"), "Zm9v");
/// ```
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= group.len() {
                out.push(char::from(ALPHABET[(n >> shift & 0x3f) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes padded standard base64.
///
/// # Errors
///
/// [`Base64Error`] for a length that is not a multiple of four, a byte outside the alphabet,
/// or padding anywhere but at the end.
pub fn decode(text: &str) -> Result<Vec<u8>, Base64Error> {
    let bytes = text.as_bytes();
    if bytes.len() % 4 != 0 {
        return Err(Base64Error::Length { len: bytes.len() });
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    let groups = bytes.len() / 4;
    for (index, group) in bytes.chunks(4).enumerate() {
        let padding = group.iter().rev().take_while(|&&b| b == b'=').count();
        if padding > 2 || (padding > 0 && index + 1 != groups) {
            return Err(Base64Error::Padding);
        }
        let mut n = 0u32;
        for (offset, &byte) in group[..4 - padding].iter().enumerate() {
            let value = sextet(byte).ok_or(Base64Error::Byte {
                at: index * 4 + offset,
                byte,
            })?;
            n |= u32::from(value) << (18 - 6 * offset);
        }
        let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&decoded[..3 - padding]);
    }
    Ok(out)
}

/// Why a base64 text could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Base64Error {
    /// The text's length is not a multiple of four.
    Length {
        /// The length in bytes.
        len: usize,
    },
    /// A byte outside the alphabet.
    Byte {
        /// Its offset in the text.
        at: usize,
        /// The byte.
        byte: u8,
    },
    /// `=` padding other than one or two at the very end.
    Padding,
}

impl fmt::Display for Base64Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Base64Error::Length { len } => {
                write!(f, "base64 text of {len} bytes is not a multiple of 4")
            }
            Base64Error::Byte { at, byte } => {
                write!(f, "byte {byte:#04x} at offset {at} is not base64")
            }
            Base64Error::Padding => f.write_str("base64 padding is misplaced"),
        }
    }
}

impl Error for Base64Error {}

fn sextet(byte: u8) -> Option<u8> {
    match byte {
        b'A'..=b'Z' => Some(byte - b'A'),
        b'a'..=b'z' => Some(byte - b'a' + 26),
        b'0'..=b'9' => Some(byte - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_4648_test_vectors_round_trip() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(encode(plain.as_bytes()), encoded);
            assert_eq!(decode(encoded).expect("valid"), plain.as_bytes());
        }
        let every_byte: Vec<u8> = (0..=255).collect();
        assert_eq!(decode(&encode(&every_byte)).expect("valid"), every_byte);
    }

    #[test]
    fn bad_base64_gets_typed_errors() {
        assert_eq!(decode("Zm9"), Err(Base64Error::Length { len: 3 }));
        assert_eq!(decode("Zm9*"), Err(Base64Error::Byte { at: 3, byte: b'*' }));
        assert_eq!(decode("Zg==Zm9v"), Err(Base64Error::Padding));
        assert_eq!(decode("Z==="), Err(Base64Error::Padding));
        assert_eq!(decode("=Zm9"), Err(Base64Error::Byte { at: 0, byte: b'=' }));
    }
}
