//! `http`: each job is an HTTP request, to the queue's URL (the payload is
//! the JSON body) or, with `allow_job_url`, to the URL the job names.
//!
//! ```toml
//! [queues.hooks.http]
//! url = "http://127.0.0.1:8080/jobs"
//! method = "POST"                      # POST | PUT | GET (GET sends no body)
//! headers = { "X-Team" = "billing", "Authorization" = "env:HOOKS_TOKEN" }
//! allow_job_url = false                # true: {"url", "method"?, "headers"?, "body"?}
//! allow_private = false                # per-job URLs to this network are refused
//! cache_ttl = "5m"                     # GET: keep a 2xx body at cache:<sha256 of URL>
//! ca_file = "/etc/conveyor/hooks-ca.pem"
//! ```
//!
//! Every request carries `content-type: application/json` (with a body),
//! `user-agent: conveyor/<version>`, `webhook-id` (the job's id: the
//! receiver's idempotency key), `webhook-timestamp`, `conveyor-queue` and
//! `conveyor-attempt`, and with a signing secret the Standard Webhooks
//! `webhook-signature` (`sign.rs`). 2xx is success (a JSON body of up to
//! 64 KiB is the result); 408, 425, 429, 5xx, refused connections, resets
//! and timeouts are transient (`Retry-After` sets the next attempt's delay);
//! every other status, redirects included, is permanent, with the status
//! and the start of the body in the error. Header values from `env:` and
//! the secret are never logged or quoted.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{CheckError, Handler, HandlerContext};
use crate::broker::Broker;
use crate::config::{ConfigError, mask_url};
use crate::job::{HandlerError, Job, MAX_RESULT_BYTES};

mod guard;
mod sign;

use guard::{GuardedResolver, Refused};
use sign::SigningKey;

/// Most of a response body read; the rest is not (the connection is then
/// dropped rather than pooled).
const MAX_RESPONSE: usize = 1024 * 1024;

/// How much of a failed response's body goes into the error.
const ERROR_BODY: usize = 200;

/// Headers the handler sets itself.
const RESERVED: &[&str] = &[
    "content-type",
    "user-agent",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "conveyor-queue",
    "conveyor-attempt",
];

/// `[queues.<q>.http]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    #[serde(default)]
    url: Option<String>,
    #[serde(default = "post")]
    method: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    allow_job_url: bool,
    #[serde(default)]
    allow_private: bool,
    #[serde(default, with = "humantime_serde::option")]
    cache_ttl: Option<Duration>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
}

fn post() -> String {
    "POST".into()
}

/// A per-job request: the payload of a queue with `allow_job_url`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobRequest {
    url: String,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: Option<Box<RawValue>>,
}

/// Sends each job as an HTTP request.
pub struct Http {
    queue: String,
    url: Option<Url>,
    method: Method,
    headers: HeaderMap,
    allow_job_url: bool,
    allow_private: bool,
    cache_ttl: Option<Duration>,
    key: Option<SigningKey>,
    client: reqwest::Client,
    /// For per-job URLs of a queue that does not allow private ones.
    guarded: reqwest::Client,
    broker: Broker,
}

/// Builds the `http` handler of a queue from `[queues.<q>.http]`.
pub fn build(ctx: &HandlerContext<'_>) -> Result<Arc<dyn Handler>, ConfigError> {
    let at = ctx.options_path();
    let invalid = |field: &str, msg: String| ConfigError::Invalid(format!("{at}.{field}: {msg}"));
    let options: Options = ctx.options()?;
    let method = method(&options.method).map_err(|e| invalid("method", e))?;
    let url = match (&options.url, options.allow_job_url) {
        (Some(url), _) => Some(parse_url(url).map_err(|e| invalid("url", e))?),
        (None, true) => None,
        (None, false) => {
            return Err(invalid(
                "url",
                "is required unless allow_job_url = true (each job then names its URL)".into(),
            ));
        }
    };
    if options.cache_ttl.is_some() && method != Method::GET {
        return Err(invalid(
            "cache_ttl",
            "applies to method = \"GET\" only".into(),
        ));
    }
    let env = |name: &str| std::env::var(name).ok();
    let headers = headers(&options.headers, &env).map_err(|e| invalid("headers", e))?;
    let mut roots = Vec::new();
    if let Some(file) = &options.ca_file {
        let path = ctx.config().dir.join(file);
        let pem = std::fs::read(&path)
            .map_err(|e| invalid("ca_file", format!("cannot read {}: {e}", path.display())))?;
        roots = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            invalid(
                "ca_file",
                format!("{} is not PEM certificates: {e}", path.display()),
            )
        })?;
    }
    let client = |guard: bool| {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // A proxy from the environment would carry per-job requests
            // past the guard, which sees only the proxy's address.
            .no_proxy()
            .user_agent(concat!("conveyor/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(60));
        for root in &roots {
            builder = builder.add_root_certificate(root.clone());
        }
        if guard {
            builder = builder.dns_resolver(Arc::new(GuardedResolver));
        }
        builder
            .build()
            .map_err(|e| ConfigError::Invalid(format!("{at}: the HTTP client cannot be made: {e}")))
    };
    Ok(Arc::new(Http {
        queue: ctx.queue().to_owned(),
        url,
        method,
        headers,
        allow_job_url: options.allow_job_url,
        allow_private: options.allow_private,
        cache_ttl: options.cache_ttl,
        key: sign::key_of(ctx.queue(), &env)?,
        client: client(false)?,
        guarded: client(true)?,
        broker: ctx.broker().clone(),
    }))
}

fn method(text: &str) -> Result<Method, String> {
    match text.to_ascii_uppercase().as_str() {
        "POST" => Ok(Method::POST),
        "PUT" => Ok(Method::PUT),
        "GET" => Ok(Method::GET),
        other => Err(format!("{other:?} is not POST, PUT or GET")),
    }
}

fn parse_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("{:?} is not a URL: {e}", mask_url(text)))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(format!("the scheme {other:?} is not http or https")),
    }
}

/// Header names and values, `env:NAME` values read from the environment
/// (and marked sensitive, so that nothing prints them).
fn headers(
    given: &BTreeMap<String, String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (name, value) in given {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("{name:?} is not a header name"))?;
        if RESERVED.contains(&header.as_str()) {
            return Err(format!("{name} is set by the handler itself"));
        }
        let (text, secret) = match value.strip_prefix("env:") {
            Some(var) => (
                env(var)
                    .ok_or_else(|| format!("{name} names the variable {var}, which is not set"))?,
                true,
            ),
            None => (value.clone(), false),
        };
        let mut value = HeaderValue::from_str(&text)
            .map_err(|_| format!("the value of {name} is not a valid header value"))?;
        value.set_sensitive(secret);
        map.insert(header, value);
    }
    Ok(map)
}

/// What one job asks for.
struct Target {
    url: Url,
    method: Method,
    headers: HeaderMap,
    body: Option<Vec<u8>>,
    guarded: bool,
}

impl Http {
    fn target(&self, job: &Job) -> Result<Target, HandlerError> {
        let Some(url) = &self.url.as_ref().filter(|_| !self.allow_job_url) else {
            return self.job_target(job);
        };
        let body = (self.method != Method::GET).then(|| job.payload().get().as_bytes().to_vec());
        Ok(Target {
            url: (*url).clone(),
            method: self.method.clone(),
            headers: self.headers.clone(),
            body,
            guarded: false,
        })
    }

    /// The request a job of an `allow_job_url` queue names.
    fn job_target(&self, job: &Job) -> Result<Target, HandlerError> {
        let request: JobRequest = serde_json::from_str(job.payload().get()).map_err(|e| {
            HandlerError::permanent(format!(
                "the payload must be {{\"url\", \"method\"?, \"headers\"?, \"body\"?}}: {e}"
            ))
        })?;
        let url = parse_url(&request.url).map_err(HandlerError::permanent)?;
        let method = match &request.method {
            Some(m) => method(m).map_err(HandlerError::permanent)?,
            None => self.method.clone(),
        };
        if !self.allow_private {
            guard::check_literal(&url).map_err(|e| refused(&e))?;
        }
        let mut headers = self.headers.clone();
        // A job's own values are literal: `env:` is the operator's, not a job's.
        let no_env = |_: &str| None;
        let own = headers_literal(&request.headers, &no_env).map_err(HandlerError::permanent)?;
        headers.extend(own);
        let body = match (&method, request.body) {
            (&Method::GET, _) | (_, None) => None,
            (_, Some(body)) => Some(body.get().as_bytes().to_vec()),
        };
        Ok(Target {
            url,
            method,
            headers,
            body,
            guarded: !self.allow_private,
        })
    }
}

/// A job's headers: as [`headers`], but `env:` is not read.
fn headers_literal(
    given: &BTreeMap<String, String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<HeaderMap, String> {
    if let Some((name, _)) = given.iter().find(|(_, v)| v.starts_with("env:")) {
        return Err(format!(
            "header {name}: env: values are for the queue's settings, not a job's"
        ));
    }
    headers(given, env)
}

fn refused(e: &Refused) -> HandlerError {
    HandlerError::permanent(format!("refused, no request sent: {e}"))
}

#[async_trait]
impl Handler for Http {
    async fn handle(&self, job: &Job) -> Result<(), HandlerError> {
        let target = self.target(job)?;
        let shown = mask_url(target.url.as_str());
        let cache = self.cache_ttl.filter(|_| target.method == Method::GET);
        if cache.is_some() && self.cached(&target.url).await? {
            tracing::debug!(url = %shown, "cached response still fresh; no request");
            return Ok(());
        }
        let timestamp = jiff::Timestamp::now().as_second();
        let client = if target.guarded {
            &self.guarded
        } else {
            &self.client
        };
        let mut request = client
            .request(target.method.clone(), target.url.clone())
            .headers(target.headers)
            .header("webhook-id", job.id())
            .header("webhook-timestamp", timestamp)
            .header("conveyor-queue", self.queue.as_str())
            .header("conveyor-attempt", job.attempt());
        let body = target.body.unwrap_or_default();
        if let Some(key) = &self.key {
            request = request.header("webhook-signature", key.sign(job.id(), timestamp, &body));
        }
        if target.method != Method::GET {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let response = request.send().await.map_err(|e| send_error(&e, &shown))?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .map(mask_url);
        let (body, complete) = read_bounded(response)
            .await
            .map_err(|e| send_error(&e, &shown))?;
        if status.is_success() {
            if let (Some(ttl), true) = (cache, complete) {
                if let Err(e) = self.broker.cache(target.url.as_str(), &body, ttl).await {
                    tracing::warn!(error = %e, "response not cached");
                }
            }
            keep_result(job, &body);
            return Ok(());
        }
        let mut error = format!(
            "HTTP {} from {shown}: {}",
            status_text(status),
            String::from_utf8_lossy(&body[..body.len().min(ERROR_BODY)]).trim()
        );
        if status.is_redirection() {
            error.push_str(&format!(
                " (redirects are not followed; location: {})",
                location.as_deref().unwrap_or("none")
            ));
        }
        let transient = matches!(status.as_u16(), 408 | 425 | 429) || status.is_server_error();
        Err(match (transient, retry_after) {
            (true, Some(delay)) => HandlerError::transient(error).retry_in(delay),
            (true, None) => HandlerError::transient(error),
            (false, _) => HandlerError::permanent(error),
        })
    }

    async fn check(&self, report: &mut (dyn FnMut(String) + Send)) -> Result<(), CheckError> {
        let target = match (&self.url, self.allow_job_url) {
            (_, true) if !self.allow_private => {
                "each job's URL, this network's addresses refused".to_owned()
            }
            (_, true) => "each job's URL".to_owned(),
            (Some(url), false) => format!("{} {}", self.method, mask_url(url.as_str())),
            (None, false) => String::new(),
        };
        let signed = if self.key.is_some() { ", signed" } else { "" };
        report(format!("http {}: ok ({target}{signed})", self.queue));
        Ok(())
    }
}

impl Http {
    async fn cached(&self, url: &Url) -> Result<bool, HandlerError> {
        self.broker.is_cached(url.as_str()).await.map_err(|e| {
            HandlerError::transient(format!("cannot look up the cached response: {e}"))
        })
    }
}

/// The status with its reason: `503 Service Unavailable`.
fn status_text(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

/// Why a request failed before a status came back: refused by the guard
/// (permanent, nothing was sent), or anything else (transient).
fn send_error(e: &reqwest::Error, url: &str) -> HandlerError {
    let mut source = std::error::Error::source(e);
    let mut innermost = None;
    while let Some(cause) = source {
        if let Some(refusal) = cause.downcast_ref::<Refused>() {
            return refused(refusal);
        }
        innermost = Some(cause.to_string());
        source = cause.source();
    }
    let why = innermost.unwrap_or_else(|| e.to_string());
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    HandlerError::transient(format!("HTTP request to {url} {what}: {}", mask_url(&why)))
}

/// The next attempt's delay a response asks for: seconds, or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The body, up to [`MAX_RESPONSE`] bytes; whether it was all read.
async fn read_bounded(mut response: reqwest::Response) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_RESPONSE - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            // The rest is not read: the connection is dropped with the response.
            return Ok((body, false));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, true))
}

/// A JSON body of up to 64 KiB is the job's result.
fn keep_result(job: &Job, body: &[u8]) {
    if body.is_empty() || body.len() > MAX_RESULT_BYTES {
        return;
    }
    if let Ok(json) = serde_json::from_slice::<Box<RawValue>>(body) {
        if let Err(e) = job.set_result_json(json) {
            tracing::debug!(error = %e, "result not kept");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("120"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(120)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(90));
        h.insert(
            "retry-after",
            HeaderValue::from_str(&later).expect("a value"),
        );
        let delay = retry_after(&h).expect("a delay");
        assert!(
            delay > Duration::from_secs(85) && delay <= Duration::from_secs(90),
            "{delay:?}"
        );
        h.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn headers_read_secrets_from_the_environment_and_refuse_our_own() {
        let env = |k: &str| (k == "TOKEN").then(|| "Bearer s3cret".to_owned());
        let given = BTreeMap::from([
            ("Authorization".to_owned(), "env:TOKEN".to_owned()),
            ("X-Team".to_owned(), "billing".to_owned()),
        ]);
        let map = headers(&given, &env).expect("valid");
        assert_eq!(map["authorization"], "Bearer s3cret");
        assert!(map["authorization"].is_sensitive());
        assert!(!format!("{map:?}").contains("s3cret"));
        let missing = BTreeMap::from([("X-Key".to_owned(), "env:NOPE".to_owned())]);
        assert!(headers(&missing, &env).unwrap_err().contains("NOPE"));
        let ours = BTreeMap::from([("Webhook-Id".to_owned(), "x".to_owned())]);
        assert!(
            headers(&ours, &env)
                .unwrap_err()
                .contains("set by the handler")
        );
    }
}
