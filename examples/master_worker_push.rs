//! Master/worker in push mode (SEEDS §3): the master hands task `i` to worker `i mod n`, all at
//! once, and collects every result; a dead worker's tasks go to a live one.
//!
//! Run, in three terminals:
//! `cargo run --example master_worker_push -- worker --id 1 --addr 127.0.0.1:9001`
//! `cargo run --example master_worker_push -- worker --id 2 --addr 127.0.0.1:9002`
//! `cargo run --example master_worker_push -- master --workers 127.0.0.1:9001,127.0.0.1:9002`
//! or all in one process: `cargo run --example master_worker_push -- demo`
//! (two workers plus one address where nothing listens, to show the failover).

#[path = "support/args.rs"]
mod args;
#[path = "support/worker.rs"]
mod worker;

use std::error::Error;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use netrpc::cluster::Distributor;
use netrpc::Server;
use worker::{tutorial_tasks, TaskReply, Worker, WorkerServiceServer};

const USAGE: &str = "\
master_worker_push: the push-mode master/worker tutorial

usage: cargo run --example master_worker_push -- worker --id ID --addr HOST:PORT [--seconds N]
       cargo run --example master_worker_push -- master --workers HOST:PORT,HOST:PORT [--tasks N]
       cargo run --example master_worker_push -- demo [--tasks N]

  worker   serve WorkerService.DoTask (upper-cases the text, replies with the worker id)
           until interrupted, or for --seconds N
  master   send --tasks N (default 10) tasks round robin to the workers and print every result
  demo     start two workers and the master in this process, plus a dead worker address
  --help   print this help";

fn main() -> Result<(), Box<dyn Error>> {
    let mut argv = std::env::args().skip(1);
    let mode = argv.next().unwrap_or_else(|| "--help".into());
    let flags = args::Flags::from_args(argv, USAGE)?;
    match mode.as_str() {
        "worker" => run_worker(&flags),
        "master" => {
            let workers = flags.get_str("workers").ok_or("master needs --workers")?;
            run_master(
                workers.split(',').map(str::to_owned).collect(),
                flags.get("tasks", 10)?,
            )
        }
        "demo" => run_demo(flags.get("tasks", 10)?),
        "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown mode `{other}`\n\n{USAGE}").into()),
    }
}

fn run_worker(flags: &args::Flags) -> Result<(), Box<dyn Error>> {
    let id = flags.get_str("id").ok_or("worker needs --id")?;
    let addr = flags.get_str("addr").unwrap_or("127.0.0.1:9001");
    let server = Server::new();
    server.register(WorkerServiceServer::new(Worker::new(format!(
        "worker-{id}"
    ))))?;
    let running = server.serve(addr)?;
    println!(
        "worker-{id} serving WorkerService on {}",
        running.local_addr()
    );
    let seconds: u64 = flags.get("seconds", u64::MAX / 4)?;
    std::thread::sleep(Duration::from_secs(seconds));
    Ok(())
}

fn run_master(workers: Vec<String>, tasks: u64) -> Result<(), Box<dyn Error>> {
    let tasks = tutorial_tasks(tasks);
    println!("master: {} tasks to {} workers", tasks.len(), workers.len());
    let started = Instant::now();
    let run = Distributor::new(workers)
        .connect_timeout(Duration::from_secs(1))
        .call_timeout(Duration::from_secs(5))
        .run::<_, TaskReply>("WorkerService.DoTask", &tasks);
    for (task, result) in tasks.iter().zip(&run.results) {
        match &result.result {
            Ok(reply) => println!(
                "  task {:>2} {:<18} -> {:<18} by {}{}",
                task.id,
                format!("{:?}", task.text),
                format!("{:?}", reply.result),
                reply.worker_id,
                if result.attempts > 1 {
                    " (reassigned)"
                } else {
                    ""
                }
            ),
            Err(err) => println!("  task {:>2} failed on every worker: {err}", task.id),
        }
    }
    let done = run.results.iter().filter(|r| r.result.is_ok()).count();
    println!(
        "master: {done}/{} results in {:.1} ms; dead workers: {:?}; tasks moved off their \
         round-robin worker: {}",
        tasks.len(),
        started.elapsed().as_secs_f64() * 1e3,
        run.dead_workers,
        run.reassigned
    );
    if done == tasks.len() {
        Ok(())
    } else {
        Err("some tasks failed on every worker".into())
    }
}

fn run_demo(tasks: u64) -> Result<(), Box<dyn Error>> {
    let mut handles = Vec::new();
    let mut addrs = Vec::new();
    for id in 1..=2 {
        let server = Server::new();
        server.register(WorkerServiceServer::new(Worker::new(format!(
            "worker-{id}"
        ))))?;
        let running = server.serve("127.0.0.1:0")?;
        println!("worker-{id} serving on {}", running.local_addr());
        addrs.push(running.local_addr().to_string());
        handles.push(running);
    }
    let dead = TcpListener::bind("127.0.0.1:0")?.local_addr()?.to_string();
    println!("worker-3 is down: nothing listens on {dead}");
    addrs.push(dead);
    run_master(addrs, tasks)
}
