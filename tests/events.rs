//! Lifecycle events on pub/sub and the replay stream, `monitor`, `stats`,
//! status records, and order events through the publish handler.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::io::BufRead as _;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures::StreamExt as _;
use redis::AsyncCommands as _;
use serde_json::{Value, json};

const Q: &str = "jobs:work";
const WAIT: Duration = Duration::from_secs(20);
const CHANNEL: &str = "conveyor:events";

/// Everything published on a channel, as it arrives.
#[derive(Clone, Default)]
struct Heard(Arc<Mutex<Vec<String>>>);

impl Heard {
    async fn listen(redis: &Redis, channel: &str) -> Self {
        let heard = Self::default();
        let mut sub = redis.client().get_async_pubsub().await.unwrap();
        sub.subscribe(channel).await.unwrap();
        let sink = heard.clone();
        tokio::spawn(async move {
            let mut messages = sub.into_on_message();
            while let Some(m) = messages.next().await {
                sink.0
                    .lock()
                    .unwrap()
                    .push(m.get_payload::<String>().unwrap());
            }
        });
        heard
    }

    fn events(&self) -> Vec<Value> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|m| serde_json::from_str(m).unwrap())
            .collect()
    }

    fn of_job(&self, id: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["id"] == id)
            .collect()
    }

    fn types_of(&self, id: &str) -> Vec<String> {
        self.of_job(id)
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_owned())
            .collect()
    }

    async fn wait_for(&self, what: &str, check: impl Fn(&[Value]) -> bool) {
        wait_until(what, WAIT, || {
            let ok = check(&self.events());
            async move { ok }
        })
        .await;
    }
}

/// Stops the daemon; every event of its node heard, up to node.stopped.
async fn stop_and_hear_out(daemon: TestDaemon, heard: &Heard) -> Vec<Value> {
    let node = daemon.node.id.clone();
    daemon.stop().await.unwrap();
    heard
        .wait_for("node.stopped", |e| {
            e.iter().any(|e| e["type"] == "node.stopped")
        })
        .await;
    heard
        .events()
        .into_iter()
        .filter(|e| e["node"] == node.as_str())
        .collect()
}

/// Waits until the status record at `key` is in `state`.
async fn wait_for_state(conn: &redis::aio::MultiplexedConnection, key: &str, state: &str) {
    wait_until(state, WAIT, || {
        let mut c = conn.clone();
        async move {
            c.hget::<_, _, Option<String>>(key, "state")
                .await
                .unwrap()
                .as_deref()
                == Some(state)
        }
    })
    .await;
}

fn queue(extra: &str) -> String {
    format!(
        "[queues.work]\nhandler = \"fault\"\nbackoff = {{ base = \"50ms\", max = \"100ms\" }}\n{extra}\n"
    )
}

async fn push(redis: &Redis, id: &str, payload: Value) {
    let mut conn = redis.conn().await;
    let env = json!({"id": id, "payload": payload, "attempt": 0}).to_string();
    let _: () = conn.rpush(Q, env).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_seen_started_then_succeeded_with_the_specified_fields_and_no_payload() {
    let redis = Redis::start();
    let heard = Heard::listen(&redis, CHANNEL).await;
    let daemon = TestDaemon::start(config(&redis, &queue("")), builtin());
    push(&redis, "ok-1", json!({"secret_marker": "do-not-publish"})).await;
    heard
        .wait_for("started and succeeded", |e| {
            e.iter().any(|e| e["type"] == "job.succeeded")
        })
        .await;
    assert_eq!(heard.types_of("ok-1"), ["job.started", "job.succeeded"]);
    let done = &heard.of_job("ok-1")[1];
    assert_eq!(done["queue"], "work");
    assert_eq!(done["attempt"], 1);
    assert_eq!(done["node"], daemon.node.id.as_str());
    assert!(done["duration_ms"].is_u64());
    let at = done["at"].as_str().unwrap();
    assert!(
        at.len() == 24 && at.ends_with('Z') && at.as_bytes()[19] == b'.',
        "RFC 3339 with ms: {at}"
    );
    let keys: Vec<&str> = done
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for k in &keys {
        assert!(
            [
                "type",
                "queue",
                "id",
                "attempt",
                "node",
                "at",
                "seq",
                "duration_ms"
            ]
            .contains(k),
            "unexpected field {k}"
        );
    }
    let mine = stop_and_hear_out(daemon, &heard).await;
    // seq grows by one per event of the node, from node.started to node.stopped.
    let seqs: Vec<u64> = mine.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "{mine:?}"
    );
    assert_eq!(mine.first().unwrap()["type"], "node.started");
    assert_eq!(mine[mine.len() - 2]["type"], "node.stopping");
    assert!(
        !heard
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|m| m.contains("do-not-publish")),
        "a payload leaked into an event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_with_retry_at_then_succeeded() {
    let redis = Redis::start();
    let heard = Heard::listen(&redis, CHANNEL).await;
    let daemon = TestDaemon::start(config(&redis, &queue("")), builtin());
    push(
        &redis,
        "flaky",
        json!({"fail": "transient", "until_attempt": 2}),
    )
    .await;
    heard
        .wait_for("the retry succeeds", |e| {
            e.iter().any(|e| e["type"] == "job.succeeded")
        })
        .await;
    assert_eq!(
        heard.types_of("flaky"),
        ["job.started", "job.failed", "job.started", "job.succeeded"]
    );
    let failed = &heard.of_job("flaky")[1];
    assert_eq!(failed["attempt"], 1);
    assert_eq!(failed["error"], "fault: transient failure");
    assert!(failed["retry_at"].as_str().unwrap().ends_with('Z'));
    assert!(failed["duration_ms"].is_u64());
    assert_eq!(heard.of_job("flaky")[3]["attempt"], 2);
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_with_its_error() {
    let redis = Redis::start();
    let heard = Heard::listen(&redis, CHANNEL).await;
    let daemon = TestDaemon::start(config(&redis, &queue("")), builtin());
    push(&redis, "doomed", json!({"fail": "permanent"})).await;
    let mut conn = redis.conn().await;
    let _: () = conn.rpush(Q, "{broken").await.unwrap();
    heard
        .wait_for("two deaths", |e| {
            e.iter().filter(|e| e["type"] == "job.dead").count() == 2
        })
        .await;
    assert_eq!(
        heard.types_of("doomed"),
        ["job.started", "job.failed", "job.dead"]
    );
    let dead = &heard.of_job("doomed")[2];
    assert_eq!(
        (dead["error"].as_str(), dead["reason"].as_str()),
        (Some("fault: permanent failure"), Some("permanent"))
    );
    let malformed = heard
        .events()
        .into_iter()
        .find(|e| e["reason"] == "malformed")
        .unwrap();
    assert!(
        malformed["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid JSON")
    );
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovered_after_a_dead_node() {
    let redis = Redis::start();
    let mut conn = redis.conn().await;
    let env = json!({"id": "lost-1", "payload": {}, "attempt": 0}).to_string();
    let _: () = conn.rpush("{jobs:work}:inflight:ghost", env).await.unwrap();
    let _: () = conn.sadd("{jobs:work}:nodes", "ghost").await.unwrap();
    let heard = Heard::listen(&redis, CHANNEL).await;
    let daemon = TestDaemon::start(config(&redis, &queue("")), builtin());
    heard
        .wait_for("the recovered job succeeds", |e| {
            e.iter().any(|e| e["type"] == "job.succeeded")
        })
        .await;
    assert_eq!(
        heard.types_of("lost-1"),
        ["job.recovered", "job.started", "job.succeeded"]
    );
    let recovered = &heard.of_job("lost-1")[0];
    assert_eq!(recovered["reason"], "crash");
    assert_eq!(
        recovered["node"],
        daemon.node.id.as_str(),
        "published by the node that recovered it"
    );
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_off_publishes_nothing_for_that_queue_and_outcomes_skips_started() {
    let redis = Redis::start();
    let heard = Heard::listen(&redis, CHANNEL).await;
    let daemon = TestDaemon::start(
        config(
            &redis,
            "[queues.quiet]\nhandler = \"noop\"\nevents = \"off\"\n\
             [queues.brief]\nhandler = \"noop\"\nevents = \"outcomes\"\n\
             [queues.loud]\nhandler = \"noop\"\n",
        ),
        builtin(),
    );
    let mut conn = redis.conn().await;
    let _: () = conn.rpush("jobs:quiet", "1").await.unwrap();
    let _: () = conn.rpush("jobs:brief", "2").await.unwrap();
    let _: () = conn.rpush("jobs:loud", "3").await.unwrap();
    wait_until("all three done", WAIT, || {
        let mut c = conn.clone();
        async move {
            stat(&mut c, "jobs:quiet", "processed").await == 1
                && stat(&mut c, "jobs:brief", "processed").await == 1
                && stat(&mut c, "jobs:loud", "processed").await == 1
        }
    })
    .await;
    heard
        .wait_for("loud and brief outcomes", |e| {
            e.iter().filter(|e| e["type"] == "job.succeeded").count() == 2
        })
        .await;
    daemon.stop().await.unwrap();
    heard
        .wait_for("node.stopped", |e| {
            e.iter().any(|e| e["type"] == "node.stopped")
        })
        .await;
    let by_queue = |q: &str| -> Vec<String> {
        heard
            .events()
            .iter()
            .filter(|e| e["queue"] == q)
            .map(|e| e["type"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(by_queue("quiet").is_empty(), "{:?}", by_queue("quiet"));
    assert_eq!(by_queue("brief"), ["job.succeeded"]);
    assert_eq!(by_queue("loud"), ["job.started", "job.succeeded"]);
}

fn monitor(cfg: &std::path::Path, extra: &[&str]) -> (KillOnDrop, Arc<Mutex<Vec<String>>>, Logs) {
    let mut cmd = conveyor();
    cmd.args(["--config", cfg.to_str().unwrap(), "monitor"])
        .args(extra)
        .stdout(Stdio::piped());
    let (mut child, logs) = spawn_logged(cmd);
    let lines = Arc::new(Mutex::new(Vec::new()));
    let stdout = child.stdout.take().unwrap();
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            match line {
                Ok(l) => sink.lock().unwrap().push(l),
                Err(_) => break,
            }
        }
    });
    (child, lines, logs)
}

/// Waits until a monitor has printed at least `n` lines.
async fn printed(lines: &Mutex<Vec<String>>, what: &str, n: usize) {
    wait_until(what, WAIT, || {
        let printed = lines.lock().unwrap().len();
        async move { printed >= n }
    })
    .await;
}

async fn subscribers(redis: &Redis) -> u64 {
    let mut conn = redis.conn().await;
    let counts: Vec<(String, u64)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(CHANNEL)
        .query_async(&mut conn)
        .await
        .unwrap();
    counts[0].1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_json_prints_exactly_what_was_published() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), &redis, &queue(""));
    let heard = Heard::listen(&redis, CHANNEL).await;
    let (mut child, lines, _logs) = monitor(&cfg, &["--json"]);
    wait_until("monitor subscribed", WAIT, || async {
        subscribers(&redis).await == 2
    })
    .await;
    let daemon = TestDaemon::start(config(&redis, &queue("")), builtin());
    push(&redis, "m-1", json!({})).await;
    push(&redis, "m-2", json!({"fail": "permanent"})).await;
    heard
        .wait_for("both outcomes", |e| {
            e.iter().any(|e| e["type"] == "job.succeeded")
                && e.iter().any(|e| e["type"] == "job.dead")
        })
        .await;
    let published = heard.0.lock().unwrap().clone();
    printed(&lines, "monitor printed them all", published.len()).await;
    assert_eq!(
        *lines.lock().unwrap(),
        published,
        "monitor --json prints each event as published"
    );
    signal(&child, 2);
    assert_eq!(wait_exit(&mut child, WAIT), Some(0), "Ctrl-C exits cleanly");
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_warns_about_a_gap_and_filters() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), &redis, &queue(""));
    let (mut child, lines, logs) = monitor(&cfg, &["--queue", "work", "--type", "job.*"]);
    wait_until("monitor subscribed", WAIT, || async {
        subscribers(&redis).await == 1
    })
    .await;
    let mut conn = redis.conn().await;
    let event = |seq: u64, kind: &str, queue: &str| {
        json!({"type": kind, "queue": queue, "id": format!("g{seq}"), "attempt": 1, "node": "n9",
               "at": "2026-11-24T10:00:00.000Z", "seq": seq, "duration_ms": 3})
        .to_string()
    };
    for (seq, kind, queue) in [
        (1, "job.started", "work"),
        (2, "job.succeeded", "work"),
        (5, "job.succeeded", "other"),
        (6, "node.stopping", "work"),
    ] {
        let _: () = conn
            .publish(CHANNEL, event(seq, kind, queue))
            .await
            .unwrap();
    }
    wait_until("the gap is reported", WAIT, || {
        let logs = logs.clone();
        async move { logs.contains("missed 2 event(s) from node n9 (seq 3 to 4)") }
    })
    .await;
    wait_until("two lines printed", WAIT, || {
        let n = lines.lock().unwrap().len();
        async move { n == 2 }
    })
    .await;
    let printed = lines.lock().unwrap().clone();
    assert!(
        printed[0].contains("job.started") && printed[0].contains("g1"),
        "{printed:?}"
    );
    assert!(
        printed[1].contains("job.succeeded") && printed[1].contains("3ms"),
        "{printed:?}"
    );
    assert!(
        !printed.iter().any(|l| l.contains('\u{1b}')),
        "no colours when not a terminal"
    );
    signal(&child, 15);
    assert_eq!(wait_exit(&mut child, WAIT), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_since_replays_from_the_stream() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), &redis, &queue(""));
    let daemon = TestDaemon::start(config(&redis, &queue("")), builtin());
    push(&redis, "past-1", json!({})).await;
    let mut conn = redis.conn().await;
    // Each stream entry holds events of one write as the lines of one field
    // `events`, each line ending in a newline; in order, they are the events
    // published.
    type Entries = Vec<(String, Vec<(String, String)>)>;
    let events_of = |entries: &[(String, Vec<(String, String)>)]| -> Vec<String> {
        entries
            .iter()
            .flat_map(|(id, fields)| {
                assert!(
                    fields.len() == 1 && fields[0].0 == "events" && fields[0].1.ends_with('\n'),
                    "entry {id}: {fields:?}"
                );
                fields[0].1.lines().map(str::to_owned)
            })
            .collect()
    };
    wait_until("the job is done and its event stored", WAIT, || {
        let mut c = conn.clone();
        async move {
            let entries: Entries = redis::cmd("XRANGE")
                .arg(CHANNEL)
                .arg("-")
                .arg("+")
                .query_async(&mut c)
                .await
                .unwrap();
            entries
                .iter()
                .flat_map(|(_, f)| f.iter())
                .any(|(_, v)| v.contains("job.succeeded"))
        }
    })
    .await;
    let stored: Entries = redis::cmd("XRANGE")
        .arg(CHANNEL)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        stored.len() >= 2,
        "node.started and the job's events were written apart: {stored:?}"
    );
    let expected = events_of(&stored);
    let (mut child, lines, logs) = monitor(&cfg, &["--json", "--since", "10m"]);
    let deadline = std::time::Instant::now() + WAIT;
    while lines.lock().unwrap().len() < expected.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "replayed {:?}\nexpected {expected:?}\nmonitor said {:?}",
            lines.lock().unwrap(),
            logs.lines()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(lines.lock().unwrap()[..expected.len()], expected[..]);
    signal(&child, 2);
    assert_eq!(wait_exit(&mut child, WAIT), Some(0));

    // From a stream id: only what came after that entry.
    let first_id = &stored[0].0;
    let after_first = events_of(&stored[1..]);
    let (mut child, lines, _logs) = monitor(&cfg, &["--json", "--since", first_id]);
    printed(&lines, "replayed after the id", after_first.len()).await;
    assert_eq!(lines.lock().unwrap()[..after_first.len()], after_first[..]);
    signal(&child, 2);
    assert_eq!(wait_exit(&mut child, WAIT), Some(0));
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_enqueued_by_the_cli_are_replayed_plain_and_unique() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), &redis, &queue(""));
    let enqueue = |extra: &[&str]| {
        let mut args = vec!["--config", cfg.to_str().unwrap(), "enqueue", "work", "{}"];
        args.extend_from_slice(extra);
        let (code, id, err) = run_cli(&args);
        assert_eq!(code, 0, "{err}");
        id.trim().to_owned()
    };
    // A plain job's event is written by a pipeline, a unique job's by its
    // script: both as lines of an entry's field `events`.
    let ids = [enqueue(&[]), enqueue(&["--unique-for", "1h"])];
    let (mut child, lines, logs) = monitor(&cfg, &["--json", "--since", "10m"]);
    printed(&lines, "both replayed", 2).await;
    let replayed: Vec<Value> = lines
        .lock()
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (event, id) in replayed.iter().zip(&ids) {
        assert_eq!(
            (event["type"].as_str(), event["id"].as_str()),
            (Some("job.enqueued"), Some(id.as_str())),
            "{replayed:?}\n{}",
            logs.lines().join("\n")
        );
    }
    signal(&child, 2);
    assert_eq!(wait_exit(&mut child, WAIT), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_json_matches_redis_after_a_mixed_run() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let work = queue("max_attempts = 2\nconcurrency = 1");
    let cfg = config_file(dir.path(), &redis, &work);
    let daemon = TestDaemon::start(config(&redis, &work), builtin());
    for i in 0..5 {
        push(&redis, &format!("ok-{i}"), json!({})).await;
    }
    push(
        &redis,
        "retry-ok",
        json!({"fail": "transient", "until_attempt": 2}),
    )
    .await;
    push(&redis, "dies", json!({"fail": "transient"})).await;
    let mut conn = redis.conn().await;
    wait_until("nine runs", WAIT, || {
        let mut c = conn.clone();
        async move { stat(&mut c, Q, "processed").await == 9 }
    })
    .await;
    // The one slot busy, one job waiting behind it, one scheduled far out.
    push(&redis, "slow", json!({"sleep_ms": 60000})).await;
    wait_until("the slow job runs", WAIT, || {
        let mut c = conn.clone();
        async move { in_flight(&mut c, Q).await == 1 }
    })
    .await;
    let _: () = conn
        .rpush(
            Q,
            json!({"id": "w", "payload": {}, "attempt": 0, "created_at": common::now_rfc3339()})
                .to_string(),
        )
        .await
        .unwrap();
    let _: () = conn
        .zadd("{jobs:work}:scheduled", "{}", common::now_ms() + 3_600_000)
        .await
        .unwrap();
    // A beat publishes the node's rate; wait for one that counted the runs.
    wait_until("a heartbeat with the rate", WAIT, || {
        let mut c = conn.clone();
        let node = format!("conveyor:node:{}", daemon.node.id);
        async move {
            let rate: Option<u64> = c.hget(&node, "rate_1m:work").await.unwrap();
            let busy: Option<u64> = c.hget(&node, "busy").await.unwrap();
            rate == Some(9) && busy == Some(1)
        }
    })
    .await;
    let (code, out, err) = run_cli(&["--config", cfg.to_str().unwrap(), "stats", "--json"]);
    assert_eq!(code, 0, "{err}");
    let snap: Value = serde_json::from_str(&out).unwrap();
    let q = &snap["queues"][0];
    assert_eq!(q["name"], "work");
    // 5 ok + retry-ok twice + dies twice = 9 runs, 3 of them failed.
    assert_eq!(q["processed"], 9);
    assert_eq!(q["failed"], 3);
    assert_eq!(q["retried"], 2);
    assert_eq!(q["died"], 1);
    assert_eq!(
        (q["dead"].as_u64(), q["in_flight"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(
        (q["waiting"].as_u64(), q["scheduled"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(q["dead"], llen(&mut conn, "{jobs:work}:dead").await);
    assert_eq!(q["rate_1m"], 9);
    assert!(q["oldest_age_s"].as_f64().unwrap() < 60.0);
    let node = &snap["nodes"][0];
    assert_eq!(node["id"], daemon.node.id.as_str());
    assert_eq!(node["pid"], std::process::id().to_string());
    assert_eq!(node["busy"], 1, "the slow job runs");
    assert_eq!(node["events_dropped"], 0);
    let (code, out, _) = run_cli(&["--config", cfg.to_str().unwrap(), "stats"]);
    assert_eq!(code, 0);
    assert!(out.contains(&daemon.node.id), "{out}");
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_record_follows_a_job_and_expires() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let tracked = "[queues.work]\nhandler = \"fault\"\ntrack = true\ntrack_ttl = \"1s\"\n";
    let cfg = config_file(dir.path(), &redis, tracked);
    let cli = |args: &[&str]| {
        let mut all = vec!["--config", cfg.to_str().unwrap()];
        all.extend_from_slice(args);
        run_cli(&all)
    };
    let (code, id, _) = cli(&["enqueue", "work", r#"{"sleep_ms": 300}"#]);
    assert_eq!(code, 0);
    let id = id.trim().to_owned();
    let (code, out, _) = cli(&["status", &id, "--json"]);
    assert_eq!(code, 0);
    let record: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (record["state"].as_str(), record["queue"].as_str()),
        (Some("waiting"), Some("work"))
    );

    let daemon = TestDaemon::start(config(&redis, tracked), builtin());
    let mut conn = redis.conn().await;
    let key = format!("conveyor:job:{id}");
    wait_for_state(&conn, &key, "running").await;
    wait_for_state(&conn, &key, "succeeded").await;
    let (code, out, _) = cli(&["status", &id]);
    assert_eq!(code, 0);
    assert!(
        out.contains("succeeded") && out.contains("finished_at") && out.contains(&daemon.node.id),
        "{out}"
    );
    let ttl: i64 = conn.pttl(&key).await.unwrap();
    assert!(ttl > 0 && ttl <= 1000, "kept for track_ttl: {ttl}");
    wait_until("the record expires", WAIT, || {
        let mut c = conn.clone();
        let key = key.clone();
        async move { !c.exists::<_, bool>(&key).await.unwrap() }
    })
    .await;
    let (code, _, err) = cli(&["status", &id]);
    assert_eq!(code, 65);
    assert!(err.contains("no status record"), "{err}");
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_enqueue_announces_and_order_events_reach_a_plain_subscriber() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let orders = "[queues.orders]\nhandler = \"publish\"\nchannel = \"orders\"\n";
    let cfg = config_file(dir.path(), &redis, orders);
    let lifecycle = Heard::listen(&redis, CHANNEL).await;
    let plain = Heard::listen(&redis, "orders").await;
    let daemon = TestDaemon::start(config(&redis, orders), builtin());
    let order = r#"{"type":"order.created","order_id":101}"#;
    let (code, id, err) = run_cli(&[
        "--config",
        cfg.to_str().unwrap(),
        "enqueue",
        "orders",
        order,
    ]);
    assert_eq!(code, 0, "{err}");
    let id = id.trim();
    plain.wait_for("the order event", |e| !e.is_empty()).await;
    assert_eq!(*plain.0.lock().unwrap(), [order], "exactly as published");
    lifecycle
        .wait_for("its lifecycle", |e| {
            e.iter().any(|e| e["type"] == "job.succeeded")
        })
        .await;
    assert_eq!(
        lifecycle.types_of(id),
        ["job.enqueued", "job.started", "job.succeeded"]
    );
    let enqueued = &lifecycle.of_job(id)[0];
    assert!(enqueued["node"].as_str().unwrap().starts_with("cli-"));
    assert_eq!(
        (enqueued["seq"].as_u64(), enqueued["attempt"].as_u64()),
        (Some(1), Some(0))
    );
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_arrives_later_misses_nothing_after_it_subscribed() {
    let redis = Redis::start();
    let daemon = TestDaemon::start(config(&redis, &queue("")), builtin());
    // With nobody listening the daemon stops sending PUBLISH commands...
    push(&redis, "unheard", json!({})).await;
    let conn = redis.conn().await;
    wait_until("the first job is done", WAIT, || {
        let mut c = conn.clone();
        async move { stat(&mut c, Q, "processed").await == 1 }
    })
    .await;
    // ...but the replay stream has its events all the same (written in the
    // same pipeline as the outcome, just after it).
    wait_until("the replay stream has the job's events", WAIT, || {
        let mut c = conn.clone();
        async move {
            stream_entries(&mut c, CHANNEL)
                .await
                .iter()
                .flat_map(|(_, f)| f.iter().map(|(_, v)| v.clone()))
                .any(|e| e.contains("unheard") && e.contains("job.succeeded"))
        }
    })
    .await;
    // and a subscriber that arrives now sees the very next event.
    let heard = Heard::listen(&redis, CHANNEL).await;
    push(&redis, "heard", json!({})).await;
    heard
        .wait_for("the second job's events", |e| {
            e.iter().any(|e| e["type"] == "job.succeeded")
        })
        .await;
    assert_eq!(heard.types_of("heard"), ["job.started", "job.succeeded"]);
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_arriving_under_load_sees_seq_in_order_without_gaps() {
    const JOBS: usize = 4_000;
    let redis = Redis::start();
    let daemon = TestDaemon::start(
        config(&redis, &queue("concurrency = 50\nevents = \"all\"")),
        builtin(),
    );
    let mut conn = redis.conn().await;
    let jobs: Vec<String> = (0..JOBS)
        .map(|i| json!({"id": format!("load-{i}"), "payload": {}, "attempt": 0}).to_string())
        .collect();
    let _: () = conn.rpush(Q, jobs).await.unwrap();
    // Nobody listens at first, so the daemon publishes nothing; a
    // subscriber comes in mid-run.
    wait_until("a tenth of the jobs done", WAIT, || {
        let mut c = conn.clone();
        async move { stat(&mut c, Q, "processed").await >= JOBS as u64 / 10 }
    })
    .await;
    let heard = Heard::listen(&redis, CHANNEL).await;
    wait_until("every job done", WAIT, || {
        let mut c = conn.clone();
        async move { stat(&mut c, Q, "processed").await == JOBS as u64 }
    })
    .await;
    let mine = stop_and_hear_out(daemon, &heard).await;
    let seqs: Vec<u64> = mine.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    // seq in order, none missing, from the first event heard.
    if let Some(i) = (1..seqs.len()).find(|&i| seqs[i] != seqs[i - 1] + 1) {
        panic!(
            "seq out of order or missing after {} events: ...{:?}...",
            i,
            &seqs[i.saturating_sub(3)..(i + 3).min(seqs.len())]
        );
    }
    assert!(
        mine.iter().filter(|e| e["type"] == "job.succeeded").count() > JOBS / 2,
        "most of the run was heard: {} events",
        mine.len()
    );
    // A job's start is never published after its outcome.
    let mut finished = std::collections::HashSet::new();
    for e in &mine {
        let id = e["id"].as_str().unwrap_or_default();
        match e["type"].as_str().unwrap() {
            "job.started" => assert!(!finished.contains(id), "{id} started after it succeeded"),
            "job.succeeded" => assert!(finished.insert(id.to_owned()), "{id} succeeded twice"),
            _ => {}
        }
    }
}
