//! The simulated network's clock: a heap of events, each due at an instant, run in order by one
//! thread. Owns no network state; [`super::network`] says what each event does.
//!
//! Events due at the same instant run in the order they were scheduled (a counter breaks the
//! tie), so a delay of zero keeps the order of sending. Messages beyond [`MAX_QUEUED_MESSAGES`]
//! are refused (the network counts them as overflowed and the call times out); timers for
//! call deadlines are always accepted, since each client end keeps at most a few.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Instant;

use rpc_transport::Frame;

use crate::error::RpcError;
use crate::sim::end::SimEnd;
use crate::sim::fate::Fate;

/// Something the network does at a given instant.
pub(crate) enum Event {
    /// A request reaches its server (if the path still holds).
    Request {
        end: Arc<SimEnd>,
        server: String,
        server_id: u64,
        frame: Frame,
        fate: Fate,
    },
    /// A reply reaches its client end.
    Reply { end: Arc<SimEnd>, frame: Frame },
    /// A call fails with `error` (its server cannot be reached, say).
    Fail {
        end: Arc<SimEnd>,
        seq: u64,
        error: RpcError,
    },
    /// The end's pending calls' deadlines are checked (for `go` calls); the instant it was
    /// scheduled for.
    Timer(Weak<SimEnd>, Instant),
}

impl Event {
    fn is_message(&self) -> bool {
        !matches!(self, Event::Timer(..))
    }
}

/// The queue of events and the condition variable its thread sleeps on.
pub(crate) struct Scheduler {
    /// Guards the heap and the stop flag; held only to push or pop, never while an event runs.
    queue: Mutex<Queue>,
    wake: Condvar,
}

struct Queue {
    heap: BinaryHeap<Reverse<Entry>>,
    next_order: u64,
    /// Message events in the heap (timers not counted), for the cap.
    messages: usize,
    stopped: bool,
}

/// One scheduled event, ordered by due time, then by scheduling order.
struct Entry {
    at: Instant,
    order: u64,
    event: Event,
}

/// Why an event was not scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// [`MAX_QUEUED_MESSAGES`] messages are already in flight.
    Full,
    /// The network has stopped.
    Stopped,
}

impl Scheduler {
    pub(crate) fn new() -> Self {
        Scheduler {
            queue: Mutex::new(Queue {
                heap: BinaryHeap::new(),
                next_order: 0,
                messages: 0,
                stopped: false,
            }),
            wake: Condvar::new(),
        }
    }

    /// Runs `event` at `at` on the scheduler thread.
    ///
    /// # Errors
    ///
    /// [`Refused`] if the queue is full of messages or the network has stopped.
    pub(crate) fn schedule(&self, at: Instant, event: Event) -> Result<(), Refused> {
        let mut queue = self.lock();
        if queue.stopped {
            return Err(Refused::Stopped);
        }
        if event.is_message() {
            if queue.messages >= MAX_QUEUED_MESSAGES {
                return Err(Refused::Full);
            }
            queue.messages += 1;
        }
        let order = queue.next_order;
        queue.next_order += 1;
        let wakes_earlier = queue.heap.peek().is_none_or(|Reverse(first)| at < first.at);
        queue.heap.push(Reverse(Entry { at, order, event }));
        drop(queue);
        if wakes_earlier {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Runs due events with `handle`, in order, until [`Scheduler::stop`]. Called by the one
    /// scheduler thread.
    pub(crate) fn run(&self, mut handle: impl FnMut(Event)) {
        let mut queue = self.lock();
        loop {
            if queue.stopped {
                return;
            }
            let now = Instant::now();
            let due = match queue.heap.peek() {
                Some(Reverse(first)) if first.at <= now => queue.heap.pop(),
                Some(Reverse(first)) => {
                    let wait = first.at - now;
                    queue = self
                        .wake
                        .wait_timeout(queue, wait)
                        .map(|(guard, _)| guard)
                        .unwrap_or_else(|poisoned| poisoned.into_inner().0);
                    continue;
                }
                None => {
                    queue = self
                        .wake
                        .wait(queue)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    continue;
                }
            };
            if let Some(Reverse(entry)) = due {
                if entry.event.is_message() {
                    queue.messages -= 1;
                }
                drop(queue);
                handle(entry.event);
                queue = self.lock();
            }
        }
    }

    /// Stops the thread and refuses new events; returns the events still queued, so their
    /// calls can be failed.
    pub(crate) fn stop(&self) -> Vec<Event> {
        let mut queue = self.lock();
        queue.stopped = true;
        queue.messages = 0;
        let left = std::mem::take(&mut queue.heap);
        drop(queue);
        self.wake.notify_all();
        left.into_iter().map(|Reverse(entry)| entry.event).collect()
    }

    /// True once stopped.
    pub(crate) fn is_stopped(&self) -> bool {
        self.lock().stopped
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Each update is a push or a pop: a poisoned lock still holds a sound heap.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

/// Most messages (requests, replies, failures) in flight at once on one network: a bound on
/// its memory. Beyond it a message is dropped and counted in `SimStats::overflowed`.
pub const MAX_QUEUED_MESSAGES: usize = 65_536;

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    use rpc_transport::FrameLimits;

    use super::*;
    use crate::pending::PendingCalls;

    fn end() -> Arc<SimEnd> {
        Arc::new(SimEnd {
            name: "end".to_owned(),
            addr: SocketAddr::from(([192, 0, 2, 2], 1)),
            pending: Arc::new(Mutex::new(PendingCalls::with_limit(1))),
            limits: FrameLimits::default(),
            closed: AtomicBool::new(false),
            timers: Mutex::new(std::collections::BTreeSet::new()),
        })
    }

    fn fail(end: &Arc<SimEnd>, seq: u64) -> Event {
        Event::Fail {
            end: Arc::clone(end),
            seq,
            error: RpcError::Shutdown,
        }
    }

    #[test]
    fn events_run_by_due_time_then_in_the_order_they_were_scheduled() {
        let scheduler = Arc::new(Scheduler::new());
        let end = end();
        let now = Instant::now();
        scheduler
            .schedule(now + Duration::from_millis(30), fail(&end, 3))
            .unwrap();
        scheduler.schedule(now, fail(&end, 1)).unwrap();
        scheduler.schedule(now, fail(&end, 2)).unwrap();
        let (seen_tx, seen_rx) = crossbeam_channel::unbounded();
        let running = Arc::clone(&scheduler);
        let thread = std::thread::spawn(move || {
            running.run(|event| {
                if let Event::Fail { seq, .. } = event {
                    let _ = seen_tx.send(seq);
                }
            });
        });
        let wait = Duration::from_secs(5);
        let seen: Vec<u64> = (0..3)
            .map(|_| seen_rx.recv_timeout(wait).unwrap())
            .collect();
        assert_eq!(seen, [1, 2, 3]);
        assert!(scheduler.stop().is_empty());
        thread.join().unwrap();
        assert_eq!(
            scheduler.schedule(now, fail(&end, 4)).err(),
            Some(Refused::Stopped)
        );
    }

    #[test]
    fn messages_beyond_the_cap_are_refused_but_timers_are_not() {
        let scheduler = Scheduler::new();
        let end = end();
        let later = Instant::now() + Duration::from_secs(60);
        for seq in 0..MAX_QUEUED_MESSAGES as u64 {
            scheduler.schedule(later, fail(&end, seq)).unwrap();
        }
        assert_eq!(
            scheduler.schedule(later, fail(&end, 0)).err(),
            Some(Refused::Full)
        );
        let timer = Event::Timer(Arc::downgrade(&end), later);
        assert!(scheduler.schedule(later, timer).is_ok());
        assert_eq!(scheduler.stop().len(), MAX_QUEUED_MESSAGES + 1);
    }
}
