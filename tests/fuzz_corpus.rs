//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`, seeds and any crash
//! reproducers saved in `fuzz/artifacts/<target>/`) through the same oracles the libFuzzer
//! targets use (`fuzz/checks.rs`), as ordinary tests on stable Rust.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

#[path = "../fuzz/checks.rs"]
#[allow(dead_code, unreachable_pub)]
mod checks;

use std::fs;
use std::path::Path;

/// Runs `check` on every file of `fuzz/corpus/<target>` and `fuzz/artifacts/<target>`;
/// returns how many inputs it ran.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut count = 0;
    for dir in ["corpus", "artifacts"] {
        let Ok(entries) = fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{} fails its oracle", path.display());
            count += 1;
        }
    }
    count
}

#[test]
fn the_frame_decoder_corpus_decodes_the_same_in_any_chunking() {
    assert!(replay("frame_decode", checks::frame_decode) >= 10);
}

#[test]
fn the_frame_round_trip_corpus_round_trips() {
    assert!(replay("frame_roundtrip", checks::frame_roundtrip) >= 3);
}

#[test]
fn the_codec_corpus_never_panics_and_round_trips() {
    assert!(replay("codec_decode", checks::codec_decode) >= 10);
}
