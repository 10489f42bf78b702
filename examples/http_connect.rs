//! RPC over HTTP CONNECT, and the debug page: an `Arith` server listening for HTTP, a client
//! that dials it with `CONNECT /_goRPC_`, then a plain `GET /debug/rpc` showing the calls.
//!
//! Go: `rpc.HandleHTTP()` + `http.Serve`, `rpc.DialHTTP("tcp", addr)`, and the
//! `/debug/rpc` page (SEEDS §5).
//!
//! Run: `cargo run --example http_connect`
//!
//! Prints the listener's address, two calls' replies and a division by zero's error, then the
//! first lines of the debug page's HTTP response and its rows for `Arith`'s methods. Open
//! `http://<addr>/debug/rpc` in a browser while a server runs to see the whole page.

#[path = "support/arith.rs"]
mod arith;

use std::error::Error;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use arith::{Args, ArithClient, ArithServer, Calculator};
use netrpc::{Client, Server};

fn main() -> Result<(), Box<dyn Error>> {
    // Server: the same registry as always; this listener speaks HTTP first.
    let server = Server::new();
    server.register(ArithServer::new(Calculator))?;
    let http = server.serve_http("127.0.0.1:0")?;
    let addr = http.local_addr();
    println!("HTTP listener on {addr}");

    // Client: CONNECT, check "200 Connected to Go RPC", then ordinary netrpc frames.
    let arith = ArithClient::new(Client::dial_http(addr)?);
    let args = Args { a: 7, b: 8 };
    println!("Arith.Multiply(7, 8) = {}", arith.multiply(&args)?);
    println!("Arith.Sum(7, 8) = {}", arith.sum(&args)?);
    if let Err(err) = arith.divide(&Args { a: 1, b: 0 }) {
        println!("Arith.Divide(1, 0) failed: {err}");
    }

    // The debug page, fetched by hand: one GET, one response, then the server closes.
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /debug/rpc HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
    let mut page = String::new();
    stream.read_to_string(&mut page)?;
    println!("\nGET /debug/rpc:");
    for line in page.lines().take(5) {
        println!("  {line}");
    }
    println!("  ...");
    for line in page
        .lines()
        .filter(|line| line.starts_with("<tr><td>"))
        .take(3)
    {
        println!("  {line}");
    }
    http.shutdown();
    Ok(())
}
