//! Watching a service: a [`Watcher`] holds the latest list of a service's instances and wakes
//! its owner when a registry backend publishes a different one.
//!
//! Only the newest snapshot is kept, never a queue of changes: a slow watcher skips
//! intermediate states but always sees the latest, and memory stays one list per watcher. A
//! backend publishes with `WatchSlot::publish`; it notices a dropped watcher from the slot's
//! reference count and stops feeding it.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rpc_transport::clock::deadline_after;

use super::registry::{Instance, RegistryError};

/// The live instances of one service, kept up to date by a registry backend.
///
/// Go-like use: loop on [`Watcher::changed`] and rebuild your connections from each snapshot.
/// A `Watcher` belongs to one thread at a time (`Send`, not shared); call
/// [`Registry::watch`](super::Registry::watch) again for another.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use rpc_core::cluster::{Instance, MemoryRegistry, Registry};
///
/// let registry = MemoryRegistry::new();
/// let mut watcher = registry.watch("Arith")?;
/// assert!(watcher.current().is_empty());
/// registry.register(&Instance::new("Arith", "127.0.0.1:9000"), Duration::from_secs(5))?;
/// let now = watcher.changed(Duration::from_secs(1))?.expect("the registration is seen");
/// assert_eq!(now[0].addr, "127.0.0.1:9000");
/// # Ok::<(), rpc_core::cluster::RegistryError>(())
/// ```
#[derive(Debug)]
pub struct Watcher {
    slot: Arc<WatchSlot>,
    /// The snapshot version this watcher last returned.
    seen: u64,
}

impl Watcher {
    /// A watcher reading `slot`, starting from its current snapshot.
    pub(crate) fn new(slot: Arc<WatchSlot>) -> Self {
        let seen = slot.lock().version;
        Watcher { slot, seen }
    }

    /// The latest snapshot, sorted by address; marks it as seen.
    pub fn current(&mut self) -> Vec<Instance> {
        let state = self.slot.lock();
        self.seen = state.version;
        state.instances.clone()
    }

    /// Waits up to `timeout` for a snapshot different from the last one this watcher returned,
    /// and returns it; `Ok(None)` if nothing changed in time. `Duration::MAX` waits without
    /// limit.
    ///
    /// # Errors
    ///
    /// [`RegistryError::Closed`] once the registry behind it is gone (after any change not yet
    /// returned has been returned).
    pub fn changed(&mut self, timeout: Duration) -> Result<Option<Vec<Instance>>, RegistryError> {
        let deadline = deadline_after(Instant::now(), timeout);
        let mut state = self.slot.lock();
        loop {
            if state.version != self.seen {
                self.seen = state.version;
                return Ok(Some(state.instances.clone()));
            }
            if state.closed {
                return Err(RegistryError::Closed);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            state = self
                .slot
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// True once the registry behind this watcher has stopped feeding it.
    pub fn is_closed(&self) -> bool {
        self.slot.lock().closed
    }
}

/// The shared cell between one watcher and the backend feeding it.
#[derive(Debug)]
pub(crate) struct WatchSlot {
    /// Guards the latest snapshot, its version and the closed flag.
    state: Mutex<SlotState>,
    /// Signalled on every new snapshot and on close.
    changed: Condvar,
}

#[derive(Debug)]
struct SlotState {
    version: u64,
    instances: Vec<Instance>,
    closed: bool,
}

impl WatchSlot {
    /// A slot holding `instances` as its first snapshot.
    pub(crate) fn new(mut instances: Vec<Instance>) -> Arc<Self> {
        instances.sort();
        Arc::new(WatchSlot {
            state: Mutex::new(SlotState {
                version: 0,
                instances,
                closed: false,
            }),
            changed: Condvar::new(),
        })
    }

    /// Replaces the snapshot and wakes the watcher, unless `instances` equals the current one;
    /// true if it was different.
    pub(crate) fn publish(&self, mut instances: Vec<Instance>) -> bool {
        instances.sort();
        let mut state = self.lock();
        if state.instances == instances {
            return false;
        }
        state.instances = instances;
        state.version += 1;
        self.changed.notify_all();
        true
    }

    /// Marks the slot closed: its watcher's next wait returns [`RegistryError::Closed`].
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// True while a [`Watcher`] still reads this slot (the backend holds the only other
    /// reference).
    pub(crate) fn has_watcher(self: &Arc<Self>) -> bool {
        Arc::strong_count(self) > 1
    }

    fn lock(&self) -> MutexGuard<'_, SlotState> {
        // A panic while holding this lock cannot leave the state half-written: every write is
        // a single assignment, so the data is usable after a poison.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_equal_snapshot_is_not_a_change() {
        let slot = WatchSlot::new(vec![Instance::new("A", "h:1")]);
        let mut watcher = Watcher::new(Arc::clone(&slot));
        slot.publish(vec![Instance::new("A", "h:1")]);
        assert_eq!(watcher.changed(Duration::ZERO).expect("open"), None);
        slot.publish(vec![Instance::new("A", "h:2"), Instance::new("A", "h:1")]);
        let seen = watcher
            .changed(Duration::ZERO)
            .expect("open")
            .expect("a change");
        assert_eq!(seen[0].addr, "h:1", "snapshots are sorted by address");
    }

    #[test]
    fn a_closed_slot_ends_the_watch_after_the_last_change() {
        let slot = WatchSlot::new(Vec::new());
        let mut watcher = Watcher::new(Arc::clone(&slot));
        assert!(slot.has_watcher());
        slot.publish(vec![Instance::new("A", "h:1")]);
        slot.close();
        assert!(watcher
            .changed(Duration::ZERO)
            .expect("change first")
            .is_some());
        assert!(matches!(
            watcher.changed(Duration::MAX),
            Err(RegistryError::Closed)
        ));
        drop(watcher);
        assert!(!slot.has_watcher());
    }
}
