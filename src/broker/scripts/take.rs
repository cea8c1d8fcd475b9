//! `lua/take.lua`: moves up to N waiting jobs into a node's in-flight list
//! at once, a stand-in in the place of an item too large to read, a suspect
//! only ever alone. Returns `{suspect, item...}` (read as
//! [`Taken`](crate::broker::queue::Taken)).

use redis::ScriptInvocation;

use crate::broker::QueueKeys;
use crate::config::{Debounce, Group};
use crate::envelope::{HEAD_BYTES, item_limit, new_id};

script!("take.lua", "stand_in.lua", "group_of.lua");

/// One call of `take.lua`: the batched take and the blocking fetch's second
/// half.
pub(crate) struct Call<'a> {
    /// KEYS[1] the queue list, KEYS[2] this node's in-flight list.
    pub(crate) keys: &'a QueueKeys,
    /// ARGV[1] the most jobs to move.
    pub(crate) most: usize,
    /// How long a payload of the queue may be: ARGV[2], the largest item
    /// handed out whole, is [`item_limit`] of it.
    pub(crate) max_payload_bytes: usize,
    /// ARGV[5] the queue's global limit on jobs in flight, if any.
    pub(crate) limit: Option<u32>,
    /// ARGV[7], ARGV[8] and ARGV[11]: the queue's groups, if it has any.
    pub(crate) group: Option<&'a Group>,
    /// ARGV[12] now, in ms since the epoch.
    pub(crate) now_ms: i64,
    /// ARGV[13] to ARGV[16]: the queue's debounce, if it has one.
    pub(crate) debounce: Option<&'a Debounce>,
}

impl Call<'_> {
    /// The invocation; ARGV[3] is [`HEAD_BYTES`] and ARGV[4] a new job id.
    pub(crate) fn invocation(&self) -> ScriptInvocation<'static> {
        let mut inv = SCRIPT.key(&self.keys.list);
        inv.key(&self.keys.inflight)
            .key(&self.keys.nodes)
            .key(&self.keys.groups)
            .key(&self.keys.running)
            .key(&self.keys.group_due)
            .key(&self.keys.bursts)
            .key(&self.keys.ready)
            .key(&self.keys.group_next)
            .arg(self.most)
            .arg(item_limit(self.max_payload_bytes))
            .arg(HEAD_BYTES)
            .arg(new_id())
            .arg(self.limit.unwrap_or(0))
            .arg(self.keys.inflight_of(""))
            .arg(self.group.map_or("", |g| g.key.as_str()))
            .arg(self.group.map_or(0, Group::per_group))
            .arg(self.keys.group_prefix())
            .arg(self.keys.running_of(""))
            .arg(if self.group.is_some_and(|g| g.ordered) {
                "1"
            } else {
                "0"
            })
            .arg(self.now_ms)
            .arg(self.debounce.map_or("", |d| d.key.as_str()))
            .arg(self.debounce.map_or(0, |d| d.window.as_millis() as u64))
            .arg(self.debounce.map_or(0, |d| d.max_wait().as_millis() as u64))
            .arg(self.debounce.map_or("last", |d| d.keep.as_str()))
            .arg(self.keys.burst_prefix())
            .arg(self.keys.burst_all_prefix());
        inv
    }
}

#[cfg(test)]
mod tests {
    use redis::AsyncCommands as _;

    use super::*;
    use crate::broker::fixture::TestRedis;
    use crate::broker::queue::Taken;
    use crate::envelope::{ENVELOPE_ALLOWANCE, parse_item};

    fn keys() -> QueueKeys {
        QueueKeys::new("q", "jobs:q", "n1")
    }

    #[tokio::test]
    async fn takes_a_batch_in_order_and_leaves_the_rest() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let k = keys();
        let _: () = conn.rpush(&k.list, &["a", "b", "c"]).await.unwrap();
        let call = Call {
            keys: &k,
            most: 2,
            max_payload_bytes: 1024,
            limit: None,
            group: None,
            now_ms: 0,
            debounce: None,
        };
        let taken: Taken = call.invocation().invoke_async(&mut conn).await.unwrap();
        assert_eq!(taken.items, [b"a".to_vec(), b"b".to_vec()]);
        assert!(!taken.suspect);
        let left: Vec<String> = conn.lrange(&k.list, 0, -1).await.unwrap();
        assert_eq!(left, ["c"]);
        let inflight: Vec<String> = conn.lrange(&k.inflight, 0, -1).await.unwrap();
        assert_eq!(inflight, ["a", "b"]);
        // An empty queue: nothing moved, nothing written.
        let _: () = conn.del(&k.list).await.unwrap();
        let taken: Taken = call.invocation().invoke_async(&mut conn).await.unwrap();
        assert_eq!(taken, Taken::default());
        let inflight: u64 = conn.llen(&k.inflight).await.unwrap();
        assert_eq!(inflight, 2);
    }

    /// A global limit counts the jobs in flight on every node of the
    /// queue (a dead one's included, until they are recovered), and says
    /// when it held jobs back.
    #[tokio::test]
    async fn a_global_limit_counts_every_nodes_jobs_in_flight() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let k = keys();
        let other = k.inflight_of("n2");
        let _: () = conn.sadd(&k.nodes, &["n1", "n2"]).await.unwrap();
        let _: () = conn.rpush(&other, &["x", "y"]).await.unwrap();
        let _: () = conn.rpush(&k.list, &["a", "b", "c", "d"]).await.unwrap();
        let take = |most| Call {
            keys: &k,
            most,
            max_payload_bytes: 1024,
            limit: Some(3),
            group: None,
            now_ms: 0,
            debounce: None,
        };
        // Two of three in flight on n2: room for one, and more wait.
        let taken: Taken = take(10).invocation().invoke_async(&mut conn).await.unwrap();
        assert_eq!(taken.items, [b"a".to_vec()]);
        assert!(taken.limited && !taken.suspect);
        // At the limit: nothing moves.
        let taken: Taken = take(10).invocation().invoke_async(&mut conn).await.unwrap();
        assert_eq!((taken.items.len(), taken.limited), (0, true));
        // n2's jobs recovered (its list gone): its share comes back.
        let _: () = conn.del(&other).await.unwrap();
        let taken: Taken = take(10).invocation().invoke_async(&mut conn).await.unwrap();
        assert_eq!(taken.items, [b"b".to_vec(), b"c".to_vec()]);
        assert!(taken.limited);
        // Room for as many as wait: not held back.
        let _: () = conn.del(&k.inflight).await.unwrap();
        let taken: Taken = take(10).invocation().invoke_async(&mut conn).await.unwrap();
        assert_eq!((taken.items, taken.limited), (vec![b"d".to_vec()], false));
    }

    #[tokio::test]
    async fn a_suspect_is_taken_alone_and_stops_a_batch() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let k = keys();
        let suspect = r#"{"id":"s","payload":{},"attempt":1,"deliveries":1}"#;
        let _: () = conn.rpush(&k.list, &["a", suspect, "b"]).await.unwrap();
        let call = Call {
            keys: &k,
            most: 10,
            max_payload_bytes: 1024,
            limit: None,
            group: None,
            now_ms: 0,
            debounce: None,
        };
        let first: Taken = call.invocation().invoke_async(&mut conn).await.unwrap();
        assert_eq!((first.items, first.suspect), (vec![b"a".to_vec()], false));
        let second: Taken = call.invocation().invoke_async(&mut conn).await.unwrap();
        assert_eq!(second.items, [suspect.as_bytes().to_vec()]);
        assert!(second.suspect);
        let inflight: Vec<String> = conn.lrange(&k.inflight, 0, -1).await.unwrap();
        assert_eq!(inflight, ["a", suspect]);
        let left: Vec<String> = conn.lrange(&k.list, 0, -1).await.unwrap();
        assert_eq!(left, ["b"]);
    }

    #[tokio::test]
    async fn an_item_too_large_goes_in_flight_as_its_stand_in() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let k = keys();
        let big = format!(
            r#"{{"id":"big","payload":"{}"}}"#,
            "x".repeat(ENVELOPE_ALLOWANCE)
        );
        let _: () = conn.rpush(&k.list, &[big.as_str(), "small"]).await.unwrap();
        let call = Call {
            keys: &k,
            most: 10,
            max_payload_bytes: 0,
            limit: None,
            group: None,
            now_ms: 0,
            debounce: None,
        };
        let taken: Taken = call.invocation().invoke_async(&mut conn).await.unwrap();
        assert_eq!(taken.items.len(), 2);
        assert_eq!(taken.items[1], b"small");
        let stand_in = parse_item(&taken.items[0], usize::MAX).unwrap().envelope;
        assert_eq!(stand_in.id, "big");
        let head = stand_in.head.expect("a stand-in keeps the item's head");
        assert_eq!(head.size, big.len() as u64);
        let inflight: Vec<Vec<u8>> = conn.lrange(&k.inflight, 0, -1).await.unwrap();
        assert_eq!(inflight, taken.items);
        let left: u64 = conn.llen(&k.list).await.unwrap();
        assert_eq!(left, 0);
    }

    fn group(limit: Option<u32>) -> Group {
        Group {
            key: "tenant".into(),
            limit,
            ordered: false,
        }
    }

    fn grouped<'a>(k: &'a QueueKeys, most: usize, group: &'a Group) -> Call<'a> {
        Call {
            keys: k,
            most,
            max_payload_bytes: 1024,
            limit: None,
            group: Some(group),
            now_ms: 1_000,
            debounce: None,
        }
    }

    fn texts(taken: &Taken) -> Vec<String> {
        taken
            .items
            .iter()
            .map(|i| String::from_utf8_lossy(i).into_owned())
            .collect()
    }

    /// A flood of one group waits its turns: the groups pushed after it
    /// are served before its second job.
    #[tokio::test]
    async fn groups_are_served_in_turn_whatever_their_backlog() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let k = keys();
        let g = group(None);
        let flood: Vec<String> = (1..=100)
            .map(|n| format!(r#"{{"tenant":"a","n":{n}}}"#))
            .collect();
        let _: () = conn.rpush(&k.list, &flood).await.unwrap();
        // An envelope is grouped by its payload's field, a number by its
        // JSON text; a job without the field is in the group "".
        let others = [
            r#"{"id":"j1","payload":{"tenant":"b"},"attempt":0}"#,
            r#"{"tenant":7}"#,
            r#"{"other":1}"#,
            r#"[1,2]"#,
        ];
        let _: () = conn.rpush(&k.list, &others).await.unwrap();
        let taken: Taken = grouped(&k, 6, &g)
            .invocation()
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            texts(&taken),
            [
                flood[0].as_str(),
                others[0],
                others[1],
                others[2],
                flood[1].as_str(),
                // In the group "", behind {"other":1}.
                others[3],
            ]
        );
        let taken: Taken = grouped(&k, 2, &g)
            .invocation()
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(texts(&taken), [flood[2].as_str(), flood[3].as_str()]);
        assert!(!taken.limited);
        let waiting: u64 = conn.llen(&k.list).await.unwrap();
        assert_eq!(waiting, 0, "every waiting job was sorted");
        let held: u64 = conn.llen(k.group("a")).await.unwrap();
        assert_eq!(held, 96);
        let running: std::collections::HashMap<String, u64> =
            conn.hgetall(&k.running).await.unwrap();
        let expected: std::collections::HashMap<String, u64> =
            [("a", 4), ("b", 1), ("7", 1), ("", 2)]
                .into_iter()
                .map(|(g, n)| (g.to_owned(), n))
                .collect();
        assert_eq!(running, expected);
    }

    /// A suspect met after other jobs goes back to its group's head and
    /// stops the call; the next call begins at its group's turn, so that it
    /// is taken alone, and the round goes on after it. Once every group
    /// had its turn, the groups served share the room that is left.
    #[tokio::test]
    async fn a_suspect_in_a_group_waits_for_the_next_call_and_goes_alone() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let k = keys();
        let g = group(None);
        let suspect = r#"{"id":"s","payload":{"tenant":"b"},"attempt":0,"deliveries":1}"#;
        let jobs = [
            r#"{"tenant":"a","n":1}"#,
            suspect,
            r#"{"tenant":"b","n":2}"#,
            r#"{"tenant":"c","n":1}"#,
            r#"{"tenant":"a","n":2}"#,
            r#"{"tenant":"a","n":3}"#,
            r#"{"tenant":"c","n":2}"#,
            r#"{"tenant":"a","n":4}"#,
        ];
        let _: () = conn.rpush(&k.list, &jobs).await.unwrap();
        let take = |most| grouped(&k, most, &g).invocation();
        let taken: Taken = take(10).invoke_async(&mut conn).await.unwrap();
        assert_eq!(
            (texts(&taken), taken.suspect),
            (vec![jobs[0].to_owned()], false)
        );
        let taken: Taken = take(10).invoke_async(&mut conn).await.unwrap();
        assert_eq!(
            (texts(&taken), taken.suspect),
            (vec![suspect.to_owned()], true)
        );
        // c, then a, b in their turns; then a and c share the room left.
        let taken: Taken = take(6).invoke_async(&mut conn).await.unwrap();
        assert_eq!(
            texts(&taken),
            [jobs[3], jobs[4], jobs[2], jobs[6], jobs[5], jobs[7]]
        );
        let turns: u64 = conn.exists(&k.groups).await.unwrap();
        let taken: Taken = take(6).invoke_async(&mut conn).await.unwrap();
        assert!(taken.items.is_empty());
        let after: u64 = conn.exists(&k.groups).await.unwrap();
        assert_eq!((turns, after, taken.limited), (1, 0, false));
    }

    /// A group's limit counts its jobs in flight on every node; a group at
    /// its limit is passed over, and the call says jobs are held.
    #[tokio::test]
    async fn a_group_at_its_limit_is_passed_over_on_every_node() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let k = keys();
        let g = group(Some(1));
        let _: () = conn.sadd(&k.nodes, &["n1", "n2"]).await.unwrap();
        // n2 runs one job of group a.
        let _: () = conn.hset(k.running_of("n2"), "a", 1).await.unwrap();
        let jobs = [
            r#"{"tenant":"a","n":1}"#,
            r#"{"tenant":"a","n":2}"#,
            r#"{"tenant":"b","n":1}"#,
            r#"{"tenant":"b","n":2}"#,
            r#"{"tenant":"c","n":1}"#,
        ];
        let _: () = conn.rpush(&k.list, &jobs).await.unwrap();
        let taken: Taken = grouped(&k, 10, &g)
            .invocation()
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(texts(&taken), [jobs[2], jobs[4]]);
        assert!(taken.limited, "jobs are held");
        // Everything at its limit: nothing moves.
        let taken: Taken = grouped(&k, 10, &g)
            .invocation()
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert_eq!((taken.items.len(), taken.limited), (0, true));
        // n2's job ends: a's turn comes first, it kept its place.
        let _: () = conn.hdel(k.running_of("n2"), "a").await.unwrap();
        let taken: Taken = grouped(&k, 10, &g)
            .invocation()
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(texts(&taken), [jobs[0]]);
        // A count this node's in-flight list no longer backs is dropped.
        let _: () = conn.del(&k.inflight).await.unwrap();
        let taken: Taken = grouped(&k, 10, &g)
            .invocation()
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(texts(&taken), [jobs[3], jobs[1]]);
        assert!(!taken.limited, "nothing is held");
        let groups: u64 = conn.exists(&k.groups).await.unwrap();
        assert_eq!(groups, 0, "the turns of emptied groups are gone");
    }

    /// Counted out as they leave the in-flight list: by their outcome on
    /// this node, or by a recovery.
    #[tokio::test]
    async fn jobs_are_counted_out_of_their_group_as_they_leave_flight() {
        use crate::broker::history::Sample;
        use crate::broker::queue::Outcome;
        use crate::broker::scripts::{finish, recover};

        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let k = keys();
        let g = group(Some(5));
        let jobs = [
            r#"{"id":"j1","payload":{"tenant":"a"},"attempt":0}"#,
            r#"{"tenant":"a","n":2}"#,
            r#"{"tenant":"b","n":1}"#,
        ];
        let _: () = conn.rpush(&k.list, &jobs).await.unwrap();
        let taken: Taken = grouped(&k, 10, &g)
            .invocation()
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(taken.items.len(), 3);
        let ok = Outcome::Succeeded {
            id: String::new(),
            unique_key: None,
            flow: None,
        };
        let entries: Vec<finish::Entry<'_>> = vec![
            (jobs[0].as_bytes(), &ok, None, Sample::default()),
            (jobs[2].as_bytes(), &ok, None, Sample::default()),
        ];
        let mut pipe = redis::pipe();
        pipe.load_script(&finish::SCRIPT).ignore();
        finish::Call {
            keys: &k,
            dead_cap: 10,
            results_cap: 0,
            history: None,
            group: Some(&g),
            entries: &entries,
            records: true,
        }
        .add_to(&mut pipe);
        let (flags,): (Vec<u8>,) = pipe.query_async(&mut conn).await.unwrap();
        assert_eq!(flags, [1, 1]);
        let running: Vec<(String, u64)> = conn.hgetall(&k.running).await.unwrap();
        assert_eq!(running, [("a".to_owned(), 1)]);
        let moves = [recover::Move {
            item: jobs[1].as_bytes().to_vec(),
            to: recover::RecoverTo::Queue,
            replacement: jobs[1].as_bytes().to_vec(),
            status: None,
            flow: None,
        }];
        let codes: Vec<u8> = recover::Call {
            keys: &k,
            node: "n1",
            dead_cap: 10,
            results_cap: 10,
            group: Some(&g),
            moves: &moves,
            records: true,
        }
        .invocation()
        .invoke_async(&mut conn)
        .await
        .unwrap();
        assert_eq!(codes, [1]);
        let running: u64 = conn.exists(&k.running).await.unwrap();
        assert_eq!(running, 0, "no group counts a job that left");
    }

    /// An ordered group's job stays at the head of its list while it runs
    /// and while it waits for its retry; the next one starts only after
    /// it ended, whatever the node, and a recovery leaves it first.
    #[tokio::test]
    async fn an_ordered_group_runs_its_jobs_one_at_a_time_in_push_order() {
        use crate::broker::history::Sample;
        use crate::broker::queue::Outcome;
        use crate::broker::scripts::{finish, recover};

        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let k = keys();
        let g = Group {
            key: "order".into(),
            limit: None,
            ordered: true,
        };
        let jobs = [
            r#"{"id":"e1","payload":{"order":"o"},"attempt":0}"#,
            r#"{"id":"e2","payload":{"order":"o"},"attempt":0}"#,
            r#"{"id":"f1","payload":{"order":"p"},"attempt":0}"#,
        ];
        let _: () = conn.rpush(&k.list, &jobs).await.unwrap();
        let take = |now_ms| Call {
            now_ms,
            ..grouped(&k, 10, &g)
        };
        let taken: Taken = take(1_000)
            .invocation()
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(texts(&taken), [jobs[0], jobs[2]], "one of each order");
        let list: Vec<String> = conn.lrange(k.group("o"), 0, -1).await.unwrap();
        assert_eq!(list, [jobs[0], jobs[1]], "the running job stays first");
        let taken: Taken = take(1_000)
            .invocation()
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert_eq!((taken.items.len(), taken.limited), (0, true));

        // e1 fails: its retry waits at the head until it is due.
        let retried = r#"{"id":"e1","payload":{"order":"o"},"attempt":1}"#;
        let retry = Outcome::Retry {
            envelope: retried.into(),
            due_ms: 5_000,
        };
        let finish = |entries: Vec<finish::Entry<'_>>| {
            let mut pipe = redis::pipe();
            pipe.load_script(&finish::SCRIPT).ignore();
            finish::Call {
                keys: &k,
                dead_cap: 10,
                results_cap: 0,
                history: None,
                group: Some(&g),
                entries: &entries,
                records: true,
            }
            .add_to(&mut pipe);
            pipe
        };
        let pipe = finish(vec![(jobs[0].as_bytes(), &retry, None, Sample::default())]);
        let (flags,): (Vec<u8>,) = pipe.query_async(&mut conn).await.unwrap();
        assert_eq!(flags, [1]);
        let scheduled: u64 = conn.zcard(&k.scheduled).await.unwrap();
        assert_eq!(scheduled, 0, "the retry waits in its group, not scheduled");
        let list: Vec<String> = conn.lrange(k.group("o"), 0, -1).await.unwrap();
        assert_eq!(list, [retried, jobs[1]]);
        let taken: Taken = take(4_999)
            .invocation()
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert!(taken.items.is_empty(), "not before it is due, nor e2");
        let taken: Taken = take(5_000)
            .invocation()
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(texts(&taken), [retried]);

        // Its node dies: recovered, it is first again, not behind e2.
        let again = r#"{"id":"e1","payload":{"order":"o"},"attempt":1,"deliveries":1}"#;
        let moves = [recover::Move {
            item: retried.as_bytes().to_vec(),
            to: recover::RecoverTo::Queue,
            replacement: again.as_bytes().to_vec(),
            status: None,
            flow: None,
        }];
        let codes: Vec<u8> = recover::Call {
            keys: &k,
            node: "n1",
            dead_cap: 10,
            results_cap: 10,
            group: Some(&g),
            moves: &moves,
            records: true,
        }
        .invocation()
        .invoke_async(&mut conn)
        .await
        .unwrap();
        assert_eq!(codes, [1]);
        let waiting: u64 = conn.llen(&k.list).await.unwrap();
        assert_eq!(waiting, 0);
        let list: Vec<String> = conn.lrange(k.group("o"), 0, -1).await.unwrap();
        assert_eq!(list, [again, jobs[1]]);

        // It succeeds at last: e2 comes next.
        let taken: Taken = take(6_000)
            .invocation()
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(texts(&taken), [again]);
        assert!(taken.suspect, "a recovered job runs alone");
        let ok = Outcome::Succeeded {
            id: String::new(),
            unique_key: None,
            flow: None,
        };
        let pipe = finish(vec![(again.as_bytes(), &ok, None, Sample::default())]);
        let (flags,): (Vec<u8>,) = pipe.query_async(&mut conn).await.unwrap();
        assert_eq!(flags, [1]);
        let taken: Taken = take(6_000)
            .invocation()
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(texts(&taken), [jobs[1]]);
    }

    fn debounce(keep: crate::config::Keep) -> Debounce {
        Debounce {
            key: "user".into(),
            window: std::time::Duration::from_millis(100),
            max_wait: Some(std::time::Duration::from_millis(300)),
            keep,
        }
    }

    fn debounced<'a>(k: &'a QueueKeys, now_ms: i64, d: &'a Debounce) -> Call<'a> {
        Call {
            keys: k,
            most: 10,
            max_payload_bytes: 1024,
            limit: None,
            group: None,
            now_ms,
            debounce: Some(d),
        }
    }

    /// Jobs of one user within the window of each other run as one, the
    /// last's, a window after the last arrival; a job without the field
    /// runs at once; a steady stream runs by the longest wait.
    #[tokio::test]
    async fn a_burst_runs_once_a_window_after_its_last_arrival() {
        use crate::config::Keep;
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let k = keys();
        let d = debounce(Keep::Last);
        let take = |now| debounced(&k, now, &d);
        let first = [
            r#"{"user":"u1","n":1}"#,
            r#"{"user":"u1","n":2}"#,
            r#"{"user":"u2","n":1}"#,
            r#"{"other":1}"#,
        ];
        let _: () = conn.rpush(&k.list, &first).await.unwrap();
        let taken: Taken = take(1_000)
            .invocation()
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(texts(&taken), [first[3]], "no field: at once");
        assert!(taken.limited, "bursts are pending");
        assert_eq!(taken.debounced, [""], "u1's second joined its burst");
        let _: () = conn.rpush(&k.list, r#"{"user":"u1","n":3}"#).await.unwrap();
        let taken: Taken = take(1_050)
            .invocation()
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert!(taken.items.is_empty());
        // u2's window ends at 1,100; u1's at 1,150, a window after its last.
        let taken: Taken = take(1_100)
            .invocation()
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(texts(&taken), [first[2]]);
        let taken: Taken = take(1_149)
            .invocation()
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert!(taken.items.is_empty() && taken.limited);
        let taken: Taken = take(1_150)
            .invocation()
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(texts(&taken), [r#"{"user":"u1","n":3}"#]);
        assert!(!taken.limited, "nothing pending");
        let keys: Vec<String> = conn.keys("{jobs:q}:group:*").await.unwrap();
        assert!(keys.is_empty(), "{keys:?}");

        // A steady stream, one every 50 ms: the longest wait (300) ends it.
        let mut ran = Vec::new();
        for at in (2_000..=2_400).step_by(50) {
            let job = format!(r#"{{"user":"u3","at":{at}}}"#);
            let _: () = conn.rpush(&k.list, &job).await.unwrap();
            let taken: Taken = take(at).invocation().invoke_async(&mut conn).await.unwrap();
            ran.extend(texts(&taken).into_iter().map(|t| (at, t)));
        }
        assert_eq!(
            ran,
            [(2_300, r#"{"user":"u3","at":2300}"#.to_owned())],
            "released at the longest wait, with the last arrival"
        );
    }

    /// `keep = "first"` runs the first arrival; `keep = "all"` a raw
    /// payload, the JSON array of every arrival's payload, envelopes' too.
    #[tokio::test]
    async fn a_burst_keeps_the_first_or_all_of_its_payloads() {
        use crate::config::Keep;
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let k = keys();
        let jobs = [
            r#"{"id":"a","payload":{"user":"u","n":1},"attempt":0}"#,
            r#"{"user":"u","n":2}"#,
            r#"{"user":"u","n":3}"#,
        ];
        let first = debounce(Keep::First);
        let _: () = conn.rpush(&k.list, &jobs).await.unwrap();
        let taken: Taken = debounced(&k, 0, &first)
            .invocation()
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert!(taken.items.is_empty());
        assert_eq!(taken.debounced, ["", ""], "raw payloads have no id");
        // An envelope joining a burst is named (and moves its end to 110).
        let late = r#"{"id":"late","payload":{"user":"u","n":4},"attempt":0}"#;
        let _: () = conn.rpush(&k.list, late).await.unwrap();
        let taken: Taken = debounced(&k, 10, &first)
            .invocation()
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            (taken.items.len(), taken.debounced),
            (0, vec!["late".to_owned()])
        );
        let taken: Taken = debounced(&k, 110, &first)
            .invocation()
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(texts(&taken), [jobs[0]]);

        let all = debounce(Keep::All);
        let _: () = conn.rpush(&k.list, &jobs).await.unwrap();
        let taken: Taken = debounced(&k, 0, &all)
            .invocation()
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert!(taken.items.is_empty());
        let taken: Taken = debounced(&k, 100, &all)
            .invocation()
            .invoke_async(&mut conn)
            .await
            .unwrap();
        let payloads: serde_json::Value = serde_json::from_slice(&taken.items[0]).unwrap();
        assert_eq!(
            payloads,
            serde_json::json!([{"user":"u","n":1}, {"user":"u","n":2}, {"user":"u","n":3}])
        );
    }

    /// With `group` too, the jobs a debounce lets through are served in
    /// their groups' turns.
    #[tokio::test]
    async fn a_debounced_and_grouped_queue_groups_what_the_bursts_release() {
        use crate::config::Keep;
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let k = keys();
        let d = debounce(Keep::Last);
        let g = group(Some(1));
        let jobs = [
            r#"{"tenant":"a","user":"u","n":1}"#,
            r#"{"tenant":"a","user":"u","n":2}"#,
            r#"{"tenant":"b","n":1}"#,
            r#"{"tenant":"b","n":2}"#,
        ];
        let _: () = conn.rpush(&k.list, &jobs).await.unwrap();
        let call = |now_ms| Call {
            now_ms,
            debounce: Some(&d),
            ..grouped(&k, 10, &g)
        };
        let taken: Taken = call(0).invocation().invoke_async(&mut conn).await.unwrap();
        assert_eq!(texts(&taken), [jobs[2]], "b's first; its second is held");
        assert!(taken.limited);
        let taken: Taken = call(100)
            .invocation()
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(texts(&taken), [jobs[1]], "the burst, in group a");
        let held: Vec<String> = conn.lrange(k.group("b"), 0, -1).await.unwrap();
        assert_eq!(held, [jobs[3]]);
    }
}
