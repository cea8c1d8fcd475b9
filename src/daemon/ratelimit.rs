//! Per-queue rate limits: at most `limit` job starts in any sliding
//! `window`, optionally one window per value of a key: a top-level field of
//! the payload, or a key the queue's handler defines (the email handler's
//! `to_domain`, for a provider's per-domain limits). A job over the limit is
//! scheduled for the moment a slot frees: it spends no attempt and is not a
//! failure.

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
            None => match &payload[field] {
                Value::String(s) => s.clone(),
                Value::Null => return None,
                other => other.to_string(),
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
}
