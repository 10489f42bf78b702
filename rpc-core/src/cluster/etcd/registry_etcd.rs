//! [`EtcdRegistry`]: the [`Registry`] trait over etcd v3's JSON gateway.
//!
//! Layout: one key per instance, `<prefix><service>/<addr>` (prefix `/netrpc/services/` by
//! default), whose value is the [`Instance`] as JSON, attached to a lease.
//!
//! | operation | gateway calls |
//! |---|---|
//! | register | `/v3/lease/grant` (TTL in whole seconds), then `/v3/kv/put` with the lease |
//! | renew | `/v3/lease/keepalive` (one request, one answer) |
//! | deregister | `/v3/lease/revoke`, which deletes the key with the lease |
//! | list | `/v3/kv/range` over the service's prefix (`range_end` = prefix + 1) |
//! | watch | `/v3/watch` from the listed revision + 1, held open as a chunked stream |
//!
//! Watch: a thread per [`Watcher`] keeps a `/v3/watch` stream open (etcd pushes each event as
//! one JSON line); events make it list the prefix again (once for a burst: the list waits
//! until the stream pauses for a millisecond, 50 ms at most) and publish the result, so the
//! watcher always holds a full, consistent snapshot rather than applying deltas. The delay
//! from a change in etcd to the watcher is one event delivery plus one `range` round trip:
//! milliseconds on a LAN. Expiry is etcd's: a lease is revoked by etcd's own checker, which
//! runs every 500 ms, so an instance is gone between TTL and TTL + 0.5 s after its last
//! renewal. If the stream breaks (etcd restarting), the thread retries every 250 ms, lists
//! again, and the watcher keeps its last snapshot meanwhile. A stream that goes silent
//! without breaking (a half-open connection) cannot be told from a quiet one, so the thread
//! also lists every `RELIST_EVERY` (5 s) and, if the list changed without an event, opens
//! a new stream: a change reaches the watcher within that much, whatever the network did.
//! The thread ends within 250 ms of its [`Watcher`] being dropped, or within one HTTP
//! timeout if it is in the middle of a request then.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rpc_transport::clock::deadline_after;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::{json, Value};

use super::answers::{
    malformed, parse, parse_answer, GrantAnswer, KeepAliveAnswer, RangeAnswer, WatchMessage,
};
use super::base64;
use super::http::{HttpClient, HttpError, StreamEvent};
use crate::cluster::registry::{check_ttl, Instance, Lease, Registry, RegistryError};
use crate::cluster::watch::{WatchSlot, Watcher};

/// Default key prefix under which instances are stored.
pub const DEFAULT_ETCD_PREFIX: &str = "/netrpc/services/";

/// A registry kept in etcd (3.4 or later), reached over its HTTP JSON gateway.
///
/// Creating one does no I/O; every method makes one or two HTTP requests, each bounded by the
/// client's timeout (5 s by default). Etcd grants leases in whole seconds, at least its
/// minimum TTL (2 s with default settings): the [`Lease`] returned says what was granted.
///
/// ```no_run
/// use std::time::Duration;
/// use rpc_core::cluster::{EtcdRegistry, Instance, Registry};
///
/// let etcd = EtcdRegistry::new("127.0.0.1:2379");
/// let lease = etcd.register(&Instance::new("Arith", "10.0.0.1:9000"), Duration::from_secs(5))?;
/// println!("{:?}", etcd.list("Arith")?);
/// etcd.deregister(lease)?;
/// # Ok::<(), rpc_core::cluster::RegistryError>(())
/// ```
#[derive(Debug, Clone)]
pub struct EtcdRegistry {
    http: HttpClient,
    prefix: String,
    /// How often a watch reads the list itself, stream or no stream (`RELIST_EVERY`).
    relist_every: Duration,
}

impl EtcdRegistry {
    /// A registry on the etcd client URL `addr` (`host:port`, plain HTTP).
    pub fn new(addr: impl Into<String>) -> Self {
        EtcdRegistry {
            http: HttpClient::new(addr),
            prefix: DEFAULT_ETCD_PREFIX.to_owned(),
            relist_every: RELIST_EVERY,
        }
    }

    /// Stores instances under `prefix` instead of [`DEFAULT_ETCD_PREFIX`] (it should end with
    /// `/`); separate prefixes keep separate registries in one etcd.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the deadline of each HTTP request.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.http = self.http.timeout(timeout);
        self
    }

    /// The key an instance is stored under.
    pub fn key_of(&self, instance: &Instance) -> String {
        format!("{}{}/{}", self.prefix, instance.service, instance.addr)
    }

    /// One gateway call: `body` posted to `path`, the answer on status 200 read as `T`.
    fn call<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T, RegistryError> {
        self.call_with(&self.http, path, body)
    }

    /// [`EtcdRegistry::call`] through `http` (the registry's client with another timeout).
    fn call_with<T: DeserializeOwned>(
        &self,
        http: &HttpClient,
        path: &str,
        body: &Value,
    ) -> Result<T, RegistryError> {
        let response = http
            .post(path, body.to_string().as_bytes())
            .map_err(|source| self.unavailable(source))?;
        parse_answer(&response, &format!("answer to {path}"))
    }

    fn unavailable(&self, source: HttpError) -> RegistryError {
        RegistryError::Unavailable {
            addr: self.http.addr().to_owned(),
            source,
        }
    }

    /// The instances of `service` and the store revision they were read at.
    fn list_at(&self, service: &str) -> Result<(Vec<Instance>, u64), RegistryError> {
        let (key, range_end) = self.service_range(service);
        let answer: RangeAnswer = self.call(
            "/v3/kv/range",
            &json!({ "key": base64::encode(&key), "range_end": base64::encode(&range_end) }),
        )?;
        let mut instances = answer.instances;
        instances.retain(|instance| instance.service == service);
        instances.sort();
        Ok((instances, answer.header.revision))
    }

    /// The key range `[key, range_end)` holding every instance of `service`.
    fn service_range(&self, service: &str) -> (Vec<u8>, Vec<u8>) {
        let key = format!("{}{service}/", self.prefix).into_bytes();
        let range_end = prefix_end(&key);
        (key, range_end)
    }

    /// Lists the service and publishes the list, moving `revision` up to the list's; true
    /// if the list differed from what the watcher held.
    fn list_and_publish(
        &self,
        service: &str,
        slot: &WatchSlot,
        revision: &mut u64,
    ) -> Result<bool, RegistryError> {
        let (instances, now) = self.list_at(service)?;
        *revision = now.max(*revision);
        Ok(slot.publish(instances))
    }

    /// The watch thread's body: follow the stream, and after any break list and start again.
    fn follow_until_unwatched(&self, service: &str, slot: &Arc<WatchSlot>, mut revision: u64) {
        while slot.has_watcher() {
            if let Err(_broken) = self.follow(service, slot, &mut revision) {
                thread::sleep(WATCH_RETRY);
                if let Ok((instances, now)) = self.list_at(service) {
                    slot.publish(instances);
                    revision = now;
                }
            }
        }
    }

    /// Holds one `/v3/watch` stream open; on each event, lists and publishes.
    fn follow(
        &self,
        service: &str,
        slot: &Arc<WatchSlot>,
        revision: &mut u64,
    ) -> Result<(), RegistryError> {
        let (key, range_end) = self.service_range(service);
        let request = json!({ "create_request": {
            "key": base64::encode(&key),
            "range_end": base64::encode(&range_end),
            "start_revision": (*revision + 1).to_string(),
        }});
        let mut stream = self
            .http
            .post_streaming("/v3/watch", request.to_string().as_bytes())
            .map_err(|source| self.unavailable(source))?;
        if stream.head.status != 200 {
            return Err(RegistryError::Backend {
                message: format!("watch answered http {}", stream.head.status),
            });
        }
        let mut lines = Vec::new();
        // How many bytes at the front of `lines` are known to hold no newline: each read's
        // bytes are searched once, not the whole of a long line again after every read.
        let mut scanned = 0;
        let mut relist_at = deadline_after(Instant::now(), self.relist_every);
        // When the first event not yet listed for arrived: the list waits until the stream
        // pauses (a burst longer than one read is listed once), or `EVENTS_SETTLE_MAX`.
        let mut events_since: Option<Instant> = None;
        while slot.has_watcher() {
            if Instant::now() >= relist_at {
                // A stream over a half-open connection (a partition, a host gone without a
                // reset) says nothing, and nothing here could tell it from a quiet one: the
                // list itself, read now and then, can. A change the stream did not bring
                // means it is dead: publish it and open a new one.
                relist_at = deadline_after(Instant::now(), self.relist_every);
                if self.list_and_publish(service, slot, revision)? && events_since.is_none() {
                    return Err(malformed("the watch stream missed a change"));
                }
                events_since = None;
            }
            let wait = match events_since {
                Some(_) => EVENTS_SETTLE,
                None => WATCH_RETRY,
            };
            let data = match stream.next_data(wait) {
                Ok(StreamEvent::Data(data)) => data,
                Ok(StreamEvent::Idle) => {
                    if events_since.take().is_some() {
                        self.list_and_publish(service, slot, revision)?;
                    }
                    continue;
                }
                Ok(StreamEvent::End) => return Err(malformed("the watch stream ended")),
                Err(source) => return Err(self.unavailable(source)),
            };
            lines.extend(data);
            if lines.len() > MAX_WATCH_LINE_LEN {
                return Err(malformed("a watch message over the size limit"));
            }
            let mut taken = 0;
            while let Some(at) = lines[scanned..].iter().position(|&b| b == b'\n') {
                let line = &lines[taken..=scanned + at];
                taken = scanned + at + 1;
                scanned = taken;
                let message: WatchMessage = parse(line, "watch message")?;
                let result = message.result.as_ref();
                if result.is_some_and(|result| result.canceled) || message.error.is_some() {
                    return Err(malformed("the watch was cancelled by etcd"));
                }
                if result.is_some_and(|result| !result.events.is_empty()) {
                    events_since.get_or_insert_with(Instant::now);
                }
            }
            lines.drain(..taken);
            scanned = lines.len();
            if events_since.is_some_and(|since| since.elapsed() >= EVENTS_SETTLE_MAX) {
                // Events that never pause are listed for this often.
                events_since = None;
                self.list_and_publish(service, slot, revision)?;
            }
        }
        Ok(())
    }
}

impl Registry for EtcdRegistry {
    fn register(&self, instance: &Instance, ttl: Duration) -> Result<Lease, RegistryError> {
        instance.validate()?;
        check_ttl(ttl)?;
        let seconds = lease_seconds(ttl);
        let grant: GrantAnswer =
            self.call("/v3/lease/grant", &json!({ "TTL": seconds.to_string() }))?;
        if grant.id == 0 {
            return Err(malformed("lease grant without an ID"));
        }
        let id = grant.id;
        let lease = Lease {
            id,
            ttl: Duration::from_secs(grant.ttl),
        };
        // etcd grants at least the TTL asked and at most its MaxLeaseTTL; a TTL of 0 (which
        // the gateway writes by omitting it) would be renewed in a tight loop, and one past
        // etcd's longest is no lease etcd keeps.
        if grant.ttl == 0 || grant.ttl > MAX_LEASE_TTL_SECS {
            let _ = self.deregister(lease);
            return Err(malformed(&format!(
                "lease granted for {} s, not within 1 to {MAX_LEASE_TTL_SECS} s",
                grant.ttl
            )));
        }
        let value = serde_json::to_vec(instance).map_err(|err| RegistryError::InvalidInstance {
            detail: err.to_string(),
        })?;
        let put = json!({
            "key": base64::encode(self.key_of(instance).as_bytes()),
            "value": base64::encode(&value),
            "lease": id.to_string(),
        });
        if let Err(err) = self.call::<IgnoredAny>("/v3/kv/put", &put) {
            // Best effort: an orphan lease holds no key and expires by itself anyway.
            let _ = self.deregister(lease);
            return Err(err);
        }
        Ok(lease)
    }

    fn renew(&self, lease: Lease) -> Result<(), RegistryError> {
        // A renewal that waits longer than a third of the lease leaves the heartbeat no
        // time to try again before it lapses (etcd's shortest TTL is 2 s, the request
        // timeout 5 s by default).
        // Never under MIN_RENEW_WAIT, so a lease of a tiny TTL does not fail at once.
        let within = (lease.ttl / 3)
            .max(MIN_RENEW_WAIT)
            .min(self.http.request_timeout());
        let answer: KeepAliveAnswer = self.call_with(
            &self.http.clone().timeout(within),
            "/v3/lease/keepalive",
            &json!({ "ID": lease.id.to_string() }),
        )?;
        if let Some(error) = answer.error {
            // A streamed call's failure arrives as `{"error":{"message":...}}` with status 200.
            return Err(RegistryError::Backend {
                message: format!("keepalive failed: {}", error.message),
            });
        }
        // etcd answers an unknown or expired lease with a TTL of 0, which JSON omits; an
        // answer without a `result` is not etcd's.
        match answer.result {
            Some(result) if result.ttl > 0 => Ok(()),
            Some(_) => Err(RegistryError::LeaseNotFound { lease: lease.id }),
            None => Err(malformed("keepalive answer without a `result` object")),
        }
    }

    fn deregister(&self, lease: Lease) -> Result<(), RegistryError> {
        match self.call::<IgnoredAny>("/v3/lease/revoke", &json!({ "ID": lease.id.to_string() })) {
            Err(RegistryError::Backend { message }) if message.contains("lease not found") => {
                Err(RegistryError::LeaseNotFound { lease: lease.id })
            }
            other => other.map(drop),
        }
    }

    fn list(&self, service: &str) -> Result<Vec<Instance>, RegistryError> {
        self.list_at(service).map(|(instances, _)| instances)
    }

    fn watch(&self, service: &str) -> Result<Watcher, RegistryError> {
        let (instances, revision) = self.list_at(service)?;
        let slot = WatchSlot::new(instances);
        let feeding = Arc::clone(&slot);
        let registry = self.clone();
        let service = service.to_owned();
        let watcher = Watcher::new(slot);
        thread::Builder::new()
            .name("netrpc-etcd-watch".to_owned())
            .spawn(move || {
                registry.follow_until_unwatched(&service, &feeding, revision);
                feeding.close();
            })
            .map_err(|err| RegistryError::Backend {
                message: format!("cannot start the watch thread: {err}"),
            })?;
        Ok(watcher)
    }
}

/// The first key after every key starting with `prefix` (etcd's `range_end` for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Only a prefix of all 0xff bytes gets here; "\0" means "to the end of the keyspace".
    vec![0]
}

/// A lease TTL in etcd's whole seconds: rounded up, and at most the longest lease etcd
/// grants, so `Duration::MAX` ("for ever", as [`crate::cluster::MemoryRegistry`] takes it)
/// asks for the longest lease instead of overflowing.
fn lease_seconds(ttl: Duration) -> u64 {
    let seconds = ttl
        .as_secs()
        .saturating_add(u64::from(ttl.subsec_nanos() > 0));
    seconds.min(MAX_LEASE_TTL_SECS)
}

/// The longest lease etcd grants (its `MaxLeaseTTL`, about 285 years); it refuses a longer
/// TTL with "too large lease TTL".
const MAX_LEASE_TTL_SECS: u64 = 9_000_000_000;

/// The shortest wait a renewal gets, whatever the lease's TTL.
const MIN_RENEW_WAIT: Duration = Duration::from_millis(100);

/// How often a watch thread lists the service itself, to catch a stream gone silent.
const RELIST_EVERY: Duration = Duration::from_secs(5);

/// How often a watch thread checks that its watcher still exists, and waits before
/// reconnecting after the stream broke.
const WATCH_RETRY: Duration = Duration::from_millis(250);
/// How long a watch stream must pause after an event before the service is listed: the
/// rest of a burst (one write of etcd's, read a few KiB at a time) comes first.
const EVENTS_SETTLE: Duration = Duration::from_millis(1);

/// The longest events wait for their list while the stream brings more without pausing.
const EVENTS_SETTLE_MAX: Duration = Duration::from_millis(50);

/// Longest watch message accepted (etcd's events here are a few hundred bytes each).
const MAX_WATCH_LINE_LEN: usize = 4 * 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ttls_round_up_to_whole_seconds_and_stop_at_etcds_longest() {
        assert_eq!(lease_seconds(Duration::from_secs(3)), 3);
        assert_eq!(lease_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(lease_seconds(Duration::from_nanos(1)), 1);
        assert_eq!(lease_seconds(Duration::MAX), MAX_LEASE_TTL_SECS);
    }

    /// A loopback stand-in for etcd's gateway: `/v3/kv/range` answers `listed`, at a revision
    /// one higher each time; `/v3/watch` answers that the watch was created, then says
    /// nothing more, as a stream over a half-open connection would.
    fn silent_watch_etcd(listed: Arc<std::sync::Mutex<Vec<Instance>>>) -> String {
        fake_etcd(listed, |conn| {
            thread::spawn(move || {
                thread::sleep(Duration::from_secs(10));
                drop(conn);
            });
        })
    }

    /// Like [`silent_watch_etcd`], but each watch stream then ends its body (`0\r\n`) and
    /// trickles a trailer line every 50 ms for up to 10 s, never finishing them; `open`
    /// counts the watch streams the client still holds.
    fn trickling_watch_etcd(
        listed: Arc<std::sync::Mutex<Vec<Instance>>>,
        open: Arc<std::sync::atomic::AtomicUsize>,
    ) -> String {
        use std::io::Write;
        use std::sync::atomic::Ordering;
        fake_etcd(listed, move |mut conn| {
            let open = Arc::clone(&open);
            open.fetch_add(1, Ordering::SeqCst);
            thread::spawn(move || {
                let until = Instant::now() + Duration::from_secs(10);
                let mut trailer: &[u8] = b"0\r\n";
                while Instant::now() < until && conn.write_all(trailer).is_ok() {
                    trailer = b"X-T: 1\r\n";
                    thread::sleep(Duration::from_millis(50));
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
        })
    }

    /// The gateway of [`silent_watch_etcd`], handing each watch stream, once created, to
    /// `watch_stream`.
    fn fake_etcd(
        listed: Arc<std::sync::Mutex<Vec<Instance>>>,
        watch_stream: impl Fn(std::net::TcpStream) + Send + 'static,
    ) -> String {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local addr").to_string();
        thread::spawn(move || {
            let mut revision = 10;
            for conn in listener.incoming().take(64) {
                let Ok(mut conn) = conn else { return };
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                if request.starts_with(b"POST /v3/watch") {
                    let created = "{\"result\":{\"header\":{},\"created\":true}}\n";
                    let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
                    let chunk = format!("{:x}\r\n{created}\r\n", created.len());
                    let _ = conn.write_all(format!("{head}{chunk}").as_bytes());
                    watch_stream(conn);
                    continue;
                }
                revision += 1;
                let kvs: Vec<Value> = listed
                    .lock()
                    .expect("lock")
                    .iter()
                    .map(|instance| {
                        let value = serde_json::to_vec(instance).expect("encode");
                        json!({ "value": base64::encode(&value) })
                    })
                    .collect();
                let body = json!({ "header": { "revision": revision.to_string() }, "kvs": kvs });
                let body = body.to_string();
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(answer.as_bytes());
            }
        });
        addr
    }

    #[test]
    fn a_watch_whose_stream_went_silent_still_sees_changes_by_listing_again() {
        let listed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut registry = EtcdRegistry::new(silent_watch_etcd(Arc::clone(&listed)));
        registry.relist_every = Duration::from_millis(300);
        let mut watcher = registry.watch("Arith").expect("watch");
        assert!(watcher.current().is_empty());
        let instance = Instance::new("Arith", "127.0.0.1:9000");
        listed.lock().expect("lock").push(instance.clone());
        let seen = watcher.changed(Duration::from_secs(3)).expect("open");
        assert_eq!(seen, Some(vec![instance]));
    }

    #[test]
    fn a_watch_whose_stream_trickles_trailers_sees_changes_and_ends_with_its_watcher() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let open = Arc::new(AtomicUsize::new(0));
        let addr = trickling_watch_etcd(Arc::clone(&listed), Arc::clone(&open));
        let mut registry = EtcdRegistry::new(addr);
        registry.relist_every = Duration::from_millis(300);
        let mut watcher = registry.watch("Arith").expect("watch");
        let instance = Instance::new("Arith", "127.0.0.1:9000");
        listed.lock().expect("lock").push(instance.clone());
        let seen = watcher.changed(Duration::from_secs(3)).expect("open");
        assert_eq!(seen, Some(vec![instance]));
        drop(watcher);
        let dropped = Instant::now();
        while open.load(Ordering::SeqCst) > 0 {
            assert!(
                dropped.elapsed() < Duration::from_secs(2),
                "the watch thread still holds its stream {:?} after the watcher dropped",
                dropped.elapsed()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_renewal_gives_up_within_a_third_of_the_lease() {
        // A gateway that accepts and never answers: the renewal must leave the heartbeat
        // time to try again, not wait out the 5 s request timeout on a 3 s lease.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local addr").to_string();
        let silent = thread::spawn(move || {
            let held = listener.accept();
            thread::sleep(Duration::from_secs(3));
            drop(held);
        });
        let registry = EtcdRegistry::new(addr);
        let lease = Lease {
            id: 7,
            ttl: Duration::from_secs(3),
        };
        let started = Instant::now();
        assert!(registry.renew(lease).is_err());
        let took = started.elapsed();
        assert!(took < Duration::from_millis(1500), "gave up after {took:?}");
        drop(silent);
    }

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(
            prefix_end(b"/netrpc/services/Arith/"),
            b"/netrpc/services/Arith0"
        );
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }
}
