//! Handlers misbehaving: panics and timeouts (each once, then success), and
//! a poison job that aborts the process every time it runs.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{Redis, llen, stat};
use crate::harness::*;

const WAIT: Duration = Duration::from_secs(120);

/// 2,000 good jobs with 50 that panic once, 50 that outlive the 300ms job
/// timeout once, and one `{"abort":true}` a third of the way in, 10 at a
/// time. The daemon is restarted whenever it dies. The poison must kill it
/// exactly three times and then sit in the dead letter list, alone, with
/// `deliveries` 3; every other job completes (the ones that shared its
/// crashes are run alone afterwards, so none is blamed with it); each panic
/// and timeout costs one failed attempt and no more.
///
/// Duplicates are bounded by what the three crashes caught in flight:
/// at most 3 x 10.
///
/// Time to recover: from the first crash until the poison is quarantined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_faults_and_a_poison_job() {
    let _serial = serial().await;
    let (good, odd, concurrency) = (2_000 * scale(), 50 * scale(), 10);
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let queue = format!(
        "[queues.work]\nhandler = \"fault\"\nconcurrency = {concurrency}\ntimeout = \"300ms\"\n\
         backoff = {{ base = \"50ms\", max = \"100ms\" }}\n"
    );
    let cfg = write_config(dir.path(), &redis.url(), FAST, &queue);
    let mut conn = patient(&redis).await;
    let mut ledger = Ledger::new();
    let mut items: Vec<String> = (0..good)
        .map(|_| ledger.job(json!({"sleep_ms": fastrand::u64(0..=3)})))
        .collect();
    for _ in 0..odd {
        items.push(ledger.job(json!({"panic": true, "until_attempt": 2})));
        items.push(ledger.job(json!({"sleep_ms": 1000, "until_attempt": 2})));
    }
    fastrand::shuffle(&mut items);
    let poison = ledger.job(json!({"abort": true}));
    let poison_id = ledger_id(&poison);
    items.insert(items.len() / 3, poison);
    push_all(&mut conn, Q, &items).await;

    let mut daemon = Daemon::start(&cfg);
    let mut crashes = 0;
    let mut first_crash = None;
    let deadline = Instant::now() + WAIT;
    let quarantine = loop {
        assert!(
            Instant::now() < deadline,
            "the poison was never quarantined"
        );
        if llen(&mut conn, DEAD).await > 0 {
            break first_crash.map(|t: Instant| t.elapsed());
        }
        if daemon.has_exited() {
            crashes += 1;
            first_crash.get_or_insert_with(Instant::now);
            assert!(crashes <= 3, "the poison was delivered a fourth time");
            daemon = Daemon::start(&cfg);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(crashes, 3, "each delivery of the poison crashed its daemon");

    let tally = ledger.drain(&mut conn, WAIT * scale() as u32).await;
    let dead = crate::common::dead(&mut conn, Q).await;
    report(
        "handler_faults",
        &tally,
        quarantine,
        &format!(
            "panics={odd} timeouts={odd} crashes={crashes} failed={} retried={}",
            stat(&mut conn, Q, "failed").await,
            stat(&mut conn, Q, "retried").await
        ),
    );
    tally.assert_settled();
    assert_eq!(dead.len(), 1, "only the poison is dead: {dead:?}");
    assert_eq!(dead[0]["id"], poison_id.as_str());
    assert_eq!(dead[0]["deliveries"], 3);
    assert_eq!((tally.dead, tally.completed), (1, ledger.enqueued() - 1));
    assert!(tally.duplicated <= 3 * concurrency, "{tally:?}");
    // One failed attempt per panic and per timeout, plus the poison's death.
    assert_eq!(stat(&mut conn, Q, "failed").await as usize, 2 * odd + 1);
    assert_eq!(stat(&mut conn, Q, "retried").await as usize, 2 * odd);
    assert!(!daemon.has_exited(), "the last daemon keeps running");
}

fn ledger_id(item: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(item).unwrap();
    v["id"].as_str().unwrap().to_owned()
}
