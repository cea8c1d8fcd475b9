//! The web port's deadlines (DESIGN section 16): a request must arrive
//! whole within 10s, an idle connection is closed after 10s, and an
//! answer that takes long (the event stream) is not idle.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::common::*;

/// The server's deadline for a request's head, and for its body.
const DEADLINE: Duration = Duration::from_secs(10);

/// A raw connection to `addr` that has sent `sent`.
async fn open(addr: &str, sent: &str) -> (TcpStream, Instant) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(sent.as_bytes()).await.unwrap();
    (stream, Instant::now())
}

/// Reads until the server closes the connection; what it sent, and how
/// long after `since` it closed (None: still open at `limit`).
async fn until_closed(
    stream: &mut TcpStream,
    since: Instant,
    limit: Duration,
) -> (String, Option<Duration>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(since.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), None),
            Ok(Ok(0) | Err(_)) => {
                return (
                    String::from_utf8_lossy(&got).into_owned(),
                    Some(since.elapsed()),
                );
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Against `conveyor web` on loopback (no token): a connection that sends
/// nothing, one that sends half a head, one whose keep-alive connection
/// stays idle after an answer, and a login whose body stops halfway are
/// all closed by the server at the deadline, not before; an event stream
/// opened at the same time is still open and sending after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_does_not_arrive_whole_is_dropped_after_the_deadline() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), &redis, "[queues.work]\nhandler = \"noop\"\n");
    let mut web = conveyor();
    web.args([
        "--config",
        cfg.to_str().unwrap(),
        "web",
        "--listen",
        "127.0.0.1:0",
    ]);
    let (mut web, logs) = spawn_logged(web);
    let base = web_address(&logs).await;
    let addr = base.trim_start_matches("http://").to_owned();
    let host = format!("Host: {addr}\r\n");

    let (mut silent, silent_at) = open(&addr, "").await;
    let (mut half, half_at) = open(&addr, &format!("GET /healthz HTTP/1.1\r\n{host}")).await;
    let (mut body, body_at) = open(
        &addr,
        &format!(
            "POST /login HTTP/1.1\r\n{host}Content-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: 100\r\n\r\ntoken="
        ),
    )
    .await;
    let (mut idle, _) = open(&addr, &format!("GET /healthz HTTP/1.1\r\n{host}\r\n")).await;
    let mut answer = [0u8; 512];
    let n = idle.read(&mut answer).await.unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200 OK"));
    let idle_at = Instant::now();
    let (mut events, _) = open(
        &addr,
        &format!("GET /api/events HTTP/1.1\r\n{host}Accept: text/event-stream\r\n\r\n"),
    )
    .await;
    let n = events.read(&mut answer).await.unwrap();
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 200 OK"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );

    let limit = DEADLINE + Duration::from_secs(5);
    let early = DEADLINE - Duration::from_secs(1);
    for (what, stream, since) in [
        ("a silent connection", &mut silent, silent_at),
        ("half a head", &mut half, half_at),
        ("an idle keep-alive connection", &mut idle, idle_at),
    ] {
        let (said, closed) = until_closed(stream, since, limit).await;
        let closed = closed.unwrap_or_else(|| panic!("{what}: still open after {limit:?}"));
        assert!(closed >= early, "{what}: closed after {closed:?}");
        assert_eq!(said, "", "{what}");
    }
    let (said, closed) = until_closed(&mut body, body_at, limit).await;
    let closed = closed.expect("a body cut short: still open");
    assert!(closed >= early, "a body cut short: closed after {closed:?}");
    assert!(said.starts_with("HTTP/1.1 408 Request Timeout"), "{said}");

    // The event stream outlives the deadline: its keep-alive comes every 15s.
    let (said, closed) = until_closed(&mut events, idle_at, Duration::from_secs(20)).await;
    assert_eq!(closed, None, "the event stream was closed: {said}");
    assert!(said.contains(":\n\n"), "a keep-alive comment: {said:?}");

    // Stopping does not wait for a request that is still arriving.
    let (mut half, _) = open(&addr, &format!("GET /healthz HTTP/1.1\r\n{host}")).await;
    let stopped = Instant::now();
    signal(&web, 15);
    assert_eq!(wait_exit(&mut web, Duration::from_secs(10)), Some(0));
    let (_, closed) = until_closed(&mut half, stopped, Duration::from_secs(10)).await;
    assert!(closed.is_some(), "closed when the server stopped");
    assert!(
        stopped.elapsed() < Duration::from_secs(2),
        "stopped after {:?}",
        stopped.elapsed()
    );
}
