//! `lua/flow_release.lua`: pushes released nodes of one flow onto their
//! queue, each once however often the hand-off is done. Returns how many
//! were pushed.

use redis::ScriptInvocation;

use crate::broker::QueueKeys;

script!("flow_release.lua");

/// How long a queue remembers which nodes of a flow it was handed (s): a
/// hand-off done again after a crash comes within minutes.
pub(crate) const MARKER_TTL_S: u64 = 86_400;

/// Most nodes pushed per call.
pub(crate) const MOST: usize = 500;

/// One call of `flow_release.lua`.
pub(crate) struct Call<'a> {
    /// KEYS[1] the queue list; KEYS[2] its marker of the flow.
    pub(crate) keys: &'a QueueKeys,
    /// The flow.
    pub(crate) flow: &'a str,
    /// ARGV[2..] the nodes' names and envelopes.
    pub(crate) jobs: &'a [(&'a str, String)],
}

impl Call<'_> {
    /// The invocation.
    pub(crate) fn invocation(&self) -> ScriptInvocation<'static> {
        let mut inv = SCRIPT.key(&self.keys.list);
        inv.key(self.keys.flow_released(self.flow));
        inv.arg(MARKER_TTL_S);
        for (name, envelope) in self.jobs {
            inv.arg(*name).arg(envelope);
        }
        inv
    }
}
