//! Per-queue rate limits: at most `limit` job starts in any sliding
//! `window`, optionally one window per value of a key: a key the queue's
//! handler defines, the domain of an address field (`to_domain`, for a
//! provider's per-domain limits), or a top-level field of the payload. A
//! job over the limit is scheduled for the moment a slot frees: it spends
//! no attempt and is not a failure.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::broker::BrokerError;
use crate::broker::queue::QueueStore;
use crate::clock::now_ms;
use crate::config::RateLimit;
use crate::handlers::{Handler, RateLimitKey};
use crate::job::Job;

/// Longer key values are hashed, so key names stay short.
const MAX_KEY_LEN: usize = 100;

/// The rate limit of one queue.
#[derive(Clone)]
pub(crate) struct RateLimiter {
    limit: RateLimit,
    /// The queue's handler, which may define keys of its own.
    handler: Arc<dyn Handler>,
}

impl RateLimiter {
    pub(crate) fn new(limit: RateLimit, handler: Arc<dyn Handler>) -> Self {
        Self { limit, handler }
    }

    /// `None` if `job` may start now (and its start is logged), else how
    /// long until it may.
    pub(crate) async fn check(
        &self,
        store: &QueueStore,
        job: &Job,
    ) -> Result<Option<Duration>, BrokerError> {
        let key = self.key_of(job);
        let now = now_ms();
        let member = format!("{}:{now}", job.id());
        store
            .rate_check(
                key.as_deref(),
                now,
                self.limit.window,
                self.limit.limit,
                &member,
            )
            .await
    }

    /// The window a job counts against: `None` for the queue-wide one (also
    /// when the payload lacks the key's field).
    pub(crate) fn key_of(&self, job: &Job) -> Option<String> {
        let field = self.limit.key.as_deref()?;
        let payload: Value = serde_json::from_str(job.payload().get()).ok()?;
        let value = match self.handler.rate_limit_key(field, &payload) {
            Some(RateLimitKey::Value(value)) => value,
            Some(RateLimitKey::Missing) => return None,
            None => match (address_domain(field, &payload), &payload[field]) {
                (Some(domain), _) => domain,
                (None, Value::String(s)) => s.clone(),
                (None, Value::Null) => return None,
                (None, other) => other.to_string(),
            },
        };
        Some(
            if value.len() > MAX_KEY_LEN || value.chars().any(|c| c.is_control()) {
                Sha256::digest(value.as_bytes())
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect()
            } else {
                value
            },
        )
    }
}

/// Key `<field>_domain` (`to_domain`, for a provider's per-domain limits):
/// the lower-cased domain of the address in the payload's `<field>`, or of
/// the first one of a list ("Name <user@Example.COM>" -> "example.com").
/// `None` when the field holds no address.
fn address_domain(key: &str, payload: &Value) -> Option<String> {
    let field = key.strip_suffix("_domain")?;
    let address = match &payload[field] {
        Value::Array(list) => list.first()?.as_str()?,
        other => other.as_str()?,
    };
    let domain = address.rsplit('@').next()?.trim_end_matches('>').trim();
    (domain != address.trim() && !domain.is_empty()).then(|| domain.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::parse_item;
    use crate::handlers::HandlerError;
    use std::sync::Arc;

    fn job(payload: &str) -> Job {
        Job::new(
            Arc::from("q"),
            payload.as_bytes().to_vec(),
            parse_item(payload.as_bytes(), usize::MAX).expect("valid"),
        )
    }

    /// A handler with a key of its own: `shard`, the first letter of `name`.
    struct Sharded;

    #[async_trait::async_trait]
    impl Handler for Sharded {
        async fn handle(&self, _: &Job) -> Result<(), HandlerError> {
            Ok(())
        }

        fn rate_limit_key(&self, key: &str, payload: &Value) -> Option<RateLimitKey> {
            (key == "shard").then(|| match payload["name"].as_str() {
                Some(name) => RateLimitKey::Value(name[..1].to_owned()),
                None => RateLimitKey::Missing,
            })
        }
    }

    fn limiter(key: Option<&str>) -> RateLimiter {
        RateLimiter::new(
            RateLimit {
                limit: 1,
                window: Duration::from_secs(1),
                key: key.map(str::to_owned),
            },
            Arc::new(Sharded),
        )
    }

    #[test]
    fn a_key_the_handler_defines_is_the_handlers_to_read() {
        let l = limiter(Some("shard"));
        assert_eq!(l.key_of(&job(r#"{"name":"ada"}"#)).as_deref(), Some("a"));
        assert_eq!(
            l.key_of(&job(r#"{"shard":"x"}"#)),
            None,
            "missing: queue-wide"
        );
    }

    #[test]
    fn other_keys_are_payload_fields() {
        let l = limiter(Some("tenant"));
        assert_eq!(
            l.key_of(&job(r#"{"tenant":"acme"}"#)).as_deref(),
            Some("acme")
        );
        assert_eq!(l.key_of(&job(r#"{"tenant":42}"#)).as_deref(), Some("42"));
        assert_eq!(l.key_of(&job(r#"{"other":1}"#)), None);
        let long = format!(r#"{{"tenant":"{}"}}"#, "x".repeat(500));
        assert_eq!(l.key_of(&job(&long)).map(|k| k.len()), Some(64));
        assert_eq!(limiter(None).key_of(&job(r#"{"tenant":"acme"}"#)), None);
    }

    #[test]
    fn a_domain_key_is_the_first_addresss_domain() {
        let l = limiter(Some("to_domain"));
        let key = |payload: &str| l.key_of(&job(payload));
        assert_eq!(
            key(r#"{"to":"a@Example.COM"}"#).as_deref(),
            Some("example.com")
        );
        assert_eq!(
            key(r#"{"to":["Bo <b@x.org>","c@y.org"]}"#).as_deref(),
            Some("x.org")
        );
        assert_eq!(key(r#"{"to":"not-an-address"}"#), None);
        assert_eq!(key(r#"{"subject":"no to"}"#), None);
        assert_eq!(
            key(r#"{"to_domain":"given.org"}"#).as_deref(),
            Some("given.org")
        );
    }
}
