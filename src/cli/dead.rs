//! `conveyor dead list|retry|purge Q [ID|--all]`: the dead letter list.

use std::path::Path;

use super::{UsageError, connect, load_config};
use crate::api::{Client, DeadJob};
use crate::broker::QueueKeys;
use crate::logging::escaped;

/// Options of `conveyor dead`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// What to do.
    #[command(subcommand)]
    pub(crate) action: Action,
}

/// The dead letter operations.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Action {
    /// List dead jobs, newest first: of one queue, or of every configured
    /// queue.
    List {
        /// The queue's name; without it, every configured queue's.
        #[arg(add = super::completions::queue_names())]
        queue: Option<String>,
        /// Print each entry as stored, one JSON object per line (every
        /// queue's: each job's fields with its queue's name).
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
        #[arg(add = super::completions::queue_names())]
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
        #[arg(add = super::completions::queue_names())]
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
pub(crate) async fn run(config_path: Option<&Path>, args: Args) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    let client = Client::with_broker(connect(&config).await?, &config, "cli");
    let key = |queue: &str| config.queue_key(queue);
    match args.action {
        Action::List {
            queue: Some(queue),
            json,
            limit,
        } => list(&client, &queue, &key(&queue), json, limit).await,
        Action::List {
            queue: None,
            json,
            limit,
        } => {
            let queues: Vec<&String> = config.queues.keys().collect();
            list_all(&client, &queues, json, limit).await
        }
        Action::Retry {
            queue,
            id: Some(id),
            ..
        } => {
            client.retry_dead(&queue, &id).await?;
            println!("{id}");
            Ok(())
        }
        Action::Retry {
            queue, all: true, ..
        } => {
            let done = client.retry_all_dead_counted(&queue).await?;
            eprintln!(
                "conveyor: moved {} dead jobs back to {}",
                done.moved,
                key(&queue)
            );
            if done.kept > 0 {
                eprintln!(
                    "conveyor: {} left in {}: too large to run again (purge them), or they \
                     moved meanwhile",
                    done.kept,
                    QueueKeys::new(&queue, &key(&queue), "cli").dead
                );
            }
            Ok(())
        }
        Action::Purge {
            queue,
            id: Some(id),
            ..
        } => {
            client.purge_dead(&queue, &id).await?;
            println!("{id}");
            Ok(())
        }
        Action::Purge {
            queue, all: true, ..
        } => {
            let n = client.purge_all_dead(&queue).await?;
            let jobs = if n == 1 { "job" } else { "jobs" };
            eprintln!("conveyor: purged {n} dead {jobs} of {}", key(&queue));
            Ok(())
        }
        Action::Retry { .. } | Action::Purge { .. } => {
            Err(UsageError("give a job id or --all".into()).into())
        }
    }
}

async fn list(
    client: &Client,
    queue: &str,
    key: &str,
    json: bool,
    limit: u64,
) -> anyhow::Result<()> {
    if json {
        // Each entry as stored; one larger than the queue's jobs may be, as
        // its id, size and first bytes (`truncated`).
        for e in client.dead_entries(queue, 0, limit).await? {
            match e.is_whole() {
                true => println!("{}", String::from_utf8_lossy(&e.bytes)),
                false => println!("{}", serde_json::to_string(&DeadJob::of(&e))?),
            }
        }
        return Ok(());
    }
    let jobs = client.dead_jobs(queue, 0, limit).await?;
    if jobs.is_empty() {
        eprintln!("conveyor: no dead jobs in {key}");
        return Ok(());
    }
    println!("{:<24}  {:<32}  {:>7}  error", "died_at", "id", "attempt");
    // Ids and errors come from producers, workers and remote servers:
    // escaped, so none of them reaches the terminal as a control sequence.
    for job in &jobs {
        println!(
            "{:<24}  {:<32}  {:>7}  {}",
            escaped(job.died_at.as_deref().unwrap_or("-")),
            escaped(&job.id),
            job.attempt,
            escaped(job.last_error.as_deref().unwrap_or("-"))
        );
    }
    Ok(())
}

/// The dead jobs of every queue in `queues`, newest first, at most `limit`.
async fn list_all(
    client: &Client,
    queues: &[&String],
    json: bool,
    limit: u64,
) -> anyhow::Result<()> {
    let mut jobs: Vec<(&str, DeadJob)> = Vec::new();
    for queue in queues {
        for job in client.dead_jobs(queue, 0, limit).await? {
            jobs.push((queue.as_str(), job));
        }
    }
    // RFC 3339 times in UTC sort as text; a job without one goes last.
    jobs.sort_by(|a, b| b.1.died_at.cmp(&a.1.died_at));
    jobs.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    if json {
        for (queue, job) in &jobs {
            let mut object = serde_json::to_value(job)?;
            object["queue"] = (*queue).into();
            println!("{object}");
        }
        return Ok(());
    }
    if jobs.is_empty() {
        eprintln!("conveyor: no dead jobs in any queue");
        return Ok(());
    }
    let width = jobs.iter().map(|(q, _)| q.len()).max().unwrap_or(0).max(5);
    println!(
        "{:<width$}  {:<24}  {:<32}  {:>7}  error",
        "queue", "died_at", "id", "attempt"
    );
    for (queue, job) in &jobs {
        println!(
            "{:<width$}  {:<24}  {:<32}  {:>7}  {}",
            escaped(queue),
            escaped(job.died_at.as_deref().unwrap_or("-")),
            escaped(&job.id),
            job.attempt,
            escaped(job.last_error.as_deref().unwrap_or("-"))
        );
    }
    Ok(())
}
