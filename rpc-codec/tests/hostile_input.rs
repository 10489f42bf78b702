//! Hostile codec input: deep nesting, huge declared lengths, zero-sized elements.
//!
//! Each case runs in a child process (this test binary re-executed with
//! `NETRPC_HOSTILE_CASE` set), so that a stack overflow, which aborts a process, fails one
//! test instead of killing the whole run. The child decodes, then reports the error, the time
//! it took and how much its peak resident memory grew (`VmHWM` from `/proc/self/status`).
//! Run with `--nocapture` to see the figures; the tests assert the error and a memory bound,
//! never a time.

#![cfg(feature = "json")]
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::time::Instant;

use rpc_codec::{Codec, CodecError, Json, Postcard, MAX_DECODE_DEPTH};
use serde::Deserialize;

/// A recursive type: postcard encodes each level as one `01` byte.
#[derive(Debug, Deserialize)]
#[allow(dead_code)] // only ever decoded
struct Chain(Option<Box<Chain>>);

/// A recursive type that JSON nests as `[[[...]]]`.
#[derive(Debug, Deserialize)]
#[allow(dead_code)] // only ever decoded
struct Tree(Vec<Tree>);

const CASE_VAR: &str = "NETRPC_HOSTILE_CASE";

/// Peak growth allowed while decoding any hostile input of a few bytes.
const PEAK_GROWTH_LIMIT_KIB: u64 = 16 * 1024;

/// Deep enough to overflow any thread's stack without a depth limit.
const HOSTILE_DEPTH: usize = 100_000;

/// Postcard's varint for 2^28 and for u32::MAX.
const VARINT_2_POW_28: [u8; 5] = [0x80, 0x80, 0x80, 0x80, 0x01];
const VARINT_U32_MAX: [u8; 5] = [0xff, 0xff, 0xff, 0xff, 0x0f];

/// Runs hostile case `name` in this process and returns the decode error.
fn run_case(name: &str) -> CodecError {
    match name {
        "postcard_deep_nesting" => {
            let mut bytes = vec![0x01; HOSTILE_DEPTH];
            bytes.push(0x00);
            Postcard.decode::<Chain>(&bytes).unwrap_err()
        }
        "json_deep_nesting" => {
            let bytes = "[".repeat(HOSTILE_DEPTH) + &"]".repeat(HOSTILE_DEPTH);
            Json.decode::<Tree>(bytes.as_bytes()).unwrap_err()
        }
        "postcard_zero_sized_elements" => {
            // Unguarded, postcard spends about 3 s of CPU here (release build) inserting `()`.
            Postcard
                .decode::<BTreeSet<()>>(&VARINT_U32_MAX)
                .unwrap_err()
        }
        "postcard_zero_sized_vec" => Postcard.decode::<Vec<()>>(&VARINT_2_POW_28).unwrap_err(),
        "postcard_huge_vec_length" => {
            let mut bytes = VARINT_U32_MAX.to_vec();
            bytes.extend_from_slice(&[1, 2, 3, 4]);
            Postcard.decode::<Vec<u64>>(&bytes).unwrap_err()
        }
        "postcard_huge_map_length" => {
            let mut bytes = VARINT_U32_MAX.to_vec();
            bytes.extend_from_slice(&[1, 2]);
            Postcard.decode::<HashMap<u64, u64>>(&bytes).unwrap_err()
        }
        "postcard_huge_string_length" => {
            let mut bytes = VARINT_U32_MAX.to_vec();
            bytes.extend_from_slice(b"abc");
            Postcard.decode::<String>(&bytes).unwrap_err()
        }
        "unguarded_postcard_deep_nesting" => {
            // postcard on its own, without the guard: expected to overflow the stack.
            let mut bytes = vec![0x01; HOSTILE_DEPTH];
            bytes.push(0x00);
            let err = postcard::from_bytes::<Chain>(&bytes).unwrap_err();
            CodecError::Decode {
                codec: "postcard",
                detail: err.to_string(),
            }
        }
        other => panic!("unknown hostile case {other}"),
    }
}

fn peak_resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The child side: only does anything when the parent set `NETRPC_HOSTILE_CASE`.
#[test]
fn hostile_case_child() {
    let Ok(name) = std::env::var(CASE_VAR) else {
        return;
    };
    let peak_before = peak_resident_kib();
    let started = Instant::now();
    let err = run_case(&name);
    let elapsed = started.elapsed();
    let growth = peak_resident_kib().saturating_sub(peak_before);
    println!("HOSTILE-RESULT {growth} {:?} {err:?}", elapsed);
}

/// Re-executes this test binary to run only [`hostile_case_child`] with case `name`.
fn spawn_child(name: &str) -> std::process::Output {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "hostile_case_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CASE_VAR, name)
        .output()
        .unwrap()
}

/// Runs case `name` in a child process, checks its memory growth, and returns its error.
fn run_in_child(name: &str) -> String {
    let output = spawn_child(name);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "case {name}: child failed ({}): {stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let report = stdout
        .lines()
        .find_map(|line| line.split_once("HOSTILE-RESULT ").map(|(_, report)| report))
        .unwrap_or_else(|| panic!("case {name}: no report in {stdout}"));
    let mut parts = report.splitn(3, ' ');
    let peak_growth_kib: u64 = parts.next().unwrap().parse().unwrap();
    let elapsed = parts.next().unwrap();
    let error = parts.next().unwrap().to_string();
    println!("{name}: {error} in {elapsed}, peak memory +{peak_growth_kib} KiB");
    assert!(
        peak_growth_kib < PEAK_GROWTH_LIMIT_KIB,
        "case {name}: peak memory grew by {peak_growth_kib} KiB"
    );
    error
}

fn assert_error(name: &str, expected: CodecError) {
    assert_eq!(run_in_child(name), format!("{expected:?}"), "case {name}");
}

#[test]
fn postcard_deep_nesting_stops_at_the_depth_limit() {
    assert_error(
        "postcard_deep_nesting",
        CodecError::TooDeep {
            codec: "postcard",
            limit: MAX_DECODE_DEPTH,
        },
    );
}

#[test]
fn json_deep_nesting_stops_at_the_depth_limit() {
    assert_error(
        "json_deep_nesting",
        CodecError::TooDeep {
            codec: "json",
            limit: MAX_DECODE_DEPTH,
        },
    );
}

#[test]
fn zero_sized_elements_are_bounded_by_the_input_length() {
    for (name, input_len) in [
        ("postcard_zero_sized_elements", VARINT_U32_MAX.len()),
        ("postcard_zero_sized_vec", VARINT_2_POW_28.len()),
    ] {
        assert_error(
            name,
            CodecError::TooManyElements {
                codec: "postcard",
                limit: input_len + rpc_codec::guard::EXTRA_ELEMENT_ALLOWANCE,
            },
        );
    }
}

fn assert_plain_decode_error(name: &str) {
    let error = run_in_child(name);
    assert!(
        error.starts_with("Decode { codec: \"postcard\""),
        "case {name}: {error}"
    );
}

#[test]
fn a_huge_declared_vec_length_fails_at_the_end_of_the_input() {
    assert_plain_decode_error("postcard_huge_vec_length");
}

#[test]
fn a_huge_declared_map_length_fails_at_the_end_of_the_input() {
    assert_plain_decode_error("postcard_huge_map_length");
}

#[test]
fn a_huge_declared_string_length_fails_at_the_end_of_the_input() {
    assert_plain_decode_error("postcard_huge_string_length");
}

/// Why the guard exists: postcard alone has no depth limit, and the same input kills the
/// process. If this ever starts passing, postcard has gained a limit and the docs should say so.
#[test]
fn without_the_guard_postcard_deep_nesting_kills_the_process() {
    let output = spawn_child("unguarded_postcard_deep_nesting");
    assert!(
        !output.status.success(),
        "postcard decoded {HOSTILE_DEPTH} levels on its own: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    println!(
        "unguarded postcard, {HOSTILE_DEPTH} levels: child {}",
        output.status
    );
}
