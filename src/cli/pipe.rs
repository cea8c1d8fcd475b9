//! A command whose stdout is a pipe that its reader closed (`conveyor dead
//! list Q | head -1`) stops quietly, as Unix tools do, instead of panicking
//! ("failed printing to stdout") with exit 101.
//!
//! Rust ignores SIGPIPE, so a write to such a pipe fails with EPIPE:
//! `println!` panics on it, and a `write!` to stdout returns the error.
//! Both are caught in one place each, in [`crate::main_with`]: the panic
//! hook asks `is_closed_stdout_panic`, and a command's error
//! `is_closed_stdout`. Either way the command exits
//! [`EX_CLOSED_PIPE`] and prints nothing more.
//!
//! The exit code is 141, what a shell reports for a command killed by
//! SIGPIPE (128 + 13), as `ls | head -1` gives `ls` under `set -o
//! pipefail`: a script can tell that the command stopped early (a `check`
//! cut short did not check everything), and sysexits has no code for it.
//! The daemon (`run`, `web`) is not a command that prints: a handler's
//! `println!` there stays a panic that fails its job only.

use std::panic::PanicHookInfo;

/// The exit code of a command whose stdout was closed by its reader: 128 +
/// SIGPIPE, as a shell reports a command the signal killed.
pub(crate) const EX_CLOSED_PIPE: u8 = 141;

/// Whether a panic is `println!`'s on a closed stdout (EPIPE).
pub(crate) fn is_closed_stdout_panic(info: &PanicHookInfo<'_>) -> bool {
    let epipe = std::io::Error::from_raw_os_error(rustix::io::Errno::PIPE.raw_os_error());
    let payload = info.payload();
    let message = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied());
    message.is_some_and(|m| m == format!("failed printing to stdout: {epipe}"))
}

/// Whether a command failed writing to a closed stdout: its error is the
/// write's own (EPIPE), not one that carries an EPIPE among its causes (a
/// connection to Redis that broke is not a closed stdout).
pub(crate) fn is_closed_stdout(error: &anyhow::Error) -> bool {
    error.downcast_ref::<std::io::Error>().is_some_and(is_epipe)
}

/// Whether a write failed because the pipe's reader is gone.
pub(crate) fn is_epipe(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::BrokenPipe
}

/// Ends the process at once with [`EX_CLOSED_PIPE`], from the panic hook:
/// nothing more is printed, and no other thread goes on printing.
pub(crate) fn exit() -> ! {
    std::process::exit(i32::from(EX_CLOSED_PIPE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_write_error_of_its_own_is_a_closed_stdout() {
        let epipe = || std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        assert!(is_closed_stdout(&anyhow::Error::from(epipe())));
        assert!(is_closed_stdout(
            &anyhow::Error::from(epipe()).context("printing")
        ));
        let other = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert!(!is_closed_stdout(&anyhow::Error::from(other)));
        // A broken connection to Redis, say, carries EPIPE as a cause.
        #[derive(Debug, thiserror::Error)]
        #[error("Redis went away")]
        struct Lost(#[source] std::io::Error);
        assert!(!is_closed_stdout(&anyhow::Error::from(Lost(epipe()))));
    }
}
