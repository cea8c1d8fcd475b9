//! Whether a worker has finished starting. A program may take a moment or
//! many seconds to start (an interpreter's version shim forks helpers
//! before it runs the interpreter, which only then finds its script
//! missing), and the protocol has no "ready" line. So the worker's process
//! tree is watched through `/proc`: it has settled when its supervisor has
//! one child (the program), that child has none, is asleep and spends no
//! CPU for a while. It is then waiting, for its first request: a program
//! that was going to fail at start has done so by then.

use std::time::{Duration, Instant};

/// How often the tree is looked at.
const TICK: Duration = Duration::from_millis(100);

/// How many looks in a row must find the program quiet.
const QUIET_LOOKS: u32 = 3;

/// How a watched start ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Start {
    /// It exited; how, as words.
    Exited(String),
    /// It is waiting for work, after this long.
    Settled(Duration),
    /// Still busy (or not to be seen through `/proc`) at the deadline, and
    /// still running.
    Busy,
}

/// Watches a start: for at least `least` (a program that exits at once does
/// so within it, even if it looks quiet before), then until the program is
/// quiet, it exits, or `most` has passed. `ended` says whether and how it
/// exited; `supervisor` is the pid of its supervisor.
pub(super) async fn watch(
    supervisor: u32,
    least: Duration,
    most: Duration,
    mut ended: impl FnMut() -> Option<String>,
) -> Start {
    let began = Instant::now();
    let mut last: Option<u64> = None;
    let mut quiet = 0;
    loop {
        if let Some(status) = ended() {
            return Start::Exited(status);
        }
        let elapsed = began.elapsed();
        if elapsed >= most {
            return Start::Busy;
        }
        match program(supervisor).and_then(idle_ticks) {
            Some(ticks) if last == Some(ticks) => quiet += 1,
            seen => {
                quiet = 0;
                last = seen;
            }
        }
        if quiet >= QUIET_LOOKS && elapsed >= least {
            return Start::Settled(elapsed);
        }
        tokio::time::sleep(TICK).await;
    }
}

/// The supervisor's only child, the program; `None` if it has none yet or
/// more than one.
fn program(supervisor: u32) -> Option<u32> {
    match children(supervisor)?.as_slice() {
        [only] => Some(*only),
        _ => None,
    }
}

/// The CPU time (clock ticks) of a process that is asleep and has no
/// children; `None` if it is running or has children, or if `/proc` does
/// not tell.
fn idle_ticks(pid: u32) -> Option<u64> {
    if !children(pid)?.is_empty() {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command's name, which may hold anything but ends with the
    // last ')': the state (field 3), then utime and stime (14 and 15).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    if *fields.first()? != "S" {
        return None;
    }
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some(user + system)
}

/// The children of every thread of a process; `None` if `/proc` does not
/// tell (the process is gone, or the kernel lists no children).
fn children(pid: u32) -> Option<Vec<u32>> {
    let mut all = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let list = std::fs::read_to_string(task.ok()?.path().join("children")).ok()?;
        all.extend(
            list.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    Some(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shell as the "supervisor", starting `script` as its only child.
    fn spawn(script: &str) -> std::process::Child {
        std::process::Command::new("sh")
            .args(["-c", &format!("{script} & wait")])
            .spawn()
            .unwrap()
    }

    // Each program ends by itself within seconds: killing the shell that
    // stands for the supervisor would leave it running.
    #[tokio::test]
    async fn a_program_waiting_for_input_settles_and_a_busy_one_does_not() {
        let mut waiting = spawn("sleep 3");
        let start = watch(waiting.id(), Duration::ZERO, Duration::from_secs(2), || {
            None
        })
        .await;
        assert!(matches!(start, Start::Settled(_)), "{start:?}");
        waiting.wait().unwrap();

        // A program that spins never looks quiet.
        let spin = "python3 -c 'import time\nend = time.time() + 2\nwhile time.time() < end: pass'";
        let mut busy = spawn(spin);
        let start = watch(busy.id(), Duration::ZERO, Duration::from_secs(1), || None).await;
        assert_eq!(start, Start::Busy);
        busy.wait().unwrap();

        // Nor a shim waiting for a helper it forked.
        let mut shim = spawn("sh -c 'sleep 2; true'");
        let start = watch(shim.id(), Duration::ZERO, Duration::from_secs(1), || None).await;
        assert_eq!(start, Start::Busy);
        shim.wait().unwrap();

        // One that exits is told as it ended, however quiet it was.
        let start = watch(1, Duration::ZERO, Duration::from_secs(1), || {
            Some("exit status: 2".into())
        })
        .await;
        assert_eq!(start, Start::Exited("exit status: 2".into()));
    }
}
