//! TLS with mutual authentication: `Arith` served over TLS, clients proving who they are with
//! a certificate, and the errors of a client that trusts the wrong CA or has no certificate.
//!
//! Go: `net/rpc` has no security of its own; Go wraps the listener in `tls.NewListener` with a
//! `tls.Config{ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}` and dials with
//! `tls.Dial`, then `rpc.NewClient(conn)`. SEEDS §7 "Security".
//!
//! Run: `cargo run --example tls_arith`
//!
//! Prints the certificates it made (a CA, a server certificate for `localhost`, a client
//! certificate, all in memory, new each run), a call over mutual TLS, then the dial errors of
//! a client that trusts another CA and of a client with no certificate, and the server's
//! count of refused handshakes.

#[path = "support/arith.rs"]
mod arith;
#[path = "support/certs.rs"]
mod certs;

use std::error::Error;
use std::time::Duration;

use arith::{Args, ArithClient, ArithServer, Calculator};
use certs::Authority;
use netrpc::tls::{self, ClientTls};
use netrpc::{Client, RpcError, Server};

fn main() -> Result<(), Box<dyn Error>> {
    // Certificates: one CA signs the server's and the client's; another CA signs nothing here.
    let ca = Authority::new("netrpc example ca")?;
    let server_identity = ca.server()?;
    let client_identity = ca.client("example-client")?;
    let other_ca = Authority::new("an unrelated ca")?;
    println!("made a ca, a server certificate for localhost and 127.0.0.1, a client certificate");

    // Server: present the server certificate; require client certificates signed by `ca`.
    let (chain, key) = server_identity.pair();
    let server_tls = tls::server_config(chain, key, Some(ca.roots()?))?;
    let server = Server::builder().tls(server_tls).build();
    server.register(ArithServer::new(Calculator))?;
    let running = server.serve("127.0.0.1:0")?;
    let addr = running.local_addr();
    println!("server listening on {addr} (tls, client certificates required)");

    // A client that trusts `ca` and presents its certificate: calls work as in plaintext.
    let client_tls = tls::client_config(ca.roots()?, Some(client_identity.pair()))?;
    let arith = ArithClient::new(dial(ClientTls::new(client_tls, "localhost")?, addr)?);
    let product = arith.multiply(&Args { a: 7, b: 8 })?;
    println!("mutual tls: Arith.Multiply(7, 8) = {product}");

    // A client that trusts another CA refuses the server's certificate: the dial fails.
    let wrong_ca = tls::client_config(other_ca.roots()?, Some(client_identity.pair()))?;
    match dial(ClientTls::new(wrong_ca, "localhost")?, addr) {
        Ok(_) => return Err("a client trusting another ca was let in".into()),
        Err(err) => println!("wrong ca:   {}", chain_of(&err)),
    }

    // A client with no certificate is refused by the server: the dial fails too.
    let anonymous = tls::client_config(ca.roots()?, None)?;
    match dial(ClientTls::new(anonymous, "localhost")?, addr) {
        Ok(_) => return Err("a client without a certificate was let in".into()),
        Err(err) => println!("no cert:    {}", chain_of(&err)),
    }

    // The server goes on serving; it counted both refused handshakes (the count lands as it
    // reads each client's alert, so give it a moment).
    println!(
        "again:      Arith.Sum(2, 3) = {}",
        arith.sum(&Args { a: 2, b: 3 })?
    );
    for _ in 0..100 {
        if server.stats().tls_errors >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("server tls_errors = {}", server.stats().tls_errors);

    arith.client().close();
    running.shutdown();
    println!("done");
    Ok(())
}

/// Dials `addr` over TLS with short timeouts (loopback).
fn dial(tls: ClientTls, addr: std::net::SocketAddr) -> Result<Client, RpcError> {
    Client::builder()
        .tls(tls)
        .connect_timeout(Duration::from_secs(5))
        .call_timeout(Duration::from_secs(5))
        .dial(addr)
}

/// An error and its causes, as one line: "tls handshake with ... failed: tls failed: ...".
fn chain_of(err: &dyn Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
