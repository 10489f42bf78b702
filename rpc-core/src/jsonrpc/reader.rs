//! `ValueReader`: reads whole JSON objects from a blocking socket, with the size limit and
//! the frame timeout (from a value's first byte to its last) that netrpc's frames have.
//!
//! One thread reads one connection (the jsonrpc server's connection thread, the jsonrpc
//! client's reader). The socket's read timeout is set to the nearest deadline, so a quiet
//! connection costs no wake-ups unless the caller asks for one.

use std::fmt;
use std::io::{self, Read};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rpc_transport::clock::{deadline_after, earliest};

use super::stream::{SplitError, ValueSplitter};

/// Reads JSON objects from `stream`, one at a time. The socket may be shared (a writer
/// writes to it, another thread may shut it down): the reader only reads it and sets its
/// read timeout.
#[derive(Debug)]
pub(crate) struct ValueReader {
    stream: Arc<TcpStream>,
    splitter: ValueSplitter,
    frame_timeout: Option<Duration>,
    /// When the current partial value was first seen.
    partial_since: Option<Instant>,
    /// The read timeout last set on the socket, to skip redundant system calls.
    read_timeout: Option<Duration>,
}

/// Why a [`ValueReader`] stopped; each ends the connection.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The peer closed its side between two values.
    Closed,
    /// The peer closed its side in the middle of a value.
    Truncated,
    /// A value did not arrive whole within the frame timeout.
    FrameTimeout,
    /// The bytes cannot be a stream of JSON objects within the limit.
    Split(SplitError),
    /// The socket failed.
    Io(io::Error),
}

impl ValueReader {
    /// A reader of `stream` refusing values over `max_len` bytes and values that take longer
    /// than `frame_timeout` to arrive.
    pub(crate) fn new(
        stream: Arc<TcpStream>,
        max_len: usize,
        frame_timeout: Option<Duration>,
    ) -> Self {
        ValueReader {
            stream,
            splitter: ValueSplitter::new(max_len),
            frame_timeout,
            partial_since: None,
            read_timeout: None,
        }
    }

    /// The next whole value; `Ok(None)` once `wait` has passed with no value begun. A value
    /// begun is waited for until the frame timeout, whatever `wait` says (the server: an idle
    /// timeout must not cut off a request that is coming). `wait: None` waits as long as it
    /// takes.
    ///
    /// The socket is read at least once, even if `wait` is zero or a deadline has passed:
    /// after a caller's own long wait (the server's back-pressure) a request may be waiting
    /// in the socket, and its silence is only known by looking.
    ///
    /// # Errors
    ///
    /// [`ReadError`] when the connection can carry no more values.
    pub(crate) fn next_value(
        &mut self,
        wait: Option<Duration>,
    ) -> Result<Option<&[u8]>, ReadError> {
        self.read_value(wait, Within::StartOfValue)
    }

    /// As [`ValueReader::next_value`], but `Ok(None)` once `wait` has passed even in the
    /// middle of a value, which is kept and goes on counting its frame timeout from its first
    /// byte: for a reader that has other work on a clock (the client's deadlines), which a
    /// response arriving slowly must not hold up.
    ///
    /// # Errors
    ///
    /// As [`ValueReader::next_value`].
    pub(crate) fn next_value_within(&mut self, wait: Duration) -> Result<Option<&[u8]>, ReadError> {
        self.read_value(Some(wait), Within::AnyByte)
    }

    fn read_value(
        &mut self,
        wait: Option<Duration>,
        within: Within,
    ) -> Result<Option<&[u8]>, ReadError> {
        let started = Instant::now();
        let wait_until = wait.map(|wait| deadline_after(started, wait));
        let mut chunk = [0u8; READ_CHUNK];
        let mut looked = false;
        loop {
            if let Some(range) = self.splitter.poll_value().map_err(ReadError::Split)? {
                self.partial_since = None;
                return Ok(Some(self.splitter.value(range)));
            }
            let now = Instant::now();
            if !self.splitter.has_partial() {
                self.partial_since = None;
            } else if self.partial_since.is_none() {
                self.partial_since = Some(now);
            }
            let frame_deadline = self
                .partial_since
                .zip(self.frame_timeout)
                .map(|(since, timeout)| deadline_after(since, timeout));
            if looked && frame_deadline.is_some_and(|deadline| now >= deadline) {
                return Err(ReadError::FrameTimeout);
            }
            // A value arriving is held to the frame timeout alone, unless the caller asked
            // to be back by `wait` whatever arrives.
            let deadline = match (self.partial_since, within) {
                (Some(_), Within::StartOfValue) => frame_deadline,
                (Some(_), Within::AnyByte) => earliest(frame_deadline, wait_until),
                (None, _) => wait_until,
            };
            if looked && deadline.is_some_and(|deadline| now >= deadline) {
                return Ok(None);
            }
            // A deadline already passed gives the shortest read timeout (a millisecond).
            let timeout = deadline.map(|deadline| deadline.saturating_duration_since(now));
            self.set_read_timeout(timeout)?;
            looked = true;
            match (&*self.stream).read(&mut chunk) {
                Ok(0) if self.splitter.has_partial() => return Err(ReadError::Truncated),
                Ok(0) => return Err(ReadError::Closed),
                Ok(read) => self.splitter.handle_bytes(&chunk[..read]),
                Err(err) if is_timeout(&err) || err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(ReadError::Io(err)),
            }
        }
    }

    /// Shuts the socket down both ways (the peer sees the close), without waiting for anyone
    /// writing to it.
    pub(crate) fn shutdown(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> Result<(), ReadError> {
        let timeout = socket_timeout(timeout);
        if timeout != self.read_timeout {
            self.stream
                .set_read_timeout(timeout)
                .map_err(ReadError::Io)?;
            self.read_timeout = timeout;
        }
        Ok(())
    }
}

/// `timeout` as a socket's read or write timeout: zero, which a socket refuses (and which
/// would mean "block" if it did not), becomes a millisecond.
pub(super) fn socket_timeout(timeout: Option<Duration>) -> Option<Duration> {
    timeout.map(|timeout| timeout.max(Duration::from_millis(1)))
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Closed => write!(f, "peer closed the connection"),
            ReadError::Truncated => {
                write!(f, "peer closed the connection in the middle of a value")
            }
            ReadError::FrameTimeout => {
                write!(f, "a value did not arrive whole within the frame timeout")
            }
            ReadError::Split(err) => write!(f, "{err}"),
            ReadError::Io(_) => write!(f, "reading the socket failed"),
        }
    }
}

impl std::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReadError::Io(err) => Some(err),
            _ => None,
        }
    }
}

/// True for the errors a read timeout gives (`WouldBlock` on Unix, `TimedOut` elsewhere).
fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Where [`ValueReader::read_value`]'s `wait` applies.
#[derive(Debug, Clone, Copy)]
enum Within {
    /// Only before a value begins.
    StartOfValue,
    /// Anywhere, in the middle of a value too.
    AnyByte,
}

/// Bytes read from the socket at a time (on the reading thread's stack).
const READ_CHUNK: usize = 8 * 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    use crate::socket_pair as pair;

    #[test]
    fn a_value_already_in_the_socket_is_read_even_with_no_time_left_to_wait() {
        let (ours, mut peer) = pair();
        peer.write_all(br#"{"id":1}"#).unwrap();
        let mut reader = ValueReader::new(Arc::new(ours), 1024, None);
        // Loopback delivers at once, but give the bytes a moment to reach our buffer.
        std::thread::sleep(Duration::from_millis(50));
        let value = reader.next_value(Some(Duration::ZERO)).unwrap();
        assert_eq!(value, Some(&br#"{"id":1}"#[..]));
        assert!(reader.next_value(Some(Duration::ZERO)).unwrap().is_none());
    }

    #[test]
    fn within_a_wait_the_reader_comes_back_in_the_middle_of_a_value_and_keeps_it() {
        let (ours, mut peer) = pair();
        let frame_timeout = Duration::from_millis(400);
        let mut reader = ValueReader::new(Arc::new(ours), 1024, Some(frame_timeout));
        peer.write_all(br#"{"id":"#).unwrap();
        let half = Instant::now();
        let wait = Duration::from_millis(50);
        assert!(reader.next_value_within(wait).unwrap().is_none());
        assert!(half.elapsed() < frame_timeout, "back by its wait");
        peer.write_all(br#"1}"#).unwrap();
        let value = reader.next_value_within(Duration::from_secs(1)).unwrap();
        assert_eq!(value, Some(&br#"{"id":1}"#[..]));
        // A value left half-written still ends at its frame timeout, from its first byte.
        peer.write_all(br#"{"id":"#).unwrap();
        let begun = Instant::now();
        let ended = loop {
            match reader.next_value_within(wait) {
                Ok(None) => assert!(begun.elapsed() < Duration::from_secs(5)),
                other => break other.map(|value| value.map(<[u8]>::to_vec)),
            }
        };
        assert!(matches!(ended, Err(ReadError::FrameTimeout)), "{ended:?}");
    }
}
