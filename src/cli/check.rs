//! `conveyor check`: validate the configuration, build every queue's handler,
//! reach Redis and name the server found there, and ask each handler to check what it depends on (the
//! `email` handler holds a conversation with its SMTP server up to AUTH,
//! saying which step failed).

use std::path::Path;

use super::{connect, load_config};
use crate::handlers::Registry;

/// Options of `conveyor check`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {}

/// Runs the checks in order; the first failure decides the exit code.
pub(crate) async fn run(
    config_path: Option<&Path>,
    _args: Args,
    registry: &Registry,
) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    if config.queues.is_empty() {
        return Err(crate::config::ConfigError::Invalid(
            "no queues configured: add a [queues.<name>] table (the daemon would not start)".into(),
        )
        .into());
    }
    let handlers = registry.build_all(&config)?;
    println!(
        "config: ok ({} queue{}: {})",
        config.queues.len(),
        if config.queues.len() == 1 { "" } else { "s" },
        config.queues.keys().cloned().collect::<Vec<_>>().join(", ")
    );
    if !config.schedules.is_empty() {
        println!(
            "schedules: ok ({})",
            config
                .schedules
                .iter()
                .filter_map(|(name, s)| s
                    .spec()
                    .ok()
                    .map(|spec| format!("{name}: {}", spec.describe())))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(listen) = config.web.listen {
        let who = match config.web.token {
            Some(_) => "a token is asked for",
            None => "no token: loopback only",
        };
        println!("web: ok (http://{listen}/, {who})");
    }
    if let Some(url) = config.tracing.traces_url() {
        println!(
            "tracing: ok (spans to {url} as {}, sample ratio {})",
            config.tracing.service_name, config.tracing.sample_ratio
        );
    }
    let broker = connect(&config).await?;
    match broker.server().await? {
        Some(server) => println!("redis: ok ({}, {server})", broker.url()),
        None => println!("redis: ok ({}, server unknown: INFO refused)", broker.url()),
    }
    if let Some(address) = broker.master_address().await {
        println!("redis: the sentinels' master is at {address}");
    }
    match broker.maxmemory_policy().await {
        Some(policy) => match crate::broker::eviction_risk(&policy) {
            Some(risk) => println!("redis: warning: {risk}"),
            None => println!("redis: maxmemory-policy noeviction: ok"),
        },
        None => {
            println!("redis: maxmemory-policy unknown (CONFIG GET refused); noeviction is needed")
        }
    }
    let mut refused = Vec::new();
    for name in config.queues.keys() {
        let list = config.queue_key(name);
        for refusal in broker
            .refused_commands(&list, &config.events.channel)
            .await?
        {
            println!("redis: queue {name}: refused {refusal}");
            refused.push(refusal);
        }
    }
    if !refused.is_empty() {
        return Err(crate::broker::BrokerError::Denied {
            url: broker.url(),
            reason: format!(
                "{} command(s) the daemon needs; \"Least privilege\" in docs/redis.md gives \
                 a user line that is enough",
                refused.len()
            ),
        }
        .into());
    }
    println!("redis: permissions: ok (every command the daemon runs, on each queue's keys)");
    for handler in &handlers {
        handler.check(&mut |line| println!("{line}")).await?;
    }
    Ok(())
}
