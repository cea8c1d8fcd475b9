//! `lua/tick.lua`: enqueues one tick of a schedule, once however many
//! daemons try it. Returns 1 enqueued, 0 handled already, 2 a new or edited
//! schedule started, 3 recorded but skipped (its lock is held).

use redis::ScriptInvocation;

use crate::broker::QueueKeys;

script!("tick.lua");

/// One tick of a schedule, as the script takes it.
#[derive(Debug, Clone)]
pub(crate) struct Tick<'a> {
    /// The schedule's name.
    pub(crate) schedule: &'a str,
    /// The tick, in unix seconds.
    pub(crate) at: i64,
    /// What the schedule's ticks are computed from.
    pub(crate) spec: &'a str,
    /// The job's id (`<name>:<tick>`).
    pub(crate) id: &'a str,
    /// The job's envelope.
    pub(crate) envelope: &'a str,
    /// The unique lock's lifetime in ms, when the schedule's jobs are unique.
    pub(crate) unique_ms: Option<u64>,
}

/// One call of `tick.lua`.
pub(crate) struct Call<'a> {
    /// KEYS[1] the queue list, KEYS[2] and KEYS[3] the schedule's last tick
    /// and spec, KEYS[4] the lock of a unique schedule.
    pub(crate) keys: &'a QueueKeys,
    /// ARGV[1] the tick, ARGV[2] the spec, ARGV[3] the envelope, ARGV[4]
    /// the job's id, ARGV[5] the lock's lifetime in ms ('0' for none).
    pub(crate) tick: &'a Tick<'a>,
}

impl Call<'_> {
    /// The invocation.
    pub(crate) fn invocation(&self) -> ScriptInvocation<'static> {
        let (k, tick) = (self.keys, self.tick);
        let lock = match tick.unique_ms {
            Some(_) => k.unique(&format!("schedule:{}", tick.schedule)),
            // Not touched, but a key of the queue's slot.
            None => k.schedule(tick.schedule),
        };
        let mut inv = SCRIPT.key(&k.list);
        inv.key(k.schedule(tick.schedule))
            .key(k.schedule_spec(tick.schedule))
            .key(lock)
            .arg(tick.at)
            .arg(tick.spec)
            .arg(tick.envelope)
            .arg(tick.id)
            .arg(tick.unique_ms.unwrap_or(0));
        inv
    }
}

#[cfg(test)]
mod tests {
    use redis::AsyncCommands as _;

    use super::*;
    use crate::broker::fixture::TestRedis;

    fn tick(at: i64, spec: &str, unique_ms: Option<u64>) -> Tick<'_> {
        Tick {
            schedule: "nightly",
            at,
            spec,
            id: "nightly:job",
            envelope: "env",
            unique_ms,
        }
    }

    async fn call(
        conn: &mut redis::aio::MultiplexedConnection,
        k: &QueueKeys,
        t: &Tick<'_>,
    ) -> i64 {
        Call { keys: k, tick: t }
            .invocation()
            .invoke_async(conn)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn starts_then_enqueues_each_tick_once() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let k = QueueKeys::new("q", "jobs:q", "n1");
        assert_eq!(call(&mut conn, &k, &tick(100, "every 1m", None)).await, 2);
        let last: i64 = conn.get(k.schedule("nightly")).await.unwrap();
        assert_eq!(last, 100);
        let spec: String = conn.get(k.schedule_spec("nightly")).await.unwrap();
        assert_eq!(spec, "every 1m");
        assert_eq!(conn.llen::<_, u64>(&k.list).await.unwrap(), 0);
        assert_eq!(call(&mut conn, &k, &tick(160, "every 1m", None)).await, 1);
        assert_eq!(call(&mut conn, &k, &tick(160, "every 1m", None)).await, 0);
        assert_eq!(call(&mut conn, &k, &tick(100, "every 1m", None)).await, 0);
        let list: Vec<String> = conn.lrange(&k.list, 0, -1).await.unwrap();
        assert_eq!(list, ["env"]);
        // An edited schedule starts afresh from its tick.
        assert_eq!(call(&mut conn, &k, &tick(220, "every 2m", None)).await, 2);
        let spec: String = conn.get(k.schedule_spec("nightly")).await.unwrap();
        assert_eq!(spec, "every 2m");
        assert_eq!(conn.llen::<_, u64>(&k.list).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_unique_schedule_skips_a_tick_while_its_lock_is_held() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let k = QueueKeys::new("q", "jobs:q", "n1");
        let lock = k.unique("schedule:nightly");
        assert_eq!(call(&mut conn, &k, &tick(100, "s", Some(60_000))).await, 2);
        assert_eq!(call(&mut conn, &k, &tick(160, "s", Some(60_000))).await, 1);
        let holder: String = conn.get(&lock).await.unwrap();
        assert_eq!(holder, "nightly:job");
        let ttl: i64 = conn.pttl(&lock).await.unwrap();
        assert!((1..=60_000).contains(&ttl), "{ttl}");
        assert_eq!(call(&mut conn, &k, &tick(220, "s", Some(60_000))).await, 3);
        let last: i64 = conn.get(k.schedule("nightly")).await.unwrap();
        assert_eq!(last, 220);
        assert_eq!(conn.llen::<_, u64>(&k.list).await.unwrap(), 1);
    }
}
