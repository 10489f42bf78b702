//! The client half of the two-process tutorial: calls `Arith` on a running `arith_server`.
//!
//! Go: `client, _ := rpc.Dial("tcp", "127.0.0.1:1234"); client.Call("Arith.Multiply", args,
//! &reply)`, SEEDS §1.
//!
//! Run (with `arith_server` running):
//! `cargo run --example arith_client -- --addr 127.0.0.1:1234 --a 7 --b 8`
//!
//! Prints `A*B`, `A+B` (through a `go` call) and `A/B` (or the server's divide-by-zero error).

#[path = "support/args.rs"]
mod args;
#[path = "support/arith.rs"]
mod arith;

use std::error::Error;
use std::time::Duration;

use arith::{Args, ArithClient};
use netrpc::{Client, CodecKind};

const USAGE: &str = "\
arith_client: call the tutorials' Arith service on a running arith_server

usage: cargo run --example arith_client -- [--addr HOST:PORT] [--a N] [--b N] [--codec postcard|json]

  --addr HOST:PORT   server address (default 127.0.0.1:1234)
  --a N, --b N       the operands (default 7 and 8)
  --codec NAME       postcard (default) or json
  --help             print this help";

fn main() -> Result<(), Box<dyn Error>> {
    let flags = args::Flags::parse(USAGE)?;
    let addr = flags.get_str("addr").unwrap_or("127.0.0.1:1234").to_owned();
    let args = Args {
        a: flags.get("a", 7)?,
        b: flags.get("b", 8)?,
    };
    let codec = match flags.get_str("codec").unwrap_or("postcard") {
        "postcard" => CodecKind::Postcard,
        "json" => CodecKind::Json,
        other => return Err(format!("unknown codec `{other}`\n\n{USAGE}").into()),
    };

    let client = Client::builder()
        .codec(codec)
        .connect_timeout(Duration::from_secs(3))
        .dial(addr.as_str())?;
    let arith = ArithClient::new(client);

    println!(
        "Arith.Multiply: {} * {} = {}",
        args.a,
        args.b,
        arith.multiply(&args)?
    );
    let sum = arith.sum_go(&args);
    println!("Arith.Sum:      {} + {} = {}", args.a, args.b, sum.wait()?);
    match arith.divide(&args) {
        Ok(q) => println!(
            "Arith.Divide:   {} / {} = {} remainder {}",
            args.a, args.b, q.quo, q.rem
        ),
        Err(err) => println!("Arith.Divide:   {} / {} failed: {err}", args.a, args.b),
    }
    Ok(())
}
