//! The CPU time this process has used, every thread together (user and system), for the load
//! tool's "CPU per call": a figure that, unlike calls/s, does not depend on how long threads
//! wait to be woken. And the same per thread, grouped by thread name, for `--thread-cpu`: which
//! of the server's loop, its workers, the client's loop or the callers spends it.
//!
//! Read from `/proc/self/stat` and `/proc/self/task/<tid>/stat` (Linux): `utime` and `stime`,
//! in clock ticks of 1/100 s (`USER_HZ`, fixed at 100 for user space on Linux). Elsewhere it
//! is `None`, and the tool prints no CPU figures.

#![allow(dead_code, unreachable_pub)] // included by path; each example uses part of it

use std::collections::BTreeMap;
use std::time::Duration;

/// Ticks per second of `utime` and `stime` in `/proc/<pid>/stat`.
const USER_HZ: u64 = 100;

/// User plus system CPU time of every thread of this process so far, if the system says.
pub fn process_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_stat(&stat)
}

/// `utime + stime` from the text of `/proc/<pid>/stat`.
pub fn parse_stat(stat: &str) -> Option<Duration> {
    let cpu = parse_thread_stat(stat)?;
    Some(cpu.user + cpu.system)
}

/// One thread's name and CPU time so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadCpu {
    /// The kernel's name for the thread (`comm`: at most 15 bytes of the name it was given).
    pub name: String,
    /// Time spent running its own code.
    pub user: Duration,
    /// Time spent in the kernel on its behalf (system calls, and the network stack's work
    /// they trigger).
    pub system: Duration,
}

/// Name, `utime` and `stime` from the text of `/proc/<pid>[/task/<tid>]/stat`. The name
/// (field 2, in parentheses) may hold spaces and parentheses, so fields are counted after
/// its last `)`.
pub fn parse_thread_stat(stat: &str) -> Option<ThreadCpu> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_owned();
    let mut fields = stat[close + 1..].split_whitespace();
    // After the name: state (field 3) ... utime is field 14, stime field 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(ThreadCpu {
        name,
        user: ticks(utime),
        system: ticks(stime),
    })
}

fn ticks(count: u64) -> Duration {
    Duration::from_millis(count * 1000 / USER_HZ)
}

/// Every thread of this process alive now, by thread id, with its CPU time so far.
pub fn thread_cpu_times() -> Option<BTreeMap<u32, ThreadCpu>> {
    let mut threads = BTreeMap::new();
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let Ok(entry) = entry else { continue };
        let Some(tid) = entry.file_name().to_str().and_then(|tid| tid.parse().ok()) else {
            continue;
        };
        // A thread that ends between the listing and this read is skipped.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some(cpu) = parse_thread_stat(&stat) {
            threads.insert(tid, cpu);
        }
    }
    Some(threads)
}

/// CPU time spent by the threads of one name between two snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedCpu {
    /// The threads' name.
    pub name: String,
    /// How many threads of that name are in the later snapshot.
    pub threads: usize,
    /// User time between the snapshots, all those threads together.
    pub user: Duration,
    /// System time between the snapshots, all those threads together.
    pub system: Duration,
}

/// The CPU time each group of like-named threads spent from `before` to `after` (snapshots
/// of [`thread_cpu_times`]), the busiest group first. A thread that started in between counts
/// from zero; one that ended in between is missing (its time is lost).
pub fn cpu_by_thread_name(
    before: &BTreeMap<u32, ThreadCpu>,
    after: &BTreeMap<u32, ThreadCpu>,
) -> Vec<NamedCpu> {
    let mut groups: BTreeMap<&str, NamedCpu> = BTreeMap::new();
    for (tid, now) in after {
        // A thread id reused by a new thread of another name starts from zero too.
        let start = before.get(tid).filter(|then| then.name == now.name);
        let group = groups.entry(&now.name).or_insert_with(|| NamedCpu {
            name: now.name.clone(),
            threads: 0,
            user: Duration::ZERO,
            system: Duration::ZERO,
        });
        group.threads += 1;
        group.user += now
            .user
            .saturating_sub(start.map_or(Duration::ZERO, |then| then.user));
        group.system += now
            .system
            .saturating_sub(start.map_or(Duration::ZERO, |then| then.system));
    }
    let mut named: Vec<NamedCpu> = groups.into_values().collect();
    named.sort_by_key(|group| std::cmp::Reverse(group.user + group.system));
    named
}
