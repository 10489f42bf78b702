//! The load tool's CPU clock: `utime + stime` of the whole process, read from `/proc`.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

#[path = "../examples/support/cpu_time.rs"]
mod cpu_time;

use std::time::{Duration, Instant};

use cpu_time::{parse_stat, process_cpu_time};

#[test]
fn utime_and_stime_are_read_after_a_name_with_spaces_and_parentheses() {
    let stat = "4242 (load gen) x) R 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20";
    assert_eq!(parse_stat(stat), Some(Duration::from_secs(3)));
    assert_eq!(parse_stat("4242 (cut short) R 1 2"), None);
}

#[test]
fn the_process_clock_advances_while_a_thread_computes() {
    let Some(before) = process_cpu_time() else {
        eprintln!("no /proc/self/stat here: nothing to check");
        return;
    };
    let give_up = Instant::now() + Duration::from_secs(10);
    let mut spins = 0u64;
    while process_cpu_time().unwrap() < before + Duration::from_millis(50) {
        assert!(
            Instant::now() < give_up,
            "50 ms of CPU not counted within 10 s"
        );
        spins = std::hint::black_box(spins.wrapping_add(1));
    }
}
