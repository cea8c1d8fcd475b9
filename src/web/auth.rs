//! Who may see and who may act: the token (as `Authorization: Bearer` or
//! the dashboard's session cookie), compared in constant time, and the
//! same-origin rule for actions.
//!
//! The cookie holds the time the session began and an HMAC of that time
//! keyed by the token, not the token; it is `HttpOnly; SameSite=Strict`,
//! lasts [`SESSION_MAX_AGE`] (the browser is told, and an older session is
//! refused whatever the browser sends), and is `Secure` when the dashboard
//! is reached over HTTPS ([`over_https`]). Actions are POSTs refused when
//! the browser says they come from another origin (`Origin`,
//! `Sec-Fetch-Site`). Without a token (loopback only) a request must also
//! name a loopback host, so that a page whose name was rebound to
//! 127.0.0.1 cannot act either.

use std::time::{Duration, SystemTime};

use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, COOKIE, HOST, ORIGIN};
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

use crate::config::Secret;

/// The session cookie's name.
pub(super) const COOKIE_NAME: &str = "conveyor_session";

/// How long a dashboard session lasts: a working day, after which the
/// login form asks for the token again.
pub(super) const SESSION_MAX_AGE: Duration = Duration::from_secs(12 * 3600);

/// How far in the future a session's start may be: another daemon with
/// the same token, behind the same proxy, whose clock is a little ahead.
const CLOCK_SKEW: Duration = Duration::from_secs(300);

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

    /// A new session's cookie value, begun at `now`: `<unix seconds>.<their
    /// HMAC-SHA256 keyed by the token>`, so that the cookie jar never holds
    /// the token itself, a new token ends every session, and the start
    /// cannot be moved without the token.
    pub(super) fn session(&self, now: SystemTime) -> Option<String> {
        let begun = unix_seconds(now);
        Some(format!("{begun}.{}", self.session_mac(begun)?))
    }

    fn session_mac(&self, begun: u64) -> Option<String> {
        let token = self.token.as_ref()?;
        let mut mac = Hmac::<Sha256>::new_from_slice(token.expose().as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(b"conveyor dashboard session\0");
        mac.update(begun.to_string().as_bytes());
        Some(super::notice::hex(&mac.finalize().into_bytes()))
    }

    /// Whether `value` is a session of this token, begun at most
    /// [`SESSION_MAX_AGE`] before `now`.
    fn is_session(&self, value: &str, now: SystemTime) -> bool {
        let Some((begun, given)) = value.split_once('.') else {
            return false;
        };
        let Ok(begun) = begun.parse::<u64>() else {
            return false;
        };
        let now = unix_seconds(now);
        let fresh = begun <= now.saturating_add(CLOCK_SKEW.as_secs())
            && now.saturating_sub(begun) <= SESSION_MAX_AGE.as_secs();
        match self.session_mac(begun) {
            Some(mac) => fresh && bool::from(given.as_bytes().ct_eq(mac.as_bytes())),
            None => false,
        }
    }

    /// Whether the request carries the token or a session.
    pub(super) fn admits(&self, headers: &HeaderMap) -> bool {
        self.admits_at(headers, SystemTime::now())
    }

    fn admits_at(&self, headers: &HeaderMap, now: SystemTime) -> bool {
        if self.token.is_none() {
            return host_is_loopback(headers);
        }
        if let Some(bearer) = bearer(headers) {
            return self.is_token(bearer);
        }
        cookie(headers, COOKIE_NAME).is_some_and(|given| self.is_session(given, now))
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

/// The `Set-Cookie` of a new session.
pub(super) fn session_cookie(value: &str, secure: bool) -> String {
    let max_age = SESSION_MAX_AGE.as_secs();
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE_NAME}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}")
}

/// The `Set-Cookie` that ends a session.
pub(super) fn ended_cookie(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE_NAME}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{secure}")
}

/// Whether the browser reached the dashboard over HTTPS, which the daemon
/// (plain HTTP) learns from a TLS-terminating proxy's `X-Forwarded-Proto:
/// https` or `Forwarded: proto=https`, or from the browser's own `Origin:
/// https://...` on the login form's POST. The claim is trusted without a
/// setting because `Secure` only narrows where the browser sends the
/// cookie: a client that claims HTTPS over plain HTTP loses its own
/// session and nothing else, and a proxy that says nothing is still
/// covered by the browser's `Origin`.
pub(super) fn over_https(headers: &HeaderMap) -> bool {
    let first = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let https = |s: &str| s.trim().trim_matches('"').eq_ignore_ascii_case("https");
    // Behind a chain of proxies, the first one's (the browser's side) leads.
    let proxy = first("x-forwarded-proto")
        .and_then(|v| v.split(',').next())
        .is_some_and(https);
    let forwarded = first("forwarded")
        .and_then(|v| v.split(',').next())
        .is_some_and(|element| {
            element
                .split(';')
                .filter_map(|pair| pair.split_once('='))
                .any(|(k, v)| k.trim().eq_ignore_ascii_case("proto") && https(v))
        });
    let origin = first(ORIGIN.as_str())
        .and_then(|o| o.get(..8))
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"));
    proxy || forwarded || origin
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
        let session = auth
            .session(SystemTime::now())
            .expect("a token makes a session");
        assert!(!session.contains("s3cret"));
        assert!(auth.admits(&with_session(&session)));
        assert!(!auth.admits(&headers(&[("cookie", "conveyor_session=00")])));
        // Another token's session is not one.
        let other = Auth::new(Some(Secret::new("an-0ther-token-0123456789")));
        assert!(!other.admits(&with_session(&session)));
    }

    fn with_session(session: &str) -> HeaderMap {
        let cookie = format!("a=b; {COOKIE_NAME}={session}");
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_str(&cookie).expect("ascii"));
        h
    }

    #[test]
    fn a_session_ends_after_its_max_age() {
        let auth = Auth::new(Some(Secret::new("s3cret-token-0123456789")));
        let begun = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let session = auth.session(begun).expect("a session");
        let h = with_session(&session);
        assert!(auth.admits_at(&h, begun));
        assert!(auth.admits_at(&h, begun + SESSION_MAX_AGE));
        assert!(!auth.admits_at(&h, begun + SESSION_MAX_AGE + Duration::from_secs(1)));
        // Begun in the future (beyond a clock's drift): refused.
        assert!(!auth.admits_at(&h, begun - Duration::from_secs(3600)));
        // The start cannot be moved: the MAC covers it.
        let (_, mac) = session.split_once('.').expect("two parts");
        let moved = format!("{}.{mac}", 1_800_000_000 + 3600);
        assert!(!auth.admits_at(&with_session(&moved), begun + SESSION_MAX_AGE));
    }

    #[test]
    fn the_cookie_is_secure_when_the_browser_came_over_https() {
        assert!(over_https(&headers(&[("x-forwarded-proto", "https")])));
        assert!(over_https(&headers(&[(
            "x-forwarded-proto",
            "HTTPS, http"
        )])));
        assert!(over_https(&headers(&[(
            "forwarded",
            "for=192.0.2.1;proto=https;by=203.0.113.43"
        )])));
        assert!(over_https(&headers(&[("origin", "https://jobs.example")])));
        assert!(!over_https(&headers(&[("x-forwarded-proto", "http")])));
        assert!(!over_https(&headers(&[(
            "origin",
            "http://127.0.0.1:9740"
        )])));
        assert!(!over_https(&headers(&[])));
        let cookie = session_cookie("1.ab", true);
        assert!(cookie.contains("; Secure"), "{cookie}");
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        assert!(
            cookie.contains(&format!("Max-Age={}", 12 * 3600)),
            "{cookie}"
        );
        assert!(!session_cookie("1.ab", false).contains("Secure"));
        assert!(ended_cookie(true).contains("Max-Age=0; HttpOnly; SameSite=Strict; Secure"));
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
