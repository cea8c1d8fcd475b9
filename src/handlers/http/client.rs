//! The connections an `http` queue sends through.
//!
//! Connections are made by hyper-rustls's connector (rustls with the
//! system's and Mozilla's roots and the queue's `ca_file`, ALPN offering
//! HTTP/2 and HTTP/1.1) over hyper-util's TCP connector, which resolves
//! names through the SSRF guard's [`Resolver`]. Requests go through hyper's
//! own connection handles, kept here per scheme and host: HTTP/1.1
//! connections one request at a time, idle ones reused newest first;
//! one HTTP/2 connection shared by all requests to its host.
//!
//! hyper-util's pooled client does the same with more machinery (a task
//! per returned connection, a checkout racing a connect); measured with 50
//! concurrent POSTs into nginx it takes 17 to 20 us of CPU per request,
//! against 12 to 14 us for hyper's handles kept as here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tower_service::Service;

use super::guard::Resolver;

type Body = Full<Bytes>;

/// How long an idle connection is kept for the next job.
const IDLE: Duration = Duration::from_secs(60);

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub(super) enum SendError {
    /// No connection could be made (the guard's refusal among the causes).
    #[error("{0}")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The exchange failed once connected.
    #[error("{0}")]
    Exchange(#[from] hyper::Error),
}

impl SendError {
    /// Whether no connection could be made.
    pub(super) fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_))
    }
}

/// A queue's connections, per scheme and host.
pub(super) struct Client {
    connector: HttpsConnector<HttpConnector<Resolver>>,
    hosts: Mutex<Hosts>,
}

#[derive(Default)]
struct Hosts {
    /// Idle HTTP/1.1 connections, the newest last.
    idle: HashMap<String, Vec<(http1::SendRequest<Body>, Instant)>>,
    /// The HTTP/2 connection of each host that chose it.
    shared: HashMap<String, http2::SendRequest<Body>>,
    /// When idle connections were last let go of.
    swept: Option<Instant>,
}

/// A connection a request went out on; [`Lease::release`] it once the
/// answer is read to its end, for the next request to use.
pub(super) struct Lease<'a> {
    client: &'a Client,
    key: &'a str,
    sender: Option<http1::SendRequest<Body>>,
}

impl Lease<'_> {
    /// Keeps the connection for the next request.
    pub(super) fn release(self) {
        let Some(sender) = self.sender else {
            return;
        };
        let now = Instant::now();
        let mut hosts = self.client.lock();
        hosts.sweep(now);
        match hosts.idle.get_mut(self.key) {
            Some(idle) => idle.push((sender, now)),
            None => {
                hosts.idle.insert(self.key.to_owned(), vec![(sender, now)]);
            }
        }
    }
}

/// Either kind of connection handle.
enum Sender {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

/// The certificates of a PEM file (`ca_file`).
pub(super) fn pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("is not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(certs)
}

impl Client {
    /// A client trusting the system's roots, Mozilla's and `extra`; with
    /// `refuse_private`, names resolving to this network's addresses are
    /// refused before any connection.
    pub(super) fn new(
        extra: &[CertificateDer<'static>],
        refuse_private: bool,
    ) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            tracing::debug!(error = %e, "a system certificate could not be read");
        }
        roots.add_parsable_certificates(native.certs);
        for cert in extra {
            roots
                .add(cert.clone())
                .map_err(|e| format!("a certificate of ca_file is refused: {e}"))?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS cannot be set up: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new_with_resolver(Resolver { refuse_private });
        http.enforce_http(false);
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Ok(Self {
            connector,
            hosts: Mutex::default(),
        })
    }

    /// Sends `request` (its URI absolute; `key` is [`key`] of it) on an
    /// idle or shared connection to its host, or on a new one. A request
    /// that a connection closed before taking goes out on the next.
    pub(super) async fn send<'a>(
        &'a self,
        mut request: Request<Body>,
        key: &'a str,
    ) -> Result<(Response<Incoming>, Lease<'a>), SendError> {
        loop {
            let (sender, fresh) = match self.reuse(key) {
                Some(sender) => (sender, false),
                // Boxed: the handshakes' futures would make every job's larger.
                None => (Box::pin(self.connect(request.uri(), key)).await?, true),
            };
            let attempt = match sender {
                Sender::H1(mut sender) => {
                    let absolute = request.uri().clone();
                    let added_host = origin_form(&mut request);
                    let attempt = match sender.ready().await {
                        Ok(()) => match sender.try_send_request(request).await {
                            Ok(response) => Attempt::Answered(response, Some(sender)),
                            Err(e) => Attempt::from(e),
                        },
                        Err(e) => Attempt::Unsent(request, e),
                    };
                    match attempt {
                        // As it was, for the next connection (maybe HTTP/2).
                        Attempt::Unsent(mut request, e) => {
                            *request.uri_mut() = absolute;
                            if added_host {
                                request.headers_mut().remove(header::HOST);
                            }
                            Attempt::Unsent(request, e)
                        }
                        attempt => attempt,
                    }
                }
                Sender::H2(mut sender) => {
                    let attempt = match sender.ready().await {
                        Ok(()) => match sender.try_send_request(request).await {
                            Ok(response) => Attempt::Answered(response, None),
                            Err(e) => Attempt::from(e),
                        },
                        Err(e) => Attempt::Unsent(request, e),
                    };
                    if matches!(attempt, Attempt::Unsent(..)) {
                        // Going away: the next request makes a new one
                        // (and this loop ends, as with HTTP/1.1's, whose
                        // idle connections are each taken once).
                        self.lock().shared.remove(key);
                    }
                    attempt
                }
            };
            match attempt {
                Attempt::Answered(response, sender) => {
                    let lease = Lease {
                        client: self,
                        key,
                        sender,
                    };
                    return Ok((response, lease));
                }
                // Not sent: the connection had closed (a server's idle
                // timeout); the next one takes it. A new connection that
                // fails so is an error.
                Attempt::Unsent(unsent, _) if !fresh => request = unsent,
                Attempt::Unsent(_, e) | Attempt::Failed(e) => return Err(SendError::Exchange(e)),
            }
        }
    }

    /// The host's HTTP/2 connection, or its newest idle HTTP/1.1 one that
    /// is still open.
    fn reuse(&self, key: &str) -> Option<Sender> {
        let mut hosts = self.lock();
        if let Some(shared) = hosts.shared.get(key) {
            if !shared.is_closed() {
                return Some(Sender::H2(shared.clone()));
            }
            hosts.shared.remove(key);
        }
        let idle = hosts.idle.get_mut(key)?;
        while let Some((sender, since)) = idle.pop() {
            if !sender.is_closed() && since.elapsed() < IDLE {
                return Some(Sender::H1(sender));
            }
        }
        None
    }

    /// A new connection to the host of `uri`, HTTP/2 if TLS's ALPN chose it.
    async fn connect(&self, uri: &Uri, key: &str) -> Result<Sender, SendError> {
        let io = self
            .connector
            .clone()
            .call(uri.clone())
            .await
            .map_err(SendError::Connect)?;
        if io.connected().is_negotiated_h2() {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "HTTP/2 connection ended");
                }
            });
            self.lock().shared.insert(key.to_owned(), sender.clone());
            return Ok(Sender::H2(sender));
        }
        let (sender, connection) = http1::handshake(io).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "HTTP/1.1 connection ended");
            }
        });
        Ok(Sender::H1(sender))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Hosts> {
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Hosts {
    /// Lets go of connections idle too long or closed, every few seconds.
    fn sweep(&mut self, now: Instant) {
        if self
            .swept
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(5))
        {
            return;
        }
        self.swept = Some(now);
        self.idle.retain(|_, idle| {
            idle.retain(|(sender, since)| !sender.is_closed() && now.duration_since(*since) < IDLE);
            !idle.is_empty()
        });
        self.shared.retain(|_, sender| !sender.is_closed());
    }
}

/// The pool's key of a URI: scheme and authority.
pub(super) fn key(uri: &Uri) -> String {
    format!(
        "{}://{}",
        uri.scheme_str().unwrap_or("http"),
        uri.authority().map_or("", |a| a.as_str())
    )
}

/// Makes `request` one for an HTTP/1.1 connection: the path in the
/// request line, the host in `host` unless the request names one (a
/// queue's `Host` header); whether `host` was added.
fn origin_form(request: &mut Request<Body>) -> bool {
    let Some(authority) = request.uri().authority().cloned() else {
        return false;
    };
    let path = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *request.uri_mut() = Uri::from(path);
    let headers = request.headers_mut();
    if headers.contains_key(header::HOST) {
        return false;
    }
    match HeaderValue::from_str(authority.as_str()) {
        Ok(host) => {
            headers.insert(header::HOST, host);
            true
        }
        Err(_) => false,
    }
}

/// What became of a request on one connection.
enum Attempt {
    /// The answer's head, and the HTTP/1.1 connection to release.
    Answered(Response<Incoming>, Option<http1::SendRequest<Body>>),
    /// It never went out: the connection was closed.
    Unsent(Request<Body>, hyper::Error),
    /// It went out, or may have: no answer.
    Failed(hyper::Error),
}

impl From<TrySendError<Request<Body>>> for Attempt {
    fn from(mut e: TrySendError<Request<Body>>) -> Self {
        match e.take_message() {
            Some(request) => Self::Unsent(request, e.into_error()),
            None => Self::Failed(e.into_error()),
        }
    }
}

/// The body, up to `limit` bytes; whether it was all read. The rest is not
/// read: the connection is then dropped rather than kept.
pub(super) async fn read_bounded(
    mut body: Incoming,
    limit: usize,
) -> Result<(Vec<u8>, bool), hyper::Error> {
    let mut read = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(chunk) = frame?.into_data() else {
            continue; // trailers
        };
        let room = limit - read.len();
        if chunk.len() > room {
            read.extend_from_slice(&chunk[..room]);
            return Ok((read, false));
        }
        read.extend_from_slice(&chunk);
    }
    Ok((read, true))
}
