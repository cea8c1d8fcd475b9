//! Property tests of `conveyor::envelope::parse_item`: whatever the bytes, it
//! returns (never panics); and an envelope it read, written back with
//! `Envelope::to_json` and read again, is the same envelope.

use conveyor::envelope::parse_item;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{Map, Value, json};

use crate::harness::scale;

const MAX: usize = 1 << 20;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512 * scale() as u32,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    }
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((".{0,6}", inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A value for an envelope field: usually of a plausible type, sometimes
/// extreme or wrong.
fn field_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u32>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        Just(json!(0)),
        Just(json!(-1)),
        Just(json!(1.5)),
        Just(Value::Null),
        "[a-z0-9-]{0,12}".prop_map(Value::from),
        ".{0,30}".prop_map(Value::from),
        json_value(),
    ]
}

const FIELDS: &[&str] = &[
    "max_attempts",
    "created_at",
    "timeout_ms",
    "unique_key",
    "last_error",
    "deliveries",
    "died_at",
    "raw",
    "raw_base64",
    "trace",
    "x-unknown",
];

/// A value of the type a field wants (so that most envelopes are read and
/// their round trip is checked), or any value at all.
fn for_field(field: &'static str) -> BoxedStrategy<(&'static str, Value)> {
    let plausible = match field {
        "max_attempts" | "timeout_ms" => (1..u32::MAX).prop_map(Value::from).boxed(),
        "deliveries" => any::<u32>().prop_map(Value::from).boxed(),
        "trace" | "x-unknown" => json_value().boxed(),
        _ => ".{0,20}".prop_map(Value::from).boxed(),
    };
    prop_oneof![3 => plausible, 1 => field_value()]
        .prop_map(move |v| (field, v))
        .boxed()
}

/// An object with `id`, `payload` and `attempt` (so it is read as an
/// envelope), usually of the right types, plus optional and unknown fields.
fn envelope_ish() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            3 => "[a-zA-Z0-9_.-]{1,40}".prop_map(Value::from),
            1 => field_value()
        ],
        json_value(),
        prop_oneof![3 => any::<u32>().prop_map(Value::from), 1 => field_value()],
        prop::collection::vec(prop::sample::select(FIELDS).prop_flat_map(for_field), 0..5),
    )
        .prop_map(|(id, payload, attempt, more)| {
            let mut m = Map::new();
            m.insert("id".into(), id);
            m.insert("payload".into(), payload);
            m.insert("attempt".into(), attempt);
            for (k, v) in more {
                m.insert(k.to_owned(), v);
            }
            Value::Object(m).to_string()
        })
}

/// Parses, and if it is a job, checks the round trip through `to_json`.
fn round_trip(item: &[u8]) -> Result<(), TestCaseError> {
    let Ok(parsed) = parse_item(item, MAX) else {
        return Ok(());
    };
    let once = parsed.envelope.to_json();
    let again = parse_item(once.as_bytes(), MAX)
        .map_err(|e| TestCaseError::fail(format!("{once} does not parse again: {e}")))?;
    prop_assert!(!again.was_raw, "written back, it is an envelope: {}", once);
    prop_assert_eq!(again.envelope.to_json(), once);
    prop_assert_eq!(again.envelope.payload.get(), parsed.envelope.payload.get());
    if parsed.was_raw {
        let text = std::str::from_utf8(item).unwrap();
        let a: Value = serde_json::from_str(text).unwrap();
        let b: Value = serde_json::from_str(parsed.envelope.payload.get()).unwrap();
        prop_assert_eq!(a, b, "a raw payload keeps its value");
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        round_trip(&bytes)?;
    }

    #[test]
    fn arbitrary_json_round_trips(value in json_value()) {
        round_trip(value.to_string().as_bytes())?;
    }

    #[test]
    fn envelopes_round_trip(text in envelope_ish()) {
        round_trip(text.as_bytes())?;
    }

    #[test]
    fn mangled_envelopes_never_panic(text in envelope_ish(), cut in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = text.into_bytes();
        let at = cut.index(bytes.len().max(1));
        if at < bytes.len() {
            bytes[at] = byte;
        }
        round_trip(&bytes)?;
    }
}
