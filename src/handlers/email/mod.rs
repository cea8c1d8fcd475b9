//! `email`: sends one email per job, over SMTP or into `.eml` files.
//!
//! # Payload
//!
//! `{"to": "a@example.com" | [...], "subject": "...", "text": "...",
//! "html": "...", "from": "...", "cc": ..., "bcc": ..., "reply_to": ...}`,
//! or `"template": "welcome", "vars": {...}` instead of `text`/`html`
//! (`welcome.txt` and/or `welcome.html` in `[email] templates`, see
//! `template.rs`). Only `to` and `subject` are required; with no body the mail
//! is an empty text mail. Unknown fields, wrong types, invalid addresses and
//! missing templates or variables are permanent errors: the job goes to the
//! dead letter list at once with a reason naming the field.
//!
//! # Transports
//!
//! `[email] transport = "file"` (the default) writes `<job id>.eml` into
//! `[email] dir`, `Bcc` header included since the file is the only record
//! of the envelope. `"smtp"` sends through `[email] smtp_url`: `smtp://`
//! plain, `?tls=starttls` or `?tls=opportunistic`, `smtps://` implicit TLS;
//! AUTH as the URL's user with the password from the environment; a pool of
//! up to the queue's `concurrency` connections.
//!
//! # Error classes
//!
//! SMTP 4xx replies, refused connections, TLS failures and timeouts are
//! transient (retried with backoff); 5xx replies are permanent, except the
//! replies that mean *our credentials* were refused (530, 534, 535, 538):
//! those are fixed by the operator, not the job, so the job waits for the fix
//! by retrying. Every send runs under `[email] timeout`, since lettre's own
//! timeout covers only the TCP connect and a server that accepts and then
//! says nothing would hang the job until the queue's timeout.
//!
//! # No duplicate mail on retry
//!
//! Before sending, the handler looks for the job's sent marker
//! `{K}:sent:<job id>`; if it is there, the mail already went out in an
//! earlier run and the job succeeds without sending. Right after the server
//! accepts the message, before returning, the handler sets the marker (with
//! a TTL that outlives the job's retries). So a run that sent the mail but
//! then failed to finish (the job's timeout, a shutdown, an outcome that could
//! not be recorded and a later retry) does not send it twice.
//!
//! What is left, honestly:
//! - A crash (or a lost Redis) between the server's acceptance and the
//!   marker write: the retry sends again. The window is one Redis round
//!   trip; a failed marker write is logged as a warning and the job still
//!   succeeds, since it did send.
//! - An acceptance the client never hears: the server took the message but
//!   the connection broke, or our timeout fired, before its `250` arrived.
//!   SMTP cannot tell this from a refusal; the retry sends again. Each copy
//!   carries the same `Message-ID`, so many mail stores show one.
//! - A raw payload (no envelope) gets its id when taken; if its daemon
//!   crashes, the reaper requeues it and it is taken under a new id, so its
//!   marker is not found. Producers that need the guarantee enqueue
//!   envelopes (as `conveyor enqueue` does), whose id is stable.
//! - The marker expires: a job retried after its TTL sends again.
//!
//! # Privacy
//!
//! Logs name recipients masked (`a***@example.com`). Error strings, which
//! reach the dead letter list and public events, name no address at all and
//! never the body or the password; a server's reply quoted in one has its
//! addresses replaced (see `privacy.rs`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lettre::message::Mailbox;
use sha2::{Digest as _, Sha256};

use super::{CheckError, Handler, HandlerContext, HandlerError, HandlerStore};
use crate::clock::now_rfc3339;
use crate::config::{ConfigError, QueueConfig, Secret};
use crate::duration::human;
use crate::job::Job;

mod classify;
mod message;
mod privacy;
mod probe;
mod settings;
mod smtp;
mod template;
mod transport;

use message::{Body, Content, Request};
use settings::{Settings, Transport};
use smtp::SmtpPool;
use template::Templates;
use transport::SmtpSettings;

/// A marker outlives the job's remaining attempts by this much, for the time
/// a retry may wait behind a backlog or for a reaper.
const MARKER_SLACK: Duration = Duration::from_secs(24 * 3600);

/// No marker lives longer than this, whatever the queue's retry settings.
const MARKER_MAX: Duration = Duration::from_secs(30 * 24 * 3600);

/// Sends the email a job describes.
pub(crate) struct Email {
    deliver: Deliver,
    templates: Option<Templates>,
    from: Mailbox,
    store: HandlerStore,
    /// The queue's list `K`, for its `{K}:sent:<id>` markers.
    queue: QueueConfig,
    timeout: Duration,
    password: Option<Secret>,
    /// `[email]`, for the probe of `conveyor check`.
    config: Settings,
}

enum Deliver {
    File(PathBuf),
    Smtp(Box<SmtpPool>),
}

impl Email {
    /// Builds the handler of a queue from `[email]`; an unusable setting is a
    /// configuration error, found at start-up and by `conveyor check`.
    pub(crate) fn build(ctx: &HandlerContext<'_>) -> Result<Arc<dyn Handler>, ConfigError> {
        // Shared by every email queue, the transport is set in `[email]`.
        ctx.no_options()?;
        let email = &Settings::read(ctx)?;
        let from: Mailbox = email
            .from
            .parse()
            .map_err(|e| ConfigError::Invalid(format!("email.from is not a valid address: {e}")))?;
        // The send timeout must fire before the queue's: it is the one that
        // says why, and a send cut off by the queue's timeout leaves no
        // chance to record that the server already took the mail.
        if ctx.queue_config().timeout <= email.timeout {
            return Err(ConfigError::Invalid(format!(
                "queues.{}.timeout ({}) must exceed email.timeout ({})",
                ctx.queue(),
                human(ctx.queue_config().timeout),
                human(email.timeout)
            )));
        }
        // A templates directory that is not there is a typo in the config,
        // better found now than as a dead letter per templated job.
        if let Some(dir) = email.templates.as_deref().filter(|d| !d.is_dir()) {
            return Err(ConfigError::Invalid(format!(
                "email.templates: {} is not a directory",
                dir.display()
            )));
        }
        let deliver = match email.transport {
            Transport::File => Deliver::File(email.dir.clone()),
            Transport::Smtp => Deliver::Smtp(Box::new(SmtpPool::new(
                SmtpSettings::from_config(email)?,
                ctx.queue_config().concurrency,
            ))),
        };
        Ok(Arc::new(Self {
            deliver,
            templates: email.templates.as_deref().map(Templates::new),
            from,
            store: ctx.store(),
            queue: ctx.queue_config().clone(),
            timeout: email.timeout,
            password: email.password.clone(),
            config: email.clone(),
        }))
    }

    fn content(&self, body: &Body) -> Result<Content, HandlerError> {
        match body {
            Body::Given { text, html } => Ok(Content {
                text: text.clone(),
                html: html.clone(),
            }),
            Body::Template { name, vars } => {
                let rendered = match &self.templates {
                    Some(t) => t.render(name, vars),
                    None => Err(template::TemplateError::NotConfigured(name.clone())),
                };
                rendered.map_err(|e| HandlerError::permanent(e.to_string()))
            }
        }
    }

    /// Hands the message over; `Ok` once it is accepted (or written).
    async fn deliver(&self, job: &Job, message: &lettre::Message) -> Result<(), HandlerError> {
        let formatted = message.formatted();
        match &self.deliver {
            Deliver::File(dir) => transport::write_eml(dir, &safe_id(job.id()), &formatted)
                .await
                .map(|_path| ())
                .map_err(|e| {
                    HandlerError::transient(format!(
                        "cannot write to the outbox {}: {e}",
                        dir.display()
                    ))
                }),
            Deliver::Smtp(pool) => pool
                .send(message.envelope(), &formatted)
                .await
                .map_err(|e| classify::send_error(&e, self.password.as_ref())),
        }
    }
}

#[async_trait]
impl Handler for Email {
    /// The outbox can be created, or the SMTP server holds a conversation
    /// up to AUTH, naming the step that fails.
    async fn check(&self, report: &mut (dyn FnMut(String) + Send)) -> Result<(), CheckError> {
        match &self.deliver {
            // Looked at, not created: a check run as root would leave a
            // directory the service's own user cannot write into.
            Deliver::File(dir) if dir.is_dir() => {
                report(format!("email: ok (file transport into {})", dir.display()));
            }
            Deliver::File(dir) => {
                let parent = dir.ancestors().skip(1).find(|a| a.is_dir());
                match parent {
                    Some(parent) => report(format!(
                        "email: ok (file transport into {}, made by the first email under {})",
                        dir.display(),
                        parent.display()
                    )),
                    None => {
                        return Err(CheckError::Unavailable(format!(
                            "email: the outbox {} has no existing parent directory",
                            dir.display()
                        )));
                    }
                }
            }
            Deliver::Smtp(_) => {
                probe::probe(&self.config, &mut *report).await?;
                report(format!("email: ok ({})", self.config.smtp_url));
            }
        }
        Ok(())
    }

    /// Kept SMTP connections end with QUIT.
    async fn shutdown(&self, within: Duration) {
        if let Deliver::Smtp(pool) = &self.deliver {
            pool.close(within).await;
        }
    }

    async fn handle(&self, job: &Job) -> Result<(), HandlerError> {
        let request = Request::parse(job.payload().get())
            .map_err(|e| HandlerError::permanent(format!("malformed email payload: {e}")))?;
        let content = self.content(&request.body)?;
        let sender = request.from.as_ref().unwrap_or(&self.from);
        let message_id = format!("<{}.conveyor@{}>", safe_id(job.id()), sender.email.domain());
        let keep_bcc = matches!(self.deliver, Deliver::File(_));
        let message = request
            .build(&self.from, content, message_id, keep_bcc)
            .map_err(|e| {
                HandlerError::permanent(format!(
                    "cannot build the message: {}",
                    privacy::scrub(&e.to_string(), None)
                ))
            })?;

        // A raw payload's id was made up when it was taken: no earlier run
        // can have left a marker under it (a shutdown puts such a job back
        // wrapped in an envelope, and the next run looks).
        let already_sent = !job.was_raw()
            && self
                .store
                .exists(&sent_marker(job.id()))
                .await
                .map_err(|e| {
                    HandlerError::transient(format!("cannot check whether it was sent before: {e}"))
                })?;
        if already_sent {
            tracing::info!("already accepted by the mail server in an earlier run; not sent again");
            return Ok(());
        }

        match tokio::time::timeout(self.timeout, self.deliver(job, &message)).await {
            Ok(result) => result?,
            Err(_elapsed) => {
                return Err(HandlerError::transient(format!(
                    "email send timed out after {}",
                    human(self.timeout)
                )));
            }
        }

        let ttl = marker_ttl(job, &self.queue);
        let marked = self
            .store
            .set(&sent_marker(job.id()), now_rfc3339().as_bytes(), Some(ttl))
            .await;
        if let Err(e) = marked {
            tracing::warn!(error = %e, "email sent, but its sent marker was not written: a retry of this job would send it again");
        }
        tracing::info!(
            to = %privacy::mask_all(&request.to),
            recipients = request.recipients().count(),
            "email sent"
        );
        Ok(())
    }
}

/// The job id as a file name and `Message-ID` part: as is when it is made of
/// safe characters (UUIDs and the like), else its SHA-256 in hex, so that no
/// id can name a path outside the outbox or break a header.
fn safe_id(id: &str) -> String {
    let safe = id.len() <= 100
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if safe {
        id.to_owned()
    } else {
        let digest = Sha256::digest(id.as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The name of job `id`'s sent marker, `{K}:sent:<id>`: set (with a TTL)
/// once its email was accepted by the mail server, so a retry of the job
/// does not send it again. Its value is when, for a person reading Redis.
fn sent_marker(id: &str) -> String {
    format!("sent:{id}")
}

/// How long a job's sent marker must live: its remaining attempts, each at
/// most its timeout plus the longest backoff, and a day for the retry to wait
/// behind a backlog or a reaper; at most [`MARKER_MAX`].
fn marker_ttl(job: &Job, queue: &QueueConfig) -> Duration {
    let max_attempts = job.max_attempts(queue.max_attempts);
    let remaining = max_attempts.saturating_sub(job.attempt()).saturating_add(1);
    let timeout = job
        .envelope()
        .timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(queue.timeout);
    let per_attempt = timeout.saturating_add(queue.backoff.max);
    per_attempt
        .saturating_mul(remaining)
        .saturating_add(MARKER_SLACK)
        .min(MARKER_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::parse_item;

    fn job(item: &str) -> Job {
        let parsed = parse_item(item.as_bytes(), 1 << 20).expect("parses");
        Job::new("q".into(), item.as_bytes().to_vec(), parsed)
    }

    fn queue() -> QueueConfig {
        let c =
            crate::config::Config::from_toml("[queues.q]\nhandler = \"email\"\n").expect("toml");
        c.queues["q"].clone()
    }

    /// Builds the `email` handler of queue `q` from `toml`; the error text.
    /// Needs a runtime (the broker's pool starts a reaper task), not Redis.
    fn build_error(toml: &str) -> String {
        let config = crate::config::Config::from_toml(toml).expect("toml");
        let broker = crate::broker::Broker::new(&config.redis).expect("a broker needs no I/O");
        match crate::handlers::Registry::builtin().build_all_with(&config, &broker) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[tokio::test]
    async fn unusable_settings_are_configuration_errors() {
        let q = "[queues.q]\nhandler = \"email\"\n";
        assert_eq!(build_error(q), "", "the defaults work");
        let err = build_error(&format!("[email]\nfrom = \"nobody\"\n{q}"));
        assert!(err.contains("email.from"), "{err}");
        let err = build_error(&format!("[email]\ntimeout = \"5m\"\n{q}"));
        assert!(
            err.contains("queues.q.timeout (5m) must exceed email.timeout (5m)"),
            "{err}"
        );
        let smtp = "[email]\ntransport = \"smtp\"\nsmtp_url";
        let err = build_error(&format!("{smtp} = \"smtp://u@h?tls=starttls\"\n{q}"));
        assert!(err.contains("no password is set"), "{err}");
        let err = build_error(&format!("{smtp} = \"smtp://h?tls=startls\"\n{q}"));
        assert!(
            err.contains("email.smtp_url") && err.contains("startls"),
            "{err}"
        );
        let err = build_error(&format!(
            "{smtp} = \"smtps://h\"\nca_file = \"/nonexistent/ca.pem\"\n{q}"
        ));
        assert!(err.contains("cannot read email.ca_file"), "{err}");
        let err = build_error(&format!("[email]\ntemplates = \"/nonexistent/tpl\"\n{q}"));
        assert!(
            err.contains("email.templates: /nonexistent/tpl is not a directory"),
            "{err}"
        );
    }

    #[test]
    fn safe_ids_pass_and_others_are_hashed() {
        assert_eq!(safe_id("0192abc-def_1.2"), "0192abc-def_1.2");
        for unsafe_id in ["../x", "a/b", ".hidden", "a b", "é"] {
            let s = safe_id(unsafe_id);
            assert_eq!(s.len(), 64, "{unsafe_id}");
            assert!(s.chars().all(|c| c.is_ascii_hexdigit()));
        }
    }

    #[test]
    fn markers_outlive_the_remaining_attempts() {
        let q = queue(); // 25 attempts, 5m timeout, 1h max backoff
        let first = marker_ttl(&job(r#"{"to":"a@b.c"}"#), &q);
        assert_eq!(first, Duration::from_secs(25 * 3900) + MARKER_SLACK);
        let last = marker_ttl(&job(r#"{"id":"j","payload":{},"attempt":24}"#), &q);
        assert_eq!(last, Duration::from_secs(3900) + MARKER_SLACK);
        let huge = job(r#"{"id":"j","payload":{},"attempt":0,"max_attempts":4000000000}"#);
        assert_eq!(marker_ttl(&huge, &q), MARKER_MAX);
    }
}
