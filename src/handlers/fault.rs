//! `fault`: a test-only handler that misbehaves on demand, compiled only with
//! the `fault-injection` feature (on for `cargo test`, off in release builds).
//!
//! The payload says what to do, checked in this order:
//! `{"abort": true}` kills the process (a poison job); `{"panic": true}`
//! panics; `{"sleep_ms": N}` sleeps first; `{"fail": "transient"|"permanent"}`
//! fails. With `"until_attempt": N` all of these happen only on runs before
//! attempt N (without it, on every run), so a job can panic or time out once
//! and then succeed.
//!
//! `{"trace": "/path/to/file"}` appends `start <id> <ns>` when a run starts
//! and `end <id> <ns>` when it ends (ns since the epoch), so a test can tell
//! from the runs themselves how many ran at once.
//!
//! `{"record": "/path/to/file"}` appends the job's id and a newline to that
//! file when the run succeeds. The fault-injection suite counts completions
//! and duplicates from it: an append survives the process being SIGKILLed
//! right after it and Redis going away, which pub/sub messages and events
//! published after the outcome do not. It is a file and not a Redis key
//! because handlers do not touch Redis except through the broker.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use super::{Handler, HandlerError};
use crate::job::Job;

/// Misbehaves as its payload asks.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Fault;

#[derive(Deserialize, Default)]
struct Orders {
    #[serde(default)]
    abort: bool,
    #[serde(default)]
    panic: bool,
    #[serde(default)]
    sleep_ms: u64,
    #[serde(default)]
    fail: Option<String>,
    #[serde(default)]
    until_attempt: Option<u32>,
    #[serde(default)]
    record: Option<PathBuf>,
    #[serde(default)]
    trace: Option<PathBuf>,
}

/// Writes a run's end to its trace when the run ends, however it ends.
struct Traced<'a>(Option<(&'a PathBuf, &'a str)>);

impl Drop for Traced<'_> {
    fn drop(&mut self) {
        if let Some((path, id)) = self.0 {
            let _ignored = trace(path, "end", id);
        }
    }
}

fn trace(path: &PathBuf, what: &str, id: &str) -> Result<(), HandlerError> {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    append(path, &format!("{what} {id} {ns}\n"))
}

#[async_trait]
impl Handler for Fault {
    async fn handle(&self, job: &Job) -> Result<(), HandlerError> {
        let orders: Orders = serde_json::from_str(job.payload().get()).unwrap_or_default();
        let misbehaving = orders.until_attempt.is_none_or(|n| job.attempt() < n);
        if let Some(path) = &orders.trace {
            trace(path, "start", job.id())?;
        }
        let _traced = Traced(orders.trace.as_ref().map(|p| (p, job.id())));
        if misbehaving && orders.abort {
            std::process::abort();
        }
        if misbehaving && orders.panic {
            panic!("fault handler asked to panic");
        }
        if misbehaving && orders.sleep_ms > 0 {
            tokio::time::sleep(Duration::from_millis(orders.sleep_ms)).await;
        }
        match orders.fail.as_deref() {
            Some("permanent") if misbehaving => {
                return Err(HandlerError::permanent("fault: permanent failure"));
            }
            Some(_) if misbehaving => {
                return Err(HandlerError::transient("fault: transient failure"));
            }
            _ => {}
        }
        if let Some(path) = &orders.record {
            record(path, job.id())?;
        }
        Ok(())
    }
}

/// Appends the job's id, a line, to `path`.
fn record(path: &PathBuf, id: &str) -> Result<(), HandlerError> {
    append(path, &format!("{id}\n"))
}

/// One `write` of a whole line to a file opened for appending: concurrent
/// runs never interleave within a line, and a kill leaves whole lines only.
fn append(path: &PathBuf, line: &str) -> Result<(), HandlerError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(line.as_bytes()))
        .map_err(|e| HandlerError::transient(format!("fault: recording the run: {e}")))
}
