//! The dashboard's live chart: jobs that succeeded and failed each second
//! over the last ten minutes, per queue. The web server reads the queues'
//! counters (`{K}:stats`, which every daemon adds to) once a second and
//! keeps the differences in memory, so the chart counts the work of every
//! daemon at one round trip a second, whoever looks. It starts empty when
//! the server starts; the minutes before are in the history.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::api::Client;

/// Seconds kept.
pub(super) const SECONDS: usize = 600;

/// Succeeded and failed per queue in one second.
type Second = HashMap<String, (f64, f64)>;

/// Each queue's counters (succeeded, failed) at one reading.
type Counters = HashMap<String, (u64, u64)>;

#[derive(Default)]
pub(super) struct Live {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The counters at the last reading, and its second.
    last: Option<(i64, Counters)>,
    /// Per second (since the epoch), newest last.
    seconds: VecDeque<(i64, Second)>,
}

impl Live {
    /// Takes a reading of the counters at second `at`: what grew since the
    /// last reading is spread over the seconds between them.
    pub(super) fn add(&self, at: i64, counters: Vec<(String, u64, u64)>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now: Counters = counters
            .into_iter()
            .map(|(q, ok, failed)| (q, (ok, failed)))
            .collect();
        if let Some((then, before)) = state.last.take().filter(|(then, _)| *then < at) {
            let span = (at - then).min(SECONDS as i64);
            let mut per_second = Second::new();
            for (q, &(ok, failed)) in &now {
                // A queue new since, or counters reset (FLUSHALL): no rate.
                let Some(&(ok0, failed0)) = before.get(q) else {
                    continue;
                };
                if ok < ok0 || failed < failed0 {
                    continue;
                }
                let spread = |n: u64| n as f64 / span as f64;
                per_second.insert(q.clone(), (spread(ok - ok0), spread(failed - failed0)));
            }
            for s in (at - span + 1)..=at {
                state.seconds.push_back((s, per_second.clone()));
            }
            while state.seconds.len() > SECONDS {
                state.seconds.pop_front();
            }
        }
        // A second read twice keeps its first reading.
        let last = match state.last.take() {
            Some(kept) if kept.0 >= at => kept,
            _ => (at, now),
        };
        state.last = Some(last);
    }

    /// The last [`SECONDS`] seconds up to `now` (a second each, oldest
    /// first): succeeded and failed of `queue`, or of all queues; `None`
    /// for a second not read.
    pub(super) fn series(
        &self,
        queue: Option<&str>,
        now: i64,
    ) -> (Vec<Option<f64>>, Vec<Option<f64>>) {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut ok = vec![None; SECONDS];
        let mut failed = vec![None; SECONDS];
        let first = now - SECONDS as i64 + 1;
        for (at, second) in &state.seconds {
            let Some(i) = usize::try_from(at - first).ok().filter(|i| *i < SECONDS) else {
                continue;
            };
            let (o, f) = second
                .iter()
                .filter(|(q, _)| queue.is_none_or(|name| name == q.as_str()))
                .fold((0.0, 0.0), |(o, f), (_, (a, b))| (o + a, f + b));
            ok[i] = Some(o);
            failed[i] = Some(f);
        }
        (ok, failed)
    }
}

/// Reads the counters every second until `stop`. A failed reading is
/// skipped: the chart shows the gap.
pub(super) async fn sample(live: Arc<Live>, client: Client, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        if let Ok(counters) = client.outcome_counters().await {
            live.add(crate::clock::now_ms() / 1000, counters);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(a: (u64, u64), b: (u64, u64)) -> Vec<(String, u64, u64)> {
        vec![("a".into(), a.0, a.1), ("b".into(), b.0, b.1)]
    }

    #[test]
    fn keeps_what_each_second_added_per_queue_and_in_all() {
        let live = Live::default();
        live.add(100, reading((10, 0), (0, 0)));
        live.add(101, reading((15, 1), (2, 0)));
        // Two seconds late: 8 more over two seconds, 4 each.
        live.add(103, reading((23, 1), (2, 0)));
        let (ok, failed) = live.series(Some("a"), 103);
        let tail = |v: &[Option<f64>]| v[SECONDS - 4..].to_vec();
        assert_eq!(tail(&ok), [None, Some(5.0), Some(4.0), Some(4.0)]);
        assert_eq!(tail(&failed), [None, Some(1.0), Some(0.0), Some(0.0)]);
        let (all, _) = live.series(None, 103);
        assert_eq!(tail(&all), [None, Some(7.0), Some(4.0), Some(4.0)]);
        // Counters reset (FLUSHALL): that second shows nothing for them.
        live.add(104, reading((0, 0), (3, 0)));
        let (all, _) = live.series(None, 104);
        assert_eq!(all[SECONDS - 1], Some(1.0));
    }

    #[test]
    fn keeps_ten_minutes() {
        let live = Live::default();
        for s in 0..2_000 {
            live.add(s, reading((s as u64, 0), (0, 0)));
        }
        let state = live.state.lock().unwrap();
        assert_eq!(state.seconds.len(), SECONDS);
        assert_eq!(state.seconds.front().unwrap().0, 2_000 - SECONDS as i64);
    }
}
