//! The `exec` handler in the real binary: shutdown leaves no process, the
//! daemon's secrets stay out of workers, a stderr flood costs no memory,
//! bad settings exit 78, and `conveyor check` starts the worker.

use std::process::Stdio;

use serde_json::json;

use crate::common::*;
use crate::workers::*;

const SIGTERM: i32 = 15;

/// Peak resident memory of a process, in KiB.
fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_running_job_finish_and_leaves_no_process() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let worker = script(dir.path(), "drain.py", PERSISTENT);
    let marker = worker.to_string_lossy().into_owned();
    let cfg = config_file(
        dir.path(),
        &redis,
        &queue(&worker, "persistent", "concurrency = 3", ""),
    );
    let mut conn = redis.conn().await;
    let (mut child, _logs) = daemon(&cfg);
    wait_processes(&marker, 3).await;
    push(&mut conn, "slow", json!({"do": "sleep", "s": 1})).await;
    wait_state(&conn, "slow", "running").await;
    signal(&child, SIGTERM);
    assert_eq!(wait_exit(&mut child, WAIT), Some(0));
    assert!(
        result(&conn, "slow").await["pid"].is_u64(),
        "the running job finished"
    );
    assert!(
        processes(&marker).is_empty(),
        "{:?} still run",
        processes(&marker)
    );
}

/// The daemon raises its own soft limit on open files to the hard one; its
/// workers get back the one it started with, as a program that uses
/// `select()` expects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_gets_the_open_files_limit_the_daemon_started_with() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let worker = script(dir.path(), "limits.py", PERSISTENT);
    let cfg = config_file(
        dir.path(),
        &redis,
        &queue(&worker, "persistent", "concurrency = 1", ""),
    );
    let mut conn = redis.conn().await;
    let mut cmd = conveyor_with_open_files(512, 4096);
    cmd.args(["run", "--config", cfg.to_str().unwrap()])
        .stdout(Stdio::null());
    let (_daemon, logs) = spawn_logged(cmd);
    push(&mut conn, "limits", json!({"do": "limits"})).await;
    assert_eq!(
        result(&conn, "limits").await["open_files"],
        json!([512, 4096])
    );
    assert!(logs.contains("soft limit raised"), "{:?}", logs.lines());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_sees_its_environment_and_none_of_the_daemons_secrets() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let worker = script(dir.path(), "env.py", PERSISTENT);
    let exec =
        "env = { THUMB_DIR = \"/var/lib/thumbs\" }\npass_env = [\"AWS_REGION\", \"UNSET_HERE\"]";
    let cfg = config_file(
        dir.path(),
        &redis,
        &queue(&worker, "persistent", "concurrency = 1", exec),
    );
    let mut conn = redis.conn().await;
    // The daemon's Redis password is real: it must authenticate with it,
    // and still not hand it on. (This connection stays authenticated.)
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("redis-secret-1")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut cmd = conveyor();
    cmd.args(["run", "--config", cfg.to_str().unwrap()])
        .env("REDIS_PASSWORD", "redis-secret-1")
        .env("CONVEYOR_SMTP_PASSWORD", "smtp-secret-2")
        .env("CONVEYOR_WEB_TOKEN", "web-secret-3")
        .env("CREDENTIALS_DIRECTORY", dir.path())
        .env("AWS_REGION", "eu-west-3")
        .env("SOMETHING_ELSE", "not-passed")
        .stdout(Stdio::null());
    let (mut child, logs) = spawn_logged(cmd);
    push(&mut conn, "env", json!({"do": "env"})).await;
    let env = result(&conn, "env").await;
    let mut names: Vec<&str> = env
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    names.sort();
    // Python itself may add LC_CTYPE when it coerces the C locale.
    names.retain(|n| *n != "LC_CTYPE");
    assert_eq!(
        names,
        ["AWS_REGION", "HOME", "LANG", "PATH", "THUMB_DIR"],
        "{env}"
    );
    assert_eq!(env["AWS_REGION"], "eu-west-3");
    assert_eq!(env["THUMB_DIR"], "/var/lib/thumbs");
    signal(&child, SIGTERM);
    assert_eq!(wait_exit(&mut child, WAIT), Some(0));
    for secret in ["redis-secret-1", "smtp-secret-2", "web-secret-3"] {
        assert!(!logs.contains(secret), "{secret} in the logs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stderr_flood_is_logged_in_bounded_lines_without_growing_memory() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let worker = script(dir.path(), "flood.py", PERSISTENT);
    let cfg = config_file(
        dir.path(),
        &redis,
        &queue(&worker, "persistent", "concurrency = 1", ""),
    );
    let mut conn = redis.conn().await;
    let (mut child, logs) = daemon(&cfg);
    push(&mut conn, "small", json!({"do": "crash"})).await;
    wait_state(&conn, "small", "retrying").await;
    let before = peak_rss_kb(child.id());
    // 100 MB of stderr in 100,000 lines, then a reply.
    push(&mut conn, "flood", json!({"do": "flood", "mb": 100})).await;
    assert_eq!(result(&conn, "flood").await["payload"]["mb"], 100);
    let after = peak_rss_kb(child.id());
    assert!(
        after < before + 20 * 1024,
        "peak RSS {before} KiB before, {after} KiB after"
    );
    wait_until("the flood is reported", WAIT, || {
        let logs = logs.clone();
        async move { logs.contains("worker flooded stderr") }
    })
    .await;
    let logged = logs
        .lines()
        .iter()
        .filter(|l| l.contains("worker stderr"))
        .count();
    assert!(logged < 10_000, "{logged} stderr lines logged");
    // A logged line carries the job's id and is cut at its bound.
    let line = logs
        .lines()
        .into_iter()
        .find(|l| l.contains("\"id\":\"flood\"") && l.contains("worker stderr"))
        .expect("a stderr line of the flood job");
    let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(parsed["line"].as_str().map(str::len), Some(999));
    let crash = logs
        .lines()
        .into_iter()
        .any(|l| l.contains("\"id\":\"small\"") && l.contains("about to crash on small"));
    assert!(crash, "the crashing job's stderr is logged with its id");
    signal(&child, SIGTERM);
    assert_eq!(wait_exit(&mut child, WAIT), Some(0));
}

#[test]
fn a_missing_or_unusable_program_is_a_configuration_error() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "plain.txt", "not a program");
    let cases = [
        (
            "command = [\"no-such-program-here\"]".to_owned(),
            "queues.work.exec.command: program \"no-such-program-here\" is not found in PATH",
        ),
        (
            "command = [\"./plain.txt\"]".to_owned(),
            "is not executable",
        ),
        (
            "command = [\"./missing.py\"]".to_owned(),
            "missing.py cannot be used",
        ),
        (
            "command = [\"python3\"]\npass_env = [\"REDIS_PASSWORD\"]".to_owned(),
            "REDIS_PASSWORD is the daemon's own setting or secret",
        ),
        (
            "command = []".to_owned(),
            "queues.work.exec.command: must name a program",
        ),
        (
            "command = [\"python3\"]\nmode = \"forking\"".to_owned(),
            "queues.work.exec",
        ),
        (
            "command = [\"python3\"]\nmode = \"oneshot\"\nmax_jobs_per_process = 5".to_owned(),
            "applies to persistent mode only",
        ),
    ];
    for (exec, expected) in cases {
        let text = format!("[queues.work]\nhandler = \"exec\"\n[queues.work.exec]\n{exec}\n");
        let cfg = config_file(dir.path(), &redis, &text);
        for command in ["run", "check"] {
            let out = conveyor()
                .args([command, "--config", cfg.to_str().unwrap()])
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(78),
                "{command} with {exec}: {stderr}"
            );
            assert!(stderr.contains(expected), "{command} with {exec}: {stderr}");
        }
    }
}

#[test]
fn check_starts_the_worker_and_reports_one_that_dies_at_once() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let good = script(dir.path(), "good.py", PERSISTENT);
    let cfg = config_file(dir.path(), &redis, &queue(&good, "persistent", "", ""));
    let (code, out, err) = run_cli(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("exec work: ok (")
            && out.contains("good.py, persistent")
            && out.contains("started, waiting for jobs after"),
        "{out}"
    );

    let broken = script(dir.path(), "broken.py", "import no_such_module\n");
    let cfg = config_file(dir.path(), &redis, &queue(&broken, "persistent", "", ""));
    let (code, out, err) = run_cli(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 78, "a configuration error: {out}{err}");
    assert!(
        err.contains("exited at start (exit status: 1)") && err.contains("ModuleNotFoundError"),
        "{err}"
    );
}

/// An interpreter's version shim (pyenv's, say) takes seconds before the
/// interpreter runs and finds its script missing: `check` and `run` still
/// see the worker exit at start, however long that takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_dies_after_a_slow_start_is_caught_by_check_and_run() {
    use std::os::unix::fs::PermissionsExt as _;
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    // Looks around with helpers for two seconds, as a shim does, then runs
    // the interpreter in its place.
    let shim = script(
        dir.path(),
        "python3",
        "#!/bin/sh\nsleep 1; sleep 1\nexec python3 \"$@\"\n",
    );
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    let text = format!(
        "[queues.work]\nhandler = \"exec\"\n[queues.work.exec]\ncommand = [\"{}\", \"/no/such/script.py\"]\n",
        shim.display()
    );
    let cfg = config_file(dir.path(), &redis, &text);
    let (code, out, err) = run_cli(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 78, "{out}{err}");
    assert!(
        err.contains("exited at start (exit status: 2)") && err.contains("No such file"),
        "{err}"
    );

    let mut cmd = conveyor();
    cmd.args(["run", "--config", cfg.to_str().unwrap()])
        .stdout(Stdio::null());
    let (_daemon, logs) = spawn_logged(cmd);
    wait_until("the warning", std::time::Duration::from_secs(20), || {
        let logs = logs.clone();
        async move {
            logs.lines()
                .iter()
                .any(|l| l.contains("the worker exited at start") && l.contains("No such file"))
        }
    })
    .await;
}

/// `run` with a worker that dies at start says so once, at warning level,
/// with the worker's stderr, rather than only "running".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_warns_once_with_its_stderr_when_the_worker_dies_at_start() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let broken = script(dir.path(), "broken.py", "import no_such_module\n");
    let cfg = config_file(
        dir.path(),
        &redis,
        &queue(&broken, "persistent", "concurrency = 3", ""),
    );
    let mut cmd = conveyor();
    cmd.args(["run", "--config", cfg.to_str().unwrap()])
        .stdout(Stdio::null());
    let (_daemon, logs) = spawn_logged(cmd);
    let said = |l: &String| l.contains("the worker exited at start");
    wait_until("the warning", std::time::Duration::from_secs(20), || {
        let logs = logs.clone();
        async move { logs.lines().iter().any(said) }
    })
    .await;
    let warnings: Vec<String> = logs.lines().into_iter().filter(said).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("WARN") && warnings[0].contains("ModuleNotFoundError"),
        "{warnings:?}"
    );
}
