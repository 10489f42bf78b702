//! loadgen: drives a netrpc server at full speed and reports throughput and latency, beside a
//! raw-TCP baseline of the same shape measured in the same run.
//!
//! Run: `cargo run --release --example loadgen -- --inproc --conns 1 --inflight 64 --baseline`
//! (`--help` explains every flag). What it calls:
//!
//! - with `--payload 0` (the default), `Arith.Multiply` with `Args { A: 7, B: 8 }`;
//! - with `--payload N`, `Bench.Echo` with `N` bytes, which returns them.
//!
//! Each connection is driven by its own thread: with `--inflight 1` it makes blocking `call`s
//! back to back; with more, it keeps that many `go_with` calls outstanding. Each time it wakes
//! it takes every completion that has arrived and starts as many new calls in one
//! `Client::batch`, written together, just as the raw client writes as many requests as
//! replies just arrived; `--no-batch` starts each new call on its own instead. It waits with
//! `Client::recv_completion`, which reads the replies on the driver's own thread while
//! nobody else reads the connection; `--loop-reads` waits on the channel alone, leaving
//! every reply to the client's event loop. The raw
//! baseline (`--baseline`) uses the same connections and in-flight count over plain sockets
//! (`support/raw_tcp.rs`). Calls completing during the
//! warm-up are not counted. All traffic stays on 127.0.0.1 unless `--addr` says otherwise.
//!
//! Beside calls/s and latency it reports the CPU time per call of the whole process over the
//! measured window (`support/cpu_time.rs`, from `/proc/self/stat`): with the server in the
//! same process, what a call costs on both sides, a figure that does not depend on how
//! long threads wait to be woken, as calls/s on a virtual machine does. With the server in
//! the same process it also prints how many worker threads the server's pool holds at the end
//! and the most handlers that ran at once. `--thread-cpu` splits the CPU figure by thread
//! name (`support/cpu_time.rs`, from `/proc/self/task`): the server's loop, its workers, the
//! client's loop and the driver threads (named `loadgen-driver`), user and system time apart.
//!
//! With `--tls`, the same load then runs again against a second in-process server that speaks
//! TLS (a throwaway certificate made at start with rcgen, `support/certs.rs`), and the ratio of
//! TLS to plaintext is printed.

#[path = "support/args.rs"]
mod args;
#[path = "support/arith.rs"]
mod arith;
#[path = "support/certs.rs"]
mod certs;
#[path = "support/cpu_time.rs"]
mod cpu_time;
#[path = "support/raw_tcp.rs"]
mod raw_tcp;

use std::collections::{BTreeMap, HashMap};
use std::error::Error;
use std::fmt;
use std::io::{self, IsTerminal};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use arith::{Args, ArithServer, Calculator};
use netrpc::tls::{self, ClientTls};
use netrpc::{done_channel, service, Client, Codec, CodecKind, RpcError, Server, ServiceError};
use raw_tcp::{Histogram, RawLoad, RawServer, Shape, Writes};
use serde::de::DeserializeOwned;
use serde::Serialize;

const USAGE: &str = "\
loadgen: measure netrpc calls per second and latency, optionally beside raw TCP

usage: cargo run --release --example loadgen -- [--addr HOST:PORT | --inproc] [options]
       cargo run --release --example loadgen -- --serve HOST:PORT [--seconds N]

  --inproc           start a server in this process on 127.0.0.1 (the default without --addr)
  --addr HOST:PORT   drive a running server (Arith, and Bench for --payload; see --serve)
  --serve HOST:PORT  only serve Arith and Bench on HOST:PORT, for another loadgen to drive
  --conns N          connections, each driven by its own thread (default 1)
  --inflight N       calls outstanding per connection: 1 = blocking calls back to back,
                     more = that many `go` calls kept in flight (default 1; at most
                     1,000, a server's default cap per connection)
  --rate N           open loop: start N calls/s in all, spread evenly over the connections,
                     whatever the replies do (at most --inflight outstanding per connection),
                     and count each call's latency from when it was due, so a stall delays
                     every call scheduled during it, as a fixed-rate client sees it (default:
                     closed loop, a call started as one completes); with --baseline the
                     raw client runs the same open loop (a reading thread per connection)
  --seconds S        measured duration (default 5)
  --warmup S         unmeasured warm-up before it (default 1)
  --codec NAME       postcard (default) or json
  --payload BYTES    0 = Arith.Multiply (default); N = Bench.Echo with N bytes each way
  --baseline         first run raw TCP ping-pong of the same shape and print the ratio
  --raw-unbatched    in the baseline, one write per message instead of grouped writes
  --raw-work-ns N    in the baseline, each side spins N ns after each read before it
                     writes (default 0): how much raw TCP's figures owe to its turnaround
  --no-batch         start each new call on its own (`go_with`) as its predecessor completes,
                     instead of one `Client::batch` per wake-up for all that completed
  --loop-reads       wait on the completion channel alone (the client's event loop reads
                     every reply) instead of `Client::recv_completion` (the driver reads)
  --loops N          event-loop threads of the in-process server (default: its own default)
  --inline           serve Arith and Bench inline, on the event loop (Server::register_inline)
  --worker-reads     a pool worker that answered a call reads and runs its connection's next
                     requests itself (ServerBuilder::worker_reads)
  --loop-calls       an event loop's thread runs the pooled calls it read after its turn,
                     handing the loop over if one runs long (ServerBuilder::loop_runs_calls)
  --busy-poll-us N   the in-process server's loops and the clients' waiting callers poll
                     N µs without blocking before they sleep (ServerBuilder::busy_poll,
                     ClientBuilder::busy_poll; default 0)
  --busy-poll-at SIDE  where --busy-poll-us applies: both (default), server or client
  --tls              then run the same load over TLS (in-process only: a second server with a
                     throwaway certificate) and print the ratio TLS / plaintext
  --thread-cpu       also print the CPU time per call of each group of like-named threads
                     (server loop, workers, client loop, drivers; Linux), user + system
  --help             print this help

Prints a progress line each second (to stderr), then for each run: calls/s (successful
calls), latency p50, p90, p99, p999 and max (of every call that ended in the window, failed
ones included), the process's CPU time per call over the measured window (Linux; server,
client and tool together when in-process), and errors by kind. The drivers are closed-loop:
each starts a call as one completes, so latencies are those at saturation.";

service! {
    /// A service for payload benchmarks.
    pub trait Bench {
        const NAME = "Bench";
        type Server = BenchServer;
        type Client = BenchClient;

        /// Returns its argument.
        #[rpc(name = "Echo", go = echo_go, const = ECHO)]
        fn echo(payload: Vec<u8>) -> Vec<u8>;
    }
}

/// The `Bench` implementation.
struct Echoer;

impl Bench for Echoer {
    fn echo(&self, payload: Vec<u8>) -> Result<Vec<u8>, ServiceError> {
        Ok(payload)
    }
}

/// What one run is asked to do.
#[derive(Debug, Clone)]
struct Plan {
    conns: usize,
    inflight: usize,
    warmup: Duration,
    measured: Duration,
    codec: CodecKind,
    payload: usize,
    /// New calls start in one `Client::batch` per wake-up of the driver.
    batch: bool,
    /// The driver reads replies itself (`Client::recv_completion`) when it can.
    read_here: bool,
    /// Busy-poll budgets of the in-process server's loops and of the clients' callers.
    busy_poll: BusyPollPlan,
    /// Measure and print CPU time per call by thread name too (`--thread-cpu`).
    thread_cpu: bool,
    /// Open loop (`--rate`): calls per second in all, or `None` for a closed loop.
    rate: Option<f64>,
}

/// Busy-poll budgets (`--busy-poll-us`, `--busy-poll-at`): the in-process server's loops and
/// the clients' waiting callers can be set apart, since what each side's spinning buys and
/// costs differs by shape (docs/BENCHMARKS.md, changes 13 and 14).
#[derive(Debug, Clone, Copy)]
struct BusyPollPlan {
    server: Duration,
    client: Duration,
}

impl BusyPollPlan {
    fn parse(flags: &args::Flags) -> Result<BusyPollPlan, Box<dyn Error>> {
        let budget = Duration::from_micros(flags.get("busy-poll-us", 0u64)?);
        let (server, client) = match flags.get_str("busy-poll-at").unwrap_or("both") {
            "both" => (true, true),
            "server" => (true, false),
            "client" => (false, true),
            other => return Err(format!("unknown --busy-poll-at `{other}`\n\n{USAGE}").into()),
        };
        let on = |side: bool| if side { budget } else { Duration::ZERO };
        Ok(BusyPollPlan {
            server: on(server),
            client: on(client),
        })
    }

    /// What is set, for the report; `None` when neither side busy polls.
    fn describe(&self) -> Option<String> {
        let where_ = match (self.server.is_zero(), self.client.is_zero()) {
            (true, true) => return None,
            (false, false) => "in the server's loops and the clients' callers",
            (false, true) => "in the server's loops only",
            (true, false) => "in the clients' callers only",
        };
        let budget = self.server.max(self.client);
        Some(format!(
            "{} µs before each wait, {where_}",
            budget.as_micros()
        ))
    }
}

/// What one run measured.
#[derive(Debug, Default)]
struct Report {
    calls: u64,
    elapsed: Duration,
    /// CPU time of the whole process over the measured window (server, client and tool
    /// alike when the server runs in-process), if the system says.
    cpu: Option<Duration>,
    /// The same by thread name, busiest first, with `--thread-cpu` (empty otherwise).
    threads: Vec<cpu_time::NamedCpu>,
    latency: Histogram,
    errors: BTreeMap<String, u64>,
}

impl Report {
    fn per_second(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// CPU microseconds per call over the measured window.
    fn cpu_micros_per_call(&self) -> Option<f64> {
        let cpu = self.cpu?;
        (self.calls > 0).then(|| cpu.as_secs_f64() * 1e6 / self.calls as f64)
    }

    fn merge(&mut self, other: Report) {
        self.calls += other.calls;
        self.latency.merge(&other.latency);
        for (kind, count) in other.errors {
            *self.errors.entry(kind).or_default() += count;
        }
    }
}

/// Every flag `USAGE` lists: anything else is refused, so that a run never reports figures
/// for a setting it ignored (`benches/compare_revisions.sh` then says a revision lacks it).
const KNOWN_FLAGS: &[&str] = &[
    "addr",
    "baseline",
    "busy-poll-at",
    "busy-poll-us",
    "codec",
    "conns",
    "inflight",
    "inline",
    "inproc",
    "loop-reads",
    "loops",
    "no-batch",
    "payload",
    "rate",
    "raw-unbatched",
    "raw-work-ns",
    "seconds",
    "serve",
    "thread-cpu",
    "tls",
    "warmup",
    "worker-reads",
    "loop-calls",
];

fn main() -> Result<(), Box<dyn Error>> {
    let flags = args::Flags::parse(USAGE)?;
    flags.only(KNOWN_FLAGS)?;
    if flags.has("baseline") && flags.get_str("addr").is_some() {
        // The baseline would run here over loopback while netrpc's server runs elsewhere:
        // neither the ratio nor the CPU per call would compare like with like.
        return Err("--baseline measures raw TCP in this process: not with --addr".into());
    }
    let plan = Plan {
        conns: flags.get("conns", 1usize)?.max(1),
        // A default server answers calls beyond its per-connection cap `Throttled`.
        inflight: flags
            .get("inflight", 1usize)?
            .clamp(1, netrpc::core::DEFAULT_MAX_IN_FLIGHT_PER_CONN),
        warmup: Duration::from_secs_f64(flags.get("warmup", 1.0)?),
        measured: Duration::from_secs_f64(flags.get("seconds", 5.0)?),
        codec: match flags.get_str("codec").unwrap_or("postcard") {
            "postcard" => CodecKind::Postcard,
            "json" => CodecKind::Json,
            other => return Err(format!("unknown codec `{other}`\n\n{USAGE}").into()),
        },
        payload: flags.get("payload", 0usize)?,
        batch: !flags.has("no-batch"),
        read_here: !flags.has("loop-reads"),
        busy_poll: BusyPollPlan::parse(&flags)?,
        thread_cpu: flags.has("thread-cpu"),
        rate: match flags.get("rate", 0.0f64)? {
            rate if rate > 0.0 => Some(rate),
            _ => None,
        },
    };
    let shape = ServerShape {
        loops: flags.get("loops", 0usize)?,
        inline: flags.has("inline"),
        worker_reads: flags.has("worker-reads"),
        loop_calls: flags.has("loop-calls"),
        busy_poll: plan.busy_poll.server,
    };
    let server = build_server(&shape, None)?;
    let with_tls = flags.has("tls");
    if with_tls && (flags.get_str("addr").is_some() || flags.get_str("serve").is_some()) {
        return Err(format!("--tls runs in-process only\n\n{USAGE}").into());
    }

    if let Some(addr) = flags.get_str("serve") {
        let running = server.serve(addr)?;
        println!("serving Arith and Bench on {}", running.local_addr());
        thread::sleep(Duration::from_secs_f64(flags.get("seconds", 3600.0)?));
        running.shutdown();
        return Ok(());
    }

    let _in_process;
    let target: SocketAddr = match flags.get_str("addr") {
        Some(addr) => addr.parse()?,
        None => {
            let running = server.serve("127.0.0.1:0")?;
            let addr = running.local_addr();
            _in_process = running;
            addr
        }
    };
    println!(
        "loadgen: {} conn(s) x {} in flight, {}, {}, {:.1} s measured after {:.1} s warm-up, target {target}",
        plan.conns,
        plan.inflight,
        plan.codec.name(),
        if plan.payload == 0 {
            "Arith.Multiply".to_owned()
        } else {
            format!("Bench.Echo of {} bytes", plan.payload)
        },
        plan.measured.as_secs_f64(),
        plan.warmup.as_secs_f64(),
    );
    if let Some(line) = plan.busy_poll.describe() {
        println!("busy poll  {line}");
    }

    let baseline = if flags.has("baseline") {
        let writes = if flags.has("raw-unbatched") {
            Writes::Unbatched
        } else {
            Writes::Grouped
        };
        let work = Duration::from_nanos(flags.get("raw-work-ns", 0u64)?);
        if !work.is_zero() {
            println!(
                "raw work   {} ns of spinning after each read, on each side of the baseline",
                work.as_nanos()
            );
        }
        let report = run_raw(&plan, writes, work)?;
        print_report("raw tcp", &report);
        Some(report)
    } else {
        None
    };

    let report = run_netrpc(&plan, target, None)?;
    print_report("netrpc", &report);
    if flags.get_str("addr").is_none() {
        println!(
            "server     {} worker threads alive at the end; at most {} handlers ran at once",
            server.worker_threads(),
            server.stats().max_running_handlers,
        );
    }
    if let Some(raw) = baseline {
        println!(
            "ratio      {:.2} of raw calls/s; p50 {:.2}x, p99 {:.2}x raw's{}",
            report.per_second() / raw.per_second().max(1e-9),
            ratio(report.latency.quantile(0.5), raw.latency.quantile(0.5)),
            ratio(report.latency.quantile(0.99), raw.latency.quantile(0.99)),
            match (report.cpu_micros_per_call(), raw.cpu_micros_per_call()) {
                (Some(ours), Some(raws)) if raws > 0.0 => {
                    format!("; CPU per call {:.2}x raw's", ours / raws)
                }
                _ => String::new(),
            },
        );
    }
    if with_tls {
        let ca = certs::Authority::new("loadgen ca")?;
        let (chain, key) = ca.server()?.pair();
        let tls_config = tls::server_config(chain, key, None)?;
        let tls_server = build_server(&shape, Some(tls_config))?;
        let running = tls_server.serve("127.0.0.1:0")?;
        let client_tls = ClientTls::new(tls::client_config(ca.roots()?, None)?, "localhost")?;
        let secure = run_netrpc(&plan, running.local_addr(), Some(client_tls))?;
        print_report("netrpc+tls", &secure);
        println!(
            "tls ratio  {:.2} of plaintext calls/s; p50 {:.2}x, p99 {:.2}x plaintext's",
            secure.per_second() / report.per_second().max(1e-9),
            ratio(secure.latency.quantile(0.5), report.latency.quantile(0.5)),
            ratio(secure.latency.quantile(0.99), report.latency.quantile(0.99)),
        );
        running.shutdown();
    }
    Ok(())
}

/// How the in-process server is set up.
struct ServerShape {
    /// Event loops; 0 for the server's default.
    loops: usize,
    /// Serve on the event loop instead of the pool.
    inline: bool,
    /// Pool workers read their connections' next requests.
    worker_reads: bool,
    /// Event loops run the pooled calls they read.
    loop_calls: bool,
    /// The loops' busy-poll budget.
    busy_poll: Duration,
}

fn build_server(
    shape: &ServerShape,
    tls: Option<Arc<tls::ServerConfig>>,
) -> Result<Server, RpcError> {
    let mut builder = Server::builder()
        .busy_poll(shape.busy_poll)
        .worker_reads(shape.worker_reads)
        .loop_runs_calls(shape.loop_calls);
    if shape.loops > 0 {
        builder = builder.event_loops(shape.loops);
    }
    if let Some(config) = tls {
        builder = builder.tls(config);
    }
    let server = builder.build();
    if shape.inline {
        server.register_inline(ArithServer::new(Calculator))?;
        server.register_inline(BenchServer::new(Echoer))?;
    } else {
        server.register(ArithServer::new(Calculator))?;
        server.register(BenchServer::new(Echoer))?;
    }
    Ok(server)
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-12)
}

/// Runs the raw-TCP baseline of the plan's shape against an in-process raw server.
fn run_raw(plan: &Plan, writes: Writes, work: Duration) -> Result<Report, Box<dyn Error>> {
    let shape = if plan.payload == 0 {
        Shape::ARITH
    } else {
        Shape::echo(plan.payload)
    };
    let server = RawServer::start_with_work(shape, work)?;
    let addr = server.addr();
    let load = RawLoad {
        shape,
        inflight: plan.inflight,
        writes,
        work,
    };
    let interval = plan
        .rate
        .map(|rate| Duration::from_secs_f64(plan.conns as f64 / rate));
    run_drivers(plan, move |record_from, end, progress| {
        let mut report = Report::default();
        let driven = match interval {
            Some(interval) => raw_tcp::drive_at_rate(
                addr,
                shape,
                load.inflight,
                interval,
                (record_from, end),
                &mut report.latency,
                progress,
            ),
            None => raw_tcp::drive(addr, load, record_from, end, &mut report.latency, progress),
        };
        match driven {
            Ok(calls) => report.calls = calls,
            Err(err) => {
                report.errors.insert(format!("io: {err}"), 1);
            }
        }
        report
    })
}

/// Runs netrpc calls of the plan's shape against `target`, over TLS when `tls` is given.
fn run_netrpc(
    plan: &Plan,
    target: SocketAddr,
    tls: Option<ClientTls>,
) -> Result<Report, Box<dyn Error>> {
    let mut clients = Vec::new();
    for _ in 0..plan.conns {
        let mut builder = Client::builder()
            .codec(plan.codec)
            .max_pending_calls(plan.inflight)
            .busy_poll(plan.busy_poll.client);
        if let Some(tls) = &tls {
            builder = builder.tls(tls.clone());
        }
        clients.push(builder.dial(target)?);
    }
    let clients = Arc::new(clients);
    let next = AtomicU64::new(0);
    let pace = Pace {
        inflight: plan.inflight,
        batch: plan.batch,
        read_here: plan.read_here,
        // Each connection's share of the rate, as the time between two of its calls.
        interval: plan
            .rate
            .map(|rate| Duration::from_secs_f64(plan.conns as f64 / rate)),
    };
    let payload = plan.payload;
    run_drivers(plan, move |record_from, end, progress| {
        let index = next.fetch_add(1, Ordering::SeqCst) as usize;
        let client = &clients[index % clients.len()];
        let window = Window {
            record_from,
            end,
            progress,
        };
        if payload == 0 {
            let expected = 56i64;
            drive_calls(
                client,
                "Arith.Multiply",
                &Args { a: 7, b: 8 },
                &expected,
                pace,
                &window,
            )
        } else {
            let bytes = vec![0xa5u8; payload];
            drive_calls(client, "Bench.Echo", &bytes, &bytes, pace, &window)
        }
    })
}

/// How a driver keeps its calls going.
#[derive(Debug, Clone, Copy)]
struct Pace {
    /// Calls outstanding; 1 = blocking calls back to back.
    inflight: usize,
    /// Start the calls of each wake-up together, in one `Client::batch`.
    batch: bool,
    /// Wait with `Client::recv_completion` rather than on the channel alone.
    read_here: bool,
    /// Open loop: start a call every `interval`, whatever the replies do (`--rate`).
    interval: Option<Duration>,
}

/// The time window of a run, shared by its drivers.
struct Window<'a> {
    record_from: Instant,
    end: Instant,
    progress: &'a AtomicU64,
}

impl Window<'_> {
    /// Counts one completed call; records it if it completed after the warm-up. Its latency
    /// is recorded whatever its outcome (a timeout counts at its deadline): percentiles over
    /// the successful calls alone would look better the more calls failed.
    fn complete<R: PartialEq>(
        &self,
        report: &mut Report,
        started: Instant,
        result: Result<R, RpcError>,
        expected: &R,
    ) {
        self.progress.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        if now < self.record_from {
            return;
        }
        report.latency.record(now - started);
        match result {
            Ok(reply) if reply == *expected => report.calls += 1,
            Ok(_) => *report.errors.entry("wrong reply".into()).or_default() += 1,
            Err(err) => *report.errors.entry(error_kind(&err)).or_default() += 1,
        }
    }
}

/// The variant name of an error (`Timeout`, `ConnectionLost`, ...), for counting by kind.
fn error_kind(err: &RpcError) -> String {
    let debug = format!("{err:?}");
    debug
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("unknown")
        .to_owned()
}

/// One connection's driver: blocking calls back to back, or `pace.inflight` `go_with` calls,
/// replacing all that completed by one wake-up at once.
fn drive_calls<A, R>(
    client: &Client,
    method: &str,
    args: &A,
    expected: &R,
    pace: Pace,
    window: &Window<'_>,
) -> Report
where
    A: Serialize,
    R: DeserializeOwned + PartialEq + Send + 'static,
{
    if let Some(interval) = pace.interval {
        return drive_at_rate(
            client,
            method,
            args,
            expected,
            pace.inflight,
            interval,
            window,
        );
    }
    let mut report = Report::default();
    if pace.inflight == 1 {
        while Instant::now() < window.end {
            let started = Instant::now();
            let result = client.call::<A, R>(method, args);
            window.complete(&mut report, started, result, expected);
        }
        return report;
    }
    let (done, completions) = done_channel::<R>();
    let mut started_at: HashMap<u64, Instant> = HashMap::with_capacity(pace.inflight);
    let start_calls = |count: usize, started_at: &mut HashMap<u64, Instant>| {
        let batch = pace.batch.then(|| client.batch());
        for _ in 0..count {
            let seq = match &batch {
                Some(batch) => batch.go_with(method, args, &done),
                None => client.go_with(method, args, &done),
            };
            started_at.insert(seq, Instant::now());
        }
    };
    start_calls(pace.inflight, &mut started_at);
    // Every call has the client's deadline, so a completion always comes; the extra margin
    // only guards against a bug in the framework hanging the tool.
    let stall_limit = client.config().call_timeout + Duration::from_secs(5);
    while !started_at.is_empty() {
        let next = if pace.read_here {
            client.recv_completion(&completions, stall_limit)
        } else {
            completions.recv_timeout(stall_limit)
        };
        let Ok(completion) = next else {
            *report
                .errors
                .entry("stalled (no completion)".into())
                .or_default() += started_at.len() as u64;
            break;
        };
        // This completion and every other one already here are replaced together.
        let mut completed = 0;
        for completion in std::iter::once(completion).chain(completions.try_iter()) {
            let started = started_at
                .remove(&completion.seq)
                .unwrap_or_else(Instant::now);
            window.complete(&mut report, started, completion.result, expected);
            completed += 1;
        }
        if Instant::now() < window.end {
            start_calls(completed, &mut started_at);
        }
    }
    report
}

/// One connection's open-loop driver (`--rate`): a call is due every `interval` and starts
/// when due, or as soon as one of the `inflight` outstanding calls completes if none can
/// start then; its latency counts from when it was due. A closed loop hides a stall behind
/// the calls it holds up, since those are not started until it ends (coordinated
/// omission); here every call due during the stall waits it out and shows it.
fn drive_at_rate<A, R>(
    client: &Client,
    method: &str,
    args: &A,
    expected: &R,
    inflight: usize,
    interval: Duration,
    window: &Window<'_>,
) -> Report
where
    A: Serialize,
    R: DeserializeOwned + PartialEq + Send + 'static,
{
    let mut report = Report::default();
    let (done, completions) = done_channel::<R>();
    let mut due_at: HashMap<u64, Instant> = HashMap::with_capacity(inflight);
    let mut next_due = Instant::now();
    // As in the closed loop: only a bug in the framework could need this margin.
    let stall_limit = client.config().call_timeout + Duration::from_secs(5);
    loop {
        let now = Instant::now();
        if next_due <= now && next_due < window.end && due_at.len() < inflight {
            // Every call due now starts in one write.
            let batch = client.batch();
            while next_due <= now && next_due < window.end && due_at.len() < inflight {
                due_at.insert(batch.go_with(method, args, &done), next_due);
                next_due += interval;
            }
        }
        let sending = next_due < window.end;
        if !sending && due_at.is_empty() {
            return report;
        }
        let wait = if sending && due_at.len() < inflight {
            next_due.saturating_duration_since(now)
        } else {
            stall_limit
        };
        // The channel's wait keeps time to the microsecond; the client's own poller (behind
        // `recv_completion`) sleeps whole milliseconds, which would start calls late.
        match completions.recv_timeout(wait) {
            Ok(completion) => {
                for completion in std::iter::once(completion).chain(completions.try_iter()) {
                    let due = due_at.remove(&completion.seq).unwrap_or(now);
                    window.complete(&mut report, due, completion.result, expected);
                }
            }
            Err(_) if wait < stall_limit => {} // the next call is due
            Err(_) => {
                *report
                    .errors
                    .entry("stalled (no completion)".into())
                    .or_default() += due_at.len() as u64;
                return report;
            }
        }
    }
}

/// Runs `plan.conns` driver threads over the warm-up and measured window, printing progress,
/// and merges their reports.
fn run_drivers<F>(plan: &Plan, driver: F) -> Result<Report, Box<dyn Error>>
where
    F: Fn(Instant, Instant, &AtomicU64) -> Report + Sync,
{
    let progress = AtomicU64::new(0);
    let finished = AtomicBool::new(false);
    let cpu_taken = Gate::default();
    let started = Instant::now();
    let record_from = started + plan.warmup;
    let end = record_from + plan.measured;
    let mut total = Report {
        elapsed: plan.measured,
        ..Report::default()
    };
    thread::scope(|scope| -> io::Result<()> {
        // Named, so that `--thread-cpu` tells them from the rest; each stays until the CPU
        // figures are taken, so that its time is not lost with it.
        let drivers = (0..plan.conns)
            .map(|_| {
                thread::Builder::new()
                    .name("loadgen-driver".to_owned())
                    .spawn_scoped(scope, || {
                        let report = driver(record_from, end, &progress);
                        cpu_taken.wait(CPU_FIGURES_WAIT);
                        report
                    })
            })
            .collect::<io::Result<Vec<_>>>()?;
        scope.spawn(|| print_progress(&progress, &finished, started));
        let cpu = scope.spawn(|| {
            let figures = cpu_over(record_from, end, plan.thread_cpu);
            cpu_taken.open();
            figures
        });
        for handle in drivers {
            match handle.join() {
                Ok(report) => total.merge(report),
                Err(_) => *total.errors.entry("driver panicked".into()).or_default() += 1,
            }
        }
        finished.store(true, Ordering::SeqCst);
        if let Ok((cpu, threads)) = cpu.join() {
            (total.cpu, total.threads) = (cpu, threads);
        }
        Ok(())
    })?;
    Ok(total)
}

/// The longest a driver that has finished waits for the CPU figures to be taken (they are
/// taken as the measured window ends, when the drivers end too).
const CPU_FIGURES_WAIT: Duration = Duration::from_secs(2);

/// A gate threads wait at, for a bounded time, until it opens.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    /// Opens the gate: every thread waiting at it goes on, and later ones do not wait.
    fn open(&self) {
        *self.open.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.opened.notify_all();
    }

    /// Waits until the gate opens or `bound` passes.
    fn wait(&self, bound: Duration) {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = self.opened.wait_timeout_while(open, bound, |open| !*open);
    }
}

/// The process's CPU time between `from` and `to` (sleeping until each), if the system says,
/// and with `by_thread` the same by thread name.
fn cpu_over(
    from: Instant,
    to: Instant,
    by_thread: bool,
) -> (Option<Duration>, Vec<cpu_time::NamedCpu>) {
    thread::sleep(from.saturating_duration_since(Instant::now()));
    let start = cpu_time::process_cpu_time();
    let threads_at_start = by_thread.then(cpu_time::thread_cpu_times).flatten();
    thread::sleep(to.saturating_duration_since(Instant::now()));
    let threads = match (threads_at_start, by_thread.then(cpu_time::thread_cpu_times)) {
        (Some(before), Some(Some(after))) => cpu_time::cpu_by_thread_name(&before, &after),
        _ => Vec::new(),
    };
    let spent = start.zip(cpu_time::process_cpu_time());
    (spent.map(|(start, end)| end.saturating_sub(start)), threads)
}

/// Prints the completions per second over the last second, once a second, until `finished`,
/// on one line of the terminal (nothing when stderr is not a terminal, to keep logs clean).
fn print_progress(progress: &AtomicU64, finished: &AtomicBool, started: Instant) {
    if !std::io::stderr().is_terminal() {
        return;
    }
    let mut last = 0;
    let mut last_at = Instant::now();
    while !finished.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(100));
        if last_at.elapsed() < Duration::from_secs(1) {
            continue;
        }
        let now_count = progress.load(Ordering::Relaxed);
        let rate = (now_count - last) as f64 / last_at.elapsed().as_secs_f64();
        eprint!(
            "\r  {:5.1} s  {:>12} calls/s   ",
            started.elapsed().as_secs_f64(),
            Thousands(rate as u64)
        );
        last = now_count;
        last_at = Instant::now();
    }
    eprint!("\r{:60}\r", "");
}

fn print_report(label: &str, report: &Report) {
    let q = |quantile| Micros(report.latency.quantile(quantile));
    let cpu = report
        .cpu_micros_per_call()
        .map(|micros| format!(", CPU {micros:.2} µs/call"))
        .unwrap_or_default();
    println!(
        "{label:<10} {:>12} calls/s   p50 {}  p90 {}  p99 {}  p999 {}  max {}   ({} calls{cpu})",
        Thousands(report.per_second() as u64),
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        Micros(report.latency.max()),
        Thousands(report.calls),
    );
    print_thread_cpu(report);
    if report.errors.is_empty() {
        println!("{:<10} errors: none", "");
    } else {
        let errors: Vec<_> = report
            .errors
            .iter()
            .map(|(kind, count)| format!("{kind}: {count}"))
            .collect();
        println!("{:<10} errors: {}", "", errors.join(", "));
    }
}

/// With `--thread-cpu`: per group of like-named threads, CPU µs per call, user + system.
fn print_thread_cpu(report: &Report) {
    if report.threads.is_empty() || report.calls == 0 {
        return;
    }
    let per_call = |time: Duration| time.as_secs_f64() * 1e6 / report.calls as f64;
    println!("{:<10} CPU µs per call by thread, user + system:", "");
    for group in &report.threads {
        println!(
            "{:<10}   {:<16} {:>6.2} + {:>5.2}   ({} thread{})",
            "",
            group.name,
            per_call(group.user),
            per_call(group.system),
            group.threads,
            if group.threads == 1 { "" } else { "s" },
        );
    }
    // The process's figure keeps the time of threads that have ended; theirs is gone.
    let named: Duration = report.threads.iter().map(|g| g.user + g.system).sum();
    if let Some(ended) = report.cpu.and_then(|cpu| cpu.checked_sub(named)) {
        if !ended.is_zero() {
            println!(
                "{:<10}   {:<16} {:>14.2}   (threads that ended before the figures were taken)",
                "",
                "other",
                per_call(ended)
            );
        }
    }
}

/// A count with thousands separators.
struct Thousands(u64);

impl fmt::Display for Thousands {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.0.to_string();
        let mut grouped = String::new();
        for (i, digit) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(digit);
        }
        f.pad(&grouped)
    }
}

/// A latency in microseconds, one decimal.
struct Micros(Duration);

impl fmt::Display for Micros {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.1} µs", self.0.as_secs_f64() * 1e6)
    }
}
