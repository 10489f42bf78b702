//! HTTP/1.1 response decoder, sans I/O: bytes in, a status line and headers out, then the body
//! as it arrives, framed by `Content-Length`, `Transfer-Encoding: chunked` or the end of the
//! connection. Owns no socket; the blocking client in `http.rs` feeds it.
//!
//! Every buffer is capped: the head at [`MAX_HEAD_LEN`] bytes, a chunk-size line at
//! [`MAX_CHUNK_LINE_LEN`], the trailers at [`MAX_TRAILERS_LEN`], a declared body at the
//! caller's limit. Body bytes are handed out as
//! soon as they are decoded, so a chunk is never buffered whole.

use bytes::{Buf, BytesMut};

use super::http::HttpError;

/// Longest response head (status line and headers) accepted, in bytes.
pub const MAX_HEAD_LEN: usize = 16 * 1024;
/// Longest chunk-size line (size and extensions) or trailer line accepted, in bytes.
pub const MAX_CHUNK_LINE_LEN: usize = 1024;
/// Most trailer bytes (every line after the last chunk, CRLFs counted) accepted; past it the
/// body fails with [`HttpError::TrailersTooLarge`], so endless trailers cannot hold a reader.
pub const MAX_TRAILERS_LEN: usize = 4 * 1024;

/// A response's status line and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// The status code, e.g. 200.
    pub status: u16,
    /// The headers in order, names lowercased.
    pub headers: Vec<(String, String)>,
}

impl ResponseHead {
    /// The first header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// What the decoder has for the body right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyEvent {
    /// Decoded body bytes (never empty).
    Data(Vec<u8>),
    /// More input is needed.
    NeedMore,
    /// The body is complete.
    End,
}

/// Decodes one HTTP/1.1 response from bytes fed in any chunking.
#[derive(Debug)]
pub struct ResponseDecoder {
    /// Bytes fed and not yet decoded: taken from the front in O(1) (a body of one-byte
    /// chunks takes thousands of pieces from each read).
    buf: BytesMut,
    state: State,
    eof: bool,
    max_body_len: usize,
    /// Trailer bytes taken so far, against [`MAX_TRAILERS_LEN`].
    trailers_len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Length { remaining: usize },
    ChunkSize,
    ChunkData { remaining: usize },
    ChunkDataEnd,
    Trailers,
    UntilClose,
    Done,
}

impl ResponseDecoder {
    /// A decoder refusing bodies declared longer than `max_body_len` bytes.
    pub fn new(max_body_len: usize) -> Self {
        ResponseDecoder {
            buf: BytesMut::new(),
            state: State::Head,
            eof: false,
            max_body_len,
            trailers_len: 0,
        }
    }

    /// Bytes read from the connection.
    pub fn handle_bytes(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The peer closed the connection; no more bytes will come.
    pub fn handle_eof(&mut self) {
        self.eof = true;
    }

    /// The status line and headers, once they have arrived (interim 1xx responses skipped).
    ///
    /// # Errors
    ///
    /// [`HttpError::HeadTooLarge`], [`HttpError::MalformedStatusLine`],
    /// [`HttpError::MalformedHeader`], [`HttpError::BodyTooLarge`] for a declared length over
    /// the limit, [`HttpError::UnexpectedEof`].
    pub fn poll_head(&mut self) -> Result<Option<ResponseHead>, HttpError> {
        loop {
            check_status_line_start(&self.buf)?;
            let Some(end) = find(&self.buf, b"\r\n\r\n") else {
                if self.buf.len() > MAX_HEAD_LEN {
                    return Err(HttpError::HeadTooLarge {
                        limit: MAX_HEAD_LEN,
                    });
                }
                return if self.eof {
                    Err(HttpError::UnexpectedEof)
                } else {
                    Ok(None)
                };
            };
            if end > MAX_HEAD_LEN {
                return Err(HttpError::HeadTooLarge {
                    limit: MAX_HEAD_LEN,
                });
            }
            let head_bytes = self.buf.split_to(end + 4);
            let head = parse_head(&head_bytes[..end])?;
            if (100..200).contains(&head.status) {
                continue;
            }
            self.state = self.framing(&head)?;
            return Ok(Some(head));
        }
    }

    /// The body bytes decoded so far, or whether it has ended. Call after
    /// [`ResponseDecoder::poll_head`] returned the head.
    ///
    /// # Errors
    ///
    /// [`HttpError::MalformedChunk`], [`HttpError::BodyTooLarge`] for a chunk over the limit,
    /// [`HttpError::TrailersTooLarge`], [`HttpError::UnexpectedEof`] if the connection closed
    /// mid-body.
    pub fn poll_body(&mut self) -> Result<BodyEvent, HttpError> {
        let mut data = Vec::new();
        loop {
            match self.state {
                State::Head => return Err(HttpError::UnexpectedEof),
                State::Done => break,
                State::Length { remaining } | State::ChunkData { remaining } => {
                    let take = remaining.min(self.buf.len());
                    data.extend_from_slice(&self.buf[..take]);
                    self.buf.advance(take);
                    let left = remaining - take;
                    self.state = match (self.state, left) {
                        (State::Length { .. }, 0) => State::Done,
                        (State::Length { .. }, _) => State::Length { remaining: left },
                        (_, 0) => State::ChunkDataEnd,
                        (_, _) => State::ChunkData { remaining: left },
                    };
                    if left > 0 {
                        break;
                    }
                }
                State::ChunkDataEnd => {
                    if self.buf.len() < 2 {
                        break;
                    }
                    if &self.buf[..2] != b"\r\n" {
                        return Err(malformed_chunk("chunk data not followed by CRLF"));
                    }
                    self.buf.advance(2);
                    self.state = State::ChunkSize;
                }
                State::ChunkSize => {
                    let Some(line) = self.take_line()? else { break };
                    let size = parse_chunk_size(&line)?;
                    if size > self.max_body_len {
                        return Err(HttpError::BodyTooLarge {
                            limit: self.max_body_len,
                        });
                    }
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::ChunkData { remaining: size }
                    };
                }
                State::Trailers => {
                    let Some(line) = self.take_line()? else { break };
                    self.trailers_len += line.len() + 2;
                    if self.trailers_len > MAX_TRAILERS_LEN {
                        return Err(HttpError::TrailersTooLarge {
                            limit: MAX_TRAILERS_LEN,
                        });
                    }
                    if line.is_empty() {
                        self.state = State::Done;
                    }
                }
                State::UntilClose => {
                    data.extend_from_slice(&self.buf);
                    self.buf.clear();
                    if self.eof {
                        self.state = State::Done;
                    }
                    break;
                }
            }
        }
        if !data.is_empty() {
            return Ok(BodyEvent::Data(data));
        }
        match self.state {
            State::Done => Ok(BodyEvent::End),
            _ if self.eof => Err(HttpError::UnexpectedEof),
            _ => Ok(BodyEvent::NeedMore),
        }
    }

    /// How the body after `head` is delimited.
    fn framing(&self, head: &ResponseHead) -> Result<State, HttpError> {
        if head.status == 204 || head.status == 304 {
            return Ok(State::Done);
        }
        let chunked = head
            .headers
            .iter()
            .filter(|(name, _)| name == "transfer-encoding")
            .flat_map(|(_, value)| value.split(','))
            .last()
            .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"));
        if chunked {
            return Ok(State::ChunkSize);
        }
        let mut length = None;
        for (_, value) in head.headers.iter().filter(|(n, _)| n == "content-length") {
            let parsed = parse_decimal(value.trim()).ok_or_else(|| HttpError::MalformedHeader {
                line: format!("content-length: {value}"),
            })?;
            if length.is_some_and(|earlier| earlier != parsed) {
                return Err(HttpError::MalformedHeader {
                    line: format!("content-length: {value} (conflicting)"),
                });
            }
            length = Some(parsed);
        }
        match length {
            Some(len) if len > self.max_body_len => Err(HttpError::BodyTooLarge {
                limit: self.max_body_len,
            }),
            Some(0) => Ok(State::Done),
            Some(len) => Ok(State::Length { remaining: len }),
            None => Ok(State::UntilClose),
        }
    }

    /// One CRLF-terminated line (without the CRLF), if whole.
    fn take_line(&mut self) -> Result<Option<String>, HttpError> {
        match find(&self.buf, b"\r\n") {
            Some(end) if end <= MAX_CHUNK_LINE_LEN => {
                let line = self.buf.split_to(end + 2);
                String::from_utf8(line[..end].to_vec())
                    .map(Some)
                    .map_err(|_| malformed_chunk("a chunk line is not UTF-8"))
            }
            Some(_) => Err(malformed_chunk("chunk line too long")),
            None if self.buf.len() > MAX_CHUNK_LINE_LEN => {
                Err(malformed_chunk("chunk line too long"))
            }
            None => Ok(None),
        }
    }
}

fn parse_head(bytes: &[u8]) -> Result<ResponseHead, HttpError> {
    let text = std::str::from_utf8(bytes).map_err(|_| HttpError::MalformedStatusLine {
        line: String::from_utf8_lossy(bytes).chars().take(80).collect(),
    })?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = parse_status_line(status_line).ok_or_else(|| HttpError::MalformedStatusLine {
        line: status_line.chars().take(80).collect(),
    })?;
    let mut headers = Vec::new();
    for line in lines {
        let parsed = line.split_once(':').filter(|(name, _)| {
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
        });
        let Some((name, value)) = parsed else {
            return Err(HttpError::MalformedHeader {
                line: line.chars().take(80).collect(),
            });
        };
        headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
    }
    Ok(ResponseHead { status, headers })
}

/// Refuses, as soon as its first bytes show it, a head that cannot be HTTP/1.x: one not
/// starting `HTTP/1.1 ` or `HTTP/1.0 `, or whose status line ends in a bare LF. Without this,
/// such a response would be waited on until the head's cap or the deadline.
fn check_status_line_start(buf: &[u8]) -> Result<(), HttpError> {
    let start = &buf[..buf.len().min(9)];
    let versioned = [&b"HTTP/1.1 "[..], b"HTTP/1.0 "]
        .iter()
        .any(|version| version.starts_with(start));
    let first_line = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let bare_lf = first_line < buf.len() && (first_line == 0 || buf[first_line - 1] != b'\r');
    if versioned && !bare_lf {
        return Ok(());
    }
    Err(HttpError::MalformedStatusLine {
        line: String::from_utf8_lossy(&buf[..first_line.min(80)]).into_owned(),
    })
}

/// `HTTP/1.x NNN reason` to `NNN`.
fn parse_status_line(line: &str) -> Option<u16> {
    let rest = line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| line.strip_prefix("HTTP/1.0 "))?;
    let code = rest.get(..3)?;
    if !code.bytes().all(|b| b.is_ascii_digit()) || !matches!(rest.get(3..4), None | Some(" ")) {
        return None;
    }
    code.parse().ok().filter(|code| (100..600).contains(code))
}

/// A chunk-size line: hex digits, optionally followed by `;extensions`.
fn parse_chunk_size(line: &str) -> Result<usize, HttpError> {
    let digits = line.split(';').next().unwrap_or_default().trim();
    if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(malformed_chunk(&format!(
            "bad chunk size `{}`",
            line.escape_debug()
        )));
    }
    usize::from_str_radix(digits, 16).map_err(|_| malformed_chunk("bad chunk size"))
}

fn parse_decimal(text: &str) -> Option<usize> {
    if text.is_empty() || text.len() > 19 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn malformed_chunk(detail: &str) -> HttpError {
    HttpError::MalformedChunk {
        detail: detail.to_owned(),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` in pieces of `step` bytes and returns the head and the whole body.
    fn decode(wire: &[u8], step: usize) -> Result<(ResponseHead, Vec<u8>), HttpError> {
        let mut decoder = ResponseDecoder::new(1024);
        let mut pieces = wire.chunks(step);
        let mut head = None;
        let mut body = Vec::new();
        loop {
            if head.is_none() {
                head = decoder.poll_head()?;
            }
            if head.is_some() {
                match decoder.poll_body()? {
                    BodyEvent::Data(data) => {
                        body.extend(data);
                        continue;
                    }
                    BodyEvent::End => break,
                    BodyEvent::NeedMore => {}
                }
            }
            match pieces.next() {
                Some(piece) => decoder.handle_bytes(piece),
                None => decoder.handle_eof(),
            }
        }
        Ok((head.expect("the loop breaks only after the head"), body))
    }

    const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X\r\n\r\n\
        5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX: y\r\n\r\n";

    #[test]
    fn chunked_bodies_decode_in_every_chunking() {
        for step in 1..=CHUNKED.len() {
            let (head, body) = decode(CHUNKED, step).expect("valid response");
            assert_eq!(head.status, 200);
            assert_eq!(body, b"hello, world", "step {step}");
        }
    }

    #[test]
    fn content_length_and_until_close_bodies_decode() {
        let wire = b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nabcEXTRA";
        let (head, body) = decode(wire, 4).expect("valid");
        assert_eq!((head.status, body.as_slice()), (404, &b"abc"[..]));
        let wire = b"HTTP/1.0 200 OK\r\nX: 1\r\n\r\nto the end";
        assert_eq!(decode(wire, 3).expect("valid").1, b"to the end");
        let wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(decode(wire, 5).expect("valid").0.status, 204);
    }

    #[test]
    fn malformed_responses_get_typed_errors() {
        type Expected = fn(&HttpError) -> bool;
        let cases: &[(&[u8], Expected)] = &[
            (b"HTTP/2 200 OK\r\n\r\n", |e| {
                matches!(e, HttpError::MalformedStatusLine { .. })
            }),
            (b"HTTP/1.1 2x0 OK\r\n\r\n", |e| {
                matches!(e, HttpError::MalformedStatusLine { .. })
            }),
            (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", |e| {
                matches!(e, HttpError::MalformedHeader { .. })
            }),
            (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", |e| {
                matches!(e, HttpError::MalformedHeader { .. })
            }),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n", |e| {
                matches!(e, HttpError::BodyTooLarge { limit: 1024 })
            }),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort", |e| {
                matches!(e, HttpError::UnexpectedEof)
            }),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                |e| matches!(e, HttpError::MalformedChunk { .. }),
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY",
                |e| matches!(e, HttpError::MalformedChunk { .. }),
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nFFFFF\r\n",
                |e| matches!(e, HttpError::BodyTooLarge { .. }),
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab",
                |e| matches!(e, HttpError::UnexpectedEof),
            ),
            (b"HTTP/1.1 200", |e| matches!(e, HttpError::UnexpectedEof)),
            (b"", |e| matches!(e, HttpError::UnexpectedEof)),
        ];
        for (wire, expected) in cases {
            let err = decode(wire, 7).expect_err("malformed input is refused");
            assert!(
                expected(&err),
                "{:?} gave {err:?}",
                String::from_utf8_lossy(wire)
            );
        }
    }

    #[test]
    fn an_endless_head_or_chunk_line_is_refused_at_its_cap() {
        let mut decoder = ResponseDecoder::new(1024);
        decoder.handle_bytes(b"HTTP/1.1 200 OK\r\n");
        decoder.handle_bytes(&vec![b'a'; MAX_HEAD_LEN]);
        assert!(matches!(
            decoder.poll_head(),
            Err(HttpError::HeadTooLarge { .. })
        ));
        let mut decoder = ResponseDecoder::new(1024);
        decoder.handle_bytes(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(decoder.poll_head().expect("head").is_some());
        decoder.handle_bytes(&vec![b'1'; MAX_CHUNK_LINE_LEN + 1]);
        assert!(matches!(
            decoder.poll_body(),
            Err(HttpError::MalformedChunk { .. })
        ));
    }

    #[test]
    fn a_head_that_cannot_be_http_1_is_refused_before_it_ends() {
        for start in [
            &b"HTTP/1.1 200 OK\nContent-Length: 2\n"[..],
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"SSH-2.0-OpenSSH_9.6",
        ] {
            let mut decoder = ResponseDecoder::new(1024);
            decoder.handle_bytes(start);
            let outcome = decoder.poll_head();
            assert!(
                matches!(outcome, Err(HttpError::MalformedStatusLine { .. })),
                "{:?} gave {outcome:?}",
                String::from_utf8_lossy(start)
            );
        }
        let mut decoder = ResponseDecoder::new(1024);
        decoder.handle_bytes(b"HTTP/1.");
        assert_eq!(decoder.poll_head().expect("a valid start"), None);
    }

    #[test]
    fn endless_trailers_are_refused_at_their_cap() {
        let mut decoder = ResponseDecoder::new(1024);
        decoder.handle_bytes(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n");
        assert!(decoder.poll_head().expect("head").is_some());
        let mut fed = 0;
        let outcome = loop {
            decoder.handle_bytes(b"X-T: 1\r\n");
            fed += 8;
            match decoder.poll_body() {
                Ok(BodyEvent::NeedMore) if fed <= 2 * MAX_TRAILERS_LEN => continue,
                other => break other,
            }
        };
        assert!(
            matches!(
                outcome,
                Err(HttpError::TrailersTooLarge {
                    limit: MAX_TRAILERS_LEN
                })
            ),
            "{outcome:?} after {fed} trailer bytes"
        );
    }
}
