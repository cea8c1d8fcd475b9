//! `conveyor pause` and `resume` against two real daemons: no daemon takes
//! a paused queue's jobs a second after the pause, running jobs finish,
//! `stats` and the events say so, and resuming drains the queue.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const QUEUES: &str = "[queues.work]\nhandler = \"fault\"\nconcurrency = 4\n\
    [queues.idle]\nhandler = \"noop\"\n";

/// How long until `check` holds, polled; `None` past `limit`.
async fn time_until(limit: Duration, check: impl Fn() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if check() {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

fn cli(cfg: &str, args: &[&str]) -> (i32, String) {
    let mut all = vec!["--config", cfg];
    all.extend_from_slice(args);
    let (code, out, err) = run_cli(&all);
    (code, out + &err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_daemon_takes_a_paused_queue_until_it_is_resumed() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), &redis, QUEUES);
    let cfg = cfg.to_str().unwrap();
    let mut conn = redis.conn().await;
    let jobs: Vec<String> = (0..200)
        .map(|i| {
            json!({"id": format!("j{i}"), "payload": {"sleep_ms": 100}, "attempt": 0}).to_string()
        })
        .collect();
    let _: () = redis::cmd("RPUSH")
        .arg("jobs:work")
        .arg(&jobs)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut monitor = conveyor();
    monitor.args(["--config", cfg, "monitor"]);
    let (_monitor, _, events) = spawn_logged_out(monitor);
    let daemons: Vec<_> = (0..2)
        .map(|_| {
            let mut cmd = conveyor();
            cmd.args(["--config", cfg, "run"]);
            spawn_logged(cmd)
        })
        .collect();
    wait_until("both daemons work", Duration::from_secs(20), || {
        let mut c = conn.clone();
        async move { stat(&mut c, "jobs:work", "processed").await >= 10 }
    })
    .await;

    let (code, out) = cli(cfg, &["pause", "work"]);
    assert_eq!((code, out.trim()), (0, "work: paused"));
    let paused_at = Instant::now();
    // Watch the queue's length: the last job is taken within a second of
    // the pause; the jobs running then finish and nothing more is taken.
    let mut last = llen(&mut conn, "jobs:work").await;
    let mut last_change = paused_at;
    loop {
        let now = llen(&mut conn, "jobs:work").await;
        if now != last {
            (last, last_change) = (now, Instant::now());
        }
        let drained = in_flight(&mut conn, "jobs:work").await == 0;
        if drained && paused_at.elapsed() > Duration::from_millis(2500) {
            break;
        }
        assert!(
            paused_at.elapsed() < Duration::from_secs(20),
            "running jobs finish"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let taken_after = last_change - paused_at;
    assert!(
        taken_after <= Duration::from_secs(1),
        "a job was taken {taken_after:?} after the pause"
    );
    assert!(last > 0, "jobs are left waiting");
    let (code, out) = cli(cfg, &["pause", "work"]);
    assert_eq!((code, out.trim()), (0, "work: was paused already"));
    let (code, out) = cli(cfg, &["stats"]);
    assert_eq!(code, 0, "{out}");
    let row = out.lines().find(|l| l.starts_with("work ")).unwrap();
    assert!(row.ends_with("paused"), "{out}");
    let (_, out) = cli(cfg, &["stats", "--json"]);
    let stats: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let work = stats["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "work")
        .unwrap();
    assert_eq!(work["paused"], true, "{work}");

    // An empty queue, its fetchers blocked in BLMOVE: paused, a job pushed
    // then stays.
    let (code, _) = cli(cfg, &["pause", "idle"]);
    assert_eq!(code, 0);
    let noticed = time_until(Duration::from_secs(5), || {
        daemons.iter().all(|(_, logs)| {
            logs.lines()
                .iter()
                .any(|l| l.contains("queue paused") && l.contains("idle"))
        })
    })
    .await;
    assert!(noticed.unwrap() <= Duration::from_secs(1), "{noticed:?}");
    let paused_at = Instant::now();
    let _: () = redis::cmd("RPUSH")
        .arg("jobs:idle")
        .arg(json!({"id": "idle-1", "payload": {}, "attempt": 0}).to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    while paused_at.elapsed() < Duration::from_millis(1500) {
        assert_eq!(
            llen(&mut conn, "jobs:idle").await,
            1,
            "a paused queue's job stays"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    for q in ["work", "idle"] {
        let (code, out) = cli(cfg, &["resume", q]);
        assert_eq!((code, out.trim().to_owned()), (0, format!("{q}: resumed")));
    }
    let (code, out) = cli(cfg, &["resume", "idle"]);
    assert_eq!((code, out.trim()), (0, "idle: was not paused"));
    wait_until(
        "every job runs after the resume",
        Duration::from_secs(60),
        || {
            let mut c = conn.clone();
            async move {
                stat(&mut c, "jobs:work", "processed").await == 200
                    && stat(&mut c, "jobs:idle", "processed").await == 1
            }
        },
    )
    .await;
    let text = events.lines().join("\n");
    for (kind, queue) in [
        ("queue.paused", "work"),
        ("queue.paused", "idle"),
        ("queue.resumed", "work"),
        ("queue.resumed", "idle"),
    ] {
        assert!(
            events
                .lines()
                .iter()
                .any(|l| l.contains(kind) && l.contains(queue)),
            "the monitor shows {kind} {queue}:\n{text}"
        );
    }
    for (_, logs) in &daemons {
        assert!(logs.contains("queue paused: taking no new jobs"));
        assert!(logs.contains("queue resumed"));
    }

    let (code, out) = cli(cfg, &["pause", "nosuch"]);
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("no queue \"nosuch\""), "{out}");
}
