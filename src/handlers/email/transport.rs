//! Where messages go: `.eml` files in a directory, or an SMTP server through
//! a pool of connections.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::{AsyncSmtpTransportBuilder, PoolConfig};
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Tokio1Executor};

use crate::config::{ConfigError, EmailConfig};

/// How the connection to the SMTP server is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsMode {
    /// `smtp://`: plain text, for a relay on localhost.
    None,
    /// `smtp://...?tls=starttls`: STARTTLS, refusing a server without it.
    StartTls,
    /// `smtp://...?tls=opportunistic`: STARTTLS when the server offers it.
    Opportunistic,
    /// `smtps://`: TLS from the first byte.
    Implicit,
}

/// `[email] smtp_url` taken apart. The password is never in the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SmtpUrl {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls: TlsMode,
    pub(crate) user: Option<String>,
}

impl SmtpUrl {
    /// Parses `smtp://[user@]host[:port][?tls=starttls|opportunistic]` or
    /// `smtps://[user@]host[:port]`. Anything else is refused, so that a
    /// typo (`?tls=startls`) cannot quietly send in clear text.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let url = url::Url::parse(text).map_err(|e| e.to_string())?;
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or("no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let mut tls_param = None;
        for (key, value) in url.query_pairs() {
            match key.as_ref() {
                "tls" if tls_param.is_none() => tls_param = Some(value.into_owned()),
                other => return Err(format!("unknown or repeated query parameter {other:?}")),
            }
        }
        let (tls, default_port) = match (url.scheme(), tls_param.as_deref()) {
            ("smtp", None) => (TlsMode::None, 25),
            ("smtp", Some("starttls" | "required")) => (TlsMode::StartTls, 587),
            ("smtp", Some("opportunistic")) => (TlsMode::Opportunistic, 587),
            ("smtps", None) => (TlsMode::Implicit, 465),
            ("smtp" | "smtps", Some(other)) => {
                return Err(format!(
                    "tls={other:?} is not one of starttls, opportunistic (smtps:// takes none)"
                ));
            }
            (scheme, _) => return Err(format!("scheme {scheme:?} is not smtp or smtps")),
        };
        if !matches!(url.path(), "" | "/") || url.fragment().is_some() {
            return Err("a path or fragment has no meaning here".into());
        }
        let user = match url.username() {
            "" => None,
            u => Some(
                percent_encoding::percent_decode_str(u)
                    .decode_utf8()
                    .map_err(|_| "the user name is not valid percent-encoded UTF-8")?
                    .into_owned(),
            ),
        };
        Ok(Self {
            host,
            port: url.port().unwrap_or(default_port),
            tls,
            user,
        })
    }

    /// The TLS parameters for this host, trusting `ca_file` besides the
    /// built-in roots.
    pub(crate) fn tls_parameters(&self, ca_file: Option<&Path>) -> Result<TlsParameters, String> {
        let mut builder = TlsParameters::builder(self.host.clone());
        if let Some(path) = ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read email.ca_file {}: {e}", path.display()))?;
            let cert = Certificate::from_pem(&pem).map_err(|e| {
                format!(
                    "email.ca_file {} is not a PEM certificate: {e}",
                    path.display()
                )
            })?;
            builder = builder.add_root_certificate(cert);
        }
        builder
            .build_rustls()
            .map_err(|e| format!("TLS setup: {e}"))
    }
}

/// The SMTP settings a transport or a check needs, validated.
pub(crate) struct SmtpSettings {
    pub(crate) url: SmtpUrl,
    pub(crate) tls: Option<TlsParameters>,
    pub(crate) credentials: Option<Credentials>,
    pub(crate) timeout: Duration,
}

impl SmtpSettings {
    /// Reads `[email]`: the URL, the CA file, and the password when the URL
    /// names a user.
    pub(crate) fn from_config(email: &EmailConfig) -> Result<Self, ConfigError> {
        let invalid = |m: String| ConfigError::Invalid(format!("email.smtp_url: {m}"));
        let url = SmtpUrl::parse(email.smtp_url.expose()).map_err(invalid)?;
        let tls = match url.tls {
            TlsMode::None => None,
            _ => Some(
                url.tls_parameters(email.ca_file.as_deref())
                    .map_err(ConfigError::Invalid)?,
            ),
        };
        let credentials = match (&url.user, &email.password) {
            (None, _) => None,
            (Some(user), Some(pw)) => Some(Credentials::new(user.clone(), pw.expose().to_owned())),
            (Some(user), None) => {
                return Err(ConfigError::Invalid(format!(
                    "email.smtp_url names the user {user:?} but no password is set: set \
                     CONVEYOR_SMTP_PASSWORD, CONVEYOR_SMTP_PASSWORD_FILE or the systemd \
                     credential smtp_password"
                )));
            }
        };
        Ok(Self {
            url,
            tls,
            credentials,
            timeout: email.timeout,
        })
    }

    fn transport_builder(&self, pool_size: u32) -> AsyncSmtpTransportBuilder {
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(self.url.host.clone())
            .port(self.url.port)
            // Bounds the TCP connect only; the caller bounds the whole send.
            .timeout(Some(self.timeout))
            .pool_config(PoolConfig::new().max_size(pool_size.max(1)));
        b = match (&self.tls, self.url.tls) {
            (Some(p), TlsMode::StartTls) => b.tls(Tls::Required(p.clone())),
            (Some(p), TlsMode::Opportunistic) => b.tls(Tls::Opportunistic(p.clone())),
            (Some(p), TlsMode::Implicit) => b.tls(Tls::Wrapper(p.clone())),
            _ => b.tls(Tls::None),
        };
        if let Some(c) = &self.credentials {
            b = b.credentials(c.clone());
        }
        b
    }
}

/// A pool of SMTP connections that is thrown away when a send is cancelled.
///
/// lettre returns a connection to its pool when the future using it is
/// dropped, even halfway through a transaction. The next send on it would
/// read the replies meant for the abandoned one, and could take a refusal
/// for an acceptance. So a send that does not finish (our timeout, the job's
/// timeout, a shutdown) marks its pool as poisoned, and the next send starts
/// a fresh pool; the old one closes its connections when its last user is
/// done with it.
pub(crate) struct SmtpPool {
    builder: AsyncSmtpTransportBuilder,
    /// The pool in use and its generation (from 1).
    current: Mutex<(u64, AsyncSmtpTransport<Tokio1Executor>)>,
    /// The newest generation that must not be used again (0: none). Only
    /// ever raised, so a late cancellation in an old pool cannot hide one in
    /// the current pool.
    poisoned: AtomicU64,
}

impl SmtpPool {
    /// A pool of at most `size` connections.
    pub(crate) fn new(settings: &SmtpSettings, size: u32) -> Self {
        let builder = settings.transport_builder(size);
        let transport = builder.clone().build();
        Self {
            builder,
            current: Mutex::new((1, transport)),
            poisoned: AtomicU64::new(0),
        }
    }

    /// Sends one message; `Ok` once the server accepted it.
    pub(crate) async fn send(
        &self,
        envelope: &Envelope,
        formatted: &[u8],
    ) -> Result<(), lettre::transport::smtp::Error> {
        let (generation, transport) = {
            let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
            if self.poisoned.load(Ordering::Acquire) >= current.0 {
                current.0 += 1;
                current.1 = self.builder.clone().build();
                tracing::debug!("started a fresh SMTP connection pool after an unfinished send");
            }
            (current.0, current.1.clone())
        };
        let mut guard = PoisonOnDrop {
            poisoned: &self.poisoned,
            generation,
            armed: true,
        };
        let result = transport.send_raw(envelope, formatted).await;
        guard.armed = false;
        result.map(|_response| ())
    }
}

struct PoisonOnDrop<'a> {
    poisoned: &'a AtomicU64,
    generation: u64,
    armed: bool,
}

impl Drop for PoisonOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.poisoned.fetch_max(self.generation, Ordering::AcqRel);
        }
    }
}

/// Writes `<name>.eml` into `dir`, through a temporary file and a rename so
/// that a reader never sees half a message, and a retry of the same job
/// replaces its file instead of adding one.
pub(crate) async fn write_eml(
    dir: &Path,
    name: &str,
    formatted: &[u8],
) -> std::io::Result<PathBuf> {
    tokio::fs::create_dir_all(dir).await?;
    let path = dir.join(format!("{name}.eml"));
    let tmp = dir.join(format!(".{name}.eml.tmp"));
    tokio::fs::write(&tmp, formatted).await?;
    tokio::fs::rename(&tmp, &path).await?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<SmtpUrl, String> {
        SmtpUrl::parse(s)
    }

    #[test]
    fn urls_pick_tls_and_default_ports() {
        let u = parse("smtp://127.0.0.1:2525").expect("plain");
        assert_eq!(
            (u.host.as_str(), u.port, u.tls, u.user),
            ("127.0.0.1", 2525, TlsMode::None, None)
        );
        let u = parse("smtp://mailer@mail.example.com?tls=starttls").expect("starttls");
        assert_eq!(
            (u.port, u.tls, u.user.as_deref()),
            (587, TlsMode::StartTls, Some("mailer"))
        );
        assert_eq!(
            parse("smtp://h?tls=opportunistic").expect("opp").tls,
            TlsMode::Opportunistic
        );
        let u = parse("smtps://a%40b@h").expect("implicit");
        assert_eq!(
            (u.port, u.tls, u.user.as_deref()),
            (465, TlsMode::Implicit, Some("a@b"))
        );
        assert_eq!(parse("smtp://h").expect("plain").port, 25);
        assert_eq!(parse("smtp://[::1]:25").expect("ipv6").host, "::1");
    }

    #[test]
    fn unclear_urls_are_refused() {
        for bad in [
            "smtp://h?tls=startls",
            "smtps://h?tls=starttls",
            "http://h",
            "smtp://h?tls=starttls&tls=opportunistic",
            "smtp://h?timeout=5",
            "smtp://h/path",
            "smtp://",
            "not a url",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
