//! RPC over HTTP CONNECT and the debug page (Go: `HandleHTTP`, `DialHTTP`, `/debug/rpc`;
//! SEEDS §5): a client dialed with `dial_http` calls Arith through `serve_http`, the listener
//! answers everything else with one HTTP response, and bad or slow heads cost nothing lasting.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use netrpc::core::http::{HttpConfig, HttpHandle, CONNECTED_STATUS};
use netrpc::transport::FrameKind;
use netrpc::{Client, Codec, CodecKind, RpcError, Server};
use util::evil::{valid_request_bytes, EvilClient};
use util::{wait_until, Args, ArithClient, ArithServer, Calculator};

/// An Arith server with an HTTP listener on 127.0.0.1 (head timeout `head_timeout`).
fn start(config: HttpConfig) -> (Server, HttpHandle) {
    let server = Server::new();
    server
        .register(ArithServer::new(Calculator))
        .expect("register Arith");
    let http = server
        .serve_http_with("127.0.0.1:0", config)
        .expect("serve HTTP");
    (server, http)
}

fn start_default() -> (Server, HttpHandle) {
    start(HttpConfig::default())
}

fn short_timeouts() -> HttpConfig {
    HttpConfig {
        head_timeout: Duration::from_millis(300),
        ..HttpConfig::default()
    }
}

/// An HTTP response read to its end: the status line, the head's other lines, the body.
struct Response {
    status: String,
    headers: String,
    body: String,
}

/// Sends `request` on a fresh connection and reads the response until the server closes.
fn exchange(addr: SocketAddr, request: &[u8]) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set a read timeout");
    stream.write_all(request).expect("send the request");
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .expect("the server answers and closes in time");
    let text = String::from_utf8(raw).expect("a text response");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no blank line in {text:?}"));
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    Response {
        status: status.to_owned(),
        headers: headers.to_owned(),
        body: body.to_owned(),
    }
}

fn get(addr: SocketAddr, path: &str) -> Response {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes(),
    )
}

/// Reads byte by byte up to a blank line (a CONNECT or its answer), and not a byte more.
fn read_until_blank_line(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\n\n") && !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("the CONNECT answer");
        head.push(byte[0]);
        assert!(head.len() < 1024, "endless answer: {head:?}");
    }
    String::from_utf8(head).expect("a text answer")
}

#[test]
fn a_client_dialed_over_http_calls_arith() {
    let (server, http) = start_default();
    let arith = ArithClient::new(Client::dial_http(http.local_addr()).expect("dial_http"));
    assert_eq!(arith.multiply(&Args { a: 7, b: 8 }).expect("multiply"), 56);
    let quotient = arith.divide(&Args { a: 17, b: 5 }).expect("divide");
    assert_eq!((quotient.quo, quotient.rem), (3, 2));
    assert_eq!(server.stats().open_connections, 1);
    // The listener's thread counts the hand-over once the loop has adopted the socket,
    // which may be after the client's first calls are answered.
    wait_until("the hand-over counted", Duration::from_secs(5), || {
        http.stats().rpc_connections == 1
    });
    assert_eq!(http.stats().handshakes_in_progress, 0);
}

#[test]
fn several_clients_over_http_call_concurrently() {
    let (server, http) = start_default();
    let addr = http.local_addr();
    let workers: Vec<_> = (0..8i64)
        .map(|id| {
            thread::spawn(move || {
                let arith = ArithClient::new(Client::dial_http(addr).expect("dial_http"));
                for b in 0..25 {
                    let product = arith.multiply(&Args { a: id, b }).expect("multiply");
                    assert_eq!(product, id * b);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("a client thread panicked");
    }
    assert_eq!(http.stats().rpc_connections, 8);
    let multiply = server
        .method_stats()
        .into_iter()
        .find(|m| m.method == "Multiply")
        .expect("Multiply is listed");
    assert_eq!((multiply.calls, multiply.errors), (200, 0));
}

#[test]
fn bytes_pipelined_after_the_connect_head_are_not_lost() {
    let (_server, http) = start_default();
    let mut stream = TcpStream::connect(http.local_addr()).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set a read timeout");
    // The head and a whole request frame in one write, before any answer.
    let mut bytes = b"CONNECT /_goRPC_ HTTP/1.0\n\n".to_vec();
    bytes.extend_from_slice(&valid_request_bytes());
    stream.write_all(&bytes).expect("send head and frame");
    assert_eq!(
        read_until_blank_line(&mut stream),
        format!("HTTP/1.0 {CONNECTED_STATUS}\n\n")
    );
    let mut evil = EvilClient::from_stream(stream);
    let reply = evil.read_frames(1).remove(0);
    assert_eq!((reply.kind, reply.seq), (FrameKind::Response, 1));
    let product: i64 = CodecKind::Postcard.decode(&reply.body).expect("an i64");
    assert_eq!(product, 56);
}

#[test]
fn get_on_the_rpc_path_is_answered_405_must_connect() {
    let (_server, http) = start_default();
    let response = get(http.local_addr(), "/_goRPC_");
    assert_eq!(response.status, "HTTP/1.1 405 Method Not Allowed");
    assert_eq!(response.body, "405 must CONNECT\n");
    assert!(response
        .headers
        .contains("Content-Type: text/plain; charset=utf-8"));
    // A 405 says which method the path takes (RFC 9110 §15.5.6).
    assert!(
        response.headers.contains("Allow: CONNECT\r\n"),
        "{}",
        response.headers
    );
    assert_eq!(http.stats().rejected_requests, 1);
    let response = exchange(http.local_addr(), b"POST /debug/rpc HTTP/1.1\r\n\r\n");
    assert_eq!(response.status, "HTTP/1.1 405 Method Not Allowed");
    assert!(
        response.headers.contains("Allow: GET\r\n"),
        "{}",
        response.headers
    );
}

#[test]
fn requests_in_absolute_form_or_after_an_empty_line_are_served() {
    // RFC 9112: a server must accept a target in absolute form (§3.2.2), and should ignore
    // an empty line before the request line (§2.2).
    let (_server, http) = start_default();
    for request in [
        &b"GET http://rpc.example/debug/rpc HTTP/1.1\r\nHost: rpc.example\r\n\r\n"[..],
        b"GET HTTP://rpc.example:8080/debug/rpc.json?x=1 HTTP/1.1\r\n\r\n",
        b"\r\nGET /debug/rpc HTTP/1.1\r\n\r\n",
        b"\n\r\nGET /debug/rpc HTTP/1.0\n\n",
    ] {
        let response = exchange(http.local_addr(), request);
        assert_eq!(
            response.status,
            "HTTP/1.1 200 OK",
            "{:?}",
            String::from_utf8_lossy(request)
        );
    }
    assert_eq!(http.stats().rejected_requests, 0);
}

#[test]
fn an_unknown_path_is_answered_404() {
    let (_server, http) = start_default();
    let response = get(http.local_addr(), "/nothing/here");
    assert_eq!(response.status, "HTTP/1.1 404 Not Found");
    let response = exchange(http.local_addr(), b"CONNECT /_netrpc_ HTTP/1.0\n\n");
    assert_eq!(response.status, "HTTP/1.1 404 Not Found");
}

#[test]
fn a_garbage_head_is_answered_400_and_the_server_keeps_serving() {
    let (server, http) = start_default();
    for garbage in [
        &b"\x00\x01\x02\x03 garbage\r\n\r\n"[..],
        b"GET /debug/rpc\r\n\r\n",
        b"CONNECT /_goRPC_ HTTP/9.9\n\n",
        b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
    ] {
        let response = exchange(http.local_addr(), garbage);
        assert_eq!(response.status, "HTTP/1.1 400 Bad Request", "{garbage:?}");
    }
    assert_eq!(http.stats().rejected_requests, 4);
    let arith = ArithClient::new(Client::dial_http(http.local_addr()).expect("dial_http"));
    assert_eq!(arith.sum(&Args { a: 2, b: 3 }).expect("sum"), 5);
    assert_eq!(server.stats().frame_errors, 0);
}

#[test]
fn half_a_head_then_silence_is_closed_after_the_timeout_without_leaks() {
    let (server, http) = start(short_timeouts());
    let mut stream = TcpStream::connect(http.local_addr()).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set a read timeout");
    stream
        .write_all(b"CONNECT /_goR")
        .expect("send half a head");
    wait_until("the head being read", Duration::from_secs(5), || {
        http.stats().handshakes_in_progress == 1
    });
    let started = Instant::now();
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "no answer expected, got {rest:?}"),
        Err(err) => assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "closed only after {:?}",
        started.elapsed()
    );
    wait_until(
        "the handshake thread to end",
        Duration::from_secs(5),
        || http.stats().handshakes_in_progress == 0,
    );
    assert_eq!(http.stats().abandoned_heads, 1);
    assert_eq!(server.stats().open_connections, 0);
    let arith = ArithClient::new(Client::dial_http(http.local_addr()).expect("dial_http"));
    assert_eq!(arith.multiply(&Args { a: 6, b: 7 }).expect("multiply"), 42);
}

#[test]
fn a_head_over_the_size_cap_is_answered_431() {
    let config = HttpConfig {
        max_head_len: 1024,
        ..HttpConfig::default()
    };
    let (_server, http) = start(config);
    let mut request = b"GET /debug/rpc HTTP/1.1\r\n".to_vec();
    for index in 0..100 {
        request.extend_from_slice(format!("X-Filler-{index}: {}\r\n", "x".repeat(40)).as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    let response = exchange(http.local_addr(), &request);
    assert_eq!(
        response.status,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    assert!(
        response.body.contains("1024-byte limit"),
        "{}",
        response.body
    );
    wait_until(
        "the handshake thread to end",
        Duration::from_secs(5),
        || http.stats().handshakes_in_progress == 0,
    );
}

#[test]
fn the_debug_page_counts_calls_and_errors_per_method() {
    let (server, http) = start_default();
    let arith = ArithClient::new(Client::dial_http(http.local_addr()).expect("dial_http"));
    for b in 1..=3 {
        arith.multiply(&Args { a: 2, b }).expect("multiply");
    }
    arith.divide(&Args { a: 9, b: 3 }).expect("divide");
    let err = arith.divide(&Args { a: 1, b: 0 }).unwrap_err();
    assert!(matches!(err, RpcError::Method { .. }), "{err:?}");
    let counts: Vec<_> = server
        .method_stats()
        .into_iter()
        .map(|m| (m.service, m.method, m.calls, m.errors))
        .collect();
    let expected = [("Divide", 2, 1), ("Multiply", 3, 0), ("Sum", 0, 0)]
        .map(|(method, calls, errors)| ("Arith".to_owned(), method.to_owned(), calls, errors));
    assert_eq!(counts, expected);

    let json = get(http.local_addr(), "/debug/rpc.json");
    assert_eq!(json.status, "HTTP/1.1 200 OK");
    assert!(json.headers.contains("Content-Type: application/json"));
    assert!(
        json.body.contains(
            "{\"name\":\"Arith\",\"methods\":[{\"name\":\"Divide\",\"calls\":2,\"errors\":1},\
         {\"name\":\"Multiply\",\"calls\":3,\"errors\":0},{\"name\":\"Sum\",\"calls\":0,\
         \"errors\":0}]}"
        ),
        "{}",
        json.body
    );
    assert!(
        json.body.contains("\"open_connections\":1"),
        "{}",
        json.body
    );
    assert!(
        json.body.contains("\"call_errors_Service\":1"),
        "{}",
        json.body
    );

    let html = get(http.local_addr(), "/debug/rpc");
    assert_eq!(html.status, "HTTP/1.1 200 OK");
    assert!(html
        .headers
        .contains("Content-Type: text/html; charset=utf-8"));
    assert!(html.headers.contains("Connection: close"));
    assert!(
        html.body.contains("<h2>Service Arith</h2>"),
        "{}",
        html.body
    );
    assert!(html
        .body
        .contains("<tr><td>Divide</td><td class=\"count\">2</td><td class=\"count\">1</td></tr>"));
    assert!(html.body.contains(
        "<tr><td>Multiply</td><td class=\"count\">3</td><td class=\"count\">0</td></tr>"
    ));
    assert!(html.body.contains("<a href=\"/debug/rpc\">Refresh</a>"));
    assert_eq!(http.stats().pages_served, 2);
}

#[test]
fn service_names_are_escaped_on_the_debug_page() {
    let (server, http) = start_default();
    server
        .register_name("A<b>", ArithServer::new(Calculator))
        .expect("`<` is allowed in a service name");
    let client = Client::dial_http(http.local_addr()).expect("dial_http");
    let sum: i64 = client
        .call("A<b>.Sum", &Args { a: 1, b: 1 })
        .expect("call A<b>.Sum");
    assert_eq!(sum, 2);
    let html = get(http.local_addr(), "/debug/rpc").body;
    assert!(html.contains("<h2>Service A&lt;b&gt;</h2>"), "{html}");
    assert!(!html.contains("A<b>"), "{html}");
    let json = get(http.local_addr(), "/debug/rpc.json").body;
    assert!(
        json.contains(
            "{\"name\":\"A<b>\",\"methods\":[{\"name\":\"Divide\",\"calls\":0,\"errors\":0},\
         {\"name\":\"Multiply\",\"calls\":0,\"errors\":0},{\"name\":\"Sum\",\"calls\":1,"
        ),
        "{json}"
    );
}

#[test]
fn dial_http_reports_any_other_answer_as_unreachable() {
    let (_server, http) = start_default();
    let err = Client::dial_http_path(http.local_addr(), "/elsewhere").unwrap_err();
    let RpcError::Unreachable { source, .. } = &err else {
        panic!("expected Unreachable, got {err:?}");
    };
    assert_eq!(
        source.to_string(),
        "unexpected HTTP response: 404 Not Found"
    );

    // A plain netrpc listener takes the CONNECT for a broken frame and closes.
    let plain = Server::new().serve("127.0.0.1:0").expect("serve");
    let started = Instant::now();
    let err = Client::dial_http(plain.local_addr()).unwrap_err();
    assert!(matches!(err, RpcError::Unreachable { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));

    let err = Client::dial_http_path(http.local_addr(), "no-slash").unwrap_err();
    assert!(matches!(err, RpcError::Unreachable { .. }), "{err:?}");
}

#[test]
fn too_many_heads_at_once_are_answered_503() {
    // Heads evictable after 3 s: the two silent ones are too young to give their places up.
    let config = HttpConfig {
        max_handshakes: 2,
        head_timeout: Duration::from_secs(30),
        ..HttpConfig::default()
    };
    let (_server, http) = start(config);
    let silent: Vec<_> = (0..2)
        .map(|_| TcpStream::connect(http.local_addr()).expect("connect"))
        .collect();
    wait_until("two heads being read", Duration::from_secs(5), || {
        http.stats().handshakes_in_progress == 2
    });
    // The refusal is written at accept, without reading: a client that waits gets it whole
    // (one whose request were still unread at the close could see a reset instead).
    let response = exchange(http.local_addr(), b"");
    assert_eq!(response.status, "HTTP/1.1 503 Service Unavailable");
    assert_eq!(http.stats().refused_busy, 1);
    drop(silent);
    wait_until(
        "the silent heads to be dropped",
        Duration::from_secs(5),
        || http.stats().handshakes_in_progress == 0,
    );
    assert_eq!(
        get(http.local_addr(), "/debug/rpc").status,
        "HTTP/1.1 200 OK"
    );
}

/// A listener with two handshake places and `head_timeout`.
fn two_places(head_timeout: Duration) -> (Server, HttpHandle) {
    start(HttpConfig {
        max_handshakes: 2,
        head_timeout,
        ..HttpConfig::default()
    })
}

/// Connects to `http` and waits until the listener reads heads from `reading` sockets.
fn connect_as_head(http: &HttpHandle, reading: usize) -> TcpStream {
    let stream = TcpStream::connect(http.local_addr()).expect("connect");
    wait_until("the head being read", Duration::from_secs(5), || {
        http.stats().handshakes_in_progress == reading
    });
    stream
}

/// Everything `stream` receives until the listener closes it (5 s at most).
fn read_to_close(stream: &mut TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set a read timeout");
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .expect("read to the close");
    answer
}

#[test]
fn silent_sockets_at_the_handshake_limit_give_their_places_up_to_new_clients() {
    // Two sockets that send nothing fill both handshake places. Once they have been silent a
    // tenth of the head timeout, each new client takes the place of the oldest (closed
    // unanswered) instead of being refused until the timeout frees them.
    let head_timeout = Duration::from_secs(2);
    let (_server, http) = two_places(head_timeout);
    let mut oldest = connect_as_head(&http, 1);
    let mut younger = connect_as_head(&http, 2);
    thread::sleep(head_timeout / 10 + Duration::from_millis(50));

    let page = get(http.local_addr(), "/debug/rpc");
    assert_eq!(page.status, "HTTP/1.1 200 OK");
    let stats = http.stats();
    assert_eq!((stats.evicted_heads, stats.refused_busy), (1, 0));
    assert_eq!(read_to_close(&mut oldest), "", "closed unanswered");
    // The younger one still has its place: it sends its head late, and is answered.
    younger
        .write_all(b"GET /debug/rpc HTTP/1.1\r\n\r\n")
        .expect("send the head");
    let answer = read_to_close(&mut younger);
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert_eq!(http.stats().abandoned_heads, 0);
}

#[test]
fn a_client_still_sending_its_head_keeps_its_place_over_a_younger_silent_one() {
    // The older connection sends its head a line every 50 ms (a slow link); the younger sends
    // nothing. At the limit, a new client takes the silent one's place, not the older one's.
    let head_timeout = Duration::from_secs(5);
    let (_server, http) = two_places(head_timeout);
    let mut trickling = connect_as_head(&http, 1);
    let trickler = thread::spawn(move || {
        trickling
            .write_all(b"GET /debug/rpc HTTP/1.1\r\n")
            .expect("send the request line");
        for line in 0..30 {
            thread::sleep(Duration::from_millis(50));
            let header = format!("X-Line: {line}\r\n");
            trickling.write_all(header.as_bytes()).expect("send a line");
        }
        trickling.write_all(b"\r\n").expect("end the head");
        read_to_close(&mut trickling)
    });
    let mut silent = connect_as_head(&http, 2);
    // Past the tenth of the head timeout for the silent one; the other is sending all along.
    thread::sleep(head_timeout / 10 + Duration::from_millis(100));

    assert_eq!(
        get(http.local_addr(), "/debug/rpc").status,
        "HTTP/1.1 200 OK"
    );
    assert_eq!(http.stats().evicted_heads, 1);
    assert_eq!(read_to_close(&mut silent), "", "evicted");
    let answer = trickler.join().expect("the trickling client");
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
}

#[test]
fn sockets_trickling_their_heads_at_the_handshake_limit_give_their_places_up_once_overdue() {
    // Two sockets send a byte of a head every 100 ms, never silent for a tenth of the head
    // timeout (200 ms): once they have been at it for half of it (1 s), the oldest gives its
    // place up to a new client, instead of both holding the listener until the timeout.
    let head_timeout = Duration::from_secs(2);
    let (_server, http) = two_places(head_timeout);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tricklers: Vec<_> = (1..=2)
        .map(|reading| {
            let mut stream = connect_as_head(&http, reading);
            let stop = std::sync::Arc::clone(&stop);
            thread::spawn(move || {
                for byte in b"GET /debug/rpc HTTP/1.1\r\nX-Slow: ".iter().cycle() {
                    if stop.load(std::sync::atomic::Ordering::SeqCst)
                        || stream.write_all(&[*byte]).is_err()
                    {
                        return;
                    }
                    thread::sleep(Duration::from_millis(100));
                }
            })
        })
        .collect();
    thread::sleep(head_timeout / 2 + Duration::from_millis(200));
    assert_eq!(
        get(http.local_addr(), "/debug/rpc").status,
        "HTTP/1.1 200 OK"
    );
    assert_eq!(http.stats().evicted_heads, 1);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for trickler in tricklers {
        trickler.join().expect("a trickling client");
    }
}

#[test]
fn shutdown_closes_connections_that_came_over_http_and_stops_accepting() {
    let (server, http) = start_default();
    let arith = ArithClient::new(Client::dial_http(http.local_addr()).expect("dial_http"));
    assert_eq!(arith.multiply(&Args { a: 3, b: 3 }).expect("multiply"), 9);
    let addr = http.local_addr();
    http.shutdown();
    http.shutdown();
    assert!(arith.multiply(&Args { a: 3, b: 3 }).is_err());
    assert!(Client::dial_http(addr).is_err());
    util::assert_back_to_idle(&server);
}

#[test]
fn dial_http_sends_gos_exact_connect_line() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a fake server");
    let addr = listener.local_addr().expect("its address");
    let fake = thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept the client");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("set a read timeout");
        let head = read_until_blank_line(&mut stream);
        stream
            .write_all(b"HTTP/1.0 403 Forbidden\r\n\r\n")
            .expect("answer");
        head
    });
    let err = Client::dial_http(addr).unwrap_err();
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    let head = fake.join().expect("the fake server");
    assert_eq!(head, "CONNECT /_goRPC_ HTTP/1.0\n\n");
    let RpcError::Unreachable { source, .. } = &err else {
        panic!("expected Unreachable, got {err:?}");
    };
    assert_eq!(
        source.to_string(),
        "unexpected HTTP response: 403 Forbidden"
    );
}

#[test]
fn the_http_types_can_be_shared_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<HttpHandle>();
    assert_send_sync::<HttpConfig>();
    assert_send_sync::<netrpc::core::HttpStats>();
    assert_send_sync::<netrpc::core::MethodStats>();
}

#[test]
fn a_refused_connection_that_floods_bytes_does_not_hold_the_accept_thread() {
    let (_server, http) = start(HttpConfig {
        max_handshakes: 1,
        head_timeout: Duration::from_secs(30),
        ..HttpConfig::default()
    });
    let addr = http.local_addr();
    let hold = TcpStream::connect(addr).expect("connect");
    wait_until("the held head being read", Duration::from_secs(5), || {
        http.stats().handshakes_in_progress == 1
    });
    // Over `max_handshakes`: answered 503 on the accept thread, which must not stay to read
    // whatever this peer keeps sending.
    let mut flood = TcpStream::connect(addr).expect("connect");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooder = {
        let stop = std::sync::Arc::clone(&stop);
        thread::spawn(move || {
            let chunk = vec![0u8; 1 << 20];
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if flood.write_all(&chunk).is_err() {
                    break;
                }
            }
        })
    };
    thread::sleep(Duration::from_millis(200));
    drop(hold);
    wait_until(
        "the held head's thread to end",
        Duration::from_secs(5),
        || http.stats().handshakes_in_progress == 0,
    );
    let page = get(addr, "/debug/rpc");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(page.status.contains("200"), "{}", page.status);
    flooder.join().expect("the flooder ends");
}

#[test]
fn a_connect_arriving_after_shutdown_is_refused_not_told_connected() {
    let (_server, http) = start(HttpConfig {
        head_timeout: Duration::from_secs(5),
        ..HttpConfig::default()
    });
    let mut stream = TcpStream::connect(http.local_addr()).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set a read timeout");
    wait_until("the head being read", Duration::from_secs(5), || {
        http.stats().handshakes_in_progress == 1
    });
    http.shutdown();
    stream
        .write_all(b"CONNECT /_goRPC_ HTTP/1.0\n\n")
        .expect("send the head");
    let head = read_until_blank_line(&mut stream);
    assert!(
        !head.contains("200"),
        "told connected to a shut-down server: {head:?}"
    );
    assert!(head.contains("503"), "{head:?}");
    // Counted with the other 503s, not as a bad request.
    let stats = http.stats();
    assert_eq!(
        (stats.refused_busy, stats.rejected_requests),
        (1, 0),
        "{stats:?}"
    );
}
