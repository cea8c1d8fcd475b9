//! The systemd watchdog and status line: every tick, pets the watchdog
//! (`WATCHDOG=1`) unless a queue's fetcher is stuck, and refreshes the line
//! `systemctl status` shows (queues, busy slots, jobs handled).
//!
//! "Stuck" is a fetcher inside one Redis call for longer than every timeout
//! on that call allows (see `stuck_fetch_threshold`): the fetch loop hangs
//! and only a restart helps, so the pets stop and systemd kills and restarts
//! the daemon after `WatchdogSec`. A fetcher waiting for a free slot is busy,
//! not stuck; one retrying against an unreachable Redis is not stuck either:
//! its calls fail within their timeouts, and a restart would not bring Redis
//! back (it would only lose the running jobs). It runs until the very end of
//! a shutdown, stopped with the heartbeat, so the drain is watched too.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::heartbeat::stuck_queues;
use super::notify;
use super::queues::Processors;
use crate::shutdown::Shutdown;

/// How often the status line is refreshed when no watchdog asks for more.
const STATUS_EVERY: Duration = Duration::from_secs(2);

/// Pets the watchdog while fetching works; keeps the status line current.
pub(crate) struct Watchdog {
    pub(crate) processors: Processors,
    /// A fetcher inside one Redis call longer than this is stuck.
    pub(crate) stuck_after: Duration,
    /// `WATCHDOG_USEC`: systemd restarts the daemon if no pet comes within it.
    pub(crate) timeout: Option<Duration>,
    /// To say "quiet" or "stopping" rather than "running".
    pub(crate) shutdown: Shutdown,
}

/// One tick's verdict.
#[derive(Debug, PartialEq, Eq)]
struct Check {
    /// Whether to pet the watchdog.
    pet: bool,
    /// The line for `systemctl status`.
    status: String,
}

impl Watchdog {
    /// Ticks until `stop`. Does nothing when systemd is not listening.
    pub(crate) async fn run(self, stop: CancellationToken) {
        if !notify::enabled() {
            return;
        }
        let tick = self.tick();
        let mut withheld = false;
        loop {
            let check = self.check();
            if check.pet {
                if withheld {
                    tracing::info!("fetching works again; petting the systemd watchdog again");
                    withheld = false;
                }
            } else if !withheld {
                tracing::error!(
                    status = %check.status,
                    "a fetcher is stuck in a Redis call: no longer petting the systemd watchdog, \
                     which restarts the daemon if this lasts"
                );
                withheld = true;
            }
            if check.pet && self.timeout.is_some() {
                notify::alive(&check.status);
            } else {
                notify::status(&check.status);
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(tick) => {}
            }
        }
    }

    /// A quarter of the watchdog timeout (systemd asks for a pet at least
    /// every half; a quarter leaves room for a late tick), and no longer than
    /// `STATUS_EVERY`, so that the status line stays fresh.
    fn tick(&self) -> Duration {
        match self.timeout {
            Some(t) => (t / 4).clamp(Duration::from_millis(10), STATUS_EVERY),
            None => STATUS_EVERY,
        }
    }

    fn check(&self) -> Check {
        let processors = self.processors.snapshot();
        let stuck = stuck_queues(&processors, self.stuck_after);
        let busy: usize = processors.iter().map(|p| p.busy()).sum();
        let slots: u32 = processors.iter().map(|p| p.concurrency()).sum();
        let handled: u64 = processors.iter().map(|p| p.handled()).sum();
        let queues = processors.len();
        let counts = format!(
            "{queues} queue{}, {busy}/{slots} busy, {handled} job{} handled",
            plural(queues as u64),
            plural(handled),
        );
        let state = if self.shutdown.terminate.is_cancelled() {
            format!("stopping: letting running jobs finish; {counts}")
        } else if self.shutdown.quiet.is_cancelled() {
            format!("quiet: taking no new jobs; {counts}")
        } else {
            format!("running: {counts}")
        };
        if stuck.is_empty() {
            Check {
                pet: true,
                status: state,
            }
        } else {
            Check {
                pet: false,
                status: format!(
                    "STUCK: the fetcher of {} has been in one Redis call for over {}s; {state}",
                    stuck.join(","),
                    self.stuck_after.as_secs_f64()
                ),
            }
        }
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::broker::events::EventSink;
    use crate::broker::queue::QueueStore;
    use crate::broker::{Broker, QueueKeys};
    use crate::clock::Clock;
    use crate::config::Config;
    use crate::daemon::isolation::Isolation;
    use crate::daemon::processor::{NodeShared, Processor};
    use crate::daemon::writer;
    use crate::handlers::noop::Noop;

    fn processor(name: &str) -> Arc<Processor> {
        let config = Config::from_toml(&format!("[queues.{name}]\nhandler = \"noop\"\n"))
            .expect("test config");
        let broker = Broker::new(&config.redis).expect("broker");
        let keys = QueueKeys::new(name, &config.queue_key(name), "node-1");
        let store = QueueStore::new(broker.clone(), keys, 10);
        let (_writer, outcomes, events) =
            writer::writer("node-1", broker, EventSink::new("c", 0), &Clock::system());
        Arc::new(Processor::new(
            name,
            store,
            config.queues[name].clone(),
            Arc::new(Noop),
            NodeShared {
                scheduler: Default::default(),
                isolation: Arc::new(Isolation::default()),
                events,
                outcomes,
                give_up: CancellationToken::new(),
                metrics: Default::default(),
                clock: Clock::system(),
                traces: None,
                flows: Default::default(),
            },
        ))
    }

    fn watchdog(processors: Vec<Arc<Processor>>) -> Watchdog {
        Watchdog {
            processors: Processors::of(processors),
            stuck_after: Duration::from_secs(6),
            timeout: Some(Duration::from_secs(1)),
            shutdown: Shutdown::new(),
        }
    }

    #[tokio::test]
    async fn pets_while_no_fetcher_is_in_a_call() {
        let w = watchdog(vec![processor("a"), processor("b")]);
        let check = w.check();
        assert!(check.pet);
        assert_eq!(check.status, "running: 2 queues, 0/20 busy, 0 jobs handled");
    }

    #[tokio::test]
    async fn pets_while_calls_are_within_their_timeouts() {
        let a = processor("a");
        a.pretend_fetch_call_since(Duration::from_secs(5));
        assert!(watchdog(vec![a]).check().pet);
    }

    #[tokio::test]
    async fn withholds_the_pet_while_a_fetcher_is_stuck() {
        let (a, b) = (processor("a"), processor("b"));
        b.pretend_fetch_call_since(Duration::from_secs(7));
        let check = watchdog(vec![a, b]).check();
        assert!(!check.pet);
        assert!(
            check.status.starts_with("STUCK: the fetcher of b "),
            "{}",
            check.status
        );
    }

    #[tokio::test]
    async fn the_status_says_quiet_and_stopping() {
        let w = watchdog(vec![processor("a")]);
        w.shutdown.quiet.cancel();
        assert!(
            w.check()
                .status
                .starts_with("quiet: taking no new jobs; 1 queue,")
        );
        w.shutdown.terminate.cancel();
        assert_eq!(
            w.check().status,
            "stopping: letting running jobs finish; 1 queue, 0/10 busy, 0 jobs handled"
        );
    }

    #[test]
    fn ticks_at_a_quarter_of_the_watchdog_timeout() {
        let mut w = watchdog(Vec::new());
        assert_eq!(w.tick(), Duration::from_millis(250));
        w.timeout = Some(Duration::from_secs(30));
        assert_eq!(w.tick(), STATUS_EVERY, "the status stays fresh");
        w.timeout = None;
        assert_eq!(w.tick(), STATUS_EVERY);
    }
}
