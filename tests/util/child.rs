//! This test binary re-run as a child process, for what one process cannot do to itself: be
//! killed, run under another descriptor limit, or hold more sockets than its own limit allows.
//!
//! The child runs one named test, which does its part only when an environment variable is
//! set, and reports on stdout with a line `MARKER value`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::thread::{self, JoinHandle};

/// Runs test `name` of this binary (ignored or not) in a child process with `var` set to
/// `value`, behind `wrapper` if given (a program that runs the binary, such as `prlimit`).
pub fn spawn_test(name: &str, var: &str, value: &str, wrapper: &[&str]) -> Child {
    let exe = std::env::current_exe().expect("this test binary's path");
    let mut command = match wrapper.split_first() {
        Some((program, wrapper_args)) => {
            let mut command = Command::new(program);
            command.args(wrapper_args).arg(&exe);
            command
        }
        None => Command::new(&exe),
    };
    command
        .args([
            name,
            "--exact",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(var, value)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the child process")
}

/// Waits for the child's line `marker value` and returns `value`, with a thread that keeps
/// reading the child's output, so its last lines never meet a closed pipe.
pub fn await_report(child: &mut Child, marker: &str) -> (String, JoinHandle<()>) {
    let stdout = child.stdout.take().expect("the child's stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let prefix = format!("{marker} ");
    let value = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|line| {
            line.split_once(&prefix)
                .map(|(_, value)| value.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("the child never reported {marker}"));
    (value, thread::spawn(move || lines.for_each(drop)))
}
