//! `lua/flow_cancel.lua`: cancels a running flow: its pending nodes end
//! cancelled, and those in their queues are returned to be cancelled
//! there.

use redis::ScriptInvocation;

use crate::broker::keys::FlowKeys;

script!("flow_cancel.lua", "flow_lib.lua");

/// One call of `flow_cancel.lua`.
pub(crate) struct Call<'a> {
    /// KEYS[1..=10] the flow's keys.
    pub(crate) keys: &'a FlowKeys,
    /// ARGV[1] now (RFC 3339).
    pub(crate) now: &'a str,
    /// ARGV[2] how long the flow's state stays once it ended (ms).
    pub(crate) ttl_ms: u64,
}

impl Call<'_> {
    /// The invocation.
    pub(crate) fn invocation(&self) -> ScriptInvocation<'static> {
        let mut inv = SCRIPT.prepare_invoke();
        for key in self.keys.all() {
            inv.key(key);
        }
        inv.arg(self.now).arg(self.ttl_ms);
        inv
    }
}
