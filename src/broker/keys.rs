//! Every Redis key and channel name conveyor uses, one function each.
//! Nothing outside this module spells a key.
//!
//! All keys of queue list `K` are `{K}:...`: a Redis Cluster hash tag `{K}`
//! hashes like the plain `K`, so a queue's keys share one slot and its Lua
//! scripts may touch them together while producers keep pushing to `K`.

/// The keys of one queue, as seen from one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueueKeys {
    /// The queue's name (its config table).
    pub(crate) name: String,
    /// The node these keys are seen from.
    pub(crate) node: String,
    /// `K`: jobs waiting.
    pub(crate) list: String,
    /// `{K}:inflight:<node>`: jobs this node has taken and not finished.
    pub(crate) inflight: String,
    /// `{K}:nodes`: nodes that may hold an in-flight list for `K`.
    pub(crate) nodes: String,
    /// `{K}:scheduled`: envelopes due later, scored by due time in ms.
    pub(crate) scheduled: String,
    /// `{K}:dead`: dead envelopes, newest first.
    pub(crate) dead: String,
    /// `{K}:stats`: counters.
    pub(crate) stats: String,
    /// `{K}:ratelimit`: the sliding-window log.
    pub(crate) ratelimit: String,
    /// `{K}:paused`: present while the queue is paused.
    pub(crate) paused: String,
    /// `{K}:cancel`: ids of running jobs that `conveyor cancel` asks their
    /// daemon to stop.
    pub(crate) cancel: String,
    /// `{K}:results`: ids of tracked jobs that ended (succeeded or dead),
    /// newest first, capped; their status records tell the rest.
    pub(crate) results: String,
    /// `{K}:group:turns`: a queue with `group`: the groups holding jobs,
    /// scored by their turn, served round in that order.
    pub(crate) groups: String,
    /// `{K}:group:next`: the turn of the group served last; the round goes
    /// on after it.
    pub(crate) group_next: String,
    /// `{K}:group:bursts`: a queue with `debounce`: the bursts of jobs
    /// waiting out their window, scored by when they are due (ms).
    pub(crate) bursts: String,
    /// `{K}:group:ready`: a queue with `debounce`: jobs to take, in order
    /// (those without the field, and the bursts that are due).
    pub(crate) ready: String,
    /// `{K}:group:due`: an ordered group whose job waits for its retry at
    /// the head of its list: when it is due (ms since the epoch).
    pub(crate) group_due: String,
    /// `{K}:group:running:<node>`: per group, how many of its jobs are in
    /// this node's in-flight list.
    pub(crate) running: String,
    /// `{K}:flows:ended`: the ends of this queue's flow jobs, recorded
    /// with their outcomes, until their flows have taken them.
    pub(crate) flows_ended: String,
}

impl QueueKeys {
    /// The keys of queue `name` stored in list `list`, for node `node`.
    pub(crate) fn new(name: &str, list: &str, node: &str) -> Self {
        Self {
            name: name.to_owned(),
            node: node.to_owned(),
            list: list.to_owned(),
            inflight: inflight(list, node),
            nodes: format!("{{{list}}}:nodes"),
            scheduled: format!("{{{list}}}:scheduled"),
            dead: format!("{{{list}}}:dead"),
            stats: format!("{{{list}}}:stats"),
            ratelimit: format!("{{{list}}}:ratelimit"),
            paused: format!("{{{list}}}:paused"),
            cancel: format!("{{{list}}}:cancel"),
            results: format!("{{{list}}}:results"),
            groups: format!("{{{list}}}:group:turns"),
            group_next: format!("{{{list}}}:group:next"),
            group_due: format!("{{{list}}}:group:due"),
            bursts: format!("{{{list}}}:group:bursts"),
            ready: format!("{{{list}}}:group:ready"),
            running: running(list, node),
            flows_ended: format!("{{{list}}}:flows:ended"),
        }
    }

    /// The in-flight list of another node.
    pub(crate) fn inflight_of(&self, node: &str) -> String {
        inflight(&self.list, node)
    }

    /// The running counts of another node's groups.
    pub(crate) fn running_of(&self, node: &str) -> String {
        running(&self.list, node)
    }

    /// `{K}:group:jobs:<group>`: the jobs of one group, sorted out of the
    /// queue list, oldest first.
    pub(crate) fn group(&self, group: &str) -> String {
        format!("{}{group}", self.group_prefix())
    }

    /// `{K}:group:jobs:`, the common prefix of the groups' lists.
    pub(crate) fn group_prefix(&self) -> String {
        format!("{{{}}}:group:jobs:", self.list)
    }

    /// `{K}:group:burst:`, the common prefix of the bursts' hashes
    /// (`first`, `last`, `n` and the `item` kept).
    pub(crate) fn burst_prefix(&self) -> String {
        format!("{{{}}}:group:burst:", self.list)
    }

    /// `{K}:group:burst-all:`, the common prefix of the lists of every
    /// arrival of a burst (`keep = "all"`).
    pub(crate) fn burst_all_prefix(&self) -> String {
        format!("{{{}}}:group:burst-all:", self.list)
    }

    /// `{K}:flows:released:<fid>`: the nodes of flow `fid` already pushed
    /// to this queue, so that a hand-off done twice pushes once.
    pub(crate) fn flow_released(&self, fid: &str) -> String {
        format!("{{{}}}:flows:released:{fid}", self.list)
    }

    /// `{K}:unique:<key>`: the lock of a unique job.
    pub(crate) fn unique(&self, key: &str) -> String {
        format!("{{{}}}:unique:{key}", self.list)
    }

    /// `{K}:history:m:<hour>`: the counters of the minutes of one hour
    /// (hours since the epoch), see `history.rs`.
    pub(crate) fn history_minutes(&self, hour: i64) -> String {
        format!("{{{}}}:history:m:{hour}", self.list)
    }

    /// `{K}:history:d:<day>`: the counters of one day (days since the
    /// epoch, UTC).
    pub(crate) fn history_day(&self, day: i64) -> String {
        format!("{{{}}}:history:d:{day}", self.list)
    }

    /// `{K}:schedule:<name>`: the last tick of schedule `name` enqueued.
    pub(crate) fn schedule(&self, name: &str) -> String {
        format!("{{{}}}:schedule:{name}", self.list)
    }

    /// `{K}:schedule:<name>:spec`: what that last tick was computed from.
    pub(crate) fn schedule_spec(&self, name: &str) -> String {
        format!("{{{}}}:schedule:{name}:spec", self.list)
    }

    /// `{K}:ratelimit:<key>`: the sliding-window log of one rate-limit key.
    pub(crate) fn ratelimit_for(&self, key: Option<&str>) -> String {
        match key {
            Some(k) => format!("{}:{k}", self.ratelimit),
            None => self.ratelimit.clone(),
        }
    }
}

fn inflight(list: &str, node: &str) -> String {
    format!("{{{list}}}:inflight:{node}")
}

fn running(list: &str, node: &str) -> String {
    format!("{{{list}}}:group:running:{node}")
}

/// `{K}:<name>`: a key the handler of queue list `K` keeps (the email
/// handler's `sent:<id>` markers, say), checked by `store.rs`.
pub(crate) fn handler_key(list: &str, name: &str) -> String {
    format!("{{{list}}}:{name}")
}

/// `cache:<sha256 hex of name>`: the shared response cache (the `http`
/// handler's cached response of a GET, by its URL).
pub(crate) fn cache(url: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(url.as_bytes());
    let mut key = String::with_capacity(6 + 64);
    key.push_str("cache:");
    for byte in digest {
        key.push_str(&format!("{byte:02x}"));
    }
    key
}

/// `conveyor:node:<node>`: a live daemon's heartbeat hash.
pub(crate) fn node(node: &str) -> String {
    format!("conveyor:node:{node}")
}

/// `conveyor:flows`: submitted flow documents, taken like a queue's jobs.
pub(crate) const FLOWS: &str = "conveyor:flows";
/// `{conveyor:flows}:taken`: documents a daemon took and has not stored
/// yet; one left there across two looks is read again.
pub(crate) const FLOWS_TAKEN: &str = "{conveyor:flows}:taken";
/// `{conveyor:flows}:dead`: refused documents, each with its reason.
pub(crate) const FLOWS_DEAD: &str = "{conveyor:flows}:dead";
/// `{conveyor:flows}:recent`: flow ids scored by when they were stored
/// (ms), the newest kept.
pub(crate) const FLOWS_RECENT: &str = "{conveyor:flows}:recent";

/// The keys of one flow, all in the slot `{flow:<fid>}`: hashes by node
/// name, and the flow's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FlowKeys {
    /// `{flow:<fid>}:meta`: status, on_failure, times and counts.
    pub(crate) meta: String,
    /// `{flow:<fid>}:spec`: what each node's job is made from.
    pub(crate) spec: String,
    /// `{flow:<fid>}:state`: each node's status.
    pub(crate) state: String,
    /// `{flow:<fid>}:left`: parents not ended yet, of nodes that wait.
    pub(crate) left: String,
    /// `{flow:<fid>}:bad`: nodes a parent of which did not succeed.
    pub(crate) bad: String,
    /// `{flow:<fid>}:when`: nodes that run whatever their parents' ends.
    pub(crate) when: String,
    /// `{flow:<fid>}:children`: each node's children, space-separated.
    pub(crate) children: String,
    /// `{flow:<fid>}:parents`: each node's parents, space-separated.
    pub(crate) parents: String,
    /// `{flow:<fid>}:results`: the results of the nodes that left one.
    pub(crate) results: String,
    /// `{flow:<fid>}:ends`: how each node ended: its attempt and time.
    pub(crate) ends: String,
}

impl FlowKeys {
    /// The keys of flow `fid`.
    pub(crate) fn new(fid: &str) -> Self {
        let key = |name: &str| format!("{{flow:{fid}}}:{name}");
        Self {
            meta: key("meta"),
            spec: key("spec"),
            state: key("state"),
            left: key("left"),
            bad: key("bad"),
            when: key("when"),
            children: key("children"),
            parents: key("parents"),
            results: key("results"),
            ends: key("ends"),
        }
    }

    /// Every key, in the order the flow scripts name them (KEYS[1..=10]).
    pub(crate) fn all(&self) -> [&str; 10] {
        [
            &self.meta,
            &self.spec,
            &self.state,
            &self.left,
            &self.bad,
            &self.when,
            &self.children,
            &self.parents,
            &self.results,
            &self.ends,
        ]
    }
}

/// The replay stream of an events channel: a key of the channel's own name
/// (channels and keys are separate namespaces in Redis).
pub(crate) fn event_stream(channel: &str) -> String {
    channel.to_owned()
}

/// `conveyor:job:<id>`: a job's status record.
pub(crate) fn job(id: &str) -> String {
    format!("conveyor:job:{id}")
}

/// Why `name` cannot be a queue's list: it is in a namespace of
/// conveyor's own keys (a node's heartbeat, a job's status record, the
/// flows, the default events stream: all `conveyor:*`), the http
/// handler's cache (`cache:*`), or a queue's or a flow's hash-tagged keys
/// (`{...}`). `None` if it is free.
pub(crate) fn refused_as_queue(name: &str) -> Option<&'static str> {
    if name.starts_with("conveyor:") {
        Some("conveyor keeps for itself (conveyor:*: nodes, job records, flows, events)")
    } else {
        shared_refusal(name)
    }
}

/// Why `name` cannot be the events channel, whose replay stream is a key
/// of that name: it would be a node's heartbeat (`conveyor:node:*`), a
/// job's status record (`conveyor:job:*`), the flows' list, a cache entry
/// or a queue's or flow's key. (`conveyor:events`, the default, and other
/// `conveyor:` names are free.) Whether it is a queue's list is the
/// configuration's to check. `None` if it is free.
pub(crate) fn refused_as_events_channel(name: &str) -> Option<&'static str> {
    if name.starts_with("conveyor:node:") {
        Some("hold the nodes' heartbeats (conveyor:node:<node>)")
    } else if name.starts_with("conveyor:job:") {
        Some("hold the jobs' status records (conveyor:job:<id>)")
    } else if name == "conveyor:flows" {
        Some("hold the submitted flows (conveyor:flows)")
    } else {
        shared_refusal(name)
    }
}

fn shared_refusal(name: &str) -> Option<&'static str> {
    if name.starts_with("cache:") {
        Some("hold the shared response cache's entries (cache:<sha256>)")
    } else if name.starts_with('{') {
        Some("belong to a queue or a flow ({K}:..., {flow:<fid>}:..., {conveyor:flows}:dead)")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_conveyors_own_keys_are_refused() {
        let k = QueueKeys::new("q", "jobs:q", "n1");
        for taken in [
            node("n1"),
            job("j1"),
            "conveyor:flows".to_owned(),
            "{conveyor:flows}:dead".to_owned(),
            cache("https://example.com/"),
            k.dead.clone(),
            k.unique("u"),
            "{flow:f1}:state".to_owned(),
        ] {
            assert!(refused_as_queue(&taken).is_some(), "{taken}");
            assert!(refused_as_events_channel(&taken).is_some(), "{taken}");
        }
        assert!(refused_as_queue("conveyor:events").is_some());
        assert!(refused_as_queue("conveyor:anything").is_some());
        for free in [
            "conveyor:events",
            "conveyor:events:staging",
            "events",
            "jobs:q",
        ] {
            assert_eq!(refused_as_events_channel(free), None, "{free}");
        }
        for free in ["jobs:q", "email", "app:conveyor:x", "cache-jobs"] {
            assert_eq!(refused_as_queue(free), None, "{free}");
        }
    }

    #[test]
    fn keys_follow_the_design_table() {
        let k = QueueKeys::new("email", "jobs:email", "host-1-ab");
        assert_eq!(k.list, "jobs:email");
        assert_eq!(k.inflight, "{jobs:email}:inflight:host-1-ab");
        assert_eq!(k.nodes, "{jobs:email}:nodes");
        assert_eq!(k.scheduled, "{jobs:email}:scheduled");
        assert_eq!(k.dead, "{jobs:email}:dead");
        assert_eq!(k.stats, "{jobs:email}:stats");
        assert_eq!(k.ratelimit, "{jobs:email}:ratelimit");
        assert_eq!(k.results, "{jobs:email}:results");
        assert_eq!(k.unique("u1"), "{jobs:email}:unique:u1");
        assert_eq!(k.groups, "{jobs:email}:group:turns");
        assert_eq!(k.group("acme"), "{jobs:email}:group:jobs:acme");
        assert_eq!(k.running, "{jobs:email}:group:running:host-1-ab");
        assert_eq!(k.schedule("nightly"), "{jobs:email}:schedule:nightly");
        assert_eq!(
            k.schedule_spec("nightly"),
            "{jobs:email}:schedule:nightly:spec"
        );
        assert_eq!(handler_key("jobs:email", "sent:j1"), "{jobs:email}:sent:j1");
        assert_eq!(node("n1"), "conveyor:node:n1");
        assert_eq!(job("j1"), "conveyor:job:j1");
        // sha256 of the URL in hex, as the seed's cached_get keys it.
        assert_eq!(
            cache("https://api.example.com/rates"),
            "cache:6df58614e2109de8fc6531f60d523870d0a15ec898007738d1808ff0622a3069"
        );
    }
}
