//! Shell completion in a real bash: the script `conveyor completions bash`
//! prints, sourced, asks the binary on the PATH, which completes commands
//! and the names of the queues of the configuration the line would read.

use std::path::Path;
use std::process::Command;

use crate::common::*;

/// What bash offers for the words of a command line (the last one is the
/// word being completed), run in `dir` with `conveyor` on the PATH and
/// `env` set.
fn complete(dir: &Path, words: &[&str], env: &[(&str, &Path)]) -> Vec<String> {
    let bin_dir = binary().parent().unwrap().to_owned();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let cword = words.len() - 1;
    let script = format!(
        "source <(conveyor completions bash) || exit 9\n\
         COMP_WORDS=({words})\nCOMP_CWORD={cword}\n\
         _clap_complete_conveyor conveyor {current} {previous}\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        words = quoted.join(" "),
        current = quoted[cword],
        previous = quoted[cword - 1],
    );
    let mut cmd = Command::new("bash");
    // Never the configuration of the user who runs the tests, nor the
    // repository's config/ (the working directory is searched).
    cmd.arg("-c")
        .arg(script)
        .current_dir(dir)
        .env("PATH", path)
        .env_remove("CONVEYOR_CONFIG")
        .env("XDG_CONFIG_HOME", "/nonexistent/conveyor-tests");
    for (name, value) in env {
        cmd.env(name, value);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn bash_completes_commands_and_the_configured_queue_names() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("conveyor.toml");
    std::fs::write(
        &cfg,
        "[redis]\nurl = \"redis://127.0.0.1:1/0\"\n\
         [queues.alpha]\nhandler = \"noop\"\n\
         [queues.beta-2]\nhandler = \"publish\"\n",
    )
    .unwrap();
    let cfg_arg = cfg.to_str().unwrap();

    assert_eq!(complete(dir.path(), &["conveyor", "pa"], &[]), ["pause"]);
    // The queue names of the file the line names...
    let offered = complete(
        dir.path(),
        &["conveyor", "--config", cfg_arg, "enqueue", ""],
        &[],
    );
    for queue in ["alpha", "beta-2"] {
        assert!(
            offered.iter().any(|o| o == queue),
            "{queue} not in {offered:?}"
        );
    }
    assert_eq!(
        complete(dir.path(), &["conveyor", "-c", cfg_arg, "pause", "b"], &[]),
        ["beta-2"]
    );
    // ...or of the file the command would find by itself.
    let env = [("CONVEYOR_CONFIG", cfg.as_path())];
    assert_eq!(
        complete(dir.path(), &["conveyor", "dead", "list", "a"], &env),
        ["alpha"]
    );
    assert_eq!(
        complete(dir.path(), &["conveyor", "results", "a"], &env),
        ["alpha"]
    );
    assert_eq!(
        complete(dir.path(), &["conveyor", "run", "--queue", "be"], &env),
        ["beta-2"]
    );
    // No configuration to be found: no queue names, and no error in the shell.
    let none = complete(dir.path(), &["conveyor", "resume", "a"], &[]);
    assert!(none.is_empty(), "{none:?}");
}
