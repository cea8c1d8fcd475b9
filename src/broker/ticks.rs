//! Schedules' ticks: each enqueued once, however many daemons try it, by
//! one script on the queue's slot (`lua/tick.lua`).

use super::BrokerError;
use super::queue::QueueStore;
use super::scripts::tick;

/// What became of one daemon's try at a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ticked {
    /// Enqueued, by this call.
    Enqueued,
    /// Handled already (by another daemon, or an earlier call).
    Handled,
    /// A new or edited schedule: it starts from this tick, which runs nothing.
    Started,
    /// Recorded but skipped: an earlier tick's job still holds the lock.
    Skipped,
}

/// One tick of a schedule, as the script takes it.
#[derive(Debug, Clone)]
pub(crate) struct Tick<'a> {
    /// The schedule's name.
    pub(crate) schedule: &'a str,
    /// The tick, in unix seconds.
    pub(crate) at: i64,
    /// What the schedule's ticks are computed from.
    pub(crate) spec: &'a str,
    /// The job's id (`<name>:<tick>`).
    pub(crate) id: &'a str,
    /// The job's envelope.
    pub(crate) envelope: &'a str,
    /// The unique lock's lifetime in ms, when the schedule's jobs are unique.
    pub(crate) unique_ms: Option<u64>,
}

impl QueueStore {
    /// Enqueues `tick` unless it (or a later tick) was handled already.
    pub(crate) async fn tick(&self, tick: &Tick<'_>) -> Result<Ticked, BrokerError> {
        let call = tick::Call {
            keys: self.keys(),
            tick,
        };
        let mut conn = self.broker().conn().await?;
        let done: i64 = call.invocation().invoke_async(&mut conn).await?;
        Ok(match done {
            1 => Ticked::Enqueued,
            2 => Ticked::Started,
            3 => Ticked::Skipped,
            _ => Ticked::Handled,
        })
    }

    /// The last tick of schedule `name` that was enqueued (or where it
    /// started), in unix seconds.
    pub(crate) async fn last_tick(&self, name: &str) -> Result<Option<i64>, BrokerError> {
        let mut conn = self.broker().conn().await?;
        let last: Option<String> = redis::cmd("GET")
            .arg(self.keys().schedule(name))
            .query_async(&mut conn)
            .await?;
        Ok(last.and_then(|t| t.parse().ok()))
    }
}
