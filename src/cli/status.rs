//! `conveyor status <id>`: where a job is (waiting, scheduled, running on
//! which node, dead), its status record (queues that set `track = true`),
//! its stored item and its events still in the replay stream.

use std::path::Path;

use super::{InputError, connect, load_config};
use crate::api::{Client, JobView};
use crate::logging::escaped;

/// Options of `conveyor status`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The job's id.
    pub(crate) id: String,
    /// Print the record as one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
}

/// The fields in the order a person reads them.
const ORDER: &[&str] = &[
    "queue",
    "state",
    "attempt",
    "node",
    "enqueued_at",
    "started_at",
    "finished_at",
    "due_at",
    "last_error",
    "result",
    "updated_at",
];

/// Prints where the job is, its status record, its stored item and its
/// events; exit 65 when nothing at all is known of it.
pub(crate) async fn run(config_path: Option<&Path>, args: Args) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    let client = Client::with_broker(connect(&config).await?, &config, "cli");
    let view = client.job(&args.id).await?;
    if view.queue.is_none() && view.record.is_empty() {
        let events = match view.events.last() {
            Some(last) => format!(
                "; its last event in the replay stream: {} at {}",
                last["type"].as_str().unwrap_or("?"),
                last["at"].as_str().unwrap_or("?")
            ),
            None => String::new(),
        };
        return Err(InputError(format!(
            "no status record for job {} and it is in no queue's lists: its queue does not set \
             track = true, or the record expired{events}",
            args.id
        ))
        .into());
    }
    if args.json {
        println!("{}", serde_json::Value::Object(json(&view)));
        return Ok(());
    }
    print_text(&view);
    Ok(())
}

/// The record's fields at the top level (as ever), then `where` (the state
/// found), the item and the events.
fn json(view: &JobView) -> serde_json::Map<String, serde_json::Value> {
    let mut object = serde_json::Map::new();
    object.insert("id".into(), view.id.clone().into());
    if let Some(queue) = &view.queue {
        object.insert("queue".into(), queue.clone().into());
    }
    object.insert("state".into(), view.state.clone().into());
    for (k, v) in &view.record {
        // The result is JSON text: given as the value it holds; the
        // attempt is a number, as in the envelope.
        let value = match k.as_str() {
            "result" => serde_json::from_str(v).unwrap_or_else(|_| v.clone().into()),
            "attempt" => v
                .parse::<u64>()
                .map_or_else(|_| v.clone().into(), Into::into),
            _ => v.clone().into(),
        };
        object.insert(k.clone(), value);
    }
    object.insert("where".into(), view.state.clone().into());
    if let Some(node) = &view.node {
        object.insert("running_on".into(), node.clone().into());
    }
    if let Some(envelope) = &view.envelope {
        object.insert("envelope".into(), envelope.clone());
    }
    if let Some(size) = view.size {
        object.insert("size".into(), size.into());
    }
    object.insert("events".into(), view.events.clone().into());
    object
}

/// For a person: the place, the record in reading order, the item, and one
/// line per event.
fn print_text(view: &JobView) {
    // Errors, results and payloads come from producers, workers and remote
    // servers: escaped, so none of them reaches the terminal as a control
    // sequence.
    println!("{:<12} {}", "id", escaped(&view.id));
    if let Some(queue) = &view.queue {
        println!("{:<12} {}", "queue", escaped(queue));
    }
    let place = match &view.node {
        Some(node) => format!("{} (on {})", view.state, node),
        None => view.state.clone(),
    };
    println!("{:<12} {}", "where", escaped(&place));
    for key in ORDER.iter().filter(|k| **k != "queue") {
        if let Some(v) = view.record.get(*key) {
            println!("{key:<12} {}", escaped(v));
        }
    }
    for (k, v) in &view.record {
        if !ORDER.contains(&k.as_str()) {
            println!("{:<12} {}", escaped(k), escaped(v));
        }
    }
    match (&view.envelope, view.size) {
        (Some(envelope), _) => println!("{:<12} {}", "stored", escaped(&envelope.to_string())),
        (None, Some(size)) => println!("{:<12} {size} bytes, too large to show", "stored"),
        (None, None) => {}
    }
    for event in &view.events {
        let at = event["at"].as_str().unwrap_or("");
        let kind = event["type"].as_str().unwrap_or("?");
        let mut line = format!("{at} {kind}");
        for field in ["attempt", "node", "error", "reason", "duration_ms"] {
            if let Some(v) = event.get(field).filter(|v| !v.is_null()) {
                let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                line.push_str(&format!(" {field}={v}"));
            }
        }
        println!("{:<12} {}", "event", escaped(&line));
    }
}
