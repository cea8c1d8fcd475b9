//! Flows (DESIGN section 13) on a real Redis with real daemons: shapes
//! (chain, fan-out and fan-in, diamond), what a dead node does to the rest
//! (`when`, skipped cascades, `on_failure = "cancel"`), an empty flow, a
//! second submission, refused documents, and the command line. Runs are
//! counted from the handler's own records, not from conveyor's.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conveyor::api::Client;
use conveyor::{HandlerError, Job, Registry, async_trait};
use futures::StreamExt as _;
use serde_json::{Value, json};

use common::*;

/// One run as the handler saw it.
#[derive(Debug, Clone)]
struct Run {
    id: String,
    flow: Option<String>,
    parents: Option<Value>,
}

/// Records each run; fails permanently when the payload says
/// `"fail": true`; leaves `{"from": <id>}` as its result.
#[derive(Clone, Default)]
struct Step {
    runs: Arc<Mutex<Vec<Run>>>,
}

#[async_trait]
impl conveyor::handlers::Handler for Step {
    async fn handle(&self, job: &Job) -> Result<(), HandlerError> {
        self.runs.lock().unwrap().push(Run {
            id: job.id().to_owned(),
            flow: job.flow().map(str::to_owned),
            parents: job
                .parents()
                .map(|p| serde_json::from_str(p.get()).unwrap()),
        });
        let payload: Value = job.payload_as()?;
        if let Some(ms) = payload["sleep_ms"].as_u64() {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if payload["fail"] == json!(true) {
            return Err(HandlerError::permanent("asked to fail"));
        }
        if let Some(n) = payload["big"].as_u64() {
            job.set_result(&json!({ "pad": "x".repeat(n as usize) }))?;
            return Ok(());
        }
        // `add`: so many children after this node, and `merge` after them.
        if let Some(add) = payload.get("add") {
            let node = job.id().rsplit(':').next().unwrap().to_owned();
            let mut nodes = serde_json::Map::new();
            let n = add.as_u64().unwrap_or(0);
            let kids: Vec<String> = (0..n).map(|i| format!("{node}-{i}")).collect();
            for kid in &kids {
                nodes.insert(
                    kid.clone(),
                    json!({"queue": "steps", "payload": {"n": 1}, "after": [node]}),
                );
            }
            nodes.insert(
                format!("{node}-merge"),
                json!({"queue": "other", "payload": {}, "after": kids}),
            );
            if let Some(bad) = payload.get("bad") {
                nodes.insert(bad.as_str().unwrap().to_owned(), json!({"queue": "steps"}));
            }
            job.set_result(&json!({ "count": n, "flow_add": nodes }))?;
            return Ok(());
        }
        job.set_result(&json!({ "from": job.id() }))?;
        Ok(())
    }
}

impl Step {
    fn runs(&self) -> Vec<Run> {
        self.runs.lock().unwrap().clone()
    }

    fn runs_of(&self, id: &str) -> Vec<Run> {
        self.runs().into_iter().filter(|r| r.id == id).collect()
    }
}

const QUEUES: &str = "[queues.steps]\nhandler = \"step\"\nconcurrency = 8\n\
                      [queues.other]\nhandler = \"step\"\nconcurrency = 4\n\
                      [queues.single]\nhandler = \"step\"\nconcurrency = 1\n\
                      [queues.tiny]\nhandler = \"step\"\nmax_payload_bytes = 1000\n";

fn start(redis: &Redis, step: &Step) -> (TestDaemon, Client) {
    let config = config(redis, QUEUES);
    let mut registry: Registry = builtin();
    registry.register_handler("step", step.clone());
    let client = Client::new(&config, "test").unwrap();
    (TestDaemon::start(config, registry), client)
}

/// Waits for flow `fid` to end; returns its view.
async fn ended(client: &Client, fid: &str) -> conveyor::api::FlowView {
    wait_until(&format!("flow {fid} ends"), Duration::from_secs(30), || {
        let client = client.clone();
        let fid = fid.to_owned();
        async move { client.flow(&fid).await.is_ok_and(|v| v.status != "running") }
    })
    .await;
    client.flow(fid).await.unwrap()
}

fn statuses(view: &conveyor::api::FlowView) -> BTreeMap<String, String> {
    view.nodes
        .iter()
        .map(|n| (n.name.clone(), n.status.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_fan_outs_and_diamonds_run_each_node_once_after_its_parents() {
    let redis = Redis::start();
    let step = Step::default();
    let (daemon, client) = start(&redis, &step);

    let chain = json!({"flow": "chain", "jobs": {
        "a": {"queue": "steps", "payload": {"n": 1.50}},
        "b": {"queue": "other", "payload": {}, "after": ["a"]},
        "c": {"queue": "steps", "payload": {}, "after": ["b"]}}});
    let mut fan = serde_json::Map::new();
    fan.insert("root".into(), json!({"queue": "steps", "payload": {}}));
    let parts: Vec<String> = (0..50).map(|i| format!("part-{i}")).collect();
    for p in &parts {
        fan.insert(
            p.clone(),
            json!({"queue": "steps", "payload": {"sleep_ms": 5}, "after": ["root"]}),
        );
    }
    fan.insert(
        "join".into(),
        json!({"queue": "other", "payload": {}, "after": parts}),
    );
    let fan = json!({"flow": "fan", "jobs": fan});
    let diamond = json!({"flow": "diamond", "jobs": {
        "top": {"queue": "steps", "payload": {}},
        "left": {"queue": "steps", "payload": {}, "after": ["top"]},
        "right": {"queue": "other", "payload": {}, "after": ["top"]},
        "bottom": {"queue": "steps", "payload": {}, "after": ["left", "right"]}}});
    for doc in [&chain, &fan, &diamond] {
        client.submit_flow(&doc.to_string()).await.unwrap();
    }
    for fid in ["chain", "fan", "diamond"] {
        let view = ended(&client, fid).await;
        assert_eq!(view.status, "succeeded", "{view:?}");
        assert_eq!(view.ended, view.total);
        assert!(view.nodes.iter().all(|n| n.status == "succeeded"));
    }
    let runs = step.runs();
    assert_eq!(runs.len(), 3 + 52 + 4, "each node ran once: {runs:?}");
    let order: Vec<&str> = runs.iter().map(|r| r.id.as_str()).collect();
    let at = |id: &str| order.iter().position(|r| *r == id).unwrap();
    assert!(at("chain:a") < at("chain:b") && at("chain:b") < at("chain:c"));
    assert!(at("diamond:top") < at("diamond:left") && at("diamond:right") < at("diamond:bottom"));
    assert!(
        parts
            .iter()
            .all(|p| at(&format!("fan:{p}")) < at("fan:join"))
    );
    // What a node is told of its parents.
    let b = &step.runs_of("chain:b")[0];
    assert_eq!(b.flow.as_deref(), Some("chain"));
    assert_eq!(
        b.parents,
        Some(json!({"a": {"status": "succeeded", "result": {"from": "chain:a"}}}))
    );
    assert_eq!(step.runs_of("chain:a")[0].parents, Some(json!({})));
    let join = step.runs_of("fan:join")[0].parents.clone().unwrap();
    assert_eq!(join.as_object().unwrap().len(), 50);
    assert_eq!(join["part-7"]["status"], "succeeded");
    // The flow's state tells the same, results included.
    let view = client.flow("chain").await.unwrap();
    let a = view.nodes.iter().find(|n| n.name == "a").unwrap();
    assert_eq!(a.queue, "steps");
    assert_eq!(a.attempt, Some(1));
    assert_eq!(a.result.as_ref().unwrap().get(), r#"{"from":"chain:a"}"#);
    assert!(view.ended_at.is_some());
    // Its keys live for flow_ttl after its end; the queues keep nothing
    // of it but their markers.
    let mut conn = redis.conn().await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg("{flow:chain}:state")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 6 * 86_400_000 && ttl <= 7 * 86_400_000, "{ttl}");
    assert_eq!(llen(&mut conn, "{jobs:steps}:flows:ended").await, 0);
    assert_eq!(llen(&mut conn, "{conveyor:flows}:taken").await, 0);
    let listed: Vec<String> = client
        .flows(10)
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.flow)
        .collect();
    for fid in ["chain", "fan", "diamond"] {
        assert!(listed.contains(&fid.to_owned()), "{listed:?}");
    }
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_skips_what_needs_it_and_runs_what_only_needs_it_finished() {
    let redis = Redis::start();
    let step = Step::default();
    let (daemon, client) = start(&redis, &step);
    let doc = json!({"flow": "order-1001", "jobs": {
        "charge": {"queue": "steps", "payload": {"fail": true}},
        "pdf": {"queue": "steps", "payload": {}, "after": ["charge"]},
        "mail": {"queue": "other", "payload": {}, "after": ["pdf"]},
        "audit": {"queue": "other", "payload": {}, "after": ["charge", "pdf", "mail"], "when": "finished"},
        "side": {"queue": "steps", "payload": {}}}});
    let mut events = redis.client().get_async_pubsub().await.unwrap();
    events.subscribe("conveyor:events").await.unwrap();
    client.submit_flow(&doc.to_string()).await.unwrap();
    let view = ended(&client, "order-1001").await;
    assert_eq!(view.status, "failed");
    let st = statuses(&view);
    assert_eq!(st["charge"], "dead");
    assert_eq!(st["pdf"], "skipped");
    assert_eq!(st["mail"], "skipped");
    assert_eq!(st["audit"], "succeeded");
    assert_eq!(st["side"], "succeeded");
    assert!(step.runs_of("order-1001:pdf").is_empty());
    assert!(step.runs_of("order-1001:mail").is_empty());
    let audit = step.runs_of("order-1001:audit")[0].parents.clone().unwrap();
    assert_eq!(audit["charge"], json!({"status": "dead"}));
    assert_eq!(audit["pdf"], json!({"status": "skipped"}));
    assert_eq!(audit["mail"], json!({"status": "skipped"}));
    // The events: submitted, the skips, the dead job with its flow, the end.
    let mut seen: Vec<Value> = Vec::new();
    let mut stream = events.on_message();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.iter().any(|e| e["type"] == "flow.finished") {
        let msg = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("flow.finished is published")
            .unwrap();
        seen.push(serde_json::from_str(&msg.get_payload::<String>().unwrap()).unwrap());
    }
    let of = |t: &str| {
        seen.iter()
            .filter(|e| e["type"] == t)
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(of("flow.submitted")[0]["flow"], "order-1001");
    let skipped: Vec<String> = of("job.skipped")
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(skipped.len(), 2, "{seen:?}");
    assert!(skipped.contains(&"order-1001:pdf".to_owned()));
    assert!(skipped.contains(&"order-1001:mail".to_owned()));
    let dead = of("job.dead");
    assert_eq!(dead[0]["id"], "order-1001:charge");
    assert_eq!(dead[0]["flow"], "order-1001");
    let finished = of("flow.finished");
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0]["status"], "failed");
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failure_cancel_ends_pending_waiting_and_running_nodes() {
    let redis = Redis::start();
    let step = Step::default();
    let (daemon, client) = start(&redis, &step);
    // `slow` runs on the one slot of `single` and w1, w2 wait behind it
    // when `first` fails.
    let doc = json!({"flow": "c1", "on_failure": "cancel", "jobs": {
        "slow": {"queue": "single", "payload": {"sleep_ms": 20000}},
        "w1": {"queue": "single", "payload": {}},
        "w2": {"queue": "single", "payload": {}},
        "first": {"queue": "steps", "payload": {"sleep_ms": 300, "fail": true}},
        "next": {"queue": "steps", "payload": {}, "after": ["first"]},
        "last": {"queue": "steps", "payload": {}, "after": ["next"], "when": "finished"},
        "after-slow": {"queue": "other", "payload": {}, "after": ["slow"], "when": "finished"}}});
    client.submit_flow(&doc.to_string()).await.unwrap();
    let started = std::time::Instant::now();
    let view = ended(&client, "c1").await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the running node was stopped"
    );
    assert_eq!(view.status, "cancelled");
    let st = statuses(&view);
    assert_eq!(st["first"], "dead");
    for node in ["slow", "w1", "w2", "next", "last", "after-slow"] {
        assert_eq!(st[node], "cancelled", "{node}: {st:?}");
    }
    assert_eq!(step.runs_of("c1:slow").len(), 1);
    for node in ["w1", "w2", "next", "last", "after-slow"] {
        assert!(step.runs_of(&format!("c1:{node}")).is_empty(), "{node} ran");
    }
    let mut conn = redis.conn().await;
    let dead = dead(&mut conn, "jobs:single").await;
    assert_eq!(dead.len(), 3, "{dead:?}");
    assert!(dead.iter().all(|d| d["last_error"] == "cancelled"));
    assert!(
        client.cancel_flow("c1").await.is_err(),
        "an ended flow is not cancelled again"
    );
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_or_one_node_cancelled_from_outside_ends_its_flow() {
    let redis = Redis::start();
    let step = Step::default();
    let (daemon, client) = start(&redis, &step);
    let doc = json!({"flow": "long", "jobs": {
        "run": {"queue": "single", "payload": {"sleep_ms": 20000}},
        "wait": {"queue": "single", "payload": {}},
        "then": {"queue": "steps", "payload": {}, "after": ["run", "wait"]}}});
    client.submit_flow(&doc.to_string()).await.unwrap();
    wait_until("the long node runs", Duration::from_secs(10), || {
        let step = step.clone();
        async move { !step.runs_of("long:run").is_empty() }
    })
    .await;
    let done = client.cancel_flow("long").await.unwrap();
    assert_eq!(
        (done.pending, done.waiting, done.running),
        (1, 1, 1),
        "{done:?}"
    );
    let view = ended(&client, "long").await;
    assert_eq!(view.status, "cancelled");
    assert!(
        view.nodes.iter().all(|n| n.status == "cancelled"),
        "{view:?}"
    );
    assert!(step.runs_of("long:wait").is_empty() && step.runs_of("long:then").is_empty());

    // `conveyor cancel` of one waiting node: what needs it is skipped, what
    // only needs it finished runs.
    let doc = json!({"flow": "one", "jobs": {
        "block": {"queue": "single", "payload": {"sleep_ms": 1000}},
        "queued": {"queue": "single", "payload": {}},
        "needs": {"queue": "steps", "payload": {}, "after": ["queued"]},
        "anyway": {"queue": "steps", "payload": {}, "after": ["queued"], "when": "finished"}}});
    client.submit_flow(&doc.to_string()).await.unwrap();
    wait_until("the blocking node runs", Duration::from_secs(10), || {
        let step = step.clone();
        async move { !step.runs_of("one:block").is_empty() }
    })
    .await;
    let was = client
        .cancel("single", "one:queued", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(was.as_str(), "waiting");
    let view = ended(&client, "one").await;
    assert_eq!(view.status, "failed");
    let st = statuses(&view);
    assert_eq!(st["queued"], "cancelled");
    assert_eq!(st["needs"], "skipped");
    assert_eq!(st["anyway"], "succeeded");
    let anyway = step.runs_of("one:anyway")[0].parents.clone().unwrap();
    assert_eq!(anyway["queued"]["status"], "cancelled");
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_duplicate_and_refused_documents() {
    let redis = Redis::start();
    let step = Step::default();
    let (daemon, client) = start(&redis, &step);
    let mut conn = redis.conn().await;
    // An empty flow ends at once (a batch of nothing still fires).
    let fid = client.submit_flow(r#"{"jobs": {}}"#).await.unwrap();
    let view = ended(&client, &fid).await;
    assert_eq!((view.status.as_str(), view.total), ("succeeded", 0));
    // A second submission of an id is ignored: its node runs once.
    let doc = json!({"flow": "twice", "jobs": {"only": {"queue": "steps", "payload": {}}}});
    client.submit_flow(&doc.to_string()).await.unwrap();
    ended(&client, "twice").await;
    let _: () = redis::AsyncCommands::rpush(&mut conn, "conveyor:flows", doc.to_string())
        .await
        .unwrap();
    wait_until("the second is taken", Duration::from_secs(10), || {
        let mut c = conn.clone();
        async move {
            llen(&mut c, "conveyor:flows").await == 0
                && llen(&mut c, "{conveyor:flows}:taken").await == 0
        }
    })
    .await;
    assert_eq!(step.runs_of("twice:only").len(), 1);
    // Refused whole, by a plain RPUSH: nothing of them is enqueued.
    let bad = [
        (
            r#"{"flow":"cyc","jobs":{"a":{"queue":"steps","after":["b"]},"b":{"queue":"steps","after":["a"]}}}"#,
            "cycle",
        ),
        (
            r#"{"flow":"unk","jobs":{"a":{"queue":"steps"},"b":{"queue":"nowhere"}}}"#,
            "not configured",
        ),
        (
            r#"{"flow":"lost","jobs":{"a":{"queue":"steps","after":["ghost"]}}}"#,
            "no node of the flow",
        ),
        ("not json", "JSON object"),
    ];
    for (doc, _) in &bad {
        let _: () = redis::AsyncCommands::rpush(&mut conn, "conveyor:flows", *doc)
            .await
            .unwrap();
    }
    wait_until(
        "the bad documents are refused",
        Duration::from_secs(10),
        || {
            let mut c = conn.clone();
            async move { llen(&mut c, "{conveyor:flows}:dead").await == bad.len() }
        },
    )
    .await;
    let dead: Vec<Value> = lrange(&mut conn, "{conveyor:flows}:dead")
        .await
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    for (doc, why) in &bad {
        let entry = dead.iter().find(|d| d["document"] == *doc).unwrap();
        assert!(
            entry["last_error"].as_str().unwrap().contains(why),
            "{entry}"
        );
        assert!(entry["died_at"].is_string());
    }
    assert_eq!(llen(&mut conn, "jobs:steps").await, 0);
    assert!(
        step.runs()
            .iter()
            .all(|r| !r.id.starts_with("cyc:") && !r.id.starts_with("unk:"))
    );
    for fid in ["cyc", "unk", "lost"] {
        assert!(client.flow(fid).await.is_err());
    }
    // Bounds: a payload larger than its queue takes, and a fan-in whose
    // parents' results would make its job larger than its queue reads:
    // refused whole, and the fan-in dead in its flow with the reason.
    let big = json!({"flow": "big", "jobs": {"a": {"queue": "tiny", "payload": {"pad": "x".repeat(1500)}}}});
    let err = client.submit_flow(&big.to_string()).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("exceeds queue tiny's max_payload_bytes (1000)"),
        "{err}"
    );
    let _: () = redis::AsyncCommands::rpush(&mut conn, "conveyor:flows", big.to_string())
        .await
        .unwrap();
    let mut fan = serde_json::Map::new();
    let parents: Vec<String> = (0..10).map(|i| format!("p{i}")).collect();
    for p in &parents {
        fan.insert(
            p.clone(),
            json!({"queue": "steps", "payload": {"big": 8000}}),
        );
    }
    fan.insert(
        "fan-in".into(),
        json!({"queue": "tiny", "payload": {}, "after": parents}),
    );
    client
        .submit_flow(&json!({"flow": "heavy", "jobs": fan}).to_string())
        .await
        .unwrap();
    let view = ended(&client, "heavy").await;
    assert_eq!(view.status, "failed");
    let fan_in = view.nodes.iter().find(|n| n.name == "fan-in").unwrap();
    assert_eq!(fan_in.status, "dead");
    let why = fan_in.result.as_ref().unwrap().get();
    assert!(why.contains("max_payload_bytes (1000)"), "{why}");
    assert!(step.runs_of("heavy:fan-in").is_empty());
    wait_until(
        "the refused document is kept",
        Duration::from_secs(10),
        || {
            let mut c = conn.clone();
            async move { llen(&mut c, "{conveyor:flows}:dead").await == bad.len() + 1 }
        },
    )
    .await;
    // A refused document of more than 1 MiB keeps its first 64 KiB.
    let huge = format!(
        r#"{{"flow":"huge","jobs":{{"a":{{"queue":"nowhere","payload":"{}"}}}}}}"#,
        "x".repeat(1_100_000)
    );
    let _: () = redis::AsyncCommands::rpush(&mut conn, "conveyor:flows", &huge)
        .await
        .unwrap();
    wait_until(
        "the huge document is refused",
        Duration::from_secs(10),
        || {
            let mut c = conn.clone();
            async move { llen(&mut c, "{conveyor:flows}:dead").await == bad.len() + 2 }
        },
    )
    .await;
    let kept: Value =
        serde_json::from_str(&lrange(&mut conn, "{conveyor:flows}:dead").await[0]).unwrap();
    assert_eq!(kept["document_bytes"], huge.len());
    assert_eq!(kept["document_head"].as_str().unwrap().len(), 64 * 1024);
    assert!(huge.starts_with(kept["document_head"].as_str().unwrap()));
    assert!(
        kept["last_error"]
            .as_str()
            .unwrap()
            .contains("not configured")
    );
    // The library refuses them before they are submitted.
    let err = client
        .submit_flow(r#"{"flow":"x","jobs":{"a":{"queue":"nowhere"}}}"#)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not configured"), "{err}");
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_submits_shows_and_lists_flows() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(
        dir.path(),
        &redis,
        "[queues.steps]\nhandler = \"fault\"\nconcurrency = 4\n",
    );
    let cfg = cfg.to_str().unwrap();
    let mut daemon = conveyor();
    daemon.args(["--config", cfg, "run"]);
    let (_daemon, _logs) = spawn_logged(daemon);
    let doc = r#"{"jobs": {"a": {"queue": "steps", "payload": {}},
                           "b": {"queue": "steps", "payload": {}, "after": ["a"]}}}"#;
    let (code, out, err) = run_cli_stdin(&["--config", cfg, "flow", "submit", "-"], doc);
    assert_eq!(code, 0, "{err}");
    let fid = out.trim().to_owned();
    assert!(!fid.is_empty());
    wait_until("the flow ends", Duration::from_secs(30), || {
        let fid = fid.clone();
        async move {
            let (_, out, _) = run_cli(&["--config", cfg, "flow", "show", &fid, "--json"]);
            serde_json::from_str::<Value>(&out).is_ok_and(|v| v["status"] == "succeeded")
        }
    })
    .await;
    let (code, out, _) = run_cli(&["--config", cfg, "flow", "show", &fid]);
    assert_eq!(code, 0);
    assert!(out.contains("succeeded, 2 of 2 nodes ended"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with('b') && l.contains("steps") && l.contains('a')),
        "{out}"
    );
    let (code, out, _) = run_cli(&["--config", cfg, "flow", "list", "--json"]);
    assert_eq!(code, 0);
    let listed: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(listed["flow"], fid.as_str());
    assert_eq!(listed["succeeded"], 2);
    assert_eq!(listed["total"], 2);
    // Bad input: a clear error and exit 65, nothing submitted.
    let (code, _, err) = run_cli_stdin(
        &["--config", cfg, "flow", "submit", "-"],
        r#"{"jobs": {"a": {"queue": "nope"}}}"#,
    );
    assert_eq!(code, 65);
    assert!(err.contains("not configured"), "{err}");
    let (code, _, err) = run_cli(&["--config", cfg, "flow", "show", "missing"]);
    assert_eq!(code, 65);
    assert!(err.contains("no flow"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_node_adds_nodes_and_the_fan_in_waits_for_them() {
    let redis = Redis::start();
    let step = Step::default();
    let (daemon, client) = start(&redis, &step);
    // `split` adds 200 children and split-merge after them; `after-split`,
    // in the document, needs only split.
    let doc = json!({"flow": "dyn", "jobs": {
        "split": {"queue": "steps", "payload": {"add": 200}},
        "after-split": {"queue": "steps", "payload": {}, "after": ["split"]}}});
    client.submit_flow(&doc.to_string()).await.unwrap();
    let view = ended(&client, "dyn").await;
    assert_eq!(view.status, "succeeded", "{view:?}");
    assert_eq!(view.total, 203);
    let runs = step.runs();
    assert_eq!(runs.len(), 203, "every node ran once");
    let at = |id: &str| runs.iter().position(|r| r.id == id).unwrap();
    let merge = at("dyn:split-merge");
    assert!((0..200).all(|i| at(&format!("dyn:split-{i}")) < merge));
    assert_eq!(step.runs_of("dyn:split-merge").len(), 1);
    let parents = step.runs_of("dyn:split-merge")[0].parents.clone().unwrap();
    assert_eq!(parents.as_object().unwrap().len(), 200);
    // The children are told of split's result without its flow_add.
    let kid = step.runs_of("dyn:split-7")[0].parents.clone().unwrap();
    assert_eq!(
        kid,
        json!({"split": {"status": "succeeded", "result": {"count": 200}}})
    );
    let split = view.nodes.iter().find(|n| n.name == "split").unwrap();
    assert_eq!(split.result.as_ref().unwrap().get(), r#"{"count":200}"#);

    // Additions that name a node of the flow are refused whole: the node
    // ends dead in its flow with the reason, and nothing of them runs.
    let doc = json!({"flow": "bad-add", "jobs": {
        "split": {"queue": "steps", "payload": {"add": 3, "bad": "other-node"}},
        "other-node": {"queue": "steps", "payload": {}},
        "needs": {"queue": "steps", "payload": {}, "after": ["split"]}}});
    client.submit_flow(&doc.to_string()).await.unwrap();
    let view = ended(&client, "bad-add").await;
    assert_eq!(view.status, "failed");
    let st = statuses(&view);
    assert_eq!(st["split"], "dead");
    assert_eq!(st["needs"], "skipped");
    assert_eq!(view.total, 3, "nothing was added");
    let split = view.nodes.iter().find(|n| n.name == "split").unwrap();
    let why = split.result.as_ref().unwrap().get();
    assert!(
        why.contains("flow_add refused: node other-node is in the flow already"),
        "{why}"
    );
    assert!(step.runs_of("bad-add:split-0").is_empty());
    daemon.stop().await.unwrap();
}

/// A persistent exec worker: `split` adds a thousand children and a merge
/// after them; every run appends its id and its parents' count to the
/// record file.
const WORKER: &str = r#"
import json, sys
record = open(sys.argv[1], "a")
for line in sys.stdin:
    req = json.loads(line)
    record.write("%s %d\n" % (req["id"], len(req.get("parents") or {})))
    record.flush()
    node = req["id"].split(":", 1)[1]
    result = {"node": node}
    if node == "split":
        kids = ["kid-%d" % i for i in range(1000)]
        add = {k: {"queue": "py", "payload": {"k": k}, "after": ["split"]} for k in kids}
        add["merge"] = {"queue": "py", "payload": {}, "after": kids}
        result["flow_add"] = add
    print(json.dumps({"id": req["id"], "status": "ok", "result": result}), flush=True)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_worker_adds_a_thousand_nodes_and_the_merge_runs_once_after_them() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let worker = dir.path().join("worker.py");
    std::fs::write(&worker, WORKER).unwrap();
    let record = dir.path().join("record");
    let python = String::from_utf8(
        std::process::Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let config = config(
        &redis,
        &format!(
            "[queues.py]\nhandler = \"exec\"\nconcurrency = 4\n[queues.py.exec]\n\
             command = [{:?}, {:?}, {:?}]\nmode = \"persistent\"\n",
            python.trim(),
            worker.display().to_string(),
            record.display().to_string()
        ),
    );
    let client = Client::new(&config, "test").unwrap();
    let daemon = TestDaemon::start(config, builtin());
    let doc = json!({"flow": "py", "jobs": {"split": {"queue": "py", "payload": {}}}});
    client.submit_flow(&doc.to_string()).await.unwrap();
    let view = ended(&client, "py").await;
    assert_eq!(view.status, "succeeded");
    assert_eq!(view.total, 1002);
    // From the worker's own record: each node ran once, merge last, told
    // of its thousand parents.
    let text = std::fs::read_to_string(&record).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1002, "every node ran once");
    let ids: std::collections::HashSet<&str> =
        lines.iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(ids.len(), 1002);
    assert_eq!(*lines.last().unwrap(), "py:merge 1000");
    assert!(
        lines
            .iter()
            .filter(|l| l.starts_with("py:kid-"))
            .all(|l| l.ends_with(" 1"))
    );
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_on_failure_ends_a_running_exec_nodes_process() {
    let redis = Redis::start();
    let step = Step::default();
    // A node of a queue whose job is a program: `sleep` for long.
    let seconds = 4000 + std::process::id() % 1000;
    let config = config(
        &redis,
        &format!(
            "{QUEUES}[queues.sleepy]\nhandler = \"exec\"\nconcurrency = 1\ntimeout = \"2m\"\n\
             [queues.sleepy.exec]\ncommand = [\"sleep\", \"{seconds}\"]\n"
        ),
    );
    let mut registry: Registry = builtin();
    registry.register_handler("step", step.clone());
    let client = Client::new(&config, "test").unwrap();
    let daemon = TestDaemon::start(config, registry);
    let sleepers =
        || processes_where(|cmd| cmd.contains("sleep") && cmd.ends_with(&format!("\0{seconds}\0")));
    let doc = json!({"flow": "c2", "on_failure": "cancel", "jobs": {
        "long": {"queue": "sleepy", "payload": {}},
        "first": {"queue": "steps", "payload": {"sleep_ms": 500, "fail": true}}}});
    client.submit_flow(&doc.to_string()).await.unwrap();
    wait_until(
        "the node's program runs",
        Duration::from_secs(10),
        || async { !sleepers().is_empty() },
    )
    .await;
    let running = sleepers();
    let view = ended(&client, "c2").await;
    assert_eq!(view.status, "cancelled");
    assert_eq!(statuses(&view)["long"], "cancelled");
    // Its process was killed (the pool starts another for the next job).
    wait_until(
        "the node's process is gone",
        Duration::from_secs(10),
        || async { sleepers().iter().all(|p| !running.contains(p)) },
    )
    .await;
    daemon.stop().await.unwrap();
}
