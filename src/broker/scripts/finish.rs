//! `lua/finish.lua`: records the outcomes of many jobs of one queue at once,
//! each leaving the in-flight list in the step that records it (and writes
//! its status record, and lists a tracked job that ended in the queue's
//! results, and counts it in the queue's history). Returns one flag per
//! job: 1 recorded, 0 no longer in flight.

use redis::Pipeline;

use super::Record;
use crate::broker::events::StatusUpdate;
use crate::broker::history::{Counted, Sample, Stamp, Tally};
use crate::broker::queue::Outcome;
use crate::broker::{QueueKeys, keys};
use crate::config::Group;

script!("finish.lua", "group_of.lua");

/// One outcome with the item it is for, the status record it writes and
/// the history buckets it counts in.
pub(crate) type Entry<'a> = (&'a [u8], &'a Outcome, Option<&'a StatusUpdate>, Sample);

/// KEYS[1..=11]: the in-flight list, the queue list, the scheduled set, the
/// dead letter list, the stats hash, the results list, the history's two
/// strings, the node's running counts of groups, the ordered groups' retry
/// times, the groups' turns and the ends of flow jobs. The unique locks and status records the
/// jobs name by index come after them.
const FIXED_KEYS: usize = 12;

/// One call of `finish.lua`: outcomes of one queue.
pub(crate) struct Call<'a> {
    /// KEYS[1..=6] the queue's keys seen from this node.
    pub(crate) keys: &'a QueueKeys,
    /// ARGV[1] the dead letter list's length cap.
    pub(crate) dead_cap: u32,
    /// ARGV[2] the results list's length cap. It is sent only when a job of
    /// the call has a status record (0 otherwise: an untracked queue's
    /// calls never touch the list), and the ids of the jobs with one that
    /// succeed or die go to the list. (A unique job without a record in
    /// the same call, which only a reload turning `track` on or off
    /// mixes in, is listed too: readers skip ids without a record.)
    pub(crate) results_cap: u32,
    /// Where the outcomes are counted in the queue's history; `None` to
    /// keep none.
    pub(crate) history: Option<&'a Stamp>,
    /// ARGV[7] the payload's field naming a job's group, for a queue with
    /// groups: each job is counted out of its group's jobs in flight; and
    /// ARGV[8], an ordered group's list is where its job also is.
    pub(crate) group: Option<&'a Group>,
    /// ARGV[9..] what the jobs add to the history's counters, then the jobs, each with the item as taken and its status
    /// record, if any.
    pub(crate) entries: &'a [Entry<'a>],
    /// Whether the status records are written by the script: false on a
    /// Redis Cluster, where a record lives in another slot than the queue
    /// and the caller writes it in a step of its own.
    pub(crate) records: bool,
}

impl Call<'_> {
    /// Adds the call to `pipe` as an EVALSHA command written directly: a
    /// script invocation keeps every argument in a vector of its own and
    /// copies them all again into the command, per job.
    pub(crate) fn add_to(&self, pipe: &mut Pipeline) {
        let k = self.keys;
        // KEYS[6..]: each unique lock once, then the status records.
        let mut locks: Vec<&str> = Vec::new();
        for (_, outcome, _, _) in self.entries {
            if let Some(lock) = lock_of(outcome) {
                if !locks.contains(&lock) {
                    locks.push(lock);
                }
            }
        }
        let lock_index = |outcome: &Outcome| {
            lock_of(outcome)
                .and_then(|u| locks.iter().position(|l| *l == u))
                .map_or(0, |at| FIXED_KEYS + 1 + at)
        };
        let records = match self.records {
            true => self.entries.iter().filter(|e| e.2.is_some()).count(),
            false => 0,
        };
        let cmd = pipe.cmd("EVALSHA");
        cmd.arg(SCRIPT.get_hash())
            .arg(FIXED_KEYS + locks.len() + records);
        cmd.arg(&k.inflight)
            .arg(&k.list)
            .arg(&k.scheduled)
            .arg(&k.dead)
            .arg(&k.stats)
            .arg(&k.results);
        match self.history {
            Some(stamp) => cmd.arg(&stamp.minutes).arg(&stamp.day),
            // Named, never touched.
            None => cmd.arg(&k.stats).arg(&k.stats),
        };
        cmd.arg(&k.running)
            .arg(&k.group_due)
            .arg(&k.groups)
            .arg(&k.flows_ended);
        for lock in &locks {
            cmd.arg(k.unique(lock));
        }
        let tracked = self.entries.iter().filter_map(|e| e.2);
        for status in tracked.filter(|_| self.records) {
            cmd.arg(keys::job(&status.id));
        }
        let listed = self.entries.iter().any(|e| e.2.is_some());
        cmd.arg(self.dead_cap)
            .arg(if listed { self.results_cap } else { 0 });
        let field = self.group.map_or("", |g| g.key.as_str());
        let ordered = match self.group {
            Some(g) if g.ordered => k.group_prefix(),
            _ => String::new(),
        };
        match self.history {
            Some(stamp) => {
                let mut tally = Tally::default();
                for (_, outcome, _, sample) in self.entries {
                    if let Some(counted) = counted(outcome) {
                        tally.add(counted, *sample);
                    }
                }
                cmd.arg(stamp.offset)
                    .arg(stamp.last)
                    .arg(stamp.minutes_expire_at)
                    .arg(stamp.day_expire_at)
                    .arg(field)
                    .arg(&ordered)
                    .arg(tally.counters().count());
                for (field, n) in tally.counters() {
                    cmd.arg(field).arg(n);
                }
            }
            None => {
                cmd.arg(-1)
                    .arg(0)
                    .arg(0)
                    .arg(0)
                    .arg(field)
                    .arg(&ordered)
                    .arg(0);
            }
        }
        // The flow nodes' ends, by the job's place in the call.
        let flows = self
            .entries
            .iter()
            .enumerate()
            .filter_map(|(at, e)| match e.1 {
                Outcome::Succeeded {
                    flow: Some(end), ..
                }
                | Outcome::Dead {
                    flow: Some(end), ..
                } => Some((at + 1, end)),
                _ => None,
            });
        cmd.arg(flows.clone().count());
        for (at, end) in flows {
            cmd.arg(at).arg(end);
        }
        // The index in KEYS of the last status record named so far.
        let mut record = FIXED_KEYS + locks.len();
        for (item, outcome, status, sample) in self.entries {
            let mut job = JobArgs::of(outcome, lock_index(outcome));
            if let Some(s) = status.filter(|_| job.ends()) {
                // The results list needs it (whatever the record's slot).
                job.id = &s.id;
            }
            cmd.arg(job.op)
                .arg(*item)
                .arg(job.data)
                .arg(job.num)
                .arg(job.id)
                .arg(sample.0);
            let status = status.filter(|_| self.records).map(|s| {
                record += 1;
                (record, s)
            });
            cmd.arg(Record(status));
        }
    }
}

/// How an outcome counts in the history, if it does (as `lua/finish.lua`
/// reads its op: `ok`, `retry`, `dead`).
fn counted(outcome: &Outcome) -> Option<Counted> {
    match outcome {
        Outcome::Succeeded { .. } => Some(Counted::Succeeded),
        Outcome::Retry { .. } => Some(Counted::Retried),
        Outcome::Dead { .. } => Some(Counted::Dead),
        Outcome::Snooze { .. } | Outcome::Requeue { .. } | Outcome::GiveBack => None,
    }
}

/// The unique lock an outcome releases, if any.
fn lock_of(outcome: &Outcome) -> Option<&str> {
    match outcome {
        Outcome::Succeeded { unique_key, .. } | Outcome::Dead { unique_key, .. } => {
            unique_key.as_deref()
        }
        _ => None,
    }
}

/// A job's first five values in ARGV (its status record follows them).
struct JobArgs<'a> {
    /// `ok`, `retry`, `dead`, `snooze` or `requeue`.
    op: &'static str,
    /// The envelope to run later or dead; what to push back ('' for the
    /// item itself); '' for the rest.
    data: &'a str,
    /// When it is due (ms), the index in KEYS of its unique lock (0 for
    /// none), or 1 to count a requeue as recovered.
    num: i64,
    /// The job id that must hold the lock to release it, or that goes to
    /// the results list; '' for none.
    id: &'a str,
}

impl<'a> JobArgs<'a> {
    /// Whether the job ends here (succeeded or dead): a tracked one is
    /// listed in the queue's results.
    fn ends(&self) -> bool {
        matches!(self.op, "ok" | "dead")
    }

    /// The values of `outcome`, whose unique lock is KEYS[`lock`] (0: none).
    fn of(outcome: &'a Outcome, lock: usize) -> Self {
        let args = |op, data, num, id| Self { op, data, num, id };
        let lock = lock as i64;
        match outcome {
            // The id matters here to release a unique lock only; a tracked
            // job's is added for the results list by the caller.
            Outcome::Succeeded { id, unique_key, .. } => match unique_key {
                Some(_) => args("ok", "", lock, id),
                None => args("ok", "", 0, ""),
            },
            Outcome::Retry { envelope, due_ms } => args("retry", envelope, *due_ms, ""),
            Outcome::Snooze { envelope, due_ms } => args("snooze", envelope, *due_ms, ""),
            Outcome::Dead { envelope, id, .. } => args("dead", envelope, lock, id),
            Outcome::Requeue { replacement } => {
                args("requeue", replacement.as_deref().unwrap_or(""), 1, "")
            }
            Outcome::GiveBack => args("requeue", "", 0, ""),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use redis::AsyncCommands as _;

    use super::*;
    use crate::broker::events::StatusUpdate;
    use crate::broker::fixture::TestRedis;
    use crate::broker::stats::Stat;
    use crate::job::JobState;

    fn record(id: &str, state: JobState) -> StatusUpdate {
        StatusUpdate {
            id: id.to_owned(),
            fields: vec![
                ("state", state.as_str().to_owned()),
                ("attempt", "1".into()),
            ],
            ttl: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn records_each_outcome_with_its_counts_locks_and_status_records() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let k = QueueKeys::new("q", "jobs:q", "n1");
        let taken = [
            "ok",
            "retry",
            "dead",
            "snooze",
            "requeue",
            "give-back",
            "ok-2",
        ];
        let _: () = conn.rpush(&k.inflight, &taken).await.unwrap();
        let _: () = conn.rpush(&k.dead, &["old-1", "old-2"]).await.unwrap();
        let _: () = conn.set(k.unique("u-ok"), "j-ok").await.unwrap();
        let _: () = conn.set(k.unique("u-dead"), "someone-else").await.unwrap();
        let ok = Outcome::Succeeded {
            id: "j-ok".into(),
            unique_key: Some("u-ok".into()),
            flow: None,
        };
        let retry = Outcome::Retry {
            envelope: "retry-env".into(),
            due_ms: 5000,
        };
        let dead = Outcome::Dead {
            envelope: "dead-env".into(),
            id: "j-dead".into(),
            unique_key: Some("u-dead".into()),
            flow: None,
        };
        let snooze = Outcome::Snooze {
            envelope: "snooze-env".into(),
            due_ms: 7000,
        };
        let requeue = Outcome::Requeue { replacement: None };
        let plain = Outcome::Succeeded {
            id: String::new(),
            unique_key: None,
            flow: None,
        };
        let gone = Outcome::Succeeded {
            id: "j-gone".into(),
            unique_key: None,
            flow: None,
        };
        let (ok_rec, dead_rec, gone_rec) = (
            record("j-ok", JobState::Succeeded),
            record("j-dead", JobState::Dead),
            record("j-gone", JobState::Succeeded),
        );
        let entries: Vec<Entry<'_>> = vec![
            (b"ok", &ok, Some(&ok_rec), Sample::NONE),
            (b"retry", &retry, None, Sample::NONE),
            (b"dead", &dead, Some(&dead_rec), Sample::NONE),
            (b"snooze", &snooze, None, Sample::NONE),
            (b"requeue", &requeue, None, Sample::NONE),
            (b"give-back", &Outcome::GiveBack, None, Sample::NONE),
            (b"ok-2", &plain, None, Sample::NONE),
            (b"not-in-flight", &gone, Some(&gone_rec), Sample::NONE),
        ];
        let mut pipe = redis::pipe();
        pipe.load_script(&SCRIPT).ignore();
        Call {
            keys: &k,
            dead_cap: 2,
            results_cap: 10,
            history: None,
            group: None,
            entries: &entries,
            records: true,
        }
        .add_to(&mut pipe);
        let (flags,): (Vec<u8>,) = pipe.query_async(&mut conn).await.unwrap();
        assert_eq!(flags, [1, 1, 1, 1, 1, 1, 1, 0]);
        let inflight: u64 = conn.llen(&k.inflight).await.unwrap();
        assert_eq!(inflight, 0);
        // Requeued at the head, newest first; the dead list cut to its cap.
        let list: Vec<String> = conn.lrange(&k.list, 0, -1).await.unwrap();
        assert_eq!(list, ["give-back", "requeue"]);
        let dead_list: Vec<String> = conn.lrange(&k.dead, 0, -1).await.unwrap();
        assert_eq!(dead_list, ["dead-env", "old-1"]);
        let scheduled: Vec<(String, i64)> =
            conn.zrange_withscores(&k.scheduled, 0, -1).await.unwrap();
        assert_eq!(
            scheduled,
            [
                ("retry-env".to_owned(), 5000),
                ("snooze-env".to_owned(), 7000)
            ]
        );
        let stats: HashMap<String, u64> = conn.hgetall(&k.stats).await.unwrap();
        let expected = [
            (Stat::Processed, 4),
            (Stat::Failed, 2),
            (Stat::Retried, 1),
            (Stat::Dead, 1),
            (Stat::Recovered, 1),
        ];
        assert_eq!(stats.len(), expected.len(), "{stats:?}");
        for (stat, n) in expected {
            assert_eq!(stats.get(stat.field()), Some(&n), "{stat:?}");
        }
        // A lock is released by the job that holds it only.
        let held: Option<String> = conn.get(k.unique("u-ok")).await.unwrap();
        assert_eq!(held, None);
        let held: Option<String> = conn.get(k.unique("u-dead")).await.unwrap();
        assert_eq!(held.as_deref(), Some("someone-else"));
        // A record is written with the outcome it tells, never without.
        for rec in [&ok_rec, &dead_rec] {
            let fields: HashMap<String, String> = conn.hgetall(keys::job(&rec.id)).await.unwrap();
            let expected: HashMap<String, String> = rec
                .fields
                .iter()
                .map(|(f, v)| ((*f).to_owned(), v.clone()))
                .collect();
            assert_eq!(fields, expected);
            let ttl: i64 = conn.pttl(keys::job(&rec.id)).await.unwrap();
            assert!((1..=60_000).contains(&ttl), "{ttl}");
        }
        let gone: bool = conn.exists(keys::job("j-gone")).await.unwrap();
        assert!(!gone);
        // The tracked jobs that ended here are listed, newest first; the
        // one no longer in flight is not.
        let listed: Vec<String> = conn.lrange(&k.results, 0, -1).await.unwrap();
        assert_eq!(listed, ["j-dead", "j-ok"]);
    }

    #[tokio::test]
    async fn on_a_cluster_leaves_the_status_records_to_the_caller() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let k = QueueKeys::new("q", "jobs:q", "n1");
        let _: () = conn.rpush(&k.inflight, "item").await.unwrap();
        let ok = Outcome::Succeeded {
            id: "j1".into(),
            unique_key: None,
            flow: None,
        };
        let rec = record("j1", JobState::Succeeded);
        let entries: Vec<Entry<'_>> = vec![(b"item", &ok, Some(&rec), Sample::NONE)];
        let mut pipe = redis::pipe();
        pipe.load_script(&SCRIPT).ignore();
        Call {
            keys: &k,
            dead_cap: 10,
            results_cap: 10,
            history: None,
            group: None,
            entries: &entries,
            records: false,
        }
        .add_to(&mut pipe);
        let (flags,): (Vec<u8>,) = pipe.query_async(&mut conn).await.unwrap();
        assert_eq!(flags, [1]);
        let processed: u64 = conn.hget(&k.stats, Stat::Processed.field()).await.unwrap();
        assert_eq!(processed, 1);
        let written: bool = conn.exists(keys::job("j1")).await.unwrap();
        assert!(!written);
        // Listed all the same: the list is in the queue's slot.
        let listed: Vec<String> = conn.lrange(&k.results, 0, -1).await.unwrap();
        assert_eq!(listed, ["j1"]);
    }

    /// Runs one call of `entries` that are all in flight.
    async fn finish(
        conn: &mut redis::aio::MultiplexedConnection,
        k: &QueueKeys,
        entries: &[Entry<'_>],
        results_cap: u32,
    ) {
        let items: Vec<&[u8]> = entries.iter().map(|e| e.0).collect();
        let _: () = conn.rpush(&k.inflight, items).await.unwrap();
        let mut pipe = redis::pipe();
        pipe.load_script(&SCRIPT).ignore();
        Call {
            keys: k,
            dead_cap: 10,
            results_cap,
            history: None,
            group: None,
            entries,
            records: true,
        }
        .add_to(&mut pipe);
        let (flags,): (Vec<u8>,) = pipe.query_async(conn).await.unwrap();
        assert!(flags.iter().all(|f| *f == 1), "{flags:?}");
    }

    #[tokio::test]
    async fn lists_tracked_jobs_that_ended_newest_first_within_the_cap() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let k = QueueKeys::new("q", "jobs:q", "n1");
        let ids: Vec<String> = (0..7).map(|i| format!("j{i}")).collect();
        let ok: Vec<Outcome> = ids
            .iter()
            .map(|_| Outcome::Succeeded {
                id: String::new(),
                unique_key: None,
                flow: None,
            })
            .collect();
        let recs: Vec<StatusUpdate> = ids
            .iter()
            .map(|id| record(id, JobState::Succeeded))
            .collect();
        let items: Vec<Vec<u8>> = ids.iter().map(|id| id.clone().into_bytes()).collect();
        // Two flushes of a tracked queue, over a cap of 5.
        for range in [0..4, 4..7] {
            let entries: Vec<Entry<'_>> = range
                .map(|i| (items[i].as_slice(), &ok[i], Some(&recs[i]), Sample::NONE))
                .collect();
            finish(&mut conn, &k, &entries, 5).await;
        }
        let listed: Vec<String> = conn.lrange(&k.results, 0, -1).await.unwrap();
        assert_eq!(listed, ["j6", "j5", "j4", "j3", "j2"]);
        // A retry, a snooze and a requeue end nothing: not listed.
        let retry = Outcome::Retry {
            envelope: "e".into(),
            due_ms: 1,
        };
        let requeue = Outcome::Requeue { replacement: None };
        let rec = record("j-retry", JobState::Retrying);
        finish(
            &mut conn,
            &k,
            &[
                (b"r1", &retry, Some(&rec), Sample::NONE),
                (b"r2", &requeue, Some(&rec), Sample::NONE),
            ],
            5,
        )
        .await;
        let after: Vec<String> = conn.lrange(&k.results, 0, -1).await.unwrap();
        assert_eq!(after, listed);
    }

    #[tokio::test]
    async fn an_untracked_queue_lists_nothing_even_for_its_unique_jobs() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let k = QueueKeys::new("q", "jobs:q", "n1");
        let _: () = conn.set(k.unique("u"), "j-u").await.unwrap();
        let unique = Outcome::Succeeded {
            id: "j-u".into(),
            unique_key: Some("u".into()),
            flow: None,
        };
        let dead = Outcome::Dead {
            envelope: "dead-env".into(),
            id: "j-d".into(),
            unique_key: None,
            flow: None,
        };
        finish(
            &mut conn,
            &k,
            &[
                (b"u", &unique, None, Sample::NONE),
                (b"d", &dead, None, Sample::NONE),
            ],
            5,
        )
        .await;
        let exists: bool = conn.exists(&k.results).await.unwrap();
        assert!(!exists, "no results list for an untracked queue");
        let held: Option<String> = conn.get(k.unique("u")).await.unwrap();
        assert_eq!(held, None, "its lock released all the same");
    }
}
