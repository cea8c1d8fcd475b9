//! `conveyor web`: the dashboard, `/metrics` and the web API without any
//! workers (`conveyor run` serves the same beside its workers). Its
//! `/metrics` has the queues' gauges from Redis; the job counters and
//! durations are the daemons' own.

use std::net::SocketAddr;
use std::path::Path;

use futures::StreamExt as _;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_tokio::Signals;
use tokio_util::sync::CancellationToken;

use super::{UsageError, load_config};
use crate::api::Client;

/// Options of `conveyor web`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Listen here instead of the configuration's `[web] listen`.
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<SocketAddr>,
}

/// Serves until SIGINT or SIGTERM.
pub(crate) async fn run(config_path: Option<&Path>, args: Args) -> anyhow::Result<()> {
    let mut config = load_config(config_path)?;
    if let Some(listen) = args.listen {
        config.web.listen = Some(listen);
        config.validate()?;
    }
    let Some(addr) = config.web.listen else {
        return Err(UsageError(
            "no [web] listen in the configuration: add one (listen = \"127.0.0.1:9740\") or \
             give --listen ADDR"
                .into(),
        )
        .into());
    };
    crate::limits::raise_open_files_limit();
    let listener = crate::web::bind(addr).await?;
    // Redis may be away now: /readyz says so, and the pages once it is back.
    let client = Client::new(&config, "web")?;
    let stop = CancellationToken::new();
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let server = tokio::spawn(crate::web::serve(listener, client, None, stop.clone()));
    signals.next().await;
    stop.cancel();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), server).await;
    Ok(())
}
