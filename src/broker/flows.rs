//! A flow's keys in Redis (DESIGN section 13): the submitted documents
//! (`conveyor:flows`, taken into `{conveyor:flows}:taken`, refused into
//! `{conveyor:flows}:dead`), each flow's state in its slot `{flow:<fid>}`,
//! and the hand-off of released nodes to their queues.
//!
//! Every step here can be done twice without harm: storing a flow, taking
//! a node's end, pushing a released node (once per queue marker), so the
//! daemon that drives a flow can crash between any two and another picks
//! the work up from what is still listed.

use std::collections::HashMap;
use std::time::Duration;

use redis::AsyncCommands as _;

use super::keys::{self, FlowKeys};
use super::scripts::{flow_advance, flow_cancel, flow_release, flow_submit};
use super::{Broker, BrokerError, Conn, QueueKeys};
use crate::flow::Document;

pub(crate) use flow_advance::{NodeEnd, Taken};

/// Refused documents kept, newest first.
pub(crate) const DEAD_CAP: isize = 10_000;
/// Largest refused document kept whole; a larger one keeps its first
/// [`KEPT_HEAD`] bytes.
const KEPT_WHOLE: usize = 1024 * 1024;
const KEPT_HEAD: usize = 64 * 1024;
/// Flow ids kept in the recent list.
pub(crate) const RECENT_CAP: isize = 10_000;

/// A node released and not yet handed to its queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Released {
    /// Its name.
    pub(crate) name: String,
    /// Its job's `parents` field (JSON).
    pub(crate) parents: String,
    /// What its job is made from ([`crate::flow::Spec`] as JSON).
    pub(crate) spec: String,
}

/// What storing a flow or taking ends of its nodes settled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Settled {
    /// The flow was stored before (a second submission).
    pub(crate) duplicate: bool,
    /// The flow is not stored (never, or past its lifetime).
    pub(crate) unknown: bool,
    /// The flow had ended before (a cancel changes nothing).
    pub(crate) ended: bool,
    /// The flow's status, if it ended in this step.
    pub(crate) finished: Option<String>,
    /// Nodes that ended without running: name and `skipped` or
    /// `cancelled`.
    pub(crate) settled: Vec<(String, String)>,
    /// Nodes of a cancelled flow in their queues, to cancel there: name
    /// and what its job was made from ([`crate::flow::Spec`] as JSON).
    pub(crate) cancel: Vec<(String, String)>,
    /// Nodes to hand to their queues.
    pub(crate) released: Vec<Released>,
}

impl Settled {
    fn from_reply(reply: Vec<String>) -> Result<Self, BrokerError> {
        let bad = || BrokerError::Protocol("a flow script's reply is malformed".into());
        let mut it = reply.into_iter();
        let status = it.next().ok_or_else(bad)?;
        let n: usize = it.next().and_then(|n| n.parse().ok()).ok_or_else(bad)?;
        let mut out = Settled {
            duplicate: status == "duplicate",
            unknown: status == "unknown",
            ended: status == "ended",
            ..Settled::default()
        };
        if !out.duplicate && !out.unknown && !out.ended && !status.is_empty() {
            out.finished = Some(status);
        }
        for _ in 0..n {
            let s = it.next().ok_or_else(bad)?;
            let (name, how) = s.split_once(' ').ok_or_else(bad)?;
            out.settled.push((name.to_owned(), how.to_owned()));
        }
        let m: usize = it.next().and_then(|n| n.parse().ok()).ok_or_else(bad)?;
        for _ in 0..m {
            let name = it.next().ok_or_else(bad)?;
            let spec = it.next().ok_or_else(bad)?;
            out.cancel.push((name, spec));
        }
        while let Some(name) = it.next() {
            let parents = it.next().ok_or_else(bad)?;
            let spec = it.next().ok_or_else(bad)?;
            out.released.push(Released {
                name,
                parents,
                spec,
            });
        }
        Ok(out)
    }
}

/// One node as `conveyor flow show` and the web API show it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NodeView {
    /// Its name.
    pub name: String,
    /// Its queue.
    pub queue: String,
    /// `pending`, `waiting`, `succeeded`, `dead`, `skipped` or `cancelled`.
    pub status: String,
    /// The nodes it waits for.
    pub after: Vec<String>,
    /// The attempt it ended at, once it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// When it ended (RFC 3339), once it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    /// Its result, if it left one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<serde_json::value::RawValue>>,
}

/// A flow without its nodes, as `conveyor flow list` and the dashboard's
/// list show it: its meta hash.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FlowSummary {
    /// Its id.
    pub flow: String,
    /// `running`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    /// When it was stored (RFC 3339).
    pub created_at: String,
    /// When it ended (RFC 3339), once it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    /// Its nodes.
    pub total: u64,
    /// Its nodes that ended, and how.
    pub ended: u64,
    /// Of those: succeeded.
    pub succeeded: u64,
    /// Dead.
    pub dead: u64,
    /// Skipped.
    pub skipped: u64,
    /// Cancelled.
    pub cancelled: u64,
}

/// A flow as `conveyor flow show` and the web API show it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FlowView {
    /// Its id.
    pub flow: String,
    /// `running`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    /// `continue` or `cancel`.
    pub on_failure: String,
    /// When it was stored (RFC 3339).
    pub created_at: String,
    /// When it ended (RFC 3339), once it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    /// Its nodes.
    pub total: u64,
    /// Its nodes that ended.
    pub ended: u64,
    /// The nodes, by name.
    pub nodes: Vec<NodeView>,
}

impl Broker {
    /// Takes the next submitted document into the taken list, waiting up to
    /// `block` for one, on a connection of its own.
    pub(crate) async fn take_flow(
        &self,
        conn: &mut Conn,
        block: Duration,
    ) -> Result<Option<String>, BrokerError> {
        Ok(redis::cmd("BLMOVE")
            .arg(keys::FLOWS)
            .arg(keys::FLOWS_TAKEN)
            .arg("LEFT")
            .arg("RIGHT")
            .arg(block.as_secs_f64())
            .query_async(conn)
            .await?)
    }

    /// Replaces a taken document by `named` (the same with its new id), in
    /// one step.
    pub(crate) async fn rename_taken_flow(
        &self,
        taken: &str,
        named: &str,
    ) -> Result<(), BrokerError> {
        let mut conn = self.conn().await?;
        redis::pipe()
            .atomic()
            .lrem(keys::FLOWS_TAKEN, 1, taken)
            .ignore()
            .rpush(keys::FLOWS_TAKEN, named)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Moves a taken document to the refused ones, with the reason, in one
    /// step.
    pub(crate) async fn refuse_flow(
        &self,
        taken: &str,
        reason: &str,
        now: &str,
    ) -> Result<(), BrokerError> {
        // A document too large to keep whole keeps its first 64 KiB.
        let entry = match taken.len() > KEPT_WHOLE {
            false => serde_json::json!({
                "document": taken,
                "last_error": reason,
                "died_at": now,
            }),
            true => {
                let mut head = KEPT_HEAD;
                while !taken.is_char_boundary(head) {
                    head -= 1;
                }
                serde_json::json!({
                    "document_head": &taken[..head],
                    "document_bytes": taken.len(),
                    "last_error": reason,
                    "died_at": now,
                })
            }
        }
        .to_string();
        let mut conn = self.conn().await?;
        redis::pipe()
            .atomic()
            .lpush(keys::FLOWS_DEAD, entry)
            .ignore()
            .ltrim(keys::FLOWS_DEAD, 0, DEAD_CAP - 1)
            .ignore()
            .lrem(keys::FLOWS_TAKEN, 1, taken)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Runs a flow script and reads what it settled.
    async fn settled_by(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<Settled, BrokerError> {
        let mut conn = self.conn().await?;
        let reply: Vec<String> = invocation.invoke_async(&mut conn).await?;
        Settled::from_reply(reply)
    }

    /// Stores a checked document (once) and releases its first nodes.
    pub(crate) async fn store_flow(
        &self,
        doc: &Document,
        now: &str,
        ttl: Duration,
    ) -> Result<Settled, BrokerError> {
        let keys = FlowKeys::new(&doc.id);
        let call = flow_submit::Call {
            keys: &keys,
            now,
            ttl_ms: ttl.as_millis() as u64,
            document: doc,
        };
        let mut settled = self.settled_by(call.invocation()).await?;
        // Released by name alone: the first nodes, of no parents.
        for node in &mut settled.released {
            if let Some(spec) = doc.nodes.get(&node.name) {
                node.spec.clone_from(&spec.spec);
                node.parents = "{}".into();
            }
        }
        Ok(settled)
    }

    /// Lists a stored flow among the recent ones and forgets its taken
    /// document, in one step.
    pub(crate) async fn flow_stored(
        &self,
        taken: &str,
        fid: &str,
        at_ms: i64,
    ) -> Result<(), BrokerError> {
        let mut conn = self.conn().await?;
        redis::pipe()
            .atomic()
            .cmd("ZADD")
            .arg(keys::FLOWS_RECENT)
            .arg("NX")
            .arg(at_ms)
            .arg(fid)
            .ignore()
            .zremrangebyrank(keys::FLOWS_RECENT, 0, -RECENT_CAP - 1)
            .ignore()
            .lrem(keys::FLOWS_TAKEN, 1, taken)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Takes the ends of nodes of flow `fid`.
    pub(crate) async fn advance_flow(
        &self,
        fid: &str,
        ends: &[Taken<'_>],
        now: &str,
        ttl: Duration,
        max_nodes: usize,
    ) -> Result<Settled, BrokerError> {
        let keys = FlowKeys::new(fid);
        let call = flow_advance::Call {
            keys: &keys,
            now,
            ttl_ms: ttl.as_millis() as u64,
            max_nodes,
            ends,
        };
        self.settled_by(call.invocation()).await
    }

    /// Cancels flow `fid`: see `lua/flow_cancel.lua`.
    pub(crate) async fn cancel_flow(
        &self,
        fid: &str,
        now: &str,
        ttl: Duration,
    ) -> Result<Settled, BrokerError> {
        let keys = FlowKeys::new(fid);
        let call = flow_cancel::Call {
            keys: &keys,
            now,
            ttl_ms: ttl.as_millis() as u64,
        };
        self.settled_by(call.invocation()).await
    }

    /// Pushes released nodes of flow `fid` onto queue `q`, each once, in
    /// one round trip; how many were pushed.
    pub(crate) async fn hand_over(
        &self,
        q: &QueueKeys,
        fid: &str,
        jobs: &[(&str, String)],
    ) -> Result<u64, BrokerError> {
        let mut pipe = redis::pipe();
        pipe.load_script(&flow_release::SCRIPT).ignore();
        for chunk in jobs.chunks(flow_release::MOST) {
            let call = flow_release::Call {
                keys: q,
                flow: fid,
                jobs: chunk,
            };
            pipe.invoke_script(&call.invocation());
        }
        let mut conn = self.conn().await?;
        let pushed: Vec<u64> = pipe.query_async(&mut conn).await?;
        Ok(pushed.iter().sum())
    }

    /// Keeps a node end in queue `q`'s ends, for its flow to take.
    pub(crate) async fn keep_end(&self, q: &QueueKeys, end: &str) -> Result<(), BrokerError> {
        let mut conn = self.conn().await?;
        let _: u64 = conn.rpush(&q.flows_ended, end).await?;
        Ok(())
    }

    /// Forgets node ends of queue `q` that their flows have taken.
    pub(crate) async fn forget_ends(
        &self,
        q: &QueueKeys,
        ends: &[&str],
    ) -> Result<(), BrokerError> {
        let mut pipe = redis::pipe();
        for end in ends {
            pipe.lrem(&q.flows_ended, 1, *end).ignore();
        }
        let mut conn = self.conn().await?;
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// The first `n` items of list `key` (the taken documents, a queue's
    /// node ends), for the look that takes up what a crash left.
    pub(crate) async fn lingering(&self, key: &str, n: isize) -> Result<Vec<String>, BrokerError> {
        let mut conn = self.conn().await?;
        Ok(conn.lrange(key, 0, n - 1).await?)
    }

    /// Flow `fid` as stored; `None` if it is not (or no longer).
    pub(crate) async fn flow_view(&self, fid: &str) -> Result<Option<FlowView>, BrokerError> {
        let k = FlowKeys::new(fid);
        let mut pipe = redis::pipe();
        for key in [&k.meta, &k.spec, &k.state, &k.parents, &k.ends, &k.results] {
            pipe.hgetall(key);
        }
        let mut conn = self.conn().await?;
        let mut all: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await?;
        let results = all.pop().unwrap_or_default();
        let ends = all.pop().unwrap_or_default();
        let parents = all.pop().unwrap_or_default();
        let state = all.pop().unwrap_or_default();
        let spec = all.pop().unwrap_or_default();
        let mut meta = all.pop().unwrap_or_default();
        if meta.is_empty() {
            return Ok(None);
        }
        let mut nodes: Vec<NodeView> = spec
            .into_iter()
            .map(|(name, spec)| {
                let queue = serde_json::from_str::<crate::flow::Spec>(&spec)
                    .map(|s| s.queue)
                    .unwrap_or_default();
                let (attempt, ended_at) = match ends.get(&name).and_then(|e| e.split_once(' ')) {
                    Some((a, at)) => (a.parse().ok(), Some(at.to_owned())),
                    None => (None, None),
                };
                NodeView {
                    status: state
                        .get(&name)
                        .cloned()
                        .unwrap_or_else(|| "waiting".into()),
                    after: parents
                        .get(&name)
                        .map(|p| p.split(' ').map(str::to_owned).collect())
                        .unwrap_or_default(),
                    result: results
                        .get(&name)
                        .and_then(|r| serde_json::value::RawValue::from_string(r.clone()).ok()),
                    name,
                    queue,
                    attempt,
                    ended_at,
                }
            })
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let mut take = |field: &str| meta.remove(field).unwrap_or_default();
        Ok(Some(FlowView {
            flow: fid.to_owned(),
            status: take("status"),
            on_failure: take("on_failure"),
            created_at: take("created_at"),
            ended_at: Some(take("ended_at")).filter(|e| !e.is_empty()),
            total: take("total").parse().unwrap_or(0),
            ended: take("ended").parse().unwrap_or(0),
            nodes,
        }))
    }

    /// The summaries of flows `ids`, in that order; those no longer
    /// stored left out.
    pub(crate) async fn flow_summaries(
        &self,
        ids: &[String],
    ) -> Result<Vec<FlowSummary>, BrokerError> {
        let mut out = Vec::with_capacity(ids.len());
        let mut conn = self.conn().await?;
        // One slot per flow: a command each, pipelined a page at a time
        // where the connection allows it.
        for page in ids.chunks(100) {
            let mut pipe = redis::pipe();
            for fid in page {
                pipe.hgetall(FlowKeys::new(fid).meta);
            }
            let metas: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await?;
            for (fid, mut meta) in page.iter().zip(metas) {
                if meta.is_empty() {
                    continue;
                }
                let mut take = |field: &str| meta.remove(field).unwrap_or_default();
                let mut count = |field: &str| take(field).parse().unwrap_or(0);
                let (total, ended) = (count("total"), count("ended"));
                let (succeeded, dead, skipped, cancelled) = (
                    count("succeeded"),
                    count("dead"),
                    count("skipped"),
                    count("cancelled"),
                );
                out.push(FlowSummary {
                    flow: fid.clone(),
                    status: take("status"),
                    created_at: take("created_at"),
                    ended_at: Some(take("ended_at")).filter(|e| !e.is_empty()),
                    total,
                    ended,
                    succeeded,
                    dead,
                    skipped,
                    cancelled,
                });
            }
        }
        Ok(out)
    }

    /// The ids of the newest `n` flows stored, newest first.
    pub(crate) async fn recent_flows(&self, n: isize) -> Result<Vec<String>, BrokerError> {
        let mut conn = self.conn().await?;
        Ok(conn.zrevrange(keys::FLOWS_RECENT, 0, n - 1).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::fixture::TestRedis;

    fn doc(text: &str) -> Document {
        crate::flow::read(text, &|_| Some(1 << 20), 100).unwrap()
    }

    fn end<'a>(node: &'a str, status: &'a str, result: Option<&'a str>) -> Taken<'a> {
        Taken {
            node,
            status,
            result,
            attempt: 1,
            adds: None,
        }
    }

    /// Every step can be done twice: a second store and a second end
    /// change nothing but return again what they released that is still
    /// waiting, and a second hand-over pushes nothing.
    #[tokio::test]
    async fn every_step_of_a_flow_can_be_done_twice() {
        let redis = TestRedis::start();
        let broker = redis.broker();
        let d = doc(
            r#"{"flow":"f","jobs":{"a":{"queue":"q"},"b":{"queue":"q","after":["a"]},
                "c":{"queue":"q","after":["a","b"],"when":"finished"}}}"#,
        );
        let ttl = Duration::from_secs(60);
        let first = broker.store_flow(&d, "t0", ttl).await.unwrap();
        assert!(!first.duplicate);
        assert_eq!(first.released.len(), 1);
        assert_eq!(first.released[0].name, "a");
        assert_eq!(first.released[0].parents, "{}");
        // Not handed over yet: a second store returns it again.
        let again = broker.store_flow(&d, "t1", ttl).await.unwrap();
        assert!(again.duplicate);
        assert_eq!(again.released, first.released);
        let q = QueueKeys::new("q", "jobs:q", "n1");
        let jobs = [("a", "job-a".to_owned())];
        assert_eq!(broker.hand_over(&q, "f", &jobs).await.unwrap(), 1);
        assert_eq!(broker.hand_over(&q, "f", &jobs).await.unwrap(), 0);

        let a = || end("a", "succeeded", Some(r#"{"x":1}"#));
        let settled = broker
            .advance_flow("f", &[a()], "t2", ttl, 100)
            .await
            .unwrap();
        assert_eq!(settled.released.len(), 1);
        assert_eq!(settled.released[0].name, "b");
        assert_eq!(
            settled.released[0].parents,
            r#"{"a":{"status":"succeeded","result":{"x":1}}}"#
        );
        // The same end again: nothing new, what it released (b) returned.
        let twice = broker
            .advance_flow("f", &[a()], "t3", ttl, 100)
            .await
            .unwrap();
        assert_eq!(twice.released, settled.released);
        assert_eq!(twice.finished, None);
        let b = || end("b", "dead", None);
        let settled = broker
            .advance_flow("f", &[b()], "t4", ttl, 100)
            .await
            .unwrap();
        assert_eq!(settled.released[0].name, "c");
        let c = || end("c", "succeeded", None);
        let settled = broker
            .advance_flow("f", &[c()], "t5", ttl, 100)
            .await
            .unwrap();
        assert_eq!(settled.finished.as_deref(), Some("failed"));
        let view = broker.flow_view("f").await.unwrap().unwrap();
        assert_eq!((view.total, view.ended), (3, 3));
        assert_eq!(view.ended_at.as_deref(), Some("t5"));
        // Once ended, a late end changes nothing and ends nothing again.
        let late = broker
            .advance_flow("f", &[c()], "t6", ttl, 100)
            .await
            .unwrap();
        assert_eq!(late.finished, None);
        assert!(late.released.is_empty());
        let unknown = broker
            .advance_flow("nope", &[c()], "t6", ttl, 100)
            .await
            .unwrap();
        assert!(unknown.unknown);
    }
}
