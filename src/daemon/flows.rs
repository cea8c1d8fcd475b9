//! The flows' driver (DESIGN section 13): takes submitted documents off
//! `conveyor:flows`, stores them, and takes the ends of flow nodes that
//! this node's queues recorded, handing the nodes they release to their
//! queues.
//!
//! Each step is one atomic script in one slot and safe to do again: a
//! document stays in `{conveyor:flows}:taken` and a node's end in its
//! queue's `{K}:flows:ended` until everything it released is in its
//! queue. The ends come straight from this node's processors; what a
//! crash (of this node or another) left in those lists is taken up by
//! every node's look, which reads again what it found there on its last
//! look too.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::writer::Events;
use crate::api::Client;
use crate::broker::flows::{NodeEnd, Released, Settled, Taken};
use crate::broker::{Broker, BrokerError, QueueKeys, keys};
use crate::clock::{now_ms, now_rfc3339};
use crate::config::Config;
use crate::envelope::item_limit;
use crate::event::{Draft, EventType};
use crate::flow::{self, Spec};

/// Node ends a node's processors may hand over before the driver takes
/// them; more wait in their queues' lists for the next look.
const BACKLOG: usize = 65_536;
/// Ends taken in one go.
const BATCH: usize = 1_000;
/// How often the lists a crash may leave work in are read.
const LOOK_EVERY: Duration = Duration::from_secs(2);
/// Items read per list per look.
const LOOK_MOST: isize = 1_000;

/// The nodes an end adds, checked, or why they are refused (as the node's
/// result in its flow).
type Checked = (Option<BTreeMap<String, flow::Node>>, Option<String>);

/// A node end recorded by one of this node's queues.
#[derive(Debug)]
pub(crate) struct Ended {
    queue: Arc<str>,
    end: String,
}

/// Where processors hand the ends of flow nodes they recorded.
#[derive(Clone, Default)]
pub(crate) struct FlowEnds(Option<mpsc::Sender<Ended>>);

impl FlowEnds {
    /// A node end of `queue`, recorded with its outcome (never waits: when
    /// the driver is behind, the next look finds it).
    pub(crate) fn ended(&self, queue: &Arc<str>, end: String) {
        if let Some(tx) = &self.0 {
            let _ = tx.try_send(Ended {
                queue: queue.clone(),
                end,
            });
        }
    }
}

/// The handle processors get, and the driver's end of it.
pub(crate) fn channel() -> (FlowEnds, mpsc::Receiver<Ended>) {
    let (tx, rx) = mpsc::channel(BACKLOG);
    (FlowEnds(Some(tx)), rx)
}

/// Drives the flows: stores documents, takes node ends.
pub(crate) struct Driver {
    pub(crate) broker: Broker,
    /// Cancels the nodes of a cancelled flow in their queues.
    pub(crate) client: Client,
    pub(crate) events: Events,
    /// Every configured queue's keys, by name: where released nodes go,
    /// and whose ends lists are looked at.
    pub(crate) queues: BTreeMap<String, QueueKeys>,
    /// Each queue's `max_payload_bytes`, by name: a node's payload is
    /// checked against it, and its job (with its parents) too.
    pub(crate) limits: BTreeMap<String, usize>,
    /// How long a flow's state stays once it ended.
    pub(crate) ttl: Duration,
    /// Most nodes a document may have.
    pub(crate) max_nodes: usize,
    pub(crate) ends: mpsc::Receiver<Ended>,
}

impl Driver {
    /// The queues of `config` as the driver sees them.
    pub(crate) fn queues_of(config: &Config, node: &str) -> BTreeMap<String, QueueKeys> {
        config
            .queues
            .keys()
            .map(|name| {
                (
                    name.clone(),
                    QueueKeys::new(name, &config.queue_key(name), node),
                )
            })
            .collect()
    }

    /// Runs until `stop`.
    pub(crate) async fn run(mut self, stop: CancellationToken) {
        let this = Arc::new(Shared {
            broker: self.broker.clone(),
            client: self.client.clone(),
            events: self.events.clone(),
            queues: std::mem::take(&mut self.queues),
            limits: std::mem::take(&mut self.limits),
            ttl: self.ttl,
            max_nodes: self.max_nodes,
        });
        let taker = tokio::spawn(this.clone().take_documents(stop.clone()));
        let mut seen: HashSet<(String, String)> = HashSet::new();
        let mut look = tokio::time::interval(LOOK_EVERY);
        look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                first = self.ends.recv() => {
                    let Some(first) = first else { break };
                    let mut batch = vec![first];
                    while batch.len() < BATCH {
                        match self.ends.try_recv() {
                            Ok(more) => batch.push(more),
                            Err(_) => break,
                        }
                    }
                    let batch = batch.into_iter().map(|e| (e.queue.to_string(), e.end)).collect();
                    this.take_ends(batch).await;
                }
                _ = look.tick() => seen = this.look(seen).await,
            }
        }
        let _ = taker.await;
    }
}

/// What the driver's two tasks share.
struct Shared {
    broker: Broker,
    client: Client,
    events: Events,
    queues: BTreeMap<String, QueueKeys>,
    limits: BTreeMap<String, usize>,
    ttl: Duration,
    max_nodes: usize,
}

impl Shared {
    /// Takes submitted documents until `stop`.
    async fn take_documents(self: Arc<Self>, stop: CancellationToken) {
        let block = Duration::from_secs(1);
        let mut conn = None;
        let mut denied = false;
        loop {
            if stop.is_cancelled() {
                return;
            }
            let c = match &mut conn {
                Some(c) => c,
                None => match self.broker.dedicated(block).await {
                    Ok(c) => conn.insert(c),
                    Err(e) => {
                        tracing::debug!(error = %e, "flows: no connection to take documents; trying again");
                        pause(&stop).await;
                        continue;
                    }
                },
            };
            let taken = tokio::select! {
                _ = stop.cancelled() => return,
                taken = self.broker.take_flow(c, block) => taken,
            };
            match taken {
                Ok(Some(text)) => self.submit(&text).await,
                Ok(None) => {}
                Err(e) if e.is_denied() => {
                    // A Redis user of an earlier documented ACL line: jobs
                    // run, flows do not; said once, then looked at rarely.
                    if !denied {
                        tracing::warn!(error = %e, "flows: the Redis user may not use conveyor:flows and {{conveyor:flows}}:*, {{flow:*}}: flows are not run (docs/redis.md, Least privilege)");
                        denied = true;
                    }
                    conn = None;
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "flows: taking a document failed; trying again");
                    conn = None;
                    pause(&stop).await;
                }
            }
        }
    }

    /// Stores a taken document, or refuses it.
    async fn submit(&self, taken: &str) {
        if let Err(e) = self.try_submit(taken).await {
            tracing::warn!(error = %e, "flows: a document could not be stored; it is taken up again on a later look");
        }
    }

    async fn try_submit(&self, taken: &str) -> Result<(), BrokerError> {
        let now = now_rfc3339();
        let limit = |queue: &str| self.limits.get(queue).copied();
        let (named, doc) = match flow::read_submitted(taken, &limit, self.max_nodes) {
            Ok(read) => read,
            Err(refused) => return self.refuse(taken, &refused.0, &now).await,
        };
        if named != taken {
            self.broker.rename_taken_flow(taken, &named).await?;
        }
        let fid = doc.id.clone();
        let settled = self.broker.store_flow(&doc, &now, self.ttl).await?;
        if settled.duplicate {
            tracing::info!(flow = %fid, "flows: a second submission of a flow already stored is ignored");
        } else {
            tracing::info!(flow = %fid, nodes = doc.nodes.len(), "flows: flow stored");
            self.events
                .emit(Draft::flow(EventType::FlowSubmitted, fid.as_str()));
        }
        let ends = self.settle(&fid, settled).await?;
        self.broker.flow_stored(&named, &fid, now_ms()).await?;
        if !ends.is_empty() {
            self.take_ends(ends).await;
        }
        Ok(())
    }

    async fn refuse(&self, taken: &str, reason: &str, now: &str) -> Result<(), BrokerError> {
        tracing::warn!(error = %reason, "flows: document refused; kept in {}", keys::FLOWS_DEAD);
        self.broker.refuse_flow(taken, reason, now).await
    }

    /// Takes node ends (queue name, end as recorded), flow by flow, and
    /// those of the nodes their flows cancel in their queues.
    async fn take_ends(&self, mut batch: Vec<(String, String)>) {
        while !batch.is_empty() {
            batch = self.take_some(batch).await;
        }
    }

    /// Takes node ends; returns the ends of nodes cancelled meanwhile.
    async fn take_some(&self, batch: Vec<(String, String)>) -> Vec<(String, String)> {
        let mut by_flow: BTreeMap<String, Vec<(String, String, NodeEnd)>> = BTreeMap::new();
        for (queue, raw) in batch {
            match serde_json::from_str::<NodeEnd>(&raw) {
                Ok(end) => by_flow
                    .entry(end.flow.clone())
                    .or_default()
                    .push((queue, raw, end)),
                Err(e) => {
                    tracing::warn!(error = %e, "flows: a node end is not readable; dropped");
                    self.forget(&[(queue, raw)]).await;
                }
            }
        }
        let mut more = Vec::new();
        let limit = |queue: &str| self.limits.get(queue).copied();
        for (fid, ends) in by_flow {
            // The nodes each end adds, checked: an end whose additions are
            // refused ends its node dead in the flow, the reason its result.
            let checked: Vec<Checked> = ends
                .iter()
                .map(|(_, _, e)| match &e.add {
                    Some(add) if e.status == "succeeded" => {
                        match flow::additions(add.get(), &limit, self.max_nodes) {
                            Ok(nodes) => (Some(nodes), None),
                            Err(refused) => {
                                tracing::warn!(flow = %fid, node = %e.node, error = %refused, "flows: flow_add refused; the node ends dead in its flow");
                                let why = format!("flow_add refused: {refused}");
                                (None, Some(serde_json::json!({ "error": why }).to_string()))
                            }
                        }
                    }
                    _ => (None, None),
                })
                .collect();
            let taken: Vec<Taken<'_>> = ends
                .iter()
                .zip(&checked)
                .map(|((_, _, e), (adds, refused))| Taken {
                    node: &e.node,
                    status: if refused.is_some() { "dead" } else { &e.status },
                    result: refused
                        .as_deref()
                        .or_else(|| e.result.as_ref().map(|r| r.get())),
                    attempt: e.attempt,
                    adds: adds.as_ref(),
                })
                .collect();
            let result = async {
                let now = now_rfc3339();
                let settled = self
                    .broker
                    .advance_flow(&fid, &taken, &now, self.ttl, self.max_nodes)
                    .await?;
                self.settle(&fid, settled).await
            }
            .await;
            match result {
                Ok(cancelled) => {
                    let done: Vec<(String, String)> =
                        ends.into_iter().map(|(q, raw, _)| (q, raw)).collect();
                    self.forget(&done).await;
                    more.extend(cancelled);
                }
                Err(e) => {
                    tracing::warn!(flow = %fid, error = %e, "flows: node ends not taken yet; taken up again on a later look");
                }
            }
        }
        more
    }

    /// Forgets ends taken.
    async fn forget(&self, done: &[(String, String)]) {
        let mut by_queue: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (queue, raw) in done {
            by_queue.entry(queue).or_default().push(raw);
        }
        for (queue, raws) in by_queue {
            let Some(keys) = self.queues.get(queue) else {
                continue;
            };
            if let Err(e) = self.broker.forget_ends(keys, &raws).await {
                tracing::debug!(error = %e, "flows: taken ends not forgotten yet; the next look takes them again, harmlessly");
            }
        }
    }

    /// Announces what a step settled, hands the released nodes to their
    /// queues, and cancels in their queues the
    /// nodes of a flow cancelled. Returns the ends of the nodes cancelled
    /// while waiting (running ones end when their daemon stops them).
    async fn settle(
        &self,
        fid: &str,
        settled: Settled,
    ) -> Result<Vec<(String, String)>, BrokerError> {
        if settled.unknown {
            tracing::debug!(flow = %fid, "flows: an end of a flow no longer stored; dropped");
            return Ok(Vec::new());
        }
        for (name, how) in &settled.settled {
            let id = format!("{fid}:{name}");
            let kind = match how.as_str() {
                "skipped" => EventType::Skipped,
                _ => EventType::Cancelled,
            };
            let mut draft = Draft::job(kind, "", id.as_str(), 0).in_flow(Some(fid));
            draft.queue = None;
            if kind == EventType::Cancelled {
                draft = draft.reason("flow");
            }
            self.events.emit(draft);
        }
        let mut more = self.hand_over(fid, &settled.released).await?;
        if let Some(status) = &settled.finished {
            tracing::info!(flow = %fid, status = %status, "flows: flow finished");
            self.events
                .emit(Draft::flow(EventType::FlowFinished, fid).status(status.as_str()));
        }
        match self.client.cancel_nodes(fid, &settled.cancel).await {
            Ok(ends) => {
                more.extend(ends);
                Ok(more)
            }
            Err(crate::api::ApiError::Broker(e)) => Err(e),
            Err(e) => Err(BrokerError::Protocol(e.to_string())),
        }
    }

    /// Pushes released nodes to their queues (each once). A node whose job
    /// would be larger than its queue reads (its parents' results, in a
    /// fan-in over many, can make it so) is not pushed: it ends dead in its
    /// flow with the reason, its end kept in its queue's ends like any
    /// other. Returns those ends (queue, end), to take.
    async fn hand_over(
        &self,
        fid: &str,
        released: &[Released],
    ) -> Result<Vec<(String, String)>, BrokerError> {
        let mut refused = Vec::new();
        if released.is_empty() {
            return Ok(refused);
        }
        let created_at = now_rfc3339();
        let mut by_queue: BTreeMap<String, Vec<(&str, String)>> = BTreeMap::new();
        for node in released {
            let spec: Spec = serde_json::from_str(&node.spec).map_err(|e| {
                BrokerError::Protocol(format!("a stored node is not readable: {e}"))
            })?;
            let envelope = envelope(fid, node, &spec, &created_at);
            let max = self.limits.get(&spec.queue).copied().unwrap_or(usize::MAX);
            if envelope.len() > item_limit(max) {
                let why = format!(
                    "its job would be {} bytes with its parents' results, more than queue {}'s \
                     max_payload_bytes ({max}) allows",
                    envelope.len(),
                    spec.queue
                );
                tracing::warn!(flow = %fid, node = %node.name, error = %why, "flows: a node not run");
                let result = serde_json::json!({ "error": why }).to_string();
                let result = RawValue::from_string(result).expect("JSON");
                let end = flow::node_end(fid, &node.name, "dead", 0, Some(&result), None);
                refused.push((spec.queue, end));
                continue;
            }
            by_queue
                .entry(spec.queue)
                .or_default()
                .push((node.name.as_str(), envelope));
        }
        for (queue, jobs) in &by_queue {
            self.broker
                .hand_over(&self.keys_of(queue), fid, jobs)
                .await?;
        }
        for (queue, end) in &refused {
            self.broker.keep_end(&self.keys_of(queue), end).await?;
        }
        Ok(refused)
    }

    /// The keys of queue `name`; for a queue the configuration lost since
    /// the flow was stored, its list is where a producer would push.
    fn keys_of(&self, name: &str) -> QueueKeys {
        match self.queues.get(name) {
            Some(keys) => keys.clone(),
            None => QueueKeys::new(name, name, "flows"),
        }
    }

    /// Reads the lists a crash may leave work in, and takes up what was
    /// there on the last look too. Returns what it saw.
    async fn look(&self, before: HashSet<(String, String)>) -> HashSet<(String, String)> {
        let mut seen = HashSet::new();
        match self.broker.lingering(keys::FLOWS_TAKEN, LOOK_MOST).await {
            Ok(taken) => {
                for text in taken {
                    let key = (String::new(), text);
                    if before.contains(&key) {
                        self.submit(&key.1).await;
                    }
                    seen.insert(key);
                }
            }
            Err(e) => tracing::debug!(error = %e, "flows: could not look at the taken documents"),
        }
        for (name, keys) in &self.queues {
            match self.broker.lingering(&keys.flows_ended, LOOK_MOST).await {
                Ok(ends) => {
                    let mut again = Vec::new();
                    for raw in ends {
                        let key = (name.clone(), raw);
                        if before.contains(&key) {
                            again.push(key.clone());
                        }
                        seen.insert(key);
                    }
                    if !again.is_empty() {
                        tracing::info!(queue = %name, ends = again.len(), "flows: taking up node ends left behind");
                        self.take_ends(again).await;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "flows: could not look at a queue's node ends")
                }
            }
        }
        seen
    }
}

/// The job of a released node, written out directly: its id
/// `<fid>:<name>` (both `[A-Za-z0-9_.-]`), its payload as submitted, its
/// flow and its parents' statuses and results (checked to be JSON: a job
/// that is not would be dead-lettered as malformed, out of its flow's
/// sight).
fn envelope(fid: &str, node: &Released, spec: &Spec, created_at: &str) -> String {
    let parents = match serde_json::from_str::<&RawValue>(&node.parents) {
        Ok(_) => node.parents.as_str(),
        Err(e) => {
            tracing::warn!(flow = %fid, node = %node.name, error = %e, "flows: a node's parents are not JSON; left out");
            "{}"
        }
    };
    let payload = spec.payload.get();
    let mut e = String::with_capacity(payload.len() + parents.len() + 2 * fid.len() + 160);
    e.push_str("{\"id\":\"");
    e.push_str(fid);
    e.push(':');
    e.push_str(&node.name);
    e.push_str("\",\"payload\":");
    e.push_str(payload);
    e.push_str(",\"attempt\":0");
    if let Some(m) = spec.max_attempts {
        e.push_str(",\"max_attempts\":");
        e.push_str(itoa::Buffer::new().format(m));
    }
    e.push_str(",\"created_at\":\"");
    e.push_str(created_at);
    e.push('"');
    if let Some(t) = spec.timeout_ms {
        e.push_str(",\"timeout_ms\":");
        e.push_str(itoa::Buffer::new().format(t));
    }
    e.push_str(",\"flow\":\"");
    e.push_str(fid);
    e.push_str("\",\"parents\":");
    e.push_str(parents);
    e.push('}');
    e
}

/// A second, or less if `stop` comes first.
async fn pause(stop: &CancellationToken) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
    }
}
