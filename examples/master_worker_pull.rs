//! Master/worker in pull mode with fault tolerance (SEEDS §4): workers ask the master for
//! tasks under a lease; a task whose lease expires goes back to the queue, and a late result
//! is acknowledged and ignored, so every task completes exactly once.
//!
//! Run, in separate terminals:
//! `cargo run --example master_worker_pull -- master --addr 127.0.0.1:9100 --tasks 10`
//! `cargo run --example master_worker_pull -- worker --id w01 --master 127.0.0.1:9100`
//! `cargo run --example master_worker_pull -- worker --id w02 --master 127.0.0.1:9100 --stall-ms 4000`
//! or all in one process: `cargo run --example master_worker_pull -- demo`, where worker w03
//! stalls on its first task past the lease, so the output shows the task re-queued, finished
//! by another worker, and w03's late submission ignored.

#[path = "support/args.rs"]
mod args;

use std::error::Error;
use std::thread;
use std::time::{Duration, Instant};

use netrpc::cluster::{
    run_worker, QueueEvent, QueueObserver, TaskQueue, TaskQueueClient, WorkerExit, WorkerSummary,
};
use netrpc::{Client, RpcError, Server};

const USAGE: &str = "\
master_worker_pull: the pull-mode master/worker tutorial, with leases

usage: cargo run --example master_worker_pull -- master [--addr HOST:PORT] [--tasks N] [--lease-ms MS]
       cargo run --example master_worker_pull -- worker --id ID [--master HOST:PORT] [--stall-ms MS]
       cargo run --example master_worker_pull -- demo

  master      serve Master.RequestTask / Master.SubmitTaskResult for --tasks N (default 10)
              with leases of --lease-ms (default 3000); exit once every task is completed
  worker      request, process (upper-case, 100 ms), submit, repeat; exit when told there is
              no more work or when the master is gone. --stall-ms makes its first task take
              that long (a stuck worker)
  demo        a master and three workers in this process; w03 stalls past its lease
  --help      print this help";

/// Time each task takes a healthy worker.
const WORK_TIME: Duration = Duration::from_millis(100);

fn main() -> Result<(), Box<dyn Error>> {
    let mut argv = std::env::args().skip(1);
    let mode = argv.next().unwrap_or_else(|| "--help".into());
    let flags = args::Flags::from_args(argv, USAGE)?;
    match mode.as_str() {
        "master" => run_master(
            flags.get_str("addr").unwrap_or("127.0.0.1:9100"),
            flags.get("tasks", 10)?,
            Duration::from_millis(flags.get("lease-ms", 3000)?),
        ),
        "worker" => {
            let id = flags.get_str("id").ok_or("worker needs --id")?;
            let master = flags.get_str("master").unwrap_or("127.0.0.1:9100");
            let stall = Duration::from_millis(flags.get("stall-ms", 0)?);
            let summary = work(master, id, stall)?;
            report_worker(id, &summary);
            Ok(())
        }
        "demo" => run_demo(),
        "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown mode `{other}`\n\n{USAGE}").into()),
    }
}

fn tasks(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("task-{i:02}")).collect()
}

/// Prints every queue event, with the time since the master started.
fn printing_observer(started: Instant) -> QueueObserver {
    Box::new(move |event| {
        let at = started.elapsed().as_secs_f64();
        let line = match event {
            QueueEvent::Leased { task_id, worker_id } => {
                format!("task {task_id:>2} leased to {worker_id}")
            }
            QueueEvent::Requeued { task_id, worker_id } => {
                format!("task {task_id:>2} lease of {worker_id} expired: back in the queue")
            }
            QueueEvent::Completed { task_id, worker_id } => {
                format!("task {task_id:>2} completed by {worker_id}")
            }
            QueueEvent::Ignored {
                task_id,
                worker_id,
                reason,
            } => format!(
                "task {task_id:>2} result from {worker_id} acknowledged and ignored: {reason:?}"
            ),
        };
        println!("[{at:6.3} s] master: {line}");
    })
}

fn run_master(addr: &str, count: usize, lease: Duration) -> Result<(), Box<dyn Error>> {
    let started = Instant::now();
    let queue: TaskQueue<String, String> =
        TaskQueue::with_lease(tasks(count), lease, Some(printing_observer(started)));
    let server = Server::new();
    server.register(queue.service())?;
    let running = server.serve(addr)?;
    println!(
        "master: {count} tasks, lease {lease:?}, serving on {}",
        running.local_addr()
    );
    while !queue.wait_done(Duration::from_secs(60)) {
        println!("master: still waiting: {:?}", queue.stats());
    }
    // Stay a moment so workers hear "no more tasks" instead of finding the master gone.
    thread::sleep(Duration::from_millis(500));
    report_master(&queue);
    Ok(())
}

/// The worker loop: upper-cases each task; the first one takes `stall` if non-zero.
fn work(master: &str, id: &str, stall: Duration) -> Result<WorkerSummary, RpcError> {
    let queue: TaskQueueClient<String, String> = TaskQueueClient::new(Client::dial(master)?);
    let mut first = true;
    Ok(run_worker(&queue, id, |_, text| {
        let pause = if first && !stall.is_zero() {
            stall
        } else {
            WORK_TIME
        };
        first = false;
        thread::sleep(pause);
        text.to_uppercase()
    }))
}

fn report_worker(id: &str, summary: &WorkerSummary) {
    let exit = match &summary.exit {
        WorkerExit::NoMoreTasks => "no more tasks".to_owned(),
        WorkerExit::MasterGone(err) => format!("master gone ({err})"),
    };
    println!(
        "worker {id}: exits ({exit}); {} results accepted, {} ignored",
        summary.accepted, summary.ignored
    );
}

fn report_master(queue: &TaskQueue<String, String>) {
    let stats = queue.stats();
    println!(
        "master: {}/{} completed, {} leases granted, {} re-queued, {} late/stale/duplicate \
         submissions ignored",
        stats.completed,
        stats.tasks,
        stats.leases_granted,
        stats.requeued,
        stats.late + stats.stale + stats.duplicate
    );
    if let Some(results) = queue.results() {
        println!("master: results {results:?}");
    }
}

fn run_demo() -> Result<(), Box<dyn Error>> {
    let started = Instant::now();
    let lease = Duration::from_millis(500);
    let queue: TaskQueue<String, String> =
        TaskQueue::with_lease(tasks(8), lease, Some(printing_observer(started)));
    let server = Server::new();
    server.register(queue.service())?;
    let running = server.serve("127.0.0.1:0")?;
    let addr = running.local_addr().to_string();
    println!("master: 8 tasks, lease {lease:?}, on {addr}; w03 will stall 1.2 s on its first task");

    let workers: Vec<_> = [("w01", 0), ("w02", 0), ("w03", 1200)]
        .into_iter()
        .map(|(id, stall_ms)| {
            let addr = addr.clone();
            thread::spawn(move || (id, work(&addr, id, Duration::from_millis(stall_ms))))
        })
        .collect();
    for worker in workers {
        let (id, summary) = worker.join().map_err(|_| "a worker thread panicked")?;
        report_worker(id, &summary?);
    }
    report_master(&queue);
    running.shutdown();
    if queue.is_done() {
        Ok(())
    } else {
        Err("not every task completed".into())
    }
}
