//! `conveyor status <id>`: a job's status record, kept for queues that set
//! `track = true`.

use std::path::Path;

use super::{InputError, connect, load_config};
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

/// Prints the record, or says why there is none (exit 65).
pub(crate) async fn run(config_path: Option<&Path>, args: Args) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    let broker = connect(&config).await?;
    let record = broker.job_status(&args.id).await?;
    if record.is_empty() {
        return Err(InputError(format!(
            "no status record for job {}: its queue does not set track = true, or the record expired",
            args.id
        ))
        .into());
    }
    if args.json {
        let mut object = serde_json::Map::new();
        object.insert("id".into(), args.id.clone().into());
        for (k, v) in &record {
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
        println!("{}", serde_json::Value::Object(object));
        return Ok(());
    }
    // Errors and results come from workers and remote servers: escaped,
    // so none of them reaches the terminal as a control sequence.
    println!("{:<12} {}", "id", escaped(&args.id));
    for key in ORDER {
        if let Some(v) = record.get(*key) {
            println!("{key:<12} {}", escaped(v));
        }
    }
    for (k, v) in &record {
        if !ORDER.contains(&k.as_str()) {
            println!("{:<12} {}", escaped(k), escaped(v));
        }
    }
    Ok(())
}
