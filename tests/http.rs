//! The `http` handler against a real HTTP server (a scripted one in Python,
//! `tests/http/server.py`) and a private redis-server: requests and their
//! headers, Standard Webhooks signatures checked by the specification's own
//! library, outcomes by status, Retry-After, timeouts, resets, redirects, a
//! huge answer, the SSRF guard, the cache, and secrets kept out of sight.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;
#[path = "http/mod.rs"]
mod http;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use http::{HttpServer, verify};
use redis::AsyncCommands as _;
use serde_json::json;

const Q: &str = "jobs:hooks";
const WAIT: Duration = Duration::from_secs(20);
/// A Standard Webhooks secret: whsec_ and base64.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn queue(settings: &str, http: &str) -> String {
    format!(
        "[queues.hooks]\nhandler = \"http\"\nconcurrency = 2\ntrack = true\n\
         backoff = {{ base = \"100ms\", max = \"10s\" }}\n{settings}\n[queues.hooks.http]\n{http}\n"
    )
}

async fn push(conn: &mut redis::aio::MultiplexedConnection, id: &str, payload: serde_json::Value) {
    let env = json!({"id": id, "payload": payload, "attempt": 0});
    let _: () = conn.rpush(Q, env.to_string()).await.unwrap();
}

async fn wait_state(
    conn: &redis::aio::MultiplexedConnection,
    id: &str,
    state: &str,
) -> HashMap<String, String> {
    wait_job_state(conn, id, state, WAIT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_posted_with_its_headers_signed_and_its_answer_kept() {
    let redis = Redis::start();
    let server = HttpServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut conn = redis.conn().await;
    let http = format!(
        "url = \"{}\"\nheaders = {{ \"X-Team\" = \"billing\", \"Authorization\" = \"env:HOOKS_TEST_TOKEN\" }}",
        server.url("/ok")
    );
    // The daemon runs as a process of its own: the secret and the token
    // reach it through its environment, as they would in production.
    let cfg = config_file(dir.path(), &redis, &queue("", &http));
    let mut cmd = conveyor();
    cmd.args(["run", "--config", cfg.to_str().unwrap()])
        .env("CONVEYOR_HTTP_SECRET_HOOKS", SECRET)
        .env("HOOKS_TEST_TOKEN", "Bearer t0ken-in-env")
        .stdout(Stdio::null());
    let (mut daemon, _logs) = spawn_logged(cmd);
    push(&mut conn, "order-1", json!({"order": 101, "note": "é"})).await;
    let done = wait_state(&conn, "order-1", "succeeded").await;
    signal(&daemon, 15);
    assert_eq!(wait_exit(&mut daemon, WAIT), Some(0));
    let result: serde_json::Value = serde_json::from_str(&done["result"]).unwrap();
    assert_eq!(result, json!({"ok": true, "n": 1}));
    // `conveyor status` shows it: as text, and as JSON in --json.
    let cfg = cfg.to_str().unwrap();
    let (code, out, err) = run_cli(&["status", "order-1", "--config", cfg]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("state        succeeded"), "{out}");
    assert!(
        out.contains(&format!("result       {}", done["result"])),
        "{out}"
    );
    let (code, out, err) = run_cli(&["status", "order-1", "--config", cfg, "--json"]);
    assert_eq!(code, 0, "{err}");
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["result"], json!({"ok": true, "n": 1}));
    assert_eq!(shown["attempt"], 1, "a number, as in the envelope");

    let request = server.to("/ok").remove(0);
    assert_eq!(request.method, "POST");
    let body: serde_json::Value = serde_json::from_str(&request.body).unwrap();
    assert_eq!(body, json!({"order": 101, "note": "é"}));
    let h = &request.headers;
    assert_eq!(h["content-type"], "application/json");
    assert!(h["user-agent"].starts_with("conveyor/"), "{h:?}");
    assert_eq!(h["webhook-id"], "order-1");
    let ts: i64 = h["webhook-timestamp"].parse().unwrap();
    assert!((ts - common::now_ms() / 1000).abs() < 60, "{ts}");
    assert_eq!(
        (h["conveyor-queue"].as_str(), h["conveyor-attempt"].as_str()),
        ("hooks", "1")
    );
    assert_eq!(
        (h["x-team"].as_str(), h["authorization"].as_str()),
        ("billing", "Bearer t0ken-in-env")
    );
    assert!(h["webhook-signature"].starts_with("v1,"));
    verify(&request, SECRET).unwrap();
    // A tampered body or another secret does not verify.
    let mut tampered = request.clone();
    tampered.body = tampered.body.replace("101", "102");
    assert!(verify(&tampered, SECRET).is_err());
    assert!(verify(&request, "whsec_c2VjcmV0").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_kept_and_one_the_server_closed_is_not_used() {
    let redis = Redis::start();
    let server = HttpServer::start_with(&["--idle-timeout", "0.5"]);
    let mut conn = redis.conn().await;
    // One attempt: a request lost on a closed connection would be dead.
    // A Host the queue sets is sent instead of the URL's.
    let http = format!(
        "url = \"{}\"\nheaders = {{ \"Host\" = \"hooks.example\" }}",
        server.url("/ok")
    );
    let _daemon = TestDaemon::start(config(&redis, &queue("max_attempts = 1", &http)), builtin());
    for n in 1..=3 {
        push(&mut conn, &format!("kept-{n}"), json!({"n": n})).await;
        wait_state(&conn, &format!("kept-{n}"), "succeeded").await;
    }
    let ports: Vec<u16> = server.to("/ok").iter().map(|r| r.port).collect();
    assert_eq!(ports.len(), 3);
    assert!(
        ports.iter().all(|p| *p == ports[0]),
        "one connection, kept: {ports:?}"
    );
    // The server closes it after 0.5 s idle; the next job goes out on a
    // new connection, at its first attempt.
    wait_until("the server closes the idle connection", WAIT, || async {
        server.closed().contains(&ports[0])
    })
    .await;
    push(&mut conn, "after-close", json!({"n": 4})).await;
    let done = wait_state(&conn, "after-close", "succeeded").await;
    assert_eq!(done["attempt"], "1", "{done:?}");
    let last = server.to("/ok").pop().expect("a request");
    assert_ne!(last.port, ports[0], "a new connection");
    assert_eq!(last.headers["host"], "hooks.example");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_decide_retry_dead_and_the_delay_asked_for() {
    let redis = Redis::start();
    let server = HttpServer::start();
    let mut conn = redis.conn().await;
    let http = "allow_job_url = true\nallow_private = true";
    let daemon = TestDaemon::start(
        config(&redis, &queue("max_attempts = 2\ntimeout = \"1s\"", http)),
        builtin(),
    );
    let job = |path: &str| json!({"url": server.url(path), "body": {"n": 1}});
    push(&mut conn, "flaky", job("/flaky")).await;
    push(&mut conn, "limited", job("/limited")).await;
    push(&mut conn, "bad", job("/bad")).await;
    push(&mut conn, "redirect", job("/redirect")).await;
    push(&mut conn, "slow", job("/slow")).await;
    push(&mut conn, "reset", job("/reset")).await;
    push(
        &mut conn,
        "huge",
        json!({"url": server.url("/huge"), "method": "GET"}),
    )
    .await;
    push(&mut conn, "text", job("/text")).await;

    let flaky = wait_state(&conn, "flaky", "succeeded").await;
    assert_eq!(flaky["attempt"], "2", "503 then 200: {flaky:?}");
    assert_eq!(flaky["result"], r#"{"recovered": true}"#);
    let limited = wait_state(&conn, "limited", "succeeded").await;
    let requests = server.to("/limited");
    assert_eq!(requests.len(), 2);
    assert_eq!(limited["attempt"], "2");
    let bad = wait_state(&conn, "bad", "dead").await;
    assert_eq!(bad["attempt"], "1", "a 400 is permanent");
    assert!(
        bad["last_error"].starts_with("HTTP 400 Bad Request from http://127.0.0.1:")
            && bad["last_error"].ends_with("/bad: no such customer"),
        "{}",
        bad["last_error"]
    );
    let redirect = wait_state(&conn, "redirect", "dead").await;
    assert!(
        redirect["last_error"].contains("HTTP 302 Found")
            && redirect["last_error"].contains("redirects are not followed; location: /ok"),
        "{}",
        redirect["last_error"]
    );
    assert!(server.to("/ok").is_empty(), "the redirect was not followed");
    let slow = wait_state(&conn, "slow", "dead").await;
    assert!(
        slow["last_error"].starts_with("timed out after 1s"),
        "{}",
        slow["last_error"]
    );
    assert_eq!(slow["attempt"], "2", "a timeout is transient");
    let reset = wait_state(&conn, "reset", "dead").await;
    assert_eq!(reset["attempt"], "2", "a reset is transient: {reset:?}");
    assert!(
        reset["last_error"].contains("HTTP request to"),
        "{}",
        reset["last_error"]
    );
    // 1 GB announced: the body is read up to a bound, the job succeeds.
    let huge = wait_state(&conn, "huge", "succeeded").await;
    assert!(!huge.contains_key("result"));
    let text = wait_state(&conn, "text", "succeeded").await;
    assert!(
        !text.contains_key("result"),
        "a body that is not JSON is no result"
    );
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_sets_the_next_attempts_delay() {
    let redis = Redis::start();
    let server = HttpServer::start();
    let mut conn = redis.conn().await;
    // The queue's own backoff would wait an hour.
    let settings = "backoff = { base = \"1h\", max = \"2h\" }";
    let http = format!("url = \"{}\"", server.url("/limited"));
    let daemon = TestDaemon::start(
        config(
            &redis,
            &format!(
                "[queues.hooks]\nhandler = \"http\"\ntrack = true\n{settings}\n[queues.hooks.http]\n{http}\n"
            ),
        ),
        builtin(),
    );
    let before = common::now_ms();
    push(&mut conn, "later", json!({})).await;
    wait_state(&conn, "later", "retrying").await;
    let due: Vec<(String, f64)> = conn
        .zrange_withscores(format!("{{{Q}}}:scheduled"), 0, -1)
        .await
        .unwrap();
    let wait = due[0].1 as i64 - before;
    assert!(
        (2000..4000).contains(&wait),
        "Retry-After: 2 gave {wait} ms"
    );
    let done = wait_state(&conn, "later", "succeeded").await;
    assert_eq!(done["attempt"], "2");
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_job_urls_to_this_network_are_refused_without_a_request() {
    let redis = Redis::start();
    let server = HttpServer::start();
    let mut conn = redis.conn().await;
    let daemon = TestDaemon::start(
        config(&redis, &queue("", "allow_job_url = true")),
        builtin(),
    );
    let port = server.port;
    push(&mut conn, "literal", json!({"url": server.url("/ok")})).await;
    push(
        &mut conn,
        "named",
        json!({"url": format!("http://localhost:{port}/ok")}),
    )
    .await;
    push(
        &mut conn,
        "metadata",
        json!({"url": "http://169.254.169.254/latest/meta-data/"}),
    )
    .await;
    push(&mut conn, "scheme", json!({"url": "file:///etc/passwd"})).await;
    for id in ["literal", "named", "metadata"] {
        let dead = wait_state(&conn, id, "dead").await;
        assert_eq!(dead["attempt"], "1", "{id}: refused for good");
        assert!(
            dead["last_error"].starts_with("refused, no request sent:")
                && dead["last_error"].contains("allow_private = true"),
            "{id}: {}",
            dead["last_error"]
        );
    }
    let scheme = wait_state(&conn, "scheme", "dead").await;
    assert!(
        scheme["last_error"].contains("\"file\" is not http or https"),
        "{scheme:?}"
    );
    daemon.stop().await.unwrap();
    assert!(server.requests().is_empty(), "no request was sent");

    // Allowed when the queue says so.
    let daemon = TestDaemon::start(
        config(
            &redis,
            &queue("", "allow_job_url = true\nallow_private = true"),
        ),
        builtin(),
    );
    push(
        &mut conn,
        "allowed",
        json!({"url": format!("http://localhost:{port}/ok"), "method": "PUT", "body": [1]}),
    )
    .await;
    wait_state(&conn, "allowed", "succeeded").await;
    daemon.stop().await.unwrap();
    let request = server.to("/ok").remove(0);
    assert_eq!(
        (request.method.as_str(), request.body.as_str()),
        ("PUT", "[1]")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_disguise_of_a_special_address_is_refused_without_a_connection() {
    let redis = Redis::start();
    // Whatever reaches loopback on this port is seen: a connection waits in
    // the listener's backlog whether or not it is accepted.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut conn = redis.conn().await;
    let daemon = TestDaemon::start(
        config(&redis, &queue("", "allow_job_url = true")),
        builtin(),
    );
    // (job id, host, what the refusal says)
    let loopback = "a loopback address, as the IPv4 address 127.0.0.1 its";
    let hostile = [
        (
            "compatible",
            "[::127.0.0.1]",
            format!("{loopback} IPv4-compatible form"),
        ),
        (
            "mapped",
            "[::ffff:127.0.0.1]",
            format!("{loopback} IPv4-mapped form"),
        ),
        (
            "translated",
            "[::ffff:0:127.0.0.1]",
            format!("{loopback} IPv4-translated form"),
        ),
        ("6to4", "[2002:7f00:1::1]", format!("{loopback} 6to4 form")),
        (
            "nat64",
            "[64:ff9b::127.0.0.1]",
            format!("{loopback} NAT64 form"),
        ),
        (
            "nat64-private",
            "[64:ff9b::10.0.0.1]",
            "a private address, as the IPv4 address 10.0.0.1 its NAT64 form".to_owned(),
        ),
        (
            "nat64-local",
            "[64:ff9b:1::7f00:1]",
            "a local-use IPv4/IPv6 translation address".to_owned(),
        ),
        (
            "teredo",
            "[2001:0:4136:e378:8000:63bf:80ff:fffe]",
            format!("{loopback} Teredo form"),
        ),
        (
            "ietf",
            "192.0.0.170",
            "an IETF protocol assignment".to_owned(),
        ),
        ("bench", "198.18.0.1", "a benchmarking address".to_owned()),
        (
            "this-network",
            "0.0.0.0",
            "a \"this network\" address".to_owned(),
        ),
        ("short", "127.1", "a loopback address".to_owned()),
        ("ula", "[fd00::1]", "a unique-local address".to_owned()),
    ];
    for (id, host, _) in &hostile {
        push(
            &mut conn,
            id,
            json!({"url": format!("http://{host}:{port}/hook"), "body": {}}),
        )
        .await;
    }
    for (id, _, says) in &hostile {
        let dead = wait_state(&conn, id, "dead").await;
        let error = &dead["last_error"];
        assert_eq!(dead["attempt"], "1", "{id}: refused for good: {error}");
        assert!(
            error.starts_with("refused, no request sent:")
                && error.contains(says.as_str())
                && error.ends_with("unless the queue sets allow_private = true"),
            "{id}: {error}"
        );
    }
    daemon.stop().await.unwrap();
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("a connection reached the listener: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_get_skips_the_request_until_the_entry_expires() {
    let redis = Redis::start();
    let server = HttpServer::start();
    let mut conn = redis.conn().await;
    let url = server.url("/rates");
    let http = format!("url = \"{url}\"\nmethod = \"GET\"\ncache_ttl = \"1s\"");
    let daemon = TestDaemon::start(config(&redis, &queue("", &http)), builtin());
    push(&mut conn, "first", json!({})).await;
    wait_state(&conn, "first", "succeeded").await;
    let key = cache_key(&url);
    let cached: String = conn.get(&key).await.unwrap();
    assert_eq!(cached, r#"{"rate": 1.1}"#);
    let ttl: i64 = conn.pttl(&key).await.unwrap();
    assert!(ttl > 0 && ttl <= 1000, "{ttl}");
    push(&mut conn, "second", json!({})).await;
    wait_state(&conn, "second", "succeeded").await;
    assert_eq!(
        server.to("/rates").len(),
        1,
        "the cache answered the second"
    );
    wait_until("the entry expires", WAIT, || {
        let (mut c, key) = (conn.clone(), key.clone());
        async move {
            let exists: bool = c.exists(&key).await.unwrap();
            !exists
        }
    })
    .await;
    push(&mut conn, "third", json!({})).await;
    wait_state(&conn, "third", "succeeded").await;
    assert_eq!(server.to("/rates").len(), 2);
    assert_eq!(server.to("/rates")[0].method, "GET");
    assert_eq!(server.to("/rates")[0].body, "", "GET sends no body");
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_out_of_logs_events_and_errors() {
    let redis = Redis::start();
    let server = HttpServer::start();
    let dir = tempfile::tempdir().unwrap();
    let http = format!(
        "url = \"{}\"\nheaders = {{ \"Authorization\" = \"env:HOOKS_TOKEN\" }}",
        server.url("/bad")
    );
    let cfg = config_file(dir.path(), &redis, &queue("", &http));
    let mut conn = redis.conn().await;
    let mut cmd = conveyor();
    cmd.args(["run", "--config", cfg.to_str().unwrap()])
        .env("CONVEYOR_LOG", "debug")
        .env("CONVEYOR_HTTP_SECRET_HOOKS", SECRET)
        .env("HOOKS_TOKEN", "Bearer s3cr3t-t0ken")
        .stdout(Stdio::null());
    let (mut daemon, logs) = spawn_logged(cmd);
    push(&mut conn, "refused", json!({"n": 1})).await;
    let dead = wait_state(&conn, "refused", "dead").await;
    signal(&daemon, 15);
    assert_eq!(wait_exit(&mut daemon, WAIT), Some(0));
    let request = server.to("/bad").remove(0);
    assert_eq!(request.headers["authorization"], "Bearer s3cr3t-t0ken");
    verify(&request, SECRET).unwrap();
    assert!(
        logs.lines()
            .iter()
            .any(|l| l.contains("hooks") && l.contains("signing: yes")),
        "the start log says the queue signs: {:?}",
        logs.lines()
    );
    let events = stream_entries(&mut conn, "conveyor:events").await;
    let everything = format!("{:?}\n{dead:?}\n{events:?}", logs.lines());
    for secret in ["s3cr3t-t0ken", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"] {
        assert!(!everything.contains(secret), "{secret} leaked");
    }
}

#[test]
fn check_says_whether_each_http_queue_signs() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let http = "url = \"http://127.0.0.1:9/hook\"".to_owned();
    let cfg = config_file(dir.path(), &redis, &queue("", &http));
    let check = |secret: Option<&str>| {
        let mut cmd = conveyor();
        cmd.args(["check", "--config", cfg.to_str().unwrap()]);
        if let Some(secret) = secret {
            cmd.env("CONVEYOR_HTTP_SECRET_HOOKS", secret);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = check(None);
    assert!(
        out.contains("http hooks: ok (")
            && out.contains("signing: no (no CONVEYOR_HTTP_SECRET_HOOKS set)"),
        "{out}"
    );
    let out = check(Some(SECRET));
    assert!(out.contains("signing: yes"), "{out}");
    assert!(!out.contains(SECRET), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_keeps_the_cache_warm_with_one_request_per_lifetime() {
    let redis = Redis::start();
    let server = HttpServer::start();
    let conn = redis.conn().await;
    let url = server.url("/rates");
    let extra = format!(
        "[queues.rates]\nhandler = \"http\"\n[queues.rates.http]\nurl = \"{url}\"\n\
         method = \"GET\"\ncache_ttl = \"1h\"\n\
         [schedules.rates]\nqueue = \"rates\"\nevery = \"1s\"\n"
    );
    let daemon = TestDaemon::start(config(&redis, &extra), builtin());
    wait_until("three ticks run", WAIT, || {
        let mut c = conn.clone();
        async move { stat(&mut c, "jobs:rates", "processed").await >= 3 }
    })
    .await;
    daemon.stop().await.unwrap();
    let cached: String = conn.clone().get(cache_key(&url)).await.unwrap();
    assert_eq!(cached, r#"{"rate": 1.1}"#);
    assert_eq!(
        server.to("/rates").len(),
        1,
        "the later ticks were cache hits"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_private_ca_speaks_http2_and_both_protocols_keep_connections() {
    let redis = Redis::start();
    let ca = TestCa::generate();
    let mut nginx = http::Nginx::start(&ca.cert, &ca.key);
    let mut conn = redis.conn().await;
    let tracked = "concurrency = 4\ntrack = true\nmax_attempts = 1\n";
    let queues = format!(
        "[queues.tls]\nhandler = \"http\"\n{tracked}\
         [queues.tls.http]\nurl = \"https://localhost:{tls}/hook\"\nca_file = \"{ca}\"\n\
         [queues.plain]\nhandler = \"http\"\n{tracked}\
         [queues.plain.http]\nurl = \"http://127.0.0.1:{port}/hook\"\n\
         [queues.untrusted]\nhandler = \"http\"\n{tracked}\
         [queues.untrusted.http]\nurl = \"https://localhost:{tls}/hook\"\n",
        tls = nginx.tls_port,
        port = nginx.port,
        ca = ca.ca.display(),
    );
    let daemon = TestDaemon::start(config(&redis, &queues), builtin());
    const JOBS: usize = 40;
    let push_jobs = async |conn: &mut redis::aio::MultiplexedConnection,
                           ids: std::ops::Range<usize>| {
        for queue in ["tls", "plain"] {
            for i in ids.clone() {
                let env = json!({"id": format!("{queue}-{i}"), "payload": {"i": i}, "attempt": 0});
                let _: () = conn
                    .rpush(format!("jobs:{queue}"), env.to_string())
                    .await
                    .unwrap();
            }
        }
    };
    push_jobs(&mut conn, 0..JOBS).await;
    let env = json!({"id": "untrusted", "payload": {}, "attempt": 0});
    let _: () = conn.rpush("jobs:untrusted", env.to_string()).await.unwrap();

    // Each answer says which protocol and connection its request came on.
    for (queue, proto) in [("tls", "HTTP/2.0"), ("plain", "HTTP/1.1")] {
        let mut connections = std::collections::HashSet::new();
        for i in 0..JOBS {
            let done = wait_state(&conn, &format!("{queue}-{i}"), "succeeded").await;
            let answer: serde_json::Value = serde_json::from_str(&done["result"]).unwrap();
            assert_eq!(answer["proto"], proto, "{queue}: {answer}");
            connections.insert(answer["conn"].as_u64().unwrap());
        }
        // Kept alive and reused: 4 slots, never a connection per job.
        assert!(
            connections.len() <= 4,
            "{queue}: {JOBS} jobs on {} connections",
            connections.len()
        );
    }
    // Without the CA the same server is not trusted, and nothing succeeds.
    let refused = wait_state(&conn, "untrusted", "dead").await;
    assert!(
        refused["last_error"].contains("certificate"),
        "{}",
        refused["last_error"]
    );
    // The server restarts: the kept connections are gone, and the next
    // jobs (one attempt each) go out on new ones, on both protocols.
    nginx.restart();
    push_jobs(&mut conn, JOBS..JOBS + 10).await;
    for queue in ["tls", "plain"] {
        for i in JOBS..JOBS + 10 {
            wait_state(&conn, &format!("{queue}-{i}"), "succeeded").await;
        }
    }
    daemon.stop().await.unwrap();
}

/// The cache entry of a GET of `url`, as an application finds it:
/// `cache:<sha256 hex of the URL>` (DESIGN.md, the keys).
fn cache_key(url: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(url.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("cache:{hex}")
}

/// A flow's node run by the http handler: its flow and its parents'
/// statuses and results reach the receiver as `conveyor-flow` and
/// `conveyor-parents`; the response's JSON is the node's result, which its
/// child is told of in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flows_nodes_tell_the_receiver_their_flow_and_parents() {
    let redis = Redis::start();
    let server = HttpServer::start();
    let http = "allow_job_url = true\nallow_private = true";
    let config = config(&redis, &queue("", http));
    let client = conveyor::api::Client::new(&config, "test").unwrap();
    let daemon = TestDaemon::start(config, builtin());
    let job = |path: &str| json!({"queue": "hooks", "payload": {"url": server.url(path), "body": {"n": 1}}});
    let mut first = job("/ok");
    first["payload"]["body"] = json!({"first": true});
    let mut second = job("/ok");
    second["after"] = json!(["first"]);
    let doc = json!({"flow": "hooked", "jobs": {"first": first, "second": second}});
    client.submit_flow(&doc.to_string()).await.unwrap();
    wait_until("the flow ends", WAIT, || {
        let client = client.clone();
        async move {
            client
                .flow("hooked")
                .await
                .is_ok_and(|f| f.status == "succeeded")
        }
    })
    .await;
    let requests = server.to("/ok");
    assert_eq!(requests.len(), 2);
    let (a, b) = (&requests[0], &requests[1]);
    assert_eq!(a.headers["webhook-id"], "hooked:first");
    assert_eq!(a.headers["conveyor-flow"], "hooked");
    assert_eq!(a.headers["conveyor-parents"], "{}");
    assert_eq!(b.headers["webhook-id"], "hooked:second");
    let parents: serde_json::Value = serde_json::from_str(&b.headers["conveyor-parents"]).unwrap();
    assert_eq!(parents["first"]["status"], "succeeded");
    assert!(parents["first"].get("result").is_some(), "{parents}");
    daemon.stop().await.unwrap();
}
