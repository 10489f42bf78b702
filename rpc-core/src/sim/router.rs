//! The simulated network's state and routing: which end reaches which server, the fate of
//! each message, and what each scheduled event does when it comes due.
//!
//! A request's path is checked twice: when it is sent (a broken path fails the call with
//! `Unreachable` after the fate's short delay) and when it arrives (a path broken meanwhile
//! loses it, and the caller times out). A reply's path is checked when the server sends it.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

use bytes::BytesMut;
use rpc_transport::{Frame, FrameKind, TransportError};

use crate::client_conn::{end_calls, expire_calls, fail_call, handle_reply_frame};
use crate::error::RpcError;
use crate::pending::Ended;
use crate::server::ServerShared;
use crate::sim::dispatch::deliver_request;
use crate::sim::end::{decode_one, SimEnd};
use crate::sim::fate::{Fate, SimConditions};
use crate::sim::scheduler::{Event, Refused, Scheduler};
use crate::sim::stats::SimCounters;

/// Everything the network's handles, client ends, scheduler thread and server workers share.
pub(crate) struct NetShared {
    pub(crate) seed: u64,
    /// Guards the topology and the conditions; held briefly, never while a handler runs.
    pub(crate) state: Mutex<NetState>,
    pub(crate) counters: SimCounters,
    pub(crate) scheduler: Scheduler,
    /// Every client end made so far, to fail their calls when the network stops.
    links: Mutex<Vec<Weak<SimEnd>>>,
}

/// The network's topology and conditions.
pub(crate) struct NetState {
    pub(crate) conditions: SimConditions,
    ends: HashMap<String, EndRecord>,
    servers: HashMap<String, ServerEntry>,
    /// Group of each name while partitioned: an end reaches a server only in the same group.
    partition: Option<HashMap<String, usize>>,
    rpc_counts: HashMap<String, u64>,
    /// Numbers the ends and servers as they are made; never reused.
    next_id: u64,
}

/// An end's place in the network, shared by every client attached to it.
struct EndRecord {
    enabled: bool,
    server: Option<String>,
    /// Index of the next request sent through the end: the message's identity.
    next_message: u64,
    addr: SocketAddr,
}

/// A server on the network. Its id tells a replacement under the same name apart.
#[derive(Clone)]
pub(crate) struct ServerEntry {
    pub(crate) id: u64,
    pub(crate) shared: Arc<ServerShared>,
    addr: SocketAddr,
}

impl NetShared {
    pub(crate) fn new(seed: u64) -> Self {
        NetShared {
            seed,
            state: Mutex::new(NetState {
                conditions: SimConditions::default(),
                ends: HashMap::new(),
                servers: HashMap::new(),
                partition: None,
                rpc_counts: HashMap::new(),
                next_id: 1,
            }),
            counters: SimCounters::default(),
            scheduler: Scheduler::new(),
            links: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, NetState> {
        // Every update is a single map or field write: a poisoned lock still holds sound state.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Remembers a new client end, so [`NetShared::stop`] can fail its calls.
    pub(crate) fn track(&self, end: &Arc<SimEnd>) {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        links.retain(|link| link.strong_count() > 0);
        links.push(Arc::downgrade(end));
    }

    /// Sends a frame from `end`: a request meets its fate; other kinds (pings, cancels) are
    /// ignored.
    ///
    /// # Errors
    ///
    /// [`TransportError::Closed`] once the network has stopped.
    pub(crate) fn send_request(
        &self,
        end: &Arc<SimEnd>,
        frame: Frame,
    ) -> Result<(), TransportError> {
        if frame.kind != FrameKind::Request {
            return match self.scheduler.is_stopped() {
                true => Err(TransportError::Closed),
                false => Ok(()),
            };
        }
        let now = Instant::now();
        let (fate, route) = {
            let mut state = self.lock();
            let conditions = state.conditions;
            let record = state.end_record(&end.name);
            let message = record.next_message;
            record.next_message += 1;
            let fate = Fate::decide(self.seed, &conditions, &end.name, message);
            (fate, state.route(&end.name))
        };
        SimCounters::bump(&self.counters.requests_sent);
        self.counters.add_bytes(frame.encoded_len());
        let seq = frame.seq;
        let (at, event) = match route {
            Err(error) => {
                SimCounters::bump(&self.counters.unreachable);
                let end = Arc::clone(end);
                (
                    now + fate.unreachable_delay,
                    Event::Fail { end, seq, error },
                )
            }
            Ok(_) if fate.request_dropped => {
                SimCounters::bump(&self.counters.requests_dropped);
                return Ok(());
            }
            Ok((server, entry)) => {
                let end = Arc::clone(end);
                let server_id = entry.id;
                let request = Event::Request {
                    end,
                    server,
                    server_id,
                    frame,
                    fate,
                };
                (now + fate.request_delay, request)
            }
        };
        match self.scheduler.schedule(at, event) {
            Ok(()) => Ok(()),
            Err(Refused::Full) => {
                SimCounters::bump(&self.counters.overflowed);
                Ok(())
            }
            Err(Refused::Stopped) => Err(TransportError::Closed),
        }
    }

    /// Sends `reply` (an encoded frame answering call `seq`) from server `server_id` back to
    /// `end`, if the path still holds and the fate lets it through.
    pub(crate) fn send_reply(
        &self,
        end: Arc<SimEnd>,
        server_id: u64,
        reply: &BytesMut,
        fate: Fate,
        seq: u64,
    ) {
        SimCounters::bump(&self.counters.replies_sent);
        self.counters.add_bytes(reply.len());
        let path_holds =
            matches!(self.lock().route(&end.name), Ok((_, entry)) if entry.id == server_id);
        if !path_holds {
            SimCounters::bump(&self.counters.lost_in_flight);
            return;
        }
        if fate.reply_dropped {
            SimCounters::bump(&self.counters.replies_dropped);
            return;
        }
        let event = match decode_one(reply, &end.limits) {
            Ok(frame) => Event::Reply { end, frame },
            Err(err) => Event::Fail {
                end,
                seq,
                error: err.into(),
            },
        };
        if self
            .scheduler
            .schedule(Instant::now() + fate.reply_delay, event)
            == Err(Refused::Full)
        {
            SimCounters::bump(&self.counters.overflowed);
        }
    }

    /// Does what a due event says. Runs on the scheduler thread.
    pub(crate) fn handle(self: &Arc<Self>, event: Event) {
        match event {
            Event::Request {
                end,
                server,
                server_id,
                frame,
                fate,
            } => {
                let entry = {
                    let mut state = self.lock();
                    match state.route(&end.name) {
                        Ok((_, entry)) if entry.id == server_id => {
                            *state.rpc_counts.entry(server).or_insert(0) += 1;
                            Some(entry)
                        }
                        _ => None,
                    }
                };
                let Some(entry) = entry else {
                    SimCounters::bump(&self.counters.lost_in_flight);
                    return;
                };
                SimCounters::bump(&self.counters.requests_delivered);
                deliver_request(self, end, &entry, frame, fate);
            }
            Event::Reply { end, frame } => {
                SimCounters::bump(&self.counters.replies_delivered);
                if !end.is_closed() {
                    // A simulated server sends no pings, so there is never an answer to send.
                    let _ = handle_reply_frame(&end.pending, frame);
                }
            }
            Event::Fail { end, seq, error } => fail_call(&end.pending, seq, error),
            Event::Timer(end, at) => {
                let Some(end) = end.upgrade() else { return };
                end.timers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&at);
                // Cancels are advisory and the simulated server ignores them: none is sent.
                if let Some(next) = expire_calls(&end.pending, Instant::now(), |_| {}) {
                    self.arm_timer(&end, next);
                }
            }
        }
    }

    /// Makes sure `end`'s deadlines are checked at `at` or earlier.
    pub(crate) fn arm_timer(&self, end: &Arc<SimEnd>, at: Instant) {
        {
            let mut timers = end.timers.lock().unwrap_or_else(|p| p.into_inner());
            if timers.first().is_some_and(|earliest| *earliest <= at) {
                return;
            }
            timers.insert(at);
        }
        // Refused only once stopped, when every pending call has been failed already.
        let _ = self
            .scheduler
            .schedule(at, Event::Timer(Arc::downgrade(end), at));
    }

    /// The made-up address of the server `end` is connected to; `0.0.0.0:0` if none.
    pub(crate) fn server_addr_of(&self, end: &str) -> SocketAddr {
        let state = self.lock();
        state
            .ends
            .get(end)
            .and_then(|record| record.server.as_ref())
            .and_then(|server| state.servers.get(server))
            .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |entry| entry.addr)
    }

    /// Stops the scheduler and fails every call still pending on any end with
    /// `ConnectionLost`: the network is gone.
    pub(crate) fn stop(&self) {
        drop(self.scheduler.stop());
        let links: Vec<Weak<SimEnd>> = {
            let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut *links)
        };
        for end in links.iter().filter_map(Weak::upgrade) {
            let lost = RpcError::ConnectionLost {
                cause: Some(TransportError::Closed),
            };
            end_calls(&end.pending, Ended::Lost(lost));
        }
    }
}

impl NetState {
    /// The record of end `name`, made (enabled, connected to nothing) if new.
    fn end_record(&mut self, name: &str) -> &mut EndRecord {
        if !self.ends.contains_key(name) {
            let addr = made_up_addr(END_HOSTS, self.take_id());
            let record = EndRecord {
                enabled: true,
                server: None,
                next_message: 0,
                addr,
            };
            self.ends.insert(name.to_owned(), record);
        }
        // Inserted just above if it was missing.
        self.ends.get_mut(name).expect("inserted above")
    }

    /// The made-up address of end `name` (made if new).
    pub(crate) fn end_addr(&mut self, name: &str) -> SocketAddr {
        self.end_record(name).addr
    }

    pub(crate) fn connect(&mut self, end: &str, server: &str) {
        self.end_record(end).server = Some(server.to_owned());
    }

    pub(crate) fn enable(&mut self, end: &str, enabled: bool) {
        self.end_record(end).enabled = enabled;
    }

    /// Puts `shared` on the network as `name`, replacing a server of that name.
    pub(crate) fn add_server(&mut self, name: &str, shared: Arc<ServerShared>) {
        let id = self.take_id();
        let entry = ServerEntry {
            id,
            shared,
            addr: made_up_addr(SERVER_HOSTS, id),
        };
        self.servers.insert(name.to_owned(), entry);
    }

    pub(crate) fn delete_server(&mut self, name: &str) {
        self.servers.remove(name);
    }

    pub(crate) fn set_partition(&mut self, groups: Option<HashMap<String, usize>>) {
        self.partition = groups;
    }

    pub(crate) fn rpc_count(&self, server: &str) -> u64 {
        self.rpc_counts.get(server).copied().unwrap_or(0)
    }

    /// The server `end` reaches now, or the typed error a call to it fails with.
    fn route(&self, end: &str) -> Result<(String, ServerEntry), RpcError> {
        let record = self.ends.get(end);
        let server = record.and_then(|record| record.server.clone());
        let shown = server.as_deref().unwrap_or("(none)").to_owned();
        let unreachable = |why: &str| RpcError::Unreachable {
            addr: format!("simulated server `{shown}`"),
            source: Arc::new(io::Error::new(
                io::ErrorKind::NotConnected,
                format!("end `{end}` {why}"),
            )),
        };
        let Some(record) = record else {
            return Err(unreachable("is connected to no server"));
        };
        if !record.enabled {
            return Err(unreachable("is disabled"));
        }
        let Some(server) = server else {
            return Err(unreachable("is connected to no server"));
        };
        let Some(entry) = self.servers.get(&server) else {
            return Err(unreachable("is connected to a server not on the network"));
        };
        if let Some(groups) = &self.partition {
            let same_side = matches!(
                (groups.get(end), groups.get(&server)),
                (Some(a), Some(b)) if a == b
            );
            if !same_side {
                return Err(unreachable("is partitioned from its server"));
            }
        }
        Ok((server, entry.clone()))
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }
}

/// The documentation network servers' made-up addresses are in (TEST-NET-2).
const SERVER_HOSTS: [u8; 3] = [198, 51, 100];

/// The documentation network client ends' made-up addresses are in (TEST-NET-3).
const END_HOSTS: [u8; 3] = [203, 0, 113];

/// The address numbered `id` (from 1) in `network`, a /24 reserved for documentation (so
/// never a real peer): hosts 1 to 254 and ports 1 to 65,535 number 16.6 million ends or
/// servers before an address repeats (the ids, which tell a replaced server apart, never
/// do).
fn made_up_addr(network: [u8; 3], id: u64) -> SocketAddr {
    const PORTS: u64 = 65_535;
    const HOSTS: u64 = 254;
    let n = id.saturating_sub(1);
    let host = u8::try_from(1 + (n / PORTS) % HOSTS).unwrap_or(1);
    let port = u16::try_from(1 + n % PORTS).unwrap_or(1);
    let [a, b, c] = network;
    SocketAddr::from(([a, b, c, host], port))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn a_far_deadline_is_queued_once_however_many_near_checks_come_and_go() {
        // A `go` call with a long timeout stays pending while short calls come and go:
        // each short call's check ran, found the far deadline next, and queued it again.
        let net = Arc::new(NetShared::new(1));
        let end = Arc::new(SimEnd {
            name: "end".to_owned(),
            addr: made_up_addr(END_HOSTS, 1),
            pending: Arc::new(Mutex::new(crate::pending::PendingCalls::with_limit(1))),
            limits: rpc_transport::FrameLimits::default(),
            closed: std::sync::atomic::AtomicBool::new(false),
            timers: Mutex::new(std::collections::BTreeSet::new()),
        });
        let now = Instant::now();
        let far = now + std::time::Duration::from_secs(3600);
        net.arm_timer(&end, far);
        for short in 1..=1_000 {
            let near = now + std::time::Duration::from_millis(short);
            net.arm_timer(&end, near);
            // The near check runs (no call is due), and the far deadline is armed again,
            // as the check does when it finds it next.
            net.handle(Event::Timer(Arc::downgrade(&end), near));
            net.arm_timer(&end, far);
        }
        // (The near checks stay queued too: no scheduler thread runs here to pop them.)
        let far_checks = net
            .scheduler
            .stop()
            .into_iter()
            .filter(|event| matches!(event, Event::Timer(_, at) if *at == far))
            .count();
        assert_eq!(far_checks, 1, "the far check is queued once");
    }

    #[test]
    fn made_up_addresses_do_not_repeat_past_sixty_five_thousand_ends() {
        // The labrpc habit: one end with a fresh random name per clerk, for ever. Ids were
        // 16 bits once, and the 65,536th end (or a replacement server) took an old one's.
        const ENDS: usize = 70_000;
        let net = NetShared::new(1);
        let mut state = net.state.lock().expect("not poisoned");
        let addrs: HashSet<SocketAddr> = (0..ENDS)
            .map(|end| state.end_addr(&format!("end-{end}")))
            .collect();
        assert_eq!(addrs.len(), ENDS);
        for addr in &addrs {
            let SocketAddr::V4(addr) = addr else {
                panic!("{addr}")
            };
            let [a, b, c, host] = addr.ip().octets();
            assert_eq!([a, b, c], END_HOSTS);
            assert!((1..=254).contains(&host) && addr.port() != 0, "{addr}");
        }
    }
}
