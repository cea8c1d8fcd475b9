//! `lua/groups.lua`: a queue's groups with their jobs waiting, held and in
//! flight, busiest first, and the totals. Read as [`Groups`].

use redis::{FromRedisValue, ScriptInvocation, Value};

use crate::broker::QueueKeys;

script!("groups.lua");

/// The most groups one reading looks at.
pub(crate) const LOOK_MOST: usize = 100_000;

/// Of how many groups the counts read the head job's creation time, for
/// the queue's oldest waiting job: those holding jobs the longest (the
/// first in their turns' order), where it is, unless more groups than
/// these have held jobs since before it came.
pub(crate) const HEADS_MOST: usize = 100;

/// One group as `lua/groups.lua` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GroupCounts {
    /// The value of the group's payload field (`""`: jobs without it).
    pub group: String,
    /// Jobs sorted into the group, to be taken in its turn.
    pub waiting: u64,
    /// Jobs sorted into the group while it has as many in flight as its
    /// limit allows.
    pub held: u64,
    /// Jobs of the group in flight on some node.
    pub running: u64,
}

/// A queue's groups, as `lua/groups.lua` reads them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Groups {
    /// Jobs waiting in every group.
    pub waiting: u64,
    /// Jobs held in every group.
    pub held: u64,
    /// Jobs of every group in flight.
    pub running: u64,
    /// How many groups hold or run jobs.
    pub count: u64,
    /// The busiest groups, as many as were asked for.
    pub groups: Vec<GroupCounts>,
    /// When the head jobs of the first groups were made (their envelopes'
    /// `created_at`), as many as were asked for.
    #[serde(skip)]
    pub(crate) created: Vec<String>,
}

impl FromRedisValue for Groups {
    fn from_redis_value(v: Value) -> Result<Self, redis::ParsingError> {
        let values: Vec<Value> = FromRedisValue::from_redis_value(v)?;
        let mut values = values.into_iter();
        let mut number = || -> Result<u64, redis::ParsingError> {
            match values.next() {
                Some(v) => FromRedisValue::from_redis_value(v),
                None => Err("groups.lua returns its totals first".into()),
            }
        };
        let (waiting, held) = (number()?, number()?);
        let (running, count) = (number()?, number()?);
        let heads = number()? as usize;
        let created = values
            .by_ref()
            .take(heads)
            .map(FromRedisValue::from_redis_value)
            .collect::<Result<Vec<String>, _>>()?;
        let rest: Vec<Value> = values.collect();
        let mut groups = Vec::with_capacity(rest.len() / 4);
        for row in rest.chunks(4) {
            let [group, waiting, held, running] = row else {
                return Err("groups.lua returns four values per group".into());
            };
            groups.push(GroupCounts {
                group: FromRedisValue::from_redis_value(group.clone())?,
                waiting: FromRedisValue::from_redis_value(waiting.clone())?,
                held: FromRedisValue::from_redis_value(held.clone())?,
                running: FromRedisValue::from_redis_value(running.clone())?,
            });
        }
        Ok(Groups {
            waiting,
            held,
            running,
            count,
            groups,
            created,
        })
    }
}

/// One call of `lua/groups.lua`.
pub(crate) struct Call<'a> {
    /// KEYS[1] the groups by turn, KEYS[2] the queue's nodes.
    pub(crate) keys: &'a QueueKeys,
    /// ARGV[3] the most groups to list (0: the totals alone).
    pub(crate) most: usize,
    /// ARGV[5] the queue's limit of jobs of one group in flight, if any.
    pub(crate) limit: Option<u32>,
    /// ARGV[6] of how many groups to read the head job's creation time.
    pub(crate) heads: usize,
}

impl Call<'_> {
    /// The invocation; ARGV[4] is [`LOOK_MOST`].
    pub(crate) fn invocation(&self) -> ScriptInvocation<'static> {
        let mut inv = SCRIPT.key(&self.keys.groups);
        inv.key(&self.keys.nodes)
            .arg(self.keys.group_prefix())
            .arg(self.keys.running_of(""))
            .arg(self.most)
            .arg(LOOK_MOST)
            .arg(self.limit.unwrap_or(0))
            .arg(self.heads);
        inv
    }
}

#[cfg(test)]
mod tests {
    use redis::AsyncCommands as _;

    use super::*;
    use crate::broker::fixture::TestRedis;

    #[tokio::test]
    async fn lists_groups_busiest_first_with_their_totals_held_at_the_limit() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let k = QueueKeys::new("q", "jobs:q", "n1");
        let _: () = conn.sadd(&k.nodes, &["n1", "n2"]).await.unwrap();
        let _: () = conn.rpush(k.group("a"), &["1", "2"]).await.unwrap();
        let _: () = conn.rpush(k.group("b"), &["1", "2", "3"]).await.unwrap();
        let _: () = conn
            .zadd_multiple(&k.groups, &[(1, "a"), (2, "b"), (3, "stale")])
            .await
            .unwrap();
        let _: () = conn.hset(k.running_of("n1"), "a", 1).await.unwrap();
        let _: () = conn.hset(k.running_of("n2"), "a", 2).await.unwrap();
        let _: () = conn.hset(k.running_of("n2"), "c", 1).await.unwrap();
        // Not a node of the queue's: not counted.
        let _: () = conn.hset(k.running_of("gone"), "a", 9).await.unwrap();
        let all: Groups = Call {
            keys: &k,
            most: 10,
            limit: Some(3),
            heads: 0,
        }
        .invocation()
        .invoke_async(&mut conn)
        .await
        .unwrap();
        let row = |g: &str, waiting, held, running| GroupCounts {
            group: g.into(),
            waiting,
            held,
            running,
        };
        // a runs 3, its limit: its jobs are held; b's wait their turn.
        assert_eq!(
            all,
            Groups {
                waiting: 3,
                held: 2,
                running: 4,
                count: 3,
                groups: vec![row("b", 3, 0, 0), row("a", 0, 2, 3), row("c", 0, 0, 1)],
                created: Vec::new(),
            }
        );
        let totals: Groups = Call {
            keys: &k,
            most: 0,
            limit: None,
            heads: 0,
        }
        .invocation()
        .invoke_async(&mut conn)
        .await
        .unwrap();
        assert_eq!(
            (
                totals.waiting,
                totals.held,
                totals.count,
                totals.groups.len()
            ),
            (5, 0, 3, 0)
        );
    }

    /// The creation times of the groups' head jobs, for the queue's
    /// oldest: envelopes' only, of as many groups as asked, in their turns'
    /// order; a raw payload's `created_at` is the payload's, not the job's.
    #[tokio::test]
    async fn reads_the_head_jobs_creation_of_the_first_groups() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let k = QueueKeys::new("q", "jobs:q", "n1");
        let job =
            |at: &str| format!(r#"{{"id":"j","payload":{{}},"attempt":0,"created_at":"{at}"}}"#);
        let lists = [
            (
                "a",
                vec![job("2026-12-07T10:00:00Z"), job("2026-12-07T09:00:00Z")],
            ),
            (
                "raw",
                vec![r#"{"created_at":"2000-01-01T00:00:00Z"}"#.to_owned()],
            ),
            ("b", vec![job("2026-12-07T08:00:00Z")]),
            ("c", vec![job("2026-12-07T07:00:00Z")]),
        ];
        for (turn, (group, items)) in lists.iter().enumerate() {
            let _: () = conn.rpush(k.group(group), items).await.unwrap();
            let _: () = conn.zadd(&k.groups, *group, turn).await.unwrap();
        }
        let read = |heads| Call {
            keys: &k,
            most: 0,
            limit: None,
            heads,
        };
        let three: Groups = read(3).invocation().invoke_async(&mut conn).await.unwrap();
        assert_eq!(
            three.created,
            ["2026-12-07T10:00:00Z", "2026-12-07T08:00:00Z"]
        );
        assert_eq!((three.waiting, three.count), (5, 4));
        let all: Groups = read(10).invocation().invoke_async(&mut conn).await.unwrap();
        assert_eq!(all.created.len(), 3);
    }
}
