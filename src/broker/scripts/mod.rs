//! The Lua scripts, one `.lua` file per atomic operation in `lua/`, each
//! headed by its KEYS, ARGV and return value. Scripts never read the clock
//! (callers pass `now`) and every loop is bounded by an argument.
//!
//! One module here per script, named after it: its loader (`SCRIPT`) and
//! its one encoder (`Call`), whose fields are the script's arguments typed,
//! each naming the KEYS or ARGV entries it becomes, and a unit test of the
//! script's contract against a real Redis (what it returns and every key
//! it touches). Nothing else builds a script's KEYS or ARGV.
//!
//! They run by EVALSHA; after a Redis restart the script cache is empty and
//! redis-rs loads the script and runs it again (NOSCRIPT means it did not run).

use super::events::StatusUpdate;

/// `SCRIPT`, the script of `lua/<file>`, loaded once; after the functions
/// of the preludes named with it (`stand_in.lua` for the scripts that read
/// items, `group_of.lua` for those that sort them into groups).
macro_rules! script {
    ($file:literal $(, $prelude:literal)*) => {
        #[doc = concat!("`lua/", $file, "`")]
        pub(crate) static SCRIPT: std::sync::LazyLock<redis::Script> =
            std::sync::LazyLock::new(|| {
                redis::Script::new(concat!(
                    $(include_str!(concat!("../lua/", $prelude)),)*
                    include_str!(concat!("../lua/", $file))
                ))
            });
    };
}

pub(crate) mod cancel;
pub(crate) mod dead_retry;
pub(crate) mod enqueue_unique;
pub(crate) mod finish;
pub(crate) mod flow_advance;
pub(crate) mod flow_cancel;
pub(crate) mod flow_release;
pub(crate) mod flow_submit;
pub(crate) mod groups;
pub(crate) mod promote;
pub(crate) mod publish_if_heard;
pub(crate) mod ratelimit;
pub(crate) mod recover;
pub(crate) mod remove_at;
pub(crate) mod run_now;
pub(crate) mod shrink;
pub(crate) mod take;
pub(crate) mod tick;
pub(crate) mod undebounce;
pub(crate) mod ungroup;
pub(crate) mod view;

/// A job's status record as the arguments of a script that writes it with
/// the step it tells (`finish.lua`, `recover.lua`, `enqueue_unique.lua`):
/// the index in KEYS of its key, 0 for none; then, if not 0, its lifetime
/// in ms, a count n and n field-value pairs. The one encoding of a record
/// in a script's ARGV.
pub(crate) struct Record<'a>(pub(crate) Option<(usize, &'a StatusUpdate)>);

impl redis::ToRedisArgs for Record<'_> {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + redis::RedisWrite,
    {
        let Some((index, status)) = self.0 else {
            return out.write_arg(b"0");
        };
        out.write_arg_fmt(index);
        // Never 0, which would delete the record at once (the configuration
        // allows a second at least).
        out.write_arg_fmt(status.ttl.as_millis().max(1));
        out.write_arg_fmt(status.fields.len());
        for (field, value) in &status.fields {
            out.write_arg(field.as_bytes());
            out.write_arg(value.as_bytes());
        }
    }

    fn num_of_args(&self) -> usize {
        self.0.map_or(1, |(_, s)| 3 + 2 * s.fields.len())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// The preludes: functions other scripts begin with, not scripts.
    const PRELUDES: [&str; 3] = ["stand_in.lua", "group_of.lua", "flow_lib.lua"];

    /// Every script's source, by file name, the preludes aside.
    fn scripts() -> Vec<(String, String)> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/broker/lua");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).expect("the lua directory") {
            let path = entry.expect("a directory entry").path();
            let name = path.file_name().expect("a name").to_string_lossy();
            if name.ends_with(".lua") && !PRELUDES.contains(&name.as_ref()) {
                let source = std::fs::read_to_string(&path).expect("a script");
                out.push((name.into_owned(), source));
            }
        }
        out.sort();
        out
    }

    /// The indices of `KEYS[n]` or `ARGV[n]` (`table`) written with a
    /// number in `text`, and the first of an open range `table[n..]`.
    fn indices(text: &str, table: &str) -> (BTreeSet<usize>, Option<usize>) {
        let mut found = BTreeSet::new();
        let mut open = None;
        let opening = format!("{table}[");
        for (at, _) in text.match_indices(&opening) {
            let rest = &text[at + opening.len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            let Ok(n) = digits.parse::<usize>() else {
                continue;
            };
            match rest[digits.len()..].starts_with("..") {
                true => open = open.min(Some(n)).or(Some(n)),
                false => {
                    found.insert(n);
                }
            }
        }
        (found, open)
    }

    /// Each script's header (its first comment lines) names every KEYS and
    /// ARGV entry its code reads by number, and nothing its code does not
    /// read, and says what the script returns.
    #[test]
    fn every_header_names_what_its_script_reads_and_returns() {
        let all = scripts();
        assert!(all.len() >= 14, "the scripts: {all:?}");
        for (name, source) in all {
            let header: String = source
                .lines()
                .take_while(|l| l.starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n");
            let code: String = source
                .lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n");
            assert!(header.contains("-- Returns"), "{name} says what it returns");
            for table in ["KEYS", "ARGV"] {
                let (named, open) = indices(&header, table);
                let (used, _) = indices(&code, table);
                for n in &used {
                    let covered = named.contains(n) || open.is_some_and(|o| *n >= o);
                    assert!(covered, "{name}: its header names {table}[{n}]");
                }
                for n in &named {
                    assert!(
                        used.contains(n),
                        "{name}: {table}[{n}] is named but not read"
                    );
                }
            }
            let (keys, open_keys) = indices(&header, "KEYS");
            if keys.is_empty() && open_keys.is_none() {
                assert!(header.contains("no KEYS"), "{name} says it has no KEYS");
            }
        }
    }
}
