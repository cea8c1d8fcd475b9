//! SMTP connections of our own making, and the pool that keeps them.
//!
//! lettre speaks SMTP over them ([`AsyncSmtpConnection`]), but the socket
//! is ours: lettre sets no `TCP_NODELAY`, and without it every message
//! waited about 40 ms for a delayed ACK (Nagle's algorithm holding the end
//! of the data back), which capped a pool of 50 connections at about 1,100
//! messages/s against a local server. Every connection here has it.
//!
//! The pool replaces lettre's for three more reasons: lettre's asks each
//! pooled connection whether it lives (a NOOP round trip) before every
//! message, where ours asks only after a pause; a send cut off halfway (a
//! timeout, a shutdown) drops its connection here instead of returning it
//! to the pool mid-transaction; and the shutdown ends every kept
//! connection with QUIT.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::Mechanism;
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::transport::{SmtpSettings, TlsMode};

/// A kept connection unused for this long is asked whether it still lives
/// (NOOP) before it takes a message: servers drop idle clients (Postfix
/// after 300 s, some much sooner). A busy pool never pays for the question.
const CHECK_AFTER_IDLE: Duration = Duration::from_secs(2);

/// A kept connection unused for this long is closed rather than kept.
const MAX_IDLE: Duration = Duration::from_secs(60);

/// A step of the SMTP conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// The TCP connection.
    Connect,
    /// The TLS handshake of `smtps://`.
    TlsHandshake,
    /// The server's greeting and our EHLO.
    Ehlo,
    /// STARTTLS and the EHLO after it.
    StartTls,
    /// Authentication.
    Auth,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Connect => "connect",
            Step::TlsHandshake => "TLS handshake",
            Step::Ehlo => "greeting and EHLO",
            Step::StartTls => "STARTTLS",
            Step::Auth => "AUTH",
        })
    }
}

/// What went wrong while opening a connection.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The TCP connection.
    Io(io::Error),
    /// The server's reply, TLS, or lettre's reading of the reply.
    Smtp(lettre::transport::smtp::Error),
    /// The step took longer than the configured timeout.
    Timeout(Duration),
    /// `tls=starttls` and the server does not offer STARTTLS.
    NoStartTls,
}

/// The step at which opening a connection failed, and why.
#[derive(Debug)]
pub(crate) struct OpenError {
    pub(crate) step: Step,
    pub(crate) failure: Failure,
}

/// How far opening a connection has come, for the probe's report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    /// The step succeeded.
    Done(Step),
    /// `tls=opportunistic` and the server offers no STARTTLS: going on in clear.
    ClearText,
}

/// Opens a connection as `[email] smtp_url` says: TCP (with `TCP_NODELAY`),
/// implicit TLS or STARTTLS, EHLO, AUTH. Each step is bounded by the
/// configured timeout; `progress` hears of each step that passed.
pub(crate) async fn open(
    settings: &SmtpSettings,
    hello: &ClientId,
    mut progress: impl FnMut(Progress),
) -> Result<AsyncSmtpConnection, OpenError> {
    let limit = settings.timeout;
    let url = &settings.url;
    let fail = |step: Step| move |failure: Failure| OpenError { step, failure };
    let tcp = bounded(limit, async {
        TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(Failure::Io)
    })
    .await
    .map_err(fail(Step::Connect))?;
    tcp.set_nodelay(true)
        .map_err(|e| fail(Step::Connect)(Failure::Io(e)))?;
    progress(Progress::Done(Step::Connect));

    let stream: Box<dyn AsyncTokioStream> = match (&settings.tls, url.tls) {
        (Some(params), TlsMode::Implicit) => {
            let tls = bounded(limit, ImplicitTls::handshake(tcp, params.clone()))
                .await
                .map_err(fail(Step::TlsHandshake))?;
            progress(Progress::Done(Step::TlsHandshake));
            Box::new(Coalesced::new(tls))
        }
        _ => Box::new(Coalesced::new(tcp)),
    };
    let mut conn = bounded(limit, async {
        AsyncSmtpConnection::connect_with_transport(stream, hello)
            .await
            .map_err(Failure::Smtp)
    })
    .await
    .map_err(fail(Step::Ehlo))?;
    progress(Progress::Done(Step::Ehlo));

    if let (Some(params), TlsMode::StartTls | TlsMode::Opportunistic) = (&settings.tls, url.tls) {
        if conn.can_starttls() {
            bounded(limit, async {
                conn.starttls(params.clone(), hello)
                    .await
                    .map_err(Failure::Smtp)
            })
            .await
            .map_err(fail(Step::StartTls))?;
            progress(Progress::Done(Step::StartTls));
        } else if url.tls == TlsMode::StartTls {
            return Err(fail(Step::StartTls)(Failure::NoStartTls));
        } else {
            progress(Progress::ClearText);
        }
    }

    if let Some(credentials) = &settings.credentials {
        bounded(limit, async {
            conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                .await
                .map_err(Failure::Smtp)
        })
        .await
        .map_err(fail(Step::Auth))?;
        progress(Progress::Done(Step::Auth));
    }
    Ok(conn)
}

async fn bounded<T>(
    limit: Duration,
    step: impl Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    tokio::time::timeout(limit, step)
        .await
        .unwrap_or(Err(Failure::Timeout(limit)))
}

/// Why a message was not sent.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No connection could be opened.
    Open(OpenError),
    /// The server refused, or the connection failed during the transaction.
    Smtp(lettre::transport::smtp::Error),
}

/// Up to `size` kept connections to one server.
pub(crate) struct SmtpPool {
    settings: SmtpSettings,
    hello: ClientId,
    size: usize,
    /// Kept connections with when each was last used; the most recent last.
    idle: Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
    /// Set by the shutdown: connections given back are closed.
    closing: AtomicBool,
}

impl SmtpPool {
    /// A pool of at most `size` kept connections.
    pub(crate) fn new(settings: SmtpSettings, size: u32) -> Self {
        Self {
            settings,
            hello: ClientId::default(),
            size: size.max(1) as usize,
            idle: Mutex::new(Vec::new()),
            closing: AtomicBool::new(false),
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<(AsyncSmtpConnection, Instant)>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends one message; `Ok` once the server accepted it. Dropped before
    /// it finishes, it drops its connection, whose state is then unknown.
    pub(crate) async fn send(
        &self,
        envelope: &Envelope,
        formatted: &[u8],
    ) -> Result<(), SendError> {
        let mut conn = self.checkout().await?;
        let sent = conn.send(envelope, formatted).await;
        // lettre gives up on a connection after any failure (QUIT, then
        // closed); one that is not broken can take the next message.
        if !conn.has_broken() {
            self.give_back(conn);
        }
        sent.map(|_response| ()).map_err(SendError::Smtp)
    }

    /// The most recently used kept connection that still lives, or a new one.
    async fn checkout(&self) -> Result<AsyncSmtpConnection, SendError> {
        loop {
            let popped = self.idle().pop();
            let Some((mut conn, used)) = popped else {
                return open(&self.settings, &self.hello, |_| {})
                    .await
                    .map_err(SendError::Open);
            };
            let idle = used.elapsed();
            if idle > MAX_IDLE {
                tokio::spawn(quit(conn, self.settings.timeout));
                continue;
            }
            if idle > CHECK_AFTER_IDLE && !conn.test_connected().await {
                tracing::debug!("a kept SMTP connection had closed; opening another");
                continue;
            }
            return Ok(conn);
        }
    }

    fn give_back(&self, conn: AsyncSmtpConnection) {
        let mut idle = self.idle();
        if self.closing.load(Ordering::Acquire) || idle.len() >= self.size {
            drop(idle);
            tokio::spawn(quit(conn, self.settings.timeout));
        } else {
            idle.push((conn, Instant::now()));
        }
    }

    /// Ends every kept connection with QUIT, within `within`; connections
    /// given back later are closed the same way.
    pub(crate) async fn close(&self, within: Duration) {
        self.closing.store(true, Ordering::Release);
        let conns = std::mem::take(&mut *self.idle());
        let quits = futures::future::join_all(conns.into_iter().map(|(c, _)| quit(c, within)));
        if tokio::time::timeout(within, quits).await.is_err() {
            tracing::debug!("SMTP connections not closed within the shutdown's time; dropped");
        }
    }
}

/// Says QUIT and closes, so that the server sees a clean end.
async fn quit(mut conn: AsyncSmtpConnection, limit: Duration) {
    match tokio::time::timeout(limit, conn.quit()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "QUIT to the SMTP server failed"),
        Err(_) => tracing::debug!("the SMTP server did not answer QUIT"),
    }
}

/// A stream whose writes go out when the client next reads (or closes), in
/// one system call: lettre writes a message's data and its final
/// `<CRLF>.<CRLF>` separately, flushing each, and then waits for the reply.
/// SMTP without PIPELINING always reads after it writes, so holding the
/// bytes until then delays nothing, and saves a send and a segment per
/// message (the server, too, wakes once rather than twice).
#[derive(Debug)]
struct Coalesced<S> {
    inner: S,
    pending: Vec<u8>,
    /// How much of `pending` has been sent.
    sent: usize,
}

/// Pending bytes beyond this are sent without waiting for a read.
const MAX_PENDING: usize = 64 * 1024;

impl<S: AsyncWrite + Unpin> Coalesced<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            pending: Vec::new(),
            sent: 0,
        }
    }

    /// Sends what is pending.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.pending.len() {
            let n = std::task::ready!(
                Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.sent..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.pending.clear();
        self.sent = 0;
        Pin::new(&mut self.inner).poll_flush(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalesced<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesced<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.pending.len() >= MAX_PENDING {
            std::task::ready!(self.poll_drain(cx))?;
        }
        self.pending.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    /// Held until the next read; see the type's documentation.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: AsyncTokioStream> AsyncTokioStream for Coalesced<S> {
    fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.inner.peer_addr()
    }
}

/// Implicit TLS (`smtps://`) on our own socket: lettre's TLS, set up by
/// lettre's stream type on the socket before the greeting is read, then
/// handed back to lettre as a stream of our own.
///
/// lettre marks its stream type "not meant to be public", but it is the
/// only way to run lettre's TLS (its certificate store, `ca_file` and
/// verification) on a socket it did not open; STARTTLS needs no such thing,
/// as lettre upgrades a connection it was given.
#[allow(deprecated)]
#[derive(Debug)]
struct ImplicitTls(tokio_util::compat::Compat<lettre::transport::smtp::client::AsyncNetworkStream>);

#[allow(deprecated)]
impl ImplicitTls {
    async fn handshake(tcp: TcpStream, params: TlsParameters) -> Result<Self, Failure> {
        use lettre::transport::smtp::client::AsyncNetworkStream;
        use tokio_util::compat::FuturesAsyncReadCompatExt as _;
        let mut stream = AsyncNetworkStream::use_existing_tokio1(Box::new(tcp));
        stream.upgrade_tls(params).await.map_err(Failure::Smtp)?;
        Ok(Self(stream.compat()))
    }
}

impl AsyncRead for ImplicitTls {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for ImplicitTls {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl AsyncTokioStream for ImplicitTls {
    fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.0.get_ref().peer_addr()
    }
}
