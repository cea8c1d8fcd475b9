//! Flows (DESIGN section 13): named jobs with dependencies, submitted as
//! one JSON document. This module reads and checks a document; the broker
//! stores it (`broker/flows.rs`) and the daemon drives it
//! (`daemon/flows.rs`).
//!
//! A document is refused whole, with a reason a person can act on: it is
//! not JSON, names an unknown queue, has a cycle, an `after` naming no
//! node, more nodes than allowed, or a name outside `[A-Za-z0-9_.-]+`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Longest flow id or node name.
pub(crate) const MAX_NAME: usize = 100;

/// Largest document read.
pub(crate) const MAX_DOCUMENT_BYTES: usize = 32 * 1024 * 1024;

/// What a node does when a parent did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum When {
    /// Runs only if every parent succeeded (the default); else skipped.
    Succeeded,
    /// Runs once every parent ended, whatever the outcome.
    Finished,
}

/// What a flow does when one of its nodes ends dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnFailure {
    /// The rest goes on (nodes that need the dead one are skipped).
    Continue,
    /// The flow is cancelled.
    Cancel,
}

impl OnFailure {
    /// As stored and shown.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            OnFailure::Continue => "continue",
            OnFailure::Cancel => "cancel",
        }
    }
}

/// One node of a checked document.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    /// The nodes it waits for.
    pub(crate) after: Vec<String>,
    /// The nodes that wait for it.
    pub(crate) children: Vec<String>,
    /// When it runs.
    pub(crate) when: When,
    /// What is stored to make its job from ([`Spec`] as JSON).
    pub(crate) spec: String,
}

/// A checked document.
#[derive(Debug, Clone)]
pub(crate) struct Document {
    /// The flow id.
    pub(crate) id: String,
    /// What the first dead node does to the rest.
    pub(crate) on_failure: OnFailure,
    /// The nodes, by name.
    pub(crate) nodes: BTreeMap<String, Node>,
}

/// Why a document is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Refused(pub(crate) String);

/// A node as it is written in a document.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireNode {
    queue: String,
    #[serde(default)]
    payload: Option<Box<RawValue>>,
    #[serde(default)]
    after: Vec<String>,
    #[serde(default)]
    when: Option<String>,
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// A document as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireDocument {
    #[serde(default)]
    flow: Option<String>,
    #[serde(default)]
    jobs: BTreeMap<String, WireNode>,
    #[serde(default)]
    on_failure: Option<String>,
}

/// What a node's job is made from, stored with the flow.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Spec {
    /// The queue's name.
    pub(crate) queue: String,
    /// The payload, byte for byte as submitted.
    pub(crate) payload: Box<RawValue>,
    /// Overrides the queue's `max_attempts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) max_attempts: Option<u32>,
    /// Overrides the queue's `timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) timeout_ms: Option<u64>,
}

/// Whether `name` may name a flow or a node: `[A-Za-z0-9_.-]+`, at most
/// [`MAX_NAME`] characters.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Reads and checks a submitted document ([`read`]), parsed once: the
/// text with its flow id (written into it when it has none, as
/// [`with_id`] does) and the document.
pub(crate) fn read_submitted(
    text: &str,
    limit: &dyn Fn(&str) -> Option<usize>,
    max_nodes: usize,
) -> Result<(String, Document), Refused> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(Refused(format!(
            "a document of {} bytes, more than the {MAX_DOCUMENT_BYTES} read",
            text.len()
        )));
    }
    let mut wire = parse(text)?;
    let named = match &wire.flow {
        Some(_) => text.to_owned(),
        None => {
            let id = crate::envelope::new_id();
            let named = name_into(text, &id);
            wire.flow = Some(id);
            named
        }
    };
    Ok((named, checked(wire, limit, max_nodes)?))
}

/// `text` (a JSON object) with `"flow": id` as its first field.
fn name_into(text: &str, id: &str) -> String {
    let at = text.find('{').unwrap_or(0);
    let rest = text[at + 1..].trim_start();
    match rest.starts_with('}') {
        true => format!("{{\"flow\":\"{id}\"{rest}"),
        false => format!("{{\"flow\":\"{id}\",{rest}"),
    }
}

/// The document with a flow id: the text unchanged and its id when it
/// names one, else the text with a new id written into it (so that a
/// document read twice, after a crash, is the same flow both times).
#[cfg(test)]
pub(crate) fn with_id(text: &str) -> Result<(String, String), Refused> {
    let wire: WireDocument = parse(text)?;
    if let Some(id) = wire.flow {
        return Ok((text.to_owned(), id));
    }
    let id = crate::envelope::new_id();
    let named = name_into(text, &id);
    Ok((named, id))
}

fn parse(text: &str) -> Result<WireDocument, Refused> {
    let first = text.trim_start().bytes().next();
    if first != Some(b'{') {
        return Err(Refused(
            "a flow document must be a JSON object with \"jobs\"".into(),
        ));
    }
    serde_json::from_str(text).map_err(|e| Refused(format!("not a flow document: {e}")))
}

/// Reads and checks a document whose queues `limit` knows (giving each
/// one's `max_payload_bytes`), with at most `max_nodes` nodes. O(N + E).
#[cfg(test)]
pub(crate) fn read(
    text: &str,
    limit: &dyn Fn(&str) -> Option<usize>,
    max_nodes: usize,
) -> Result<Document, Refused> {
    checked(parse(text)?, limit, max_nodes)
}

fn checked(
    wire: WireDocument,
    limit: &dyn Fn(&str) -> Option<usize>,
    max_nodes: usize,
) -> Result<Document, Refused> {
    let id = wire
        .flow
        .ok_or_else(|| Refused("the document has no flow id".into()))?;
    if !valid_name(&id) {
        return Err(Refused(format!(
            "flow id {id:?} must be 1 to {MAX_NAME} of A-Z a-z 0-9 _ . -"
        )));
    }
    let on_failure = match wire.on_failure.as_deref() {
        None | Some("continue") => OnFailure::Continue,
        Some("cancel") => OnFailure::Cancel,
        Some(other) => {
            return Err(Refused(format!(
                "on_failure {other:?} is not \"continue\" or \"cancel\""
            )));
        }
    };
    if wire.jobs.len() > max_nodes {
        return Err(Refused(format!(
            "{} nodes, more than max_nodes ({max_nodes})",
            wire.jobs.len()
        )));
    }
    let nodes = nodes_of(wire.jobs, limit, false)?;
    Ok(Document {
        id,
        on_failure,
        nodes,
    })
}

/// The nodes of a document, checked, with their children; with `open`,
/// `after` may name nodes outside them (checked by the flow they join).
fn nodes_of(
    jobs: BTreeMap<String, WireNode>,
    limit: &dyn Fn(&str) -> Option<usize>,
    open: bool,
) -> Result<BTreeMap<String, Node>, Refused> {
    let mut nodes = BTreeMap::new();
    for (name, node) in jobs {
        if !valid_name(&name) {
            return Err(Refused(format!(
                "node name {name:?} must be 1 to {MAX_NAME} of A-Z a-z 0-9 _ . -"
            )));
        }
        let Some(max) = limit(&node.queue) else {
            return Err(Refused(format!(
                "node {name} names queue {:?}, which is not configured",
                node.queue
            )));
        };
        let size = node.payload.as_ref().map_or(4, |p| p.get().len());
        if size > max {
            return Err(Refused(format!(
                "node {name}: its payload of {size} bytes exceeds queue {}'s max_payload_bytes ({max})",
                node.queue
            )));
        }
        let when = match node.when.as_deref() {
            None | Some("succeeded") => When::Succeeded,
            Some("finished") => When::Finished,
            Some(other) => {
                return Err(Refused(format!(
                    "node {name}: when {other:?} is not \"succeeded\" or \"finished\""
                )));
            }
        };
        let mut after = node.after;
        after.sort();
        after.dedup();
        if after.contains(&name) {
            return Err(Refused(format!("node {name} is after itself (a cycle)")));
        }
        let spec = Spec {
            queue: node.queue.clone(),
            payload: node.payload.unwrap_or_else(null),
            max_attempts: node.max_attempts,
            timeout_ms: node.timeout_ms,
        };
        let spec = serde_json::to_string(&spec).expect("a spec always serializes");
        nodes.insert(
            name,
            Node {
                after,
                children: Vec::new(),
                when,
                spec,
            },
        );
    }
    let mut edges = Vec::new();
    for (name, node) in &nodes {
        for parent in &node.after {
            if !nodes.contains_key(parent) {
                if open {
                    continue;
                }
                return Err(Refused(format!(
                    "node {name} is after {parent:?}, which is no node of the flow"
                )));
            }
            edges.push((parent.clone(), name.clone()));
        }
    }
    for (parent, child) in edges {
        if let Some(p) = nodes.get_mut(&parent) {
            p.children.push(child);
        }
    }
    if let Some(node) = in_cycle(&nodes) {
        return Err(Refused(format!("the flow has a cycle through node {node}")));
    }
    Ok(nodes)
}

/// A node on a cycle, if there is one (Kahn's order leaves it out).
fn in_cycle(nodes: &BTreeMap<String, Node>) -> Option<String> {
    let mut left: BTreeMap<&str, usize> = nodes
        .iter()
        .map(|(name, n)| {
            let inside = n.after.iter().filter(|p| nodes.contains_key(*p)).count();
            (name.as_str(), inside)
        })
        .collect();
    let mut ready: Vec<&str> = left
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(name, _)| *name)
        .collect();
    let mut seen = 0;
    while let Some(name) = ready.pop() {
        seen += 1;
        for child in &nodes[name].children {
            let n = left.get_mut(child.as_str()).expect("children are nodes");
            *n -= 1;
            if *n == 0 {
                ready.push(child);
            }
        }
    }
    if seen == nodes.len() {
        return None;
    }
    left.into_iter()
        .find(|(_, n)| *n > 0)
        .map(|(name, _)| name.to_owned())
}

/// A result kept (if any) and the nodes it adds (if any).
pub(crate) type Split = (Option<Box<RawValue>>, Option<Box<RawValue>>);

/// A flow node's result split into the result kept and its `flow_add`
/// (the nodes it adds to its flow), if it has one: the rest keeps its
/// fields byte for byte (in name order). An error for a `flow_add` that is
/// not an object.
pub(crate) fn split_add(result: Box<RawValue>) -> Result<Split, String> {
    let Ok(mut fields) = serde_json::from_str::<BTreeMap<String, Box<RawValue>>>(result.get())
    else {
        return Ok((Some(result), None));
    };
    let Some(add) = fields.remove("flow_add") else {
        return Ok((Some(result), None));
    };
    if !add.get().trim_start().starts_with('{') {
        return Err(format!(
            "flow_add must be an object of nodes by name, got {}",
            add.get().chars().take(60).collect::<String>()
        ));
    }
    let rest = match fields.is_empty() {
        true => None,
        false => Some(serde_json::value::to_raw_value(&fields).map_err(|e| e.to_string())?),
    };
    Ok((rest, Some(add)))
}

/// Nodes a running node adds to its flow (its result's `flow_add`),
/// checked as a document's are, except that `after` may name nodes
/// outside them (the running node and earlier ones, which the flow
/// checks); a cycle can only be among them.
pub(crate) fn additions(
    add: &str,
    limit: &dyn Fn(&str) -> Option<usize>,
    max_nodes: usize,
) -> Result<BTreeMap<String, Node>, Refused> {
    let text = format!("{{\"flow\":\"added\",\"jobs\":{add}}}");
    let wire = parse(&text)?;
    if wire.jobs.len() > max_nodes {
        return Err(Refused(format!(
            "{} nodes added, more than max_nodes ({max_nodes})",
            wire.jobs.len()
        )));
    }
    nodes_of(wire.jobs, limit, true)
}

/// The flow and node name of a flow's job, from its envelope: `flow`, and
/// its id `<flow>:<name>`.
pub(crate) fn node_of(env: &crate::envelope::Envelope) -> Option<(String, String)> {
    if env.extra.is_empty() {
        return None;
    }
    let fid = env.extra_text("flow")?;
    let name = env
        .id
        .strip_prefix(fid.as_str())?
        .strip_prefix(':')?
        .to_owned();
    Some((fid, name))
}

/// A flow node's end as its queue keeps it for the flow
/// (`crate::broker::flows::NodeEnd` as JSON): `status` is `succeeded`,
/// `dead` or `cancelled`.
pub(crate) fn node_end(
    fid: &str,
    name: &str,
    status: &str,
    attempt: u32,
    result: Option<&RawValue>,
    add: Option<&RawValue>,
) -> String {
    #[derive(Serialize)]
    struct End<'a> {
        flow: &'a str,
        node: &'a str,
        status: &'a str,
        attempt: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        result: Option<&'a RawValue>,
        #[serde(skip_serializing_if = "Option::is_none")]
        add: Option<&'a RawValue>,
    }
    let end = End {
        flow: fid,
        node: name,
        status,
        attempt,
        result,
        add,
    };
    serde_json::to_string(&end).expect("an end always serializes")
}

fn null() -> Box<RawValue> {
    RawValue::from_string("null".into()).expect("null is JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(_: &str) -> Option<usize> {
        Some(1 << 20)
    }

    #[test]
    fn a_diamond_is_read_with_its_children() {
        let doc = read(
            r#"{"flow":"f1","jobs":{
                "a":{"queue":"q","payload":{"n":1.50}},
                "b":{"queue":"q","after":["a"]},
                "c":{"queue":"q","after":["a"]},
                "d":{"queue":"q","after":["b","c"],"when":"finished"}}}"#,
            &any,
            10,
        )
        .unwrap();
        assert_eq!(doc.id, "f1");
        assert_eq!(doc.nodes["a"].children, ["b", "c"]);
        assert_eq!(doc.nodes["d"].after, ["b", "c"]);
        assert_eq!(doc.nodes["d"].when, When::Finished);
        // The payload is kept byte for byte.
        assert!(doc.nodes["a"].spec.contains(r#""payload":{"n":1.50}"#));
        assert_eq!(doc.on_failure, OnFailure::Continue);
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        let refused = |text: &str| read(text, &|q| (q == "q").then_some(20), 3).unwrap_err().0;
        assert!(refused("[1]").contains("JSON object"));
        assert!(refused("{nope").contains("not a flow document"));
        assert!(refused(r#"{"jobs":{}}"#).contains("no flow id"));
        assert!(refused(r#"{"flow":"a b","jobs":{}}"#).contains("flow id"));
        assert!(
            refused(r#"{"flow":"f","jobs":{"x":{"queue":"other"}}}"#).contains("not configured")
        );
        assert!(refused(r#"{"flow":"f","jobs":{"x y":{"queue":"q"}}}"#).contains("node name"));
        assert!(
            refused(r#"{"flow":"f","jobs":{"x":{"queue":"q","after":["y"]}}}"#)
                .contains("no node of the flow")
        );
        let cycle = refused(
            r#"{"flow":"f","jobs":{"x":{"queue":"q","after":["z"]},
                "y":{"queue":"q","after":["x"]},"z":{"queue":"q","after":["y"]}}}"#,
        );
        assert!(cycle.contains("cycle"), "{cycle}");
        assert!(
            refused(r#"{"flow":"f","jobs":{"x":{"queue":"q","after":["x"]}}}"#).contains("cycle")
        );
        let many = r#"{"flow":"f","jobs":{"a":{"queue":"q"},"b":{"queue":"q"},"c":{"queue":"q"},"d":{"queue":"q"}}}"#;
        assert!(refused(many).contains("max_nodes"));
        assert!(refused(r#"{"flow":"f","jobs":{"x":{"queue":"q","afer":[]}}}"#).contains("afer"));
        assert!(
            refused(r#"{"flow":"f","jobs":{"x":{"queue":"q","when":"soon"}}}"#).contains("when")
        );
        assert!(refused(r#"{"flow":"f","jobs":{},"on_failure":"stop"}"#).contains("on_failure"));
        let large = refused(
            r#"{"flow":"f","jobs":{"x":{"queue":"q","payload":"more than twenty bytes"}}}"#,
        );
        assert!(
            large.contains("exceeds queue q's max_payload_bytes (20)"),
            "{large}"
        );
    }

    #[test]
    fn a_document_without_an_id_gets_one_written_in() {
        let (text, id) = with_id(r#" {"jobs":{"a":{"queue":"q"}}}"#).unwrap();
        let doc = read(&text, &any, 10).unwrap();
        assert_eq!(doc.id, id);
        let (text, id) = with_id("{}").unwrap();
        assert_eq!(read(&text, &any, 10).unwrap().id, id);
        assert!(read(&text, &any, 10).unwrap().nodes.is_empty());
        let (same, kept) = with_id(r#"{"flow":"mine","jobs":{}}"#).unwrap();
        assert_eq!(
            (same.as_str(), kept.as_str()),
            (r#"{"flow":"mine","jobs":{}}"#, "mine")
        );
    }
}
