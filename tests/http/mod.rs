//! The scripted HTTP server of the http handler's tests (`server.py`), and
//! the signature check by the Standard Webhooks library (`verify.py`).

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::free_port;

/// One request the server received.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct Request {
    pub path: String,
    pub method: String,
    pub headers: std::collections::HashMap<String, String>,
    pub body: String,
    /// The client's port: one per connection.
    pub port: u16,
}

/// A running server; killed when dropped.
pub struct HttpServer {
    child: Child,
    pub port: u16,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl HttpServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// With server.py's options, such as `--idle-timeout 0.2`.
    pub fn start_with(options: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let out = dir.path().join("requests.jsonl");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/http/server.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg("--out")
            .arg(&out)
            .args(options)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs tests/http/server.py");
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            let mut line = String::new();
            let _sent = tx.send(BufReader::new(stdout).read_line(&mut line).map(|_| line));
        });
        let line = rx
            .recv_timeout(Duration::from_secs(15))
            .expect("the HTTP test server starts")
            .expect("its first line");
        let port = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Self {
            child,
            port,
            out,
            _dir: dir,
        }
    }

    /// `http://127.0.0.1:<port><path>`
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.records()
            .into_iter()
            .filter(|r| r.get("closed").is_none())
            .map(|r| serde_json::from_value(r).expect("a request"))
            .collect()
    }

    /// The client ports of the connections the server closed for idling.
    pub fn closed(&self) -> Vec<u16> {
        self.records()
            .iter()
            .filter_map(|r| r.get("closed")?.as_u64())
            .map(|p| u16::try_from(p).expect("a port"))
            .collect()
    }

    fn records(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.ends_with('}'))
            .map(|l| serde_json::from_str(l).expect("JSON lines"))
            .collect()
    }

    /// The requests to `path`.
    pub fn to(&self, path: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _killed = self.child.kill();
        let _reaped = self.child.wait();
    }
}

/// Whether `request`'s signature verifies with `secret`, by the PyPI
/// package standardwebhooks (installed into target/pydeps by scripts/test);
/// the library's words otherwise.
pub fn verify(request: &Request, secret: &str) -> Result<(), String> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new("python3")
        .arg(repo.join("tests/http/verify.py"))
        .arg(secret)
        .env("PYTHONPATH", repo.join("target/pydeps"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs tests/http/verify.py");
    let json = serde_json::to_vec(request).expect("JSON");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&json)
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Debian's nginx in the foreground, one worker: HTTP/1.1 on `port`, and
/// HTTPS with HTTP/2 (ALPN) on `tls_port` with the test CA's certificate.
/// `/hook` answers with the protocol and connection each request came on,
/// as JSON: `{"proto": "HTTP/2.0", "conn": 3, "n": 7}`.
pub struct Nginx {
    child: Child,
    pub port: u16,
    pub tls_port: u16,
    dir: tempfile::TempDir,
}

impl Nginx {
    pub fn start(cert: &Path, key: &Path) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let prefix = dir.path();
        let [port, tls_port] = [free_port(), free_port()];
        // Run as root (CI), nginx would hand its worker to `nobody`, who
        // cannot enter this private directory.
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        let user = if root { "user root;" } else { "" };
        let temp: String = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
            .iter()
            .map(|t| format!("  {t}_temp_path {};\n", prefix.join(t).display()))
            .collect();
        let conf = prefix.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off;\n{user}\nworker_processes 1;\npid {pid};\nerror_log stderr error;\n\
                 events {{ worker_connections 256; }}\n\
                 http {{\n  access_log off;\n{temp}\
                   server {{\n\
                     listen 127.0.0.1:{port};\n\
                     listen 127.0.0.1:{tls_port} ssl http2;\n\
                     ssl_certificate {cert};\n  ssl_certificate_key {key};\n\
                     location /hook {{\n\
                       default_type application/json;\n\
                       return 200 '{{\"proto\": \"$server_protocol\", \"conn\": $connection, \"n\": $connection_requests}}';\n\
                     }}\n\
                   }}\n}}\n",
                pid = prefix.join("nginx.pid").display(),
                cert = cert.display(),
                key = key.display(),
            ),
        )
        .expect("nginx.conf written");
        let child = Self::spawn(prefix);
        let mut nginx = Self {
            child,
            port,
            tls_port,
            dir,
        };
        nginx.wait_listening();
        nginx
    }

    /// Stops nginx (its connections close) and starts it again on the
    /// same ports.
    pub fn restart(&mut self) {
        crate::common::signal(&self.child, 15);
        let _reaped = self.child.wait();
        self.child = Self::spawn(self.dir.path());
        self.wait_listening();
    }

    fn spawn(prefix: &Path) -> Child {
        Command::new("/usr/sbin/nginx")
            .arg("-p")
            .arg(prefix)
            .arg("-c")
            .arg(prefix.join("nginx.conf"))
            .stdout(Stdio::null())
            .spawn()
            .expect("Debian's nginx (/usr/sbin/nginx; scripts/test installs it)")
    }

    fn wait_listening(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", self.tls_port)).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("nginx exited: {status}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "nginx does not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Nginx {
    /// SIGTERM, so that the master stops its worker too (a SIGKILLed master
    /// leaves it running).
    fn drop(&mut self) {
        crate::common::signal(&self.child, 15);
        let _reaped = self.child.wait();
    }
}
