//! Hostile input: a corpus of bad list items pushed at a daemon with an
//! `email` queue (file transport) and a `noop` queue. Every item must end
//! in the dead letter list with a reason, or succeed; the daemon must not
//! panic or stall: it runs a sentinel job on each queue afterwards.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use redis::AsyncCommands as _;
use serde_json::{Value, json};

use conveyor::envelope::parse_item;

use crate::common::{Redis, in_flight, llen, stat, wait_until, zcard};
use crate::harness::*;

const WAIT: Duration = Duration::from_secs(120);
const MAIL: &str = "jobs:mail";
const MISC: &str = "jobs:misc";
const MIB: usize = 1 << 20;

/// Items that are bad whatever the queue: not UTF-8, not JSON, nested past
/// any parser's depth, 10 MB (under the queues' 16 MiB limit) and 17 MB
/// (over it), and envelopes whose every field has a wrong or extreme value.
fn generic() -> Vec<Vec<u8>> {
    let mut items: Vec<Vec<u8>> = vec![
        b"\xff\xfe\xfd".to_vec(),
        b"{\"to\":\"\xc3\x28@example.com\",\"subject\":\"s\"}".to_vec(),
        b"\"\xed\xa0\x80\"".to_vec(),
        Vec::new(),
        b"   ".to_vec(),
        b"{".to_vec(),
        b"{not json}".to_vec(),
        b"[1,2".to_vec(),
        b"\"unterminated".to_vec(),
        b"nul".to_vec(),
        b"1e99999".to_vec(),
        b"{\"a\":1}{\"b\":2}".to_vec(),
        b"{\"a\":1,}".to_vec(),
        b"\x00".to_vec(),
        b"\"\\ud800\"".to_vec(),
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
        format!("{}1{}", "{\"a\":".repeat(100_000), "}".repeat(100_000)).into_bytes(),
        format!(
            "{{\"id\":\"deep\",\"payload\":{}0{},\"attempt\":0,\"deliveries\":1}}",
            "[".repeat(5_000),
            "]".repeat(5_000)
        )
        .into_bytes(),
        format!("\"{}\"", "a".repeat(10 * 1_000_000)).into_bytes(),
        format!("\"{}\"", "b".repeat(17 * MIB)).into_bytes(),
        [b"\"".as_slice(), &vec![0xffu8; 10 * 1_000_000], b"\""].concat(),
    ];
    let env = |fields: Value| {
        let mut v = json!({"id": format!("e{}", fastrand::u32(..)), "payload": {}, "attempt": 0});
        for (k, x) in fields.as_object().unwrap() {
            v[k] = x.clone();
        }
        v.to_string().into_bytes()
    };
    let odd = [
        json!(-1),
        json!(i64::MIN),
        json!(u32::MAX),
        json!(u64::from(u32::MAX) + 1),
        json!(u64::MAX),
        json!(1e308),
        json!(1.5),
        json!("3"),
        json!(null),
        json!([]),
        json!({}),
    ];
    for field in ["attempt", "max_attempts", "deliveries", "timeout_ms"] {
        for v in &odd {
            items.push(env(json!({ field: v })));
        }
    }
    for field in [
        "created_at",
        "unique_key",
        "last_error",
        "died_at",
        "raw",
        "raw_base64",
    ] {
        for v in [json!(7), json!([]), json!({"x": 1}), json!("")] {
            items.push(env(json!({ field: v })));
        }
    }
    for id in [
        json!(""),
        json!("x".repeat(201)),
        json!(7),
        json!(null),
        json!({"a": 1}),
        json!("../../escape"),
        json!("line\nbreak"),
    ] {
        items.push(env(json!({ "id": id })));
    }
    items.push(env(
        json!({"payload": null, "zzz": {"nested": [1, 2]}, "ünïcode": "✓"}),
    ));
    items.push(env(json!({"attempt": 2, "max_attempts": 2})));
    items
}

/// Email payloads with a wrong type or value in every field, header
/// injection attempts, and a 10 MB subject.
fn email() -> Vec<Vec<u8>> {
    let fields = [
        "to", "subject", "text", "html", "from", "cc", "bcc", "reply_to", "template", "vars",
    ];
    let wrong = [
        json!(1),
        json!(-1.5),
        json!(true),
        json!([]),
        json!([1]),
        json!({}),
        json!({"x": 1}),
        json!(""),
        json!("not an address"),
        json!("a@example.com\r\nBcc: evil@example.com"),
        json!("\u{0}"),
    ];
    let mut items = Vec::new();
    for field in fields {
        for v in &wrong {
            let mut p = json!({"to": "a@example.com", "subject": "s"});
            p[field] = v.clone();
            items.push(p.to_string().into_bytes());
        }
    }
    items.push(json!({"subject": "no recipient"}).to_string().into_bytes());
    items.push(json!({"to": "a@example.com"}).to_string().into_bytes());
    items.push(json!(["a@example.com", "s"]).to_string().into_bytes());
    items.push(
        json!({"to": "a@example.com", "subject": "x".repeat(10 * 1_000_000)})
            .to_string()
            .into_bytes(),
    );
    items.push(
        json!({"to": vec!["a@example.com"; 10_000], "subject": "many"})
            .to_string()
            .into_bytes(),
    );
    items
}

/// Every item pushed to a queue must be accounted for: a success (runs
/// that ended, minus failures) or a dead entry with a reason. Dead entries
/// of unreadable items must carry the item's exact bytes. Entries are read
/// with `parse_item`, as `conveyor dead` reads them: a payload nested deeper
/// than serde_json's `Value` allows is still a valid entry.
async fn account(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
    pushed: &[Vec<u8>],
) -> (usize, usize) {
    let processed = stat(conn, key, "processed").await;
    let succeeded = (processed - stat(conn, key, "failed").await) as usize;
    let entries: Vec<Vec<u8>> = conn.lrange(format!("{{{key}}}:dead"), 0, -1).await.unwrap();
    for entry in &entries {
        let env = parse_item(entry, usize::MAX)
            .unwrap_or_else(|e| {
                panic!(
                    "an unreadable dead entry ({e}): {:.200}",
                    String::from_utf8_lossy(entry)
                )
            })
            .envelope;
        let reason = env.last_error.unwrap_or_default();
        assert!(
            !reason.is_empty(),
            "a dead entry without a reason: {}",
            env.id
        );
        if let Some(raw) = env.raw {
            assert!(
                pushed.contains(&raw.to_bytes()),
                "a dead item's bytes changed: {reason}"
            );
        }
    }
    assert_eq!(
        succeeded + entries.len(),
        pushed.len(),
        "{key}: {succeeded} succeeded + {} dead != {} pushed",
        entries.len(),
        pushed.len()
    );
    (succeeded, entries.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input() {
    let _serial = serial().await;
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox");
    let queues = format!(
        "[email]\ntransport = \"file\"\ndir = \"{}\"\ntimeout = \"10s\"\n\
         [queues.mail]\nhandler = \"email\"\nconcurrency = 4\nmax_attempts = 3\ntimeout = \"20s\"\n\
         backoff = {{ base = \"50ms\", max = \"100ms\" }}\nmax_payload_bytes = {}\n\
         [queues.misc]\nhandler = \"noop\"\nconcurrency = 4\nmax_attempts = 3\n\
         backoff = {{ base = \"50ms\", max = \"100ms\" }}\nmax_payload_bytes = {}\n",
        outbox.display(),
        16 * MIB,
        16 * MIB
    );
    let cfg = write_config(dir.path(), &redis.url(), FAST, &queues);
    let mut conn = patient(&redis).await;
    let mail: Vec<Vec<u8>> = generic().into_iter().chain(email()).collect();
    let misc = generic();
    let mut daemon = Daemon::start(&cfg);
    let started = Instant::now();
    for (key, items) in [(MAIL, &mail), (MISC, &misc)] {
        for item in items.iter() {
            let _: () = conn.rpush(key, item).await.unwrap();
        }
    }
    for key in [MAIL, MISC] {
        wait_until(&format!("{key} drained"), WAIT, || {
            let mut c = conn.clone();
            async move {
                llen(&mut c, key).await == 0
                    && zcard(&mut c, &format!("{{{key}}}:scheduled")).await == 0
                    && in_flight(&mut c, key).await == 0
            }
        })
        .await;
    }
    let took = started.elapsed();
    let (mail_ok, mail_dead) = account(&mut conn, MAIL, &mail).await;
    let (misc_ok, misc_dead) = account(&mut conn, MISC, &misc).await;

    // Still working: a sentinel on each queue.
    let sentinel = json!({"id": "sentinel", "payload": {"to": "s@example.com", "subject": "sentinel"}, "attempt": 0});
    let (mail_before, misc_before) = (
        stat(&mut conn, MAIL, "processed").await,
        stat(&mut conn, MISC, "processed").await,
    );
    let _: () = conn.rpush(MAIL, sentinel.to_string()).await.unwrap();
    let _: () = conn.rpush(MISC, sentinel.to_string()).await.unwrap();
    wait_until("both sentinels run", WAIT, || {
        let mut c = conn.clone();
        async move {
            stat(&mut c, MAIL, "processed").await > mail_before
                && stat(&mut c, MISC, "processed").await > misc_before
        }
    })
    .await;
    assert!(
        outbox.join("sentinel.eml").exists(),
        "the sentinel mail is written"
    );
    let outside: HashSet<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        outside,
        HashSet::from(["conveyor.toml".into(), "outbox".into()]),
        "no file written outside the outbox"
    );
    daemon.assert_healthy();

    let pushed = mail.len() + misc.len();
    let tally = Tally {
        enqueued: pushed,
        completed: mail_ok + misc_ok,
        dead: mail_dead + misc_dead,
        ..Tally::default()
    };
    report(
        "hostile_input",
        &tally,
        None,
        &format!(
            "mail={mail_ok}ok+{mail_dead}dead misc={misc_ok}ok+{misc_dead}dead drained_in={:.2}s",
            took.as_secs_f64()
        ),
    );
}

/// An item over `max_payload_bytes` that a dead node held, or that a fetch
/// whose reply was lost left in flight unseen, is dead-lettered with its
/// original bytes. (The hostile run above once found a 17 MB item dead
/// inside an envelope 64 bytes larger: the orphan requeue had wrapped it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_items_keep_their_bytes_through_recovery() {
    let _serial = serial().await;
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let queue = "[queues.work]\nhandler = \"noop\"\nmax_payload_bytes = 100\n";
    let cfg = write_config(dir.path(), &redis.url(), FAST, queue);
    let mut conn = patient(&redis).await;
    let (ghost, orphan) = (
        format!("\"{}\"", "g".repeat(200)),
        format!("\"{}\"", "o".repeat(200)),
    );
    // A dead node that held one...
    let _: () = conn
        .rpush(format!("{INFLIGHT}ghost"), &ghost)
        .await
        .unwrap();
    let _: () = conn.sadd(NODES, "ghost").await.unwrap();
    let mut daemon = Daemon::start(&cfg);
    let list = registered(&conn, daemon.pid()).await;
    // ...and what a fetch whose reply was lost leaves behind, with the
    // connection failure that lost it.
    let _: () = conn.rpush(&list, &orphan).await.unwrap();
    let killed: redis::RedisResult<()> = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query_async(&mut redis.conn().await)
        .await;
    killed.unwrap();
    let mut conn = patient(&redis).await;
    wait_until("both are dead", WAIT, || {
        let mut c = conn.clone();
        async move { llen(&mut c, DEAD).await == 2 }
    })
    .await;
    let entries: Vec<Vec<u8>> = conn.lrange(DEAD, 0, -1).await.unwrap();
    let mut kept: Vec<Vec<u8>> = entries
        .iter()
        .map(|e| {
            parse_item(e, usize::MAX)
                .unwrap()
                .envelope
                .raw
                .unwrap()
                .to_bytes()
        })
        .collect();
    kept.sort();
    assert_eq!(kept, [ghost.into_bytes(), orphan.into_bytes()]);
    assert_eq!(in_flight(&mut conn, Q).await + llen(&mut conn, Q).await, 0);
    daemon.assert_healthy();
}
