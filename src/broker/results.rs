//! A queue's results list `{K}:results`: the ids of its tracked jobs that
//! ended (succeeded or dead), newest first, pushed by `lua/finish.lua` in
//! the step that records each outcome and cut there to [`CAP`]. What each
//! job did is in its status record `conveyor:job:<id>`, read here beside
//! the id: on a Redis Cluster the records live in other slots than the
//! list, so they are read with commands of their own (one pipeline, which
//! the cluster connection splits by node), never in a script with it.

use std::collections::{HashMap, HashSet};

use super::events::{StatusUpdate, add_statuses};
use super::{Broker, BrokerError, QueueKeys, keys};

/// Most ids a results list keeps: the newest thousand ended jobs of a
/// queue. (Between two flushes it may hold one flush's worth more.)
pub(crate) const CAP: u32 = 1_000;

/// Ids read per round trip at least (with their records, in the next).
const CHUNK: usize = 100;

/// A status record, field by field.
pub(crate) type Record = HashMap<String, String>;

/// What a read of a results list found.
#[derive(Debug, Default)]
pub(crate) struct Listed {
    /// The ids kept, newest first, each with its status record.
    pub(crate) jobs: Vec<(String, Record)>,
    /// Ids read whose status record had expired (or was deleted).
    pub(crate) expired: u64,
}

impl Broker {
    /// Records the end of a tracked job that ended outside the daemons'
    /// outcome script (a waiting or scheduled job cancelled): its status
    /// record, and its id in the results list, cut to [`CAP`]. Commands of
    /// their own: on a Redis Cluster the record lives in another slot.
    pub(crate) async fn record_ended(
        &self,
        q: &QueueKeys,
        status: &StatusUpdate,
    ) -> Result<(), BrokerError> {
        let mut pipe = redis::pipe();
        add_statuses(&mut pipe, std::slice::from_ref(status));
        pipe.cmd("LPUSH").arg(&q.results).arg(&status.id).ignore();
        pipe.cmd("LTRIM")
            .arg(&q.results)
            .arg(0)
            .arg(CAP - 1)
            .ignore();
        let mut conn = self.conn().await?;
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// The newest `limit` jobs of the results list of `q` whose record
    /// `keep` accepts, each id once (its newest place: a job retried from
    /// the dead letter list that ended again is there twice). Reads the
    /// list a chunk at a time, and at most [`CAP`] ids in all.
    pub(crate) async fn results(
        &self,
        q: &QueueKeys,
        limit: usize,
        keep: impl Fn(&Record) -> bool,
    ) -> Result<Listed, BrokerError> {
        let mut listed = Listed::default();
        let mut seen: HashSet<String> = HashSet::new();
        let chunk = limit.clamp(CHUNK, CAP as usize);
        let mut start = 0;
        let mut conn = self.conn().await?;
        while listed.jobs.len() < limit && start < CAP as usize {
            let ids: Vec<String> = redis::cmd("LRANGE")
                .arg(&q.results)
                .arg(start)
                .arg(start + chunk - 1)
                .query_async(&mut conn)
                .await?;
            let fresh: Vec<String> = ids
                .iter()
                .filter(|id| seen.insert((*id).clone()))
                .cloned()
                .collect();
            if !fresh.is_empty() {
                let mut pipe = redis::pipe();
                for id in &fresh {
                    pipe.cmd("HGETALL").arg(keys::job(id));
                }
                let records: Vec<Record> = pipe.query_async(&mut conn).await?;
                for (id, record) in fresh.into_iter().zip(records) {
                    if record.is_empty() {
                        listed.expired += 1;
                    } else if listed.jobs.len() < limit && keep(&record) {
                        listed.jobs.push((id, record));
                    }
                }
            }
            if ids.len() < chunk {
                break;
            }
            start += chunk;
        }
        Ok(listed)
    }
}

#[cfg(test)]
mod tests {
    use redis::AsyncCommands as _;

    use super::*;
    use crate::broker::fixture::TestRedis;
    use crate::config::{MaskedUrl, RedisConfig};

    fn broker(redis: &TestRedis) -> Broker {
        let config = RedisConfig {
            url: MaskedUrl::new(redis.url()),
            ..RedisConfig::default()
        };
        Broker::new(&config).unwrap()
    }

    #[tokio::test]
    async fn reads_each_id_once_with_its_record_and_counts_the_expired() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let broker = broker(&redis);
        let k = QueueKeys::new("q", "jobs:q", "n1");
        // Newest first: j3 ended twice (retried from the dead list).
        let ids = ["j3", "gone", "j2", "j3", "j1", "running"];
        let _: () = conn.rpush(&k.results, &ids).await.unwrap();
        for (id, state) in [
            ("j1", "succeeded"),
            ("j2", "dead"),
            ("j3", "succeeded"),
            ("running", "running"),
        ] {
            let _: () = conn.hset(keys::job(id), "state", state).await.unwrap();
        }
        let ended = |r: &Record| matches!(r["state"].as_str(), "succeeded" | "dead");
        let all = broker.results(&k, 10, ended).await.unwrap();
        let got: Vec<(&str, &str)> = all
            .jobs
            .iter()
            .map(|(id, r)| (id.as_str(), r["state"].as_str()))
            .collect();
        assert_eq!(
            got,
            [("j3", "succeeded"), ("j2", "dead"), ("j1", "succeeded")]
        );
        assert_eq!(all.expired, 1);
        let two = broker.results(&k, 2, ended).await.unwrap();
        assert_eq!(two.jobs.len(), 2);
        let dead = broker
            .results(&k, 10, |r| r["state"] == "dead")
            .await
            .unwrap();
        assert_eq!(dead.jobs.len(), 1);
        assert_eq!(dead.jobs[0].0, "j2");
    }

    #[tokio::test]
    async fn finds_the_few_kept_among_many_read() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let broker = broker(&redis);
        let k = QueueKeys::new("q", "jobs:q", "n1");
        // 900 successes, then (oldest) 3 deaths: found past the first chunks.
        let ids: Vec<String> = (0..903).map(|i| format!("j{i}")).collect();
        let _: () = conn.rpush(&k.results, &ids).await.unwrap();
        for (i, id) in ids.iter().enumerate() {
            let state = if i >= 900 { "dead" } else { "succeeded" };
            let _: () = conn.hset(keys::job(id), "state", state).await.unwrap();
        }
        let dead = broker
            .results(&k, 20, |r| r["state"] == "dead")
            .await
            .unwrap();
        let got: Vec<&str> = dead.jobs.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(got, ["j900", "j901", "j902"]);
    }
}
