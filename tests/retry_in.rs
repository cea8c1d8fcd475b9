//! A delay asked for is honoured as asked, whatever the queue's
//! `backoff.max`, up to 7 days: a real worker's `retry_in_ms`, a real
//! HTTP server's `Retry-After`, and a Rust handler's
//! `HandlerError::retry_in`, each on a queue whose backoff max is 1 s. An
//! ask beyond 7 days is cut to 7 days, and the log says so.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;
#[path = "http/mod.rs"]
mod http;

use std::time::Duration;

use async_trait::async_trait;
use common::*;
use conveyor::{Handler, HandlerError, Job};
use redis::AsyncCommands as _;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);
const WEEK_MS: i64 = 7 * 24 * 3600 * 1000;

/// Backoff far below what the jobs ask for.
const BACKOFF: &str = "backoff = { base = \"100ms\", max = \"1s\" }\ntrack = true";

/// A persistent worker that asks for a retry in the payload's `ms`, once.
const WORKER: &str = r#"
import json, sys
for line in sys.stdin:
    req = json.loads(line)
    if req["attempt"] == 1:
        reply = {"id": req["id"], "status": "retry", "error": "not yet", "retry_in_ms": req["payload"]["ms"]}
    else:
        reply = {"id": req["id"], "status": "ok"}
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
"#;

/// A Rust handler that asks for a retry in the payload's `ms`, once.
struct Asks;

#[async_trait]
impl Handler for Asks {
    async fn handle(&self, job: &Job) -> Result<(), HandlerError> {
        let payload: serde_json::Value = job.payload_as()?;
        match (job.attempt(), payload["ms"].as_u64()) {
            (1, Some(ms)) => {
                Err(HandlerError::transient("not yet").retry_in(Duration::from_millis(ms)))
            }
            _ => Ok(()),
        }
    }
}

fn exec_queue(name: &str, worker: &std::path::Path) -> String {
    format!(
        "[queues.{name}]\nhandler = \"exec\"\n{BACKOFF}\n[queues.{name}.exec]\ncommand = [\"python3\", {:?}]\n",
        worker.display().to_string()
    )
}

/// Pushes a job and returns, once it waits for its retry, how long after
/// its failure was recorded it is due: its status record's `due_at` less
/// its `updated_at`, both written as the failure is.
async fn asked_wait(
    conn: &mut redis::aio::MultiplexedConnection,
    list: &str,
    id: &str,
    payload: serde_json::Value,
) -> i64 {
    let env = json!({"id": id, "payload": payload, "attempt": 0});
    let _: () = conn.rpush(list, env.to_string()).await.unwrap();
    let record = wait_job_state(conn, id, "retrying", WAIT).await;
    let ms = |field: &str| {
        record[field]
            .parse::<jiff::Timestamp>()
            .unwrap_or_else(|e| panic!("{field}: {e}: {record:?}"))
            .as_millisecond()
    };
    // And the schedule agrees with the record.
    let due: Vec<(String, f64)> = conn
        .zrange_withscores(format!("{{{list}}}:scheduled"), 0, -1)
        .await
        .unwrap();
    let (_, score) = due
        .into_iter()
        .find(|(e, _)| e.contains(&format!("\"id\":\"{id}\"")))
        .unwrap_or_else(|| panic!("{id} is not scheduled"));
    assert_eq!(score as i64, ms("due_at"), "{id}");
    ms("due_at") - ms("updated_at")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_a_server_and_a_handler_are_retried_when_they_asked() {
    let redis = Redis::start();
    let server = http::HttpServer::start();
    let dir = tempfile::tempdir().unwrap();
    let worker = dir.path().join("asks.py");
    std::fs::write(&worker, WORKER).unwrap();
    let queues = format!(
        "{}[queues.hooks]\nhandler = \"http\"\n{BACKOFF}\n[queues.hooks.http]\nurl = \"{}\"\n\
         [queues.rust]\nhandler = \"asks\"\n{BACKOFF}\n",
        exec_queue("work", &worker),
        server.url("/limited"),
    );
    let mut registry = builtin();
    registry.register_handler("asks", Asks);
    let daemon = TestDaemon::start(config(&redis, &queues), registry);
    let mut conn = redis.conn().await;

    // The worker asks for 3 s, the backoff's max is 1 s.
    let wait = asked_wait(&mut conn, "jobs:work", "w", json!({"ms": 3000})).await;
    assert!(
        (2900..3100).contains(&wait),
        "retry_in_ms 3000 gave {wait} ms"
    );
    // The server answers 429 with Retry-After: 2.
    let wait = asked_wait(&mut conn, "jobs:hooks", "h", json!({})).await;
    assert!(
        (1900..2100).contains(&wait),
        "Retry-After: 2 gave {wait} ms"
    );
    // A Rust handler asks for 2.5 s.
    let wait = asked_wait(&mut conn, "jobs:rust", "r", json!({"ms": 2500})).await;
    assert!((2400..2600).contains(&wait), "retry_in 2.5s gave {wait} ms");
    for id in ["w", "h", "r"] {
        let done = wait_job_state(&conn, id, "succeeded", WAIT).await;
        assert_eq!(done["attempt"], "2", "{id}: {done:?}");
    }
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ask_beyond_seven_days_is_cut_to_seven_days_and_the_log_says_so() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let worker = dir.path().join("asks.py");
    std::fs::write(&worker, WORKER).unwrap();
    let cfg = config_file(dir.path(), &redis, &exec_queue("work", &worker));
    let mut cmd = conveyor();
    cmd.args(["run", "--config", cfg.to_str().unwrap()])
        .stdout(std::process::Stdio::null());
    let (mut daemon, logs) = spawn_logged(cmd);
    let mut conn = redis.conn().await;
    // 30 days, then the largest number a reply can carry.
    for (id, ms) in [("month", 30 * 24 * 3600 * 1000u64), ("forever", u64::MAX)] {
        let wait = asked_wait(&mut conn, "jobs:work", id, json!({"ms": ms})).await;
        assert!(
            (WEEK_MS - 100..WEEK_MS + 100).contains(&wait),
            "{id}: retry_in_ms {ms} gave {wait} ms"
        );
        wait_until("the cut logged", WAIT, || {
            let said = logs.lines().iter().any(|l| {
                l.contains(id) && l.contains("longer wait than 7 days") && l.contains("asked=")
            });
            async move { said }
        })
        .await;
    }
    signal(&daemon, 15);
    assert_eq!(wait_exit(&mut daemon, WAIT), Some(0));
}
