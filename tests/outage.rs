//! Redis going away: killed and restarted mid-run, absent at start-up,
//! stalled; and blocking pops that outlast redis-rs's default timeout.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::*;
use conveyor::Job;
use conveyor::handlers::{Handler, HandlerError, Registry};
use redis::AsyncCommands as _;

const Q: &str = "jobs:work";
const WAIT: Duration = Duration::from_secs(30);

/// Records each payload it completes (a set: a job may run twice).
#[derive(Clone, Default)]
struct Done(Arc<Mutex<HashSet<String>>>);

impl Done {
    fn count(&self) -> usize {
        self.0.lock().expect("lock").len()
    }
}

#[async_trait]
impl Handler for Done {
    async fn handle(&self, job: &Job) -> Result<(), HandlerError> {
        tokio::time::sleep(Duration::from_millis(5)).await;
        self.0
            .lock()
            .expect("lock")
            .insert(job.payload().get().to_owned());
        Ok(())
    }
}

fn done_registry(done: &Done) -> Registry {
    let mut registry = Registry::builtin();
    registry.register_handler("done", done.clone());
    registry
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_mid_run_nothing_stays_in_flight() {
    const JOBS: usize = 400;
    let mut redis = Redis::start_persistent();
    let mut conn = redis.conn().await;
    let items: Vec<String> = (0..JOBS).map(|i| format!("{{\"n\":{i}}}")).collect();
    let _: () = conn.rpush(Q, items).await.unwrap();
    let done = Done::default();
    let daemon = TestDaemon::start(
        config(
            &redis,
            "[queues.work]\nhandler = \"done\"\nconcurrency = 8\n",
        ),
        done_registry(&done),
    );
    wait_until("a quarter of the jobs done", WAIT, || {
        let done = done.clone();
        async move { done.count() >= JOBS / 4 }
    })
    .await;
    redis.kill();
    // The outage itself: long enough for every component to notice.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.restart();
    let mut conn = redis.conn().await;
    wait_until("every job done, nothing waiting or in flight", WAIT, || {
        let mut c = conn.clone();
        let done = done.clone();
        async move {
            done.count() == JOBS && llen(&mut c, Q).await == 0 && in_flight(&mut c, Q).await == 0
        }
    })
    .await;
    assert_eq!(zcard(&mut conn, "{jobs:work}:scheduled").await, 0);
    assert_eq!(llen(&mut conn, "{jobs:work}:dead").await, 0);
    assert!(!daemon.is_finished(), "the daemon stayed up");
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_started_before_redis_waits_for_it() {
    let mut redis = Redis::start_persistent();
    redis.kill();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), &redis, "[queues.work]\nhandler = \"noop\"\n");
    let mut cmd = conveyor();
    cmd.args(["run", "--config", cfg.to_str().unwrap()]);
    let (mut child, logs) = spawn_logged(cmd);
    wait_until("the daemon says it waits for Redis", WAIT, || {
        let logs = logs.clone();
        async move { logs.contains("Redis is not reachable yet; waiting for it") }
    })
    .await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "it waits rather than exits"
    );
    redis.restart();
    let mut conn = redis.conn().await;
    let _: () = conn.rpush(Q, "\"hello\"").await.unwrap();
    wait_until("the job is processed", WAIT, || {
        let mut c = conn.clone();
        async move { stat(&mut c, Q, "processed").await == 1 }
    })
    .await;
    signal(&child, 15);
    assert_eq!(wait_exit(&mut child, WAIT), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_neither_hangs_nor_crashes_the_daemon() {
    let redis = Redis::start();
    let mut conn = redis.conn().await;
    let done = Done::default();
    let daemon = TestDaemon::start(
        config(
            &redis,
            "[queues.work]\nhandler = \"done\"\nconcurrency = 4\n",
        ),
        done_registry(&done),
    );
    let first: Vec<String> = (0..50).map(|i| format!("{{\"a\":{i}}}")).collect();
    let _: () = conn.rpush(Q, first).await.unwrap();
    wait_until("the first batch is done", WAIT, || {
        let done = done.clone();
        async move { done.count() == 50 }
    })
    .await;
    // Stop the server for longer than the 2s response timeout.
    let pid = redis.pid().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        std::process::Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let second: Vec<String> = (0..50).map(|i| format!("{{\"b\":{i}}}")).collect();
    let _: () = conn.rpush(Q, second).await.unwrap();
    wait_until(
        "the second batch is done and nothing is in flight",
        WAIT,
        || {
            let done = done.clone();
            let mut c = conn.clone();
            async move { done.count() == 100 && in_flight(&mut c, Q).await == 0 }
        },
    )
    .await;
    assert!(!daemon.is_finished());
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_daemon_takes_a_job_at_once_past_the_response_timeout() {
    // redis-rs cuts replies off after 500ms by default; the fetcher's own
    // connection waits out its whole block (src/broker/queue/tests.rs), so
    // a daemon that idles past the timeout still gets a job at once.
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), &redis, "[queues.work]\nhandler = \"noop\"\n");
    let mut cmd = conveyor();
    cmd.args(["run", "--config", cfg.to_str().unwrap()]);
    let (mut child, logs) = spawn_logged(cmd);
    wait_until("the daemon runs", WAIT, || {
        let logs = logs.clone();
        async move { logs.contains("running") }
    })
    .await;
    // Idle for three block periods.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let mut conn = redis.conn().await;
    let pushed = Instant::now();
    let _: () = conn.rpush(Q, "\"wake\"").await.unwrap();
    wait_until("the job is processed", WAIT, || {
        let mut c = conn.clone();
        async move { stat(&mut c, Q, "processed").await == 1 }
    })
    .await;
    assert!(
        pushed.elapsed() < Duration::from_millis(500),
        "{:?}",
        pushed.elapsed()
    );
    let failures: Vec<String> = logs
        .lines()
        .into_iter()
        .filter(|l| l.contains("failed"))
        .collect();
    assert!(failures.is_empty(), "idling produced errors: {failures:?}");
    signal(&child, 15);
    assert_eq!(wait_exit(&mut child, WAIT), Some(0));
}
