//! Workers cannot reach the daemon's secrets (DESIGN section 16), against
//! the real binary: a hostile worker (`snoop.py`) tries the environment of
//! each of its ancestors, their memory through `/proc/<pid>/mem`, their
//! descriptors, the credentials directory and the environment file, and
//! finds no secret, whether it runs as the daemon's own user (the daemon
//! is not dumpable) or as another user (`[queues.<q>.exec] user`).
//!
//! A control file holding a secret it may read proves that the search
//! would find one.

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::Stdio;

use serde_json::{Value, json};

use crate::common::*;
use crate::workers::*;

const SNOOP: &str = include_str!("snoop.py");

const REDIS_PASSWORD: &str = "redis-pw-7f3a9c1e5b";
const WEB_TOKEN: &str = "web-token-2d8e6a4c0f91b3";
const SMTP_PASSWORD: &str = "smtp-pw-5c1b9e7d3a";
const CREDENTIAL: &str = "credential-8a2f4d6b0e";
const ENV_FILE_SECRET: &str = "env-file-3e9b1d7f5a";
const CONTROL: &str = "control-6d4b2f8a0c";

/// The uid the test runs its unprivileged daemon or worker as: nobody's,
/// when the test runs as root.
const NOBODY: u32 = 65534;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A Python every user may run (the test's own may live under /root).
fn system_python() -> String {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3".into()
    } else {
        python().into()
    }
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Redis with a password, its socket open to every user.
async fn redis_with_password() -> Redis {
    let redis = Redis::start();
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg(REDIS_PASSWORD)
        .query_async(&mut conn)
        .await
        .unwrap();
    chmod(redis.socket().parent().unwrap(), 0o755);
    chmod(&redis.socket(), 0o777);
    redis
}

/// An authenticated connection for the test's own checks.
async fn conn(redis: &Redis) -> redis::aio::MultiplexedConnection {
    let url = format!(
        "redis+unix://{}?pass={REDIS_PASSWORD}",
        redis.socket().display()
    );
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// A directory every user may read, holding the worker, the control file
/// and the configuration.
fn workdir(redis: &Redis, exec: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o755);
    let snoop = script(dir.path(), "snoop.py", SNOOP);
    chmod(&snoop, 0o644);
    let control = dir.path().join("control");
    std::fs::write(&control, CONTROL).unwrap();
    chmod(&control, 0o644);
    let queue = format!(
        "[queues.work]\nhandler = \"exec\"\ntrack = true\nconcurrency = 1\n\
         [queues.work.exec]\ncommand = [{:?}, \"{}\"]\n{exec}\n",
        system_python(),
        snoop.display()
    );
    let cfg = config_file(dir.path(), redis, &queue);
    chmod(&cfg, 0o644);
    (dir, cfg)
}

/// Runs the snoop once and returns its result.
async fn snoop(
    conn: &mut redis::aio::MultiplexedConnection,
    paths: &[String],
    needles: &[&str],
) -> Value {
    push(conn, "snoop", json!({"paths": paths, "needles": needles})).await;
    result(conn, "snoop").await
}

/// The daemon with its secrets in its environment.
fn daemon(cfg: &Path, env: &[(&str, &str)], as_nobody: bool) -> (KillOnDrop, Logs) {
    let mut cmd = conveyor();
    cmd.args(["run", "--config", cfg.to_str().unwrap()])
        .env("REDIS_PASSWORD", REDIS_PASSWORD)
        .env("CONVEYOR_WEB_TOKEN", WEB_TOKEN)
        .env("CONVEYOR_SMTP_PASSWORD", SMTP_PASSWORD)
        .envs(env.iter().copied())
        .stdout(Stdio::null());
    if as_nobody {
        cmd.uid(NOBODY).gid(NOBODY);
    }
    spawn_logged(cmd)
}

/// Asserts that the control secret was found (the search works) and no
/// other.
fn assert_found_only_the_control(result: &Value) {
    let found = result["found"].as_object().unwrap();
    let hits: Vec<&Value> = found.values().flat_map(|v| v.as_array().unwrap()).collect();
    assert!(
        hits.iter().any(|h| *h == CONTROL),
        "the control secret was not found: the search is broken ({result})"
    );
    assert!(
        hits.iter().all(|h| *h == CONTROL),
        "the worker found secrets: {found:?}"
    );
}

/// The outcome of reading `what` of the daemon, the worker's farthest
/// ancestor that is a conveyor process.
fn daemon_outcome(result: &Value, daemon_pid: u32, what: &str) -> String {
    let ancestors: Vec<u64> = result["ancestors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    assert!(
        ancestors.contains(&(daemon_pid as u64)),
        "the daemon {daemon_pid} is not among the worker's ancestors {ancestors:?}"
    );
    result["tried"][format!("/proc/{daemon_pid}/{what}")]
        .as_str()
        .unwrap_or("not tried")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_of_the_daemons_own_user_cannot_read_it_through_proc() {
    let redis = redis_with_password().await;
    let (dir, cfg) = workdir(&redis, "");
    let mut conn = conn(&redis).await;
    // Not root: root may read any process. (The worker runs as the
    // daemon's user: no `user` is set.)
    let (daemon, _logs) = daemon(&cfg, &[], is_root());
    let control = dir.path().join("control").display().to_string();
    let result = snoop(
        &mut conn,
        &[control],
        &[REDIS_PASSWORD, WEB_TOKEN, SMTP_PASSWORD, CONTROL],
    )
    .await;
    let uid = match is_root() {
        true => NOBODY,
        false => rustix::process::getuid().as_raw(),
    };
    assert_eq!(result["uid"], json!(uid), "{result}");
    for what in ["environ", "mem", "fd"] {
        assert_eq!(
            daemon_outcome(&result, daemon.id(), what),
            "denied",
            "{what}: {result}"
        );
    }
    assert_found_only_the_control(&result);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_of_another_user_reads_no_credential_nor_environment_file() {
    let redis = redis_with_password().await;
    let (dir, cfg) = workdir(&redis, "user = \"nobody\"");
    if !is_root() {
        // Only root (or a holder of CAP_SETUID and CAP_SETGID) may start
        // workers as another user: anyone else is told so at start.
        let out = conveyor()
            .args(["check", "--config", cfg.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{stderr}");
        assert!(stderr.contains("CAP_SETUID"), "{stderr}");
        return;
    }
    // What systemd gives the daemon: a credentials directory only its user
    // reads, and an environment file only root reads.
    let private = tempfile::tempdir().unwrap();
    let credentials = private.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    std::fs::write(credentials.join("smtp_password"), CREDENTIAL).unwrap();
    chmod(&credentials.join("smtp_password"), 0o400);
    chmod(&credentials, 0o500);
    let env_file = private.path().join("env");
    std::fs::write(
        &env_file,
        format!("AWS_SECRET_ACCESS_KEY={ENV_FILE_SECRET}\n"),
    )
    .unwrap();
    chmod(&env_file, 0o600);
    chmod(private.path(), 0o755);
    let mut conn = conn(&redis).await;
    let (daemon, _logs) = daemon(
        &cfg,
        &[
            ("CREDENTIALS_DIRECTORY", credentials.to_str().unwrap()),
            ("AWS_SECRET_ACCESS_KEY", ENV_FILE_SECRET),
        ],
        false,
    );
    let paths = [
        format!("{}/*", credentials.display()),
        credentials.display().to_string(),
        env_file.display().to_string(),
        dir.path().join("control").display().to_string(),
    ];
    let result = snoop(
        &mut conn,
        &paths,
        &[
            REDIS_PASSWORD,
            WEB_TOKEN,
            SMTP_PASSWORD,
            CREDENTIAL,
            ENV_FILE_SECRET,
            CONTROL,
        ],
    )
    .await;
    assert_eq!(result["uid"], json!(NOBODY), "{result}");
    assert_eq!(result["gid"], json!(NOBODY), "{result}");
    assert!(
        !result["groups"].as_array().unwrap().contains(&json!(0)),
        "root's group stayed: {result}"
    );
    for cap in ["CapEff", "CapPrm", "CapAmb", "CapInh"] {
        assert_eq!(
            result["caps"][cap],
            json!("0000000000000000"),
            "{cap}: {result}"
        );
    }
    for what in ["environ", "mem"] {
        assert_eq!(
            daemon_outcome(&result, daemon.id(), what),
            "denied",
            "{what}: {result}"
        );
    }
    assert_eq!(
        result["tried"][credentials.display().to_string()],
        json!("denied"),
        "{result}"
    );
    assert_eq!(
        result["tried"][env_file.display().to_string()],
        json!("denied"),
        "{result}"
    );
    assert_found_only_the_control(&result);
}
