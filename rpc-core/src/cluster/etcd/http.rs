//! A small blocking HTTP/1.1 client on `std::net::TcpStream`, enough to speak to etcd's JSON
//! gateway: one `POST` per connection (`Connection: close`), a whole response with a deadline,
//! or a streamed one read piece by piece. No TLS, no redirects, no keep-alive, no proxies.
//!
//! Why hand-written: netrpc has no async runtime and keeps its dependency list short, and the
//! HTTP crates either bring one (reqwest) or would be the only reason for a new dependency
//! (ureq). The gateway needs a few hundred lines: a request with `Content-Length`, and a
//! response framed by `Content-Length` or chunked. The parsing is in `http_decoder.rs`.

use std::error::Error;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use rpc_transport::clock::deadline_after;

use super::http_decoder::{BodyEvent, ResponseDecoder, ResponseHead};

/// Default deadline of one request, connect included: 5 seconds.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Default limit on a response body: 4 MiB.
pub const DEFAULT_MAX_BODY_LEN: usize = 4 * 1024 * 1024;

/// A blocking HTTP/1.1 client for one `host:port`.
///
/// ```no_run
/// use rpc_core::cluster::etcd::HttpClient;
///
/// let etcd = HttpClient::new("127.0.0.1:2379");
/// let response = etcd.post("/v3/kv/range", br#"{"key":"Zm9v"}"#)?;
/// println!("{} {}", response.status, String::from_utf8_lossy(&response.body));
/// # Ok::<(), rpc_core::cluster::etcd::HttpError>(())
/// ```
#[derive(Debug, Clone)]
pub struct HttpClient {
    addr: String,
    timeout: Duration,
    max_body_len: usize,
}

/// A whole response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The decoded body.
    pub body: Vec<u8>,
}

/// A response whose body is read as it arrives (etcd's watch stream).
#[derive(Debug)]
pub struct ResponseStream {
    stream: TcpStream,
    decoder: ResponseDecoder,
    /// The response's status line and headers.
    pub head: ResponseHead,
}

/// What [`ResponseStream::next_data`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// Body bytes.
    Data(Vec<u8>),
    /// Nothing arrived within the wait.
    Idle,
    /// The body ended.
    End,
}

/// Why an HTTP exchange failed; a response with an error status is not an `HttpError`.
#[derive(Debug)]
#[non_exhaustive]
pub enum HttpError {
    /// The request cannot be sent as given (a path without a leading `/`, or with spaces).
    InvalidRequest {
        /// What is wrong.
        detail: String,
    },
    /// Connecting failed.
    Connect {
        /// The address dialed.
        addr: String,
        /// The connect error.
        source: io::Error,
    },
    /// Reading or writing the connection failed.
    Io(io::Error),
    /// The whole exchange did not finish within its deadline.
    Timeout {
        /// The deadline.
        after: Duration,
    },
    /// The status line is not `HTTP/1.x NNN ...`.
    MalformedStatusLine {
        /// The line (first 80 characters).
        line: String,
    },
    /// A header line is not `name: value`, or its value is invalid.
    MalformedHeader {
        /// The line (first 80 characters).
        line: String,
    },
    /// The chunked body is ill-formed.
    MalformedChunk {
        /// What is wrong.
        detail: String,
    },
    /// The status line and headers exceed the limit.
    HeadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The trailer section after a chunked body exceeds the limit.
    TrailersTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body is (or declares it is) larger than the limit.
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The connection closed before the response was complete.
    UnexpectedEof,
}

impl HttpClient {
    /// A client for `addr` (`host:port`) with [`DEFAULT_HTTP_TIMEOUT`] and
    /// [`DEFAULT_MAX_BODY_LEN`].
    pub fn new(addr: impl Into<String>) -> Self {
        HttpClient {
            addr: addr.into(),
            timeout: DEFAULT_HTTP_TIMEOUT,
            max_body_len: DEFAULT_MAX_BODY_LEN,
        }
    }

    /// Sets the deadline of each request, from connect to the body's last byte.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The deadline of each request.
    pub fn request_timeout(&self) -> Duration {
        self.timeout
    }

    /// Sets the largest response body accepted, in bytes.
    pub fn max_body_len(mut self, bytes: usize) -> Self {
        self.max_body_len = bytes;
        self
    }

    /// The `host:port` this client talks to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends `POST path` with a JSON `body` and reads the whole response.
    ///
    /// # Errors
    ///
    /// Any [`HttpError`]; [`HttpError::Timeout`] past the client's timeout.
    pub fn post(&self, path: &str, body: &[u8]) -> Result<Response, HttpError> {
        let deadline = deadline_after(Instant::now(), self.timeout);
        let (mut stream, mut decoder, head) = self.exchange(path, body, deadline)?;
        let mut collected = Vec::new();
        loop {
            match decoder.poll_body()? {
                BodyEvent::Data(data) => {
                    if collected.len() + data.len() > self.max_body_len {
                        return Err(HttpError::BodyTooLarge {
                            limit: self.max_body_len,
                        });
                    }
                    collected.extend(data);
                }
                BodyEvent::End => break,
                BodyEvent::NeedMore => self.read_some(&mut stream, &mut decoder, deadline)?,
            }
        }
        Ok(Response {
            status: head.status,
            headers: head.headers,
            body: collected,
        })
    }

    /// Sends `POST path` with a JSON `body` and returns once the response head has arrived;
    /// the body is then read with [`ResponseStream::next_data`], without a deadline.
    ///
    /// # Errors
    ///
    /// Any [`HttpError`] up to the end of the head.
    pub fn post_streaming(&self, path: &str, body: &[u8]) -> Result<ResponseStream, HttpError> {
        let deadline = deadline_after(Instant::now(), self.timeout);
        let (stream, decoder, head) = self.exchange(path, body, deadline)?;
        Ok(ResponseStream {
            stream,
            decoder,
            head,
        })
    }

    /// Connects, sends the request and reads up to the end of the response head.
    fn exchange(
        &self,
        path: &str,
        body: &[u8],
        deadline: Instant,
    ) -> Result<(TcpStream, ResponseDecoder, ResponseHead), HttpError> {
        if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_whitespace() || b < 0x20) {
            return Err(HttpError::InvalidRequest {
                detail: format!("path `{}`", path.escape_debug()),
            });
        }
        let mut stream = self.connect(deadline)?;
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.addr,
            body.len()
        );
        stream
            .set_write_timeout(Some(self.remaining(deadline)?))
            .map_err(HttpError::Io)?;
        stream
            .write_all(request.as_bytes())
            .and_then(|()| stream.write_all(body))
            .map_err(|err| self.io_error(err))?;
        let mut decoder = ResponseDecoder::new(self.max_body_len);
        loop {
            if let Some(head) = decoder.poll_head()? {
                return Ok((stream, decoder, head));
            }
            self.read_some(&mut stream, &mut decoder, deadline)?;
        }
    }

    fn connect(&self, deadline: Instant) -> Result<TcpStream, HttpError> {
        let connect_error = |source| HttpError::Connect {
            addr: self.addr.clone(),
            source,
        };
        let mut last = io::Error::new(io::ErrorKind::AddrNotAvailable, "no address resolved");
        for addr in self.addr.to_socket_addrs().map_err(connect_error)? {
            match TcpStream::connect_timeout(&addr, self.remaining(deadline)?) {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(err) => last = err,
            }
        }
        Err(connect_error(last))
    }

    /// One read bounded by the deadline, fed to the decoder.
    fn read_some(
        &self,
        stream: &mut TcpStream,
        decoder: &mut ResponseDecoder,
        deadline: Instant,
    ) -> Result<(), HttpError> {
        stream
            .set_read_timeout(Some(self.remaining(deadline)?))
            .map_err(HttpError::Io)?;
        let mut buf = [0u8; READ_BUF_LEN];
        match stream.read(&mut buf) {
            Ok(0) => decoder.handle_eof(),
            Ok(n) => decoder.handle_bytes(&buf[..n]),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(self.io_error(err)),
        }
        Ok(())
    }

    /// The time left before `deadline`, or a timeout error if none.
    fn remaining(&self, deadline: Instant) -> Result<Duration, HttpError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HttpError::Timeout {
                after: self.timeout,
            });
        }
        Ok(left)
    }

    fn io_error(&self, err: io::Error) -> HttpError {
        if is_timeout(&err) {
            HttpError::Timeout {
                after: self.timeout,
            }
        } else {
            HttpError::Io(err)
        }
    }
}

impl ResponseStream {
    /// Waits up to `wait` for body bytes. Cheap to call in a loop: a wait that ends with
    /// nothing read loses nothing.
    ///
    /// The wait is one deadline for the whole call: bytes that arrive but complete no body
    /// data (a chunk line or trailers trickled a byte at a time) do not extend it, so the
    /// call returns [`StreamEvent::Idle`] within about `wait` whatever the peer sends.
    ///
    /// # Errors
    ///
    /// [`HttpError::Io`], [`HttpError::MalformedChunk`], [`HttpError::BodyTooLarge`] (one
    /// chunk over the limit), [`HttpError::TrailersTooLarge`], [`HttpError::UnexpectedEof`].
    pub fn next_data(&mut self, wait: Duration) -> Result<StreamEvent, HttpError> {
        let deadline = deadline_after(Instant::now(), wait.max(Duration::from_millis(1)));
        loop {
            match self.decoder.poll_body()? {
                BodyEvent::Data(data) => return Ok(StreamEvent::Data(data)),
                BodyEvent::End => return Ok(StreamEvent::End),
                BodyEvent::NeedMore => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(StreamEvent::Idle);
            }
            self.stream
                .set_read_timeout(Some(left))
                .map_err(HttpError::Io)?;
            let mut buf = [0u8; READ_BUF_LEN];
            match self.stream.read(&mut buf) {
                Ok(0) => self.decoder.handle_eof(),
                Ok(n) => self.decoder.handle_bytes(&buf[..n]),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if is_timeout(&err) => return Ok(StreamEvent::Idle),
                Err(err) => return Err(HttpError::Io(err)),
            }
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::InvalidRequest { detail } => write!(f, "invalid http request: {detail}"),
            HttpError::Connect { addr, .. } => write!(f, "cannot connect to {addr}"),
            HttpError::Io(_) => f.write_str("http connection failed"),
            HttpError::Timeout { after } => write!(f, "http request timed out after {after:?}"),
            HttpError::MalformedStatusLine { line } => {
                write!(f, "malformed http status line `{}`", line.escape_debug())
            }
            HttpError::MalformedHeader { line } => {
                write!(f, "malformed http header `{}`", line.escape_debug())
            }
            HttpError::MalformedChunk { detail } => write!(f, "malformed http chunk: {detail}"),
            HttpError::HeadTooLarge { limit } => {
                write!(f, "http response head exceeds the {limit}-byte limit")
            }
            HttpError::TrailersTooLarge { limit } => {
                write!(f, "http trailers exceed the {limit}-byte limit")
            }
            HttpError::BodyTooLarge { limit } => {
                write!(f, "http response body exceeds the {limit}-byte limit")
            }
            HttpError::UnexpectedEof => f.write_str("http connection closed mid-response"),
        }
    }
}

impl Error for HttpError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            HttpError::Connect { source, .. } | HttpError::Io(source) => Some(source),
            _ => None,
        }
    }
}

fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Bytes read from the socket at a time.
const READ_BUF_LEN: usize = 8 * 1024;

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::thread;

    use super::*;

    /// A one-shot loopback server: reads the request head, answers `reply`, then closes (or
    /// stays silent for `hold` first).
    fn fake_server(reply: &'static [u8], hold: Duration) -> (String, thread::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local addr").to_string();
        let server = thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            conn.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).expect("read request");
                assert!(n > 0, "client closed before sending a request");
                request.extend_from_slice(&buf[..n]);
            }
            thread::sleep(hold);
            let _ = conn.write_all(reply);
            request
        });
        (addr, server)
    }

    #[test]
    fn a_chunked_response_from_a_loopback_server_is_decoded() {
        let reply = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
            Transfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n";
        let (addr, server) = fake_server(reply, Duration::ZERO);
        let response = HttpClient::new(addr)
            .post("/v3/kv/range", b"{}")
            .expect("post");
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"{\"a\":1}");
        let request = String::from_utf8(server.join().expect("server")).expect("utf-8");
        assert!(
            request.starts_with("POST /v3/kv/range HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains("Content-Length: 2\r\n"), "{request}");
    }

    #[test]
    fn a_garbage_response_is_a_typed_error_not_a_panic() {
        let (addr, server) = fake_server(b"SSH-2.0-OpenSSH\r\n\r\n", Duration::ZERO);
        let err = HttpClient::new(addr)
            .post("/x", b"{}")
            .expect_err("garbage");
        assert!(
            matches!(err, HttpError::MalformedStatusLine { .. }),
            "{err}"
        );
        server.join().expect("server");
    }

    #[test]
    fn a_silent_server_is_a_timeout_within_the_deadline() {
        let (addr, server) = fake_server(b"", Duration::from_millis(600));
        let started = Instant::now();
        let err = HttpClient::new(addr)
            .timeout(Duration::from_millis(200))
            .post("/x", b"{}")
            .expect_err("no answer");
        assert!(matches!(err, HttpError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
        server.join().expect("server");
    }

    #[test]
    fn an_oversized_body_is_refused_and_a_bad_path_is_never_sent() {
        let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n";
        let (addr, server) = fake_server(reply, Duration::ZERO);
        let client = HttpClient::new(addr).max_body_len(10);
        let err = client.post("/x", b"{}").expect_err("too large");
        assert!(
            matches!(err, HttpError::BodyTooLarge { limit: 10 }),
            "{err}"
        );
        server.join().expect("server");
        let err = client.post("/x HTTP/1.0\r\n", b"").expect_err("bad path");
        assert!(matches!(err, HttpError::InvalidRequest { .. }), "{err}");
    }

    #[test]
    fn next_data_returns_within_its_wait_while_trailers_trickle() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local addr").to_string();
        let server = thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n";
            let _ = conn.write_all(head);
            // A trailer line every 50 ms, for at most 3 s: each read completes nothing.
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until && conn.write_all(b"X-T: 1\r\n").is_ok() {
                thread::sleep(Duration::from_millis(50));
            }
        });
        let mut stream = HttpClient::new(addr)
            .post_streaming("/v3/watch", b"{}")
            .expect("head");
        let started = Instant::now();
        let event = stream.next_data(Duration::from_millis(200));
        let took = started.elapsed();
        assert!(
            matches!(event, Ok(StreamEvent::Idle)),
            "{event:?} after {took:?}"
        );
        assert!(took < Duration::from_secs(1), "returned after {took:?}");
        drop(stream);
        server.join().expect("server");
    }

    #[test]
    fn nothing_listening_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        drop(listener);
        let err = HttpClient::new(addr).post("/x", b"").expect_err("refused");
        assert!(matches!(err, HttpError::Connect { .. }), "{err}");
    }
}
