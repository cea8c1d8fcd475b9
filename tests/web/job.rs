//! A job's own page, `/jobs/<id>`, and `GET /api/jobs/<id>`, against a
//! real daemon: a waiting, a running, a retried, a dead and a succeeded job
//! each shown where it is, with its events; a hostile payload shown as
//! text; the dashboard's search box leads there; an unknown id is a 404
//! that does not echo it.

use std::time::Duration;

use serde_json::{Value, json};

use super::{Browser, cli, http};
use crate::common::*;

const HOSTILE: &str = "</pre><script>window.pwned=1</script><img src=x onerror=\"window.pwned=2\">";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_page_and_json_wherever_the_job_is() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let queues = "[web]\nlisten = \"127.0.0.1:0\"\n\
         [queues.work]\nhandler = \"fault\"\nconcurrency = 1\n\
         [queues.kept]\nhandler = \"fault\"\ntrack = true\nmax_attempts = 3\n\
         backoff = { base = \"10ms\", max = \"10ms\" }\n";
    let cfg = config_file(dir.path(), &redis, queues);
    let cfg = cfg.to_str().unwrap();
    let mut daemon = conveyor();
    daemon.args(["--config", cfg, "run"]);
    let (_daemon, logs) = spawn_logged(daemon);
    let base = web_address(&logs).await;
    let conn = redis.conn().await;
    let enqueue = |queue: &str, payload: Value| {
        let (code, out) = cli(cfg, &["enqueue", queue, &payload.to_string()]);
        assert_eq!(code, 0, "{out}");
        out.trim().to_owned()
    };
    let running = enqueue("work", json!({ "sleep_ms": 60000 }));
    wait_until("the first job runs", Duration::from_secs(20), || {
        let mut c = conn.clone();
        async move { in_flight(&mut c, "jobs:work").await == 1 }
    })
    .await;
    let waiting = enqueue("work", json!({ "note": HOSTILE }));
    let succeeded = enqueue("kept", json!({}));
    let retried = enqueue("kept", json!({ "fail": "transient", "until_attempt": 2 }));
    let dead = enqueue("kept", json!({ "fail": "permanent", "note": HOSTILE }));
    wait_until("the kept jobs ended", Duration::from_secs(20), || {
        let mut c = conn.clone();
        async move { stat(&mut c, "jobs:kept", "processed").await == 4 }
    })
    .await;

    // The JSON.
    let job = |id: &str| {
        let url = format!("{base}/api/jobs/{id}");
        async move {
            let response = http().get(url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            serde_json::from_str::<Value>(&response.text().await.unwrap()).unwrap()
        }
    };
    let j = job(&running).await;
    assert_eq!(
        (j["state"].as_str(), j["queue"].as_str()),
        (Some("running"), Some("work"))
    );
    assert!(j["node"].is_string(), "{j}");
    let j = job(&waiting).await;
    assert_eq!(j["state"], "waiting", "{j}");
    assert_eq!(j["envelope"]["payload"]["note"], HOSTILE);
    assert_eq!(job(&succeeded).await["state"], "succeeded");
    let j = job(&retried).await;
    assert_eq!(
        (j["state"].as_str(), j["record"]["attempt"].as_str()),
        (Some("succeeded"), Some("2"))
    );
    let types: Vec<&str> = j["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(
        types.contains(&"job.failed") && types.last() == Some(&"job.succeeded"),
        "{types:?}"
    );
    let j = job(&dead).await;
    assert_eq!(j["state"], "dead", "{j}");
    assert_eq!(j["envelope"]["last_error"], "fault: permanent failure");
    let unknown = http()
        .get(format!("{base}/api/jobs/%3Cscript%3Enot-an-id"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert!(
        !unknown.text().await.unwrap().contains("script"),
        "the id is not echoed"
    );

    // The pages, in a browser: each says where its job is.
    let mut browser = Browser::start();
    for (id, said) in [
        (&running, "running on "),
        (&waiting, "waiting"),
        (&retried, "succeeded"),
        (&dead, "dead"),
        (&succeeded, "succeeded"),
    ] {
        browser.send(json!({ "go": format!("{base}/jobs/{id}") }));
        let shown = browser.eval("document.querySelector('#state').textContent");
        assert!(shown.as_str().unwrap().starts_with(said), "{id}: {shown}");
    }
    // The retried one lists its failed attempt among its events.
    browser.send(json!({ "go": format!("{base}/jobs/{retried}") }));
    assert_eq!(
        browser.eval("[...document.querySelectorAll('#events td')].some(td => td.textContent === 'job.failed')"),
        true
    );
    // The hostile payload is text on the page, and nothing ran.
    browser.send(json!({ "go": format!("{base}/jobs/{dead}") }));
    let stored = browser.eval("document.querySelector('#stored').textContent");
    assert!(
        stored
            .as_str()
            .unwrap()
            .contains("<script>window.pwned=1</script>"),
        "{stored}"
    );
    assert_eq!(browser.eval("typeof window.pwned"), "undefined");
    assert_eq!(
        browser.eval("document.querySelectorAll('img, script').length"),
        0
    );
    // The dashboard's search box leads to the page.
    browser.send(json!({ "go": format!("{base}/?live=0") }));
    browser.eval(&format!(
        "document.querySelector('#find input').value = '{waiting}'"
    ));
    browser.send(json!({ "click": "#find button" }));
    browser.wait(&format!("location.pathname === '/jobs/{waiting}'"));
    assert_eq!(
        browser.eval("document.querySelector('#state').textContent"),
        "waiting"
    );
    // An unknown id: a page that says so, without the id as markup.
    browser.send(json!({ "go": format!("{base}/jobs/%3Cb%3Enope") }));
    assert_eq!(browser.eval("!!document.querySelector('#unknown')"), true);
    assert_eq!(browser.eval("document.querySelectorAll('b').length"), 0);
}
