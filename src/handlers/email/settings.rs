//! `[email]`: the email handler's node-wide settings, shared by every email
//! queue: the transport, the sender, the templates. Read by the handler
//! from its table of the configuration (`HandlerContext::settings`), with
//! the environment's overrides: `CONVEYOR_SMTP_URL`, and the password from
//! `CONVEYOR_SMTP_PASSWORD`, `CONVEYOR_SMTP_PASSWORD_FILE` or the systemd
//! credential `smtp_password`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::{ConfigError, MaskedUrl, Secret, bounds, secret};
use crate::handlers::HandlerContext;

/// `email.timeout`: one send, connection and all.
pub(crate) const TIMEOUT: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(3600);

/// How the `email` handler delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Transport {
    /// Write `.eml` files into `dir`; the default, so a new user sees mail at once.
    File,
    /// Send through the SMTP server at `smtp_url`.
    Smtp,
}

/// `[email]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Settings {
    /// `file` or `smtp`.
    #[serde(default = "default_transport")]
    pub(crate) transport: Transport,
    /// Directory of the file transport, relative to the config file's directory.
    #[serde(default = "default_dir")]
    pub(crate) dir: PathBuf,
    /// `smtp://host:port` (plain), `smtp://...?tls=starttls`, `smtps://`
    /// (implicit TLS). `CONVEYOR_SMTP_URL` overrides it. A password here is
    /// refused: use the environment.
    #[serde(default = "default_smtp_url")]
    pub(crate) smtp_url: MaskedUrl,
    /// Sender used when a job names none.
    #[serde(default = "default_from")]
    pub(crate) from: String,
    /// Directory of templates, relative to the config file's directory.
    #[serde(default)]
    pub(crate) templates: Option<PathBuf>,
    /// Upper bound on one send, connection and all: 100ms to 1h
    /// ([`TIMEOUT`]).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub(crate) timeout: Duration,
    /// A PEM file of root certificates to trust for SMTP over TLS, besides
    /// the built-in web roots: for a relay with a private CA (and for
    /// tests). Relative to the config file's directory.
    #[serde(default)]
    pub(crate) ca_file: Option<PathBuf>,
    /// The SMTP password: from the environment or a credential, never the file.
    #[serde(skip)]
    pub(crate) password: Option<Secret>,
}

fn default_transport() -> Transport {
    Transport::File
}
fn default_dir() -> PathBuf {
    PathBuf::from("outbox")
}
fn default_smtp_url() -> MaskedUrl {
    MaskedUrl::new("smtp://127.0.0.1:2525")
}
fn default_from() -> String {
    "conveyor <noreply@localhost>".into()
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

impl Settings {
    /// `[email]` of the configuration, with the environment's overrides,
    /// its paths made absolute, and checked.
    pub(crate) fn read(ctx: &HandlerContext<'_>) -> Result<Self, ConfigError> {
        let mut settings: Self = ctx.settings_of("email")?;
        settings.resolve(&ctx.config().dir, &|name| ctx.env(name))?;
        Ok(settings)
    }

    /// Makes the paths absolute (relative to `base`, the configuration's
    /// directory), applies the environment (`env` looks a variable up) and
    /// checks the result.
    fn resolve(
        &mut self,
        base: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        self.dir = base.join(&self.dir);
        self.templates = self.templates.as_ref().map(|t| base.join(t));
        self.ca_file = self.ca_file.as_ref().map(|f| base.join(f));
        if let Some(url) = env("CONVEYOR_SMTP_URL").filter(|s| !s.is_empty()) {
            self.smtp_url = MaskedUrl::new(url);
        }
        if self.smtp_url.has_password() {
            return Err(ConfigError::Invalid(
                "email.smtp_url must not carry a password: set CONVEYOR_SMTP_PASSWORD \
                 or CONVEYOR_SMTP_PASSWORD_FILE instead"
                    .into(),
            ));
        }
        self.password = secret(env, "CONVEYOR_SMTP_PASSWORD", "smtp_password")?;
        bounds::duration("email.timeout", self.timeout, &TIMEOUT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
        let mut settings: Settings = toml::from_str(text).expect("parses");
        settings.resolve(Path::new("/etc/conveyor"), env)?;
        Ok(settings)
    }

    #[test]
    fn the_defaults_write_files_into_the_outbox_beside_the_configuration() {
        let s = read("", &|_| None).expect("valid");
        assert_eq!(s.transport, Transport::File);
        assert_eq!(s.dir, Path::new("/etc/conveyor/outbox"));
        assert_eq!(s.timeout, Duration::from_secs(30));
        assert_eq!(s.from, "conveyor <noreply@localhost>");
        assert!(s.password.is_none());
    }

    #[test]
    fn paths_are_relative_to_the_configuration() {
        let s = read(
            "dir = \"out\"\ntemplates = \"tpl\"\nca_file = \"/etc/ca.pem\"\n",
            &|_| None,
        )
        .expect("valid");
        assert_eq!(s.dir, Path::new("/etc/conveyor/out"));
        assert_eq!(s.templates.as_deref(), Some(Path::new("/etc/conveyor/tpl")));
        assert_eq!(s.ca_file.as_deref(), Some(Path::new("/etc/ca.pem")));
    }

    #[test]
    fn the_environment_overrides_the_url_and_gives_the_password() {
        let s = read("smtp_url = \"smtp://file:25\"\n", &|k| match k {
            "CONVEYOR_SMTP_URL" => Some("smtps://mail:465".into()),
            "CONVEYOR_SMTP_PASSWORD" => Some("hunter2".into()),
            _ => None,
        })
        .expect("valid");
        assert_eq!(s.smtp_url.expose(), "smtps://mail:465");
        assert_eq!(s.password.as_ref().map(Secret::expose), Some("hunter2"));
    }

    #[test]
    fn a_password_in_the_url_and_an_unbounded_timeout_are_refused() {
        let err = read("smtp_url = \"smtp://u:pw@h:25\"\n", &|_| None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("CONVEYOR_SMTP_PASSWORD") && !err.contains("pw@"),
            "{err}"
        );
        let err = read("timeout = \"500000000000y\"\n", &|_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("email.timeout must be between"), "{err}");
    }
}
