//! The shipped examples work as the README shows them: the Python and Node
//! workers of `examples/` under the `exec` handler, and
//! `examples/custom_handler.rs` running its own job kinds through the whole
//! command line.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use redis::AsyncCommands as _;

const WAIT: Duration = Duration::from_secs(30);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The README's queue for an example worker, with its command made absolute.
fn exec_queue(interpreter: &str, worker: &str) -> String {
    format!(
        "[queues.hello]\nhandler = \"exec\"\nconcurrency = 4\ntrack = true\n[queues.hello.exec]\ncommand = [\"{interpreter}\", \"{}\"]\n",
        repo().join("examples").join(worker).display()
    )
}

/// Enqueues `payload` with `bin` and waits for the job's status record to
/// leave the running states; returns the record.
async fn run_one(
    bin: &Path,
    config: &Path,
    redis: &Redis,
    queue: &str,
    payload: &str,
) -> std::collections::HashMap<String, String> {
    let out = Command::new(bin)
        .args([
            "enqueue",
            queue,
            payload,
            "--config",
            config.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let conn = redis.conn().await;
    let key = format!("conveyor:job:{id}");
    wait_until(&format!("job {id} ends"), WAIT, || {
        let (mut c, key) = (conn.clone(), key.clone());
        async move {
            let state: Option<String> = c.hget(&key, "state").await.unwrap();
            matches!(state.as_deref(), Some("succeeded" | "dead" | "retrying"))
        }
    })
    .await;
    conn.clone().hgetall(&key).await.unwrap()
}

async fn example_worker_greets(interpreter: &str, worker: &str) {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), &redis, &exec_queue(interpreter, worker));
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_conveyor"));
    let mut daemon = KillOnDrop(
        conveyor()
            .args(["run", "--config", cfg.to_str().unwrap()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ok = run_one(&bin, &cfg, &redis, "hello", r#"{"name": "Ada"}"#).await;
    assert_eq!(ok["state"], "succeeded", "{ok:?}");
    let result: serde_json::Value = serde_json::from_str(&ok["result"]).unwrap();
    assert_eq!(result, serde_json::json!({"greeting": "Hello, Ada!"}));
    let bad = run_one(&bin, &cfg, &redis, "hello", r#"{"nom": "Ada"}"#).await;
    assert_eq!(bad["state"], "dead", "{bad:?}");
    assert!(bad["last_error"].contains("name"), "{bad:?}");
    signal(&daemon, 15);
    assert_eq!(wait_exit(&mut daemon, WAIT), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_worker_runs_as_the_readme_shows() {
    example_worker_greets("python3", "worker.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_example_worker_runs_as_the_readme_shows() {
    example_worker_greets("node", "worker.js").await;
}

/// `target/<profile>/examples/custom_handler`, built if this test run did
/// not build it (`cargo test --test examples` builds no examples).
fn custom_handler_binary() -> PathBuf {
    let conveyor = Path::new(env!("CARGO_BIN_EXE_conveyor"));
    let bin = conveyor.with_file_name("examples").join("custom_handler");
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--example", "custom_handler"])
            .current_dir(repo())
            .status()
            .unwrap();
        assert!(status.success(), "cargo build --example custom_handler");
    }
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_custom_handler_example_runs_its_own_jobs_through_the_whole_cli() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let queues = "[queues.images]\nhandler = \"resize\"\ntrack = true\n\
                  [queues.greetings]\nhandler = \"greet\"\ntrack = true\n\
                  [queues.greetings.greet]\ngreeting = \"Bonjour\"\n";
    let cfg = config_file(dir.path(), &redis, queues);
    let bin = custom_handler_binary();
    let config = cfg.to_str().unwrap();

    // `check` knows the example's handler names; the plain binary does not.
    let out = Command::new(&bin)
        .args(["check", "--config", config])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, _, err) = run_cli(&["check", "--config", config]);
    assert_eq!(code, 78);
    assert!(err.contains("unknown handler \"greet\""), "{err}");

    let mut daemon = KillOnDrop(
        Command::new(&bin)
            .args(["run", "--config", config])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let greeted = run_one(&bin, &cfg, &redis, "greetings", r#"{"name": "Ada"}"#).await;
    assert_eq!(greeted["state"], "succeeded", "{greeted:?}");
    let result: serde_json::Value = serde_json::from_str(&greeted["result"]).unwrap();
    assert_eq!(
        result,
        serde_json::json!({"attempt": 1, "message": "Bonjour, Ada!"})
    );
    let resized = run_one(&bin, &cfg, &redis, "images", r#"{"width": 640}"#).await;
    assert_eq!(resized["state"], "succeeded", "{resized:?}");
    let refused = run_one(&bin, &cfg, &redis, "images", r#"{"height": 1}"#).await;
    assert_eq!(
        (refused["state"].as_str(), refused["last_error"].as_str()),
        ("dead", "missing width")
    );
    let later = run_one(&bin, &cfg, &redis, "greetings", r#"{"name": ""}"#).await;
    assert_eq!(later["state"], "retrying", "{later:?}");
    let due = later["due_at"].parse::<jiff::Timestamp>().ok();
    let wait = due.map(|d| d.as_millisecond() - conveyor::clock::now_ms());
    assert!(
        wait.is_some_and(|ms| (50_000..=60_000).contains(&ms)),
        "due in {wait:?} ms"
    );
    signal(&daemon, 15);
    assert_eq!(wait_exit(&mut daemon, WAIT), Some(0));
}
