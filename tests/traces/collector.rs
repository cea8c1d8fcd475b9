//! The OTLP/HTTP receiver of the trace tests (`collector.py`, decoding with
//! PyPI's opentelemetry-proto, installed into target/pydeps by
//! scripts/test), and the producer's span made with the OpenTelemetry
//! Python SDK (`producer.py`).

#![allow(unreachable_pub)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// `target/pydeps`, where scripts/test installs the Python packages.
fn pydeps() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pydeps")
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/traces")
        .join(name)
}

/// A running receiver; killed when dropped.
pub struct Collector {
    child: Child,
    pub port: u16,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Collector {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let out = dir.path().join("spans.jsonl");
        let mut child = Command::new("python3")
            .arg(script("collector.py"))
            .arg("--out")
            .arg(&out)
            .env("PYTHONPATH", pydeps())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs tests/traces/collector.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("its first line");
        let port = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| {
                panic!("the receiver did not start ({line:?}): is opentelemetry-proto in target/pydeps? scripts/test installs it")
            });
        Self {
            child,
            port,
            out,
            _dir: dir,
        }
    }

    /// The base URL, as `otlp_endpoint` takes it.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.ends_with('}'))
            .map(|l| serde_json::from_str(l).expect("JSON lines"))
            .collect()
    }

    /// The spans of job `id`, by attempt, once there are `n` of them.
    pub async fn job_spans(&self, id: &str, n: usize) -> Vec<Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let mut spans: Vec<Value> = self
                .spans()
                .into_iter()
                .filter(|s| s["attributes"]["messaging.message.id"] == id)
                .collect();
            if spans.len() >= n {
                spans.sort_by_key(|s| s["attributes"]["messaging.conveyor.attempt"].as_i64());
                return spans;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{n} spans of job {id} expected, got {spans:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _killed = self.child.kill();
        let _reaped = self.child.wait();
    }
}

/// A producer's span from the OpenTelemetry Python SDK: its
/// `traceparent` and `tracestate`.
pub fn producer_span() -> (String, String) {
    let out = Command::new("python3")
        .arg(script("producer.py"))
        .env("PYTHONPATH", pydeps())
        .output()
        .expect("python3 runs tests/traces/producer.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {text:?}"))
            .to_owned()
    };
    (field("traceparent"), field("tracestate"))
}
