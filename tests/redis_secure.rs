//! Redis as production runs it: TLS with a private CA and a client
//! certificate, a password from its own channel, and passwords that no
//! output ever shows, whatever characters they hold. Each test starts its
//! own server on a free loopback port.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::server::{ServerCommand, ServerProcess};
use common::*;

/// Passwords a URL cannot hold unencoded, and one it can.
const HOSTILE: &[&str] = &["p/a?s#s@w&o:r%d", "s p a c e é€", "x@y/z"];

const QUEUE: &str = "[queues.work]\nhandler = \"noop\"\n";

/// A server on a loopback port, of the family the run chose; with TLS,
/// Redis's ([`Family::with_tls`]), on its TLS port only.
struct Server {
    _process: ServerProcess,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(password: &str, tls: Option<&TestCa>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let family = match tls {
            Some(_) => Family::with_tls(),
            None => Family::chosen(),
        };
        let mut cmd = ServerCommand::new(family, dir.path());
        cmd.password(password);
        match tls {
            Some(ca) => cmd
                .tls(port, &ca.cert, &ca.key, &ca.ca)
                .args(["--tls-auth-clients", "yes"]),
            None => cmd.port(port),
        };
        Self {
            _process: cmd.start().unwrap_or_else(|e| panic!("{e}")),
            port,
            _dir: dir,
        }
    }

    /// The family's command-line client, as the default user with
    /// `password`, running `args`; what it printed.
    fn cli(&self, password: &str, args: &[&str]) -> String {
        let out = Command::new(Family::chosen().cli())
            .args([
                "-p",
                &self.port.to_string(),
                "-a",
                password,
                "--no-auth-warning",
            ])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

fn write_config(dir: &Path, redis: &str, queues: &str) -> String {
    let path = dir.join("conveyor.toml");
    let text = format!(
        "[redis]\n{redis}\n[daemon]\nheartbeat_interval = \"200ms\"\nnode_ttl = \"1s\"\n{queues}"
    );
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Runs the CLI with `env`; exit code and both outputs together.
fn cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let (code, out, err) = run_cli_env(args, env);
    (code, out + &err)
}

#[test]
fn tls_with_a_private_ca_a_client_certificate_and_the_password_from_its_file() {
    let ca = TestCa::generate();
    let password = HOSTILE[0];
    let server = Server::start(password, Some(&ca));
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("redis_password");
    std::fs::write(&secret, format!("{password}\n")).unwrap();
    let redis = format!(
        "url = \"rediss://localhost:{}/0\"\nca_file = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"",
        server.port,
        ca.ca.display(),
        ca.client_cert.display(),
        ca.client_key.display()
    );
    let cfg = write_config(dir.path(), &redis, &format!("{QUEUE}track = true\n"));
    let env = [("REDIS_PASSWORD_FILE", secret.to_str().unwrap())];
    let mut seen = String::new();

    let (code, out) = cli(&["check", "--config", &cfg], &env);
    assert_eq!(code, 0, "{out}");
    seen.push_str(&out);
    let mut last = String::new();
    for _ in 0..20 {
        let (code, out) = cli(&["enqueue", "work", "{}", "--config", &cfg], &env);
        assert_eq!(code, 0, "{out}");
        last = out.trim().to_owned();
        seen.push_str(&out);
    }
    let mut cmd = conveyor();
    cmd.args(["run", "--config", &cfg])
        .env("REDIS_PASSWORD_FILE", &secret)
        .env("CONVEYOR_LOG", "debug")
        .stdout(Stdio::null());
    let (mut daemon, logs) = spawn_logged(cmd);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, out) = cli(&["status", &last, "--config", &cfg], &env);
        if out.contains("succeeded") {
            break;
        }
        assert!(Instant::now() < deadline, "{last} never succeeded: {out}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, out) = cli(&["stats", "--config", &cfg], &env);
    assert_eq!(code, 0, "{out}");
    seen.push_str(&out);
    signal(&daemon, 15);
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)), Some(0));
    seen.push_str(&logs.lines().join("\n"));
    assert!(!seen.contains(password), "the password was shown:\n{seen}");

    // Without the CA the server is not trusted; without the client
    // certificate it refuses us. Both say so, and exit 69 (unavailable).
    let untrusted = write_config(
        dir.path(),
        &format!("url = \"rediss://localhost:{}/0\"", server.port),
        QUEUE,
    );
    let (code, out) = cli(&["check", "--config", &untrusted], &env);
    assert_ne!(code, 0, "{out}");
    assert!(out.to_lowercase().contains("certificate"), "{out}");
    let anonymous = write_config(
        dir.path(),
        &format!(
            "url = \"rediss://localhost:{}/0\"\nca_file = \"{}\"",
            server.port,
            ca.ca.display()
        ),
        QUEUE,
    );
    let (code, out) = cli(&["check", "--config", &anonymous], &env);
    assert_ne!(code, 0, "{out}");
    assert!(!out.contains(password), "{out}");

    // TLS settings on a plain URL are a configuration error.
    let plain = write_config(
        dir.path(),
        &format!(
            "url = \"redis://localhost:{}/0\"\nca_file = \"ca.pem\"",
            server.port
        ),
        "",
    );
    let (code, out) = cli(&["check", "--config", &plain], &env);
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("rediss://"), "{out}");
}

#[test]
fn no_output_shows_a_password_whatever_it_holds() {
    for password in HOSTILE {
        let server = Server::start(password, None);
        let dir = tempfile::tempdir().unwrap();
        let queues = QUEUE;
        let mut seen = String::new();
        // In the URL, unencoded: whatever the URL then means, no output
        // shows the password, from the parse error to the startup log.
        let in_url = write_config(
            dir.path(),
            &format!("url = \"redis://:{password}@127.0.0.1:{}/0\"", server.port),
            queues,
        );
        for args in [
            vec!["check"],
            vec!["stats"],
            vec!["enqueue", "work", "{}"],
            vec!["run"],
        ] {
            let mut full = args.clone();
            full.extend(["--config", in_url.as_str()]);
            let out = conveyor()
                .args(&full)
                .env("CONVEYOR_LOG", "debug")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let out = bounded_output(out, Duration::from_secs(3));
            assert!(
                !out.contains(password),
                "{args:?} showed {password:?}:\n{out}"
            );
            seen.push_str(&out);
        }
        // From REDIS_PASSWORD, right and wrong.
        let plain = write_config(
            dir.path(),
            &format!("url = \"redis://127.0.0.1:{}/0\"", server.port),
            queues,
        );
        let (code, out) = cli(
            &["check", "--config", &plain],
            &[("REDIS_PASSWORD", password)],
        );
        assert_eq!(code, 0, "{out}");
        assert!(!out.contains(password), "{out}");
        let (code, out) = cli(
            &["enqueue", "work", "{}", "--config", &plain],
            &[("REDIS_PASSWORD", password)],
        );
        assert_eq!(code, 0, "{out}");
        let wrong = format!("{password}-wrong");
        for args in [vec!["check"], vec!["stats"], vec!["enqueue", "work", "{}"]] {
            let mut full = args.clone();
            full.extend(["--config", plain.as_str()]);
            let (code, out) = cli(&full, &[("REDIS_PASSWORD", &wrong)]);
            assert_eq!(code, 77, "{args:?} with a wrong password: {out}");
            assert!(out.contains("refused"), "{out}");
            assert!(!out.contains(password), "{args:?} showed it:\n{out}");
        }
        assert!(!seen.is_empty());
    }
}

/// Everything a command printed within `limit`; it is killed at the limit
/// (a daemon that keeps retrying a Redis it cannot use).
fn bounded_output(mut child: Child, limit: Duration) -> String {
    use std::io::Read as _;
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _killed = child.kill();
    let _reaped = child.wait();
    let mut text = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    text
}

#[test]
fn a_user_without_permission_is_told_so_not_that_redis_is_unreachable() {
    let server = Server::start("admin-pw", None);
    let acl = server.cli(
        "admin-pw",
        &[
            "ACL",
            "SETUSER",
            "reader",
            "on",
            ">reader-pw",
            "~*",
            "&*",
            "+@read",
            "+@connection",
        ],
    );
    assert_eq!(acl, "OK");
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!("url = \"redis://reader@127.0.0.1:{}/0\"", server.port),
        QUEUE,
    );
    let env = [("REDIS_PASSWORD", "reader-pw")];
    // check proves it first, naming what is missing.
    let (code, out) = cli(&["check", "--config", &cfg], &env);
    assert_eq!(code, 77, "{out}");
    for command in [
        "rpush",
        "blmove",
        "hset",
        "xadd",
        "evalsha",
        "eval",
        "subscribe",
    ] {
        assert!(
            out.contains(&format!("redis: queue work: refused {command}")),
            "{command}: {out}"
        );
    }
    assert!(
        !out.contains("refused llen") && !out.contains("refused lrange"),
        "{out}"
    );
    let (code, out) = cli(&["enqueue", "work", "{}", "--config", &cfg], &env);
    assert_eq!(code, 77, "{out}");
    assert!(
        out.contains("no permissions to run the 'evalsha' command"),
        "{out}"
    );
    assert_eq!(
        out.matches("Pipeline failure").count(),
        1,
        "said once: {out}"
    );

    let mut cmd = conveyor();
    cmd.args(["run", "--config", &cfg])
        .env("REDIS_PASSWORD", "reader-pw")
        .stdout(Stdio::null());
    let (daemon, logs) = spawn_logged(cmd);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !logs.contains("refused by Redis") {
        assert!(
            Instant::now() < deadline,
            "no refusal logged:\n{}",
            logs.lines().join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let refusal = logs
        .lines()
        .into_iter()
        .find(|l| l.contains("refused by Redis"))
        .unwrap();
    assert!(
        refusal.contains("ERROR") && refusal.contains("no permissions"),
        "{refusal}"
    );
    assert!(
        !logs.contains("Redis unreachable?"),
        "{}",
        logs.lines().join("\n")
    );
    drop(daemon);
}

#[test]
fn a_policy_that_can_evict_jobs_is_reported_by_check_and_at_start() {
    let server = Server::start("pw", None);
    let set_policy = |policy: &str| {
        let out = server.cli("pw", &["CONFIG", "SET", "maxmemory-policy", policy]);
        assert_eq!(out, "OK");
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!("url = \"redis://127.0.0.1:{}/0\"", server.port),
        QUEUE,
    );
    let env = [("REDIS_PASSWORD", "pw")];
    set_policy("allkeys-lru");
    let (code, out) = cli(&["check", "--config", &cfg], &env);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("redis: warning: maxmemory-policy is allkeys-lru")
            && out.contains("set maxmemory-policy noeviction"),
        "{out}"
    );
    let mut cmd = conveyor();
    cmd.args(["run", "--config", &cfg])
        .env("REDIS_PASSWORD", "pw")
        .stdout(Stdio::null());
    let (daemon, logs) = spawn_logged(cmd);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !logs.contains("maxmemory-policy is allkeys-lru") {
        assert!(
            Instant::now() < deadline,
            "no warning:\n{}",
            logs.lines().join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        logs.lines()
            .iter()
            .any(|l| l.contains("WARN") && l.contains("allkeys-lru"))
    );
    drop(daemon);
    set_policy("noeviction");
    let (code, out) = cli(&["check", "--config", &cfg], &env);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("maxmemory-policy noeviction: ok"), "{out}");
}

/// `check` names the server it found and its version, as the server's own
/// binary gives them, whichever family the run chose.
#[test]
fn check_names_the_server_and_its_version() {
    let server = Server::start("pw", None);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!("url = \"redis://127.0.0.1:{}/0\"", server.port),
        QUEUE,
    );
    let (code, out) = cli(&["check", "--config", &cfg], &[("REDIS_PASSWORD", "pw")]);
    assert_eq!(code, 0, "{out}");
    let family = Family::chosen();
    let found = format!(
        "redis: ok (redis://127.0.0.1:{}/0, {} {})",
        server.port,
        family.name(),
        family.version().unwrap()
    );
    assert!(out.contains(&found), "{found:?} in:\n{out}");
}

#[test]
fn a_sentinel_or_a_cluster_node_given_as_url_is_refused_with_what_to_do() {
    let master = Server::start("pw", None);
    let dir = tempfile::tempdir().unwrap();
    // A sentinel watching the master; it rewrites its file, so it gets its own.
    let sentinel_port = free_port();
    let conf = dir.path().join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {sentinel_port}\nbind 127.0.0.1\ndir {}\n\
             sentinel monitor mymaster 127.0.0.1 {} 1\nsentinel auth-pass mymaster pw\n",
            dir.path().display(),
            master.port
        ),
    )
    .unwrap();
    let sentinel = ServerCommand::sentinel(Family::chosen(), &conf, sentinel_port)
        .start()
        .unwrap();
    // One node with cluster mode on is enough to be recognised.
    let node = ServerCommand::new(Family::chosen(), dir.path())
        .port(free_port())
        .cluster(free_port())
        .start()
        .unwrap();
    // Each named with the server found there (Valkey 8 writes its mode
    // under another name than Redis 7).
    let server = format!("({} ", Family::chosen().name());
    for (port, words) in [
        (sentinel.port, "this is a Sentinel"),
        (node.port, "this is a node of a Cluster"),
    ] {
        let cfg = write_config(
            dir.path(),
            &format!("url = \"redis://127.0.0.1:{port}/0\""),
            QUEUE,
        );
        for command in ["check", "run"] {
            let out = conveyor()
                .args([command, "--config", &cfg])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let (code, text) = exit_and_output(out, Duration::from_secs(20));
            assert_eq!(code, Some(78), "{command} against {words}: {text}");
            assert!(
                text.contains(&format!("{words} {server}")),
                "{command}: {text}"
            );
        }
    }
}

/// The exit code of a command that must end by itself within `limit`
/// (None if it did not), and all it printed.
fn exit_and_output(mut child: Child, limit: Duration) -> (Option<i32>, String) {
    let deadline = Instant::now() + limit;
    let mut code = None;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            code = status.code();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (code, bounded_output(child, Duration::ZERO))
}

/// The ACL line for a worker user of docs/redis.md ("Least privilege"),
/// less the password.
const WORKER_ACL: &str = "on resetkeys ~jobs:* ~{jobs:* ~conveyor:* ~{conveyor:* ~{flow:* \
    ~cache:* resetchannels &conveyor:* -@all +@connection +info +role +config|get \
    +client|unblock +eval +evalsha +script|load +blmove +lrange +llen +lindex +lrem +rpush \
    +lpush +ltrim +hset +hget +hmget +hgetall +hdel +hexists +hsetnx +hincrby +pexpire +expire \
    +expireat +bitfield +get +set +del +exists +zadd +zcard +zrange +zrevrange +zrem \
    +zremrangebyscore +zremrangebyrank +sadd +srem +smembers +multi +exec \
    +xadd +xrange +xrevrange +publish +pubsub|numsub +subscribe";

#[test]
fn the_documented_acl_line_is_enough_for_everything_a_worker_does() {
    let page =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/redis.md")).unwrap();
    let documented = WORKER_ACL.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        page.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .contains(&documented),
        "docs/redis.md does not give this ACL line: {documented}"
    );
    let server = Server::start("admin-pw", None);
    let mut acl = vec!["ACL", "SETUSER", "worker", ">worker-pw"];
    acl.extend(WORKER_ACL.split_whitespace());
    assert_eq!(server.cli("admin-pw", &acl), "OK");
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!("url = \"redis://worker@127.0.0.1:{}/0\"", server.port),
        &format!(
            "{QUEUE}track = true\nmax_attempts = 2\nbackoff = {{ base = \"10ms\", max = \"10ms\" }}\n"
        ),
    );
    let env = [("REDIS_PASSWORD", "worker-pw")];
    let (code, out) = cli(&["check", "--config", &cfg], &env);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("maxmemory-policy noeviction: ok"), "{out}");
    assert!(out.contains("redis: permissions: ok"), "{out}");
    let mut ids = Vec::new();
    for args in [
        vec!["enqueue", "work", "{}"],
        vec!["enqueue", "work", "{}", "--delay", "1s"],
        vec!["enqueue", "work", "{\"k\": 1}", "--unique-for", "1m"],
    ] {
        let mut full = args.clone();
        full.extend(["--config", cfg.as_str()]);
        let (code, out) = cli(&full, &env);
        assert_eq!(code, 0, "{args:?}: {out}");
        ids.push(out.trim().to_owned());
    }
    // A flow too: its documents' lists and its own keys.
    let doc = dir.path().join("flow.json");
    std::fs::write(
        &doc,
        r#"{"flow": "acl", "jobs": {"a": {"queue": "work", "payload": {}},
            "b": {"queue": "work", "payload": {}, "after": ["a"]}}}"#,
    )
    .unwrap();
    let (code, out) = cli(
        &["flow", "submit", doc.to_str().unwrap(), "--config", &cfg],
        &env,
    );
    assert_eq!(code, 0, "{out}");
    let mut cmd = conveyor();
    cmd.args(["run", "--config", &cfg])
        .env("REDIS_PASSWORD", "worker-pw")
        .env("CONVEYOR_LOG", "debug")
        .stdout(Stdio::null());
    let (mut daemon, logs) = spawn_logged(cmd);
    let monitor = conveyor()
        .args(["monitor", "--config", &cfg])
        .env("REDIS_PASSWORD", "worker-pw")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    for id in &ids {
        loop {
            let (_, out) = cli(&["status", id, "--config", &cfg], &env);
            if out.contains("succeeded") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{id} never succeeded: {out}\n{}",
                logs.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    loop {
        let (_, out) = cli(&["flow", "show", "acl", "--config", &cfg], &env);
        if out.contains("succeeded, 2 of 2") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the flow never ended: {out}\n{}",
            logs.lines().join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for args in [
        vec!["stats"],
        vec!["dead", "list", "work"],
        vec!["schedules"],
        vec!["flow", "list"],
    ] {
        let mut full = args.clone();
        full.extend(["--config", cfg.as_str()]);
        let (code, out) = cli(&full, &env);
        assert_eq!(code, 0, "{args:?}: {out}");
    }
    // The outcomes were counted in the queue's history too: a minute's
    // string and a day's.
    let kept = server.cli("admin-pw", &["KEYS", "{jobs:work}:history:*"]);
    assert!(kept.lines().count() >= 2, "history kept: {kept:?}");
    signal(&daemon, 15);
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)), Some(0));
    let watched = bounded_output(monitor, Duration::ZERO);
    let all = format!("{}\n{watched}", logs.lines().join("\n"));
    for refusal in ["NoPerm", "NOPERM", "no permissions", "refused"] {
        assert!(!all.contains(refusal), "{refusal}:\n{all}");
    }
}

/// Given the sentinels instead of a URL, `check`, `enqueue`, `stats` and
/// `run` work on the master they name, with the master's password from
/// `REDIS_PASSWORD` and the sentinels' own in their URLs; a wrong master
/// name, a wrong password for either, are each told as what they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_name_the_master_to_every_command() {
    use common::sentinel::{PASSWORD, SENTINEL_PASSWORD, Sentinels};
    let set = Sentinels::start().await;
    let master = set.master_port().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &set.config_line(), QUEUE);
    let env = [("REDIS_PASSWORD", PASSWORD)];

    let (code, out) = cli(&["--config", &cfg, "check"], &env);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "redis: the sentinels' master is at 127.0.0.1:{master}"
        )),
        "{out}"
    );
    assert!(out.contains("redis: permissions: ok"), "{out}");
    let (code, out) = cli(&["--config", &cfg, "enqueue", "work", "{}"], &env);
    assert_eq!(code, 0, "{out}");
    let (code, out) = cli(&["--config", &cfg, "stats"], &env);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("work"), "{out}");
    let mut conn = common::sentinel::data_conn(master).await.unwrap();
    assert_eq!(
        llen(&mut conn, "jobs:work").await,
        1,
        "the job is on the master"
    );

    // The daemon takes it from the master.
    let mut daemon = conveyor();
    daemon.args(["--config", &cfg, "run"]).envs(env);
    let (_daemon, logs) = spawn_logged(daemon);
    wait_until("the daemon runs the job", Duration::from_secs(20), || {
        let mut c = conn.clone();
        async move { stat(&mut c, "jobs:work", "processed").await == 1 }
    })
    .await;
    let mut shown = vec![out, logs.lines().join("\n")];

    let other = tempfile::tempdir().unwrap();
    let wrong_master = write_config(
        other.path(),
        &set.config_line()
            .replace("\"mymaster\"", "\"nosuchmaster\""),
        QUEUE,
    );
    let (code, out) = cli(&["--config", &wrong_master, "check"], &env);
    assert_eq!(code, 69, "{out}");
    assert!(
        out.contains("no sentinel watches a master by that name"),
        "{out}"
    );
    shown.push(out);
    let (code, out) = cli(&["--config", &cfg, "check"], &[("REDIS_PASSWORD", "wrong")]);
    assert_eq!(code, 77, "{out}");
    assert!(out.contains("the master refused the credentials"), "{out}");
    shown.push(out);
    let other = tempfile::tempdir().unwrap();
    let wrong_sentinel = write_config(
        other.path(),
        &set.config_line().replace(SENTINEL_PASSWORD, "wrong"),
        QUEUE,
    );
    let (code, out) = cli(&["--config", &wrong_sentinel, "check"], &env);
    assert_eq!(code, 77, "{out}");
    assert!(
        out.contains("the sentinels refused the credentials given in their URLs"),
        "{out}"
    );
    shown.push(out);
    // The documented worker user, on the master, named in the sentinel table.
    let user_password = "worker-pw";
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("conveyor")
        .arg(format!(">{user_password}"))
        .arg(WORKER_ACL.split_whitespace().collect::<Vec<_>>())
        .query_async(&mut conn)
        .await
        .unwrap();
    let other = tempfile::tempdir().unwrap();
    let as_user = write_config(
        other.path(),
        &set.config_line()
            .replace(" }", ", username = \"conveyor\" }"),
        QUEUE,
    );
    let (code, out) = cli(
        &["--config", &as_user, "check"],
        &[("REDIS_PASSWORD", user_password)],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("redis: permissions: ok"), "{out}");
    let (code, out) = cli(
        &["--config", &as_user, "check"],
        &[("REDIS_PASSWORD", PASSWORD)],
    );
    assert_eq!(
        code, 77,
        "the user's password, not the default user's: {out}"
    );
    shown.push(out);
    for text in &shown {
        assert!(
            !text.contains(PASSWORD) && !text.contains(SENTINEL_PASSWORD),
            "{text}"
        );
    }
}

/// A worker user of the ACL line documented before flows (no
/// `{conveyor:*` nor `{flow:*` keys): every job still runs, and the
/// daemon says once that flows are not run, without a warning a second.
#[test]
fn a_user_without_the_flows_keys_runs_jobs_and_says_once_flows_are_off() {
    let before_flows = WORKER_ACL
        .replace(" ~{conveyor:* ~{flow:*", "")
        .replace("+hget +hmget ", "");
    let server = Server::start("admin-pw", None);
    let mut acl = vec!["ACL", "SETUSER", "worker", ">worker-pw"];
    acl.extend(before_flows.split_whitespace());
    assert_eq!(server.cli("admin-pw", &acl), "OK");
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!("url = \"redis://worker@127.0.0.1:{}/0\"", server.port),
        &format!("{QUEUE}track = true\n"),
    );
    let env = [("REDIS_PASSWORD", "worker-pw")];
    let (code, id) = cli(&["enqueue", "work", "{}", "--config", &cfg], &env);
    assert_eq!(code, 0, "{id}");
    let mut cmd = conveyor();
    cmd.args(["run", "--config", &cfg])
        .env("REDIS_PASSWORD", "worker-pw")
        .env("CONVEYOR_LOG", "debug")
        .stdout(Stdio::null());
    let (mut daemon, logs) = spawn_logged(cmd);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, out) = cli(&["status", id.trim(), "--config", &cfg], &env);
        if out.contains("succeeded") {
            break;
        }
        assert!(Instant::now() < deadline, "the job never ran: {out}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Two of the driver's looks at the documents' list, each refused too.
    while logs
        .lines()
        .iter()
        .filter(|l| l.contains("could not look at the taken documents"))
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "{}", logs.lines().join("\n"));
        std::thread::sleep(Duration::from_millis(50));
    }
    let said = logs
        .lines()
        .iter()
        .filter(|l| l.contains("flows are not run"))
        .count();
    assert_eq!(said, 1, "{}", logs.lines().join("\n"));
    signal(&daemon, 15);
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)), Some(0));
}
