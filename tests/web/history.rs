//! The history (`GET /api/history`) and the dashboard's charts, against
//! two real daemons on a real Redis, one of them SIGKILLed in the middle of
//! a known workload: every outcome is counted once, in its minute, and the
//! percentiles of the waiting and run times fall in the buckets of the
//! times the jobs were given. The charts are then looked at in Chromium,
//! on a desktop's width and a phone's.

use std::time::Duration;

use serde_json::{Value, json};

use super::{Browser, cli, http};
use crate::common::*;

/// Jobs of each kind: succeed, fail once then succeed, fail for good.
const OK: usize = 100;
const RETRIED: usize = 20;
const DEAD: usize = 10;
/// Each run (but a retried job's second) sleeps this long: the run
/// time's bucket is 50 to 100 ms.
const SLEEP_MS: u64 = 60;
/// The producer pushed every job this long before: the waiting time's
/// bucket is 10 to 30 s, with room for the recovery of the killed
/// daemon's jobs.
const PUSHED_AGO_S: i64 = 15;

fn seconds_into_minute() -> i64 {
    now_ms().rem_euclid(60_000) / 1000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_counts_every_outcome_once_across_a_killed_daemon() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let queues = "[web]\nlisten = \"127.0.0.1:0\"\n\
         [queues.work]\nhandler = \"fault\"\nconcurrency = 4\nmax_attempts = 3\n\
         backoff = { base = \"10ms\", max = \"10ms\" }\n\
         [queues.quiet]\nhandler = \"noop\"\n";
    let cfg = config_file(dir.path(), &redis, queues);
    let cfg = cfg.to_str().unwrap();
    let mut conn = redis.conn().await;
    let start = || {
        let mut daemon = conveyor();
        daemon.args(["--config", cfg, "run"]);
        spawn_logged(daemon)
    };
    let (a, a_logs) = start();
    let (mut b, b_logs) = start();
    web_address(&a_logs).await;
    let base = web_address(&b_logs).await;

    // The workload fits in one minute: it starts with 15 s of it left.
    wait_until("a minute with room", Duration::from_secs(60), || async {
        seconds_into_minute() < 45
    })
    .await;
    let pushed = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(PUSHED_AGO_S);
    let created_at = format!("{pushed:.3}");
    let mut items = Vec::new();
    for i in 0..OK + RETRIED + DEAD {
        // 130 jobs, in thirteens: one dies, two are retried, ten succeed.
        let payload = match i % 13 {
            0 => json!({ "sleep_ms": SLEEP_MS, "fail": "permanent" }),
            1 | 2 => json!({ "sleep_ms": SLEEP_MS, "fail": "transient", "until_attempt": 2 }),
            _ => json!({ "sleep_ms": SLEEP_MS }),
        };
        items.push(
            json!({ "id": format!("j{i}"), "payload": payload, "attempt": 0, "created_at": created_at })
                .to_string(),
        );
    }
    let kinds = |needle: &str| items.iter().filter(|i| i.contains(needle)).count();
    assert_eq!(
        (kinds("permanent"), kinds("transient")),
        (DEAD, RETRIED),
        "the workload's mix"
    );
    let _: () = redis::AsyncCommands::rpush(&mut conn, "jobs:work", &items)
        .await
        .unwrap();
    for i in 0..5 {
        let (code, out) = cli(cfg, &["enqueue", "quiet", &json!({ "n": i }).to_string()]);
        assert_eq!(code, 0, "{out}");
    }
    // Runs: every job once, the retried twice.
    let runs = (OK + 2 * RETRIED + DEAD) as u64;
    wait_until("a third of the runs", Duration::from_secs(30), || {
        let mut c = conn.clone();
        async move { stat(&mut c, "jobs:work", "processed").await >= runs / 3 }
    })
    .await;
    signal(&a.0, 9);
    drop(a);
    wait_until(
        "every run, the killed daemon's jobs recovered",
        Duration::from_secs(60),
        || {
            let mut c = conn.clone();
            async move {
                stat(&mut c, "jobs:work", "processed").await == runs
                    && stat(&mut c, "jobs:quiet", "processed").await == 5
            }
        },
    )
    .await;
    assert_eq!(llen(&mut conn, "{jobs:work}:dead").await, DEAD);

    let web = http();
    let history = |query: &str| {
        let url = format!("{base}/api/history?{query}");
        let web = web.clone();
        async move {
            let response = web.get(url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            serde_json::from_str::<Value>(&response.text().await.unwrap()).unwrap()
        }
    };
    let total = |h: &Value, field: &str| -> u64 {
        h["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[field].as_u64().unwrap())
            .sum()
    };
    let h = history("queue=work&range=1h").await;
    assert_eq!(
        (h["range"].as_str(), h["step_seconds"].as_u64()),
        (Some("1h"), Some(60))
    );
    let points = h["points"].as_array().unwrap();
    assert_eq!(points.len(), 60);
    // Every outcome once: the killed daemon's unrecorded runs not at all.
    assert_eq!(total(&h, "succeeded"), (OK + RETRIED) as u64, "{h}");
    assert_eq!(total(&h, "failed"), (RETRIED + DEAD) as u64, "{h}");
    assert_eq!(total(&h, "dead"), DEAD as u64, "{h}");
    // All in one minute, the one that is under way.
    let busy: Vec<&Value> = points
        .iter()
        .filter(|p| p["succeeded"].as_u64() > Some(0))
        .collect();
    assert_eq!(busy.len(), 1, "{h}");
    let minute = busy[0];
    assert!(std::ptr::eq(minute, points.last().unwrap()), "{h}");
    let within = |field: &str, lo: f64, hi: f64| {
        let v = minute[field]
            .as_f64()
            .unwrap_or_else(|| panic!("{field}: {minute}"));
        assert!(
            (lo..=hi).contains(&v),
            "{field} = {v}, not within {lo} to {hi}"
        );
    };
    within("wait_p50_ms", 10_000.0, 30_000.0);
    within("wait_p95_ms", 10_000.0, 30_000.0);
    within("run_p50_ms", 50.0, 100.0);
    within("run_p95_ms", 50.0, 100.0);
    // The other ranges hold the same; all queues add the quiet one's.
    let day = history("queue=work&range=24h").await;
    assert_eq!(day["points"].as_array().unwrap().len(), 1440);
    assert_eq!(total(&day, "succeeded"), (OK + RETRIED) as u64);
    let month = history("queue=work&range=30d").await;
    assert_eq!(month["step_seconds"], 86_400);
    assert_eq!(month["points"].as_array().unwrap().len(), 30);
    assert_eq!(total(&month, "dead"), DEAD as u64);
    let all = history("range=1h").await;
    assert_eq!(all["queue"], Value::Null);
    assert_eq!(total(&all, "succeeded"), (OK + RETRIED + 5) as u64);
    // Refused: a range it does not keep, a queue it does not run.
    let status = |query: &str| {
        let url = format!("{base}/api/history?{query}");
        let web = web.clone();
        async move { web.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status("range=2h").await, 400);
    assert_eq!(status("queue=nope").await, 404);
    // The dashboard's choices are never echoed: an unknown queue or span
    // shows all queues, live.
    let page = web
        .get(format!(
            "{base}/?live=0&chart=%3Cscript%3Ewindow.pwned%3D1%3C%2Fscript%3E&range=%22%3E%3Cb%3E"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(
        !page.contains("<script>window") && !page.contains("\"><b>"),
        "{page}"
    );
    assert!(
        page.contains("aria-current=\"page\">all queues</a>"),
        "{page}"
    );

    // The dashboard: the waiting time's p95 beside the oldest job, the
    // live chart, and the history's three charts for one queue.
    let mut browser = Browser::start();
    browser.send(json!({ "go": format!("{base}/") }));
    let wait = browser.eval("document.querySelector('#queue-work td.wait').textContent");
    let wait = wait.as_str().unwrap();
    assert!(
        wait.ends_with('s') && wait != "-",
        "wait p95 shown as {wait:?}"
    );
    browser.wait("document.querySelectorAll('#activity svg.chart path.ok').length === 1");
    browser.send(json!({ "go": format!("{base}/?range=24h&chart=work&live=0") }));
    assert_eq!(
        browser.eval("document.querySelectorAll('#activity figure.chart svg').length"),
        3
    );
    assert_eq!(
        browser.eval(
            "document.querySelector('#activity nav[aria-label=queue] a[aria-current]').textContent"
        ),
        "work"
    );
    // The minute's jobs are drawn; its waiting and run times, alone in
    // the day, as a dot each for p50 and p95.
    assert_eq!(
        browser.eval("document.querySelectorAll('#activity svg.chart path.ok').length"),
        1
    );
    assert_eq!(
        browser.eval("document.querySelectorAll('#activity svg.chart circle.p95').length"),
        2
    );
    // Pointed at, the quarter of an hour under way tells its figures.
    let tip = browser.eval(
        "[...document.querySelectorAll('#activity svg.chart')[0].querySelectorAll('rect.tip title')].pop().textContent",
    );
    let tip = tip.as_str().unwrap();
    assert!(
        tip.contains(" UTC") && tip.contains(&format!("succeeded: {}", OK + RETRIED)),
        "{tip}"
    );
    assert!(tip.contains(&format!("dead: {DEAD}")), "{tip}");
    let top = browser.eval("document.querySelector('#activity svg.chart text.scale').textContent");
    assert_eq!(top, "200", "the scale's top over {} jobs", OK + RETRIED);
    // Pictures for the documentation, when asked for, over a made-up day
    // before this minute.
    if let Ok(to) = std::env::var("CONVEYOR_SCREENSHOTS") {
        a_day_of_traffic(&mut conn).await;
        for (name, page) in [
            ("history-live", "/#activity"),
            ("history-24h", "/?range=24h#activity"),
        ] {
            browser.send(json!({ "go": format!("{base}{page}") }));
            browser.wait("document.querySelectorAll('#activity svg.chart path').length > 0");
            let path = std::path::Path::new(&to).join(format!("{name}.png"));
            browser.send(json!({ "screenshot": path, "width": 1280, "height": 540 }));
        }
        browser.send(json!({ "go": format!("{base}/?range=24h&chart=work&live=0") }));
    }
    // A phone's width: the charts shrink to fit it.
    let shot = dir.path().join("history.png");
    browser.send(json!({ "screenshot": shot, "width": 390, "height": 844 }));
    let fits = browser.eval(
        "[...document.querySelectorAll('svg.chart')].every(s => s.getBoundingClientRect().right <= window.innerWidth)",
    );
    assert_eq!(fits, true, "the charts fit a phone's width");
    drop(browser);

    signal(&b.0, 15);
    assert_eq!(wait_exit(&mut b.0, Duration::from_secs(20)), Some(0));
}

/// Writes a day of traffic into `work`'s history, as the daemons lay it
/// out (docs/redis.md): a daily swell, and at 03:00 UTC a batch that makes
/// jobs wait and fail for half an hour. For the documentation's pictures
/// only: the tests above count what the daemons wrote themselves.
async fn a_day_of_traffic(conn: &mut redis::aio::MultiplexedConnection) {
    const FIELDS: i64 = 37;
    const WAIT: i64 = 3;
    const RUN: i64 = WAIT + 17;
    let now_minute = now_ms() / 60_000;
    let mut pipe = redis::pipe();
    for minute in now_minute - 1439..now_minute - 1 {
        let hour_of_day = (minute / 60).rem_euclid(24) as f64;
        let wave = (std::f64::consts::TAU * (hour_of_day - 9.0) / 24.0).cos();
        let mut ok = (700.0 + 500.0 * wave + (minute % 7) as f64 * 15.0) as i64;
        let (mut failed, mut dead) = (ok / 100, i64::from(minute % 11 == 0));
        // Buckets: waits of 1 to 5 ms, runs of 50 to 100 ms, a tail.
        let (mut wait, mut wait_tail, run, run_tail) = (1, 4, 5, 7);
        let in_day = minute.rem_euclid(1440);
        if (180..210).contains(&in_day) {
            ok += 2_500;
            failed += 300;
            dead += 20;
            (wait, wait_tail) = (12, 13);
        }
        let key = format!("{{jobs:work}}:history:m:{}", minute / 60);
        let base = (minute % 60) * FIELDS;
        let mut add = |field: i64, n: i64| {
            pipe.cmd("BITFIELD")
                .arg(&key)
                .arg("INCRBY")
                .arg("u32")
                .arg(format!("#{}", base + field))
                .arg(n)
                .ignore();
        };
        let runs = ok + failed;
        add(0, ok);
        add(1, failed);
        add(2, dead);
        add(WAIT + wait, runs - runs / 20);
        add(WAIT + wait_tail, runs / 20);
        add(RUN + run, runs - runs / 20);
        add(RUN + run_tail, runs / 20);
    }
    let _: () = pipe.query_async(conn).await.unwrap();
}
