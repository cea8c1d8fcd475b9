//! The `email` handler's file transport (the default) and its templates,
//! against a real redis-server: `.eml` files that parse, bodies rendered
//! from templates, and template mistakes dead-lettered with a reason.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use conveyor::config::Config;
use mail_parser::{Address, MessageParser};
use redis::AsyncCommands as _;

const Q: &str = "jobs:mail";
const DEAD: &str = "{jobs:mail}:dead";
const WAIT: Duration = Duration::from_secs(20);

/// A daemon config writing queue `mail` into `outbox`, with `templates`.
fn file_config(redis: &Redis, outbox: &Path, templates: &Path) -> Config {
    config(
        redis,
        &format!(
            "[email]\ndir = \"{}\"\ntemplates = \"{}\"\nfrom = \"Conveyor <noreply@example.com>\"\n\
             [queues.mail]\nhandler = \"email\"\nbackoff = {{ base = \"50ms\", max = \"100ms\" }}\n",
            outbox.display(),
            templates.display()
        ),
    )
}

fn eml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "eml"));
    files.sort();
    files
}

fn addresses(a: Option<&Address<'_>>) -> Vec<String> {
    a.map(|a| {
        a.iter()
            .filter_map(|x| x.address())
            .map(str::to_owned)
            .collect()
    })
    .unwrap_or_default()
}

async fn wait_processed(conn: &redis::aio::MultiplexedConnection, n: u64) {
    wait_until(&format!("{n} job(s) processed"), WAIT, || {
        let mut c = conn.clone();
        async move { stat(&mut c, Q, "processed").await == n }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_transport_writes_parseable_eml_files() {
    let redis = Redis::start();
    let tmp = tempfile::tempdir().unwrap();
    let outbox = tmp.path().join("outbox/not/yet/there");
    let mut conn = redis.conn().await;
    let job = serde_json::json!({"id": "eml-1", "attempt": 0, "payload": {
        "to": "alice@example.com", "cc": ["carol@example.com"], "bcc": "dave@example.net",
        "reply_to": "help@example.com", "subject": "Your order", "text": "Thanks!"}});
    let raw = serde_json::json!({"to": "bob@example.org", "subject": "Welcome"});
    let _: () = conn
        .rpush(Q, &[job.to_string(), raw.to_string()])
        .await
        .unwrap();
    let daemon = TestDaemon::start(file_config(&redis, &outbox, tmp.path()), builtin());
    wait_processed(&conn, 2).await;

    let files = eml_files(&outbox);
    assert_eq!(files.len(), 2, "{files:?}");
    let all: Vec<PathBuf> = std::fs::read_dir(&outbox)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(all.len(), 2, "no temporary files are left behind: {all:?}");
    let named = outbox.join("eml-1.eml");
    let bytes = std::fs::read(&named).expect("the file is named after the job id");
    let msg = MessageParser::default().parse(&bytes).expect("parses");
    assert_eq!(addresses(msg.from()), ["noreply@example.com"]);
    assert_eq!(addresses(msg.to()), ["alice@example.com"]);
    assert_eq!(addresses(msg.cc()), ["carol@example.com"]);
    assert_eq!(
        addresses(msg.bcc()),
        ["dave@example.net"],
        "the file keeps Bcc"
    );
    assert_eq!(addresses(msg.reply_to()), ["help@example.com"]);
    assert_eq!(msg.subject(), Some("Your order"));
    assert_eq!(msg.body_text(0).as_deref().map(str::trim), Some("Thanks!"));
    assert!(msg.date().is_some());
    assert_eq!(msg.message_id(), Some("eml-1.conveyor@example.com"));

    let other = files.iter().find(|p| **p != named).unwrap();
    let bytes = std::fs::read(other).unwrap();
    let msg = MessageParser::default().parse(&bytes).expect("parses");
    assert_eq!(addresses(msg.to()), ["bob@example.org"]);
    assert_eq!(msg.subject(), Some("Welcome"));
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_render_with_vars() {
    let redis = Redis::start();
    let tmp = tempfile::tempdir().unwrap();
    let templates = tmp.path().join("templates");
    std::fs::create_dir_all(templates.join("orders")).unwrap();
    std::fs::write(
        templates.join("orders/shipped.txt"),
        "Hello {{ name }},\n{% for i in items %}- {{ i }}\n{% endfor %}",
    )
    .unwrap();
    std::fs::write(
        templates.join("orders/shipped.html"),
        "<p>Hello {{ name }}</p>",
    )
    .unwrap();
    let outbox = tmp.path().join("outbox");
    let mut conn = redis.conn().await;
    let job = serde_json::json!({"id": "t-1", "attempt": 0, "payload": {
        "to": "alice@example.com", "subject": "Shipped", "template": "orders/shipped",
        "vars": {"name": "Ann & <Bo>", "items": ["tea", "cups"]}}});
    let _: () = conn.rpush(Q, job.to_string()).await.unwrap();
    let daemon = TestDaemon::start(file_config(&redis, &outbox, &templates), builtin());
    wait_processed(&conn, 1).await;

    let bytes = std::fs::read(outbox.join("t-1.eml")).unwrap();
    let msg = MessageParser::default().parse(&bytes).expect("parses");
    let text = msg.body_text(0).unwrap().replace("\r\n", "\n");
    assert_eq!(text.trim(), "Hello Ann & <Bo>,\n- tea\n- cups");
    let html = msg.body_html(0).unwrap();
    assert_eq!(
        html.trim(),
        "<p>Hello Ann &amp; &lt;Bo&gt;</p>",
        "HTML is escaped"
    );
    assert_eq!(llen(&mut conn, DEAD).await, 0);
    daemon.stop().await.unwrap();
}

/// Runs one job against templates made of `files`; returns its dead entry's
/// attempt and reason.
async fn dead_reason(payload: serde_json::Value, files: &[(&str, &str)]) -> (u64, String) {
    let redis = Redis::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    for (name, text) in files {
        std::fs::write(tmp.path().join(name), text).expect("write template");
    }
    let mut conn = redis.conn().await;
    let _: () = conn.rpush(Q, payload.to_string()).await.expect("RPUSH");
    let daemon = TestDaemon::start(
        file_config(&redis, &tmp.path().join("outbox"), tmp.path()),
        builtin(),
    );
    wait_until("the job is dead", WAIT, || {
        let mut c = conn.clone();
        async move { llen(&mut c, DEAD).await == 1 }
    })
    .await;
    let entry = dead(&mut conn, Q).await.remove(0);
    daemon.stop().await.expect("daemon stops cleanly");
    assert!(
        eml_files(&tmp.path().join("outbox")).is_empty(),
        "nothing was written"
    );
    (
        entry["attempt"].as_u64().expect("attempt"),
        entry["last_error"].as_str().expect("last_error").to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_template_is_dead_with_a_reason() {
    let payload = serde_json::json!({"to": "a@example.com", "subject": "s", "template": "welcome"});
    let (attempt, error) = dead_reason(payload, &[("other.txt", "hi")]).await;
    assert_eq!(attempt, 1, "not retried");
    assert!(error.contains("template \"welcome\" not found"), "{error}");
    assert!(error.contains("welcome.txt nor welcome.html"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_variable_is_dead_with_a_reason() {
    let payload = serde_json::json!({"to": "a@example.com", "subject": "s",
        "template": "welcome", "vars": {"nme": "typo"}});
    let (attempt, error) = dead_reason(payload, &[("welcome.txt", "Dear {{ name }},")]).await;
    assert_eq!(attempt, 1, "not retried");
    assert!(
        error.contains("welcome.txt") && error.contains("undefined"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_field_is_dead_instead_of_an_empty_mail() {
    let payload = serde_json::json!({"to": "a@example.com", "subject": "s", "txt": "typo"});
    let (attempt, error) = dead_reason(payload, &[]).await;
    assert_eq!(attempt, 1, "not retried");
    assert!(error.contains("unknown field \"txt\""), "{error}");
}
