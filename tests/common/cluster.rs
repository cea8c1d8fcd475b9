//! A Redis Cluster on loopback: three primaries with a replica each, a
//! password on every node, private to the test and stopped with it, of the
//! family the run chose (Redis's when it speaks TLS).

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use super::TestCa;
use super::free_port;
use super::server::{Family, ServerCommand, ServerProcess};

/// Every node's password; characters a URL would need encoded.
pub const PASSWORD: &str = "clu/st?er#pw@x";

/// Six nodes: three primaries, three replicas.
pub struct Cluster {
    nodes: Vec<ServerProcess>,
    /// The CA the nodes' certificate is signed by, when they speak TLS.
    tls: Option<std::path::PathBuf>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts the nodes, joins them (`redis-cli --cluster create`) and
    /// waits until every node says the cluster is ok.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// With TLS only (clients, the cluster bus and replication), the
    /// servers' certificate signed by `tls`; such a cluster is of
    /// [`Family::with_tls`], any other of the family the run chose.
    pub async fn start_with(tls: Option<&TestCa>) -> Self {
        let family = match tls {
            Some(_) => Family::with_tls(),
            None => Family::chosen(),
        };
        let dir = tempfile::tempdir().unwrap();
        let nodes: Vec<ServerProcess> = (0..6).map(|i| node(family, dir.path(), i, tls)).collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        // It waits for the nodes to join without end if they cannot.
        let mut create = Command::new("timeout");
        create.arg("60").arg(family.cli());
        if let Some(ca) = tls {
            create.arg("--tls").arg("--cacert").arg(&ca.ca);
        }
        let created = create
            .args(["--no-auth-warning", "-a", PASSWORD, "--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(
            created.success(),
            "{} --cluster create",
            family.cli().display()
        );
        let cluster = Self {
            nodes,
            tls: tls.map(|ca| ca.ca.clone()),
            _dir: dir,
        };
        super::wait_until(
            "the cluster is ok on every node",
            Duration::from_secs(30),
            || async {
                for port in cluster.ports() {
                    let info = cluster.cluster_info(port).await;
                    if !info.contains("cluster_state:ok")
                        || !info.contains("cluster_slots_ok:16384")
                    {
                        return false;
                    }
                }
                // Each replica has synchronized with its primary.
                for port in cluster.ports() {
                    let mut conn = cluster.conn_to(port).await.unwrap();
                    let info = super::info(&mut conn, "replication").await;
                    if info.contains("role:slave") && !info.contains("master_link_status:up") {
                        return false;
                    }
                }
                true
            },
        )
        .await;
        cluster
    }

    /// Every node's port.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.port)
            .collect()
    }

    /// The `[redis]` line that points conveyor at the cluster (two of its
    /// nodes, as a user would list some).
    pub fn config_line(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!(
            "cluster = {{ nodes = [\"{scheme}://127.0.0.1:{}\", \"{scheme}://127.0.0.1:{}\"] }}",
            self.nodes[0].port, self.nodes[1].port
        )
    }

    /// A connection to the node on `port`, with the password (and the CA).
    pub async fn conn_to(&self, port: u16) -> redis::RedisResult<MultiplexedConnection> {
        match &self.tls {
            None => super::sentinel::data_conn_with(port, PASSWORD).await,
            Some(ca) => {
                let info = format!("rediss://:{}@127.0.0.1:{port}", urlencode(PASSWORD));
                let certificates = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(std::fs::read(ca).unwrap()),
                };
                let client = redis::Client::build_with_tls(info, certificates)?;
                let mut conn = client.get_multiplexed_async_connection().await?;
                conn.set_response_timeout(Duration::from_secs(10));
                Ok(conn)
            }
        }
    }

    /// The port of the primary that holds `key` now.
    pub async fn primary_of(&self, key: &str) -> u16 {
        let mut conn = self.conn_to(self.ports()[0]).await.unwrap();
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let ranges: Vec<redis::Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut conn)
            .await
            .unwrap();
        for range in ranges {
            let redis::Value::Array(fields) = range else {
                continue;
            };
            let (from, to): (u16, u16) = (
                redis::from_redis_value(fields[0].clone()).unwrap(),
                redis::from_redis_value(fields[1].clone()).unwrap(),
            );
            if (from..=to).contains(&slot) {
                let redis::Value::Array(primary) = &fields[2] else {
                    break;
                };
                return redis::from_redis_value(primary[1].clone()).unwrap();
            }
        }
        panic!("no primary holds slot {slot}");
    }

    /// A connection to the primary that holds `key` now.
    pub async fn conn_for(&self, key: &str) -> MultiplexedConnection {
        self.conn_to(self.primary_of(key).await).await.unwrap()
    }

    /// Moves the slot of `key` from its primary to the primary `to`, key by
    /// key as `redis-cli --cluster reshard` does (IMPORTING, MIGRATING,
    /// MIGRATE in batches, then the new owner told to every node), while
    /// clients keep working: they meet ASK, TRYAGAIN and then MOVED.
    pub async fn move_slot(&self, key: &str, to: u16) {
        let from = self.primary_of(key).await;
        let mut src = self.conn_to(from).await.unwrap();
        let mut dst = self.conn_to(to).await.unwrap();
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut src)
            .await
            .unwrap();
        let src_id: String = redis::cmd("CLUSTER")
            .arg("MYID")
            .query_async(&mut src)
            .await
            .unwrap();
        let dst_id: String = redis::cmd("CLUSTER")
            .arg("MYID")
            .query_async(&mut dst)
            .await
            .unwrap();
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("IMPORTING")
            .arg(&src_id)
            .query_async(&mut dst)
            .await
            .unwrap();
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("MIGRATING")
            .arg(&dst_id)
            .query_async(&mut src)
            .await
            .unwrap();
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(2)
                .query_async(&mut src)
                .await
                .unwrap();
            if keys.is_empty() {
                break;
            }
            let _: () = redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(to)
                .arg("")
                .arg(0)
                .arg(10_000)
                .arg("AUTH")
                .arg(PASSWORD)
                .arg("KEYS")
                .arg(&keys)
                .query_async(&mut src)
                .await
                .unwrap();
            // Give the clients time to meet the half-moved slot.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for port in self.ports() {
            let Ok(mut conn) = self.conn_to(port).await else {
                continue;
            };
            let _: redis::RedisResult<()> = redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("NODE")
                .arg(&dst_id)
                .query_async(&mut conn)
                .await;
        }
    }

    /// The ports of the primaries.
    pub async fn primaries(&self) -> Vec<u16> {
        let mut out = Vec::new();
        for port in self.ports() {
            let mut conn = self.conn_to(port).await.unwrap();
            let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut conn).await.unwrap();
            if matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master") {
                out.push(port);
            }
        }
        out
    }

    /// The text of `CLUSTER INFO` on the node on `port`; empty if it does
    /// not answer.
    async fn cluster_info(&self, port: u16) -> String {
        let Ok(mut conn) = self.conn_to(port).await else {
            return String::new();
        };
        redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(&mut conn)
            .await
            .unwrap_or_default()
    }

    /// SIGKILLs the node on `port`.
    pub fn kill(&mut self, port: u16) {
        let node = self.nodes.iter_mut().find(|n| n.port == port).unwrap();
        node.kill();
    }

    /// Waits until a primary other than `old` holds `key` and the cluster
    /// says it is ok again; that primary's port and how long it took.
    pub async fn wait_failover(&self, key: &str, old: u16, timeout: Duration) -> (u16, Duration) {
        super::wait_failover(
            old,
            timeout,
            || self.primary_of(key),
            |port| async move { self.cluster_info(port).await.contains("cluster_state:ok") },
        )
        .await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
    }
}

fn node(family: Family, dir: &Path, i: usize, tls: Option<&TestCa>) -> ServerProcess {
    let port = free_port();
    let dir = dir.join(format!("node-{i}"));
    std::fs::create_dir(&dir).unwrap();
    let mut cmd = ServerCommand::new(family, &dir);
    cmd.cluster(free_port())
        .args(["--cluster-node-timeout", "2000"])
        .password(PASSWORD);
    match tls {
        Some(ca) => {
            cmd.tls(port, &ca.cert, &ca.key, &ca.ca)
                // The bus always asks a peer for its certificate, and the
                // server's is for servers only.
                .args([
                    OsStr::new("--tls-client-cert-file"),
                    ca.client_cert.as_os_str(),
                ])
                .args([
                    OsStr::new("--tls-client-key-file"),
                    ca.client_key.as_os_str(),
                ])
                .args(["--tls-cluster", "yes", "--tls-replication", "yes"])
                .args(["--tls-auth-clients", "no"]);
        }
        None => {
            cmd.port(port);
        }
    }
    cmd.start().unwrap_or_else(|e| panic!("{e}"))
}

/// `text` percent-encoded for a URL's userinfo.
fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
