//! The loop's listener: a backlog of waiting connections is accepted over several turns, so
//! a flood of connections cannot hold up the loop's other work.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rpc_transport::{spawn_loop, CloseReason, Connection, Frame, FrameHandler, FrameLimits};

/// A handler with nothing to do.
struct Quiet;

impl FrameHandler for Quiet {
    fn handle_frame(&mut self, _conn: &Connection, _frame: Frame) {}

    fn handle_close(&mut self, _conn: &Connection, _reason: CloseReason) {}
}

#[test]
fn commands_run_between_accepts_of_a_long_backlog() {
    const BACKLOG: usize = 100; // within any listen backlog the kernel grants
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Every client's handshake completes in the kernel before the loop starts.
    let _clients: Vec<TcpStream> = (0..BACKLOG)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    let side_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let side = TcpStream::connect(side_listener.local_addr().unwrap()).unwrap();
    let _side_peer = side_listener.accept().unwrap();

    let accepted = Arc::new(AtomicUsize::new(0));
    let accepted_at_adoption = Arc::new(AtomicUsize::new(usize::MAX));
    let kept = Arc::new(Mutex::new(Vec::new()));
    let mut side = Some(side);
    let acceptor = {
        let accepted = Arc::clone(&accepted);
        let accepted_at_adoption = Arc::clone(&accepted_at_adoption);
        let kept = Arc::clone(&kept);
        Box::new(move |stream: TcpStream, own: &rpc_transport::LoopHandle| {
            kept.lock().unwrap().push(stream);
            accepted.fetch_add(1, Ordering::SeqCst);
            // The first accept asks the loop for an adoption: a command, which the loop runs
            // once its accepting stops for the turn.
            if let Some(side) = side.take() {
                let accepted = Arc::clone(&accepted);
                let accepted_at_adoption = Arc::clone(&accepted_at_adoption);
                let make_handler = Box::new(move |_: &Connection| {
                    accepted_at_adoption.store(accepted.load(Ordering::SeqCst), Ordering::SeqCst);
                    Box::new(Quiet) as Box<dyn FrameHandler>
                });
                own.adopt(side, FrameLimits::default(), make_handler)
                    .unwrap();
            }
        })
    };
    let (handle, _thread) = spawn_loop("accept-loop", Some((listener, acceptor))).unwrap();

    let started = Instant::now();
    while accepted.load(Ordering::SeqCst) < BACKLOG {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "accepted {} of {BACKLOG}",
            accepted.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let at_adoption = accepted_at_adoption.load(Ordering::SeqCst);
    assert!(
        at_adoption < BACKLOG,
        "the adoption waited for the whole backlog to be accepted ({at_adoption})"
    );
    handle.shutdown();
}
