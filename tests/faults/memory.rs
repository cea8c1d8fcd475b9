//! Memory under load: the daemon's resident set stays flat across a long run.

use std::io::Write as _;
use std::time::{Duration, Instant};

use crate::common::{Redis, in_flight, llen, run_cli, stat};
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
