//! `Discovery`: keeps a [`BalancedClient`]'s endpoints equal to the instances a [`Watcher`]
//! reports (a registry's list, or a [`crate::cluster::HealthChecker`]'s healthy list), so
//! clients pick up new and departed servers without a restart.
//!
//! ```text
//!  registry ──changes──► Watcher ──► Discovery thread ──set_endpoints──► BalancedClient
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::cluster::{BalancedClient, Endpoint, Instance, Watcher};

/// A background thread that follows a [`Watcher`] and updates a [`BalancedClient`]. Stops when
/// dropped (or with [`Discovery::stop`]), or when the watcher's registry closes.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use rpc_core::cluster::{BalancedClient, Discovery, Instance, MemoryRegistry, Registry};
///
/// let registry = MemoryRegistry::new();
/// let client = BalancedClient::new(Vec::new());
/// let discovery = Discovery::follow(registry.watch("Arith")?, &client);
/// registry.register(&Instance::new("Arith", "127.0.0.1:9000"), Duration::from_secs(5))?;
/// # let deadline = std::time::Instant::now() + Duration::from_secs(5);
/// # while discovery.updates() == 0 && std::time::Instant::now() < deadline {
/// #     std::thread::sleep(Duration::from_millis(5));
/// # }
/// assert_eq!(client.endpoints()[0].addr, "127.0.0.1:9000");
/// # Ok::<(), rpc_core::cluster::RegistryError>(())
/// ```
#[derive(Debug)]
pub struct Discovery {
    stop: Arc<AtomicBool>,
    updates: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Discovery {
    /// Sets `client`'s endpoints to the watcher's current instances now, then follows every
    /// change on a thread of its own. The thread holds a clone of `client` until it stops.
    pub fn follow(mut watcher: Watcher, client: &BalancedClient) -> Discovery {
        client.set_endpoints(endpoints_of(watcher.current()));
        let stop = Arc::new(AtomicBool::new(false));
        let updates = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, updates, client) = (Arc::clone(&stop), Arc::clone(&updates), client.clone());
            thread::Builder::new()
                .name("netrpc-discovery".to_owned())
                .spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        match watcher.changed(DISCOVERY_STOP_CHECK) {
                            Ok(Some(instances)) => {
                                client.set_endpoints(endpoints_of(instances));
                                updates.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok(None) => {}
                            // The registry is gone (`Closed`): nothing more will come.
                            Err(_) => break,
                        }
                    }
                })
                // Without a thread the endpoints stay as set above; the handle says so.
                .ok()
        };
        Discovery {
            stop,
            updates,
            thread,
        }
    }

    /// How many changes have been applied to the client since [`Discovery::follow`].
    pub fn updates(&self) -> u64 {
        self.updates.load(Ordering::SeqCst)
    }

    /// True while the thread follows the watcher.
    pub fn is_following(&self) -> bool {
        self.thread
            .as_ref()
            .is_some_and(|thread| !thread.is_finished())
    }

    /// Stops following and waits for the thread (at most about [`DISCOVERY_STOP_CHECK`]).
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.halt();
    }
}

impl From<&Instance> for Endpoint {
    fn from(instance: &Instance) -> Self {
        Endpoint {
            addr: instance.addr.clone(),
            weight: instance.weight,
            metadata: instance.metadata.clone(),
        }
    }
}

fn endpoints_of(instances: Vec<Instance>) -> Vec<Endpoint> {
    instances.iter().map(Endpoint::from).collect()
}

/// How often the thread looks at its stop flag while no change arrives.
pub const DISCOVERY_STOP_CHECK: Duration = Duration::from_millis(50);
