//! Running queue `mail` of the daemon against a test SMTP server.

use std::time::Duration;

use conveyor::config::Config;
use redis::AsyncCommands as _;
use redis::aio::MultiplexedConnection;

use super::{SecureSmtp, SmtpServer, TestCa};
use crate::common::{Redis, config, dead, llen, wait_until};

pub const Q: &str = "jobs:mail";
pub const DEAD: &str = "{jobs:mail}:dead";
pub const WAIT: Duration = Duration::from_secs(20);

/// A daemon config sending queue `mail` through `url`: 3 attempts, fast retries.
pub fn smtp_config(redis: &Redis, url: &str, email_extra: &str) -> Config {
    config(
        redis,
        &format!(
            "[email]\ntransport = \"smtp\"\nsmtp_url = \"{url}\"\n\
             from = \"Conveyor <noreply@example.com>\"\ntimeout = \"5s\"\n{email_extra}\n\
             [queues.mail]\nhandler = \"email\"\nconcurrency = 2\nmax_attempts = 3\n\
             backoff = {{ base = \"50ms\", max = \"100ms\" }}\ntimeout = \"30s\"\n"
        ),
    )
}

/// Sets `[email] key = value` in a configuration made by [`smtp_config`].
pub fn email_setting(cfg: &mut Config, key: &str, value: &str) {
    cfg.handlers
        .get_mut("email")
        .expect("[email]")
        .insert(key.to_owned(), value.into());
}

/// [`smtp_config`] trusting the test CA.
pub fn tls_config(redis: &Redis, url: &str, ca: &TestCa) -> Config {
    smtp_config(redis, url, &format!("ca_file = \"{}\"", ca.ca.display()))
}

/// [`tls_config`] for a [`SecureSmtp`] server, logging in with `password`.
pub fn secure_config(redis: &Redis, smtp: &SecureSmtp, password: &str) -> Config {
    let mut cfg = tls_config(redis, &smtp.url(), &smtp.ca);
    cfg.env_overrides
        .insert("CONVEYOR_SMTP_PASSWORD".into(), password.into());
    cfg
}

/// Enqueues a raw payload on queue `mail`.
pub async fn push(conn: &mut MultiplexedConnection, payload: serde_json::Value) {
    let _: () = conn.rpush(Q, payload.to_string()).await.expect("RPUSH");
}

/// Waits until the server has accepted `n` messages.
pub async fn wait_accepted(server: &SmtpServer, n: usize) {
    wait_until(&format!("{n} message(s) accepted"), WAIT, || async {
        server.accepted().len() >= n
    })
    .await;
}

/// Waits for the queue's one dead job and returns its entry.
pub async fn wait_dead(conn: &MultiplexedConnection) -> serde_json::Value {
    wait_until("the job is dead", WAIT, || {
        let mut c = conn.clone();
        async move { llen(&mut c, DEAD).await == 1 }
    })
    .await;
    dead(&mut conn.clone(), Q).await.remove(0)
}
