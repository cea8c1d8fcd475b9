//! Logging to stderr (journald reads it under systemd): human text with
//! colours on a terminal only, or one JSON object per line with
//! `CONVEYOR_LOG_FORMAT=json`. `CONVEYOR_LOG` is the filter (`info`,
//! `conveyor=debug`, ...).

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `default_level` applies when
/// `CONVEYOR_LOG` is unset: the daemon logs `info`, the CLI only `warn`.
pub fn init(default_level: &str) {
    let filter =
        EnvFilter::try_from_env("CONVEYOR_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    let json = std::env::var("CONVEYOR_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let installed = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
    if let Err(e) = installed {
        eprintln!("conveyor: logging not initialised: {e}");
    }
}
