//! TLS and mutual TLS end to end (SEEDS §7 "Security"): calls of every shape over TLS, client
//! certificates required and refused, untrusted servers, plaintext and TLS peers mixed up, a
//! handshake that stalls, bytes that are not TLS, and pool workers reading TLS connections.
//! Certificates are made in the test with rcgen; every wait is bounded, and after each fault
//! the server serves others and returns to idle.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod util;

#[path = "../examples/support/certs.rs"]
mod certs;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use certs::{Authority, Identity};
use netrpc::cluster::{Distributor, Multicast};
use netrpc::tls::rustls::{self, AlertDescription, CertificateError};
use netrpc::tls::{self, ClientTls};
use netrpc::transport::{Frame, FrameDecoder, FrameKind, FrameLimits, TransportError};
use netrpc::{done_channel, Client, ClientBuilder, RpcError, Server, ServerBuilder};
use util::{
    assert_back_to_idle, sorted_results, wait_until, Args, ArithClient, Colour, DecodedOn, Label,
    ProbeClient, TestServer,
};

/// Everything a test needs: a CA, a server and a client certificate signed by it, and a
/// second CA that signed nothing the server knows.
struct Pki {
    ca: Authority,
    server: Identity,
    client: Identity,
    other_ca: Authority,
}

impl Pki {
    fn new() -> Pki {
        let ca = Authority::new("netrpc test ca").unwrap();
        let server = ca.server().unwrap();
        let client = ca.client("client-1").unwrap();
        let other_ca = Authority::new("some other ca").unwrap();
        Pki {
            ca,
            server,
            client,
            other_ca,
        }
    }

    /// A TLS server with `Arith` and `Probe`; `mtls` requires client certificates from `ca`.
    fn serve(&self, mtls: bool, builder: ServerBuilder) -> TestServer {
        let client_roots = mtls.then(|| self.ca.roots().unwrap());
        let (chain, key) = self.server.pair();
        let config = tls::server_config(chain, key, client_roots).unwrap();
        TestServer::start_with(builder.tls(config).build())
    }

    /// Client TLS trusting `roots`, presenting `identity` if given, expecting `localhost`.
    fn client_tls(&self, roots: &Authority, identity: Option<&Identity>) -> ClientTls {
        let config = tls::client_config(roots.roots().unwrap(), identity.map(Identity::pair));
        ClientTls::new(config.unwrap(), "localhost").unwrap()
    }

    fn dial(&self, server: &TestServer, identity: Option<&Identity>) -> Result<Client, RpcError> {
        bounded_builder()
            .tls(self.client_tls(&self.ca, identity))
            .dial(server.addr())
    }
}

fn bounded_builder() -> ClientBuilder {
    Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .call_timeout(Duration::from_secs(10))
}

/// A fresh TLS client (with the client certificate, which every test server accepts) gets
/// its answer: the server goes on serving others after a fault.
/// Waits until the server has counted `tls_errors` failed handshakes (`what`), then checks it
/// still serves a good TLS client and holds nothing from the fault.
fn assert_counted_then_recovered(pki: &Pki, server: &TestServer, tls_errors: u64, what: &str) {
    wait_until(what, Duration::from_secs(5), || {
        server.server.stats().tls_errors == tls_errors
    });
    assert_tls_healthy(pki, server);
    assert_back_to_idle(&server.server);
}

fn assert_tls_healthy(pki: &Pki, server: &TestServer) {
    let arith = ArithClient::new(pki.dial(server, Some(&pki.client)).unwrap());
    assert_eq!(arith.multiply(&Args { a: 6, b: 7 }).unwrap(), 42);
}

/// The whole chain of an error's texts, as a user printing it would see it.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[test]
fn calls_of_every_shape_work_over_tls() {
    let pki = Pki::new();
    let server = pki.serve(false, Server::builder());
    let client = pki.dial(&server, None).unwrap();
    let arith = ArithClient::new(client.clone());

    assert_eq!(arith.multiply(&Args { a: 7, b: 8 }).unwrap(), 56);
    assert_eq!(arith.sum_go(&Args { a: 2, b: 3 }).wait().unwrap(), 5);

    let (done, completions) = done_channel::<i64>();
    for i in 0..100i64 {
        client.go_with("Arith.Multiply", &Args { a: i, b: 3 }, &done);
    }
    {
        // Corked frames are encrypted as they are queued, and written with the batch.
        let batch = client.batch();
        for i in 100..200i64 {
            batch.go_with("Arith.Multiply", &Args { a: i, b: 3 }, &done);
        }
    }
    // A TLS connection is read by the loop alone: this waits on the channel.
    let products = sorted_results(&client, &completions, 200);
    assert_eq!(products, (0..200).map(|i| i * 3).collect::<Vec<_>>());

    drop((arith, client));
    assert_eq!(server.server.stats().tls_errors, 0);
    assert_back_to_idle(&server.server);
}

#[test]
fn workers_reading_their_connections_decrypt_and_answer_every_tls_call() {
    // With worker reads a pool worker takes the connection's read turn and decrypts the
    // records itself, as a waiting client caller does.
    let pki = Pki::new();
    let server = pki.serve(false, Server::builder().worker_reads(true));
    let drivers: Vec<_> = (1..=2i64)
        .map(|conn| {
            let client = pki.dial(&server, None).unwrap();
            thread::spawn(move || util::pipeline(&client, conn, 2_000, 16))
        })
        .collect();
    for driver in drivers {
        driver.join().unwrap();
    }
    let stats = server.server.stats();
    assert!(
        stats.frames_read_by_workers > 0,
        "no worker read a TLS connection: {stats:?}"
    );
    assert_eq!(stats.tls_errors, 0);
    assert_eq!(stats.call_errors.iter().sum::<u64>(), 0, "{stats:?}");
    assert_back_to_idle(&server.server);
}

#[test]
fn one_mebibyte_payloads_cross_tls_both_ways_concurrently() {
    let pki = Pki::new();
    let server = pki.serve(false, Server::builder());
    let probe = ProbeClient::new(pki.dial(&server, None).unwrap());
    // Four callers at once on one connection: many records per frame, records of different
    // frames queued behind each other, and socket writes cut short by a full buffer.
    let callers: Vec<_> = (0..4u8)
        .map(|caller| {
            let probe = probe.clone();
            thread::spawn(move || {
                for round in 0..2u8 {
                    let payload: Vec<u8> = (0..1024 * 1024)
                        .map(|i: u32| (i as u8) ^ caller ^ round.wrapping_mul(31))
                        .collect();
                    let echoed = probe.echo(&payload).unwrap();
                    assert!(echoed == payload, "a 1 MiB echo came back changed");
                }
            })
        })
        .collect();
    for caller in callers {
        caller.join().unwrap();
    }
    drop(probe);
    assert_back_to_idle(&server.server);
}

#[test]
fn mutual_tls_accepts_a_client_certificate_signed_by_the_ca() {
    let pki = Pki::new();
    let server = pki.serve(true, Server::builder());
    let arith = ArithClient::new(pki.dial(&server, Some(&pki.client)).unwrap());
    for a in 0..20 {
        assert_eq!(arith.multiply(&Args { a, b: 2 }).unwrap(), a * 2);
    }
    drop(arith);
    assert_eq!(server.server.stats().tls_errors, 0);
    assert_back_to_idle(&server.server);
}

#[test]
fn mutual_tls_refuses_a_client_without_a_certificate_on_both_sides() {
    let pki = Pki::new();
    let server = pki.serve(true, Server::builder());
    // TLS 1.3: the client finishes its side of the handshake before the server has looked at
    // its (empty) certificate; the dial waits for the server's verdict all the same.
    let err = pki.dial(&server, None).unwrap_err();
    assert!(
        matches!(
            &err,
            RpcError::Tls {
                cause: TransportError::Tls {
                    error: rustls::Error::AlertReceived(AlertDescription::CertificateRequired)
                },
                ..
            }
        ),
        "expected the server's certificate_required alert, got {err:?}"
    );
    assert!(
        chain(&err).contains("CertificateRequired"),
        "{}",
        chain(&err)
    );
    assert_counted_then_recovered(&pki, &server, 1, "the server counts the refusal");
}

#[test]
fn mutual_tls_refuses_a_client_certificate_from_another_ca() {
    let pki = Pki::new();
    let stranger = pki.other_ca.client("stranger").unwrap();
    let server = pki.serve(true, Server::builder());
    let err = pki.dial(&server, Some(&stranger)).unwrap_err();
    assert!(
        matches!(
            &err,
            RpcError::Tls {
                cause: TransportError::Tls {
                    error: rustls::Error::AlertReceived(
                        AlertDescription::UnknownCA | AlertDescription::BadCertificate
                    )
                },
                ..
            }
        ),
        "expected an unknown-ca alert, got {err:?}"
    );
    assert_counted_then_recovered(&pki, &server, 1, "the server counts the refusal");
}

#[test]
fn a_server_certificate_from_an_untrusted_ca_fails_the_dial_naming_the_problem() {
    let pki = Pki::new();
    let server = pki.serve(false, Server::builder());
    let err = bounded_builder()
        .tls(pki.client_tls(&pki.other_ca, None))
        .dial(server.addr())
        .unwrap_err();
    match &err {
        RpcError::Tls {
            cause:
                TransportError::Tls {
                    error: rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
                },
            ..
        } => {}
        other => panic!("expected RpcError::Tls with UnknownIssuer, got {other:?}"),
    }
    let text = chain(&err);
    assert!(text.starts_with("tls handshake with 127.0.0.1:"), "{text}");
    assert!(text.contains("UnknownIssuer"), "{text}");
    assert!(!err.is_retryable() && err.is_unprocessed());
    // The client's alert reaches the server, which counts the failed handshake.
    assert_counted_then_recovered(&pki, &server, 1, "the server counts the refusal");
}

#[test]
fn a_server_certificate_for_another_name_fails_the_dial() {
    let pki = Pki::new();
    let server = pki.serve(false, Server::builder());
    let config = tls::client_config(pki.ca.roots().unwrap(), None).unwrap();
    let err = bounded_builder()
        .tls(ClientTls::new(config, "rpc.example.com").unwrap())
        .dial(server.addr())
        .unwrap_err();
    assert!(
        matches!(
            &err,
            RpcError::Tls {
                cause: TransportError::Tls {
                    error: rustls::Error::InvalidCertificate(
                        CertificateError::NotValidForName
                            | CertificateError::NotValidForNameContext { .. }
                    ),
                },
                ..
            }
        ),
        "expected a name mismatch, got {err:?}"
    );
    assert_tls_healthy(&pki, &server);
}

#[test]
fn a_plaintext_client_gets_a_clear_error_from_a_tls_server() {
    let pki = Pki::new();
    let server = pki.serve(false, Server::builder());

    // What a plaintext client reads: the server's alert, which its decoder names as TLS.
    let mut raw = TcpStream::connect(server.addr()).unwrap();
    let mut hello = bytes::BytesMut::new();
    let ping = netrpc::transport::Frame::new(netrpc::transport::FrameKind::Ping, 0);
    ping.encode(&mut hello, &FrameLimits::default()).unwrap();
    raw.write_all(&hello).unwrap();
    let answer = read_until_closed(&mut raw);
    let mut decoder = netrpc::transport::FrameDecoder::new(FrameLimits::default());
    decoder.handle_bytes(&answer);
    let err = decoder.poll_frame().unwrap_err();
    assert!(
        err.to_string().contains("a tls record, not a netrpc frame"),
        "{err}"
    );
    wait_until(
        "the server counts the tls error",
        Duration::from_secs(5),
        || server.server.stats().tls_errors == 1,
    );

    // A netrpc client: its hello ping gets the alert, so its first call fails at once.
    let started = Instant::now();
    let arith = ArithClient::new(bounded_builder().dial(server.addr()).unwrap());
    let err = arith.multiply(&Args { a: 1, b: 1 }).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "no hang");
    // Usually the protocol error naming TLS; a call that races the close (its write refused
    // by the closed socket) fails as the connection's end instead.
    assert!(
        matches!(
            err,
            RpcError::Protocol { .. } | RpcError::Shutdown | RpcError::ConnectionLost { .. }
        ),
        "{err:?}"
    );
    drop(arith);
    assert_counted_then_recovered(&pki, &server, 2, "the server counts the second tls error");
}

#[test]
fn a_tls_client_gets_a_clear_error_from_a_plaintext_server() {
    let pki = Pki::new();
    let server = TestServer::start();
    let err = bounded_builder()
        .tls(pki.client_tls(&pki.ca, None))
        .dial(server.addr())
        .unwrap_err();
    assert!(
        matches!(
            &err,
            RpcError::Tls {
                cause: TransportError::TlsHandshakeClosed,
                ..
            }
        ),
        "expected the handshake closed by the plaintext server, got {err:?}"
    );
    assert!(
        chain(&err).contains("is it serving tls?"),
        "{}",
        chain(&err)
    );
    // The plaintext server saw bad magic and closed; it goes on serving.
    util::assert_healthy(server.addr());
    assert_back_to_idle(&server.server);
}

#[test]
fn a_request_over_the_servers_limit_fails_with_frame_too_large_over_tls_too() {
    // As in tests/errors.rs: the server's close, while the request is still being written,
    // fails the client's write; the error frame saying why must still reach the caller.
    let pki = Pki::new();
    let server = pki.serve(
        false,
        Server::builder().limits(FrameLimits::with_max_body_len(64 * 1024)),
    );
    for round in 0..20 {
        let probe = ProbeClient::new(pki.dial(&server, None).unwrap());
        let large = Label {
            name: "x".repeat(3 * 1024 * 1024),
            colour: Colour::Red,
            weight: 1,
        };
        let err = probe.label(&large).unwrap_err();
        assert!(
            matches!(&err, RpcError::FrameTooLarge { detail, .. } if detail.contains("65536")),
            "round {round}: {err:?}"
        );
    }
    assert_back_to_idle(&server.server);
    assert_tls_healthy(&pki, &server);
}

#[test]
fn a_client_that_writes_its_whole_oversized_request_before_reading_gets_the_error_frame() {
    // A TLS client built on rustls's `StreamOwned` writes all it has before it reads (its
    // reads first flush what is unwritten). Over the server's limit, the server answers at
    // the header; had it then closed with the body still arriving, the close would reset
    // the connection: the client's write fails, its read flushes again and fails too, and
    // the error frame waiting in its socket is never read (37 of 40 before the server
    // drained what the peer still sent before closing).
    let pki = Pki::new();
    let server = pki.serve(
        false,
        Server::builder().limits(FrameLimits::with_max_body_len(64 * 1024)),
    );
    let config = tls::client_config(pki.ca.roots().unwrap(), None).unwrap();
    let declared: u32 = 3 * 1024 * 1024;
    let mut request = util::evil::header_declaring(7, declared);
    request.resize(request.len() + declared as usize, 0);
    for round in 0..20 {
        let socket = TcpStream::connect(server.addr()).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let name = "localhost".try_into().unwrap();
        let session = rustls::ClientConnection::new(Arc::clone(&config), name).unwrap();
        let mut stream = rustls::StreamOwned::new(session, socket);
        let written = stream.write_all(&request).and_then(|()| stream.flush());
        assert!(
            written.is_ok(),
            "round {round}: writing failed: {written:?}"
        );
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer); // the server's end comes without close_notify
        let mut decoder = FrameDecoder::new(FrameLimits::default());
        decoder.handle_bytes(&answer);
        let frame = decoder.poll_frame();
        assert!(
            matches!(&frame, Ok(Some(frame)) if frame.kind == FrameKind::Error && frame.seq == 7),
            "round {round}: {} bytes read, {frame:?}",
            answer.len()
        );
    }
    assert_back_to_idle(&server.server);
    assert_tls_healthy(&pki, &server);
}

#[test]
fn a_dial_to_a_server_silent_after_the_handshake_says_so_not_that_the_handshake_stalled() {
    // In TLS 1.3 a client learns that the server accepted it only from the server's next
    // record (a session ticket, the hello's answer). A server that sends neither leaves the
    // dial waiting; when it gives up, the error must say what happened: the handshake
    // finished and the server then said nothing.
    let pki = Pki::new();
    let (certificates, key) = pki.server.pair();
    let mut config = (*tls::server_config(certificates, key, None).unwrap()).clone();
    config.send_tls13_tickets = 0;
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut session = rustls::ServerConnection::new(config).unwrap();
        while session.is_handshaking() {
            session.complete_io(&mut socket).unwrap();
        }
        // Reads the hello and everything after it, answering nothing, until the client goes.
        while matches!(socket.read(&mut [0u8; 4096]), Ok(n) if n > 0) {}
    });
    let err = Client::builder()
        .connect_timeout(Duration::from_millis(500))
        .tls(pki.client_tls(&pki.ca, None))
        .dial(addr)
        .unwrap_err();
    let text = chain(&err);
    assert!(
        matches!(&err, RpcError::Tls { cause, .. } if cause.is_tls()),
        "{err:?}"
    );
    assert!(text.contains("sent nothing after"), "{text}");
    serving.join().unwrap();
}

#[test]
fn a_server_that_answers_the_hello_with_garbage_then_resets_leaves_the_client_loop_serving() {
    // The evil server writes bytes that are not TLS and closes without reading the client's
    // hello, so its kernel resets the connection: the client's loop reads the garbage, and
    // its write of the alert saying why fails. That failed write, inside the loop's own read,
    // must close the connection, not make the loop wait for its own read turn (which spun
    // for ever, and took every connection of the process's client loop with it).
    let pki = Pki::new();
    let good = pki.serve(false, Server::builder());
    let evil = TcpListener::bind("127.0.0.1:0").unwrap();
    let evil_addr = evil.local_addr().unwrap();
    thread::spawn(move || {
        for stream in evil.incoming().take(30) {
            let mut stream = stream.unwrap();
            let _ = stream.write_all(&[0x42; 64]);
        }
    });
    for attempt in 0..30 {
        let dialed = bounded_builder()
            .connect_timeout(Duration::from_secs(2))
            .tls(pki.client_tls(&pki.ca, None))
            .dial(evil_addr);
        assert!(dialed.is_err(), "attempt {attempt}");
        let arith = ArithClient::new(
            bounded_builder()
                .connect_timeout(Duration::from_secs(2))
                .tls(pki.client_tls(&pki.ca, None))
                .dial(good.addr())
                .unwrap_or_else(|err| panic!("attempt {attempt}: {err}")),
        );
        assert_eq!(arith.multiply(&Args { a: 6, b: 7 }).unwrap(), 42);
    }
}

#[test]
fn a_handshake_that_stalls_is_closed_after_the_frame_timeout() {
    let pki = Pki::new();
    // No first-frame timeout: the handshake deadline alone must close the connection.
    let server = serve_with_a_300_ms_frame_timeout(&pki);

    // A real client hello, cut short: the server waits for the rest, which never comes.
    let hello = client_hello(&pki);
    let mut raw = TcpStream::connect(server.addr()).unwrap();
    raw.write_all(&hello[..hello.len() / 2]).unwrap();
    assert_closed_after_about_300_ms(&mut raw);
    assert_counted_then_recovered(&pki, &server, 1, "the server counts the handshake timeout");
}

#[test]
fn half_a_tls_record_then_silence_is_closed_after_the_frame_timeout() {
    let pki = Pki::new();
    let server = serve_with_a_300_ms_frame_timeout(&pki);
    let (mut conn, mut raw) = handshake_by_hand(&pki, &server);
    // A whole frame, encrypted, of which only the record header and a few bytes are sent:
    // the frame has begun, inside TLS, and the frame timeout holds it as any other.
    conn.writer().write_all(&ping_frame()).unwrap();
    let mut record = Vec::new();
    conn.write_tls(&mut record).unwrap();
    raw.write_all(&record[..10]).unwrap();
    assert_closed_after_about_300_ms(&mut raw);
    wait_until("the frame timeout counted", Duration::from_secs(5), || {
        server.server.stats().frame_timeouts == 1
    });
}

#[test]
fn a_tls_record_that_carries_no_frame_stops_the_frame_clock_it_started() {
    // A key update is a whole TLS record with no frame in it. Its first bytes start the
    // frame clock (a record has begun); its last end the message without delivering a frame,
    // and the clock must stop there, not close an idle, healthy connection a timeout later.
    let pki = Pki::new();
    let server = serve_with_a_300_ms_frame_timeout(&pki);
    let (mut conn, mut raw) = handshake_by_hand(&pki, &server);
    conn.refresh_traffic_keys().unwrap();
    let mut record = Vec::new();
    conn.write_tls(&mut record).unwrap();
    raw.write_all(&record[..3]).unwrap();
    thread::sleep(Duration::from_millis(50));
    raw.write_all(&record[3..]).unwrap();
    thread::sleep(Duration::from_millis(600));

    conn.writer().write_all(&ping_frame()).unwrap();
    conn.complete_io(&mut raw).unwrap();
    let mut pong = [0u8; 1];
    let answered = loop {
        match conn.reader().read(&mut pong) {
            Ok(n) => break n > 0,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                if conn.complete_io(&mut raw).is_err() {
                    break false;
                }
            }
            Err(_) => break false,
        }
    };
    assert!(answered, "the connection still answers a ping");
    assert_eq!(server.server.stats().frame_timeouts, 0);
}

#[test]
fn garbage_bytes_close_the_connection_and_count_a_tls_error() {
    let pki = Pki::new();
    let server = pki.serve(false, Server::builder());
    let mut raw = TcpStream::connect(server.addr()).unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    assert_closed_by_peer(&mut raw);
    assert_counted_then_recovered(&pki, &server, 1, "the server counts the tls error");
}

#[test]
fn a_lone_caller_decrypts_and_decodes_its_tls_reply_itself() {
    let pki = Pki::new();
    let server = pki.serve(false, Server::builder());
    let client = pki.dial(&server, None).unwrap();
    // Blocking calls and `Call::wait` read on the waiting thread, as over plaintext: no
    // hand-off through the client's event loop.
    let reply: DecodedOn = client.call("Probe.Sleep", &20u64).unwrap();
    assert_eq!((reply.ms, reply.thread), (20, thread::current().id()));
    let call = client.go::<_, DecodedOn>("Probe.Sleep", &50u64);
    let reply = call.wait().unwrap();
    assert_eq!((reply.ms, reply.thread), (50, thread::current().id()));
}

#[test]
fn with_other_calls_in_flight_the_loop_decrypts_tls_replies() {
    let pki = Pki::new();
    let server = pki.serve(false, Server::builder());
    let client = pki.dial(&server, None).unwrap();
    // The loop's decrypting then runs beside the callers' own work.
    let slow = client.go::<_, DecodedOn>("Probe.Sleep", &300u64);
    let quick = client.go::<_, DecodedOn>("Probe.Sleep", &20u64);
    let reply = quick.wait().unwrap();
    assert_eq!(reply.ms, 20);
    assert_ne!(
        reply.thread,
        thread::current().id(),
        "read by the waiting caller"
    );
    assert_eq!(slow.wait().unwrap().ms, 300);
}

/// The server side of a TLS stream by hand (rustls over a blocking socket).
type HandServer = rustls::StreamOwned<rustls::ServerConnection, TcpStream>;

/// A TLS server by hand: it completes the handshake, answers the client's hello with a Pong,
/// waits for the first request, then does `misbehave` and holds the socket open until the
/// client hangs up (at most 5 s).
fn serve_tls_then(
    pki: &Pki,
    misbehave: fn(&mut HandServer),
) -> (std::net::SocketAddr, thread::JoinHandle<()>) {
    let (chain, key) = pki.server.pair();
    let config = tls::server_config(chain, key, None).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = thread::spawn(move || {
        let (socket, _) = listener.accept().unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let session = rustls::ServerConnection::new(config).unwrap();
        let mut stream = rustls::StreamOwned::new(session, socket);
        let mut decoder = FrameDecoder::new(FrameLimits::default());
        let mut next_frame = |stream: &mut HandServer| loop {
            if let Some(frame) = decoder.poll_frame().unwrap() {
                return frame;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).unwrap();
            assert!(n > 0, "the client closed early");
            decoder.handle_bytes(&chunk[..n]);
        };
        let hello = next_frame(&mut stream);
        assert_eq!(hello.kind, FrameKind::Ping);
        let mut pong = bytes::BytesMut::new();
        Frame::new(FrameKind::Pong, hello.seq)
            .encode(&mut pong, &FrameLimits::default())
            .unwrap();
        stream.write_all(&pong).unwrap();
        assert_eq!(next_frame(&mut stream).kind, FrameKind::Request);
        misbehave(&mut stream);
        let _ = stream.sock.read(&mut [0u8; 256]);
    });
    (addr, serving)
}

/// A server that writes bytes that are not TLS onto the socket beneath TLS.
fn serve_tls_then_garbage(pki: &Pki) -> (std::net::SocketAddr, thread::JoinHandle<()>) {
    serve_tls_then(pki, |stream| stream.sock.write_all(&[0x42; 64]).unwrap())
}

#[test]
fn a_close_notify_without_a_tcp_close_ends_the_connection_at_once() {
    // TLS's close_notify says the peer will send nothing more, whether or not its TCP FIN
    // follows. Taken as the end of the stream, it fails the calls in flight at once (and the
    // client learns it must redial); ignored, every call waited out its timeout on a
    // connection that was still "open".
    let pki = Pki::new();
    for caller_reads in [true, false] {
        let (addr, serving) = serve_tls_then(&pki, |stream| {
            stream.conn.send_close_notify();
            stream.conn.complete_io(&mut stream.sock).unwrap();
        });
        let client = bounded_builder()
            .tls(pki.client_tls(&pki.ca, None))
            .dial(addr)
            .unwrap();
        let started = Instant::now();
        let result = if caller_reads {
            client.call::<_, u64>("Probe.Sleep", &1u64)
        } else {
            // Read by the loop: nobody waits on the connection.
            let (done, completions) = done_channel::<u64>();
            client.go_with("Probe.Sleep", &1u64, &done);
            let completion = completions.recv_timeout(Duration::from_secs(15));
            completion.expect("the call ends").result
        };
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "caller reads {caller_reads}: failed only after {:?}",
            started.elapsed()
        );
        assert!(
            matches!(result, Err(RpcError::ConnectionLost { .. })),
            "caller reads {caller_reads}: {result:?}"
        );
        wait_until("the client sees its end", Duration::from_secs(5), || {
            client.is_closed()
        });
        drop(client);
        serving.join().unwrap();
    }
}

#[test]
fn bytes_that_are_not_tls_met_by_a_reading_caller_fail_its_call_with_the_tls_error() {
    let pki = Pki::new();
    let (addr, serving) = serve_tls_then_garbage(&pki);
    let client = bounded_builder()
        .tls(pki.client_tls(&pki.ca, None))
        .dial(addr)
        .unwrap();
    let started = Instant::now();
    let err = client.call::<_, u64>("Probe.Sleep", &1u64).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "failed only after {:?}",
        started.elapsed()
    );
    assert!(
        matches!(&err, RpcError::ConnectionLost { cause: Some(cause) } if cause.is_tls()),
        "{err:?}"
    );
    serving.join().unwrap();
}

#[test]
fn serve_conn_speaks_tls_too() {
    let pki = Pki::new();
    let (chain, key) = pki.server.pair();
    let server = Server::builder()
        .tls(tls::server_config(chain, key, None).unwrap())
        .build();
    server
        .register(util::ArithServer::new(util::Calculator))
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = {
        let server = server.clone();
        thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            server.serve_conn(stream)
        })
    };
    let client = bounded_builder()
        .tls(pki.client_tls(&pki.ca, None))
        .dial(addr)
        .unwrap();
    let arith = ArithClient::new(client);
    assert_eq!(arith.sum(&Args { a: 40, b: 2 }).unwrap(), 42);
    drop(arith);
    // serve_conn returns once the client has closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !serving.is_finished() {
        assert!(Instant::now() < deadline, "serve_conn did not return");
        thread::sleep(Duration::from_millis(5));
    }
    serving.join().unwrap().unwrap();
}

#[test]
fn rpc_over_http_connect_speaks_tls_after_the_connect_exchange() {
    let pki = Pki::new();
    let (chain, key) = pki.server.pair();
    let server = Server::builder()
        .tls(tls::server_config(chain, key, None).unwrap())
        .build();
    server
        .register(util::ArithServer::new(util::Calculator))
        .unwrap();
    let http = server.serve_http("127.0.0.1:0").unwrap();
    let client = bounded_builder()
        .tls(pki.client_tls(&pki.ca, None))
        .dial_http(http.local_addr())
        .unwrap();
    let arith = ArithClient::new(client);
    assert_eq!(arith.multiply(&Args { a: 6, b: 9 }).unwrap(), 54);
    drop(arith);
    http.shutdown();
    assert_back_to_idle(&server);
}

/// A TLS server whose frame timeout is 300 ms, with no first-frame timeout.
fn serve_with_a_300_ms_frame_timeout(pki: &Pki) -> TestServer {
    let limits = FrameLimits {
        frame_timeout: Some(Duration::from_millis(300)),
        ..FrameLimits::default()
    };
    pki.serve(
        false,
        Server::builder().limits(limits).first_frame_timeout(None),
    )
}

/// Waits for the server to close `raw`, which must take about its 300 ms frame timeout.
fn assert_closed_after_about_300_ms(raw: &mut TcpStream) {
    let started = Instant::now();
    assert_closed_by_peer(raw);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(4),
        "closed after {waited:?}, expected about 300 ms"
    );
}

/// A TLS session with `server` that this test drives by hand, its handshake done.
fn handshake_by_hand(pki: &Pki, server: &TestServer) -> (rustls::ClientConnection, TcpStream) {
    let config = tls::client_config(pki.ca.roots().unwrap(), None).unwrap();
    let name = tls::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut raw = TcpStream::connect(server.addr()).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut raw).unwrap();
    }
    (conn, raw)
}

/// A ping frame, encoded.
fn ping_frame() -> bytes::BytesMut {
    let mut frame = bytes::BytesMut::new();
    Frame::new(FrameKind::Ping, 7)
        .encode(&mut frame, &FrameLimits::default())
        .unwrap();
    frame
}

/// A client hello as rustls's client sends it first.
fn client_hello(pki: &Pki) -> Vec<u8> {
    let config = tls::client_config(pki.ca.roots().unwrap(), None).unwrap();
    let name = tls::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::clone(&config), name).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    assert!(hello.len() > 100, "a client hello is a few hundred bytes");
    hello
}

/// Reads until the peer closes (an alert may come first), failing after 5 s.
fn assert_closed_by_peer(raw: &mut TcpStream) {
    read_until_closed(raw);
}

/// What the peer sent before closing, failing if it has not closed within 5 s.
fn read_until_closed(raw: &mut TcpStream) -> Vec<u8> {
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut received = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match raw.read(&mut chunk) {
            Ok(0) => return received,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => return received,
            Err(err) => panic!("the server did not close the connection within 5 s: {err}"),
        }
    }
}

#[test]
fn multicast_and_distributor_dial_over_mutual_tls_with_a_client_template() {
    let pki = Pki::new();
    let servers = [
        pki.serve(true, Server::builder()),
        pki.serve(true, Server::builder()),
    ];
    let hosts: Vec<String> = servers.iter().map(|s| s.addr().to_string()).collect();
    let template = || bounded_builder().tls(pki.client_tls(&pki.ca, Some(&pki.client)));

    let group = Multicast::new(hosts.clone()).client(template());
    for answer in group.call::<_, i64>("Arith.Sum", &Args { a: 40, b: 2 }) {
        assert_eq!(
            answer.outcome.ack(),
            Some(&42),
            "{}: {:?}",
            answer.host,
            answer.outcome
        );
    }

    let tasks: Vec<Args> = (0..20).map(|a| Args { a, b: 3 }).collect();
    let run = Distributor::new(hosts)
        .client(template())
        .run::<_, i64>("Arith.Multiply", &tasks);
    assert!(run.dead_workers.is_empty(), "{:?}", run.dead_workers);
    for (a, task) in (0i64..).zip(&run.results) {
        assert_eq!(task.result.as_ref().ok(), Some(&(a * 3)), "{task:?}");
    }
    for server in &servers {
        assert_eq!(server.server.stats().tls_errors, 0);
    }

    // Without the template, the group dials plaintext, which a TLS server refuses.
    let plain = Multicast::new([servers[0].addr().to_string()]);
    let answers = plain.call::<_, i64>("Arith.Sum", &Args { a: 1, b: 1 });
    assert!(
        answers[0].outcome.error().is_some(),
        "{:?}",
        answers[0].outcome
    );
}

#[test]
fn a_graceful_shutdown_does_not_wait_for_a_tls_handshake_that_never_comes() {
    // A TCP connection to a TLS server that never starts its handshake (a health probe,
    // say): its go-away waits for the handshake, unwritable, but nothing is in flight on it,
    // so the graceful shutdown returns at once.
    let pki = Pki::new();
    let server = pki.serve(false, Server::builder());
    let _probe = TcpStream::connect(server.addr()).unwrap();
    wait_until("the probe counted open", Duration::from_secs(5), || {
        server.server.stats().open_connections == 1
    });
    let started = Instant::now();
    assert!(server.handle.shutdown_gracefully(Duration::from_secs(3)));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}
