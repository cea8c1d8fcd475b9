//! Crash recovery: dead nodes' in-flight jobs come back, poison jobs are
//! quarantined, a node that lost a job records no second outcome, and jobs
//! a failed fetch moved unseen are requeued.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::*;
use conveyor::Job;
use conveyor::handlers::{Handler, HandlerError, Registry};
use redis::AsyncCommands as _;
use tokio::sync::Notify;

const Q: &str = "jobs:work";
const WAIT: Duration = Duration::from_secs(20);

/// Records payloads in the order it runs them.
#[derive(Clone, Default)]
struct Order(Arc<std::sync::Mutex<Vec<String>>>);

#[async_trait]
impl Handler for Order {
    async fn handle(&self, job: &Job) -> Result<(), HandlerError> {
        self.0
            .lock()
            .expect("lock")
            .push(job.payload().get().to_owned());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_returns_a_dead_nodes_jobs_to_the_head_of_the_queue() {
    let redis = Redis::start();
    let mut conn = redis.conn().await;
    // A node that died holding three jobs, and one that is alive holding one.
    let _: () = conn
        .rpush("{jobs:work}:inflight:ghost", &["\"a\"", "\"b\"", "\"c\""])
        .await
        .unwrap();
    let _: () = conn
        .rpush("{jobs:work}:inflight:alive", "\"kept\"")
        .await
        .unwrap();
    let _: () = conn
        .sadd("{jobs:work}:nodes", &["ghost", "alive"])
        .await
        .unwrap();
    let _: () = conn.set_ex("conveyor:node:alive", "x", 600).await.unwrap();
    let _: () = conn.rpush(Q, "\"waiting\"").await.unwrap();

    let order = Order::default();
    let mut registry = Registry::builtin();
    registry.register_handler("order", order.clone());
    let daemon = TestDaemon::start(
        config(
            &redis,
            "[queues.work]\nhandler = \"order\"\nconcurrency = 1\n",
        ),
        registry,
    );
    wait_until("4 jobs processed", WAIT, || {
        let mut c = conn.clone();
        async move { stat(&mut c, Q, "processed").await == 4 }
    })
    .await;
    let seen = order.0.lock().expect("lock").clone();
    // Recovered jobs go back to the head, in their original order.
    assert_eq!(seen, ["\"a\"", "\"b\"", "\"c\"", "\"waiting\""]);
    assert_eq!(stat(&mut conn, Q, "recovered").await, 3);
    assert_eq!(llen(&mut conn, "{jobs:work}:inflight:ghost").await, 0);
    let nodes: Vec<String> = conn.smembers("{jobs:work}:nodes").await.unwrap();
    assert!(
        !nodes.contains(&"ghost".to_owned()),
        "a reaped node is forgotten: {nodes:?}"
    );
    // A live node's jobs are not touched.
    assert_eq!(
        lrange(&mut conn, "{jobs:work}:inflight:alive").await,
        ["\"kept\""]
    );
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_counts_deliveries_apart_from_attempts() {
    let redis = Redis::start();
    let mut conn = redis.conn().await;
    let envelope = r#"{"id":"j-1","payload":{"sleep_ms":1},"attempt":2,"deliveries":1}"#;
    let _: () = conn
        .rpush("{jobs:work}:inflight:ghost", envelope)
        .await
        .unwrap();
    let _: () = conn.sadd("{jobs:work}:nodes", "ghost").await.unwrap();
    // Hold the queue with a job that fails permanently, so the recovered
    // envelope can be inspected in the dead letter list.
    let daemon = TestDaemon::start(
        config(
            &redis,
            "[queues.work]\nhandler = \"fault\"\nmax_attempts = 3\n",
        ),
        builtin(),
    );
    wait_until("the recovered job is processed", WAIT, || {
        let mut c = conn.clone();
        async move { stat(&mut c, Q, "processed").await == 1 }
    })
    .await;
    assert_eq!(stat(&mut conn, Q, "recovered").await, 1);
    assert_eq!(stat(&mut conn, Q, "failed").await, 0);
    daemon.stop().await.unwrap();

    // Two earlier crashes: the third delivery is the last.
    let poison = r#"{"id":"j-2","payload":{},"attempt":0,"deliveries":2}"#;
    let _: () = conn
        .rpush("{jobs:work}:inflight:ghost2", poison)
        .await
        .unwrap();
    let _: () = conn.sadd("{jobs:work}:nodes", "ghost2").await.unwrap();
    let daemon = TestDaemon::start(
        config(&redis, "[queues.work]\nhandler = \"fault\"\n"),
        builtin(),
    );
    wait_until("the poison job is dead", WAIT, || {
        let mut c = conn.clone();
        async move { llen(&mut c, "{jobs:work}:dead").await == 1 }
    })
    .await;
    let dead = dead(&mut conn, Q).await;
    assert_eq!(dead[0]["id"], "j-2");
    assert_eq!(dead[0]["deliveries"], 3);
    assert_eq!(dead[0]["attempt"], 0, "crashes do not spend attempts");
    assert!(
        dead[0]["last_error"]
            .as_str()
            .unwrap()
            .starts_with("poison")
    );
    daemon.stop().await.unwrap();
}

/// The real binary, with a job that aborts the process every time it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_job_is_quarantined_after_three_deliveries() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(
        dir.path(),
        &redis,
        "[queues.work]\nhandler = \"fault\"\nconcurrency = 2\n",
    );
    let mut conn = redis.conn().await;
    let mut items = vec![r#"{"id":"poison","payload":{"abort":true},"attempt":0}"#.to_owned()];
    items.extend((0..20).map(|i| format!("{{\"n\":{i}}}")));
    let _: () = conn.rpush(Q, items).await.unwrap();

    let mut crashes = 0;
    let survivor = loop {
        let mut child = KillOnDrop(
            conveyor()
                .args(["run", "--config", cfg.to_str().unwrap()])
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + WAIT;
        let mut crashed = false;
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                crashed = true;
                break;
            }
            if llen(&mut conn, "{jobs:work}:dead").await == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !crashed {
            break child;
        }
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "a poisoned daemon dies abnormally: {status}"
        );
        crashes += 1;
        assert!(
            crashes <= 3,
            "the poison job was delivered more than 3 times"
        );
    };
    let mut survivor = survivor;
    assert_eq!(
        crashes, 3,
        "each delivery of the poison job crashed a daemon"
    );
    // The rest of the queue is unaffected: every other job completes, and
    // the jobs that shared the poison's crashes are not quarantined with it.
    wait_until("the other 20 jobs complete", WAIT, || {
        let mut c = conn.clone();
        async move {
            stat(&mut c, Q, "processed").await >= 20
                && llen(&mut c, Q).await == 0
                && in_flight(&mut c, Q).await == 0
        }
    })
    .await;
    let dead = dead(&mut conn, Q).await;
    assert_eq!(dead.len(), 1, "only the poison is dead: {dead:?}");
    assert_eq!(dead[0]["id"], "poison");
    assert_eq!(dead[0]["deliveries"], 3);
    signal(&survivor, 15);
    assert_eq!(wait_exit(&mut survivor, WAIT), Some(0));
}

/// Holds each job until released.
#[derive(Clone, Default)]
struct Gate {
    started: Arc<Notify>,
    release: Arc<Notify>,
}

#[async_trait]
impl Handler for Gate {
    async fn handle(&self, _job: &Job) -> Result<(), HandlerError> {
        self.started.notify_one();
        self.release.notified().await;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_job_was_taken_away_records_no_second_outcome() {
    let redis = Redis::start();
    let mut conn = redis.conn().await;
    let _: () = conn.rpush(Q, "\"only\"").await.unwrap();
    let gate = Gate::default();
    let mut registry = Registry::builtin();
    registry.register_handler("gate", gate.clone());
    let daemon = TestDaemon::start(
        config(&redis, "[queues.work]\nhandler = \"gate\"\n"),
        registry,
    );
    tokio::time::timeout(WAIT, gate.started.notified())
        .await
        .expect("the job starts");

    // A reaper hands the running job to another node.
    let ours = format!("{{jobs:work}}:inflight:{}", daemon.node.id);
    let moved: Option<String> = conn
        .lmove(
            &ours,
            "{jobs:work}:inflight:other",
            redis::Direction::Left,
            redis::Direction::Right,
        )
        .await
        .unwrap();
    assert_eq!(moved.as_deref(), Some("\"only\""));
    gate.release.notify_one();
    daemon.stop().await.unwrap();

    assert_eq!(
        stat(&mut conn, Q, "processed").await,
        0,
        "no outcome recorded here"
    );
    assert_eq!(
        lrange(&mut conn, "{jobs:work}:inflight:other").await,
        ["\"only\""]
    );
    assert_eq!(llen(&mut conn, Q).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_moved_by_a_fetch_whose_reply_was_lost_are_requeued() {
    let redis = Redis::start();
    let mut conn = redis.conn().await;
    let daemon = TestDaemon::start(
        config(&redis, "[queues.work]\nhandler = \"noop\"\n"),
        builtin(),
    );
    let ours = format!("{{jobs:work}}:inflight:{}", daemon.node.id);
    wait_until("the node is registered", WAIT, || {
        let mut c = conn.clone();
        let node = daemon.node.id.clone();
        async move {
            let nodes: Vec<String> = c.smembers("{jobs:work}:nodes").await.unwrap();
            nodes.contains(&node)
        }
    })
    .await;
    // What a BLMOVE whose reply never arrived leaves behind...
    let _: () = conn.rpush(&ours, "\"orphan\"").await.unwrap();
    // ...and the connection failure that lost the reply.
    let _: () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query_async(&mut redis.conn().await)
        .await
        .unwrap_or(());
    let mut conn = redis.conn().await;
    wait_until("the orphan is requeued and processed", WAIT, || {
        let mut c = conn.clone();
        async move { stat(&mut c, Q, "processed").await == 1 }
    })
    .await;
    assert_eq!(llen(&mut conn, &ours).await, 0);
    assert_eq!(llen(&mut conn, Q).await, 0);
    daemon.stop().await.unwrap();
}
