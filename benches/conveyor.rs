//! `cargo bench --bench conveyor -- [options]`: conveyor's performance, measured.
//!
//! Starts its own redis-server on loopback (persistence off) unless
//! `--redis-url` is given, and measures, as medians of `--runs` runs:
//! - throughput: N no-op jobs pre-loaded, then the real daemon binary started
//!   as a child; jobs/s from the first job done to the last, Redis commands per
//!   job from `INFO commandstats` (commands run inside scripts included), CPU
//!   seconds of the daemon and of redis-server, the daemon's peak RSS;
//! - latency: a daemon run in this process, idle, fed 1,000 jobs one at a time;
//!   the time from sending `RPUSH` to the handler starting (p50, p99, p999);
//! - enqueue: `conveyor enqueue --file` loading N jobs;
//! - exec, email, http: the handlers against a reference measured in the
//!   same run (see `conveyor/exec.rs`, `email.rs`, `http.rs`);
//! - scaleout: 1, 2 and 4 daemons on one Redis, and a 3-primary cluster
//!   against one Redis (`conveyor/scaleout.rs`);
//! - web: the throughput run with `/metrics` scraped every second and an
//!   event stream open, against without (`conveyor/web.rs`);
//! - valkey: the throughput run on a Valkey against the same on the Redis,
//!   interleaved, and the ratio (`conveyor/valkey.rs`);
//! - traces: the throughput run with tracing on (ratio 1.0, a live
//!   receiver) against off, interleaved (`conveyor/traces.rs`);
//! - slots: what a no-op job costs Redis and the daemon at 1, 8, 50, 200
//!   and 500 slots, against a baseline build if given (`conveyor/slots.rs`);
//! - groups: 100 tenants' jobs with `group` and a limit each against the
//!   same with none, and a flooding tenant's neighbours' start delay with
//!   and without `group` (`conveyor/groups.rs`).
//!
//! Its servers are started as the tests start theirs
//! (`tests/common/server.rs`): Redis's `redis-server` from the PATH,
//! Valkey's `valkey-server` from the PATH or `target/valkey`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use clap::Parser;
use conveyor::Job;
use conveyor::handlers::{Handler, HandlerError, Registry};
use conveyor::shutdown::Shutdown;
use tokio::sync::mpsc;

#[derive(Parser, Debug, Clone)]
#[command(about = "conveyor's benchmark")]
struct Args {
    /// Jobs per throughput run.
    #[arg(long, default_value_t = 200_000)]
    jobs: usize,
    /// The queue's concurrency.
    #[arg(long, default_value_t = 200)]
    concurrency: u32,
    /// Events level of the queue: all, outcomes or off.
    #[arg(long, default_value = "outcomes")]
    events: String,
    /// Payload size in bytes (about).
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Runs per measurement; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// What to measure: all, throughput, latency, enqueue, exec, email, http,
    /// scaleout, web, valkey, traces, history, groups, slots.
    #[arg(long, default_value = "all")]
    mode: String,
    /// Sequential jobs in the latency measurement.
    #[arg(long, default_value_t = 1000)]
    latency_jobs: usize,
    /// Python worker processes of the exec measurement.
    #[arg(long, default_value_t = 8)]
    exec_concurrency: u32,
    /// Jobs per exec run in persistent mode (oneshot runs a 50th of it).
    #[arg(long, default_value_t = 100_000)]
    exec_jobs: usize,
    /// The exec measurement's Python interpreter [default: the python3 of
    /// systemd's PATH, /usr/local/bin:/usr/bin:/bin, as a service runs it].
    #[arg(long)]
    python: Option<String>,
    /// Emails per run of the email measurement.
    #[arg(long, default_value_t = 20_000)]
    email_jobs: usize,
    /// Concurrency of the email queue, and sessions of smtp-source.
    #[arg(long, default_value_t = 50)]
    email_concurrency: u32,
    /// Sequential emails in the email latency measurement.
    #[arg(long, default_value_t = 300)]
    email_latency_jobs: usize,
    /// Jobs per run of the http measurement.
    #[arg(long, default_value_t = 50_000)]
    http_jobs: usize,
    /// Concurrency of the http queue, and connections of wrk.
    #[arg(long, default_value_t = 50)]
    http_concurrency: u32,
    /// Jobs loaded by the enqueue measurement.
    #[arg(long, default_value_t = 300_000)]
    enqueue_jobs: usize,
    /// Use this Redis (it is FLUSHALLed!) instead of starting one.
    #[arg(long)]
    redis_url: Option<String>,
    /// Keep a subscriber on the events channel during throughput runs (the
    /// daemon publishes only while someone listens).
    #[arg(long)]
    subscribe: bool,
    /// Run this daemon binary instead of the one just built (for A/B runs).
    #[arg(long)]
    daemon_bin: Option<PathBuf>,
    /// `--mode slots`: alternate each run with this daemon binary and
    /// compare.
    #[arg(long)]
    baseline_bin: Option<PathBuf>,
    /// `cargo bench` passes --bench; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[path = "conveyor/email.rs"]
mod email;
#[path = "conveyor/exec.rs"]
mod exec;
#[path = "conveyor/flows.rs"]
mod flows;
#[path = "conveyor/groups.rs"]
mod groups;
#[path = "conveyor/history.rs"]
mod history;
#[path = "conveyor/http.rs"]
mod http;
#[path = "conveyor/scaleout.rs"]
mod scaleout;
/// The tests' server fixture: which binary, and its command line.
#[allow(dead_code, unreachable_pub)]
#[path = "../tests/common/server.rs"]
mod server;
#[path = "conveyor/slots.rs"]
mod slots;
#[path = "conveyor/traces.rs"]
mod traces;
#[path = "conveyor/valkey.rs"]
mod valkey;
#[path = "conveyor/web.rs"]
mod web;

const QUEUE: &str = "bench";
const LIST: &str = "jobs:bench";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        ["off", "outcomes", "all"].contains(&args.events.as_str()),
        "--events {:?}: give off, outcomes or all",
        args.events
    );
    let dir = tempfile::tempdir()?;
    let (server, url) = match &args.redis_url {
        Some(url) => (None, url.clone()),
        None => {
            let (server, url) = start_server(server::Family::Redis, dir.path())?;
            (Some(server), url)
        }
    };
    let redis_pid = server.as_ref().and_then(server::ServerProcess::pid);
    let client = redis::Client::open(url.as_str())?;
    let mut conn = client.get_connection()?;
    let found = server_version(&mut conn);
    println!(
        "conveyor bench: {} jobs, concurrency {}, events {}, payload {} B, median of {} runs",
        args.jobs, args.concurrency, args.events, args.payload, args.runs
    );
    println!(
        "machine: {} cores, {}, {found} on {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        cpu_model(),
        if args.redis_url.is_some() {
            "the given URL"
        } else {
            "loopback TCP"
        }
    );
    let mode = args.mode.as_str();
    if mode == "all" || mode == "throughput" {
        let work = Workload {
            label: "no-op jobs",
            config: config_file(dir.path(), &url, &args, None)?,
            jobs: args.jobs,
            runs: args.runs,
            item: payload,
        };
        throughput(&args, &url, &mut conn, redis_pid, &work)?;
    }
    if mode == "all" || mode == "exec" {
        exec::bench(&args, &url, &mut conn, redis_pid, dir.path())?;
    }
    if mode == "all" || mode == "email" {
        email::bench(&args, &url, &mut conn, redis_pid, dir.path())?;
    }
    if mode == "all" || mode == "http" {
        http::bench(&args, &url, &mut conn, redis_pid, dir.path())?;
    }
    if mode == "all" || mode == "scaleout" {
        scaleout::bench(&args, &url, redis_pid, dir.path())?;
    }
    if mode == "all" || mode == "web" {
        web::bench(&args, &url, &mut conn, redis_pid, dir.path())?;
    }
    if mode == "all" || mode == "traces" {
        traces::bench(&args, &url, &mut conn, redis_pid, dir.path())?;
    }
    if mode == "all" || mode == "history" {
        history::bench(&args, &url, &mut conn, redis_pid, dir.path())?;
    }
    if mode == "all" || mode == "groups" {
        groups::bench(&args, &url, &mut conn, redis_pid, dir.path())?;
    }
    if mode == "all" || mode == "flow" {
        flows::bench(&args, &url, &mut conn, redis_pid, dir.path())?;
    }
    if mode == "all" || mode == "slots" {
        slots::bench(&args, &url, &mut conn, redis_pid, dir.path())?;
    }
    if mode == "all" || mode == "valkey" {
        valkey::bench(&args, &url, &mut conn, redis_pid, dir.path())?;
    }
    if mode == "all" || mode == "latency" {
        latency(&args, &url, &mut conn)?;
    }
    if mode == "all" || mode == "enqueue" {
        enqueue(&args, &url, &mut conn, dir.path())?;
    }
    drop(server);
    Ok(())
}

/// A helper process of the bench's (an SMTP server, a sink), stopped
/// however the bench ends (it would otherwise outlive a failed run and hold
/// the caller's output open).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _gone = self.0.kill();
        let _reaped = self.0.wait();
    }
}

/// A server of `family` of the bench's own on loopback TCP, persistence
/// off, its files in `dir`; stopped however the bench ends (it would
/// otherwise outlive a failed run and hold the caller's output open).
fn start_server(
    family: server::Family,
    dir: &Path,
) -> anyhow::Result<(server::ServerProcess, String)> {
    let port = server::free_port();
    let process = server::ServerCommand::new(family, dir).port(port).start()?;
    let url = format!("redis://127.0.0.1:{port}/0");
    let client = redis::Client::open(url.as_str())?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while client
        .get_connection()
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
        .is_err()
    {
        anyhow::ensure!(Instant::now() < deadline, "the server did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok((process, url))
}

/// The bench's configuration: the no-op queue, or `queue` (the rest of
/// the queue's table, its handler included).
fn config_file(dir: &Path, url: &str, args: &Args, queue: Option<&str>) -> anyhow::Result<PathBuf> {
    let path = dir.join("bench.toml");
    let queue = queue.map_or_else(
        || format!("handler = \"noop\"\nconcurrency = {}\n", args.concurrency),
        str::to_owned,
    );
    std::fs::write(
        &path,
        format!(
            "[redis]\nurl = \"{url}\"\n[queues.{QUEUE}]\nevents = \"{}\"\n{queue}",
            args.events
        ),
    )?;
    Ok(path)
}

fn payload(i: usize, size: usize) -> String {
    let head = format!("{{\"n\":{i},\"pad\":\"");
    let pad = size.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(pad))
}

fn preload(
    conn: &mut redis::Connection,
    n: usize,
    size: usize,
    item: fn(usize, usize) -> String,
) -> anyhow::Result<()> {
    for start in (0..n).step_by(10_000) {
        let mut cmd = redis::cmd("RPUSH");
        cmd.arg(LIST);
        for i in start..(start + 10_000).min(n) {
            cmd.arg(item(i, size));
        }
        cmd.query::<()>(conn)?;
    }
    Ok(())
}

struct Run {
    jobs_per_s: f64,
    commands_per_job: f64,
    top_commands: Vec<(String, f64)>,
    daemon_cpu_s: f64,
    redis_cpu_s: f64,
    /// The daemon's child processes (exec workers): the live ones and
    /// those it has waited for.
    workers_cpu_s: f64,
    peak_rss_kb: u64,
}

/// What a throughput measurement runs.
struct Workload {
    /// Printed before the figures.
    label: &'static str,
    /// The daemon's configuration file.
    config: PathBuf,
    /// Jobs per run.
    jobs: usize,
    /// Runs; the median is reported.
    runs: usize,
    /// Job `i` of about `size` bytes.
    item: fn(usize, usize) -> String,
}

fn throughput(
    args: &Args,
    url: &str,
    conn: &mut redis::Connection,
    redis_pid: Option<u32>,
    work: &Workload,
) -> anyhow::Result<Run> {
    let cfg = &work.config;
    let mut runs = Vec::new();
    for _ in 0..work.runs {
        redis::cmd("FLUSHALL").query::<()>(conn)?;
        preload(conn, work.jobs, args.payload, work.item)?;
        let listener = args.subscribe.then(|| subscriber(url)).transpose()?;
        redis::cmd("CONFIG").arg("RESETSTAT").query::<()>(conn)?;
        let redis_cpu0 = redis_pid.map(cpu_seconds).unwrap_or(0.0);
        let bin = args
            .daemon_bin
            .clone()
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_conveyor")));
        let mut daemon = Command::new(bin)
            .args(["run", "--config"])
            .arg(cfg)
            .env("CONVEYOR_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()?;
        let mut polls = 0u64;
        let processed = |conn: &mut redis::Connection, polls: &mut u64| -> u64 {
            *polls += 1;
            redis::cmd("HGET")
                .arg(format!("{{{LIST}}}:stats"))
                .arg("processed")
                .query::<Option<u64>>(conn)
                .ok()
                .flatten()
                .unwrap_or(0)
        };
        let deadline = Instant::now() + Duration::from_secs(600);
        let (first, t_first) = loop {
            let n = processed(conn, &mut polls);
            if n > 0 {
                break (n, Instant::now());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the daemon did not start working"
            );
            std::thread::sleep(Duration::from_micros(500));
        };
        let t_end = loop {
            if processed(conn, &mut polls) as usize >= work.jobs {
                break Instant::now();
            }
            anyhow::ensure!(Instant::now() < deadline, "the run did not finish");
            std::thread::sleep(Duration::from_millis(1));
        };
        let daemon_cpu = cpu_seconds(daemon.id());
        let workers_cpu = children_cpu_seconds(daemon.id());
        let peak_rss_kb = proc_status_kb(daemon.id(), "VmHWM").unwrap_or(0);
        let redis_cpu = redis_pid.map(cpu_seconds).unwrap_or(0.0) - redis_cpu0;
        let stats = commandstats(conn)?;
        signal(&daemon, "TERM");
        daemon.wait()?;
        if let Some((heard, stop)) = listener {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let heard = heard
                .join()
                .map_err(|_| anyhow::anyhow!("subscriber thread"))?;
            anyhow::ensure!(
                heard >= work.jobs as u64,
                "the subscriber heard {heard} events for {} jobs",
                work.jobs
            );
        }
        // Our own polling and bookkeeping are not the daemon's cost.
        let ours = |name: &str| match name {
            "hget" => polls,
            "config|resetstat" | "config" => 1,
            _ => 0,
        };
        let mut by_cmd: Vec<(String, f64)> = stats
            .iter()
            .map(|(name, calls)| {
                (
                    name.clone(),
                    calls.saturating_sub(ours(name)) as f64 / work.jobs as f64,
                )
            })
            .filter(|(name, per)| *per > 0.0 && !name.starts_with("info"))
            .collect();
        by_cmd.sort_by(|a, b| b.1.total_cmp(&a.1));
        runs.push(Run {
            jobs_per_s: (work.jobs as u64 - first) as f64 / (t_end - t_first).as_secs_f64(),
            commands_per_job: by_cmd.iter().map(|(_, per)| per).sum(),
            top_commands: by_cmd.into_iter().take(6).collect(),
            daemon_cpu_s: daemon_cpu,
            redis_cpu_s: redis_cpu,
            workers_cpu_s: workers_cpu,
            peak_rss_kb,
        });
    }
    runs.sort_by(|a, b| a.jobs_per_s.total_cmp(&b.jobs_per_s));
    let all: Vec<String> = runs
        .iter()
        .map(|r| format!("{:.0}", r.jobs_per_s))
        .collect();
    let m = runs.swap_remove(runs.len() / 2);
    let cpu = m.daemon_cpu_s + m.redis_cpu_s;
    println!("{}", work.label);
    println!(
        "throughput    {:>9.0} jobs/s   (runs: {})",
        m.jobs_per_s,
        all.join(", ")
    );
    println!(
        "commands/job  {:>9.2}          ({})",
        m.commands_per_job,
        m.top_commands
            .iter()
            .map(|(n, per)| format!("{n} {per:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "cpu           daemon {:.2} s ({:.0}%), redis-server {:.2} s ({:.0}%), {:.1} us of CPU per job",
        m.daemon_cpu_s,
        100.0 * m.daemon_cpu_s / cpu.max(1e-9),
        m.redis_cpu_s,
        100.0 * m.redis_cpu_s / cpu.max(1e-9),
        1e6 * cpu / work.jobs as f64
    );
    if m.workers_cpu_s > 0.0 {
        println!(
            "cpu           daemon {:.1} us per job, workers {:.1} us per job",
            1e6 * m.daemon_cpu_s / work.jobs as f64,
            1e6 * m.workers_cpu_s / work.jobs as f64
        );
    }
    println!(
        "peak rss      {:>9.1} MB (daemon)",
        m.peak_rss_kb as f64 / 1024.0
    );
    Ok(m)
}

/// A thread subscribed to the events channel, counting what it hears
/// until told to stop.
type Listener = (
    std::thread::JoinHandle<u64>,
    Arc<std::sync::atomic::AtomicBool>,
);

fn subscriber(url: &str) -> anyhow::Result<Listener> {
    let mut conn = redis::Client::open(url)?.get_connection()?;
    conn.set_read_timeout(Some(Duration::from_millis(100)))?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = stop.clone();
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let mut pubsub = conn.as_pubsub();
        if pubsub.subscribe("conveyor:events").is_err() {
            return 0;
        }
        let _ready = ready_tx.send(());
        let mut heard = 0u64;
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            if pubsub.get_message().is_ok() {
                heard += 1;
            }
        }
        heard
    });
    ready.recv_timeout(Duration::from_secs(10))?;
    Ok((thread, stop))
}

/// Tells the bench when each job's handler started.
struct Stamp(mpsc::UnboundedSender<Instant>);

#[async_trait]
impl Handler for Stamp {
    async fn handle(&self, _job: &Job) -> Result<(), HandlerError> {
        self.0
            .send(Instant::now())
            .map_err(|_| HandlerError::permanent("bench gone"))
    }
}

fn latency(args: &Args, url: &str, conn: &mut redis::Connection) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut all = Vec::new();
    for _ in 0..args.runs {
        redis::cmd("FLUSHALL").query::<()>(conn)?;
        let samples = runtime.block_on(latency_run(args, url))?;
        all.push(samples);
    }
    println!(
        "latency       p50 {:.3} ms, p99 {:.3} ms, p999 {:.3} ms   ({} sequential jobs, idle daemon, RPUSH to handler start)",
        median_quantile(&all, 0.50),
        median_quantile(&all, 0.99),
        median_quantile(&all, 0.999),
        args.latency_jobs
    );
    Ok(())
}

/// A daemon in this process on configuration `toml`, with `handler`
/// registered as `name`; it stops when the returned shutdown's
/// `terminate` is cancelled.
fn in_process(
    toml: &str,
    name: &str,
    handler: impl Handler + 'static,
) -> anyhow::Result<(
    tokio::task::JoinHandle<Result<(), conveyor::daemon::DaemonError>>,
    Shutdown,
)> {
    let config = conveyor::config::Config::from_toml(toml).map_err(anyhow::Error::msg)?;
    config.validate()?;
    let mut registry = Registry::builtin();
    registry.register_handler(name, handler);
    let shutdown = Shutdown::new();
    let s = shutdown.clone();
    let registry = Arc::new(registry);
    let daemon = tokio::spawn(async move { conveyor::daemon::run(config, &registry, s).await });
    Ok((daemon, shutdown))
}

async fn latency_run(args: &Args, url: &str) -> anyhow::Result<Vec<f64>> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (daemon, shutdown) = in_process(
        &format!(
            "[redis]\nurl = \"{url}\"\n[queues.{QUEUE}]\nhandler = \"stamp\"\nconcurrency = {}\nevents = \"{}\"\n",
            args.concurrency, args.events
        ),
        "stamp",
        Stamp(tx),
    )?;
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    // Warm up: the first job also waits for the daemon to start.
    redis::cmd("RPUSH")
        .arg(LIST)
        .arg("{}")
        .query_async::<()>(&mut conn)
        .await?;
    tokio::time::timeout(Duration::from_secs(30), rx.recv()).await?;
    let mut samples = Vec::with_capacity(args.latency_jobs);
    for i in 0..args.latency_jobs {
        let sent = Instant::now();
        redis::cmd("RPUSH")
            .arg(LIST)
            .arg(payload(i, args.payload))
            .query_async::<()>(&mut conn)
            .await?;
        let started = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("daemon gone"))?;
        samples.push((started - sent).as_secs_f64() * 1000.0);
    }
    shutdown.terminate.cancel();
    daemon.await??;
    samples.sort_by(f64::total_cmp);
    Ok(samples)
}

fn enqueue(args: &Args, url: &str, conn: &mut redis::Connection, dir: &Path) -> anyhow::Result<()> {
    let file = dir.join("jobs.ndjson");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file)?);
        for i in 0..args.enqueue_jobs {
            writeln!(f, "{}", payload(i, args.payload))?;
        }
    }
    let cfg = config_file(dir, url, args, None)?;
    let mut rates = Vec::new();
    for _ in 0..args.runs {
        redis::cmd("FLUSHALL").query::<()>(conn)?;
        let started = Instant::now();
        let status = Command::new(env!("CARGO_BIN_EXE_conveyor"))
            .args(["enqueue", QUEUE, "--quiet", "--file"])
            .arg(&file)
            .arg("--config")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        let took = started.elapsed().as_secs_f64();
        anyhow::ensure!(status.success(), "conveyor enqueue failed");
        let len: usize = redis::cmd("LLEN").arg(LIST).query(conn)?;
        anyhow::ensure!(
            len == args.enqueue_jobs,
            "enqueued {len} of {}",
            args.enqueue_jobs
        );
        rates.push(args.enqueue_jobs as f64 / took);
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "enqueue       {:>9.0} jobs/s   (conveyor enqueue --file, {} jobs, whole process; runs: {})",
        rates[rates.len() / 2],
        args.enqueue_jobs,
        rates
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// The median of some runs' figures.
fn median(runs: &[f64]) -> f64 {
    let mut sorted = runs.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// Runs' figures as the lines show them: `12, 13, 15`.
fn listed(runs: &[f64]) -> String {
    runs.iter()
        .map(|r| format!("{r:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Prints, after `label`, the median of the runs' ratios `b / a` and each
/// run's.
fn ratios(label: &str, a: &[f64], b: &[f64]) {
    let ratios: Vec<f64> = a.iter().zip(b).map(|(a, b)| b / a).collect();
    println!(
        "{label:<13}{:>9.2}          (median of the runs' ratios; runs: {})",
        median(&ratios),
        ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// The median over runs of each run's `q` quantile (each run's samples sorted).
fn median_quantile(runs: &[Vec<f64>], q: f64) -> f64 {
    median(&runs.iter().map(|s| percentile(s, q)).collect::<Vec<_>>())
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `INFO commandstats` as (command, calls).
fn commandstats(conn: &mut redis::Connection) -> anyhow::Result<Vec<(String, u64)>> {
    let info: String = redis::cmd("INFO").arg("commandstats").query(conn)?;
    Ok(info
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("cmdstat_")?;
            let (name, fields) = rest.split_once(':')?;
            let calls = fields
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect())
}

/// The server and its own version, as `INFO server` gives them (Valkey
/// writes `server_name:valkey` and `valkey_version:`; its `redis_version:`
/// is the Redis it answers as): `redis 7.0.15`, `valkey 8.1.8`.
fn server_version(conn: &mut redis::Connection) -> String {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(conn)
        .unwrap_or_default();
    let field = |name: &str| {
        info.lines().find_map(|l| {
            let (key, value) = l.split_once(':')?;
            (key == name).then(|| value.trim().to_owned())
        })
    };
    let name = field("server_name").unwrap_or_else(|| "redis".into());
    let version = field(&format!("{name}_version"))
        .or_else(|| field("redis_version"))
        .unwrap_or_default();
    format!("{name} {version}")
}

/// CPU seconds of a process's children: those it has waited for, and
/// those still running.
fn children_cpu_seconds(pid: u32) -> f64 {
    let waited = stat_fields(pid)
        .map(|f| (field(&f, 13) + field(&f, 14)) / 100.0)
        .unwrap_or(0.0);
    let live: f64 = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|&child| stat_fields(child).is_some_and(|f| field(&f, 1) == pid as f64))
        .map(cpu_seconds)
        .sum();
    waited + live
}

/// The fields of `/proc/<pid>/stat` after the command name (which may
/// contain spaces, in parentheses): index 0 is the state.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    Some(after.split_whitespace().map(str::to_owned).collect())
}

fn field(fields: &[String], i: usize) -> f64 {
    fields.get(i).and_then(|f| f.parse().ok()).unwrap_or(0.0)
}

/// User plus system CPU seconds of a process.
fn cpu_seconds(pid: u32) -> f64 {
    stat_fields(pid)
        .map(|f| (field(&f, 11) + field(&f, 12)) / 100.0)
        .unwrap_or(0.0)
}

fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn signal(child: &Child, sig: &str) {
    let sent = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status();
    if !sent.is_ok_and(|s| s.success()) {
        eprintln!("could not signal {}", child.id());
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
