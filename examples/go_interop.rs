//! Go interop: netrpc services over Go's `net/rpc/jsonrpc` wire, so Go programs and netrpc
//! call each other.
//!
//! Go: `jsonrpc.ServeConn` on the server side and `jsonrpc.Dial` + `Client.Call` on the client
//! side, over the tutorials' `Arith`, SEEDS §5.
//!
//! Run (one process, no Go needed): `cargo run --example go_interop`
//! It serves Arith with `Server::serve_jsonrpc`, prints one request and its response as they
//! travel on the socket, then calls through `JsonRpcClient`: Multiply, Sum, Divide, a divide
//! by zero, an unknown method, and 1,000 concurrent `go` calls.
//!
//! Against real Go programs (Go's standard library only; `interop/go/`):
//!
//! ```text
//! # a Go client calling this netrpc server
//! cargo run --example go_interop -- --serve 127.0.0.1:1234 --seconds 60
//! cd interop/go && go run ./arith_client 127.0.0.1:1234
//!
//! # this netrpc client calling a Go server (which prints LISTENING <addr>; Ctrl-D stops it)
//! cd interop/go && go run ./arith_server -addr 127.0.0.1:1235
//! cargo run --example go_interop -- --call 127.0.0.1:1235
//! ```

#[path = "support/args.rs"]
mod args;
#[path = "support/arith.rs"]
mod arith;

use std::error::Error;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use arith::{Args, ArithServer, Calculator, Quotient};
use netrpc::{Call, JsonRpcClient, RpcError, Server};

const USAGE: &str = "\
go_interop: netrpc over Go's net/rpc/jsonrpc wire

usage: cargo run --example go_interop -- [--serve HOST:PORT [--seconds N] | --call HOST:PORT]

  (no flags)          server and client in this process, then exit
  --serve HOST:PORT   serve Arith over jsonrpc for a Go client (interop/go/arith_client)
  --seconds N         with --serve: stop after N seconds (default 60)
  --call HOST:PORT    call a jsonrpc server, e.g. Go's interop/go/arith_server
  --help              print this help";

fn main() -> Result<(), Box<dyn Error>> {
    let flags = args::Flags::parse(USAGE)?;
    if let Some(addr) = flags.get_str("serve") {
        return serve(addr, flags.get("seconds", 60)?);
    }
    if let Some(addr) = flags.get_str("call") {
        return call_all(&JsonRpcClient::dial(addr)?);
    }
    let server = Server::new();
    server.register(ArithServer::new(Calculator))?;
    let running = server.serve_jsonrpc("127.0.0.1:0")?;
    println!("serving Arith over jsonrpc on {}", running.local_addr());
    show_wire(&running.local_addr().to_string())?;
    call_all(&JsonRpcClient::dial(running.local_addr())?)?;
    running.shutdown();
    Ok(())
}

/// Serves Arith over jsonrpc on `addr` for `seconds`.
fn serve(addr: &str, seconds: u64) -> Result<(), Box<dyn Error>> {
    let server = Server::new();
    server.register(ArithServer::new(Calculator))?;
    let running = server.serve_jsonrpc(addr)?;
    println!(
        "serving Arith over jsonrpc on {} for {seconds} s",
        running.local_addr()
    );
    std::thread::sleep(Duration::from_secs(seconds));
    running.shutdown();
    Ok(())
}

/// Sends one request by hand and prints the bytes each way: the whole protocol.
fn show_wire(addr: &str) -> Result<(), Box<dyn Error>> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let request = "{\"method\":\"Arith.Multiply\",\"params\":[{\"A\":7,\"B\":8}],\"id\":0}\n";
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    BufReader::new(stream).read_line(&mut response)?;
    print!("wire  → {request}wire  ← {response}");
    Ok(())
}

/// The same checks as Go's `interop/go/arith_client`, through netrpc's jsonrpc client.
fn call_all(client: &JsonRpcClient) -> Result<(), Box<dyn Error>> {
    let args = Args { a: 7, b: 8 };
    let product: i64 = client.call("Arith.Multiply", &args)?;
    let sum: i64 = client.call("Arith.Sum", &args)?;
    let quotient: Quotient = client.call("Arith.Divide", &Args { a: 17, b: 5 })?;
    println!("Multiply(7, 8) = {product}, Sum(7, 8) = {sum}, Divide(17, 5) = {quotient:?}");

    match client.call::<_, Quotient>("Arith.Divide", &Args { a: 1, b: 0 }) {
        Err(RpcError::Method { message }) => {
            println!("Divide(1, 0): the method's error `{message}`")
        }
        other => return Err(format!("Divide(1, 0) gave {other:?}").into()),
    }
    match client.call::<_, i64>("Arith.Foo", &args) {
        Err(err @ RpcError::UnknownMethod { .. }) => println!("Arith.Foo: {err}"),
        other => return Err(format!("Arith.Foo gave {other:?}").into()),
    }

    let started = Instant::now();
    let calls: Vec<Call<i64>> = (0..1000)
        .map(|i| client.go("Arith.Multiply", &Args { a: i, b: 3 }))
        .collect();
    for (i, call) in (0..).zip(calls) {
        let product = call.wait()?;
        if product != i * 3 {
            return Err(format!("Multiply({i}, 3) gave {product}").into());
        }
    }
    println!("1000 concurrent calls correct in {:.0?}", started.elapsed());
    Ok(())
}
