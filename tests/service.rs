//! conveyor as a systemd service: the unit passes `systemd-analyze verify`
//! and rates 2.0 or lower in `systemd-analyze security`; the daemon speaks
//! sd_notify to a socket the test binds, as systemd's (READY only once Redis
//! answers, STATUS lines, WATCHDOG at least every half period, STOPPING on
//! SIGTERM), and sends no READY when its configuration is bad.
//!
//! A fetcher stuck inside one Redis call cannot be provoked from outside:
//! every call is bounded by the client's timeouts, so it ends in an error
//! instead. The daemon's unit tests (`daemon::watchdog`) check that a stuck
//! fetcher withholds the pet; here a Redis stall checks the converse, that
//! an outage is not taken for a stuck fetcher.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;
use redis::AsyncCommands as _;

const WAIT: Duration = Duration::from_secs(20);
const SIGTERM: i32 = 15;
const SIGSTOP: i32 = 19;
const SIGCONT: i32 = 18;
const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/conveyor.service");
const EXEC_START: &str = "ExecStart=/usr/bin/conveyor run --config /etc/conveyor/conveyor.toml";

/// The shipped unit, copied into `dir` with `ExecStart` pointing at the
/// built binary (systemd-analyze checks that the binary exists) and with
/// `edit` applied.
fn unit_copy(dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let text = std::fs::read_to_string(UNIT).unwrap();
    assert!(
        text.lines().any(|l| l == EXEC_START),
        "the unit runs {EXEC_START:?}"
    );
    let exec = format!(
        "ExecStart={} run --config /etc/conveyor/conveyor.toml",
        env!("CARGO_BIN_EXE_conveyor")
    );
    let path = dir.join("conveyor.service");
    std::fs::write(&path, edit(text.replace(EXEC_START, &exec))).unwrap();
    path
}

/// Runs `systemd-analyze`; returns (exit code, stdout and stderr together).
fn systemd_analyze(args: &[&str], unit: &Path) -> (i32, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .env("SYSTEMD_COLORS", "0")
        .output()
        .expect("systemd-analyze must be installed (apt-get install systemd)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn the_unit_verifies_without_a_word() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_copy(dir.path(), |t| t);
    // verify exits 0 on most mistakes and only prints them: any output fails.
    let (code, out) = systemd_analyze(&["verify", "--man=no"], &unit);
    assert_eq!((code, out.as_str()), (0, ""), "systemd-analyze verify");
}

#[test]
fn verify_would_report_a_mistake() {
    // Guards the test above against passing vacuously.
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_copy(dir.path(), |t| {
        t.replace("Type=notify", "Type=notify-reload")
    });
    let (_, out) = systemd_analyze(&["verify", "--man=no"], &unit);
    assert!(out.contains("notify-reload"), "verify said: {out:?}");
}

#[test]
fn the_unit_rates_2_or_lower_in_systemd_analyze_security() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_copy(dir.path(), |t| t);
    // --threshold is on a 0-100 scale: 20 is a printed 2.0.
    let (code, out) = systemd_analyze(&["security", "--offline=yes", "--threshold=20"], &unit);
    let line = out
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no overall exposure level in:\n{out}"));
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no score in {line:?}"));
    assert!(score <= 2.0, "{line}");
    assert_eq!(code, 0, "{line}");
}

/// A notification socket like systemd's, bound in a temporary directory.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
    _dir: tempfile::TempDir,
    /// Every datagram so far, with when it arrived.
    got: Vec<(Instant, String)>,
}

impl NotifySocket {
    fn bind() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        Self {
            socket,
            path,
            _dir: dir,
            got: Vec::new(),
        }
    }

    /// Reads datagrams until one satisfies `done`; returns its index.
    fn until(&mut self, what: &str, done: impl Fn(&str) -> bool) -> usize {
        let deadline = Instant::now() + WAIT;
        let mut buf = [0u8; 4096];
        loop {
            match self.socket.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    self.got.push((Instant::now(), msg));
                    if done(&self.got[self.got.len() - 1].1) {
                        return self.got.len() - 1;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => panic!("recv: {e}"),
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; got {:?}",
                self.messages()
            );
        }
    }

    /// Reads whatever is queued, without waiting for more.
    fn drain(&mut self) {
        let mut buf = [0u8; 4096];
        self.socket.set_nonblocking(true).unwrap();
        while let Ok(n) = self.socket.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            self.got.push((Instant::now(), msg));
        }
        self.socket.set_nonblocking(false).unwrap();
    }

    fn messages(&self) -> Vec<&str> {
        self.got.iter().map(|(_, m)| m.as_str()).collect()
    }

    /// The arrival times of the watchdog pets from datagram `from` on.
    fn pets(&self, from: usize) -> Vec<Instant> {
        self.got[from..]
            .iter()
            .filter(|(_, m)| has(m, "WATCHDOG=1"))
            .map(|(t, _)| *t)
            .collect()
    }
}

/// Whether a datagram carries the assignment `line` (they hold one a line).
fn has(msg: &str, line: &str) -> bool {
    msg.lines().any(|l| l == line)
}

fn status_of(msg: &str) -> Option<&str> {
    msg.lines().find_map(|l| l.strip_prefix("STATUS="))
}

/// The daemon binary with a clean environment for these tests.
fn daemon(config: &Path) -> Command {
    let mut cmd = conveyor();
    cmd.args(["run", "--config", config.to_str().unwrap()])
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("CONVEYOR_SMTP_PASSWORD_FILE")
        .env_remove("CONVEYOR_LOG_FORMAT")
        .env_remove("NO_COLOR");
    cmd
}

fn under_systemd(mut cmd: Command, notify: &NotifySocket, watchdog: Duration) -> Command {
    cmd.env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", watchdog.as_micros().to_string());
    cmd
}

fn assert_pets_every(pets: &[Instant], most: Duration) {
    assert!(pets.len() >= 2, "too few watchdog pets: {}", pets.len());
    for gap in pets.windows(2).map(|w| w[1] - w[0]) {
        assert!(
            gap <= most,
            "{gap:?} between watchdog pets (at most {most:?})"
        );
    }
}

/// The daemon, killed if a test fails before stopping it, so that no stray
/// daemon outlives its test.
fn stop(child: &mut Child) {
    signal(child, SIGTERM);
    assert_eq!(wait_exit(child, WAIT), Some(0), "exit code after SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifies_ready_only_once_redis_answers_then_pets_and_stops() {
    let mut redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(
        dir.path(),
        &redis,
        "[queues.work]\nhandler = \"fault\"\nconcurrency = 2\n",
    );
    redis.kill();
    let mut notify = NotifySocket::bind();
    let watchdog = Duration::from_secs(2);
    let (mut running, _logs) = spawn_logged(under_systemd(daemon(&cfg), &notify, watchdog));

    notify.until("a status saying it waits for Redis", |m| {
        status_of(m).is_some_and(|s| s.starts_with("waiting for Redis"))
    });
    notify.drain();
    assert!(
        !notify.messages().iter().any(|m| has(m, "READY=1")),
        "READY=1 before Redis answered: {:?}",
        notify.messages()
    );

    redis.restart();
    let ready = notify.until("READY=1", |m| has(m, "READY=1"));
    let mut conn = redis.conn().await;
    let _: () = conn.rpush("jobs:work", "{}").await.unwrap();
    notify.until("a status counting the job", |m| {
        status_of(m) == Some("running: 1 queue, 0/2 busy, 1 job handled")
    });
    // Six pets span over a second at a quarter of the timeout each.
    while notify.pets(ready).len() < 6 {
        notify.until("a watchdog pet", |m| has(m, "WATCHDOG=1"));
    }
    assert_pets_every(&notify.pets(ready), watchdog / 2);

    signal(&running.0, SIGTERM);
    let stopping = notify.until("STOPPING=1", |m| has(m, "STOPPING=1"));
    let extend = notify.got[stopping].1.clone();
    assert!(
        has(&extend, "EXTEND_TIMEOUT_USEC=25000000"),
        "the stop asks for shutdown_timeout (5s) + 20s: {extend:?}"
    );
    assert_eq!(wait_exit(&mut running.0, WAIT), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_stall_is_not_a_stuck_fetcher() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    // Calls fail after 200ms, so a fetcher is stuck only after
    // 2 x (1s block + 200ms) = 2.4s inside one call.
    let cfg = dir.path().join("conveyor.toml");
    std::fs::write(
        &cfg,
        format!(
            "[redis]\nurl = \"{}\"\nresponse_timeout = \"200ms\"\n\
             [daemon]\nshutdown_timeout = \"5s\"\nheartbeat_interval = \"200ms\"\nnode_ttl = \"1s\"\n\
             [queues.work]\nhandler = \"fault\"\n",
            redis.url()
        ),
    )
    .unwrap();
    let mut notify = NotifySocket::bind();
    let watchdog = Duration::from_secs(2);
    let (mut running, logs) = spawn_logged(under_systemd(daemon(&cfg), &notify, watchdog));
    notify.until("READY=1", |m| has(m, "READY=1"));

    let stopped = Command::new("kill")
        .arg(format!("-{SIGSTOP}"))
        .arg(redis.pid().to_string())
        .status()
        .unwrap();
    assert!(stopped.success());
    let stalled = notify.got.len();
    // Pets for well past the stuck threshold of 2.4s.
    let until = Instant::now() + Duration::from_secs(4);
    while notify.got.last().is_none_or(|(t, _)| *t < until) {
        notify.until("a watchdog pet", |m| has(m, "WATCHDOG=1"));
    }
    let resumed = Command::new("kill")
        .arg(format!("-{SIGCONT}"))
        .arg(redis.pid().to_string())
        .status()
        .unwrap();
    assert!(resumed.success());

    assert_pets_every(&notify.pets(stalled), watchdog / 2);
    assert!(
        logs.contains("failed; retrying"),
        "Redis calls failed during the stall: {:#?}",
        logs.lines()
    );
    assert!(
        !notify.got[stalled..]
            .iter()
            .any(|(_, m)| status_of(m).is_some_and(|s| s.starts_with("STUCK"))),
        "{:?}",
        notify.messages()
    );
    stop(&mut running.0);
}

#[test]
fn a_config_error_exits_78_without_ready() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("conveyor.toml");
    std::fs::write(&cfg, "[daemon]\nno_such_setting = 1\n").unwrap();
    let mut notify = NotifySocket::bind();
    let child = under_systemd(daemon(&cfg), &notify, Duration::from_secs(2))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut running = KillOnDrop(child);
    assert_eq!(wait_exit(&mut running.0, WAIT), Some(78));
    notify.drain();
    assert!(
        !notify.messages().iter().any(|m| has(m, "READY=1")),
        "{:?}",
        notify.messages()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_runs_on_the_configured_threads() {
    let redis = Redis::start();
    for (setting, threads) in [("", 1), ("threads = 3", 3)] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config_file_with(
            dir.path(),
            &redis,
            &format!("shutdown_timeout = \"5s\"\n{setting}"),
            "[queues.work]\nhandler = \"noop\"\n",
        );
        let (mut running, logs) = spawn_logged(daemon(&cfg));
        wait_until("the daemon starting", WAIT, || {
            let logs = logs.clone();
            async move { logs.contains(" starting ") }
        })
        .await;
        let starting = logs.lines().into_iter().find(|l| l.contains(" starting "));
        assert!(
            starting
                .as_deref()
                .is_some_and(|l| l.contains(&format!(" threads={threads}"))),
            "{setting:?}: {starting:?}"
        );
        stop(&mut running);
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file_with(dir.path(), &redis, "threads = 0", "");
    let out = daemon(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("daemon.threads must be between 1 and 256"),
        "{stderr}"
    );
}
