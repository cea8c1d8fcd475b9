//! The `email` handler delivering through a real SMTP server (aiosmtpd, see
//! `tests/smtp/`) with a real redis-server: headers, envelope and bodies,
//! STARTTLS with AUTH, implicit TLS, and no second delivery on retry. Each
//! test owns its servers.

mod common;
mod smtp;

use std::sync::Arc;

use async_trait::async_trait;
use common::*;
use conveyor::Job;
use conveyor::handlers::{Handler, HandlerError, Registry};
use mail_parser::{Address, MessageParser};
use redis::AsyncCommands as _;
use smtp::queue::*;
use smtp::{Options, SecureSmtp, Session, SmtpServer, TestCa};

fn addresses(a: Option<&Address<'_>>) -> Vec<String> {
    a.map(|a| {
        a.iter()
            .filter_map(|x| x.address())
            .map(str::to_owned)
            .collect()
    })
    .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_delivery_has_the_headers_and_the_envelope() {
    let redis = Redis::start();
    let server = SmtpServer::start(Options::default());
    let mut conn = redis.conn().await;
    push(
        &mut conn,
        serde_json::json!({
            "to": ["Alice <alice@example.com>", "bob@example.org"],
            "cc": "carol@example.com",
            "bcc": "dave@example.net",
            "reply_to": "support@example.com",
            "subject": "Welcome aboard",
            "text": "Hello Alice",
        }),
    )
    .await;
    let daemon = TestDaemon::start(
        smtp_config(&redis, &server.url("smtp", None, ""), ""),
        builtin(),
    );
    wait_accepted(&server, 1).await;
    wait_until("the job succeeded", WAIT, || {
        let mut c = conn.clone();
        async move { stat(&mut c, Q, "processed").await == 1 }
    })
    .await;

    let m = &server.accepted()[0];
    assert_eq!(m.mail_from, "noreply@example.com");
    let mut rcpt = m.rcpt_tos.clone();
    rcpt.sort();
    assert_eq!(
        rcpt,
        [
            "alice@example.com",
            "bob@example.org",
            "carol@example.com",
            "dave@example.net"
        ]
    );
    let msg = MessageParser::default()
        .parse(m.data.as_bytes())
        .expect("parses");
    assert_eq!(addresses(msg.from()), ["noreply@example.com"]);
    assert_eq!(
        msg.from().and_then(|a| a.first()).and_then(|a| a.name()),
        Some("Conveyor")
    );
    assert_eq!(
        addresses(msg.to()),
        ["alice@example.com", "bob@example.org"]
    );
    assert_eq!(addresses(msg.cc()), ["carol@example.com"]);
    assert_eq!(addresses(msg.reply_to()), ["support@example.com"]);
    assert!(msg.bcc().is_none(), "Bcc is in the envelope only");
    assert!(!m.data.contains("dave@"), "{}", m.data);
    assert_eq!(msg.subject(), Some("Welcome aboard"));
    assert_eq!(
        msg.body_text(0).as_deref().map(str::trim),
        Some("Hello Alice")
    );
    assert!(
        m.data.contains("text/plain") && !m.data.contains("text/html"),
        "{}",
        m.data
    );
    assert!(
        msg.message_id()
            .is_some_and(|id| id.ends_with(".conveyor@example.com"))
    );
    assert_eq!(stat(&mut conn, Q, "failed").await, 0);
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_alone_and_with_text_make_the_right_parts() {
    let redis = Redis::start();
    let server = SmtpServer::start(Options::default());
    let mut conn = redis.conn().await;
    let to = "alice@example.com";
    push(
        &mut conn,
        serde_json::json!({"to": to, "subject": "both", "text": "T", "html": "<b>H</b>"}),
    )
    .await;
    push(
        &mut conn,
        serde_json::json!({"to": to, "subject": "html", "html": "<i>only</i>"}),
    )
    .await;
    push(&mut conn, serde_json::json!({"to": to, "subject": "none"})).await;
    let daemon = TestDaemon::start(
        smtp_config(&redis, &server.url("smtp", None, ""), ""),
        builtin(),
    );
    wait_accepted(&server, 3).await;

    let received = server.accepted();
    let by_subject = |s: &str| {
        received
            .iter()
            .find(|m| m.data.contains(&format!("Subject: {s}")))
            .unwrap_or_else(|| panic!("no message {s:?}"))
            .data
            .clone()
    };
    let both = by_subject("both");
    let msg = MessageParser::default().parse(both.as_bytes()).unwrap();
    assert!(both.contains("multipart/alternative"), "{both}");
    assert_eq!(msg.body_text(0).as_deref().map(str::trim), Some("T"));
    assert_eq!(msg.body_html(0).as_deref().map(str::trim), Some("<b>H</b>"));
    let html = by_subject("html");
    assert!(
        html.contains("text/html") && !html.contains("multipart"),
        "{html}"
    );
    let none = by_subject("none");
    let msg = MessageParser::default().parse(none.as_bytes()).unwrap();
    assert!(none.contains("text/plain"), "{none}");
    assert_eq!(msg.body_text(0).as_deref().map(str::trim), Some(""));
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_with_auth_delivers() {
    let redis = Redis::start();
    let server = SecureSmtp::start("s3cret");
    let mut conn = redis.conn().await;
    push(
        &mut conn,
        serde_json::json!({"to": "alice@example.com", "subject": "tls"}),
    )
    .await;
    let daemon = TestDaemon::start(secure_config(&redis, &server, "s3cret"), builtin());
    wait_accepted(&server, 1).await;
    assert_eq!(server.received().len(), 1);
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_delivers() {
    let redis = Redis::start();
    let ca = TestCa::generate();
    let server = SmtpServer::start(Options {
        ca: Some(&ca),
        implicit_tls: true,
        ..Options::default()
    });
    let mut conn = redis.conn().await;
    push(
        &mut conn,
        serde_json::json!({"to": "alice@example.com", "subject": "smtps"}),
    )
    .await;
    let cfg = tls_config(&redis, &server.url("smtps", None, ""), &ca);
    let daemon = TestDaemon::start(cfg, builtin());
    wait_accepted(&server, 1).await;
    assert!(server.accepted()[0].data.contains("Subject: smtps"));
    daemon.stop().await.unwrap();
    wait_until("the session ends", WAIT, || async {
        !server.sessions().is_empty()
    })
    .await;
    assert_eq!(
        server.sessions(),
        [Session {
            messages: 1,
            quit: true
        }]
    );
}

/// Connections are kept and reused, never more than the queue's
/// concurrency, and the shutdown ends each with QUIT (a server otherwise
/// logs a lost connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_connections_are_reused_and_end_with_quit() {
    let redis = Redis::start();
    let server = SmtpServer::start(Options::default());
    let mut conn = redis.conn().await;
    for i in 0..30 {
        push(
            &mut conn,
            serde_json::json!({"to": "alice@example.com", "subject": format!("n{i}")}),
        )
        .await;
    }
    let daemon = TestDaemon::start(
        smtp_config(&redis, &server.url("smtp", None, ""), ""),
        builtin(),
    );
    wait_accepted(&server, 30).await;
    assert!(
        server.sessions().is_empty(),
        "no session ended while in use"
    );
    daemon.stop().await.unwrap();
    wait_until("the sessions end", WAIT, || async {
        server.sessions().iter().map(|s| s.messages).sum::<u32>() == 30
    })
    .await;
    let sessions = server.sessions();
    assert!(sessions.len() <= 2, "concurrency 2: {sessions:?}");
    assert!(sessions.iter().all(|s| s.quit), "{sessions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opportunistic_tls_upgrades_when_the_server_offers_it() {
    let redis = Redis::start();
    let ca = TestCa::generate();
    // This server refuses MAIL before STARTTLS: delivery proves the upgrade.
    let server = SmtpServer::start(Options {
        ca: Some(&ca),
        starttls: true,
        ..Options::default()
    });
    let mut conn = redis.conn().await;
    push(
        &mut conn,
        serde_json::json!({"to": "alice@example.com", "subject": "opp"}),
    )
    .await;
    let url = server.url("smtp", None, "?tls=opportunistic");
    let cfg = tls_config(&redis, &url, &ca);
    let daemon = TestDaemon::start(cfg, builtin());
    wait_accepted(&server, 1).await;
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opportunistic_tls_sends_in_clear_when_the_server_cannot() {
    let redis = Redis::start();
    let server = SmtpServer::start(Options::default());
    let mut conn = redis.conn().await;
    push(
        &mut conn,
        serde_json::json!({"to": "alice@example.com", "subject": "opp"}),
    )
    .await;
    let url = server.url("smtp", None, "?tls=opportunistic");
    let daemon = TestDaemon::start(smtp_config(&redis, &url, ""), builtin());
    wait_accepted(&server, 1).await;
    daemon.stop().await.unwrap();
}

/// The real email handler, then a failure on the first attempt: a run whose
/// mail went out but whose job did not finish (a timeout, a crash, a lost ack).
struct FailAfterSending(Arc<dyn Handler>);

#[async_trait]
impl Handler for FailAfterSending {
    async fn handle(&self, job: &Job) -> Result<(), HandlerError> {
        self.0.handle(job).await?;
        match job.attempt() {
            1 => Err(HandlerError::transient("lost after sending")),
            _ => Ok(()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sent_marker_prevents_a_second_delivery() {
    let redis = Redis::start();
    let server = SmtpServer::start(Options::default());
    let mut conn = redis.conn().await;
    let job = serde_json::json!({"id": "job-1", "attempt": 0,
        "payload": {"to": "alice@example.com", "subject": "once"}});
    let _: () = conn.rpush(Q, job.to_string()).await.unwrap();
    let mut registry = Registry::builtin();
    let email = registry.factory("email").expect("email is built in");
    registry.register("flaky_email", move |ctx| {
        Ok(Arc::new(FailAfterSending(email(ctx)?)))
    });
    let mut cfg = smtp_config(&redis, &server.url("smtp", None, ""), "");
    cfg.queues.get_mut("mail").unwrap().handler = "flaky_email".into();
    let daemon = TestDaemon::start(cfg, registry);
    wait_until("the retry succeeds", WAIT, || {
        let mut c = conn.clone();
        async move { stat(&mut c, Q, "processed").await == 2 }
    })
    .await;
    assert_eq!(stat(&mut conn, Q, "failed").await, 1);
    assert_eq!(server.received().len(), 1, "the retry did not send again");
    let ttl: i64 = conn.pttl("{jobs:mail}:sent:job-1").await.unwrap();
    assert!(ttl > 0, "the marker has a TTL: {ttl}");
    daemon.stop().await.unwrap();
}
