//! Master/worker in push mode (SEEDS §3) and pull mode with leases (SEEDS §4): every task's
//! result collected exactly once, through dead workers, crashed workers, late submissions and
//! a master that goes away.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

#[path = "../examples/support/worker.rs"]
mod worker;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use netrpc::cluster::{
    run_worker, Assignment, Distributor, IgnoredReason, Submission, SubmitAck, TaskQueue,
    TaskQueueClient, WorkerExit,
};
use netrpc::{Client, Server, ServerHandle};
use worker::{tutorial_tasks, TaskReply, Worker, WorkerServiceServer};

fn start_worker(worker: Worker) -> ServerHandle {
    let server = Server::new();
    server.register(WorkerServiceServer::new(worker)).unwrap();
    server.serve("127.0.0.1:0").unwrap()
}

fn dead_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn push_mode_collects_every_result_once_round_robin() {
    let workers: Vec<ServerHandle> = (1..=3)
        .map(|i| start_worker(Worker::new(format!("worker-{i}"))))
        .collect();
    let addrs: Vec<String> = workers.iter().map(|w| w.local_addr().to_string()).collect();
    let tasks = tutorial_tasks(30);
    let run = Distributor::new(addrs).run::<_, TaskReply>("WorkerService.DoTask", &tasks);

    assert_eq!(run.results.len(), 30);
    assert!(run.dead_workers.is_empty());
    assert_eq!(run.reassigned, 0);
    for (i, (task, result)) in tasks.iter().zip(&run.results).enumerate() {
        let reply = result.result.as_ref().unwrap();
        assert_eq!(reply.result, task.text.to_uppercase());
        assert_eq!(
            reply.worker_id,
            format!("worker-{}", i % 3 + 1),
            "task i goes to worker i mod n"
        );
        assert_eq!(result.attempts, 1);
    }
}

#[test]
fn push_mode_with_more_tasks_than_a_worker_may_hold_completes_every_one() {
    let workers: Vec<ServerHandle> = (1..=2)
        .map(|i| start_worker(Worker::new(format!("worker-{i}"))))
        .collect();
    let addrs: Vec<String> = workers.iter().map(|w| w.local_addr().to_string()).collect();
    // 3,000 tasks on 2 workers: far beyond the 1,000 calls a client or server takes at once.
    let tasks = tutorial_tasks(3_000);
    let run = Distributor::new(addrs)
        .max_in_flight_per_worker(50)
        .run::<_, TaskReply>("WorkerService.DoTask", &tasks);
    assert!(run.dead_workers.is_empty(), "{:?}", run.dead_workers);
    for (task, result) in tasks.iter().zip(&run.results) {
        let reply = result.result.as_ref().unwrap();
        assert_eq!(reply.result, task.text.to_uppercase());
        assert_eq!(result.attempts, 1);
    }
}

#[test]
fn push_mode_moves_a_dead_workers_tasks_to_live_ones() {
    let live: Vec<ServerHandle> = (1..=2)
        .map(|i| start_worker(Worker::new(format!("worker-{i}"))))
        .collect();
    let dead = dead_addr().to_string();
    let addrs = vec![
        live[0].local_addr().to_string(),
        dead.clone(),
        live[1].local_addr().to_string(),
    ];
    let tasks = tutorial_tasks(30);
    let run = Distributor::new(addrs).run::<_, TaskReply>("WorkerService.DoTask", &tasks);

    assert_eq!(run.dead_workers, vec![dead]);
    assert_eq!(
        run.reassigned, 10,
        "tasks 1, 4, 7, ... went to the next live worker"
    );
    for (task, result) in tasks.iter().zip(&run.results) {
        let reply = result.result.as_ref().unwrap();
        assert_eq!(reply.result, task.text.to_uppercase());
        assert_ne!(reply.worker_id, "", "done by a live worker");
    }
}

#[test]
fn push_mode_reassigns_the_tasks_of_a_worker_that_dies_mid_run() {
    let steady = start_worker(Worker::new("steady"));
    let doomed = start_worker(Worker {
        id: "doomed".into(),
        delay: Duration::from_millis(300),
    });
    let addrs = vec![
        steady.local_addr().to_string(),
        doomed.local_addr().to_string(),
    ];
    let killer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(100));
        doomed.shutdown();
    });
    let tasks = tutorial_tasks(20);
    let run = Distributor::new(addrs).run::<_, TaskReply>("WorkerService.DoTask", &tasks);
    killer.join().unwrap();

    assert_eq!(run.dead_workers.len(), 1);
    assert!(run.reassigned >= 1, "the doomed worker's tasks moved");
    for (task, result) in tasks.iter().zip(&run.results) {
        let reply = result.result.as_ref().unwrap();
        assert_eq!(reply.result, task.text.to_uppercase());
    }
    let moved = run.results.iter().filter(|r| r.attempts == 2).count();
    assert_eq!(moved, run.reassigned);
}

/// The pull-mode tasks: numbers to square, slowly enough that leases matter.
fn square(n: u64) -> u64 {
    thread::sleep(Duration::from_millis(2));
    n * n
}

struct Master {
    queue: TaskQueue<u64, u64>,
    handle: ServerHandle,
}

fn start_master(tasks: Vec<u64>, lease: Duration) -> Master {
    let queue = TaskQueue::with_lease(tasks, lease, None);
    let server = Server::new();
    server.register(queue.service()).unwrap();
    let handle = server.serve("127.0.0.1:0").unwrap();
    Master { queue, handle }
}

fn queue_client(addr: SocketAddr) -> TaskQueueClient<u64, u64> {
    TaskQueueClient::new(Client::dial(addr).unwrap())
}

#[test]
fn pull_mode_completes_every_task_exactly_once_through_crashes_and_late_submissions() {
    const TASKS: u64 = 50;
    const CRASHES: u64 = 5;
    let lease = Duration::from_millis(200);
    let master = start_master((0..TASKS).collect(), lease);
    let addr = master.handle.local_addr();
    let started = Instant::now();

    // Two honest workers.
    let honest: Vec<_> = (1..=2)
        .map(|i| {
            thread::spawn(move || {
                run_worker(&queue_client(addr), &format!("w{i}"), |_, n| square(n))
            })
        })
        .collect();

    // A worker that takes a task and crashes (drops its connection) without submitting.
    let crashes = Arc::new(AtomicU64::new(0));
    let crasher = {
        let crashes = Arc::clone(&crashes);
        thread::spawn(move || {
            while crashes.load(Ordering::SeqCst) < CRASHES {
                let queue = queue_client(addr);
                match queue.request_task("crasher").unwrap() {
                    Assignment::Task { .. } => {
                        crashes.fetch_add(1, Ordering::SeqCst);
                        queue.client().close();
                    }
                    Assignment::Wait { retry_after_ms } => {
                        thread::sleep(Duration::from_millis(retry_after_ms));
                    }
                    Assignment::NoMoreTasks => break,
                }
            }
        })
    };

    // A worker that stalls past its lease, then submits.
    let late = thread::spawn(move || {
        let queue = queue_client(addr);
        let Assignment::Task {
            task_id,
            lease_id,
            payload,
            ..
        } = queue.request_task("sleepy").unwrap()
        else {
            panic!("the sleepy worker asks first and gets a task");
        };
        thread::sleep(lease + Duration::from_millis(150));
        let submission = Submission {
            worker_id: "sleepy".into(),
            task_id,
            lease_id,
            result: payload * payload,
        };
        queue.submit(&submission).unwrap()
    });

    assert!(
        master.queue.wait_done(Duration::from_secs(8)),
        "{:?}",
        master.queue.stats()
    );
    let late_ack = late.join().unwrap();
    crasher.join().unwrap();
    let summaries: Vec<_> = honest.into_iter().map(|h| h.join().unwrap()).collect();
    let elapsed = started.elapsed();

    let stats = master.queue.stats();
    let expected: Vec<u64> = (0..TASKS).map(|n| n * n).collect();
    assert_eq!(
        master.queue.results().unwrap(),
        expected,
        "same as a sequential run"
    );
    assert_eq!(stats.completed, TASKS as usize);
    assert_eq!(stats.accepted, TASKS, "nothing counted twice");
    let injected = crashes.load(Ordering::SeqCst);
    assert_eq!(injected, CRASHES);
    assert!(
        stats.requeued > injected,
        "crashes and the stall were re-queued: {stats:?}"
    );
    assert!(
        matches!(
            late_ack,
            SubmitAck::Ignored(
                IgnoredReason::Late | IgnoredReason::Stale | IgnoredReason::Duplicate
            )
        ),
        "{late_ack:?}"
    );
    assert_eq!(stats.late + stats.stale + stats.duplicate, 1, "{stats:?}");
    for summary in &summaries {
        assert!(
            matches!(summary.exit, WorkerExit::NoMoreTasks),
            "{summary:?}"
        );
    }
    let accepted_by_workers: u64 = summaries.iter().map(|s| s.accepted).sum();
    assert_eq!(accepted_by_workers, TASKS);
    println!(
        "pull mode: {TASKS} tasks, {injected} injected crashes, 1 late submission ({late_ack:?}), \
         {} completed, {} re-queued, {} double-counted, in {elapsed:?}",
        stats.completed,
        stats.requeued,
        stats.accepted - TASKS
    );
}

#[test]
fn pull_mode_workers_exit_promptly_when_the_master_goes_away() {
    let master = start_master((0..10_000).collect(), Duration::from_secs(3));
    let addr = master.handle.local_addr();
    let workers: Vec<_> = (1..=4)
        .map(|i| {
            thread::spawn(move || {
                run_worker(&queue_client(addr), &format!("w{i}"), |_, n| {
                    thread::sleep(Duration::from_millis(5));
                    n
                })
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(200));
    let killed_at = Instant::now();
    master.handle.shutdown();
    for worker in workers {
        let summary = worker.join().unwrap();
        assert!(
            matches!(summary.exit, WorkerExit::MasterGone(_)),
            "{summary:?}"
        );
    }
    assert!(
        killed_at.elapsed() < Duration::from_secs(2),
        "every worker exited within 2 s: {:?}",
        killed_at.elapsed()
    );
}

#[test]
fn submissions_that_are_duplicate_or_unknown_are_acknowledged_and_ignored() {
    let queue: TaskQueue<u64, u64> = TaskQueue::new(vec![3]);
    let Assignment::Task { lease_id, .. } = queue.request_task("a") else {
        panic!("one idle task");
    };
    let submit = |task_id, lease_id| {
        queue.submit(Submission {
            worker_id: "a".into(),
            task_id,
            lease_id,
            result: 9,
        })
    };
    assert_eq!(submit(0, lease_id), SubmitAck::Accepted);
    assert_eq!(
        submit(0, lease_id),
        SubmitAck::Ignored(IgnoredReason::Duplicate)
    );
    assert_eq!(submit(7, 1), SubmitAck::Ignored(IgnoredReason::UnknownTask));
    assert_eq!(queue.request_task("a"), Assignment::NoMoreTasks);
    assert_eq!(queue.results(), Some(vec![9]));
    let stats = queue.stats();
    assert_eq!((stats.accepted, stats.duplicate, stats.unknown), (1, 1, 1));
}

#[test]
fn a_submission_after_the_lease_expired_is_late_and_the_task_goes_back_to_the_queue() {
    let queue: TaskQueue<u64, u64> =
        TaskQueue::with_lease(vec![4], Duration::from_millis(30), None);
    let Assignment::Task { lease_id, .. } = queue.request_task("slow") else {
        panic!("one idle task");
    };
    thread::sleep(Duration::from_millis(60));
    let ack = queue.submit(Submission {
        worker_id: "slow".into(),
        task_id: 0,
        lease_id,
        result: 16,
    });
    assert_eq!(ack, SubmitAck::Ignored(IgnoredReason::Late));
    assert!(!queue.is_done());
    let Assignment::Task {
        lease_id: second, ..
    } = queue.request_task("fast")
    else {
        panic!("the task is idle again");
    };
    assert_ne!(second, lease_id);
    let stats = queue.stats();
    assert_eq!((stats.late, stats.requeued, stats.completed), (1, 1, 0));
}

/// A tutorial worker that counts the tasks it runs, to show none runs twice.
struct CountingWorker {
    worker: Worker,
    runs: Arc<AtomicU64>,
}

impl worker::WorkerService for CountingWorker {
    fn do_task(&self, task: worker::Task) -> Result<TaskReply, netrpc::ServiceError> {
        self.runs.fetch_add(1, Ordering::Relaxed);
        self.worker.do_task(task)
    }
}

/// Starts `count` counting workers, each answering at most `max_in_flight` calls per
/// connection at once (`Throttled` beyond) and taking `delay` per task.
fn start_counting_workers(
    count: usize,
    max_in_flight: usize,
    delay: Duration,
    runs: &Arc<AtomicU64>,
) -> Vec<(Server, ServerHandle)> {
    (1..=count)
        .map(|i| {
            let server = Server::builder()
                .max_in_flight_per_conn(max_in_flight)
                .build();
            let worker = CountingWorker {
                worker: Worker {
                    id: format!("worker-{i}"),
                    delay,
                },
                runs: Arc::clone(runs),
            };
            server.register(WorkerServiceServer::new(worker)).unwrap();
            let handle = server.serve("127.0.0.1:0").unwrap();
            (server, handle)
        })
        .collect()
}

/// Checks that every task of a push-mode run succeeded once, on a live worker.
fn assert_every_task_done_once(
    tasks: &[worker::Task],
    run: &netrpc::cluster::Distribution<TaskReply>,
    runs: &AtomicU64,
) {
    let done = run.results.iter().filter(|r| r.result.is_ok()).count();
    assert_eq!(
        done,
        tasks.len(),
        "tasks done; first failure: {:?}",
        run.results.iter().find(|r| r.result.is_err())
    );
    assert!(run.dead_workers.is_empty(), "{:?}", run.dead_workers);
    for (task, result) in tasks.iter().zip(&run.results) {
        let reply = result.result.as_ref().unwrap();
        assert_eq!(reply.result, task.text.to_uppercase());
        assert_eq!(result.attempts, 1, "a throttled call is not an attempt");
    }
    assert_eq!(
        runs.load(Ordering::Relaxed),
        tasks.len() as u64,
        "each task ran exactly once"
    );
}

#[test]
fn push_mode_with_a_window_above_the_clients_pending_cap_completes_every_task() {
    let runs = Arc::new(AtomicU64::new(0));
    let workers = start_counting_workers(2, 1_000, Duration::ZERO, &runs);
    let addrs: Vec<String> = workers
        .iter()
        .map(|(_, handle)| handle.local_addr().to_string())
        .collect();
    let tasks = tutorial_tasks(1_500);
    // The client refuses a fifth pending call `Throttled` at once, without sending it.
    let run = Distributor::new(addrs)
        .max_pending_calls(4)
        .max_in_flight_per_worker(64)
        .run::<_, TaskReply>("WorkerService.DoTask", &tasks);
    assert_every_task_done_once(&tasks, &run, &runs);
}

#[test]
fn push_mode_treats_a_workers_throttled_answers_as_back_pressure_not_failure() {
    let runs = Arc::new(AtomicU64::new(0));
    // Each worker's server answers a fifth call in flight on a connection `Throttled`.
    let workers = start_counting_workers(2, 4, Duration::from_millis(1), &runs);
    let addrs: Vec<String> = workers
        .iter()
        .map(|(_, handle)| handle.local_addr().to_string())
        .collect();
    let tasks = tutorial_tasks(1_500);
    let run = Distributor::new(addrs)
        .max_in_flight_per_worker(64)
        .run::<_, TaskReply>("WorkerService.DoTask", &tasks);
    assert_every_task_done_once(&tasks, &run, &runs);
    let throttled: u64 = workers
        .iter()
        .map(|(server, _)| server.stats().call_errors(netrpc::ErrorCode::Throttled))
        .sum();
    assert!(throttled > 0, "the workers' servers did throttle calls");
}

#[test]
fn push_mode_retries_a_worker_that_throttles_while_holding_nothing_after_a_pause_not_at_once() {
    // One call slot on the whole server, taken by another client: the distributor's calls
    // are refused `Throttled` while it holds none there, until that call ends.
    let busy = BusyWorker::start(Duration::from_millis(100));
    let addr = busy.addr.clone();

    let started = Instant::now();
    let tasks = tutorial_tasks(3);
    let run = Distributor::new([addr]).run::<_, TaskReply>("WorkerService.DoTask", &tasks);
    let elapsed = started.elapsed();
    busy.blocker.wait().unwrap();

    assert!(run.dead_workers.is_empty(), "{:?}", run.dead_workers);
    for (task, result) in tasks.iter().zip(&run.results) {
        assert_eq!(
            result.result.as_ref().unwrap().result,
            task.text.to_uppercase()
        );
        assert_eq!(result.attempts, 1);
    }
    // Retried once per 10 ms pause at most (plus the first refusals), not in a hot loop.
    let throttled = busy
        .server
        .stats()
        .call_errors(netrpc::ErrorCode::Throttled);
    let paced = elapsed.as_millis() as u64 / 10 + tasks.len() as u64 + 1;
    assert!(throttled >= 1, "the worker did throttle");
    assert!(throttled <= paced, "{throttled} refusals in {elapsed:?}");
}

#[test]
fn waiting_for_the_queue_with_duration_max_does_not_panic_and_returns_once_all_are_done() {
    let master = start_master((0..20).collect(), Duration::from_secs(3));
    let addr = master.handle.local_addr();
    let queue = master.queue.clone();
    // "No limit" must not hang the test: the wait runs on a thread we wait for.
    let (done_tx, done) = crossbeam_channel::bounded(1);
    thread::spawn(move || {
        let _ = done_tx.send(queue.wait_done(Duration::MAX));
    });
    let workers: Vec<_> = (0..2)
        .map(|i| {
            thread::spawn(move || {
                run_worker(&queue_client(addr), &format!("w{i}"), |_, n| square(n))
            })
        })
        .collect();

    let all_done = done
        .recv_timeout(Duration::from_secs(10))
        .expect("wait_done(Duration::MAX) returned (and did not panic)");
    assert!(all_done);
    let expected: Vec<u64> = (0..20).map(|n| n * n).collect();
    assert_eq!(master.queue.results(), Some(expected));
    for worker in workers {
        let summary = worker.join().unwrap();
        assert!(
            matches!(summary.exit, WorkerExit::NoMoreTasks),
            "{summary:?}"
        );
    }
    // Already done: returns at once.
    assert!(master.queue.wait_done(Duration::MAX));
}

#[test]
fn push_mode_gives_up_on_a_task_refused_for_a_whole_call_timeout_without_retiring_the_worker() {
    // The server's one call slot stays taken by another client for longer than the
    // distributor's call timeout.
    let busy = BusyWorker::start(Duration::from_millis(1_000));
    let addr = busy.addr.clone();

    let tasks = tutorial_tasks(2);
    let run = Distributor::new([addr])
        .call_timeout(Duration::from_millis(200))
        .run::<_, TaskReply>("WorkerService.DoTask", &tasks);
    busy.blocker.wait().unwrap();

    assert!(run.dead_workers.is_empty(), "{:?}", run.dead_workers);
    for result in &run.results {
        assert!(
            matches!(result.result, Err(netrpc::RpcError::Throttled)),
            "{result:?}"
        );
        assert_eq!(result.attempts, 0, "no worker took the call");
    }
}

/// A worker server with one call slot on the whole server, taken by another client's call
/// that takes `delay`: the distributor's calls are refused `Throttled` until it ends.
struct BusyWorker {
    server: Server,
    _handle: ServerHandle,
    addr: String,
    _other: Client,
    blocker: netrpc::Call<TaskReply>,
}

impl BusyWorker {
    fn start(delay: Duration) -> BusyWorker {
        let server = Server::builder().max_calls(1).build();
        let worker = Worker {
            id: "busy".into(),
            delay,
        };
        server.register(WorkerServiceServer::new(worker)).unwrap();
        let handle = server.serve("127.0.0.1:0").unwrap();
        let addr = handle.local_addr().to_string();
        let other = Client::dial(&*addr).unwrap();
        let blocker = other.go("WorkerService.DoTask", &tutorial_tasks(1)[0]);
        let waited = Instant::now();
        while server.running_handlers() == 0 {
            assert!(
                waited.elapsed() < Duration::from_secs(5),
                "the other client's call never started"
            );
            thread::sleep(Duration::from_millis(1));
        }
        BusyWorker {
            server,
            _handle: handle,
            addr,
            _other: other,
            blocker,
        }
    }
}

#[test]
fn push_mode_dials_again_a_worker_whose_connection_was_refused_at_its_servers_cap() {
    // The worker's server holds one connection, another client's, for 200 ms: the
    // distributor's connection is refused (told `Throttled`, then closed). Once the slot is
    // free, the worker must take the tasks over a new connection, not answer `Throttled`
    // from the closed one until the call timeout.
    let server = Server::builder().max_connections(1).build();
    server
        .register(WorkerServiceServer::new(Worker::new("capped".to_owned())))
        .unwrap();
    let handle = server.serve("127.0.0.1:0").unwrap();
    let addr = handle.local_addr().to_string();
    let holder = Client::dial(handle.local_addr()).unwrap();
    let _: TaskReply = holder
        .call("WorkerService.DoTask", &tutorial_tasks(1)[0])
        .unwrap();
    let freer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(200));
        holder.close();
    });
    let tasks = tutorial_tasks(5);
    let run = Distributor::new([addr])
        .call_timeout(Duration::from_secs(5))
        .run::<_, TaskReply>("WorkerService.DoTask", &tasks);
    freer.join().unwrap();
    for (task, result) in tasks.iter().zip(&run.results) {
        let reply = result.result.as_ref().expect("done once the slot was free");
        assert_eq!(reply.result, task.text.to_uppercase());
    }
    assert!(run.dead_workers.is_empty(), "{:?}", run.dead_workers);
    assert!(server.stats().refused_connections >= 1, "it was refused");
}
