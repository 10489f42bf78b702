//! Peak heap allocation under hostile input (shared/RELIABILITY.md rows 3, 4 and 6), counted by
//! a global allocator (`peak_alloc`, a dev-dependency) in this test binary: a header's length
//! fields never decide what the server allocates, and a lying collection length allocates
//! nothing. The figures are printed with `--nocapture`.
//!
//! The counter is process-wide, so the tests take turns (one lock), and the bounds leave room
//! for what the server allocates to accept a connection at all.
//!
//! One test here is not about hostile input but about the event loop's own memory: a
//! connection that keeps moving its timer earlier must not pile up stale timers.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod peak;
mod util;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netrpc::transport::{
    spawn_loop, CloseReason, Connection, Frame, FrameHandler, FrameKind, FrameLimits,
};
use netrpc::{Codec, CodecKind};
use peak::{exclusive, peak_extra_allocation};
use util::evil::{header_declaring, valid_request_bytes, EvilClient};
use util::{assert_back_to_idle, assert_healthy, TestServer};

/// What a hostile header may cost the server at most (the matrix's goal for row 4).
const HEADER_ATTACK_BUDGET: usize = 64 * 1024;

#[test]
fn bad_magic_version_and_kind_allocate_nothing_from_the_length_fields() {
    let _alone = exclusive();
    let server = TestServer::start();
    let good = valid_request_bytes();
    let with = |offset: usize, byte: u8| {
        let mut bytes = good.clone();
        bytes[offset] = byte;
        // The body length says 4 GiB: a server that trusted it would show here.
        bytes[24..28].copy_from_slice(&u32::MAX.to_be_bytes());
        bytes
    };
    let inputs = [
        ("http request", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
        ("zeros", vec![0; 16]),
        ("version 0", with(2, 0)),
        ("version 255", with(2, 255)),
        ("kind 0xff", with(3, 0xff)),
        ("bad magic", with(0, b'X')),
    ];
    for (what, input) in &inputs {
        let peak = peak_extra_allocation(|| {
            let mut evil = EvilClient::connect(server.addr());
            evil.send_raw(input);
            evil.read_until_closed();
        });
        println!("{what}: peak extra allocation {peak} bytes");
        assert!(peak < HEADER_ATTACK_BUDGET, "{what}: {peak} bytes");
    }
    assert_back_to_idle(&server.server);
    assert_healthy(server.addr());
}

#[test]
fn an_oversized_declared_body_is_refused_without_allocating_it() {
    let _alone = exclusive();
    let server = TestServer::start();
    let limit = FrameLimits::default().max_body_len as u32;
    for declared in [limit + 1, u32::MAX] {
        let peak = peak_extra_allocation(|| {
            let mut evil = EvilClient::connect(server.addr());
            evil.send_raw(&header_declaring(7, declared));
            let frames = evil.read_until_closed();
            assert_eq!((frames[0].kind, frames[0].seq), (FrameKind::Error, 7));
        });
        println!("body_len {declared}: peak extra allocation {peak} bytes");
        assert!(peak < HEADER_ATTACK_BUDGET, "{declared}: {peak} bytes");
    }
    assert_back_to_idle(&server.server);
}

#[test]
fn a_body_just_under_the_limit_reserves_only_the_bytes_that_arrived() {
    let _alone = exclusive();
    let server = TestServer::start();
    let limit = FrameLimits::default().max_body_len as u32;
    let peak = peak_extra_allocation(|| {
        let mut evil = EvilClient::connect(server.addr());
        evil.send_raw(&header_declaring(9, limit - 1));
        evil.send_raw(&[0u8; 1024]);
        // Let the server read what was sent, then leave mid-frame.
        std::thread::sleep(Duration::from_millis(100));
        drop(evil);
        assert_back_to_idle(&server.server);
    });
    println!(
        "body_len {} with 1 KiB sent: peak extra allocation {peak} bytes",
        limit - 1
    );
    assert!(peak < HEADER_ATTACK_BUDGET, "{peak} bytes");
}

#[test]
fn a_lying_collection_length_allocates_nothing_in_either_codec() {
    let _alone = exclusive();
    // A u32::MAX element count, then nothing: postcard's varint and a JSON array that never
    // ends.
    let postcard = [0xff, 0xff, 0xff, 0xff, 0x0f];
    let json = b"[1,2,3";
    for (codec, bytes) in [
        (CodecKind::Postcard, &postcard[..]),
        (CodecKind::Json, &json[..]),
    ] {
        let peak = peak_extra_allocation(|| {
            assert!(codec.decode::<Vec<u64>>(bytes).is_err());
            assert!(codec.decode::<HashMap<u64, u64>>(bytes).is_err());
            assert!(codec.decode::<String>(bytes).is_err());
        });
        println!("{codec:?} lying lengths: peak extra allocation {peak} bytes");
        assert!(peak < 1024 * 1024, "{codec:?}: {peak} bytes");
    }
}

/// Each time its timer fires, moves a far check (an idle timeout's) and asks to be woken at
/// once before it (a stall check's), as a server connection read by a worker does every
/// millisecond; after `rounds` more rounds it stops and says so.
struct RestlessTimer {
    rounds: Arc<AtomicUsize>,
    done: crossbeam_channel::Sender<()>,
}

impl FrameHandler for RestlessTimer {
    fn handle_frame(&mut self, _conn: &Connection, _frame: Frame) {}

    fn handle_timer(&mut self, conn: &Connection, now: Instant) -> Option<Instant> {
        if self.rounds.load(Ordering::SeqCst) == 0 {
            let _ = self.done.send(());
            return None;
        }
        self.rounds.fetch_sub(1, Ordering::SeqCst);
        conn.schedule_timer(now + Duration::from_secs(3600));
        Some(now)
    }

    fn handle_close(&mut self, _conn: &Connection, _reason: CloseReason) {}
}

#[test]
fn a_timer_moved_earlier_again_and_again_leaves_no_pile_of_stale_timers() {
    let _alone = exclusive();
    let (handle, _thread) = spawn_loop("restless-timer", None).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ours = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let _peer = listener.accept().unwrap();
    let rounds = Arc::new(AtomicUsize::new(0));
    let (done_tx, done) = crossbeam_channel::unbounded();
    let handler_rounds = Arc::clone(&rounds);
    let conn = handle
        .adopt_and_wait(
            ours,
            FrameLimits::default(),
            Box::new(move |_| {
                Box::new(RestlessTimer {
                    rounds: handler_rounds,
                    done: done_tx,
                })
            }),
            Duration::from_secs(5),
        )
        .unwrap();
    let run = |count: usize| {
        rounds.store(count, Ordering::SeqCst);
        conn.schedule_timer(Instant::now());
        done.recv_timeout(Duration::from_secs(30)).unwrap();
        peak::current_usage()
    };
    // Rounds to settle what the loop allocates once (its command queue's blocks), then the
    // measured ones: each left a stale hour-long entry in the loop's timer heap, 40 bytes.
    let settled = run(2_000);
    let after = run(200_000);
    let grown = after.saturating_sub(settled);
    println!("200,000 timer moves grew the heap by {grown} bytes");
    assert!(grown < 256 * 1024, "{grown} bytes");
    handle.shutdown();
}
