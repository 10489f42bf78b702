//! The load tool's CPU clock: `utime + stime` of the whole process, and of each thread by
//! name, read from `/proc`.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

#[path = "../examples/support/cpu_time.rs"]
mod cpu_time;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cpu_time::{
    cpu_by_thread_name, parse_stat, parse_thread_stat, process_cpu_time, thread_cpu_times,
    ThreadCpu,
};

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

fn thread(name: &str, user_ms: u64, system_ms: u64) -> ThreadCpu {
    ThreadCpu {
        name: name.to_owned(),
        user: Duration::from_millis(user_ms),
        system: Duration::from_millis(system_ms),
    }
}

#[test]
fn a_thread_line_gives_its_name_and_its_user_and_system_time_apart() {
    let stat = "4243 (netrpc-worker) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20";
    assert_eq!(
        parse_thread_stat(stat),
        Some(thread("netrpc-worker", 2500, 500))
    );
    let odd = "4244 (a (b) c) R 1 2 3 4 5 6 7 8 9 10 1 2 0 0 20";
    assert_eq!(parse_thread_stat(odd), Some(thread("a (b) c", 10, 20)));
}

#[test]
fn threads_are_grouped_by_name_and_new_or_renamed_ones_count_from_zero() {
    let before = BTreeMap::from([
        (1, thread("loop", 100, 50)),
        (2, thread("worker", 10, 10)),
        (3, thread("worker", 20, 20)),
        (4, thread("gone", 500, 500)),
        (5, thread("old name", 300, 300)),
    ]);
    let after = BTreeMap::from([
        (1, thread("loop", 130, 60)),
        (2, thread("worker", 50, 30)),
        (3, thread("worker", 40, 70)),
        (5, thread("worker", 5, 5)),
        (6, thread("new", 1, 2)),
    ]);
    let named = cpu_by_thread_name(&before, &after);
    let figures: Vec<(&str, usize, u64, u64)> = named
        .iter()
        .map(|group| {
            let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap();
            (
                group.name.as_str(),
                group.threads,
                ms(group.user),
                ms(group.system),
            )
        })
        .collect();
    assert_eq!(
        figures,
        vec![("worker", 3, 65, 75), ("loop", 1, 30, 10), ("new", 1, 1, 2)]
    );
}

#[test]
fn a_named_thread_that_computes_shows_up_under_its_name() {
    let Some(before) = thread_cpu_times() else {
        eprintln!("no /proc/self/task here: nothing to check");
        return;
    };
    let stop = Arc::new(AtomicBool::new(false));
    let spinner = {
        let stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("cpu-time-spin".to_owned())
            .spawn(move || {
                let mut spins = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    spins = std::hint::black_box(spins.wrapping_add(1));
                }
            })
            .unwrap()
    };
    let give_up = Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let named = cpu_by_thread_name(&before, &thread_cpu_times().unwrap());
        let spin = named.iter().find(|group| group.name == "cpu-time-spin");
        if spin.is_some_and(|group| group.user + group.system >= Duration::from_millis(50)) {
            break Ok(());
        }
        if Instant::now() >= give_up {
            break Err(format!(
                "50 ms of the spinning thread not seen in 10 s: {named:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    stop.store(true, Ordering::Relaxed);
    spinner.join().unwrap();
    seen.unwrap();
}
