//! Heartbeats: a [`Registration`] keeps one instance registered by renewing its lease every
//! third of its TTL on a thread of its own, and deregisters it when dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{RecvTimeoutError, Sender};

use super::registry::{Instance, Lease, Registry, RegistryError};

/// One instance kept alive in a registry by a heartbeat thread (Consul: a TTL check updated by
/// the service; etcd: a lease keep-alive).
///
/// The thread renews the lease every `ttl / 3`, and after a failed renewal (the registry
/// unreachable) tries again every tenth of the TTL, at most half a second apart, until one
/// succeeds. The TTL it paces itself by is the one the registry granted, but never longer
/// than the one asked (a registry claiming a longer lease is not trusted to keep it) and,
/// if a registry granted zero, the one asked. When a renewal finds the lease gone (it expired while the registry was unreachable, or someone
/// deregistered it), the thread registers the instance again under a new lease. Dropping the
/// handle stops the thread and deregisters the instance; [`Registration::deregister`] does the
/// same and reports the outcome.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use rpc_core::cluster::{Instance, MemoryRegistry, Registration, Registry};
///
/// let registry = Arc::new(MemoryRegistry::new());
/// let instance = Instance::new("Arith", "127.0.0.1:9000");
/// let registration = Registration::start(registry.clone(), instance, Duration::from_secs(3))?;
/// assert_eq!(registry.list("Arith")?.len(), 1);
/// drop(registration);
/// assert!(registry.list("Arith")?.is_empty());
/// # Ok::<(), rpc_core::cluster::RegistryError>(())
/// ```
#[derive(Debug)]
pub struct Registration {
    shared: Arc<Shared>,
    /// Dropping it wakes and stops the heartbeat thread.
    stop: Option<Sender<()>>,
    heartbeat: Option<JoinHandle<()>>,
}

impl Registration {
    /// Registers `instance` for `ttl` and starts its heartbeat thread.
    ///
    /// # Errors
    ///
    /// The registry's error if the first registration fails (nothing is left running).
    pub fn start(
        registry: Arc<dyn Registry>,
        instance: Instance,
        ttl: Duration,
    ) -> Result<Self, RegistryError> {
        let lease = registry.register(&instance, ttl)?;
        let shared = Arc::new(Shared {
            registry,
            instance,
            ttl,
            lease: Mutex::new(lease),
            renewals: AtomicU64::new(0),
            reregistrations: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        });
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let beating = Arc::clone(&shared);
        let heartbeat = thread::Builder::new()
            .name("netrpc-heartbeat".to_owned())
            .spawn(move || {
                let mut last_beat_failed = false;
                loop {
                    let ttl = pacing_ttl(beating.lease().ttl, beating.ttl);
                    let interval = if last_beat_failed {
                        retry_interval(ttl)
                    } else {
                        (ttl / 3).max(MIN_HEARTBEAT_INTERVAL)
                    };
                    match stopped.recv_timeout(interval) {
                        Err(RecvTimeoutError::Timeout) => last_beat_failed = !beating.beat(),
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            });
        match heartbeat {
            Ok(heartbeat) => Ok(Registration {
                shared,
                stop: Some(stop),
                heartbeat: Some(heartbeat),
            }),
            Err(err) => {
                let _ = shared.registry.deregister(lease);
                Err(RegistryError::Backend {
                    message: format!("cannot start the heartbeat thread: {err}"),
                })
            }
        }
    }

    /// The lease currently held (it changes if the instance had to register again).
    pub fn lease(&self) -> Lease {
        self.shared.lease()
    }

    /// The registered instance.
    pub fn instance(&self) -> &Instance {
        &self.shared.instance
    }

    /// How many renewals succeeded so far.
    pub fn renewals(&self) -> u64 {
        self.shared.renewals.load(Ordering::Relaxed)
    }

    /// How many times the lease was found gone and the instance registered again.
    pub fn reregistrations(&self) -> u64 {
        self.shared.reregistrations.load(Ordering::Relaxed)
    }

    /// How many heartbeats failed (the registry unreachable or refusing).
    pub fn failures(&self) -> u64 {
        self.shared.failures.load(Ordering::Relaxed)
    }

    /// Stops the heartbeat and deregisters now.
    ///
    /// # Errors
    ///
    /// The registry's error; [`RegistryError::LeaseNotFound`] if the lease was already gone.
    pub fn deregister(mut self) -> Result<(), RegistryError> {
        self.stop_heartbeat();
        self.shared.registry.deregister(self.shared.lease())
    }

    fn stop_heartbeat(&mut self) {
        self.stop = None;
        if let Some(heartbeat) = self.heartbeat.take() {
            // The thread only returns or renews; a panic inside a backend is not ours to
            // re-raise in a destructor.
            let _ = heartbeat.join();
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.heartbeat.is_some() {
            self.stop_heartbeat();
            let _ = self.shared.registry.deregister(self.shared.lease());
        }
    }
}

/// What the handle and its heartbeat thread share.
#[derive(Debug)]
struct Shared {
    registry: Arc<dyn Registry>,
    instance: Instance,
    /// The TTL asked for, at every registration.
    ttl: Duration,
    /// Guards the current lease, replaced when the instance registers again.
    lease: Mutex<Lease>,
    renewals: AtomicU64,
    reregistrations: AtomicU64,
    failures: AtomicU64,
}

/// The shortest heartbeat interval, so a tiny TTL cannot make the thread spin.
const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(10);

/// The longest wait before a heartbeat that failed is tried again (etcd's own client retries
/// a keep-alive after half a second).
const MAX_RETRY_INTERVAL: Duration = Duration::from_millis(500);

/// The TTL the heartbeat paces itself by: the `granted` one (etcd rounds a TTL up to whole
/// seconds, and to its minimum of 2 s: a 100 ms ask is granted 2 s, and renewing every 33 ms
/// would be forty requests a second for nothing), or the `asked` one if the registry granted
/// zero. A registry's grant is its word: `EtcdRegistry` refuses grants etcd cannot make.
fn pacing_ttl(granted: Duration, asked: Duration) -> Duration {
    if granted.is_zero() {
        asked
    } else {
        granted
    }
}

/// How soon a failed heartbeat is tried again: a tenth of the TTL, at most half a second.
/// Waiting the usual third could let the lease run out (two heartbeats missed in an outage
/// shorter than the TTL leave the third to come just as it expires).
fn retry_interval(ttl: Duration) -> Duration {
    (ttl / 10).clamp(MIN_HEARTBEAT_INTERVAL, MAX_RETRY_INTERVAL)
}

impl Shared {
    fn lease(&self) -> Lease {
        *self.lease.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One heartbeat: renew, or register again if the lease is gone. False if it failed.
    fn beat(&self) -> bool {
        let lease = self.lease();
        let done = match self.registry.renew(lease) {
            Ok(()) => {
                self.renewals.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(RegistryError::LeaseNotFound { .. }) => {
                match self.registry.register(&self.instance, self.ttl) {
                    Ok(fresh) => {
                        *self.lease.lock().unwrap_or_else(PoisonError::into_inner) = fresh;
                        self.reregistrations.fetch_add(1, Ordering::Relaxed);
                        true
                    }
                    Err(_) => false,
                }
            }
            Err(_) => false,
        };
        if !done {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        done
    }
}
