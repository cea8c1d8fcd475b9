//! `GET /api/scale?queue=Q`, what KEDA's `metrics-api` scaler reads: a
//! queue's waiting, due scheduled and in-flight jobs over the slots of the
//! live nodes that run it, from `conveyor web` alone and then beside one
//! and two real daemons whose jobs block (the `fault` handler's sleep).

use std::time::{Duration, Instant};

use redis::AsyncCommands as _;
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{TOKEN, authed, http, json as body_json};
use crate::common::*;

/// `work` runs 2 at a time here; the second daemon runs it at 3.
const QUEUES: &str = "[web]\nlisten = \"0.0.0.0:0\"\n\
     [queues.work]\nhandler = \"fault\"\nconcurrency = 2\ntimeout = \"5m\"\n\
     [queues.other]\nhandler = \"noop\"\n";

/// A job that runs for ten minutes: it holds its slot for the whole test.
fn blocking(id: &str) -> String {
    json!({ "id": id, "payload": { "sleep_ms": 600_000 }, "attempt": 0 }).to_string()
}

/// Polls `url` until it answers `expected`, for 20 s at most; then the
/// last answer must be it.
async fn settles(url: &str, expected: Value) {
    let client = http();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = authed(client.get(url)).await;
        assert_eq!(r.status(), StatusCode::OK);
        let got = body_json(r).await;
        if got == expected || Instant::now() > deadline {
            assert_eq!(got, expected);
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `conveyor run` on `cfg` with the token and `args` after `run`.
async fn daemon(cfg: &str, args: &[&str]) -> (KillOnDrop, Logs) {
    let mut d = conveyor();
    d.args(["--config", cfg, "run"])
        .args(args)
        .env("CONVEYOR_WEB_TOKEN", TOKEN);
    let (d, logs) = spawn_logged(d);
    web_address(&logs).await;
    (d, logs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scale_answer_counts_waiting_due_and_running_jobs_over_the_live_slots() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), &redis, QUEUES);
    let cfg = cfg.to_str().unwrap();
    let mut conn = redis.conn().await;
    // Five jobs waiting, two scheduled and due, one due in an hour.
    for i in 0..5 {
        let _: () = conn
            .rpush("jobs:work", blocking(&format!("w{i}")))
            .await
            .unwrap();
    }
    let now = now_ms();
    for (id, due) in [
        ("due1", now - 5_000),
        ("due2", now - 1),
        ("later", now + 3_600_000),
    ] {
        let _: () = conn
            .zadd("{jobs:work}:scheduled", blocking(id), due)
            .await
            .unwrap();
    }

    // The web server alone, listening beyond loopback: the token first.
    let mut web = conveyor();
    web.args(["--config", cfg, "web"])
        .env("CONVEYOR_WEB_TOKEN", TOKEN);
    let (_web, logs) = spawn_logged(web);
    let base = web_address(&logs).await.replace("0.0.0.0", "127.0.0.1");
    let url = format!("{base}/api/scale?queue=work");
    let client = http();
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = client.get(&url).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    for asked in ["/api/scale", "/api/scale?queue="] {
        let r = authed(client.get(format!("{base}{asked}"))).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{asked}");
    }
    // An unknown name is not echoed back.
    let r = authed(client.get(format!("{base}/api/scale?queue=%3Cscript%3Enope"))).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let said = r.text().await.unwrap();
    assert!(!said.contains("script") && !said.contains("nope"), "{said}");

    // No node runs the queue: all it holds is demand, and no load.
    let mut expected = json!({
        "queue": "work", "waiting": 5, "held": 0, "scheduled_due": 2, "in_flight": 0,
        "demand": 7, "concurrency": 0, "nodes": 0, "load": null, "paused": false,
    });
    settles(&url, expected.clone()).await;

    // One daemon at concurrency 2: it takes two jobs, which block, and
    // moves the due ones into the list; the demand stays 7.
    let (_one, _) = daemon(cfg, &[]).await;
    expected["waiting"] = json!(5);
    expected["scheduled_due"] = json!(0);
    expected["in_flight"] = json!(2);
    expected["concurrency"] = json!(2);
    expected["nodes"] = json!(1);
    expected["load"] = json!(3.5);
    settles(&url, expected.clone()).await;

    // A second at concurrency 3 (from its command line, not the file: the
    // node's heartbeat says it): the slots add up to 5 and it takes 3.
    let (_two, _) = daemon(cfg, &["--concurrency", "3"]).await;
    expected["waiting"] = json!(2);
    expected["in_flight"] = json!(5);
    expected["concurrency"] = json!(5);
    expected["nodes"] = json!(2);
    expected["load"] = json!(1.4);
    settles(&url, expected.clone()).await;

    // The job due in an hour is in no count.
    assert_eq!(zcard(&mut conn, "{jobs:work}:scheduled").await, 1);
}
