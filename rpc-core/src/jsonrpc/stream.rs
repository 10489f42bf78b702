//! `ValueSplitter`: finds where each JSON object ends in a byte stream with no framing
//! (Go's `json.Decoder` on a socket). Sans-I/O: bytes in, whole values out; owns no socket.
//!
//! It does not parse: it counts brackets outside strings, which is enough to find the end of
//! a well-formed object, and leaves checking the value to the JSON decoder. On malformed input
//! it may cut in the wrong place, but the decoder then rejects the piece and the connection
//! closes. Everything it holds is bounded: a value longer than `max_len` is refused as soon as
//! that many bytes of it have arrived, and consumed bytes are released before more are added.

use std::fmt;
use std::ops::Range;

/// Splits a byte stream into top-level JSON objects, separated by optional whitespace.
#[derive(Debug)]
pub(crate) struct ValueSplitter {
    /// Bytes received and not yet consumed: `buf[consumed..]` is live.
    buf: Vec<u8>,
    /// Bytes of `buf` returned as values (or skipped as whitespace).
    consumed: usize,
    /// Bytes of `buf` the scanner has looked at.
    scanned: usize,
    /// The current value's first byte in `buf`, once it has one.
    start: Option<usize>,
    /// Open brackets of the current value (no limit: a counter costs nothing, and the
    /// decoder enforces the nesting limit).
    depth: usize,
    in_string: bool,
    escaped: bool,
    max_len: usize,
}

/// Why the stream cannot be split further; the connection should close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SplitError {
    /// A value started with something other than `{`.
    NotAnObject {
        /// The first byte of the value.
        found: u8,
    },
    /// A value grew past the limit before it ended.
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
}

impl ValueSplitter {
    /// A splitter that refuses values longer than `max_len` bytes.
    pub(crate) fn new(max_len: usize) -> Self {
        ValueSplitter {
            buf: Vec::new(),
            consumed: 0,
            scanned: 0,
            start: None,
            depth: 0,
            in_string: false,
            escaped: false,
            max_len,
        }
    }

    /// Adds bytes read from the stream. Call [`ValueSplitter::poll_value`] until it returns
    /// `None` before adding more, so at most one value and one read are held.
    pub(crate) fn handle_bytes(&mut self, data: &[u8]) {
        if self.consumed > 0 {
            self.buf.drain(..self.consumed);
            self.scanned -= self.consumed;
            self.start = self.start.map(|start| start - self.consumed);
            self.consumed = 0;
            if self.buf.is_empty() && self.buf.capacity() > RETAINED_CAPACITY {
                // A large value has gone: do not keep its memory for a quiet connection.
                self.buf.shrink_to(RETAINED_CAPACITY);
            }
        }
        self.buf.extend_from_slice(data);
    }

    /// Where the next whole value lies (read it with [`ValueSplitter::value`]), if the bytes
    /// added so far complete one.
    ///
    /// # Errors
    ///
    /// [`SplitError`] if the stream cannot hold a valid value here; the splitter should not
    /// be used again.
    pub(crate) fn poll_value(&mut self) -> Result<Option<Range<usize>>, SplitError> {
        while self.scanned < self.buf.len() {
            let at = self.scanned;
            let byte = self.buf[at];
            self.scanned += 1;
            let Some(start) = self.start else {
                if byte.is_ascii_whitespace() {
                    self.consumed = self.scanned;
                    continue;
                }
                if byte != b'{' {
                    return Err(SplitError::NotAnObject { found: byte });
                }
                self.start = Some(at);
                self.depth = 1;
                continue;
            };
            if self.scanned - start > self.max_len {
                return Err(SplitError::TooLarge {
                    limit: self.max_len,
                });
            }
            if self.in_string {
                match byte {
                    _ if self.escaped => self.escaped = false,
                    b'\\' => self.escaped = true,
                    b'"' => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match byte {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        self.start = None;
                        self.consumed = self.scanned;
                        return Ok(Some(start..self.scanned));
                    }
                }
                _ => {}
            }
        }
        Ok(None)
    }

    /// The bytes of a value `poll_value` found; valid until bytes are next added.
    pub(crate) fn value(&self, range: Range<usize>) -> &[u8] {
        &self.buf[range]
    }

    /// True if part of a value has arrived and its end has not.
    pub(crate) fn has_partial(&self) -> bool {
        self.start.is_some()
    }

    /// Bytes held now (for tests of the bound).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.buf.len()
    }
}

impl fmt::Display for SplitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SplitError::NotAnObject { found } if found.is_ascii_graphic() => write!(
                f,
                "expected a JSON object, found a value starting with `{}`",
                char::from(*found)
            ),
            SplitError::NotAnObject { found } => write!(
                f,
                "expected a JSON object, found a value starting with byte 0x{found:02x}"
            ),
            SplitError::TooLarge { limit } => {
                write!(f, "JSON value exceeds the {limit}-byte limit")
            }
        }
    }
}

impl std::error::Error for SplitError {}

/// Buffer capacity kept between values; more is released once a large value is consumed.
const RETAINED_CAPACITY: usize = 16 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    fn split_in_chunks(
        input: &[u8],
        chunk: usize,
        max_len: usize,
    ) -> Result<Vec<String>, SplitError> {
        let mut splitter = ValueSplitter::new(max_len);
        let mut values = Vec::new();
        for piece in input.chunks(chunk) {
            splitter.handle_bytes(piece);
            while let Some(range) = splitter.poll_value()? {
                values.push(String::from_utf8_lossy(splitter.value(range)).into_owned());
            }
        }
        Ok(values)
    }

    #[test]
    fn values_come_out_whole_in_every_chunking() {
        let input = br#" {"method":"A.B","params":[{"A":7,"B":"}{]["}],"id":1}
{"s":"quote \" and \\","n":[[],{}]}{"id":2}"#;
        let expected = vec![
            r#"{"method":"A.B","params":[{"A":7,"B":"}{]["}],"id":1}"#.to_owned(),
            r#"{"s":"quote \" and \\","n":[[],{}]}"#.to_owned(),
            r#"{"id":2}"#.to_owned(),
        ];
        for chunk in 1..=input.len() {
            assert_eq!(
                split_in_chunks(input, chunk, 1024),
                Ok(expected.clone()),
                "{chunk}"
            );
        }
    }

    #[test]
    fn a_half_value_is_held_as_partial() {
        let mut splitter = ValueSplitter::new(1024);
        splitter.handle_bytes(b"  \n");
        assert_eq!(splitter.poll_value(), Ok(None));
        assert!(!splitter.has_partial());
        splitter.handle_bytes(br#"{"method":"A.B","par"#);
        assert_eq!(splitter.poll_value(), Ok(None));
        assert!(splitter.has_partial());
        splitter.handle_bytes(br#"ams":[1]}"#);
        let range = splitter.poll_value().unwrap().unwrap();
        assert_eq!(splitter.value(range), br#"{"method":"A.B","params":[1]}"#);
        assert!(!splitter.has_partial());
    }

    #[test]
    fn a_value_that_is_not_an_object_is_refused_at_its_first_byte() {
        for input in [&b"[1,2]"[..], b"42", b"\"x\"", b"null", b"hello"] {
            let err = split_in_chunks(input, 1, 1024).unwrap_err();
            assert_eq!(err, SplitError::NotAnObject { found: input[0] });
        }
        let err = split_in_chunks(b"\x00", 1, 16).unwrap_err();
        assert_eq!(
            err.to_string(),
            "expected a JSON object, found a value starting with byte 0x00"
        );
    }

    #[test]
    fn an_oversized_value_is_refused_before_the_buffer_passes_the_limit() {
        let mut splitter = ValueSplitter::new(100);
        splitter.handle_bytes(b"{\"pad\":\"");
        assert_eq!(splitter.poll_value(), Ok(None));
        let mut refused = None;
        for _ in 0..1000 {
            splitter.handle_bytes(b"aaaaaaaaaa");
            if let Err(err) = splitter.poll_value() {
                refused = Some(err);
                break;
            }
        }
        assert_eq!(refused, Some(SplitError::TooLarge { limit: 100 }));
        assert!(splitter.held() <= 110, "{}", splitter.held());
        // Exactly the limit passes.
        let value = format!("{{\"p\":\"{}\"}}", "a".repeat(92));
        assert_eq!(value.len(), 100);
        assert_eq!(split_in_chunks(value.as_bytes(), 7, 100), Ok(vec![value]));
    }

    #[test]
    fn consumed_bytes_are_released_when_more_arrive() {
        let mut splitter = ValueSplitter::new(64);
        for _ in 0..1000 {
            splitter.handle_bytes(b"{\"id\":1}\n");
            assert!(splitter.poll_value().unwrap().is_some());
            assert_eq!(splitter.poll_value(), Ok(None));
        }
        assert!(splitter.held() <= 9, "{}", splitter.held());
    }
}
