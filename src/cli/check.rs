//! `conveyor check`: validate the configuration, build every queue's handler,
//! reach Redis, and, when a queue sends email over SMTP, hold a conversation
//! with the SMTP server up to AUTH, saying which step failed.

use std::path::Path;

use super::{connect, load_config};
use crate::broker::Broker;
use crate::config::{Config, EmailTransport};
use crate::handlers::email::probe;
use crate::handlers::{HandlerContext, Registry};

/// Options of `conveyor check`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the checks in order; the first failure decides the exit code.
pub async fn run(config_path: Option<&Path>, _args: Args) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    let registry = Registry::builtin();
    let broker = Broker::new(&config.redis)?;
    for (name, q) in &config.queues {
        registry.build(&HandlerContext {
            queue: name,
            queue_config: q,
            config: &config,
            broker: &broker,
        })?;
    }
    println!(
        "config: ok ({} queue{}: {})",
        config.queues.len(),
        if config.queues.len() == 1 { "" } else { "s" },
        config.queues.keys().cloned().collect::<Vec<_>>().join(", ")
    );
    connect(&config).await?;
    println!("redis: ok ({})", broker.url());
    check_email(&config).await
}

/// The SMTP server is checked only when a queue uses the `email` handler:
/// a daemon that sends no mail must not fail its check because of a mail
/// server it never talks to.
async fn check_email(config: &Config) -> anyhow::Result<()> {
    let email = &config.email;
    if !config.queues.values().any(|q| q.handler == "email") {
        return Ok(());
    }
    match email.transport {
        EmailTransport::File => {
            std::fs::create_dir_all(&email.dir).map_err(|e| {
                anyhow::anyhow!(
                    "email: cannot create the outbox {}: {e}",
                    email.dir.display()
                )
            })?;
            println!("email: ok (file transport into {})", email.dir.display());
        }
        EmailTransport::Smtp => {
            probe::probe(email, |line| println!("{line}")).await?;
            println!("email: ok ({})", email.smtp_url);
        }
    }
    Ok(())
}
