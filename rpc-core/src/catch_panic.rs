//! Running user code that may panic (a handler, a reply type's `Deserialize`) without letting
//! the panic take down the thread that runs it: a pool worker or an event loop.

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};

/// Runs `f`; a panic becomes `Err` with the panic's message.
///
/// `AssertUnwindSafe` is sound here: what `f` touches is either dropped with the panic (its
/// own captures) or shared state guarded by locks that recover from poisoning.
pub(crate) fn catch_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    panic::catch_unwind(AssertUnwindSafe(f)).map_err(|payload| panic_message(payload.as_ref()))
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_its_message_and_a_value_passes_through() {
        assert_eq!(catch_panic(|| 7), Ok(7));
        assert_eq!(
            catch_panic(|| -> u8 { panic!("boom") }),
            Err("boom".to_owned())
        );
        let code = 3;
        assert_eq!(
            catch_panic(|| -> u8 { panic!("code {code}") }),
            Err("code 3".to_owned())
        );
    }
}
