//! The jsonrpc client's pending calls: each by id, with its method, deadline and the closure
//! that completes it. Completions run outside the table's lock.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::RpcError;

use super::message::Response;

/// Completes one call with the reply's bytes (the `result` member) or its error.
pub(crate) type Completer = Box<dyn FnOnce(Result<&[u8], RpcError>) + Send>;

/// A call sent and not yet completed.
pub(crate) struct PendingCall {
    /// `Service.Method`, for the unknown-service and unknown-method errors.
    pub(crate) method: String,
    /// When the reader fails it with a timeout (a `go` call's only deadline).
    pub(crate) deadline: Instant,
    pub(crate) timeout: Duration,
    pub(crate) complete: Completer,
}

/// The calls of one client, bounded by a limit.
pub(crate) struct PendingCalls {
    /// Guards the table and whether the connection has ended.
    state: Mutex<State>,
    max_calls: usize,
}

struct State {
    calls: HashMap<u64, PendingCall>,
    /// The connection has ended: nothing more is added.
    ended: bool,
}

impl PendingCalls {
    /// An empty table holding at most `max_calls`.
    pub(crate) fn new(max_calls: usize) -> Self {
        PendingCalls {
            state: Mutex::new(State {
                calls: HashMap::new(),
                ended: false,
            }),
            max_calls,
        }
    }

    /// Adds call `id`.
    ///
    /// # Errors
    ///
    /// [`RpcError::Shutdown`] once the connection has ended; [`RpcError::Throttled`] at the
    /// limit.
    pub(crate) fn insert(&self, id: u64, call: PendingCall) -> Result<(), RpcError> {
        let mut state = self.lock();
        if state.ended {
            return Err(RpcError::Shutdown);
        }
        if state.calls.len() >= self.max_calls {
            return Err(RpcError::Throttled);
        }
        state.calls.insert(id, call);
        Ok(())
    }

    /// Takes call `id` out without completing it.
    pub(crate) fn remove(&self, id: u64) -> Option<PendingCall> {
        self.lock().calls.remove(&id)
    }

    /// True if call `id` is pending and its deadline, `now`, has not passed: its request is
    /// still worth sending. (A call past its deadline is failed by its caller or the
    /// reader's next sweep; the server must not run it meanwhile.)
    pub(crate) fn is_waiting(&self, id: u64, now: Instant) -> bool {
        self.lock()
            .calls
            .get(&id)
            .is_some_and(|call| call.deadline > now)
    }

    /// Calls pending now.
    pub(crate) fn len(&self) -> usize {
        self.lock().calls.len()
    }

    /// True once [`PendingCalls::end`] has run.
    pub(crate) fn is_ended(&self) -> bool {
        self.lock().ended
    }

    /// Completes the call `response` answers; false if none is pending under its id.
    pub(crate) fn complete(&self, response: &Response<'_>) -> bool {
        let Some(call) = self.remove(response.id) else {
            return false;
        };
        let outcome = match &response.error {
            Some(text) => Err(error_from_text(text, &call.method)),
            None => Ok(response.result),
        };
        (call.complete)(outcome);
        true
    }

    /// Fails every call whose deadline is at or before `now` with a timeout.
    pub(crate) fn fail_expired(&self, now: Instant) {
        let expired: Vec<PendingCall> = {
            let mut state = self.lock();
            let ids: Vec<u64> = state
                .calls
                .iter()
                .filter(|(_, call)| call.deadline <= now)
                .map(|(id, _)| *id)
                .collect();
            ids.iter().filter_map(|id| state.calls.remove(id)).collect()
        };
        for call in expired {
            (call.complete)(Err(RpcError::Timeout {
                after: call.timeout,
            }));
        }
    }

    /// Marks the connection ended and fails every pending call with `error()`.
    pub(crate) fn end(&self, error: impl Fn() -> RpcError) {
        let calls = {
            let mut state = self.lock();
            state.ended = true;
            std::mem::take(&mut state.calls)
        };
        for call in calls.into_values() {
            (call.complete)(Err(error()));
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Single map operations: a poisoned lock still holds a sound table.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The error for a server's error text: Go's unknown service and method texts get their
/// own variants; every other text is the method's own error.
pub(crate) fn error_from_text(text: &str, method: &str) -> RpcError {
    let name = method.to_owned();
    if text.starts_with("rpc: can't find service ") {
        RpcError::UnknownService { name }
    } else if text.starts_with("rpc: can't find method ") {
        RpcError::UnknownMethod { name }
    } else {
        RpcError::Method {
            message: text.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::Receiver;

    fn pending(
        method: &str,
        deadline: Instant,
    ) -> (PendingCall, Receiver<Result<Vec<u8>, RpcError>>) {
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        let call = PendingCall {
            method: method.to_owned(),
            deadline,
            timeout: Duration::from_millis(5),
            complete: Box::new(move |outcome| {
                let _ = done_tx.send(outcome.map(<[u8]>::to_vec));
            }),
        };
        (call, done_rx)
    }

    #[test]
    fn go_error_texts_map_to_typed_errors() {
        assert!(matches!(
            error_from_text("rpc: can't find service Nope.Foo", "Nope.Foo"),
            RpcError::UnknownService { name } if name == "Nope.Foo"
        ));
        assert!(matches!(
            error_from_text("rpc: can't find method Arith.Foo", "Arith.Foo"),
            RpcError::UnknownMethod { name } if name == "Arith.Foo"
        ));
        assert!(matches!(
            error_from_text("divide by zero", "Arith.Divide"),
            RpcError::Method { message } if message == "divide by zero"
        ));
    }

    #[test]
    fn responses_complete_their_call_once_and_the_end_fails_the_rest() {
        let table = PendingCalls::new(2);
        let far = Instant::now() + Duration::from_secs(60);
        let (first, first_rx) = pending("Arith.Sum", far);
        let (second, second_rx) = pending("Arith.Sum", far);
        let (third, _) = pending("Arith.Sum", far);
        table.insert(1, first).unwrap();
        table.insert(2, second).unwrap();
        assert!(matches!(table.insert(3, third), Err(RpcError::Throttled)));
        let response = Response {
            id: 1,
            error: None,
            result: b"15",
        };
        assert!(table.complete(&response));
        assert!(
            !table.complete(&response),
            "a second reply is not delivered"
        );
        assert_eq!(first_rx.try_recv().unwrap().unwrap(), b"15");
        table.end(|| RpcError::Shutdown);
        assert!(matches!(
            second_rx.try_recv().unwrap(),
            Err(RpcError::Shutdown)
        ));
        let (late, _) = pending("Arith.Sum", far);
        assert!(matches!(table.insert(4, late), Err(RpcError::Shutdown)));
        assert!(table.is_ended());
    }

    #[test]
    fn expired_calls_fail_with_their_timeout() {
        let table = PendingCalls::new(10);
        let now = Instant::now();
        let (expired, expired_rx) = pending("A.B", now);
        let (alive, alive_rx) = pending("A.B", now + Duration::from_secs(60));
        table.insert(1, expired).unwrap();
        table.insert(2, alive).unwrap();
        table.fail_expired(now);
        assert!(matches!(
            expired_rx.try_recv().unwrap(),
            Err(RpcError::Timeout { .. })
        ));
        assert!(alive_rx.try_recv().is_err());
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn a_call_waits_until_its_deadline_or_its_removal() {
        let table = PendingCalls::new(10);
        let now = Instant::now();
        let (call, _rx) = pending("A.B", now + Duration::from_secs(1));
        table.insert(1, call).unwrap();
        assert!(table.is_waiting(1, now));
        assert!(
            !table.is_waiting(1, now + Duration::from_secs(1)),
            "deadline passed"
        );
        table.remove(1);
        assert!(!table.is_waiting(1, now), "removed (timed out)");
    }
}
