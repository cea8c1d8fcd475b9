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
}

/// One call of `flow_advance.lua`.
pub(crate) struct Call<'a> {
    /// KEYS[1..=11] the flow's keys.
    pub(crate) keys: &'a FlowKeys,
    /// ARGV[1] now (RFC 3339).
    pub(crate) now: &'a str,
    /// ARGV[2] how long the flow's state stays once it ended (ms).
    pub(crate) ttl_ms: u64,
    /// ARGV[3..] the ends, all of this flow.
    pub(crate) ends: &'a [&'a NodeEnd],
}

impl Call<'_> {
    /// The invocation.
    pub(crate) fn invocation(&self) -> ScriptInvocation<'static> {
        let mut inv = SCRIPT.prepare_invoke();
        for key in self.keys.all() {
            inv.key(key);
        }
        inv.arg(self.now).arg(self.ttl_ms);
        for end in self.ends {
            inv.arg(&end.node)
                .arg(&end.status)
                .arg(end.result.as_ref().map_or("", |r| r.get()))
                .arg(end.attempt);
        }
        inv
    }
}
