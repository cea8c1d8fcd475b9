//! Who may see and who may act: the token (as `Authorization: Bearer` or
//! the dashboard's session cookie), compared in constant time, and the
//! same-origin rule for actions.
//!
//! The cookie holds an HMAC of the token, not the token, and is
//! `HttpOnly; SameSite=Strict`. Actions are POSTs refused when the browser
//! says they come from another origin (`Origin`, `Sec-Fetch-Site`). Without
//! a token (loopback only) a request must also name a loopback host, so
//! that a page whose name was rebound to 127.0.0.1 cannot act either.

use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, COOKIE, HOST, ORIGIN};
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

use crate::config::Secret;

/// The session cookie's name.
pub(super) const COOKIE_NAME: &str = "conveyor_session";

/// The token, if one is configured.
#[derive(Clone)]
pub(super) struct Auth {
    token: Option<Secret>,
}

impl Auth {
    pub(super) fn new(token: Option<Secret>) -> Self {
        Self { token }
    }

    /// Whether a token is asked for at all.
    pub(super) fn required(&self) -> bool {
        self.token.is_some()
    }

    /// Whether `given` is the token (constant time in its contents).
    pub(super) fn is_token(&self, given: &str) -> bool {
        match &self.token {
            Some(token) => bool::from(token.expose().as_bytes().ct_eq(given.as_bytes())),
            None => true,
        }
    }

    /// The session cookie's value: HMAC-SHA256 of a fixed text keyed by
    /// the token, so that the cookie jar never holds the token itself and
    /// a new token ends every session.
    pub(super) fn session(&self) -> Option<String> {
        let token = self.token.as_ref()?;
        let mut mac = Hmac::<Sha256>::new_from_slice(token.expose().as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(b"conveyor dashboard session");
        let tag = mac.finalize().into_bytes();
        Some(tag.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Whether the request carries the token or a session.
    pub(super) fn admits(&self, headers: &HeaderMap) -> bool {
        if self.token.is_none() {
            return host_is_loopback(headers);
        }
        if let Some(bearer) = bearer(headers) {
            return self.is_token(bearer);
        }
        match (cookie(headers, COOKIE_NAME), self.session()) {
            (Some(given), Some(session)) => bool::from(given.as_bytes().ct_eq(session.as_bytes())),
            _ => false,
        }
    }

    /// Whether a request that acts may: not sent by a page of another
    /// origin. A request with the token in its header comes from a program
    /// (a browser cannot add it to a cross-origin POST without asking).
    pub(super) fn same_origin(&self, headers: &HeaderMap) -> bool {
        if let Some(origin) = headers.get(ORIGIN) {
            let Some(host) = headers.get(HOST).and_then(|h| h.to_str().ok()) else {
                return false;
            };
            let origin = origin.to_str().unwrap_or("");
            return origin == format!("http://{host}") || origin == format!("https://{host}");
        }
        match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
            Some("same-origin" | "none") | None => true,
            Some(_) => false,
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether the `Host` header names this machine's loopback (or is absent,
/// as from a plain HTTP/1.0 client on the machine).
fn host_is_loopback(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(HOST).and_then(|h| h.to_str().ok()) else {
        return true;
    };
    // Strip the port: "[::1]:9740", "127.0.0.1:9740", "localhost:9740".
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn the_token_or_its_session_admits() {
        let auth = Auth::new(Some(Secret::new("s3cret-token-0123456789")));
        assert!(auth.admits(&headers(&[(
            "authorization",
            "Bearer s3cret-token-0123456789"
        )])));
        assert!(!auth.admits(&headers(&[(
            "authorization",
            "Bearer s3cret-token-012345678"
        )])));
        assert!(!auth.admits(&headers(&[])));
        let session = auth.session().expect("a token makes a session");
        assert!(!session.contains("s3cret"));
        let cookie = format!("a=b; {COOKIE_NAME}={session}");
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_str(&cookie).expect("ascii"));
        assert!(auth.admits(&h));
        assert!(!auth.admits(&headers(&[("cookie", "conveyor_session=00")])));
    }

    #[test]
    fn without_a_token_only_loopback_names_are_served() {
        let auth = Auth::new(None);
        assert!(auth.admits(&headers(&[("host", "127.0.0.1:9740")])));
        assert!(auth.admits(&headers(&[("host", "localhost:9740")])));
        assert!(auth.admits(&headers(&[("host", "[::1]:9740")])));
        assert!(!auth.admits(&headers(&[("host", "rebound.example:9740")])));
    }

    #[test]
    fn actions_from_other_origins_are_refused() {
        let auth = Auth::new(None);
        let same = headers(&[
            ("host", "127.0.0.1:9740"),
            ("origin", "http://127.0.0.1:9740"),
        ]);
        assert!(auth.same_origin(&same));
        let other = headers(&[
            ("host", "127.0.0.1:9740"),
            ("origin", "http://evil.example"),
        ]);
        assert!(!auth.same_origin(&other));
        let fetched = headers(&[("host", "127.0.0.1:9740"), ("sec-fetch-site", "cross-site")]);
        assert!(!auth.same_origin(&fetched));
        assert!(auth.same_origin(&headers(&[("host", "127.0.0.1:9740")])));
    }
}
