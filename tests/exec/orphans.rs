//! No worker process outlives its job or its daemon (DESIGN section 16),
//! against the real binary: a descendant that left the process group
//! (`setsid`) or was handed to init's care by a double fork is gone when
//! the job times out; what a oneshot program leaves behind is gone when it
//! exits 0; and a SIGKILLed daemon takes every worker with it, so the
//! recovered job never runs beside an orphan of its first run.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::common::*;
use crate::workers::*;

/// A worker that leaves processes behind in every way a program can:
/// `{"do": "escape", "pidfile": P}` starts a child in a session of its own
/// (`setsid`), and a daemon by double fork (its parent exits at once, so
/// it is nobody's child any more), writes all their pids to `pidfile`,
/// then either hangs (persistent: past the job's timeout) or exits 0
/// (oneshot, `"exit": true`).
const ESCAPER: &str = r#"
import json, os, subprocess, sys, time

def escape(p):
    # A child that leaves the process group.
    setsid = subprocess.Popen(["sleep", "300"], start_new_session=True,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # A daemon by double fork: the intermediate process exits at once.
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.setsid()
        grandchild = os.fork()
        if grandchild == 0:
            os.close(r)
            os.write(w, b"%d" % os.getpid())
            os.close(w)
            # Keeps the worker's stdout open, as a careless daemon would.
            os.execvp("sleep", ["sleep", "300"])
        os._exit(0)
    os.close(w)
    daemon = int(os.read(r, 32))
    os.close(r)
    os.waitpid(pid, 0)
    with open(p["pidfile"] + ".tmp", "w") as f:
        f.write(json.dumps({"worker": os.getpid(), "setsid": setsid.pid, "daemon": daemon}))
    os.rename(p["pidfile"] + ".tmp", p["pidfile"])

if len(sys.argv) > 1 and sys.argv[1] == "oneshot":
    req = json.loads(sys.stdin.read())
    escape(req["payload"])
    print(json.dumps({"left": "behind"}))
    sys.exit(0)

for line in sys.stdin:
    req = json.loads(line)
    p = req["payload"]
    if p.get("do") == "escape":
        escape(p)
        time.sleep(300)
    elif p.get("do") == "sleep":
        if "pidfile" in p:
            escape(p)
        time.sleep(p["s"])
    print(json.dumps({"id": req["id"], "status": "ok", "result": {"pid": os.getpid()}}), flush=True)
"#;

/// The pids a worker wrote to `pidfile`, once written.
async fn pids(pidfile: &Path) -> Vec<u32> {
    wait_until("the worker wrote its pids", WAIT, || async {
        pidfile.exists()
    })
    .await;
    let text = std::fs::read_to_string(pidfile).unwrap();
    let pids: serde_json::Value = serde_json::from_str(&text).unwrap();
    ["worker", "setsid", "daemon"]
        .iter()
        .map(|k| pids[k].as_u64().unwrap() as u32)
        .collect()
}

/// Waits until none of `pids` lives; the assertion names the survivors.
async fn all_gone(pids: &[u32], after: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if alive.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{alive:?} (of {pids:?}) still run 10 s after {after}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_job_takes_the_processes_that_left_its_group() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let worker = script(dir.path(), "escaper.py", ESCAPER);
    let cfg = config_file(
        dir.path(),
        &redis,
        &queue(
            &worker,
            "persistent",
            "concurrency = 1\ntimeout = \"1s\"\nmax_attempts = 1",
            "",
        ),
    );
    let mut conn = redis.conn().await;
    let (_daemon, _logs) = daemon(&cfg);
    let pidfile = dir.path().join("pids");
    push(
        &mut conn,
        "escape",
        json!({"do": "escape", "pidfile": pidfile}),
    )
    .await;
    let pids = pids(&pidfile).await;
    wait_state(&conn, "escape", "dead").await;
    all_gone(&pids, "the job timed out").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_oneshot_program_that_exits_0_leaves_nothing_behind() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let worker = script(dir.path(), "escaper.py", ESCAPER);
    let cfg = config_file(
        dir.path(),
        &redis,
        &format!(
            "[queues.work]\nhandler = \"exec\"\ntrack = true\ntimeout = \"60s\"\n\
             [queues.work.exec]\ncommand = [{:?}, \"{}\", \"oneshot\"]\nmode = \"oneshot\"\n",
            python(),
            worker.display()
        ),
    );
    let mut conn = redis.conn().await;
    let (_daemon, _logs) = daemon(&cfg);
    let pidfile = dir.path().join("pids");
    let started = std::time::Instant::now();
    push(&mut conn, "left", json!({"pidfile": pidfile})).await;
    assert_eq!(result(&conn, "left").await, json!({"left": "behind"}));
    // The daemon by double fork holds the program's stdout open: the job
    // still ends when the program does, not at its 60 s timeout.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the job took {:?}",
        started.elapsed()
    );
    all_gone(&pids(&pidfile).await, "the program exited 0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_daemon_takes_its_workers_and_the_recovered_job_runs_alone() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let worker = script(dir.path(), "escaper.py", ESCAPER);
    let marker = worker.to_string_lossy().into_owned();
    let cfg = config_file(
        dir.path(),
        &redis,
        &queue(&worker, "persistent", "concurrency = 2", ""),
    );
    let mut conn = redis.conn().await;
    let (mut first, _logs) = daemon(&cfg);
    let pidfile = dir.path().join("pids");
    // Long enough that only the kill ends the first run.
    push(
        &mut conn,
        "busy",
        json!({"do": "sleep", "s": 2, "pidfile": pidfile}),
    )
    .await;
    let first_run = pids(&pidfile).await;
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    all_gone(&first_run, "the daemon was SIGKILLed").await;
    wait_processes(&marker, 0).await;

    // The next daemon recovers the job (node_ttl is 1 s) and runs it again:
    // nothing of the first run is there to run beside it.
    std::fs::remove_file(&pidfile).unwrap();
    let (_second, _logs) = daemon(&cfg);
    let second_run = pids(&pidfile).await;
    assert!(
        first_run.iter().all(|p| !alive(*p)),
        "the first run's processes came back?"
    );
    assert_ne!(first_run[0], second_run[0], "a new worker runs it");
    let done = result(&conn, "busy").await;
    assert_eq!(done["pid"].as_u64(), Some(second_run[0] as u64));
}
