//! The SMTP probe of `conveyor check`: the steps a send takes (connect, TLS,
//! EHLO, STARTTLS, AUTH), one at a time, so that a failure names its step.
//! The password is used, never shown.

use lettre::transport::smtp::extension::ClientId;

use super::classify::open_reason;
use super::privacy::scrub;
use super::settings::Settings;
use super::smtp::{Failure, Progress, Step, open};
use super::transport::SmtpSettings;
use crate::config::ConfigError;
use crate::duration::human;
use crate::handlers::CheckError;

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
/// step that passed, and ends the session with QUIT.
pub(crate) async fn probe(email: &Settings, mut say: impl FnMut(String)) -> Result<(), ProbeError> {
    let settings = SmtpSettings::from_config(email)?;
    let url = &settings.url;
    let server = match url.host.contains(':') {
        true => format!("[{}]:{}", url.host, url.port),
        false => format!("{}:{}", url.host, url.port),
    };
    let user = url.user.as_deref().unwrap_or_default();
    let mut conn = open(&settings, &ClientId::default(), |progress| {
        say(match progress {
            Progress::Done(Step::Connect) => format!("smtp: connected to {server}"),
            Progress::Done(Step::TlsHandshake) => "smtp: TLS handshake ok".into(),
            Progress::Done(Step::Ehlo) => "smtp: EHLO ok".into(),
            Progress::Done(Step::StartTls) => "smtp: STARTTLS ok".into(),
            Progress::Done(Step::Auth) => format!("smtp: AUTH ok (as {user:?})"),
            Progress::ClearText => {
                "smtp: STARTTLS not offered; going on without TLS (tls=opportunistic)".into()
            }
        })
    })
    .await
    .map_err(|e| {
        let (reason, refused) = match (&e.step, &e.failure) {
            (Step::Ehlo, Failure::Timeout(limit)) => (
                format!(
                    "the server accepted the connection but did not greet us within {}",
                    human(*limit)
                ),
                false,
            ),
            (Step::Auth, Failure::Smtp(smtp)) => (
                format!(
                    "as {user:?}: {}",
                    scrub(&smtp.to_string(), email.password.as_ref())
                ),
                smtp.is_permanent(),
            ),
            _ => (open_reason(&e, email.password.as_ref()), false),
        };
        ProbeError::Failed {
            step: e.step,
            server: server.clone(),
            reason,
            refused,
        }
    })?;
    match tokio::time::timeout(settings.timeout, conn.quit()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "QUIT after the SMTP check failed; the check passed regardless")
        }
        Err(_) => {
            tracing::debug!("no answer to QUIT after the SMTP check; the check passed regardless")
        }
    }
    Ok(())
}
