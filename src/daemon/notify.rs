//! What the daemon tells systemd (`sd_notify`): readiness, a status line for
//! `systemctl status`, that it is stopping, watchdog pets, and how much longer
//! a stop may take.
//!
//! Every function here does nothing unless systemd started the daemon with
//! a notification socket (`NOTIFY_SOCKET`), so the supervisor calls them
//! unconditionally. A failed send is logged once as a warning: it usually
//! means the unit forbids `AF_UNIX` sockets, and then systemd never hears
//! `READY=1` and kills the start after `TimeoutStartSec`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;

/// Set after the first failed send, so that a broken socket is reported
/// once and not on every watchdog tick.
static SEND_FAILED: AtomicBool = AtomicBool::new(false);

/// Whether systemd listens: everything below is a no-op otherwise.
pub(crate) fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty())
}

/// The watchdog timeout systemd expects pets within (`WatchdogSec=`, passed
/// as `WATCHDOG_USEC`), if it runs one for this process.
pub(crate) fn watchdog_timeout() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|t| !t.is_zero())
}

/// Start-up is complete: Redis answered and the workers run.
pub(crate) fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(&one_line(status))]);
}

/// The daemon is re-reading its configuration (`systemctl reload`):
/// systemd waits for the `READY=1` that ends it.
pub(crate) fn reloading(status: &str) {
    let mut states = vec![NotifyState::Reloading, NotifyState::Status(status)];
    // systemd matches the reload to its request by this time; without it a
    // Type=notify-reload unit fails the reload.
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    send(&states);
}

/// Replaces the line `systemctl status` shows.
pub(crate) fn status(status: &str) {
    send(&[NotifyState::Status(&one_line(status))]);
}

/// The daemon is shutting down. `may_take` is the longest the rest of the
/// stop can last; systemd waits that long even when `TimeoutStopSec` is
/// shorter (it never shortens a longer `TimeoutStopSec`).
pub(crate) fn stopping(status: &str, may_take: Duration) {
    let usec = u32::try_from(may_take.as_micros()).unwrap_or(u32::MAX);
    send(&[
        NotifyState::Stopping,
        NotifyState::Status(&one_line(status)),
        NotifyState::ExtendTimeoutUsec(usec),
    ]);
}

/// The daemon is alive and making progress: pets the watchdog and
/// replaces the status line, in one datagram.
pub(crate) fn alive(status: &str) {
    send(&[
        NotifyState::Watchdog,
        NotifyState::Status(&one_line(status)),
    ]);
}

fn send(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        if SEND_FAILED.swap(true, Ordering::Relaxed) {
            tracing::debug!(error = %e, "systemd notification failed again");
        } else {
            tracing::warn!(
                error = %e,
                "cannot notify systemd through NOTIFY_SOCKET (does the unit allow AF_UNIX?); \
                 readiness and watchdog pets are lost"
            );
        }
    }
}

/// A status is one line: systemd ends a field at a newline.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_is_one_line() {
        assert_eq!(
            one_line("waiting for Redis:\n  refused\r\n"),
            "waiting for Redis: refused"
        );
    }
}
