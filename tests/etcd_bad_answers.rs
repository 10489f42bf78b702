//! The etcd registry against a gateway that answers badly: answers of the wrong shape, leases
//! no etcd would grant, oversized answers. Each test runs a fake gateway on loopback; no etcd
//! is needed. What a caller relies on: a typed error (`RegistryError::Malformed`) instead of
//! a wrong answer taken as right, bounded memory and no heartbeat spinning.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use netrpc::cluster::{EtcdRegistry, Lease, Registry, RegistryError};

/// What the fake gateway answers to one request: the response bytes, given the path.
type Answer = dyn Fn(&str) -> Vec<u8> + Send + Sync;

/// A fake etcd gateway on loopback: one request per connection, answered by `answer`; the
/// paths asked, in order, are pushed to the returned log. It serves until the test ends.
fn fake_gateway(answer: Arc<Answer>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let paths = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&paths);
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let Some(path) = read_request_path(&mut conn) else {
                continue;
            };
            log.lock().unwrap().push(path.clone());
            let answer = Arc::clone(&answer);
            thread::spawn(move || {
                let _ = conn.write_all(&answer(&path));
                // Hold the connection open for streams; the client closes it when done.
                let _ = conn.read(&mut [0u8; 1]);
            });
        }
    });
    (addr, paths)
}

/// Reads one request head and its `Content-Length` body; the request path.
fn read_request_path(conn: &mut TcpStream) -> Option<String> {
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = conn.read(&mut buf).ok().filter(|&n| n > 0)?;
        request.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&request[..head_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("Content-Length: "))
        .and_then(|len| len.trim().parse().ok())
        .unwrap_or(0);
    while request.len() < head_end + length {
        let n = conn.read(&mut buf).ok().filter(|&n| n > 0)?;
        request.extend_from_slice(&buf[..n]);
    }
    head.split(' ').nth(1).map(str::to_owned)
}

/// An HTTP 200 answer with a JSON `body`.
fn ok_json(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A registry on a gateway answering every request with `body` (status 200).
fn registry_answering(body: &'static str) -> EtcdRegistry {
    let (addr, _) = fake_gateway(Arc::new(move |_: &str| ok_json(body)));
    EtcdRegistry::new(addr).timeout(Duration::from_secs(2))
}

#[test]
fn a_range_answer_of_the_wrong_shape_is_malformed_not_an_empty_list() {
    for body in [r#"[1,2,3]"#, r#""hello""#, r#"{"kvs":"oops"}"#, "null"] {
        let outcome = registry_answering(body).list("Arith");
        assert!(
            matches!(outcome, Err(RegistryError::Malformed { .. })),
            "{body} listed as {outcome:?}"
        );
    }
    // What etcd sends for no keys: the gateway omits the empty `kvs` (and a zero `count`).
    let empty = registry_answering(r#"{"header":{"cluster_id":"1","revision":"5"}}"#);
    assert_eq!(empty.list("Arith").unwrap(), Vec::new());
}

#[test]
fn a_keepalive_answer_without_a_result_is_malformed_not_a_lost_lease() {
    let lease = Lease {
        id: 7,
        ttl: Duration::from_secs(3),
    };
    for body in [
        r#"{}"#,
        r#"[1]"#,
        r#"{"result":"x"}"#,
        r#"{"result":{"TTL":[5]}}"#,
    ] {
        let outcome = registry_answering(body).renew(lease);
        assert!(
            matches!(outcome, Err(RegistryError::Malformed { .. })),
            "{body} renewed as {outcome:?}"
        );
    }
    // etcd's answer for an expired lease: the zero TTL omitted (or, from some gateways, "0").
    for body in [
        r#"{"result":{"header":{"revision":"5"},"ID":"7"}}"#,
        r#"{"result":{"header":{},"ID":"7","TTL":"0"}}"#,
    ] {
        let outcome = registry_answering(body).renew(lease);
        assert!(
            matches!(outcome, Err(RegistryError::LeaseNotFound { lease: 7 })),
            "{body} renewed as {outcome:?}"
        );
    }
    let alive = registry_answering(r#"{"result":{"header":{},"ID":"7","TTL":"3"}}"#);
    alive.renew(lease).unwrap();
}
