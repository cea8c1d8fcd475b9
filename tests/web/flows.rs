//! Flows on the dashboard, against a real daemon on a real Redis: the
//! Flows section lists the recent flows, failed ones first, with their
//! progress; a flow's page draws its graph with each node in its state;
//! the JSON of `/api/flows`; a hostile id in the URL is not echoed. Looked
//! at in Chromium, on a desktop's width and a phone's.

use std::time::Duration;

use serde_json::{Value, json};

use super::{Browser, cli, http};
use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_on_the_dashboard_and_their_pages() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(
        dir.path(),
        &redis,
        "[web]\nlisten = \"127.0.0.1:0\"\n[queues.work]\nhandler = \"fault\"\nconcurrency = 4\n",
    );
    let cfg = cfg.to_str().unwrap();
    let mut daemon = conveyor();
    daemon.args(["--config", cfg, "run"]);
    let (_daemon, logs) = spawn_logged(daemon);
    let base = web_address(&logs).await;
    let submit = |doc: Value| {
        let path = dir.path().join("doc.json");
        std::fs::write(&path, doc.to_string()).unwrap();
        let (code, out) = cli(cfg, &["flow", "submit", path.to_str().unwrap()]);
        assert_eq!(code, 0, "{out}");
    };
    submit(json!({"flow": "ok-flow", "jobs": {
        "a": {"queue": "work", "payload": {}},
        "b": {"queue": "work", "payload": {}, "after": ["a"]},
        "c": {"queue": "work", "payload": {}, "after": ["a"]},
        "d": {"queue": "work", "payload": {}, "after": ["b", "c"]}}}));
    submit(json!({"flow": "bad-flow", "jobs": {
        "charge": {"queue": "work", "payload": {"fail": "permanent"}},
        "pdf": {"queue": "work", "payload": {}, "after": ["charge"]},
        "audit": {"queue": "work", "payload": {}, "after": ["pdf"], "when": "finished"}}}));
    submit(json!({"flow": "slow-flow", "jobs": {
        "long": {"queue": "work", "payload": {"sleep_ms": 60000}},
        "next": {"queue": "work", "payload": {}, "after": ["long"]}}}));
    let api = |path: &str| {
        let url = format!("{base}{path}");
        async move { http().get(url).send().await.unwrap() }
    };
    wait_until("two flows end", Duration::from_secs(30), || async {
        let list: Value = super::json(api("/api/flows").await).await;
        list.as_array()
            .unwrap()
            .iter()
            .filter(|f| f["status"] != "running")
            .count()
            == 2
    })
    .await;
    let one: Value = super::json(api("/api/flows/bad-flow").await).await;
    assert_eq!(one["status"], "failed");
    assert_eq!(one["nodes"].as_array().unwrap().len(), 3);
    let missing = api("/api/flows/%3Cscript%3E").await;
    assert_eq!(missing.status(), 404);
    assert!(!missing.text().await.unwrap().contains("script"));

    let mut browser = Browser::start();
    browser.send(json!({ "go": format!("{base}/?live=0") }));
    let order = browser.eval(
        "[...document.querySelectorAll('#flow-list tbody tr td.id')].map(td => td.textContent).join(' ')",
    );
    assert_eq!(
        order, "bad-flow slow-flow ok-flow",
        "failed first, then running"
    );
    let progress = browser.eval(
        "document.querySelector('#flow-list tbody tr:nth-child(3) svg.progress rect.bar').getAttribute('width')",
    );
    assert_eq!(progress, "100");
    // The failed one's page: its graph, each node in its state.
    browser.send(json!({ "click": "#flow-list a[href='/flows/bad-flow']" }));
    browser.wait("location.pathname === '/flows/bad-flow' && !!document.querySelector('#graph')");
    let states = browser.eval(
        "[...document.querySelectorAll('#graph g.node')].map(g => g.dataset.node + '=' + g.classList[1]).sort().join(' ')",
    );
    assert_eq!(states, "audit=succeeded charge=dead pdf=skipped");
    assert_eq!(
        browser.eval("document.querySelectorAll('#graph line.edge').length"),
        2
    );
    assert_eq!(
        browser.eval("document.querySelector('#status').textContent"),
        "failed"
    );
    // Laid out by depth: each node right of what it waits for.
    let left_to_right = browser.eval(
        "(() => { const x = n => document.querySelector(`#graph g[data-node='${n}'] rect`).getBBox().x; \
         return x('charge') < x('pdf') && x('pdf') < x('audit'); })()",
    );
    assert_eq!(left_to_right, true);
    // The running one: a node waiting or running, one pending.
    browser.send(json!({ "go": format!("{base}/flows/slow-flow") }));
    let states = browser.eval(
        "[...document.querySelectorAll('#graph g.node')].map(g => g.dataset.node + '=' + g.classList[1]).sort().join(' ')",
    );
    assert_eq!(states, "long=waiting next=pending");
    // On a phone's width the page fits, its graph scrolling in its box.
    browser.send(json!({ "go": format!("{base}/flows/ok-flow") }));
    let shot = dir.path().join("flow.png");
    browser.send(json!({ "screenshot": shot, "width": 390, "height": 844 }));
    assert!(std::fs::metadata(&shot).unwrap().len() > 1000);
    let fits = browser.eval(
        "document.querySelector('.graph').getBoundingClientRect().right <= window.innerWidth",
    );
    assert_eq!(fits, true);
    // An unknown flow: a page that says so, the id not run as markup.
    browser.send(json!({ "go": format!("{base}/flows/%3Cb%3Enope") }));
    assert_eq!(browser.eval("!!document.querySelector('#unknown')"), true);
    assert_eq!(browser.eval("document.querySelectorAll('b').length"), 0);
    if let Ok(to) = std::env::var("CONVEYOR_SCREENSHOTS") {
        browser.send(json!({ "go": format!("{base}/flows/bad-flow") }));
        let path = std::path::Path::new(&to).join("flow.png");
        browser.send(json!({ "screenshot": path, "width": 1000, "height": 420 }));
    }
}
