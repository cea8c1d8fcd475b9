//! `systemctl reload` (SIGHUP) on the real binary: queues added, removed and
//! changed, schedules, without dropping or rerunning a job; a configuration
//! that does not validate is refused and the running one kept.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use redis::AsyncCommands as _;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);
const SIGHUP: i32 = 1;
const SIGTERM: i32 = 15;

/// Writes the configuration file with these queue and schedule tables.
fn write(dir: &Path, redis: &Redis, tables: &str) -> std::path::PathBuf {
    config_file(dir, redis, tables)
}

/// The queues the daemon's heartbeat lists, as it wrote them last.
async fn listed(conn: &mut redis::aio::MultiplexedConnection) -> String {
    let nodes: Vec<String> = conn.keys("conveyor:node:*").await.unwrap();
    match nodes.first() {
        Some(node) => {
            let fields: HashMap<String, String> = conn.hgetall(node).await.unwrap();
            fields.get("queues").cloned().unwrap_or_default()
        }
        None => String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_removes_and_changes_queues_without_losing_or_rerunning_a_job() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("done.txt");
    let v1 = "[queues.slow]\nhandler = \"fault\"\nconcurrency = 2\ntrack = true\n\
              [queues.gone]\nhandler = \"noop\"\n";
    let cfg = write(dir.path(), &redis, v1);
    let mut conn = redis.conn().await;
    let (mut daemon, logs) = spawn_logged({
        let mut cmd = conveyor();
        cmd.args(["run", "--config", cfg.to_str().unwrap()])
            .env("CONVEYOR_LOG_FORMAT", "json")
            .stdout(Stdio::null());
        cmd
    });
    wait_until("the node lists its queues", WAIT, || {
        let mut c = conn.clone();
        async move { listed(&mut c).await == "gone,slow" }
    })
    .await;
    // A job that runs across the reload of its queue.
    let long = json!({"id": "long", "attempt": 0,
        "payload": {"sleep_ms": 1500, "record": record}});
    let _: () = conn.rpush("jobs:slow", long.to_string()).await.unwrap();
    wait_until("the long job runs", WAIT, || {
        let mut c = conn.clone();
        async move {
            let state: Option<String> = c.hget("conveyor:job:long", "state").await.unwrap();
            state.as_deref() == Some("running")
        }
    })
    .await;

    // slow changes, gone goes, fresh comes with a schedule.
    let v2 = "[queues.slow]\nhandler = \"fault\"\nconcurrency = 3\ntrack = true\n\
              [queues.fresh]\nhandler = \"noop\"\n\
              [schedules.beat]\nqueue = \"fresh\"\nevery = \"1s\"\n";
    write(dir.path(), &redis, v2);
    signal(&daemon, SIGHUP);
    wait_until("the reload is done", WAIT, || {
        let logs = logs.clone();
        async move { logs.contains("configuration reloaded") }
    })
    .await;
    // The running job finished where it ran, once: not cut short, not rerun.
    let done = std::fs::read_to_string(&record).unwrap();
    assert_eq!(done.lines().collect::<Vec<_>>(), ["long"]);
    let state: String = conn.hget("conveyor:job:long", "state").await.unwrap();
    assert_eq!(state, "succeeded");
    assert_eq!(listed(&mut conn).await, "fresh,slow");
    let summary = logs
        .lines()
        .into_iter()
        .find(|l| l.contains("configuration reloaded"))
        .unwrap();
    assert!(
        summary.contains("added: [fresh]")
            && summary.contains("removed: [gone]")
            && summary.contains("new settings: [slow]"),
        "{summary}"
    );
    // The new queue runs, and its schedule ticks; the old one is left alone.
    let _: () = conn.rpush("jobs:fresh", "{}").await.unwrap();
    let _: () = conn.rpush("jobs:gone", "{}").await.unwrap();
    wait_until("fresh runs its job and a tick", WAIT, || {
        let mut c = conn.clone();
        async move { stat(&mut c, "jobs:fresh", "processed").await >= 2 }
    })
    .await;
    assert_eq!(
        llen(&mut conn, "jobs:gone").await,
        1,
        "gone is not run any more"
    );
    let _: () = conn
        .rpush("jobs:slow", json!({"record": record}).to_string())
        .await
        .unwrap();
    wait_until("slow runs with its new settings", WAIT, || {
        let record = record.clone();
        async move {
            std::fs::read_to_string(&record)
                .unwrap_or_default()
                .lines()
                .count()
                == 2
        }
    })
    .await;

    // A configuration that does not validate is refused; the running one stays.
    write(
        dir.path(),
        &redis,
        "[queues.fresh]\nhandler = \"noop\"\nconcurency = 3\n",
    );
    signal(&daemon, SIGHUP);
    wait_until("the refusal is logged", WAIT, || {
        let logs = logs.clone();
        async move { logs.contains("reload refused") }
    })
    .await;
    assert!(
        logs.lines()
            .iter()
            .any(|l| l.contains("reload refused") && l.contains("concurency")),
        "the reason is given"
    );
    let before = stat(&mut conn, "jobs:fresh", "processed").await;
    let _: () = conn.rpush("jobs:fresh", "{}").await.unwrap();
    wait_until("fresh still runs", WAIT, || {
        let mut c = conn.clone();
        async move { stat(&mut c, "jobs:fresh", "processed").await > before }
    })
    .await;
    assert_eq!(listed(&mut conn).await, "fresh,slow");

    signal(&daemon, SIGTERM);
    assert_eq!(wait_exit(&mut daemon, WAIT), Some(0));
    assert_eq!(in_flight(&mut conn, "jobs:slow").await, 0);
    assert_eq!(in_flight(&mut conn, "jobs:fresh").await, 0);
}
