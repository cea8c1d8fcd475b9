//! The web port under a flood of connections that send nothing or half a
//! request, more of them than the daemon may open files, while exec and
//! noop jobs run (DESIGN section 16: the web port cannot starve the
//! daemon).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::common::{Redis, conveyor_with_open_files, stat, wait_until, web_address};
use crate::harness::*;

const WAIT: Duration = Duration::from_secs(120);
/// The daemon's open files limit (soft and hard), so that the flood
/// outnumbers it quickly.
const OPEN_FILES: u64 = 256;
/// Connections the flood holds at once: more than the daemon may open.
const FLOOD: usize = 300;
/// The server's deadline for a request's head (src/web/server.rs).
const HEAD_DEADLINE: Duration = Duration::from_secs(10);
/// How long /healthz may take to answer during the flood.
const HEALTH_BOUND: Duration = Duration::from_secs(2);

/// A oneshot exec worker that records the job's id as the fault handler
/// does: one line, appended, at the end.
const WORKER: &str = r#"import json, sys
job = json.loads(sys.stdin.readline())
with open(job["payload"]["record"], "a") as f:
    f.write(job["id"] + "\n")
"#;

/// 300 connections, half of them silent, half sending half a request
/// head, each reopened as soon as the server closes it, against a daemon
/// allowed 256 open files, while 40 exec jobs (a python process each) and
/// 1,000 noop jobs run and /healthz is asked every 100ms on a new
/// connection. Every job must succeed at its first attempt, /healthz must
/// answer within 2s every time, and once the flood stops reopening, the
/// server must close every connection it still holds within its 10s
/// deadline (plus a margin): no connection is held longer.
///
/// Time to recover: not applicable (shown as "-"); the figures are the
/// connections opened in all, the longest any was held, and /healthz's
/// slowest answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_on_the_web_port() {
    let _serial = serial().await;
    let (exec_jobs, noop_jobs) = (40 * scale(), 1_000 * scale());
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let worker = dir.path().join("record.py");
    std::fs::write(&worker, WORKER).unwrap();
    let queues = format!(
        "[web]\nlisten = \"127.0.0.1:0\"\n\
         [queues.work]\nhandler = \"exec\"\nconcurrency = 4\nmax_attempts = 1\n\
         [queues.work.exec]\ncommand = [\"python3\", \"{}\"]\nmode = \"oneshot\"\n\
         [queues.noop]\nhandler = \"noop\"\nconcurrency = 4\nmax_attempts = 1\n",
        worker.display()
    );
    let cfg = write_config(dir.path(), &redis.url(), FAST, &queues);
    let mut conn = patient(&redis).await;
    let mut daemon = Daemon::start_command(conveyor_with_open_files(OPEN_FILES, OPEN_FILES), &cfg);
    let base = web_address(daemon.logs()).await;
    let addr: SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    registered(&conn, daemon.pid()).await;
    let cap = daemon
        .logs()
        .lines()
        .iter()
        .find_map(|l| {
            Some(
                l.split("connections=")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .to_owned(),
            )
        })
        .unwrap_or_else(|| "?".into());

    let flood = Flood::start(addr, FLOOD);
    wait_until("the flood is open", Duration::from_secs(20), || async {
        flood.opened.load(Ordering::Relaxed) >= FLOOD
    })
    .await;
    let probes = Probes::start(&base);

    let started = Instant::now();
    let mut ledger = Ledger::new();
    let items: Vec<String> = (0..exec_jobs).map(|_| ledger.job(json!({}))).collect();
    push_all(&mut conn, Q, &items).await;
    let noops: Vec<String> = (0..noop_jobs)
        .map(|i| json!({ "n": i }).to_string())
        .collect();
    push_all(&mut conn, "jobs:noop", &noops).await;

    let tally = ledger.drain(&mut conn, WAIT * scale() as u32).await;
    wait_until("the noop jobs are done", WAIT, || {
        let mut c = conn.clone();
        async move { stat(&mut c, "jobs:noop", "processed").await >= noop_jobs as u64 }
    })
    .await;
    let ran = started.elapsed();
    let (answered, slowest, failures) = probes.stop().await;
    let opened = flood.opened.load(Ordering::Relaxed);
    let flood_held = flood.stop().await;

    let failed = stat(&mut conn, Q, "failed").await + stat(&mut conn, "jobs:noop", "failed").await;
    let retried =
        stat(&mut conn, Q, "retried").await + stat(&mut conn, "jobs:noop", "retried").await;
    report(
        "web_flood",
        &tally,
        None,
        &format!(
            "open_files={OPEN_FILES} cap={cap} flood={FLOOD} opened={opened} held_max={} \
             healthz={answered} healthz_max={}ms noop={noop_jobs} jobs_took={:.1}s failed={failed} \
             retried={retried}",
            flood_held.map_or("never closed".to_owned(), |d| format!(
                "{:.1}s",
                d.as_secs_f64()
            )),
            slowest.as_millis(),
            ran.as_secs_f64(),
        ),
    );
    if failed > 0 || !failures.is_empty() {
        daemon.dump_log(40);
    }
    tally.assert_settled();
    assert_eq!(tally.completed, exec_jobs, "{tally:?}");
    assert_eq!((failed, retried), (0, 0), "no job failed, none was retried");
    assert!(failures.is_empty(), "/healthz did not answer: {failures:?}");
    assert!(
        slowest <= HEALTH_BOUND,
        "/healthz took {slowest:?} during the flood"
    );
    let held = flood_held.expect("the server closed every flood connection");
    assert!(
        held <= HEAD_DEADLINE + Duration::from_secs(3),
        "a connection that sent no whole request was held {held:?}"
    );
    assert!(
        !daemon.logs().contains("Too many open files"),
        "the daemon ran out of descriptors"
    );
    daemon.assert_healthy();
}

/// Connections that send nothing or half a head, each reopened when the
/// server closes it while the flood runs.
struct Flood {
    opened: Arc<AtomicUsize>,
    running: Arc<AtomicBool>,
    holders: Vec<tokio::task::JoinHandle<Duration>>,
}

impl Flood {
    fn start(addr: SocketAddr, n: usize) -> Self {
        let opened = Arc::new(AtomicUsize::new(0));
        let running = Arc::new(AtomicBool::new(true));
        let holders = (0..n)
            .map(|i| {
                let (opened, running) = (opened.clone(), running.clone());
                tokio::spawn(async move {
                    let mut longest = Duration::ZERO;
                    loop {
                        longest = longest.max(hold(addr, i % 2 == 1, &opened).await);
                        if !running.load(Ordering::Relaxed) {
                            return longest;
                        }
                    }
                })
            })
            .collect();
        Self {
            opened,
            running,
            holders,
        }
    }

    /// Stops reopening and waits for the server to close what is open; the
    /// longest any connection was held, or None if some are still open
    /// well past the server's deadline.
    async fn stop(self) -> Option<Duration> {
        self.running.store(false, Ordering::Relaxed);
        let all = futures::future::join_all(self.holders);
        // A connect under way may take its own deadline first.
        let held = tokio::time::timeout(HEAD_DEADLINE * 3, all).await.ok()?;
        held.into_iter().map(Result::unwrap).max()
    }
}

/// Opens one connection, sends nothing or half a head, and reads until the
/// server closes it; how long it was open (from the end of the handshake,
/// which may precede the server's accept: the time in its backlog counts).
async fn hold(addr: SocketAddr, half: bool, opened: &AtomicUsize) -> Duration {
    let Ok(Ok(mut stream)) = tokio::time::timeout(HEAD_DEADLINE, TcpStream::connect(addr)).await
    else {
        // Not accepted (a full backlog): a new attempt.
        return Duration::ZERO;
    };
    let start = Instant::now();
    opened.fetch_add(1, Ordering::Relaxed);
    if half
        && stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: flood\r\n")
            .await
            .is_err()
    {
        return start.elapsed();
    }
    let mut buf = [0u8; 256];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
    start.elapsed()
}

/// `GET /healthz` every 100ms, each on a new connection.
struct Probes {
    running: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(usize, Duration, Vec<String>)>,
}

impl Probes {
    fn start(base: &str) -> Self {
        let running = Arc::new(AtomicBool::new(true));
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(HEALTH_BOUND * 5)
            .build()
            .unwrap();
        let url = format!("{base}/healthz");
        let task = tokio::spawn({
            let running = running.clone();
            async move {
                let (mut answered, mut slowest, mut failures) = (0, Duration::ZERO, Vec::new());
                while running.load(Ordering::Relaxed) {
                    let asked = Instant::now();
                    match client.get(&url).send().await {
                        Ok(r) if r.status().is_success() => answered += 1,
                        Ok(r) => failures.push(format!("status {}", r.status())),
                        Err(e) => failures.push(format!("{e:?}")),
                    }
                    slowest = slowest.max(asked.elapsed());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                (answered, slowest, failures)
            }
        });
        Self { running, task }
    }

    /// Answers, the slowest, and what went wrong.
    async fn stop(self) -> (usize, Duration, Vec<String>) {
        self.running.store(false, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}
