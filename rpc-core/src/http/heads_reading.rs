//! The HTTP listener's connections whose request head is still being read, oldest first, so
//! that when [`HttpConfig::max_handshakes`](super::HttpConfig::max_handshakes) are running a
//! new connection can take the place of the oldest one that has been silent too long,
//! instead of being refused: sockets that send nothing then cannot keep every new client out
//! until the head timeout frees them.
//!
//! A head is evictable once it has been read for [`EVICTABLE_AFTER`] of the head timeout:
//! an honest client sends its head at once, so it is never the oldest past that age unless
//! it is slower than that, while a burst of new connections cannot push each other out.

use std::collections::BTreeMap;
use std::net::{Shutdown, TcpStream};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The part of the head timeout after which a head still unread may be closed to make room:
/// a tenth (1 s of the default 10 s).
pub(super) const EVICTABLE_AFTER: u32 = 10;

/// The heads being read, by ticket (tickets rise with accept time, so the first is oldest).
#[derive(Default)]
pub(super) struct HeadsReading {
    heads: Mutex<Heads>,
}

#[derive(Default)]
struct Heads {
    reading: BTreeMap<u64, Reading>,
    next_ticket: u64,
}

/// One head being read: since when, and a handle on its socket to close it by.
struct Reading {
    since: Instant,
    socket: TcpStream,
}

impl HeadsReading {
    /// Notes that a head is about to be read from `stream`; returns its ticket, or `None` if
    /// the socket could not be shared (out of descriptors): that head cannot be evicted.
    pub(super) fn start(&self, stream: &TcpStream) -> Option<u64> {
        let socket = stream.try_clone().ok()?;
        let mut heads = self.lock();
        let ticket = heads.next_ticket;
        heads.next_ticket += 1;
        let since = Instant::now();
        heads.reading.insert(ticket, Reading { since, socket });
        Some(ticket)
    }

    /// Notes that the head of `ticket` is read (or its reading failed). False if it was
    /// evicted first: its socket is shut down, and the connection must end unanswered.
    pub(super) fn finish(&self, ticket: Option<u64>) -> bool {
        let Some(ticket) = ticket else {
            return true;
        };
        self.lock().reading.remove(&ticket).is_some()
    }

    /// Shuts down the socket of the oldest head still being read if its reading began at
    /// least `min_age` ago (its thread then finds it closed and ends); true if one was.
    pub(super) fn evict_oldest(&self, min_age: Duration) -> bool {
        let mut heads = self.lock();
        let Some(oldest) = heads.reading.first_entry() else {
            return false;
        };
        if oldest.get().since.elapsed() < min_age {
            return false;
        }
        let _ = oldest.remove().socket.shutdown(Shutdown::Both);
        true
    }

    fn lock(&self) -> MutexGuard<'_, Heads> {
        // Single map operations: a poisoned lock still holds sound data.
        self.heads.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        (client, server)
    }

    #[test]
    fn only_a_head_older_than_the_age_is_evicted_and_the_oldest_first() {
        let heads = HeadsReading::default();
        let (_first_client, first) = pair();
        let (_second_client, second) = pair();
        let first_ticket = heads.start(&first);
        let second_ticket = heads.start(&second);
        assert!(!heads.evict_oldest(Duration::from_secs(60)), "too young");
        assert!(heads.evict_oldest(Duration::ZERO));
        assert!(!heads.finish(first_ticket), "the oldest went");
        assert!(heads.finish(second_ticket), "the younger stayed");
        assert!(!heads.evict_oldest(Duration::ZERO), "none left");
    }

    #[test]
    fn an_evicted_head_reads_the_end_of_its_stream() {
        use std::io::Read;
        let heads = HeadsReading::default();
        let (_client, mut server) = pair();
        let _ticket = heads.start(&server);
        assert!(heads.evict_oldest(Duration::ZERO));
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        assert_eq!(server.read(&mut [0u8; 8]).expect("read"), 0);
    }
}
