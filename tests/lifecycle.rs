//! A job's life in one daemon: success, retry, dead letter, bad input,
//! panics and timeouts. Each test owns a private redis-server.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use conveyor::Job;
use conveyor::handlers::{Handler, HandlerError, Registry};
use futures::StreamExt as _;
use redis::AsyncCommands as _;

const Q: &str = "jobs:work";
const WAIT: Duration = Duration::from_secs(15);

fn fault_queue(extra: &str) -> String {
    format!(
        "[queues.work]\nhandler = \"fault\"\nconcurrency = 4\nbackoff = {{ base = \"50ms\", max = \"200ms\" }}\n{extra}\n"
    )
}

/// Records what it saw.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<(String, u32, String)>>>);

#[async_trait]
impl Handler for Recorder {
    async fn handle(&self, job: &Job) -> Result<(), HandlerError> {
        self.0.lock().expect("recorder lock").push((
            job.id().to_owned(),
            job.attempt(),
            job.payload().get().to_owned(),
        ));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_and_envelope_jobs_succeed() {
    let redis = Redis::start();
    let mut conn = redis.conn().await;
    let raw = r#"{"to": "a@example.com",   "subject":"Hi"}"#;
    let envelope = r#"{"id":"env-1","payload":{"n":1},"attempt":0,"trace":"t-9"}"#;
    let _: () = conn.rpush(Q, &[raw, envelope, "42"]).await.unwrap();

    let recorder = Recorder::default();
    let mut registry = Registry::builtin();
    registry.register_handler("record", recorder.clone());
    // One slot, so the three run in queue order.
    let daemon = TestDaemon::start(
        config(
            &redis,
            "[queues.work]\nhandler = \"record\"\nconcurrency = 1\n",
        ),
        registry,
    );
    wait_until("3 jobs processed", WAIT, || {
        let mut c = conn.clone();
        async move { stat(&mut c, Q, "processed").await == 3 }
    })
    .await;

    let seen = recorder.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    assert_eq!(
        seen[0].2, raw,
        "a raw payload reaches the handler byte for byte"
    );
    assert_eq!(seen[0].1, 1, "first attempt");
    assert_eq!(seen[0].0.len(), 32, "a raw payload gets an id");
    assert_eq!(
        (seen[1].0.as_str(), seen[1].2.as_str()),
        ("env-1", r#"{"n":1}"#)
    );
    assert_eq!(seen[2].2, "42");
    assert_eq!(llen(&mut conn, Q).await, 0);
    assert_eq!(in_flight(&mut conn, Q).await, 0);
    assert_eq!(stat(&mut conn, Q, "failed").await, 0);
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failure_retries_then_succeeds() {
    let redis = Redis::start();
    let mut conn = redis.conn().await;
    let _: () = conn
        .rpush(Q, r#"{"fail":"transient","until_attempt":3}"#)
        .await
        .unwrap();
    let daemon = TestDaemon::start(config(&redis, &fault_queue("")), builtin());
    wait_until("the third attempt succeeds", WAIT, || {
        let mut c = conn.clone();
        async move { stat(&mut c, Q, "processed").await == 3 }
    })
    .await;
    assert_eq!(stat(&mut conn, Q, "failed").await, 2);
    assert_eq!(stat(&mut conn, Q, "retried").await, 2);
    assert_eq!(stat(&mut conn, Q, "dead").await, 0);
    assert_eq!(zcard(&mut conn, "{jobs:work}:scheduled").await, 0);
    assert_eq!(llen(&mut conn, Q).await, 0);
    assert_eq!(in_flight(&mut conn, Q).await, 0);
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_dead_letter() {
    let redis = Redis::start();
    let mut conn = redis.conn().await;
    let _: () = conn.rpush(Q, r#"{"fail":"transient"}"#).await.unwrap();
    let daemon = TestDaemon::start(config(&redis, &fault_queue("max_attempts = 3")), builtin());
    wait_until("the job is dead", WAIT, || {
        let mut c = conn.clone();
        async move { llen(&mut c, "{jobs:work}:dead").await == 1 }
    })
    .await;
    let dead = dead(&mut conn, Q).await;
    assert_eq!(dead[0]["attempt"], 3);
    assert_eq!(dead[0]["payload"], serde_json::json!({"fail": "transient"}));
    let error = dead[0]["last_error"].as_str().unwrap();
    assert!(
        error.contains("transient failure") && error.contains("attempt 3 of 3"),
        "{error}"
    );
    assert!(dead[0]["died_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(stat(&mut conn, Q, "processed").await, 3);
    assert_eq!(stat(&mut conn, Q, "failed").await, 3);
    assert_eq!(stat(&mut conn, Q, "retried").await, 2);
    assert_eq!(in_flight(&mut conn, Q).await, 0);
    assert_eq!(zcard(&mut conn, "{jobs:work}:scheduled").await, 0);
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failure_dead_letters_at_once() {
    let redis = Redis::start();
    let mut conn = redis.conn().await;
    let _: () = conn
        .rpush(
            Q,
            r#"{"id":"p-1","payload":{"fail":"permanent"},"attempt":0}"#,
        )
        .await
        .unwrap();
    let daemon = TestDaemon::start(config(&redis, &fault_queue("")), builtin());
    wait_until("the job is dead", WAIT, || {
        let mut c = conn.clone();
        async move { llen(&mut c, "{jobs:work}:dead").await == 1 }
    })
    .await;
    let dead = dead(&mut conn, Q).await;
    assert_eq!(dead[0]["id"], "p-1");
    assert_eq!(dead[0]["attempt"], 1);
    assert_eq!(dead[0]["last_error"], "fault: permanent failure");
    assert_eq!(stat(&mut conn, Q, "retried").await, 0);
    assert_eq!(stat(&mut conn, Q, "processed").await, 1);
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_items_are_dead_lettered_and_the_worker_goes_on() {
    let redis = Redis::start();
    let mut conn = redis.conn().await;
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(300));
    let items: Vec<Vec<u8>> = vec![
        b"{not json".to_vec(),
        b"\xff\xfe\x00".to_vec(),
        big.clone().into_bytes(),
        br#"{"id":"e-1","payload":{},"attempt":-1}"#.to_vec(),
        br#"{"id":"e-2","payload":{},"attempt":3,"max_attempts":3}"#.to_vec(),
        br#"{"ok":true}"#.to_vec(),
    ];
    let _: () = conn.rpush(Q, items).await.unwrap();
    let daemon = TestDaemon::start(
        config(&redis, &fault_queue("max_payload_bytes = 256")),
        builtin(),
    );
    wait_until("5 dead, 1 done", WAIT, || {
        let mut c = conn.clone();
        async move {
            llen(&mut c, "{jobs:work}:dead").await == 5 && stat(&mut c, Q, "processed").await == 6
        }
    })
    .await;
    let dead = dead(&mut conn, Q).await;
    let error_of = |raw: &str| -> String {
        let entry = dead
            .iter()
            .find(|d| d["raw"] == raw)
            .unwrap_or_else(|| panic!("no dead entry keeps {raw:?}: {dead:?}"));
        entry["last_error"].as_str().unwrap().to_owned()
    };
    // Nothing is lost: each bad item's bytes are kept beside the reason.
    assert!(error_of("{not json").starts_with("invalid JSON"));
    assert!(error_of(&big).contains("exceeds max_payload_bytes (256)"));
    assert!(error_of(r#"{"id":"e-1","payload":{},"attempt":-1}"#).contains("attempt must be"));
    let binary = dead
        .iter()
        .find(|d| d["raw_base64"] == "//4A")
        .expect("binary item kept as base64");
    assert!(binary["last_error"].as_str().unwrap().contains("not UTF-8"));
    let exhausted = dead.iter().find(|d| d["id"] == "e-2").expect("e-2 is dead");
    assert!(
        exhausted["last_error"]
            .as_str()
            .unwrap()
            .contains("no attempts left")
    );
    assert_eq!(stat(&mut conn, Q, "failed").await, 5);
    assert_eq!(in_flight(&mut conn, Q).await, 0);
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_or_a_timeout_fails_only_that_job() {
    let redis = Redis::start();
    let mut conn = redis.conn().await;
    let mut items = vec![
        r#"{"panic":true}"#.to_owned(),
        r#"{"sleep_ms":60000}"#.to_owned(),
    ];
    items.extend((0..20).map(|i| format!("{{\"n\":{i}}}")));
    let _: () = conn.rpush(Q, items).await.unwrap();
    let daemon = TestDaemon::start(
        config(
            &redis,
            &fault_queue("max_attempts = 1\ntimeout = \"300ms\""),
        ),
        builtin(),
    );
    wait_until("2 dead, 20 done", WAIT, || {
        let mut c = conn.clone();
        async move {
            llen(&mut c, "{jobs:work}:dead").await == 2 && stat(&mut c, Q, "processed").await == 22
        }
    })
    .await;
    let dead = dead(&mut conn, Q).await;
    let mut reasons: Vec<String> = dead
        .iter()
        .map(|d| d["last_error"].as_str().unwrap().to_owned())
        .collect();
    reasons.sort();
    assert!(
        reasons[0].starts_with("handler panicked: fault handler asked to panic"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].starts_with("timed out after 300ms"),
        "{reasons:?}"
    );
    // The daemon keeps serving: a later job still runs.
    let _: () = conn.rpush(Q, r#"{"after":true}"#).await.unwrap();
    wait_until("a later job runs", WAIT, || {
        let mut c = conn.clone();
        async move { stat(&mut c, Q, "processed").await == 23 }
    })
    .await;
    assert!(!daemon.is_finished());
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_forwards_the_payload_unchanged() {
    let redis = Redis::start();
    let mut sub = redis.client().get_async_pubsub().await.unwrap();
    sub.subscribe("orders").await.unwrap();
    let mut conn = redis.conn().await;
    let order = r#"{"type": "order.created", "order_id": 101}"#;
    let _: () = conn.rpush("jobs:orders", order).await.unwrap();
    let daemon = TestDaemon::start(
        config(
            &redis,
            "[queues.orders]\nhandler = \"publish\"\nchannel = \"orders\"\n",
        ),
        builtin(),
    );
    let msg = tokio::time::timeout(WAIT, sub.on_message().next())
        .await
        .expect("a message within the deadline")
        .expect("a message");
    assert_eq!(msg.get_payload::<String>().unwrap(), order);
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_handler_is_a_configuration_error() {
    let redis = Redis::start();
    let daemon = TestDaemon::start(
        config(&redis, "[queues.work]\nhandler = \"nosuch\"\n"),
        builtin(),
    );
    let err = daemon.stop().await.unwrap_err().to_string();
    assert!(
        err.contains("unknown handler \"nosuch\"") && err.contains("noop"),
        "{err}"
    );
}

/// Calls of each command since the last `CONFIG RESETSTAT`.
async fn command_calls(conn: &mut redis::aio::MultiplexedConnection) -> HashMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_taken_and_recorded_in_batches_and_an_empty_queue_is_waited_on() {
    const JOBS: u64 = 3_000;
    let redis = Redis::start();
    let mut conn = redis.conn().await;
    let items: Vec<String> = (0..JOBS).map(|n| format!(r#"{{"n":{n}}}"#)).collect();
    let _: () = conn.rpush(Q, &items).await.unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();
    let daemon = TestDaemon::start(
        config(
            &redis,
            "[queues.work]\nhandler = \"noop\"\nconcurrency = 50\n",
        ),
        builtin(),
    );
    wait_until("the backlog done", WAIT, || {
        let mut c = conn.clone();
        async move { stat(&mut c, Q, "processed").await == JOBS }
    })
    .await;
    let calls = command_calls(&mut conn).await;
    let scripts = calls.get("evalsha").copied().unwrap_or(0);
    // Each job is taken by a script call and recorded by one: a call per
    // job each would be 6,000; batches make it a few hundred (468 here in a
    // debug build). A quarter of the unbatched count leaves room for slow
    // and fast machines alike.
    assert!(
        scripts * 2 <= JOBS,
        "{scripts} script calls for {JOBS} jobs: {calls:?}"
    );
    assert!(
        calls.get("blmove").copied().unwrap_or(0) <= 2,
        "a queue with a backlog is not waited on: {calls:?}"
    );
    assert_eq!(in_flight(&mut conn, Q).await, 0);
    assert_eq!(stat(&mut conn, Q, "failed").await, 0);

    // Drained, the daemon waits on the queue; a job pushed now is taken by
    // that wait, not by a poll.
    wait_until("the daemon waiting in BLMOVE", WAIT, || {
        let mut c = conn.clone();
        async move {
            let clients: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query_async(&mut c)
                .await
                .unwrap();
            clients.lines().any(|l| {
                let blocked = l
                    .split(' ')
                    .any(|f| f.strip_prefix("flags=").is_some_and(|f| f.contains('b')));
                blocked && l.contains(" cmd=blmove ")
            })
        }
    })
    .await;
    let moved_by_take = |calls: &HashMap<String, u64>| calls.get("ltrim").copied();
    let before = moved_by_take(&command_calls(&mut conn).await);
    let _: () = conn.rpush(Q, r#"{"n":"late"}"#).await.unwrap();
    wait_until("the late job done", WAIT, || {
        let mut c = conn.clone();
        async move { stat(&mut c, Q, "processed").await == JOBS + 1 }
    })
    .await;
    // take.lua trims the queue whenever it moves a job, and nothing else
    // here does: the late job was moved by the one take that rides behind
    // the BLMOVE under way (queue.rs, `Fetcher`), which only waited.
    assert_eq!(
        moved_by_take(&command_calls(&mut conn).await),
        Some(before.unwrap_or(0) + 1)
    );
    assert_eq!(in_flight(&mut conn, Q).await, 0);
    daemon.stop().await.unwrap();
}
