//! The broker's unit tests' Redis: a private `redis-server` on a unix socket
//! in a temporary directory, persistence off, stopped when dropped. Each
//! test starts its own, so none shares state with another (the suites in
//! `tests/` have the same in `tests/common`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

/// How long a server may take to answer its first PING (about 20 ms).
const START_DEADLINE: Duration = Duration::from_secs(10);

/// A private redis-server, stopped on drop.
pub(crate) struct TestRedis {
    child: Child,
    dir: tempfile::TempDir,
}

impl TestRedis {
    /// Starts one and waits until it answers PING.
    pub(crate) fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let socket = dir.path().join("redis.sock");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args(["--unixsocketperm", "700", "--dir"])
            .arg(dir.path())
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--logfile")
            .arg(dir.path().join("redis.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        let redis = Self { child, dir };
        let client = redis.client();
        let deadline = Instant::now() + START_DEADLINE;
        while client
            .get_connection()
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_err()
        {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        redis
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// The URL of its socket, for a configuration of its own.
    pub(crate) fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    /// A broker for this server, with the default settings.
    pub(crate) fn broker(&self) -> super::Broker {
        let config = crate::config::RedisConfig {
            url: crate::config::MaskedUrl::new(self.url()),
            ..crate::config::RedisConfig::default()
        };
        super::Broker::new(&config).expect("a broker for the test server")
    }

    /// A client of this server, for what a connection of its own needs.
    pub(crate) fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("a valid URL")
    }

    /// A connection for a test's seeding, calls and checks.
    pub(crate) async fn conn(&self) -> MultiplexedConnection {
        self.client()
            .get_multiplexed_async_connection()
            .await
            .expect("a connection to the test's redis-server")
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        // Dropped at the end of a test, or while a failed one unwinds:
        // nothing to report then, and the process is gone either way.
        if self.child.kill().is_ok() {
            let _reaped = self.child.wait();
        }
    }
}
