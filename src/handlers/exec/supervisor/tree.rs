//! The supervisor's descendants: found from the parent ids in `/proc`,
//! killed and reaped. As a child subreaper it is the parent of every
//! descendant whose own parent died, so with the program gone, "no child
//! left" means "no descendant left".

use std::time::Duration;

use rustix::process::{Pid, Signal, WaitOptions, WaitStatus};

/// Rounds of "find the descendants, kill them, reap" before giving up on
/// processes that cannot be killed (another user's setuid program).
const KILL_ROUNDS: u32 = 200;

/// Reaps exited children without waiting: the status of `program` if it is
/// among them; other children (orphans handed to the subreaper) are reaped
/// and forgotten.
pub(super) fn reap(program: Option<Pid>) -> Option<WaitStatus> {
    loop {
        match rustix::process::wait(WaitOptions::NOHANG) {
            Ok(Some((pid, status))) if Some(pid) == program => return Some(status),
            Ok(Some(_)) => continue,
            // None: children, none exited; ECHILD: no children at all.
            Ok(None) | Err(_) => return None,
        }
    }
}

/// Whether the supervisor has any child left (exited or not): with the
/// program gone, every descendant that lives has been handed to it.
fn has_children() -> bool {
    !matches!(
        rustix::process::wait(WaitOptions::NOHANG),
        Err(rustix::io::Errno::CHILD)
    )
}

/// SIGKILLs every descendant and reaps them, in rounds, until none is left
/// (a process may fork between the search and the kill; its child is found
/// in the next round).
pub(super) fn end_descendants() {
    let me = rustix::process::getpid();
    for round in 0..KILL_ROUNDS {
        reap(None);
        if !has_children() {
            return;
        }
        if round % 10 == 0 {
            let mut killed = 0;
            for pid in descendants(me) {
                if rustix::process::kill_process(pid, Signal::KILL).is_ok() {
                    killed += 1;
                }
            }
            if killed == 0 && round > 0 {
                // Only processes it may not kill are left.
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Every process below `root`, from the parent ids in `/proc/<pid>/stat`.
fn descendants(root: Pid) -> Vec<Pid> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut parents: Vec<(i32, i32)> = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some(ppid) = parent_of(&stat) {
            parents.push((pid, ppid));
        }
    }
    let mut found = vec![root.as_raw_nonzero().get()];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, ppid)| *ppid == parent)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    found
        .into_iter()
        .skip(1)
        .filter_map(Pid::from_raw)
        .collect()
}

/// The parent id in a `/proc/<pid>/stat` line: `pid (comm) state ppid ...`,
/// where `comm` may hold spaces and parentheses, so the fields are read
/// after its last `)`.
fn parent_of(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_is_read_after_the_command_name() {
        assert_eq!(parent_of("42 (sh) S 7 42 42 0"), Some(7));
        assert_eq!(parent_of("42 (a) b) (c) R 9 1 1"), Some(9));
        assert_eq!(parent_of("42 (x"), None);
    }
}
