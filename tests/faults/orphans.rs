//! Exec workers when their daemon is SIGKILLed: real Python workers, some
//! of whose jobs leave a process behind in a session of its own, the daemon
//! SIGKILLed three times under load and restarted. Nothing is lost, and no
//! process of a killed daemon's workers outlives it: not the workers, not
//! what they left behind (DESIGN section 16).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{Redis, alive, processes_where, wait_until};
use crate::harness::*;

const WAIT: Duration = Duration::from_secs(120);

/// A persistent worker that sleeps `sleep_ms`, and with `"leave": true`
/// first starts a `sleep 300` in a session of its own (its pid appended to
/// `left`), then on success appends the job's id to the completion record
/// (one write, O_APPEND), as the `fault` handler does.
const WORKER: &str = r#"
import json, os, subprocess, sys, time
for line in sys.stdin:
    req = json.loads(line)
    p = req["payload"]
    if p.get("leave"):
        child = subprocess.Popen(["sleep", "300"], start_new_session=True,
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        fd = os.open(p["left"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, b"%d\n" % child.pid)
        os.close(fd)
    time.sleep(p["sleep_ms"] / 1000)
    fd = os.open(p["record"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, (req["id"] + "\n").encode())
    os.close(fd)
    sys.stdout.write(json.dumps({"id": req["id"], "status": "ok"}) + "\n")
    sys.stdout.flush()
"#;

/// Live processes whose command line mentions `marker`, or whose pid is
/// in `pids`: what a killed daemon left running.
fn survivors(marker: &str, pids: &[u32]) -> Vec<u32> {
    let mut found = processes_where(|cmdline| cmdline.contains(marker));
    let more: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|p| alive(*p) && !found.contains(p))
        .collect();
    found.extend(more);
    found
}

/// The Python interpreter itself (pyenv's shims are shell scripts).
fn python() -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The pids the workers wrote to `left` so far.
fn left_behind(left: &Path) -> Vec<u32> {
    std::fs::read_to_string(left)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

/// 2,000 jobs of 0 to 10 ms on 8 Python workers, one in 20 leaving a
/// process behind; the daemon SIGKILLed at three random points and
/// restarted at once.
///
/// Time to recover, per kill: from the SIGKILL until no process of the
/// killed daemon's workers (workers, supervisors, what they left) is left;
/// the line shows the longest. Asserted: within 5 s each (it takes one
/// poll of each supervisor and a SIGKILL of what it finds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_workers_of_a_sigkilled_daemon() {
    let _serial = serial().await;
    let (jobs, kills, concurrency) = (2_000 * scale(), 3 * scale(), 8);
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let worker = dir.path().join("worker.py");
    std::fs::write(&worker, WORKER).unwrap();
    let marker = worker.to_string_lossy().into_owned();
    let left = dir.path().join("left");
    let queue = format!(
        "[queues.work]\nhandler = \"exec\"\nconcurrency = {concurrency}\ntimeout = \"30s\"\n\
         [queues.work.exec]\ncommand = [{:?}, {marker:?}]\n",
        python()
    );
    let daemon_table = format!("{FAST}\nmax_deliveries = {}", kills + 1);
    let cfg = write_config(dir.path(), &redis.url(), &daemon_table, &queue);
    let mut conn = patient(&redis).await;
    let mut ledger = Ledger::new();
    let mut rng = fastrand::Rng::new();
    let seed = rng.get_seed();
    let items: Vec<String> = (0..jobs)
        .map(|i| {
            ledger.job(json!({"sleep_ms": rng.u64(0..=10), "leave": i % 20 == 0, "left": left}))
        })
        .collect();
    push_all(&mut conn, Q, &items).await;

    let span = 0.85 / kills as f64;
    let points: Vec<u64> = (0..kills)
        .map(|k| (jobs as f64 * (0.05 + span * (k as f64 + rng.f64()))) as u64)
        .collect();
    let mut daemon = Daemon::start(&cfg);
    let mut cleanups = Vec::new();
    for point in points {
        wait_until("progress up to the kill point", WAIT, || {
            let mut c = conn.clone();
            async move { processed(&mut c).await >= point }
        })
        .await;
        daemon.assert_no_panic();
        // What runs now belongs to this daemon: its workers and what they
        // left behind (an earlier daemon's are gone, as checked below).
        let running = survivors(&marker, &left_behind(&left));
        assert!(!running.is_empty(), "no worker process runs");
        daemon.kill();
        let killed = Instant::now();
        let took = time_until(Duration::from_secs(5), || {
            let running = running.clone();
            async move { !running.iter().any(|p| alive(*p)) }
        })
        .await;
        let left_running: Vec<u32> = running.iter().copied().filter(|p| alive(*p)).collect();
        assert!(
            took.is_some(),
            "{left_running:?} of the killed daemon's {running:?} still run 5 s after the kill"
        );
        cleanups.push(killed.elapsed());
        daemon = Daemon::start(&cfg);
    }

    let tally = ledger.drain(&mut conn, WAIT * scale() as u32).await;
    daemon.assert_healthy();
    drop(daemon);
    let worst = cleanups.iter().max().copied();
    let left = left_behind(&left);
    wait_until(
        "no worker or process left behind once the last daemon is gone",
        Duration::from_secs(10),
        || {
            let (marker, left) = (marker.clone(), left.clone());
            async move { survivors(&marker, &left).is_empty() }
        },
    )
    .await;
    report(
        "exec_sigkill_orphans",
        &tally,
        worst,
        &format!(
            "kills={kills} left_behind={} cleanups={:?} seed={seed}",
            left.len(),
            cleanups
                .iter()
                .map(|d| format!("{:.3}", d.as_secs_f64()))
                .collect::<Vec<_>>()
        ),
    );
    tally.assert_settled();
    assert_eq!(tally.completed, jobs, "every job completes: {tally:?}");
    assert_eq!(tally.dead, 0, "{tally:?}");
}
