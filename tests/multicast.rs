//! Multicast with acknowledgements (SEEDS §2): one answer per host, typed errors for the
//! hosts that are down or slow, all within one deadline.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

#[path = "../examples/support/worker.rs"]
mod worker;

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use netrpc::cluster::{Multicast, Outcome};
use netrpc::{Client, RpcError, Server, ServerHandle};
use worker::{Task, TaskReply, Worker, WorkerServiceServer};

/// Slack allowed past a deadline for thread scheduling on a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(1500);

fn start_worker(worker: Worker) -> ServerHandle {
    let server = Server::new();
    server.register(WorkerServiceServer::new(worker)).unwrap();
    server.serve("127.0.0.1:0").unwrap()
}

/// An address nothing listens on: connecting is refused at once.
fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn task() -> Task {
    Task {
        id: 1,
        text: "hello".into(),
    }
}

#[test]
fn with_k_of_n_hosts_down_there_are_n_minus_k_acks_and_k_typed_errors() {
    let live: Vec<ServerHandle> = (0..3)
        .map(|i| start_worker(Worker::new(format!("w{i}"))))
        .collect();
    let mut hosts: Vec<String> = live.iter().map(|h| h.local_addr().to_string()).collect();
    hosts.push(dead_addr().to_string());
    hosts.push(dead_addr().to_string());
    let deadline = Duration::from_secs(2);
    let group = Multicast::new(hosts.clone()).deadline(deadline);

    let started = Instant::now();
    let answers = group.call::<_, TaskReply>("WorkerService.DoTask", &task());
    assert!(
        started.elapsed() < deadline + SLACK,
        "{:?}",
        started.elapsed()
    );

    assert_eq!(answers.len(), 5);
    let hosts_answered: Vec<&str> = answers.iter().map(|a| a.host.as_str()).collect();
    assert_eq!(hosts_answered, hosts, "answers come in the group's order");
    for (i, answer) in answers[..3].iter().enumerate() {
        let ack = answer.outcome.ack().unwrap();
        assert_eq!(
            (ack.worker_id.as_str(), ack.result.as_str()),
            (&*format!("w{i}"), "HELLO")
        );
    }
    for answer in &answers[3..] {
        assert!(
            matches!(
                answer.outcome,
                Outcome::Failed(RpcError::Unreachable { .. })
            ),
            "{answer:?}"
        );
    }
}

#[test]
fn a_slow_host_times_out_at_the_deadline_without_delaying_the_others() {
    let fast = start_worker(Worker::new("fast"));
    let slow = start_worker(Worker {
        id: "slow".into(),
        delay: Duration::from_secs(3),
    });
    // A host that accepts connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let deadline = Duration::from_millis(500);
    let group = Multicast::new([
        slow.local_addr().to_string(),
        silent.local_addr().unwrap().to_string(),
        fast.local_addr().to_string(),
    ])
    .deadline(deadline);

    let started = Instant::now();
    let mut stream = group.stream::<_, TaskReply>("WorkerService.DoTask", &task());
    let first = stream.next().unwrap();
    assert_eq!(first.host, fast.local_addr().to_string());
    assert!(
        first.elapsed < deadline,
        "the fast ack arrives before the deadline"
    );
    let rest: Vec<_> = stream.collect();
    assert!(started.elapsed() < deadline + SLACK);
    assert_eq!(rest.len(), 2);
    for answer in rest {
        assert!(
            matches!(answer.outcome, Outcome::Failed(RpcError::Timeout { .. })),
            "{answer:?}"
        );
    }
}

#[test]
fn the_fail_limit_stops_waiting_and_abandons_the_rest() {
    let slow: Vec<ServerHandle> = (0..2)
        .map(|i| {
            start_worker(Worker {
                id: format!("slow{i}"),
                delay: Duration::from_secs(2),
            })
        })
        .collect();
    let mut hosts: Vec<String> = (0..3).map(|_| dead_addr().to_string()).collect();
    hosts.extend(slow.iter().map(|h| h.local_addr().to_string()));
    let group = Multicast::new(hosts)
        .deadline(Duration::from_secs(5))
        .fail_limit(2);

    let started = Instant::now();
    let answers = group.call::<_, TaskReply>("WorkerService.DoTask", &task());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "returned before the slow hosts answered: {:?}",
        started.elapsed()
    );
    let failed = answers
        .iter()
        .filter(|a| a.outcome.error().is_some())
        .count();
    let abandoned = answers
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Abandoned))
        .count();
    assert!(failed >= 2, "{answers:?}");
    assert_eq!(failed + abandoned, 5, "{answers:?}");
    assert!(answers[3..]
        .iter()
        .all(|a| matches!(a.outcome, Outcome::Abandoned)));
}

#[test]
fn a_method_error_is_that_hosts_answer() {
    let live = start_worker(Worker::new("w"));
    let group = Multicast::new([live.local_addr().to_string()]);
    let answers = group.call::<_, TaskReply>("WorkerService.NoSuchMethod", &task());
    assert!(matches!(
        answers[0].outcome,
        Outcome::Failed(RpcError::UnknownMethod { .. })
    ));
}

#[test]
fn an_existing_client_connection_is_reused() {
    let live = start_worker(Worker::new("w"));
    let addr = live.local_addr().to_string();
    let client = Client::dial(&*addr).unwrap();
    let group = Multicast::new([addr.clone()]).with_client(addr, client.clone());
    for _ in 0..3 {
        let answers = group.call::<_, TaskReply>("WorkerService.DoTask", &task());
        assert!(answers[0].outcome.ack().is_some());
    }
    // The three multicast calls went through this client: its next call is the fourth.
    let next: netrpc::Call<TaskReply> = client.go("WorkerService.DoTask", &task());
    assert_eq!(next.seq(), 4);
}

#[test]
fn a_host_whose_connection_died_is_dialed_again() {
    let live = start_worker(Worker::new("w"));
    let addr = live.local_addr().to_string();
    let client = Client::dial(&*addr).unwrap();
    client.close();
    let group = Multicast::new([addr.clone()]).with_client(addr, client);
    let answers = group.call::<_, TaskReply>("WorkerService.DoTask", &task());
    assert!(answers[0].outcome.ack().is_some(), "{answers:?}");
}

#[test]
fn a_deadline_of_duration_max_does_not_panic_and_returns_once_every_host_answered() {
    let live: Vec<ServerHandle> = (0..2)
        .map(|i| start_worker(Worker::new(format!("w{i}"))))
        .collect();
    let mut hosts: Vec<String> = live.iter().map(|h| h.local_addr().to_string()).collect();
    hosts.push(dead_addr().to_string());
    let group = Multicast::new(hosts).deadline(Duration::MAX);

    // "No deadline" must not hang the test: the multicast runs on a thread we wait for.
    let (done_tx, done) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let answers = group.call::<_, TaskReply>("WorkerService.DoTask", &task());
        let _ = done_tx.send(answers);
    });
    let answers = done
        .recv_timeout(Duration::from_secs(10))
        .expect("the multicast with a Duration::MAX deadline returned (and did not panic)");

    assert_eq!(answers.len(), 3);
    for answer in &answers[..2] {
        assert_eq!(answer.outcome.ack().unwrap().result, "HELLO", "{answer:?}");
    }
    assert!(
        matches!(
            answers[2].outcome,
            Outcome::Failed(RpcError::Unreachable { .. })
        ),
        "{:?}",
        answers[2]
    );
}
