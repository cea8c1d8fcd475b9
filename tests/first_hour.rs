//! The first hour of a newcomer: the examples of the README and
//! docs/email.md, as written, against the shipped configuration (a copy of
//! `config/`, with `REDIS_URL` pointing at the test's own Redis), and the
//! errors a newcomer meets first.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(20);

/// `config/` copied into `dir`: the shipped file and its templates.
fn shipped_config(dir: &Path) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    for file in [
        "conveyor.toml",
        "templates/welcome.txt",
        "templates/welcome.html",
    ] {
        std::fs::copy(repo.join(file), dir.join(file)).unwrap();
    }
    dir.join("conveyor.toml")
}

/// The binary on the shipped config, against `redis`.
fn cli(config: &Path, redis: &Redis, args: &[&str]) -> (i32, String, String) {
    let out = conveyor()
        .args(args)
        .arg("--config")
        .arg(config)
        .env("REDIS_URL", redis.url())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_examples_work_with_the_shipped_config() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let config = shipped_config(dir.path());
    let (code, out, err) = cli(&config, &redis, &["check"]);
    assert_eq!(code, 0, "{out}{err}");
    let mut daemon = conveyor();
    daemon
        .args(["run", "--config"])
        .arg(&config)
        .env("REDIS_URL", redis.url())
        .env("CONVEYOR_WEB_LISTEN", "127.0.0.1:0");
    let (mut daemon, logs) = spawn_logged(daemon);
    let enqueue = |args: &[&str]| {
        let mut all = vec!["enqueue"];
        all.extend_from_slice(args);
        let (code, out, err) = cli(&config, &redis, &all);
        assert_eq!(code, 0, "{args:?}: {err}");
        out.trim().to_owned()
    };
    let plain = enqueue(&[
        "email",
        r#"{"to": "alice@example.com", "subject": "Welcome", "text": "Hello Alice"}"#,
    ]);
    let templated = enqueue(&[
        "email",
        r#"{"to": "a@example.com", "subject": "Welcome", "template": "welcome", "vars": {"name": "Alice"}}"#,
    ]);
    enqueue(&["orders", r#"{"type":"order.created","order_id":101}"#]);
    enqueue(&["default", "{}", "--delay", "30s"]);
    enqueue(&["default", "{}", "--max-attempts", "3"]);
    let outbox = dir.path().join("outbox");
    for id in [&plain, &templated] {
        let eml = outbox.join(format!("{id}.eml"));
        wait_until(&format!("{} is written", eml.display()), WAIT, || {
            let eml = eml.clone();
            async move { eml.exists() }
        })
        .await;
        // The email queue is tracked: `conveyor status` knows the job.
        wait_until("the status record says succeeded", WAIT, || async {
            cli(&config, &redis, &["status", id])
                .1
                .contains("succeeded")
        })
        .await;
    }
    let mail = std::fs::read_to_string(outbox.join(format!("{templated}.eml"))).unwrap();
    assert!(mail.contains("Hello Alice,"), "{mail}");
    for args in [&["stats"][..], &["dead", "list", "email"], &["schedules"]] {
        let (code, _, err) = cli(&config, &redis, args);
        assert_eq!(code, 0, "{args:?}: {err}");
    }
    // The shipped configuration's dashboard shows its queues.
    let address = web_address(&logs).await;
    let page = reqwest::get(format!("{address}/?live=0"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for queue in ["email", "orders", "default"] {
        assert!(
            page.contains(&format!("<tr id=\"queue-{queue}\">")),
            "{page}"
        );
    }
    signal(&daemon, 15);
    assert_eq!(wait_exit(&mut daemon, WAIT), Some(0));
}

#[test]
fn the_errors_a_newcomer_meets_first_say_what_to_do() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let config = shipped_config(dir.path());

    // No configuration anywhere: every command says where it looked.
    let empty = tempfile::tempdir().unwrap();
    for command in ["run", "check", "stats", "enqueue"] {
        let mut cmd = conveyor();
        cmd.arg(command).current_dir(empty.path());
        if command == "enqueue" {
            cmd.args(["default", "{}"]);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{command}: {err}");
        assert!(
            err.contains("no configuration file found")
                && err.contains("/etc/conveyor/conveyor.toml")
                && err.contains("--config"),
            "{command}: {err}"
        );
    }
    // A file that is not there: the reason once, not twice.
    let (code, _, err) = run_cli(&["stats", "--config", "/nonexistent/conveyor.toml"]);
    assert_eq!(code, 78);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");

    // A URL without its scheme names where it came from and what it needs.
    let out = conveyor()
        .args(["stats", "--config"])
        .arg(&config)
        .env("REDIS_URL", "127.0.0.1:6379")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("(from REDIS_URL)") && err.contains("redis://"),
        "{err}"
    );

    // A queue the configuration does not have is refused, not lost.
    let (code, _, err) = cli(&config, &redis, &["enqueue", "emial", "{}"]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("not in the configuration") && err.contains("--unconfigured"),
        "{err}"
    );
    let (code, _, err) = cli(
        &config,
        &redis,
        &["enqueue", "emial", "{}", "--unconfigured"],
    );
    assert_eq!(code, 0, "{err}");

    // Usage lines put things in their order and name the way out.
    let (code, _, err) = cli(&config, &redis, &["enqueue"]);
    assert_eq!(code, 64);
    assert!(err.contains("conveyor enqueue <QUEUE> <PAYLOAD"), "{err}");
    let (code, _, err) = cli(&config, &redis, &["dead", "retry", "email"]);
    assert_eq!(code, 64);
    assert!(err.contains("--all"), "{err}");
    // -q is --queue wherever it exists, never --quiet.
    let (code, _, err) = cli(&config, &redis, &["enqueue", "default", "{}", "-q"]);
    assert_eq!(code, 64, "{err}");
}

#[test]
fn help_groups_the_commands_for_a_newcomer() {
    let out = Command::new(env!("CARGO_BIN_EXE_conveyor"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for group in ["Run the daemon:", "Jobs:", "Watch:", "Steer:", "Set up:"] {
        assert!(help.contains(group), "{group} missing from:\n{help}");
    }
    for command in [
        "run",
        "check",
        "enqueue",
        "status",
        "dead",
        "stats",
        "monitor",
        "schedules",
        "web",
        "pause",
        "resume",
        "cancel",
        "completions",
    ] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(command)),
            "{command} missing from:\n{help}"
        );
    }
}

/// `scripts/run-local`, stopped with Ctrl-C (SIGINT to its process group, as
/// a terminal sends it) with jobs waiting and one delayed, and started
/// again: they are all still there, as the README says. The command finds
/// the local run's configuration from any directory (the user's
/// configuration links to it).
#[test]
fn run_local_keeps_the_jobs_across_a_ctrl_c() {
    let data = tempfile::tempdir().unwrap();
    let xdg = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let start = || {
        use std::os::unix::process::CommandExt as _;
        let mut cmd = Command::new(repo.join("scripts/run-local"));
        cmd.current_dir(repo)
            .env("CONVEYOR_LOCAL_DATA", data.path())
            .env("CONVEYOR_LOCAL_PORT", port.to_string())
            .env("CONVEYOR_BIN", env!("CARGO_BIN_EXE_conveyor"))
            .env("CONVEYOR_WEB_LISTEN", "127.0.0.1:0")
            .env("XDG_CONFIG_HOME", xdg.path())
            .env_remove("REDIS_URL")
            .env_remove("CONVEYOR_CONFIG")
            .stdout(Stdio::null())
            .process_group(0);
        let (child, logs) = spawn_logged(cmd);
        let deadline = std::time::Instant::now() + WAIT;
        while !logs.contains(" running ") {
            assert!(std::time::Instant::now() < deadline, "{:#?}", logs.lines());
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    };
    let ctrl_c = |mut child: KillOnDrop| {
        let group = format!("-{}", child.id());
        let sent = Command::new("kill")
            .args(["-INT", "--", &group])
            .status()
            .unwrap();
        assert!(sent.success());
        assert_eq!(wait_exit(&mut child, WAIT), Some(0), "run-local exits 0");
    };
    let client = redis::Client::open(url.as_str()).unwrap();
    let count = |key: &str, zset: bool| -> usize {
        let mut conn = client.get_connection().unwrap();
        let cmd = if zset { "ZCARD" } else { "LLEN" };
        redis::cmd(cmd).arg(key).query(&mut conn).unwrap()
    };

    let first = start();
    let enqueue = |args: &[&str]| {
        let out = conveyor()
            .arg("enqueue")
            .args(args)
            .current_dir(elsewhere.path())
            .env("XDG_CONFIG_HOME", xdg.path())
            .env("REDIS_URL", &url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    enqueue(&["default", "{}", "--delay", "1h"]);
    for _ in 0..3 {
        enqueue(&["waiting", "{}", "--unconfigured"]);
    }
    ctrl_c(first);
    assert!(
        redis::Client::open(url.as_str())
            .unwrap()
            .get_connection()
            .is_err(),
        "run-local stopped its Redis"
    );

    let second = start();
    assert_eq!(
        count("{jobs:default}:scheduled", true),
        1,
        "the delayed job"
    );
    assert_eq!(count("jobs:waiting", false), 3, "the waiting jobs");
    ctrl_c(second);
}
