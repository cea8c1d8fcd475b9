//! Redis Cluster: connections that follow slots, and pipelines cut where
//! their commands change slot.
//!
//! redis-rs's cluster connection follows MOVED, ASK and failovers by
//! itself, but refuses a pipeline whose keys live in more than one slot.
//! conveyor's pipelines mix slots (a queue's keys share one, but status
//! records, node keys and the events stream each have their own), so here a
//! pipeline is sent as its runs of consecutive commands of one slot, one
//! after the other: the order of every command is kept, at the cost of a
//! round trip per run. Commands without a key (`PUBSUB NUMSUB`, `CLIENT`,
//! `SCRIPT`...) go alone, routed as redis-rs routes them (`PUBSUB NUMSUB`
//! to every node, summed).

use std::time::Duration;

use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::{
    Client, Cmd, IntoConnectionInfo as _, Pipeline, RedisError, TlsCertificates, TlsMode, Value,
};

use crate::config::{ClusterConfig, RedisConfig};

/// How to reach a cluster: its listed nodes and credentials.
pub(crate) struct Cluster {
    nodes: Vec<redis::ConnectionInfo>,
    username: Option<String>,
    password: Option<String>,
    certificates: Option<TlsCertificates>,
    tls: bool,
}

impl Cluster {
    /// The cluster `cluster` lists; the password from `config`'s channels
    /// (else the first URL's). No I/O.
    pub(crate) fn new(
        config: &RedisConfig,
        cluster: &ClusterConfig,
        certificates: Option<TlsCertificates>,
    ) -> Result<Self, RedisError> {
        let mut nodes = Vec::new();
        for node in &cluster.nodes {
            nodes.push(node.expose().into_connection_info()?);
        }
        let first = nodes.first().map(|n| n.redis_settings().clone());
        let username = cluster
            .username
            .clone()
            .or_else(|| first.as_ref().and_then(|s| s.username().map(str::to_owned)));
        let password = config
            .password
            .as_ref()
            .map(|p| p.expose().to_owned())
            .or_else(|| first.as_ref().and_then(|s| s.password().map(str::to_owned)));
        let cluster = Self {
            nodes,
            username,
            password,
            certificates,
            tls: config.is_tls(),
        };
        // Checks the settings now (the nodes must agree), not at first use.
        cluster.client(Duration::from_secs(1), Duration::from_secs(1))?;
        Ok(cluster)
    }

    /// A client whose connections time out after `connect` and `response`.
    fn client(&self, connect: Duration, response: Duration) -> Result<ClusterClient, RedisError> {
        // Each node's own password and user go: the cluster's apply to all.
        let nodes = self.nodes.iter().map(|n| {
            let settings = redis::RedisConnectionInfo::default();
            n.clone().set_redis_settings(settings)
        });
        let mut builder = ClusterClientBuilder::new(nodes)
            .connection_timeout(connect)
            .response_timeout(response)
            // Without it a request that timed out waits for other traffic
            // to be retried; with it, it fails and the caller retries.
            .overall_response_timeout(Some(response + connect))
            .retries(3);
        if let Some(username) = &self.username {
            builder = builder.username(username);
        }
        if let Some(password) = &self.password {
            builder = builder.password(password);
        }
        if self.tls {
            builder = builder.tls(TlsMode::Secure);
            if let Some(certificates) = &self.certificates {
                builder = builder.certs(certificates.clone());
            }
        }
        builder.build()
    }

    /// A connection to the whole cluster.
    pub(crate) async fn connect(
        &self,
        connect: Duration,
        response: Duration,
    ) -> Result<ClusterConnection, RedisError> {
        self.client(connect, response)?.get_async_connection().await
    }

    /// Clients of each listed node, for what one node does for all:
    /// SUBSCRIBE (a PUBLISH reaches every node) and PING.
    pub(crate) fn node_clients(&self) -> Result<Vec<Client>, RedisError> {
        self.nodes
            .iter()
            .map(|n| {
                let mut settings = n.redis_settings().clone();
                if let Some(username) = &self.username {
                    settings = settings.set_username(username);
                }
                if let Some(password) = &self.password {
                    settings = settings.set_password(password);
                }
                let info = n.clone().set_redis_settings(settings);
                match &self.certificates {
                    Some(c) if self.tls => Client::build_with_tls(info, c.clone()),
                    _ => Client::open(info),
                }
            })
            .collect()
    }
}

/// Where a command goes: the slot of its key, or `None` for a command
/// without one.
fn slot_of(cmd: &Cmd) -> Option<Slot> {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .map(|a| match a {
            redis::Arg::Simple(a) => a,
            _ => &[][..],
        })
        .collect();
    let name = args.first()?.to_ascii_uppercase();
    let key = match name.as_slice() {
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" => {
            let keys: usize = std::str::from_utf8(args.get(2)?).ok()?.parse().ok()?;
            if keys == 0 {
                return None;
            }
            args.get(3)?
        }
        b"PUBSUB" | b"CLIENT" | b"SCRIPT" | b"CONFIG" | b"INFO" | b"PING" | b"ROLE" | b"WAIT"
        | b"ACL" | b"CLUSTER" | b"DBSIZE" | b"TIME" | b"MULTI" | b"EXEC" => return None,
        _ => args.get(1)?,
    };
    Some(Slot::for_key(key))
}

/// The route to the primary of `slot`.
fn primary_of(slot: Slot) -> SingleNodeRoutingInfo {
    SingleNodeRoutingInfo::SpecificNode(Route::with_slot(slot, SlotAddr::Master))
}

/// The route to the primary that holds `key`, for a pipeline.
pub(crate) fn primary_of_key(key: &str) -> SingleNodeRoutingInfo {
    primary_of(Slot::for_key(key))
}

/// The route to the primary that holds `key`.
pub(crate) fn owner_of(key: &str) -> RoutingInfo {
    RoutingInfo::SingleNode(primary_of(Slot::for_key(key)))
}

/// Sends `pipeline`'s commands `offset..offset + count` as runs of one
/// slot each, in order; the replies of all its commands, in order.
pub(crate) async fn query_runs(
    conn: &mut ClusterConnection,
    pipeline: &Pipeline,
    offset: usize,
    count: usize,
) -> Result<Vec<Value>, RedisError> {
    if pipeline.is_transaction() {
        // MULTI ... EXEC: one slot, or the server says CROSSSLOT.
        return redis::aio::ConnectionLike::req_packed_commands(conn, pipeline, offset, count)
            .await;
    }
    let mut replies = Vec::with_capacity(pipeline.len());
    let mut run = redis::pipe();
    let mut run_slot = None;
    for cmd in pipeline.cmd_iter() {
        let slot = slot_of(cmd);
        if !run.is_empty() && (slot.is_none() || slot != run_slot) {
            let sent = std::mem::replace(&mut run, redis::pipe());
            replies.extend(send_run(conn, sent, run_slot).await?);
        }
        match slot {
            None => replies.push(redis::aio::ConnectionLike::req_packed_command(conn, cmd).await?),
            Some(_) => {
                run.add_command(cmd.clone());
                run_slot = slot;
            }
        }
    }
    if !run.is_empty() {
        replies.extend(send_run(conn, run, run_slot).await?);
    }
    Ok(replies)
}

async fn send_run(
    conn: &mut ClusterConnection,
    run: Pipeline,
    slot: Option<Slot>,
) -> Result<Vec<Value>, RedisError> {
    let len = run.len();
    match slot {
        Some(slot) => conn.route_pipeline(run, 0, len, primary_of(slot)).await,
        None => redis::aio::ConnectionLike::req_packed_commands(conn, &run, 0, len).await,
    }
}
