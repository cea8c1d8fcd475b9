//! `lua/flow_advance.lua`: takes the ends of some of a flow's nodes and
//! settles what follows (children released, skipped or cancelled, the
//! flow's end); an end taken before changes nothing and returns the whole
//! outbox again.

use redis::ScriptInvocation;

use crate::broker::keys::FlowKeys;

script!("flow_advance.lua", "flow_lib.lua");

/// How one node ended, as its queue recorded it with its job's outcome.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct NodeEnd {
    /// The flow.
    pub(crate) flow: String,
    /// The node's name.
    pub(crate) node: String,
    /// `succeeded`, `dead` or `cancelled`.
    pub(crate) status: String,
    /// Its attempt.
    pub(crate) attempt: u32,
    /// Its result, if it left one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) result: Option<Box<serde_json::value::RawValue>>,
    /// The nodes it adds to its flow (its result's `flow_add`), as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) add: Option<Box<serde_json::value::RawValue>>,
}

/// An end as the flow takes it: how the node ended, and the nodes it
/// adds, checked.
pub(crate) struct Taken<'a> {
    /// The node's name.
    pub(crate) node: &'a str,
    /// `succeeded`, `dead` or `cancelled`.
    pub(crate) status: &'a str,
    /// Its result (JSON), if any.
    pub(crate) result: Option<&'a str>,
    /// Its attempt.
    pub(crate) attempt: u32,
    /// The nodes it adds.
    pub(crate) adds: Option<&'a std::collections::BTreeMap<String, crate::flow::Node>>,
}

/// One call of `flow_advance.lua`.
pub(crate) struct Call<'a> {
    /// KEYS[1..=10] the flow's keys.
    pub(crate) keys: &'a FlowKeys,
    /// ARGV[1] now (RFC 3339).
    pub(crate) now: &'a str,
    /// ARGV[2] how long the flow's state stays once it ended (ms).
    pub(crate) ttl_ms: u64,
    /// ARGV[3] most nodes the flow may have.
    pub(crate) max_nodes: usize,
    /// ARGV[4..] the ends, all of this flow.
    pub(crate) ends: &'a [Taken<'a>],
}

impl Call<'_> {
    /// The invocation.
    pub(crate) fn invocation(&self) -> ScriptInvocation<'static> {
        let mut inv = SCRIPT.prepare_invoke();
        for key in self.keys.all() {
            inv.key(key);
        }
        inv.arg(self.now).arg(self.ttl_ms).arg(self.max_nodes);
        for end in self.ends {
            inv.arg(end.node)
                .arg(end.status)
                .arg(end.result.unwrap_or(""))
                .arg(end.attempt)
                .arg(end.adds.map_or(0, |a| a.len()));
            for (name, node) in end.adds.into_iter().flatten() {
                inv.arg(name)
                    .arg(&node.spec)
                    .arg(node.after.join(" "))
                    .arg(match node.when {
                        crate::flow::When::Finished => "f",
                        crate::flow::When::Succeeded => "s",
                    });
            }
        }
        inv
    }
}
