//! The shipped example configuration parses, validates, and says what the
//! documentation says it does; what would overflow a time or collide with
//! conveyor's own keys is refused by `check` and at start (exit 78, naming
//! the setting), and the largest values accepted run.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::path::Path;
use std::time::Duration;

use conveyor::config::{Config, EventLevel};
use conveyor::handlers::Registry;

fn example() -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/conveyor.toml");
    let config = Config::from_file(&path).expect("config/conveyor.toml parses");
    config.validate().expect("config/conveyor.toml is valid");
    config
}

#[test]
fn the_example_config_parses_with_the_documented_values() {
    let c = example();
    assert_eq!(c.redis.url.expose(), "redis://127.0.0.1:6379/0");
    assert_eq!(c.redis.pool_size, 16);
    assert_eq!(c.daemon.shutdown_timeout, Duration::from_secs(25));
    assert_eq!(c.daemon.heartbeat_interval, Duration::from_secs(5));
    assert_eq!(c.daemon.node_ttl, Duration::from_secs(30));
    assert_eq!(c.events.channel, "conveyor:events");
    assert_eq!(c.events.stream_maxlen, 10_000);
    // [email] is the email handler's to read; the file holds what it reads.
    let email = &c.handlers["email"];
    assert_eq!(email["transport"].as_str(), Some("file"));
    assert_eq!(email["dir"].as_str(), Some("outbox"));
    assert_eq!(email["timeout"].as_str(), Some("30s"));
    assert_eq!(email["from"].as_str(), Some("conveyor <noreply@localhost>"));
    assert!(
        c.handlers.contains_key("exec"),
        "the [exec] table of defaults"
    );
    let email = &c.queues["email"];
    assert_eq!(email.handler, "email");
    assert_eq!(email.concurrency, 10);
    assert_eq!(email.max_attempts, 25);
    assert_eq!(email.backoff.base, Duration::from_secs(15));
    assert_eq!(email.timeout, Duration::from_secs(300));
    assert!(email.rate_limit.is_none());

    let orders = &c.queues["orders"];
    assert_eq!(orders.handler, "publish");
    let channel = orders.options.as_ref().and_then(|o| o.get("channel"));
    assert_eq!(channel.and_then(|c| c.as_str()), Some("orders"));
    assert_eq!(c.queue_key("orders"), "jobs:orders");
    assert_eq!(orders.events, EventLevel::All);
    assert_eq!(c.queues["default"].handler, "noop");
}

#[tokio::test]
async fn every_queue_of_the_example_has_a_known_handler() {
    let c = example();
    let handlers = Registry::builtin()
        .build_all(&c)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(handlers.len(), c.queues.len());
}

mod common;

use common::*;
use redis::AsyncCommands as _;

/// A configuration that `check` must refuse with exit 78, and what its
/// message must say (the key, and why).
const REFUSED: &[(&str, &str, &str)] = &[
    (
        "a collector address that is not a URL",
        "[tracing]\notlp_endpoint = \"127.0.0.1:4318\"\n[queues.q]\nhandler = \"noop\"\n",
        "tracing.otlp_endpoint (or OTEL_EXPORTER_OTLP_ENDPOINT) \"127.0.0.1:4318\" is not a URL",
    ),
    (
        "a sample ratio above 1",
        "[tracing]\notlp_endpoint = \"http://127.0.0.1:4318\"\nsample_ratio = 1.5\n[queues.q]\nhandler = \"noop\"\n",
        "tracing.sample_ratio 1.5 must be from 0 to 1",
    ),
    (
        "a job timeout past any clock",
        "[queues.q]\nhandler = \"noop\"\ntimeout = \"500000000000y\"\n",
        "queues.q.timeout must be between 1ms and 7days",
    ),
    (
        "a backoff that would wrap the due time",
        "[queues.q]\nhandler = \"noop\"\nbackoff = { base = \"1s\", max = \"500000000000y\" }\n",
        "queues.q.backoff.max must be between 1ms and 7days",
    ),
    (
        "a zero timeout",
        "[queues.q]\nhandler = \"noop\"\ntimeout = \"0s\"\n",
        "queues.q.timeout must be between 1ms and 7days (it is 0s)",
    ),
    (
        "no attempts",
        "[queues.q]\nhandler = \"noop\"\nmax_attempts = 0\n",
        "queues.q.max_attempts must be between 1 and 1000000 (it is 0)",
    ),
    (
        "a rate-limit window past any clock",
        "[queues.q]\nhandler = \"noop\"\nrate_limit = { limit = 5, window = \"500000000000y\" }\n",
        "queues.q.rate_limit.window must be between 1ms and 7days",
    ),
    (
        "a status record kept for ever",
        "[queues.q]\nhandler = \"noop\"\ntrack = true\ntrack_ttl = \"500000000000y\"\n",
        "queues.q.track_ttl must be between 1s and 1year",
    ),
    (
        "a node TTL past any clock",
        "[daemon]\nnode_ttl = \"500000000000y\"\n[queues.q]\nhandler = \"noop\"\n",
        "daemon.node_ttl must be between 200ms and 1day",
    ),
    (
        "a heartbeat past any clock (2 x it would overflow)",
        "[daemon]\nheartbeat_interval = \"500000000000y\"\n[queues.q]\nhandler = \"noop\"\n",
        "daemon.heartbeat_interval must be between 100ms and 1h",
    ),
    (
        "a stream Redis cannot cap",
        "[events]\nstream_maxlen = 18446744073709551615\n[queues.q]\nhandler = \"noop\"\n",
        "events.stream_maxlen must be between 0 and 100000000",
    ),
    (
        "a schedule ticking past any clock",
        "[queues.q]\nhandler = \"noop\"\n[schedules.s]\nqueue = \"q\"\nevery = \"500000000000y\"\n",
        "schedules.s.every: 500000000000years is not a whole number of seconds from 1s to 1year",
    ),
    (
        "a schedule's lock for ever",
        "[queues.q]\nhandler = \"noop\"\n[schedules.s]\nqueue = \"q\"\nevery = \"1m\"\nunique_for = \"500000000000y\"\n",
        "schedules.s.unique_for must be between 1s and 1year",
    ),
    (
        "a cache entry for ever",
        "[queues.h]\nhandler = \"http\"\n[queues.h.http]\nurl = \"http://127.0.0.1:9/x\"\nmethod = \"GET\"\ncache_ttl = \"500000000000y\"\n",
        "queues.h.http.cache_ttl must be between 1s and 1year",
    ),
    (
        "a queue on the events stream",
        "[queues.q]\nhandler = \"noop\"\nkey = \"conveyor:events\"\n",
        "queues.q.key \"conveyor:events\" is among the keys that conveyor keeps for itself",
    ),
    (
        "a queue among the nodes' keys, through the prefix",
        "key_prefix = \"conveyor:node:\"\n[queues.q]\nhandler = \"noop\"\n",
        "queues.q.key \"conveyor:node:q\" (redis.key_prefix and the queue's name) is among",
    ),
    (
        "a queue among the cache's keys",
        "[queues.q]\nhandler = \"noop\"\nkey = \"cache:q\"\n",
        "queues.q.key \"cache:q\" is among the keys that hold the shared response cache's entries",
    ),
    (
        "a queue on another queue's keys",
        "[queues.q]\nhandler = \"noop\"\nkey = \"{jobs:a}:dead\"\n",
        "queues.q.key must not contain whitespace, control characters or braces",
    ),
    (
        "an events channel on a queue's list",
        "[events]\nchannel = \"jobs:q\"\n[queues.q]\nhandler = \"noop\"\n",
        "queues.q.key \"jobs:q\" (redis.key_prefix and the queue's name) is the events channel's",
    ),
    (
        "an events channel on the job records",
        "[events]\nchannel = \"conveyor:job:x\"\n[queues.q]\nhandler = \"noop\"\n",
        "events.channel \"conveyor:job:x\" names its replay stream",
    ),
    (
        "an events channel on a queue's own keys",
        "[events]\nchannel = \"{jobs:q}:stats\"\n[queues.q]\nhandler = \"noop\"\n",
        "events.channel \"{jobs:q}:stats\" names its replay stream",
    ),
    (
        "a table that is neither conveyor's nor a handler's",
        "[emial]\ntransport = \"file\"\n[queues.q]\nhandler = \"noop\"\n",
        "[emial] is not a table of the configuration",
    ),
    (
        "an option of the queue's handler that it does not have",
        "[queues.q]\nhandler = \"noop\"\nchannel = \"x\"\n",
        "queues.q: the noop handler takes no options (given: channel)",
    ),
    (
        "an email send timeout past any clock (the handler's own table)",
        "[email]\ntimeout = \"500000000000y\"\n[queues.m]\nhandler = \"email\"\n",
        "email.timeout must be between 100ms and 1h",
    ),
    (
        "payloads published as lifecycle events",
        "[queues.q]\nhandler = \"publish\"\nchannel = \"conveyor:events\"\n",
        "queues.q.channel \"conveyor:events\" is the events channel",
    ),
];

#[test]
fn check_and_start_refuse_what_would_overflow_or_collide_with_exit_78() {
    let redis = Redis::start();
    for (what, toml, says) in REFUSED {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("conveyor.toml");
        std::fs::write(&cfg, format!("[redis]\nurl = \"{}\"\n{toml}", redis.url())).unwrap();
        let cfg = cfg.to_str().unwrap();
        for command in ["check", "run"] {
            let mut child = KillOnDrop(
                conveyor()
                    .args([command, "--config", cfg])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap(),
            );
            let code = wait_exit(&mut child, std::time::Duration::from_secs(20));
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            assert_eq!(code, Some(78), "{command}, {what}: {err}");
            assert!(err.contains(says), "{command}, {what}: {err}");
            assert!(!err.contains("panicked"), "{command}, {what}: {err}");
        }
    }
}

/// At the largest bounds, and with a producer's `timeout_ms` of any size,
/// jobs run: no panic, no job left in flight, no due time wrapped into the
/// past (which burned every attempt at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_values_run_without_a_panic_or_a_wrapped_time() {
    let redis = Redis::start();
    let daemon = TestDaemon::start(
        config(
            &redis,
            "[queues.q]\nhandler = \"fault\"\ntrack = true\ntimeout = \"7days\"\n\
             max_attempts = 1000000\nbackoff = { base = \"7days\", max = \"7days\" }\n\
             rate_limit = { limit = 1000000, window = \"7days\" }\n",
        ),
        builtin(),
    );
    let mut conn = redis.conn().await;
    let jobs = [
        r#"{"id":"long","payload":{},"attempt":0,"timeout_ms":18446744073709551615}"#,
        r#"{"id":"failing","payload":{"fail":"transient"},"attempt":0}"#,
    ];
    for job in jobs {
        let _: () = conn.rpush("jobs:q", job).await.unwrap();
    }
    let before = common::now_ms();
    wait_job_state(
        &conn,
        "long",
        "succeeded",
        std::time::Duration::from_secs(20),
    )
    .await;
    let failing = wait_job_state(
        &conn,
        "failing",
        "retrying",
        std::time::Duration::from_secs(20),
    )
    .await;
    assert_eq!(failing["attempt"], "1");
    let due: Vec<(String, f64)> = conn
        .zrange_withscores("{jobs:q}:scheduled", 0, -1)
        .await
        .unwrap();
    let wait = due[0].1 as i64 - before;
    let week = 7 * 24 * 3600 * 1000;
    assert!(
        (week / 2..=week + 1000).contains(&wait),
        "due {wait} ms after the push"
    );
    assert_eq!(in_flight(&mut conn, "jobs:q").await, 0);
    daemon.stop().await.unwrap();
}
