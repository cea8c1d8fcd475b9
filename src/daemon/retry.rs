//! Capped exponential retry for Redis outages, with logging that says once
//! that Redis is gone and once that it is back, not once per try.

use std::fmt::Display;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;

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
    /// When the outage began, for the log line that says it ended.
    since: Option<Instant>,
    /// What the waits are timed by.
    clock: Clock,
}

impl Retry {
    /// `what` names the operation in log lines ("fetching jobs"); the
    /// waits go by `clock`.
    pub(crate) fn new(what: &'static str, clock: &Clock) -> Self {
        Self {
            what,
            delay: FIRST_DELAY,
            failures: 0,
            since: None,
            clock: clock.clone(),
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
            _ = self.clock.sleep(delay) => true,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// How long a retry's `n`th wait lasted on a manual clock, to the
    /// millisecond: the clock is moved 1 ms at a time until it ends.
    async fn waited(retry: &mut Retry, clock: &Clock, n: u64) -> Duration {
        let cancel = CancellationToken::new();
        let wait = retry.wait(&"connection refused", &cancel);
        tokio::pin!(wait);
        assert!(futures::poll!(&mut wait).is_pending(), "did not wait");
        clock.asleep(n).await;
        let mut ms = 0;
        loop {
            clock.advance(Duration::from_millis(1));
            ms += 1;
            if let std::task::Poll::Ready(went_on) = futures::poll!(&mut wait) {
                assert!(went_on, "reported a cancel that did not happen");
                return Duration::from_millis(ms);
            }
            assert!(ms < 10_000, "a wait longer than the longest");
        }
    }

    #[tokio::test]
    async fn the_waits_double_from_100ms_to_5s_with_jitter_and_go_by_the_clock() {
        let clock = Clock::manual(0);
        let mut retry = Retry::new("testing", &clock);
        let mut sleeps = 0;
        for base in [100, 200, 400, 800, 1600, 3200, 5000, 5000] {
            sleeps += 1;
            let wait = waited(&mut retry, &clock, sleeps).await.as_millis();
            let (least, most) = (base * 3 / 4, base * 5 / 4);
            assert!(
                (least..=most).contains(&wait),
                "wait {sleeps}: {wait} ms, not within {least}..={most} ms"
            );
        }
        assert_eq!(retry.failures(), 8);
        retry.succeeded();
        sleeps += 1;
        let wait = waited(&mut retry, &clock, sleeps).await.as_millis();
        assert!((75..=125).contains(&wait), "after a success: {wait} ms");
    }

    #[tokio::test]
    async fn a_cancel_ends_the_wait_with_false() {
        let clock = Clock::manual(0);
        let mut retry = Retry::new("testing", &clock);
        let cancel = CancellationToken::new();
        let wait = retry.wait(&"connection refused", &cancel);
        tokio::pin!(wait);
        assert!(futures::poll!(&mut wait).is_pending());
        cancel.cancel();
        assert!(!wait.await, "a cancelled wait went on");
    }
}
