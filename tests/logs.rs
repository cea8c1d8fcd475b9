//! Logs as a service needs them: with `CONVEYOR_LOG_FORMAT=json` every
//! stderr line is one JSON object, a job's lines carry its id, queue and
//! attempt, the effective configuration is logged at start and no secret
//! ever is, even the error that ends the process is a JSON line; text logs
//! written to a pipe (the journal) carry no ANSI escapes, and nothing a
//! job, a worker or a remote server sends can forge a line.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;
#[path = "http/mod.rs"]
mod http;

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

/// A persistent worker that writes a forged line and terminal escapes on
/// its stderr, then fails its job with an error that carries them too.
const FORGING_WORKER: &str = r#"
import json, sys
for line in sys.stdin:
    req = json.loads(line)
    sys.stderr.write("worker says\r1999-12-31T23:59:59.999999Z ERROR forged by the worker\x1b[2J\x9b31m\x7f\n")
    sys.stderr.flush()
    reply = {"id": req["id"], "status": "fail",
             "error": "bad\n1999-12-31T23:59:59.999999Z ERROR forged by the error\x1b]0;owned\x07"}
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
"#;

/// The daemon's stderr, byte for byte, gathered by a thread of its own.
fn raw_stderr(child: &mut std::process::Child) -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    use std::io::Read as _;
    let mut stderr = child.stderr.take().unwrap();
    let bytes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = bytes.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        while let Ok(n) = stderr.read(&mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_a_job_a_worker_or_a_receiver_sends_forges_a_text_log_line() {
    let redis = Redis::start();
    let server = http::HttpServer::start();
    let dir = tempfile::tempdir().unwrap();
    let worker = dir.path().join("forger.py");
    std::fs::write(&worker, FORGING_WORKER).unwrap();
    let queues = format!(
        "[queues.hooks]\nhandler = \"http\"\n[queues.hooks.http]\nurl = \"{}\"\n\
         [queues.work]\nhandler = \"exec\"\ntrack = true\n[queues.work.exec]\ncommand = [\"python3\", {:?}]\n\
         [queues.ids]\nhandler = \"fault\"\n",
        server.url("/forge"),
        worker.display().to_string()
    );
    let cfg = config_file(dir.path(), &redis, &queues);
    let mut cmd = conveyor();
    cmd.args(["run", "--config", cfg.to_str().unwrap()])
        .env("TERM", "xterm-256color")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut daemon = KillOnDrop(cmd.spawn().unwrap());
    let stderr = raw_stderr(&mut daemon);
    let mut conn = redis.conn().await;
    let id = "evil\n1999-12-31T23:59:59.999999Z ERROR forged by the id\u{1b}[2J\u{9b}31m\r";
    let jobs = [
        (
            "jobs:hooks",
            serde_json::json!({"id": "hook-1", "payload": {}, "attempt": 0}),
        ),
        (
            "jobs:work",
            serde_json::json!({"id": "work-1", "payload": {}, "attempt": 0}),
        ),
        (
            "jobs:ids",
            serde_json::json!({"id": id, "payload": {"fail": "permanent"}, "attempt": 0}),
        ),
    ];
    for (list, job) in &jobs {
        let _: () = conn.rpush(*list, job.to_string()).await.unwrap();
    }
    for (list, _) in &jobs {
        let dead = format!("{{{list}}}:dead");
        wait_until(&format!("{list}'s job dead"), WAIT, || {
            let mut c = conn.clone();
            let dead = dead.clone();
            async move { llen(&mut c, &dead).await == 1 }
        })
        .await;
    }
    let text = || String::from_utf8_lossy(&stderr.lock().unwrap()).into_owned();
    // Each forged text reached the log, escaped.
    for who in ["the receiver", "the worker", "the error", "the id"] {
        wait_until(&format!("the line {who} sent, logged"), WAIT, || {
            let logged = text().contains(&format!("ERROR forged by {who}"));
            async move { logged }
        })
        .await;
    }
    stop(&mut daemon.0);
    let bytes = stderr.lock().unwrap().clone();
    let text = String::from_utf8(bytes.clone()).expect("the log is UTF-8");
    for (at, c) in text.char_indices() {
        assert!(
            c == '\n' || !(c.is_control() || c == '\u{2028}'),
            "a raw {c:?} at byte {at}: {:?}",
            &text[text[..at].rfind('\n').map_or(0, |n| n + 1)..]
                .lines()
                .next()
                .unwrap_or_default()
        );
    }
    assert!(!bytes.contains(&0x1b), "a raw ESC byte in the log");
    for line in text.lines() {
        assert!(!line.starts_with("1999-"), "a forged line: {line:?}");
    }
    for who in ["the receiver", "the worker", "the error", "the id"] {
        let line = text
            .lines()
            .find(|l| l.contains(&format!("ERROR forged by {who}")))
            .unwrap();
        assert!(
            line.contains("\\n1999-12-31T23:59:59.999999Z ERROR forged")
                || line.contains("\\r1999-"),
            "{line}"
        );
        assert!(line.contains("\\x1b"), "{line}");
    }
    // What an operator reads of those jobs afterwards is escaped too.
    let config = cfg.to_str().unwrap();
    let mut outputs = Vec::new();
    for queue in ["hooks", "work", "ids"] {
        outputs.push(run_cli(&["dead", "list", queue, "--config", config]));
    }
    outputs.push(run_cli(&["status", "work-1", "--config", config]));
    for (code, out, err) in outputs {
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("forged by"), "{out}");
        assert!(
            !out.chars().any(|c| c != '\n' && c.is_control()),
            "a raw control character: {out:?}"
        );
        assert!(
            out.lines().all(|l| !l.starts_with("1999-")),
            "a forged line: {out}"
        );
    }
}

/// `conveyor monitor` prints events from anyone who can publish on the
/// channel: their ids and errors reach the operator's terminal escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_prints_what_an_event_carries_escaped() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), &redis, "[queues.q]\nhandler = \"noop\"\n");
    let mut cmd = conveyor();
    cmd.args(["monitor", "--config", cfg.to_str().unwrap()]);
    let (mut monitor, _err, out) = spawn_logged_out(cmd);
    let conn = redis.conn().await;
    let forged = "\n1999-12-31T23:59:59.999  q  job.succeeded  forged\u{1b}[2J\u{9b}31m";
    let mut seq = 0u64;
    wait_until("the event printed", WAIT, || {
        seq += 1;
        let event = serde_json::json!({"type": "job.failed", "queue": "q",
            "id": format!("evil-{seq}{forged}"), "attempt": 1, "node": "n",
            "at": "2026-01-01T00:00:00.000Z", "seq": seq, "error": format!("bad{forged}")});
        let mut c = conn.clone();
        let out = out.clone();
        async move {
            let _: () = c
                .publish("conveyor:events", event.to_string())
                .await
                .unwrap();
            out.contains("evil-")
        }
    })
    .await;
    signal(&monitor, SIGTERM);
    assert_eq!(wait_exit(&mut monitor, WAIT), Some(0));
    let lines = out.lines();
    let line = lines.iter().find(|l| l.contains("evil-")).unwrap();
    assert!(
        line.contains("\\n1999-12-31T23:59:59.999  q  job.succeeded  forged\\x1b[2J\\u{9b}31m"),
        "{line:?}"
    );
    for line in &lines {
        assert!(!line.starts_with("1999-"), "a forged line: {line:?}");
        assert!(!line.contains(['\u{1b}', '\u{9b}']), "{line:?}");
    }
}
