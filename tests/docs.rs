//! The documentation holds: README.md and docs/*.md, read as GitHub shows
//! them. Every relative link and `#anchor` leads somewhere;
//! every TOML block parses and, unless a marker says why not, passes the
//! crate's own validation (the configuration's, then every handler's
//! build, as at start); every other code block is an excerpt of a shipped
//! file (so that file's tests cover it), names the test that runs it, or
//! says why nothing runs it.
//!
//! Markers are HTML comments right above a fenced block (invisible on the
//! page), one directive each:
//!
//! - `<!-- docs: excerpt PATH -->`: each line of the block, but blank lines
//!   and trailing comments, is a line of PATH, in order.
//! - `<!-- docs: tested by tests/FILE.rs::FUNCTION -->`: that test runs it.
//! - `<!-- docs: not run: REASON -->`: nothing runs it, and why.
//! - `<!-- docs: run NAME -->`: written to a file NAME, it runs as written
//!   (`python3` with redis-py, `node` with npm's redis, as `scripts/test`
//!   installs them) against a private redis-server whose URL is in
//!   `REDIS_URL`, and pushes one job onto one queue.
//! - `<!-- docs: syntax NAME -->`: written to a file NAME, it parses
//!   (`python3` for `.py`, `node --check` for `.js` and `.mjs`).
//! - `<!-- docs: with` TOML `-->`: a TOML fragment is validated after the
//!   TOML given (the settings it cannot stand without).
//! - `<!-- docs: in DIR -->`: a TOML block meant for a file in DIR; the
//!   relative paths of its exec commands exist there.
//! - `<!-- docs: toml only: REASON -->`: parsed, not validated, and why.
//! - `<!-- docs: as the test's user: REASON -->`: validated with the exec
//!   workers' `user` and `group` replaced by the test's own, and why.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;
#[path = "docs/markdown.rs"]
mod markdown;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use conveyor::Registry;
use conveyor::config::Config;
use markdown::{Block, Page};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and docs/*.md, read.
fn pages() -> Vec<Page> {
    let mut paths = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    paths.extend(docs);
    paths.into_iter().map(|p| Page::read(&p)).collect()
}

/// Where a block is, for messages.
fn at(page: &Page, block: &Block) -> String {
    format!("{}:{}", page.name(), block.line)
}

#[test]
fn every_relative_link_and_anchor_leads_somewhere() {
    let pages = pages();
    let anchors: BTreeMap<PathBuf, Vec<String>> = pages
        .iter()
        .map(|p| (p.path.clone(), p.anchors()))
        .collect();
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in &pages {
        for (line, target) in page.links() {
            if target.contains("://") || target.starts_with("mailto:") {
                continue; // outside the repository: not checked offline
            }
            checked += 1;
            let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
            let dest = if file.is_empty() {
                page.path.clone()
            } else {
                page.path.parent().unwrap().join(file)
            };
            let Ok(dest) = dest.canonicalize() else {
                broken.push(format!("{}:{line}: no file {target}", page.name()));
                continue;
            };
            if anchor.is_empty() {
                continue;
            }
            match anchors.get(&dest) {
                Some(known) if known.iter().any(|a| a == anchor) => {}
                Some(known) => broken.push(format!(
                    "{}:{line}: no heading #{anchor} in {} (there: {})",
                    page.name(),
                    if file.is_empty() { "this page" } else { file },
                    known.join(", ")
                )),
                None => broken.push(format!(
                    "{}:{line}: #{anchor} in {file}, which is not a page of the documentation",
                    page.name()
                )),
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(checked > 20, "only {checked} relative links found");
}

#[test]
fn the_anchors_are_githubs() {
    let page = Page::parse(
        Path::new("x.md"),
        "# Your own code: a worker, or a handler in Rust\n\n## `exec`: a program\n\n\
         ## `http`: your customers' webhooks\n\n## Dashboard, metrics and health\n\n\
         ## Set-up on a fresh Debian machine\n\n## Events\n\n## Events\n\n```toml\n# not a heading\n```\n",
    );
    assert_eq!(
        page.anchors(),
        [
            "your-own-code-a-worker-or-a-handler-in-rust",
            "exec-a-program",
            "http-your-customers-webhooks",
            "dashboard-metrics-and-health",
            "set-up-on-a-fresh-debian-machine",
            "events",
            "events-1",
        ]
    );
}

#[test]
fn every_toml_block_parses_and_validates() {
    let mut failures = Vec::new();
    let mut validated = 0;
    for page in pages() {
        for block in page.blocks.iter().filter(|b| b.lang == "toml") {
            let context = block.directive("with").unwrap_or_default();
            let text = format!("{context}\n{}", block.text);
            if let Err(e) = text.parse::<toml::Table>() {
                failures.push(format!("{}: not TOML: {e}", at(&page, block)));
                continue;
            }
            if let Some(dir) = block.directive("in") {
                failures.extend(
                    missing_exec_paths(&text, &repo().join(dir))
                        .into_iter()
                        .map(|m| format!("{}: {m}", at(&page, block))),
                );
            }
            if let Some(reason) = block.directive("toml only:") {
                assert!(!reason.is_empty(), "{}: say why", at(&page, block));
                continue;
            }
            let text = match block.directive("as the test's user:") {
                Some(reason) if !reason.is_empty() => as_the_tests_user(&text),
                Some(_) => panic!("{}: say why", at(&page, block)),
                None => text,
            };
            match validate(&text) {
                Ok(()) => validated += 1,
                Err(e) => failures.push(format!("{}: {e}", at(&page, block))),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(validated >= 5, "only {validated} TOML blocks validated");
}

/// What `conveyor run` does with a configuration before it runs anything:
/// parse, validate, build every queue's handler.
fn validate(text: &str) -> Result<(), String> {
    let config = Config::from_toml(text)?;
    config.validate().map_err(|e| e.to_string())?;
    // The Redis pool is made (it connects only when used) in a runtime.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _inside = runtime.enter();
    let mut registry = Registry::builtin();
    // Exec workers are supervised by the conveyor binary, not this test's.
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_conveyor"));
    registry.register("exec", conveyor::handlers::exec::factory(binary));
    registry
        .build_all(&config)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// `text` with every exec table's `user` and `group` replaced by this
/// process's uid and gid.
fn as_the_tests_user(text: &str) -> String {
    let mut table: toml::Table = text.parse().unwrap();
    let uid = rustix::process::getuid().as_raw().to_string();
    let gid = rustix::process::getgid().as_raw().to_string();
    let queues = table.get_mut("queues").and_then(|q| q.as_table_mut());
    let mut execs: Vec<&mut toml::Table> = queues
        .into_iter()
        .flat_map(|q| q.iter_mut().map(|(_, q)| q))
        .filter_map(|q| q.get_mut("exec")?.as_table_mut())
        .collect();
    for exec in &mut execs {
        for (key, id) in [("user", &uid), ("group", &gid)] {
            if exec.contains_key(key) {
                exec.insert(key.to_owned(), toml::Value::String(id.clone()));
            }
        }
    }
    toml::to_string(&table).unwrap()
}

/// The relative paths (with a `/`) among the exec commands' arguments that
/// do not exist in `dir`.
fn missing_exec_paths(text: &str, dir: &Path) -> Vec<String> {
    let table: toml::Table = text.parse().unwrap();
    let queues = table.get("queues").and_then(|q| q.as_table());
    let commands = queues
        .into_iter()
        .flat_map(|q| q.values())
        .filter_map(|q| q.get("exec")?.get("command")?.as_array());
    commands
        .flatten()
        .filter_map(|arg| arg.as_str())
        .filter(|arg| arg.contains('/') && !arg.starts_with('/'))
        .filter(|arg| !dir.join(arg).exists())
        .map(|arg| format!("{arg} does not exist in {}", dir.display()))
        .collect()
}

#[test]
fn every_other_block_is_an_excerpt_or_tested_or_says_why_not() {
    let mut failures = Vec::new();
    for page in pages() {
        for block in &page.blocks {
            let where_ = at(&page, block);
            if let Err(e) = block.check_directives() {
                failures.push(format!("{where_}: {e}"));
            }
            if let Some(path) = block.directive("excerpt") {
                if let Err(e) = excerpt_of(&block.text, &repo().join(&path)) {
                    failures.push(format!("{where_}: not an excerpt of {path}: {e}"));
                }
            }
            if let Some(test) = block.directive("tested by") {
                if let Err(e) = test_exists(&test) {
                    failures.push(format!("{where_}: {e}"));
                }
            }
            if let Some(name) = block.directive("syntax") {
                if let Err(e) = parses(&name, &block.text) {
                    failures.push(format!("{where_}: {e}"));
                }
            }
            let accounted = ["excerpt", "tested by", "not run:", "run"]
                .iter()
                .any(|d| block.directive(d).is_some());
            if block.lang != "toml" && !accounted {
                failures.push(format!(
                    "{where_}: a ```{} block that is no excerpt of a shipped file, names no \
                     test and says not why it is not run",
                    block.lang
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The blocks marked `run NAME` run as written, each against a private
/// redis-server on a loopback port (the URL a newcomer's code reads from
/// `REDIS_URL`), and leave exactly one job on one queue.
#[test]
fn the_snippets_marked_run_push_a_job() {
    let mut ran = Vec::new();
    for page in pages() {
        for block in &page.blocks {
            let Some(name) = block.directive("run") else {
                continue;
            };
            let where_ = at(&page, block);
            let port = common::free_port();
            let _server = common::KillOnDrop(
                Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--save", "", "--appendonly", "no"])
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .unwrap(),
            );
            let url = format!("redis://127.0.0.1:{port}/0");
            let client = redis::Client::open(url.as_str()).unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let mut conn = loop {
                match client.get_connection() {
                    Ok(conn) => break conn,
                    Err(e) if std::time::Instant::now() > deadline => panic!("{e}"),
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
                }
            };
            if let Err(e) = run(&name, &block.text, &url) {
                panic!("{where_}: {e}");
            }
            let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
            assert_eq!(keys.len(), 1, "{where_}: {keys:?}");
            let items: Vec<String> = redis::cmd("LRANGE")
                .arg(&keys[0])
                .arg(0)
                .arg(-1)
                .query(&mut conn)
                .unwrap();
            assert_eq!(items.len(), 1, "{where_}: {items:?}");
            let job: serde_json::Value = serde_json::from_str(&items[0]).unwrap();
            assert!(job.is_object(), "{where_}: {job}");
            ran.push(name);
        }
    }
    ran.sort();
    assert_eq!(ran, ["enqueue.mjs", "enqueue.py"], "the README's snippets");
}

/// Runs the block as a file `name`, with `REDIS_URL`; within 30 s.
fn run(name: &str, text: &str, url: &str) -> Result<(), String> {
    // An ES module finds its packages in a node_modules above it.
    let base = repo().join("target/nodedeps");
    let dir = tempfile::tempdir_in(&base).map_err(|e| format!("{}: {e}", base.display()))?;
    let file = dir.path().join(name);
    std::fs::write(&file, text).unwrap();
    let mut command = match Path::new(name).extension().and_then(|e| e.to_str()) {
        Some("py") => {
            let mut c = Command::new("python3");
            c.env("PYTHONPATH", repo().join("target/pydeps"));
            c
        }
        Some("js" | "mjs") => Command::new("node"),
        _ => return Err(format!("no way to run {name}")),
    };
    let mut child = command
        .arg(&file)
        .env("REDIS_URL", url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().map_err(|e| e.to_string())?.is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            return Err(format!(
                "{name} did not end within 30 s (a client left open?)"
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!(
            "{name} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

/// A line as compared: whitespace runs as one space, a trailing `#` or
/// `//` comment dropped (the page may explain what the file does not).
fn comparable(line: &str) -> String {
    let line = line.split(" # ").next().unwrap_or_default();
    let line = line.split(" // ").next().unwrap_or_default();
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Each non-blank line of `text` is a line of `file`, in order.
fn excerpt_of(text: &str, file: &Path) -> Result<(), String> {
    let whole = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    let mut lines = whole.lines().map(comparable);
    for wanted in text.lines().map(comparable).filter(|l| !l.is_empty()) {
        if !lines.any(|l| l == wanted) {
            return Err(format!("{wanted:?} is not there (or not in this order)"));
        }
    }
    Ok(())
}

/// `tests/FILE.rs::FUNCTION`: the file has that function.
fn test_exists(test: &str) -> Result<(), String> {
    let (file, function) = test
        .split_once("::")
        .ok_or_else(|| format!("{test:?} is not tests/FILE.rs::FUNCTION"))?;
    let text = std::fs::read_to_string(repo().join(file)).map_err(|e| format!("{file}: {e}"))?;
    match text.contains(&format!("fn {function}(")) {
        true => Ok(()),
        false => Err(format!("{file} has no fn {function}")),
    }
}

/// The block, written to a file `name`, parses in its language.
fn parses(name: &str, text: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(name);
    std::fs::write(&file, text).unwrap();
    let mut command = match Path::new(name).extension().and_then(|e| e.to_str()) {
        Some("py") => {
            let mut c = Command::new("python3");
            c.args(["-c", "import ast, sys; ast.parse(open(sys.argv[1]).read())"]);
            c
        }
        Some("js" | "mjs") => {
            let mut c = Command::new("node");
            c.arg("--check");
            c
        }
        _ => return Err(format!("no syntax check for {name}")),
    };
    let out = command.arg(&file).output().map_err(|e| e.to_string())?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!(
            "{name} does not parse: {}",
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

#[test]
fn the_checks_catch_what_they_are_for() {
    // A fragment without the queue its schedule names, an unknown key.
    assert!(validate("[schedules.s]\nqueue = \"nowhere\"\nevery = \"1m\"\n").is_err());
    assert!(validate("[queues.q]\nhandler = \"noop\"\nconcurency = 4\n").is_err());
    assert!(validate("[queues.q]\nhandler = \"noop\"\n").is_ok());
    let worker = repo().join("examples/worker.py");
    assert!(excerpt_of("import json\n\nimport sys  # and a comment\n", &worker).is_ok());
    assert!(excerpt_of("import sys\nimport json\n", &worker).is_err());
    assert!(excerpt_of("import json, sys\n", &worker).is_err());
    assert!(parses("enqueue.mjs", "import { createClient } from \"redis\";\n").is_ok());
    assert!(parses("enqueue.mjs", "await r.rPush(\"jobs:email\";\n").is_err());
    assert!(parses("a.py", "print(1\n").is_err());
    assert!(test_exists("tests/docs.rs::the_checks_catch_what_they_are_for").is_ok());
    assert!(test_exists("tests/docs.rs::no_such_test").is_err());
    let toml = "[queues.q]\nhandler = \"exec\"\n[queues.q.exec]\ncommand = [\"python3\", \"../examples/nope.py\"]\n";
    assert_eq!(missing_exec_paths(toml, &repo().join("config")).len(), 1);
}
