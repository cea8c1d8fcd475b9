//! The size rule, and what is kept of an item too large to read: its id,
//! its first bytes and its size. The daemon never reads such an item whole
//! (`broker/lua/stand_in.lua` cuts it inside Redis); these are the same
//! rules on the Rust side, for `conveyor enqueue`, dead letters and views.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::{Envelope, Fields, Key, Malformed, RawItem, envelope_from_fields};

/// Room an envelope's own fields may take beside its payload: the id,
/// attempts, trace context, and the `last_error` (at most 2,000 characters,
/// up to six bytes each once escaped) the daemon adds when it retries a job.
/// A job whose payload fits `max_payload_bytes` never outgrows its queue
/// by failing.
pub(crate) const ENVELOPE_ALLOWANCE: usize = 64 * 1024;

/// How many first bytes of an item too large to read are kept, with its
/// size, in its dead letter (`raw_head`, `raw_size`).
pub(crate) const HEAD_BYTES: usize = 1024;

/// The largest list item the daemon reads for a queue whose payloads may be
/// `max_payload_bytes` long. A larger item is never read whole: the script
/// that takes jobs replaces it, in Redis, by a stand-in holding its first
/// [`HEAD_BYTES`] and its size, which is dead-lettered. `lua/take.lua`
/// receives this bound from its encoder.
pub(crate) fn item_limit(max_payload_bytes: usize) -> usize {
    max_payload_bytes.saturating_add(ENVELOPE_ALLOWANCE)
}

/// The one size rule, which `conveyor enqueue` applies to the envelope it
/// is about to push and the daemon to every item it takes: a payload of at
/// most `max_payload_bytes`, in an item of at most [`item_limit`] bytes.
pub(crate) fn check_size(item_len: usize, payload_len: usize, max: usize) -> Result<(), Malformed> {
    if payload_len > max {
        return Err(Malformed::TooLarge {
            what: "payload",
            len: payload_len as u64,
            max,
            id: None,
        });
    }
    if item_len > item_limit(max) {
        return Err(Malformed::TooLarge {
            what: "item",
            len: item_len as u64,
            max,
            id: None,
        });
    }
    Ok(())
}

/// What is kept of an item too large to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Its first bytes (at most 1 KiB): as text when they are
    /// UTF-8 (cut back to a whole character), else base64.
    pub first: RawItem,
    /// Its whole size in bytes.
    pub size: u64,
}

impl Head {
    /// The first bytes of `item`, as `broker/lua/stand_in.lua` keeps them.
    pub(super) fn of(item: &[u8]) -> Self {
        Self::new(item, item.len() as u64)
    }

    /// What is kept of an item of `size` bytes that begins with `first`
    /// (of which at most [`HEAD_BYTES`] are kept).
    pub(crate) fn new(first: &[u8], size: u64) -> Self {
        let cut = &first[..first.len().min(HEAD_BYTES)];
        let first = match std::str::from_utf8(cut) {
            Ok(text) => RawItem::Text(text.to_owned()),
            // Only a character cut in two at the end: dropped.
            Err(e) if e.error_len().is_none() => {
                RawItem::Text(String::from_utf8_lossy(&cut[..e.valid_up_to()]).into_owned())
            }
            Err(_) => RawItem::from_bytes(cut),
        };
        Self { first, size }
    }
}

/// The id an item too large to read is known by: the one it begins with,
/// `{"id":"<id>"` (1 to 200 printable ASCII characters, no escapes), as
/// every envelope conveyor writes does; the same rule as
/// `broker/lua/stand_in.lua`, which applies it inside Redis.
pub(crate) fn id_in_head(item: &[u8]) -> Option<String> {
    fn skip_space(s: &[u8]) -> &[u8] {
        let n = s
            .iter()
            .take_while(|b| b" \t\n\r\x0b\x0c".contains(b))
            .count();
        &s[n..]
    }
    let head = &item[..item.len().min(HEAD_BYTES)];
    let rest = skip_space(head).strip_prefix(b"{")?;
    let rest = skip_space(rest).strip_prefix(b"\"id\"")?;
    let rest = skip_space(rest).strip_prefix(b":")?;
    let rest = skip_space(rest).strip_prefix(b"\"")?;
    let end = rest.iter().position(|b| *b == b'"' || *b == b'\\')?;
    let id = &rest[..end];
    let fits = (1..=200).contains(&id.len()) && rest[end] == b'"';
    (fits && id.iter().all(|b| (32..=126).contains(b)))
        .then(|| String::from_utf8_lossy(id).into_owned())
}

/// The envelope as far as the first bytes of an item too large to read
/// show it: the top-level fields complete in `head`, a `null` payload
/// unless the payload is one of them. `None` when the id is not among them
/// or a field is wrong. Every envelope conveyor writes begins with its id.
pub(crate) fn glimpse(head: &[u8]) -> Option<Envelope> {
    struct Collect<'a, 'de>(&'a mut Vec<(Cow<'de, str>, &'de RawValue)>);
    impl<'de> de::DeserializeSeed<'de> for Collect<'_, 'de> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_map(self)
        }
    }
    impl<'de> Visitor<'de> for Collect<'_, 'de> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some((Key(k), v)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                self.0.push((k, v));
            }
            Ok(())
        }
    }
    let text = match std::str::from_utf8(head) {
        Ok(text) => text,
        Err(e) => std::str::from_utf8(&head[..e.valid_up_to()]).ok()?,
    };
    let mut fields = Vec::new();
    let mut reader = serde_json::Deserializer::from_str(text);
    // The cut ends the object early: the fields before it are what counts.
    let _cut = de::DeserializeSeed::deserialize(Collect(&mut fields), &mut reader);
    if !fields.iter().any(|(k, _)| k == "id") {
        return None;
    }
    envelope_from_fields(Fields(fields)).ok()
}

#[cfg(test)]
mod tests {
    use super::super::*;

    #[test]
    fn the_size_rule_measures_the_payload_and_bounds_the_item() {
        let payload = "7".repeat(1000);
        let envelope = format!(r#"{{"id":"j","payload":{payload},"attempt":0}}"#);
        assert!(
            parse_item(envelope.as_bytes(), 1000).is_ok(),
            "at the limit"
        );
        assert!(
            parse_item(payload.as_bytes(), 1000).is_ok(),
            "raw, at the limit"
        );
        assert_eq!(
            parse_item(envelope.as_bytes(), 999).unwrap_err(),
            Malformed::TooLarge {
                what: "payload",
                len: 1000,
                max: 999,
                id: Some("j".into())
            },
            "an envelope too large keeps its id"
        );
        assert!(matches!(
            parse_item(payload.as_bytes(), 999),
            Err(Malformed::TooLarge {
                what: "payload",
                len: 1000,
                id: None,
                ..
            })
        ));
        // The envelope's own fields have room, but not without end.
        let fat = format!(
            r#"{{"id":"j","payload":1,"attempt":0,"x":"{}"}}"#,
            "x".repeat(ENVELOPE_ALLOWANCE)
        );
        assert!(matches!(
            parse_item(fat.as_bytes(), 10),
            Err(Malformed::TooLarge { what: "item", .. })
        ));
        assert_eq!(check_size(10 + ENVELOPE_ALLOWANCE, 10, 10), Ok(()));
        assert!(check_size(11 + ENVELOPE_ALLOWANCE, 10, 10).is_err());
        assert!(check_size(12, 11, 10).is_err());
    }

    #[test]
    fn an_item_too_large_to_read_keeps_its_head_and_size() {
        // Over the limit but readable: kept whole, under its id.
        let item = format!(
            r#"{{"id":"big-0","payload":"{}","attempt":0}}"#,
            "x".repeat(200)
        );
        let why = parse_item(item.as_bytes(), 100).unwrap_err();
        let dead = Envelope::dead_letter(item.as_bytes(), &why, "now".into());
        assert_eq!(dead.id, "big-0");
        assert_eq!(dead.raw.map(|r| r.to_bytes()), Some(item.into_bytes()));
        assert!(dead.head.is_none());
        // Too large to read: its first bytes and size.
        let item = format!(
            r#"{{"id":"big-1","payload":"{}","attempt":0}}"#,
            "é".repeat(ENVELOPE_ALLOWANCE)
        );
        let why = parse_item(item.as_bytes(), 100).unwrap_err();
        let dead = Envelope::dead_letter(item.as_bytes(), &why, "2026-01-01T00:00:00Z".into());
        assert_eq!(dead.id, "big-1", "{why}");
        let head = dead.head.clone().expect("a head");
        assert_eq!(head.size, item.len() as u64);
        let RawItem::Text(first) = &head.first else {
            panic!("UTF-8 is kept as text")
        };
        assert!(first.len() <= HEAD_BYTES && first.len() >= HEAD_BYTES - 3);
        assert!(item.starts_with(first.as_str()));
        assert!(dead.raw.is_none(), "never the whole item");
        let json = dead.to_json();
        assert!(json.len() < 2 * HEAD_BYTES, "{json}");
        // The dead letter reads back, and is not a job to run.
        let back = parse_item(json.as_bytes(), usize::MAX).expect("it reads");
        assert_eq!(back.envelope.head, Some(head));
        assert!(matches!(
            read_job(json.as_bytes(), usize::MAX),
            Err(Malformed::TooLarge { what: "item", id: Some(ref id), .. }) if id == "big-1"
        ));
        // A stand-in is its own dead letter.
        let again = Envelope::dead_letter(json.as_bytes(), &why, "later".into());
        assert_eq!((again.id.as_str(), again.head.is_some()), ("big-1", true));
        // Bytes that are not UTF-8 are kept as base64.
        let binary = [vec![0xffu8; 3000], b"tail".to_vec()].concat();
        let why = Malformed::TooLarge {
            what: "item",
            len: 3004,
            max: 10,
            id: None,
        };
        let dead = Envelope::dead_letter(&binary, &why, "now".into());
        assert_eq!(
            dead.head.map(|h| (h.first.to_bytes(), h.size)),
            Some((vec![0xffu8; HEAD_BYTES], 3004))
        );
    }

    #[test]
    fn a_glimpse_reads_the_fields_before_the_cut() {
        let entry = Envelope::dead_letter(
            format!(
                r#"{{"id":"g-1","payload":"{}","attempt":0}}"#,
                "z".repeat(200_000)
            )
            .as_bytes(),
            &Malformed::TooLarge {
                what: "item",
                len: 200_034,
                max: 10,
                id: Some("g-1".into()),
            },
            "2026-01-01T00:00:00Z".into(),
        )
        .to_json();
        let seen = glimpse(&entry.as_bytes()[..400]).expect("the id is in the first bytes");
        assert_eq!(seen.id, "g-1");
        assert_eq!(seen.died_at.as_deref(), Some("2026-01-01T00:00:00Z"));
        assert!(seen.last_error.is_some_and(|e| e.contains("200034 bytes")));
        // An old entry that kept a huge payload before its error.
        let old = format!(
            r#"{{"id":"old","payload":"{}","attempt":2,"last_error":"x"}}"#,
            "é".repeat(3000)
        );
        let seen = glimpse(&old.as_bytes()[..4001]).expect("cut inside a character");
        assert_eq!(
            (seen.id.as_str(), seen.attempt, seen.last_error),
            ("old", 0, None)
        );
        assert!(glimpse(br#"{"payload":1,"id":"la"#).is_none(), "no id yet");
        assert!(glimpse(b"\xff\xfe").is_none());
        assert!(glimpse(br#"{"id":7,"payload":1}"#).is_none());
    }
}
