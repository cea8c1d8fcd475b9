//! Per-queue rate limits: at most `limit` job starts in any sliding
//! `window`, optionally one window per value of a payload field (`to_domain`
//! for a provider's per-domain limits). A job over the limit is scheduled for
//! the moment a slot frees: it spends no attempt and is not a failure.

use std::time::Duration;

use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::broker::BrokerError;
use crate::broker::queue::QueueStore;
use crate::clock::now_ms;
use crate::config::RateLimit;
use crate::job::Job;

/// The special key: the domain of the email's (first) recipient.
const TO_DOMAIN: &str = "to_domain";
/// Longer key values are hashed, so key names stay short.
const MAX_KEY_LEN: usize = 100;

/// The rate limit of one queue.
#[derive(Debug, Clone)]
pub(crate) struct RateLimiter {
    limit: RateLimit,
}

impl RateLimiter {
    pub(crate) fn new(limit: RateLimit) -> Self {
        Self { limit }
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
        let value = if field == TO_DOMAIN {
            let to = match &payload["to"] {
                Value::Array(list) => list.first().cloned().unwrap_or(Value::Null),
                other => other.clone(),
            };
            let address = to.as_str()?;
            // "Name <user@Example.COM>" -> "example.com"
            let domain = address.rsplit('@').next()?.trim_end_matches('>').trim();
            (domain != address.trim()).then(|| domain.to_ascii_lowercase())?
        } else {
            match &payload[field] {
                Value::String(s) => s.clone(),
                Value::Null => return None,
                other => other.to_string(),
            }
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
    use std::sync::Arc;

    fn job(payload: &str) -> Job {
        Job::new(
            Arc::from("q"),
            payload.as_bytes().to_vec(),
            parse_item(payload.as_bytes(), usize::MAX).expect("valid"),
        )
    }

    fn limiter(key: Option<&str>) -> RateLimiter {
        RateLimiter::new(RateLimit {
            limit: 1,
            window: Duration::from_secs(1),
            key: key.map(str::to_owned),
        })
    }

    #[test]
    fn to_domain_is_the_first_recipients_domain() {
        let l = limiter(Some("to_domain"));
        assert_eq!(
            l.key_of(&job(r#"{"to":"a@Example.COM"}"#)).as_deref(),
            Some("example.com")
        );
        assert_eq!(
            l.key_of(&job(r#"{"to":["Bo <b@x.org>","c@y.org"]}"#))
                .as_deref(),
            Some("x.org")
        );
        assert_eq!(l.key_of(&job(r#"{"to":"not-an-address"}"#)), None);
        assert_eq!(l.key_of(&job(r#"{"subject":"no to"}"#)), None);
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
