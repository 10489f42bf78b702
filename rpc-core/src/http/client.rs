//! Dialing RPC over HTTP CONNECT (Go: `rpc.DialHTTP`, `rpc.DialHTTPPath`): connect, send
//! `CONNECT <path> HTTP/1.0`, read the response head, check its status is
//! `200 Connected to Go RPC`, then hand the socket to a normal [`Client`].

use std::fmt;
use std::io::{self, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rpc_transport::clock::deadline_after;

use crate::client::Client;
use crate::client_builder::ClientBuilder;
use crate::error::RpcError;
use crate::http::head::{parse_status, read_head, HeadError};
use crate::http::{CONNECTED_STATUS, DEFAULT_RPC_PATH};

impl ClientBuilder {
    /// Connects to a server's HTTP listener ([`crate::Server::serve_http`]) on Go's path
    /// [`DEFAULT_RPC_PATH`] (Go: `rpc.DialHTTP`), then works like [`ClientBuilder::dial`].
    ///
    /// The TCP connect and the HTTP exchange together must finish within the builder's
    /// connect timeout (default [`crate::DEFAULT_CONNECT_TIMEOUT`]).
    ///
    /// # Errors
    ///
    /// [`RpcError::Unreachable`] if no address accepts in time, or if the server's answer is
    /// not `HTTP/1.x 200 Connected to Go RPC`: its source is then an [`io::Error`] of kind
    /// `Other` whose text is `unexpected HTTP response: <status>` (say `404 Not Found`), or of
    /// kind `TimedOut`/`UnexpectedEof` if no whole answer came.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use rpc_core::Client;
    ///
    /// let client = Client::builder().dial_http("127.0.0.1:1234")?;
    /// let product: i64 = client.call("Arith.Multiply", &(7i64, 8i64))?;
    /// # Ok::<(), rpc_core::RpcError>(())
    /// ```
    pub fn dial_http(self, addr: impl ToSocketAddrs + fmt::Display) -> Result<Client, RpcError> {
        self.dial_http_path(addr, DEFAULT_RPC_PATH)
    }

    /// Like [`ClientBuilder::dial_http`], for a listener on another path (Go:
    /// `rpc.DialHTTPPath`), e.g. one set with [`crate::http::HttpConfig::rpc_path`].
    ///
    /// # Errors
    ///
    /// As [`ClientBuilder::dial_http`]; also [`RpcError::Unreachable`] (kind `InvalidInput`)
    /// if `path` does not start with `/` or holds spaces or control characters.
    pub fn dial_http_path(
        self,
        addr: impl ToSocketAddrs + fmt::Display,
        path: &str,
    ) -> Result<Client, RpcError> {
        let shown = addr.to_string();
        let unreachable = |err: io::Error| RpcError::Unreachable {
            addr: shown.clone(),
            source: Arc::new(err),
        };
        if !path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic()) {
            let detail = format!("HTTP path {path:?} must start with `/` and have no spaces");
            return Err(unreachable(io::Error::new(
                io::ErrorKind::InvalidInput,
                detail,
            )));
        }
        let deadline = deadline_after(Instant::now(), self.settings().connect_timeout);
        let mut last_error = None;
        for candidate in addr.to_socket_addrs().map_err(unreachable)? {
            let remaining = time_left(deadline).map_err(unreachable)?;
            match TcpStream::connect_timeout(&candidate, remaining) {
                Ok(stream) => {
                    handshake(&stream, path, deadline).map_err(unreachable)?;
                    return self.connect_stream(stream);
                }
                Err(err) => last_error = Some(err),
            }
        }
        let err = last_error.unwrap_or_else(|| io::ErrorKind::AddrNotAvailable.into());
        Err(unreachable(err))
    }
}

impl Client {
    /// Connects with default settings to a server's HTTP listener on Go's path (Go:
    /// `rpc.DialHTTP("tcp", addr)`); see [`ClientBuilder::dial_http`].
    ///
    /// # Errors
    ///
    /// As [`ClientBuilder::dial_http`].
    pub fn dial_http(addr: impl ToSocketAddrs + fmt::Display) -> Result<Client, RpcError> {
        ClientBuilder::default().dial_http(addr)
    }

    /// Connects with default settings to a server's HTTP listener on `path` (Go:
    /// `rpc.DialHTTPPath`); see [`ClientBuilder::dial_http_path`].
    ///
    /// # Errors
    ///
    /// As [`ClientBuilder::dial_http_path`].
    pub fn dial_http_path(
        addr: impl ToSocketAddrs + fmt::Display,
        path: &str,
    ) -> Result<Client, RpcError> {
        ClientBuilder::default().dial_http_path(addr, path)
    }
}

/// Sends the CONNECT and checks the answer, by `deadline`. Reads not one byte past the
/// answer's blank line: whatever follows is the server's first frames.
fn handshake(mut stream: &TcpStream, path: &str, deadline: Instant) -> io::Result<()> {
    stream.set_write_timeout(Some(time_left(deadline)?))?;
    stream.write_all(format!("CONNECT {path} HTTP/1.0\n\n").as_bytes())?;
    let head =
        read_head(stream, MAX_RESPONSE_HEAD_LEN, deadline, || {}).map_err(|err| match err {
            HeadError::TooLarge => io::Error::other(format!(
                "HTTP response head over {MAX_RESPONSE_HEAD_LEN} bytes"
            )),
            HeadError::TimedOut => io::Error::new(
                io::ErrorKind::TimedOut,
                "no whole HTTP response before the connect timeout",
            ),
            HeadError::Closed => io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the HTTP response",
            ),
            HeadError::Io(err) => err,
        })?;
    match parse_status(&head) {
        Some(CONNECTED_STATUS) => {}
        Some(status) => {
            return Err(io::Error::other(format!(
                "unexpected HTTP response: {status}"
            )))
        }
        None => return Err(io::Error::other("the answer is not an HTTP response")),
    }
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(None)
}

/// The time until `deadline`; a `TimedOut` error once it has passed.
fn time_left(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "connect timeout passed during the HTTP handshake",
        ));
    }
    Ok(left)
}

/// The most bytes of a response head the client reads.
const MAX_RESPONSE_HEAD_LEN: usize = 8 * 1024;
