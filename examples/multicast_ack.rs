//! Multicast with acknowledgements (SEEDS §2): one message to many hosts, one answer each.
//!
//! Starts three worker servers on 127.0.0.1 (one of them slow), adds an address where nothing
//! listens, and multicasts one task to all four with a 1-second deadline. Each host's line
//! shows its acknowledgement or its typed error: the dead host is `unreachable`, the slow one
//! times out, and neither delays the others. Then the same multicast as a stream, printing
//! each answer the moment it arrives.
//!
//! Run: `cargo run --example multicast_ack`

#[path = "support/worker.rs"]
mod worker;

use std::error::Error;
use std::net::TcpListener;
use std::time::Duration;

use netrpc::cluster::{HostAnswer, Multicast, Outcome};
use netrpc::{Server, ServerHandle};
use worker::{Task, TaskReply, Worker, WorkerServiceServer};

fn main() -> Result<(), Box<dyn Error>> {
    let mut servers: Vec<ServerHandle> = Vec::new();
    for (id, delay) in [("node-1", 0), ("node-2", 0), ("node-3 (slow)", 3000)] {
        let server = Server::new();
        server.register(WorkerServiceServer::new(Worker {
            id: id.into(),
            delay: Duration::from_millis(delay),
        }))?;
        servers.push(server.serve("127.0.0.1:0")?);
    }
    let mut hosts: Vec<String> = servers.iter().map(|s| s.local_addr().to_string()).collect();
    // An address nothing listens on: a host that is down.
    hosts.push(TcpListener::bind("127.0.0.1:0")?.local_addr()?.to_string());

    let group = Multicast::new(hosts).deadline(Duration::from_secs(1));
    let task = Task {
        id: 1,
        text: "replicate me".into(),
    };

    println!("multicast to {} hosts, deadline 1 s:", group.hosts().len());
    for answer in group.call::<_, TaskReply>("WorkerService.DoTask", &task) {
        print_answer(&answer);
    }

    println!("\nthe same, streamed as the answers arrive (connections reused):");
    for answer in group.stream::<_, TaskReply>("WorkerService.DoTask", &task) {
        print_answer(&answer);
    }
    Ok(())
}

fn print_answer(answer: &HostAnswer<TaskReply>) {
    let what = match &answer.outcome {
        Outcome::Answered(ack) => format!("ack from {}: {:?}", ack.worker_id, ack.result),
        Outcome::Failed(err) => format!("error: {err}"),
        Outcome::Abandoned => "abandoned (fail limit reached)".to_owned(),
    };
    println!(
        "  {:<22} after {:>6.1} ms  {what}",
        answer.host,
        answer.elapsed.as_secs_f64() * 1e3
    );
}
