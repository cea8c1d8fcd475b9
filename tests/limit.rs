//! A queue's global `limit` (DESIGN section 14) across real daemons on a
//! real Redis, checked from the runs' own records (the `fault` handler's
//! trace of each run's start and end), not from conveyor's counters: three
//! daemons of concurrency 10 never run more than 5 jobs at once; a daemon
//! SIGKILLed while it holds all 5 gives them back when its jobs are
//! recovered (within `node_ttl`), and every job runs to its end.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const JOBS: usize = 60;
const LIMIT: usize = 5;

/// The trace's lines: (ns, +1 for a start or -1 for an end, id).
fn trace(path: &std::path::Path) -> Vec<(u128, i32, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| {
            let mut parts = line.split(' ');
            let what = parts.next().unwrap();
            let id = parts.next().unwrap().to_owned();
            let ns: u128 = parts.next().unwrap().parse().unwrap();
            (ns, if what == "start" { 1 } else { -1 }, id)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_limit_holds_across_daemons_and_comes_back_from_a_dead_one() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace");
    let cfg = config_file(
        dir.path(),
        &redis,
        &format!(
            "[web]\nlisten = \"127.0.0.1:0\"\n\
             [queues.work]\nhandler = \"fault\"\nconcurrency = 10\nlimit = {LIMIT}\n"
        ),
    );
    let cfg = cfg.to_str().unwrap();
    let mut conn = redis.conn().await;
    let jobs: Vec<String> = (0..JOBS)
        .map(|i| {
            let payload = json!({ "sleep_ms": 300, "trace": path });
            json!({ "id": format!("j{i}"), "payload": payload, "attempt": 0 }).to_string()
        })
        .collect();
    let _: () = redis::AsyncCommands::rpush(&mut conn, "jobs:work", &jobs)
        .await
        .unwrap();
    let start = || {
        let mut daemon = conveyor();
        daemon.args(["--config", cfg, "run"]);
        spawn_logged(daemon)
    };
    // The first daemon takes all the limit allows...
    let (first, _first_logs) = start();
    wait_until(
        "the first daemon runs five",
        Duration::from_secs(20),
        || {
            let path = path.clone();
            async move { trace(&path).iter().filter(|t| t.1 == 1).count() >= LIMIT }
        },
    )
    .await;
    // ...and the others, started then, get nothing while it lives.
    let (_second, second_logs) = start();
    let (_third, _) = start();
    wait_until("three nodes", Duration::from_secs(20), || {
        let mut c = conn.clone();
        async move {
            let nodes: Vec<String> = redis::AsyncCommands::smembers(&mut c, "{jobs:work}:nodes")
                .await
                .unwrap();
            nodes.len() == 3
        }
    })
    .await;
    // Killed while it holds five (its jobs sleep 300 ms, and it takes the
    // next one as soon as one ends).
    wait_until("five in flight", Duration::from_secs(20), || {
        let mut c = conn.clone();
        async move { in_flight(&mut c, "jobs:work").await == LIMIT }
    })
    .await;
    signal(&first.0, 9);
    let killed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let at_kill = Instant::now();
    drop(first);
    wait_until("every job ran to its end", Duration::from_secs(60), || {
        let path = path.clone();
        async move {
            let ended: std::collections::HashSet<String> = trace(&path)
                .into_iter()
                .filter(|t| t.1 == -1)
                .map(|t| t.2)
                .collect();
            ended.len() == JOBS
        }
    })
    .await;
    let took = at_kill.elapsed();

    let mut events = trace(&path);
    // A run the kill cut short ended at the kill.
    let mut open: HashMap<String, usize> = HashMap::new();
    for (_, d, id) in &events {
        *open.entry(id.clone()).or_default() += usize::from(*d == 1);
        let n = open.get_mut(id).unwrap();
        *n -= usize::from(*d == -1);
    }
    for (id, n) in open {
        for _ in 0..n {
            events.push((killed, -1, id.clone()));
        }
    }
    // Ends before starts at the same instant: a slot freed, then taken.
    events.sort_by_key(|(ns, d, _)| (*ns, *d));
    let mut running = 0;
    let mut most = 0;
    for (_, d, _) in &events {
        running += d;
        most = most.max(running);
    }
    assert!(
        most <= LIMIT as i32,
        "{most} ran at once, over the limit of {LIMIT}"
    );
    assert_eq!(most, LIMIT as i32, "the limit was used");
    // The survivors started nothing until the dead daemon's jobs were
    // recovered, then took its share: the first start after the kill came
    // within node_ttl (1 s) and the reaper's round.
    let next = events
        .iter()
        .filter(|(ns, d, _)| *d == 1 && *ns > killed)
        .map(|(ns, _, _)| *ns)
        .min()
        .unwrap();
    let waited = Duration::from_nanos((next - killed) as u64);
    assert!(
        waited <= Duration::from_secs(5),
        "the limit came back after {waited:?}"
    );
    // 60 jobs of 300 ms, 5 at a time, is 3.6 s of work.
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert_eq!(llen(&mut conn, "jobs:work").await, 0);
    // The dashboard tells the limit beside the jobs in flight.
    let web = web_address(&second_logs).await;
    let page = reqwest::get(format!("{web}/?live=0"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let row = page
        .split("<tr id=\"queue-work\">")
        .nth(1)
        .and_then(|r| r.split("</tr>").next())
        .unwrap_or_else(|| panic!("the queue's row: {page}"));
    assert!(row.contains(&format!(">of {LIMIT}</span>")), "{row}");
}

/// Nanoseconds since the epoch, as the trace writes them.
fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A reload that adds a limit to a busy queue, then one that removes it:
/// the running jobs finish where they run, the limit holds from the
/// moment the reload is done, and every job runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_and_removes_a_limit_without_losing_or_rerunning_a_job() {
    const JOBS: usize = 40;
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace");
    let table =
        |limit: &str| format!("[queues.work]\nhandler = \"fault\"\nconcurrency = 8\n{limit}");
    let cfg = config_file(dir.path(), &redis, &table(""));
    let mut conn = redis.conn().await;
    let jobs: Vec<String> = (0..JOBS)
        .map(|i| {
            let payload = json!({ "sleep_ms": 200, "trace": path });
            json!({ "id": format!("j{i}"), "payload": payload, "attempt": 0 }).to_string()
        })
        .collect();
    let _: () = redis::AsyncCommands::rpush(&mut conn, "jobs:work", &jobs)
        .await
        .unwrap();
    let mut daemon = conveyor();
    daemon.args(["--config", cfg.to_str().unwrap(), "run"]);
    let (daemon, logs) = spawn_logged(daemon);
    wait_until("eight run at once", Duration::from_secs(20), || {
        let path = path.clone();
        async move { trace(&path).iter().filter(|t| t.1 == 1).count() >= 8 }
    })
    .await;
    config_file(dir.path(), &redis, &table("limit = 2\n"));
    signal(&daemon.0, 1);
    wait_until(
        "the reload that adds the limit",
        Duration::from_secs(20),
        || {
            let logs = logs.clone();
            async move { logs.contains("configuration reloaded") }
        },
    )
    .await;
    let limited_from = now_ns();
    // Some jobs run under the limit, then it goes.
    wait_until("jobs run under the limit", Duration::from_secs(20), || {
        let path = path.clone();
        async move {
            trace(&path)
                .iter()
                .filter(|t| t.1 == 1 && t.0 > limited_from)
                .count()
                >= 6
        }
    })
    .await;
    let limited_until = now_ns();
    config_file(dir.path(), &redis, &table(""));
    signal(&daemon.0, 1);
    wait_until("every job ran to its end", Duration::from_secs(30), || {
        let path = path.clone();
        async move { trace(&path).iter().filter(|t| t.1 == -1).count() >= JOBS }
    })
    .await;
    let mut events = trace(&path);
    events.sort_by_key(|(ns, d, _)| (*ns, *d));
    // Each job started and ended once: none lost, none rerun.
    let mut starts: HashMap<&str, usize> = HashMap::new();
    for (_, d, id) in &events {
        if *d == 1 {
            *starts.entry(id.as_str()).or_default() += 1;
        }
    }
    assert_eq!(starts.len(), JOBS);
    assert!(starts.values().all(|n| *n == 1), "{starts:?}");
    assert_eq!(events.len(), 2 * JOBS);
    // While the limit was on, at most 2 at once.
    let mut running = 0;
    let mut most_limited = 0;
    for (ns, d, _) in &events {
        running += d;
        if (limited_from..limited_until).contains(ns) {
            most_limited = most_limited.max(running);
        }
    }
    assert!(
        most_limited <= 2,
        "{most_limited} at once under a limit of 2"
    );
    assert_eq!(llen(&mut conn, "jobs:work").await, 0);
    wait_until("every outcome recorded", Duration::from_secs(10), || {
        let mut c = conn.clone();
        async move { in_flight(&mut c, "jobs:work").await == 0 }
    })
    .await;
}
