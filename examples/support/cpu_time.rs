//! The CPU time this process has used, every thread together (user and system), for the load
//! tool's "CPU per call": a figure that, unlike calls/s, does not depend on how long threads
//! wait to be woken.
//!
//! Read from `/proc/self/stat` (Linux): `utime` and `stime`, in clock ticks of 1/100 s
//! (`USER_HZ`, fixed at 100 for user space on Linux). Elsewhere it is `None`, and the tool
//! prints no CPU figures.

#![allow(dead_code, unreachable_pub)] // included by path; each example uses part of it

use std::time::Duration;

/// Ticks per second of `utime` and `stime` in `/proc/<pid>/stat`.
const USER_HZ: u64 = 100;

/// User plus system CPU time of every thread of this process so far, if the system says.
pub fn process_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_stat(&stat)
}

/// `utime + stime` from the text of `/proc/<pid>/stat`. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_stat(stat: &str) -> Option<Duration> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    // After the name: state (field 3) ... utime is field 14, stime field 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = utime + stime;
    Some(Duration::from_millis(ticks * 1000 / USER_HZ))
}
