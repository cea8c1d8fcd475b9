//! Signals against the real binary: SIGTERM drains and exits 0, what
//! outlives `shutdown_timeout` goes back to the head of its queue, a second
//! SIGINT skips the wait, SIGTSTP stops fetching but stays up.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::time::{Duration, Instant};

use common::*;
use redis::AsyncCommands as _;

const Q: &str = "jobs:work";
const WAIT: Duration = Duration::from_secs(20);
const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;
const SIGTSTP: i32 = 20;

fn start(
    redis: &Redis,
    dir: &std::path::Path,
    shutdown_timeout: &str,
    concurrency: u32,
) -> (KillOnDrop, Logs) {
    let cfg = config_file_with(
        dir,
        redis,
        &format!("shutdown_timeout = \"{shutdown_timeout}\""),
        &format!("[queues.work]\nhandler = \"fault\"\nconcurrency = {concurrency}\n"),
    );
    let mut cmd = conveyor();
    cmd.args(["run", "--config", cfg.to_str().unwrap()]);
    spawn_logged(cmd)
}

async fn node_keys(conn: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    conn.keys("conveyor:node:*").await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_running_jobs_finish_and_exits_0() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let mut conn = redis.conn().await;
    let (mut child, _logs) = start(&redis, dir.path(), "10s", 4);
    let jobs: Vec<String> = (0..4).map(|_| r#"{"sleep_ms":1500}"#.to_owned()).collect();
    let _: () = conn.rpush(Q, jobs).await.unwrap();
    wait_until("4 jobs running", WAIT, || {
        let mut c = conn.clone();
        async move { in_flight(&mut c, Q).await == 4 }
    })
    .await;
    signal(&child, SIGTERM);
    assert_eq!(wait_exit(&mut child, WAIT), Some(0));
    assert_eq!(
        stat(&mut conn, Q, "processed").await,
        4,
        "running jobs finished"
    );
    assert_eq!(in_flight(&mut conn, Q).await, 0);
    assert_eq!(llen(&mut conn, Q).await, 0);
    assert!(
        node_keys(&mut conn).await.is_empty(),
        "the heartbeat key is removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_requeues_what_outlives_the_timeout_at_the_head_and_exits_0() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let mut conn = redis.conn().await;
    let (mut child, logs) = start(&redis, dir.path(), "1s", 2);
    let long = |id: &str| format!(r#"{{"id":"{id}","payload":{{"sleep_ms":600000}},"attempt":0}}"#);
    let _: () = conn
        .rpush(Q, &[long("long-1"), long("long-2")])
        .await
        .unwrap();
    wait_until("both long jobs running", WAIT, || {
        let mut c = conn.clone();
        async move { in_flight(&mut c, Q).await == 2 }
    })
    .await;
    // Behind them, jobs that never started.
    let _: () = conn.rpush(Q, &["\"w1\"", "\"w2\""]).await.unwrap();
    let signalled = Instant::now();
    signal(&child, SIGTERM);
    assert_eq!(wait_exit(&mut child, WAIT), Some(0));
    let took = signalled.elapsed();
    assert!(
        took < Duration::from_millis(2000),
        "exit within the timeout plus one second, took {took:?}"
    );

    let queue = lrange(&mut conn, Q).await;
    assert_eq!(queue.len(), 4, "{queue:?}");
    let mut head: Vec<String> = queue[..2].to_vec();
    head.sort();
    assert_eq!(
        head,
        [long("long-1"), long("long-2")],
        "interrupted jobs are back at the head, unchanged"
    );
    assert_eq!(&queue[2..], ["\"w1\"", "\"w2\""]);
    wait_until("the log says the timeout cut the jobs short", WAIT, || {
        let logs = logs.clone();
        async move {
            logs.contains("the shutdown timeout (1s) is over: requeueing the jobs still running")
        }
    })
    .await;
    assert_eq!(in_flight(&mut conn, Q).await, 0);
    assert_eq!(
        stat(&mut conn, Q, "failed").await,
        0,
        "an interrupted job is not a failure"
    );
    assert!(node_keys(&mut conn).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigint_skips_the_wait_but_still_requeues() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let mut conn = redis.conn().await;
    let (mut child, logs) = start(&redis, dir.path(), "60s", 1);
    let _: () = conn.rpush(Q, r#"{"sleep_ms":600000}"#).await.unwrap();
    wait_until("the job runs", WAIT, || {
        let mut c = conn.clone();
        async move { in_flight(&mut c, Q).await == 1 }
    })
    .await;
    let signalled = Instant::now();
    signal(&child, SIGINT);
    // The first SIGINT starts a drain that would last a minute...
    wait_until("the daemon starts draining", WAIT, || {
        let logs = logs.clone();
        async move { logs.contains("letting running jobs finish") }
    })
    .await;
    signal(&child, SIGINT);
    assert_eq!(wait_exit(&mut child, WAIT), Some(0));
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "the second SIGINT cut the 60s wait"
    );
    // A raw payload goes back wrapped in the envelope whose id it ran under,
    // with no attempt spent.
    let queue = lrange(&mut conn, Q).await;
    assert_eq!(queue.len(), 1);
    let env: serde_json::Value = serde_json::from_str(&queue[0]).unwrap();
    assert_eq!(env["payload"], serde_json::json!({"sleep_ms": 600000}));
    assert_eq!(env["attempt"], 0);
    assert_eq!(in_flight(&mut conn, Q).await, 0);
    // The log says why the jobs were cut short, and not that time ran out.
    wait_until(
        "the log says the second SIGINT cut the job short",
        WAIT,
        || {
            let logs = logs.clone();
            async move { logs.contains("second SIGINT: requeueing the jobs still running") }
        },
    )
    .await;
    assert!(!logs.contains("is over"), "{:?}", logs.lines());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigtstp_stops_fetching_but_stays_up() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let mut conn = redis.conn().await;
    let (mut child, logs) = start(&redis, dir.path(), "10s", 2);
    let _: () = conn.rpush(Q, r#"{"sleep_ms":500}"#).await.unwrap();
    wait_until("the first job runs", WAIT, || {
        let mut c = conn.clone();
        async move { in_flight(&mut c, Q).await == 1 }
    })
    .await;
    signal(&child, SIGTSTP);
    wait_until("the daemon is quiet", WAIT, || {
        let logs = logs.clone();
        async move { logs.contains("taking no new jobs") }
    })
    .await;
    wait_until("the running job finishes", WAIT, || {
        let mut c = conn.clone();
        async move { stat(&mut c, Q, "processed").await == 1 }
    })
    .await;
    let _: () = conn.rpush(Q, "\"later\"").await.unwrap();
    // A fetcher blocks at most a second between looks at its stop signal;
    // give a resumed fetcher three times that to show itself.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        assert_eq!(llen(&mut conn, Q).await, 1, "a quiet daemon took a job");
        assert!(
            child.try_wait().unwrap().is_none(),
            "a quiet daemon stays up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(node_keys(&mut conn).await.len(), 1, "still heartbeating");
    signal(&child, SIGTERM);
    assert_eq!(wait_exit(&mut child, WAIT), Some(0));
    assert_eq!(lrange(&mut conn, Q).await, ["\"later\""]);
}
