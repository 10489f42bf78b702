//! One connection's TLS state: plaintext in, records out; records in, plaintext out. Owns no
//! socket: the [`crate::Connection`] feeds it what `send` is given and the event loop what it
//! reads, and both queue the records it produces on the connection's outbound queue.
//!
//! [`TlsLayer`] adds the lock every writer and the loop share (records must be queued in the
//! order rustls numbered them) and the condition a dialer waits on for the handshake.

use std::io::{BufRead, Write};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};

use crate::clock::deadline_after;
use crate::decoder::FrameDecoder;
use crate::error::TransportError;
use crate::handler::CloseReason;
use crate::tls::record_cursor::RecordCursor;

/// A connection's TLS session behind its lock, and the handshake's condition.
#[derive(Debug)]
pub(crate) struct TlsLayer {
    session: Mutex<TlsSession>,
    /// Signalled when the handshake is settled or fails.
    handshake_changed: Condvar,
}

impl TlsLayer {
    pub(crate) fn new(conn: rustls::Connection) -> Self {
        TlsLayer {
            session: Mutex::new(TlsSession::new(conn)),
            handshake_changed: Condvar::new(),
        }
    }

    /// Locks the session. Lock order: this lock before the outbound queue's.
    pub(crate) fn lock(&self) -> MutexGuard<'_, TlsSession> {
        // rustls keeps its state consistent between calls; a panic elsewhere while holding
        // this lock (none is expected) leaves a session that at worst fails its next record.
        self.session
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wakes the threads waiting in [`TlsLayer::wait_for_handshake`].
    pub(crate) fn notify(&self) {
        self.handshake_changed.notify_all();
    }

    /// Loop side: the connection closed. A handshake not yet settled fails with the reason.
    pub(crate) fn handle_close(&self, reason: &CloseReason) {
        let mut session = self.lock();
        // Plaintext held for the handshake will never be written now.
        session.early_len = 0;
        if !session.settled && session.failure.is_none() {
            session.failure = Some(match reason {
                CloseReason::Error(err) => err.clone(),
                CloseReason::PeerClosed => TransportError::TlsHandshakeClosed,
                _ => TransportError::Closed,
            });
        }
        drop(session);
        self.notify();
    }

    /// Waits until the handshake is settled (see [`TlsSession::handle_ciphertext`]), has
    /// failed, or `timeout` has passed.
    ///
    /// # Errors
    ///
    /// The error that ended the handshake, or [`TransportError::TlsHandshakeTimeout`]
    /// ([`TransportError::TlsServerSilent`] if the handshake finished and only the server's
    /// next record was missing).
    pub(crate) fn wait_for_handshake(&self, timeout: Duration) -> Result<(), TransportError> {
        let deadline = deadline_after(Instant::now(), timeout);
        let mut session = self.lock();
        loop {
            if let Some(err) = &session.failure {
                return Err(err.clone());
            }
            if session.settled {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(match session.is_handshaking() {
                    true => TransportError::TlsHandshakeTimeout { after: timeout },
                    false => TransportError::TlsServerSilent { after: timeout },
                });
            }
            session = self
                .handshake_changed
                .wait_timeout(session, deadline - now)
                .map_or_else(|poisoned| poisoned.into_inner().0, |(guard, _)| guard);
        }
    }
}

/// A rustls session and what the connection needs to know about it.
#[derive(Debug)]
pub(crate) struct TlsSession {
    conn: rustls::Connection,
    /// Plaintext accepted during the handshake: rustls holds it, and sends it when the
    /// handshake finishes. Counted in the connection's queued bytes meanwhile.
    early_len: usize,
    /// Where the peer's records stand: a record begun and not ended is a message arriving.
    cursor: RecordCursor,
    /// The handshake is over as the peer sees it too: it can no longer refuse this side.
    settled: bool,
    /// Why the handshake failed: set as the connection closes before it settled.
    failure: Option<TransportError>,
    /// The peer sent its close_notify: it will send nothing more, whether or not its TCP
    /// close follows.
    peer_closed: bool,
}

/// What [`TlsSession::handle_ciphertext`] did besides delivering plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct TlsProgress {
    /// The handshake settled during this call.
    pub(crate) settled: bool,
}

impl TlsSession {
    pub(crate) fn new(mut conn: rustls::Connection) -> Self {
        // No cap inside rustls: records are drained into the connection's queue at once, and
        // what waits there (and `early_len`) is bounded by the caps of the layers above.
        conn.set_buffer_limit(None);
        TlsSession {
            conn,
            early_len: 0,
            cursor: RecordCursor::default(),
            settled: false,
            failure: None,
            peer_closed: false,
        }
    }

    pub(crate) fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Plaintext accepted before the handshake finished and not yet sent.
    pub(crate) fn early_len(&self) -> usize {
        self.early_len
    }

    /// True while the peer has sent part of a TLS record and not the rest.
    pub(crate) fn is_mid_record(&self) -> bool {
        self.cursor.is_mid_record()
    }

    /// True once the peer's close_notify has arrived: its stream has ended, as at the
    /// socket's end of stream (what it sent before is delivered first).
    pub(crate) fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Encrypts `plaintext` and appends the records to `out`. During the handshake rustls
    /// holds the plaintext and appends nothing; it is sent once the handshake finishes.
    ///
    /// # Errors
    ///
    /// [`TransportError::Closed`] if rustls no longer accepts data (after a TLS failure).
    pub(crate) fn handle_plaintext(
        &mut self,
        plaintext: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), TransportError> {
        if self.conn.is_handshaking() {
            self.early_len += plaintext.len();
        }
        // With no buffer limit rustls takes everything in one call; a short write means it
        // refuses data, which `write_all` reports as `WriteZero`.
        self.conn
            .writer()
            .write_all(plaintext)
            .map_err(|_| TransportError::Closed)?;
        self.poll_records(out);
        Ok(())
    }

    /// Feeds bytes read from the socket: plaintext goes to `decoder`; records rustls wants to
    /// send (handshake messages, alerts, plaintext held during the handshake) to `out`.
    ///
    /// Reports when the handshake *settles*: when the peer can no longer refuse this side. A
    /// server's handshake settles as it finishes, as does a client's in TLS 1.2 (the server's
    /// Finished comes last). In TLS 1.3 the client finishes first, and learns whether the
    /// server accepted its certificate only from the server's next record (a session ticket,
    /// data, or an alert refusing it): its handshake settles when such a record arrives.
    ///
    /// # Errors
    ///
    /// [`TransportError::Tls`] if the bytes are not TLS, a certificate is refused, or a
    /// record fails to decrypt; an alert telling the peer why is then in `out`.
    pub(crate) fn handle_ciphertext(
        &mut self,
        mut bytes: &[u8],
        decoder: &mut FrameDecoder,
        out: &mut BytesMut,
    ) -> Result<TlsProgress, TransportError> {
        let was_handshaking = self.conn.is_handshaking();
        let mut result = Ok(());
        let mut records_after_handshake = false;
        while !bytes.is_empty() {
            // rustls takes at most a few KiB per call: feed, process, drain, repeat.
            let offered = bytes;
            match self.conn.read_tls(&mut bytes) {
                Ok(0) => break, // after the peer's close_notify: nothing more is read
                Ok(taken) => {
                    self.cursor.advance(&offered[..taken]);
                    records_after_handshake |= !self.conn.is_handshaking();
                }
                Err(err) => {
                    result = Err(rustls::Error::General(err.to_string()));
                    break;
                }
            }
            match self.conn.process_new_packets() {
                Ok(state) => self.peer_closed |= state.peer_has_closed(),
                Err(err) => {
                    result = Err(err);
                    break;
                }
            }
            self.drain_plaintext(decoder);
        }
        self.poll_records(out);
        if let Err(error) = result {
            // The handshake's waiters learn of it when the loop closes the connection, after
            // the alert has been written: a waiter that closed the connection itself first
            // would drop the alert.
            return Err(TransportError::Tls { error });
        }
        if was_handshaking && !self.conn.is_handshaking() {
            self.early_len = 0; // rustls encrypted it into the records just polled
        }
        let settles = !self.settled
            && !self.conn.is_handshaking()
            && (records_after_handshake || self.settles_as_it_finishes());
        self.settled |= settles;
        Ok(TlsProgress { settled: settles })
    }

    /// True if this side's handshake settles as it finishes (see `handle_ciphertext`).
    fn settles_as_it_finishes(&self) -> bool {
        match &self.conn {
            rustls::Connection::Server(_) => true,
            rustls::Connection::Client(conn) => {
                conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3)
            }
        }
    }

    /// Moves the plaintext rustls has decrypted into the decoder, without copying it twice.
    fn drain_plaintext(&mut self, decoder: &mut FrameDecoder) {
        let mut reader = self.conn.reader();
        loop {
            let taken = match reader.fill_buf() {
                Ok([]) => return, // the peer's close_notify: `peer_closed` says so
                Ok(chunk) => {
                    decoder.handle_bytes(chunk);
                    chunk.len()
                }
                // `WouldBlock`: all read. Rustls reports no other error here, since it is
                // never told of the socket's EOF (the loop handles that itself).
                Err(_) => return,
            };
            reader.consume(taken);
        }
    }

    /// Appends every record rustls has ready to `out`.
    pub(crate) fn poll_records(&mut self, out: &mut BytesMut) {
        let mut writer = (&mut *out).writer();
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut writer) {
                Ok(0) | Err(_) => break, // writing to memory fails never; stop rather than spin
                Ok(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly by design

    use bytes::BytesMut;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    use super::*;
    use crate::frame::Frame;
    use crate::limits::FrameLimits;
    use crate::tls::{self, ClientTls, PrivateKeyDer, RootCertStore};

    /// A server and a client session, the server's certificate signed by a fresh CA.
    fn sessions() -> (TlsSession, TlsSession) {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let key = PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
        let server_config = tls::server_config(vec![leaf.der().clone()], key, None).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(ca_cert.der().clone()).unwrap();
        let client_config = tls::client_config(roots, None).unwrap();
        let client = ClientTls::new(client_config, "localhost").unwrap();
        (
            TlsSession::new(tls::server_session(&server_config).unwrap()),
            TlsSession::new(client.session().unwrap()),
        )
    }

    fn decoder() -> FrameDecoder {
        FrameDecoder::new(FrameLimits::default())
    }

    fn encoded(frame: &Frame) -> Vec<u8> {
        let mut bytes = BytesMut::new();
        frame.encode(&mut bytes, &FrameLimits::default()).unwrap();
        bytes.to_vec()
    }

    /// Moves records both ways until neither side has any left.
    fn pump(
        server: &mut TlsSession,
        client: &mut TlsSession,
        to_server: &mut BytesMut,
        to_client: &mut BytesMut,
        (server_in, client_in): (&mut FrameDecoder, &mut FrameDecoder),
    ) {
        for _ in 0..10 {
            if to_server.is_empty() && to_client.is_empty() {
                return;
            }
            let bytes = to_server.split();
            server
                .handle_ciphertext(&bytes, server_in, to_client)
                .unwrap();
            let bytes = to_client.split();
            client
                .handle_ciphertext(&bytes, client_in, to_server)
                .unwrap();
        }
        panic!("the sessions kept exchanging records");
    }

    #[test]
    fn frames_sent_during_the_handshake_are_held_then_delivered_in_order() {
        let (mut server, mut client) = sessions();
        let (mut to_server, mut to_client) = (BytesMut::new(), BytesMut::new());
        let (mut server_in, mut client_in) = (decoder(), decoder());
        client.poll_records(&mut to_server); // the client hello
        assert!(!to_server.is_empty());

        let first = Frame::request(1, "Arith.Multiply", 1, &b"early"[..]);
        client
            .handle_plaintext(&encoded(&first), &mut to_server)
            .unwrap();
        assert_eq!(client.early_len(), encoded(&first).len());
        pump(
            &mut server,
            &mut client,
            &mut to_server,
            &mut to_client,
            (&mut server_in, &mut client_in),
        );
        assert!(!client.is_handshaking() && !server.is_handshaking());
        assert_eq!(client.early_len(), 0);

        let second = Frame::request(2, "Arith.Sum", 1, vec![7u8; 40_000]);
        client
            .handle_plaintext(&encoded(&second), &mut to_server)
            .unwrap();
        let records = to_server.split();
        assert!(
            !records.windows(9).any(|w| w == b"Arith.Sum"),
            "plaintext visible on the wire"
        );
        server
            .handle_ciphertext(&records, &mut server_in, &mut to_client)
            .unwrap();
        assert_eq!(server_in.poll_frame().unwrap(), Some(first));
        assert_eq!(server_in.poll_frame().unwrap(), Some(second));
        assert_eq!(server_in.poll_frame().unwrap(), None);
    }

    #[test]
    fn a_tls13_client_settles_only_on_the_servers_first_record_after_the_handshake() {
        let (mut server, mut client) = sessions();
        let (mut to_server, mut to_client) = (BytesMut::new(), BytesMut::new());
        let (mut server_in, mut client_in) = (decoder(), decoder());
        client.poll_records(&mut to_server);
        // Hello to the server; its flight (ending in Finished) back to the client.
        let hello = to_server.split();
        let progress = server
            .handle_ciphertext(&hello, &mut server_in, &mut to_client)
            .unwrap();
        assert!(!progress.settled);
        let flight = to_client.split();
        let progress = client
            .handle_ciphertext(&flight, &mut client_in, &mut to_server)
            .unwrap();
        assert!(!client.is_handshaking(), "the client has finished");
        assert!(!progress.settled, "but the server has not judged it yet");
        // The client's Finished settles the server, whose tickets then settle the client.
        let finished = to_server.split();
        let progress = server
            .handle_ciphertext(&finished, &mut server_in, &mut to_client)
            .unwrap();
        assert!(progress.settled);
        let tickets = to_client.split();
        assert!(!tickets.is_empty());
        let progress = client
            .handle_ciphertext(&tickets, &mut client_in, &mut to_server)
            .unwrap();
        assert!(progress.settled);
    }

    #[test]
    fn bytes_that_are_not_tls_fail_with_a_tls_error_and_an_alert_for_the_peer() {
        let (mut server, _client) = sessions();
        let mut out = BytesMut::new();
        let ping = encoded(&Frame::new(crate::FrameKind::Ping, 0));
        let err = server
            .handle_ciphertext(&ping, &mut decoder(), &mut out)
            .unwrap_err();
        assert!(matches!(err, TransportError::Tls { .. }), "{err:?}");
        assert!(err.is_tls() && !err.is_protocol_violation());
        assert!(err.to_string().starts_with("tls failed: "), "{err}");
        assert_eq!(out.first(), Some(&0x15), "an alert record is queued");
    }

    #[test]
    fn a_close_before_the_handshake_settles_fails_its_waiters_with_the_reason() {
        let (_server, client) = sessions();
        let layer = TlsLayer {
            session: Mutex::new(client),
            handshake_changed: Condvar::new(),
        };
        let waited = Duration::from_millis(20);
        assert_eq!(
            layer.wait_for_handshake(waited),
            Err(TransportError::TlsHandshakeTimeout { after: waited })
        );
        layer.handle_close(&CloseReason::PeerClosed);
        assert_eq!(
            layer.wait_for_handshake(Duration::from_secs(5)),
            Err(TransportError::TlsHandshakeClosed)
        );
    }
}
