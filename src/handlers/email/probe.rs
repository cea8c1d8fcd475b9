//! The SMTP probe of `conveyor check`: the steps a send takes (connect, TLS,
//! EHLO, STARTTLS, AUTH), one at a time, so that a failure names its step.
//! The password is used, never shown.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use lettre::transport::smtp::authentication::Mechanism;
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::extension::ClientId;

use super::classify::with_tls_hint;
use super::privacy::scrub;
use super::transport::{SmtpSettings, TlsMode};
use crate::config::{ConfigError, EmailConfig, human};
use crate::handlers::CheckError;

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

/// Why the SMTP server cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeError {
    /// `[email]` cannot be used as it is.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A step failed.
    #[error("SMTP check failed at {step} ({server}): {reason}")]
    Failed {
        /// Which step.
        step: Step,
        /// `host:port`.
        server: String,
        /// Why, addresses and password scrubbed.
        reason: String,
        /// The server refused our credentials for good: fix the configuration.
        refused: bool,
    },
}

impl From<ProbeError> for CheckError {
    fn from(e: ProbeError) -> Self {
        match e {
            ProbeError::Config(e) => CheckError::Config(e),
            failed @ ProbeError::Failed { refused: true, .. } => {
                CheckError::Refused(failed.to_string())
            }
            failed => CheckError::Unavailable(failed.to_string()),
        }
    }
}

/// Runs the steps against `[email] smtp_url`, calling `say` with a line per
/// step that passed.
pub(crate) async fn probe(
    email: &EmailConfig,
    mut say: impl FnMut(String),
) -> Result<(), ProbeError> {
    let settings = SmtpSettings::from_config(email)?;
    let url = &settings.url;
    let server = match url.host.contains(':') {
        true => format!("[{}]:{}", url.host, url.port),
        false => format!("{}:{}", url.host, url.port),
    };
    let limit = settings.timeout;
    let fail = |step: Step, reason: String, refused: bool| ProbeError::Failed {
        step,
        server: server.clone(),
        reason: scrub(&reason, email.password.as_ref()),
        refused,
    };

    let tcp = bounded(
        limit,
        tokio::net::TcpStream::connect((url.host.as_str(), url.port)),
    )
    .await
    .map_err(|e| fail(Step::Connect, e, false))?;
    drop(tcp);
    say(format!("smtp: connected to {server}"));

    let implicit = settings
        .tls
        .clone()
        .filter(|_| url.tls == TlsMode::Implicit);
    let hello = ClientId::default();
    let connect = AsyncSmtpConnection::connect_tokio1(
        (url.host.as_str(), url.port),
        Some(limit),
        &hello,
        implicit.clone(),
        None,
    );
    let mut conn = match tokio::time::timeout(limit, connect).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) if e.is_tls() || implicit.is_some() && e.to_string().contains("certificate") => {
            return Err(fail(
                Step::TlsHandshake,
                with_tls_hint(e.to_string()),
                false,
            ));
        }
        Ok(Err(e)) => return Err(fail(Step::Ehlo, e.to_string(), false)),
        Err(_) => {
            let reason = format!(
                "the server accepted the connection but did not greet us within {}",
                human(limit)
            );
            return Err(fail(Step::Ehlo, reason, false));
        }
    };
    if implicit.is_some() {
        say("smtp: TLS handshake ok".into());
    }
    say("smtp: EHLO ok".into());

    if let (Some(params), TlsMode::StartTls | TlsMode::Opportunistic) = (&settings.tls, url.tls) {
        if conn.can_starttls() {
            bounded(limit, conn.starttls(params.clone(), &hello))
                .await
                .map_err(|e| fail(Step::StartTls, with_tls_hint(e), false))?;
            say("smtp: STARTTLS ok".into());
        } else if url.tls == TlsMode::StartTls {
            let reason = "the server does not offer STARTTLS, and tls=starttls requires it";
            return Err(fail(Step::StartTls, reason.into(), false));
        } else {
            say("smtp: STARTTLS not offered; going on without TLS (tls=opportunistic)".into());
        }
    }

    if let Some(credentials) = &settings.credentials {
        let user = url.user.as_deref().unwrap_or_default();
        match tokio::time::timeout(
            limit,
            conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials),
        )
        .await
        {
            Ok(Ok(_response)) => say(format!("smtp: AUTH ok (as {user:?})")),
            Ok(Err(e)) => {
                let reason = format!("as {user:?}: {e}");
                return Err(fail(Step::Auth, reason, e.is_permanent()));
            }
            Err(_) => {
                let reason = format!("no answer within {}", human(limit));
                return Err(fail(Step::Auth, reason, false));
            }
        }
    }

    if let Err(e) = bounded(limit, conn.quit()).await {
        tracing::debug!(error = %e, "QUIT after the SMTP check failed; the check passed regardless");
    }
    Ok(())
}

/// Runs a step under the time limit; the error as text.
async fn bounded<T, E: fmt::Display>(
    limit: Duration,
    step: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, step).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {}", human(limit))),
    }
}
