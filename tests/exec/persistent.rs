//! Persistent workers, run by a daemon in the test process: real work and
//! results, retries at the asked delay, permanent failures, crashes, hangs,
//! garbage, shell metacharacters, the pool's size and recycling.

use std::collections::{HashMap, HashSet};

use redis::AsyncCommands as _;
use serde_json::json;

use crate::common::*;
use crate::workers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_workers_do_real_work_and_return_results() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let worker = script(dir.path(), "persistent.py", PERSISTENT);
    let mut conn = redis.conn().await;
    for i in 0..20u64 {
        let numbers: Vec<u64> = (0..=i).collect();
        push(
            &mut conn,
            &format!("j{i}"),
            json!({"do": "sum", "numbers": numbers}),
        )
        .await;
    }
    let daemon = TestDaemon::start(
        config(&redis, &queue(&worker, "persistent", "concurrency = 3", "")),
        builtin(),
    );
    for i in 0..20u64 {
        let r = result(&conn, &format!("j{i}")).await;
        assert_eq!(r["sum"], json!(i * (i + 1) / 2), "job j{i}: {r}");
        assert_eq!(r["sha"].as_str().map(str::len), Some(64));
    }
    assert_eq!(stat(&mut conn, Q, "processed").await, 20);
    assert_eq!(stat(&mut conn, Q, "failed").await, 0);
    // A raw payload gets an id and runs the same way.
    let _: () = conn.rpush(Q, r#"{"x": 1}"#).await.unwrap();
    wait_until("the raw payload ran", WAIT, || {
        let mut c = conn.clone();
        async move { stat(&mut c, Q, "processed").await == 21 }
    })
    .await;
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_count_is_the_concurrency_and_processes_are_recycled() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let worker = script(dir.path(), "recycled.py", PERSISTENT);
    let marker = worker.to_string_lossy().into_owned();
    let mut conn = redis.conn().await;
    let daemon = TestDaemon::start(
        config(
            &redis,
            &queue(
                &worker,
                "persistent",
                "concurrency = 4",
                "max_jobs_per_process = 3",
            ),
        ),
        builtin(),
    );
    // Started with the daemon, before any job.
    wait_processes(&marker, 4).await;
    for i in 0..24 {
        push(&mut conn, &format!("r{i}"), json!({})).await;
    }
    let mut jobs_per_pid: HashMap<u64, usize> = HashMap::new();
    for i in 0..24 {
        let r = result(&conn, &format!("r{i}")).await;
        *jobs_per_pid.entry(r["pid"].as_u64().unwrap()).or_default() += 1;
    }
    assert!(
        jobs_per_pid.values().all(|&n| n <= 3),
        "no process ran more than max_jobs_per_process: {jobs_per_pid:?}"
    );
    assert!(jobs_per_pid.len() >= 8, "24 jobs, 3 each: {jobs_per_pid:?}");
    // Retired processes are replaced: the pool is back to its size.
    wait_processes(&marker, 4).await;
    daemon.stop().await.unwrap();
    wait_processes(&marker, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_waits_the_delay_the_worker_asked_for() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let worker = script(dir.path(), "retry.py", PERSISTENT);
    let mut conn = redis.conn().await;
    // The queue's own backoff would wait an hour.
    let settings = "concurrency = 1\nbackoff = { base = \"1h\", max = \"2h\" }";
    let daemon = TestDaemon::start(
        config(&redis, &queue(&worker, "persistent", settings, "")),
        builtin(),
    );
    let before = crate::common::now_ms();
    push(&mut conn, "again", json!({"do": "retry_once", "ms": 1500})).await;
    let record = wait_state(&conn, "again", "retrying").await;
    assert_eq!(record["last_error"], "not yet");
    let due: Vec<(String, f64)> = conn
        .zrange_withscores(format!("{{{Q}}}:scheduled"), 0, -1)
        .await
        .unwrap();
    let wait = due[0].1 as i64 - before;
    assert!(
        (1500..1500 + 2000).contains(&wait),
        "due {wait} ms after the push"
    );
    let r = result(&conn, "again").await;
    assert_eq!(r["attempt"], 2, "{r}");
    assert_eq!(stat(&mut conn, Q, "retried").await, 1);
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_is_permanent_and_dead_at_once() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let worker = script(dir.path(), "fail.py", PERSISTENT);
    let mut conn = redis.conn().await;
    let daemon = TestDaemon::start(
        config(&redis, &queue(&worker, "persistent", "concurrency = 1", "")),
        builtin(),
    );
    push(&mut conn, "nope", json!({"do": "fail", "user": 42})).await;
    let record = wait_state(&conn, "nope", "dead").await;
    assert_eq!(record["last_error"], "no such user: 42");
    let dead = dead(&mut conn, Q).await;
    assert_eq!((dead.len(), dead[0]["attempt"].as_u64()), (1, Some(1)));
    daemon.stop().await.unwrap();
}

/// A crash, garbage on stdout and a hang each fail their job (transient,
/// with the reason) and cost the process; the jobs behind them run on its
/// replacement, and the retries succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_processes_fail_their_job_and_are_replaced() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let worker = script(dir.path(), "bad.py", PERSISTENT);
    let marker = worker.to_string_lossy().into_owned();
    let pidfile = dir.path().join("hang.pid");
    let mut conn = redis.conn().await;
    let settings = "concurrency = 1\ntimeout = \"1s\"\nmax_attempts = 1";
    let daemon = TestDaemon::start(
        config(&redis, &queue(&worker, "persistent", settings, "")),
        builtin(),
    );
    wait_processes(&marker, 1).await;
    let first = processes(&marker);
    push(&mut conn, "crash", json!({"do": "crash"})).await;
    push(&mut conn, "after-crash", json!({})).await;
    push(&mut conn, "garbage", json!({"do": "garbage"})).await;
    push(&mut conn, "after-garbage", json!({})).await;
    push(&mut conn, "hang", json!({"do": "hang", "pidfile": pidfile})).await;
    push(&mut conn, "after-hang", json!({})).await;

    let crash = wait_state(&conn, "crash", "dead").await;
    let error = &crash["last_error"];
    assert!(
        error.contains("exited (exit status: 3)") && error.contains("about to crash on crash"),
        "{error}"
    );
    let garbage = wait_state(&conn, "garbage", "dead").await;
    assert!(
        garbage["last_error"].contains("not JSON")
            && garbage["last_error"].contains("this is not a reply"),
        "{}",
        garbage["last_error"]
    );
    let hang = wait_state(&conn, "hang", "dead").await;
    assert!(
        hang["last_error"].starts_with("timed out after 1s"),
        "{}",
        hang["last_error"]
    );
    let mut pids = HashSet::new();
    for id in ["after-crash", "after-garbage", "after-hang"] {
        pids.insert(result(&conn, id).await["pid"].as_u64().unwrap() as u32);
    }
    assert_eq!(pids.len(), 3, "each ran on a fresh process: {pids:?}");
    assert!(!pids.contains(&first[0]));
    // The hung process and the grandchild it started were killed together.
    let text = std::fs::read_to_string(&pidfile).unwrap();
    let hung: Vec<u32> = text.split(' ').map(|p| p.parse().unwrap()).collect();
    wait_until("the hung process group is gone", WAIT, || {
        let hung = hung.clone();
        async move { hung.iter().all(|&pid| !alive(pid)) }
    })
    .await;
    wait_processes(&marker, 1).await;
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_metacharacters_in_a_payload_stay_data() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let worker = script(dir.path(), "echo.py", PERSISTENT);
    let touched = dir.path().join("pwned");
    let hostile = format!(
        "$(touch {0}); `touch {0}` | touch {0} & ; > {0} \"' \\n\n{{}} *",
        touched.display()
    );
    let payload = json!({"s": hostile, "argv": ["-rf", "/"], "pretty": "a\nb"});
    let mut conn = redis.conn().await;
    let daemon = TestDaemon::start(
        config(&redis, &queue(&worker, "persistent", "concurrency = 1", "")),
        builtin(),
    );
    // Pretty-printed, as some producers write: line breaks between tokens.
    let env = format!(
        "{{\n  \"id\": \"sh\",\n  \"payload\": {},\n  \"attempt\": 0\n}}",
        serde_json::to_string_pretty(&payload).unwrap()
    );
    let _: () = conn.rpush(Q, env).await.unwrap();
    let r = result(&conn, "sh").await;
    assert_eq!(r["payload"], payload);
    assert!(!touched.exists(), "nothing ran the payload");
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_died_while_idle_costs_the_next_job_nothing() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let worker = script(dir.path(), "idle.py", PERSISTENT);
    let marker = worker.to_string_lossy().into_owned();
    let mut conn = redis.conn().await;
    let daemon = TestDaemon::start(
        config(&redis, &queue(&worker, "persistent", "concurrency = 1", "")),
        builtin(),
    );
    wait_processes(&marker, 1).await;
    let idle = processes(&marker)[0];
    let killed = std::process::Command::new("kill")
        .args(["-9", &idle.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    wait_until(
        "the idle worker is gone",
        WAIT,
        || async move { !alive(idle) },
    )
    .await;
    push(&mut conn, "next", json!({})).await;
    let r = result(&conn, "next").await;
    assert_ne!(r["pid"].as_u64(), Some(u64::from(idle)));
    assert_eq!(r["attempt"], 1, "the first attempt succeeded");
    assert_eq!(stat(&mut conn, Q, "failed").await, 0);
    daemon.stop().await.unwrap();
}
