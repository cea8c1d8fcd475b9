//! Worker programs in Python for the `exec` tests, and what the tests share:
//! queue configs, job envelopes, status records and the processes running.

use std::path::{Path, PathBuf};
use std::time::Duration;

use redis::AsyncCommands as _;
use redis::aio::MultiplexedConnection;

use crate::common::*;

pub(crate) const Q: &str = "jobs:work";
pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// A persistent worker whose payload says what to do (`{"do": ...}`):
/// `ok` (the default) replies with a result describing the run; `sum`
/// adds up `numbers`; `retry_once` asks for a retry in `ms` on its first
/// attempt; `fail` fails permanently; `crash` writes a line to stderr and
/// exits mid-job; `hang` starts a grandchild (its pid written to
/// `pidfile`) and never replies; `garbage` writes a line that is not a
/// reply; `flood` writes `mb` megabytes to stderr first; `env` returns its
/// environment; `limits` its open files limits; `sleep` sleeps `s` seconds
/// first.
pub(crate) const PERSISTENT: &str = r#"
import hashlib, json, os, subprocess, sys, time

def run(req):
    p = req["payload"]
    do = p.get("do", "ok") if isinstance(p, dict) else "ok"
    ok = {"id": req["id"], "status": "ok"}
    if do == "sum":
        return dict(ok, result={"sum": sum(p["numbers"]), "sha": hashlib.sha256(json.dumps(p["numbers"]).encode()).hexdigest()})
    if do == "retry_once" and req["attempt"] == 1:
        return {"id": req["id"], "status": "retry", "error": "not yet", "retry_in_ms": p["ms"]}
    if do == "fail":
        return {"id": req["id"], "status": "fail", "error": "no such user: " + str(p.get("user"))}
    if do == "crash":
        sys.stderr.write("about to crash on " + req["id"] + "\n")
        sys.stderr.flush()
        os._exit(3)
    if do == "hang":
        child = subprocess.Popen(["sleep", "300"])
        with open(p["pidfile"], "w") as f:
            f.write("%d %d" % (os.getpid(), child.pid))
        time.sleep(300)
    if do == "garbage":
        print("this is not a reply", flush=True)
        return None
    if do == "flood":
        line = "x" * 999 + "\n"
        for _ in range(p["mb"] * 1000):
            sys.stderr.write(line)
        sys.stderr.flush()
    if do == "env":
        return dict(ok, result=dict(os.environ))
    if do == "limits":
        import resource
        return dict(ok, result={"open_files": resource.getrlimit(resource.RLIMIT_NOFILE)})
    if do == "sleep":
        time.sleep(p["s"])
    return dict(ok, result={"payload": p, "pid": os.getpid(), "attempt": req["attempt"], "queue": req["queue"]})

for line in sys.stdin:
    reply = run(json.loads(line))
    if reply is not None:
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
"#;

/// A oneshot worker: reads its request, then exits as `{"exit": N}` says
/// (0 by default, printing a JSON result), writing `stderr` first.
pub(crate) const ONESHOT: &str = r#"
import json, os, sys
req = json.loads(sys.stdin.read())
p = req["payload"]
if p.get("stderr"):
    sys.stderr.write(p["stderr"] + "\n")
code = p.get("exit", 0)
if code == 0:
    print(json.dumps({"doubled": p.get("n", 0) * 2, "attempt": req["attempt"], "id": req["id"]}))
sys.exit(code)
"#;

/// The Python interpreter itself, not a wrapper in front of it: pyenv's
/// shims are shell scripts that add variables of their own and run
/// commands in subshells, which would show among a test's processes.
pub(crate) fn python() -> &'static str {
    static PYTHON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PYTHON.get_or_init(|| {
        let out = std::process::Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 runs");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    })
}

/// Writes `script` into `dir` as `name`; returns its path.
pub(crate) fn script(dir: &Path, name: &str, script: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, script).expect("write worker");
    path
}

/// A queue `work` running `worker` with the Python interpreter itself.
pub(crate) fn queue(worker: &Path, mode: &str, settings: &str, exec: &str) -> String {
    format!(
        "[queues.work]\nhandler = \"exec\"\ntrack = true\n{settings}\n[queues.work.exec]\ncommand = [{:?}, \"{}\"]\nmode = \"{mode}\"\n{exec}\n",
        python(),
        worker.display()
    )
}

/// Pushes an envelope with a known id.
pub(crate) async fn push(conn: &mut MultiplexedConnection, id: &str, payload: serde_json::Value) {
    let env = serde_json::json!({"id": id, "payload": payload, "attempt": 0});
    let _: () = conn.rpush(Q, env.to_string()).await.unwrap();
}

/// Waits until a job's status record says `state`; returns the record.
pub(crate) async fn wait_state(
    conn: &MultiplexedConnection,
    id: &str,
    state: &str,
) -> std::collections::HashMap<String, String> {
    wait_job_state(conn, id, state, WAIT).await
}

/// The result of a succeeded job, parsed.
pub(crate) async fn result(conn: &MultiplexedConnection, id: &str) -> serde_json::Value {
    let record = wait_state(conn, id, "succeeded").await;
    let text = record
        .get("result")
        .unwrap_or_else(|| panic!("no result in {record:?}"));
    serde_json::from_str(text).expect("the result is JSON")
}

/// Pids of live worker processes whose command line mentions `marker`
/// (not their supervisors, whose command line names the program too).
pub(crate) fn processes(marker: &str) -> Vec<u32> {
    matching(marker, false)
}

/// Pids of the live supervisors of workers whose command line mentions
/// `marker`.
pub(crate) fn supervisors(marker: &str) -> Vec<u32> {
    matching(marker, true)
}

fn matching(marker: &str, supervisor: bool) -> Vec<u32> {
    processes_where(|cmdline| {
        cmdline.contains(marker) && cmdline.contains("--conveyor-exec-supervisor") == supervisor
    })
}

/// Waits until exactly `n` worker processes mention `marker` (and, for
/// none, until no supervisor of one is left either).
pub(crate) async fn wait_processes(marker: &str, n: usize) {
    wait_until(
        &format!("{n} processes running {marker}"),
        WAIT,
        || async move { processes(marker).len() == n && (n > 0 || supervisors(marker).is_empty()) },
    )
    .await;
}

/// The daemon binary on `config`, stderr collected, logs as JSON.
pub(crate) fn daemon(config: &Path) -> (KillOnDrop, Logs) {
    let mut cmd = conveyor();
    cmd.args(["run", "--config", config.to_str().unwrap()])
        .env("CONVEYOR_LOG_FORMAT", "json")
        .stdout(std::process::Stdio::null());
    spawn_logged(cmd)
}
