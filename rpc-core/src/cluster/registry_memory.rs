//! In-process registry: registrations with a TTL kept in memory, expired by a reaper thread,
//! watched through [`Watcher`]s; also a static list of instances that never expire.
//!
//! For tests, single-process clusters and fixed deployments. It is the reference behaviour the
//! etcd backend is checked against (the same test suite runs on both).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use rpc_transport::clock::deadline_after;

use super::registry::{check_ttl, Instance, Lease, Registry, RegistryError};
use super::watch::{WatchSlot, Watcher};

/// A registry living in this process.
///
/// Cheap to clone (clones share the same entries). A reaper thread removes each registration
/// when its TTL passes without a renewal, and wakes the service's watchers; it exits when the
/// last clone is dropped, and the watchers then see [`RegistryError::Closed`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use rpc_core::cluster::{Instance, MemoryRegistry, Registry};
///
/// let registry = MemoryRegistry::new();
/// let lease = registry.register(&Instance::new("Arith", "127.0.0.1:9000"), Duration::from_secs(3))?;
/// assert_eq!(registry.list("Arith")?.len(), 1);
/// registry.deregister(lease)?;
/// assert!(registry.list("Arith")?.is_empty());
/// # Ok::<(), rpc_core::cluster::RegistryError>(())
/// ```
#[derive(Clone)]
pub struct MemoryRegistry {
    inner: Arc<Inner>,
}

impl MemoryRegistry {
    /// An empty registry with its reaper thread.
    pub fn new() -> Self {
        let (registry, nudged) = MemoryRegistry::unreaped();
        let weak = Arc::downgrade(&registry.inner);
        // If the thread cannot start, expiry still holds for readers (`list` and every later
        // snapshot skip expired entries); only the watchers' wake-up at the expiry is lost.
        let _reaper = thread::Builder::new()
            .name("netrpc-registry-reaper".to_owned())
            .spawn(move || reap(&weak, &nudged));
        registry
    }

    /// An empty registry without its reaper, and the channel that nudges one.
    fn unreaped() -> (Self, Receiver<()>) {
        let (nudge, nudged) = crossbeam_channel::unbounded();
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            nudge,
        });
        (MemoryRegistry { inner }, nudged)
    }

    /// A registry holding `instances` for ever: a static service list behind the same trait.
    ///
    /// # Errors
    ///
    /// [`RegistryError::InvalidInstance`] for the first invalid instance.
    pub fn with_static(
        instances: impl IntoIterator<Item = Instance>,
    ) -> Result<Self, RegistryError> {
        let registry = MemoryRegistry::new();
        for instance in instances {
            registry.register_static(&instance)?;
        }
        Ok(registry)
    }

    /// Registers `instance` without a TTL: it stays until deregistered. The lease's `ttl` is
    /// `Duration::MAX`.
    ///
    /// # Errors
    ///
    /// [`RegistryError::InvalidInstance`] for an invalid instance.
    pub fn register_static(&self, instance: &Instance) -> Result<Lease, RegistryError> {
        self.insert(instance, None)
    }

    fn insert(&self, instance: &Instance, ttl: Option<Duration>) -> Result<Lease, RegistryError> {
        instance.validate()?;
        let now = Instant::now();
        let mut state = self.inner.lock();
        let key = (instance.service.clone(), instance.addr.clone());
        if let Some(old) = state.by_key.remove(&key) {
            state.leases.remove(&old);
        }
        state.next_lease += 1;
        let id = state.next_lease;
        state.leases.insert(
            id,
            Entry {
                instance: instance.clone(),
                ttl,
                expires: ttl.map(|ttl| deadline_after(now, ttl)),
            },
        );
        state.by_key.insert(key, id);
        state.publish(&instance.service, now);
        drop(state);
        // The reaper may be sleeping past this entry's expiry; a failed send means it is gone.
        let _ = self.inner.nudge.send(());
        Ok(Lease {
            id,
            ttl: ttl.unwrap_or(Duration::MAX),
        })
    }
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        MemoryRegistry::new()
    }
}

impl fmt::Debug for MemoryRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.lock();
        f.debug_struct("MemoryRegistry")
            .field("registrations", &state.leases.len())
            .field("watchers", &state.watchers.len())
            .finish()
    }
}

impl Registry for MemoryRegistry {
    fn register(&self, instance: &Instance, ttl: Duration) -> Result<Lease, RegistryError> {
        check_ttl(ttl)?;
        self.insert(instance, Some(ttl))
    }

    fn renew(&self, lease: Lease) -> Result<(), RegistryError> {
        let now = Instant::now();
        let mut state = self.inner.lock();
        match state.leases.get_mut(&lease.id) {
            Some(entry) if !entry.is_expired(now) => {
                entry.expires = entry.ttl.map(|ttl| deadline_after(now, ttl));
                Ok(())
            }
            _ => Err(RegistryError::LeaseNotFound { lease: lease.id }),
        }
    }

    fn deregister(&self, lease: Lease) -> Result<(), RegistryError> {
        let now = Instant::now();
        let mut state = self.inner.lock();
        let Some(entry) = state.remove(lease.id) else {
            return Err(RegistryError::LeaseNotFound { lease: lease.id });
        };
        // Expired but not yet reaped, it is gone now, and the reaper will not find it: its
        // watchers hear of it here either way.
        state.publish(&entry.instance.service, now);
        if entry.is_expired(now) {
            return Err(RegistryError::LeaseNotFound { lease: lease.id });
        }
        Ok(())
    }

    fn list(&self, service: &str) -> Result<Vec<Instance>, RegistryError> {
        Ok(self.inner.lock().live(service, Instant::now()))
    }

    fn watch(&self, service: &str) -> Result<Watcher, RegistryError> {
        let mut state = self.inner.lock();
        let slot = WatchSlot::new(state.live(service, Instant::now()));
        state.watchers.retain(|(_, slot)| slot.has_watcher());
        state.watchers.push((service.to_owned(), Arc::clone(&slot)));
        Ok(Watcher::new(slot))
    }
}

/// What the clones of one registry share.
struct Inner {
    /// Guards every registration and watcher.
    state: Mutex<State>,
    /// Wakes the reaper to recompute its next expiry; dropped with `Inner`, which stops it.
    nudge: Sender<()>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation of `State` completes under the lock without calling user code, so a
        // poisoned lock still guards consistent data.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for (_, slot) in &self.lock().watchers {
            slot.close();
        }
    }
}

#[derive(Default)]
struct State {
    next_lease: u64,
    leases: HashMap<u64, Entry>,
    /// The lease of each (service, addr) pair, so registering it again replaces it.
    by_key: HashMap<(String, String), u64>,
    watchers: Vec<(String, Arc<WatchSlot>)>,
}

impl State {
    fn live(&self, service: &str, now: Instant) -> Vec<Instance> {
        let mut live: Vec<Instance> = self
            .leases
            .values()
            .filter(|entry| entry.instance.service == service && !entry.is_expired(now))
            .map(|entry| entry.instance.clone())
            .collect();
        live.sort();
        live
    }

    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.leases.remove(&id)?;
        let key = (entry.instance.service.clone(), entry.instance.addr.clone());
        if self.by_key.get(&key) == Some(&id) {
            self.by_key.remove(&key);
        }
        Some(entry)
    }

    /// Sends the live instances of `service` to its watchers, dropping watchers nobody reads.
    fn publish(&mut self, service: &str, now: Instant) {
        self.watchers.retain(|(_, slot)| slot.has_watcher());
        let watching = self.watchers.iter().any(|(name, _)| name == service);
        if !watching {
            return;
        }
        let live = self.live(service, now);
        for (_, slot) in self.watchers.iter().filter(|(name, _)| name == service) {
            slot.publish(live.clone());
        }
    }

    /// Removes expired entries, tells their watchers, and returns the next expiry, if any.
    fn expire(&mut self, now: Instant) -> Option<Instant> {
        let expired: Vec<u64> = self
            .leases
            .iter()
            .filter(|(_, entry)| entry.is_expired(now))
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(entry) = self.remove(id) {
                self.publish(&entry.instance.service, now);
            }
        }
        self.leases.values().filter_map(|entry| entry.expires).min()
    }
}

struct Entry {
    instance: Instance,
    /// `None` for a static entry.
    ttl: Option<Duration>,
    expires: Option<Instant>,
}

impl Entry {
    fn is_expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|expires| expires <= now)
    }
}

/// The reaper thread: sleeps until the next expiry (or a nudge), removes what expired.
fn reap(inner: &Weak<Inner>, nudged: &Receiver<()>) {
    loop {
        let next = match inner.upgrade() {
            Some(inner) => inner.lock().expire(Instant::now()),
            None => return,
        };
        let wait = next.map_or(IDLE_RECHECK, |at| {
            at.saturating_duration_since(Instant::now())
        });
        match nudged.recv_timeout(wait) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// How long the reaper sleeps with nothing to expire; a registration nudges it sooner.
const IDLE_RECHECK: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registering_the_same_address_again_replaces_the_entry() {
        let registry = MemoryRegistry::new();
        let first = registry
            .register(&Instance::new("A", "h:1"), Duration::from_secs(5))
            .expect("register");
        let second = registry
            .register(
                &Instance::new("A", "h:1").with_weight(7),
                Duration::from_secs(5),
            )
            .expect("register again");
        assert_ne!(first.id, second.id);
        let listed = registry.list("A").expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].weight, 7);
        assert!(matches!(
            registry.renew(first),
            Err(RegistryError::LeaseNotFound { .. })
        ));
    }

    #[test]
    fn static_entries_never_expire_and_zero_ttl_is_refused() {
        let registry = MemoryRegistry::with_static([Instance::new("A", "h:1")]).expect("static");
        assert_eq!(registry.list("A").expect("list").len(), 1);
        assert!(registry
            .register(&Instance::new("A", "h:2"), Duration::ZERO)
            .is_err());
    }

    #[test]
    fn a_lease_deregistered_after_it_expired_but_before_the_reaper_ran_reaches_the_watchers() {
        // No reaper: it cannot remove the entry (and tell the watchers) first.
        let (registry, _nudged) = MemoryRegistry::unreaped();
        let instance = Instance::new("A", "h:1");
        let lease = registry
            .register(&instance, Duration::from_secs(60))
            .expect("register");
        let mut watcher = registry.watch("A").expect("watch");
        assert_eq!(watcher.current(), vec![instance]);
        // Expired a moment ago.
        registry
            .inner
            .lock()
            .leases
            .get_mut(&lease.id)
            .expect("the entry")
            .expires = Some(Instant::now());
        assert!(matches!(
            registry.deregister(lease),
            Err(RegistryError::LeaseNotFound { .. })
        ));
        let seen = watcher.changed(Duration::from_secs(5)).expect("open");
        assert_eq!(seen, Some(Vec::new()), "the watcher hears it is gone");
    }

    #[test]
    fn dropping_the_registry_closes_its_watchers() {
        let registry = MemoryRegistry::new();
        let mut watcher = registry.watch("A").expect("watch");
        drop(registry);
        assert!(matches!(
            watcher.changed(Duration::from_secs(5)),
            Err(RegistryError::Closed)
        ));
    }
}
