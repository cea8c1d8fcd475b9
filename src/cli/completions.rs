//! `conveyor completions <shell>`: completion scripts for a shell, and the
//! hidden `conveyor manpages <dir>` that writes the man pages (the Debian
//! package is built with both).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use clap::CommandFactory as _;

use super::{Cli, OsError};

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

/// Prints the completion script. It is made whole first, then written:
/// clap_complete panics on a failed write, where a closed stdout must end
/// the command quietly (see `pipe`).
pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "conveyor", &mut script);
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
