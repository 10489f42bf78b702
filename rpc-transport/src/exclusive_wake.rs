//! Exclusive wake-ups: a client socket watched by two pollers wakes only one of them.
//!
//! Once a caller has waited on a client connection (`read_turn.rs`), its socket sits in two
//! epoll sets: the event loop's and the caller's own poller. By default a reply wakes both:
//! the caller, who reads it, and the loop, who finds the read turn taken and goes back to
//! sleep. On a machine where waking a thread on another core costs an interrupt, that second
//! wake-up is a large part of a call's cost.
//!
//! Linux's `EPOLLEXCLUSIVE` says "of the epoll sets registered this way on one file, wake
//! one that has a thread waiting, in the order they were registered". So the caller's poller
//! registers first, and the loop registers again behind it ([`reregister_behind`]): a reply
//! that comes while the caller sleeps in its poller wakes the caller alone; one that comes
//! while no caller sleeps (the caller is busy, or gone) wakes the loop, as before. A caller
//! woken this way always reads before it returns, and hands to the loop what only the loop
//! can act on (end of stream, errors, half a frame), so nothing depends on the loop seeing
//! that readiness. (`EPOLLEXCLUSIVE` excludes `EPOLLRDHUP`: the loop learns of the peer's
//! close from a read that returns 0, which it does anyway.)
//!
//! mio does not offer the flag, so these two calls go to `epoll_ctl` through rustix (safe
//! wrappers of Linux system calls; the workspace forbids `unsafe`). Elsewhere than Linux they
//! report `Unsupported`, and both pollers keep mio's ordinary registration.

use std::io;
use std::os::fd::AsFd;

use mio::Interest;

/// Adds `socket` to the epoll set `epoll` (a mio `Registry`), edge-triggered and exclusive,
/// with `token` as its event data (mio's `Token`).
///
/// # Errors
///
/// What `epoll_ctl` reports; `Unsupported` off Linux.
pub(crate) fn register(
    epoll: &impl AsFd,
    socket: &impl AsFd,
    token: usize,
    interest: Interest,
) -> io::Result<()> {
    imp::add(epoll.as_fd(), socket.as_fd(), token, interest)
}

/// Moves `socket`'s registration in `epoll` behind every exclusive one made before (an
/// exclusive registration cannot be modified, only removed and added again), with
/// `interest`. The new registration reports readiness present now, so none is lost between
/// the two calls.
///
/// # Errors
///
/// What `epoll_ctl` reports; `Unsupported` off Linux.
pub(crate) fn reregister_behind(
    epoll: &impl AsFd,
    socket: &impl AsFd,
    token: usize,
    interest: Interest,
) -> io::Result<()> {
    imp::delete(epoll.as_fd(), socket.as_fd())?;
    imp::add(epoll.as_fd(), socket.as_fd(), token, interest)
}

#[cfg(target_os = "linux")]
mod imp {
    use std::io;
    use std::os::fd::BorrowedFd;

    use mio::Interest;
    use rustix::event::epoll::{self, EventData, EventFlags};

    pub(super) fn add(
        epoll: BorrowedFd<'_>,
        socket: BorrowedFd<'_>,
        token: usize,
        interest: Interest,
    ) -> io::Result<()> {
        let mut flags = EventFlags::ET | EventFlags::EXCLUSIVE;
        if interest.is_readable() {
            flags |= EventFlags::IN;
        }
        if interest.is_writable() {
            flags |= EventFlags::OUT;
        }
        epoll::add(epoll, socket, EventData::new_u64(token as u64), flags).map_err(Into::into)
    }

    pub(super) fn delete(epoll: BorrowedFd<'_>, socket: BorrowedFd<'_>) -> io::Result<()> {
        epoll::delete(epoll, socket).map_err(Into::into)
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::io;
    use std::os::fd::BorrowedFd;

    use mio::Interest;

    pub(super) fn add(
        _: BorrowedFd<'_>,
        _: BorrowedFd<'_>,
        _: usize,
        _: Interest,
    ) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    pub(super) fn delete(_: BorrowedFd<'_>, _: BorrowedFd<'_>) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly by design

    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::sync::mpsc;
    use std::thread;
    use std::time::{Duration, Instant};

    use mio::unix::SourceFd;
    use mio::{Events, Poll, Token};

    use super::*;

    /// A socket under test and its peer.
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (peer, _) = listener.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        (ours, peer)
    }

    /// Whether `poll` has an event now.
    fn has_event(poll: &mut Poll) -> bool {
        let mut events = Events::with_capacity(4);
        poll.poll(&mut events, Some(Duration::ZERO)).unwrap();
        !events.is_empty()
    }

    /// Starts a thread that waits in `caller`'s poll (up to 5 s) and reports whether it was
    /// woken by an event; returns once that thread sleeps in the poll.
    fn sleep_in(caller: Poll) -> thread::JoinHandle<bool> {
        let (tid_tx, tid_rx) = mpsc::channel();
        let sleeper = thread::spawn(move || {
            let mut caller = caller;
            tid_tx
                .send(std::fs::read_link("/proc/thread-self").unwrap())
                .unwrap();
            let mut events = Events::with_capacity(4);
            caller
                .poll(&mut events, Some(Duration::from_secs(5)))
                .unwrap();
            !events.is_empty()
        });
        let stat = std::path::Path::new("/proc")
            .join(tid_rx.recv().unwrap())
            .join("stat");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let line = std::fs::read_to_string(&stat).unwrap();
            let state = line[line.rfind(')').unwrap() + 1..]
                .trim_start()
                .chars()
                .next();
            if state == Some('S') || Instant::now() > deadline {
                return sleeper;
            }
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn bytes_for_a_sleeping_caller_wake_it_alone_once_the_loop_is_behind_it() {
        let (ours, mut peer) = pair();
        let fd = ours.as_raw_fd();
        // The loop registers first, as when it adopts the connection; the caller's poller
        // comes later, and the loop then moves behind it.
        let mut loop_poll = Poll::new().unwrap();
        loop_poll
            .registry()
            .register(&mut SourceFd(&fd), Token(7), Interest::READABLE)
            .unwrap();
        let caller = Poll::new().unwrap();
        register(caller.registry(), &ours, 0, Interest::READABLE).unwrap();
        reregister_behind(loop_poll.registry(), &ours, 7, Interest::READABLE).unwrap();

        let sleeper = sleep_in(caller);
        peer.write_all(b"reply").unwrap();
        assert!(sleeper.join().unwrap(), "the sleeping caller was woken");
        assert!(!has_event(&mut loop_poll), "the loop was told too");
    }

    #[test]
    fn with_no_caller_asleep_the_loop_is_told() {
        let (ours, mut peer) = pair();
        let mut loop_poll = Poll::new().unwrap();
        let caller = Poll::new().unwrap();
        register(caller.registry(), &ours, 0, Interest::READABLE).unwrap();
        register(loop_poll.registry(), &ours, 7, Interest::READABLE).unwrap();
        peer.write_all(b"reply").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !has_event(&mut loop_poll) {
            assert!(
                Instant::now() < deadline,
                "the loop never heard of the bytes"
            );
            thread::sleep(Duration::from_millis(1));
        }
        drop(caller);
    }

    #[test]
    fn moving_behind_keeps_readiness_that_came_before() {
        let (ours, mut peer) = pair();
        let mut loop_poll = Poll::new().unwrap();
        register(loop_poll.registry(), &ours, 7, Interest::READABLE).unwrap();
        peer.write_all(b"unread").unwrap();
        thread::sleep(Duration::from_millis(20));
        let mut events = Events::with_capacity(4);
        loop_poll.poll(&mut events, Some(Duration::ZERO)).unwrap(); // taken, not read
        reregister_behind(loop_poll.registry(), &ours, 7, Interest::READABLE).unwrap();
        assert!(has_event(&mut loop_poll), "unread bytes are reported again");
    }
}
