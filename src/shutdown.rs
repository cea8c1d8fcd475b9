//! Stop controls of the daemon, and the signals that trip them.
//!
//! The daemon takes a [`Shutdown`] as a parameter: signals drive it in
//! production, tests cancel its tokens directly (the mini-redis pattern).
//! Signals (signal-hook) map as: SIGTERM or SIGINT -> `terminate`; a second
//! SIGINT -> `hurry` (skip the drain wait; jobs are still requeued);
//! SIGTSTP -> `quiet` (stop taking jobs, stay up), as Sidekiq does;
//! SIGHUP -> `reload` (read the configuration again and apply it).

use std::sync::Arc;

use futures::StreamExt as _;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGTSTP};
use signal_hook_tokio::Signals;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The daemon's three stop levels.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Stop taking new jobs; running ones finish. Tripped by SIGTSTP and by
    /// the start of a shutdown.
    pub quiet: CancellationToken,
    /// Shut down: stop taking jobs, drain within `shutdown_timeout`, requeue
    /// what is left, exit.
    pub terminate: CancellationToken,
    /// Stop waiting for running jobs now (they are still requeued).
    pub hurry: CancellationToken,
    /// Read the configuration again and apply it (SIGHUP).
    pub reload: Arc<Notify>,
}

impl Shutdown {
    /// Fresh, untripped controls.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a task that trips these controls on SIGTERM, SIGINT, SIGTSTP
    /// and SIGHUP.
    /// Registering replaces the default actions (so SIGTSTP no longer stops
    /// the process), which is why this is only called by `conveyor run`.
    pub fn listen_for_signals(&self) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let mut signals = Signals::new([SIGTERM, SIGINT, SIGTSTP, SIGHUP])?;
        let this = self.clone();
        Ok(tokio::spawn(async move {
            while let Some(signal) = signals.next().await {
                this.on_signal(signal);
            }
        }))
    }

    fn on_signal(&self, signal: i32) {
        match signal {
            SIGHUP => {
                tracing::info!("SIGHUP: reading the configuration again");
                self.reload.notify_one();
            }
            SIGTSTP => {
                tracing::info!(
                    "SIGTSTP: quiet, taking no new jobs; running jobs finish, the daemon stays up"
                );
                self.quiet.cancel();
            }
            SIGINT if self.terminate.is_cancelled() => {
                tracing::warn!("second SIGINT: not waiting for running jobs; requeueing them now");
                self.hurry.cancel();
            }
            SIGTERM if self.terminate.is_cancelled() => {
                tracing::info!("SIGTERM: already shutting down (a second SIGINT skips the wait)");
            }
            _ => {
                let name = if signal == SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                };
                tracing::info!("{name}: shutting down gracefully");
                self.terminate.cancel();
                self.quiet.cancel();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_signal_terminates_second_sigint_hurries() {
        let s = Shutdown::new();
        s.on_signal(SIGTERM);
        assert!(s.terminate.is_cancelled() && s.quiet.is_cancelled());
        assert!(!s.hurry.is_cancelled());
        s.on_signal(SIGTERM);
        assert!(!s.hurry.is_cancelled(), "a repeated SIGTERM does not hurry");
        s.on_signal(SIGINT);
        assert!(s.hurry.is_cancelled());
    }

    #[test]
    fn sigtstp_only_quiets() {
        let s = Shutdown::new();
        s.on_signal(SIGTSTP);
        assert!(s.quiet.is_cancelled());
        assert!(!s.terminate.is_cancelled());
    }
}
