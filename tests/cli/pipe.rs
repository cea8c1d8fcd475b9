//! Every command that prints stops quietly when its reader goes away, as
//! `conveyor check | head -1` does: the real binary with its stdout piped
//! into a real `head -1`, and for what prints at once, into a pipe whose
//! reader has already gone. No panic, no exit 101: exit 141, what a shell
//! shows for a command killed by SIGPIPE.

use std::process::{Child, Command, Stdio};

use redis::AsyncCommands as _;
use serde_json::json;

use super::{Setup, WAIT, WORK, setup};
use crate::common::*;

/// What a command whose reader left exits with (128 + SIGPIPE).
const CLOSED_PIPE: i32 = 141;

/// `conveyor ARGS | head -1`: the command (its stderr kept) and `head`.
fn into_head(s: &Setup, args: &[&str]) -> (KillOnDrop, Child) {
    let mut head = Command::new("head")
        .arg("-1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pipe = Stdio::from(head.stdin.take().unwrap());
    let child = conveyor()
        .arg("--config")
        .arg(&s.cfg)
        .args(args)
        .stdout(pipe)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (KillOnDrop(child), head)
}

/// The line `head` printed; its end of the pipe is closed once it returns.
fn first_line(head: Child) -> String {
    let out = head.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// Waits for the command and checks it stopped quietly: 141, and nothing
/// on stderr of a panic or a failed print.
fn stopped_quietly(mut child: KillOnDrop, what: &str) {
    let code = wait_exit(&mut child, WAIT);
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(code, Some(CLOSED_PIPE), "{what}: {stderr}");
    for said in ["panicked", "failed printing", "Broken pipe", "broken pipe"] {
        assert!(!stderr.contains(said), "{what}: {stderr}");
    }
}

fn signal_pid(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn check_stops_quietly_when_its_reader_leaves_after_the_first_line() {
    let s = setup(WORK);
    // Redis stopped: check prints its first line ("config: ok"), then
    // waits on Redis until head has read that line and left.
    signal_pid(s.redis.pid(), "STOP");
    let (child, head) = into_head(&s, &["check"]);
    let line = first_line(head);
    signal_pid(s.redis.pid(), "CONT");
    assert!(line.starts_with("config: ok"), "{line}");
    stopped_quietly(child, "check");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_list_and_stats_stop_quietly_when_their_reader_leaves() {
    let s = setup(WORK);
    let mut conn = s.redis.conn().await;
    // Far more than a pipe holds (64 KiB): the list is still being printed
    // when head leaves.
    let error = "e".repeat(300);
    let entries: Vec<String> = (0..2000)
        .map(|i| {
            json!({"id": format!("dead-{i}"), "payload": {}, "attempt": 1,
                   "last_error": error, "died_at": "2026-01-01T00:00:00.000Z"})
            .to_string()
        })
        .collect();
    let _: () = conn.rpush("{jobs:work}:dead", &entries).await.unwrap();
    for json in [false, true] {
        let mut args = vec!["dead", "list", "work", "--limit", "2000"];
        if json {
            args.push("--json");
        }
        let (child, head) = into_head(&s, &args);
        assert!(!first_line(head).is_empty());
        stopped_quietly(child, &args.join(" "));
    }
    // --watch prints a snapshot per interval until its reader leaves.
    let (child, head) = into_head(&s, &["stats", "--watch", "--interval", "100ms"]);
    assert!(!first_line(head).is_empty());
    stopped_quietly(child, "stats --watch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_stops_quietly_when_its_reader_leaves() {
    let s = setup(WORK);
    let mut conn = s.redis.conn().await;
    let (mut child, head) = into_head(&s, &["monitor", "--json"]);
    // Events until head has its line, then until the monitor notices.
    let head = std::thread::spawn(move || first_line(head));
    let mut seq = 0u64;
    while child.try_wait().unwrap().is_none() {
        seq += 1;
        let event = json!({"type": "job.enqueued", "queue": "work", "id": format!("e{seq}"),
                           "attempt": 0, "node": "test", "at": "2026-01-01T00:00:00.000Z",
                           "seq": seq});
        let _: () = conn
            .publish("conveyor:events", event.to_string())
            .await
            .unwrap();
        assert!(seq < 2000, "the monitor never stopped");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(head.join().unwrap().contains("job.enqueued"));
    stopped_quietly(child, "monitor");
}

#[test]
fn what_prints_at_once_stops_quietly_into_a_pipe_already_closed() {
    let s = setup(WORK);
    for args in [
        &["completions", "bash"][..],
        &["completions", "zsh"],
        &["--help"],
        &["dead", "--help"],
        &["check"],
    ] {
        // A reader that has gone already: its end of the pipe is closed.
        let mut gone = Command::new("true").stdin(Stdio::piped()).spawn().unwrap();
        let pipe = Stdio::from(gone.stdin.take().unwrap());
        gone.wait().unwrap();
        let child = conveyor()
            .arg("--config")
            .arg(&s.cfg)
            .args(args)
            .stdout(pipe)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        stopped_quietly(KillOnDrop(child), &args.join(" "));
    }
}
