//! `lua/enqueue_unique.lua`: enqueues a job unless another job holds its
//! unique lock, announcing it (event, status record) only if it was
//! enqueued. Returns `{1, id}` when enqueued, `{0, holder's id}` when not.

use std::time::Duration;

use redis::{ScriptInvocation, Value};

use super::Record;
use crate::broker::BrokerError;
use crate::broker::events::{EventSink, StatusUpdate};
use crate::broker::{QueueKeys, keys};

script!("enqueue_unique.lua");

/// A job to enqueue.
#[derive(Debug, Clone)]
pub(crate) struct NewJob {
    /// Its id (also stored in a unique lock).
    pub(crate) id: String,
    /// The envelope JSON.
    pub(crate) envelope: String,
    /// Run no earlier than this (ms since the epoch); `None` for now.
    pub(crate) due_ms: Option<i64>,
    /// Enqueue only if no other job holds this lock; hold it this long.
    pub(crate) unique: Option<(String, Duration)>,
    /// Its `job.enqueued` event, published before the job can be taken.
    pub(crate) event: Option<String>,
    /// Its first status record, written before the job can be taken.
    pub(crate) status: Option<StatusUpdate>,
}

/// What became of one enqueued job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Enqueued {
    /// Waiting or scheduled.
    Queued,
    /// Not enqueued: another job holds the unique lock.
    Duplicate {
        /// That job's id.
        holder: String,
    },
}

/// KEYS[5]: the job's status record, when the script writes it.
const RECORD_KEY: usize = 5;

/// One call of `enqueue_unique.lua`.
pub(crate) struct Call<'a> {
    /// KEYS[1] the queue list, KEYS[2] the scheduled set.
    pub(crate) keys: &'a QueueKeys,
    /// ARGV[1] its envelope, ARGV[2] its id, ARGV[3] when it is due, ARGV[6]
    /// its event, and its status record.
    pub(crate) job: &'a NewJob,
    /// The unique key: KEYS[3] its lock; and ARGV[4] how long it lives.
    pub(crate) lock: (&'a str, Duration),
    /// Where its event goes: KEYS[4] the replay stream, ARGV[5] the
    /// channel, ARGV[7] the stream's length.
    pub(crate) sink: &'a EventSink,
    /// Whether the script announces the job (event and status record):
    /// false on a Redis Cluster, where the stream and the record live in
    /// other slots than the queue and the caller writes them after.
    pub(crate) announce: bool,
}

impl Call<'_> {
    /// The invocation.
    pub(crate) fn invocation(&self) -> ScriptInvocation<'static> {
        let (k, job, sink) = (self.keys, self.job, self.sink);
        let stream = sink.stream.as_ref();
        let mut inv = SCRIPT.key(&k.list);
        inv.key(&k.scheduled).key(k.unique(self.lock.0));
        if self.announce {
            // Without a stream, any key: the script does not touch it.
            inv.key(stream.map_or(sink.channel.as_str(), |(key, _)| key.as_str()))
                .key(keys::job(&job.id));
        }
        let channel = match job.event.is_some() && self.announce {
            true => sink.channel.as_str(),
            false => "",
        };
        let record = job.status.as_ref().filter(|_| self.announce);
        inv.arg(&job.envelope)
            .arg(&job.id)
            .arg(job.due_ms.unwrap_or(0))
            .arg(self.lock.1.as_millis().max(1) as u64)
            .arg(channel)
            .arg(job.event.as_deref().unwrap_or(""))
            .arg(stream.map_or(0, |(_, n)| *n))
            .arg(Record(record.map(|s| (RECORD_KEY, s))));
        inv
    }
}

/// What a call's reply says: `{1, id}` enqueued, `{0, holder's id}` not.
pub(crate) fn verdict(reply: Value) -> Result<Enqueued, BrokerError> {
    let (ok, holder): (i64, String) = redis::from_redis_value(reply)?;
    Ok(match ok {
        1 => Enqueued::Queued,
        _ => Enqueued::Duplicate { holder },
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use redis::AsyncCommands as _;
    use redis::aio::MultiplexedConnection;

    use super::*;
    use crate::broker::events::StatusUpdate;
    use crate::broker::fixture::TestRedis;
    use crate::job::JobState;

    fn job(id: &str, due_ms: Option<i64>) -> NewJob {
        NewJob {
            id: id.to_owned(),
            envelope: format!("env-{id}"),
            due_ms,
            unique: None,
            event: Some(format!(r#"{{"id":"{id}"}}"#)),
            status: Some(StatusUpdate {
                id: id.to_owned(),
                fields: vec![("state", JobState::Waiting.as_str().to_owned())],
                ttl: Duration::from_secs(60),
            }),
        }
    }

    type Reply = (u8, String);

    #[tokio::test]
    async fn enqueues_and_announces_only_the_job_that_takes_the_lock() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let k = QueueKeys::new("q", "jobs:q", "n1");
        let sink = EventSink::new("conveyor:events", 100);
        let (first, second) = (job("j1", None), job("j2", Some(5000)));
        let call = |job| Call {
            keys: &k,
            job,
            lock: ("u", Duration::from_secs(30)),
            sink: &sink,
            announce: true,
        };
        let enqueue = async |call: Call<'_>, conn: &mut MultiplexedConnection| {
            let reply = call.invocation().invoke_async(conn).await.unwrap();
            verdict(reply).unwrap()
        };
        assert_eq!(enqueue(call(&first), &mut conn).await, Enqueued::Queued);
        assert_eq!(
            enqueue(call(&second), &mut conn).await,
            Enqueued::Duplicate {
                holder: "j1".into()
            }
        );
        let list: Vec<String> = conn.lrange(&k.list, 0, -1).await.unwrap();
        assert_eq!(list, ["env-j1"]);
        let card: u64 = conn.zcard(&k.scheduled).await.unwrap();
        assert_eq!(card, 0);
        let ttl: i64 = conn.pttl(k.unique("u")).await.unwrap();
        assert!((1..=30_000).contains(&ttl), "{ttl}");
        let record: HashMap<String, String> = conn.hgetall(keys::job("j1")).await.unwrap();
        assert_eq!(
            record,
            HashMap::from([("state".into(), JobState::Waiting.as_str().into())])
        );
        let ttl: i64 = conn.pttl(keys::job("j1")).await.unwrap();
        assert!((1..=60_000).contains(&ttl), "{ttl}");
        let none: bool = conn.exists(keys::job("j2")).await.unwrap();
        assert!(!none, "no record for the duplicate");
        let stream: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg("conveyor:events")
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(stream.len(), 1, "one event, the enqueued job's");
        assert_eq!(
            stream[0].1,
            [("events".to_owned(), "{\"id\":\"j1\"}\n".to_owned())]
        );
        // Once the lock is gone, a job due later goes to the scheduled set.
        let _: () = conn.del(k.unique("u")).await.unwrap();
        assert_eq!(enqueue(call(&second), &mut conn).await, Enqueued::Queued);
        let scheduled: Vec<(String, i64)> =
            conn.zrange_withscores(&k.scheduled, 0, -1).await.unwrap();
        assert_eq!(scheduled, [("env-j2".to_owned(), 5000)]);
    }

    #[tokio::test]
    async fn on_a_cluster_announces_nothing() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let k = QueueKeys::new("q", "jobs:q", "n1");
        let sink = EventSink::new("conveyor:events", 100);
        let reply: Reply = Call {
            keys: &k,
            job: &job("j1", None),
            lock: ("u", Duration::from_secs(30)),
            sink: &sink,
            announce: false,
        }
        .invocation()
        .invoke_async(&mut conn)
        .await
        .unwrap();
        assert_eq!(reply, (1, "j1".to_owned()));
        let list: Vec<String> = conn.lrange(&k.list, 0, -1).await.unwrap();
        assert_eq!(list, ["env-j1"]);
        let written: bool = conn.exists(keys::job("j1")).await.unwrap();
        assert!(!written);
        let stream: bool = conn.exists("conveyor:events").await.unwrap();
        assert!(!stream);
    }
}
