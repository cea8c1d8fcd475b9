//! The email handler's own rate-limit key, `to_domain`: the domain of the
//! first recipient, so that a provider's per-domain limit is kept
//! (`rate_limit = { limit = 10, window = "60s", key = "to_domain" }`).

use serde_json::Value;

use crate::handlers::RateLimitKey;

/// The key's name.
pub(super) const TO_DOMAIN: &str = "to_domain";

/// The domain of the payload's (first) recipient, lower-cased.
pub(super) fn to_domain(payload: &Value) -> RateLimitKey {
    let to = match &payload["to"] {
        Value::Array(list) => list.first().cloned().unwrap_or(Value::Null),
        other => other.clone(),
    };
    domain(to.as_str().unwrap_or_default()).map_or(RateLimitKey::Missing, RateLimitKey::Value)
}

/// "Name <user@Example.COM>" -> "example.com"
fn domain(address: &str) -> Option<String> {
    let domain = address.rsplit('@').next()?.trim_end_matches('>').trim();
    (domain != address.trim()).then(|| domain.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(payload: &str) -> RateLimitKey {
        to_domain(&serde_json::from_str(payload).expect("JSON"))
    }

    #[test]
    fn to_domain_is_the_first_recipients_domain() {
        let value = |s: &str| RateLimitKey::Value(s.to_owned());
        assert_eq!(key(r#"{"to":"a@Example.COM"}"#), value("example.com"));
        assert_eq!(key(r#"{"to":["Bo <b@x.org>","c@y.org"]}"#), value("x.org"));
        assert_eq!(key(r#"{"to":"not-an-address"}"#), RateLimitKey::Missing);
        assert_eq!(key(r#"{"subject":"no to"}"#), RateLimitKey::Missing);
    }
}
