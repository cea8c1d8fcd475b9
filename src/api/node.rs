//! The heartbeat record `conveyor:node:<node>`, typed: the daemon writes it
//! with [`NodeInfo::to_fields`], readers parse it with
//! [`NodeInfo::from_fields`]. Its fields are plain hash fields, so that
//! `HGETALL` reads well too.

use std::collections::{BTreeMap, HashMap};

use serde::{Serialize, Serializer};

/// What a live node says of itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NodeInfo {
    /// Its host name.
    pub host: String,
    /// Its process id.
    #[serde(serialize_with = "as_text")]
    pub pid: u32,
    /// conveyor's version.
    pub version: String,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// The queues it runs.
    #[serde(serialize_with = "comma_joined")]
    pub queues: Vec<String>,
    /// Jobs it runs now.
    pub busy: u64,
    /// Events and status updates it dropped (Redis too slow or away).
    pub events_dropped: u64,
    /// Per queue: its slots, jobs running and runs finished in the last
    /// minute.
    #[serde(skip)]
    pub load: BTreeMap<String, QueueLoad>,
}

/// One queue's load on one node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QueueLoad {
    /// The queue's slots on this node (its `concurrency`, as this node
    /// runs it: `conveyor run --concurrency` may differ from the file);
    /// 0 from a node of an earlier version, which does not write it.
    pub concurrency: u64,
    /// Jobs running now.
    pub busy: u64,
    /// Runs finished in the last 60 seconds.
    pub rate_1m: u64,
}

impl NodeInfo {
    /// The hash fields, for `HSET`.
    pub fn to_fields(&self) -> Vec<(String, String)> {
        let mut fields = vec![
            ("host".to_owned(), self.host.clone()),
            ("pid".to_owned(), self.pid.to_string()),
            ("version".to_owned(), self.version.clone()),
            ("started_at".to_owned(), self.started_at.clone()),
            ("queues".to_owned(), self.queues.join(",")),
            ("busy".to_owned(), self.busy.to_string()),
            ("events_dropped".to_owned(), self.events_dropped.to_string()),
        ];
        for (queue, load) in &self.load {
            fields.push((format!("concurrency:{queue}"), load.concurrency.to_string()));
            fields.push((format!("busy:{queue}"), load.busy.to_string()));
            fields.push((format!("rate_1m:{queue}"), load.rate_1m.to_string()));
        }
        fields
    }

    /// Reads the hash; what is missing or unreadable is left at its default
    /// (a node of another version may write less).
    pub fn from_fields(fields: &HashMap<String, String>) -> Self {
        let text = |k: &str| fields.get(k).cloned().unwrap_or_default();
        let number = |k: &str| fields.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
        let queues: Vec<String> = text("queues")
            .split(',')
            .filter(|q| !q.is_empty())
            .map(str::to_owned)
            .collect();
        let load = queues
            .iter()
            .map(|q| {
                let load = QueueLoad {
                    concurrency: number(&format!("concurrency:{q}")),
                    busy: number(&format!("busy:{q}")),
                    rate_1m: number(&format!("rate_1m:{q}")),
                };
                (q.clone(), load)
            })
            .collect();
        Self {
            host: text("host"),
            pid: fields.get("pid").and_then(|p| p.parse().ok()).unwrap_or(0),
            version: text("version"),
            started_at: text("started_at"),
            busy: number("busy"),
            events_dropped: number("events_dropped"),
            queues,
            load,
        }
    }
}

fn as_text<S: Serializer>(n: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(n)
}

fn comma_joined<S: Serializer>(v: &[String], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_reads_back_as_written() {
        let mut info = NodeInfo {
            host: "h".into(),
            pid: 42,
            version: "1.0".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            queues: vec!["a".into(), "b".into()],
            busy: 3,
            events_dropped: 7,
            load: BTreeMap::new(),
        };
        info.load.insert(
            "a".into(),
            QueueLoad {
                concurrency: 4,
                busy: 2,
                rate_1m: 90,
            },
        );
        info.load.insert(
            "b".into(),
            QueueLoad {
                concurrency: 1,
                busy: 1,
                rate_1m: 0,
            },
        );
        let fields: HashMap<String, String> = info.to_fields().into_iter().collect();
        assert_eq!(NodeInfo::from_fields(&fields), info);
        let json = serde_json::to_value(&info).expect("serializes");
        assert_eq!(json["pid"], "42");
        assert_eq!(json["queues"], "a,b");
        assert_eq!(fields["concurrency:a"], "4");
    }

    /// A node of an earlier version writes no `concurrency:<q>`: it reads
    /// as 0, which readers take as "not said".
    #[test]
    fn a_record_without_concurrency_reads_as_zero() {
        let fields: HashMap<String, String> = [("queues", "a"), ("busy:a", "2")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let info = NodeInfo::from_fields(&fields);
        assert_eq!(info.load["a"].concurrency, 0);
        assert_eq!(info.load["a"].busy, 2);
    }
}
