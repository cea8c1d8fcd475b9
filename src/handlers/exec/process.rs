//! A worker process: started without a shell, under its supervisor
//! (`supervisor.rs`), in a process group of its own, with a minimal
//! environment, its stderr logged line by line with the job it is running.
//! Let go of in any way but a clean exit, its pipes close, and the
//! supervisor ends the program and everything it started.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::BufReader;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::protocol::{Line, read_line};
use super::supervisor::{self, Ids};

/// Longest stderr line logged; the rest of a longer line is dropped.
const MAX_STDERR_LINE: usize = 4096;

/// Stderr lines kept for a failure's reason.
const TAIL_LINES: usize = 5;

/// Stderr lines logged per second and process; a flood beyond this is
/// counted, not logged.
const STDERR_LINES_PER_SECOND: u32 = 100;

/// How long a supervisor that was let go of has to end its worker before
/// the daemon kills its process group itself.
const LET_GO_GRACE: Duration = Duration::from_secs(5);

/// How to start the queue's program: resolved and checked when the
/// handler is built.
#[derive(Debug, Clone)]
pub(super) struct Spec {
    /// The queue, for logs.
    pub(super) queue: Arc<str>,
    /// The program, as an absolute path (no `PATH` lookup at spawn time).
    pub(super) program: PathBuf,
    /// Its arguments, never interpreted by a shell.
    pub(super) args: Vec<String>,
    /// Its working directory.
    pub(super) cwd: PathBuf,
    /// Its whole environment.
    pub(super) env: Vec<(String, String)>,
    /// The binary that supervises it (`supervisor.rs`).
    pub(super) supervisor: Arc<std::path::Path>,
    /// The user and groups it runs as, if not the daemon's.
    pub(super) ids: Option<Ids>,
    /// Who that is, for `check` ("conveyor-worker:conveyor-worker").
    pub(super) runs_as: Option<String>,
}

impl Spec {
    /// Starts the program, under its supervisor, with piped stdin, stdout
    /// and stderr.
    pub(super) fn spawn(&self) -> std::io::Result<Process> {
        let mut child = Command::new(&*self.supervisor)
            .arg(supervisor::FLAG)
            .args(self.ids.iter().flat_map(Ids::args))
            .args(
                crate::limits::workers_open_files_limit()
                    .into_iter()
                    .flat_map(|n| [supervisor::OPEN_FILES.to_owned(), n.to_string()]),
            )
            .arg("--")
            .arg(&self.program)
            .args(&self.args)
            .current_dir(&self.cwd)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group: a Ctrl-C at the daemon's terminal reaches the
            // daemon only, which decides what the workers get.
            .process_group(0)
            .spawn()?;
        let pid = child.id().unwrap_or(0);
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(std::io::Error::other("the worker's pipes were not set up"));
        };
        let log = Arc::new(Stderr::default());
        let reader = tokio::spawn(log_stderr(stderr, log.clone(), self.queue.clone(), pid));
        Ok(Process {
            pid,
            stdin: Some(stdin),
            stdout: BufReader::with_capacity(64 * 1024, stdout),
            stderr: log,
            stderr_reader: Some(reader),
            jobs: 0,
            child: Guard {
                child: Some(child),
                pid,
                exited: false,
            },
        })
    }
}

/// A running worker process (its supervisor's pid, for logs). Dropped, its
/// stdin and stdout close first, which tells the supervisor to end the
/// program and all it started (its stderr then ends, and its reader with
/// it); then its guard makes sure the supervisor is gone.
pub(super) struct Process {
    /// The supervisor's pid, for logs.
    pub(super) pid: u32,
    /// `None` once closed, which asks a persistent worker to exit.
    pub(super) stdin: Option<ChildStdin>,
    pub(super) stdout: BufReader<ChildStdout>,
    stderr: Arc<Stderr>,
    stderr_reader: Option<tokio::task::JoinHandle<()>>,
    /// Jobs it finished.
    pub(super) jobs: u64,
    /// Declared last, so dropped after the pipes above.
    child: Guard,
}

impl Process {
    /// Marks the start of a job: its stderr lines are logged with its id,
    /// and the lines kept for its error are its own.
    pub(super) fn begin(&self, job: &str) {
        let mut state = self.stderr.lock();
        state.job = Some(job.to_owned());
        state.tail.clear();
    }

    /// Waits for it to exit, then for its stderr to be read to the end
    /// (bounded: a process it left behind may hold stderr open); returns
    /// how it ended, as words.
    pub(super) async fn exit_status(&mut self) -> Result<std::process::ExitStatus, String> {
        let status = self.child.wait().await.map_err(|e| e.to_string());
        self.child.exited = status.is_ok();
        self.stderr_read(Duration::from_millis(500)).await;
        status
    }

    /// How it ended, if it has, as words; `None` while it runs. Does not
    /// wait.
    pub(super) fn ended(&mut self) -> Option<String> {
        let status = self.child.child.as_mut()?.try_wait().ok()??;
        self.child.exited = true;
        Some(status.to_string())
    }

    /// Gives the stderr reader up to `within` to reach the end of stderr.
    pub(super) async fn stderr_read(&mut self, within: Duration) {
        if let Some(reader) = self.stderr_reader.as_mut() {
            if tokio::time::timeout(within, reader).await.is_ok() {
                self.stderr_reader = None;
            }
        }
    }

    /// The last stderr lines of the current job, joined, for an error.
    pub(super) fn stderr_tail(&self) -> String {
        let state = self.stderr.lock();
        state.tail.iter().cloned().collect::<Vec<_>>().join(" | ")
    }

    /// Closes stdin and gives it `within` to exit; then lets it go (what
    /// it leaves behind goes too).
    pub(super) async fn close(mut self, within: Duration) {
        self.stdin = None;
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(Ok(status)) => {
                self.child.exited = true;
                tracing::debug!(pid = self.pid, %status, "worker process exited");
            }
            Ok(Err(e)) => {
                tracing::warn!(pid = self.pid, error = %e, "waiting for a worker process")
            }
            Err(_) => tracing::warn!(
                pid = self.pid,
                "worker process still running after its stdin was closed; killed"
            ),
        }
        self.stderr_read(Duration::from_millis(100)).await;
        // `self` drops here: the supervisor ends what is left.
    }
}

/// The supervisor's process. Dropped while it runs (the pipes are closed
/// by then, so it is ending the worker), it is given [`LET_GO_GRACE`] to
/// exit, then its process group is killed: a supervisor that does not
/// answer is not left to run.
struct Guard {
    child: Option<Child>,
    pid: u32,
    /// It was seen to exit.
    exited: bool,
}

impl Guard {
    async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        match self.child.as_mut() {
            Some(child) => child.wait().await,
            None => Err(std::io::ErrorKind::NotFound.into()),
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if self.exited {
            return;
        }
        let group = rustix::process::Pid::from_raw(self.pid as i32);
        let kill = move || {
            if let Some(group) = group {
                // ESRCH: the group is gone already; EPERM: it runs as
                // another user, and its supervisor is what ends it.
                let _gone =
                    rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if tokio::time::timeout(LET_GO_GRACE, child.wait()).await.is_err() {
                        tracing::warn!(pid = group.map(|p| p.as_raw_nonzero().get()), "a worker's supervisor did not end it in time; its process group is killed");
                        kill();
                    }
                });
            }
            Err(_) => kill(),
        }
    }
}

/// What the stderr reader shares with the process's user.
#[derive(Default)]
struct Stderr(Mutex<StderrState>);

#[derive(Default)]
struct StderrState {
    /// The job the process runs, if any.
    job: Option<String>,
    /// Its last lines.
    tail: VecDeque<String>,
}

impl Stderr {
    fn lock(&self) -> std::sync::MutexGuard<'_, StderrState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Logs each stderr line with the job the process is running, keeping the
/// last few for the job's error. Reads all the time, so a process never
/// blocks on a full stderr pipe; memory stays bounded whatever it writes.
async fn log_stderr(
    stderr: tokio::process::ChildStderr,
    shared: Arc<Stderr>,
    queue: Arc<str>,
    pid: u32,
) {
    let mut reader = BufReader::with_capacity(8192, stderr);
    let mut buf = Vec::with_capacity(256);
    let mut window = Instant::now();
    let mut logged = 0u32;
    let mut unlogged = 0u64;
    loop {
        let line = match read_line(&mut reader, &mut buf, MAX_STDERR_LINE, true).await {
            Ok(Line::Eof) if buf.is_empty() => break,
            Ok(how) => how,
            Err(e) => {
                tracing::debug!(queue = %queue, pid, error = %e, "reading a worker's stderr");
                break;
            }
        };
        let mut text = String::from_utf8_lossy(&buf)
            .trim_end_matches('\r')
            .to_owned();
        if line == Line::TooLong {
            text.push_str("...");
        }
        let job = {
            let mut state = shared.lock();
            if state.tail.len() == TAIL_LINES {
                state.tail.pop_front();
            }
            state.tail.push_back(text.clone());
            state.job.clone()
        };
        if window.elapsed() >= Duration::from_secs(1) {
            if unlogged > 0 {
                tracing::warn!(queue = %queue, pid, lines = unlogged, "worker flooded stderr; lines not logged");
            }
            window = Instant::now();
            logged = 0;
            unlogged = 0;
        }
        if logged < STDERR_LINES_PER_SECOND {
            logged += 1;
            tracing::info!(queue = %queue, id = job.as_deref().unwrap_or("-"), pid, line = %text, "worker stderr");
        } else {
            unlogged += 1;
        }
        if line == Line::Eof {
            break;
        }
    }
    if unlogged > 0 {
        tracing::warn!(queue = %queue, pid, lines = unlogged, "worker flooded stderr; lines not logged");
    }
}
