//! `exec`: the user's own program, in any language, runs each job.
//!
//! ```toml
//! [queues.thumbs]
//! handler = "exec"
//! concurrency = 4                # = worker processes in persistent mode
//! [queues.thumbs.exec]
//! command = ["python3", "workers/thumbs.py"]   # argv, never a shell
//! mode = "persistent"            # or "oneshot"
//! cwd = "."                      # default: the config file's directory
//! env = { THUMB_DIR = "/var/lib/thumbs" }
//! pass_env = ["AWS_REGION"]
//! max_jobs_per_process = 0       # persistent: replace a process after this many jobs
//! user = "conveyor-worker"       # run as this user (and its group), not the daemon's
//! group = "conveyor-worker"      # default: the user's own group
//! ```
//!
//! `[exec] user` and `group` (a table of the configuration's own) are the
//! default of every exec queue; the package sets `conveyor-worker` there.
//!
//! Each run gets one request line on stdin: `{"id", "queue", "attempt",
//! "payload"}` (`attempt` counts this run, from 1). In persistent mode
//! (`pool.rs`) a process answers each request with one reply line; in
//! oneshot mode (`oneshot.rs`) a process per job answers with its exit
//! status. The protocol is in `protocol.rs`.
//!
//! No shell ever runs: the program is started from its argv, resolved to an
//! absolute path when the handler is built (a missing or non-executable
//! program is a configuration error, exit 78), and the payload is data on
//! stdin, never an argument. The environment is PATH, HOME and LANG, then
//! `env`, then the `pass_env` names; never the daemon's own secrets, which
//! `pass_env` refuses to name.
//!
//! Every worker runs under a supervisor (`supervisor.rs`, the same binary)
//! that takes the worker's user and ends every process the program
//! started when the program exits, the job lets it go, or the daemon dies.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use super::{CheckError, Handler, HandlerContext};
use crate::config::ConfigError;
use crate::job::{HandlerError, Job};

mod oneshot;
mod pool;
mod process;
mod protocol;
mod settle;
pub(crate) mod supervisor;
mod user;

use pool::Pool;
use process::Spec;

/// PATH of a worker when the daemon has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// `max_jobs_per_process`: 0 (never replace), or this many jobs at most.
const MAX_JOBS_PER_PROCESS: std::ops::RangeInclusive<u64> = 0..=1_000_000_000;

/// How long a persistent worker just started is watched at least
/// (`conveyor check`, and the daemon's look at its new processes)...
const CHECK_WATCH: Duration = Duration::from_millis(500);

/// ...and at most, while it is still starting (`settle.rs`).
const CHECK_SETTLE: Duration = Duration::from_secs(15);

/// `[queues.<q>.exec]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    command: Vec<String>,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    cwd: Option<PathBuf>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    pass_env: Vec<String>,
    #[serde(default)]
    max_jobs_per_process: u64,
    /// Run as this user (a name or a uid), not the daemon's.
    #[serde(default)]
    user: Option<String>,
    /// Run with this group (a name or a gid); default: the user's own.
    #[serde(default)]
    group: Option<String>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    #[default]
    Persistent,
    Oneshot,
}

/// Runs jobs through the queue's program.
pub(crate) struct Exec {
    spec: Spec,
    kind: Kind,
}

enum Kind {
    Persistent(Arc<Pool>),
    Oneshot,
}

/// Builds the `exec` handler of a queue from `[queues.<q>.exec]`, its
/// workers supervised by this very program (which [`crate::main_with`]
/// makes able to).
pub(crate) fn build(ctx: &HandlerContext<'_>) -> Result<Arc<dyn Handler>, ConfigError> {
    static THIS_PROGRAM: LazyLock<Result<Supervisor, String>> = LazyLock::new(|| {
        std::env::current_exe()
            .map(Supervisor::new)
            .map_err(|e| format!("cannot find this program to supervise exec workers: {e}"))
    });
    match &*THIS_PROGRAM {
        Ok(supervisor) => build_with(ctx, supervisor),
        Err(e) => Err(ConfigError::Invalid(format!("{}: {e}", ctx.options_path()))),
    }
}

/// The `exec` factory for a program that runs the daemon without
/// [`crate::main_with`] (through [`crate::daemon::run`]): `program` is a
/// `conveyor` binary, which supervises the workers.
///
/// ```no_run
/// let mut registry = conveyor::Registry::builtin();
/// registry.register("exec", conveyor::handlers::exec::factory("/usr/bin/conveyor".into()));
/// ```
pub fn factory(
    program: PathBuf,
) -> impl Fn(&HandlerContext<'_>) -> Result<Arc<dyn Handler>, ConfigError> + Send + Sync + 'static {
    let supervisor = Supervisor::new(program);
    move |ctx| build_with(ctx, &supervisor)
}

/// The binary that supervises the workers, checked once to answer as one.
struct Supervisor {
    program: Arc<Path>,
    checked: OnceLock<Result<(), String>>,
}

impl Supervisor {
    fn new(program: PathBuf) -> Self {
        Self {
            program: program.into(),
            checked: OnceLock::new(),
        }
    }

    /// Asks the program whether it is a supervisor: anything else would be
    /// started with arguments it does not understand for every worker.
    fn check(&self) -> Result<&Arc<Path>, String> {
        let asked = self.checked.get_or_init(|| {
            let out = std::process::Command::new(&*self.program)
                .args([supervisor::FLAG, supervisor::PROBE])
                .env_clear()
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .output()
                .map_err(|e| format!("cannot run {}: {e}", self.program.display()))?;
            match String::from_utf8_lossy(&out.stdout).trim() == supervisor::PROBE_REPLY {
                true => Ok(()),
                false => Err(format!(
                    "{} does not supervise exec workers: a program that runs the daemon \
                     without conveyor::main_with registers conveyor::handlers::exec::factory \
                     with a conveyor binary",
                    self.program.display()
                )),
            }
        });
        asked.as_ref().map(|()| &self.program).map_err(Clone::clone)
    }
}

fn build_with(
    ctx: &HandlerContext<'_>,
    supervisor: &Supervisor,
) -> Result<Arc<dyn Handler>, ConfigError> {
    let options: Options = ctx.options()?;
    let supervisor = supervisor
        .check()
        .map_err(|e| ConfigError::Invalid(format!("{}: {e}", ctx.options_path())))?;
    let spec = spec(ctx, &options, &|name| std::env::var(name).ok(), supervisor)?;
    let kind = match options.mode {
        Mode::Persistent => Kind::Persistent(Arc::new(Pool::new(
            spec.clone(),
            ctx.queue_config().concurrency as usize,
            options.max_jobs_per_process,
        ))),
        Mode::Oneshot => Kind::Oneshot,
    };
    Ok(Arc::new(Exec { spec, kind }))
}

/// Reads and checks the options into how to start the program; `env`
/// looks up the daemon's environment.
fn spec(
    ctx: &HandlerContext<'_>,
    options: &Options,
    env: &dyn Fn(&str) -> Option<String>,
    supervisor: &Arc<Path>,
) -> Result<Spec, ConfigError> {
    let at = ctx.options_path();
    let invalid = |field: &str, msg: String| ConfigError::Invalid(format!("{at}.{field}: {msg}"));
    crate::config::bounds::number(
        &format!("{at}.max_jobs_per_process"),
        options.max_jobs_per_process,
        &MAX_JOBS_PER_PROCESS,
    )?;
    if options.mode == Mode::Oneshot && options.max_jobs_per_process != 0 {
        return Err(invalid(
            "max_jobs_per_process",
            "applies to persistent mode only; a oneshot process runs one job".into(),
        ));
    }
    let Some((program, args)) = options.command.split_first() else {
        return Err(invalid(
            "command",
            "must name a program: command = [\"python3\", \"worker.py\"]".into(),
        ));
    };
    let base = &ctx.config().dir;
    let cwd = match &options.cwd {
        Some(cwd) => base.join(cwd),
        None => base.clone(),
    };
    let cwd = if cwd.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        cwd
    };
    if !cwd.is_dir() {
        return Err(invalid(
            "cwd",
            format!("{} is not a directory", cwd.display()),
        ));
    }
    for name in &options.pass_env {
        if is_daemon_secret(name) {
            return Err(invalid(
                "pass_env",
                format!(
                    "{name} is the daemon's own setting or secret and is never passed to a worker"
                ),
            ));
        }
    }
    let worker = user::resolve(
        options.user.as_deref(),
        options.group.as_deref(),
        &ctx.settings_of("exec")?,
        &at,
    )?;
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    vars.insert(
        "PATH".into(),
        env("PATH").unwrap_or_else(|| DEFAULT_PATH.into()),
    );
    let home = match &worker {
        Some(worker) => worker.home.clone(),
        None => env("HOME"),
    };
    if let Some(home) = home {
        vars.insert("HOME".into(), home);
    }
    vars.insert(
        "LANG".into(),
        env("LANG").unwrap_or_else(|| "C.UTF-8".into()),
    );
    vars.extend(options.env.clone());
    for name in &options.pass_env {
        if let Some(value) = env(name) {
            vars.insert(name.clone(), value);
        }
    }
    let program =
        resolve(program, base, &cwd, &vars["PATH"]).map_err(|msg| invalid("command", msg))?;
    Ok(Spec {
        queue: ctx.queue().into(),
        program,
        args: args.to_vec(),
        cwd,
        env: vars.into_iter().collect(),
        supervisor: supervisor.clone(),
        runs_as: worker.as_ref().map(|w| w.name.clone()),
        ids: worker.map(|w| w.ids),
    })
}

/// Variables the daemon reads its own settings and secrets from: never
/// handed to a worker.
fn is_daemon_secret(name: &str) -> bool {
    name.starts_with("CONVEYOR_")
        || name.starts_with("REDIS_")
        || name == "CREDENTIALS_DIRECTORY"
        || name == "NOTIFY_SOCKET"
}

/// The program as an absolute path: a name with a `/` is relative to the
/// config file's directory, one without is looked up in the worker's PATH.
fn resolve(program: &str, base: &Path, cwd: &Path, path: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt as _;
    if program.contains('/') {
        let full = base.join(program);
        let meta = std::fs::metadata(&full)
            .map_err(|e| format!("program {} cannot be used: {e}", full.display()))?;
        if !meta.is_file() {
            return Err(format!("program {} is not a file", full.display()));
        }
        if meta.permissions().mode() & 0o111 == 0 {
            return Err(format!(
                "program {} is not executable (chmod +x it, or name its interpreter first)",
                full.display()
            ));
        }
        return std::path::absolute(&full).map_err(|e| e.to_string());
    }
    which::which_in(program, Some(path), cwd)
        .map_err(|_| format!("program {program:?} is not found in PATH ({path})"))
}

#[async_trait]
impl Handler for Exec {
    async fn handle(&self, job: &Job) -> Result<(), HandlerError> {
        match &self.kind {
            Kind::Persistent(pool) => pool.run(job).await,
            Kind::Oneshot => oneshot::run(&self.spec, job).await,
        }
    }

    /// A persistent worker is started and watched until it waits for jobs
    /// (`settle.rs`): one that exits at start (a typo in a script's path,
    /// an import that fails), however slowly it starts, is reported with
    /// its stderr.
    async fn check(&self, report: &mut (dyn FnMut(String) + Send)) -> Result<(), CheckError> {
        let command = std::iter::once(self.spec.program.display().to_string())
            .chain(self.spec.args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ");
        let user = match &self.spec.runs_as {
            Some(name) => format!(", as {name}"),
            None => String::new(),
        };
        let mode = match &self.kind {
            Kind::Persistent(_) => "persistent",
            Kind::Oneshot => {
                report(format!(
                    "exec {}: ok ({command}, oneshot{user})",
                    self.spec.queue
                ));
                return Ok(());
            }
        };
        // A worker that cannot start or exits at once is the configuration's
        // to fix (exit 78); only a lack of resources may pass by itself.
        let mut process = self.spec.spawn().map_err(|e| {
            let why = format!("exec {}: cannot start {command}: {e}", self.spec.queue);
            match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                    CheckError::Refused(why)
                }
                _ => CheckError::Unavailable(why),
            }
        })?;
        let how =
            match settle::watch(process.pid, CHECK_WATCH, CHECK_SETTLE, || process.ended()).await {
                settle::Start::Exited(status) => {
                    process.stderr_read(Duration::from_millis(500)).await;
                    return Err(CheckError::Refused(format!(
                        "exec {}: {command} exited at start ({status}); stderr: {}",
                        self.spec.queue,
                        process.stderr_tail()
                    )));
                }
                settle::Start::Settled(after) => {
                    format!(
                        "started, waiting for jobs after {:.1}s",
                        after.as_secs_f64()
                    )
                }
                settle::Start::Busy => format!(
                    "started, still running after {}s, not yet waiting for jobs",
                    CHECK_SETTLE.as_secs()
                ),
            };
        process.close(Duration::from_secs(2)).await;
        report(format!(
            "exec {}: ok ({command}, {mode}{user}, {how})",
            self.spec.queue
        ));
        Ok(())
    }

    async fn start(&self) {
        if let Kind::Persistent(pool) = &self.kind {
            pool.start(CHECK_WATCH, CHECK_SETTLE);
        }
    }

    async fn shutdown(&self, within: Duration) {
        if let Kind::Persistent(pool) = &self.kind {
            pool.shutdown(within).await;
        }
    }
}
