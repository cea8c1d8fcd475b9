//! `conveyor check` against real SMTP servers: each step is named, a server
//! that cannot be used exits 69, and the password is never printed.

mod common;
mod smtp;

use std::path::Path;

use common::*;
use smtp::{Options, SecureSmtp, SmtpServer, TestCa};

const PASSWORD: &str = "correct-horse-battery";

/// A config file whose queue `mail` (handled by `handler`) sends through `url`.
fn smtp_file(dir: &Path, redis: &Redis, url: &str, ca: Option<&TestCa>, handler: &str) -> String {
    smtp_file_with_timeout(dir, redis, url, ca, handler, "5s")
}

fn smtp_file_with_timeout(
    dir: &Path,
    redis: &Redis,
    url: &str,
    ca: Option<&TestCa>,
    handler: &str,
    timeout: &str,
) -> String {
    let ca_line = ca
        .map(|ca| format!("ca_file = \"{}\"\n", ca.ca.display()))
        .unwrap_or_default();
    let extra = format!(
        "[email]\ntransport = \"smtp\"\nsmtp_url = \"{url}\"\ntimeout = \"{timeout}\"\n{ca_line}\
         [queues.mail]\nhandler = \"{handler}\"\n"
    );
    config_file(dir, redis, &extra).display().to_string()
}

/// Runs `conveyor check` with `password` in the environment.
fn check(config: &str, password: &str) -> (i32, String, String) {
    let out = conveyor()
        .args(["check", "--config", config])
        .env("CONVEYOR_SMTP_PASSWORD", password)
        .output()
        .expect("run conveyor");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_passes_against_a_good_server() {
    let redis = Redis::start();
    let server = SecureSmtp::start(PASSWORD);
    let dir = tempfile::tempdir().unwrap();
    let config = smtp_file(dir.path(), &redis, &server.url(), Some(&server.ca), "email");
    let (code, stdout, stderr) = check(&config, PASSWORD);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    for step in [
        "smtp: connected",
        "smtp: EHLO ok",
        "smtp: STARTTLS ok",
        "smtp: AUTH ok",
        "email: ok",
    ] {
        assert!(stdout.contains(step), "{step:?} missing from:\n{stdout}");
    }
    assert!(!stdout.contains(PASSWORD) && !stderr.contains(PASSWORD));
    assert!(server.received().is_empty(), "a check sends no mail");
    // One session, ended with QUIT rather than a dropped connection.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while server.sessions().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(
        server.sessions(),
        [smtp::Session {
            messages: 0,
            quit: true
        }]
    );
}

#[test]
fn check_exits_69_when_the_smtp_server_is_down() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("smtp://127.0.0.1:{}", free_port());
    let config = smtp_file(dir.path(), &redis, &url, None, "email");
    let (code, stdout, stderr) = check(&config, PASSWORD);
    assert_eq!(code, 69, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("redis: ok"), "{stdout}");
    assert!(stderr.contains("SMTP check failed at connect"), "{stderr}");
}

#[test]
fn check_exits_69_when_the_smtp_server_never_greets() {
    let redis = Redis::start();
    let server = SmtpServer::start(Options {
        stall: true,
        ..Options::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let url = server.url("smtp", None, "");
    let config = smtp_file_with_timeout(dir.path(), &redis, &url, None, "email", "500ms");
    let (code, stdout, stderr) = check(&config, PASSWORD);
    assert_eq!(code, 69, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stderr.contains("greeting and EHLO") && stderr.contains("did not greet"),
        "{stderr}"
    );
}

#[test]
fn check_names_auth_on_a_wrong_password() {
    let redis = Redis::start();
    let server = SecureSmtp::start(PASSWORD);
    let dir = tempfile::tempdir().unwrap();
    let config = smtp_file(dir.path(), &redis, &server.url(), Some(&server.ca), "email");
    let wrong = "not-the-password-42";
    let (code, stdout, stderr) = check(&config, wrong);
    assert_ne!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(
        code, 78,
        "refused credentials are a configuration problem: {stderr}"
    );
    assert!(stdout.contains("smtp: STARTTLS ok"), "{stdout}");
    assert!(
        stderr.contains("SMTP check failed at AUTH") && stderr.contains("535"),
        "{stderr}"
    );
    assert!(
        !stdout.contains(wrong) && !stderr.contains(wrong),
        "{stdout}\n{stderr}"
    );
}

#[test]
fn check_skips_smtp_when_no_queue_sends_email() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("smtp://127.0.0.1:{}", free_port());
    let config = smtp_file(dir.path(), &redis, &url, None, "noop");
    let (code, stdout, stderr) = check(&config, PASSWORD);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(!stdout.contains("smtp:"), "{stdout}");
}
