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
//! `conveyor-attempt`, for a flow's node `conveyor-flow` and (up to 8 KiB)
//! `conveyor-parents`, and with a signing secret the Standard Webhooks
//! `webhook-signature` (`sign.rs`). 2xx is success (a JSON body of up to
//! 64 KiB is the result); 408, 425, 429, 5xx, refused connections, resets
//! and timeouts are transient (`Retry-After` sets the next attempt's delay);
//! every other status, redirects included, is permanent, with the status
//! and the start of the body in the error. Header values from `env:` and
//! the secret are never logged or quoted.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::Full;
use serde::Deserialize;
use serde_json::value::RawValue;
use url::Url;

use super::{CheckError, Handler, HandlerContext, HandlerStore};
use crate::config::{ConfigError, mask_url};
use crate::job::{HandlerError, Job, MAX_RESULT_BYTES};

mod client;
mod guard;
mod mask;
mod sign;

use guard::Refused;
use sign::SigningKey;

/// Most of a response body read; the rest is not (the connection is then
/// dropped rather than pooled).
const MAX_RESPONSE: usize = 1024 * 1024;

/// How much of a failed response's body goes into the error.
const ERROR_BODY: usize = 200;

const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");
const CONVEYOR_QUEUE: HeaderName = HeaderName::from_static("conveyor-queue");
const CONVEYOR_ATTEMPT: HeaderName = HeaderName::from_static("conveyor-attempt");
const CONVEYOR_FLOW: HeaderName = HeaderName::from_static("conveyor-flow");
const CONVEYOR_PARENTS: HeaderName = HeaderName::from_static("conveyor-parents");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Largest `conveyor-parents` header sent; a flow's node whose parents
/// take more gets `conveyor-flow` alone (its parents are in
/// `GET /api/flows/<fid>`).
const MAX_PARENTS_HEADER: usize = 8 * 1024;
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Headers the handler sets itself.
const RESERVED: [HeaderName; 9] = [
    header::CONTENT_TYPE,
    header::USER_AGENT,
    WEBHOOK_ID,
    WEBHOOK_TIMESTAMP,
    WEBHOOK_SIGNATURE,
    CONVEYOR_QUEUE,
    CONVEYOR_ATTEMPT,
    CONVEYOR_FLOW,
    CONVEYOR_PARENTS,
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
    /// 1s to a year ([`crate::config::bounds::CACHE_TTL`]).
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
pub(crate) struct Http {
    queue: String,
    /// The queue's name as the `conveyor-queue` header.
    queue_header: HeaderValue,
    /// The queue's URL, the same as the request's URI, and its key among
    /// the client's connections.
    url: Option<(Url, Uri, String)>,
    method: Method,
    /// The queue's headers and `user-agent`.
    headers: HeaderMap,
    allow_job_url: bool,
    allow_private: bool,
    cache_ttl: Option<Duration>,
    key: Option<SigningKey>,
    /// Per-job URLs of a queue without `allow_private` resolve through
    /// the SSRF guard.
    client: client::Client,
    store: HandlerStore,
}

pub(crate) use mask::mask_secrets;

/// Builds the `http` handler of a queue from `[queues.<q>.http]`.
pub(crate) fn build(ctx: &HandlerContext<'_>) -> Result<Arc<dyn Handler>, ConfigError> {
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
    if let Some(ttl) = options.cache_ttl {
        if method != Method::GET {
            return Err(invalid(
                "cache_ttl",
                "applies to method = \"GET\" only".into(),
            ));
        }
        crate::config::bounds::duration(
            &format!("{at}.cache_ttl"),
            ttl,
            &crate::config::bounds::CACHE_TTL,
        )?;
    }
    let env = |name: &str| std::env::var(name).ok();
    let mut headers = headers(&options.headers, &env).map_err(|e| invalid("headers", e))?;
    headers.insert(
        header::USER_AGENT,
        HeaderValue::from_static(concat!("conveyor/", env!("CARGO_PKG_VERSION"))),
    );
    let mut roots = Vec::new();
    if let Some(file) = &options.ca_file {
        let path = ctx.config().dir.join(file);
        let pem = std::fs::read(&path)
            .map_err(|e| invalid("ca_file", format!("cannot read {}: {e}", path.display())))?;
        roots = client::pem_certificates(&pem)
            .map_err(|e| invalid("ca_file", format!("{} {e}", path.display())))?;
    }
    // No proxy from the environment is used: it would carry per-job
    // requests past the guard, which would see only the proxy's address.
    let refuse_private = options.allow_job_url && !options.allow_private;
    let client = client::Client::new(&roots, refuse_private).map_err(|e| invalid("ca_file", e))?;
    let queue_header = HeaderValue::from_str(ctx.queue()).map_err(|_| {
        ConfigError::Invalid(format!("{at}: the queue's name cannot be a header value"))
    })?;
    let url = match url {
        Some(url) => {
            let uri = uri(&url).map_err(|e| invalid("url", e))?;
            let key = client::key(&uri);
            Some((url, uri, key))
        }
        None => None,
    };
    Ok(Arc::new(Http {
        queue: ctx.queue().to_owned(),
        queue_header,
        url,
        method,
        headers,
        allow_job_url: options.allow_job_url,
        allow_private: options.allow_private,
        cache_ttl: options.cache_ttl,
        key: sign::key_of(ctx.queue(), &env)?,
        client,
        store: ctx.store(),
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
    let mut url =
        Url::parse(text).map_err(|e| format!("{:?} is not a URL: {e}", mask_url(text)))?;
    match url.scheme() {
        "http" | "https" => {
            url.set_fragment(None);
            Ok(url)
        }
        other => Err(format!("the scheme {other:?} is not http or https")),
    }
}

/// A URL as a request's URI, without its user and password (they become
/// the `authorization` header: [`basic_auth`]).
fn uri(url: &Url) -> Result<Uri, String> {
    let mut bare = url.clone();
    // Neither fails on an http or https URL, which has a host.
    let _ = bare.set_username("");
    let _ = bare.set_password(None);
    bare.as_str()
        .parse()
        .map_err(|e| format!("{:?} is not a URL: {e}", mask_url(url.as_str())))
}

/// The `authorization` header of a URL with a user or password.
fn basic_auth(url: &Url) -> Option<HeaderValue> {
    if url.username().is_empty() && url.password().is_none() {
        return None;
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let pair = format!(
        "{}:{}",
        decode(url.username()),
        decode(url.password().unwrap_or_default())
    );
    let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
    value.set_sensitive(true);
    Some(value)
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
        if RESERVED.contains(&header) {
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
struct Target<'a> {
    url: Cow<'a, Url>,
    uri: Uri,
    key: Cow<'a, str>,
    method: Method,
    headers: Cow<'a, HeaderMap>,
    body: Option<Bytes>,
}

impl Target<'_> {
    /// The URL as errors and logs show it.
    fn shown(&self) -> String {
        mask_url(self.url.as_str())
    }
}

impl Http {
    fn target<'a>(&'a self, job: &Job) -> Result<Target<'a>, HandlerError> {
        let Some((url, uri, key)) = self.url.as_ref().filter(|_| !self.allow_job_url) else {
            return self.job_target(job);
        };
        let body = (self.method != Method::GET)
            .then(|| Bytes::copy_from_slice(job.payload().get().as_bytes()));
        Ok(Target {
            url: Cow::Borrowed(url),
            uri: uri.clone(),
            key: Cow::Borrowed(key),
            method: self.method.clone(),
            headers: Cow::Borrowed(&self.headers),
            body,
        })
    }

    /// The request a job of an `allow_job_url` queue names.
    fn job_target(&self, job: &Job) -> Result<Target<'static>, HandlerError> {
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
        if let Some(auth) = basic_auth(&url) {
            headers.insert(header::AUTHORIZATION, auth);
        }
        let body = match (&method, request.body) {
            (&Method::GET, _) | (_, None) => None,
            (_, Some(body)) => Some(Bytes::copy_from_slice(body.get().as_bytes())),
        };
        let uri = uri(&url).map_err(HandlerError::permanent)?;
        Ok(Target {
            key: Cow::Owned(client::key(&uri)),
            uri,
            url: Cow::Owned(url),
            method,
            headers: Cow::Owned(headers),
            body,
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
        let cache = self.cache_ttl.filter(|_| target.method == Method::GET);
        if cache.is_some() && self.cached(&target.url).await? {
            tracing::debug!(url = %target.shown(), "cached response still fresh; no request");
            return Ok(());
        }
        let request = self.request(job, &target)?;
        let (response, lease) = self
            .client
            .send(request, &target.key)
            .await
            .map_err(|e| send_error(&e, e.is_connect(), &target.shown()))?;
        let (parts, body) = response.into_parts();
        let (body, complete) = client::read_bounded(body, MAX_RESPONSE)
            .await
            .map_err(|e| send_error(&e, false, &target.shown()))?;
        if complete {
            lease.release();
        }
        let status = parts.status;
        if status.is_success() {
            if let (Some(ttl), true) = (cache, complete) {
                if let Err(e) = self.store.cache(target.url.as_str(), &body, ttl).await {
                    tracing::warn!(error = %e, "response not cached");
                }
            }
            keep_result(job, &body);
            return Ok(());
        }
        let mut error = format!(
            "HTTP {} from {}: {}",
            status_text(status),
            target.shown(),
            String::from_utf8_lossy(&body[..body.len().min(ERROR_BODY)]).trim()
        );
        if status.is_redirection() {
            let location = parts
                .headers
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .map(mask_url);
            error.push_str(&format!(
                " (redirects are not followed; location: {})",
                location.as_deref().unwrap_or("none")
            ));
        }
        let transient = matches!(status.as_u16(), 408 | 425 | 429) || status.is_server_error();
        Err(match (transient, retry_after(&parts.headers)) {
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
            (Some((url, ..)), false) => format!("{} {}", self.method, mask_url(url.as_str())),
            (None, false) => String::new(),
        };
        report(format!(
            "http {}: ok ({target}; {})",
            self.queue,
            self.signing()
        ));
        Ok(())
    }

    async fn start(&self) {
        tracing::info!(queue = %self.queue, "{}", self.signing());
    }
}

impl Http {
    /// Whether its requests are signed, and if not, what would sign them.
    fn signing(&self) -> String {
        match self.key {
            Some(_) => "signing: yes".to_owned(),
            None => format!("signing: no (no {} set)", sign::variable(&self.queue)),
        }
    }

    /// The job's request: the target's headers and ours, the body.
    fn request(
        &self,
        job: &Job,
        target: &Target<'_>,
    ) -> Result<Request<Full<Bytes>>, HandlerError> {
        let id = HeaderValue::from_str(job.id()).map_err(|_| {
            HandlerError::permanent("the job's id cannot be sent as the webhook-id header")
        })?;
        let timestamp = jiff::Timestamp::now().as_second();
        let body = target.body.clone().unwrap_or_default();
        let mut headers = HeaderMap::with_capacity(target.headers.len() + RESERVED.len());
        headers.extend(target.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let Some(key) = &self.key {
            let signature = key.sign(job.id(), timestamp, &body);
            headers.insert(
                WEBHOOK_SIGNATURE,
                HeaderValue::try_from(signature).expect("base64 is a header value"),
            );
        }
        headers.insert(WEBHOOK_ID, id);
        headers.insert(WEBHOOK_TIMESTAMP, HeaderValue::from(timestamp));
        headers.insert(CONVEYOR_QUEUE, self.queue_header.clone());
        headers.insert(CONVEYOR_ATTEMPT, HeaderValue::from(job.attempt()));
        // A flow's node: its flow, and its parents' statuses and results
        // (DESIGN section 13) while they fit a header.
        if let Some(flow) = job.flow().and_then(|f| HeaderValue::from_str(f).ok()) {
            headers.insert(CONVEYOR_FLOW, flow);
            let parents = job.parents().map(|p| p.get().as_bytes());
            if let Some(value) = parents
                .filter(|p| p.len() <= MAX_PARENTS_HEADER)
                .and_then(|p| HeaderValue::from_bytes(p).ok())
            {
                headers.insert(CONVEYOR_PARENTS, value);
            }
        }
        // The job's span goes on (tracing on): the receiver's spans are its
        // children. Over any the queue's own headers set.
        if let Some(traceparent) = job.traceparent() {
            if let Ok(value) = HeaderValue::try_from(traceparent) {
                headers.insert(TRACEPARENT, value);
            }
            if let Some(value) = job.tracestate().and_then(|s| HeaderValue::try_from(s).ok()) {
                headers.insert(TRACESTATE, value);
            }
        }
        if target.method != Method::GET {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = target.method.clone();
        *request.uri_mut() = target.uri.clone();
        *request.headers_mut() = headers;
        Ok(request)
    }

    async fn cached(&self, url: &Url) -> Result<bool, HandlerError> {
        self.store.cached(url.as_str()).await.map_err(|e| {
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

/// Why a request failed before its answer was read: refused by the guard
/// (permanent, nothing was sent), or anything else (transient).
fn send_error(e: &(dyn std::error::Error + 'static), connect: bool, url: &str) -> HandlerError {
    let mut source = Some(e);
    let mut innermost = None;
    while let Some(cause) = source {
        if let Some(refusal) = cause.downcast_ref::<Refused>() {
            return refused(refusal);
        }
        innermost = Some(cause.to_string());
        source = cause.source();
    }
    let why = innermost.unwrap_or_else(|| e.to_string());
    let what = if connect {
        "could not connect"
    } else {
        "failed"
    };
    HandlerError::transient(format!("HTTP request to {url} {what}: {}", mask_url(&why)))
}

/// The next attempt's delay a response asks for: seconds, or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
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
