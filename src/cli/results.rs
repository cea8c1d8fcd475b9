//! `conveyor results Q [--failed] [--limit N] [--json]`: a tracked queue's
//! recent results and failures, newest first, in one command instead of a
//! `conveyor status` per job.

use std::path::Path;

use super::{UsageError, connect, load_config};
use crate::api::{Client, Ended, MAX_RESULTS};
use crate::logging::escaped;

/// Options of `conveyor results`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The queue's name.
    #[arg(add = super::completions::queue_names())]
    pub(crate) queue: String,
    /// Only the jobs that died.
    #[arg(long)]
    pub(crate) failed: bool,
    /// Show at most this many (the queue keeps its newest 1000).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=MAX_RESULTS))]
    pub(crate) limit: u64,
    /// Print one JSON object: the jobs with their results as JSON and their
    /// errors, whole.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Characters of a result or error shown when stdout is not a terminal.
const TEXT_CHARS: usize = 80;

/// Characters of a result or error shown at least on a narrow terminal.
const MIN_TEXT_CHARS: usize = 20;

/// The id column's width (a generated id's length, as `dead list`).
const ID_WIDTH: usize = 32;

/// Prints the queue's recent results, or says why there are none.
pub(crate) async fn run(config_path: Option<&Path>, args: Args) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    let Some(queue) = config.queues.get(&args.queue) else {
        return Err(UsageError(format!(
            "no queue {:?} in the configuration (configured: {})",
            args.queue,
            config.queues.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
        .into());
    };
    let tracked = queue.track;
    let client = Client::with_broker(connect(&config).await?, &config, "cli");
    let results = client.results(&args.queue, args.failed, args.limit).await?;
    if args.json {
        println!("{}", serde_json::to_string(&results)?);
    } else {
        print_table(&results.jobs);
    }
    if !tracked {
        eprintln!(
            "conveyor: queue {} does not set track = true, so its results are not recorded: \
             add track = true to [queues.{}] and reload the daemon (systemctl reload \
             conveyor, or SIGHUP); jobs that end from then on are listed",
            args.queue, args.queue
        );
    } else if results.jobs.is_empty() && !args.json {
        let what = if args.failed {
            "dead jobs"
        } else {
            "ended jobs"
        };
        eprintln!("conveyor: no {what} listed for {}", args.queue);
    }
    if results.expired > 0 && !args.json {
        eprintln!(
            "conveyor: {} more ended longer ago than track_ttl: their records expired",
            results.expired
        );
    }
    Ok(())
}

fn print_table(jobs: &[Ended]) {
    if jobs.is_empty() {
        return;
    }
    // Time, id, state, attempt and the gaps between them.
    let fixed = 24 + 2 + ID_WIDTH + 2 + 9 + 2 + 7 + 2;
    // On a terminal, the line fits its width; elsewhere, the text is cut
    // to 80 characters (--json gives it whole).
    let room = console::Term::stdout()
        .size_checked()
        .map_or(TEXT_CHARS, |(_, cols)| {
            usize::from(cols).saturating_sub(fixed).max(MIN_TEXT_CHARS)
        });
    println!(
        "{:<24}  {:<ID_WIDTH$}  {:<9}  {:>7}  result / error",
        "finished_at", "id", "state", "attempt"
    );
    // Results and errors come from workers and remote servers: escaped, so
    // none of them reaches the terminal as a control sequence.
    for job in jobs {
        let said = match (&job.result, &job.last_error) {
            (_, Some(error)) => error.clone(),
            (Some(result), None) => result.to_string(),
            (None, None) => "-".to_owned(),
        };
        println!(
            "{:<24}  {:<ID_WIDTH$}  {:<9}  {:>7}  {}",
            escaped(job.finished_at.as_deref().unwrap_or("-")),
            escaped(&job.id),
            escaped(&job.state),
            job.attempt,
            cut(&escaped(&said), room)
        );
    }
}

/// `text` cut to `chars` characters, the last an ellipsis when cut.
pub(crate) fn cut(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars.saturating_sub(1)) {
        Some((at, _)) if text[at..].chars().nth(1).is_some() => format!("{}…", &text[..at]),
        _ => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::cut;

    #[test]
    fn cuts_long_text_with_an_ellipsis() {
        assert_eq!(cut("abcdef", 10), "abcdef");
        assert_eq!(cut("abcdef", 6), "abcdef");
        assert_eq!(cut("abcdefg", 6), "abcde…");
        assert_eq!(cut("ééééééé", 3), "éé…");
    }
}
