//! conveyor as a systemd service: the unit passes `systemd-analyze verify`
//! and rates 2.0 or lower in `systemd-analyze security`.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::path::{Path, PathBuf};
use std::process::Command;

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/conveyor.service");
const EXEC_START: &str =
    "ExecStart=/usr/local/bin/conveyor run --config /etc/conveyor/conveyor.toml";

/// The shipped unit, copied into `dir` with `ExecStart` pointing at the
/// built binary (systemd-analyze checks that the binary exists) and with
/// `edit` applied.
fn unit_copy(dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let text = std::fs::read_to_string(UNIT).unwrap();
    assert!(
        text.lines().any(|l| l == EXEC_START),
        "the unit runs {EXEC_START:?}"
    );
    let exec = format!(
        "ExecStart={} run --config /etc/conveyor/conveyor.toml",
        env!("CARGO_BIN_EXE_conveyor")
    );
    let path = dir.join("conveyor.service");
    std::fs::write(&path, edit(text.replace(EXEC_START, &exec))).unwrap();
    path
}

/// Runs `systemd-analyze`; returns (exit code, stdout and stderr together).
fn systemd_analyze(args: &[&str], unit: &Path) -> (i32, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .env("SYSTEMD_COLORS", "0")
        .output()
        .expect("systemd-analyze must be installed (apt-get install systemd)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn the_unit_verifies_without_a_word() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_copy(dir.path(), |t| t);
    // verify exits 0 on most mistakes and only prints them: any output fails.
    let (code, out) = systemd_analyze(&["verify", "--man=no"], &unit);
    assert_eq!((code, out.as_str()), (0, ""), "systemd-analyze verify");
}

#[test]
fn verify_would_report_a_mistake() {
    // Guards the test above against passing vacuously.
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_copy(dir.path(), |t| {
        t.replace("Type=notify", "Type=notify-reload")
    });
    let (_, out) = systemd_analyze(&["verify", "--man=no"], &unit);
    assert!(out.contains("notify-reload"), "verify said: {out:?}");
}

#[test]
fn the_unit_rates_2_or_lower_in_systemd_analyze_security() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_copy(dir.path(), |t| t);
    // --threshold is on a 0-100 scale: 20 is a printed 2.0.
    let (code, out) = systemd_analyze(&["security", "--offline=yes", "--threshold=20"], &unit);
    let line = out
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no overall exposure level in:\n{out}"));
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no score in {line:?}"));
    assert!(score <= 2.0, "{line}");
    assert_eq!(code, 0, "{line}");
}
