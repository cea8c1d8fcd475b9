//! Persistent mode: `concurrency` long-lived processes per queue, each
//! given one request line at a time and answering with one reply line.
//!
//! A job checks a process out of the pool and gives it back when the reply
//! is good. A process that exits, writes something that is not a reply, or
//! is dropped mid-job (the job's timeout, the end of a shutdown) is killed
//! with its whole group and replaced at once, so the next job does not wait
//! for a program to start. The processor runs at most `concurrency` jobs of
//! the queue, so the pool never holds more processes than that, besides
//! those it is letting go of.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;

use super::process::{Process, Spec};
use super::protocol::{self, Line, Reply};
use super::settle;
use crate::job::{HandlerError, Job};

/// How long a process retired after `max_jobs_per_process` jobs gets to
/// exit once its stdin is closed.
const RETIRE_GRACE: Duration = Duration::from_secs(10);

/// The processes of one queue.
pub(super) struct Pool {
    spec: Spec,
    size: usize,
    /// Replace a process after this many jobs (0: never).
    max_jobs: u64,
    idle: Mutex<Idle>,
}

#[derive(Default)]
struct Idle {
    processes: Vec<Process>,
    /// Set by the shutdown: nothing is started or kept any more.
    closing: bool,
}

impl Pool {
    pub(super) fn new(spec: Spec, size: usize, max_jobs: u64) -> Self {
        Self {
            spec,
            size,
            max_jobs,
            idle: Mutex::new(Idle::default()),
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts the processes, and watches the first until it waits for jobs
    /// (at least `least`, at most `most`: `settle.rs`), looking at them all
    /// meanwhile: one that exited at start (a script's path mistyped, an
    /// import that fails), however slowly it started, is said once, at
    /// warning level, with its stderr, since the queue's jobs fail until
    /// the worker is fixed. (A process a job took meanwhile shows its
    /// failure in that job.)
    pub(super) fn start(self: &Arc<Self>, least: Duration, most: Duration) {
        for _ in 0..self.size {
            if !self.replenish() {
                break;
            }
        }
        let Some(first) = self.idle().processes.first().map(|p| p.pid) else {
            return;
        };
        let pool = self.clone();
        tokio::spawn(async move {
            let mut gone = None;
            let start = settle::watch(first, least, most, || {
                gone = pool.take_ended();
                gone.as_ref().map(|(_, status)| status.clone())
            });
            start.await;
            if let Some((mut process, status)) = gone {
                process.stderr_read(Duration::from_millis(500)).await;
                tracing::warn!(
                    queue = %pool.spec.queue,
                    %status,
                    stderr = %process.stderr_tail(),
                    "the worker exited at start: this queue's jobs fail until it is fixed"
                );
            }
        });
    }

    /// Takes the idle processes that ended out of the pool (a job would
    /// only find them gone); returns the first, with how it ended.
    fn take_ended(&self) -> Option<(Process, String)> {
        let mut idle = self.idle();
        let (mut gone, mut alive) = (Vec::new(), Vec::new());
        for mut process in std::mem::take(&mut idle.processes) {
            match process.ended() {
                Some(status) => gone.push((process, status)),
                None => alive.push(process),
            }
        }
        idle.processes = alive;
        gone.into_iter().next()
    }

    /// Starts one process into the idle set; false if it could not start.
    fn replenish(&self) -> bool {
        match self.spawn() {
            Ok(process) => {
                self.keep(process);
                true
            }
            Err(e) => {
                tracing::error!(queue = %self.spec.queue, error = %e, "no worker process started");
                false
            }
        }
    }

    /// Starts a process in place of one that is gone, unless the pool is
    /// closing.
    fn replace(&self) {
        if !self.idle().closing && tokio::runtime::Handle::try_current().is_ok() {
            self.replenish();
        }
    }

    /// Puts a process back among the idle, or lets it go if the pool is closing.
    fn keep(&self, process: Process) {
        let mut idle = self.idle();
        if idle.closing {
            drop(idle);
            tokio::spawn(process.close(RETIRE_GRACE));
        } else {
            idle.processes.push(process);
        }
    }

    /// An idle process, or a new one.
    fn checkout(&self) -> Result<Process, HandlerError> {
        match self.idle().processes.pop() {
            Some(process) => Ok(process),
            None => self.spawn(),
        }
    }

    fn spawn(&self) -> Result<Process, HandlerError> {
        self.spec.spawn().map_err(|e| {
            HandlerError::transient(format!(
                "cannot start the worker program {}: {e}",
                self.spec.program.display()
            ))
        })
    }

    /// Runs `job` on a process of the pool.
    pub(super) async fn run(self: &Arc<Self>, job: &Job) -> Result<(), HandlerError> {
        let mut lease = Lease {
            pool: self.clone(),
            process: Some(self.checkout()?),
        };
        let mut fresh = false;
        let reply = loop {
            let Some(process) = lease.process.as_mut() else {
                return Err(HandlerError::transient("no worker process"));
            };
            process.begin(job.id());
            match exchange(process, job).await {
                Ok(reply) => break reply,
                // An idle process that had exited never saw the request: the
                // job goes to a new process rather than failing. (Asking
                // each process whether it lives before every job would cost
                // a system call per job.)
                Err(Broken::NotDelivered(why)) if !fresh => {
                    tracing::warn!(pid = process.pid, error = %why, "an idle worker process had exited; starting another");
                    lease.process = Some(self.spawn()?);
                    fresh = true;
                }
                Err(Broken::NotDelivered(why) | Broken::MidJob(why)) => {
                    // The lease drops with the process: killed, and replaced.
                    tracing::warn!(pid = process.pid, error = %why, "worker process replaced");
                    return Err(HandlerError::transient(why));
                }
            }
        };
        let Some(process) = lease.process.as_mut() else {
            return Err(HandlerError::transient("no worker process"));
        };
        process.jobs += 1;
        lease.give_back();
        match reply {
            Reply::Ok(None) => Ok(()),
            Reply::Ok(Some(result)) => {
                if let Err(e) = job.set_result_json(result) {
                    // The work is done: failing the job would do it again.
                    tracing::warn!(error = %e, "result not kept");
                }
                Ok(())
            }
            Reply::Failed(e) => Err(e),
        }
    }

    /// Closes every idle process's stdin, gives them `within` to exit, then
    /// kills what is left.
    pub(super) async fn shutdown(&self, within: Duration) {
        let processes = {
            let mut idle = self.idle();
            idle.closing = true;
            std::mem::take(&mut idle.processes)
        };
        futures::future::join_all(processes.into_iter().map(|p| p.close(within))).await;
    }
}

/// Why a process cannot be trusted with another job.
enum Broken {
    /// The request could not be written: the process never had the job.
    NotDelivered(String),
    /// The process had the job and did not answer it properly.
    MidJob(String),
}

/// Sends the request and reads the reply.
async fn exchange(process: &mut Process, job: &Job) -> Result<Reply, Broken> {
    let request = protocol::request(job);
    let written = match process.stdin.as_mut() {
        Some(stdin) => stdin.write_all(&request).await,
        None => Err(std::io::ErrorKind::BrokenPipe.into()),
    };
    if let Err(e) = written {
        let why = gone(process, &format!("cannot write the request ({e})")).await;
        return Err(Broken::NotDelivered(why));
    }
    let mut line = Vec::new();
    let read =
        protocol::read_line(&mut process.stdout, &mut line, protocol::MAX_REPLY, false).await;
    match read {
        Ok(Line::Complete) => protocol::parse_reply(&line, job.id()).map_err(|e| e.to_string()),
        Ok(Line::TooLong) => Err(format!(
            "the worker's reply line is longer than {} bytes",
            protocol::MAX_REPLY
        )),
        Ok(Line::Eof) => Err(gone(process, "it closed its stdout without a reply").await),
        Err(e) => Err(format!("cannot read the worker's reply: {e}")),
    }
    .map_err(Broken::MidJob)
}

/// The reason for a process that stopped answering: how it exited, if it
/// did, and its last stderr lines.
async fn gone(process: &mut Process, what: &str) -> String {
    let exit = match tokio::time::timeout(Duration::from_millis(500), process.exit_status()).await {
        Ok(Ok(status)) => format!("the worker process exited ({status})"),
        Ok(Err(e)) => format!("the worker process is gone ({e})"),
        Err(_) => "the worker process".to_owned(),
    };
    let tail = process.stderr_tail();
    match tail.is_empty() {
        true => format!("{exit}: {what}"),
        false => format!("{exit}: {what}; stderr: {tail}"),
    }
}

/// A process checked out for one job. Unless given back, it is killed when
/// the lease drops, and another is started in its place.
struct Lease {
    pool: Arc<Pool>,
    process: Option<Process>,
}

impl Lease {
    /// The job went well: the process goes back to the pool, or is retired
    /// after its `max_jobs_per_process` and replaced.
    fn give_back(mut self) {
        let Some(process) = self.process.take() else {
            return;
        };
        let pool = &self.pool;
        if pool.max_jobs > 0 && process.jobs >= pool.max_jobs {
            tracing::debug!(
                pid = process.pid,
                jobs = process.jobs,
                "worker process retired"
            );
            tokio::spawn(process.close(RETIRE_GRACE));
            pool.replace();
        } else {
            pool.keep(process);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(process) = self.process.take() {
            drop(process);
            self.pool.replace();
        }
    }
}
