//! Redis Cluster: three primaries with a replica each, started by the
//! test; queues on three different primaries, every command the CLI and
//! the daemon run, and no password in any output.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::time::Duration;

use common::cluster::{Cluster, PASSWORD};
use common::*;

/// Three queues whose lists hash to slots of three different primaries
/// (1782, 7589 and 15533 of 0-5460, 5461-10922 and 10923-16383), the
/// second with status records, the third with groups (by the payloads'
/// `n`, two of a group at once), whose lists and counts share its slot.
const QUEUES: &str = "[queues.work]\nhandler = \"noop\"\n\
    [queues.orders]\nhandler = \"noop\"\ntrack = true\n\
    [queues.webhooks]\nhandler = \"noop\"\ngroup = { key = \"n\", limit = 2 }\n";

fn cli(cfg: &str, args: &[&str]) -> (i32, String) {
    let mut all = vec!["--config", cfg];
    all.extend_from_slice(args);
    let (code, out, err) = run_cli_env(&all, &[("REDIS_PASSWORD", PASSWORD)]);
    (code, out + &err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_on_three_primaries_run_from_one_daemon() {
    let cluster = Cluster::start().await;
    let mut primaries = Vec::new();
    for q in ["work", "orders", "webhooks"] {
        primaries.push(cluster.primary_of(&format!("jobs:{q}")).await);
    }
    primaries.sort_unstable();
    primaries.dedup();
    assert_eq!(
        primaries.len(),
        3,
        "the queues are spread over the primaries"
    );

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("conveyor.toml");
    std::fs::write(
        &cfg,
        format!(
            "[redis]\n{}\n[daemon]\nheartbeat_interval = \"200ms\"\nnode_ttl = \"1s\"\n\
             [web]\nlisten = \"127.0.0.1:0\"\n{QUEUES}",
            cluster.config_line()
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let mut shown = Vec::new();

    let (code, out) = cli(cfg, &["check"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("redis: permissions: ok"), "{out}");
    // The server is named from one node's INFO (redis-rs asks every primary).
    let family = Family::chosen();
    let server = format!("{} {})", family.name(), family.version().unwrap());
    assert!(out.contains(&server), "{server:?} in:\n{out}");
    shown.push(out);

    // Before the daemon: plain, delayed, unique (twice) and tracked jobs.
    for q in ["work", "orders", "webhooks"] {
        for i in 0..20 {
            let (code, out) = cli(cfg, &["enqueue", q, &format!("{{\"n\":{i}}}"), "--quiet"]);
            assert_eq!(code, 0, "{out}");
        }
    }
    let (code, out) = cli(cfg, &["enqueue", "work", "{}", "--delay", "1s"]);
    assert_eq!(code, 0, "{out}");
    let (code, first) = cli(
        cfg,
        &["enqueue", "webhooks", "{\"u\":1}", "--unique-for", "1h"],
    );
    assert_eq!(code, 0, "{first}");
    let (code, second) = cli(
        cfg,
        &["enqueue", "webhooks", "{\"u\":1}", "--unique-for", "1h"],
    );
    assert!(
        second.contains(first.trim()),
        "the second unique job names the first ({code}): {second}"
    );
    let (code, tracked) = cli(cfg, &["enqueue", "orders", "{\"tracked\":true}"]);
    assert_eq!(code, 0, "{tracked}");
    let tracked = tracked.trim().to_owned();
    shown.extend([first, second]);

    let mut monitor = conveyor();
    monitor
        .args(["--config", cfg, "monitor"])
        .env("REDIS_PASSWORD", PASSWORD);
    let (_monitor, monitor_err, monitor_out) = spawn_logged_out(monitor);
    let mut daemon = conveyor();
    daemon
        .args(["--config", cfg, "run"])
        .env("REDIS_PASSWORD", PASSWORD)
        .env("CONVEYOR_LOG", "debug");
    let (mut daemon, logs) = spawn_logged(daemon);
    let web = web_address(&logs).await;

    // Every job runs: 20 + 1 delayed, 20 + 1 tracked, 20 + 1 unique.
    for (q, n) in [("work", 21), ("orders", 21), ("webhooks", 21)] {
        let key = format!("jobs:{q}");
        let conn = cluster.conn_for(&key).await;
        wait_until(
            &format!("{q}: {n} jobs processed"),
            Duration::from_secs(30),
            || {
                let (mut c, key) = (conn.clone(), key.clone());
                async move { stat(&mut c, &key, "processed").await == n }
            },
        )
        .await;
    }
    // The grouped queue's jobs all ran; no group holds or runs any.
    let (code, out) = cli(cfg, &["groups", "webhooks", "--json"]);
    assert_eq!(code, 0, "{out}");
    let groups: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (&groups["count"], &groups["waiting"], &groups["held"]),
        (&0.into(), &0.into(), &0.into()),
        "{out}"
    );
    let (code, out) = cli(cfg, &["status", &tracked]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("succeeded"), "{out}");
    // The tracked queue's results: its list in the queue's slot, each
    // job's record in another, read together.
    let (code, out, err) = run_cli_env(
        &[
            "--config", cfg, "results", "orders", "--limit", "50", "--json",
        ],
        &[("REDIS_PASSWORD", PASSWORD)],
    );
    assert_eq!(code, 0, "{err}");
    let results: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let jobs = results["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 21, "{out}");
    assert!(jobs.iter().all(|j| j["state"] == "succeeded"), "{out}");
    assert!(jobs.iter().any(|j| j["id"] == tracked.as_str()), "{out}");
    assert_eq!(results["expired"], 0, "{out}");
    // A job enqueued while the monitor listens shows in it.
    let (code, late) = cli(cfg, &["enqueue", "webhooks", "{\"late\":true}"]);
    assert_eq!(code, 0, "{late}");
    let late = late.trim().to_owned();
    wait_until(
        "the monitor shows the late job",
        Duration::from_secs(20),
        || {
            let (out, late) = (monitor_out.clone(), late.clone());
            async move {
                out.lines()
                    .iter()
                    .any(|l| l.contains(&late) && l.contains("job.succeeded"))
            }
        },
    )
    .await;
    let (code, out) = cli(cfg, &["stats"]);
    assert_eq!(code, 0, "{out}");
    for q in ["work", "orders", "webhooks"] {
        assert!(out.contains(q), "{out}");
    }
    shown.push(out);
    // The history counted every job, each queue's in its own slot: 21 a
    // queue and the late one.
    let body = reqwest::get(format!("{web}/api/history?range=1h"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let history: serde_json::Value = serde_json::from_str(&body).unwrap();
    let succeeded: u64 = history["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["succeeded"].as_u64().unwrap())
        .sum();
    assert_eq!(succeeded, 64, "{history}");
    // A stop ends cleanly, its CLIENT UNBLOCKs routed to the primaries
    // that hold the queues.
    signal(&daemon, 15);
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(10)), Some(0));
    assert!(
        !logs.contains("could not cut a blocking pop short"),
        "{}",
        logs.lines().join("\n")
    );
    shown.push(logs.lines().join("\n"));
    shown.push(monitor_err.lines().join("\n"));
    assert!(!logs.contains("ERROR"), "{}", logs.lines().join("\n"));
    for text in &shown {
        assert!(!text.contains(PASSWORD), "{text}");
    }
}

/// A TLS-only cluster (clients, bus and replication) with a private CA: the
/// daemon and the CLI reach every node through `rediss://` and `ca_file`,
/// and are refused without the CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_with_a_private_ca() {
    let ca = TestCa::generate();
    let cluster = Cluster::start_with(Some(&ca)).await;
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, ca_line: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "[redis]\n{}\n{ca_line}\n[daemon]\nheartbeat_interval = \"200ms\"\nnode_ttl = \"1s\"\n{QUEUES}",
                cluster.config_line()
            ),
        )
        .unwrap();
        path.to_str().unwrap().to_owned()
    };
    let cfg = write("tls.toml", &format!("ca_file = \"{}\"", ca.ca.display()));
    let (code, out) = cli(&cfg, &["check"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("redis: permissions: ok"), "{out}");
    for q in ["work", "orders", "webhooks"] {
        let (code, out) = cli(&cfg, &["enqueue", q, "{}"]);
        assert_eq!(code, 0, "{out}");
    }
    let mut daemon = conveyor();
    daemon
        .args(["--config", &cfg, "run"])
        .env("REDIS_PASSWORD", PASSWORD);
    let (_daemon, logs) = spawn_logged(daemon);
    for q in ["work", "orders", "webhooks"] {
        let key = format!("jobs:{q}");
        let conn = cluster.conn_for(&key).await;
        wait_until(
            &format!("{q}: its job processed"),
            Duration::from_secs(30),
            || {
                let (mut c, key) = (conn.clone(), key.clone());
                async move { stat(&mut c, &key, "processed").await == 1 }
            },
        )
        .await;
    }
    assert!(!logs.contains(PASSWORD));

    let untrusted = write("untrusted.toml", "");
    let (code, out) = cli(&untrusted, &["check"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.to_lowercase().contains("certificate"), "{out}");
    assert!(!out.contains(PASSWORD), "{out}");
}

/// A flow whose two queues and whose own keys are on three different
/// primaries, run by two daemons, one SIGKILLed twice in the middle: every
/// node runs (counted from the `fault` handler's completion record), and a
/// node runs twice only if it was in the killed daemon's in-flight list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_over_three_primaries_survives_sigkills() {
    let cluster = Cluster::start().await;
    let (work, hooks) = (
        cluster.primary_of("jobs:work").await,
        cluster.primary_of("jobs:webhooks").await,
    );
    assert_ne!(work, hooks);
    // A flow id whose slot is on the third primary.
    let mut fid = None;
    for i in 0..100 {
        let candidate = format!("f{i}");
        let p = cluster
            .primary_of(&format!("{{flow:{candidate}}}:meta"))
            .await;
        if p != work && p != hooks {
            fid = Some(candidate);
            break;
        }
    }
    let fid = fid.expect("a flow id on the third primary");

    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("completed.log");
    let cfg = dir.path().join("conveyor.toml");
    std::fs::write(
        &cfg,
        format!(
            "[redis]\n{}\n[daemon]\nheartbeat_interval = \"200ms\"\nnode_ttl = \"1s\"\nmax_deliveries = 5\n\
             [queues.work]\nhandler = \"fault\"\nconcurrency = 8\n\
             [queues.webhooks]\nhandler = \"fault\"\nconcurrency = 4\n",
            cluster.config_line()
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    // root, 3 fan-outs of 150 over both queues each closed by a fan-in,
    // 46 leaves: 500 nodes.
    let mut jobs = serde_json::Map::new();
    let mut add = |name: String, queue: &str, after: Vec<String>| {
        let payload = serde_json::json!({"record": record, "sleep_ms": 2});
        jobs.insert(
            name,
            serde_json::json!({"queue": queue, "payload": payload, "after": after}),
        );
    };
    add("root".into(), "work", vec![]);
    let mut before = "root".to_owned();
    for s in 0..3 {
        let names: Vec<String> = (0..150).map(|i| format!("s{s}-{i}")).collect();
        for (i, name) in names.iter().enumerate() {
            add(
                name.clone(),
                if i % 2 == 0 { "work" } else { "webhooks" },
                vec![before.clone()],
            );
        }
        add(format!("join{s}"), "webhooks", names);
        before = format!("join{s}");
    }
    for i in 0..46 {
        add(format!("leaf-{i}"), "work", vec!["root".into()]);
    }
    let ids: Vec<String> = jobs.keys().map(|n| format!("{fid}:{n}")).collect();
    assert_eq!(ids.len(), 500);
    let doc = serde_json::json!({"flow": fid, "jobs": jobs}).to_string();
    let start = || {
        let mut daemon = conveyor();
        daemon
            .args(["--config", cfg, "run"])
            .env("REDIS_PASSWORD", PASSWORD);
        spawn_logged(daemon)
    };
    let (mut victim, _) = start();
    let (_survivor, survivor_logs) = start();
    let (code, out, err) = run_cli_stdin_env(
        &["--config", cfg, "flow", "submit", "-"],
        &doc,
        &[("REDIS_PASSWORD", PASSWORD)],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), fid);
    let show = |fid: String| async move {
        let (_, out) = cli(cfg, &["flow", "show", &fid, "--json"]);
        serde_json::from_str::<serde_json::Value>(&out).unwrap_or_default()
    };
    let mut caught = std::collections::HashSet::new();
    for point in [100, 300] {
        wait_until(
            "progress up to the kill point",
            Duration::from_secs(60),
            || {
                let fid = fid.clone();
                async move { show(fid).await["ended"].as_u64().unwrap_or(0) >= point }
            },
        )
        .await;
        // Its in-flight lists, read right after the kill.
        let pid = victim.0.id();
        signal(&victim.0, 9);
        for q in ["work", "webhooks"] {
            let key = format!("jobs:{q}");
            let mut conn = cluster.conn_for(&key).await;
            let nodes: Vec<String> =
                redis::AsyncCommands::smembers(&mut conn, format!("{{{key}}}:nodes"))
                    .await
                    .unwrap();
            for node in nodes.iter().filter(|n| n.contains(&format!("-{pid}-"))) {
                for item in lrange(&mut conn, &format!("{{{key}}}:inflight:{node}")).await {
                    let v: serde_json::Value = serde_json::from_str(&item).unwrap();
                    caught.insert(v["id"].as_str().unwrap().to_owned());
                }
            }
        }
        victim = start().0;
    }
    wait_until("the flow ends", Duration::from_secs(120), || {
        let fid = fid.clone();
        async move { show(fid).await["status"] != "running" }
    })
    .await;
    let view = show(fid.clone()).await;
    assert_eq!(view["status"], "succeeded", "{view}");
    assert_eq!(view["ended"], 500);
    let mut runs = std::collections::HashMap::new();
    for line in std::fs::read_to_string(&record).unwrap().lines() {
        *runs.entry(line.to_owned()).or_insert(0) += 1;
    }
    for id in &ids {
        let n = runs.get(id).copied().unwrap_or(0);
        assert!(n >= 1, "{id} never ran");
        assert!(
            n == 1 || caught.contains(id),
            "{id} ran {n} times without being in flight at a kill"
        );
    }
    assert_eq!(runs.len(), 500);
    assert!(!survivor_logs.contains(PASSWORD));
}
