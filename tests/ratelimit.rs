//! Rate limits: a sliding window of job starts per queue, optionally per
//! value of a payload field. Jobs over the limit wait; they never fail.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::*;
use conveyor::Job;
use conveyor::handlers::{Handler, HandlerError, Registry};
use redis::AsyncCommands as _;

const Q: &str = "jobs:work";
const WAIT: Duration = Duration::from_secs(30);

/// Records when each job started, with its payload and attempt.
#[derive(Clone, Default)]
struct Starts(Arc<Mutex<Vec<(Instant, String, u32)>>>);

impl Starts {
    fn all(&self) -> Vec<(Instant, String, u32)> {
        self.0.lock().unwrap().clone()
    }
}

#[async_trait]
impl Handler for Starts {
    async fn handle(&self, job: &Job) -> Result<(), HandlerError> {
        self.0.lock().unwrap().push((
            Instant::now(),
            job.payload().get().to_owned(),
            job.attempt(),
        ));
        Ok(())
    }
}

fn registry(starts: &Starts) -> Registry {
    let mut r = Registry::builtin();
    r.register_handler("starts", starts.clone());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_jobs_at_five_per_second_take_about_four_windows_and_none_fails() {
    let redis = Redis::start();
    let mut conn = redis.conn().await;
    let jobs: Vec<String> = (0..20).map(|i| format!("{{\"n\":{i}}}")).collect();
    let _: () = conn.rpush(Q, jobs).await.unwrap();
    let starts = Starts::default();
    let daemon = TestDaemon::start(
        config(
            &redis,
            "[queues.work]\nhandler = \"starts\"\nconcurrency = 10\nrate_limit = { limit = 5, window = \"1s\" }\n",
        ),
        registry(&starts),
    );
    wait_until("20 jobs done", WAIT, || {
        let mut c = conn.clone();
        async move { stat(&mut c, Q, "processed").await == 20 }
    })
    .await;
    let mut times: Vec<Instant> = starts.all().iter().map(|s| s.0).collect();
    times.sort();
    let span = times[19] - times[0];
    // Four windows of five: the last five start three windows after the first.
    assert!(span >= Duration::from_millis(2900), "too fast: {span:?}");
    assert!(
        span < Duration::from_millis(6000),
        "far slower than four windows: {span:?}"
    );
    // No sliding second ever saw more than five starts (the daemon's clock
    // reads the window a little before the handler starts: 50ms of slack).
    for w in times.windows(6) {
        assert!(
            w[5] - w[0] >= Duration::from_millis(950),
            "6 starts within {:?}",
            w[5] - w[0]
        );
    }
    assert!(
        starts.all().iter().all(|s| s.2 == 1),
        "waiting spends no attempt"
    );
    assert_eq!(stat(&mut conn, Q, "failed").await, 0);
    assert_eq!(stat(&mut conn, Q, "retried").await, 0);
    assert_eq!(llen(&mut conn, "{jobs:work}:dead").await, 0);
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_domain_limit_holds_back_one_domain_and_not_another() {
    let redis = Redis::start();
    let mut conn = redis.conn().await;
    let mut jobs: Vec<String> = (0..6)
        .map(|i| format!("{{\"to\":\"u{i}@slow.example\"}}"))
        .collect();
    jobs.extend((0..3).map(|i| format!("{{\"to\":[\"v{i}@Fast.example\"]}}")));
    let _: () = conn.rpush(Q, jobs).await.unwrap();
    let starts = Starts::default();
    let daemon = TestDaemon::start(
        config(
            &redis,
            "[queues.work]\nhandler = \"starts\"\nconcurrency = 10\n\
             rate_limit = { limit = 3, window = \"30s\", key = \"to_domain\" }\n",
        ),
        registry(&starts),
    );
    wait_until("three of each domain started", WAIT, || {
        let starts = starts.clone();
        async move { starts.all().len() == 6 }
    })
    .await;
    let seen = starts.all();
    let fast = seen.iter().filter(|s| s.1.contains("Fast.example")).count();
    let slow = seen.iter().filter(|s| s.1.contains("slow.example")).count();
    assert_eq!((fast, slow), (3, 3), "each domain gets its own window");
    // The other three slow.example jobs wait for their window, scheduled,
    // not failed.
    wait_until("the rest are scheduled", WAIT, || {
        let mut c = conn.clone();
        async move { zcard(&mut c, "{jobs:work}:scheduled").await == 3 }
    })
    .await;
    let scheduled: Vec<(String, f64)> = conn
        .zrange_withscores("{jobs:work}:scheduled", 0, -1)
        .await
        .unwrap();
    let now = common::now_ms() as f64;
    for (job, due) in &scheduled {
        assert!(job.contains("slow.example"), "{job}");
        assert!(
            *due > now + 20_000.0,
            "due when the 30s window frees: {due} vs {now}"
        );
    }
    assert_eq!(stat(&mut conn, Q, "failed").await, 0);
    let windows: Vec<String> = conn.keys("{jobs:work}:ratelimit:*").await.unwrap();
    assert_eq!(windows.len(), 2, "{windows:?}");
    daemon.stop().await.unwrap();
}
