//! `[web]`: the dashboard, `/metrics`, `/healthz`, `/readyz` and the web
//! API of a real daemon on a real Redis, over real HTTP; `/metrics` checked
//! by `promtool`; the dashboard driven in headless Chromium (tests/web/
//! browser.py speaks the DevTools protocol to it).

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;
#[path = "web/deadlines.rs"]
mod deadlines;
#[path = "web/flows.rs"]
mod flows;
#[path = "web/history.rs"]
mod history;
#[path = "web/job.rs"]
mod job;
#[path = "web/open_files.rs"]
mod open_files;
#[path = "web/results.rs"]
mod results;
#[path = "web/scale.rs"]
mod scale;

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

const TOKEN: &str = "web-token-with /?#@&= in it";

/// `conveyor run` on `cfg` with the token; its logs and web address.
async fn daemon_with_token(cfg: &str) -> (KillOnDrop, Logs, String) {
    let mut daemon = conveyor();
    daemon
        .args(["--config", cfg, "run"])
        .env("CONVEYOR_WEB_TOKEN", TOKEN);
    let (daemon, logs) = spawn_logged(daemon);
    let base = web_address(&logs).await;
    (daemon, logs, base)
}

/// Sends `request` with the token.
async fn authed(request: reqwest::RequestBuilder) -> reqwest::Response {
    request.bearer_auth(TOKEN).send().await.unwrap()
}

/// The answer's body as JSON.
async fn json(response: reqwest::Response) -> Value {
    response.text().await.unwrap().parse().unwrap()
}

/// Sends `request`; the answer's body.
async fn body(request: reqwest::RequestBuilder) -> String {
    request.send().await.unwrap().text().await.unwrap()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// `promtool`, from the PATH or where scripts/test unpacks Debian's package.
fn promtool() -> PathBuf {
    let unpacked =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/promtool/usr/bin/promtool");
    if unpacked.exists() {
        return unpacked;
    }
    which("promtool").expect("promtool: scripts/test installs it (Debian package prometheus)")
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| PathBuf::from(dir).join(program))
        .find(|p| p.exists())
}

/// `promtool check metrics` on `text`: its exit status and what it said.
fn promtool_check(text: &str) -> (bool, String) {
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), said)
}

/// The value of the sample `name` (with its labels, as written) in `text`.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn cli(cfg: &str, args: &[&str]) -> (i32, String) {
    let mut all = vec!["--config", cfg];
    all.extend_from_slice(args);
    let (code, out, err) = run_cli(&all);
    (code, out + &err)
}

/// The running job's program: a sleep no other process runs (`test` tells
/// this binary's tests apart).
fn seconds(test: u32) -> String {
    format!("{test}.{}", std::process::id())
}

fn sleepers(test: u32) -> Vec<u32> {
    let out = Command::new("pgrep")
        .args(["-f", &format!("sleep {}$", seconds(test))])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

fn queues(test: u32) -> String {
    format!(
        "[web]\nlisten = \"127.0.0.1:0\"\n\
         [queues.work]\nhandler = \"noop\"\n\
         [queues.fail]\nhandler = \"fault\"\nmax_attempts = 1\n\
         [queues.slow]\nhandler = \"exec\"\nconcurrency = 1\ntimeout = \"2m\"\n\
         [queues.slow.exec]\ncommand = [\"sleep\", \"{}\"]\n",
        seconds(test)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_metrics_and_actions_of_a_running_daemon() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), &redis, &queues(32));
    let cfg = cfg.to_str().unwrap();
    let mut conn = redis.conn().await;
    let (mut daemon, logs, base) = daemon_with_token(cfg).await;
    let web = http();
    let get = |path: &str| web.get(format!("{base}{path}"));
    let post = |path: &str| web.post(format!("{base}{path}"));

    // Health needs no token; everything else does.
    let health = get("/healthz").send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    // Nor the icon, where browsers look for it unasked.
    let icon = get("/favicon.ico").send().await.unwrap();
    assert_eq!(icon.status(), StatusCode::OK);
    assert_eq!(icon.headers()["content-type"], "image/svg+xml");
    assert!(icon.text().await.unwrap().starts_with("<svg"));
    wait_until("/readyz says ready", Duration::from_secs(10), || async {
        get("/readyz")
            .send()
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await;
    for path in [
        "/api/stats",
        "/metrics",
        "/api/events",
        "/api/queues/work/dead",
    ] {
        let r = get(path).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
        let r = get(path).bearer_auth("wrong").send().await.unwrap();
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "{path} with a wrong token"
        );
    }
    let page = get("/").send().await.unwrap().text().await.unwrap();
    assert!(page.contains(r#"type="password""#), "a login form: {page}");
    assert!(!page.contains("Queues"), "{page}");
    // The purge question is a page like the dashboard: the login form
    // first; signed in, an unknown or hostile queue name is a 404 that
    // echoes nothing of it.
    let ask = get("/confirm/purge/fail")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        ask.contains(r#"type="password""#) && !ask.contains("Purge all"),
        "{ask}"
    );
    let r = authed(get("/confirm/purge/%3Cscript%3Ewindow.pwned=1")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let said = r.text().await.unwrap();
    assert!(
        !said.contains("script") && !said.contains("pwned"),
        "{said}"
    );
    // The page's refresh is told to reload (and so show the login form).
    let refresh = get("/?partial=1").send().await.unwrap();
    assert_eq!(refresh.status(), StatusCode::UNAUTHORIZED);

    // Work done: 20 successes, one hostile payload dead.
    for i in 0..20 {
        let (code, out) = cli(cfg, &["enqueue", "work", &json!({ "n": i }).to_string()]);
        assert_eq!(code, 0, "{out}");
    }
    let hostile = json!({"fail": "permanent", "html": "</pre><script>window.pwned=1</script><img src=x onerror=\"window.pwned=2\">"});
    let (code, out) = cli(cfg, &["enqueue", "fail", &hostile.to_string()]);
    assert_eq!(code, 0, "{out}");
    let dead_id = out.trim().to_owned();
    // And one its producer pushed three seconds ago, which succeeds.
    let pushed = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(3);
    let waited = json!({ "id": "waited", "payload": {}, "attempt": 0, "created_at": format!("{pushed:.3}") });
    let _: () = redis::AsyncCommands::rpush(&mut conn, "jobs:fail", waited.to_string())
        .await
        .unwrap();
    wait_until("20 done and 1 dead", Duration::from_secs(20), || {
        let mut c = conn.clone();
        async move {
            stat(&mut c, "jobs:work", "processed").await == 20
                && llen(&mut c, "{jobs:fail}:dead").await == 1
                && stat(&mut c, "jobs:fail", "processed").await == 2
        }
    })
    .await;

    // /api/stats is `conveyor stats --json`.
    let api: Value = json(authed(get("/api/stats")).await).await;
    let (code, out) = cli(cfg, &["stats", "--json"]);
    assert_eq!(code, 0, "{out}");
    let cli_stats: Value = serde_json::from_str(out.trim()).unwrap();
    let shape = |v: &Value| -> Vec<String> {
        let mut keys: Vec<String> = v["queues"][0]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        keys.extend(v["nodes"][0].as_object().unwrap().keys().cloned());
        keys.sort();
        keys
    };
    assert_eq!(shape(&api), shape(&cli_stats));
    let work = api["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "work")
        .unwrap();
    assert_eq!(work["processed"], 20);
    assert_eq!(api["nodes"].as_array().unwrap().len(), 1);

    // /metrics: this daemon's counters and histogram, Redis's gauges, and
    // promtool finds nothing to say.
    let metrics = authed(get("/metrics")).await;
    assert_eq!(metrics.status(), StatusCode::OK);
    assert!(
        metrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = metrics.text().await.unwrap();
    assert_eq!(
        sample(
            &text,
            r#"conveyor_jobs_total{outcome="succeeded",queue="work"}"#
        ),
        Some(20.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"conveyor_jobs_total{outcome="failed",queue="fail"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, r#"conveyor_jobs_total{outcome="dead",queue="fail"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"conveyor_jobs_total{outcome="retried",queue="fail"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"conveyor_job_duration_seconds_count{queue="work"}"#
        ),
        Some(20.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"conveyor_job_duration_seconds_bucket{queue="work",le="+Inf"}"#
        ),
        Some(20.0)
    );
    // Waiting time, push to the first run's start: the jobs enqueued just
    // now waited under a second, the one pushed three seconds ago longer.
    let wait = |queue: &str, le: &str| {
        sample(
            &text,
            &format!(r#"conveyor_job_wait_seconds_bucket{{queue="{queue}",le="{le}"}}"#),
        )
    };
    assert_eq!(wait("work", "1"), Some(20.0), "{text}");
    assert_eq!(
        (wait("fail", "1"), wait("fail", "30")),
        (Some(1.0), Some(2.0))
    );
    assert_eq!(
        sample(&text, r#"conveyor_queue_jobs{queue="fail",state="dead"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"conveyor_queue_jobs{queue="work",state="waiting"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, r#"conveyor_queue_oldest_seconds{queue="work"}"#),
        Some(0.0)
    );
    assert_eq!(sample(&text, "conveyor_nodes"), Some(1.0));
    assert_eq!(sample(&text, "conveyor_redis_up"), Some(1.0));
    assert_eq!(sample(&text, "conveyor_events_dropped_total"), Some(0.0));
    assert!(
        text.contains("# TYPE conveyor_jobs_total counter"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE conveyor_job_duration_seconds histogram"),
        "{text}"
    );
    let (clean, said) = promtool_check(&text);
    assert!(clean && said.trim().is_empty(), "promtool: {said}\n{text}");
    // promtool does object when there is something wrong.
    let (clean, _) = promtool_check("# TYPE conveyor_broken counter\nconveyor_broken{a=\"1\"} x\n");
    assert!(!clean);

    // The queue's jobs, typed.
    let listed: Value = json(authed(get("/api/queues/fail/dead")).await).await;
    assert_eq!(listed[0]["id"], dead_id.as_str());
    assert_eq!(
        serde_json::from_str::<Value>(listed[0]["payload"].as_str().unwrap()).unwrap(),
        hostile
    );
    let unknown = authed(get("/api/queues/nope/dead")).await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);

    // Actions: the token and the same origin, or nothing happens.
    let r = post("/api/queues/work/pause").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = post("/api/queues/work/pause")
        .bearer_auth(TOKEN)
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = post("/api/queues/work/pause")
        .bearer_auth(TOKEN)
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let paused = |c: &mut redis::aio::MultiplexedConnection| {
        let mut c = c.clone();
        async move {
            redis::cmd("EXISTS")
                .arg("{jobs:work}:paused")
                .query_async::<u8>(&mut c)
                .await
                .unwrap()
                == 1
        }
    };
    assert!(!paused(&mut conn).await, "refused actions changed nothing");
    let r = authed(post("/api/queues/work/pause")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(json(r).await["done"], "work: paused");
    assert!(paused(&mut conn).await);
    let text = authed(get("/metrics")).await.text().await.unwrap();
    assert_eq!(
        sample(&text, r#"conveyor_queue_paused{queue="work"}"#),
        Some(1.0)
    );
    let r = authed(post("/api/queues/work/resume")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(!paused(&mut conn).await);
    let r = authed(post("/api/queues/nope/pause")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Retry a dead job (it dies again: its payload fails for good), then purge all.
    let r = authed(post(&format!("/api/queues/fail/dead/retry?id={dead_id}"))).await;
    assert_eq!(r.status(), StatusCode::OK);
    wait_until("the retried job ran again", Duration::from_secs(20), || {
        let mut c = conn.clone();
        async move {
            stat(&mut c, "jobs:fail", "processed").await == 3
                && llen(&mut c, "{jobs:fail}:dead").await == 1
        }
    })
    .await;
    let r = authed(post("/api/queues/fail/dead/retry?id=no-such-job")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = authed(post("/api/queues/fail/dead/retry")).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "neither an id nor all");
    let r = authed(post("/api/queues/fail/dead/purge?all=1")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(llen(&mut conn, "{jobs:fail}:dead").await, 0);

    // Run a scheduled job now.
    let (code, out) = cli(
        cfg,
        &["enqueue", "work", "{\"later\":true}", "--delay", "1h"],
    );
    assert_eq!(code, 0, "{out}");
    let later = out.trim().to_owned();
    let scheduled: Value = json(authed(get("/api/queues/work/scheduled")).await).await;
    assert_eq!(scheduled[0]["id"], later.as_str());
    let r = authed(post(&format!("/api/queues/work/scheduled/run?id={later}"))).await;
    assert_eq!(r.status(), StatusCode::OK);
    wait_until("the scheduled job ran now", Duration::from_secs(10), || {
        let mut c = conn.clone();
        async move {
            stat(&mut c, "jobs:work", "processed").await == 21
                && zcard(&mut c, "{jobs:work}:scheduled").await == 0
        }
    })
    .await;

    // Cancel a running exec job: its process is killed, the job is dead.
    let (code, out) = cli(cfg, &["enqueue", "slow", "{}"]);
    assert_eq!(code, 0, "{out}");
    let slow = out.trim().to_owned();
    wait_until("the slow job runs", Duration::from_secs(20), || async {
        let running: Value = json(authed(get("/api/queues/slow/running")).await).await;
        running[0]["id"] == slow.as_str() && !sleepers(32).is_empty()
    })
    .await;
    // The pool starts another worker process once one is killed.
    let before = sleepers(32);
    let r = authed(post(&format!("/api/queues/slow/cancel?id={slow}"))).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        json(r).await["done"],
        format!("{slow}: cancelled (it was running)")
    );
    wait_until(
        "the job's process is killed",
        Duration::from_secs(5),
        || async { sleepers(32).iter().all(|p| !before.contains(p)) },
    )
    .await;
    let dead = dead(&mut conn, "jobs:slow").await;
    assert_eq!(
        (dead[0]["id"].as_str(), dead[0]["last_error"].as_str()),
        (Some(slow.as_str()), Some("cancelled"))
    );

    // Live events as server-sent events.
    let mut stream = authed(get("/api/events")).await;
    assert_eq!(stream.status(), StatusCode::OK);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let (code, out) = cli(cfg, &["enqueue", "work", "{\"live\":true}"]);
    assert_eq!(code, 0, "{out}");
    let live = out.trim().to_owned();
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen
        .lines()
        .any(|l| l.starts_with("data: ") && l.contains("job.succeeded") && l.contains(&live))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, stream.chunk())
            .await
            .expect("job.succeeded arrives")
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(stream);
    // A browser that reconnects with the last id it saw misses nothing.
    let last_id = seen
        .split("\n\n")
        .filter(|m| m.contains("job.succeeded") && m.contains(&live))
        .find_map(|m| m.lines().find_map(|l| l.strip_prefix("id: ")))
        .expect("messages carry ids")
        .to_owned();
    let (code, out) = cli(cfg, &["enqueue", "work", "{\"missed\":true}"]);
    assert_eq!(code, 0, "{out}");
    let missed = out.trim().to_owned();
    wait_until("the missed job is done", Duration::from_secs(10), || {
        let mut c = conn.clone();
        async move { stat(&mut c, "jobs:work", "processed").await == 23 }
    })
    .await;
    let mut stream = get("/api/events")
        .bearer_auth(TOKEN)
        .header("last-event-id", &last_id)
        .send()
        .await
        .unwrap();
    let mut again = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !again.contains(&format!(
        "\"job.succeeded\",\"queue\":\"work\",\"id\":\"{missed}\""
    )) {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, stream.chunk())
            .await
            .expect("the missed events arrive")
            .unwrap()
            .unwrap();
        again.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        !again.contains(&format!(
            "\"job.succeeded\",\"queue\":\"work\",\"id\":\"{live}\""
        )),
        "nothing before the last id: {again}"
    );
    drop(stream);

    // The dashboard's login: a wrong token is refused, the right one gives a
    // session cookie that is not the token; the cookie acts only from here.
    let r = post("/login")
        .form(&[("token", "wrong")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().get("set-cookie").is_none());
    let r = post("/login")
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains("web-token"), "{cookie}");
    // It lasts a working day, and is Secure when the browser came over
    // HTTPS (a TLS proxy says so, or the browser's Origin does).
    assert!(cookie.contains("; Max-Age=43200;"), "{cookie}");
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    for (header, value) in [
        ("x-forwarded-proto", "https"),
        ("origin", "https://jobs.example"),
    ] {
        let r = post("/login")
            .header(header, value)
            .header("host", "jobs.example")
            .form(&[("token", TOKEN)])
            .send()
            .await
            .unwrap();
        let cookie = r.headers()["set-cookie"].to_str().unwrap();
        assert!(cookie.ends_with("; Secure"), "{header}: {cookie}");
    }
    let session = cookie.split(';').next().unwrap().to_owned();
    let page = body(get("/").header("cookie", &session)).await;
    assert!(
        page.contains("<h2>Queues</h2>") && page.contains("Sign out"),
        "{page}"
    );
    let host = base.trim_start_matches("http://").to_owned();
    let r = post("/api/queues/work/pause")
        .header("cookie", &session)
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(!paused(&mut conn).await);
    let r = post("/api/queues/work/pause")
        .header("cookie", &session)
        .header("origin", format!("http://{host}"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::SEE_OTHER,
        "a form goes back to the page"
    );
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with("/?done=work%3A%20paused&sig="),
        "{location}"
    );
    assert!(paused(&mut conn).await);
    // The page shows what the server signed, and nothing a link says.
    let page = body(get(&location).header("cookie", &session)).await;
    assert!(
        page.contains(r#"<p class="done" role="status">work: paused</p>"#),
        "{page}"
    );
    let (_, sig) = location.split_once("&sig=").unwrap();
    let sig = sig.split('#').next().unwrap();
    for forged in [
        "/?done=Your%20session%20expired%3A%20see%20evil.example".to_owned(),
        format!("/?done=Your%20session%20expired&sig={sig}"),
    ] {
        let page = body(get(&forged).header("cookie", &session)).await;
        assert!(page.contains("<h2>Queues</h2>"), "{page}");
        assert!(
            !page.contains("class=\"done\"") && !page.contains("session expired"),
            "{forged}: {page}"
        );
    }

    // A queue a reload adds shows, and can be acted on.
    let mut text = std::fs::read_to_string(cfg).unwrap();
    text.push_str("[queues.added]\nhandler = \"noop\"\n");
    std::fs::write(cfg, text).unwrap();
    signal(&daemon, 1);
    wait_until("the added queue shows", Duration::from_secs(10), || async {
        let stats = authed(get("/api/stats")).await;
        stats.text().await.unwrap().contains("\"name\":\"added\"")
    })
    .await;
    let r = authed(post("/api/queues/added/pause")).await;
    assert_eq!(r.status(), StatusCode::OK);

    // Nothing printed the token.
    signal(&daemon, 15);
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)), Some(0));
    assert!(
        !logs.contains(TOKEN) && !logs.contains("web-token"),
        "{:?}",
        logs.lines()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_address_other_machines_reach_needs_a_token() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(
        dir.path(),
        &redis,
        "[web]\nlisten = \"0.0.0.0:0\"\n[queues.work]\nhandler = \"noop\"\n",
    );
    let cfg = cfg.to_str().unwrap();
    for command in ["run", "web", "check"] {
        let (code, out) = cli(cfg, &[command]);
        assert_eq!(code, 78, "{command}: {out}");
        assert!(
            out.contains("web.listen 0.0.0.0:0 is reachable from other machines"),
            "{out}"
        );
    }
    let (code, out, err) = run_cli_env(
        &["--config", cfg, "web"],
        &[("CONVEYOR_WEB_TOKEN", "short")],
    );
    assert_eq!(code, 78, "{out}{err}");
    assert!(err.contains("at least 16 characters"), "{err}");
    assert!(!err.contains("short"), "{err}");

    // `check` says where the pages are and who may see them.
    let (code, out, err) = run_cli_env(
        &["--config", cfg, "check"],
        &[("CONVEYOR_WEB_TOKEN", TOKEN)],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("web: ok (http://0.0.0.0:0/, a token is asked for)"),
        "{out}"
    );
    assert!(!out.contains(TOKEN) && !err.contains(TOKEN), "{out}{err}");

    // With a token from a file it serves, and asks for it.
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let mut web = conveyor();
    web.args(["--config", cfg, "web"])
        .env("CONVEYOR_WEB_TOKEN_FILE", &token_file);
    let (mut web, logs) = spawn_logged(web);
    let base = web_address(&logs).await.replace("0.0.0.0", "127.0.0.1");
    let client = http();
    let r = client
        .get(format!("{base}/api/stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = authed(client.get(format!("{base}/api/stats"))).await;
    assert_eq!(r.status(), StatusCode::OK);
    // A queue's results too: the API and the page.
    let results = format!("{base}/api/results?queue=work");
    let r = client.get(&results).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = authed(client.get(&results)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let page = body(client.get(format!("{base}/results/work"))).await;
    assert!(page.contains("type=\"password\""), "the login form: {page}");
    let page = body(
        client
            .get(format!("{base}/results/work"))
            .bearer_auth(TOKEN),
    )
    .await;
    assert!(page.contains("results of"), "{page}");
    // A bad listen address or a port in use: exit 78, saying which.
    let taken = base.trim_start_matches("http://127.0.0.1:").to_owned();
    let listen = format!("127.0.0.1:{taken}");
    let (code, _, err) = run_cli_env(
        &["--config", cfg, "web", "--listen", &listen],
        &[("CONVEYOR_WEB_TOKEN", TOKEN)],
    );
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains(&format!("web.listen {listen}: cannot listen")),
        "{err}"
    );
    signal(&web, 15);
    assert_eq!(wait_exit(&mut web, Duration::from_secs(10)), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conveyor_web_alone_is_ready_while_redis_answers() {
    let mut redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), &redis, "[queues.work]\nhandler = \"noop\"\n");
    let cfg = cfg.to_str().unwrap();
    let (code, out) = cli(cfg, &["web"]);
    assert_eq!(code, 64, "no [web] listen: {out}");
    let (code, out) = cli(cfg, &["enqueue", "work", "{}"]);
    assert_eq!(code, 0, "{out}");
    let mut web = conveyor();
    web.args(["--config", cfg, "web", "--listen", "127.0.0.1:0"]);
    let (mut web, logs) = spawn_logged(web);
    let base = web_address(&logs).await;
    let client = http();
    let status = |path: &'static str| {
        let request = client.get(format!("{base}{path}"));
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(status("/readyz").await, StatusCode::OK);
    // Without a daemon: the gauges from Redis, no job counters.
    let text = body(client.get(format!("{base}/metrics"))).await;
    assert_eq!(
        sample(
            &text,
            r#"conveyor_queue_jobs{queue="work",state="waiting"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "conveyor_nodes"), Some(0.0));
    assert!(!text.contains("conveyor_jobs_total"), "{text}");
    let (clean, said) = promtool_check(&text);
    assert!(clean, "promtool: {said}");

    redis.kill();
    assert_eq!(status("/healthz").await, StatusCode::OK);
    assert_eq!(status("/readyz").await, StatusCode::SERVICE_UNAVAILABLE);
    // /metrics still answers, saying Redis is away.
    let text = body(client.get(format!("{base}/metrics"))).await;
    assert_eq!(sample(&text, "conveyor_redis_up"), Some(0.0), "{text}");
    assert!(!text.contains("conveyor_queue_jobs"), "{text}");
    let (clean, said) = promtool_check(&text);
    assert!(clean, "promtool: {said}");
    redis.restart();
    wait_until("ready again", Duration::from_secs(20), || async {
        client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await;
    signal(&web, 15);
    assert_eq!(wait_exit(&mut web, Duration::from_secs(10)), Some(0));
}

/// Headless Chromium, one DevTools command a line.
struct Browser {
    _child: KillOnDrop,
    input: std::process::ChildStdin,
    output: BufReader<std::process::ChildStdout>,
}

impl Browser {
    fn start() -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/web/browser.py");
        let mut child = Command::new("python3")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let input = child.stdin.take().unwrap();
        let output = BufReader::new(child.stdout.take().unwrap());
        Self {
            _child: KillOnDrop(child),
            input,
            output,
        }
    }

    /// Sends one command; its value, or a panic with the browser's error.
    fn send(&mut self, command: Value) -> Value {
        writeln!(self.input, "{command}").unwrap();
        let mut line = String::new();
        self.output.read_line(&mut line).unwrap();
        let answer: Value = serde_json::from_str(&line)
            .unwrap_or_else(|_| panic!("the browser driver said {line:?} to {command}"));
        match answer.get("error") {
            Some(e) => panic!("browser: {e} (for {command})"),
            None => answer["ok"].clone(),
        }
    }

    fn eval(&mut self, expression: &str) -> Value {
        self.send(json!({ "eval": expression }))
    }

    fn wait(&mut self, expression: &str) -> Value {
        self.send(json!({ "wait": expression, "timeout": 15 }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_browser() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), &redis, &queues(33));
    let cfg = cfg.to_str().unwrap();
    let mut conn = redis.conn().await;
    let hostile = json!({"fail": "permanent", "html": "</pre><script>window.pwned=1</script><img src=x onerror=\"window.pwned=2\">"});
    let (code, out) = cli(cfg, &["enqueue", "fail", &hostile.to_string()]);
    assert_eq!(code, 0, "{out}");
    let dead_id = out.trim().to_owned();
    let mut daemon = conveyor();
    daemon.args(["--config", cfg, "run"]);
    let (mut daemon, logs) = spawn_logged(daemon);
    let base = web_address(&logs).await;
    wait_until("the hostile job is dead", Duration::from_secs(20), || {
        let mut c = conn.clone();
        async move { llen(&mut c, "{jobs:fail}:dead").await == 1 }
    })
    .await;

    // The page without its script (?live=0), as Chromium's --dump-dom
    // prints it: the queues, the dead job, the payload as text.
    let out = Command::new("timeout")
        .args([
            "60",
            "chromium",
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--dump-dom",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("{base}/?live=0"))
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "chromium --dump-dom failed");
    for queue in ["fail", "slow", "work"] {
        assert!(
            dom.contains(&format!("<tr id=\"queue-{queue}\">")),
            "{queue}: {dom}"
        );
    }
    assert!(dom.contains(&dead_id), "{dom}");
    assert!(
        dom.contains("&lt;/pre&gt;&lt;script&gt;window.pwned=1&lt;/script&gt;&lt;img src=x"),
        "{dom}"
    );
    assert!(
        !dom.contains("<script>window.pwned") && !dom.contains("<img src"),
        "{dom}"
    );
    for button in ["Pause", "Retry", "Purge", "Retry all", "Purge all"] {
        assert!(
            dom.contains(&format!(">{button}</button>")),
            "{button}: {dom}"
        );
    }

    // The live page in a browser that runs its script.
    let mut browser = Browser::start();
    browser.send(json!({ "go": format!("{base}/") }));
    assert_eq!(browser.eval("document.title"), "conveyor");
    assert_eq!(
        browser.eval("typeof window.pwned"),
        "undefined",
        "the payload ran as script"
    );
    assert_eq!(browser.eval("document.querySelectorAll('img').length"), 0);
    let shown = browser.eval("document.querySelector('table.dead pre').textContent");
    assert_eq!(
        serde_json::from_str::<Value>(shown.as_str().unwrap()).unwrap(),
        hostile
    );
    assert_eq!(
        browser.eval("document.querySelector('table.dead td.id').textContent"),
        dead_id.as_str()
    );

    // A job enqueued now shows in the live events and, running, in the
    // page's next refresh, where Cancel stops it.
    let (code, out) = cli(cfg, &["enqueue", "slow", "{}"]);
    assert_eq!(code, 0, "{out}");
    let slow = out.trim().to_owned();
    browser.wait(&format!(
        "[...document.querySelectorAll('#events li')].some(li => li.textContent.includes('job.started') && li.textContent.includes('{slow}'))"
    ));
    browser.wait(&format!("!!document.querySelector('table.running') && document.querySelector('table.running td.id').textContent === '{slow}'"));
    // The pool starts another worker process once one is killed.
    let before = sleepers(33);
    assert!(!before.is_empty());
    browser.send(json!({ "click": "table.running form[action*='/cancel'] button" }));
    browser.wait(&format!(
        "document.querySelector('.done')?.textContent === '{slow}: cancelled (it was running)'"
    ));
    wait_until(
        "the job's process is killed",
        Duration::from_secs(5),
        || async { sleepers(33).iter().all(|p| !before.contains(p)) },
    )
    .await;
    let dead_slow = dead(&mut conn, "jobs:slow").await;
    assert_eq!(dead_slow[0]["last_error"], "cancelled");

    // Pause and resume with the buttons.
    browser.send(json!({ "click": "#queue-work form[action$='/pause'] button" }));
    browser.wait("document.querySelector('#queue-work td:nth-child(2)')?.textContent === 'paused'");
    let paused: u8 = redis::cmd("EXISTS")
        .arg("{jobs:work}:paused")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(paused, 1);
    browser.send(json!({ "click": "#queue-work form[action$='/resume'] button" }));
    browser
        .wait("document.querySelector('#queue-work td:nth-child(2)')?.textContent === 'running'");
    let paused: u8 = redis::cmd("EXISTS")
        .arg("{jobs:work}:paused")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(paused, 0);

    // Retry the dead job from its row: it runs (and dies) again.
    browser.send(json!({ "click": "table.dead form[action*='/dead/retry?id='] button" }));
    browser.wait(&format!(
        "document.querySelector('.done')?.textContent === '{dead_id}: back in the queue'"
    ));
    wait_until("the retried job ran", Duration::from_secs(20), || {
        let mut c = conn.clone();
        async move { stat(&mut c, "jobs:fail", "processed").await == 2 }
    })
    .await;

    // Purge all asks first, saying how many; Cancel leaves them be.
    let purge_all = "form[action='/confirm/purge/fail'] button";
    browser.send(json!({ "go": format!("{base}/?live=0") }));
    browser.wait(&format!("!!document.querySelector(\"{purge_all}\")"));
    browser.send(json!({ "click": purge_all }));
    browser.wait("document.querySelector('#question')?.textContent.startsWith('Purge all 1 dead job of fail?')");
    browser.send(json!({ "click": "#cancel" }));
    browser.wait(&format!("!!document.querySelector(\"{purge_all}\")"));
    assert_eq!(
        dead(&mut conn, "jobs:fail").await.len(),
        1,
        "cancel purged nothing"
    );
    browser.send(json!({ "click": purge_all }));
    browser.wait("!!document.querySelector('#purge')");
    browser.send(json!({ "click": "#purge" }));
    browser.wait("document.querySelector('.done')?.textContent === 'fail: 1 dead job purged'");
    assert_eq!(dead(&mut conn, "jobs:fail").await.len(), 0);

    // A phone's width: the page is still one column of text.
    let shot = dir.path().join("phone.png");
    browser.send(json!({ "screenshot": shot, "width": 390, "height": 844 }));
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a picture of the page"
    );
    let overflow =
        browser.eval("document.querySelector('header').scrollWidth <= window.innerWidth");
    assert_eq!(overflow, true, "the header fits a phone's width");
    drop(browser);

    signal(&daemon, 15);
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_to_the_dashboard_in_a_browser() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), &redis, &queues(34));
    let cfg = cfg.to_str().unwrap();
    let mut conn = redis.conn().await;
    let (mut daemon, logs, base) = daemon_with_token(cfg).await;

    let mut browser = Browser::start();
    browser.send(json!({ "go": format!("{base}/") }));
    assert_eq!(
        browser.eval("!!document.querySelector('input[type=password]')"),
        true
    );
    browser.eval("document.querySelector('#token').value = 'not the token'");
    browser.send(json!({ "click": "form[action='/login'] button" }));
    browser.wait("document.querySelector('.error')?.textContent === 'That is not the token.'");
    browser.eval(&format!(
        "document.querySelector('#token').value = {}",
        json!(TOKEN)
    ));
    browser.send(json!({ "click": "form[action='/login'] button" }));
    browser.wait("!!document.querySelector('#queues')");
    assert_eq!(
        browser.eval("document.cookie"),
        "",
        "the session cookie is HttpOnly"
    );

    // The browser's own requests carry the session: a form's POST (with the
    // page's origin), the refresh and the event stream.
    browser.send(json!({ "click": "#queue-work form[action$='/pause'] button" }));
    browser.wait("document.querySelector('#queue-work td:nth-child(2)')?.textContent === 'paused'");
    let paused: u8 = redis::cmd("EXISTS")
        .arg("{jobs:work}:paused")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(paused, 1);
    let (code, out) = cli(cfg, &["enqueue", "fail", "{\"fail\":\"permanent\"}"]);
    assert_eq!(code, 0, "{out}");
    let id = out.trim().to_owned();
    browser.wait(&format!(
        "[...document.querySelectorAll('#events li')].some(li => li.textContent.includes('job.dead') && li.textContent.includes('{id}'))"
    ));
    browser.wait(&format!(
        "!!document.querySelector('table.dead') && document.querySelector('table.dead td.id').textContent === '{id}'"
    ));

    // Signing out ends it: the page asks for the token again.
    browser.send(json!({ "click": "form[action='/logout'] button" }));
    browser.wait("!!document.querySelector('input[type=password]')");
    drop(browser);
    signal(&daemon, 15);
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)), Some(0));
    assert!(!logs.contains(TOKEN), "{:?}", logs.lines());
}
