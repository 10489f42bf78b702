//! A counting global allocator for the test binaries that measure memory (`mod peak;`):
//! the bytes a piece of work allocated at its peak, one measurement at a time.

#![allow(dead_code, unreachable_pub)] // each test binary uses part of this module

use std::sync::{Mutex, MutexGuard};

use peak_alloc::PeakAlloc;

#[global_allocator]
static COUNTING: PeakAlloc = PeakAlloc;

/// One test at a time: the counter sees every thread of the process, so another test
/// starting or stopping its server would show up in a measurement.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Holds the other measuring tests of this binary off while it lives.
pub fn exclusive() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Bytes allocated at the peak of `work`, above what was allocated when it started.
pub fn peak_extra_allocation(work: impl FnOnce()) -> usize {
    let before = COUNTING.current_usage();
    COUNTING.reset_peak_usage();
    work();
    COUNTING.peak_usage().saturating_sub(before)
}

/// Bytes allocated now.
pub fn current_usage() -> usize {
    COUNTING.current_usage()
}
