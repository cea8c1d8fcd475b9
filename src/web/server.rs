//! The web port's listener: HTTP/1.1 connections served by hyper with the
//! deadlines and the cap that keep the port from starving the daemon
//! (DESIGN section 16). axum's own `serve` has neither, so the loop is here:
//!
//! - a request's head must arrive whole within [`HEAD_DEADLINE`] of the
//!   connection's start or of its previous answer (hyper's header read
//!   timeout, which also closes idle keep-alive connections), and its body
//!   within [`BODY_DEADLINE`] of its head, at most [`MAX_BODY`] bytes;
//! - the connections are capped ([`super::connections`]), the cap derived
//!   from the open files limit ([`super::descriptors`]);
//! - an accept that fails for want of descriptors or memory is retried
//!   after [`ACCEPT_PAUSE`], never in a busy loop, and never ends the
//!   server.
//!
//! An answer that takes long, such as the event stream, is not idle: it
//! holds its connection as long as it runs.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::header::CONNECTION;
use axum::http::{HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse as _, Response};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::{Body as _, Incoming};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connections::{Connections, Slot};
use crate::config::ConfigError;

/// How long a request's head may take to arrive, from the connection's
/// start or the end of its previous answer: a browser or a scraper sends
/// it at once; a connection that sends nothing, or half a head, for this
/// long is closed.
const HEAD_DEADLINE: Duration = Duration::from_secs(10);

/// How long a request's body may take to arrive after its head.
const BODY_DEADLINE: Duration = Duration::from_secs(10);

/// The largest request body (the login form is the only one with a body).
const MAX_BODY: usize = 64 * 1024;

/// The most a request's head may buffer (hyper's minimum is 8 KiB; a
/// browser's head with its cookies is a few KiB).
const MAX_HEAD: usize = 64 * 1024;

/// How long the accept loop waits after an accept failed for want of
/// descriptors or memory.
const ACCEPT_PAUSE: Duration = Duration::from_millis(250);

/// Connections the kernel may hold for the web server before it accepts
/// them: they cost the daemon no descriptor. The usual 128 (std's, mio's)
/// overflows under a flood, and a client whose connection was dropped for
/// it waits a second or more before it tries again; Linux caps this at
/// `net.core.somaxconn` (4096 by default).
const BACKLOG: u32 = 1024;

/// Binds `[web] listen`; a port in use or not ours is a configuration error.
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener, ConfigError> {
    let listen = || {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        // As std and tokio do: a restarted daemon binds while the old
        // connections are in TIME_WAIT.
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(BACKLOG)
    };
    listen().map_err(|e: std::io::Error| {
        ConfigError::Invalid(format!("web.listen {addr}: cannot listen: {e}"))
    })
}

/// Accepts and serves connections until `stop`, then lets open requests
/// end (connections that are idle close at once) and returns when every
/// connection has closed.
pub(super) async fn run(
    listener: TcpListener,
    router: Router,
    connections: Arc<Connections>,
    stop: CancellationToken,
) {
    let tasks = TaskTracker::new();
    let mut failing = false;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                if failing {
                    tracing::info!("web: accepting connections again");
                    failing = false;
                }
                stream
            }
            Err(e) if is_transient(&e) => continue,
            Err(e) => {
                if !failing {
                    tracing::warn!(
                        error = %e,
                        "web: cannot accept connections, retrying every {}ms",
                        ACCEPT_PAUSE.as_millis()
                    );
                    failing = true;
                }
                tokio::select! {
                    () = tokio::time::sleep(ACCEPT_PAUSE) => continue,
                    () = stop.cancelled() => break,
                }
            }
        };
        let slot = tokio::select! {
            slot = connections.admit(has_whole_head(&stream)) => slot,
            () = stop.cancelled() => break,
        };
        tasks.spawn(serve(stream, slot, router.clone(), stop.clone()));
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
}

/// Whether a whole request head has arrived on a connection just accepted
/// (a peek, which reads nothing away): such a connection is not idle, and
/// is never closed to make room before its task has read the request. A
/// burst of accepts from the backlog runs through the whole cap before the
/// tasks of the connections it accepted are polled, so without this a
/// health check's connection, its request in with it, was closed unread
/// under a flood.
fn has_whole_head(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
    match rustix::net::recv(stream, &mut buf[..], flags) {
        Ok((seen, _)) => memchr::memmem::find(&buf[..seen], b"\r\n\r\n").is_some(),
        Err(_) => false,
    }
}

/// An accept error that concerns one connection only (it was reset
/// before it was accepted): the next accept is fine.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// Serves one connection until the client leaves, a deadline passes, the
/// cap makes room with it, or the server stops.
async fn serve(stream: TcpStream, slot: Slot, router: Router, stop: CancellationToken) {
    let slot = Arc::new(slot);
    let service = {
        let slot = slot.clone();
        hyper::service::service_fn(move |request| {
            let answering = slot.answering();
            let router = router.clone();
            async move {
                let (parts, body) = answer(router, request).await.into_parts();
                // The guard goes with the body: the connection counts as
                // answering until hyper drops it, after its last frame (an
                // event stream's runs as long as the stream).
                let body = body.map_frame(move |frame| {
                    let _held = &answering;
                    frame
                });
                Ok::<_, Infallible>(Response::from_parts(parts, Body::new(body)))
            }
        })
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_DEADLINE)
        .max_buf_size(MAX_HEAD);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let mut stopping = false;
    loop {
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(error = %e, "web: connection closed");
                }
                break;
            }
            () = slot.close().cancelled() => break,
            // A connection answering nothing has nothing to finish: it
            // closes at once, even with half a request in.
            () = stop.cancelled(), if !stopping => {
                if !slot.is_answering() {
                    break;
                }
                connection.as_mut().graceful_shutdown();
                stopping = true;
            }
        }
    }
}

/// The router's answer to `request`, once its body has arrived whole
/// within [`BODY_DEADLINE`].
async fn answer(router: Router, request: Request<Incoming>) -> Response {
    let (parts, body) = request.into_parts();
    let body = match body.is_end_stream() {
        true => Body::empty(),
        false => {
            let whole = tokio::time::timeout(BODY_DEADLINE, Limited::new(body, MAX_BODY).collect());
            match whole.await {
                Ok(Ok(collected)) => Body::from(collected.to_bytes()),
                Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                    return refuse(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("a request's body is {MAX_BODY} bytes at most\n"),
                    );
                }
                Ok(Err(_)) => {
                    return refuse(
                        StatusCode::BAD_REQUEST,
                        "the request's body was cut short\n".into(),
                    );
                }
                Err(_) => {
                    return refuse(
                        StatusCode::REQUEST_TIMEOUT,
                        format!(
                            "the request's body did not arrive within {}s\n",
                            BODY_DEADLINE.as_secs()
                        ),
                    );
                }
            }
        }
    };
    let mut router = router;
    match tower_service::Service::call(&mut router, Request::from_parts(parts, body)).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// An answer that closes the connection: what is left of the request is
/// not read.
fn refuse(status: StatusCode, said: String) -> Response {
    let mut response = (status, said).into_response();
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}
