//! `conveyor dead list|retry|purge Q [ID|--all]`: the dead letter list.

use std::path::Path;

use super::{InputError, UsageError, connect, load_config};
use crate::broker::{Broker, QueueKeys};
use crate::envelope::{Envelope, parse_item};

/// Entries read per round trip when searching or moving.
const PAGE: u64 = 500;

/// Options of `conveyor dead`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub action: Action,
}

/// The dead letter operations.
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// List dead jobs, newest first.
    List {
        /// The queue's name.
        queue: String,
        /// Print each entry as stored, one JSON object per line.
        #[arg(long)]
        json: bool,
        /// Show at most this many.
        #[arg(long, default_value_t = 50)]
        limit: u64,
    },
    /// Move dead jobs back to their queue for a new round of attempts.
    #[command(override_usage = "conveyor dead retry <QUEUE> <ID | --all>")]
    Retry {
        /// The queue's name.
        queue: String,
        /// The job's id (`conveyor dead list` shows them), or --all.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every dead job of the queue.
        #[arg(long)]
        all: bool,
    },
    /// Delete dead jobs for good.
    #[command(override_usage = "conveyor dead purge <QUEUE> <ID | --all>")]
    Purge {
        /// The queue's name.
        queue: String,
        /// The job's id (`conveyor dead list` shows them), or --all.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every dead job of the queue.
        #[arg(long)]
        all: bool,
    },
}

/// Runs one dead letter operation.
pub async fn run(config_path: Option<&Path>, args: Args) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    let queue = match &args.action {
        Action::List { queue, .. } | Action::Retry { queue, .. } | Action::Purge { queue, .. } => {
            queue.clone()
        }
    };
    let keys = QueueKeys::new(&queue, &config.queue_key(&queue), "cli");
    let broker = connect(&config).await?;
    match args.action {
        Action::List { json, limit, .. } => list(&broker, &keys, json, limit).await,
        Action::Retry { id: Some(id), .. } => {
            let entry = find(&broker, &keys, &id).await?;
            broker
                .dead_retry(&keys, &[(entry.clone(), retried_item(&entry))])
                .await?;
            println!("{id}");
            Ok(())
        }
        Action::Retry { all: true, .. } => retry_all(&broker, &keys).await,
        Action::Purge { id: Some(id), .. } => {
            let entry = find(&broker, &keys, &id).await?;
            broker.dead_remove(&keys, &entry).await?;
            println!("{id}");
            Ok(())
        }
        Action::Purge { all: true, .. } => {
            let n = broker.dead_clear(&keys).await?;
            eprintln!("conveyor: purged {n} dead jobs of {}", keys.list);
            Ok(())
        }
        Action::Retry { .. } | Action::Purge { .. } => {
            Err(UsageError("give a job id or --all".into()).into())
        }
    }
}

async fn list(broker: &Broker, keys: &QueueKeys, json: bool, limit: u64) -> anyhow::Result<()> {
    let entries = broker.dead_entries(keys, 0, limit).await?;
    if json {
        for e in &entries {
            println!("{}", String::from_utf8_lossy(e));
        }
        return Ok(());
    }
    if entries.is_empty() {
        eprintln!("conveyor: no dead jobs in {}", keys.list);
        return Ok(());
    }
    println!("{:<24}  {:<32}  {:>7}  error", "died_at", "id", "attempt");
    for e in &entries {
        match parse_item(e, usize::MAX) {
            Ok(p) => {
                let env = p.envelope;
                let error = env.last_error.as_deref().unwrap_or("-").replace('\n', " ");
                println!(
                    "{:<24}  {:<32}  {:>7}  {}",
                    env.died_at.as_deref().unwrap_or("-"),
                    env.id,
                    env.attempt,
                    error
                );
            }
            Err(err) => println!(
                "{:<24}  {:<32}  {:>7}  unreadable entry: {err}",
                "-", "-", "-"
            ),
        }
    }
    Ok(())
}

/// The stored entry of the dead job `id`.
async fn find(broker: &Broker, keys: &QueueKeys, id: &str) -> anyhow::Result<Vec<u8>> {
    let mut start = 0;
    loop {
        let page = broker.dead_entries(keys, start, PAGE).await?;
        if let Some(entry) = page
            .iter()
            .find(|e| parse_item(e, usize::MAX).is_ok_and(|p| p.envelope.id == id))
        {
            return Ok(entry.clone());
        }
        if (page.len() as u64) < PAGE {
            return Err(InputError(format!("no dead job with id {id} in {}", keys.dead)).into());
        }
        start += PAGE;
    }
}

/// What to enqueue for a dead entry: the original bytes of an item that was
/// never a valid job, else the envelope with a fresh set of attempts.
fn retried_item(entry: &[u8]) -> Vec<u8> {
    match parse_item(entry, usize::MAX) {
        Ok(p) => match p.envelope.raw {
            Some(raw) => raw.to_bytes(),
            None => {
                let mut env: Envelope = p.envelope;
                env.attempt = 0;
                env.deliveries = 0;
                env.died_at = None;
                env.to_json().into_bytes()
            }
        },
        Err(_) => entry.to_vec(),
    }
}

/// Retries every entry present when it starts, oldest first; jobs that die
/// again meanwhile are not picked up a second time.
async fn retry_all(broker: &Broker, keys: &QueueKeys) -> anyhow::Result<()> {
    let total = broker.dead_len(keys).await?;
    let (mut seen, mut moved) = (0, 0);
    while seen < total {
        // The oldest entries are at the tail; new deaths arrive at the head.
        let len = broker.dead_len(keys).await?;
        if len == 0 {
            break;
        }
        let want = PAGE.min(total - seen).min(len);
        let page = broker.dead_entries(keys, len - want, want).await?;
        let moves: Vec<_> = page
            .iter()
            .rev()
            .map(|e| (e.clone(), retried_item(e)))
            .collect();
        moved += broker.dead_retry(keys, &moves).await?;
        seen += want;
    }
    eprintln!("conveyor: moved {moved} dead jobs back to {}", keys.list);
    Ok(())
}
