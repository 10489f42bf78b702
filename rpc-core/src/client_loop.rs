//! The client event loop: one thread, started on first use, shared by every client of the
//! process. A thousand clients cost one thread, not a thousand.

use std::io;
use std::sync::Mutex;

use rpc_transport::{spawn_loop, LoopHandle};

/// The shared client loop, starting it if needed.
///
/// # Errors
///
/// If the loop's thread or poller cannot be created.
pub(crate) fn shared_client_loop() -> io::Result<LoopHandle> {
    // Guards the one handle; `None` until the first client dials.
    static CLIENT_LOOP: Mutex<Option<LoopHandle>> = Mutex::new(None);
    let mut handle = CLIENT_LOOP.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(handle) = handle.as_ref() {
        return Ok(handle.clone());
    }
    // The thread lives as long as the process; it sleeps in `poll` while no client is busy.
    let (new_handle, _thread) = spawn_loop("netrpc-client-loop", None)?;
    *handle = Some(new_handle.clone());
    Ok(new_handle)
}
