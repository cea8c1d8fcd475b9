//! A tracked queue's recent results, from a real daemon running a real
//! exec worker: `conveyor results` (table and `--json`), `GET /api/results`
//! and the dashboard's page `/results/<q>` in Chromium, with results and
//! errors that hold HTML shown as text.

use std::time::Duration;

use serde_json::{Value, json};

use super::{Browser, cli, http};
use crate::common::*;

/// Replies `fail` with the payload's `fail` as the error, else `ok` with
/// its `result`.
const WORKER: &str = r#"
import json, sys
for line in sys.stdin:
    req = json.loads(line)
    p = req["payload"]
    if "fail" in p:
        out = {"id": req["id"], "status": "fail", "error": p["fail"]}
    else:
        out = {"id": req["id"], "status": "ok", "result": p["result"]}
    print(json.dumps(out), flush=True)
"#;

const HOSTILE: &str = "</pre><script>window.pwned=1</script><img src=x onerror=\"window.pwned=2\">";

/// Job `i`'s payload: every third fails, the rest return a result.
fn payload(i: usize) -> Value {
    match i % 3 {
        0 => json!({ "fail": format!("bad {i} {HOSTILE}, and more said after it") }),
        _ => json!({ "result": { "n": i, "html": HOSTILE } }),
    }
}

/// `conveyor results` of `cfg` as JSON.
fn listed(cfg: &str, args: &[&str]) -> Value {
    let all = [&["--config", cfg, "results"][..], args, &["--json"]].concat();
    let (code, out, err) = run_cli(&all);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn ids_of(results: &Value) -> Vec<String> {
    results["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracked_queues_recent_results_in_the_cli_the_api_and_a_browser() {
    const JOBS: usize = 30;
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let worker = dir.path().join("worker.py");
    std::fs::write(&worker, WORKER).unwrap();
    // One worker: the jobs end in the order they were pushed.
    let queues = format!(
        "[web]\nlisten = \"127.0.0.1:0\"\n\
         [queues.work]\nhandler = \"exec\"\nconcurrency = 1\ntrack = true\n\
         [queues.work.exec]\ncommand = [\"python3\", \"{}\"]\n\
         [queues.plain]\nhandler = \"noop\"\n",
        worker.display()
    );
    let cfg = config_file(dir.path(), &redis, &queues);
    let cfg = cfg.to_str().unwrap();
    let mut daemon = conveyor();
    daemon.args(["--config", cfg, "run"]);
    let (mut daemon, logs) = spawn_logged(daemon);
    let base = web_address(&logs).await;
    let mut conn = redis.conn().await;
    let processed = |n: u64| {
        let conn = conn.clone();
        wait_until("the jobs ended", Duration::from_secs(60), move || {
            let mut c = conn.clone();
            async move { stat(&mut c, "jobs:work", "processed").await == n }
        })
    };
    // A first job, so that the daemon's first flush (which loads its
    // script) is behind it: from then on, with one worker, the jobs end in
    // the order they were pushed.
    let (code, out) = cli(cfg, &["enqueue", "work", r#"{"result":"first"}"#]);
    assert_eq!(code, 0, "{out}");
    processed(1).await;
    let jobs = dir.path().join("jobs.ndjson");
    let lines: Vec<String> = (0..JOBS).map(|i| payload(i).to_string()).collect();
    std::fs::write(&jobs, lines.join("\n") + "\n").unwrap();
    let file = jobs.to_str().unwrap();
    let (code, out, err) = run_cli(&["--config", cfg, "enqueue", "work", "--file", file]);
    assert_eq!(code, 0, "{err}");
    let ids: Vec<String> = out.lines().map(str::to_owned).collect();
    assert_eq!(ids.len(), JOBS, "{out}");
    processed(JOBS as u64 + 1).await;

    // Every job, newest first (as they ended), each with its result or
    // error whole; 20 by default.
    let all = listed(cfg, &["work", "--limit", "30"]);
    assert_eq!(all["tracked"], true);
    assert_eq!(all["expired"], 0);
    let newest = ids_of(&all);
    let reversed: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(newest, reversed, "newest first");
    let index = |id: &str| ids.iter().position(|i| i == id).unwrap();
    let jobs = all["jobs"].as_array().unwrap();
    for job in jobs {
        assert!(job["finished_at"].is_string(), "{job}");
    }
    for job in jobs {
        let i = index(job["id"].as_str().unwrap());
        assert_eq!(job["attempt"], 1, "{job}");
        match i % 3 {
            0 => {
                assert_eq!(job["state"], "dead", "{job}");
                assert_eq!(job["last_error"], payload(i)["fail"]);
                assert_eq!(job["result"], Value::Null);
            }
            _ => {
                assert_eq!(job["state"], "succeeded", "{job}");
                assert_eq!(job["result"], payload(i)["result"], "the result as JSON");
                assert_eq!(job["last_error"], Value::Null);
            }
        }
    }
    assert_eq!(ids_of(&listed(cfg, &["work"])), newest[..20]);
    let failed = listed(cfg, &["work", "--failed", "--limit", "1000"]);
    let dead: Vec<String> = newest
        .iter()
        .filter(|id| index(id) % 3 == 0)
        .cloned()
        .collect();
    assert_eq!(dead.len(), JOBS / 3);
    assert_eq!(ids_of(&failed), dead);
    assert_eq!(
        ids_of(&listed(cfg, &["work", "--failed", "--limit", "2"])),
        dead[..2]
    );

    // The table: one line a job, its text cut, nothing raw.
    let (code, table) = cli(cfg, &["results", "work", "--limit", "3"]);
    assert_eq!(code, 0, "{table}");
    let rows: Vec<&str> = table.lines().collect();
    assert!(rows[0].starts_with("finished_at"), "{table}");
    assert_eq!(rows.len(), 4, "{table}");
    for (row, id) in rows[1..].iter().zip(&newest) {
        assert!(row.contains(id.as_str()), "{table}");
        let text = row.split("  ").last().unwrap();
        assert!(text.chars().count() <= 80, "cut to 80 characters: {row}");
        let i = index(id);
        match i % 3 {
            0 => {
                assert!(row.contains("dead  "), "{row}");
                assert!(row.contains(&format!("bad {i} </pre>")), "{row}");
                assert!(row.ends_with('…'), "a long error is cut: {row}");
            }
            _ => {
                assert!(row.contains("succeeded  "), "{row}");
                assert!(row.contains(r#"{"html":"</pre><script>"#), "{row}");
            }
        }
    }

    // Wrong asks: an unknown queue, a limit over the list's cap; an
    // untracked queue says why it lists nothing and what to do.
    let (code, out) = cli(cfg, &["results", "nope"]);
    assert_eq!(code, 64, "{out}");
    assert!(
        out.contains("no queue \"nope\" in the configuration"),
        "{out}"
    );
    let (code, out) = cli(cfg, &["results", "work", "--limit", "1001"]);
    assert_eq!(code, 64, "{out}");
    let (code, out) = cli(cfg, &["results", "plain"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("does not set track = true") && out.contains("add track = true"),
        "{out}"
    );
    assert_eq!(listed(cfg, &["plain"])["tracked"], false);

    // The web API answers the same.
    let api = |query: &str| {
        let url = format!("{base}/api/results?{query}");
        async move { http().get(url).send().await.unwrap() }
    };
    let answer = api("queue=work&limit=30").await;
    assert_eq!(answer.status(), 200);
    assert_eq!(super::json(answer).await, all);
    let answer = api("queue=work&failed=1&limit=1000").await;
    assert_eq!(super::json(answer).await, failed);
    assert_eq!(api("queue=nope").await.status(), 404);
    assert_eq!(api("").await.status(), 400);

    // A record that expired is skipped, and counted.
    let _: () = redis::cmd("DEL")
        .arg(format!("conveyor:job:{}", newest[0]))
        .query_async(&mut conn)
        .await
        .unwrap();
    let after = listed(cfg, &["work", "--limit", "29"]);
    assert_eq!(after["expired"], 1);
    assert_eq!(ids_of(&after), newest[1..]);

    // The dashboard links each queue to its results page, which shows the
    // results and errors as text.
    let mut browser = Browser::start();
    browser.send(json!({ "go": format!("{base}/?live=0") }));
    browser.wait("!!document.querySelector('#queue-work a.results')");
    browser.send(json!({ "click": "#queue-work a.results" }));
    browser.wait("document.querySelector('#queue')?.textContent === 'work'");
    assert_eq!(
        browser.eval("document.querySelectorAll('#results tbody tr').length"),
        JOBS,
        "29 jobs and the first"
    );
    assert_eq!(
        browser.eval("document.querySelector('#expired').textContent.startsWith('1 more')"),
        true
    );
    assert_eq!(
        browser.eval("document.querySelector('#results tbody td.id').textContent"),
        newest[1].as_str()
    );
    let shown = browser.eval("document.querySelector('#results tbody pre').textContent");
    let shown = shown.as_str().unwrap();
    match jobs[1]["last_error"].as_str() {
        Some(error) => assert_eq!(shown, error),
        None => assert_eq!(
            serde_json::from_str::<Value>(shown).unwrap(),
            jobs[1]["result"]
        ),
    }
    browser.send(json!({ "click": "#failed" }));
    browser.wait("location.search === '?failed=1'");
    let dead_shown: Vec<&String> = dead.iter().filter(|id| **id != newest[0]).collect();
    assert_eq!(
        browser.eval("document.querySelectorAll('#results tbody tr').length"),
        dead_shown.len()
    );
    assert_eq!(
        browser.eval("document.querySelector('#results tbody td.reason pre').textContent"),
        payload(index(dead_shown[0]))["fail"]
    );
    assert_eq!(
        browser.eval("typeof window.pwned"),
        "undefined",
        "a result or error ran as script"
    );
    assert_eq!(
        browser.eval("document.querySelectorAll('img, script').length"),
        0
    );
    // An untracked queue's page says what to do; an unknown one is not
    // echoed.
    browser.send(json!({ "go": format!("{base}/results/plain") }));
    browser.wait("!!document.querySelector('#untracked')");
    drop(browser);
    let answer = http()
        .get(format!("{base}/results/%3Cb%3Enope"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 404);
    assert!(!answer.text().await.unwrap().contains("nope"));

    signal(&daemon, 15);
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)), Some(0));
}
