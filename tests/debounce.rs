//! A queue's `debounce` (DESIGN section 14) with a real daemon, a real
//! Redis and a real `exec` worker that writes down every payload it runs:
//! 100 pushes for one user inside the window run once, with the last
//! payload (`keep = "last"`) or all of them (`keep = "all"`); a steady
//! stream runs once per `max_wait`; a job without the field runs at once;
//! each arrival that joined a burst is told as `job.debounced`;
//! a reload that removes the debounce runs what it held.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// A persistent worker appending each payload it runs, one JSON a line, to
/// the file its first argument names.
const WORKER: &str = r#"
import json, sys
out = sys.argv[1]
for line in sys.stdin:
    req = json.loads(line)
    with open(out, "a") as f:
        f.write(json.dumps(req["payload"]) + "\n")
    print(json.dumps({"id": req["id"], "status": "ok"}), flush=True)
"#;

/// The payloads the worker ran, in order.
fn ran(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn queue(name: &str, debounce: &str) -> String {
    format!(
        "[queues.{name}]\nhandler = \"exec\"\nconcurrency = 2\n{debounce}\n\
         [queues.{name}.exec]\ncommand = [\"python3\", \"worker.py\", \"{name}.out\"]\n"
    )
}

/// 100 pushes of one user within the window: one run, with the last
/// payload or with all 100 in order; a job without the field at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_pushes_inside_the_window_run_once() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("worker.py"), WORKER).unwrap();
    let window = "window = \"2s\", max_wait = \"10s\"";
    let cfg = config_file(
        dir.path(),
        &redis,
        &format!(
            "{}{}",
            queue(
                "last",
                &format!("debounce = {{ key = \"user\", {window}, keep = \"last\" }}")
            ),
            queue(
                "all",
                &format!("debounce = {{ key = \"user\", {window}, keep = \"all\" }}")
            )
        ),
    );
    let mut daemon = conveyor();
    daemon.args(["--config", cfg.to_str().unwrap(), "run"]);
    let (_daemon, _) = spawn_logged(daemon);
    let mut conn = redis.conn().await;
    wait_until(
        "the daemon takes the queues",
        Duration::from_secs(20),
        || {
            let mut c = conn.clone();
            async move {
                let nodes: Vec<String> = redis::AsyncCommands::smembers(&mut c, "{jobs:all}:nodes")
                    .await
                    .unwrap();
                !nodes.is_empty()
            }
        },
    )
    .await;
    let started = Instant::now();
    for n in 0..100 {
        let job = json!({ "user": "u1", "n": n }).to_string();
        for q in ["jobs:last", "jobs:all"] {
            let _: () = redis::AsyncCommands::rpush(&mut conn, q, &job)
                .await
                .unwrap();
        }
    }
    let pushed = started.elapsed();
    assert!(
        pushed < Duration::from_millis(1500),
        "pushed within the window: {pushed:?}"
    );
    let _: () = redis::AsyncCommands::rpush(&mut conn, "jobs:last", r#"{"n":"alone"}"#)
        .await
        .unwrap();
    let last = dir.path().join("last.out");
    let all = dir.path().join("all.out");
    wait_until(
        "the job without the field ran",
        Duration::from_secs(5),
        || {
            let last = last.clone();
            async move { ran(&last).iter().any(|p| p["n"] == "alone") }
        },
    )
    .await;
    assert_eq!(ran(&last).len(), 1, "the burst waits out its window");
    // The held burst shows in the stats.
    let (code, out, err) = run_cli(&["--config", cfg.to_str().unwrap(), "stats", "--json"]);
    assert_eq!(code, 0, "{err}");
    let stats: Value = serde_json::from_str(&out).unwrap();
    let held = |name: &str| {
        stats["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == name)
            .map(|q| q["held"].as_u64().unwrap())
            .unwrap()
    };
    assert_eq!((held("last"), held("all")), (1, 1), "{out}");
    wait_until("both bursts ran", Duration::from_secs(10), || {
        let (last, all) = (last.clone(), all.clone());
        async move { ran(&last).len() == 2 && ran(&all).len() == 1 }
    })
    .await;
    assert_eq!(ran(&last)[1], json!({ "user": "u1", "n": 99 }));
    let every: Vec<Value> = (0..100).map(|n| json!({ "user": "u1", "n": n })).collect();
    assert_eq!(ran(&all)[0], Value::Array(every));
    // Every arrival that joined a burst is told: 99 a queue.
    wait_until("the job.debounced events", Duration::from_secs(10), || {
        let mut c = conn.clone();
        async move {
            let mut told = std::collections::HashMap::new();
            for (_, fields) in stream_entries(&mut c, "conveyor:events").await {
                for (_, lines) in fields {
                    for line in lines.lines() {
                        let event: Value = serde_json::from_str(line).unwrap();
                        if event["type"] == "job.debounced" {
                            *told.entry(event["queue"].to_string()).or_insert(0) += 1;
                        }
                    }
                }
            }
            told.get("\"last\"") == Some(&99) && told.get("\"all\"") == Some(&99)
        }
    })
    .await;
    // Nothing of the bursts is left.
    let keys: Vec<String> = redis::AsyncCommands::keys(&mut conn, "{jobs:*}:group:burst*")
        .await
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");
}

/// A push every 100 ms for 3 s, a window of 500 ms and a longest wait of
/// 1 s: a run about every second, each with the newest payload then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_wait_caps_a_steady_stream() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("worker.py"), WORKER).unwrap();
    let cfg = config_file(
        dir.path(),
        &redis,
        &queue(
            "steady",
            "debounce = { key = \"user\", window = \"500ms\", max_wait = \"1s\" }",
        ),
    );
    let mut daemon = conveyor();
    daemon.args(["--config", cfg.to_str().unwrap(), "run"]);
    let (_daemon, _) = spawn_logged(daemon);
    let mut conn = redis.conn().await;
    let out = dir.path().join("steady.out");
    let mut n = 0;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let job = json!({ "user": "u", "n": n }).to_string();
        let _: () = redis::AsyncCommands::rpush(&mut conn, "jobs:steady", &job)
            .await
            .unwrap();
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_until("the last burst ran", Duration::from_secs(5), || {
        let out = out.clone();
        async move { ran(&out).last().is_some_and(|p| p["n"] == n - 1) }
    })
    .await;
    let runs = ran(&out);
    // About one a second over 3 s, and the last after the pushes stopped:
    // never one per push, never one for the whole stream.
    assert!((3..=5).contains(&runs.len()), "{runs:?}");
    let ns: Vec<i64> = runs.iter().map(|p| p["n"].as_i64().unwrap()).collect();
    assert!(ns.windows(2).all(|w| w[0] < w[1]), "{ns:?}");
}

/// A reload that removes the debounce while a burst waits: its job runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_removes_the_debounce_runs_the_held_burst() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("worker.py"), WORKER).unwrap();
    let debounced = queue(
        "q",
        "debounce = { key = \"user\", window = \"1h\", max_wait = \"2h\" }",
    );
    let cfg = config_file(dir.path(), &redis, &debounced);
    let mut daemon = conveyor();
    daemon.args(["--config", cfg.to_str().unwrap(), "run"]);
    let (daemon, logs) = spawn_logged(daemon);
    let mut conn = redis.conn().await;
    for n in 0..3 {
        let job = json!({ "user": "u", "n": n }).to_string();
        let _: () = redis::AsyncCommands::rpush(&mut conn, "jobs:q", &job)
            .await
            .unwrap();
    }
    wait_until("the burst is held", Duration::from_secs(10), || {
        let mut c = conn.clone();
        async move {
            redis::AsyncCommands::zcard::<_, u64>(&mut c, "{jobs:q}:group:bursts")
                .await
                .unwrap()
                == 1
                && llen(&mut c, "jobs:q").await == 0
        }
    })
    .await;
    config_file(dir.path(), &redis, &queue("q", ""));
    signal(&daemon.0, 1);
    let out = dir.path().join("q.out");
    wait_until("the held job ran", Duration::from_secs(10), || {
        let out = out.clone();
        async move { !ran(&out).is_empty() }
    })
    .await;
    assert!(logs.contains("its ready and debounced jobs are back at its head"));
    assert_eq!(
        ran(&out),
        [json!({ "user": "u", "n": 2 })],
        "the burst's kept job"
    );
}
