//! Capped exponential retry for Redis outages, with logging that says once
//! that Redis is gone and once that it is back, not once per try.

use std::fmt::Display;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(5);

/// Whether an error's text is Redis refusing the credentials or a
/// permission: the protocol's own error codes.
fn is_denial(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    ["noperm", "wrongpass", "noauth", "authenticationfailed"]
        .iter()
        .any(|code| text.contains(code))
}

/// Retry state of one component's Redis calls.
#[derive(Debug)]
pub(crate) struct Retry {
    what: &'static str,
    delay: Duration,
    failures: u32,
    since: Option<Instant>,
}

impl Retry {
    /// `what` names the operation in log lines ("fetching jobs").
    pub(crate) fn new(what: &'static str) -> Self {
        Self {
            what,
            delay: FIRST_DELAY,
            failures: 0,
            since: None,
        }
    }

    /// Logs a failure and waits before the next try: 100ms, doubling, capped
    /// at 5s, with jitter. Returns false if `cancel` fired during the wait.
    pub(crate) async fn wait(
        &mut self,
        error: &(dyn Display + Sync),
        cancel: &CancellationToken,
    ) -> bool {
        self.failures += 1;
        let delay = self.delay.mul_f64(0.75 + fastrand::f64() / 2.0);
        if self.failures == 1 {
            self.since = Some(Instant::now());
            if is_denial(&error.to_string()) {
                tracing::error!(
                    %error,
                    "{} refused by Redis: the credentials or the ACL user's permissions \
                     (conveyor check names what is missing); retrying",
                    self.what
                );
            } else {
                tracing::warn!(%error, "{} failed; retrying (Redis unreachable?)", self.what);
            }
        } else {
            tracing::debug!(%error, failures = self.failures, "{} failed again", self.what);
        }
        self.delay = (self.delay * 2).min(MAX_DELAY);
        tokio::select! {
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }

    /// Notes a success; logs the recovery if there was an outage.
    pub(crate) fn succeeded(&mut self) {
        if self.failures > 0 {
            let down = self.since.map(|s| s.elapsed()).unwrap_or_default();
            tracing::info!(
                failures = self.failures,
                "{} works again after {:.1}s",
                self.what,
                down.as_secs_f64()
            );
        }
        self.failures = 0;
        self.delay = FIRST_DELAY;
        self.since = None;
    }

    /// Failed tries since the last success.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }
}
