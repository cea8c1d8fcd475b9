//! The `conveyor` binary: parse, set up logging, execute, and map errors to
//! sysexits codes (64 usage, 65 bad input, 69 unavailable, 78 config).

use std::process::ExitCode;

use clap::Parser as _;
use conveyor::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap picks colours by terminal; --help and --version are not errors.
            let printed = e.print();
            return match (e.use_stderr(), printed) {
                (_, Err(_)) => ExitCode::from(cli::EX_IOERR),
                (true, Ok(())) => ExitCode::from(cli::EX_USAGE),
                (false, Ok(())) => ExitCode::SUCCESS,
            };
        }
    };
    conveyor::logging::init(cli.command.default_log_level());
    // A handler's panic is caught and fails its job; say so in one log line
    // rather than a backtrace on stderr.
    std::panic::set_hook(Box::new(|info| tracing::error!(panic = %info, "panicked")));
    match cli::execute(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            conveyor::logging::fatal(&format!("{e:#}"));
            ExitCode::from(cli::exit_code(&e))
        }
    }
}
