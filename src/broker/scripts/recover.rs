//! `lua/recover.lua`: returns the in-flight jobs of a dead node to the head
//! of their queue, or dead-letters the ones that crashed too many daemons,
//! each with its status record (a tracked job that goes dead is listed in
//! the queue's results). Returns one code per job: 1 requeued, 2
//! dead-lettered, 0 already gone.

use redis::ScriptInvocation;

use super::Record;
use crate::broker::events::StatusUpdate;
use crate::broker::{QueueKeys, keys};
use crate::config::Group;

script!("recover.lua", "group_of.lua");

/// Where the reaper sends a recovered job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecoverTo {
    /// Back to the head of the queue.
    Queue,
    /// To the dead letter list (poison).
    Dead,
}

/// One job a recovery moves out of an in-flight list.
#[derive(Debug, Clone)]
pub(crate) struct Move {
    /// The item as it sits in the list.
    pub(crate) item: Vec<u8>,
    /// Where it goes.
    pub(crate) to: RecoverTo,
    /// What goes there in its place (deliveries counted).
    pub(crate) replacement: Vec<u8>,
    /// Its status record's new fields, if its queue tracks jobs.
    pub(crate) status: Option<StatusUpdate>,
    /// A flow's node going dead: its end, kept for its flow with the move.
    pub(crate) flow: Option<String>,
}

/// KEYS[1..=8]: the in-flight list, the queue list, the dead letter list,
/// the stats hash, the results list, the node's running counts of groups,
/// the groups' turns and the ends of flow jobs. The status records the jobs name by index come
/// after them.
const FIXED_KEYS: usize = 8;

/// One call of `recover.lua`.
pub(crate) struct Call<'a> {
    /// KEYS[2..=5] the queue's keys.
    pub(crate) keys: &'a QueueKeys,
    /// KEYS[1] is this node's in-flight list.
    pub(crate) node: &'a str,
    /// ARGV[1] the dead letter list's length cap.
    pub(crate) dead_cap: u32,
    /// ARGV[2] the results list's length cap.
    pub(crate) results_cap: u32,
    /// ARGV[3] the payload's field naming a job's group, for a queue with
    /// groups: each job is counted out of its group's jobs in flight; and
    /// ARGV[4], an ordered group's list is where its job also is.
    pub(crate) group: Option<&'a Group>,
    /// ARGV[5..] the ends of the flow nodes that go dead, then the jobs,
    /// newest first: per job its item, where it goes,
    /// what goes there, the id to list in the results (a tracked job that
    /// goes dead: one with a status record) and its status record.
    pub(crate) moves: &'a [Move],
    /// Whether the status records are written by the script: false on a
    /// Redis Cluster, where a record lives in another slot than the queue
    /// and the caller writes it in a step of its own.
    pub(crate) records: bool,
}

impl Call<'_> {
    /// The invocation.
    pub(crate) fn invocation(&self) -> ScriptInvocation<'static> {
        let k = self.keys;
        let mut inv = SCRIPT.key(k.inflight_of(self.node));
        inv.key(&k.list)
            .key(&k.dead)
            .key(&k.stats)
            .key(&k.results)
            .key(k.running_of(self.node))
            .key(&k.groups)
            .key(&k.flows_ended)
            .arg(self.dead_cap)
            .arg(self.results_cap)
            .arg(self.group.map_or("", |g| g.key.as_str()))
            .arg(match self.group {
                Some(g) if g.ordered => k.group_prefix(),
                _ => String::new(),
            });
        let flows = self
            .moves
            .iter()
            .enumerate()
            .filter_map(|(at, m)| Some((at + 1, m.flow.as_deref()?)));
        inv.arg(flows.clone().count());
        for (at, end) in flows {
            inv.arg(at).arg(end);
        }
        // The index in KEYS of the last status record named so far.
        let mut record = FIXED_KEYS;
        for m in self.moves {
            let to = match m.to {
                RecoverTo::Queue => "queue",
                RecoverTo::Dead => "dead",
            };
            let listed = match (m.to, &m.status) {
                (RecoverTo::Dead, Some(s)) => s.id.as_str(),
                _ => "",
            };
            let status = m.status.as_ref().filter(|_| self.records).map(|s| {
                inv.key(keys::job(&s.id));
                record += 1;
                (record, s)
            });
            inv.arg(&m.item)
                .arg(to)
                .arg(&m.replacement)
                .arg(listed)
                .arg(Record(status));
        }
        inv
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

    fn to(item: &str, to: RecoverTo, replacement: &str, state: JobState) -> Move {
        Move {
            item: item.as_bytes().to_vec(),
            to,
            replacement: replacement.as_bytes().to_vec(),
            status: Some(StatusUpdate {
                id: item.to_owned(),
                fields: vec![("state", state.as_str().to_owned())],
                ttl: Duration::from_secs(60),
            }),
            flow: None,
        }
    }

    #[tokio::test]
    async fn requeues_or_dead_letters_what_is_still_there_with_its_record() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let k = QueueKeys::new("q", "jobs:q", "n1");
        let inflight = k.inflight_of("gone");
        let _: () = conn.rpush(&inflight, &["a", "b", "c"]).await.unwrap();
        let _: () = conn.rpush(&k.list, "w").await.unwrap();
        let _: () = conn.rpush(&k.dead, &["d1", "d2"]).await.unwrap();
        let moves = [
            to("c", RecoverTo::Queue, "c+1", JobState::Waiting),
            to("b", RecoverTo::Dead, "b-dead", JobState::Dead),
            to("x", RecoverTo::Queue, "x+1", JobState::Waiting),
        ];
        let codes: Vec<u8> = Call {
            keys: &k,
            node: "gone",
            dead_cap: 2,
            results_cap: 10,
            group: None,
            moves: &moves,
            records: true,
        }
        .invocation()
        .invoke_async(&mut conn)
        .await
        .unwrap();
        assert_eq!(codes, [1, 2, 0]);
        let left: Vec<String> = conn.lrange(&inflight, 0, -1).await.unwrap();
        assert_eq!(left, ["a"]);
        let list: Vec<String> = conn.lrange(&k.list, 0, -1).await.unwrap();
        assert_eq!(list, ["c+1", "w"]);
        let dead: Vec<String> = conn.lrange(&k.dead, 0, -1).await.unwrap();
        assert_eq!(dead, ["b-dead", "d1"]);
        let stats: HashMap<String, u64> = conn.hgetall(&k.stats).await.unwrap();
        let expected: HashMap<String, u64> =
            [(Stat::Dead, 1), (Stat::Failed, 1), (Stat::Recovered, 1)]
                .into_iter()
                .map(|(s, n)| (s.field().to_owned(), n))
                .collect();
        assert_eq!(stats, expected);
        for (id, state) in [("c", JobState::Waiting), ("b", JobState::Dead)] {
            let record: HashMap<String, String> = conn.hgetall(keys::job(id)).await.unwrap();
            assert_eq!(
                record.get("state").map(String::as_str),
                Some(state.as_str())
            );
            let ttl: i64 = conn.pttl(keys::job(id)).await.unwrap();
            assert!((1..=60_000).contains(&ttl), "{ttl}");
        }
        let written: bool = conn.exists(keys::job("x")).await.unwrap();
        assert!(!written, "no record for a job no longer there");
        // The tracked job quarantined is listed in the results; the ones
        // requeued or gone are not.
        let listed: Vec<String> = conn.lrange(&k.results, 0, -1).await.unwrap();
        assert_eq!(listed, ["b"]);
    }

    #[tokio::test]
    async fn on_a_cluster_leaves_the_status_records_to_the_caller() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let k = QueueKeys::new("q", "jobs:q", "n1");
        let _: () = conn.rpush(k.inflight_of("gone"), "a").await.unwrap();
        let _: () = conn.rpush(k.inflight_of("gone"), "p").await.unwrap();
        let moves = [
            to("p", RecoverTo::Dead, "p-dead", JobState::Dead),
            to("a", RecoverTo::Queue, "a+1", JobState::Waiting),
        ];
        let codes: Vec<u8> = Call {
            keys: &k,
            node: "gone",
            dead_cap: 2,
            results_cap: 10,
            group: None,
            moves: &moves,
            records: false,
        }
        .invocation()
        .invoke_async(&mut conn)
        .await
        .unwrap();
        assert_eq!(codes, [2, 1]);
        let list: Vec<String> = conn.lrange(&k.list, 0, -1).await.unwrap();
        assert_eq!(list, ["a+1"]);
        let written: bool = conn.exists(keys::job("a")).await.unwrap();
        assert!(!written);
        // Listed all the same: the list is in the queue's slot.
        let listed: Vec<String> = conn.lrange(&k.results, 0, -1).await.unwrap();
        assert_eq!(listed, ["p"]);
    }
}
