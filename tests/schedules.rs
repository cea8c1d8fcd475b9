//! Schedules against a private redis-server: several daemons, each tick
//! enqueued once; a catch-up of one tick after a time with no daemon; an
//! edited schedule starting afresh; unique jobs skipping ticks; events; the
//! `schedules` command and configuration errors.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use conveyor::Job;
use conveyor::handlers::{Handler, HandlerError, Registry};
use redis::AsyncCommands as _;

const WAIT: Duration = Duration::from_secs(20);

/// Records the id of every job it runs, with which daemon ran it.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<String>>>);

impl Recorder {
    fn ids(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// The ticks (unix seconds) of the jobs of schedule `name`, in order.
    fn ticks(&self, name: &str) -> Vec<i64> {
        let mut ticks: Vec<i64> = self
            .ids()
            .iter()
            .filter_map(|id| id.strip_prefix(&format!("{name}:"))?.parse().ok())
            .collect();
        ticks.sort();
        ticks
    }
}

#[async_trait]
impl Handler for Recorder {
    async fn handle(&self, job: &Job) -> Result<(), HandlerError> {
        self.0.lock().unwrap().push(job.id().to_owned());
        Ok(())
    }
}

fn registry(recorder: &Recorder) -> Registry {
    let mut registry = Registry::builtin();
    registry.register_handler("record", recorder.clone());
    registry
}

fn queue(schedule: &str) -> String {
    format!("[queues.ticks]\nhandler = \"record\"\nconcurrency = 4\n{schedule}")
}

fn now() -> i64 {
    common::now_ms() / 1000
}

/// Waits until the wall clock reaches unix second `second`.
async fn until_second(second: i64) {
    wait_until(
        &format!("the clock reaches {second}"),
        WAIT,
        || async move { now() >= second },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_enqueue_each_tick_once() {
    let redis = Redis::start();
    let recorder = Recorder::default();
    let schedule = "[schedules.beat]\nqueue = \"ticks\"\nevery = \"1s\"\npayload = { n = 1 }\n";
    let daemons: Vec<TestDaemon> = (0..3)
        .map(|_| TestDaemon::start(config(&redis, &queue(schedule)), registry(&recorder)))
        .collect();
    let started = now();
    // A new schedule starts from its next tick: five more after that.
    until_second(started + 6).await;
    wait_until("five ticks ran", WAIT, || async {
        recorder.ticks("beat").len() >= 5
    })
    .await;
    for d in daemons {
        d.stop().await.unwrap();
    }
    let ticks = recorder.ticks("beat");
    let ids = recorder.ids();
    let mut seen = HashMap::new();
    for id in &ids {
        *seen.entry(id.clone()).or_insert(0) += 1;
    }
    assert!(seen.values().all(|&n| n == 1), "a tick ran twice: {ids:?}");
    assert!(
        ticks.windows(2).all(|w| w[1] == w[0] + 1),
        "every second, none missed: {ticks:?}"
    );
    assert!(ticks.len() >= 5, "{ticks:?}");
    let mut conn = redis.conn().await;
    let last: i64 = conn.get("{jobs:ticks}:schedule:beat").await.unwrap();
    assert_eq!(last, *ticks.last().unwrap(), "the last tick is recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_time_with_no_daemon_only_the_latest_tick_is_caught_up() {
    let redis = Redis::start();
    let recorder = Recorder::default();
    let schedule = "[schedules.beat]\nqueue = \"ticks\"\nevery = \"1s\"\n";
    let cfg = || config(&redis, &queue(schedule));
    let daemon = TestDaemon::start(cfg(), registry(&recorder));
    wait_until("two ticks ran", WAIT, || async {
        recorder.ticks("beat").len() >= 2
    })
    .await;
    daemon.stop().await.unwrap();
    let before = *recorder.ticks("beat").last().unwrap();
    // Four ticks pass with no daemon.
    until_second(before + 5).await;
    let restarted = now();
    let daemon = TestDaemon::start(cfg(), registry(&recorder));
    wait_until("the catch-up and one more tick ran", WAIT, || async {
        recorder
            .ticks("beat")
            .iter()
            .filter(|&&t| t > before)
            .count()
            >= 2
    })
    .await;
    daemon.stop().await.unwrap();
    let after: Vec<i64> = recorder
        .ticks("beat")
        .into_iter()
        .filter(|&t| t > before)
        .collect();
    // The first job after the gap is the latest tick due at the restart
    // (or, if the restart straddled a second, the one after it); the ticks
    // missed before it were not run.
    assert!(
        after[0] >= restarted && after[0] <= restarted + 1,
        "caught up {} at {restarted} after {before}: {after:?}",
        after[0]
    );
    assert!(after[0] >= before + 5, "no missed tick ran: {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_schedule_starts_from_its_next_tick() {
    let redis = Redis::start();
    let recorder = Recorder::default();
    let every = |secs: u32| {
        config(
            &redis,
            &queue(&format!(
                "[schedules.beat]\nqueue = \"ticks\"\nevery = \"{secs}s\"\n"
            )),
        )
    };
    let daemon = TestDaemon::start(every(1), registry(&recorder));
    wait_until("a tick ran", WAIT, || async {
        !recorder.ticks("beat").is_empty()
    })
    .await;
    daemon.stop().await.unwrap();
    let before = *recorder.ticks("beat").last().unwrap();
    until_second(before + 3).await;
    let edited_at = now();
    let daemon = TestDaemon::start(every(2), registry(&recorder));
    wait_until("a tick of the edited schedule ran", WAIT, || async {
        recorder.ticks("beat").iter().any(|&t| t > before)
    })
    .await;
    daemon.stop().await.unwrap();
    let after: Vec<i64> = recorder
        .ticks("beat")
        .into_iter()
        .filter(|&t| t > before)
        .collect();
    // No catch-up from before the edit: the first tick is after it, even.
    assert!(after[0] > edited_at, "{after:?} at {edited_at}");
    assert!(after.iter().all(|t| t % 2 == 0), "{after:?}");
    let mut conn = redis.conn().await;
    let spec: String = conn.get("{jobs:ticks}:schedule:beat:spec").await.unwrap();
    assert_eq!(spec, "every 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unique_schedule_skips_ticks_while_its_job_runs() {
    let redis = Redis::start();
    let mut conn = redis.conn().await;
    // Each job sleeps 2.5 s: with unique_for, the ticks meanwhile are skipped.
    let toml = "[queues.slow]\nhandler = \"fault\"\nconcurrency = 4\ntrack = true\n\
                [schedules.beat]\nqueue = \"slow\"\nevery = \"1s\"\nunique_for = \"1m\"\n\
                payload = { sleep_ms = 2500 }\nmax_attempts = 2\n";
    let daemon = TestDaemon::start(config(&redis, toml), builtin());
    let started = now();
    until_second(started + 7).await;
    wait_until("two jobs done", WAIT, || {
        let mut c = conn.clone();
        async move { stat(&mut c, "jobs:slow", "processed").await >= 2 }
    })
    .await;
    daemon.stop().await.unwrap();
    let processed = stat(&mut conn, "jobs:slow", "processed").await;
    assert!(
        (2..=3).contains(&processed),
        "6 or 7 ticks, one job at a time of 2.5 s each: {processed} ran"
    );
    // The job carries the schedule's options, and its status record says
    // which schedule enqueued it.
    let last: i64 = conn.get("{jobs:slow}:schedule:beat").await.unwrap();
    let ids: Vec<String> = conn.keys("conveyor:job:beat:*").await.unwrap();
    assert!(!ids.is_empty());
    let record: HashMap<String, String> = conn.hgetall(&ids[0]).await.unwrap();
    assert_eq!(record["schedule"], "beat", "{record:?}");
    assert!(last >= started + 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_enqueued_events_name_the_schedule() {
    let redis = Redis::start();
    let recorder = Recorder::default();
    let schedule = "[schedules.beat]\nqueue = \"ticks\"\nevery = \"1s\"\n";
    let daemon = TestDaemon::start(config(&redis, &queue(schedule)), registry(&recorder));
    wait_until("a tick ran", WAIT, || async {
        !recorder.ticks("beat").is_empty()
    })
    .await;
    daemon.stop().await.unwrap();
    let id = recorder.ids()[0].clone();
    let mut conn = redis.conn().await;
    let entries = stream_entries(&mut conn, "conveyor:events").await;
    let enqueued: Vec<serde_json::Value> = entries
        .iter()
        .flat_map(|(_, fields)| fields.iter())
        .flat_map(|(_, events)| events.lines())
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|e| e["type"] == "job.enqueued" && e["id"] == id.as_str())
        .collect();
    assert_eq!(enqueued.len(), 1, "{enqueued:?}");
    assert_eq!(enqueued[0]["schedule"], "beat");
    assert_eq!(enqueued[0]["queue"], "ticks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedules_command_shows_last_and_next_ticks() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let schedules = "[queues.ticks]\nhandler = \"noop\"\n\
                     [schedules.nightly]\nqueue = \"ticks\"\ncron = \"0 3 * * *\"\ntimezone = \"Europe/Paris\"\n\
                     [schedules.beat]\nqueue = \"ticks\"\nevery = \"1s\"\n";
    let cfg = config_file(dir.path(), &redis, schedules);
    let mut conn = redis.conn().await;
    let _: () = conn
        .set("{jobs:ticks}:schedule:beat", 1_800_000_000)
        .await
        .unwrap();
    let (code, out, err) = run_cli(&["schedules", "--json", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    let beat = rows.iter().find(|r| r["name"] == "beat").unwrap();
    assert_eq!(beat["every"], "1s");
    assert_eq!(beat["last_tick"], 1_800_000_000);
    assert_eq!(beat["last_tick_at"], "2027-01-15T08:00:00+00:00");
    let nightly = rows.iter().find(|r| r["name"] == "nightly").unwrap();
    assert_eq!(
        (nightly["cron"].as_str(), nightly["timezone"].as_str()),
        (Some("0 3 * * *"), Some("Europe/Paris"))
    );
    assert!(nightly["last_tick"].is_null());
    let next = nightly["next_tick_at"].as_str().unwrap();
    assert!(next.contains("T03:00:00+0"), "{next}");
    assert!(nightly["next_tick"].as_i64().unwrap() > now());
    let (code, out, _) = run_cli(&["schedules", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        out.contains("0 3 * * * (Europe/Paris)") && out.contains("every 1s"),
        "{out}"
    );
}

#[test]
fn a_bad_schedule_is_a_configuration_error_naming_it() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "cron = \"0 3 * *\"",
            "schedules.bad.cron: \"0 3 * *\" is not a five-field cron expression",
        ),
        (
            "cron = \"0 3 * * *\"\ntimezone = \"Mars/Olympus\"",
            "schedules.bad.cron: \"Mars/Olympus\" is not a known time zone",
        ),
        (
            "every = \"1500ms\"",
            "schedules.bad.every: 1s 500ms is not a whole number of seconds",
        ),
        (
            "every = \"5m\"\ncron = \"* * * * *\"",
            "schedules.bad: give cron or every, not both",
        ),
        (
            "",
            "schedules.bad: give cron = \"0 3 * * *\" (five fields) or every = \"5m\"",
        ),
        (
            "every = \"5m\"\ntimezone = \"UTC\"",
            "schedules.bad.timezone: applies to cron only",
        ),
    ];
    for (fields, expected) in cases {
        let text = format!(
            "[queues.ticks]\nhandler = \"noop\"\n[schedules.bad]\nqueue = \"ticks\"\n{fields}\n"
        );
        let cfg = config_file(dir.path(), &redis, &text);
        for command in ["check", "run", "schedules"] {
            let (code, _, err) = run_cli(&[command, "--config", cfg.to_str().unwrap()]);
            assert_eq!(code, 78, "{command} with {fields}: {err}");
            assert!(err.contains(expected), "{command} with {fields}: {err}");
        }
    }
    let text =
        "[queues.ticks]\nhandler = \"noop\"\n[schedules.bad]\nqueue = \"tics\"\nevery = \"1s\"\n";
    let cfg = config_file(dir.path(), &redis, text);
    let (code, _, err) = run_cli(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 78);
    assert!(
        err.contains("schedules.bad.queue: no queue \"tics\""),
        "{err}"
    );
}
