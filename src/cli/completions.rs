//! `conveyor completions <shell>`: completion scripts for a shell, and the
//! hidden `conveyor manpages <dir>` that writes the man pages (the Debian
//! package is built with both).
//!
//! The scripts are clap's dynamic ones: the shell asks the binary
//! (`CONVEYOR_COMPLETE=<shell> conveyor -- <words>`), which completes commands and
//! options from the same definitions as the parser, and queue names from the
//! configuration the command would read.

use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use clap::CommandFactory as _;
use clap_complete::engine::{ArgValueCandidates, CompletionCandidate};
use clap_complete::env::{CompleteEnv, Shells};

use super::{Cli, OsError};
use crate::config::Config;

/// The environment variable through which a shell asks for completions.
const VAR: &str = "CONVEYOR_COMPLETE";

/// Options of `conveyor completions`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "bash:  conveyor completions bash > ~/.local/share/bash-completion/completions/conveyor\n\
zsh:   conveyor completions zsh > ~/.zfunc/_conveyor   (with fpath+=~/.zfunc before compinit)\n\
fish:  conveyor completions fish > ~/.config/fish/completions/conveyor.fish"
)]
pub(crate) struct Args {
    /// The shell.
    pub(crate) shell: clap_complete::Shell,
}

/// Answers a shell's request for completions and exits, if this is one.
pub(crate) fn answer_if_asked() {
    CompleteEnv::with_factory(Cli::command).var(VAR).complete();
}

/// Prints the script that registers the completions with the shell: it
/// calls `conveyor` on the `PATH` for each completion. It is made whole
/// first, then written, so that a closed stdout ends the command quietly
/// (see `pipe`).
pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let name = args.shell.to_string();
    let shells = Shells::builtins();
    let shell = shells
        .completer(&name)
        .ok_or_else(|| OsError(format!("no completions for the shell {name}")))?;
    let mut script = Vec::new();
    shell.write_registration(VAR, "conveyor", "conveyor", "conveyor", &mut script)?;
    let mut out = std::io::stdout().lock();
    out.write_all(&script)?;
    out.flush()?;
    Ok(())
}

/// Options of `conveyor manpages`.
#[derive(Debug, clap::Args)]
pub(crate) struct ManArgs {
    /// Where to write conveyor.1 and one page per command (conveyor-run.1, ...).
    pub(crate) dir: PathBuf,
}

/// Writes the man pages.
pub(crate) fn manpages(args: ManArgs) -> anyhow::Result<()> {
    let write = |dir: &Path| clap_mangen::generate_to(Cli::command(), dir);
    std::fs::create_dir_all(&args.dir)
        .and_then(|()| write(&args.dir))
        .map_err(|e| {
            OsError(format!(
                "cannot write man pages to {}: {e}",
                args.dir.display()
            ))
            .into()
        })
}

/// Completes a queue argument with the names of the configured queues.
pub(crate) fn queue_names() -> ArgValueCandidates {
    ArgValueCandidates::new(|| configured_queues(std::env::args_os()))
}

/// The queues of the configuration the command line being completed would
/// read: its `--config`/`-c` if it has one, else the one found by default.
/// None if that cannot be read: a completion never prints an error.
fn configured_queues(args: impl Iterator<Item = OsString>) -> Vec<CompletionCandidate> {
    let path = match given_config(args) {
        Some(path) => path,
        None => match Config::find() {
            Ok(path) => path,
            Err(_) => return Vec::new(),
        },
    };
    let Ok(config) = Config::from_file(&path) else {
        return Vec::new();
    };
    config
        .queues
        .iter()
        .map(|(name, queue)| {
            CompletionCandidate::new(name).help(Some(queue.handler.clone().into()))
        })
        .collect()
}

/// The value of the last `--config FILE`, `--config=FILE`, `-c FILE` or
/// `-cFILE` among the words.
fn given_config(args: impl Iterator<Item = OsString>) -> Option<PathBuf> {
    let words: Vec<String> = args.map(|a| a.to_string_lossy().into_owned()).collect();
    let mut found = None;
    for (i, word) in words.iter().enumerate() {
        let next = || {
            words
                .get(i + 1)
                .filter(|w| !w.is_empty())
                .map(PathBuf::from)
        };
        match word.as_str() {
            "--config" | "-c" => found = next().or(found),
            w => {
                if let Some(v) = w.strip_prefix("--config=").or_else(|| w.strip_prefix("-c")) {
                    if !v.is_empty() {
                        found = Some(PathBuf::from(v));
                    }
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> impl Iterator<Item = OsString> {
        line.split(' ')
            .map(OsString::from)
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn the_config_of_the_line_being_completed_is_found_in_each_spelling() {
        for line in [
            "conveyor -- conveyor enqueue --config a.toml ",
            "conveyor -- conveyor --config=a.toml enqueue ",
            "conveyor -- conveyor -c a.toml pause ",
            "conveyor -- conveyor -ca.toml pause ",
        ] {
            assert_eq!(
                given_config(words(line)),
                Some(PathBuf::from("a.toml")),
                "{line}"
            );
        }
        assert_eq!(given_config(words("conveyor -- conveyor enqueue ")), None);
        assert_eq!(
            given_config(words("conveyor -- conveyor enqueue --config ")),
            None,
            "a --config still being typed names no file"
        );
    }
}
