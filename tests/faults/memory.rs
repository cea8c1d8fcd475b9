//! Memory under load: the daemon's resident set stays flat across a long run.

use std::io::Write as _;
use std::time::{Duration, Instant};

use redis::AsyncCommands as _;
use serde_json::json;

use crate::common::{Redis, in_flight, llen, run_cli, stat, wait_until, web_address, zcard};
use crate::harness::*;

const WAIT: Duration = Duration::from_secs(600);
/// How often RSS is sampled.
const EVERY: Duration = Duration::from_millis(100);

/// 200,000 `noop` jobs pre-loaded with `conveyor enqueue --file`, 50 at a
/// time, events on. VmRSS is sampled every 100ms; after warm-up (the first
/// 10% of the jobs) the largest sample must be within 20% of the smallest.
///
/// `noop` records nothing, so completions are counted from `{K}:stats`
/// (processed minus failed): with no fault injected a job cannot run twice
/// (`duplicated` is not measured here, shown as 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_flat_under_load() {
    let _serial = serial().await;
    let jobs = 200_000 * scale();
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let queue = "[queues.work]\nhandler = \"noop\"\nconcurrency = 50\n";
    let cfg = write_config(dir.path(), &redis.url(), FAST, queue);
    let file = dir.path().join("jobs.ndjson");
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        for i in 0..jobs {
            writeln!(out, "{{\"n\":{i},\"pad\":\"{:064}\"}}", i).unwrap();
        }
    }
    let (code, _, err) = run_cli(&[
        "enqueue",
        "work",
        "--file",
        file.to_str().unwrap(),
        "--quiet",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "enqueue --file: {err}");
    let mut conn = patient(&redis).await;
    assert_eq!(llen(&mut conn, Q).await, jobs);

    let mut daemon = Daemon::start(&cfg);
    let started = Instant::now();
    let warm = (jobs / 10) as u64;
    let mut samples: Vec<u64> = Vec::new();
    let mut seen = 0;
    loop {
        assert!(
            started.elapsed() < WAIT * scale() as u32,
            "the run did not finish"
        );
        let done = processed(&mut conn).await;
        let rss = daemon.rss_kib().expect("the daemon is running");
        seen += 1;
        if done >= warm {
            samples.push(rss);
        }
        if done >= jobs as u64 {
            break;
        }
        tokio::time::sleep(EVERY).await;
    }
    let took = started.elapsed();
    let failed = stat(&mut conn, Q, "failed").await as usize;
    let dead = llen(&mut conn, DEAD).await;
    let waiting = llen(&mut conn, Q).await + in_flight(&mut conn, Q).await;
    let completed = processed(&mut conn).await as usize - failed;
    let tally = Tally {
        enqueued: jobs,
        completed,
        dead,
        waiting,
        lost: vec!["?".to_owned(); jobs.saturating_sub(completed + dead + waiting)],
        ..Tally::default()
    };
    let (min, max) = (
        *samples.iter().min().unwrap(),
        *samples.iter().max().unwrap(),
    );
    let growth = (max as f64 / min as f64 - 1.0) * 100.0;
    report(
        "memory_under_load",
        &tally,
        None,
        &format!(
            "samples={} (of {seen}) rss_after_warmup_min={:.1}MiB max={:.1}MiB spread={growth:.1}% first={:.1}MiB last={:.1}MiB jobs_per_s={:.0}",
            samples.len(),
            min as f64 / 1024.0,
            max as f64 / 1024.0,
            samples[0] as f64 / 1024.0,
            samples[samples.len() - 1] as f64 / 1024.0,
            jobs as f64 / took.as_secs_f64()
        ),
    );
    tally.assert_settled();
    assert_eq!(completed, jobs, "{tally:?}");
    assert!(
        samples.len() >= 5,
        "too few samples after warm-up: {samples:?}"
    );
    assert!(
        max as f64 <= min as f64 * 1.2,
        "RSS grew {growth:.1}% after warm-up: {samples:?}"
    );
    daemon.assert_healthy();
}

/// Peak resident memory of a process in KiB (`VmHWM`), from /proc.
fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Runs the CLI; its exit code, stderr and how long it took.
fn timed_cli(cfg: &std::path::Path, args: &[&str]) -> (i32, String, String, Duration) {
    let mut all = vec!["--config", cfg.to_str().unwrap()];
    all.extend_from_slice(args);
    let started = Instant::now();
    let (code, out, err) = run_cli(&all);
    (code, out, err, started.elapsed())
}

/// How long a GET takes and what it says.
async fn timed_get(web: &reqwest::Client, url: &str) -> (reqwest::StatusCode, String, Duration) {
    let started = Instant::now();
    let r = web.get(url).send().await.unwrap();
    let status = r.status();
    (status, r.text().await.unwrap(), started.elapsed())
}

/// Items of 100 MB, pushed with `max_payload_bytes` at 1 MiB, and a dead
/// list holding 100 MB entries as earlier versions wrote them. Before the
/// fix one such item took the daemon from 15 MB to 1 GB of RSS and timed out
/// its Redis calls, and every admin read of the dead list timed out.
///
/// One item reaches an idle daemon through its blocking fetch, two more
/// through a batched take beside small jobs, and one from the in-flight list
/// of a dead node of an earlier version, through the reaper. The daemon's peak RSS must stay
/// within 32 MiB of what it was before them; the jobs behind them run; each
/// dead entry holds the item's first bytes and its size, under the item's
/// own id when it names one. Then `dead list`, `dead retry`, `dead purge`,
/// `cancel` of a 20 MB item waiting in a paused queue, and the dashboard
/// must answer within a second of the same command on a small dead list,
/// and `dead retry` must refuse to re-enqueue a truncated payload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_of_100_mb_are_never_read_whole() {
    const MB: usize = 1_000_000;
    let _serial = serial().await;
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let queues = "[web]\nlisten = \"127.0.0.1:0\"\n\
                  [queues.work]\nhandler = \"noop\"\nconcurrency = 4\n\
                  max_payload_bytes = 1048576\ntrack = true\n\
                  [queues.small]\nhandler = \"noop\"\n";
    let cfg = write_config(dir.path(), &redis.url(), FAST, queues);
    let mut conn = patient(&redis).await;
    let envelope = |id: &str, n: usize| {
        format!(
            r#"{{"id":"{id}","payload":"{}","attempt":0}}"#,
            "x".repeat(n)
        )
    };
    // The dead lists: 100 MB entries as earlier versions kept them (the raw
    // item last, or a payload before the error), and a small reference.
    let legacy_raw = format!(
        r#"{{"id":"legacy-raw","payload":null,"attempt":0,"last_error":"item of {n} bytes exceeds max_payload_bytes (1048576)","died_at":"2026-01-01T00:00:00.000Z","raw":"{}"}}"#,
        "r".repeat(100 * MB),
        n = 100 * MB + 2
    );
    let legacy_payload = format!(
        r#"{{"id":"legacy-payload","payload":"{}","attempt":1,"last_error":"cancelled","died_at":"2026-01-01T00:00:00.000Z"}}"#,
        "p".repeat(100 * MB)
    );
    let _: () = conn.lpush(DEAD, &legacy_raw).await.unwrap();
    let _: () = conn.lpush(DEAD, &legacy_payload).await.unwrap();
    drop((legacy_raw, legacy_payload));
    let small_dead = |id: &str| {
        format!(
            r#"{{"id":"{id}","payload":{{}},"attempt":3,"last_error":"boom","died_at":"2026-01-01T00:00:00.000Z"}}"#
        )
    };
    for id in ["s-1", "s-2", "s-3"] {
        let _: () = conn
            .lpush("{jobs:small}:dead", small_dead(id))
            .await
            .unwrap();
    }

    // And a dead node of an earlier version, which held one in flight.
    let ghost = envelope("ghost", 100 * MB);
    let _: () = conn
        .rpush(format!("{INFLIGHT}ghost"), &ghost)
        .await
        .unwrap();
    let _: () = conn.sadd(NODES, "ghost").await.unwrap();
    let ghost_len = ghost.len();
    drop(ghost);

    let mut daemon = Daemon::start(&cfg);
    let base = web_address(daemon.logs()).await;
    let warm: Vec<String> = (0..20).map(|i| format!(r#"{{"warm":{i}}}"#)).collect();
    push_all(&mut conn, Q, &warm).await;
    wait_until("the ghost's job dead, the warm-up jobs run", WAIT, || {
        let mut c = conn.clone();
        async move { processed(&mut c).await == 21 && llen(&mut c, DEAD).await == 3 }
    })
    .await;
    let ghost: serde_json::Value =
        serde_json::from_slice(&conn.lindex::<_, Vec<u8>>(DEAD, 0).await.unwrap()).unwrap();
    assert_eq!(
        (&ghost["id"], &ghost["raw_size"]),
        (&json!("ghost"), &json!(ghost_len)),
        "{ghost}"
    );
    let before_kib = daemon.rss_kib().unwrap();

    // Idle: the first arrives through the blocking fetch...
    let big_1 = envelope("big-1", 100 * MB);
    let _: () = conn.rpush(Q, &big_1).await.unwrap();
    wait_until("big-1 is dead", WAIT, || {
        let mut c = conn.clone();
        async move { llen(&mut c, DEAD).await == 4 }
    })
    .await;
    // ...the others through a batch, beside small jobs.
    let raw = format!("\"{}\"", "é".repeat(50 * MB));
    let big_3 = envelope("big-3", 100 * MB);
    let batch: Vec<&[u8]> = vec![
        br#"{"n":1}"#,
        raw.as_bytes(),
        br#"{"n":2}"#,
        big_3.as_bytes(),
        br#"{"n":3}"#,
    ];
    let _: () = conn.rpush(Q, batch).await.unwrap();
    let after: Vec<String> = (0..20).map(|i| format!(r#"{{"after":{i}}}"#)).collect();
    push_all(&mut conn, Q, &after).await;
    wait_until("every job after them run, the big ones dead", WAIT, || {
        let mut c = conn.clone();
        async move { processed(&mut c).await == 21 + 1 + 5 + 20 && llen(&mut c, DEAD).await == 6 }
    })
    .await;
    let peak_kib = peak_kib(daemon.pid());
    let (big_1_len, raw_len, big_3_len) = (big_1.len(), raw.len(), big_3.len());
    drop((big_1, raw, big_3));

    let entries: Vec<Vec<u8>> = conn.lrange(DEAD, 0, 2).await.unwrap();
    let mut fresh_id = String::new();
    for entry in &entries {
        assert!(entry.len() < 3000, "a dead entry of {} bytes", entry.len());
        let e: serde_json::Value = serde_json::from_slice(entry).unwrap();
        let size = e["raw_size"].as_u64().unwrap() as usize;
        let head = e["raw_head"].as_str().unwrap();
        assert!(e["died_at"].is_string() && e.get("raw").is_none(), "{e}");
        assert!(
            e["last_error"].as_str().unwrap().contains(&format!(
                "item of {size} bytes exceeds max_payload_bytes (1048576)"
            )),
            "{e}"
        );
        match e["id"].as_str().unwrap() {
            "big-1" => assert_eq!(size, big_1_len),
            "big-3" => assert_eq!(size, big_3_len),
            id => {
                assert_eq!(
                    (size, id.len()),
                    (raw_len, 32),
                    "a new id for a raw payload"
                );
                assert!(head.starts_with("\"éé") && head.len() >= 1020, "{head}");
                fresh_id = id.to_owned();
            }
        }
        assert!(head.len() <= 1024 && head.len() >= 1000, "{}", head.len());
    }
    let (code, out, _, _) = timed_cli(&cfg, &["status", "big-1", "--json"]);
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["state"], "dead", "{status}");

    // The admin commands, against the reference of a small dead list. A
    // command may look at an old 100 MB entry (each look costs Redis a copy
    // of it, `touch`, timed here by hand) but never reads one whole.
    let (_, _, _, reference) = timed_cli(&cfg, &["dead", "list", "small"]);
    let started = Instant::now();
    let len: usize = redis::cmd("EVAL")
        .arg("return #redis.call('LINDEX', KEYS[1], -1)")
        .arg(1)
        .arg(DEAD)
        .query_async(&mut conn)
        .await
        .unwrap();
    let touch = started.elapsed();
    assert!(len > 100 * MB);
    let quick = |what: &str, took: Duration, looks: u32| {
        let bound = reference + Duration::from_secs(1) + touch * looks * 2;
        assert!(
            took < bound,
            "{what} took {took:?}, more than {bound:?} (a small dead list: {reference:?}, \
             a look at 100 MB: {touch:?})"
        );
    };
    let (code, out, err, dead_list) = timed_cli(&cfg, &["dead", "list", "work"]);
    assert_eq!(code, 0, "{err}");
    for id in [
        "big-1",
        "big-3",
        &fresh_id,
        "ghost",
        "legacy-raw",
        "legacy-payload",
    ] {
        assert!(out.contains(id), "{id}: {out}");
    }
    quick("dead list", dead_list, 2);
    let (code, out, err, took) = timed_cli(&cfg, &["dead", "list", "work", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.len() < 64 * 1024, "{} bytes listed", out.len());
    quick("dead list --json", took, 2);
    for (id, looks) in [("big-1", 0), ("legacy-raw", 2), ("legacy-payload", 1)] {
        let (code, _, err, took) = timed_cli(&cfg, &["dead", "retry", "work", id]);
        assert_eq!(code, 65, "{id}: {err}");
        assert!(err.contains("cannot be retried"), "{err}");
        quick("dead retry", took, looks);
    }
    assert_eq!(llen(&mut conn, Q).await, 0, "nothing truncated re-enqueued");
    let (code, _, err, took) = timed_cli(&cfg, &["dead", "retry", "work", "--all"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("moved 0") && err.contains("6 left"), "{err}");
    quick("dead retry --all", took, 2);
    for (id, looks) in [("legacy-raw", 3), ("big-3", 0)] {
        let (code, _, err, took) = timed_cli(&cfg, &["dead", "purge", "work", id]);
        assert_eq!(code, 0, "{id}: {err}");
        quick("dead purge", took, looks);
    }
    assert_eq!(llen(&mut conn, DEAD).await, 4);

    // A 20 MB job waiting in a paused queue: the dashboard reads its first
    // bytes, and cancel moves it by its place.
    let (code, _, _, _) = timed_cli(&cfg, &["pause", "work"]);
    assert_eq!(code, 0);
    let logs = daemon.logs();
    let noticed = time_until(WAIT, || async { logs.contains("queue paused") }).await;
    assert!(noticed.is_some(), "the daemon saw the pause");
    let big_c = envelope("big-c", 20 * MB);
    let _: () = conn.rpush(Q, &big_c).await.unwrap();
    let web = reqwest::Client::new();
    let (_, _, small_page) = timed_get(&web, &format!("{base}/api/queues/small/dead")).await;
    // The page looks at the old 100 MB entry left and the 20 MB job waiting.
    let look_bound = small_page + Duration::from_secs(1) + touch * 3;
    let (status, page, took) = timed_get(&web, &format!("{base}/")).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    assert!(page.contains("legacy-payload") && page.contains("[first bytes of"));
    assert!(took < look_bound, "the dashboard took {took:?}");
    let (status, listed, took) = timed_get(&web, &format!("{base}/api/queues/work/dead")).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    assert!(listed.len() < 64 * 1024 && listed.contains("\"truncated\":true"));
    assert!(took < look_bound, "/api/.../dead took {took:?}");
    let refused = web
        .post(format!("{base}/api/queues/work/dead/retry?id={fresh_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), reqwest::StatusCode::CONFLICT);
    let purged = web
        .post(format!("{base}/api/queues/work/dead/purge?id={fresh_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(purged.status(), reqwest::StatusCode::OK);
    let (code, _, err, took) = timed_cli(&cfg, &["cancel", "work", "big-c"]);
    assert_eq!(code, 0, "{err}");
    quick("cancel", took, 1);
    let cancelled: Vec<u8> = conn.lindex(DEAD, 0).await.unwrap();
    let cancelled: serde_json::Value = serde_json::from_slice(&cancelled).unwrap();
    assert_eq!(
        (
            &cancelled["id"],
            &cancelled["last_error"],
            &cancelled["raw_size"]
        ),
        (&json!("big-c"), &json!("cancelled"), &json!(big_c.len()))
    );
    assert_eq!(llen(&mut conn, Q).await, 0);
    // And one due in a year: run now moves it by its place, unread.
    let big_s = envelope("big-s", 20 * MB);
    let _: () = conn.zadd(SCHEDULED, &big_s, i64::MAX / 2).await.unwrap();
    let started = Instant::now();
    let moved = web
        .post(format!("{base}/api/queues/work/scheduled/run?id=big-s"))
        .send()
        .await
        .unwrap();
    assert_eq!(moved.status(), reqwest::StatusCode::OK);
    let took = started.elapsed();
    assert!(took < look_bound, "run now took {took:?}");
    let waiting: Vec<u8> = conn.lindex(Q, 0).await.unwrap();
    assert!(waiting == big_s.as_bytes(), "moved whole, byte for byte");
    drop((waiting, big_s));
    let (code, _, err, _) = timed_cli(&cfg, &["cancel", "work", "big-s"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        zcard(&mut conn, SCHEDULED).await + llen(&mut conn, Q).await,
        0
    );

    report(
        "big_items",
        &Tally {
            enqueued: 5,
            dead: 5,
            ..Tally::default()
        },
        None,
        &format!(
            "rss_before={:.1}MiB peak={:.1}MiB dead_list={dead_list:?} reference={reference:?} \
             redis_look_at_100MB={touch:?}",
            before_kib as f64 / 1024.0,
            peak_kib as f64 / 1024.0,
        ),
    );
    assert!(
        peak_kib < before_kib + 32 * 1024,
        "the daemon's peak RSS rose from {before_kib} KiB to {peak_kib} KiB"
    );
    daemon.assert_healthy();
}
