//! The counters of a queue's stats hash `{K}:stats`, one name each.
//! `lua/finish.lua` and `lua/recover.lua` count into the hash; a test below
//! pins the names they write to these.

/// A counter of `{K}:stats`, each counted since the queue began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stat {
    /// Handler runs that ended (success or failure).
    Processed,
    /// Handler runs that failed, and jobs the reaper dead-lettered.
    Failed,
    /// Failures scheduled for another attempt.
    Retried,
    /// Jobs dead-lettered.
    Dead,
    /// Jobs put back by crash recovery or shutdown.
    Recovered,
}

impl Stat {
    /// Every counter.
    #[cfg(test)]
    pub(crate) const ALL: [Stat; 5] = [
        Stat::Processed,
        Stat::Failed,
        Stat::Retried,
        Stat::Dead,
        Stat::Recovered,
    ];

    /// Its field in the hash.
    pub(crate) fn field(self) -> &'static str {
        match self {
            Stat::Processed => "processed",
            Stat::Failed => "failed",
            Stat::Retried => "retried",
            Stat::Dead => "dead",
            Stat::Recovered => "recovered",
        }
    }
}

impl super::Broker {
    /// Per queue, its `processed` and `failed` counters, in one round trip.
    pub(crate) async fn outcome_counters(
        &self,
        queues: &[super::QueueKeys],
    ) -> Result<Vec<(u64, u64)>, super::BrokerError> {
        let mut pipe = redis::pipe();
        for k in queues {
            pipe.cmd("HMGET")
                .arg(&k.stats)
                .arg(Stat::Processed.field())
                .arg(Stat::Failed.field());
        }
        let mut conn = self.conn().await?;
        let counts: Vec<(Option<u64>, Option<u64>)> = pipe.query_async(&mut conn).await?;
        Ok(counts
            .into_iter()
            .map(|(p, f)| (p.unwrap_or(0), f.unwrap_or(0)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The fields a script counts into, as `'HINCRBY', KEYS[n], '<field>'`
    /// (a field named by a variable is a group's count, not a stat).
    fn counted(script: &str) -> BTreeSet<&str> {
        let mut out = BTreeSet::new();
        for (at, _) in script.match_indices("'HINCRBY', KEYS[") {
            let rest = &script[at..];
            let after_key = rest.split_once("], ").map_or("", |(_, r)| r);
            if after_key.starts_with('\'') {
                let field = rest.split('\'').nth(3).expect("a field after the key");
                out.insert(field);
            }
        }
        out
    }

    /// The scripts count into these fields and no other, and between them
    /// into each of them.
    #[test]
    fn the_scripts_count_into_these_fields() {
        let fields: BTreeSet<&str> = Stat::ALL.iter().map(|s| s.field()).collect();
        let finish = counted(include_str!("lua/finish.lua"));
        let recover = counted(include_str!("lua/recover.lua"));
        assert!(finish.is_subset(&fields), "{finish:?}");
        assert!(recover.is_subset(&fields), "{recover:?}");
        let all: BTreeSet<&str> = finish.union(&recover).copied().collect();
        assert_eq!(all, fields);
        // No other script counts.
        for dir in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/src/broker/lua"))
            .expect("the lua directory")
        {
            let path = dir.expect("an entry").path();
            let name = path
                .file_name()
                .expect("a name")
                .to_string_lossy()
                .into_owned();
            if name != "finish.lua" && name != "recover.lua" {
                let source = std::fs::read_to_string(&path).expect("a script");
                assert!(counted(&source).is_empty(), "{name} counts");
            }
        }
    }
}
