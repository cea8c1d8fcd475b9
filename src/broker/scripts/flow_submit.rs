//! `lua/flow_submit.lua`: stores a checked flow document once and releases
//! the nodes that wait for nothing; for a flow already stored, returns what
//! it still has to hand to its queues.

use redis::ScriptInvocation;

use crate::broker::keys::FlowKeys;
use crate::flow::{Document, When};

script!("flow_submit.lua", "flow_lib.lua");

/// One call of `flow_submit.lua`.
pub(crate) struct Call<'a> {
    /// KEYS[1..=10] the flow's keys.
    pub(crate) keys: &'a FlowKeys,
    /// ARGV[1] now (RFC 3339).
    pub(crate) now: &'a str,
    /// ARGV[3] how long the flow's state stays once it ended (ms).
    pub(crate) ttl_ms: u64,
    /// ARGV[2] its on_failure, ARGV[4..] its nodes.
    pub(crate) document: &'a Document,
}

impl Call<'_> {
    /// The invocation.
    pub(crate) fn invocation(&self) -> ScriptInvocation<'static> {
        let mut inv = SCRIPT.prepare_invoke();
        for key in self.keys.all() {
            inv.key(key);
        }
        let doc = self.document;
        inv.arg(self.now)
            .arg(doc.on_failure.as_str())
            .arg(self.ttl_ms)
            .arg(doc.nodes.len());
        for (name, node) in &doc.nodes {
            inv.arg(name)
                .arg(&node.spec)
                .arg(node.after.join(" "))
                .arg(node.children.join(" "))
                .arg(match node.when {
                    When::Finished => "f",
                    When::Succeeded => "s",
                });
        }
        inv
    }
}
