//! The monitoring kit in `contrib/`: the alert rules checked and
//! unit-tested by `promtool`; the Grafana dashboard's JSON read; and a real
//! Prometheus, run on `contrib/prometheus/prometheus.yml`, scraping a
//! running daemon whose jobs succeed and die, returns data for every query
//! of the dashboard and loads and evaluates every alert rule.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;
#[path = "monitoring/prometheus.rs"]
mod prometheus;
#[path = "monitoring/queries.rs"]
mod queries;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use prometheus::{Prometheus, prometheus_tool};
use queries::{as_grafana_sends, dashboard_queries, metric_names};
use serde_json::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `promtool ARGS` in contrib/prometheus: whether it succeeded, and what it said.
fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new(prometheus_tool("promtool"))
        .args(args)
        .current_dir(repo().join("contrib/prometheus"))
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), said)
}

fn alert_rules() -> String {
    std::fs::read_to_string(repo().join("contrib/prometheus/alerts.yml")).unwrap()
}

/// How many alerting rules alerts.yml holds.
fn alert_count() -> usize {
    alert_rules()
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count()
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(repo().join("contrib/grafana/conveyor.json")).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("conveyor.json is no JSON: {e}"))
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let (ok, said) = promtool(&["check", "rules", "alerts.yml"]);
    assert!(ok, "promtool check rules: {said}");
    assert!(
        said.contains(&format!("SUCCESS: {} rules found", alert_count())),
        "{said}"
    );
    assert!(alert_count() >= 5, "{said}");
    let (ok, said) = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(ok, "promtool test rules: {said}");
    assert!(said.contains("SUCCESS"), "{said}");
    // Every alert is tested, and carries a severity, a summary and a
    // description.
    let tests = std::fs::read_to_string(repo().join("contrib/prometheus/alerts_test.yml")).unwrap();
    let rules = alert_rules();
    for name in rules
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("- alert:"))
        .map(str::trim)
    {
        assert!(
            tests.contains(&format!(
                "alertname: {name}\n        exp_alerts:\n          - "
            )),
            "alerts_test.yml never expects {name} to fire"
        );
        assert!(
            tests.contains(&format!("alertname: {name}\n        exp_alerts: []")),
            "alerts_test.yml never expects {name} not to fire"
        );
    }
    for needle in ["for:", "severity:", "summary:", "description:"] {
        assert_eq!(
            rules.matches(needle).count(),
            alert_count(),
            "each alert has {needle}"
        );
    }
}

#[test]
fn the_dashboard_is_json_with_its_datasource_on_every_panel_and_query() {
    let dashboard = dashboard();
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 39);
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");
    assert_eq!(dashboard["__inputs"][0]["pluginId"], "prometheus");
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let variable = |name: &str| variables.iter().find(|v| v["name"] == name).unwrap();
    assert_eq!(variable("DS_PROMETHEUS")["type"], "datasource");
    assert_eq!(variable("DS_PROMETHEUS")["query"], "prometheus");
    let queue = variable("queue");
    assert!(
        queue["definition"]
            .as_str()
            .unwrap()
            .starts_with("label_values(")
    );
    assert_eq!(queue["allValue"], ".*");
    let ours = serde_json::json!({"type": "prometheus", "uid": "${DS_PROMETHEUS}"});
    assert_eq!(queue["datasource"], ours);
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    let mut ids = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "{title}: id twice"
        );
        assert_eq!(panel["datasource"], ours, "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}");
        for target in targets {
            assert_eq!(target["datasource"], ours, "{title}");
            assert!(target["expr"].as_str().is_some_and(|e| !e.is_empty()));
        }
    }
}

/// contrib/prometheus/prometheus.yml (with alerts.yml beside it), run
/// scraping `target` and evaluating the rules every `interval`.
async fn shipped_prometheus(target: &str, interval: &str) -> Prometheus {
    let mut config =
        std::fs::read_to_string(repo().join("contrib/prometheus/prometheus.yml")).unwrap();
    for (from, to) in [("15s", interval), ("127.0.0.1:9740", target)] {
        assert!(config.contains(from), "prometheus.yml has {from}");
        // Every 15s is an interval: the scrape's and the rules'.
        config = config.replace(from, to);
    }
    Prometheus::start(&config, &[("alerts.yml", &alert_rules())]).await
}

/// `n` jobs of `payload` on `queue`, by `conveyor enqueue --file`.
fn enqueue(cfg: &str, dir: &Path, queue: &str, payload: &str, n: usize) {
    let file = dir.join(format!("{queue}.ndjson"));
    std::fs::write(&file, format!("{payload}\n").repeat(n)).unwrap();
    let file = file.to_str().unwrap();
    let (code, out, err) = run_cli(&["--config", cfg, "enqueue", queue, "--file", file, "--quiet"]);
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_and_alert_rule_runs_on_a_real_prometheus() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(
        dir.path(),
        &redis,
        "[web]\nlisten = \"127.0.0.1:0\"\n\
         [queues.work]\nhandler = \"noop\"\n\
         [queues.fail]\nhandler = \"fault\"\nmax_attempts = 1\n\
         [queues.parked]\nhandler = \"noop\"\n",
    );
    let cfg = cfg.to_str().unwrap();
    // parked is paused with a job waiting; work has one due in an hour.
    let (code, out, err) = run_cli(&["--config", cfg, "pause", "parked"]);
    assert_eq!(code, 0, "{out}{err}");
    enqueue(cfg, dir.path(), "parked", "{}", 1);
    let (code, out, err) = run_cli(&["--config", cfg, "enqueue", "work", "{}", "--delay", "1h"]);
    assert_eq!(code, 0, "{out}{err}");

    let mut daemon = conveyor();
    daemon.args(["--config", cfg, "run"]);
    let (_daemon, logs) = spawn_logged(daemon);
    let target = web_address(&logs).await.replace("http://", "");
    enqueue(cfg, dir.path(), "work", "{}", 10);
    enqueue(cfg, dir.path(), "fail", r#"{"fail": "permanent"}"#, 3);

    let prometheus = shipped_prometheus(&target, "1s").await;
    let scraped = |expr: &'static str, want: f64| {
        let prometheus = &prometheus;
        async move { prometheus.value(expr).await == Some(want) }
    };
    let succeeded = r#"conveyor_jobs_total{queue="work", outcome="succeeded"}"#;
    let dead = r#"conveyor_jobs_total{queue="fail", outcome="dead"}"#;
    wait_until(
        "Prometheus scraped the first jobs",
        Duration::from_secs(30),
        || async { scraped(succeeded, 10.0).await && scraped(dead, 3.0).await },
    )
    .await;
    // A second round, so that every rate has two different samples.
    enqueue(cfg, dir.path(), "work", "{}", 10);
    enqueue(cfg, dir.path(), "fail", r#"{"fail": "permanent"}"#, 3);
    wait_until(
        "Prometheus scraped the second round",
        Duration::from_secs(30),
        || async { scraped(succeeded, 20.0).await && scraped(dead, 6.0).await },
    )
    .await;

    // What the daemon reports is there, as the test made it.
    let names = prometheus.api("label/__name__/values", &[]).await;
    let names: BTreeSet<String> = serde_json::from_value(names).unwrap();
    let state = |queue: &str, state: &str| {
        format!(r#"max(conveyor_queue_jobs{{queue="{queue}", state="{state}"}})"#)
    };
    assert_eq!(
        prometheus.value(&state("parked", "waiting")).await,
        Some(1.0)
    );
    assert_eq!(
        prometheus.value(&state("work", "scheduled")).await,
        Some(1.0)
    );
    assert_eq!(prometheus.value(&state("fail", "dead")).await, Some(6.0));
    let age = r#"max(conveyor_queue_oldest_seconds{queue="parked"})"#;
    assert!(prometheus.value(age).await.unwrap() > 0.0);

    // The $queue variable's values.
    let dashboard = dashboard();
    let variable = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "queue")
        .unwrap()
        .clone();
    let definition = variable["definition"].as_str().unwrap();
    let (metric, label) = definition
        .strip_prefix("label_values(")
        .and_then(|d| d.strip_suffix(')'))
        .and_then(|d| d.split_once(", "))
        .unwrap();
    let queues = prometheus
        .api(&format!("label/{label}/values"), &[("match[]", metric)])
        .await;
    assert_eq!(queues, serde_json::json!(["fail", "parked", "work"]));

    // Every panel's every query returns data: for All (with a finite
    // value somewhere) and for each queue alone.
    for (title, expr) in dashboard_queries(&dashboard) {
        for used in metric_names(&expr) {
            assert!(names.contains(&used), "{title}: {used} is not served");
        }
        for queue in [".*", "work", "fail", "parked"] {
            let sent = as_grafana_sends(&expr, queue);
            let result = prometheus.query(&sent).await;
            assert!(!result.is_empty(), "{title}: no data for {sent}");
            let finite = result.iter().any(|s| {
                s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(f64::is_finite)
            });
            assert!(
                queue != ".*" || finite,
                "{title}: only NaN for {sent}: {result:?}"
            );
        }
    }

    // Every alert rule is loaded and evaluated without error; its query
    // is accepted and every name it uses is served.
    wait_until("every rule evaluated", Duration::from_secs(20), || async {
        let data = prometheus.api("rules", &[]).await;
        let rules = data["groups"][0]["rules"].as_array().unwrap().clone();
        rules.len() == alert_count() && rules.iter().all(|r| r["health"] == "ok")
    })
    .await;
    let data = prometheus.api("rules", &[]).await;
    for rule in data["groups"][0]["rules"].as_array().unwrap() {
        let (name, expr) = (
            rule["name"].as_str().unwrap(),
            rule["query"].as_str().unwrap(),
        );
        let used = metric_names(expr);
        assert!(!used.is_empty(), "{name}: no metric found in {expr}");
        for metric in used {
            assert!(names.contains(&metric), "{name}: {metric} is not served");
        }
        prometheus.query(expr).await;
    }
    // The failing queue's dead letters and errors start their alerts (they
    // fire after their `for:`); the healthy ones start none.
    wait_until("fail's alerts pending", Duration::from_secs(20), || async {
        let alerts = prometheus.api("alerts", &[]).await;
        let pending = |name: &str| {
            alerts["alerts"].as_array().unwrap().iter().any(|a| {
                a["labels"]["alertname"] == name
                    && a["labels"]["queue"] == "fail"
                    && a["state"] == "pending"
            })
        };
        pending("ConveyorDeadLettersGrowing") && pending("ConveyorErrorRateHigh")
    })
    .await;
    let alerts = prometheus.api("alerts", &[]).await;
    for alert in alerts["alerts"].as_array().unwrap() {
        assert_eq!(alert["labels"]["queue"], "fail", "{alert}");
    }
    assert!(
        !prometheus.logs.contains("level=error"),
        "{:?}",
        prometheus.logs.lines()
    );
}

/// Whether `alert` is pending or firing, with `labels` among its labels.
async fn alert_active(prometheus: &Prometheus, alert: &str, labels: &[(&str, &str)]) -> bool {
    let alerts = prometheus.api("alerts", &[]).await;
    alerts["alerts"].as_array().unwrap().iter().any(|a| {
        a["labels"]["alertname"] == alert && labels.iter().all(|(k, v)| a["labels"][k] == *v)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_then_no_daemon_start_their_alerts_on_a_real_prometheus() {
    let mut redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(
        dir.path(),
        &redis,
        "[web]\nlisten = \"127.0.0.1:0\"\n[queues.work]\nhandler = \"noop\"\n",
    );
    let mut daemon = conveyor();
    daemon.args(["--config", cfg.to_str().unwrap(), "run"]);
    let (daemon, logs) = spawn_logged(daemon);
    let target = web_address(&logs).await.replace("http://", "");
    // Without Redis, /metrics answers after its 2 s wait for it: the
    // scrape's timeout (the interval here, 10 s by default) must be longer.
    let prometheus = shipped_prometheus(&target, "3s").await;
    wait_until(
        "a scrape with Redis up",
        Duration::from_secs(20),
        || async {
            prometheus.value("conveyor_redis_up").await == Some(1.0)
                && prometheus.value("conveyor_nodes").await == Some(1.0)
        },
    )
    .await;
    // Before its first scrape, Prometheus saw no target up: the no-node
    // alert may have gone pending (its `for:` is there for that); an
    // evaluation after the scrape ends it.
    wait_until("neither alert active", Duration::from_secs(20), || async {
        !alert_active(&prometheus, "ConveyorRedisDown", &[]).await
            && !alert_active(&prometheus, "ConveyorNoNodeAlive", &[]).await
    })
    .await;

    // Redis goes: the daemon says so, and the Redis alert starts.
    redis.kill();
    let instance = [("instance", target.as_str())];
    wait_until(
        "ConveyorRedisDown pending",
        Duration::from_secs(30),
        || async { alert_active(&prometheus, "ConveyorRedisDown", &instance).await },
    )
    .await;
    assert_eq!(prometheus.value("up").await, Some(1.0));

    // The daemon goes too: no scrape answers, and the no-node alert starts.
    drop(daemon);
    wait_until(
        "ConveyorNoNodeAlive pending",
        Duration::from_secs(30),
        || async { alert_active(&prometheus, "ConveyorNoNodeAlive", &[]).await },
    )
    .await;
}
