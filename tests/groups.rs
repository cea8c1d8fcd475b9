//! A queue's `group` (DESIGN section 14) across real daemons on a real
//! Redis, checked from the runs' own records (the `fault` handler's trace
//! of each run's start and end), not from conveyor's counters:
//! - a tenant that floods the queue does not hold back the others, whose
//!   one job each starts within a few of its jobs;
//! - a group's limit holds across two daemons, a SIGKILLed daemon's share
//!   comes back when its jobs are recovered, and every job runs;
//! - the held jobs (of a group at its limit) show in `conveyor groups`,
//!   `stats`, `/metrics` and the dashboard, and one can be cancelled;
//! - a reload that removes `group` puts the held jobs back in the queue,
//!   and each job runs once.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::json;

/// The trace's lines: (ns, +1 for a start or -1 for an end, id).
fn trace(path: &Path) -> Vec<(u128, i32, String)> {
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

/// The ids whose run ended, at least once.
fn ended(path: &Path) -> HashSet<String> {
    trace(path)
        .into_iter()
        .filter(|t| t.1 == -1)
        .map(|t| t.2)
        .collect()
}

/// Nanoseconds since the epoch, as the trace writes them.
fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A job of `tenant` whose id is `<tenant>-<n>`, traced to `path`, made
/// at [`MADE`].
fn job(tenant: &str, n: usize, sleep_ms: u64, path: &Path) -> String {
    let payload = json!({ "tenant": tenant, "sleep_ms": sleep_ms, "trace": path });
    json!({ "id": format!("{tenant}-{n}"), "payload": payload, "attempt": 0, "created_at": MADE })
        .to_string()
}

/// When the jobs of [`job`] were made: long before the tests run.
const MADE: &str = "2026-01-01T00:00:00Z";

fn tenant_of(id: &str) -> &str {
    id.split('-').next().unwrap()
}

/// Tenant A pushes 10,000 jobs, then tenants B to K one job each: each of
/// theirs starts before A's 100th job after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_tenant_does_not_hold_back_the_others() {
    const FLOOD: usize = 10_000;
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace");
    let cfg = config_file(
        dir.path(),
        &redis,
        "[queues.work]\nhandler = \"fault\"\nconcurrency = 10\n\
         group = { key = \"tenant\" }\n",
    );
    let mut daemon = conveyor();
    daemon.args(["--config", cfg.to_str().unwrap(), "run"]);
    let (_daemon, _logs) = spawn_logged(daemon);
    let mut conn = redis.conn().await;
    wait_until(
        "the daemon takes the queue",
        Duration::from_secs(20),
        || {
            let mut c = conn.clone();
            async move {
                let nodes: Vec<String> =
                    redis::AsyncCommands::smembers(&mut c, "{jobs:work}:nodes")
                        .await
                        .unwrap();
                !nodes.is_empty()
            }
        },
    )
    .await;
    let flood: Vec<String> = (0..FLOOD).map(|n| job("a", n, 2, &path)).collect();
    let _: () = redis::AsyncCommands::rpush(&mut conn, "jobs:work", &flood)
        .await
        .unwrap();
    let pushed = now_ns();
    let small: Vec<String> = ["b", "c", "d", "e", "f", "g", "h", "i", "j", "k"]
        .iter()
        .map(|t| job(t, 0, 2, &path))
        .collect();
    let _: () = redis::AsyncCommands::rpush(&mut conn, "jobs:work", &small)
        .await
        .unwrap();
    wait_until(
        "every small tenant's job ran",
        Duration::from_secs(60),
        || {
            let path = path.clone();
            async move {
                let ended = ended(&path);
                ["b", "c", "d", "e", "f", "g", "h", "i", "j", "k"]
                    .iter()
                    .all(|t| ended.contains(&format!("{t}-0")))
            }
        },
    )
    .await;
    let runs = trace(&path);
    let starts: Vec<(u128, &str)> = runs
        .iter()
        .filter(|t| t.1 == 1 && t.0 > pushed)
        .map(|t| (t.0, t.2.as_str()))
        .collect();
    let last_small = starts
        .iter()
        .filter(|(_, id)| tenant_of(id) != "a")
        .map(|(ns, _)| *ns)
        .max()
        .unwrap();
    let a_before = starts
        .iter()
        .filter(|(ns, id)| tenant_of(id) == "a" && *ns < last_small)
        .count();
    eprintln!(
        "groups: {a_before} of A's jobs started after the small tenants' push and before their last"
    );
    assert!(
        a_before < 100,
        "{a_before} of A's jobs started before the last small tenant's"
    );
    // The flood was not run first: most of it still waits, in its group
    // (not held: the group has no limit).
    let (waiting, held) = stats_counts(&cfg).await;
    assert!(waiting > FLOOD as u64 / 2, "waiting {waiting}");
    assert_eq!(held, 0);
}

/// `conveyor stats --json`'s waiting and held counts of queue `work`.
async fn stats_counts(cfg: &Path) -> (u64, u64) {
    let (code, out, err) = run_cli(&["--config", cfg.to_str().unwrap(), "stats", "--json"]);
    assert_eq!(code, 0, "{err}");
    let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
    stats["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "work")
        .map(|q| {
            let count = |what: &str| q[what].as_u64().unwrap();
            (count("waiting"), count("held"))
        })
        .unwrap()
}

/// Two daemons of concurrency 10, three tenants of 20 jobs, at most 2 of
/// one tenant at once: never more from the runs' own records, a SIGKILLed
/// daemon's share given back, every job run; the held jobs visible
/// meanwhile, and one of them cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_limit_holds_across_daemons_and_comes_back_from_a_dead_one() {
    const PER: usize = 20;
    const LIMIT: i32 = 2;
    let tenants = ["x", "y", "z"];
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace");
    let cfg = config_file(
        dir.path(),
        &redis,
        &format!(
            "[web]\nlisten = \"127.0.0.1:0\"\n\
             [queues.work]\nhandler = \"fault\"\nconcurrency = 10\n\
             group = {{ key = \"tenant\", limit = {LIMIT} }}\n"
        ),
    );
    let cfg_str = cfg.to_str().unwrap();
    let mut conn = redis.conn().await;
    let mut jobs = Vec::new();
    for n in 0..PER {
        for t in tenants {
            jobs.push(job(t, n, 300, &path));
        }
    }
    let _: () = redis::AsyncCommands::rpush(&mut conn, "jobs:work", &jobs)
        .await
        .unwrap();
    let start = || {
        let mut daemon = conveyor();
        daemon.args(["--config", cfg_str, "run"]);
        spawn_logged(daemon)
    };
    let (first, _first_logs) = start();
    wait_until("six run", Duration::from_secs(20), || {
        let path = path.clone();
        async move { trace(&path).iter().filter(|t| t.1 == 1).count() >= 6 }
    })
    .await;
    let (_second, second_logs) = start();
    // While jobs are held: the groups, the stats, /metrics, the dashboard.
    let (code, out, err) = run_cli(&["--config", cfg_str, "groups", "work", "--json"]);
    assert_eq!(code, 0, "{err}");
    let groups: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(groups["key"], "tenant");
    assert_eq!(groups["limit"], LIMIT);
    let listed = groups["groups"].as_array().unwrap();
    assert!(!listed.is_empty(), "{out}");
    for g in listed {
        assert!(g["running"].as_u64().unwrap() <= LIMIT as u64, "{out}");
    }
    assert!(groups["held"].as_u64().unwrap() > 0, "{out}");
    let (code, table, err) = run_cli(&["--config", cfg_str, "groups", "work"]);
    assert_eq!(code, 0, "{err}");
    assert!(table.contains("by tenant, limit 2 each"), "{table}");
    assert!(stats_counts(&cfg).await.1 > 0);
    let web = web_address(&second_logs).await;
    let metrics = reqwest::get(format!("{web}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("conveyor_queue_jobs{queue=\"work\",state=\"held\"}"),
        "{metrics}"
    );
    // The oldest waiting job is in a group's list, not in the queue's:
    // its age is still known (MADE was days before).
    let oldest: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("conveyor_queue_oldest_seconds{queue=\"work\"} "))
        .unwrap_or_else(|| panic!("{metrics}"))
        .parse()
        .unwrap();
    assert!(oldest > 86_400.0, "{oldest}");
    let page = reqwest::get(format!("{web}/?live=0"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(" held</span>"),
        "the queue's row tells the held jobs"
    );
    assert!(
        page.contains("<table class=\"groups\">"),
        "the groups' table"
    );
    // The last job of x is held (x's jobs run two at a time): cancelled.
    let last = format!("x-{}", PER - 1);
    let (code, _, err) = run_cli(&["--config", cfg_str, "cancel", "work", &last]);
    assert_eq!(code, 0, "{err}");
    let dead = dead(&mut conn, "jobs:work").await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["id"], last.as_str());
    assert_eq!(dead[0]["last_error"], "cancelled");

    // The first daemon dies while it runs jobs.
    wait_until(
        "the first daemon runs jobs",
        Duration::from_secs(20),
        || {
            let mut c = conn.clone();
            async move { in_flight(&mut c, "jobs:work").await > 0 }
        },
    )
    .await;
    signal(&first.0, 9);
    let killed = now_ns();
    drop(first);
    let total = tenants.len() * PER - 1;
    wait_until("every job ran to its end", Duration::from_secs(90), || {
        let path = path.clone();
        async move { ended(&path).len() == total }
    })
    .await;
    assert!(!ended(&path).contains(&last), "the cancelled job never ran");

    let mut events = trace(&path);
    // A run the kill cut short ended at the kill.
    let mut open: HashMap<String, i32> = HashMap::new();
    for (_, d, id) in &events {
        *open.entry(id.clone()).or_default() += d;
    }
    for (id, n) in open {
        for _ in 0..n {
            events.push((killed, -1, id.clone()));
        }
    }
    // Ends before starts at the same instant: a slot freed, then taken.
    events.sort_by_key(|(ns, d, _)| (*ns, *d));
    let mut running: HashMap<&str, i32> = HashMap::new();
    let mut most: HashMap<&str, i32> = HashMap::new();
    for (_, d, id) in &events {
        let t = tenant_of(id);
        let n = running.entry(t).or_default();
        *n += d;
        let m = most.entry(t).or_default();
        *m = (*m).max(*n);
    }
    for t in tenants {
        assert!(most[t] <= LIMIT, "{} of {t} ran at once", most[t]);
        assert_eq!(most[t], LIMIT, "{t} used its limit");
    }
    wait_until("nothing left", Duration::from_secs(20), || {
        let mut c = conn.clone();
        async move {
            llen(&mut c, "jobs:work").await == 0
                && in_flight(&mut c, "jobs:work").await == 0
                && !redis::AsyncCommands::exists::<_, bool>(&mut c, "{jobs:work}:group:turns")
                    .await
                    .unwrap()
        }
    })
    .await;
    assert_eq!(stats_counts(&cfg).await, (0, 0));
}

/// A reload that removes `group` while jobs are held: they go back to the
/// queue, ahead of later ones, and every job runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_removes_the_group_runs_every_held_job_once() {
    const PER: usize = 10;
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace");
    let table =
        |group: &str| format!("[queues.work]\nhandler = \"fault\"\nconcurrency = 4\n{group}");
    let cfg = config_file(
        dir.path(),
        &redis,
        &table("group = { key = \"tenant\", limit = 1 }\n"),
    );
    let mut conn = redis.conn().await;
    let mut jobs = Vec::new();
    for n in 0..PER {
        for t in ["p", "q"] {
            jobs.push(job(t, n, 200, &path));
        }
    }
    let _: () = redis::AsyncCommands::rpush(&mut conn, "jobs:work", &jobs)
        .await
        .unwrap();
    let mut daemon = conveyor();
    daemon.args(["--config", cfg.to_str().unwrap(), "run"]);
    let (daemon, logs) = spawn_logged(daemon);
    wait_until("jobs are held", Duration::from_secs(20), || {
        let path = path.clone();
        async move { trace(&path).iter().filter(|t| t.1 == 1).count() >= 2 }
    })
    .await;
    assert!(stats_counts(&cfg).await.1 > 0);
    config_file(dir.path(), &redis, &table(""));
    signal(&daemon.0, 1);
    wait_until("the reload", Duration::from_secs(20), || {
        let logs = logs.clone();
        async move { logs.contains("configuration reloaded") }
    })
    .await;
    let reloaded = now_ns();
    wait_until("every job ran to its end", Duration::from_secs(30), || {
        let path = path.clone();
        async move { ended(&path).len() == 2 * PER }
    })
    .await;
    let runs = trace(&path);
    let starts = runs.iter().filter(|t| t.1 == 1).count();
    assert_eq!(starts, 2 * PER, "each job ran once");
    // Without the group, more than one of a tenant ran at once.
    let mut running: HashMap<&str, i32> = HashMap::new();
    let mut most = 0;
    let mut after: Vec<&(u128, i32, String)> = runs.iter().filter(|t| t.0 > reloaded).collect();
    after.sort_by_key(|(ns, d, _)| (*ns, *d));
    for (_, d, id) in after {
        let n = running.entry(tenant_of(id)).or_default();
        *n += d;
        most = most.max(*n);
    }
    assert!(most > 1, "the limit went with the group");
    assert!(logs.contains("the jobs its groups held are back at its head"));
    let keys: Vec<String> = redis::AsyncCommands::keys(&mut conn, "{jobs:work}:group*")
        .await
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");
}

/// 20 orders of 50 events each over two daemons, a fifth of the events
/// failing once or twice first (retried after a backoff): per order, the
/// runs' own records show the events in push order, a failing event
/// holding its order until it succeeded, and never two at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordered_group_runs_its_events_in_push_order_one_at_a_time() {
    const ORDERS: usize = 20;
    const EVENTS: usize = 50;
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace");
    let record = dir.path().join("record");
    let cfg = config_file(
        dir.path(),
        &redis,
        "[queues.work]\nhandler = \"fault\"\nconcurrency = 10\n\
         backoff = { base = \"20ms\", max = \"40ms\" }\n\
         group = { key = \"order\", ordered = true }\n",
    );
    let mut conn = redis.conn().await;
    let mut jobs = Vec::new();
    let mut failing = 0;
    for n in 0..EVENTS {
        for o in 0..ORDERS {
            let mut payload = json!({
                "order": format!("o{o}"), "sleep_ms": 1, "trace": path, "record": record
            });
            // A fifth fail first: once, or twice (the first run is
            // attempt 1; it fails on the runs before `until_attempt`).
            if fastrand::u8(0..5) == 0 {
                let until = fastrand::u32(2..=3);
                payload["fail"] = json!("transient");
                payload["until_attempt"] = json!(until);
                failing += until as usize - 1;
            }
            let id = format!("o{o}-{n}");
            jobs.push(json!({ "id": id, "payload": payload, "attempt": 0 }).to_string());
        }
    }
    let _: () = redis::AsyncCommands::rpush(&mut conn, "jobs:work", &jobs)
        .await
        .unwrap();
    let start = || {
        let mut daemon = conveyor();
        daemon.args(["--config", cfg.to_str().unwrap(), "run"]);
        spawn_logged(daemon)
    };
    let (_first, _) = start();
    let (_second, _) = start();
    let total = ORDERS * EVENTS;
    wait_until("every event succeeded", Duration::from_secs(120), || {
        let record = record.clone();
        async move {
            std::fs::read_to_string(&record)
                .unwrap_or_default()
                .lines()
                .count()
                >= total
        }
    })
    .await;
    let succeeded: Vec<String> = std::fs::read_to_string(&record)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(succeeded.len(), total, "each event succeeded once");
    let mut runs = trace(&path);
    runs.sort_by_key(|(ns, d, _)| (*ns, *d));
    let mut running: HashMap<&str, i32> = HashMap::new();
    let mut last: HashMap<&str, usize> = HashMap::new();
    let mut retried_runs = 0;
    for (_, d, id) in &runs {
        let (order, n) = id.split_once('-').unwrap();
        let n: usize = n.parse().unwrap();
        let now = running.entry(order).or_default();
        *now += d;
        assert!(*now <= 1, "two events of {order} ran at once");
        if *d == 1 {
            let before = last.insert(order, n);
            match before {
                Some(b) if b == n => retried_runs += 1,
                Some(b) => assert_eq!(n, b + 1, "{order}: event {n} ran after {b}"),
                None => assert_eq!(n, 0, "{order} began with event {n}"),
            }
        }
    }
    assert!(failing > 0);
    assert_eq!(retried_runs, failing, "each failure ran again, once");
    for o in 0..ORDERS {
        assert_eq!(last[format!("o{o}").as_str()], EVENTS - 1);
    }
    assert_eq!(llen(&mut conn, "jobs:work").await, 0);
    assert!(dead(&mut conn, "jobs:work").await.is_empty());
}

/// A grouped queue through a shutdown (SIGTERM) while its groups hold
/// jobs, then a Redis restart (SIGKILL, AOF) under a second daemon: every
/// job runs, none twice, and no tenant over its limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_and_a_redis_restart_keep_every_grouped_job() {
    const PER: usize = 15;
    const LIMIT: i32 = 2;
    let tenants = ["r", "s", "t"];
    let mut redis = Redis::start_persistent();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace");
    let record = dir.path().join("record");
    let cfg = config_file(
        dir.path(),
        &redis,
        &format!(
            "[queues.work]\nhandler = \"fault\"\nconcurrency = 10\n\
             group = {{ key = \"tenant\", limit = {LIMIT} }}\n"
        ),
    );
    let mut conn = redis.conn().await;
    let mut jobs = Vec::new();
    for n in 0..PER {
        for t in tenants {
            let payload = json!({ "tenant": t, "sleep_ms": 100, "trace": path, "record": record });
            let id = format!("{t}-{n}");
            jobs.push(json!({ "id": id, "payload": payload, "attempt": 0 }).to_string());
        }
    }
    let _: () = redis::AsyncCommands::rpush(&mut conn, "jobs:work", &jobs)
        .await
        .unwrap();
    let start = || {
        let mut daemon = conveyor();
        daemon.args(["--config", cfg.to_str().unwrap(), "run"]);
        spawn_logged(daemon)
    };
    let (first, _) = start();
    wait_until("some jobs ran", Duration::from_secs(20), || {
        let record = record.clone();
        async move {
            std::fs::read_to_string(&record)
                .unwrap_or_default()
                .lines()
                .count()
                >= 6
        }
    })
    .await;
    signal(&first.0, 15);
    let mut first = first;
    assert_eq!(wait_exit(&mut first.0, Duration::from_secs(20)), Some(0));
    assert_eq!(in_flight(&mut conn, "jobs:work").await, 0);
    let (waiting, held) = stats_counts(&cfg).await;
    assert!(waiting + held > 0, "the groups still hold jobs");

    let (_second, _) = start();
    wait_until("more jobs ran", Duration::from_secs(20), || {
        let record = record.clone();
        async move {
            std::fs::read_to_string(&record)
                .unwrap_or_default()
                .lines()
                .count()
                >= 20
        }
    })
    .await;
    redis.restart();
    let total = tenants.len() * PER;
    wait_until("every job ran", Duration::from_secs(60), || {
        let path = path.clone();
        async move { ended(&path).len() == total }
    })
    .await;
    let succeeded: Vec<String> = std::fs::read_to_string(&record)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let once: HashSet<&String> = succeeded.iter().collect();
    assert_eq!(once.len(), total, "every job succeeded");
    assert_eq!(succeeded.len(), total, "and none twice");
    let mut runs = trace(&path);
    runs.sort_by_key(|(ns, d, _)| (*ns, *d));
    let mut running: HashMap<&str, i32> = HashMap::new();
    for (_, d, id) in &runs {
        let n = running.entry(tenant_of(id)).or_default();
        *n += d;
        assert!(*n <= LIMIT, "{} ran over its limit", tenant_of(id));
    }
}

/// An ordered group's running job, also at the head of its group's list,
/// is cancelled as running (its run stopped), not as waiting; the next
/// job of its order then runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordered_groups_running_job_is_cancelled_as_running() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace");
    let cfg = config_file(
        dir.path(),
        &redis,
        "[queues.work]\nhandler = \"fault\"\nconcurrency = 4\n\
         group = { key = \"order\", ordered = true }\n",
    );
    let cfg = cfg.to_str().unwrap();
    let mut conn = redis.conn().await;
    let jobs: Vec<String> = [("slow", 30_000), ("next", 1)]
        .iter()
        .map(|(id, ms)| {
            let payload = json!({ "order": "o", "sleep_ms": ms, "trace": path });
            json!({ "id": id, "payload": payload, "attempt": 0 }).to_string()
        })
        .collect();
    let _: () = redis::AsyncCommands::rpush(&mut conn, "jobs:work", &jobs)
        .await
        .unwrap();
    let mut daemon = conveyor();
    daemon.args(["--config", cfg, "run"]);
    let (_daemon, _) = spawn_logged(daemon);
    wait_until("the slow job runs", Duration::from_secs(20), || {
        let path = path.clone();
        async move { trace(&path).iter().any(|t| t.1 == 1 && t.2 == "slow") }
    })
    .await;
    let (code, out, err) = run_cli(&["--config", cfg, "cancel", "work", "slow"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("running"), "{out}");
    wait_until("the next job ran", Duration::from_secs(20), || {
        let path = path.clone();
        async move { ended(&path).contains("next") }
    })
    .await;
    let dead = dead(&mut conn, "jobs:work").await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["id"], "slow");
    assert_eq!(dead[0]["last_error"], "cancelled");
    // The slow run was cut short, not run on: its end well before 30 s.
    let runs = trace(&path);
    let slow: Vec<u128> = runs.iter().filter(|t| t.2 == "slow").map(|t| t.0).collect();
    assert_eq!(slow.len(), 2, "one run of it: {runs:?}");
    assert!(slow[1] - slow[0] < 20_000_000_000, "{runs:?}");
}

/// Group names are payload values: a control sequence or markup in one is
/// shown escaped by `conveyor groups` and the dashboard, and a value over
/// 128 bytes is known by its SHA-1, whatever its length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_group_names_are_escaped_and_long_ones_hashed() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(
        dir.path(),
        &redis,
        "[web]\nlisten = \"127.0.0.1:0\"\n\
         [queues.work]\nhandler = \"fault\"\nconcurrency = 4\n\
         group = { key = \"tenant\", limit = 1 }\n",
    );
    let cfg = cfg.to_str().unwrap();
    let hostile = "\u{1b}[31mred<script>alert(1)</script>";
    let long = "x".repeat(100_000);
    let mut conn = redis.conn().await;
    let mut jobs = Vec::new();
    for tenant in [hostile, long.as_str()] {
        for _ in 0..3 {
            jobs.push(json!({ "tenant": tenant, "sleep_ms": 10_000 }).to_string());
        }
    }
    let _: () = redis::AsyncCommands::rpush(&mut conn, "jobs:work", &jobs)
        .await
        .unwrap();
    let mut daemon = conveyor();
    daemon.args(["--config", cfg, "run"]);
    let (_daemon, logs) = spawn_logged(daemon);
    wait_until(
        "both groups hold jobs",
        Duration::from_secs(20),
        || async move { stats_counts(Path::new(cfg)).await.1 == 4 },
    )
    .await;
    let (code, table, err) = run_cli(&["--config", cfg, "groups", "work"]);
    assert_eq!(code, 0, "{err}");
    assert!(!table.contains('\u{1b}'), "{table:?}");
    assert!(table.contains("sha1:"), "{table}");
    assert!(!table.contains(&"x".repeat(200)), "{table}");
    let web = web_address(&logs).await;
    let page = reqwest::get(format!("{web}/?live=0"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!page.contains("<script>alert(1)"), "the name is escaped");
    assert!(page.contains("&lt;script&gt;alert(1)"), "and shown");
    let keys: Vec<String> = redis::AsyncCommands::keys(&mut conn, "{jobs:work}:group:jobs:*")
        .await
        .unwrap();
    assert!(keys.iter().all(|k| k.len() < 200), "{keys:?}");
}

/// Pause, a rate limit, unique jobs and scheduled jobs keep working on a
/// grouped queue: nothing starts while it is paused (a scheduled job comes
/// due and waits with the rest), an equal unique job is not enqueued, and
/// once resumed the starts keep to the rate limit and every job runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_rate_limits_unique_and_scheduled_jobs_work_on_a_grouped_queue() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace");
    let cfg = config_file(
        dir.path(),
        &redis,
        "[queues.work]\nhandler = \"fault\"\nconcurrency = 8\n\
         group = { key = \"tenant\", limit = 2 }\n\
         rate_limit = { limit = 3, window = \"1s\" }\n",
    );
    let cfg_path = cfg.clone();
    let cfg = cfg.to_str().unwrap();
    let cli = |args: &[&str]| {
        let (code, out, err) = run_cli(&[&["--config", cfg], args].concat());
        assert_eq!(code, 0, "{args:?}: {err}");
        (out, err)
    };
    cli(&["pause", "work"]);
    let mut conn = redis.conn().await;
    let plain: Vec<String> = (0..9)
        .map(|n| job(["a", "b", "c"][n % 3], n, 1, &path))
        .collect();
    let _: () = redis::AsyncCommands::rpush(&mut conn, "jobs:work", &plain)
        .await
        .unwrap();
    let unique = json!({ "tenant": "u", "sleep_ms": 1, "trace": path }).to_string();
    let (first, _) = cli(&["enqueue", "work", &unique, "--unique-for", "1h"]);
    let (out, err) = cli(&["enqueue", "work", &unique, "--unique-for", "1h"]);
    assert!(
        out.is_empty() && err.contains("not enqueued"),
        "{out} {err}"
    );
    assert!(err.contains(first.trim()), "{err}");
    let later = json!({ "tenant": "a", "sleep_ms": 1, "trace": path }).to_string();
    cli(&["enqueue", "work", &later, "--delay", "300ms"]);

    let mut daemon = conveyor();
    daemon.args(["--config", cfg, "run"]);
    let (_daemon, _) = spawn_logged(daemon);
    // The scheduled job comes due while the queue is paused, and waits.
    wait_until("the scheduled job is due", Duration::from_secs(20), || {
        let (out, _) = cli(&["stats", "--json"]);
        async move {
            let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
            stats["queues"][0]["scheduled"] == 0
        }
    })
    .await;
    let (waiting, held) = stats_counts(&cfg_path).await;
    assert_eq!(waiting + held, 11, "waiting {waiting}, held {held}");
    assert!(trace(&path).is_empty(), "{:?}", trace(&path));

    cli(&["resume", "work"]);
    wait_until("every job ran", Duration::from_secs(30), || {
        let path = path.clone();
        async move { ended(&path).len() == 11 }
    })
    .await;
    let runs = trace(&path);
    let mut starts: Vec<u128> = runs.iter().filter(|t| t.1 == 1).map(|t| t.0).collect();
    assert_eq!(starts.len(), 11, "each job once: {runs:?}");
    starts.sort_unstable();
    // At most 3 starts in any second: the 1st and 4th of any four starts
    // are a window apart (less the few ms between the limiter's clock and
    // the handler's record of its start).
    for four in starts.windows(4) {
        assert!(four[3] - four[0] >= 900_000_000, "{starts:?}");
    }
    assert_eq!(stats_counts(&cfg_path).await, (0, 0));
}
