//! Jobs finished per minute, counted in per-second buckets: one atomic add
//! per job, no lock. The heartbeat publishes the sum, so `conveyor stats`
//! can show each queue's rate over the last minute without Redis keeping
//! any history.

use std::sync::atomic::{AtomicU64, Ordering};

const SECONDS: usize = 60;

/// A sliding one-minute count.
#[derive(Debug)]
pub(crate) struct Throughput {
    counts: [AtomicU64; SECONDS],
    /// The second each bucket currently counts.
    stamps: [AtomicU64; SECONDS],
}

impl Default for Throughput {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            stamps: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Throughput {
    /// Counts one finished job now.
    pub(crate) fn record(&self) {
        self.record_at(now_secs());
    }

    fn record_at(&self, second: u64) {
        let i = (second % SECONDS as u64) as usize;
        if self.stamps[i].swap(second, Ordering::Relaxed) != second {
            // A new second for this bucket: start it over. A job counted by
            // another thread in between may be lost; this is a statistic.
            self.counts[i].store(0, Ordering::Relaxed);
        }
        self.counts[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Jobs finished in the last 60 seconds.
    pub(crate) fn last_minute(&self) -> u64 {
        self.last_minute_at(now_secs())
    }

    fn last_minute_at(&self, now: u64) -> u64 {
        (0..SECONDS)
            .filter(|&i| {
                now.saturating_sub(self.stamps[i].load(Ordering::Relaxed)) < SECONDS as u64
            })
            .map(|i| self.counts[i].load(Ordering::Relaxed))
            .sum()
    }
}

fn now_secs() -> u64 {
    (crate::clock::now_ms() / 1000) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_last_sixty_seconds_only() {
        let t = Throughput::default();
        for s in 1000..1010 {
            t.record_at(s);
            t.record_at(s);
        }
        assert_eq!(t.last_minute_at(1010), 20);
        assert_eq!(
            t.last_minute_at(1065),
            8,
            "seconds 1006..=1009 are still in the window"
        );
        assert_eq!(t.last_minute_at(2000), 0);
        t.record_at(1060); // reuses bucket of second 1000
        assert_eq!(t.last_minute_at(1060), 19);
    }
}
