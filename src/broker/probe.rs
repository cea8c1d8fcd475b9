//! `conveyor check`'s proof that this Redis user may run what the daemon
//! runs: each command on a queue's own keys (or probe keys in its slot),
//! scripts, CLIENT and SUBSCRIBE. Commands inside scripts are subject to
//! the same ACL as outside, so probing them directly covers the scripts'
//! work. A refusal names the command in Redis's words.

use super::{Broker, BrokerError, is_denial, keys};

/// Where the probe writes: keys no job ever uses, deleted afterwards.
const PROBE: &str = "conveyor-check-probe";

/// The commands the daemon and the CLI run, each on harmless arguments:
/// reads of the queue's own list, writes to probe keys in its slot (and a
/// probe status record and node key), an XADD whose ID Redis rejects after
/// its permission check, a BLMOVE that waits 10 ms on an empty list. The
/// names in capitals stand for those keys.
const PROBES: &[&[&str]] = &[
    &["LLEN", "LIST"],
    &["LRANGE", "LIST", "0", "0"],
    &["LINDEX", "LIST", "0"],
    &["RPUSH", "PLIST", "probe"],
    &["LPUSH", "PLIST", "probe"],
    &["LREM", "PLIST", "0", "probe"],
    &["LTRIM", "PLIST", "1", "0"],
    &["BLMOVE", "PLIST", "PLIST", "LEFT", "RIGHT", "0.01"],
    &["HSET", "PKEY", "probe", "1"],
    &["HINCRBY", "PKEY", "probe", "1"],
    &["HGETALL", "PKEY"],
    &["PEXPIRE", "PKEY", "60000"],
    &["EXISTS", "PKEY"],
    &["DEL", "PKEY"],
    &["BITFIELD", "PKEY", "INCRBY", "u32", "#0", "1"],
    &["EXPIREAT", "PKEY", "4102444800"],
    &["DEL", "PKEY"],
    &["SET", "PKEY", "probe", "PX", "60000"],
    &["GET", "PKEY"],
    &["DEL", "PKEY"],
    &["ZADD", "PKEY", "0", "probe"],
    &["ZRANGE", "PKEY", "0", "0"],
    &["ZCARD", "PKEY"],
    &["ZREMRANGEBYSCORE", "PKEY", "1", "1"],
    &["ZREM", "PKEY", "probe"],
    &["SADD", "PKEY", "probe"],
    &["SMEMBERS", "PKEY"],
    &["SREM", "PKEY", "probe"],
    &["HSET", "JOB", "probe", "1"],
    &["HSET", "NODE", "probe", "1"],
    &["XADD", "STREAM", "0-0", "probe", "1"],
    &["XRANGE", "STREAM", "+", "+", "COUNT", "1"],
    &["PUBSUB", "NUMSUB", "CHANNEL"],
    &["EVAL", "return 1", "0"],
    &["SCRIPT", "LOAD", "return 1"],
    // Permitted, it answers NOSCRIPT.
    &["EVALSHA", "0000000000000000000000000000000000000000", "0"],
];

impl Broker {
    /// The commands this user may not run for the queue stored in `list`,
    /// with the events on `channel`: one "command: Redis's words" each.
    pub(crate) async fn refused_commands(
        &self,
        list: &str,
        channel: &str,
    ) -> Result<Vec<String>, BrokerError> {
        let mut conn = self.conn().await?;
        let mut refused = Vec::new();
        let plist = format!("{{{list}}}:{PROBE}:list");
        let pkey = format!("{{{list}}}:{PROBE}:key");
        let (job, node) = (keys::job(PROBE), keys::node(PROBE));
        let stream = keys::event_stream(channel);
        let fill = |arg: &str| -> String {
            match arg {
                "LIST" => list.to_owned(),
                "PLIST" => plist.clone(),
                "PKEY" => pkey.clone(),
                "JOB" => job.clone(),
                "NODE" => node.clone(),
                "STREAM" => stream.clone(),
                "CHANNEL" => channel.to_owned(),
                other => other.to_owned(),
            }
        };
        for probe in PROBES {
            let mut cmd = redis::cmd(probe[0]);
            for arg in &probe[1..] {
                cmd.arg(fill(arg));
            }
            let result = cmd.query_async::<redis::Value>(&mut conn).await.map(drop);
            refused.extend(denial(&probe[0].to_lowercase(), result)?);
        }
        // One at a time: on a cluster they live in different slots.
        for key in [&plist, &pkey, &job, &node] {
            let _ignored = redis::cmd("DEL")
                .arg(key)
                .query_async::<redis::Value>(&mut conn)
                .await;
        }
        let mut own = self.dedicated(std::time::Duration::ZERO).await?;
        refused.extend(denial("client", client(&mut own).await)?);
        match self.try_subscribe(channel).await {
            Err(BrokerError::Redis(e)) => refused.extend(denial("subscribe", Err(e))?),
            other => other?,
        }
        Ok(refused)
    }

    async fn try_subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let (mut pubsub, _) = self.pubsub().await?;
        Ok(pubsub.subscribe(channel).await?)
    }
}

/// A refusal of `command`, in Redis's words; other errors than a lost
/// connection are not about permissions and pass.
fn denial(
    command: &str,
    result: Result<(), redis::RedisError>,
) -> Result<Option<String>, BrokerError> {
    match result {
        Err(e) if is_denial(&e) => Ok(Some(format!("{command}: {e}"))),
        Err(e) if e.is_io_error() || e.is_connection_dropped() => Err(e.into()),
        _ => Ok(None),
    }
}

/// What a fetcher does to its connection: name it, learn its id, switch
/// its replies on (and off, around its wait), and unblock a connection
/// (its own: nothing is blocked, nothing happens).
async fn client(conn: &mut super::Conn) -> Result<(), redis::RedisError> {
    let id: u64 = redis::cmd("CLIENT").arg("ID").query_async(conn).await?;
    redis::cmd("CLIENT")
        .arg("REPLY")
        .arg("ON")
        .query_async::<()>(conn)
        .await?;
    redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(format!("conveyor:{PROBE}"))
        .query_async::<()>(conn)
        .await?;
    redis::cmd("CLIENT")
        .arg("UNBLOCK")
        .arg(id)
        .query_async::<()>(conn)
        .await
}
