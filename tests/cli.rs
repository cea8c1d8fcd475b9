//! The command line against a private redis-server: enqueue (one, stdin,
//! delayed, unique, bulk), dead list/retry/purge, stats, check, and the
//! sysexits codes for bad usage, bad input, bad config and no Redis; a
//! closed stdout (`cli/pipe.rs`); shell completion (`cli/completion.rs`).

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;
#[path = "cli/completion.rs"]
mod completion;
#[path = "cli/pipe.rs"]
mod pipe;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use redis::AsyncCommands as _;
use serde_json::{Value, json};

const Q: &str = "jobs:work";
const WAIT: Duration = Duration::from_secs(20);

struct Setup {
    redis: Redis,
    _dir: tempfile::TempDir,
    cfg: PathBuf,
}

fn setup(queues: &str) -> Setup {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), &redis, queues);
    Setup {
        redis,
        _dir: dir,
        cfg,
    }
}

impl Setup {
    fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let mut all = vec!["--config", self.cfg.to_str().unwrap()];
        all.extend_from_slice(args);
        run_cli(&all)
    }
}

const WORK: &str = "[queues.work]\nhandler = \"noop\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_prints_the_id_of_the_envelope_it_pushes() {
    let s = setup(WORK);
    let (code, out, err) = s.cli(&["enqueue", "work", r#"{"a": 1}"#, "--max-attempts", "3"]);
    assert_eq!(code, 0, "{err}");
    let id = out.trim();
    assert_eq!(id.len(), 32, "{out}");
    let mut conn = s.redis.conn().await;
    let items = lrange(&mut conn, Q).await;
    let env: Value = serde_json::from_str(&items[0]).unwrap();
    assert_eq!(env["id"], id);
    assert_eq!(env["payload"], json!({"a": 1}));
    assert_eq!(env["attempt"], 0);
    assert_eq!(env["max_attempts"], 3);
    assert!(env["created_at"].as_str().unwrap().ends_with('Z'));

    let (code, out, _) = run_cli_stdin(
        &["--config", s.cfg.to_str().unwrap(), "enqueue", "work", "-"],
        "{\"from\": \"stdin\"}\n",
    );
    assert_eq!(code, 0);
    let items = lrange(&mut conn, Q).await;
    let env: Value = serde_json::from_str(&items[1]).unwrap();
    assert_eq!(
        (env["id"].as_str().unwrap(), &env["payload"]),
        (out.trim(), &json!({"from": "stdin"}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_delay_and_at_schedule_the_job() {
    let s = setup(WORK);
    let mut conn = s.redis.conn().await;
    let before = common::now_ms();
    let (code, _, err) = s.cli(&["enqueue", "work", "{}", "--delay", "1h"]);
    assert_eq!(code, 0, "{err}");
    let scheduled: Vec<(String, f64)> = conn
        .zrange_withscores("{jobs:work}:scheduled", 0, -1)
        .await
        .unwrap();
    let due = scheduled[0].1 as i64;
    assert!(
        (due - before - 3_600_000).abs() < 5_000,
        "due {due}, now {before}"
    );
    assert_eq!(llen(&mut conn, Q).await, 0);

    let (code, _, _) = s.cli(&["enqueue", "work", "{}", "--at", "2099-01-01T00:00:00+01:00"]);
    assert_eq!(code, 0);
    let latest: Vec<(String, f64)> = conn
        .zrange_withscores("{jobs:work}:scheduled", 1, 1)
        .await
        .unwrap();
    assert_eq!(
        latest[0].1 as i64, 4_070_905_200_000,
        "2099-01-01T00:00+01:00 in ms"
    );
    // A time in the past means now.
    let (code, _, _) = s.cli(&["enqueue", "work", "{}", "--at", "2001-01-01T00:00:00Z"]);
    assert_eq!(code, 0);
    assert_eq!(llen(&mut conn, Q).await, 1);
    let (code, _, err) = s.cli(&["enqueue", "work", "{}", "--at", "tomorrow"]);
    assert_eq!(code, 64, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_job_runs_when_due_and_not_before() {
    let s = setup(WORK);
    let mut conn = s.redis.conn().await;
    let daemon = TestDaemon::start(config(&s.redis, WORK), builtin());
    let enqueued = Instant::now();
    let (code, _, _) = s.cli(&["enqueue", "work", "{}", "--delay", "700ms"]);
    assert_eq!(code, 0);
    wait_until("the delayed job runs", WAIT, || {
        let mut c = conn.clone();
        async move { stat(&mut c, Q, "processed").await == 1 }
    })
    .await;
    assert!(
        enqueued.elapsed() >= Duration::from_millis(700),
        "ran early: {:?}",
        enqueued.elapsed()
    );
    assert_eq!(zcard(&mut conn, "{jobs:work}:scheduled").await, 0);
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_for_skips_an_equal_job_until_the_first_finishes() {
    let s = setup(WORK);
    let mut conn = s.redis.conn().await;
    let (code, first, _) = s.cli(&["enqueue", "work", r#"{"u":1}"#, "--unique-for", "1h"]);
    assert_eq!(code, 0);
    let (code, out, err) = s.cli(&["enqueue", "work", r#"{"u":1}"#, "--unique-for", "1h"]);
    assert_eq!(code, 0);
    assert!(out.is_empty(), "no id for a skipped job: {out}");
    assert!(
        err.contains("not enqueued") && err.contains(first.trim()),
        "{err}"
    );
    let (code, _, _) = s.cli(&["enqueue", "work", r#"{"u":2}"#, "--unique-for", "1h"]);
    assert_eq!(code, 0, "another payload is another job");
    let (code, _, _) = s.cli(&[
        "enqueue",
        "work",
        r#"{"u":3}"#,
        "--unique-for",
        "1h",
        "--unique-key",
        "user-7",
    ]);
    assert_eq!(code, 0);
    let (code, out, _) = s.cli(&[
        "enqueue",
        "work",
        r#"{"u":4}"#,
        "--unique-for",
        "1h",
        "--unique-key",
        "user-7",
    ]);
    assert_eq!((code, out.as_str()), (0, ""), "same key, same job");
    assert_eq!(llen(&mut conn, Q).await, 3);

    // Once the jobs succeed their locks are released.
    let daemon = TestDaemon::start(config(&s.redis, WORK), builtin());
    wait_until("the jobs run", WAIT, || {
        let mut c = conn.clone();
        async move { stat(&mut c, Q, "processed").await == 3 }
    })
    .await;
    let locks: Vec<String> = conn.keys("{jobs:work}:unique:*").await.unwrap();
    assert!(locks.is_empty(), "{locks:?}");
    let (code, out, _) = s.cli(&["enqueue", "work", r#"{"u":1}"#, "--unique-for", "1h"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim().len(), 32);
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_file_loads_ndjson_and_refuses_a_bad_file_whole() {
    let s = setup(WORK);
    let mut conn = s.redis.conn().await;
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("jobs.ndjson");
    let lines: Vec<String> = (0..5000).map(|i| format!("{{\"n\":{i}}}")).collect();
    std::fs::write(&good, lines.join("\n") + "\n\n").unwrap();
    let (code, out, err) = s.cli(&["enqueue", "work", "--file", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 5000);
    assert!(err.contains("enqueued 5000 jobs"), "{err}");
    assert_eq!(llen(&mut conn, Q).await, 5000);
    let first: Value = serde_json::from_str(&lrange(&mut conn, Q).await[0]).unwrap();
    assert_eq!(first["payload"], json!({"n": 0}));

    let bad = dir.path().join("bad.ndjson");
    std::fs::write(&bad, "{\"ok\":1}\n{oops\n{\"ok\":2}\n").unwrap();
    let (code, _, err) = s.cli(&["enqueue", "work", "--file", bad.to_str().unwrap()]);
    assert_eq!(code, 65, "{err}");
    assert!(
        err.contains("line 2") && err.contains("nothing was enqueued"),
        "{err}"
    );
    assert_eq!(
        llen(&mut conn, Q).await,
        5000,
        "a bad file enqueues nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_usage_and_config_get_their_exit_codes() {
    let s = setup("[queues.work]\nhandler = \"noop\"\nmax_payload_bytes = 64\n");
    let (code, _, err) = s.cli(&["enqueue", "work", "{not json"]);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("invalid payload"), "{err}");
    let big = format!("\"{}\"", "x".repeat(100));
    let (code, _, err) = s.cli(&["enqueue", "work", &big]);
    assert_eq!(code, 65);
    assert!(err.contains("max_payload_bytes"), "{err}");
    let (code, _, _) = s.cli(&["enqueue", "work"]);
    assert_eq!(code, 64, "no payload");
    let (code, _, _) = s.cli(&[
        "enqueue",
        "work",
        "{}",
        "--delay",
        "1s",
        "--at",
        "2099-01-01T00:00:00Z",
    ]);
    assert_eq!(code, 64);
    // Durations that would wrap a time, or that Redis would refuse after
    // the job was pushed, are refused before anything is pushed.
    let (code, _, err) = s.cli(&["enqueue", "work", "{}", "--delay", "500000000000y"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--delay"), "{err}");
    for ttl in ["0s", "500000000000y"] {
        let (code, _, err) = s.cli(&["enqueue", "work", "{}", "--unique-for", ttl]);
        assert_eq!(code, 64, "{err}");
        assert!(err.contains("--unique-for must be between"), "{err}");
    }
    let mut conn = s.redis.conn().await;
    assert_eq!(llen(&mut conn, "jobs:work").await, 0, "nothing was pushed");
    assert_eq!(zcard(&mut conn, "{jobs:work}:scheduled").await, 0);
    let (code, _, _) = s.cli(&["frobnicate"]);
    assert_eq!(code, 64);
    let (code, _, _) = s.cli(&["dead", "purge", "work"]);
    assert_eq!(code, 64, "purge needs an id or --all");
    let (code, out, _) = s.cli(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("conveyor "));

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[daemon]\nshutdown_timout = \"1s\"\n").unwrap();
    let (code, _, err) = run_cli(&["--config", cfg.to_str().unwrap(), "check"]);
    assert_eq!(code, 78);
    assert!(err.contains("shutdown_timout"), "{err}");
    std::fs::write(
        &cfg,
        "[daemon]\nheartbeat_interval = \"10s\"\nnode_ttl = \"15s\"\n",
    )
    .unwrap();
    let (code, _, err) = run_cli(&["--config", cfg.to_str().unwrap(), "run"]);
    assert_eq!(code, 78);
    assert!(err.contains("node_ttl"), "{err}");
    let (code, _, err) = run_cli(&["--config", "/nonexistent/conveyor.toml", "stats"]);
    assert_eq!(code, 78);
    assert!(err.contains("/nonexistent/conveyor.toml"), "{err}");
}

#[test]
fn an_unreachable_redis_exits_69_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    // Port 1 on loopback: nothing listens there.
    std::fs::write(
        &cfg,
        "[redis]\nurl = \"redis://:hunter2@127.0.0.1:1/0\"\n[queues.work]\nhandler = \"noop\"\n",
    )
    .unwrap();
    for args in [
        vec!["enqueue", "work", "{}"],
        vec!["stats"],
        vec!["dead", "list", "work"],
        vec!["check"],
    ] {
        let mut all = vec!["--config", cfg.to_str().unwrap()];
        all.extend(args.iter());
        let started = Instant::now();
        let (code, _, err) = run_cli(&all);
        assert_eq!(code, 69, "{args:?}: {err}");
        assert!(
            err.contains("cannot reach Redis at redis://:***@127.0.0.1:1/0"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "the password leaked: {err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}

/// `dead list` without a queue: every configured queue's, newest first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_list_without_a_queue_lists_every_queues() {
    let s = setup("[queues.work]\nhandler = \"noop\"\n[queues.mail]\nhandler = \"noop\"\n");
    let mut conn = s.redis.conn().await;
    let entry = |id: &str, died: &str| {
        json!({"id": id, "payload": {}, "attempt": 2, "last_error": format!("{id} failed"), "died_at": died})
            .to_string()
    };
    let _: () = conn
        .rpush("{jobs:work}:dead", entry("w-1", "2026-01-01T00:00:02.000Z"))
        .await
        .unwrap();
    let _: () = conn
        .rpush("{jobs:mail}:dead", entry("m-1", "2026-01-01T00:00:03.000Z"))
        .await
        .unwrap();
    let (code, out, err) = s.cli(&["dead", "list"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("queue") && lines[0].contains("died_at"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("mail") && lines[1].contains("m-1 failed"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("work") && lines[2].contains("w-1"),
        "{out}"
    );
    assert_eq!(lines.len(), 3, "{out}");
    let (code, out, _) = s.cli(&["dead", "list", "--json", "--limit", "1"]);
    assert_eq!(code, 0);
    let job: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (job["queue"].as_str(), job["id"].as_str()),
        (Some("mail"), Some("m-1"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_list_retry_and_purge() {
    let s = setup("[queues.work]\nhandler = \"fault\"\n");
    let mut conn = s.redis.conn().await;
    let entry = |id: &str| {
        json!({"id": id, "payload": {"fail": "permanent"}, "attempt": 4, "last_error": "boom", "died_at": "2026-01-01T00:00:00.000Z"})
            .to_string()
    };
    // Newest first, as the daemon pushes them.
    let _: () = conn
        .rpush(
            "{jobs:work}:dead",
            &[entry("d-3"), entry("d-2"), entry("d-1")],
        )
        .await
        .unwrap();
    let raw = json!({"id": "d-raw", "payload": null, "attempt": 0, "raw": "{oops", "last_error": "invalid JSON"}).to_string();
    let _: () = conn.rpush("{jobs:work}:dead", &raw).await.unwrap();

    let (code, out, _) = s.cli(&["dead", "list", "work"]);
    assert_eq!(code, 0);
    for id in ["d-1", "d-2", "d-3", "d-raw"] {
        assert!(out.contains(id), "{out}");
    }
    assert!(out.contains("boom"));
    let (code, out, _) = s.cli(&["dead", "list", "work", "--json", "--limit", "2"]);
    assert_eq!(code, 0);
    let listed: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["id"], "d-3");

    let (code, out, _) = s.cli(&["dead", "retry", "work", "d-2"]);
    assert_eq!((code, out.trim()), (0, "d-2"));
    let queued: Value = serde_json::from_str(&lrange(&mut conn, Q).await[0]).unwrap();
    assert_eq!(queued["id"], "d-2");
    assert_eq!(
        queued["attempt"], 0,
        "a retried job gets a fresh set of attempts"
    );
    assert!(queued.get("died_at").is_none());
    assert_eq!(queued["last_error"], "boom", "the history is kept");
    let (code, _, err) = s.cli(&["dead", "retry", "work", "nosuch"]);
    assert_eq!(code, 65);
    assert!(err.contains("no dead job with id nosuch"), "{err}");

    let (code, _, _) = s.cli(&["dead", "purge", "work", "d-3"]);
    assert_eq!(code, 0);
    assert_eq!(llen(&mut conn, "{jobs:work}:dead").await, 2);
    let (code, _, err) = s.cli(&["dead", "retry", "work", "--all"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("moved 2"), "{err}");
    // Oldest first, behind what was already queued; a never-valid item goes
    // back as its original bytes.
    let queue = lrange(&mut conn, Q).await;
    assert_eq!(queue.len(), 3, "{queue:?}");
    assert_eq!(queue[1], "{oops");
    let d1: Value = serde_json::from_str(&queue[2]).unwrap();
    assert_eq!(d1["id"], "d-1");
    let _: () = conn
        .rpush("{jobs:work}:dead", &[entry("x"), entry("y")])
        .await
        .unwrap();
    let (code, _, err) = s.cli(&["dead", "purge", "work", "--all"]);
    assert_eq!(code, 0);
    assert!(err.contains("purged 2 dead jobs"), "{err}");
    assert_eq!(llen(&mut conn, "{jobs:work}:dead").await, 0);
    let _: () = conn.rpush("{jobs:work}:dead", entry("z")).await.unwrap();
    let (code, _, err) = s.cli(&["dead", "purge", "work", "--all"]);
    assert_eq!(code, 0);
    assert!(err.contains("purged 1 dead job of"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_json_matches_redis() {
    let s = setup(
        "[queues.work]\nhandler = \"noop\"\n[queues.other]\nhandler = \"noop\"\nkey = \"custom:list\"\n",
    );
    let mut conn = s.redis.conn().await;
    let _: () = conn.rpush(Q, &["1", "2", "3"]).await.unwrap();
    let _: () = conn.zadd("{jobs:work}:scheduled", "{}", 1).await.unwrap();
    let _: () = conn.rpush("{jobs:work}:dead", "{}").await.unwrap();
    let _: () = conn
        .rpush("{jobs:work}:inflight:n1", &["a", "b"])
        .await
        .unwrap();
    let _: () = conn.rpush("{jobs:work}:inflight:n2", "c").await.unwrap();
    let _: () = conn.sadd("{jobs:work}:nodes", &["n1", "n2"]).await.unwrap();
    let _: () = conn
        .hset_multiple("{jobs:work}:stats", &[("processed", 10), ("failed", 4)])
        .await
        .unwrap();
    let _: () = conn.rpush("custom:list", "1").await.unwrap();

    let (code, out, err) = s.cli(&["stats", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "one object per line");
    let snap: Value = serde_json::from_str(&out).unwrap();
    let work = snap["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "work")
        .unwrap();
    assert_eq!(work["key"], "jobs:work");
    assert_eq!(work["waiting"], 3);
    assert_eq!(work["scheduled"], 1);
    assert_eq!(work["dead"], 1);
    assert_eq!(work["in_flight"], 3);
    assert_eq!(work["processed"], 10);
    assert_eq!(work["failed"], 4);
    let other = snap["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "other")
        .unwrap();
    assert_eq!(
        (other["key"].as_str(), other["waiting"].as_u64()),
        (Some("custom:list"), Some(1))
    );

    let (code, out, _) = s.cli(&["stats"]);
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .any(|l| l.starts_with("work") && l.contains(" 3 ")),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_validates_the_config_and_reaches_redis() {
    let s = setup(
        "[queues.work]\nhandler = \"noop\"\n[queues.orders]\nhandler = \"publish\"\nchannel = \"orders\"\n",
    );
    let (code, out, err) = s.cli(&["check"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("config: ok (2 queues: orders, work)"), "{out}");
    assert!(out.contains("redis: ok"), "{out}");
    let bad = setup("[queues.work]\nhandler = \"nosuch\"\n");
    let (code, _, err) = bad.cli(&["check"]);
    assert_eq!(code, 78);
    assert!(err.contains("unknown handler \"nosuch\""), "{err}");
}
