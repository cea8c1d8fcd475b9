//! The shipped examples work as the README and docs/handlers.md show them:
//! the Python and Node workers of `examples/` under the `exec` handler, the
//! Flask endpoint `examples/receiver.py` under the `http` handler, and
//! `examples/custom_handler.rs` running its own job kinds through the whole
//! command line, and the flows of `examples/flow.py` run by the flow
//! workers in Python and Node. (`tests/docs.rs` checks that the pages show
//! these files.)

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use redis::AsyncCommands as _;

const WAIT: Duration = Duration::from_secs(30);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The README's queue for an example worker, with its command made absolute.
fn exec_queue(interpreter: &str, worker: &str) -> String {
    format!(
        "[queues.hello]\nhandler = \"exec\"\nconcurrency = 4\ntrack = true\n[queues.hello.exec]\ncommand = [\"{interpreter}\", \"{}\"]\n",
        repo().join("examples").join(worker).display()
    )
}

/// Enqueues `payload` with `bin` and waits for the job's status record to
/// leave the running states; returns the record.
async fn run_one(
    bin: &Path,
    config: &Path,
    redis: &Redis,
    queue: &str,
    payload: &str,
) -> std::collections::HashMap<String, String> {
    let out = Command::new(bin)
        .args([
            "enqueue",
            queue,
            payload,
            "--config",
            config.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let conn = redis.conn().await;
    let key = format!("conveyor:job:{id}");
    wait_until(&format!("job {id} ends"), WAIT, || {
        let (mut c, key) = (conn.clone(), key.clone());
        async move {
            let state: Option<String> = c.hget(&key, "state").await.unwrap();
            matches!(state.as_deref(), Some("succeeded" | "dead" | "retrying"))
        }
    })
    .await;
    conn.clone().hgetall(&key).await.unwrap()
}

async fn example_worker_greets(interpreter: &str, worker: &str) {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), &redis, &exec_queue(interpreter, worker));
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_conveyor"));
    let mut daemon = KillOnDrop(
        conveyor()
            .args(["run", "--config", cfg.to_str().unwrap()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ok = run_one(&bin, &cfg, &redis, "hello", r#"{"name": "Ada"}"#).await;
    assert_eq!(ok["state"], "succeeded", "{ok:?}");
    let result: serde_json::Value = serde_json::from_str(&ok["result"]).unwrap();
    assert_eq!(result, serde_json::json!({"greeting": "Hello, Ada!"}));
    let bad = run_one(&bin, &cfg, &redis, "hello", r#"{"nom": "Ada"}"#).await;
    assert_eq!(bad["state"], "dead", "{bad:?}");
    assert!(bad["last_error"].contains("name"), "{bad:?}");
    signal(&daemon, 15);
    assert_eq!(wait_exit(&mut daemon, WAIT), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_worker_runs_as_the_readme_shows() {
    example_worker_greets("python3", "worker.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_example_worker_runs_as_the_readme_shows() {
    example_worker_greets("node", "worker.js").await;
}

/// `target/<profile>/examples/custom_handler`, built if this test run did
/// not build it (`cargo test --test examples` builds no examples).
fn custom_handler_binary() -> PathBuf {
    let conveyor = Path::new(env!("CARGO_BIN_EXE_conveyor"));
    let bin = conveyor.with_file_name("examples").join("custom_handler");
    if !bin.exists() {
        // Built with the profile of the binary under test, so it lands beside it.
        let release = conveyor
            .parent()
            .is_some_and(|dir| dir.ends_with("release"));
        let profile = if release {
            "--release"
        } else {
            "--profile=dev"
        };
        let status = Command::new(env!("CARGO"))
            .args(["build", profile, "--example", "custom_handler"])
            .current_dir(repo())
            .status()
            .unwrap();
        assert!(status.success(), "cargo build --example custom_handler");
    }
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_custom_handler_example_runs_its_own_jobs_through_the_whole_cli() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let queues = "[queues.images]\nhandler = \"resize\"\ntrack = true\n\
                  [queues.greetings]\nhandler = \"greet\"\ntrack = true\n\
                  [queues.greetings.greet]\ngreeting = \"Bonjour\"\n";
    let cfg = config_file(dir.path(), &redis, queues);
    let bin = custom_handler_binary();
    let config = cfg.to_str().unwrap();

    // `check` knows the example's handler names; the plain binary does not.
    let out = Command::new(&bin)
        .args(["check", "--config", config])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, _, err) = run_cli(&["check", "--config", config]);
    assert_eq!(code, 78);
    assert!(err.contains("unknown handler \"greet\""), "{err}");

    let mut daemon = KillOnDrop(
        Command::new(&bin)
            .args(["run", "--config", config])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let greeted = run_one(&bin, &cfg, &redis, "greetings", r#"{"name": "Ada"}"#).await;
    assert_eq!(greeted["state"], "succeeded", "{greeted:?}");
    let result: serde_json::Value = serde_json::from_str(&greeted["result"]).unwrap();
    assert_eq!(
        result,
        serde_json::json!({"attempt": 1, "message": "Bonjour, Ada!"})
    );
    let resized = run_one(&bin, &cfg, &redis, "images", r#"{"width": 640}"#).await;
    assert_eq!(resized["state"], "succeeded", "{resized:?}");
    let refused = run_one(&bin, &cfg, &redis, "images", r#"{"height": 1}"#).await;
    assert_eq!(
        (refused["state"].as_str(), refused["last_error"].as_str()),
        ("dead", "missing width")
    );
    let later = run_one(&bin, &cfg, &redis, "greetings", r#"{"name": ""}"#).await;
    assert_eq!(later["state"], "retrying", "{later:?}");
    let due = later["due_at"].parse::<jiff::Timestamp>().ok();
    let wait = due.map(|d| d.as_millisecond() - common::now_ms());
    assert!(
        wait.is_some_and(|ms| (50_000..=60_000).contains(&ms)),
        "due in {wait:?} ms"
    );
    signal(&daemon, 15);
    assert_eq!(wait_exit(&mut daemon, WAIT), Some(0));
}

/// `examples/receiver.py` served on a free port (werkzeug, under Flask);
/// killed when dropped. Returns it with its port.
fn flask_receiver(secret: &str) -> (KillOnDrop, u16) {
    use std::io::BufRead as _;
    let serve = "import sys\nfrom werkzeug.serving import make_server\nfrom receiver import app\n\
                 s = make_server('127.0.0.1', 0, app)\nprint('ready', s.port, flush=True)\n\
                 s.serve_forever()\n";
    let path = format!(
        "{}:{}",
        repo().join("examples").display(),
        repo().join("target/pydeps").display()
    );
    let mut child = KillOnDrop(
        Command::new("python3")
            .args(["-c", serve])
            .env("PYTHONPATH", path)
            .env("WEBHOOK_SECRET", secret)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 with Flask (scripts/test installs it)"),
    );
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("ready ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("examples/receiver.py did not start: {line:?}"));
    (child, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flask_receiver_verifies_each_job_and_answers_with_its_result() {
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let (_receiver, port) = flask_receiver(SECRET);
    let url = format!("http://127.0.0.1:{port}/jobs/greet");
    let queue = format!(
        "[queues.greet]\nhandler = \"http\"\ntrack = true\n[queues.greet.http]\nurl = \"{url}\"\n"
    );
    let cfg = config_file(dir.path(), &redis, &queue);
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_conveyor"));
    let mut daemon = KillOnDrop(
        conveyor()
            .args(["run", "--config", cfg.to_str().unwrap()])
            .env("CONVEYOR_HTTP_SECRET_GREET", SECRET)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ok = run_one(&bin, &cfg, &redis, "greet", r#"{"name": "Ada"}"#).await;
    assert_eq!(ok["state"], "succeeded", "{ok:?}");
    let result: serde_json::Value = serde_json::from_str(&ok["result"]).unwrap();
    assert_eq!(result["greeting"], "Hello, Ada!");
    assert_eq!(
        result["job"].as_str().map(str::len),
        Some(32),
        "the job id: {result}"
    );
    let bad = run_one(&bin, &cfg, &redis, "greet", r#"{"nom": "Ada"}"#).await;
    assert_eq!(bad["state"], "dead", "{bad:?}");
    assert!(
        bad["last_error"].starts_with("HTTP 422") && bad["last_error"].contains("missing name"),
        "{bad:?}"
    );
    // What it refuses: the same body unsigned, or signed with another key.
    let client = reqwest::Client::new();
    let unsigned = client
        .post(&url)
        .header("content-type", "application/json")
        .body(r#"{"name": "Eve"}"#)
        .send();
    assert_eq!(unsigned.await.unwrap().status(), 401);
    signal(&daemon, 15);
    assert_eq!(wait_exit(&mut daemon, WAIT), Some(0));

    let mut forged = KillOnDrop(
        conveyor()
            .args(["run", "--config", cfg.to_str().unwrap()])
            .env("CONVEYOR_HTTP_SECRET_GREET", "whsec_c2VjcmV0")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let refused = run_one(&bin, &cfg, &redis, "greet", r#"{"name": "Mallory"}"#).await;
    assert_eq!(refused["state"], "dead", "{refused:?}");
    assert!(refused["last_error"].starts_with("HTTP 401"), "{refused:?}");
    signal(&forged, 15);
    assert_eq!(wait_exit(&mut forged, WAIT), Some(0));
}

/// The README's flows: `examples/flow.py` (redis-py alone) submits an
/// order's steps and 500 image resizes closed by one zip; a Python worker
/// (`examples/flow_worker.py`) and a Node one (`examples/flow_worker.js`)
/// run the nodes; and a worker that adds nodes to its flow fans out to 40
/// API calls merged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flow_example_runs_as_the_readme_shows() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let exec = |queue: &str, interpreter: &str, worker: &str| {
        format!(
            "[queues.{queue}]\nhandler = \"exec\"\nconcurrency = 2\n[queues.{queue}.exec]\n\
             command = [\"{interpreter}\", \"{}\"]\n",
            repo().join("examples").join(worker).display()
        )
    };
    let mut queues = String::new();
    for q in ["payments", "invoices", "images"] {
        queues.push_str(&exec(q, "python3", "flow_worker.py"));
    }
    for q in ["mail", "audit"] {
        queues.push_str(&exec(q, "node", "flow_worker.js"));
    }
    let cfg = config_file(dir.path(), &redis, &queues);
    let config = conveyor::config::Config::load(Some(&cfg)).unwrap();
    let client = conveyor::api::Client::new(&config, "test").unwrap();
    let mut daemon = KillOnDrop(
        conveyor()
            .args(["run", "--config", cfg.to_str().unwrap()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let out = Command::new("python3")
        .arg(repo().join("examples/flow.py"))
        .env("PYTHONPATH", repo().join("target/pydeps"))
        .env("REDIS_URL", format!("unix://{}", redis.socket().display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ended = |fid: &'static str| {
        let client = client.clone();
        async move {
            wait_until(&format!("flow {fid} ends"), WAIT, || {
                let client = client.clone();
                async move { client.flow(fid).await.is_ok_and(|f| f.status != "running") }
            })
            .await;
            client.flow(fid).await.unwrap()
        }
    };
    let result = |view: &conveyor::api::FlowView, node: &str| -> serde_json::Value {
        let n = view.nodes.iter().find(|n| n.name == node).unwrap();
        serde_json::from_str(n.result.as_ref().unwrap().get()).unwrap()
    };
    let order = ended("order-1001").await;
    assert_eq!(order.status, "succeeded", "{order:?}");
    // The Node worker ran the audit, told of each parent.
    assert_eq!(
        result(&order, "audit"),
        serde_json::json!({"node": "audit", "flow": "order-1001",
            "after": {"charge": "succeeded", "invoice": "succeeded", "mail": "succeeded"}})
    );
    let album = ended("album-7").await;
    assert_eq!((album.status.as_str(), album.total), ("succeeded", 501));
    assert_eq!(
        result(&album, "zip")["after"].as_object().unwrap().len(),
        500
    );
    // A node that adds 40 calls and their merge to its flow.
    let apis: Vec<String> = (0..40).map(|i| format!("api-{i}")).collect();
    let doc = serde_json::json!({"flow": "apis", "jobs": {"split": {"queue": "payments", "payload": {"apis": apis}}}});
    let doc_file = dir.path().join("apis.json");
    std::fs::write(&doc_file, doc.to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_conveyor"))
        .args([
            "flow",
            "submit",
            doc_file.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "apis");
    let view = ended("apis").await;
    assert_eq!((view.status.as_str(), view.total), ("succeeded", 42));
    let mut sorted = apis.clone();
    sorted.sort();
    assert_eq!(
        result(&view, "merge"),
        serde_json::json!({"answers": sorted})
    );
    signal(&daemon, 15);
    assert_eq!(wait_exit(&mut daemon, WAIT), Some(0));
}
