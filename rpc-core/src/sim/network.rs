//! `SimNetwork`: the handle a test holds on a simulated network (labrpc's `Network`): it makes
//! client ends, adds servers, wires and unwires them, sets the conditions, and reads counters.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use crate::client::Client;
use crate::client_builder::ClientBuilder;
use crate::link::Link;
use crate::pending::PendingCalls;
use crate::server::Server;
use crate::sim::end::{SimEnd, SimLink};
use crate::sim::fate::{Fate, SimConditions};
use crate::sim::router::NetShared;
use crate::sim::stats::SimStats;

/// An in-process network of named client ends and named servers, with seeded drops, delays
/// and reordering, disconnects and partitions, and RPC counts (Go: labrpc's `Network`).
///
/// Cheap to clone; clones share the network. Its one scheduler thread stops when the last
/// clone is dropped: calls still pending then fail with `ConnectionLost`, later calls with
/// `Shutdown`. `Send + Sync`: any thread may rewire the network while calls run.
///
/// Ends and servers are known by name. An end is made by the first method that names it
/// ([`SimNetwork::client`], [`SimNetwork::connect`], [`SimNetwork::enable`]), enabled and
/// connected to nothing; a call through it reaches the server it is connected to when the call
/// is made.
///
/// # Examples
///
/// ```
/// use rpc_core::sim::SimNetwork;
/// use rpc_core::{MethodTable, Server, Service};
///
/// struct Doubler;
/// impl Service for Doubler {
///     const NAME: &'static str = "Doubler";
///     fn into_method_table(self) -> MethodTable {
///         let mut table = MethodTable::new();
///         table.add("Double", |n: i64| Ok(n * 2));
///         table
///     }
/// }
///
/// let server = Server::new();
/// server.register(Doubler)?;
/// let net = SimNetwork::new(42)?;
/// net.add_server("server-1", &server);
/// let client = net.client("end-1");
/// net.connect("end-1", "server-1");
/// let doubled: i64 = client.call("Doubler.Double", &21i64)?;
/// assert_eq!(doubled, 42);
/// assert_eq!(net.rpc_count("server-1"), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct SimNetwork {
    running: Arc<Running>,
}

/// The shared state and the scheduler thread, stopped when the last handle goes.
struct Running {
    shared: Arc<NetShared>,
    /// Guards the thread's handle, taken once to join it.
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl SimNetwork {
    /// A reliable network with no ends and no servers, whose every random decision follows
    /// from `seed`.
    ///
    /// # Errors
    ///
    /// The system's error if the scheduler thread cannot be started.
    pub fn new(seed: u64) -> io::Result<SimNetwork> {
        let shared = Arc::new(NetShared::new(seed));
        let net = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name("netrpc-sim-network".to_owned())
            .spawn(move || net.scheduler.run(|event| net.handle(event)))?;
        Ok(SimNetwork {
            running: Arc::new(Running {
                shared,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// The seed the network was made with.
    pub fn seed(&self) -> u64 {
        self.shared().seed
    }

    /// A client whose calls travel through end `end` (labrpc: `MakeEnd`), with default
    /// settings. Typed clients wrap it as they wrap a dialed one (`ArithClient::new(client)`).
    ///
    /// Several clients may share one end: they share its connection, its enabled state and
    /// its message counter. Closing a client leaves the end on the network.
    pub fn client(&self, end: &str) -> Client {
        self.client_with(end, Client::builder())
    }

    /// Like [`SimNetwork::client`], with the settings of `builder` (call timeout, codec,
    /// limits, middleware; the connect timeout means nothing here).
    pub fn client_with(&self, end: &str, builder: ClientBuilder) -> Client {
        let config = builder.into_config();
        let pending = Arc::new(Mutex::new(PendingCalls::with_limit(
            config.max_pending_calls,
        )));
        let shared = self.shared();
        let addr = shared.lock().end_addr(end);
        let sim_end = Arc::new(SimEnd {
            name: end.to_owned(),
            addr,
            pending: Arc::clone(&pending),
            limits: config.limits,
            closed: Default::default(),
            timers: Mutex::new(BTreeSet::new()),
        });
        shared.track(&sim_end);
        let link = SimLink::new(Arc::clone(shared), sim_end);
        Client::with_link(Link::Sim(link), pending, config)
    }

    /// Puts `server` on the network as `name` (labrpc: `AddServer`), replacing a server of that
    /// name: replies of calls the replaced one is still running are lost. The server keeps
    /// serving sockets too, if it does.
    pub fn add_server(&self, name: &str, server: &Server) {
        self.shared()
            .lock()
            .add_server(name, Arc::clone(server.shared()));
    }

    /// Takes server `name` off the network (labrpc: `DeleteServer`): calls to it fail with
    /// `Unreachable`, and replies of calls it is running are lost.
    pub fn delete_server(&self, name: &str) {
        self.shared().lock().delete_server(name);
    }

    /// Connects end `end` to server `server` (labrpc: `Connect`); the server need not be on
    /// the network yet.
    pub fn connect(&self, end: &str, server: &str) {
        self.shared().lock().connect(end, server);
    }

    /// Enables or disables end `end` (labrpc: `Enable`). A call through a disabled end fails
    /// with `Unreachable` after a short delay; a message in flight when it is disabled is lost.
    /// Ends start enabled.
    pub fn enable(&self, end: &str, enabled: bool) {
        self.shared().lock().enable(end, enabled);
    }

    /// Splits the network: an end reaches its server only if both names are in the same
    /// group. Names in no group reach nobody. Replaces any earlier partition.
    pub fn partition(&self, groups: &[&[&str]]) {
        let mut side = HashMap::new();
        for (index, group) in groups.iter().enumerate() {
            for name in group.iter() {
                side.insert((*name).to_owned(), index);
            }
        }
        self.shared().lock().set_partition(Some(side));
    }

    /// Ends the partition: every end reaches its server again.
    pub fn heal(&self) {
        self.shared().lock().set_partition(None);
    }

    /// Makes the network reliable or not (labrpc: `Reliable`); see
    /// [`SimConditions::reliable`].
    pub fn set_reliable(&self, reliable: bool) {
        self.shared().lock().conditions.reliable = reliable;
    }

    /// Sets the chance of dropping each request and each reply while unreliable; see
    /// [`SimConditions::drop_rate`].
    pub fn set_drop_rate(&self, rate: f64) {
        self.shared().lock().conditions.drop_rate = rate;
    }

    /// Long or short waits before an unreachable call fails (labrpc: `LongDelays`).
    pub fn set_long_delays(&self, long: bool) {
        self.shared().lock().conditions.long_delays = long;
    }

    /// Holds back two replies in three, so they overtake each other (labrpc:
    /// `LongReordering`); see [`SimConditions::reorder_delay`].
    pub fn set_long_reordering(&self, reordering: bool) {
        self.shared().lock().conditions.long_reordering = reordering;
    }

    /// Sets every condition at once.
    pub fn set_conditions(&self, conditions: SimConditions) {
        self.shared().lock().conditions = conditions;
    }

    /// The conditions now.
    pub fn conditions(&self) -> SimConditions {
        self.shared().lock().conditions
    }

    /// The fate message `message` of end `end` gets under the conditions now: what the
    /// network will do to that call, decided before it is made.
    pub fn fate(&self, end: &str, message: u64) -> Fate {
        Fate::decide(self.seed(), &self.conditions(), end, message)
    }

    /// Requests that reached server `name` so far (labrpc: `GetCount`), over every server
    /// that had the name.
    pub fn rpc_count(&self, name: &str) -> u64 {
        self.shared().lock().rpc_count(name)
    }

    /// Bytes of every request and reply frame sent into the network (labrpc:
    /// `GetTotalBytes`).
    pub fn total_bytes(&self) -> u64 {
        self.stats().total_bytes
    }

    /// Every counter of the network.
    pub fn stats(&self) -> SimStats {
        self.shared().counters.snapshot()
    }

    fn shared(&self) -> &Arc<NetShared> {
        &self.running.shared
    }
}

impl fmt::Debug for SimNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimNetwork")
            .field("seed", &self.seed())
            .field("conditions", &self.conditions())
            .finish_non_exhaustive()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shared.stop();
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        // A handle dropped by code the scheduler thread runs (a middleware holding one, say)
        // must not join its own thread; that thread ends by itself, the network stopped.
        if let Some(thread) = thread.filter(|t| t.thread().id() != thread::current().id()) {
            // The scheduler thread never panics on purpose; if it did, there is nothing to add.
            let _ = thread.join();
        }
    }
}
