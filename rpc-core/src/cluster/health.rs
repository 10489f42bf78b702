//! Health checks over the network: a [`HealthChecker`] thread probes every registered instance
//! of a service and keeps the list of those that answer (SEEDS §7).
//!
//! A registration only says an instance promised to be alive; its heartbeat may come from a
//! process whose server is stuck or gone. The checker follows a registry [`Watcher`], probes
//! each instance every interval (by default [`ping_probe`]: dial, send a netrpc Ping frame,
//! wait for its Pong), marks an instance unhealthy after N failures in a row and healthy again
//! after M successes, and publishes the healthy ones through its own [`Watcher`].
//!
//! It marks rather than deregisters: the instance's owner keeps renewing its lease and would
//! register it again, so deleting from the registry would only flap. The checker is the
//! client-side view, like Consul's "passing" filter; a dead process's lease expires on its own.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use rpc_transport::clock::deadline_after;
use rpc_transport::{Frame, FrameDecoder, FrameKind, FrameLimits};

use super::registry::{Instance, RegistryError};
use super::watch::{WatchSlot, Watcher};
use crate::error::RpcError;

/// Default time between two probes of an instance: 1 second.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Default deadline of one probe, connect included: 500 ms.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Default number of failed probes in a row that make an instance unhealthy: 3.
pub const DEFAULT_UNHEALTHY_AFTER: u32 = 3;
/// Default number of successful probes in a row that make it healthy again: 2.
pub const DEFAULT_HEALTHY_AFTER: u32 = 2;

/// A probe: `Ok` if `instance` answered within the timeout. [`ping_probe`] by default; a
/// closure making a real call (e.g. `Client::dial_timeout` + `call_timeout`) also fits.
pub type Probe = Arc<dyn Fn(&Instance, Duration) -> Result<(), RpcError> + Send + Sync>;

/// Probes `instance` the way netrpc's own client says hello: dial, send a Ping frame, and wait
/// for the Pong with the same sequence id, all within `timeout`.
///
/// # Errors
///
/// [`RpcError::Unreachable`] if the dial fails, [`RpcError::Timeout`] past `timeout`,
/// [`RpcError::ConnectionLost`] if the peer closes first, [`RpcError::Protocol`] if it
/// answers with something that is not netrpc.
pub fn ping_probe(instance: &Instance, timeout: Duration) -> Result<(), RpcError> {
    let deadline = deadline_after(Instant::now(), timeout);
    let unreachable = |err: io::Error| RpcError::Unreachable {
        addr: instance.addr.clone(),
        source: Arc::new(err),
    };
    let timed_out = || RpcError::Timeout { after: timeout };
    let lost = |err: io::Error| match err.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => timed_out(),
        _ => RpcError::ConnectionLost { cause: None },
    };
    let addr = instance
        .addr
        .to_socket_addrs()
        .map_err(unreachable)?
        .next()
        .ok_or_else(|| unreachable(io::ErrorKind::AddrNotAvailable.into()))?;
    let left = |deadline: Instant| {
        Some(deadline.saturating_duration_since(Instant::now()))
            .filter(|left| !left.is_zero())
            .ok_or_else(timed_out)
    };
    let mut stream = TcpStream::connect_timeout(&addr, left(deadline)?).map_err(unreachable)?;
    let limits = FrameLimits::default();
    let mut wire = BytesMut::new();
    Frame::new(FrameKind::Ping, PING_SEQ)
        .encode(&mut wire, &limits)
        .map_err(|err| RpcError::Internal {
            detail: err.to_string(),
        })?;
    stream
        .set_write_timeout(Some(left(deadline)?))
        .map_err(lost)?;
    stream.write_all(&wire).map_err(lost)?;
    let mut decoder = FrameDecoder::new(limits);
    let mut buf = [0u8; 512];
    loop {
        stream
            .set_read_timeout(Some(left(deadline)?))
            .map_err(lost)?;
        let read = match stream.read(&mut buf) {
            Ok(read) => read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(lost(err)),
        };
        if read == 0 {
            return Err(RpcError::ConnectionLost { cause: None });
        }
        decoder.handle_bytes(&buf[..read]);
        while let Some(frame) = decoder.poll_frame().map_err(|err| RpcError::Protocol {
            detail: format!("health probe: {err}"),
        })? {
            if frame.kind == FrameKind::Pong && frame.seq == PING_SEQ {
                return Ok(());
            }
        }
    }
}

/// The last known health of one instance.
#[derive(Debug, Clone)]
pub struct InstanceHealth {
    /// The instance probed.
    pub instance: Instance,
    /// Whether it counts as healthy now (new instances start healthy).
    pub healthy: bool,
    /// Failed probes in a row.
    pub consecutive_failures: u32,
    /// Successful probes in a row.
    pub consecutive_successes: u32,
    /// The error of the last failed probe, if the last probe failed.
    pub last_error: Option<RpcError>,
}

/// Settings of a [`HealthChecker`]; [`HealthCheckerBuilder::start`] starts it.
pub struct HealthCheckerBuilder {
    interval: Duration,
    timeout: Duration,
    unhealthy_after: u32,
    healthy_after: u32,
    probe: Probe,
}

impl HealthCheckerBuilder {
    /// Sets the time between two rounds of probes ([`DEFAULT_PROBE_INTERVAL`]).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Sets the deadline of one probe ([`DEFAULT_PROBE_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets how many failures in a row make an instance unhealthy (at least 1).
    pub fn unhealthy_after(mut self, failures: u32) -> Self {
        self.unhealthy_after = failures.max(1);
        self
    }

    /// Sets how many successes in a row make it healthy again (at least 1).
    pub fn healthy_after(mut self, successes: u32) -> Self {
        self.healthy_after = successes.max(1);
        self
    }

    /// Replaces [`ping_probe`] with another probe.
    pub fn probe(
        mut self,
        probe: impl Fn(&Instance, Duration) -> Result<(), RpcError> + Send + Sync + 'static,
    ) -> Self {
        self.probe = Arc::new(probe);
        self
    }

    /// Starts probing the instances `registered` lists, on a thread of its own.
    ///
    /// # Errors
    ///
    /// [`RegistryError::Backend`] if the thread cannot be started.
    pub fn start(self, mut registered: Watcher) -> Result<HealthChecker, RegistryError> {
        let shared = Arc::new(Shared {
            statuses: Mutex::new(BTreeMap::new()),
            healthy: WatchSlot::new(registered.current()),
            rounds: AtomicU64::new(0),
        });
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let checking = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name("netrpc-health".to_owned())
            .spawn(move || loop {
                if !checking.round(&registered.current(), &self, &stopped) {
                    return;
                }
                let next_round = deadline_after(Instant::now(), self.interval);
                loop {
                    let left = next_round.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    match stopped.recv_timeout(left.min(REGISTRY_RECHECK)) {
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                        Err(RecvTimeoutError::Timeout) => {}
                    }
                    match registered.changed(Duration::ZERO) {
                        Ok(Some(now)) => checking.follow_registry(&now),
                        Ok(None) => {}
                        Err(_) => {
                            // The registry is gone: so is what this list follows.
                            checking.healthy.close();
                            return;
                        }
                    }
                }
            })
            .map_err(|err| RegistryError::Backend {
                message: format!("cannot start the health checker thread: {err}"),
            })?;
        Ok(HealthChecker {
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl fmt::Debug for HealthCheckerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthCheckerBuilder")
            .field("interval", &self.interval)
            .field("timeout", &self.timeout)
            .field("unhealthy_after", &self.unhealthy_after)
            .field("healthy_after", &self.healthy_after)
            .finish_non_exhaustive()
    }
}

/// Probes a service's registered instances and keeps the healthy ones.
///
/// Each round probes every instance (up to 16 at once, each bounded by the probe timeout), so
/// a round lasts at most about `timeout × ceil(n / 16)`. Instances that appear in the registry
/// are taken as healthy until probed; instances that leave it are dropped at once. Dropping
/// the checker (or [`HealthChecker::stop`]) stops its thread within one probe timeout (it
/// looks between batches of probes). When the registry behind its watcher closes, the
/// checker's thread ends and its own watch closes too, so what follows it stops.
///
/// ```no_run
/// use rpc_core::cluster::{HealthChecker, MemoryRegistry, Registry};
///
/// let registry = MemoryRegistry::new();
/// let checker = HealthChecker::builder().unhealthy_after(2).start(registry.watch("Arith")?)?;
/// let live = checker.healthy();
/// # Ok::<(), rpc_core::cluster::RegistryError>(())
/// ```
#[derive(Debug)]
pub struct HealthChecker {
    shared: Arc<Shared>,
    /// Dropping it stops the thread.
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HealthChecker {
    /// A builder with the defaults: [`ping_probe`] every [`DEFAULT_PROBE_INTERVAL`].
    pub fn builder() -> HealthCheckerBuilder {
        HealthCheckerBuilder {
            interval: DEFAULT_PROBE_INTERVAL,
            timeout: DEFAULT_PROBE_TIMEOUT,
            unhealthy_after: DEFAULT_UNHEALTHY_AFTER,
            healthy_after: DEFAULT_HEALTHY_AFTER,
            probe: Arc::new(ping_probe),
        }
    }

    /// The instances registered and healthy now, sorted by address.
    pub fn healthy(&self) -> Vec<Instance> {
        Watcher::new(Arc::clone(&self.shared.healthy)).current()
    }

    /// A watcher of the healthy instances: it wakes when one turns unhealthy or back.
    pub fn watch(&self) -> Watcher {
        Watcher::new(Arc::clone(&self.shared.healthy))
    }

    /// Every registered instance's health.
    pub fn statuses(&self) -> Vec<InstanceHealth> {
        self.shared.lock().values().cloned().collect()
    }

    /// Rounds of probes completed.
    pub fn rounds(&self) -> u64 {
        self.shared.rounds.load(Ordering::Relaxed)
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        self.stop = None;
        if let Some(thread) = self.thread.take() {
            // The thread only probes and publishes; a panicking custom probe is not re-raised
            // from a destructor.
            let _ = thread.join();
        }
        self.shared.healthy.close();
    }
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// What the handle and the checking thread share.
struct Shared {
    /// Guards each registered instance's health, by address.
    statuses: Mutex<BTreeMap<String, InstanceHealth>>,
    healthy: Arc<WatchSlot>,
    rounds: AtomicU64,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("rounds", &self.rounds)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, InstanceHealth>> {
        // Updates are whole-value assignments; a poisoned map is still consistent.
        self.statuses.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Probes every instance of `registered` once and publishes the healthy ones. Returns
    /// false, leaving the round unfinished, if the checker is stopped meanwhile (`stopped`
    /// disconnected): it looks between batches, so stopping waits one probe timeout at most.
    fn round(
        &self,
        registered: &[Instance],
        settings: &HealthCheckerBuilder,
        stopped: &Receiver<()>,
    ) -> bool {
        self.follow_registry(registered);
        for batch in registered.chunks(MAX_PARALLEL_PROBES) {
            if matches!(stopped.try_recv(), Ok(()) | Err(TryRecvError::Disconnected)) {
                return false;
            }
            let results: Vec<Result<(), RpcError>> = thread::scope(|scope| {
                let probe = |instance| (settings.probe)(instance, settings.timeout);
                // A probe that cannot get a thread runs here instead, after the others start.
                let started: Vec<_> = batch
                    .iter()
                    .map(|instance| {
                        let thread = thread::Builder::new().name("netrpc-probe".to_owned());
                        (
                            instance,
                            thread.spawn_scoped(scope, move || probe(instance)).ok(),
                        )
                    })
                    .collect();
                started
                    .into_iter()
                    .map(|(instance, thread)| match thread {
                        Some(thread) => thread.join().unwrap_or_else(|_| {
                            Err(RpcError::HandlerPanicked {
                                message: "the health probe panicked".to_owned(),
                            })
                        }),
                        None => probe(instance),
                    })
                    .collect()
            });
            let mut statuses = self.lock();
            for (instance, result) in batch.iter().zip(results) {
                if let Some(status) = statuses.get_mut(&instance.addr) {
                    record(status, result, settings);
                }
            }
        }
        self.publish();
        self.rounds.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Takes the registry's new list: new instances start healthy, gone ones are forgotten.
    fn follow_registry(&self, registered: &[Instance]) {
        let mut statuses = self.lock();
        statuses.retain(|addr, _| registered.iter().any(|i| &i.addr == addr));
        for instance in registered {
            let status = statuses
                .entry(instance.addr.clone())
                .or_insert_with(|| InstanceHealth {
                    instance: instance.clone(),
                    healthy: true,
                    consecutive_failures: 0,
                    consecutive_successes: 0,
                    last_error: None,
                });
            status.instance = instance.clone();
        }
        drop(statuses);
        self.publish();
    }

    fn publish(&self) {
        let healthy = self
            .lock()
            .values()
            .filter(|status| status.healthy)
            .map(|status| status.instance.clone())
            .collect();
        self.healthy.publish(healthy);
    }
}

/// Counts one probe result and flips the instance's health past the thresholds.
fn record(
    status: &mut InstanceHealth,
    result: Result<(), RpcError>,
    settings: &HealthCheckerBuilder,
) {
    match result {
        Ok(()) => {
            status.consecutive_successes = status.consecutive_successes.saturating_add(1);
            status.consecutive_failures = 0;
            status.last_error = None;
            if status.consecutive_successes >= settings.healthy_after {
                status.healthy = true;
            }
        }
        Err(err) => {
            status.consecutive_failures = status.consecutive_failures.saturating_add(1);
            status.consecutive_successes = 0;
            status.last_error = Some(err);
            if status.consecutive_failures >= settings.unhealthy_after {
                status.healthy = false;
            }
        }
    }
}

/// The sequence id of a probe's Ping ("netrpc" in ASCII, then "hc").
const PING_SEQ: u64 = 0x6e65_7472_7063_6863;
/// At most this many probes run at once.
const MAX_PARALLEL_PROBES: usize = 16;
/// How often, between rounds, the checker looks for registry changes and a stop request.
const REGISTRY_RECHECK: Duration = Duration::from_millis(50);
