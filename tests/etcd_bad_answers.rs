//! The etcd registry against a gateway that answers badly: answers of the wrong shape, leases
//! no etcd would grant, oversized answers. Each test runs a fake gateway on loopback; no etcd
//! is needed. What a caller relies on: a typed error (`RegistryError::Malformed`) instead of
//! a wrong answer taken as right, bounded memory and no heartbeat spinning.
//!
//! Memory is counted by a global allocator (`peak_alloc`) over the whole process, so the tests
//! take turns (one lock) and the bounds leave room for the fake gateway's own copies.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod peak;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use netrpc::cluster::etcd::base64;
use netrpc::cluster::{EtcdRegistry, Instance, Lease, Registry, RegistryError};
use peak::{exclusive, peak_extra_allocation};

/// What reading a 4 MiB answer may cost at most: the body, its buffers and the fake
/// gateway's copy, not a tree of its JSON (which took some 350 MiB).
const BIG_ANSWER_BUDGET: usize = 32 * 1024 * 1024;

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

/// `{"a":0}` `count` times, comma-separated: a JSON list's items that are tiny objects.
fn tiny_objects(count: usize) -> String {
    let mut items = "{\"a\":0},".repeat(count);
    items.pop();
    items
}

/// The JSON of a range answer listing `instances` (each with no metadata).
fn range_body(instances: &[Instance]) -> String {
    let kvs: Vec<String> = instances
        .iter()
        .map(|instance| {
            let json = format!(
                "{{\"service\":\"{}\",\"addr\":\"{}\",\"metadata\":{{}},\"weight\":{}}}",
                instance.service, instance.addr, instance.weight
            );
            let value = base64::encode(json.as_bytes());
            format!("{{\"key\":\"eA==\",\"value\":\"{value}\"}}")
        })
        .collect();
    format!(
        "{{\"header\":{{\"revision\":\"5\"}},\"kvs\":[{}]}}",
        kvs.join(",")
    )
}

#[test]
fn a_range_answer_of_many_small_objects_is_read_in_little_memory() {
    let _alone = exclusive();
    let body = format!("{{\"kvs\":[{}]}}", tiny_objects(480_000));
    let answer = ok_json(&body);
    let (addr, _) = fake_gateway(Arc::new(move |_: &str| answer.clone()));
    let registry = EtcdRegistry::new(addr);
    let mut listed = None;
    let peak = peak_extra_allocation(|| listed = Some(registry.list("Arith")));
    assert_eq!(listed.unwrap().unwrap(), Vec::new());
    assert!(
        peak < BIG_ANSWER_BUDGET,
        "listing a {}-byte answer took {peak} bytes at its peak",
        body.len()
    );
}

#[test]
fn a_watch_message_of_many_small_objects_is_read_in_little_memory() {
    let _alone = exclusive();
    let instance = Instance::new("Arith", "127.0.0.1:9000");
    let line = format!(
        "{{\"result\":{{\"header\":{{}},\"events\":[{}]}}}}\n",
        tiny_objects(480_000)
    );
    let registry = EtcdRegistry::new(gateway_watching(&line, &instance).0);
    let mut seen = None;
    let peak = peak_extra_allocation(|| {
        let mut watcher = registry.watch("Arith").unwrap();
        seen = Some(watcher.changed(Duration::from_secs(10)));
    });
    assert_eq!(seen.unwrap().unwrap(), Some(vec![instance]));
    assert!(
        peak < BIG_ANSWER_BUDGET,
        "a {}-byte watch message took {peak} bytes at its peak",
        line.len()
    );
}

#[test]
fn a_long_watch_message_arriving_in_many_reads_is_seen_within_seconds() {
    let _alone = exclusive();
    let instance = Instance::new("Arith", "127.0.0.1:9000");
    // One event padded to 3.8 MB: the client reads it some 8 KiB at a time.
    let line = format!(
        "{{\"result\":{{\"header\":{{}},\"events\":[{{}}]}},\"pad\":\"{}\"}}\n",
        "x".repeat(3_800_000)
    );
    let registry = EtcdRegistry::new(gateway_watching(&line, &instance).0);
    let mut watcher = registry.watch("Arith").unwrap();
    let started = Instant::now();
    // Within 3 s: before the 5 s relist could show the change without the message.
    let seen = watcher.changed(Duration::from_secs(3)).unwrap();
    assert_eq!(
        seen,
        Some(vec![instance]),
        "the event was not taken within {:?}",
        started.elapsed()
    );
}

#[test]
fn a_burst_of_watch_events_in_one_read_costs_one_list() {
    let lists = lists_for_a_burst_of(50);
    // The first list, then one for the burst (two if the burst was split across reads).
    assert!(lists <= 3, "{lists} lists for 50 events");
}

#[test]
fn a_burst_of_watch_events_longer_than_one_read_costs_one_list() {
    // 1,000 events, about 48 KB: several of the client's 8 KiB reads, sent in one go.
    let lists = lists_for_a_burst_of(1_000);
    assert!(lists <= 3, "{lists} lists for 1,000 events");
}

/// How many times a watcher lists the service (`/v3/kv/range`) when its watch stream brings
/// `count` events at once, the first list included.
fn lists_for_a_burst_of(count: usize) -> usize {
    let _alone = exclusive();
    let instance = Instance::new("Arith", "127.0.0.1:9000");
    let event = "{\"result\":{\"header\":{},\"events\":[{\"kv\":{}}]}}\n";
    let (addr, paths) = gateway_watching(&event.repeat(count), &instance);
    let mut watcher = EtcdRegistry::new(addr).watch("Arith").unwrap();
    let seen = watcher.changed(Duration::from_secs(3)).unwrap();
    assert_eq!(seen, Some(vec![instance]));
    thread::sleep(Duration::from_millis(200));
    let paths = paths.lock().unwrap();
    paths.iter().filter(|path| *path == "/v3/kv/range").count()
}

/// A fake gateway whose watch stream sends `line` (in 64 KiB chunks) once created, and whose
/// `range` lists nothing until the watch was asked for, then `instance`; and its path log.
fn gateway_watching(line: &str, instance: &Instance) -> (String, Arc<Mutex<Vec<String>>>) {
    let mut stream = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for piece in line.as_bytes().chunks(64 * 1024) {
        stream.extend(format!("{:x}\r\n", piece.len()).bytes());
        stream.extend(piece);
        stream.extend(b"\r\n");
    }
    let (empty, listed) = (range_body(&[]), range_body(std::slice::from_ref(instance)));
    let watched = AtomicBool::new(false);
    fake_gateway(Arc::new(move |path: &str| match path {
        "/v3/watch" => {
            watched.store(true, Ordering::SeqCst);
            stream.clone()
        }
        _ if watched.load(Ordering::SeqCst) => ok_json(&listed),
        _ => ok_json(&empty),
    }))
}

#[test]
fn a_range_answer_of_the_wrong_shape_is_malformed_not_an_empty_list() {
    let _alone = exclusive();
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
    let _alone = exclusive();
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

#[test]
fn a_lease_granted_for_zero_or_impossibly_many_seconds_is_malformed() {
    let _alone = exclusive();
    let instance = Instance::new("Arith", "127.0.0.1:9000");
    for granted in ["0", "18446744073709551615"] {
        let grant = format!("{{\"header\":{{}},\"ID\":\"7\",\"TTL\":\"{granted}\"}}");
        let (addr, paths) = fake_gateway(Arc::new(move |path: &str| match path {
            "/v3/lease/grant" => ok_json(&grant),
            _ => ok_json("{\"header\":{}}"),
        }));
        let outcome = EtcdRegistry::new(addr).register(&instance, Duration::from_secs(5));
        assert!(
            matches!(outcome, Err(RegistryError::Malformed { .. })),
            "a grant of {granted} s registered as {outcome:?}"
        );
        let paths = paths.lock().unwrap();
        assert!(
            !paths.contains(&"/v3/kv/put".to_owned()),
            "the instance was put under a lease of {granted} s: {paths:?}"
        );
    }
}

#[test]
fn a_renewal_of_a_lease_with_a_tiny_ttl_still_waits_for_its_answer() {
    let _alone = exclusive();
    let (addr, _) = fake_gateway(Arc::new(|_: &str| {
        thread::sleep(Duration::from_millis(30));
        ok_json(r#"{"result":{"header":{},"ID":"7","TTL":"5"}}"#)
    }));
    let lease = Lease {
        id: 7,
        ttl: Duration::ZERO,
    };
    EtcdRegistry::new(addr).renew(lease).unwrap();
}
