//! `conveyor groups Q [--limit N] [--json]`: a queue's groups, busiest
//! first, with their jobs waiting, held and running (DESIGN section 14).

use std::path::Path;

use super::results::cut;
use super::{UsageError, connect, load_config};
use crate::api::{Client, GroupList, MAX_GROUPS};
use crate::logging::escaped;

/// Options of `conveyor groups`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The queue's name.
    #[arg(add = super::completions::queue_names())]
    pub(crate) queue: String,
    /// Show at most this many groups.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=MAX_GROUPS))]
    pub(crate) limit: u64,
    /// Print one JSON object: the totals and the groups.
    #[arg(long)]
    pub(crate) json: bool,
}

/// The group column's width; longer names are cut.
const GROUP_WIDTH: usize = 40;

/// Prints the queue's groups, or says why it has none.
pub(crate) async fn run(config_path: Option<&Path>, args: Args) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    if !config.queues.contains_key(&args.queue) {
        return Err(UsageError(format!(
            "no queue {:?} in the configuration (configured: {})",
            args.queue,
            config.queues.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
        .into());
    }
    let client = Client::with_broker(connect(&config).await?, &config, "cli");
    let list = client.groups(&args.queue, args.limit).await?;
    if args.json {
        println!("{}", serde_json::to_string(&list)?);
    } else {
        print_table(&list);
    }
    if list.key.is_none() && list.groups.count == 0 {
        eprintln!(
            "conveyor: queue {} has no group: add group = {{ key = \"<payload field>\" }} to \
             [queues.{}] to serve its jobs by that field's values in turn",
            args.queue, args.queue
        );
    }
    Ok(())
}

fn print_table(list: &GroupList) {
    let g = &list.groups;
    let by = list
        .key
        .as_deref()
        .map_or_else(|| "no group".to_owned(), |k| format!("by {}", escaped(k)));
    let limit = list
        .limit
        .map_or_else(|| "no limit".to_owned(), |l| format!("limit {l} each"));
    println!(
        "{}: {} groups ({by}, {limit}), {} waiting, {} held, {} running",
        escaped(&list.queue),
        g.count,
        g.waiting,
        g.held,
        g.running
    );
    if g.groups.is_empty() {
        return;
    }
    println!(
        "{:<GROUP_WIDTH$}  {:>9}  {:>9}  {:>9}",
        "group", "waiting", "held", "running"
    );
    // Group names are payload values: escaped, so none reaches the
    // terminal as a control sequence.
    for row in &g.groups {
        let name = match row.group.as_str() {
            "" => "(none)".to_owned(),
            name => cut(&escaped(name), GROUP_WIDTH),
        };
        println!(
            "{name:<GROUP_WIDTH$}  {:>9}  {:>9}  {:>9}",
            row.waiting, row.held, row.running
        );
    }
    if g.count > g.groups.len() as u64 {
        println!("… and {} more (--limit)", g.count - g.groups.len() as u64);
    }
}
