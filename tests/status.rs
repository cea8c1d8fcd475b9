//! Status records (`conveyor:job:<id>`, for queues with `track = true`)
//! that stay true: written in the step that records the outcome, so a Redis
//! killed mid-run leaves none behind saying `running`; and updated by the
//! reaper's recovery and quarantine and by shutdown requeues.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use conveyor::Job;
use conveyor::config::Config;
use conveyor::handlers::{Handler, HandlerError, Registry};
use redis::AsyncCommands as _;
use redis::aio::MultiplexedConnection;

const Q: &str = "jobs:work";
const WAIT: Duration = Duration::from_secs(30);

fn envelope(id: &str, payload: &str, deliveries: u32) -> String {
    format!(r#"{{"id":"{id}","payload":{payload},"attempt":0,"deliveries":{deliveries}}}"#)
}

/// Counts the runs it finishes, each a millisecond long.
#[derive(Clone, Default)]
struct Count(Arc<AtomicUsize>);

#[async_trait]
impl Handler for Count {
    async fn handle(&self, _job: &Job) -> Result<(), HandlerError> {
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_record_says_running_after_redis_is_killed_and_restarted() {
    const JOBS: usize = 5_000;
    let mut redis = Redis::start_persistent();
    let mut conn = redis.conn().await;
    let items: Vec<String> = (0..JOBS)
        .map(|i| envelope(&format!("s-{i}"), "{}", 0))
        .collect();
    let _: () = conn.rpush(Q, items).await.unwrap();
    let count = Count::default();
    let mut registry = Registry::builtin();
    registry.register_handler("count", count.clone());
    let daemon = TestDaemon::start(
        config(
            &redis,
            "[queues.work]\nhandler = \"count\"\nconcurrency = 64\ntrack = true\n",
        ),
        registry,
    );
    wait_until("a fifth of the jobs run", WAIT, || {
        let count = count.clone();
        async move { count.0.load(Ordering::Relaxed) >= JOBS / 5 }
    })
    .await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.restart();
    let conn = redis.conn().await;
    wait_until("every job done, nothing waiting or in flight", WAIT, || {
        let mut c = conn.clone();
        async move {
            stat(&mut c, Q, "processed").await as usize >= JOBS
                && llen(&mut c, Q).await == 0
                && in_flight(&mut c, Q).await == 0
        }
    })
    .await;
    daemon.stop().await.unwrap();
    assert!(
        count.0.load(Ordering::Relaxed) >= JOBS,
        "Redis was killed before the last job ran"
    );
    let mut states: HashMap<String, usize> = HashMap::new();
    for i in 0..JOBS {
        let r = job_record(&conn, &format!("s-{i}")).await;
        *states
            .entry(r.get("state").cloned().unwrap_or_default())
            .or_default() += 1;
    }
    assert_eq!(
        states,
        HashMap::from([("succeeded".to_owned(), JOBS)]),
        "every record tells the outcome"
    );
}

fn tracked(redis: &Redis, shutdown_timeout: &str) -> Config {
    let text = format!(
        "[redis]\nurl = \"{}\"\n[daemon]\nshutdown_timeout = \"{shutdown_timeout}\"\n\
         heartbeat_interval = \"200ms\"\nnode_ttl = \"1s\"\n\
         [queues.work]\nhandler = \"fault\"\nconcurrency = 1\ntrack = true\n",
        redis.url()
    );
    let config = Config::from_toml(&text).unwrap();
    config.validate().unwrap();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_quarantine_and_shutdown_requeue_update_the_records() {
    let redis = Redis::start();
    let mut conn = redis.conn().await;
    // A node died running three jobs; its records say so. The poison job
    // has crashed daemons twice before: this was its third.
    let jobs = [
        ("long", r#"{"sleep_ms":600000}"#, 0),
        ("next", "{}", 0),
        ("poison", r#"{"abort":true}"#, 2),
    ];
    for (id, payload, deliveries) in jobs {
        let _: () = conn
            .rpush(
                "{jobs:work}:inflight:ghost",
                envelope(id, payload, deliveries),
            )
            .await
            .unwrap();
        let _: () = conn
            .hset_multiple(
                format!("conveyor:job:{id}"),
                &[("state", "running"), ("node", "ghost"), ("attempt", "1")],
            )
            .await
            .unwrap();
    }
    let _: () = conn.sadd("{jobs:work}:nodes", "ghost").await.unwrap();

    let daemon = TestDaemon::start(tracked(&redis, "300ms"), Registry::builtin());
    let node = daemon.node.id.clone();
    let poison = wait_for_state(&conn, "poison", "dead").await;
    assert!(
        poison["last_error"].starts_with("poison: its daemon died 3 times"),
        "{poison:?}"
    );
    assert_eq!(poison["node"], node, "quarantined by the reaper here");
    assert!(poison.contains_key("finished_at"));
    // Listed with the queue's results, among its failures.
    let results = lrange(&mut conn, "{jobs:work}:results").await;
    assert!(results.contains(&"poison".to_owned()), "{results:?}");
    // With one slot, the long job runs and the next waits behind it.
    let long = wait_for_state(&conn, "long", "running").await;
    assert_eq!(long["node"], node);
    let next = job_record(&conn, "next").await;
    assert_eq!(
        (next["state"].as_str(), next["node"].as_str()),
        ("waiting", node.as_str())
    );
    assert_eq!(next["attempt"], "0", "recovery spends no attempt");

    // Shut down: the long job outlives the timeout and goes back.
    daemon.stop().await.unwrap();
    let long = job_record(&conn, "long").await;
    assert_eq!(
        (long["state"].as_str(), long["attempt"].as_str()),
        ("waiting", "0")
    );
    assert_eq!(
        lrange(&mut conn, Q).await.len(),
        2,
        "both wait in the queue"
    );
    for id in ["long", "next", "poison"] {
        let ttl: i64 = conn.pttl(format!("conveyor:job:{id}")).await.unwrap();
        assert!(ttl > 0, "{id}: the record keeps its lifetime, {ttl}");
    }
}

async fn wait_for_state(
    conn: &MultiplexedConnection,
    id: &str,
    state: &str,
) -> HashMap<String, String> {
    wait_job_state(conn, id, state, WAIT).await
}

/// `conveyor status` of the id a producer was given: what happened to the
/// job, also at the size limit. One size rule (`envelope::check_size`) for
/// `conveyor enqueue` and the daemon (`conveyor run`, the real binary): a
/// payload up to `max_payload_bytes` runs, whatever its envelope adds; a
/// larger one is refused by enqueue, and dead-lettered by the daemon under
/// the id it came with. Before, enqueue measured the payload and the daemon
/// the envelope: a 999-byte payload under a 1,000-byte limit was accepted,
/// then dead under a new id, and its printed id said `waiting` forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_and_the_daemon_apply_one_size_rule_and_keep_the_id() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let queue = "[queues.work]\nhandler = \"noop\"\nmax_payload_bytes = 1000\ntrack = true\n";
    let cfg = config_file(dir.path(), &redis, queue);
    let cfg = cfg.to_str().unwrap();
    let cli = |args: &[&str]| {
        let mut all = vec!["--config", cfg];
        all.extend_from_slice(args);
        run_cli(&all)
    };
    // A JSON string of exactly n bytes.
    let payload = |n: usize| format!("\"{}\"", "x".repeat(n - 2));
    let mut conn = redis.conn().await;

    let mut printed = Vec::new();
    for n in [999, 1000] {
        let (code, out, err) = cli(&["enqueue", "work", &payload(n)]);
        assert_eq!(code, 0, "{n} bytes: {err}");
        printed.push(out.trim().to_owned());
    }
    let (code, _, err) = cli(&["enqueue", "work", &payload(1001)]);
    assert_eq!(code, 65, "{err}");
    assert!(
        err.contains("payload of 1001 bytes exceeds max_payload_bytes (1000)"),
        "{err}"
    );
    let file = dir.path().join("jobs.ndjson");
    std::fs::write(&file, format!("{}\n{}\n", payload(1000), payload(1001))).unwrap();
    let (code, _, err) = cli(&["enqueue", "work", "--file", file.to_str().unwrap()]);
    assert_eq!(code, 65, "{err}");
    assert!(
        err.contains("line 2") && err.contains("nothing was enqueued"),
        "{err}"
    );
    // A key so long that the envelope outgrows its allowance.
    let key = "k".repeat(70_000);
    let (code, _, err) = cli(&[
        "enqueue",
        "work",
        "{}",
        "--unique-for",
        "1h",
        "--unique-key",
        &key,
    ]);
    assert_eq!(code, 65, "{err}");
    assert_eq!(llen(&mut conn, Q).await, 2);

    // Other producers push what they like; the daemon holds it to the same rule.
    let envelope = |id: &str, payload: &str, extra: &str| {
        format!(r#"{{"id":"{id}","payload":{payload},"attempt":0{extra}}}"#)
    };
    let fat = format!(r#","note":"{}""#, "n".repeat(70_000));
    let pushed = [
        payload(1000),
        payload(1001),
        envelope("env-at", &payload(1000), ""),
        envelope("env-over", &payload(1001), ""),
        envelope("env-fat", "{}", &fat),
    ];
    let _: () = conn.rpush(Q, &pushed).await.unwrap();
    let mut run = conveyor();
    run.args(["run", "--config", cfg]);
    let (_daemon, _logs) = spawn_logged(run);
    wait_until("every job ended", WAIT, || {
        let mut c = conn.clone();
        async move { stat(&mut c, Q, "processed").await == 7 }
    })
    .await;

    let state = |id: &str| {
        let (code, out, err) = cli(&["status", id, "--json"]);
        assert_eq!(code, 0, "{id}: {err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    for id in printed.iter().map(String::as_str).chain(["env-at"]) {
        assert_eq!(state(id)["state"], "succeeded", "{id}");
    }
    let over = state("env-over");
    assert_eq!(over["state"], "dead");
    assert_eq!(
        over["last_error"],
        "payload of 1001 bytes exceeds max_payload_bytes (1000)"
    );
    let fat = state("env-fat");
    assert_eq!(fat["state"], "dead");
    assert!(
        fat["last_error"].as_str().unwrap().starts_with("item of "),
        "{fat}"
    );
    // The dead letters: each under the id its producer knows (a raw
    // payload's, the one the daemon gave it), with the item's bytes.
    let dead = dead(&mut conn, Q).await;
    assert_eq!(dead.len(), 3, "{dead:?}");
    let raw = dead
        .iter()
        .find(|d| d["raw"] == payload(1001))
        .expect("the raw payload's bytes kept");
    assert_eq!(state(raw["id"].as_str().unwrap())["state"], "dead");
    let kept = dead.iter().find(|d| d["id"] == "env-over").unwrap();
    assert_eq!(kept["raw"], pushed[3]);
}

/// `conveyor status ID` says where any job is, tracked or not: waiting,
/// scheduled, running on which node, dead; with its stored envelope and
/// its events from the replay stream; a succeeded job by its record; an
/// unknown id exits 65.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_finds_a_job_wherever_it_is() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(
        dir.path(),
        &redis,
        "[queues.work]\nhandler = \"fault\"\nconcurrency = 1\n\
         [queues.kept]\nhandler = \"fault\"\ntrack = true\n",
    );
    let cfg = cfg.to_str().unwrap().to_owned();
    let cli = |args: &[&str]| {
        let mut all = vec!["--config", cfg.as_str()];
        all.extend_from_slice(args);
        run_cli(&all)
    };
    let enqueue = |args: &[&str]| {
        let mut all = vec!["enqueue"];
        all.extend_from_slice(args);
        let (code, out, err) = cli(&all);
        assert_eq!(code, 0, "{err}");
        out.trim().to_owned()
    };
    let status = |id: &str| {
        let (code, out, err) = cli(&["status", id, "--json"]);
        assert_eq!(code, 0, "{id}: {err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let mut daemon = conveyor();
    daemon.args(["run", "--config", &cfg]);
    let (_daemon, _logs) = spawn_logged(daemon);
    let conn = redis.conn().await;

    let running = enqueue(&["work", r#"{"sleep_ms": 60000}"#]);
    wait_until("the first job runs", WAIT, || {
        let mut c = conn.clone();
        async move { in_flight(&mut c, Q).await == 1 }
    })
    .await;
    let waiting = enqueue(&["work", r#"{"name": "<b>\u001b[31m"}"#]);
    let later = enqueue(&["work", "{}", "--delay", "1h"]);
    let ok = enqueue(&["kept", "{}"]);
    let bad = enqueue(&["kept", r#"{"fail": "permanent"}"#]);
    wait_until("both kept jobs ended", WAIT, || {
        let mut c = conn.clone();
        async move { stat(&mut c, "jobs:kept", "processed").await == 2 }
    })
    .await;

    let job = status(&running);
    assert_eq!(
        (job["where"].as_str(), job["queue"].as_str()),
        (Some("running"), Some("work"))
    );
    assert!(!job["running_on"].as_str().unwrap().is_empty(), "{job}");
    assert_eq!(job["envelope"]["payload"]["sleep_ms"], 60000, "{job}");
    let job = status(&waiting);
    assert_eq!(job["where"], "waiting", "{job}");
    assert_eq!(job["state"], "waiting", "untracked: the place is its state");
    assert_eq!(job["envelope"]["payload"]["name"], "<b>\u{1b}[31m", "{job}");
    assert_eq!(status(&later)["where"], "scheduled");
    let job = status(&bad);
    assert_eq!(
        (job["where"].as_str(), job["state"].as_str()),
        (Some("dead"), Some("dead"))
    );
    assert_eq!(
        job["envelope"]["last_error"], "fault: permanent failure",
        "{job}"
    );
    let types: Vec<&str> = job["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types.first(), Some(&"job.enqueued"), "{types:?}");
    assert_eq!(types.last(), Some(&"job.dead"), "{types:?}");
    let job = status(&ok);
    assert_eq!(job["where"], "succeeded", "{job}");
    assert!(job.get("envelope").is_none(), "in no list: {job}");
    assert!(
        job["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "job.succeeded"),
        "{job}"
    );

    // For a person: the place, and the payload escaped.
    let (code, out, _) = cli(&["status", &waiting]);
    assert_eq!(code, 0);
    assert!(out.contains("where        waiting"), "{out}");
    assert!(out.contains("stored") && !out.contains('\u{1b}'), "{out}");
    let (code, _, err) = cli(&["status", "no-such-job"]);
    assert_eq!(code, 65, "{err}");
}
