//! The pending-call table: calls sent and not yet answered, by sequence id.
//!
//! Shared by calling threads (which insert) and the event loop (which completes). Every entry
//! is completed exactly once: by its reply, its deadline, or the end of the connection,
//! whichever removes it from the table first. The table knows no sockets.

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use rpc_transport::Frame;

use crate::error::RpcError;

/// What to do with a call's outcome: deliver it to whoever waits. Called exactly once.
pub(crate) type Completer = Box<dyn FnOnce(Result<Frame, RpcError>) + Send>;

/// One call waiting for its reply.
pub(crate) struct PendingCall {
    complete: Completer,
    /// When the event loop fails the call with a timeout; `None` when the caller waits with
    /// its own deadline (blocking `call`).
    deadline: Option<Instant>,
    timeout: Duration,
}

/// Why no more calls can be made on a connection.
#[derive(Debug, Clone)]
pub(crate) enum Ended {
    /// This side closed the client.
    Closed,
    /// The connection ended for another reason.
    Lost(RpcError),
    /// The server refused the connection with this error (an error frame with seq 0, such
    /// as `Throttled` at its connection limit): pending and later calls all get it.
    Refused(RpcError),
}

/// Calls in flight on one connection, and whether the connection still takes new ones.
pub(crate) struct PendingCalls {
    calls: HashMap<u64, PendingCall, BuildHasherDefault<SeqHasher>>,
    /// Most calls pending at once; beyond it a new call is refused `Throttled`.
    max_calls: usize,
    /// (deadline, seq) of the calls the event loop must time out.
    deadlines: BTreeSet<(Instant, u64)>,
    ended: Option<Ended>,
    /// The server sent go-away: calls in flight still complete, new ones are refused.
    going_away: bool,
    /// The highest sequence id the server's go-away said it accepted: a call after it was
    /// never run, so if the connection then ends, it fails with the retryable `ShuttingDown`
    /// rather than `ConnectionLost` (which says the call may have run).
    last_accepted: Option<u64>,
    /// Replies that matched no pending call (late after a timeout, duplicated, or unknown).
    discarded_replies: u64,
}

impl PendingCalls {
    /// An empty table that holds at most `max_calls` calls.
    pub(crate) fn with_limit(max_calls: usize) -> Self {
        PendingCalls {
            calls: HashMap::default(),
            max_calls,
            deadlines: BTreeSet::new(),
            ended: None,
            going_away: false,
            last_accepted: None,
            discarded_replies: 0,
        }
    }

    /// Registers call `seq`, unless the connection no longer takes calls.
    ///
    /// # Errors
    ///
    /// The completer is handed back with the error, so the caller can still complete it.
    pub(crate) fn insert(
        &mut self,
        seq: u64,
        timeout: Duration,
        deadline: Option<Instant>,
        complete: Completer,
    ) -> Result<(), (RpcError, Completer)> {
        // A server that said go-away before closing is still "going away" to a new call
        // (retryable: dial again), unless this side closed the client itself.
        match (&self.ended, self.going_away) {
            (None, false) => {}
            (None | Some(Ended::Lost(_)), true) => {
                return Err((RpcError::ShuttingDown, complete));
            }
            (Some(ended), _) => return Err((ended.error_for_new_call(), complete)),
        }
        if self.calls.len() >= self.max_calls {
            return Err((RpcError::Throttled, complete));
        }
        if let Some(at) = deadline {
            self.deadlines.insert((at, seq));
        }
        self.calls.insert(
            seq,
            PendingCall {
                complete,
                deadline,
                timeout,
            },
        );
        Ok(())
    }

    /// Removes call `seq` and returns its completer, if it is still pending.
    pub(crate) fn remove(&mut self, seq: u64) -> Option<Completer> {
        let call = self.calls.remove(&seq)?;
        if let Some(at) = call.deadline {
            self.deadlines.remove(&(at, seq));
        }
        Some(call.complete)
    }

    /// Removes the call a reply answers; counts the reply as discarded if nobody waits for it.
    pub(crate) fn take_for_reply(&mut self, seq: u64) -> Option<Completer> {
        let completer = self.remove(seq);
        if completer.is_none() {
            self.discarded_replies += 1;
        }
        completer
    }

    /// Removes every call whose deadline is at or before `now`: its seq, completer and
    /// timeout error.
    pub(crate) fn take_expired(&mut self, now: Instant) -> Vec<(u64, Completer, RpcError)> {
        let mut expired = Vec::new();
        while let Some(&(at, seq)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            if let Some(call) = self.calls.remove(&seq) {
                expired.push((
                    seq,
                    call.complete,
                    RpcError::Timeout {
                        after: call.timeout,
                    },
                ));
            }
        }
        expired
    }

    /// The earliest deadline the event loop must act on.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(at, _)| at)
    }

    /// Marks the connection ended and removes every pending call, each with its error.
    pub(crate) fn end(&mut self, ended: Ended) -> Vec<(Completer, RpcError)> {
        let error = ended.error_for_pending_call();
        // Only a lost connection may have cut a call short after the server refused it.
        let refused_after = match ended {
            Ended::Lost(_) => self.last_accepted,
            Ended::Closed | Ended::Refused(_) => None,
        };
        if self.ended.is_none() {
            self.ended = Some(ended);
        }
        self.deadlines.clear();
        self.calls
            .drain()
            .map(|(seq, call)| match refused_after {
                Some(last) if seq > last => (call.complete, RpcError::ShuttingDown),
                _ => (call.complete, error.clone()),
            })
            .collect()
    }

    /// Refuses new calls from now on; calls in flight still complete. `last_accepted` is the
    /// go-away frame's sequence id: the server runs no call after it.
    pub(crate) fn go_away(&mut self, last_accepted: u64) {
        self.going_away = true;
        self.last_accepted = Some(last_accepted);
    }

    /// Calls waiting for a reply.
    pub(crate) fn len(&self) -> usize {
        self.calls.len()
    }

    /// Replies that matched no pending call.
    pub(crate) fn discarded_replies(&self) -> u64 {
        self.discarded_replies
    }

    /// True once the connection ended.
    pub(crate) fn is_ended(&self) -> bool {
        self.ended.is_some()
    }
}

impl Ended {
    fn error_for_pending_call(&self) -> RpcError {
        match self {
            Ended::Closed => RpcError::Shutdown,
            Ended::Lost(err) | Ended::Refused(err) => err.clone(),
        }
    }

    fn error_for_new_call(&self) -> RpcError {
        match self {
            // The server said why: more use to the caller than a bare shutdown.
            Ended::Refused(err) => err.clone(),
            // The peer refused TLS (say, this client's certificate) or speaks another
            // protocol (say, TLS to this plaintext client): a verdict on this connection, not
            // a mishap, and a bare shutdown would hide it.
            Ended::Lost(err @ RpcError::Protocol { .. }) => err.clone(),
            Ended::Lost(err @ RpcError::ConnectionLost { cause: Some(cause) })
                if cause.is_tls() =>
            {
                err.clone()
            }
            // Go: every call after the connection ended fails with ErrShutdown.
            Ended::Closed | Ended::Lost(_) => RpcError::Shutdown,
        }
    }
}

/// Hashes the table's keys: sequence ids this client chose itself, consecutive integers,
/// never a peer's choice. One multiplication by an odd constant (Fibonacci hashing) instead
/// of SipHash, whose only advantage, resisting keys an attacker picks, has nothing to resist
/// here. Consecutive ids differ in their low bits, which the multiplication keeps distinct
/// (it is a bijection on them), and its high bits are well mixed.
#[derive(Default)]
struct SeqHasher(u64);

impl Hasher for SeqHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached for `u64` keys (`write_u64`); correct for any other all the same.
        for &byte in bytes {
            self.write_u64(self.0.rotate_left(8) ^ u64::from(byte));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(FIBONACCI_MULTIPLIER);
    }
}

/// 2^64 divided by the golden ratio, rounded to odd.
const FIBONACCI_MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn completer(tx: &mpsc::Sender<Result<u64, String>>) -> Completer {
        let tx = tx.clone();
        Box::new(move |result| {
            let _ = tx.send(result.map(|frame| frame.seq).map_err(|e| e.to_string()));
        })
    }

    #[test]
    fn consecutive_seqs_land_in_distinct_buckets_of_a_table_of_their_size() {
        use std::collections::HashSet;
        use std::hash::BuildHasher;
        let build = BuildHasherDefault::<SeqHasher>::default();
        // 1,024 consecutive ids from anywhere: the low 10 bits of their hashes (a table of
        // 1,024 buckets) are all different.
        for first in [0u64, 1, 1 << 32, u64::MAX - 2_000] {
            let buckets: HashSet<u64> = (first..first + 1_024)
                .map(|seq| build.hash_one(seq) & 1_023)
                .collect();
            assert_eq!(buckets.len(), 1_024, "collisions from {first}");
        }
    }

    #[test]
    fn each_call_completes_once_whichever_event_comes_first() {
        let (tx, rx) = mpsc::channel();
        let mut table = PendingCalls::with_limit(usize::MAX);
        let now = Instant::now();
        let timeout = Duration::from_millis(5);
        for seq in 1..=3 {
            let deadline = Some(now + timeout * seq as u32);
            assert!(table.insert(seq, timeout, deadline, completer(&tx)).is_ok());
        }
        // Reply for 1, timeout for 2, connection end for 3; then a late reply for 2.
        (table.take_for_reply(1).unwrap())(Ok(Frame::new(rpc_transport::FrameKind::Response, 1)));
        for (seq, complete, err) in table.take_expired(now + timeout * 2) {
            assert_eq!(seq, 2);
            complete(Err(err));
        }
        for (complete, err) in table.end(Ended::Lost(RpcError::ConnectionLost { cause: None })) {
            complete(Err(err));
        }
        assert!(table.take_for_reply(2).is_none());
        let results: Vec<_> = rx.try_iter().collect();
        assert_eq!(results.len(), 3);
        assert_eq!(results[0], Ok(1));
        assert!(results[1].as_ref().unwrap_err().contains("no reply within"));
        assert!(results[2].as_ref().unwrap_err().contains("connection lost"));
        assert_eq!(table.discarded_replies(), 1);
        assert_eq!(table.len(), 0);
        assert_eq!(table.next_deadline(), None);
    }

    #[test]
    fn an_ended_or_going_away_table_refuses_new_calls() {
        let (tx, _rx) = mpsc::channel();
        let mut table = PendingCalls::with_limit(usize::MAX);
        table.go_away(0);
        let refused = table.insert(1, Duration::ZERO, None, completer(&tx));
        assert!(matches!(refused, Err((RpcError::ShuttingDown, _))));
        let mut table = PendingCalls::with_limit(usize::MAX);
        assert!(table.end(Ended::Closed).is_empty());
        assert!(table.is_ended());
        let refused = table.insert(1, Duration::ZERO, None, completer(&tx));
        assert!(matches!(refused, Err((RpcError::Shutdown, _))));
    }

    #[test]
    fn a_full_table_refuses_new_calls_until_one_completes() {
        let (tx, _rx) = mpsc::channel();
        let mut table = PendingCalls::with_limit(2);
        for seq in 1..=2 {
            assert!(table
                .insert(seq, Duration::ZERO, None, completer(&tx))
                .is_ok());
        }
        let refused = table.insert(3, Duration::ZERO, None, completer(&tx));
        assert!(matches!(refused, Err((RpcError::Throttled, _))));
        assert!(table.remove(1).is_some());
        assert!(table
            .insert(3, Duration::ZERO, None, completer(&tx))
            .is_ok());
    }

    #[test]
    fn a_connection_closed_after_go_away_still_refuses_with_shutting_down() {
        let (tx, _rx) = mpsc::channel();
        let mut table = PendingCalls::with_limit(usize::MAX);
        table.go_away(0);
        assert!(table
            .end(Ended::Lost(RpcError::ConnectionLost { cause: None }))
            .is_empty());
        let refused = table.insert(1, Duration::ZERO, None, completer(&tx));
        assert!(matches!(refused, Err((RpcError::ShuttingDown, _))));
        // Closing the client itself is final, go-away or not.
        let mut table = PendingCalls::with_limit(usize::MAX);
        table.go_away(0);
        assert!(table.end(Ended::Closed).is_empty());
        let refused = table.insert(1, Duration::ZERO, None, completer(&tx));
        assert!(matches!(refused, Err((RpcError::Shutdown, _))));
    }

    #[test]
    fn a_connection_lost_to_tls_or_a_protocol_error_tells_later_calls_why() {
        let (tx, _rx) = mpsc::channel();
        let tls_refused = RpcError::ConnectionLost {
            cause: Some(rpc_transport::TransportError::TlsHandshakeClosed),
        };
        let bad_frames = RpcError::Protocol {
            detail: "server sent bad frames".into(),
        };
        for lost in [tls_refused, bad_frames] {
            let mut table = PendingCalls::with_limit(usize::MAX);
            assert!(table.end(Ended::Lost(lost.clone())).is_empty());
            match table.insert(1, Duration::ZERO, None, completer(&tx)) {
                Err((err, _)) => assert_eq!(err.to_string(), lost.to_string()),
                Ok(()) => panic!("an ended table took a call"),
            }
        }
        // A connection merely lost still answers later calls as Go does.
        let mut table = PendingCalls::with_limit(usize::MAX);
        let lost = RpcError::ConnectionLost { cause: None };
        assert!(table.end(Ended::Lost(lost)).is_empty());
        let refused = table.insert(1, Duration::ZERO, None, completer(&tx));
        assert!(matches!(refused, Err((RpcError::Shutdown, _))));
    }

    #[test]
    fn calls_after_the_go_away_seq_fail_shutting_down_when_the_connection_is_lost() {
        let (tx, rx) = mpsc::channel();
        let mut table = PendingCalls::with_limit(usize::MAX);
        for seq in [4u64, 5] {
            let tx = tx.clone();
            let complete: Completer = Box::new(move |result| {
                let _ = tx.send((seq, result.map(|_| ()).map_err(|err| err.is_unprocessed())));
            });
            assert!(table.insert(seq, Duration::ZERO, None, complete).is_ok());
        }
        // The server accepted up to 4; 5 was sent before the go-away arrived.
        table.go_away(4);
        let lost = RpcError::ConnectionLost { cause: None };
        for (complete, err) in table.end(Ended::Lost(lost)) {
            complete(Err(err));
        }
        let mut outcomes: Vec<_> = rx.try_iter().collect();
        outcomes.sort_unstable();
        // Call 4 may have run (ConnectionLost); call 5 surely did not (ShuttingDown).
        assert_eq!(outcomes, [(4, Err(false)), (5, Err(true))]);
    }

    #[test]
    fn a_refused_connection_fails_pending_and_later_calls_with_the_servers_reason() {
        let (tx, rx) = mpsc::channel();
        let mut table = PendingCalls::with_limit(usize::MAX);
        assert!(table
            .insert(1, Duration::ZERO, None, completer(&tx))
            .is_ok());
        for (complete, err) in table.end(Ended::Refused(RpcError::Throttled)) {
            complete(Err(err));
        }
        assert!(rx.try_recv().unwrap().unwrap_err().contains("call limit"));
        // The close that follows the refusal does not change the reason.
        assert!(table
            .end(Ended::Lost(RpcError::ConnectionLost { cause: None }))
            .is_empty());
        let refused = table.insert(2, Duration::ZERO, None, completer(&tx));
        assert!(matches!(refused, Err((RpcError::Throttled, _))));
    }
}
