//! The HTTP listener's connections whose request head is still being read, with when each
//! was accepted and last sent a byte, so that when
//! [`HttpConfig::max_handshakes`](super::HttpConfig::max_handshakes) are running a new
//! connection can take the place of one that is holding its place without finishing its
//! head, instead of being refused: sockets that send nothing, or a byte now and then, cannot
//! keep every new client out until the head timeout frees them.
//!
//! A head is evictable once its connection has sent nothing for [`EVICTABLE_AFTER`] of the
//! head timeout (since it was accepted, or since its last byte), the one silent longest
//! first; failing that, once it has been read for [`OVERDUE_AFTER`] of the head timeout, the
//! oldest first (a trickle of bytes). An honest client sends its head at once, and one on a
//! slow link that keeps sending is never silent that long and finishes well within the
//! timeout, while a burst of new connections cannot push each other out.

use std::collections::HashMap;
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The part of the head timeout a connection must have been silent for before it may be
/// closed to make room: a tenth (1 s of the default 10 s).
pub(super) const EVICTABLE_AFTER: u32 = 10;

/// The part of the head timeout after which a head still unfinished may be closed to make
/// room however recently its last byte came: half (5 s of the default 10 s).
pub(super) const OVERDUE_AFTER: u32 = 2;

/// The heads being read, by ticket (tickets rise with accept time).
#[derive(Default)]
pub(super) struct HeadsReading {
    heads: Mutex<Heads>,
}

#[derive(Default)]
struct Heads {
    reading: HashMap<u64, Reading>,
    next_ticket: u64,
}

/// One head being read: its socket (shared with the thread reading it, to shut it down by),
/// and when it was accepted and its peer last sent something.
struct Reading {
    socket: Arc<TcpStream>,
    since: Instant,
    last_heard: Instant,
}

impl HeadsReading {
    /// Notes that a head is about to be read from `stream`; returns its ticket and the socket,
    /// now shared with this register until [`HeadsReading::finish`].
    pub(super) fn start(&self, stream: TcpStream) -> (u64, Arc<TcpStream>) {
        let socket = Arc::new(stream);
        let mut heads = self.lock();
        let ticket = heads.next_ticket;
        heads.next_ticket += 1;
        let now = Instant::now();
        let reading = Reading {
            socket: Arc::clone(&socket),
            since: now,
            last_heard: now,
        };
        heads.reading.insert(ticket, reading);
        (ticket, socket)
    }

    /// Notes that the peer of `ticket` sent more of its head just now.
    pub(super) fn heard(&self, ticket: u64) {
        if let Some(reading) = self.lock().reading.get_mut(&ticket) {
            reading.last_heard = Instant::now();
        }
    }

    /// Notes that the head of `ticket` is read (or its reading failed), and hands its socket
    /// back whole: `None` if it was evicted first (its socket is shut down, and the
    /// connection must end unanswered).
    pub(super) fn finish(&self, ticket: u64, socket: Arc<TcpStream>) -> Option<TcpStream> {
        let registered = self.lock().reading.remove(&ticket)?;
        drop(registered);
        // The register's share is gone, and nobody else takes one.
        Arc::try_unwrap(socket).ok()
    }

    /// Forgets `ticket` without its socket (its thread never started): the register's share
    /// of the socket goes, which closes it.
    pub(super) fn forget(&self, ticket: u64) {
        self.lock().reading.remove(&ticket);
    }

    /// Shuts down the socket of the head whose peer has been silent longest, if that is
    /// `min_silence` or more, or else of the oldest head, if it has been read for `max_age`
    /// or more (its thread then finds it closed and ends); true if one was.
    pub(super) fn evict(&self, min_silence: Duration, max_age: Duration) -> bool {
        let mut heads = self.lock();
        let now = Instant::now();
        let first_by = |key: fn(&Reading) -> Instant, least: Duration| {
            heads
                .reading
                .iter()
                .map(|(ticket, reading)| (key(reading), *ticket))
                .min()
                .filter(|(at, _)| now.saturating_duration_since(*at) >= least)
        };
        let chosen = first_by(|reading| reading.last_heard, min_silence)
            .or_else(|| first_by(|reading| reading.since, max_age));
        let Some((_, ticket)) = chosen else {
            return false;
        };
        if let Some(evicted) = heads.reading.remove(&ticket) {
            let _ = evicted.socket.shutdown(Shutdown::Both);
        }
        true
    }

    fn lock(&self) -> MutexGuard<'_, Heads> {
        // Single map operations: a poisoned lock still holds sound data.
        self.heads.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::thread;

    use super::*;
    use crate::socket_pair as pair;

    #[test]
    fn the_head_silent_longest_goes_first_and_only_past_the_silence() {
        let heads = HeadsReading::default();
        let (_first_client, first) = pair();
        let (_second_client, second) = pair();
        let (first_ticket, first) = heads.start(first);
        thread::sleep(Duration::from_millis(20));
        let (second_ticket, second) = heads.start(second);
        // The older connection has just sent something: the younger is now the most silent.
        thread::sleep(Duration::from_millis(20));
        heads.heard(first_ticket);
        let never = Duration::from_secs(60);
        assert!(!heads.evict(never, never), "too recent");
        assert!(heads.evict(Duration::ZERO, never));
        assert!(
            heads.finish(second_ticket, second).is_none(),
            "the silent one went"
        );
        assert!(
            heads.finish(first_ticket, first).is_some(),
            "the talking one stayed"
        );
        assert!(!heads.evict(Duration::ZERO, Duration::ZERO), "none left");
    }

    #[test]
    fn a_head_trickling_past_the_age_goes_when_none_is_silent_the_oldest_first() {
        let heads = HeadsReading::default();
        let (_first_client, first) = pair();
        let (_second_client, second) = pair();
        let (first_ticket, first) = heads.start(first);
        let (second_ticket, second) = heads.start(second);
        thread::sleep(Duration::from_millis(20));
        heads.heard(second_ticket);
        heads.heard(first_ticket);
        let never = Duration::from_secs(60);
        assert!(!heads.evict(never, never), "neither silent nor old");
        assert!(heads.evict(never, Duration::from_millis(10)));
        assert!(
            heads.finish(first_ticket, first).is_none(),
            "the oldest went"
        );
        assert!(heads.finish(second_ticket, second).is_some());
    }

    #[test]
    fn an_evicted_head_reads_the_end_of_its_stream() {
        let heads = HeadsReading::default();
        let (_client, server) = pair();
        let (_ticket, server) = heads.start(server);
        assert!(heads.evict(Duration::ZERO, Duration::ZERO));
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        assert_eq!((&*server).read(&mut [0u8; 8]).expect("read"), 0);
    }

    #[test]
    fn a_forgotten_head_closes_its_socket() {
        let heads = HeadsReading::default();
        let (mut client, server) = pair();
        let (ticket, server) = heads.start(server);
        drop(server);
        heads.forget(ticket);
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        assert_eq!(client.read(&mut [0u8; 8]).expect("read"), 0);
    }
}
