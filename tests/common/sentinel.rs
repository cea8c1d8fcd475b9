//! A Sentinel deployment on loopback: a master, one replica and three
//! sentinels (quorum 2), every server with a password, all private to the
//! test and stopped with it, of the family the run chose.

use std::path::Path;
use std::time::Duration;

use redis::IntoConnectionInfo as _;
use redis::aio::MultiplexedConnection;

use super::free_port;
use super::server::{Family, ServerCommand, ServerProcess};

/// The name the sentinels know the master by.
pub const MASTER: &str = "mymaster";

/// The data servers' password: characters a URL would need encoded, so it
/// only works through `REDIS_PASSWORD` and is easy to find if ever printed.
pub const PASSWORD: &str = "sen/ti?nel#pw@x";

/// The sentinels' own password (`requirepass` in sentinel.conf), given in
/// their URLs.
pub const SENTINEL_PASSWORD: &str = "sentinels-own-5ecret";

/// A master, its replica and three sentinels.
pub struct Sentinels {
    data: Vec<ServerProcess>,
    sentinels: Vec<ServerProcess>,
    _dir: tempfile::TempDir,
}

impl Sentinels {
    /// Starts the deployment and waits until the sentinels know the replica
    /// and each other, so that a failover can be agreed on.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let master = data_server(dir.path(), "master", None);
        let replica = data_server(dir.path(), "replica", Some(master.port));
        let sentinels = (0..3)
            .map(|i| sentinel(dir.path(), i, master.port))
            .collect();
        let set = Self {
            data: vec![master, replica],
            sentinels,
            _dir: dir,
        };
        set.wait_ready().await;
        set
    }

    async fn wait_ready(&self) {
        super::wait_until(
            "the sentinels know the replica and each other",
            Duration::from_secs(30),
            || async {
                for port in self.sentinel_ports() {
                    let Ok(fields) = master_fields(port).await else {
                        return false;
                    };
                    let field = |name: &str| {
                        fields
                            .iter()
                            .position(|f| f == name)
                            .map(|i| &fields[i + 1])
                    };
                    if field("num-slaves").map(String::as_str) != Some("1")
                        || field("num-other-sentinels").map(String::as_str) != Some("2")
                    {
                        return false;
                    }
                }
                let replica = self.data[1].port;
                let Ok(mut conn) = data_conn(replica).await else {
                    return false;
                };
                super::info(&mut conn, "replication")
                    .await
                    .contains("master_link_status:up")
            },
        )
        .await;
    }

    /// The sentinels' ports.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    /// The `[redis]` line that points conveyor at this deployment.
    pub fn config_line(&self) -> String {
        let nodes: Vec<String> = self
            .sentinel_ports()
            .iter()
            .map(|p| format!("\"redis://:{SENTINEL_PASSWORD}@127.0.0.1:{p}\""))
            .collect();
        format!(
            "sentinel = {{ master = \"{MASTER}\", nodes = [{}] }}",
            nodes.join(", ")
        )
    }

    /// The port of the master the sentinels name now (the first that answers).
    pub async fn master_port(&self) -> u16 {
        for port in self.sentinel_ports() {
            let Ok(mut conn) = sentinel_conn(port).await else {
                continue;
            };
            let named: Result<(String, String), _> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(MASTER)
                .query_async(&mut conn)
                .await;
            if let Ok((_, port)) = named {
                return port.parse().unwrap();
            }
        }
        panic!("no sentinel names a master");
    }

    /// A connection to the master the sentinels name now.
    pub async fn master(&self) -> MultiplexedConnection {
        data_conn(self.master_port().await).await.unwrap()
    }

    /// SIGKILLs the current master; its port.
    pub async fn kill_master(&mut self) -> u16 {
        let port = self.master_port().await;
        let server = self.data.iter_mut().find(|s| s.port == port).unwrap();
        server.kill();
        port
    }

    /// Asks the sentinels for a failover with both servers up (the master
    /// becomes a replica); its old port.
    pub async fn switch_over(&self) -> u16 {
        let port = self.master_port().await;
        let mut conn = sentinel_conn(self.sentinel_ports()[0]).await.unwrap();
        let _: () = redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg(MASTER)
            .query_async(&mut conn)
            .await
            .unwrap();
        port
    }

    /// Waits until the sentinels name a master other than `old`, and it
    /// answers as one; its port and how long that took.
    pub async fn wait_new_master(&self, old: u16, timeout: Duration) -> (u16, Duration) {
        super::wait_failover(
            old,
            timeout,
            || self.master_port(),
            |port| async move {
                let Ok(mut conn) = data_conn(port).await else {
                    return false;
                };
                let role: Result<Vec<redis::Value>, _> =
                    redis::cmd("ROLE").query_async(&mut conn).await;
                matches!(role.as_deref(), Ok([redis::Value::BulkString(r), ..]) if r == b"master")
            },
        )
        .await
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for s in self.sentinels.iter_mut().chain(self.data.iter_mut()) {
            s.kill();
        }
    }
}

fn data_server(dir: &Path, name: &str, master: Option<u16>) -> ServerProcess {
    let dir = dir.join(name);
    std::fs::create_dir(&dir).unwrap();
    let mut cmd = ServerCommand::new(Family::chosen(), &dir);
    cmd.port(free_port()).password(PASSWORD);
    if let Some(master) = master {
        cmd.replica_of(master);
    }
    cmd.start().unwrap_or_else(|e| panic!("{e}"))
}

/// A sentinel; it rewrites its configuration file, so each has its own.
fn sentinel(dir: &Path, i: usize, master: u16) -> ServerProcess {
    let port = free_port();
    let conf = dir.join(format!("sentinel-{i}.conf"));
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbind 127.0.0.1\ndir {}\n\
             sentinel monitor {MASTER} 127.0.0.1 {master} 2\n\
             sentinel auth-pass {MASTER} \"{PASSWORD}\"\n\
             sentinel down-after-milliseconds {MASTER} 1000\n\
             sentinel failover-timeout {MASTER} 10000\n\
             requirepass {SENTINEL_PASSWORD}\nsentinel sentinel-pass {SENTINEL_PASSWORD}\n",
            dir.display()
        ),
    )
    .unwrap();
    ServerCommand::sentinel(Family::chosen(), &conf, port)
        .start()
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn sentinel_conn(port: u16) -> redis::RedisResult<MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://:{SENTINEL_PASSWORD}@127.0.0.1:{port}"))?;
    client.get_multiplexed_async_connection().await
}

/// A connection to a data server, with the password; patient, as the
/// server is shared with a busy daemon.
pub async fn data_conn(port: u16) -> redis::RedisResult<MultiplexedConnection> {
    data_conn_with(port, PASSWORD).await
}

/// [`data_conn`] with another password.
pub async fn data_conn_with(
    port: u16,
    password: &str,
) -> redis::RedisResult<MultiplexedConnection> {
    let info = ("127.0.0.1", port).into_connection_info()?;
    let settings = info.redis_settings().clone().set_password(password);
    let client = redis::Client::open(info.set_redis_settings(settings))?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    conn.set_response_timeout(Duration::from_secs(10));
    Ok(conn)
}

async fn master_fields(port: u16) -> redis::RedisResult<Vec<String>> {
    let mut conn = sentinel_conn(port).await?;
    redis::cmd("SENTINEL")
        .arg("master")
        .arg(MASTER)
        .query_async(&mut conn)
        .await
}
