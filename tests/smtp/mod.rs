//! A real SMTP server per test (`tests/smtp/server.py`, on aiosmtpd) and a
//! throwaway certificate authority for its TLS, made with the `openssl` CLI in
//! the test's temporary directory.
//!
//! The server runs under a python that can `import aiosmtpd`:
//! `$CONVEYOR_TEST_PYTHON`, else Debian's `/usr/bin/python3` (package
//! `python3-aiosmtpd`), else `python3` on the PATH.

#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

pub mod queue;

/// What a test wants of its server.
#[derive(Default, Clone)]
pub struct Options<'a> {
    /// Certificates for TLS (required by `starttls` and `implicit_tls`).
    pub ca: Option<&'a TestCa>,
    /// Offer STARTTLS and require it.
    pub starttls: bool,
    /// TLS from the first byte.
    pub implicit_tls: bool,
    /// Require AUTH with this user and password.
    pub auth: Option<(&'a str, &'a str)>,
    /// DATA reply codes, one per message, the last repeating (`"451,250"`).
    pub replies: Option<&'a str>,
    /// Wait this long before answering the first DATA.
    pub delay_first_ms: Option<u64>,
    /// Accept connections and never greet.
    pub stall: bool,
}

/// A running server; killed when dropped.
pub struct SmtpServer {
    child: Child,
    pub port: u16,
    out: PathBuf,
    sessions: PathBuf,
    _dir: tempfile::TempDir,
}

/// One SMTP session that ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Session {
    /// DATA commands in it.
    pub messages: u32,
    /// Whether the client said QUIT before closing.
    pub quit: bool,
}

/// One DATA command the server received.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Received {
    pub mail_from: String,
    pub rcpt_tos: Vec<String>,
    pub data: String,
    /// The code the server answered; 250 means accepted.
    pub reply: u16,
}

impl SmtpServer {
    /// Starts a server and waits for its `ready <port>` line.
    pub fn start(options: Options<'_>) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let out = dir.path().join("messages.jsonl");
        let sessions = dir.path().join("sessions.jsonl");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp/server.py");
        let mut cmd = Command::new(python());
        cmd.arg("-W")
            .arg("ignore")
            .arg(script)
            .arg("--out")
            .arg(&out)
            .arg("--sessions")
            .arg(&sessions);
        if let Some(ca) = options.ca {
            cmd.arg("--tls-cert")
                .arg(&ca.cert)
                .arg("--tls-key")
                .arg(&ca.key);
        }
        if options.starttls {
            cmd.arg("--starttls");
        }
        if options.implicit_tls {
            cmd.arg("--implicit-tls");
        }
        if let Some((user, password)) = options.auth {
            cmd.args(["--user", user, "--password", password]);
        }
        if let Some(replies) = options.replies {
            cmd.args(["--replies", replies]);
        }
        if let Some(ms) = options.delay_first_ms {
            cmd.arg("--delay-first-ms").arg(ms.to_string());
        }
        if options.stall {
            cmd.arg("--stall");
        }
        let log = std::fs::File::create(dir.path().join("server.log")).expect("server log");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start tests/smtp/server.py");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let read = BufReader::new(stdout).read_line(&mut line);
            let _sent = tx.send(read.map(|_| line));
        });
        let line = match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(Ok(line)) => line,
            other => {
                let _killed = child.kill();
                let log =
                    std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
                panic!("the SMTP test server did not start ({other:?}):\n{log}");
            }
        };
        let port = line
            .strip_prefix("ready ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the SMTP server: {line:?}"));
        Self {
            child,
            port,
            out,
            sessions,
            _dir: dir,
        }
    }

    /// Every session that has ended so far.
    pub fn sessions(&self) -> Vec<Session> {
        let text = std::fs::read_to_string(&self.sessions).unwrap_or_default();
        text.lines()
            .filter(|l| l.ends_with('}'))
            .map(|l| serde_json::from_str(l).expect("the server writes JSON lines"))
            .collect()
    }

    /// Every DATA command so far, accepted or not.
    pub fn received(&self) -> Vec<Received> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .filter(|l| l.ends_with('}'))
            .map(|l| serde_json::from_str(l).expect("the server writes JSON lines"))
            .collect()
    }

    /// The messages the server accepted.
    pub fn accepted(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|m| m.reply == 250)
            .collect()
    }

    /// `scheme://[user@]127.0.0.1:port[?query]`
    pub fn url(&self, scheme: &str, user: Option<&str>, query: &str) -> String {
        let user = user.map(|u| format!("{u}@")).unwrap_or_default();
        format!("{scheme}://{user}127.0.0.1:{}{query}", self.port)
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _killed = self.child.kill();
        let _reaped = self.child.wait();
    }
}

pub use crate::common::TestCa;

/// The user a [`SecureSmtp`] server asks for.
pub const USER: &str = "mailer";

/// A server as production relays are: STARTTLS required (a certificate
/// from its own throwaway CA), then AUTH as [`USER`] with a password.
pub struct SecureSmtp {
    /// The CA a client must trust (`ca_file`).
    pub ca: TestCa,
    pub server: SmtpServer,
}

impl SecureSmtp {
    pub fn start(password: &str) -> Self {
        let ca = TestCa::generate();
        let server = SmtpServer::start(Options {
            ca: Some(&ca),
            starttls: true,
            auth: Some((USER, password)),
            ..Options::default()
        });
        Self { ca, server }
    }

    /// `smtp://mailer@127.0.0.1:<port>?tls=starttls`
    pub fn url(&self) -> String {
        self.server.url("smtp", Some(USER), "?tls=starttls")
    }
}

impl std::ops::Deref for SecureSmtp {
    type Target = SmtpServer;
    fn deref(&self) -> &SmtpServer {
        &self.server
    }
}

/// A python that can run the server, found once.
pub fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let candidates: Vec<PathBuf> = std::env::var_os("CONVEYOR_TEST_PYTHON")
            .map(PathBuf::from)
            .into_iter()
            .chain(["/usr/bin/python3", "python3"].map(PathBuf::from))
            .collect();
        candidates
            .iter()
            .find(|py| {
                Command::new(py)
                    .args(["-W", "ignore", "-c", "import aiosmtpd"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })
            .cloned()
            .unwrap_or_else(|| {
                panic!(
                    "no python that can `import aiosmtpd` (tried {candidates:?}): install Debian's \
                     python3-aiosmtpd, or set CONVEYOR_TEST_PYTHON to a python that has aiosmtpd"
                )
            })
    })
}
