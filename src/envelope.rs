//! The wire format: list items and envelopes, as they travel through Redis.
//!
//! A list item is either a *raw payload* (any JSON a producer pushed) or an
//! *envelope* (an object with `id`, `payload` and `attempt`). The daemon
//! parses each item once, keeps the payload's bytes exactly as they came (the
//! `publish` handler forwards them unchanged), and keeps unknown envelope
//! fields verbatim when it writes the envelope back.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::clock::now_ms;

mod size;

#[cfg(test)]
pub(crate) use size::ENVELOPE_ALLOWANCE;
pub use size::Head;
pub(crate) use size::{HEAD_BYTES, check_size, glimpse, id_in_head, item_limit};

/// Longest `last_error` kept in an envelope; handlers may return long texts.
const MAX_ERROR_LEN: usize = 2000;

/// A job's envelope: identity, attempt count and payload, plus whatever other
/// fields a producer added (kept, not dropped).
#[derive(Debug, Clone)]
pub struct Envelope {
    /// Unique id.
    pub id: String,
    /// The payload, byte for byte as the producer wrote it.
    pub payload: Box<RawValue>,
    /// Attempts already made (handler runs that ended in failure or success).
    pub attempt: u32,
    /// Overrides the queue's `max_attempts`.
    pub max_attempts: Option<u32>,
    /// When the job was first enqueued (RFC 3339), if the producer said.
    pub created_at: Option<String>,
    /// Overrides the queue's `timeout`.
    pub timeout_ms: Option<u64>,
    /// The unique lock this job holds (`{K}:unique:<key>`), released when it ends.
    pub unique_key: Option<String>,
    /// The last failure's reason.
    pub last_error: Option<String>,
    /// Runs lost to crashed daemons, kept apart from `attempt`.
    pub deliveries: u32,
    /// When the job was dead-lettered (RFC 3339).
    pub died_at: Option<String>,
    /// For items that were never valid jobs: the original item as text
    /// (or base64 in `raw_base64` when it is not UTF-8), so nothing is lost.
    pub raw: Option<RawItem>,
    /// For an item too large to read: its first bytes and its size, which
    /// is all that is kept of it (`raw_head` or `raw_head_base64`, and
    /// `raw_size`). Such an envelope never runs and cannot be retried.
    pub head: Option<Head>,
    /// Fields this version does not know, in their original order and bytes.
    pub extra: Vec<(String, Box<RawValue>)>,
}

/// The original bytes of an item that could not be read as a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawItem {
    /// Valid UTF-8, stored as a JSON string.
    Text(String),
    /// Anything else, stored base64-encoded.
    Base64(String),
}

impl RawItem {
    fn from_bytes(bytes: &[u8]) -> Self {
        use base64::Engine as _;
        match std::str::from_utf8(bytes) {
            Ok(s) => RawItem::Text(s.to_owned()),
            Err(_) => RawItem::Base64(base64::engine::general_purpose::STANDARD.encode(bytes)),
        }
    }

    /// The original item bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        use base64::Engine as _;
        match self {
            RawItem::Text(s) => s.clone().into_bytes(),
            RawItem::Base64(b) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .unwrap_or_else(|_| b.clone().into_bytes()),
        }
    }
}

impl Envelope {
    /// A fresh envelope for a payload, with a new id (no `created_at`:
    /// `conveyor enqueue` sets it, once per batch).
    pub fn new(payload: Box<RawValue>) -> Self {
        Self {
            id: new_id(),
            payload,
            attempt: 0,
            max_attempts: None,
            created_at: None,
            timeout_ms: None,
            unique_key: None,
            last_error: None,
            deliveries: 0,
            died_at: None,
            raw: None,
            head: None,
            extra: Vec::new(),
        }
    }

    /// The envelope of an item that is not a valid job, holding its bytes.
    pub(crate) fn for_malformed(item: &[u8]) -> Self {
        let mut env = Self::new(null_payload());
        env.raw = Some(RawItem::from_bytes(item));
        env
    }

    /// The dead letter of an item that cannot run, for `why`: under the
    /// item's own id when `why` names one (an envelope too large), else a
    /// new one; holding the item's bytes, or for an item too large to read
    /// only its first bytes and size. A stand-in (what the script that
    /// takes jobs left of an item too large to read) is its own dead letter.
    pub(crate) fn dead_letter(item: &[u8], why: &Malformed, died_at: String) -> Self {
        let stand_in = parse_item(item, usize::MAX)
            .ok()
            .map(|p| p.envelope)
            .filter(|e| e.head.is_some());
        let mut env = match (stand_in, why) {
            (Some(env), _) => env,
            (None, Malformed::TooLarge { what: "item", .. }) => {
                let mut env = Self::new(null_payload());
                env.head = Some(Head::of(item));
                env
            }
            (None, _) => Self::for_malformed(item),
        };
        if let Malformed::TooLarge { id: Some(id), .. } = why {
            env.id.clone_from(id);
        }
        env.set_error(&why.to_string());
        env.died_at = Some(died_at);
        env
    }

    /// Serializes to the JSON stored in Redis.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an envelope always serializes")
    }

    /// The string value of a field this version keeps verbatim (such as
    /// `traceparent`), if it is there and a string.
    pub(crate) fn extra_text(&self, name: &str) -> Option<String> {
        let (_, value) = self.extra.iter().find(|(k, _)| k == name)?;
        serde_json::from_str(value.get()).ok()
    }

    /// Records a failure reason, shortened to a bounded length.
    pub(crate) fn set_error(&mut self, error: &str) {
        self.last_error = Some(truncate(error, MAX_ERROR_LEN).into_owned());
    }
}

impl Serialize for Envelope {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("id", &self.id)?;
        m.serialize_entry("payload", &self.payload)?;
        m.serialize_entry("attempt", &self.attempt)?;
        if let Some(v) = &self.max_attempts {
            m.serialize_entry("max_attempts", v)?;
        }
        if let Some(v) = &self.created_at {
            m.serialize_entry("created_at", v)?;
        }
        if let Some(v) = &self.timeout_ms {
            m.serialize_entry("timeout_ms", v)?;
        }
        if let Some(v) = &self.unique_key {
            m.serialize_entry("unique_key", v)?;
        }
        if self.deliveries > 0 {
            m.serialize_entry("deliveries", &self.deliveries)?;
        }
        if let Some(v) = &self.last_error {
            m.serialize_entry("last_error", v)?;
        }
        if let Some(v) = &self.died_at {
            m.serialize_entry("died_at", v)?;
        }
        match &self.raw {
            Some(RawItem::Text(t)) => m.serialize_entry("raw", t)?,
            Some(RawItem::Base64(b)) => m.serialize_entry("raw_base64", b)?,
            None => {}
        }
        if let Some(head) = &self.head {
            m.serialize_entry("raw_size", &head.size)?;
            match &head.first {
                RawItem::Text(t) => m.serialize_entry("raw_head", t)?,
                RawItem::Base64(b) => m.serialize_entry("raw_head_base64", b)?,
            }
        }
        for (k, v) in &self.extra {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// Why a list item cannot be run. It is dead-lettered at once with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// A payload larger than the queue's `max_payload_bytes`, or an item
    /// larger than that plus 64 KiB for the envelope (the one size rule,
    /// which the daemon and `conveyor enqueue` both apply).
    #[error("{what} of {len} bytes exceeds max_payload_bytes ({max})")]
    TooLarge {
        /// `payload` or `item`: what was measured.
        what: &'static str,
        /// Its size.
        len: u64,
        /// The limit.
        max: usize,
        /// The job's id, when the item is an envelope that says it.
        id: Option<String>,
    },
    /// Not JSON.
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// An object with `id`, `payload` and `attempt` whose fields are wrong.
    #[error("invalid envelope: {0}")]
    BadEnvelope(String),
}

/// A list item read as a job.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// The envelope, made up for a raw payload.
    pub envelope: Envelope,
    /// Whether the item was a raw payload (no envelope on the wire).
    pub was_raw: bool,
}

/// Reads one list item under the size rule (see [`Malformed::TooLarge`]) for a queue's
/// `max_payload_bytes` (`usize::MAX` to read any). Never panics, whatever
/// the bytes. A stand-in for an item too large to read is returned as the
/// envelope it is; the daemon refuses to run it.
pub fn parse_item(item: &[u8], max_bytes: usize) -> Result<Parsed, Malformed> {
    if item.len() > item_limit(max_bytes) {
        return Err(Malformed::TooLarge {
            what: "item",
            len: item.len() as u64,
            max: max_bytes,
            id: id_in_head(item),
        });
    }
    let text = std::str::from_utf8(item)
        .map_err(|e| Malformed::InvalidJson(format!("not UTF-8 ({e})")))?;
    let first = text.bytes().find(|b| !b.is_ascii_whitespace());
    // An object without the word `payload` (and no escapes that could spell
    // it) cannot be an envelope: one parse instead of two, for the common
    // case of a raw payload pushed by a producer.
    let may_be_envelope = text.contains("payload") || text.contains("\\u");
    if first == Some(b'{') && may_be_envelope {
        let fields: Fields<'_> =
            serde_json::from_str(text).map_err(|e| Malformed::InvalidJson(e.to_string()))?;
        let has = |name: &str| fields.0.iter().any(|(k, _)| k == name);
        if has("id") && has("payload") && has("attempt") {
            let envelope = envelope_from_fields(fields)?;
            if let Err(Malformed::TooLarge { what, len, max, .. }) =
                check_size(item.len(), envelope.payload.get().len(), max_bytes)
            {
                return Err(Malformed::TooLarge {
                    what,
                    len,
                    max,
                    id: Some(envelope.id),
                });
            }
            return Ok(Parsed {
                envelope,
                was_raw: false,
            });
        }
    }
    check_size(item.len(), item.len(), max_bytes)?;
    let raw: &RawValue =
        serde_json::from_str(text).map_err(|e| Malformed::InvalidJson(e.to_string()))?;
    let envelope = Envelope::new(raw.to_owned());
    Ok(Parsed {
        envelope,
        was_raw: true,
    })
}

/// Reads a taken item as a job to run: [`parse_item`], and a stand-in for
/// an item too large to read refused as that item was (under its id).
pub(crate) fn read_job(item: &[u8], max_bytes: usize) -> Result<Parsed, Malformed> {
    let parsed = parse_item(item, max_bytes)?;
    match &parsed.envelope.head {
        Some(head) => Err(Malformed::TooLarge {
            what: "item",
            len: head.size,
            max: max_bytes,
            id: Some(parsed.envelope.id),
        }),
        None => Ok(parsed),
    }
}

fn envelope_from_fields(fields: Fields<'_>) -> Result<Envelope, Malformed> {
    let mut env = Envelope::new(null_payload());
    let (mut head_first, mut head_size) = (None, None);
    for (key, value) in fields.0 {
        let bad = |what: &str| {
            Malformed::BadEnvelope(format!("{key} {what}, got {}", shorten(value.get())))
        };
        match key.as_ref() {
            "id" => {
                env.id = field::<String>(value).ok_or_else(|| bad("must be a string"))?;
                if env.id.is_empty() || env.id.len() > 200 {
                    return Err(bad("must be 1 to 200 characters long"));
                }
            }
            "payload" => env.payload = value.to_owned(),
            "attempt" => {
                env.attempt =
                    field(value).ok_or_else(|| bad("must be an integer from 0 to 4294967295"))?;
            }
            "max_attempts" => {
                env.max_attempts =
                    optional(value).ok_or_else(|| bad("must be a positive integer"))?;
                if env.max_attempts == Some(0) {
                    return Err(bad("must be a positive integer"));
                }
            }
            "timeout_ms" => {
                env.timeout_ms =
                    optional::<u64>(value).ok_or_else(|| bad("must be a positive integer"))?;
                if env.timeout_ms == Some(0) {
                    return Err(bad("must be a positive integer"));
                }
            }
            "deliveries" => {
                env.deliveries = optional::<u32>(value)
                    .ok_or_else(|| bad("must be a non-negative integer"))?
                    .unwrap_or(0);
            }
            "created_at" => {
                env.created_at = optional(value).ok_or_else(|| bad("must be a string"))?
            }
            "unique_key" => {
                env.unique_key = optional(value).ok_or_else(|| bad("must be a string"))?
            }
            "last_error" => {
                env.last_error = optional(value).ok_or_else(|| bad("must be a string"))?
            }
            "died_at" => env.died_at = optional(value).ok_or_else(|| bad("must be a string"))?,
            "raw" => {
                env.raw = optional(value)
                    .ok_or_else(|| bad("must be a string"))?
                    .map(RawItem::Text);
            }
            "raw_base64" => {
                env.raw = optional(value)
                    .ok_or_else(|| bad("must be a string"))?
                    .map(RawItem::Base64);
            }
            "raw_size" => {
                head_size =
                    optional::<u64>(value).ok_or_else(|| bad("must be a non-negative integer"))?;
            }
            "raw_head" => {
                head_first = optional(value)
                    .ok_or_else(|| bad("must be a string"))?
                    .map(RawItem::Text);
            }
            "raw_head_base64" => {
                head_first = optional(value)
                    .ok_or_else(|| bad("must be a string"))?
                    .map(RawItem::Base64);
            }
            _ => env.extra.push((key.into_owned(), value.to_owned())),
        }
    }
    env.head = match (head_size, head_first) {
        (Some(size), first) => Some(Head {
            first: first.unwrap_or(RawItem::Text(String::new())),
            size,
        }),
        (None, Some(_)) => {
            return Err(Malformed::BadEnvelope("raw_head without raw_size".into()));
        }
        (None, None) => None,
    };
    Ok(env)
}

fn field<T: DeserializeOwned>(value: &RawValue) -> Option<T> {
    serde_json::from_str(value.get()).ok()
}

/// `null` and absent are the same; a present value must have the right type.
fn optional<T: DeserializeOwned>(value: &RawValue) -> Option<Option<T>> {
    serde_json::from_str::<Option<T>>(value.get()).ok()
}

pub(crate) fn null_payload() -> Box<RawValue> {
    RawValue::from_string("null".into()).expect("null is JSON")
}

fn shorten(s: &str) -> Cow<'_, str> {
    truncate(s, 40)
}

fn truncate(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}...", &s[..end]))
}

/// The top-level fields of a JSON object, values unparsed, keys borrowed
/// where they carry no escapes: one pass over the item, no tree built.
struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((Key(k), v)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    fields.push((k, v));
                }
                Ok(Fields(fields))
            }
        }
        d.deserialize_map(V)
    }
}

/// The envelope of a newly enqueued job, written straight from borrowed
/// parts (bulk enqueue makes hundreds of thousands): the same JSON as an
/// [`Envelope`] with these fields.
pub(crate) fn new_envelope_json(
    id: &str,
    payload: &RawValue,
    max_attempts: Option<u32>,
    created_at: &str,
    unique_key: Option<&str>,
) -> String {
    #[derive(Serialize)]
    struct New<'a> {
        id: &'a str,
        payload: &'a RawValue,
        attempt: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        max_attempts: Option<u32>,
        created_at: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        unique_key: Option<&'a str>,
    }
    let new = New {
        id,
        payload,
        attempt: 0,
        max_attempts,
        created_at,
        unique_key,
    };
    serde_json::to_string(&new).expect("an envelope always serializes")
}

/// Adds the producer's span (`traceparent`, and `tracestate` if any) to
/// the text of a new envelope ([`new_envelope_json`]'s, which ends with
/// its object's `}`).
pub(crate) fn add_trace(envelope: &mut String, traceparent: &str, tracestate: Option<&str>) {
    if envelope.pop() != Some('}') {
        unreachable!("a new envelope is a JSON object");
    }
    let string = |s: &str| serde_json::to_string(s).expect("a string is JSON");
    envelope.push_str(",\"traceparent\":");
    envelope.push_str(&string(traceparent));
    if let Some(state) = tracestate {
        envelope.push_str(",\"tracestate\":");
        envelope.push_str(&string(state));
    }
    envelope.push('}');
}

/// A new job id: a UUIDv7 (ids sort by creation time), its random bits
/// from a per-thread generator rather than a system call per id.
pub(crate) fn new_id() -> String {
    let mut random = [0u8; 10];
    fastrand::fill(&mut random);
    uuid::Builder::from_unix_timestamp_millis(now_ms() as u64, &random)
        .into_uuid()
        .simple()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    #[test]
    fn raw_payloads_keep_their_bytes() {
        let item = br#"{"to": "alice@example.com",  "subject":"Hi"}"#;
        let p = parse_item(item, MAX).expect("parses");
        assert!(p.was_raw);
        assert_eq!(
            p.envelope.payload.get(),
            std::str::from_utf8(item).expect("utf8")
        );
        assert_eq!(p.envelope.attempt, 0);
        assert_eq!(p.envelope.id.len(), 32);
        for other in [&b"42"[..], b"\"hello\"", b"[1,2]", b"null", b" {} "] {
            assert!(parse_item(other, MAX).expect("valid JSON").was_raw);
        }
    }

    #[test]
    fn envelopes_round_trip_with_unknown_fields() {
        let item = br#"{"id":"j1","payload":{"b":1,"a":[2]},"attempt":3,"max_attempts":5,"trace":{"x":"y"},"deliveries":1}"#;
        let p = parse_item(item, MAX).expect("parses");
        assert!(!p.was_raw);
        let e = &p.envelope;
        assert_eq!(
            (e.id.as_str(), e.attempt, e.max_attempts, e.deliveries),
            ("j1", 3, Some(5), 1)
        );
        assert_eq!(e.payload.get(), r#"{"b":1,"a":[2]}"#);
        let back: serde_json::Value = serde_json::from_str(&e.to_json()).expect("json");
        assert_eq!(back["trace"], serde_json::json!({"x": "y"}));
        assert_eq!(back["payload"], serde_json::json!({"b": 1, "a": [2]}));
        let again = parse_item(e.to_json().as_bytes(), MAX).expect("parses again");
        assert_eq!(again.envelope.to_json(), e.to_json());
    }

    #[test]
    fn escaped_keys_are_read() {
        let p = parse_item(br#"{"\u0069d":"j","payload":1,"attempt":0}"#, MAX).expect("parses");
        assert!(!p.was_raw);
        assert_eq!(p.envelope.id, "j");
    }

    #[test]
    fn malformed_items_say_why() {
        let err = |item: &[u8]| parse_item(item, MAX).unwrap_err().to_string();
        assert!(err(b"{not json").starts_with("invalid JSON"));
        assert!(err(b"\xff\xfe").contains("UTF-8"));
        assert!(err(br#"{"id":"a","payload":1,"attempt":-1}"#).contains("attempt must be"));
        assert!(err(br#"{"id":"a","payload":1,"attempt":99999999999}"#).contains("attempt"));
        assert!(err(br#"{"id":7,"payload":1,"attempt":0}"#).contains("id must be a string"));
        assert!(
            err(br#"{"id":"a","payload":1,"attempt":0,"timeout_ms":"x"}"#).contains("timeout_ms")
        );
        let big = vec![b' '; 11];
        assert_eq!(
            parse_item(&big, 10).unwrap_err(),
            Malformed::TooLarge {
                what: "payload",
                len: 11,
                max: 10,
                id: None
            }
        );
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        // Whether it is accepted or refused, it must come back, not crash.
        let _outcome = parse_item(deep.as_bytes(), usize::MAX).map(|p| p.was_raw);
        let deep_obj = format!("{{\"a\":{}1{}}}", "[".repeat(100_000), "]".repeat(100_000));
        let _outcome = parse_item(deep_obj.as_bytes(), usize::MAX).map(|p| p.was_raw);
    }

    #[test]
    fn malformed_items_keep_their_bytes() {
        let text = Envelope::for_malformed(b"{oops");
        let json: serde_json::Value = serde_json::from_str(&text.to_json()).expect("json");
        assert_eq!(json["raw"], "{oops");
        let bin = Envelope::for_malformed(b"\xff\x00");
        assert_eq!(
            bin.raw.as_ref().map(RawItem::to_bytes),
            Some(b"\xff\x00".to_vec())
        );
        let back = parse_item(bin.to_json().as_bytes(), MAX).expect("dead entries parse");
        assert_eq!(back.envelope.raw, bin.raw);
    }

    #[test]
    fn ids_are_unique_time_ordered_uuid_v7() {
        let ids: Vec<String> = (0..1000).map(|_| new_id()).collect();
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        let parsed = uuid::Uuid::parse_str(&ids[0]).expect("a uuid");
        assert_eq!(parsed.get_version_num(), 7);
        assert!(
            ids[0][..12] <= ids[999][..12],
            "the time prefix does not go back"
        );
    }

    #[test]
    fn a_traced_envelope_keeps_its_producers_span() {
        let payload = RawValue::from_string("1".into()).expect("json");
        let mut text = new_envelope_json("j1", &payload, None, "2026-01-01T00:00:00.000Z", None);
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        add_trace(&mut text, tp, Some("vendor=a1"));
        let e = parse_item(text.as_bytes(), MAX)
            .expect("an envelope")
            .envelope;
        assert_eq!(e.extra_text("traceparent").as_deref(), Some(tp));
        assert_eq!(e.extra_text("tracestate").as_deref(), Some("vendor=a1"));
        // Kept as it was through a retry's envelope.
        let again = parse_item(e.to_json().as_bytes(), MAX)
            .expect("an envelope")
            .envelope;
        assert_eq!(again.extra_text("traceparent").as_deref(), Some(tp));
    }

    #[test]
    fn a_new_envelope_is_what_an_envelope_writes() {
        let payload = RawValue::from_string(r#"{"a": [1, 2]}"#.into()).expect("json");
        let text = new_envelope_json(
            "j1",
            &payload,
            Some(3),
            "2026-01-01T00:00:00.000Z",
            Some("k"),
        );
        let parsed = parse_item(text.as_bytes(), MAX).expect("an envelope");
        assert!(!parsed.was_raw);
        let e = parsed.envelope;
        assert_eq!(
            (e.id.as_str(), e.attempt, e.max_attempts),
            ("j1", 0, Some(3))
        );
        assert_eq!(e.payload.get(), r#"{"a": [1, 2]}"#);
        assert_eq!(e.unique_key.as_deref(), Some("k"));
        assert_eq!(e.to_json(), text, "byte for byte the same JSON");
    }

    #[test]
    fn errors_are_bounded() {
        let mut e = Envelope::new(null_payload());
        e.set_error(&"é".repeat(5000));
        assert!(e.last_error.as_ref().map(String::len).unwrap_or(0) <= MAX_ERROR_LEN + 3);
    }
}
