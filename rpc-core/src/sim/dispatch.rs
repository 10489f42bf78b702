//! The server side of the simulated network: a delivered request is dispatched as a socket
//! connection would dispatch it ([`crate::server_conn`]'s `lookup` and `run_call`): the
//! server's services, codecs, middleware (with the call's [`crate::middleware::CallContext`])
//! and worker pool, and its per-error counters. The reply goes back through the network.
//!
//! The server's cap on calls in flight (`max_calls`) applies as over sockets. Not applied:
//! the caps of a connection (calls in flight per connection, queued bytes), which belong to
//! sockets; and cancel frames, which the simulated end does not send. Every method
//! runs on the worker pool, inline services too (the scheduler thread must not run handlers).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use rpc_transport::Frame;

use crate::error_body::ErrorCode;
use crate::middleware::CallContext;
use crate::server_conn::{
    deadline_passed, encode_error, lookup, run_call, Found, ServerJob, DEADLINE_PASSED,
    TOO_MANY_CALLS,
};
use crate::sim::end::SimEnd;
use crate::sim::fate::Fate;
use crate::sim::router::{NetShared, ServerEntry};

/// Dispatches `request` from `end` to `server`; the reply (or the error a lookup gives) is sent
/// back under `fate`.
pub(crate) fn deliver_request(
    net: &Arc<NetShared>,
    end: Arc<SimEnd>,
    server: &ServerEntry,
    request: Frame,
    fate: Fate,
) {
    let seq = request.seq;
    let shared = Arc::clone(&server.shared);
    let Found {
        codec,
        handler,
        counters,
        ..
    } = match lookup(&shared, &request) {
        Ok(found) => found,
        Err(err) => {
            shared.stats.count_call_error(err.code);
            let reply = encode_error(seq, err.code, &err.message);
            return net.send_reply(end, server.id, &reply, fate, seq);
        }
    };
    if !shared.admit_call() {
        let code = ErrorCode::Throttled;
        shared.stats.count_call_error(code);
        let reply = encode_error(seq, code, TOO_MANY_CALLS);
        return net.send_reply(end, server.id, &reply, fate, seq);
    }
    let net = Arc::clone(net);
    let server_id = server.id;
    let received = Instant::now();
    let pool = shared.pool.clone();
    pool.execute(ServerJob::Boxed(Box::new(move || {
        let (reply, failure) = if deadline_passed(&request, received) {
            let code = ErrorCode::DeadlineExceeded;
            (encode_error(seq, code, DEADLINE_PASSED), Some(code))
        } else {
            let context = CallContext::new(
                request.name.clone(),
                request.metadata.clone(),
                end.addr,
                seq,
                received,
            );
            let limits = shared.config.limits;
            run_call(&shared, &handler, codec, &request, context, &limits)
        };
        if let Some(code) = failure {
            shared.stats.count_call_error(code);
        }
        counters.count(failure.is_some());
        shared.stats.in_flight_calls.fetch_sub(1, Ordering::SeqCst);
        net.send_reply(end, server_id, &reply, fate, seq);
    })));
}
