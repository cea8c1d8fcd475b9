//! SIGTERM under load, with jobs that outlive a short `shutdown_timeout`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{in_flight, lrange, stat, wait_until};
use crate::harness::*;

const WAIT: Duration = Duration::from_secs(120);
const SIGTERM: i32 = 15;
/// The scenario's `shutdown_timeout`, and how long a long job runs.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);
const LONG_MS: u64 = 2000;

/// 2,000 short jobs (0-10ms) with 40 long ones (2s) among them, 20 at a
/// time, `shutdown_timeout = "1s"`. SIGTERM once long jobs run: exit 0
/// within the timeout plus one second; the interrupted jobs back at the
/// head of the queue, unchanged, and the untouched rest behind them in
/// order; nothing in flight. A second daemon then drains the queue and
/// every job completes exactly once (an interrupted run records nothing).
///
/// Time to recover: from SIGTERM to the exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load() {
    let _serial = serial().await;
    let (short, long) = (2_000 * scale(), 40 * scale());
    let redis = crate::common::Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let daemon_table = format!(
        "shutdown_timeout = \"{}ms\"\nheartbeat_interval = \"200ms\"\nnode_ttl = \"1s\"",
        SHUTDOWN_TIMEOUT.as_millis()
    );
    let queue = "[queues.work]\nhandler = \"fault\"\nconcurrency = 20\n";
    let cfg = write_config(dir.path(), &redis.url(), &daemon_table, queue);
    let mut conn = patient(&redis).await;
    let mut ledger = Ledger::new();
    let every = short / long;
    let items: Vec<String> = (0..short + long)
        .map(|i| {
            let ms = if i % (every + 1) == every / 2 {
                LONG_MS
            } else {
                fastrand::u64(0..=10)
            };
            ledger.job(json!({ "sleep_ms": ms }))
        })
        .collect();
    push_all(&mut conn, Q, &items).await;

    let mut daemon = Daemon::start(&cfg);
    let list = registered(&conn, daemon.pid()).await;
    wait_until("a quarter done, long jobs running", WAIT, || {
        let (mut c, list) = (conn.clone(), list.clone());
        let at = (items.len() / 4) as u64;
        async move {
            processed(&mut c).await >= at
                && lrange(&mut c, &list)
                    .await
                    .iter()
                    .filter(|i| is_long(i))
                    .count()
                    >= 3
        }
    })
    .await;
    let signalled = Instant::now();
    daemon.signal(SIGTERM);
    let code = daemon.wait_exit(WAIT);
    let took = signalled.elapsed();
    assert_eq!(code, Some(0), "exit 0 after SIGTERM");
    assert!(
        took <= SHUTDOWN_TIMEOUT + Duration::from_secs(1),
        "exit within shutdown_timeout + 1s, took {took:?}"
    );
    daemon.assert_no_panic();
    assert_eq!(in_flight(&mut conn, Q).await, 0, "nothing left in flight");

    // The queue: the interrupted jobs first, then the never-taken rest, in order.
    let interrupted = stat(&mut conn, Q, "recovered").await as usize;
    let queue = lrange(&mut conn, Q).await;
    assert!(
        interrupted >= 1 && queue.len() >= interrupted,
        "{interrupted} {}",
        queue.len()
    );
    for item in &queue[..interrupted] {
        assert!(is_long(item), "a short job was interrupted: {item}");
        assert!(
            items.contains(item),
            "an interrupted job came back changed: {item}"
        );
    }
    let rest = &queue[interrupted..];
    assert_eq!(
        rest,
        &items[items.len() - rest.len()..],
        "behind them, the jobs never taken, unchanged and in order"
    );
    let before_drain = ledger.tally(&mut conn).await;
    before_drain.assert_nothing_lost();

    let mut drainer = Daemon::start(&cfg);
    let tally = ledger.drain(&mut conn, WAIT * scale() as u32).await;
    report(
        "sigterm_under_load",
        &tally,
        Some(took),
        &format!(
            "interrupted={interrupted} waiting_at_exit={} shutdown_timeout={}s",
            before_drain.waiting,
            SHUTDOWN_TIMEOUT.as_secs_f64()
        ),
    );
    tally.assert_settled();
    assert_eq!(tally.completed, ledger.enqueued(), "{tally:?}");
    assert_eq!(tally.duplicated, 0, "an interrupted run records nothing");
    drainer.assert_healthy();
}

fn is_long(item: &str) -> bool {
    serde_json::from_str::<Value>(item).is_ok_and(|v| v["payload"]["sleep_ms"] == json!(LONG_MS))
}
