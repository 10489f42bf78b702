//! The hello: the Ping a netrpc client sends as its first frame, and the hint it carries.
//!
//! A Ping opens a connection without a call (docs/PROTOCOL.md §4, "Ping and Pong"). The
//! client's hello may also say, in its metadata, that the client's waiting callers busy poll
//! (`ClientBuilder::busy_poll`): the key [`BUSY_POLL_KEY`], its value the budget in
//! microseconds as decimal digits. A server that busy polls too then writes an inline turn's
//! replies together at its end, which pays only when both ends spin (`server_conn.rs`,
//! `INLINE_REPLIES_PER_WRITE`). The hint changes when replies are written, never what they
//! say; a server that ignores it, or a client that sends none, is as correct as before.

use std::time::Duration;

use rpc_transport::{Frame, FrameKind, Metadata, MetadataBuilder};

/// Metadata key of the hello's hint that the client's callers busy poll.
const BUSY_POLL_KEY: &str = "busy-poll-us";

/// The hello of a client whose waiting callers busy poll for `busy_poll` (zero: they sleep
/// at once, and the hello carries no hint).
pub(crate) fn hello(busy_poll: Duration) -> Frame {
    let mut ping = Frame::new(FrameKind::Ping, 0);
    let micros = busy_poll.as_micros();
    if micros > 0 {
        let budget = micros.to_string();
        ping.metadata = MetadataBuilder::new()
            .insert(BUSY_POLL_KEY, budget.as_bytes())
            .build();
    }
    ping
}

/// Whether `ping` says that its sender's waiting callers busy poll: the hint is there and
/// its budget is not zero. Malformed metadata says nothing.
pub(crate) fn says_callers_busy_poll(ping: &Frame) -> bool {
    Metadata::new(&ping.metadata)
        .get(BUSY_POLL_KEY)
        .is_some_and(|budget| budget.iter().any(|&digit| digit != b'0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_polling_clients_hello_says_so_with_its_budget() {
        let ping = hello(Duration::from_micros(50));
        assert_eq!(ping.kind, FrameKind::Ping);
        assert_eq!(
            Metadata::new(&ping.metadata).get(BUSY_POLL_KEY),
            Some(&b"50"[..])
        );
        assert!(says_callers_busy_poll(&ping));
    }

    #[test]
    fn a_sleeping_clients_hello_is_a_plain_ping() {
        let ping = hello(Duration::ZERO);
        assert!(ping.metadata.is_empty(), "nothing to pay for");
        assert!(!says_callers_busy_poll(&ping));
        // Under a microsecond rounds to nothing: such a caller barely spins.
        assert!(!says_callers_busy_poll(&hello(Duration::from_nanos(900))));
    }

    #[test]
    fn a_zero_budget_or_broken_metadata_says_nothing() {
        let mut ping = Frame::new(FrameKind::Ping, 0);
        ping.metadata = MetadataBuilder::new().insert(BUSY_POLL_KEY, b"00").build();
        assert!(!says_callers_busy_poll(&ping));
        ping.metadata = bytes::Bytes::from_static(&[200, b'b']);
        assert!(!says_callers_busy_poll(&ping));
    }
}
