//! Oneshot workers: a process per job; the exit status is the outcome.

use serde_json::json;

use crate::common::*;
use crate::workers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exit_status_decides_and_stdout_is_the_result() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let worker = script(dir.path(), "oneshot.py", ONESHOT);
    let marker = worker.to_string_lossy().into_owned();
    let mut conn = redis.conn().await;
    let settings =
        "concurrency = 2\nmax_attempts = 2\nbackoff = { base = \"100ms\", max = \"100ms\" }";
    let daemon = TestDaemon::start(
        config(&redis, &queue(&worker, "oneshot", settings, "")),
        builtin(),
    );
    push(&mut conn, "double", json!({"n": 21})).await;
    push(
        &mut conn,
        "tempfail",
        json!({"exit": 75, "stderr": "database busy"}),
    )
    .await;
    push(
        &mut conn,
        "bad",
        json!({"exit": 3, "stderr": "no such image"}),
    )
    .await;

    let r = result(&conn, "double").await;
    assert_eq!(r, json!({"doubled": 42, "attempt": 1, "id": "double"}));

    // 75 is retried: two attempts, then dead for want of attempts.
    let tempfail = wait_state(&conn, "tempfail", "dead").await;
    assert_eq!(tempfail["attempt"], "2");
    assert!(
        tempfail["last_error"].contains("exited with status 75 (temporary failure): database busy"),
        "{}",
        tempfail["last_error"]
    );
    // Any other status is permanent: dead after one attempt.
    let bad = wait_state(&conn, "bad", "dead").await;
    assert_eq!(bad["attempt"], "1");
    assert_eq!(
        bad["last_error"],
        "the worker exited with status 3: no such image"
    );
    assert_eq!(stat(&mut conn, Q, "retried").await, 1);
    // No process outlives its job.
    wait_processes(&marker, 0).await;
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_oneshot_process_past_its_timeout_is_killed_and_retried() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let worker = script(
        dir.path(),
        "slow.py",
        "import json, sys, time\nreq = json.loads(sys.stdin.readline())\nif req['attempt'] == 1:\n    time.sleep(300)\nprint('{\"late\": true}')\n",
    );
    let marker = worker.to_string_lossy().into_owned();
    let mut conn = redis.conn().await;
    let settings =
        "concurrency = 1\ntimeout = \"500ms\"\nbackoff = { base = \"100ms\", max = \"100ms\" }";
    let daemon = TestDaemon::start(
        config(&redis, &queue(&worker, "oneshot", settings, "")),
        builtin(),
    );
    push(&mut conn, "slow", json!({})).await;
    assert_eq!(result(&conn, "slow").await, json!({"late": true}));
    let failed = stat(&mut conn, Q, "failed").await;
    assert_eq!(failed, 1, "the first run timed out");
    wait_processes(&marker, 0).await;
    daemon.stop().await.unwrap();
}
