//! Schedules' ticks: each enqueued once, however many daemons try it, by
//! one script on the queue's slot (`lua/tick.lua`).

use super::BrokerError;
use super::queue::QueueStore;
use super::scripts::tick;
pub(crate) use super::scripts::tick::Tick;

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
