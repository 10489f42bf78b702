//! HTTP/1.x message heads: reading one off a socket without consuming a byte past its blank
//! line, and parsing its first line (a request line on the server, a status line on the
//! client). Headers are read (and bounded) but not interpreted: CONNECT and the debug page
//! need none.
//!
//! Not an HTTP implementation: no bodies, no chunking, no keep-alive. A head ends at the first
//! empty line, `\r\n\r\n` or `\n\n` (Go's client sends `CONNECT /_goRPC_ HTTP/1.0\n\n`).

use std::io::{self, Read};
use std::net::TcpStream;
use std::time::Instant;

/// Why no head could be read.
#[derive(Debug)]
pub(crate) enum HeadError {
    /// No blank line within the size cap.
    TooLarge,
    /// The deadline passed before the blank line arrived.
    TimedOut,
    /// The peer closed before the blank line.
    Closed,
    /// Another socket error.
    Io(io::Error),
}

/// A parsed request line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestLine {
    /// `CONNECT`, `GET`, ... (case-sensitive, as HTTP says).
    pub(crate) method: String,
    /// The path, without any `?query`.
    pub(crate) path: String,
}

/// Reads one head from `stream`: every byte up to and including the blank line, and not one
/// byte more, so what the peer sent after it (say, RPC frames pipelined after a CONNECT)
/// stays in the socket for whoever reads next. Gives up at `max_len` bytes or at `deadline`.
///
/// The socket must be in blocking mode; its read timeout is changed. `on_bytes` runs each
/// time more of the head has arrived.
pub(crate) fn read_head(
    mut stream: &TcpStream,
    max_len: usize,
    deadline: Instant,
    mut on_bytes: impl FnMut(),
) -> Result<Vec<u8>, HeadError> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let room = max_len.saturating_sub(head.len()).min(chunk.len());
        if room == 0 {
            return Err(HeadError::TooLarge);
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(HeadError::TimedOut);
        }
        stream
            .set_read_timeout(Some(remaining))
            .map_err(HeadError::Io)?;
        // Peek first: it shows what has arrived without taking it, so only the bytes up to
        // the blank line are then read.
        let peeked = match stream.peek(&mut chunk[..room]) {
            Ok(0) => return Err(HeadError::Closed),
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) if is_timeout(&err) => return Err(HeadError::TimedOut),
            Err(err) => return Err(HeadError::Io(err)),
        };
        let before = head.len();
        head.extend_from_slice(&chunk[..peeked]);
        let end = head_end(&head, before);
        let take = end.map_or(peeked, |end| end - before);
        head.truncate(before + take);
        // The bytes were peeked, so they are there to read at once.
        stream
            .read_exact(&mut chunk[..take])
            .map_err(HeadError::Io)?;
        on_bytes();
        if end.is_some() {
            return Ok(head);
        }
    }
}

/// Parses the first line of a request head: `METHOD SP TARGET SP HTTP/1.x`. Header lines must
/// at least look like `name: value`. `None` for anything else.
pub(crate) fn parse_request(head: &[u8]) -> Option<RequestLine> {
    let text = std::str::from_utf8(head).ok()?;
    // Empty lines before the request line are ignored (RFC 9112 §2.2).
    let mut lines = text.trim_start_matches(['\r', '\n']).lines();
    let first = lines.next()?;
    for header in lines.filter(|line| !line.is_empty()) {
        let (name, _) = header.split_once(':')?;
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return None;
        }
    }
    let mut parts = first.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    // CONNECT's target is never in absolute form (RFC 9112 §3.2.3): Go's is a path.
    let target = match method {
        "CONNECT" => target,
        _ => origin_form(target)?,
    };
    let well_formed = parts.next().is_none()
        && !method.is_empty()
        && method.bytes().all(is_token_byte)
        && target.starts_with('/')
        && target.bytes().all(|b| b.is_ascii_graphic() && b != b'#')
        && matches!(version, "HTTP/1.0" | "HTTP/1.1");
    if !well_formed {
        return None;
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    Some(RequestLine {
        method: method.to_owned(),
        path: path.to_owned(),
    })
}

/// The path and query of a request target in absolute form (`http://host:port/path?q`),
/// which a server must accept (RFC 9112 §3.2.2): the target less its scheme and authority
/// (`/` if it has no path). `None` if the authority is empty, holds user information (`@`)
/// or bytes that are not printable ASCII, or a fragment (`#`) follows it. Any other target
/// as it is.
fn origin_form(target: &str) -> Option<&str> {
    let scheme_len = ["http://", "https://"].into_iter().find_map(|scheme| {
        let prefix = target.get(..scheme.len())?;
        prefix.eq_ignore_ascii_case(scheme).then_some(scheme.len())
    });
    let Some(scheme_len) = scheme_len else {
        return Some(target);
    };
    let rest = &target[scheme_len..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(authority_len);
    let authority_ok =
        !authority.is_empty() && authority.bytes().all(|b| b.is_ascii_graphic() && b != b'@');
    if !authority_ok {
        return None;
    }
    match after.as_bytes().first() {
        None | Some(b'?') => Some("/"),
        Some(b'/') => Some(after),
        _ => None, // a fragment, which is no part of a request target
    }
}

/// The status of a response head (`HTTP/1.x SP status`): e.g. `200 Connected to Go RPC`.
pub(crate) fn parse_status(head: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(head).ok()?;
    let first = text.lines().next()?;
    let (version, status) = first.split_once(' ')?;
    version.starts_with("HTTP/1.").then_some(status)
}

/// Where the head in `buf` ends (just past its blank line), looking at line ends from `from`
/// on (earlier ones were checked already). Empty lines before the request line are not its
/// end: they are ignored (RFC 9112 §2.2).
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    // At most a few bytes of them, so that a flood of line ends is not searched again from
    // its start at every read: past that, the next blank line ends the head (then `400`).
    let request_line = buf
        .iter()
        .take(MAX_EMPTY_LINES_LEN)
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(MAX_EMPTY_LINES_LEN);
    (from.max(request_line)..buf.len()).find_map(|i| {
        let blank_line = buf[i] == b'\n'
            && ((i >= 1 && buf[i - 1] == b'\n')
                || (i >= 2 && buf[i - 1] == b'\r' && buf[i - 2] == b'\n'));
        blank_line.then_some(i + 1)
    })
}

/// The most bytes of empty lines ignored before a request line (four CRLFs).
const MAX_EMPTY_LINES_LEN: usize = 8;

/// A byte allowed in a method or header name (RFC 9110 `tchar`).
fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_ends_at_the_first_blank_line_with_or_without_carriage_returns() {
        assert_eq!(head_end(b"CONNECT /_goRPC_ HTTP/1.0\n\nxyz", 0), Some(27));
        assert_eq!(
            head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody", 0),
            Some(27)
        );
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n", 0), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r", 0), None);
        // Found even when the blank line straddles the point scanning resumes from.
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\n", 17), Some(18));
        // Empty lines before the request line are not the head's end.
        assert_eq!(head_end(b"\r\n\r\n", 0), None);
        assert_eq!(head_end(b"\n\nGET / HTTP/1.0\n\n", 0), Some(18));
    }

    #[test]
    fn targets_in_absolute_form_are_read_as_their_path() {
        assert_eq!(
            origin_form("http://h/debug/rpc?x=1"),
            Some("/debug/rpc?x=1")
        );
        assert_eq!(origin_form("HTTPS://h:443/_goRPC_"), Some("/_goRPC_"));
        assert_eq!(origin_form("http://h"), Some("/"));
        assert_eq!(origin_form("http://h?q=/x"), Some("/"));
        assert_eq!(origin_form("/debug/rpc"), Some("/debug/rpc"));
        assert_eq!(origin_form("ftp://h/x"), Some("ftp://h/x"));
        for bad in [
            "http:///_goRPC_",
            "http://u:p@h/x",
            "http://h\u{7f}/x",
            "http://hé/x",
        ] {
            assert_eq!(origin_form(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_flood_of_line_ends_ends_the_head_early_not_after_a_search_per_read() {
        // Past four CRLFs of empty lines, the next blank line ends the head (a 400).
        assert_eq!(head_end(&[b'\n'; 64], 0), Some(9));
        let mut head = b"\r\n\r\n\r\n\r\n".to_vec();
        head.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(head_end(&head, 0), Some(head.len()));
    }

    #[test]
    fn request_lines_parse_and_garbage_does_not() {
        let line = parse_request(b"CONNECT /_goRPC_ HTTP/1.0\n\n").unwrap();
        assert_eq!(line.method, "CONNECT");
        assert_eq!(line.path, "/_goRPC_");
        let line = parse_request(b"GET /debug/rpc?x=1 HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
        assert_eq!(line.path, "/debug/rpc");
        for bad in [
            &b"\r\n\r\n"[..],
            b"GET /debug/rpc\r\n\r\n",
            b"GET debug HTTP/1.1\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"G<T / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
            b"\xff\xfe / HTTP/1.1\r\n\r\n",
            // CONNECT takes no absolute form (RFC 9112 §3.2.3); no target holds a fragment.
            b"CONNECT http://h/_goRPC_ HTTP/1.0\n\n",
            b"GET http://h#/debug/rpc HTTP/1.1\r\n\r\n",
            b"GET /debug/rpc#x HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(
                parse_request(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn status_lines_give_their_status() {
        let head = b"HTTP/1.0 200 Connected to Go RPC\n\n";
        assert_eq!(parse_status(head), Some("200 Connected to Go RPC"));
        assert_eq!(parse_status(b"SSH-2.0-x\r\n\r\n"), None);
    }
}
