//! The container and Kubernetes files: every `contrib/kubernetes/*.yaml`
//! parses (Python's PyYAML, which scripts/test installs into
//! target/pydeps), points where the daemon answers (`/api/scale` on a
//! configured queue, `/healthz`, `/readyz`, the web port) and takes its
//! secrets from the Secret; the ConfigMap's configuration passes what
//! `conveyor run` checks at start. The Dockerfile is checked as text only
//! (no container builder or base image can be reached here): a non-root
//! user, `conveyor run` as the entry point, a `--locked` build.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::path::{Path, PathBuf};
use std::process::Command;

use conveyor::Registry;
use conveyor::config::Config;
use serde_json::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every document of a YAML file, as JSON.
fn documents(path: &Path) -> Vec<Value> {
    let out = Command::new("python3")
        .env("PYTHONPATH", repo().join("target/pydeps"))
        .args([
            "-c",
            "import json, sys, yaml\n\
             print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} does not parse (PyYAML: scripts/test installs it): {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every document of every `contrib/kubernetes/*.yaml`, by kind.
fn manifests() -> Vec<(PathBuf, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("contrib/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    files
        .into_iter()
        .flat_map(|f| documents(&f).into_iter().map(move |d| (f.clone(), d)))
        .collect()
}

fn of_kind(all: &[(PathBuf, Value)], kind: &str) -> Vec<Value> {
    all.iter()
        .filter(|(_, d)| d["kind"] == kind)
        .map(|(_, d)| d.clone())
        .collect()
}

/// What `conveyor run` does with a configuration before it runs anything.
fn validate(text: &str) -> Config {
    let config = Config::from_toml(text).unwrap();
    config.validate().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _inside = runtime.enter();
    Registry::builtin().build_all(&config).unwrap();
    config
}

#[test]
fn the_kubernetes_files_parse_and_point_where_conveyor_answers() {
    let all = manifests();
    let maps = of_kind(&all, "ConfigMap");
    assert_eq!(maps.len(), 1);
    let config = validate(maps[0]["data"]["conveyor.toml"].as_str().unwrap());

    // The ScaledObject reads /api/scale of a configured queue, with the token.
    let scaled = of_kind(&all, "ScaledObject");
    assert_eq!(scaled.len(), 1);
    let trigger = &scaled[0]["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "metrics-api");
    let meta = &trigger["metadata"];
    let url = reqwest::Url::parse(meta["url"].as_str().unwrap()).unwrap();
    assert_eq!(url.path(), "/api/scale");
    assert_eq!(url.port(), Some(9740));
    let queue = url
        .query_pairs()
        .find(|(k, _)| k == "queue")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    assert!(config.queues.contains_key(&queue), "{queue}");
    assert_eq!(meta["valueLocation"], "demand");
    assert_eq!(meta["authMode"], "bearer");
    // One pod's slots of the queue: replicas = demand / concurrency.
    let target: u32 = meta["targetValue"].as_str().unwrap().parse().unwrap();
    assert_eq!(target, config.queues[&queue].concurrency);
    let auth = of_kind(&all, "TriggerAuthentication");
    assert_eq!(
        trigger["authenticationRef"]["name"],
        auth[0]["metadata"]["name"]
    );
    let secret = &auth[0]["spec"]["secretTargetRef"][0];
    assert_eq!(secret["parameter"], "token");
    assert_eq!(secret["key"], "CONVEYOR_WEB_TOKEN");
    // ... from a Service in front of `conveyor web`.
    let host = url.host_str().unwrap();
    let services = of_kind(&all, "Service");
    assert!(
        services.iter().any(|s| s["metadata"]["name"] == host),
        "no Service {host}"
    );

    // Each Deployment: probes on /healthz and /readyz at the web port it
    // listens on, secrets from the Secret, the configuration mounted where
    // the image looks, and its scale target is the workers'.
    let deployments = of_kind(&all, "Deployment");
    assert_eq!(deployments.len(), 2);
    assert!(
        deployments
            .iter()
            .any(|d| d["metadata"]["name"] == scaled[0]["spec"]["scaleTargetRef"]["name"])
    );
    for d in &deployments {
        let pod = &d["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{d}");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{d}");
        assert_eq!(c["livenessProbe"]["httpGet"]["port"], "web");
        assert_eq!(c["ports"][0]["name"], "web");
        assert_eq!(c["ports"][0]["containerPort"], 9740);
        let env = |name: &str| {
            c["env"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == name)
                .cloned()
                .unwrap_or_else(|| panic!("no {name} in {d}"))
        };
        assert_eq!(env("CONVEYOR_WEB_LISTEN")["value"], "0.0.0.0:9740");
        for secret in ["REDIS_PASSWORD", "CONVEYOR_WEB_TOKEN"] {
            let from = &env(secret)["valueFrom"]["secretKeyRef"];
            assert_eq!(from["key"], secret);
        }
        assert_eq!(c["volumeMounts"][0]["mountPath"], "/etc/conveyor");
        assert_eq!(
            pod["volumes"][0]["configMap"]["name"],
            maps[0]["metadata"]["name"]
        );
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(pod["securityContext"]["runAsUser"], 10001);
    }
}

/// A text check: no image is built here.
#[test]
fn the_dockerfile_builds_locked_and_runs_conveyor_run_as_a_user() {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let from: Vec<&&str> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(
        from,
        [
            &"FROM rust:1-slim-bookworm AS build",
            &"FROM debian:bookworm-slim"
        ]
    );
    assert!(text.contains("cargo build --release --locked"), "{text}");
    let user: Vec<&&str> = lines.iter().filter(|l| l.starts_with("USER ")).collect();
    assert_eq!(user.len(), 1, "{text}");
    let who = user[0].trim_start_matches("USER ");
    assert!(!who.starts_with("root") && !who.starts_with("0"), "{who}");
    // The user the Deployments run as, and it is made in the image.
    assert_eq!(who, "10001:10001");
    assert!(text.contains("--uid 10001"), "{text}");
    // Everything after USER runs as it: the entry point last.
    assert_eq!(lines.last(), Some(&r#"ENTRYPOINT ["conveyor", "run"]"#));
    assert!(text.contains("/usr/local/bin/conveyor"), "{text}");
    assert!(lines.contains(&"EXPOSE 9740"), "{text}");
    assert!(lines.contains(&"ENV CONVEYOR_WEB_LISTEN=0.0.0.0:9740"));
    assert!(lines.contains(&"COPY config/conveyor.toml /etc/conveyor/conveyor.toml"));
    let ignored = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    assert!(ignored.lines().any(|l| l == "target/"), "{ignored}");
}
