//! `conveyor flow submit FILE|- | show FID | cancel FID | list`: flows\n//! (DESIGN section 13).

use std::io::Read as _;
use std::path::{Path, PathBuf};

use super::{InputError, connect, load_config};
use crate::api::{ApiError, Client, FlowSummary, FlowView, MAX_FLOWS};
use crate::logging::escaped;

/// Options of `conveyor flow`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// What to do.
    #[command(subcommand)]
    pub(crate) action: Action,
}

/// The flow operations.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Action {
    /// Submit a flow document (prints the flow id).
    Submit {
        /// The document's file, or - for standard input.
        file: PathBuf,
    },
    /// Show a flow's nodes with their status, queue, attempt and result.
    Show {
        /// The flow id.
        flow: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a flow: nodes not yet in their queues end cancelled, waiting
    /// ones are cancelled there, running ones are stopped.
    Cancel {
        /// The flow id.
        flow: String,
    },
    /// List the recent flows, newest first.
    List {
        /// Show at most this many.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=MAX_FLOWS))]
        limit: u64,
        /// Print one JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `conveyor flow`.
pub(crate) async fn run(config_path: Option<&Path>, args: Args) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    match args.action {
        Action::Submit { file } => {
            let text = read(&file)?;
            let client = Client::with_broker(connect(&config).await?, &config, "cli");
            match client.submit_flow(&text).await {
                Ok(fid) => println!("{fid}"),
                Err(ApiError::Invalid(why)) => {
                    return Err(InputError(format!("the flow is refused: {why}")).into());
                }
                Err(e) => return Err(e.into()),
            }
        }
        Action::Show { flow, json } => {
            let client = Client::with_broker(connect(&config).await?, &config, "cli");
            let view = client.flow(&flow).await?;
            if json {
                println!("{}", serde_json::to_string(&view)?);
            } else {
                print_flow(&view);
            }
        }
        Action::Cancel { flow } => {
            let client = Client::with_broker(connect(&config).await?, &config, "cli");
            let done = client.cancel_flow(&flow).await?;
            println!(
                "flow {flow}: {} nodes cancelled before their queue, {} cancelled waiting, \
                 {} running asked to stop{}",
                done.pending,
                done.waiting,
                done.running,
                done.finished
                    .as_deref()
                    .map_or_else(String::new, |s| format!("; the flow ended {s}"))
            );
        }
        Action::List { limit, json } => {
            let client = Client::with_broker(connect(&config).await?, &config, "cli");
            let flows = client.flows(limit).await?;
            if json {
                for flow in &flows {
                    println!("{}", serde_json::to_string(flow)?);
                }
            } else {
                print_list(&flows);
            }
        }
    }
    Ok(())
}

fn read(file: &Path) -> anyhow::Result<String> {
    let mut text = String::new();
    if file == Path::new("-") {
        std::io::stdin().read_to_string(&mut text).map_err(|e| {
            InputError(format!(
                "could not read the document from standard input: {e}"
            ))
        })?;
    } else {
        text = std::fs::read_to_string(file)
            .map_err(|e| InputError(format!("could not read {}: {e}", file.display())))?;
    }
    Ok(text)
}

fn print_flow(view: &FlowView) {
    println!(
        "flow {}: {}, {} of {} nodes ended, on_failure {}, created {}{}",
        view.flow,
        view.status,
        view.ended,
        view.total,
        view.on_failure,
        view.created_at,
        view.ended_at
            .as_deref()
            .map_or_else(String::new, |at| format!(", ended {at}"))
    );
    if view.nodes.is_empty() {
        return;
    }
    println!(
        "{:<24}  {:<16}  {:<10}  {:>7}  {:<24}  result",
        "node", "queue", "status", "attempt", "after"
    );
    for node in &view.nodes {
        let result = node.result.as_ref().map_or("", |r| r.get());
        println!(
            "{:<24}  {:<16}  {:<10}  {:>7}  {:<24}  {}",
            node.name,
            escaped(&node.queue),
            node.status,
            node.attempt
                .map_or_else(|| "-".to_owned(), |a| a.to_string()),
            node.after.join(","),
            escaped(&super::results::cut(result, 60))
        );
    }
}

fn print_list(flows: &[FlowSummary]) {
    if flows.is_empty() {
        println!("no flows");
        return;
    }
    println!(
        "{:<36}  {:<10}  {:>7}  {:>7}  created",
        "flow", "status", "ended", "nodes"
    );
    for view in flows {
        println!(
            "{:<36}  {:<10}  {:>7}  {:>7}  {}",
            view.flow, view.status, view.ended, view.total, view.created_at
        );
    }
}
