//! A queue's history (DESIGN section 10.1): per minute for a day and per
//! day for 30 days, the jobs that succeeded, failed (retried or dead) and
//! died, and histograms of their waiting and run times.
//!
//! Each interval is a row of [`FIELDS`] unsigned 32-bit counters, kept in
//! Redis strings and incremented with `BITFIELD ... OVERFLOW SAT INCRBY`
//! by `lua/finish.lua`, in the step that records the outcomes they count:
//! a job is counted once, by the daemon whose outcome was recorded, and a
//! daemon that dies loses nothing it had counted.
//!
//! - `{K}:history:m:<hour>` holds the 60 minutes of one hour (hours since
//!   the epoch, UTC), a row each; it expires a day after its hour ends.
//! - `{K}:history:d:<day>` holds one day's row; it expires 30 days after
//!   the day ends.
//!
//! So a queue keeps at most 26 hour strings of 8,880 bytes (each made
//! whole when its hour begins: 10,288 bytes in Redis's memory) and 31 day
//! strings of 148 bytes, whatever the number of jobs: under 300 KB.
//! Percentiles come from the histograms, which add up across queues,
//! minutes and daemons; a percentile is exact to within its bucket.

use std::time::Duration;

use redis::Value;
use serde::Serialize;

use super::keys::QueueKeys;
use super::{Broker, BrokerError};

/// Upper bounds of the histograms' buckets in ms; a last bucket holds the
/// rest. The same for waiting and run times: a millisecond to an hour.
pub(crate) const BOUNDS_MS: [u64; 16] = [
    1, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000,
    3_600_000,
];

/// Buckets of one histogram.
pub(crate) const BUCKETS: usize = BOUNDS_MS.len() + 1;

/// Counters of one interval: succeeded, failed, dead, then the waiting
/// time's buckets and the run time's.
pub(crate) const FIELDS: usize = 3 + 2 * BUCKETS;

// A sample holds two counter indexes as `wait + 64 * run`.
const _: () = assert!(FIELDS < 64);

const SUCCEEDED: usize = 0;
const FAILED: usize = 1;
const DEAD: usize = 2;
const WAIT: usize = 3;
const RUN: usize = WAIT + BUCKETS;

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

/// How long an hour's minutes are kept after the hour ends, and a day's
/// row after the day ends.
const MINUTES_KEPT_S: i64 = 86_400;
const DAYS_KEPT_S: i64 = 30 * 86_400;

/// The buckets one job adds to: its waiting time (first runs only) and
/// its run time (jobs that ran), as the script reads them: field indexes,
/// `wait + 64 * run`, 0 for neither.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Sample(pub(crate) u16);

impl Sample {
    /// Neither a waiting time nor a run time (a job dead without running).
    pub(crate) const NONE: Sample = Sample(0);

    /// The buckets of `wait` and `run`, each if known.
    pub(crate) fn of(wait: Option<Duration>, run: Option<Duration>) -> Self {
        let field = |base: usize, d: Option<Duration>| d.map_or(0, |d| (base + bucket(d)) as u16);
        Sample(field(WAIT, wait) + 64 * field(RUN, run))
    }
}

/// How an outcome counts: `lua/finish.lua` takes back the same counters
/// for a job it finds no longer in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counted {
    /// Succeeded.
    Succeeded,
    /// Failed, to be retried.
    Retried,
    /// Dead: a failure, and a death.
    Dead,
}

/// What one script call's outcomes add to the history's counters.
pub(crate) struct Tally([u32; FIELDS]);

impl Default for Tally {
    fn default() -> Self {
        Tally([0; FIELDS])
    }
}

impl Tally {
    /// Counts one outcome with its times' buckets.
    pub(crate) fn add(&mut self, outcome: Counted, sample: Sample) {
        match outcome {
            Counted::Succeeded => self.0[SUCCEEDED] += 1,
            Counted::Retried => self.0[FAILED] += 1,
            Counted::Dead => {
                self.0[FAILED] += 1;
                self.0[DEAD] += 1;
            }
        }
        for field in [sample.0 % 64, sample.0 / 64] {
            if field > 0 {
                self.0[usize::from(field)] += 1;
            }
        }
    }

    /// The counters it adds to, with what it adds.
    pub(crate) fn counters(&self) -> impl Iterator<Item = (usize, u32)> + '_ {
        self.0
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| (i, *n))
    }
}

/// The bucket `d` falls in.
fn bucket(d: Duration) -> usize {
    let ms = d.as_micros().div_ceil(1000).min(u128::from(u64::MAX)) as u64;
    BOUNDS_MS
        .iter()
        .position(|&b| ms <= b)
        .unwrap_or(BOUNDS_MS.len())
}

/// Where one flush's outcomes are counted: the minute and day of `at_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stamp {
    /// `{K}:history:m:<hour>`.
    pub(crate) minutes: String,
    /// `{K}:history:d:<day>`.
    pub(crate) day: String,
    /// The minute's first counter in the hour's string (a counter index).
    pub(crate) offset: usize,
    /// The index of the hour string's last counter.
    pub(crate) last: usize,
    /// When the hour's string expires (seconds since the epoch).
    pub(crate) minutes_expire_at: i64,
    /// When the day's string expires (seconds since the epoch).
    pub(crate) day_expire_at: i64,
}

impl Stamp {
    /// The minute and day of `at_ms` in `keys`' queue.
    pub(crate) fn at(keys: &QueueKeys, at_ms: i64) -> Self {
        let hour = at_ms.div_euclid(HOUR_MS);
        let day = at_ms.div_euclid(DAY_MS);
        let minute = at_ms.rem_euclid(HOUR_MS) / MINUTE_MS;
        Self {
            minutes: keys.history_minutes(hour),
            day: keys.history_day(day),
            offset: minute as usize * FIELDS,
            last: 60 * FIELDS - 1,
            minutes_expire_at: (hour + 1) * (HOUR_MS / 1000) + MINUTES_KEPT_S,
            day_expire_at: (day + 1) * (DAY_MS / 1000) + DAYS_KEPT_S,
        }
    }
}

/// How far back a history goes, and in which steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Range {
    /// The last 60 minutes, a minute each.
    #[serde(rename = "1h")]
    Hour,
    /// The last 1,440 minutes.
    #[serde(rename = "24h")]
    Day,
    /// The last 30 days (UTC), a day each.
    #[serde(rename = "30d")]
    Month,
}

impl Range {
    /// `1h`, `24h` or `30d`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "1h" => Some(Range::Hour),
            "24h" => Some(Range::Day),
            "30d" => Some(Range::Month),
            _ => None,
        }
    }

    /// Its name in a URL.
    pub fn as_str(self) -> &'static str {
        match self {
            Range::Hour => "1h",
            Range::Day => "24h",
            Range::Month => "30d",
        }
    }

    /// The length of one interval, in ms.
    pub fn step_ms(self) -> i64 {
        match self {
            Range::Hour | Range::Day => MINUTE_MS,
            Range::Month => DAY_MS,
        }
    }

    /// Intervals in the range.
    fn len(self) -> i64 {
        match self {
            Range::Hour => 60,
            Range::Day => 1_440,
            Range::Month => 30,
        }
    }

    /// The start (ms) of the first of its intervals that ends with the
    /// one holding `now_ms`.
    pub fn first_ms(self, now_ms: i64) -> i64 {
        let step = self.step_ms();
        (now_ms.div_euclid(step) - (self.len() - 1)) * step
    }
}

/// One interval's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row(pub(crate) [u64; FIELDS]);

impl Default for Row {
    fn default() -> Self {
        Row([0; FIELDS])
    }
}

impl Row {
    /// Adds `other`'s counts to these (another queue's, another minute's).
    pub(crate) fn add(&mut self, other: &Row) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a += b;
        }
    }

    pub(crate) fn succeeded(&self) -> u64 {
        self.0[SUCCEEDED]
    }

    pub(crate) fn failed(&self) -> u64 {
        self.0[FAILED]
    }

    pub(crate) fn dead(&self) -> u64 {
        self.0[DEAD]
    }

    /// The `q` quantile (0 to 1) of the waiting times, in ms; `None`
    /// without any.
    pub(crate) fn wait_ms(&self, q: f64) -> Option<f64> {
        quantile(&self.0[WAIT..RUN], q)
    }

    /// The `q` quantile (0 to 1) of the run times, in ms.
    pub(crate) fn run_ms(&self, q: f64) -> Option<f64> {
        quantile(&self.0[RUN..], q)
    }

    /// Reads rows from a string of big-endian u32 counters (`BITFIELD`'s
    /// layout); a short or missing string reads as zeros.
    fn from_bytes(bytes: &[u8]) -> Self {
        let mut row = Row::default();
        for (i, c) in bytes.chunks(4).take(FIELDS).enumerate() {
            let mut word = [0u8; 4];
            word[..c.len()].copy_from_slice(c);
            row.0[i] = u64::from(u32::from_be_bytes(word));
        }
        row
    }
}

/// The `q` quantile of a histogram of [`BUCKETS`] counts, interpolated
/// within its bucket as Prometheus's `histogram_quantile` does (the last
/// bucket, which has no upper bound, answers its lower bound).
fn quantile(counts: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut below = 0u64;
    for (i, &n) in counts.iter().enumerate() {
        if n > 0 && (below + n) as f64 >= rank {
            let lower = if i == 0 { 0 } else { BOUNDS_MS[i - 1] } as f64;
            let Some(&upper) = BOUNDS_MS.get(i) else {
                return Some(lower);
            };
            let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
            return Some(lower + (upper as f64 - lower) * within);
        }
        below += n;
    }
    Some(BOUNDS_MS[BOUNDS_MS.len() - 1] as f64)
}

impl Broker {
    /// The rows of `range` that ends with the interval holding `now_ms`,
    /// oldest first, summed over `queues`, in one round trip.
    pub(crate) async fn history(
        &self,
        queues: &[QueueKeys],
        range: Range,
        now_ms: i64,
    ) -> Result<Vec<Row>, BrokerError> {
        let first = range.first_ms(now_ms);
        let mut rows = vec![Row::default(); range.len() as usize];
        // The strings that hold the range, and which rows each gives.
        let strings: Vec<i64> = match range {
            Range::Hour | Range::Day => {
                (first.div_euclid(HOUR_MS)..=now_ms.div_euclid(HOUR_MS)).collect()
            }
            Range::Month => (first.div_euclid(DAY_MS)..=now_ms.div_euclid(DAY_MS)).collect(),
        };
        // Every queue's strings in one round trip (on a cluster, one per
        // node that holds some).
        let mut pipe = redis::pipe();
        for keys in queues {
            for &n in &strings {
                match range {
                    Range::Month => pipe.get(keys.history_day(n)),
                    _ => pipe.get(keys.history_minutes(n)),
                };
            }
        }
        let mut conn = self.conn().await?;
        let found: Vec<Value> = pipe.query_async(&mut conn).await?;
        for (&n, value) in strings.iter().cycle().zip(found) {
            let bytes: Vec<u8> = match value {
                Value::Nil => continue,
                v => redis::from_redis_value(v)?,
            };
            match range {
                Range::Month => {
                    let at = (n * DAY_MS - first) / DAY_MS;
                    rows[at as usize].add(&Row::from_bytes(&bytes));
                }
                _ => {
                    for (m, chunk) in bytes.chunks(FIELDS * 4).enumerate() {
                        let at = (n * HOUR_MS + m as i64 * MINUTE_MS - first) / MINUTE_MS;
                        if let Some(row) = usize::try_from(at).ok().and_then(|a| rows.get_mut(a)) {
                            row.add(&Row::from_bytes(chunk));
                        }
                    }
                }
            }
        }
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use redis::AsyncCommands as _;

    use super::*;
    use crate::broker::fixture::TestRedis;
    use crate::broker::queue::Outcome;
    use crate::broker::scripts::finish;
    use crate::config::{MaskedUrl, RedisConfig};

    fn broker(redis: &TestRedis) -> Broker {
        Broker::new(&RedisConfig {
            url: MaskedUrl::new(redis.url()),
            ..RedisConfig::default()
        })
        .unwrap()
    }

    /// Records `entries` (all in flight but those named `gone`) at `at_ms`.
    async fn finish_at(
        conn: &mut redis::aio::MultiplexedConnection,
        k: &QueueKeys,
        at_ms: i64,
        entries: &[finish::Entry<'_>],
    ) -> Vec<u8> {
        let items: Vec<&[u8]> = entries
            .iter()
            .map(|e| e.0)
            .filter(|i| *i != b"gone")
            .collect();
        if !items.is_empty() {
            let _: () = conn.rpush(&k.inflight, items).await.unwrap();
        }
        let stamp = Stamp::at(k, at_ms);
        let mut pipe = redis::pipe();
        pipe.load_script(&finish::SCRIPT).ignore();
        finish::Call {
            keys: k,
            dead_cap: 10,
            results_cap: 0,
            history: Some(&stamp),
            group: None,
            entries,
            records: true,
        }
        .add_to(&mut pipe);
        let (flags,): (Vec<u8>,) = pipe.query_async(conn).await.unwrap();
        flags
    }

    #[tokio::test]
    async fn counts_each_recorded_outcome_in_its_minute_and_day_only() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let broker = broker(&redis);
        let k = QueueKeys::new("q", "jobs:q", "n1");
        let now = crate::clock::now_ms();
        let minute_ago = now - MINUTE_MS;
        let ok = Outcome::Succeeded {
            id: String::new(),
            unique_key: None,
            flow: None,
        };
        let retry = Outcome::Retry {
            envelope: "e".into(),
            due_ms: 1,
        };
        let dead = Outcome::Dead {
            envelope: "d".into(),
            id: "j".into(),
            unique_key: None,
            flow: None,
        };
        let snooze = Outcome::Snooze {
            envelope: "s".into(),
            due_ms: 1,
        };
        let requeue = Outcome::Requeue { replacement: None };
        let fast = Sample::of(ms(2), ms(3));
        let slow = Sample::of(ms(3_000), ms(40));
        // A minute ago: two successes, a retry (no wait: a second run) and
        // a dead job that never ran; a snooze and a requeue count nothing;
        // a job no longer in flight here counts nothing.
        let flags = finish_at(
            &mut conn,
            &k,
            minute_ago,
            &[
                (b"a", &ok, None, fast),
                (b"b", &ok, None, slow),
                (b"c", &retry, None, Sample::of(None, ms(40))),
                (b"d", &dead, None, Sample::NONE),
                (b"e", &snooze, None, fast),
                (b"f", &requeue, None, fast),
                (b"gone", &ok, None, fast),
            ],
        )
        .await;
        assert_eq!(flags, [1, 1, 1, 1, 1, 1, 0]);
        // Now: one more success.
        finish_at(&mut conn, &k, now, &[(b"g", &ok, None, fast)]).await;

        let rows = broker
            .history(std::slice::from_ref(&k), Range::Hour, now)
            .await
            .unwrap();
        assert_eq!(rows.len(), 60);
        let (last, before) = (&rows[59], &rows[58]);
        assert_eq!(
            (before.succeeded(), before.failed(), before.dead()),
            (2, 2, 1)
        );
        assert_eq!((last.succeeded(), last.failed(), last.dead()), (1, 0, 0));
        assert!(rows[..58].iter().all(|r| *r == Row::default()));
        // Two waits (2 ms and 3 s), three runs (3 ms, 40 ms, 40 ms).
        assert_eq!(before.0[WAIT..RUN].iter().sum::<u64>(), 2);
        assert_eq!(before.0[RUN..].iter().sum::<u64>(), 3);
        let p95 = before.wait_ms(0.95).unwrap();
        assert!((2_500.0..=5_000.0).contains(&p95), "{p95}");
        let p50 = before.run_ms(0.5).unwrap();
        assert!((25.0..=50.0).contains(&p50), "{p50}");
        // The day adds both minutes; all queues add up to the same.
        let days = broker
            .history(std::slice::from_ref(&k), Range::Month, now)
            .await
            .unwrap();
        let today = &days[29];
        if now.div_euclid(DAY_MS) == minute_ago.div_euclid(DAY_MS) {
            assert_eq!((today.succeeded(), today.failed(), today.dead()), (3, 2, 1));
        }
        // Both strings expire: the hour's a day after it ends.
        let stamp = Stamp::at(&k, now);
        let ttl: i64 = conn.ttl(&stamp.minutes).await.unwrap();
        assert!((86_400..=90_000).contains(&ttl), "{ttl}");
        let ttl: i64 = conn.ttl(&stamp.day).await.unwrap();
        assert!((30 * 86_400..=31 * 86_400).contains(&ttl), "{ttl}");
    }

    /// A user whose ACL lacks `BITFIELD` (an earlier version's documented
    /// line) still records every outcome; only the history goes uncounted.
    #[tokio::test]
    async fn a_user_refused_the_history_still_records_outcomes() {
        let redis = TestRedis::start();
        let mut admin = redis.conn().await;
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg("old")
            .arg("on")
            .arg(">pw")
            .arg("~*")
            .arg("+@all")
            .arg("-bitfield")
            .query_async(&mut admin)
            .await
            .unwrap();
        let mut conn = redis.conn().await;
        let _: () = redis::cmd("AUTH")
            .arg("old")
            .arg("pw")
            .query_async(&mut conn)
            .await
            .unwrap();
        let k = QueueKeys::new("q", "jobs:q", "n1");
        let ok = Outcome::Succeeded {
            id: String::new(),
            unique_key: None,
            flow: None,
        };
        let flags = finish_at(
            &mut conn,
            &k,
            crate::clock::now_ms(),
            &[(b"a", &ok, None, Sample::of(ms(1), ms(1)))],
        )
        .await;
        assert_eq!(flags, [1]);
        let processed: u64 = admin.hget(&k.stats, "processed").await.unwrap();
        assert_eq!(processed, 1);
        let kept: Vec<String> = admin.keys("{jobs:q}:history:*").await.unwrap();
        assert!(kept.is_empty(), "{kept:?}");
    }

    /// A million outcomes spread over 40 days (half of them over the last
    /// day, which fills its minutes) leave at most a day of minutes and 30
    /// days: the strings of older hours and days expire as they are
    /// written, and none grows with the jobs it counts.
    #[tokio::test]
    async fn a_million_jobs_leave_the_history_bounded() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let k = QueueKeys::new("q", "jobs:q", "n1");
        let now = crate::clock::now_ms();
        let ok = Outcome::Succeeded {
            id: String::new(),
            unique_key: None,
            flow: None,
        };
        let sample = Sample::of(ms(2), ms(3));
        const CALLS: i64 = 2_000;
        const PER_CALL: usize = 500;
        let entries: Vec<finish::Entry<'_>> = vec![(b"x", &ok, None, sample); PER_CALL];
        for call in 0..CALLS {
            let at = match call < CALLS / 2 {
                true => now - 40 * DAY_MS + call * (39 * DAY_MS) / (CALLS / 2),
                false => now - DAY_MS + (call - CALLS / 2) * DAY_MS / (CALLS / 2),
            };
            finish_at(&mut conn, &k, at, &entries).await;
        }
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("{jobs:q}:history:*")
            .query_async(&mut conn)
            .await
            .unwrap();
        let (mut minutes, mut days, mut bytes) = (0, 0, 0u64);
        for key in &keys {
            let used: u64 = redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap();
            bytes += used;
            match key.contains(":history:m:") {
                true => minutes += 1,
                false => days += 1,
            }
        }
        eprintln!("{} strings, {bytes} bytes for 1,000,000 jobs", keys.len());
        assert!(minutes <= 26, "{minutes} hours of minutes");
        assert!(days <= 31, "{days} days");
        // 26 hours of 8,880 bytes and 31 days of 148, with Redis's own
        // cost per key and allocation.
        assert!(bytes <= 300_000, "{bytes} bytes");
        // Every job was counted: today's and yesterday's days hold them.
        let total: u64 = broker(&redis)
            .history(std::slice::from_ref(&k), Range::Month, now)
            .await
            .unwrap()
            .iter()
            .map(Row::succeeded)
            .sum();
        let kept_days = (now - 29 * DAY_MS).div_euclid(DAY_MS) * DAY_MS;
        let expected: i64 = (0..CALLS)
            .map(|call| match call < CALLS / 2 {
                true => now - 40 * DAY_MS + call * (39 * DAY_MS) / (CALLS / 2),
                false => now - DAY_MS + (call - CALLS / 2) * DAY_MS / (CALLS / 2),
            })
            .filter(|at| *at >= kept_days)
            .count() as i64
            * PER_CALL as i64;
        assert_eq!(total, expected as u64);
    }

    fn ms(n: u64) -> Option<Duration> {
        Some(Duration::from_millis(n))
    }

    #[test]
    fn a_sample_names_the_buckets_of_its_times() {
        assert_eq!(Sample::of(None, None), Sample::NONE);
        // 0.4 ms and 1 ms are in the first bucket, 1.2 ms in the second.
        assert_eq!(
            Sample::of(Some(Duration::from_micros(400)), None).0,
            WAIT as u16
        );
        assert_eq!(Sample::of(ms(1), None).0, WAIT as u16);
        assert_eq!(
            Sample::of(None, Some(Duration::from_micros(1200))).0,
            64 * (RUN as u16 + 1)
        );
        // Past the last bound: the last bucket, still under 64.
        let s = Sample::of(ms(7_200_000), ms(7_200_000));
        assert_eq!(s.0 % 64, (WAIT + BUCKETS - 1) as u16);
        assert_eq!(s.0 / 64, (RUN + BUCKETS - 1) as u16);
    }

    #[test]
    fn quantiles_fall_within_the_bucket_of_the_true_value() {
        let mut row = Row::default();
        // 90 waits of 3 s (bucket 2.5 s to 5 s) and 10 of 20 s (10 s to 30 s).
        row.0[WAIT + bucket(Duration::from_secs(3))] = 90;
        row.0[WAIT + bucket(Duration::from_secs(20))] = 10;
        let p50 = row.wait_ms(0.5).unwrap();
        assert!((2_500.0..=5_000.0).contains(&p50), "{p50}");
        let p95 = row.wait_ms(0.95).unwrap();
        assert!((10_000.0..=30_000.0).contains(&p95), "{p95}");
        assert_eq!(row.run_ms(0.5), None);
        // Over an hour: the last bucket answers its lower bound.
        let mut long = Row::default();
        long.0[RUN + BUCKETS - 1] = 1;
        assert_eq!(long.run_ms(0.95), Some(3_600_000.0));
    }

    #[test]
    fn rows_read_big_endian_counters_and_short_strings_as_zeros() {
        let mut bytes = vec![0u8; 8];
        bytes[..4].copy_from_slice(&7u32.to_be_bytes());
        bytes[4..].copy_from_slice(&70_000u32.to_be_bytes());
        let row = Row::from_bytes(&bytes);
        assert_eq!((row.succeeded(), row.failed(), row.dead()), (7, 70_000, 0));
    }

    #[test]
    fn a_stamp_names_the_hour_day_and_minute_of_its_time() {
        let keys = QueueKeys::new("q", "jobs:q", "n1");
        // 2026-12-07T14:03:20Z
        let at = 1_796_652_200_000;
        let s = Stamp::at(&keys, at);
        let hour = at / HOUR_MS;
        assert_eq!(s.minutes, format!("{{jobs:q}}:history:m:{hour}"));
        assert_eq!(s.day, format!("{{jobs:q}}:history:d:{}", at / DAY_MS));
        assert_eq!(s.offset, 3 * FIELDS);
        assert_eq!(s.minutes_expire_at, (hour + 1) * 3600 + 86_400);
        assert_eq!(Range::Day.first_ms(at), (at / MINUTE_MS - 1439) * MINUTE_MS);
    }
}
