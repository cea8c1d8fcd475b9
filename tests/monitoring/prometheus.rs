//! A private Prometheus for the monitoring tests: Debian's `prometheus`
//! package's binaries, and a server run on a configuration it is given,
//! its data in a temporary directory, on a free loopback port.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::{KillOnDrop, Logs, free_port, spawn_logged, wait_until};
use crate::repo;

/// `program` of Debian's `prometheus` package: where scripts/test unpacks
/// it, else from the PATH.
pub(crate) fn prometheus_tool(program: &str) -> PathBuf {
    let unpacked = repo().join("target/promtool/usr/bin").join(program);
    if unpacked.exists() {
        return unpacked;
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(program))
                .find(|p| p.exists())
        })
        .unwrap_or_else(|| {
            panic!("{program}: scripts/test installs it (Debian package prometheus)")
        })
}

/// A Prometheus of its own: its configuration, data and port.
pub(crate) struct Prometheus {
    _process: KillOnDrop,
    pub(crate) logs: Logs,
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Runs on `config` (a prometheus.yml), with `files` (name and text)
    /// beside it, such as the rule files it names.
    pub(crate) async fn start(config: &str, files: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let base = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(prometheus_tool("prometheus"));
        cmd.arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={base}"))
        .stdout(Stdio::null());
        let (process, logs) = spawn_logged(cmd);
        let prometheus = Self {
            _process: process,
            logs,
            base: format!("http://{base}"),
            http: reqwest::Client::new(),
            _dir: dir,
        };
        wait_until("Prometheus is ready", Duration::from_secs(20), || async {
            let ready = prometheus.http.get(format!("{}/-/ready", prometheus.base));
            ready.send().await.is_ok_and(|r| r.status().is_success())
        })
        .await;
        prometheus
    }

    /// `GET /api/v1/<path>`'s `data`; the answer must be a success.
    pub(crate) async fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let response = self
            .http
            .get(format!("{}/api/v1/{path}", self.base))
            .query(query)
            .send()
            .await
            .unwrap();
        let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(body["status"], "success", "{path} {query:?}: {body}");
        body["data"].clone()
    }

    /// The instant vector `expr` gives now.
    pub(crate) async fn query(&self, expr: &str) -> Vec<Value> {
        let data = self.api("query", &[("query", expr)]).await;
        assert_eq!(data["resultType"], "vector", "{expr}: {data}");
        data["result"].as_array().unwrap().clone()
    }

    /// The single value `expr` gives now, if it gives one.
    pub(crate) async fn value(&self, expr: &str) -> Option<f64> {
        let result = self.query(expr).await;
        let [sample] = result.as_slice() else {
            return None;
        };
        sample["value"][1].as_str()?.parse().ok()
    }
}
