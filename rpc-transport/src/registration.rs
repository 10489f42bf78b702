//! `Registration`: a connection's entry in its loop's poller, and which readiness it asks for.
//!
//! The loop asks to hear when a connection is readable, and also when it is writable while
//! frames wait for room in the socket. A caller that reads the connection itself
//! (`read_turn.rs`) mutes the loop's read interest while it sleeps in its own poller, so that
//! a reply wakes that caller alone: otherwise every reply also woke the loop thread, only for
//! it to find the caller's turn and go back to sleep, a third thread woken per call.
//!
//! Muted, the entry asks for priority data instead (out-of-band bytes, which netrpc never
//! sends), since an entry must ask for something; errors and hang-ups reach the loop either
//! way. Unmuting re-arms the entry, and the poller reports at once whatever is readable by
//! then. Both sides change the entry through [`Registration::set`] under one lock, so what the
//! kernel holds is always what the last change asked for.

use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

/// A connection's registration with its loop's poller, changed by the loop and by callers.
#[derive(Debug)]
pub(crate) struct Registration {
    /// The loop's poller (a clone of its registry, shared by every connection of the loop).
    registry: Arc<Registry>,
    fd: RawFd,
    token: Token,
    wanted: Mutex<Wanted>,
}

/// What the entry asks for now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Wanted {
    /// Frames wait for room: the loop wants to hear when the socket is writable.
    write: bool,
    /// A caller reads the socket and sleeps in its own poller: the loop need not wake.
    read_muted: bool,
}

/// A change to what the entry asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// The loop wants (or no longer wants) writable readiness.
    Write(bool),
    /// A caller mutes (or unmutes) the loop's read readiness.
    ReadMuted(bool),
}

impl Registration {
    /// The entry of `fd`, which the loop has just registered as `token` for readable
    /// readiness alone.
    pub(crate) fn new(registry: Arc<Registry>, fd: RawFd, token: Token) -> Registration {
        Registration {
            registry,
            fd,
            token,
            wanted: Mutex::new(Wanted::default()),
        }
    }

    /// Applies `change`; a change to what is already asked for costs no system call. An error
    /// is the poller's (the entry is gone once the loop has closed the connection).
    pub(crate) fn set(&self, change: Change) -> io::Result<()> {
        // Every update is one assignment and one system call: a panic leaves nothing half done.
        let mut wanted = self.wanted.lock().unwrap_or_else(|p| p.into_inner());
        let before = *wanted;
        match change {
            Change::Write(on) => wanted.write = on,
            Change::ReadMuted(on) => wanted.read_muted = on,
        }
        if *wanted == before {
            return Ok(());
        }
        let read = if wanted.read_muted {
            Interest::PRIORITY
        } else {
            Interest::READABLE
        };
        let interest = if wanted.write {
            read | Interest::WRITABLE
        } else {
            read
        };
        self.registry
            .reregister(&mut SourceFd(&self.fd), self.token, interest)
    }

    /// For tests: whether a caller has the loop's read readiness muted now.
    #[cfg(test)]
    pub(crate) fn is_read_muted(&self) -> bool {
        self.wanted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .read_muted
    }
}

/// For tests: a poller standing in for the loop's, with `stream` registered in it for
/// readable readiness as the loop registers a connection, and the entry's registration.
#[cfg(test)]
pub(crate) fn register_for_test(stream: &mut mio::net::TcpStream) -> (mio::Poll, Registration) {
    use std::os::fd::AsRawFd;

    let token = Token(3);
    let poll = mio::Poll::new().expect("a poller");
    poll.registry()
        .register(stream, token, Interest::READABLE)
        .expect("registered");
    let registry = Arc::new(poll.registry().try_clone().expect("a registry clone"));
    let registration = Registration::new(registry, stream.as_raw_fd(), token);
    (poll, registration)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly by design

    use std::io::Write;
    use std::net::TcpListener;
    use std::time::Duration;

    use mio::net::TcpStream;
    use mio::{Events, Poll};

    use super::*;

    /// A registered socket, its peer, and the poller it is registered with.
    fn registered() -> (Poll, Registration, TcpStream, std::net::TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (peer, _) = listener.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut ours = TcpStream::from_std(ours);
        let (poll, registration) = register_for_test(&mut ours);
        (poll, registration, ours, peer)
    }

    /// True if the poller reports the socket readable within a short wait.
    fn reports_readable(poll: &mut Poll) -> bool {
        let mut events = Events::with_capacity(4);
        poll.poll(&mut events, Some(Duration::from_millis(100)))
            .unwrap();
        events
            .iter()
            .any(|event| event.token() == Token(3) && event.is_readable())
    }

    #[test]
    fn bytes_arriving_while_reads_are_muted_are_reported_once_unmuted() {
        let (mut poll, registration, _ours, mut peer) = registered();
        registration.set(Change::ReadMuted(true)).unwrap();
        peer.write_all(b"reply").unwrap();
        assert!(!reports_readable(&mut poll), "a muted entry woke the loop");
        registration.set(Change::ReadMuted(false)).unwrap();
        assert!(
            reports_readable(&mut poll),
            "bytes that came while muted were never reported"
        );
    }

    #[test]
    fn muting_reads_keeps_the_write_interest_the_loop_asked_for() {
        let (mut poll, registration, _ours, _peer) = registered();
        registration.set(Change::Write(true)).unwrap();
        registration.set(Change::ReadMuted(true)).unwrap();
        let mut events = Events::with_capacity(4);
        poll.poll(&mut events, Some(Duration::from_millis(100)))
            .unwrap();
        assert!(
            events.iter().any(|event| event.is_writable()),
            "muting reads dropped the write interest"
        );
    }
}
