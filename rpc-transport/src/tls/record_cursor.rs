//! Where a stream of TLS records stands: between two records, or inside one.
//!
//! The frame timeout starts when part of a frame has arrived. On a TLS connection a frame
//! travels inside records, and a record cut short stays inside rustls, where the frame
//! decoder cannot see it: a peer that sent half a record and then nothing held the
//! connection open for ever. Reading only the five-byte record headers (type, version,
//! length), the cursor tells the loop that a record has begun and not ended, so the frame
//! clock runs for it too.

/// Bytes of a TLS record header: content type (1), protocol version (2), length (2).
const RECORD_HEADER_LEN: usize = 5;

/// The position in a stream of TLS records (see the module doc).
#[derive(Debug, Default)]
pub(crate) struct RecordCursor {
    /// Header bytes of the next record seen so far (0 to 4; 5 completes it).
    header: [u8; RECORD_HEADER_LEN],
    header_seen: usize,
    /// Body bytes of the current record still to come.
    body_left: usize,
}

impl RecordCursor {
    /// Moves past `bytes`, which follow the bytes seen before in the stream.
    pub(crate) fn advance(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let taken = self.body_left.min(bytes.len());
                self.body_left -= taken;
                bytes = &bytes[taken..];
                continue;
            }
            let taken = (RECORD_HEADER_LEN - self.header_seen).min(bytes.len());
            self.header[self.header_seen..self.header_seen + taken]
                .copy_from_slice(&bytes[..taken]);
            self.header_seen += taken;
            bytes = &bytes[taken..];
            if self.header_seen == RECORD_HEADER_LEN {
                self.header_seen = 0;
                self.body_left = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
            }
        }
    }

    /// True while a record has begun and not ended.
    pub(crate) fn is_mid_record(&self) -> bool {
        self.header_seen > 0 || self.body_left > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_followed_across_any_split() {
        // Two records: 3 body bytes, then an empty one.
        let stream = [23, 3, 3, 0, 3, b'a', b'b', b'c', 21, 3, 3, 0, 0];
        for split in 0..=stream.len() {
            let mut cursor = RecordCursor::default();
            cursor.advance(&stream[..split]);
            let between = matches!(split, 0 | 8 | 13);
            assert_eq!(cursor.is_mid_record(), !between, "split at {split}");
            cursor.advance(&stream[split..]);
            assert!(!cursor.is_mid_record(), "whole stream, split at {split}");
        }
    }

    #[test]
    fn a_byte_at_a_time_reaches_the_same_place() {
        let mut cursor = RecordCursor::default();
        for byte in [23u8, 3, 3, 1, 0] {
            cursor.advance(&[byte]);
        }
        assert!(cursor.is_mid_record());
        cursor.advance(&[0; 255]);
        assert!(cursor.is_mid_record(), "one byte of 256 still to come");
        cursor.advance(&[0]);
        assert!(!cursor.is_mid_record());
    }
}
