//! Services as the server sees them: a name and a table from method names to handlers.
//!
//! Each entry of a [`MethodTable`] is one monomorphic closure that decodes the argument,
//! calls the method and encodes the reply: no reflection, no `Any`. The [`crate::service!`]
//! macro writes the table for you; writing one by hand works the same way.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use rpc_codec::{Codec, CodecKind};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error_body::ErrorCode;

/// A method's own error: the text travels back to the caller as [`crate::RpcError::Method`]
/// (Go: a method's returned `error`, seen by the client as `ServerError`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceError {
    message: String,
}

impl ServiceError {
    /// An error with `message` as its text.
    pub fn new(message: impl fmt::Display) -> Self {
        ServiceError {
            message: message.to_string(),
        }
    }

    /// The error's text.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ServiceError {}

impl From<&str> for ServiceError {
    fn from(message: &str) -> Self {
        ServiceError::new(message)
    }
}

impl From<String> for ServiceError {
    fn from(message: String) -> Self {
        ServiceError { message }
    }
}

/// A failure inside dispatch, on its way to becoming an error frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatchError {
    /// The wire code.
    pub code: ErrorCode,
    /// The message for the caller.
    pub message: String,
}

impl DispatchError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        DispatchError {
            code,
            message: message.into(),
        }
    }
}

/// One method's handler: decodes the argument from `body` in `codec`, runs the method, and
/// appends the encoded reply to `reply`.
pub type MethodHandler =
    Arc<dyn Fn(CodecKind, &[u8], &mut BytesMut) -> Result<(), DispatchError> + Send + Sync>;

/// Where a service's handlers run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Dispatch {
    /// On the server's worker pool (the default): a handler may block or take long without
    /// holding up anyone else.
    #[default]
    Pool,
    /// On the event-loop thread that read the request, with no thread hop; replies to a
    /// burst of requests leave in one write. Fastest for short methods, but a handler that
    /// blocks or runs long stalls every connection of that loop: opt in only for methods
    /// that do a little computation and never wait.
    Inline,
}

/// The methods of one service, by method name (the part after the dot).
///
/// Each method also has call and error counters, bumped by the server as it answers calls
/// (read them with `Server::method_stats`); clones of a table share its counters.
#[derive(Default, Clone)]
pub struct MethodTable {
    methods: HashMap<&'static str, MethodHandler>,
    counters: HashMap<&'static str, Arc<MethodCounters>>,
    dispatch: Dispatch,
    /// Names [`MethodTable::add_once`] was given again: `Server::register` refuses the
    /// table.
    repeated: Vec<&'static str>,
}

/// Calls and failed calls of one method, counted where the server finishes a call; and
/// whether its pooled calls keep off the event loops' threads.
#[derive(Debug, Default)]
pub(crate) struct MethodCounters {
    calls: AtomicU64,
    errors: AtomicU64,
    /// A call of the method ran so long on a loop's thread that the loop was handed over
    /// (`server_conn/loop_calls.rs`): its calls go to the pool from then on.
    off_loop: AtomicBool,
}

impl MethodCounters {
    /// Sends the method's pooled calls to the pool from now on, never to a loop's thread.
    pub(crate) fn keep_off_loop(&self) {
        self.off_loop.store(true, Ordering::Relaxed);
    }

    /// Whether the method's pooled calls keep off the loops' threads.
    pub(crate) fn keeps_off_loop(&self) -> bool {
        self.off_loop.load(Ordering::Relaxed)
    }

    /// Counts one answered call, and one error if it `failed`.
    pub(crate) fn count(&self, failed: bool) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Calls answered and, of those, errors.
    pub(crate) fn load(&self) -> (u64, u64) {
        let calls = self.calls.load(Ordering::Relaxed);
        (calls, self.errors.load(Ordering::Relaxed))
    }
}

impl MethodTable {
    /// An empty table.
    pub fn new() -> Self {
        MethodTable::default()
    }

    /// Adds the method `name` (e.g. `"Multiply"`), served by `method`.
    ///
    /// The argument type `A` and reply type `R` are fixed here, so the stored closure is
    /// monomorphic. A later entry with the same name replaces the earlier one.
    pub fn add<A, R, F>(&mut self, name: &'static str, method: F) -> &mut Self
    where
        A: DeserializeOwned,
        R: Serialize,
        F: Fn(A) -> Result<R, ServiceError> + Send + Sync + 'static,
    {
        let handler = move |codec: CodecKind, body: &[u8], reply: &mut BytesMut| {
            let args: A = codec
                .decode(body)
                .map_err(|err| DispatchError::new(ErrorCode::BadRequest, err.to_string()))?;
            let value =
                method(args).map_err(|err| DispatchError::new(ErrorCode::Service, err.message))?;
            codec.encode(&value, reply).map_err(|err| {
                DispatchError::new(
                    ErrorCode::Internal,
                    format!("reply failed to encode: {err}"),
                )
            })
        };
        self.methods.insert(name, Arc::new(handler));
        self.counters.insert(name, Arc::default());
        self
    }

    /// As [`MethodTable::add`], unless `name` is taken: then the first method stays, and the
    /// name is remembered as [`MethodTable::repeated`] (what `service!` adds with).
    pub(crate) fn add_once<A, R, F>(&mut self, name: &'static str, method: F)
    where
        A: DeserializeOwned,
        R: Serialize,
        F: Fn(A) -> Result<R, ServiceError> + Send + Sync + 'static,
    {
        if self.methods.contains_key(name) {
            self.repeated.push(name);
        } else {
            self.add(name, method);
        }
    }

    /// Names given to more than one method of a `service!` definition, if any.
    pub(crate) fn repeated(&self) -> &[&'static str] {
        &self.repeated
    }

    /// The handler of method `name`.
    pub fn get(&self, name: &str) -> Option<&MethodHandler> {
        self.methods.get(name)
    }

    /// The call counters of method `name`.
    pub(crate) fn counters(&self, name: &str) -> Option<&Arc<MethodCounters>> {
        self.counters.get(name)
    }

    /// Method names, in no particular order.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.methods.keys().copied()
    }

    /// Number of methods.
    pub fn len(&self) -> usize {
        self.methods.len()
    }

    /// True if the table has no methods.
    pub fn is_empty(&self) -> bool {
        self.methods.is_empty()
    }

    /// Where this table's handlers run.
    pub fn dispatch(&self) -> Dispatch {
        self.dispatch
    }

    /// Sets where this table's handlers run.
    pub fn set_dispatch(&mut self, dispatch: Dispatch) -> &mut Self {
        self.dispatch = dispatch;
        self
    }
}

impl fmt::Debug for MethodTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.names().collect();
        names.sort_unstable();
        f.debug_struct("MethodTable")
            .field("methods", &names)
            .finish()
    }
}

/// A value the server can register: it names itself and lists its methods.
///
/// The [`crate::service!`] macro implements this for its generated server type.
pub trait Service: Send + Sync + 'static {
    /// The name calls use before the dot, unless registered with another
    /// (Go: the type's name in `Register`).
    const NAME: &'static str;

    /// Builds the method table, consuming the service (its methods share it).
    fn into_method_table(self) -> MethodTable;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handler_decodes_calls_and_encodes() {
        let mut table = MethodTable::new();
        table.add("Double", |x: i64| Ok::<_, ServiceError>(x * 2));
        table.add("Fail", |_: ()| Err::<(), _>(ServiceError::new("nope")));
        let codec = CodecKind::Postcard;

        let mut body = BytesMut::new();
        codec.encode(&21i64, &mut body).unwrap();
        let mut reply = BytesMut::new();
        (table.get("Double").unwrap())(codec, &body, &mut reply).unwrap();
        assert_eq!(codec.decode::<i64>(&reply).unwrap(), 42);

        let err = (table.get("Fail").unwrap())(codec, &[], &mut BytesMut::new()).unwrap_err();
        assert_eq!(err, DispatchError::new(ErrorCode::Service, "nope"));

        let err = (table.get("Double").unwrap())(codec, &[0xff; 11], &mut reply).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
        assert!(table.get("Missing").is_none());
        assert_eq!(table.len(), 2);
    }
}
