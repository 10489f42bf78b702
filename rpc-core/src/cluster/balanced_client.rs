//! `BalancedClient`: one client over many endpoints (SEEDS §7). Per call a [`Balancer`] picks
//! an endpoint; the call goes over that endpoint's [`Client`], dialed on first use and dialed
//! again after its connection failed; calls in flight and latency are counted per endpoint and
//! fed back to the balancer; a failure where nothing ran moves the call to another endpoint;
//! and the endpoint list can be replaced while calls run ([`BalancedClient::set_endpoints`],
//! where service discovery plugs in).
//!
//! ```text
//!   call("Arith.Multiply", &args)
//!     │ pick among endpoints up and not yet tried ──► Balancer::pick
//!     ▼
//!   endpoint B ── dial if needed ── Client::call_timeout(remaining time)
//!     ├─ reply or method error ─────────────────► return it   (latency ──► Balancer::record)
//!     ├─ Unreachable / ShuttingDown ─ mark B down ─► try another endpoint
//!     ├─ Throttled / connection already closed ───► try another endpoint
//!     └─ ConnectionLost / Timeout ─── may have run ─► return it (ConnectionLost: mark B down;
//!                                                  tried elsewhere only if `idempotent`;
//!                                                  a third Timeout in a row: mark B down)
//! ```
//!
//! Which errors move a call: those where the server cannot have run it. `Unreachable` (the
//! dial failed), `Throttled` (a server or this side at its cap refused it unprocessed),
//! `ShuttingDown` (a draining server refused it), and `Shutdown` from a connection that had
//! already ended before the call was sent. `ConnectionLost` and `Timeout` are retryable in
//! [`RpcError::is_retryable`]'s sense but the call **may have run**: a `ConnectionLost` call is
//! moved only when the client is built with [`BalancedClientBuilder::idempotent`], and a
//! `Timeout` never is, since the call's whole deadline is spent. An endpoint whose calls time
//! out [`TIMEOUTS_BEFORE_DOWN`] times in a row is set aside as one whose connection was lost.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rpc_codec::CodecKind;
use rpc_transport::clock::deadline_after;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::balance::{Balancer, Candidate, Endpoint, RoundRobin};
use crate::client::{Client, WeakClient};
use crate::client_builder::{ClientBuilder, DEFAULT_CALL_TIMEOUT, DEFAULT_CONNECT_TIMEOUT};
use crate::error::RpcError;

/// Default time an endpoint is skipped after its dial failed, its connection was lost or it
/// said it is shutting down: 2 seconds. Once it passes, the next call picked there dials
/// again.
pub const DEFAULT_DOWN_FOR: Duration = Duration::from_secs(2);

/// Default most endpoints one call is tried on: 3.
pub const DEFAULT_MAX_ATTEMPTS: usize = 3;

/// Calls timed out in a row, with no answer between, that set an endpoint aside for
/// `down_for` and drop its connection: a host that accepts and then says nothing would
/// otherwise cost every call routed there its whole timeout until TCP gives up (minutes).
pub const TIMEOUTS_BEFORE_DOWN: u64 = 3;

/// A client over a list of endpoints that picks one per call with a [`Balancer`] and fails
/// over between them.
///
/// `Send + Sync` and cheap to clone (clones share connections, counters and balancer). Calls
/// from many threads run concurrently: the endpoint list and the balancer are locked only
/// briefly (to pick, to record a latency, to keep a new connection), never during a call or
/// a dial. Each endpoint keeps at most one connection, dialed lazily; two threads that find
/// an endpoint without one may both dial, and the second connection is closed. The connections close when the last clone is dropped or on
/// [`BalancedClient::close`].
///
/// An endpoint whose dial fails, whose connection is lost, or which answers `ShuttingDown`
/// is *down* for [`BalancedClientBuilder::down_for`]: calls skip it, unless every remaining
/// endpoint is down, in which case they try the down ones rather than fail unasked.
///
/// # Examples
///
/// ```no_run
/// use rpc_core::cluster::{BalancedClient, Endpoint, PeakEwma};
///
/// let client = BalancedClient::builder()
///     .balancer(PeakEwma::new())
///     .build(vec![Endpoint::new("127.0.0.1:9001"), Endpoint::new("127.0.0.1:9002")]);
/// let product: i64 = client.call("Arith.Multiply", &(7i64, 8i64))?;
/// client.set_endpoints(vec![Endpoint::new("127.0.0.1:9002"), Endpoint::new("127.0.0.1:9003")]);
/// # Ok::<(), rpc_core::RpcError>(())
/// ```
#[derive(Debug, Clone)]
pub struct BalancedClient {
    shared: Arc<Shared>,
}

/// Builds a [`BalancedClient`] with a policy and settings other than the defaults.
#[derive(Debug)]
pub struct BalancedClientBuilder {
    balancer: Box<dyn Balancer>,
    settings: Settings,
}

/// What one endpoint has seen, from [`BalancedClient::stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointStats {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// Calls on it now (including a dial under way for one).
    pub in_flight: usize,
    /// Calls sent to it since it joined the list.
    pub calls: u64,
    /// Failed dials and calls that ended in an error other than the method's own.
    pub failures: u64,
    /// True while it is skipped after a failure.
    pub down: bool,
    /// True if it has an open connection.
    pub connected: bool,
}

/// Settings shared by every call.
#[derive(Debug, Clone)]
struct Settings {
    /// Template for each endpoint's client (codec, limits, pending-call cap).
    client: ClientBuilder,
    call_timeout: Duration,
    connect_timeout: Duration,
    down_for: Duration,
    max_attempts: usize,
    idempotent: bool,
}

#[derive(Debug)]
struct Shared {
    settings: Settings,
    /// The endpoints in list order, each with its connection, down mark and counters. Locked
    /// before `balancer` when both are held; never held during a call or a dial.
    slots: Mutex<Vec<Slot>>,
    /// The policy; fed picks under `slots`, and latencies alone.
    balancer: Mutex<Box<dyn Balancer>>,
    closed: AtomicBool,
    /// Connections of endpoints removed from the list that calls may still be using, for
    /// `close` to close; locked after `slots`. Entries whose clients have gone are dropped as
    /// others are added.
    retired: Mutex<Vec<WeakClient>>,
}

/// One endpoint of the list.
#[derive(Debug)]
struct Slot {
    endpoint: Endpoint,
    client: Option<Client>,
    down_until: Option<Instant>,
    counters: Arc<Counters>,
}

/// Counters of one endpoint, shared with the calls on it so they update without the lock.
#[derive(Debug, Default)]
struct Counters {
    in_flight: AtomicUsize,
    calls: AtomicU64,
    failures: AtomicU64,
    /// Calls that timed out since the endpoint last answered one.
    timeouts_in_a_row: AtomicU64,
}

/// The endpoint picked for one attempt. Holds one unit of its `in_flight` until dropped.
struct Choice {
    addr: String,
    client: Option<Client>,
    counters: Arc<Counters>,
}

/// What a failed attempt means for its endpoint and for the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Verdict {
    /// Try the call on another endpoint.
    fail_over: bool,
    /// Skip the endpoint for a while.
    mark_down: bool,
    /// Its connection is unusable: dial a new one next time.
    drop_connection: bool,
    /// The server answered or the call timed out: the time taken says something about it.
    record_latency: bool,
}

impl BalancedClient {
    /// A balanced client over `endpoints`, round robin, with default settings. Nothing is
    /// dialed until the first call.
    pub fn new(endpoints: Vec<Endpoint>) -> Self {
        BalancedClient::builder().build(endpoints)
    }

    /// A builder for another policy or other settings.
    pub fn builder() -> BalancedClientBuilder {
        BalancedClientBuilder::default()
    }

    /// Calls `method` on an endpoint picked by the balancer, within the call timeout, failing
    /// over as the module docs describe.
    ///
    /// # Errors
    ///
    /// The call's own [`RpcError`] when it is not one to fail over on; else the last
    /// endpoint's error once [`BalancedClientBuilder::max_attempts`] endpoints (or all of
    /// them) were tried. With an empty endpoint list, [`RpcError::Unreachable`] whose source
    /// has kind [`io::ErrorKind::NotFound`]. [`RpcError::Shutdown`] after
    /// [`BalancedClient::close`].
    pub fn call<A, R>(&self, method: &str, args: &A) -> Result<R, RpcError>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        self.call_timeout(method, args, self.shared.settings.call_timeout)
    }

    /// Like [`BalancedClient::call`], with `timeout` for the whole call: every attempt and
    /// dial gets what is left of it.
    ///
    /// # Errors
    ///
    /// As [`BalancedClient::call`]; [`RpcError::Timeout`] once `timeout` has passed.
    pub fn call_timeout<A, R>(
        &self,
        method: &str,
        args: &A,
        timeout: Duration,
    ) -> Result<R, RpcError>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let shared = &*self.shared;
        let deadline = deadline_after(Instant::now(), timeout);
        let mut tried: Vec<String> = Vec::new();
        let mut last_error = None;
        while tried.len() < shared.settings.max_attempts {
            if shared.closed.load(Ordering::Acquire) {
                return Err(RpcError::Shutdown);
            }
            let Some(choice) = shared.choose(&tried) else {
                break;
            };
            tried.push(choice.addr.clone());
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(RpcError::Timeout { after: timeout });
            }
            let client = match &choice.client {
                Some(client) => client.clone(),
                None => match shared.dial(&choice.addr, remaining) {
                    Ok(client) => client,
                    Err(RpcError::Shutdown) => return Err(RpcError::Shutdown),
                    Err(err) => {
                        choice.counters.failures.fetch_add(1, Ordering::Relaxed);
                        shared.after_failure(&choice.addr, Verdict::of(&err, false), None);
                        last_error = Some(err);
                        continue;
                    }
                },
            };
            // The dial may have taken what was left: a call sent now could still run on
            // the server while its caller is told `Timeout`.
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(RpcError::Timeout { after: timeout });
            }
            choice.counters.calls.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            let result = client.call_timeout(method, args, remaining);
            let elapsed = started.elapsed();
            let err = match result {
                Ok(reply) => {
                    choice
                        .counters
                        .timeouts_in_a_row
                        .store(0, Ordering::Relaxed);
                    shared.record(&choice.addr, elapsed);
                    return Ok(reply);
                }
                Err(err) => err,
            };
            if !err.is_method_error() {
                choice.counters.failures.fetch_add(1, Ordering::Relaxed);
            }
            let mut verdict = Verdict::of(&err, shared.settings.idempotent);
            if matches!(err, RpcError::Timeout { .. }) {
                let in_a_row = choice
                    .counters
                    .timeouts_in_a_row
                    .fetch_add(1, Ordering::Relaxed);
                if in_a_row + 1 >= TIMEOUTS_BEFORE_DOWN {
                    // Hung, or its replies lost: set it aside like a lost connection (the
                    // call itself still ends here, since it may have run).
                    choice
                        .counters
                        .timeouts_in_a_row
                        .store(0, Ordering::Relaxed);
                    verdict.mark_down = true;
                    verdict.drop_connection = true;
                }
            } else if verdict.record_latency {
                choice
                    .counters
                    .timeouts_in_a_row
                    .store(0, Ordering::Relaxed);
            }
            if verdict.record_latency {
                shared.record(&choice.addr, elapsed);
            }
            shared.after_failure(&choice.addr, verdict, Some(&client));
            if !verdict.fail_over || shared.closed.load(Ordering::Acquire) {
                return Err(err);
            }
            last_error = Some(err);
        }
        Err(last_error.unwrap_or_else(no_endpoints))
    }

    /// Replaces the endpoint list, while calls run. An address already in the list keeps its
    /// connection, counters and down mark (its weight and metadata are updated); a new one is
    /// dialed on its first call; a removed one gets no new calls, and its connection closes
    /// once the calls on it end. Of duplicate addresses the first is kept. The balancer is
    /// told through [`Balancer::retain`].
    ///
    /// This is where service discovery plugs in: call it with the live instances whenever
    /// they change.
    pub fn set_endpoints(&self, endpoints: Vec<Endpoint>) {
        let mut slots = lock(&self.shared.slots);
        let mut old: HashMap<String, Slot> = slots
            .drain(..)
            .map(|slot| (slot.endpoint.addr.clone(), slot))
            .collect();
        let mut seen = HashSet::new();
        for endpoint in endpoints {
            if !seen.insert(endpoint.addr.clone()) {
                continue;
            }
            let slot = match old.remove(&endpoint.addr) {
                Some(mut kept) => {
                    kept.endpoint = endpoint;
                    kept
                }
                None => Slot::new(endpoint),
            };
            slots.push(slot);
        }
        let list: Vec<Endpoint> = slots.iter().map(|slot| slot.endpoint.clone()).collect();
        lock(&self.shared.balancer).retain(&list);
        // Under the slots' lock, which `close` takes first: no connection slips between.
        self.shared
            .retire(old.values().filter_map(|slot| slot.client.as_ref()));
        drop(slots);
        // Removed endpoints' clients are dropped here, outside the lock.
        drop(old);
    }

    /// The endpoint list, in order.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        lock(&self.shared.slots)
            .iter()
            .map(|slot| slot.endpoint.clone())
            .collect()
    }

    /// Each endpoint's counters, in list order.
    pub fn stats(&self) -> Vec<EndpointStats> {
        let now = Instant::now();
        lock(&self.shared.slots)
            .iter()
            .map(|slot| EndpointStats {
                endpoint: slot.endpoint.clone(),
                in_flight: slot.counters.in_flight.load(Ordering::Relaxed),
                calls: slot.counters.calls.load(Ordering::Relaxed),
                failures: slot.counters.failures.load(Ordering::Relaxed),
                down: slot.is_down(now),
                connected: slot
                    .client
                    .as_ref()
                    .is_some_and(|client| !client.is_closed()),
            })
            .collect()
    }

    /// Closes every connection; calls in flight (also on an endpoint that
    /// [`BalancedClient::set_endpoints`] removed), a call whose dial is under way, and every
    /// later call fail with [`RpcError::Shutdown`]. Idempotent.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        let clients: Vec<Client> = {
            let mut slots = lock(&self.shared.slots);
            let retired = std::mem::take(&mut *lock(&self.shared.retired));
            let kept = slots.iter_mut().filter_map(|slot| slot.client.take());
            kept.chain(retired.iter().filter_map(WeakClient::upgrade))
                .collect()
        };
        for client in clients {
            client.close();
        }
    }
}

impl BalancedClientBuilder {
    /// The policy (default [`RoundRobin`]).
    pub fn balancer(mut self, balancer: impl Balancer + 'static) -> Self {
        self.balancer = Box::new(balancer);
        self
    }

    /// The settings every endpoint's client is dialed with (TLS, middleware, limits, codec,
    /// pending-call cap: anything [`ClientBuilder`] sets). The call and connect timeouts stay
    /// this builder's, since they span failovers.
    pub fn client(mut self, client: ClientBuilder) -> Self {
        self.settings.client = client;
        self
    }

    /// Codec of every endpoint's client (default postcard).
    pub fn codec(mut self, codec: CodecKind) -> Self {
        self.settings.client = self.settings.client.codec(codec);
        self
    }

    /// Deadline of a whole call, failovers included (default [`DEFAULT_CALL_TIMEOUT`]).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.settings.call_timeout = timeout;
        self
    }

    /// Most time one dial may take (default [`DEFAULT_CONNECT_TIMEOUT`]); never more than
    /// what is left of the call's deadline.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// Cap on pending calls of each endpoint's client (see
    /// [`crate::ClientConfig::max_pending_calls`]); a call over it fails over to another
    /// endpoint.
    pub fn max_pending_calls(mut self, count: usize) -> Self {
        self.settings.client = self.settings.client.max_pending_calls(count);
        self
    }

    /// How long an endpoint is skipped after a connection failure (default
    /// [`DEFAULT_DOWN_FOR`]).
    pub fn down_for(mut self, duration: Duration) -> Self {
        self.settings.down_for = duration;
        self
    }

    /// Most endpoints one call is tried on, at least 1 (default [`DEFAULT_MAX_ATTEMPTS`]).
    /// An endpoint is never tried twice in one call.
    pub fn max_attempts(mut self, count: usize) -> Self {
        self.settings.max_attempts = count.max(1);
        self
    }

    /// Declares the methods called through this client idempotent (default false): a call
    /// whose connection was lost, which may have run, is then tried on another endpoint too.
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.settings.idempotent = idempotent;
        self
    }

    /// The balanced client over `endpoints` (see [`BalancedClient::set_endpoints`] for
    /// duplicates). Nothing is dialed until the first call.
    pub fn build(self, endpoints: Vec<Endpoint>) -> BalancedClient {
        let client = BalancedClient {
            shared: Arc::new(Shared {
                settings: self.settings,
                slots: Mutex::new(Vec::new()),
                balancer: Mutex::new(self.balancer),
                closed: AtomicBool::new(false),
                retired: Mutex::new(Vec::new()),
            }),
        };
        client.set_endpoints(endpoints);
        client
    }
}

impl Default for BalancedClientBuilder {
    fn default() -> Self {
        BalancedClientBuilder {
            balancer: Box::new(RoundRobin::new()),
            settings: Settings {
                client: ClientBuilder::default(),
                call_timeout: DEFAULT_CALL_TIMEOUT,
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                down_for: DEFAULT_DOWN_FOR,
                max_attempts: DEFAULT_MAX_ATTEMPTS,
                idempotent: false,
            },
        }
    }
}

impl Shared {
    /// Remembers `clients`, of endpoints no longer listed, for `close`; forgets those gone.
    fn retire<'a>(&self, clients: impl Iterator<Item = &'a Client>) {
        let mut retired = lock(&self.retired);
        retired.retain(|weak| weak.upgrade().is_some());
        retired.extend(clients.map(Client::downgrade));
    }

    /// Picks the endpoint for the next attempt among those not in `tried`: the ones up, or
    /// if none is up, the down ones. Counts the attempt in flight there.
    fn choose(&self, tried: &[String]) -> Option<Choice> {
        let now = Instant::now();
        let slots = lock(&self.slots);
        let untried: Vec<usize> = (0..slots.len())
            .filter(|&i| !tried.contains(&slots[i].endpoint.addr))
            .collect();
        let up: Vec<usize> = untried
            .iter()
            .copied()
            .filter(|&i| !slots[i].is_down(now))
            .collect();
        let pool = if up.is_empty() { untried } else { up };
        let candidates: Vec<Candidate<'_>> = pool
            .iter()
            .map(|&i| {
                let slot = &slots[i];
                Candidate::new(
                    &slot.endpoint,
                    slot.counters.in_flight.load(Ordering::Relaxed),
                )
            })
            .collect();
        let picked = lock(&self.balancer).pick(&candidates)?;
        let index = pool.get(picked).or(pool.first()).copied()?;
        let slot = &slots[index];
        slot.counters.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Choice {
            addr: slot.endpoint.addr.clone(),
            client: slot.client.clone().filter(|client| !client.is_closed()),
            counters: Arc::clone(&slot.counters),
        })
    }

    /// Dials `addr` within `remaining` and keeps the connection for later calls, unless
    /// another thread kept one first (then that one is used and this one closed).
    ///
    /// # Errors
    ///
    /// The dial's, or [`RpcError::Shutdown`] if the client was closed while it dialed (the
    /// new connection is closed: `close` fails the calls in flight).
    fn dial(&self, addr: &str, remaining: Duration) -> Result<Client, RpcError> {
        let dialed = self
            .settings
            .client
            .clone()
            .connect_timeout(self.settings.connect_timeout.min(remaining))
            .dial(addr)?;
        let mut slots = lock(&self.slots);
        // Checked under the slots' lock, which `close` takes to close every connection:
        // a connection kept below is closed by it.
        if self.closed.load(Ordering::Acquire) {
            dialed.close();
            return Err(RpcError::Shutdown);
        }
        let listed = slots.iter_mut().find(|slot| slot.endpoint.addr == addr);
        let Some(slot) = listed else {
            // Removed from the list meanwhile: serve this call, keep nothing (but `close`
            // reaches it).
            self.retire(std::iter::once(&dialed));
            return Ok(dialed);
        };
        match &slot.client {
            Some(existing) if !existing.is_closed() => Ok(existing.clone()),
            _ => {
                slot.client = Some(dialed.clone());
                slot.down_until = None;
                Ok(dialed)
            }
        }
    }

    /// Applies `verdict` to the endpoint at `addr`, if it is still listed, after a call on
    /// `failed` (None: the dial failed). Only that connection is dropped: another caller may
    /// have dialed the endpoint again since, and its new connection is not the one that
    /// failed.
    fn after_failure(&self, addr: &str, verdict: Verdict, failed: Option<&Client>) {
        if !verdict.mark_down && !verdict.drop_connection {
            return;
        }
        let dropped = {
            let mut slots = lock(&self.slots);
            let Some(slot) = slots.iter_mut().find(|slot| slot.endpoint.addr == addr) else {
                return;
            };
            if verdict.mark_down {
                slot.down_until = Some(deadline_after(Instant::now(), self.settings.down_for));
            }
            let is_the_failed_one =
                |client: &Client| failed.is_some_and(|f| f.same_connection(client));
            if verdict.drop_connection && slot.client.as_ref().is_some_and(is_the_failed_one) {
                slot.client.take()
            } else {
                None
            }
        };
        drop(dropped);
    }

    /// Feeds one call's latency to the balancer.
    fn record(&self, addr: &str, latency: Duration) {
        lock(&self.balancer).record(addr, latency);
    }
}

impl Slot {
    fn new(endpoint: Endpoint) -> Self {
        Slot {
            endpoint,
            client: None,
            down_until: None,
            counters: Arc::default(),
        }
    }

    fn is_down(&self, now: Instant) -> bool {
        self.down_until.is_some_and(|until| until > now)
    }
}

impl Drop for Choice {
    fn drop(&mut self) {
        self.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Verdict {
    /// How to treat a failed attempt that ended with `err`.
    fn of(err: &RpcError, idempotent: bool) -> Verdict {
        let nothing = Verdict {
            fail_over: false,
            mark_down: false,
            drop_connection: false,
            record_latency: false,
        };
        match err {
            // Nothing ran, and the endpoint is gone or going.
            RpcError::Unreachable { .. } | RpcError::ShuttingDown => Verdict {
                fail_over: true,
                mark_down: true,
                drop_connection: true,
                ..nothing
            },
            // Nothing ran; the endpoint is busy, not broken.
            RpcError::Throttled => Verdict {
                fail_over: true,
                ..nothing
            },
            // The connection had ended before the call was sent: nothing ran; dial again.
            RpcError::Shutdown => Verdict {
                fail_over: true,
                drop_connection: true,
                ..nothing
            },
            // The call may have run.
            RpcError::ConnectionLost { .. } => Verdict {
                fail_over: idempotent,
                mark_down: true,
                drop_connection: true,
                ..nothing
            },
            // The server answered (or took the whole deadline): its time counts.
            RpcError::Timeout { .. }
            | RpcError::Method { .. }
            | RpcError::UnknownService { .. }
            | RpcError::UnknownMethod { .. }
            | RpcError::BadRequest { .. }
            | RpcError::HandlerPanicked { .. }
            | RpcError::Decode(_)
            | RpcError::Internal { .. } => Verdict {
                record_latency: true,
                ..nothing
            },
            _ => nothing,
        }
    }
}

/// The error of a call made with an empty endpoint list.
fn no_endpoints() -> RpcError {
    RpcError::Unreachable {
        addr: "(no endpoints)".to_owned(),
        source: Arc::new(io::Error::new(
            io::ErrorKind::NotFound,
            "the endpoint list is empty",
        )),
    }
}

/// Locks `mutex`, going on past a poisoned lock: a panic in a custom balancer leaves the
/// lists consistent, since every update under these locks is a single assignment or a
/// whole-list replace.
fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + 'static>() {}

    #[test]
    fn balanced_client_is_send_sync_static() {
        assert_send_sync::<BalancedClient>();
    }

    #[test]
    fn only_errors_where_nothing_ran_fail_over_by_default() {
        let refused = RpcError::Unreachable {
            addr: "x:1".into(),
            source: Arc::new(io::ErrorKind::ConnectionRefused.into()),
        };
        assert!(Verdict::of(&refused, false).fail_over);
        assert!(Verdict::of(&refused, false).mark_down);
        assert!(Verdict::of(&RpcError::Throttled, false).fail_over);
        assert!(!Verdict::of(&RpcError::Throttled, false).mark_down);
        assert!(Verdict::of(&RpcError::ShuttingDown, false).fail_over);
        assert!(Verdict::of(&RpcError::Shutdown, false).fail_over);
        let lost = RpcError::ConnectionLost { cause: None };
        assert!(!Verdict::of(&lost, false).fail_over);
        assert!(Verdict::of(&lost, true).fail_over);
        assert!(Verdict::of(&lost, false).mark_down);
        let timeout = RpcError::Timeout {
            after: Duration::from_secs(1),
        };
        assert!(!Verdict::of(&timeout, true).fail_over);
        assert!(Verdict::of(&timeout, false).record_latency);
        let method = RpcError::Method {
            message: "divide by zero".into(),
        };
        assert_eq!(
            Verdict::of(&method, true),
            Verdict {
                fail_over: false,
                mark_down: false,
                drop_connection: false,
                record_latency: true,
            }
        );
    }

    #[test]
    fn an_empty_list_gives_unreachable_with_not_found() {
        let client = BalancedClient::new(Vec::new());
        let err = client
            .call::<_, u64>("Probe.Sleep", &0u64)
            .expect_err("no endpoints");
        let RpcError::Unreachable { source, .. } = &err else {
            panic!("expected Unreachable, got {err:?}");
        };
        assert_eq!(source.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn set_endpoints_keeps_known_addresses_and_drops_duplicates() {
        let client = BalancedClient::new(vec!["a:1".into(), "b:1".into()]);
        let before = Arc::clone(&lock(&client.shared.slots)[1].counters);
        client.set_endpoints(vec![
            Endpoint::new("b:1").with_weight(3),
            "c:1".into(),
            "b:1".into(),
        ]);
        let slots = lock(&client.shared.slots);
        let addrs: Vec<&str> = slots.iter().map(|s| s.endpoint.addr.as_str()).collect();
        assert_eq!(addrs, ["b:1", "c:1"]);
        assert_eq!(slots[0].endpoint.weight, 3);
        assert!(Arc::ptr_eq(&before, &slots[0].counters));
    }

    #[test]
    fn down_endpoints_are_skipped_unless_all_are_down() {
        let client = BalancedClient::new(vec!["a:1".into(), "b:1".into()]);
        let shared = &client.shared;
        let down = Verdict {
            fail_over: true,
            mark_down: true,
            drop_connection: true,
            record_latency: false,
        };
        shared.after_failure("a:1", down, None);
        for _ in 0..4 {
            let choice = shared.choose(&[]).expect("one endpoint is up");
            assert_eq!(choice.addr, "b:1");
        }
        shared.after_failure("b:1", down, None);
        let choice = shared
            .choose(&[])
            .expect("all down: the down ones are tried");
        assert!(choice.addr == "a:1" || choice.addr == "b:1");
        assert!(shared.choose(&["a:1".into(), "b:1".into()]).is_none());
    }

    #[test]
    fn a_choice_counts_in_flight_until_dropped() {
        let client = BalancedClient::new(vec!["a:1".into()]);
        let choice = client.shared.choose(&[]).expect("one endpoint");
        assert_eq!(client.stats()[0].in_flight, 1);
        drop(choice);
        assert_eq!(client.stats()[0].in_flight, 0);
    }

    #[test]
    fn a_failure_drops_the_connection_it_failed_on_not_one_dialed_since() {
        let network = crate::sim::SimNetwork::new(1).unwrap();
        let (failed, dialed_since) = (network.client("caller"), network.client("caller"));
        let client = BalancedClient::new(vec!["a:1".into()]);
        let shared = &client.shared;
        lock(&shared.slots)[0].client = Some(dialed_since.clone());
        let lost = Verdict {
            fail_over: true,
            mark_down: false,
            drop_connection: true,
            record_latency: false,
        };
        shared.after_failure("a:1", lost, Some(&failed));
        let kept = lock(&shared.slots)[0].client.clone();
        assert!(
            kept.is_some_and(|kept| kept.same_connection(&dialed_since)),
            "the connection dialed since was dropped"
        );
        shared.after_failure("a:1", lost, Some(&dialed_since));
        assert!(lock(&shared.slots)[0].client.is_none(), "the failed one is");
    }
}
