//! The server half of the two-process tutorial: serves `Arith` on a TCP address.
//!
//! Go: `rpc.Register(new(Arith)); l, _ := net.Listen("tcp", ":1234"); rpc.Accept(l)`,
//! SEEDS §1.
//!
//! Run: `cargo run --example arith_server -- --addr 127.0.0.1:1234 --seconds 60`
//! then, in another terminal: `cargo run --example arith_client -- --addr 127.0.0.1:1234 --a 7 --b 8`
//!
//! Prints the address it listens on, then serves until `--seconds` have passed (default:
//! until interrupted with Ctrl-C).

#[path = "support/args.rs"]
mod args;
#[path = "support/arith.rs"]
mod arith;

use std::error::Error;
use std::time::{Duration, Instant};

use arith::{ArithServer, Calculator};
use netrpc::Server;

const USAGE: &str = "\
arith_server: serve the tutorials' Arith service (Multiply, Sum, Divide)

usage: cargo run --example arith_server -- [--addr HOST:PORT] [--seconds N]

  --addr HOST:PORT   address to listen on (default 127.0.0.1:1234)
  --seconds N        stop after N seconds (default: serve until interrupted)
  --help             print this help";

fn main() -> Result<(), Box<dyn Error>> {
    let flags = args::Flags::parse(USAGE)?;
    let addr = flags.get_str("addr").unwrap_or("127.0.0.1:1234").to_owned();
    let seconds: u64 = flags.get("seconds", 0)?;

    let server = Server::new();
    server.register(ArithServer::new(Calculator))?;
    let running = server.serve(addr.as_str())?;
    println!("serving Arith on {}", running.local_addr());

    let until = (seconds > 0).then(|| Instant::now() + Duration::from_secs(seconds));
    loop {
        std::thread::sleep(Duration::from_millis(200));
        if until.is_some_and(|at| Instant::now() >= at) {
            break;
        }
    }
    running.shutdown();
    println!("stopped after {seconds} s");
    Ok(())
}
