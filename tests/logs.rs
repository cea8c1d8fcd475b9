//! Logs as a service needs them: with `CONVEYOR_LOG_FORMAT=json` every
//! stderr line is one JSON object, a job's lines carry its id, queue and
//! attempt, the effective configuration is logged at start and no secret
//! ever is, even the error that ends the process is a JSON line; text logs
//! written to a pipe (the journal) carry no ANSI escapes.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::process::Child;
use std::time::Duration;

use common::*;
use redis::AsyncCommands as _;

const WAIT: Duration = Duration::from_secs(20);
const SIGTERM: i32 = 15;

/// The daemon, killed if a test fails before stopping it, so that no stray
/// daemon outlives its test.
fn stop(child: &mut Child) {
    signal(child, SIGTERM);
    assert_eq!(wait_exit(child, WAIT), Some(0), "exit code after SIGTERM");
}

/// Runs the daemon with `env`, has it run a job that fails permanently
/// (so that a line is logged inside the job's span), stops it and returns
/// its stderr lines.
async fn logs_of_one_job(env: &[(&str, &str)]) -> Vec<String> {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), &redis, "[queues.work]\nhandler = \"fault\"\n");
    let mut cmd = conveyor();
    cmd.args(["run", "--config", cfg.to_str().unwrap()])
        .env_remove("CONVEYOR_LOG_FORMAT")
        .env_remove("NO_COLOR")
        .envs(env.iter().copied());
    let (mut running, logs) = spawn_logged(cmd);
    let mut conn = redis.conn().await;
    let job = r#"{"id":"job-logged-1","payload":{"fail":"permanent"},"attempt":0}"#;
    let _: () = conn.rpush("jobs:work", job).await.unwrap();
    wait_until("the job dead-lettered", WAIT, || {
        let mut c = conn.clone();
        async move { llen(&mut c, "{jobs:work}:dead").await == 1 }
    })
    .await;
    wait_until("the job's log line", WAIT, || {
        let logs = logs.clone();
        async move { logs.contains("dead-lettered") }
    })
    .await;
    stop(&mut running.0);
    logs.lines()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_parse_line_by_line_with_job_fields_and_no_secret() {
    const SECRET: &str = "pw-5f1c9e-never-in-a-log";
    let lines = logs_of_one_job(&[
        ("CONVEYOR_LOG_FORMAT", "json"),
        ("CONVEYOR_SMTP_PASSWORD", SECRET),
    ])
    .await;
    let parsed: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for line in &lines {
        assert!(!line.contains(SECRET), "the SMTP password leaked: {line}");
    }
    let job_lines: Vec<&serde_json::Value> = parsed
        .iter()
        .filter(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("dead-lettered"))
        })
        .collect();
    assert!(!job_lines.is_empty(), "{lines:#?}");
    for v in job_lines {
        assert_eq!(v["id"], "job-logged-1", "{v}");
        assert_eq!(v["queue"], "work", "{v}");
        assert_eq!(v["attempt"], 1, "{v}");
        assert_eq!(v["level"], "WARN", "{v}");
    }
    let config = parsed
        .iter()
        .find(|v| v["message"] == "effective configuration")
        .unwrap_or_else(|| panic!("no effective configuration line: {lines:#?}"));
    let toml = config["config"].as_str().unwrap();
    assert!(toml.contains("[queues.work]"), "{toml}");
    assert!(toml.contains("shutdown_timeout = \"5s\""), "{toml}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_to_a_pipe_carry_no_ansi_escapes() {
    // TERM says colours would work; only a terminal on stderr may turn them on.
    let lines = logs_of_one_job(&[("TERM", "xterm-256color")]).await;
    assert!(
        lines.iter().any(|l| l.contains("job-logged-1")),
        "{lines:#?}"
    );
    // One readable line, not a TOML file in an escaped string.
    let summary = lines
        .iter()
        .find(|l| l.contains("effective configuration"))
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert!(summary.contains("queues="), "{summary}");
    assert!(!summary.contains("\\n"), "{summary}");
    for line in &lines {
        assert!(!line.contains("\x1b["), "ANSI escape in {line:?}");
    }
}

#[test]
fn the_error_that_ends_the_daemon_is_a_json_line_too() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("conveyor.toml");
    std::fs::write(&cfg, "[daemon]\nno_such_setting = 1\n").unwrap();
    let out = conveyor()
        .args(["run", "--config", cfg.to_str().unwrap()])
        .env("CONVEYOR_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let last = lines.last().expect("an error line");
    assert_eq!(last["level"], "ERROR", "{last}");
    assert!(
        last["error"].as_str().unwrap().contains("no_such_setting"),
        "{last}"
    );
}
