//! Test fixtures: a private server per test (Redis's or Valkey's, see
//! `server.rs`), waiting on conditions with deadlines, a daemon run
//! in-process, and the real binary.
//!
//! Every test owns its Redis (its own unix socket in its own temporary
//! directory, persistence off unless the test asks for AOF) and never touches
//! one it did not start.

#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use conveyor::config::Config;
use conveyor::daemon::{DaemonError, Node};
use conveyor::handlers::Registry;
use conveyor::shutdown::Shutdown;
use redis::AsyncCommands as _;
use redis::aio::MultiplexedConnection;

pub mod cluster;
pub mod sentinel;
pub mod server;

pub use server::{Family, free_port};

/// Now in milliseconds since the epoch, as conveyor's scores and events
/// write it.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Now as RFC 3339 with milliseconds, UTC, as envelopes write it.
pub fn now_rfc3339() -> String {
    format!("{:.3}", jiff::Timestamp::now())
}

/// A private server of the family the run chose ([`Family::chosen`]) on a
/// unix socket.
pub struct Redis {
    process: Option<server::ServerProcess>,
    dir: tempfile::TempDir,
    aof: bool,
}

impl Redis {
    /// Starts a server with persistence off.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// Starts a server that writes an AOF (fsync always), so it can be
    /// killed and restarted without losing data.
    pub fn start_persistent() -> Self {
        Self::start_with(true)
    }

    fn start_with(aof: bool) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut redis = Self {
            process: None,
            dir,
            aof,
        };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let mut cmd = server::ServerCommand::new(Family::chosen(), self.dir.path());
        cmd.unix_socket(&self.socket());
        if self.aof {
            cmd.aof();
        }
        self.process = Some(cmd.start().unwrap_or_else(|e| panic!("{e}")));
        // PING, not the socket: a restarted server answers LOADING until it
        // has read its AOF.
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = self.client();
        while client
            .get_connection()
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_err()
        {
            assert!(Instant::now() < deadline, "the server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The unix socket path.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// The URL the daemon and the CLI use.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    /// A client of this server.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("valid URL")
    }

    /// A connection for the test's own checks.
    pub async fn conn(&self) -> MultiplexedConnection {
        self.client()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test's redis")
    }

    /// SIGKILLs the server.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
        // A killed server leaves its socket file behind.
        let _gone = std::fs::remove_file(self.socket());
    }

    /// Starts it again on the same socket (and AOF, if any).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The server's pid, for SIGSTOP and the like.
    pub fn pid(&self) -> u32 {
        self.process
            .as_ref()
            .and_then(server::ServerProcess::pid)
            .expect("running")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` until it returns true; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until a failover away from the primary on port `old` is done:
/// `primary` names the port that holds the primary's role now, and
/// `serves` says whether it answers as one. Its port and how long that
/// took; panics after `timeout`.
pub async fn wait_failover<P, S>(
    old: u16,
    timeout: Duration,
    mut primary: impl FnMut() -> P,
    mut serves: impl FnMut(u16) -> S,
) -> (u16, Duration)
where
    P: Future<Output = u16>,
    S: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        let port = primary().await;
        if port != old && serves(port).await {
            return (port, started.elapsed());
        }
        assert!(
            started.elapsed() < timeout,
            "no failover within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The text of `INFO <section>` on `conn`; empty if the server did not
/// answer (a node being killed or restarted).
pub async fn info(conn: &mut MultiplexedConnection, section: &str) -> String {
    redis::cmd("INFO")
        .arg(section)
        .query_async(conn)
        .await
        .unwrap_or_default()
}

/// A configuration for `redis` with fast timings, plus the given TOML
/// (usually `[queues.*]` tables).
pub fn config(redis: &Redis, extra: &str) -> Config {
    let text = format!(
        "[redis]\nurl = \"{}\"\n[daemon]\nshutdown_timeout = \"5s\"\nheartbeat_interval = \"200ms\"\nnode_ttl = \"1s\"\n{extra}",
        redis.url()
    );
    let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("test config: {e}\n{text}"));
    config.validate().expect("valid test config");
    config
}

/// Writes a configuration file for the binary; returns its path.
pub fn config_file(dir: &Path, redis: &Redis, extra: &str) -> PathBuf {
    config_file_with(dir, redis, "shutdown_timeout = \"5s\"", extra)
}

/// [`config_file`] with the `[daemon]` table's first line given.
pub fn config_file_with(dir: &Path, redis: &Redis, daemon: &str, extra: &str) -> PathBuf {
    let path = dir.join("conveyor.toml");
    let text = format!(
        "[redis]\nurl = \"{}\"\n[daemon]\n{daemon}\nheartbeat_interval = \"200ms\"\nnode_ttl = \"1s\"\n{extra}",
        redis.url()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// A daemon running in this process.
pub struct TestDaemon {
    pub shutdown: Shutdown,
    pub node: Node,
    handle: tokio::task::JoinHandle<Result<(), DaemonError>>,
}

impl TestDaemon {
    /// Starts a daemon with the built-in handlers plus `registry`'s.
    pub fn start(config: Config, registry: Registry) -> Self {
        let shutdown = Shutdown::new();
        let node = Node::new();
        let (s, n) = (shutdown.clone(), node.clone());
        let handle =
            tokio::spawn(async move { conveyor::daemon::run_as(n, config, &registry, s).await });
        Self {
            shutdown,
            node,
            handle,
        }
    }

    /// [`TestDaemon::start`] that applies `reloader`'s configuration on
    /// each `shutdown.reload`, as SIGHUP does.
    #[allow(dead_code)] // not every test program reloads
    pub fn start_reloadable(
        config: Config,
        registry: Registry,
        reloader: conveyor::daemon::Reloader,
    ) -> Self {
        let shutdown = Shutdown::new();
        let node = Node::new();
        let (s, n) = (shutdown.clone(), node.clone());
        let handle = tokio::spawn(async move {
            conveyor::daemon::run_with(n, config, &registry, s, Some(reloader)).await
        });
        Self {
            shutdown,
            node,
            handle,
        }
    }

    /// Shuts down gracefully and returns the daemon's result.
    pub async fn stop(self) -> Result<(), DaemonError> {
        self.shutdown.terminate.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("daemon stops within 30s")
            .expect("daemon task did not panic")
    }

    /// Whether the daemon task has ended.
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

/// The built-in handlers (including the test-only `fault`), the exec
/// workers supervised by the `conveyor` binary (this test program is not
/// one).
pub fn builtin() -> Registry {
    let mut registry = Registry::builtin();
    registry.register("exec", conveyor::handlers::exec::factory(binary()));
    registry
}

/// The `conveyor` binary the tests run: the one `cargo test` built, or the
/// one `CONVEYOR_TEST_BIN` names (`.ci/run` runs the suites that promise
/// something of the shipped binary, the web port's flood and the workers'
/// orphans, against the release build as well).
pub fn binary() -> PathBuf {
    std::env::var_os("CONVEYOR_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_conveyor")))
}

/// The `conveyor` binary, with logs as JSON on stderr.
pub fn conveyor() -> Command {
    let mut cmd = Command::new(binary());
    cmd.env_remove("REDIS_URL")
        .env_remove("CONVEYOR_CONFIG")
        // Never the configuration of the user who runs the tests.
        .env("XDG_CONFIG_HOME", "/nonexistent/conveyor-tests")
        .env_remove("CONVEYOR_LOG")
        .env_remove("CONVEYOR_SMTP_PASSWORD")
        .env_remove("CONVEYOR_WEB_TOKEN")
        .env_remove("CONVEYOR_WEB_TOKEN_FILE")
        // The shipped configuration listens on 127.0.0.1:9740; tests that
        // run it choose a free port.
        .env_remove("CONVEYOR_WEB_LISTEN")
        .env_remove("CONVEYOR_LOG_FORMAT")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("RUST_BACKTRACE")
        // Traces only where a test asks for them.
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("TRACEPARENT")
        .env_remove("TRACESTATE");
    cmd
}

/// [`conveyor`] allowed `soft` open files, and `hard` at most, through
/// util-linux's `prlimit`, which sets them and then execs the binary (same
/// process id, same environment).
pub fn conveyor_with_open_files(soft: u64, hard: u64) -> Command {
    let plain = conveyor();
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--nofile={soft}:{hard}"))
        .arg("--")
        .arg(plain.get_program());
    for (name, value) in plain.get_envs() {
        match value {
            Some(value) => cmd.env(name, value),
            None => cmd.env_remove(name),
        };
    }
    cmd
}

/// Runs the binary to completion; returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    run_cli_env(args, &[])
}

/// [`run_cli`] with variables added to the environment.
pub fn run_cli_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = conveyor()
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run conveyor");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the binary with stdin; returns (exit code, stdout, stderr).
pub fn run_cli_stdin(args: &[&str], stdin: &str) -> (i32, String, String) {
    run_cli_stdin_env(args, stdin, &[])
}

/// [`run_cli_stdin`] with variables added to the environment.
pub fn run_cli_stdin_env(
    args: &[&str],
    stdin: &str,
    env: &[(&str, &str)],
) -> (i32, String, String) {
    use std::io::Write as _;
    let mut child = conveyor()
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run conveyor");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Queue helpers over a test connection.
/// Every entry of an events replay stream (`stream` is the channel's name):
/// id, then field and value pairs.
pub async fn stream_entries(
    conn: &mut MultiplexedConnection,
    stream: &str,
) -> Vec<(String, Vec<(String, String)>)> {
    redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .unwrap()
}

/// A job's status record (`conveyor:job:<id>`); empty if it has none.
pub async fn job_record(
    conn: &MultiplexedConnection,
    id: &str,
) -> std::collections::HashMap<String, String> {
    conn.clone()
        .hgetall(format!("conveyor:job:{id}"))
        .await
        .unwrap()
}

/// Waits until a job's status record says `state`; returns the record.
pub async fn wait_job_state(
    conn: &MultiplexedConnection,
    id: &str,
    state: &str,
    timeout: Duration,
) -> std::collections::HashMap<String, String> {
    wait_until(&format!("job {id} {state}"), timeout, || async {
        job_record(conn, id).await.get("state").map(String::as_str) == Some(state)
    })
    .await;
    job_record(conn, id).await
}

pub async fn llen(conn: &mut MultiplexedConnection, key: &str) -> usize {
    conn.llen(key).await.expect("LLEN")
}

pub async fn zcard(conn: &mut MultiplexedConnection, key: &str) -> usize {
    conn.zcard(key).await.expect("ZCARD")
}

pub async fn lrange(conn: &mut MultiplexedConnection, key: &str) -> Vec<String> {
    conn.lrange(key, 0, -1).await.expect("LRANGE")
}

pub async fn stat(conn: &mut MultiplexedConnection, queue_key: &str, field: &str) -> u64 {
    let v: Option<u64> = conn
        .hget(format!("{{{queue_key}}}:stats",), field)
        .await
        .expect("HGET");
    v.unwrap_or(0)
}

/// Total of every in-flight list of a queue (any node).
pub async fn in_flight(conn: &mut MultiplexedConnection, queue_key: &str) -> usize {
    let keys: Vec<String> = conn
        .keys(format!("{{{queue_key}}}:inflight:*"))
        .await
        .expect("KEYS");
    let mut n = 0;
    for k in keys {
        n += llen(conn, &k).await;
    }
    n
}

/// The dead entries of a queue, parsed.
pub async fn dead(conn: &mut MultiplexedConnection, queue_key: &str) -> Vec<serde_json::Value> {
    lrange(conn, &format!("{{{queue_key}}}:dead"))
        .await
        .iter()
        .map(|s| serde_json::from_str(s).expect("dead entries are JSON"))
        .collect()
}

/// Sends a signal to a child process.
pub fn signal(child: &Child, sig: i32) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{sig} failed");
}

/// Waits for a child to exit, up to `timeout`; returns its exit code.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status.code();
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The stderr lines of a child process, collected by a reader thread.
#[derive(Clone, Default)]
pub struct Logs(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Logs {
    /// Whether any line so far contains `needle`.
    pub fn contains(&self, needle: &str) -> bool {
        self.0
            .lock()
            .expect("logs")
            .iter()
            .any(|l| l.contains(needle))
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().expect("logs").clone()
    }
}

/// A child process that is SIGKILLed and reaped when dropped, so a failing
/// test never leaves a daemon behind (one would hold the test runner's
/// output pipe open and hang it).
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Spawns `cmd` with stderr collected into [`Logs`]; the child dies with
/// the returned guard.
pub fn spawn_logged(mut cmd: Command) -> (KillOnDrop, Logs) {
    let mut child = cmd.stderr(Stdio::piped()).spawn().expect("spawn");
    let logs = lines_of(child.stderr.take().expect("stderr"));
    (KillOnDrop(child), logs)
}

/// [`spawn_logged`], with stdout's lines kept as well (the second [`Logs`]).
pub fn spawn_logged_out(mut cmd: Command) -> (KillOnDrop, Logs, Logs) {
    cmd.stdout(Stdio::piped());
    let (mut child, logs) = spawn_logged(cmd);
    let out = lines_of(child.stdout.take().expect("stdout"));
    (child, logs, out)
}

/// The lines `reader` gives, collected by a thread of their own as they come.
fn lines_of(reader: impl std::io::Read + Send + 'static) -> Logs {
    use std::io::BufRead as _;
    let logs = Logs::default();
    let sink = logs.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(reader).lines() {
            match line {
                Ok(l) => sink.0.lock().expect("logs").push(l),
                Err(_) => break,
            }
        }
    });
    logs
}

/// A CA and a certificate for `localhost` and `127.0.0.1` that it signed.
pub struct TestCa {
    dir: tempfile::TempDir,
    /// The CA's certificate: what the client trusts (a `ca_file`).
    pub ca: PathBuf,
    /// The server's certificate and key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// A client's certificate and key, for mutual TLS.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TestCa {
    pub fn generate() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test-ca");
        let out = Command::new(script)
            .arg(dir.path())
            .output()
            .expect("scripts/test-ca runs (it needs the openssl CLI)");
        assert!(
            out.status.success(),
            "scripts/test-ca failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let p = |name: &str| dir.path().join(name);
        Self {
            ca: p("ca.pem"),
            cert: p("server.pem"),
            key: p("server.key"),
            client_cert: p("client.pem"),
            client_key: p("client.key"),
            dir,
        }
    }
}

/// A daemon's or `conveyor web`'s web address, from its log line.
pub async fn web_address(logs: &Logs) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = logs.lines().iter().find_map(|line| {
            let at = line.find("at http://")? + "at http://".len();
            let rest = &line[at..];
            Some(format!("http://{}", &rest[..rest.find('/')?]))
        });
        if let Some(address) = found {
            return address;
        }
        assert!(
            Instant::now() < deadline,
            "no web address logged: {:?}",
            logs.lines()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// Pids of live processes whose command line (arguments joined by NULs)
/// `matches`.
pub fn processes_where(matches: impl Fn(&str) -> bool) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if !alive(pid) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if matches(&String::from_utf8_lossy(&cmdline)) {
            pids.push(pid);
        }
    }
    pids
}
