//! `conveyor cancel` against a real daemon: a waiting, a scheduled (and
//! unique) and a running exec job each end dead with "cancelled", in their
//! status records and the queue's results as in the dead letters; the
//! running one's process is killed; an unknown id exits 65.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// The running job's program: a sleep no other process runs (not even
/// one left by an earlier run of this test).
fn seconds() -> String {
    format!("31.{}", std::process::id())
}

fn cli(cfg: &str, args: &[&str]) -> (i32, String) {
    let mut all = vec!["--config", cfg];
    all.extend_from_slice(args);
    let (code, out, err) = run_cli(&all);
    (code, out + &err)
}

/// The pids of the job's program now.
fn sleepers() -> Vec<u32> {
    let out = Command::new("pgrep")
        .args(["-f", &format!("sleep {}$", seconds())])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_a_scheduled_and_a_running_job_are_cancelled() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let queues = format!(
        "[queues.work]\nhandler = \"exec\"\nconcurrency = 1\ntimeout = \"2m\"\ntrack = true\n\
         [queues.work.exec]\ncommand = [\"sleep\", \"{}\"]\n",
        seconds()
    );
    let cfg = config_file(dir.path(), &redis, &queues);
    let cfg = cfg.to_str().unwrap();
    let mut conn = redis.conn().await;
    let mut monitor = conveyor();
    monitor.args(["--config", cfg, "monitor"]);
    let (_monitor, _, events) = spawn_logged_out(monitor);
    let mut daemon = conveyor();
    daemon.args(["--config", cfg, "run"]);
    let (mut daemon, logs) = spawn_logged(daemon);

    let enqueue = |args: &[&str]| {
        let mut all = vec!["enqueue", "work"];
        all.extend_from_slice(args);
        let (code, out) = cli(cfg, &all);
        assert_eq!(code, 0, "{out}");
        out.trim().to_owned()
    };
    let running = enqueue(&["{\"n\":1}"]);
    wait_until(
        "the job's process runs",
        Duration::from_secs(20),
        || async { !sleepers().is_empty() },
    )
    .await;
    let before = sleepers();
    let waiting = enqueue(&["{\"n\":2}"]);
    let scheduled = enqueue(&["{\"n\":3}", "--delay", "1h", "--unique-for", "1h"]);

    let (code, out) = cli(cfg, &["cancel", "work", &waiting]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("cancelled (it was waiting)"), "{out}");
    let (code, out) = cli(cfg, &["cancel", "work", &scheduled]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("cancelled (it was scheduled)"), "{out}");
    // Its unique lock went with it: the same job can be enqueued again.
    let (code, again) = cli(
        cfg,
        &[
            "enqueue",
            "work",
            "{\"n\":3}",
            "--delay",
            "1h",
            "--unique-for",
            "1h",
        ],
    );
    assert_eq!(code, 0, "{again}");
    assert_ne!(
        again.trim(),
        scheduled,
        "a new job, not the cancelled one's lock"
    );

    let (code, out) = cli(cfg, &["cancel", "work", &running]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("cancelled (it was running on "), "{out}");
    let alive: Vec<u32> = sleepers()
        .into_iter()
        .filter(|p| before.contains(p))
        .collect();
    assert!(
        alive.is_empty(),
        "the job's process was killed: {alive:?} of {before:?}"
    );
    assert!(logs.contains("cancel asked; stopping the job"));

    let dead = dead(&mut conn, "jobs:work").await;
    for (id, attempts) in [(&running, 1), (&waiting, 0), (&scheduled, 0)] {
        let entry = dead.iter().find(|e| e["id"] == id.as_str()).unwrap();
        assert_eq!(entry["last_error"], "cancelled", "{entry}");
        // The running one's attempt was made: it counts, as in its status.
        assert_eq!(entry["attempt"], attempts, "{entry}");
    }
    // Their status records say so too, and the queue's results list them.
    for id in [&running, &waiting, &scheduled] {
        let (code, out) = cli(cfg, &["status", id, "--json"]);
        assert_eq!(code, 0, "{out}");
        let record: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(record["state"], "dead", "{record}");
        assert_eq!(record["last_error"], "cancelled", "{record}");
    }
    let (code, out) = cli(cfg, &["results", "work", "--failed", "--json"]);
    assert_eq!(code, 0, "{out}");
    let listed: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let ids: Vec<&str> = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [running.as_str(), scheduled.as_str(), waiting.as_str()]
    );
    assert_eq!(llen(&mut conn, "jobs:work").await, 0);
    assert_eq!(
        zcard(&mut conn, "{jobs:work}:scheduled").await,
        1,
        "only the new one"
    );
    let leftover: Vec<String> = redis::cmd("SMEMBERS")
        .arg("{jobs:work}:cancel")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(leftover.is_empty(), "{leftover:?}");

    wait_until(
        "the monitor shows the three cancels",
        Duration::from_secs(10),
        || {
            let events = events.clone();
            let ids = [running.clone(), waiting.clone(), scheduled.clone()];
            async move {
                ids.iter().all(|id| {
                    events
                        .lines()
                        .iter()
                        .any(|l| l.contains("job.cancelled") && l.contains(id.as_str()))
                })
            }
        },
    )
    .await;

    let (code, out) = cli(cfg, &["cancel", "work", "no-such-job"]);
    assert_eq!(code, 65, "{out}");
    assert!(
        out.contains("no job no-such-job waiting, scheduled or running in queue work"),
        "{out}"
    );
    // Stopped cleanly, so that its workers stop too.
    signal(&daemon, 15);
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)), Some(0));
}
