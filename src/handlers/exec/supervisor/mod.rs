//! The supervisor between the daemon and each worker process: the same
//! binary, started as `<conveyor> --conveyor-exec-supervisor [ids] --
//! PROGRAM ARGS...`, which starts the program and makes sure that nothing
//! the program started outlives it, the job or the daemon.
//!
//! A process group alone does not do that: a descendant that calls
//! `setsid()` leaves it, one that a oneshot program leaves behind keeps
//! running after the job's success, and when the daemon is SIGKILLed
//! nothing kills the groups at all, so a recovered job would run again
//! beside the orphans of its first run. The supervisor is a child
//! subreaper (every descendant that loses its parent becomes its child, so
//! it can always find them all) and ends all of them, with SIGKILL:
//! - when the program exits (its status is then the supervisor's own);
//! - when the daemon lets the worker go or dies: the daemon holds the only
//!   read end of the worker's stdout, the supervisor polls its write end,
//!   and the kernel reports an error there once no reader is left, however
//!   the daemon went (no signal, no thread, no timer involved);
//! - when the supervisor itself is told to stop (SIGTERM, SIGINT, SIGHUP).
//!
//! It also switches to the queue's worker user (`[queues.<q>.exec] user`)
//! before the program starts, then drops every capability (those that let
//! the daemon switch included), and makes itself non-dumpable, so the
//! program (same user) can neither trace it nor read its memory.

use std::ffi::OsString;
use std::io::Read as _;
use std::os::fd::AsFd as _;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

use rustix::event::{PollFd, PollFlags, poll};
use rustix::process::{Pid, Signal, WaitStatus};

mod tree;

use tree::{end_descendants, reap};

/// The first argument that makes the binary a supervisor.
pub(crate) const FLAG: &str = "--conveyor-exec-supervisor";
/// Gives the program this soft limit on open files (the daemon's own was
/// raised; the one it started with is the workers').
pub(crate) const OPEN_FILES: &str = "--open-files";
/// Asks a binary whether it is one: it prints [`PROBE_REPLY`].
pub(crate) const PROBE: &str = "--probe";
pub(crate) const PROBE_REPLY: &str = "conveyor exec supervisor 1";

/// The exit status when the program cannot be started (or the user not
/// taken): EX_TEMPFAIL, a transient failure, with the reason on stderr.
const EX_TEMPFAIL: u8 = 75;

/// The credentials a worker runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ids {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// Supplementary groups.
    pub(crate) groups: Vec<u32>,
}

impl Ids {
    /// The supervisor's arguments that carry them.
    pub(crate) fn args(&self) -> Vec<String> {
        let groups = self
            .groups
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        vec![
            "--uid".into(),
            self.uid.to_string(),
            "--gid".into(),
            self.gid.to_string(),
            "--groups".into(),
            groups,
        ]
    }
}

/// Runs the supervisor if the command line asks for it (the binary's first
/// argument is [`FLAG`]); `None` otherwise. Called first thing by
/// [`crate::main_with`], before logging or a runtime exist.
pub(crate) fn main_if_asked() -> Option<ExitCode> {
    let mut args = std::env::args_os().skip(1);
    if args.next()? != FLAG {
        return None;
    }
    Some(match Plan::parse(args) {
        Ok(Plan::Probe) => {
            println!("{PROBE_REPLY}");
            ExitCode::SUCCESS
        }
        Ok(Plan::Run {
            ids,
            open_files,
            program,
        }) => supervise(ids.as_ref(), open_files, &program),
        Err(e) => {
            eprintln!("conveyor exec supervisor: {e}");
            ExitCode::from(EX_TEMPFAIL)
        }
    })
}

enum Plan {
    Probe,
    Run {
        ids: Option<Ids>,
        /// The soft limit on open files to give the program.
        open_files: Option<u64>,
        program: Vec<OsString>,
    },
}

impl Plan {
    fn parse(mut args: impl Iterator<Item = OsString>) -> Result<Self, String> {
        let (mut uid, mut gid, mut groups, mut open_files) = (None, None, Vec::new(), None);
        let number = |v: Option<OsString>, what: &str| -> Result<u64, String> {
            v.and_then(|v| v.to_str()?.parse().ok())
                .ok_or_else(|| format!("{what} needs a number"))
        };
        loop {
            let Some(arg) = args.next() else {
                return Err("no program given".into());
            };
            match arg.to_str() {
                Some(PROBE) => return Ok(Plan::Probe),
                Some("--uid") => uid = Some(id(number(args.next(), "--uid")?)?),
                Some("--gid") => gid = Some(id(number(args.next(), "--gid")?)?),
                Some(OPEN_FILES) => open_files = Some(number(args.next(), OPEN_FILES)?),
                Some("--groups") => {
                    let list = args.next().ok_or("--groups needs a list")?;
                    let list = list.to_str().ok_or("--groups needs numbers")?;
                    groups = list
                        .split(',')
                        .filter(|g| !g.is_empty())
                        .map(|g| g.parse().map_err(|_| format!("bad group {g:?}")))
                        .collect::<Result<_, _>>()?;
                }
                Some("--") => break,
                _ => return Err(format!("unknown argument {arg:?}")),
            }
        }
        let program: Vec<OsString> = args.collect();
        if program.is_empty() {
            return Err("no program given".into());
        }
        let ids = match (uid, gid) {
            (Some(uid), Some(gid)) => Some(Ids { uid, gid, groups }),
            (None, None) => None,
            _ => return Err("--uid and --gid go together".into()),
        };
        Ok(Plan::Run {
            ids,
            open_files,
            program,
        })
    }
}

fn id(n: u64) -> Result<u32, String> {
    u32::try_from(n).map_err(|_| format!("{n} is not an id"))
}

/// Takes the worker's credentials, starts the program and watches it.
fn supervise(ids: Option<&Ids>, open_files: Option<u64>, program: &[OsString]) -> ExitCode {
    if let Err(e) = prepare(ids, open_files) {
        eprintln!("conveyor exec supervisor: {e}");
        return ExitCode::from(EX_TEMPFAIL);
    }
    let signals = match Signals::register() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("conveyor exec supervisor: cannot watch signals: {e}");
            return ExitCode::from(EX_TEMPFAIL);
        }
    };
    // stdin, stdout, stderr, the working directory and the environment are
    // the supervisor's own, which the daemon set up for the program.
    let child = match std::process::Command::new(&program[0])
        .args(&program[1..])
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            eprintln!(
                "cannot start the worker program {}: {e}",
                std::path::Path::new(&program[0]).display()
            );
            return ExitCode::from(EX_TEMPFAIL);
        }
    };
    let pid = Pid::from_child(&child);
    // The child is reaped below by waitpid, never through `child`.
    drop(child);
    // The program holds the request pipe now; the supervisor lets go of
    // it, so that once the program is gone a request written to the pipe
    // fails at once (no reader is left) instead of waiting for the
    // supervisor's own exit: the daemon then knows the request was not
    // delivered and gives the job to a new worker.
    if let Err(e) = std::fs::File::open("/dev/null")
        .and_then(|null| rustix::stdio::dup2_stdin(&null).map_err(std::io::Error::from))
    {
        eprintln!("conveyor exec supervisor: cannot let go of the request pipe: {e}");
    }
    match watch(pid, &signals) {
        End::Exited(status) => {
            end_descendants();
            exit_like(status)
        }
        End::LetGo => {
            end_descendants();
            die_by(Signal::KILL.as_raw())
        }
        End::Told(signal) => {
            end_descendants();
            die_by(signal)
        }
    }
}

/// The worker's credentials and limits, taken before the program exists;
/// then the supervisor is made a subreaper and non-dumpable.
fn prepare(ids: Option<&Ids>, open_files: Option<u64>) -> Result<(), String> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    use rustix::thread::{
        clear_ambient_capability_set, set_thread_groups, set_thread_res_gid, set_thread_res_uid,
    };
    if let Some(soft) = open_files {
        let Rlimit { maximum, .. } = getrlimit(Resource::Nofile);
        let current = Some(maximum.map_or(soft, |hard| soft.min(hard)));
        setrlimit(Resource::Nofile, Rlimit { current, maximum })
            .map_err(|e| format!("cannot set the open files limit to {soft}: {e}"))?;
    }
    if let Some(ids) = ids {
        // One thread here: the per-thread calls are the process's.
        let groups: Vec<_> = ids
            .groups
            .iter()
            .map(|g| rustix::process::Gid::from_raw(*g))
            .collect();
        let gid = rustix::process::Gid::from_raw(ids.gid);
        let uid = rustix::process::Uid::from_raw(ids.uid);
        set_thread_groups(&groups).map_err(|e| format!("cannot set the groups: {e}"))?;
        set_thread_res_gid(gid, gid, gid).map_err(|e| format!("cannot take gid {gid:?}: {e}"))?;
        set_thread_res_uid(uid, uid, uid).map_err(|e| format!("cannot take uid {uid:?}: {e}"))?;
    }
    // Capabilities the daemon holds to switch users must not reach the
    // program: ambient ones would survive its exec, and inheritable ones
    // (systemd puts the ambient ones there too) would be granted to a
    // program file that carries them. The supervisor needs none either.
    // (EINVAL: a kernel without ambient capabilities, which then has none
    // to pass on.)
    match clear_ambient_capability_set() {
        Ok(()) | Err(rustix::io::Errno::INVAL) => {}
        Err(e) => return Err(format!("cannot clear the ambient capabilities: {e}")),
    }
    let none = rustix::thread::CapabilitySets {
        effective: rustix::thread::CapabilitySet::empty(),
        permitted: rustix::thread::CapabilitySet::empty(),
        inheritable: rustix::thread::CapabilitySet::empty(),
    };
    let held = rustix::thread::capabilities(None)
        .map_err(|e| format!("cannot read the capabilities: {e}"))?;
    if held != none {
        rustix::thread::set_capabilities(None, none)
            .map_err(|e| format!("cannot drop the capabilities: {e}"))?;
    }
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(|e| format!("cannot make the supervisor non-dumpable: {e}"))?;
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .map_err(|e| format!("cannot become a child subreaper: {e}"))?;
    Ok(())
}

/// How the watch ended.
enum End {
    /// The program exited (by itself or by a signal).
    Exited(WaitStatus),
    /// The daemon let the worker go, or died.
    LetGo,
    /// The supervisor got this terminating signal.
    Told(i32),
}

/// Signals that end the supervisor, and SIGCHLD, each on its own socket.
struct Signals {
    child: UnixStream,
    terminate: Vec<(i32, UnixStream)>,
}

impl Signals {
    fn register() -> std::io::Result<Self> {
        let watch = |signal: i32| -> std::io::Result<UnixStream> {
            let (read, write) = UnixStream::pair()?;
            write.set_nonblocking(true)?;
            read.set_nonblocking(true)?;
            signal_hook::low_level::pipe::register(signal, write)?;
            Ok(read)
        };
        let terminate = [
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGHUP,
        ]
        .into_iter()
        .map(|s| Ok((s, watch(s)?)))
        .collect::<std::io::Result<_>>()?;
        Ok(Self {
            child: watch(signal_hook::consts::SIGCHLD)?,
            terminate,
        })
    }
}

/// Waits for the program to exit, the daemon to let go, or a signal.
fn watch(program: Pid, signals: &Signals) -> End {
    let stdout = std::io::stdout();
    loop {
        // Reaped before polling: the program may have exited before the
        // handler was in place to say so.
        if let Some(status) = reap(Some(program)) {
            return End::Exited(status);
        }
        let mut fds = vec![
            // No events asked: POLLERR (no reader left) and POLLHUP come anyway.
            PollFd::from_borrowed_fd(stdout.as_fd(), PollFlags::empty()),
            PollFd::new(&signals.child, PollFlags::IN),
        ];
        fds.extend(
            signals
                .terminate
                .iter()
                .map(|(_, s)| PollFd::new(s, PollFlags::IN)),
        );
        match poll(&mut fds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            // Polling cannot fail for these descriptors; if it does, the
            // supervisor cannot watch, so it ends the worker.
            Err(_) => return End::LetGo,
        }
        if fds[0]
            .revents()
            .intersects(PollFlags::ERR | PollFlags::HUP | PollFlags::NVAL)
        {
            return End::LetGo;
        }
        for (i, (signal, _)) in signals.terminate.iter().enumerate() {
            if !fds[2 + i].revents().is_empty() {
                return End::Told(*signal);
            }
        }
        if !fds[1].revents().is_empty() {
            drain(&signals.child);
        }
    }
}

fn drain(mut socket: &UnixStream) {
    let mut buf = [0u8; 64];
    while matches!(socket.read(&mut buf), Ok(n) if n > 0) {}
}

/// Exits as the program did: with its code, or killed by its signal.
fn exit_like(status: WaitStatus) -> ExitCode {
    if let Some(code) = status.exit_status() {
        return ExitCode::from(code as u8);
    }
    match status.terminating_signal() {
        Some(signal) => die_by(signal),
        None => ExitCode::from(EX_TEMPFAIL),
    }
}

/// Ends the supervisor by `signal`, as its default action would.
fn die_by(signal: i32) -> ExitCode {
    if let Err(e) = signal_hook::low_level::emulate_default_handler(signal) {
        eprintln!("conveyor exec supervisor: cannot end by signal {signal}: {e}");
    }
    // A signal whose default is to be ignored: say it the shell's way.
    ExitCode::from(128u8.wrapping_add(signal as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_read_back() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>().into_iter();
        let ids = Ids {
            uid: 1000,
            gid: 100,
            groups: vec![100, 27],
        };
        let mut line = ids.args();
        line.extend(["--".into(), "/bin/true".into(), "-x".into()]);
        let line: Vec<&str> = line.iter().map(String::as_str).collect();
        match Plan::parse(args(&line)) {
            Ok(Plan::Run {
                ids: Some(read),
                program,
                ..
            }) => {
                assert_eq!(read, ids);
                assert_eq!(program, vec![OsString::from("/bin/true"), "-x".into()]);
            }
            _ => panic!("not read back"),
        }
        assert!(matches!(Plan::parse(args(&["--probe"])), Ok(Plan::Probe)));
        assert!(Plan::parse(args(&["--uid", "1", "--", "x"])).is_err());
        assert!(Plan::parse(args(&["--"])).is_err());
        assert!(Plan::parse(args(&["--bogus"])).is_err());
    }
}
