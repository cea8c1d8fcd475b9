//! Where messages go: `.eml` files in a directory, or an SMTP server (its
//! URL and settings here; its connections in `smtp.rs`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, TlsParameters};

use super::settings::Settings;
use crate::config::ConfigError;

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
    pub(crate) fn from_config(email: &Settings) -> Result<Self, ConfigError> {
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
