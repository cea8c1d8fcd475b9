//! What every scenario shares: the daemon as a child process, the ledger of
//! jobs and their completion record, the final accounting, and the one line
//! of figures each scenario prints.

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redis::AsyncCommands as _;
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};

use crate::common::{KillOnDrop, Logs, conveyor, in_flight, llen, spawn_logged, zcard};

/// The queue every scenario loads, unless it says otherwise.
pub(crate) const Q: &str = "jobs:work";
/// Its in-flight lists, one per node.
pub(crate) const INFLIGHT: &str = "{jobs:work}:inflight:";
/// Its scheduled set and dead letter list.
pub(crate) const SCHEDULED: &str = "{jobs:work}:scheduled";
pub(crate) const DEAD: &str = "{jobs:work}:dead";
/// The nodes that may hold an in-flight list of it.
pub(crate) const NODES: &str = "{jobs:work}:nodes";

/// How much bigger than CI a run is: 1 in CI; `CONVEYOR_SOAK=1` (or any
/// value that is not a number above 1) for x10; `CONVEYOR_SOAK=N` for xN.
pub(crate) fn scale() -> usize {
    match std::env::var("CONVEYOR_SOAK") {
        Err(_) => 1,
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 1 => n,
            Ok(0) => 1,
            _ => 10,
        },
    }
}

/// One scenario at a time: they measure time, and share 2 cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Holds the suite's lock for the scenario's lifetime.
pub(crate) async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// `conveyor run` as a child process; SIGKILLed if the scenario ends (or
/// fails) while it still runs, so no daemon outlives its test.
pub(crate) struct Daemon {
    child: KillOnDrop,
    logs: Logs,
}

impl Daemon {
    pub(crate) fn start(config: &Path) -> Self {
        Self::start_with_env(config, &[])
    }

    /// With these environment variables set.
    pub(crate) fn start_with_env(config: &Path, env: &[(&str, &str)]) -> Self {
        let mut cmd = conveyor();
        cmd.envs(env.iter().copied());
        Self::start_command(cmd, config)
    }

    /// `run` on `config` by this command (the binary as [`conveyor`] makes
    /// it, or a wrapper that execs it).
    pub(crate) fn start_command(mut cmd: std::process::Command, config: &Path) -> Self {
        cmd.args(["run", "--config", config.to_str().unwrap()]);
        let (child, logs) = spawn_logged(cmd);
        Self { child, logs }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn logs(&self) -> &Logs {
        &self.logs
    }

    pub(crate) fn signal(&self, sig: i32) {
        crate::common::signal(&self.child, sig);
    }

    /// SIGKILL, and reap it.
    pub(crate) fn kill(&mut self) {
        if self.child.try_wait().unwrap().is_none() {
            self.child.kill().unwrap();
        }
        self.child.wait().unwrap();
    }

    /// Whether the process has ended.
    pub(crate) fn has_exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    /// Waits up to `timeout` for it to exit; its exit code (None: still
    /// running, or killed by a signal).
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        crate::common::wait_exit(&mut self.child, timeout)
    }

    /// Resident memory in KiB, from /proc.
    pub(crate) fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Still running, and no panic in its log.
    pub(crate) fn assert_healthy(&mut self) {
        assert!(!self.has_exited(), "the daemon exited");
        self.assert_no_panic();
    }

    /// Prints the last lines of its log (shown when the test fails).
    pub(crate) fn dump_log(&self, lines: usize) {
        let all = self.logs.lines();
        for line in &all[all.len().saturating_sub(lines)..] {
            eprintln!("daemon {}: {line}", self.pid());
        }
    }

    pub(crate) fn assert_no_panic(&self) {
        let panics: Vec<String> = self
            .logs
            .lines()
            .into_iter()
            .filter(|l| l.contains("panicked"))
            .collect();
        assert!(panics.is_empty(), "the daemon panicked: {panics:?}");
    }
}

/// A `[daemon]` table plus queues, written where the daemon reads it.
pub(crate) fn write_config(dir: &Path, redis_url: &str, daemon: &str, queues: &str) -> PathBuf {
    let path = dir.join("conveyor.toml");
    let text = format!("[redis]\nurl = \"{redis_url}\"\n[daemon]\n{daemon}\n{queues}");
    std::fs::write(&path, text).unwrap();
    path
}

/// Fast heartbeats, so that a dead node is noticed within about a second.
pub(crate) const FAST: &str =
    "shutdown_timeout = \"5s\"\nheartbeat_interval = \"200ms\"\nnode_ttl = \"1s\"";

/// The jobs of a scenario, and the file their successful runs append to.
pub(crate) struct Ledger {
    dir: tempfile::TempDir,
    ids: Vec<String>,
}

impl Ledger {
    pub(crate) fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            ids: Vec::new(),
        }
    }

    /// The completion record.
    pub(crate) fn record_path(&self) -> PathBuf {
        self.dir.path().join("completed.log")
    }

    /// A new job for the `fault` handler: an envelope with a fresh id whose
    /// payload is `orders` plus the completion record's path.
    pub(crate) fn job(&mut self, mut orders: Value) -> String {
        let id = format!("j{:07}", self.ids.len());
        orders["record"] = json!(self.record_path());
        let item = json!({"id": id, "payload": orders, "attempt": 0}).to_string();
        self.ids.push(id);
        item
    }

    pub(crate) fn enqueued(&self) -> usize {
        self.ids.len()
    }

    /// Successful runs so far, per id.
    pub(crate) fn completions(&self) -> HashMap<String, usize> {
        let mut runs = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(self.record_path()) {
            for line in text.lines() {
                *runs.entry(line.to_owned()).or_insert(0) += 1;
            }
        }
        runs
    }

    /// Accounts for every enqueued job from what survives (see the crate doc).
    pub(crate) async fn tally(&self, conn: &mut MultiplexedConnection) -> Tally {
        let runs = self.completions();
        let dead: HashSet<String> = ids_of(&lrange(conn, DEAD).await);
        let mut places: Vec<(String, Vec<Vec<u8>>)> = vec![
            (Q.to_owned(), lrange(conn, Q).await),
            (
                SCHEDULED.to_owned(),
                conn.zrange(SCHEDULED, 0, -1).await.unwrap(),
            ),
        ];
        let lists: Vec<String> = conn.keys(format!("{INFLIGHT}*")).await.unwrap();
        for list in lists {
            let items = lrange(conn, &list).await;
            places.push((list, items));
        }
        let mut t = Tally {
            enqueued: self.ids.len(),
            ..Tally::default()
        };
        let mut waiting = HashSet::new();
        for (place, items) in &places {
            let ids = ids_of(items);
            if !ids.is_empty() {
                let some: Vec<&String> = ids.iter().take(3).collect();
                t.waiting_in
                    .push(format!("{place}: {} {some:?}", ids.len()));
            }
            waiting.extend(ids);
        }
        for id in &self.ids {
            let n = runs.get(id).copied().unwrap_or(0);
            t.duplicated += n.saturating_sub(1);
            match (n > 0, dead.contains(id), waiting.contains(id)) {
                (true, true, _) => t.completed_and_dead += 1,
                (true, false, _) => t.completed += 1,
                (false, true, _) => t.dead += 1,
                (false, false, true) => t.waiting += 1,
                (false, false, false) => t.lost.push(id.clone()),
            }
        }
        let known: HashSet<&String> = self.ids.iter().collect();
        t.unknown = runs.keys().filter(|id| !known.contains(id)).count();
        t
    }

    /// Waits until nothing is waiting, scheduled or in flight and every job
    /// completed or died, or `timeout` passes; the tally either way (the
    /// caller asserts on it, so a failure shows the figures).
    pub(crate) async fn drain(&self, conn: &mut MultiplexedConnection, timeout: Duration) -> Tally {
        let deadline = Instant::now() + timeout;
        loop {
            let idle = llen(conn, Q).await == 0
                && zcard(conn, SCHEDULED).await == 0
                && in_flight(conn, Q).await == 0;
            if idle || Instant::now() > deadline {
                let t = self.tally(conn).await;
                if t.settled() || Instant::now() > deadline {
                    return t;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn lrange(conn: &mut MultiplexedConnection, key: &str) -> Vec<Vec<u8>> {
    conn.lrange(key, 0, -1).await.unwrap()
}

/// The ids of envelopes (items that are not envelopes have none).
fn ids_of(items: &[Vec<u8>]) -> HashSet<String> {
    items
        .iter()
        .filter_map(|item| serde_json::from_slice::<Value>(item).ok())
        .filter_map(|v| v["id"].as_str().map(str::to_owned))
        .collect()
}

/// Where every enqueued job is, at the end.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) enqueued: usize,
    /// Ran to success at least once.
    pub(crate) completed: usize,
    /// Successful runs beyond the first.
    pub(crate) duplicated: usize,
    /// In the dead letter list, never completed.
    pub(crate) dead: usize,
    /// Completed and also dead: a contradiction, must be 0.
    pub(crate) completed_and_dead: usize,
    /// Still in the queue, scheduled or in flight.
    pub(crate) waiting: usize,
    /// Nowhere: must be empty.
    pub(crate) lost: Vec<String>,
    /// Where the waiting ones are, for a failure's message.
    pub(crate) waiting_in: Vec<String>,
    /// Completion records of ids never enqueued: must be 0.
    pub(crate) unknown: usize,
}

impl Tally {
    /// Every job completed or dead, nothing waiting.
    pub(crate) fn settled(&self) -> bool {
        self.waiting == 0 && self.lost.is_empty()
    }

    /// The invariants of every scenario: nothing lost, nothing both done
    /// and dead, no record of a job that does not exist.
    pub(crate) fn assert_nothing_lost(&self) {
        let some: Vec<&String> = self.lost.iter().take(10).collect();
        assert!(self.lost.is_empty(), "lost jobs ({self:?}): {some:?}");
        assert_eq!(self.completed_and_dead, 0, "{self:?}");
        assert_eq!(self.unknown, 0, "{self:?}");
    }

    /// The tally is settled: nothing lost, nothing still waiting.
    pub(crate) fn assert_settled(&self) {
        self.assert_nothing_lost();
        assert_eq!(self.waiting, 0, "jobs still waiting: {self:?}");
    }
}

/// Prints the scenario's one line of figures, bypassing the test harness's
/// output capture so that `cargo test` shows it for passing tests too.
pub(crate) fn report(scenario: &str, t: &Tally, recover: Option<Duration>, more: &str) {
    let recover = recover.map_or("-".to_owned(), |d| format!("{:.2}s", d.as_secs_f64()));
    let line = format!(
        "faults: {scenario:<22} enqueued={} completed={} duplicated={} dead={} lost={} recover={recover} {more}\n",
        t.enqueued,
        t.completed,
        t.duplicated,
        t.dead,
        t.lost.len(),
    );
    let mut err = std::io::stderr().lock();
    let _written = err.write_all(line.as_bytes());
}

/// The queue's `processed` counter (outcomes recorded).
pub(crate) async fn processed(conn: &mut MultiplexedConnection) -> u64 {
    crate::common::stat(conn, Q, "processed").await
}

/// Polls until `check` holds; how long that took, or None at `timeout`.
pub(crate) async fn time_until<F, Fut>(timeout: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return Some(started.elapsed());
        }
        if started.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The in-flight list of the daemon with this pid (node ids are
/// `<host>-<pid>-<random>`), once the daemon has registered in the queue.
pub(crate) async fn inflight_list_of(conn: &mut MultiplexedConnection, pid: u32) -> Option<String> {
    let nodes: Vec<String> = conn.smembers(NODES).await.unwrap();
    let tag = format!("-{pid}-");
    nodes
        .into_iter()
        .find(|n| n.contains(&tag))
        .map(|n| format!("{INFLIGHT}{n}"))
}

/// Waits until the daemon with this pid is registered; its in-flight list.
pub(crate) async fn registered(conn: &MultiplexedConnection, pid: u32) -> String {
    let found = std::sync::Arc::new(std::sync::Mutex::new(None));
    crate::common::wait_until("the daemon registers", Duration::from_secs(20), || {
        let (mut c, found) = (conn.clone(), found.clone());
        async move {
            let list = inflight_list_of(&mut c, pid).await;
            let ok = list.is_some();
            *found.lock().unwrap() = list;
            ok
        }
    })
    .await;
    let list = found.lock().unwrap().take();
    list.unwrap()
}

/// Pushes items in chunks, as a producer would.
pub(crate) async fn push_all(conn: &mut MultiplexedConnection, key: &str, items: &[String]) {
    for chunk in items.chunks(1000) {
        let _: () = conn.rpush(key, chunk).await.unwrap();
    }
}

/// The median of some durations.
pub(crate) fn median(mut v: Vec<Duration>) -> Option<Duration> {
    v.sort();
    v.get(v.len() / 2).copied()
}

/// A connection for the test's own checks that waits out a busy server
/// (a 17 MB item, a 2-core machine shared with the daemon) instead of
/// redis-rs's default 500ms, which would fail the check, not the daemon.
pub(crate) async fn patient(redis: &crate::common::Redis) -> MultiplexedConnection {
    let mut conn = redis.conn().await;
    conn.set_response_timeout(Duration::from_secs(10));
    conn
}
