//! Periodic: enqueues the ticks of the schedules of this node's queues.
//!
//! Every daemon runs it, and there is no leader to elect: each tick goes
//! through one script (`tick.lua`) that enqueues the job `<name>:<tick>`
//! and records the tick in `{K}:schedule:<name>` in one step, on the
//! queue's slot, so however many daemons try a tick, one enqueues it. A
//! tick missed while no daemon ran is caught up once: each look enqueues the
//! latest tick due, never the ones before it. A new or edited schedule
//! starts from its next tick.

use std::time::Duration;

use jiff::Timestamp;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use super::retry::Retry;
use super::writer::Events;
use crate::broker::BrokerError;
use crate::broker::events::StatusUpdate;
use crate::broker::queue::QueueStore;
use crate::broker::ticks::{Tick, Ticked};
use crate::clock::{Clock, now_rfc3339};
use crate::config::{Config, EventLevel};
use crate::envelope::new_envelope_json;
use crate::event::{Draft, EventType};
use crate::job::JobState;
use crate::schedule::Spec;

/// Longest sleep between looks: a clock stepped forward is noticed this soon.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// The schedules of this node's queues.
pub(crate) struct Periodic {
    entries: Vec<Entry>,
    events: Events,
    /// Which tick is due, and how long to sleep, go by it.
    clock: Clock,
}

struct Entry {
    name: String,
    store: QueueStore,
    spec: Spec,
    /// `spec`'s fingerprint, kept with the last tick.
    fingerprint: String,
    payload: Box<RawValue>,
    max_attempts: Option<u32>,
    unique_ms: Option<u64>,
    events: EventLevel,
    /// The status records' lifetime, for a queue that tracks its jobs.
    track: Option<Duration>,
    /// The latest tick known handled, by this node or another: not tried again.
    seen: i64,
}

impl Periodic {
    /// The schedules of `config` whose queue has a store here.
    pub(crate) fn new(
        config: &Config,
        stores: &[QueueStore],
        events: Events,
        clock: Clock,
    ) -> Self {
        let mut entries = Vec::new();
        for (name, schedule) in &config.schedules {
            let (Some(store), Some(queue)) = (
                stores.iter().find(|s| s.keys().name == schedule.queue),
                config.queues.get(&schedule.queue),
            ) else {
                continue;
            };
            // Validation parsed both already; a failure here is a bug, and
            // the schedule is left out rather than the daemon stopped.
            let (Ok(spec), Ok(payload)) = (
                schedule.spec(),
                serde_json::value::to_raw_value(&schedule.payload),
            ) else {
                tracing::error!(schedule = %name, "schedule left out: it did not read as validated");
                continue;
            };
            entries.push(Entry {
                name: name.clone(),
                store: store.clone(),
                fingerprint: spec.fingerprint(),
                spec,
                payload,
                max_attempts: schedule.max_attempts,
                unique_ms: schedule.unique_for.map(|d| d.as_millis() as u64),
                events: queue.events,
                track: queue.track.then_some(queue.track_ttl),
                seen: i64::MIN,
            });
        }
        Self {
            entries,
            events,
            clock,
        }
    }

    /// Runs until `stop`.
    pub(crate) async fn run(mut self, stop: CancellationToken) {
        if self.entries.is_empty() {
            return;
        }
        let mut retry = Retry::new("enqueueing the schedules' ticks", &self.clock);
        while !stop.is_cancelled() {
            let now = self.clock.now();
            let mut failure = None;
            for entry in &mut self.entries {
                if let Err(e) = entry.look(now, &self.events).await {
                    failure = Some(e);
                }
            }
            if let Some(e) = failure {
                if !retry.wait(&e, &stop).await {
                    break;
                }
                continue;
            }
            retry.succeeded();
            let next = self
                .entries
                .iter()
                .filter_map(|e| e.spec.next_after(now))
                .min();
            let sleep = next
                .map(|t| {
                    let ms = t.as_millisecond() - self.clock.now_ms();
                    Duration::from_millis(ms.max(1) as u64)
                })
                .unwrap_or(MAX_SLEEP)
                .min(MAX_SLEEP);
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.clock.sleep(sleep) => {}
            }
        }
    }
}

impl Entry {
    /// Tries the latest tick due at `now`, unless it is known handled.
    async fn look(&mut self, now: Timestamp, events: &Events) -> Result<(), BrokerError> {
        let Some(tick) = self.spec.latest_at_or_before(now) else {
            return Ok(());
        };
        let at = tick.as_second();
        if at <= self.seen {
            return Ok(());
        }
        let id = format!("{}:{at}", self.name);
        let enqueued_at = now_rfc3339();
        let unique_key = self.unique_ms.map(|_| format!("schedule:{}", self.name));
        let envelope = new_envelope_json(
            &id,
            &self.payload,
            self.max_attempts,
            &enqueued_at,
            unique_key.as_deref(),
        );
        let ticked = self
            .store
            .tick(&Tick {
                schedule: &self.name,
                at,
                spec: &self.fingerprint,
                id: &id,
                envelope: &envelope,
                unique_ms: self.unique_ms,
            })
            .await?;
        self.seen = at;
        let queue = &self.store.keys().name;
        match ticked {
            Ticked::Enqueued => {
                tracing::info!(schedule = %self.name, queue = %queue, id = %id, "schedule tick enqueued");
                if self.events != EventLevel::Off {
                    events.emit(
                        Draft::job(EventType::Enqueued, queue.as_str(), id.as_str(), 0)
                            .schedule(self.name.as_str()),
                    );
                }
                if let Some(ttl) = self.track {
                    events.status(StatusUpdate {
                        id,
                        fields: vec![
                            ("queue", queue.clone()),
                            ("state", JobState::Waiting.as_str().to_owned()),
                            ("attempt", "0".to_owned()),
                            ("schedule", self.name.clone()),
                            ("enqueued_at", enqueued_at.clone()),
                            ("updated_at", enqueued_at),
                        ],
                        ttl,
                    });
                }
            }
            Ticked::Started => {
                let next = self.spec.next_after(tick).map(|t| t.to_string());
                tracing::info!(
                    schedule = %self.name,
                    spec = %self.spec.describe(),
                    first = next.as_deref().unwrap_or("never"),
                    "schedule starts (new or edited); its first job is its next tick"
                );
            }
            Ticked::Skipped => tracing::info!(
                schedule = %self.name,
                id = %id,
                "schedule tick skipped: an earlier tick's job is still waiting or running (unique_for)"
            ),
            Ticked::Handled => {}
        }
        Ok(())
    }
}
