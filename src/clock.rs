//! The clock: now in the forms Redis scores, envelopes and events use, and
//! the [`Clock`] that the daemon's timed components read and wait on.

use std::time::Duration;

/// Now as RFC 3339 with milliseconds, UTC. Formatted at most once per
/// millisecond per thread: events and envelopes ask for it per job.
pub(crate) fn now_rfc3339() -> String {
    with_now_rfc3339(str::to_owned)
}

/// Calls `f` with now as RFC 3339 (see [`now_rfc3339`]), without a copy.
pub(crate) fn with_now_rfc3339<R>(f: impl FnOnce(&str) -> R) -> R {
    thread_local! {
        static LAST: std::cell::RefCell<(i64, String)> = const { std::cell::RefCell::new((i64::MIN, String::new())) };
    }
    let now = jiff::Timestamp::now();
    LAST.with_borrow_mut(|(ms, text)| {
        if *ms != now.as_millisecond() {
            *ms = now.as_millisecond();
            *text = format!("{now:.3}");
        }
        f(text)
    })
}

/// A time in ms since the epoch as RFC 3339 with milliseconds, UTC.
pub(crate) fn rfc3339_ms(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| format!("{t:.3}"))
        .unwrap_or_else(|_| ms.to_string())
}

/// Now in milliseconds since the epoch; scores of `{K}:scheduled` use it.
pub(crate) fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// The time the daemon's timed components go by: the scheduler (which jobs
/// are due), the reaper (when to look for dead nodes), the schedules (which
/// tick is due), a failed job's retry (when it is due) and the backoff
/// against an unreachable Redis. It decides when things happen; the stamps
/// written on records (`finished_at`) are read from the wall clock
/// ([`now_rfc3339`]).
///
/// In production it is the system's: now from the wall clock, waits on
/// tokio's timer. A test makes a manual one, which stands still until the
/// test moves it, so a component's timing is tested without waiting for it
/// (asynq's `SetClock`). tokio's paused time would not do for components
/// that talk to Redis: it jumps to the next timer whenever the runtime has
/// nothing ready, which includes waiting for a reply, and so cuts replies
/// off with their timeouts.
#[derive(Clone, Debug, Default)]
pub(crate) struct Clock {
    #[cfg(test)]
    manual: Option<std::sync::Arc<manual::Manual>>,
}

impl Clock {
    /// The system's clock.
    pub(crate) fn system() -> Self {
        Self::default()
    }

    /// Now in milliseconds since the epoch (see [`now_ms`]).
    pub(crate) fn now_ms(&self) -> i64 {
        #[cfg(test)]
        if let Some(manual) = &self.manual {
            return manual.now_ms();
        }
        now_ms()
    }

    /// Now.
    pub(crate) fn now(&self) -> jiff::Timestamp {
        #[cfg(test)]
        if let Some(manual) = &self.manual {
            return manual.now();
        }
        jiff::Timestamp::now()
    }

    /// Waits for `duration` to pass on this clock.
    pub(crate) async fn sleep(&self, duration: Duration) {
        #[cfg(test)]
        if let Some(manual) = &self.manual {
            return manual.sleep(duration).await;
        }
        tokio::time::sleep(duration).await
    }
}

#[cfg(test)]
impl Clock {
    /// A clock standing at `at_ms` (ms since the epoch) until
    /// [`Clock::advance`] moves it.
    pub(crate) fn manual(at_ms: i64) -> Self {
        Self {
            manual: Some(std::sync::Arc::new(manual::Manual::new(at_ms))),
        }
    }

    /// A manual clock standing at the wall clock's now: what the components
    /// write to Redis with it reads as written now.
    pub(crate) fn manual_from_now() -> Self {
        Self::manual(now_ms())
    }

    /// Moves a manual clock forward by `by`; its sleepers that are due wake.
    pub(crate) fn advance(&self, by: Duration) {
        self.hand().advance(by);
    }

    /// Waits until the `n`th sleep on a manual clock has begun (since it was
    /// made): the component sleeping has done all it does at this time.
    /// Panics after 10 s of real time.
    pub(crate) async fn asleep(&self, n: u64) {
        let waited = tokio::time::timeout(Duration::from_secs(10), self.hand().asleep(n)).await;
        assert!(
            waited.is_ok(),
            "no sleep number {n} on the clock within 10s"
        );
    }

    fn hand(&self) -> &manual::Manual {
        self.manual.as_deref().expect("a manual clock")
    }
}

#[cfg(test)]
mod manual {
    use std::time::Duration;

    use tokio::sync::watch;

    /// A clock that moves only when told.
    #[derive(Debug)]
    pub(super) struct Manual {
        /// Now (ms since the epoch); sleepers watch it.
        now: watch::Sender<i64>,
        /// Sleeps begun so far.
        sleeps: watch::Sender<u64>,
    }

    impl Manual {
        pub(super) fn new(at_ms: i64) -> Self {
            Self {
                now: watch::Sender::new(at_ms),
                sleeps: watch::Sender::new(0),
            }
        }

        pub(super) fn now_ms(&self) -> i64 {
            *self.now.borrow()
        }

        pub(super) fn now(&self) -> jiff::Timestamp {
            jiff::Timestamp::from_millisecond(self.now_ms()).expect("a time jiff holds")
        }

        pub(super) async fn sleep(&self, duration: Duration) {
            let until = self.now_ms().saturating_add(ms(duration));
            let mut now = self.now.subscribe();
            self.sleeps.send_modify(|n| *n += 1);
            now.wait_for(|now| *now >= until)
                .await
                .expect("the clock outlives its sleepers");
        }

        pub(super) fn advance(&self, by: Duration) {
            self.now
                .send_modify(|now| *now = now.saturating_add(ms(by)));
        }

        pub(super) async fn asleep(&self, n: u64) {
            self.sleeps
                .subscribe()
                .wait_for(|begun| *begun >= n)
                .await
                .expect("the clock outlives its watchers");
        }
    }

    fn ms(duration: Duration) -> i64 {
        i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
    }
}

/// An age or uptime as people read it: `42s`, `3m05s`, `2h10m`, `3d04h`.
pub(crate) fn age(secs: f64) -> String {
    let s = secs as u64;
    match s {
        0..60 => format!("{secs:.0}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_uptime() {
        assert_eq!(age(4.2), "4s");
        assert_eq!(age(185.0), "3m05s");
        assert_eq!(age(7800.0), "2h10m");
        assert_eq!(age(273_600.0), "3d04h");
    }

    #[tokio::test]
    async fn a_manual_clock_moves_only_when_told_and_wakes_sleepers_when_due() {
        let clock = Clock::manual(1_000);
        let sleep = clock.sleep(Duration::from_secs(60));
        tokio::pin!(sleep);
        assert!(futures::poll!(&mut sleep).is_pending());
        clock.asleep(1).await;
        clock.advance(Duration::from_secs(59));
        assert_eq!(clock.now_ms(), 60_000);
        assert_eq!(clock.now().as_millisecond(), 60_000);
        assert!(
            futures::poll!(&mut sleep).is_pending(),
            "woke a second early"
        );
        clock.advance(Duration::from_secs(1));
        assert!(futures::poll!(&mut sleep).is_ready());
    }
}
