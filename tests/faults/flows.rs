//! Flows through crashes (DESIGN section 13, "exactly once per node"): a
//! 2,000-node flow over two queues and two daemons, one SIGKILLed again and
//! again; and a flow through a Redis restart. Every node is counted from
//! the `fault` handler's own completion record, not from conveyor's.
//!
//! A node runs twice only if a kill caught its job after the handler
//! succeeded and before its outcome was recorded: it was then in the killed
//! daemon's in-flight list at the kill. So every duplicate must be one of
//! the ids read from those lists right after each kill; a node released
//! twice would run twice without being there, and fail this.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};

use crate::common::{Redis, lrange, wait_until};
use crate::harness::*;

const WAIT: Duration = Duration::from_secs(180);

const QUEUES: &str = "[queues.work]\nhandler = \"fault\"\nconcurrency = 8\n\
                      [queues.side]\nhandler = \"fault\"\nconcurrency = 4\n";

/// A flow of `stages` fan-outs of `width` nodes, each closed by a fan-in
/// that the next fan-out needs, after one root; then `leaves` nodes after
/// the root alone. Every payload records its run in `record`. Returns the
/// document and the ids of its nodes.
fn staged(
    fid: &str,
    stages: usize,
    width: usize,
    leaves: usize,
    record: &str,
) -> (Value, Vec<String>) {
    let mut jobs = serde_json::Map::new();
    let mut rng = fastrand::Rng::new();
    let mut node = |jobs: &mut serde_json::Map<String, Value>,
                    name: String,
                    queue: &str,
                    after: Vec<String>| {
        let payload = json!({"record": record, "sleep_ms": rng.u64(0..=3)});
        jobs.insert(
            name,
            json!({"queue": queue, "payload": payload, "after": after}),
        );
    };
    node(&mut jobs, "root".into(), "work", vec![]);
    let mut before = "root".to_owned();
    for s in 0..stages {
        let names: Vec<String> = (0..width).map(|i| format!("s{s}-{i}")).collect();
        for (i, name) in names.iter().enumerate() {
            let queue = if i % 3 == 0 { "side" } else { "work" };
            node(&mut jobs, name.clone(), queue, vec![before.clone()]);
        }
        let join = format!("join{s}");
        node(&mut jobs, join.clone(), "side", names);
        before = join;
    }
    for i in 0..leaves {
        node(&mut jobs, format!("leaf-{i}"), "work", vec!["root".into()]);
    }
    let ids = jobs.keys().map(|name| format!("{fid}:{name}")).collect();
    (json!({"flow": fid, "jobs": jobs}), ids)
}

async fn meta(conn: &mut MultiplexedConnection, fid: &str) -> HashMap<String, String> {
    redis::AsyncCommands::hgetall(conn, format!("{{flow:{fid}}}:meta"))
        .await
        .unwrap()
}

async fn ended_nodes(conn: &mut MultiplexedConnection, fid: &str) -> u64 {
    meta(conn, fid)
        .await
        .get("ended")
        .and_then(|e| e.parse().ok())
        .unwrap_or(0)
}

/// The ids in a list of envelopes.
fn ids_in(items: &[String]) -> Vec<String> {
    items
        .iter()
        .filter_map(|i| serde_json::from_str::<Value>(i).ok())
        .filter_map(|v| v["id"].as_str().map(str::to_owned))
        .collect()
}

/// Accounts for every node from the completion record: completed (at
/// least once), duplicated (runs beyond the first), lost (never).
fn tally(ledger: &Ledger, ids: &[String]) -> (Tally, Vec<String>) {
    let runs = ledger.completions();
    let mut t = Tally {
        enqueued: ids.len(),
        ..Tally::default()
    };
    let mut twice = Vec::new();
    for id in ids {
        match runs.get(id).copied().unwrap_or(0) {
            0 => t.lost.push(id.clone()),
            n => {
                t.completed += 1;
                t.duplicated += n - 1;
                if n > 1 {
                    twice.push(id.clone());
                }
            }
        }
    }
    let known: HashSet<&String> = ids.iter().collect();
    t.unknown = runs.keys().filter(|id| !known.contains(id)).count();
    (t, twice)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_sigkill() {
    let _serial = serial().await;
    let kills = 4 * scale();
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let daemon_table = format!("{FAST}\nmax_deliveries = {}", kills + 2);
    let cfg = write_config(dir.path(), &redis.url(), &daemon_table, QUEUES);
    let mut conn = redis.conn().await;
    let ledger = Ledger::new();
    let record = ledger.record_path().display().to_string();
    let (doc, ids) = staged("big", 9, 200, 190, &record);
    assert_eq!(ids.len(), 2_000);

    let mut victim = Daemon::start(&cfg);
    let _survivor = Daemon::start(&cfg);
    let _: () = redis::AsyncCommands::rpush(&mut conn, "conveyor:flows", doc.to_string())
        .await
        .unwrap();
    // Kill points: the first as soon as the flow is stored (its first
    // hand-off under way), the rest spread over the run.
    let points: Vec<u64> = (0..kills)
        .map(|k| (k as u64 * 1_800) / kills as u64)
        .collect();
    let mut caught: HashSet<String> = HashSet::new();
    let mut in_flight_at_kills = Vec::new();
    for point in points {
        let pid = victim.pid();
        let lists = [
            registered(&conn, pid).await,
            format!("{{jobs:side}}:inflight:{}", node_of(&conn, pid).await),
        ];
        wait_until("progress up to the kill point", WAIT, || {
            let mut c = conn.clone();
            async move {
                meta(&mut c, "big").await.contains_key("status")
                    && ended_nodes(&mut c, "big").await >= point
            }
        })
        .await;
        // Killed while it holds jobs of the flow (or, if it holds none for
        // a while, as it is: the flow may be ending).
        let _ = time_until(Duration::from_secs(5), || {
            let (mut c, lists) = (conn.clone(), lists.clone());
            async move {
                let mut held = 0;
                for list in &lists {
                    held += crate::common::llen(&mut c, list).await;
                }
                held > 0
            }
        })
        .await;
        victim.assert_no_panic();
        victim.kill();
        let mut held = 0;
        for list in &lists {
            let items = ids_in(&lrange(&mut conn, list).await);
            held += items.len();
            caught.extend(items);
        }
        in_flight_at_kills.push(held);
        victim = Daemon::start(&cfg);
    }
    let started = Instant::now();
    wait_until("the flow ends", WAIT, || {
        let mut c = conn.clone();
        async move {
            meta(&mut c, "big")
                .await
                .get("status")
                .is_some_and(|s| s != "running")
        }
    })
    .await;
    let took = started.elapsed();
    let m = meta(&mut conn, "big").await;
    let (t, twice) = tally(&ledger, &ids);
    report(
        "flow_sigkill",
        &t,
        None,
        &format!(
            "nodes=2000 kills={kills} in_flight_at_kills={in_flight_at_kills:?} after_last_kill={:.1}s",
            took.as_secs_f64()
        ),
    );
    assert_eq!(m["status"], "succeeded", "{m:?}");
    assert_eq!(m["ended"], "2000");
    t.assert_nothing_lost();
    assert_eq!(t.completed, 2_000);
    let unexplained: Vec<&String> = twice.iter().filter(|id| !caught.contains(*id)).collect();
    assert!(
        unexplained.is_empty(),
        "nodes that ran twice without being in flight at a kill (released twice?): {unexplained:?}"
    );
    // Nothing left behind: no end waiting for its flow, no document taken.
    wait_until(
        "the hand-offs are all done",
        Duration::from_secs(20),
        || {
            let mut c = conn.clone();
            async move {
                let mut left = 0;
                for key in [
                    "{jobs:work}:flows:ended",
                    "{jobs:side}:flows:ended",
                    "{conveyor:flows}:taken",
                ] {
                    left += crate::common::llen(&mut c, key).await;
                }
                left == 0
            }
        },
    )
    .await;
    victim.assert_healthy();
}

/// The node id of the daemon with this pid, once registered.
async fn node_of(conn: &MultiplexedConnection, pid: u32) -> String {
    let list = registered(conn, pid).await;
    list.trim_start_matches(INFLIGHT).to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_redis_restart() {
    let _serial = serial().await;
    let mut redis = Redis::start_persistent();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &redis.url(), FAST, QUEUES);
    let mut conn = redis.conn().await;
    let ledger = Ledger::new();
    let record = ledger.record_path().display().to_string();
    let (doc, ids) = staged("aof", 4, 100, 95, &record);
    assert_eq!(ids.len(), 500);
    let mut daemon = Daemon::start(&cfg);
    let _: () = redis::AsyncCommands::rpush(&mut conn, "conveyor:flows", doc.to_string())
        .await
        .unwrap();
    wait_until("a third of the flow", WAIT, || {
        let mut c = conn.clone();
        async move { ended_nodes(&mut c, "aof").await >= 160 }
    })
    .await;
    redis.restart();
    let started = Instant::now();
    let mut conn = redis.conn().await;
    wait_until("the flow ends", WAIT, || {
        let mut c = conn.clone();
        async move {
            meta(&mut c, "aof")
                .await
                .get("status")
                .is_some_and(|s| s != "running")
        }
    })
    .await;
    let m = meta(&mut conn, "aof").await;
    let (t, twice) = tally(&ledger, &ids);
    report(
        "flow_redis_restart",
        &t,
        Some(started.elapsed()),
        "nodes=500 (recover: restart to the flow's end)",
    );
    assert_eq!(m["status"], "succeeded", "{m:?}");
    t.assert_nothing_lost();
    assert_eq!(t.completed, 500);
    // Nothing was killed mid-run: the daemon kept its jobs and recorded
    // their outcomes once Redis was back, so nothing ran twice.
    assert!(twice.is_empty(), "ran twice: {twice:?}");
    daemon.assert_healthy();
}
