//! Oneshot mode: a process per job. The request goes to stdin, then end of
//! file; exit 0 is success (stdout, if it is JSON, is the result), exit 75
//! (EX_TEMPFAIL) transient, any other exit permanent, death by a signal
//! transient. The last stderr lines are the error.

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::process::Spec;
use super::protocol;
use crate::job::{HandlerError, Job};

/// Most stdout kept; the rest is read and dropped, so the program never
/// blocks writing it.
const MAX_OUTPUT: usize = 1024 * 1024;

/// The exit status that asks for a retry (sysexits' EX_TEMPFAIL).
const EX_TEMPFAIL: i32 = 75;

/// Runs `job` in a new process.
pub(super) async fn run(spec: &Spec, job: &Job) -> Result<(), HandlerError> {
    let mut process = spec.spawn().map_err(|e| {
        HandlerError::transient(format!(
            "cannot start the worker program {}: {e}",
            spec.program.display()
        ))
    })?;
    process.begin(job.id());
    let request = protocol::request(job);
    let stdin = process.stdin.take();
    // Written while stdout is read: a program that prints before it has
    // read all its input must not wait on us while we wait on it.
    let write = async move {
        if let Some(mut stdin) = stdin {
            // A program may exit without reading its input: not an error.
            if let Err(e) = stdin.write_all(&request).await {
                tracing::debug!(error = %e, "the worker did not read its whole request");
            }
        }
    };
    let read = async {
        let mut kept = Vec::new();
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            match process.stdout.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = MAX_OUTPUT.saturating_sub(kept.len());
                    kept.extend_from_slice(&chunk[..n.min(room)]);
                }
            }
        }
        kept
    };
    let ((), output) = tokio::join!(write, read);
    let status = process.exit_status().await.map_err(|e| {
        HandlerError::transient(format!("cannot learn how the worker process ended: {e}"))
    })?;
    let tail = process.stderr_tail();
    let with_tail = |what: String| match tail.is_empty() {
        true => what,
        false => format!("{what}: {tail}"),
    };
    match (
        status.code(),
        std::os::unix::process::ExitStatusExt::signal(&status),
    ) {
        (Some(0), _) => {
            keep_result(job, &output);
            Ok(())
        }
        (Some(EX_TEMPFAIL), _) => Err(HandlerError::transient(with_tail(format!(
            "the worker exited with status {EX_TEMPFAIL} (temporary failure)"
        )))),
        (Some(code), _) => Err(HandlerError::permanent(with_tail(format!(
            "the worker exited with status {code}"
        )))),
        (None, Some(signal)) => Err(HandlerError::transient(with_tail(format!(
            "the worker was killed by signal {signal}"
        )))),
        (None, None) => Err(HandlerError::transient(with_tail(format!(
            "the worker ended ({status})"
        )))),
    }
}

/// Stdout that is JSON is the job's result; anything else is not kept.
fn keep_result(job: &Job, output: &[u8]) {
    let text = String::from_utf8_lossy(output);
    let text = text.trim();
    if text.is_empty() {
        return;
    }
    match serde_json::from_str::<Box<serde_json::value::RawValue>>(text) {
        Ok(json) => {
            if let Err(e) = job.set_result_json(json) {
                // The work is done: failing the job would do it again.
                tracing::warn!(error = %e, "result not kept");
            }
        }
        Err(_) => tracing::debug!("the worker's output is not JSON; no result kept"),
    }
}
