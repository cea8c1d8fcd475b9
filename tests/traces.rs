//! Traces (DESIGN section 15) against a real OTLP/HTTP receiver (a Python
//! server decoding each `ExportTraceServiceRequest` with PyPI's
//! opentelemetry-proto) and a producer's span made with the OpenTelemetry
//! Python SDK: each attempt a consumer span, the first under the
//! producer's span and a retry in a trace of its own linked to it; the
//! context passed on to an http receiver and an exec worker; log lines
//! carrying the span's ids; and a collector that is away costing the jobs
//! nothing, its spans counted as dropped.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

#[path = "traces/collector.rs"]
mod collector;
mod common;
#[path = "http/mod.rs"]
mod http;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use collector::{Collector, producer_span};
use common::*;
use http::HttpServer;
use serde_json::{Value, json};

/// OTLP's number for a consumer span, and for the statuses.
const CONSUMER: i64 = 5;
const STATUS_OK: i64 = 1;
const STATUS_ERROR: i64 = 2;

/// The daemon on `cfg`, tracing to `endpoint`, logging JSON at debug level.
fn daemon(cfg: &Path, endpoint: &str) -> Command {
    let mut cmd = conveyor();
    cmd.args(["run", "--config", cfg.to_str().unwrap()])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("CONVEYOR_LOG_FORMAT", "json")
        .env("CONVEYOR_LOG", "conveyor=debug")
        .stdout(Stdio::null());
    cmd
}

/// Enqueues `payload` with `conveyor enqueue`; the job's id.
fn enqueue(cfg: &Path, queue: &str, payload: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut all = vec!["enqueue", "--config", cfg.to_str().unwrap(), queue, payload];
    all.extend_from_slice(args);
    let (code, out, err) = run_cli_env(&all, env);
    assert_eq!(code, 0, "{err}");
    out.trim().to_owned()
}

/// The trace and span ids of a `traceparent`.
fn ids(traceparent: &str) -> (String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    (parts[1].to_owned(), parts[2].to_owned())
}

/// The JSON log lines of job `id` whose message is `message`.
fn job_lines(logs: &Logs, id: &str, message: &str) -> Vec<Value> {
    logs.lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["id"] == id && l["message"] == message)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_attempt_is_the_producers_child_and_a_retry_a_linked_trace() {
    let redis = Redis::start();
    let collector = Collector::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(
        dir.path(),
        &redis,
        "[queues.orders]\nhandler = \"fault\"\nmax_attempts = 2\n\
         backoff = { base = \"100ms\", max = \"100ms\" }\n",
    );
    let mut cmd = daemon(&cfg, &collector.endpoint());
    cmd.env("OTEL_SERVICE_NAME", "billing");
    let (_daemon, logs) = spawn_logged(cmd);
    let (traceparent, tracestate) = producer_span();
    let (producer_trace, producer_span_id) = ids(&traceparent);
    // --traceparent on the command line (tracestate from the environment):
    // fails once, then succeeds.
    let retried = enqueue(
        &cfg,
        "orders",
        r#"{"fail": "transient", "until_attempt": 2}"#,
        &["--traceparent", &traceparent],
        &[("TRACESTATE", &tracestate)],
    );
    // TRACEPARENT in the environment: fails for good.
    let failed = enqueue(
        &cfg,
        "orders",
        r#"{"fail": "permanent"}"#,
        &[],
        &[("TRACEPARENT", &traceparent)],
    );

    let spans = collector.job_spans(&retried, 2).await;
    let (first, second) = (&spans[0], &spans[1]);
    for (span, attempt) in [(first, 1), (second, 2)] {
        assert_eq!(span["name"], "process orders");
        assert_eq!(span["kind"], CONSUMER);
        assert_eq!(span["service"], "billing");
        let a = &span["attributes"];
        assert_eq!(a["messaging.system"], "conveyor");
        assert_eq!(a["messaging.operation.type"], "process");
        assert_eq!(a["messaging.destination.name"], "orders");
        assert_eq!(a["messaging.message.id"], retried.as_str());
        assert_eq!(a["messaging.conveyor.attempt"], attempt);
    }
    // The first attempt: a child of the producer's span, its trace state kept.
    assert_eq!(first["trace_id"], producer_trace.as_str());
    assert_eq!(first["parent_span_id"], producer_span_id.as_str());
    assert_eq!(first["trace_state"], "shop=checkout");
    assert_eq!(
        first["attributes"]["messaging.conveyor.outcome"],
        "retrying"
    );
    assert_eq!(first["status"]["code"], STATUS_ERROR);
    let error = first["status"]["message"].as_str().unwrap();
    assert!(!error.is_empty());
    assert_eq!(first["attributes"]["messaging.conveyor.error"], error);
    // The retry: a trace of its own, linked to the producer's span.
    assert_ne!(second["trace_id"], producer_trace.as_str());
    assert_eq!(second["parent_span_id"], "");
    assert_eq!(
        second["links"],
        json!([{"trace_id": producer_trace, "span_id": producer_span_id}])
    );
    assert_eq!(
        second["attributes"]["messaging.conveyor.outcome"],
        "succeeded"
    );
    assert_eq!(second["status"]["code"], STATUS_OK);

    let dead = collector.job_spans(&failed, 1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["parent_span_id"], producer_span_id.as_str());
    assert_eq!(dead[0]["attributes"]["messaging.conveyor.outcome"], "dead");
    assert_eq!(dead[0]["status"]["code"], STATUS_ERROR);

    // Log correlation: each attempt's lines carry its span's ids.
    for (span, message) in [(first, "failed; will retry"), (second, "succeeded")] {
        let deadline = Instant::now() + Duration::from_secs(10);
        let lines = loop {
            let lines = job_lines(&logs, &retried, message);
            if !lines.is_empty() || Instant::now() > deadline {
                break lines;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(!lines.is_empty(), "no {message:?} line: {:?}", logs.lines());
        for line in lines {
            assert_eq!(line["trace_id"], span["trace_id"], "{line}");
            assert_eq!(line["span_id"], span["span_id"], "{line}");
        }
    }
}

/// An oneshot exec worker that appends the request it was given to the
/// file its payload names.
const RECORDER: &str = r#"
import json, sys
req = json.loads(sys.stdin.read())
with open(req["payload"]["out"], "a") as out:
    out.write(json.dumps(req) + "\n")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jobs_span_goes_on_to_an_http_receiver_and_an_exec_worker() {
    let redis = Redis::start();
    let collector = Collector::start();
    let server = HttpServer::start();
    let dir = tempfile::tempdir().unwrap();
    let worker = dir.path().join("recorder.py");
    std::fs::write(&worker, RECORDER).unwrap();
    let requests = dir.path().join("requests.jsonl");
    let cfg = config_file(
        dir.path(),
        &redis,
        &format!(
            "[queues.hooks]\nhandler = \"http\"\n[queues.hooks.http]\nurl = \"{}\"\n\
             [queues.work]\nhandler = \"exec\"\n[queues.work.exec]\n\
             command = [\"python3\", \"{}\"]\nmode = \"oneshot\"\n",
            server.url("/ok"),
            worker.display()
        ),
    );
    let (_daemon, _logs) = spawn_logged(daemon(&cfg, &collector.endpoint()));
    let (traceparent, tracestate) = producer_span();
    let tp = ["--traceparent", traceparent.as_str()];
    let state = [("TRACESTATE", tracestate.as_str())];
    let hook = enqueue(&cfg, "hooks", r#"{"order": 7}"#, &tp, &state);
    let out = json!({"out": requests}).to_string();
    let work = enqueue(&cfg, "work", &out, &tp, &state);

    let span = &collector.job_spans(&hook, 1).await[0];
    let sent = format!(
        "00-{}-{}-01",
        span["trace_id"].as_str().unwrap(),
        span["span_id"].as_str().unwrap()
    );
    let request = &server.to("/ok")[0];
    assert_eq!(request.headers["traceparent"], sent);
    assert_eq!(request.headers["tracestate"], "shop=checkout");

    let span = &collector.job_spans(&work, 1).await[0];
    let sent = format!(
        "00-{}-{}-01",
        span["trace_id"].as_str().unwrap(),
        span["span_id"].as_str().unwrap()
    );
    let got: Value =
        serde_json::from_str(std::fs::read_to_string(&requests).unwrap().trim()).unwrap();
    assert_eq!(got["traceparent"], sent);
    assert_eq!(got["tracestate"], "shop=checkout");
    assert_eq!(got["id"], work.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_collector_away_jobs_run_at_once_and_spans_are_counted_dropped() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(
        dir.path(),
        &redis,
        "[web]\nlisten = \"127.0.0.1:0\"\n[queues.work]\nhandler = \"noop\"\nconcurrency = 8\n",
    );
    // Nothing listens there: every export fails at once.
    let away = format!("http://127.0.0.1:{}", free_port());
    let (_daemon, logs) = spawn_logged(daemon(&cfg, &away));
    let web = web_address(&logs).await;
    const JOBS: usize = 500;
    let lines = (0..JOBS)
        .map(|n| format!("{{\"n\": {n}}}\n"))
        .collect::<String>();
    let file = dir.path().join("jobs.ndjson");
    std::fs::write(&file, lines).unwrap();
    let started = Instant::now();
    let (code, _, err) = run_cli(&[
        "enqueue",
        "--config",
        cfg.to_str().unwrap(),
        "work",
        "--file",
        file.to_str().unwrap(),
        "--quiet",
    ]);
    assert_eq!(code, 0, "{err}");
    let client = reqwest::Client::new();
    let metric = |text: &str, name: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
    };
    let mut done = 0.0;
    let mut dropped = 0.0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let text = client
            .get(format!("{web}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        done = metric(
            &text,
            "conveyor_jobs_total{outcome=\"succeeded\",queue=\"work\"}",
        )
        .unwrap_or(0.0);
        dropped = metric(&text, "conveyor_spans_dropped_total").unwrap_or(0.0);
        if done as usize == JOBS && dropped as usize == JOBS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(done as usize, JOBS, "jobs done");
    assert_eq!(dropped as usize, JOBS, "spans counted dropped");
    // Every job ran while the exports failed: well within the time one
    // export may take (5 s), had a job waited for one.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// A Rust handler that keeps, as its result, the span context the daemon
/// gave it, as a handler would start its own spans under it.
struct Spans;

#[conveyor::async_trait]
impl conveyor::Handler for Spans {
    async fn handle(&self, job: &conveyor::Job) -> Result<(), conveyor::HandlerError> {
        use conveyor::opentelemetry::trace::TraceContextExt as _;
        let cx = job.trace_context().expect("tracing is on");
        let span = cx.span();
        let ids = span.span_context();
        job.set_result(&json!({
            "trace_id": ids.trace_id().to_string(),
            "span_id": ids.span_id().to_string(),
            "traceparent": job.traceparent(),
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_handler_is_given_the_jobs_span_as_its_parent() {
    let redis = Redis::start();
    let collector = Collector::start();
    let config = config(
        &redis,
        &format!(
            "[tracing]\notlp_endpoint = \"{}\"\n[queues.spans]\nhandler = \"spans\"\ntrack = true\n",
            collector.endpoint()
        ),
    );
    let mut registry = builtin();
    registry.register_handler("spans", Spans);
    let daemon = TestDaemon::start(config, registry);
    let mut conn = redis.conn().await;
    let envelope = json!({"id": "rust-1", "payload": {}, "attempt": 0});
    let _: () = redis::AsyncCommands::rpush(&mut conn, "jobs:spans", envelope.to_string())
        .await
        .unwrap();
    let done = wait_job_state(&conn, "rust-1", "succeeded", Duration::from_secs(20)).await;
    let got: Value = serde_json::from_str(&done["result"]).unwrap();
    let span = &collector.job_spans("rust-1", 1).await[0];
    assert_eq!(got["trace_id"], span["trace_id"]);
    assert_eq!(got["span_id"], span["span_id"]);
    let (trace_id, span_id) = (
        span["trace_id"].as_str().unwrap(),
        span["span_id"].as_str().unwrap(),
    );
    assert_eq!(got["traceparent"], format!("00-{trace_id}-{span_id}-01"));
    // No producer: the attempt is a trace's root.
    assert_eq!(span["parent_span_id"], "");
    daemon.stop().await.unwrap();
}
