//! A Redis Cluster on loopback: three primaries with a replica each, a
//! password on every node, private to the test and stopped with it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

use super::sentinel::{data_conn_with, free_port};

/// Every node's password; characters a URL would need encoded.
pub const PASSWORD: &str = "clu/st?er#pw@x";

/// One node.
struct Node {
    child: Option<Child>,
    port: u16,
}

impl Node {
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _killed = child.kill();
            let _reaped = child.wait();
        }
    }
}

/// Six nodes: three primaries, three replicas.
pub struct Cluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts the nodes, joins them (`redis-cli --cluster create`) and
    /// waits until every node says the cluster is ok.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let nodes: Vec<Node> = (0..6).map(|i| node(dir.path(), i)).collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--no-auth-warning", "-a", PASSWORD, "--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(created.success(), "redis-cli --cluster create");
        let cluster = Self { nodes, _dir: dir };
        super::wait_until(
            "the cluster is ok on every node",
            Duration::from_secs(30),
            || async {
                for port in cluster.ports() {
                    let Ok(mut conn) = data_conn_with(port, PASSWORD).await else {
                        return false;
                    };
                    let info: String = redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query_async(&mut conn)
                        .await
                        .unwrap_or_default();
                    if !info.contains("cluster_state:ok")
                        || !info.contains("cluster_slots_ok:16384")
                    {
                        return false;
                    }
                }
                // Each replica has synchronized with its primary.
                for port in cluster.ports() {
                    let mut conn = data_conn_with(port, PASSWORD).await.unwrap();
                    let info: String = redis::cmd("INFO")
                        .arg("replication")
                        .query_async(&mut conn)
                        .await
                        .unwrap_or_default();
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
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// The `[redis]` line that points conveyor at the cluster (two of its
    /// nodes, as a user would list some).
    pub fn config_line(&self) -> String {
        format!(
            "cluster = {{ nodes = [\"redis://127.0.0.1:{}\", \"redis://127.0.0.1:{}\"] }}",
            self.nodes[0].port, self.nodes[1].port
        )
    }

    /// The port of the primary that holds `key` now.
    pub async fn primary_of(&self, key: &str) -> u16 {
        let mut conn = data_conn_with(self.ports()[0], PASSWORD).await.unwrap();
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
        data_conn_with(self.primary_of(key).await, PASSWORD)
            .await
            .unwrap()
    }

    /// Moves the slot of `key` from its primary to the primary `to`, key by
    /// key as `redis-cli --cluster reshard` does (IMPORTING, MIGRATING,
    /// MIGRATE in batches, then the new owner told to every node), while
    /// clients keep working: they meet ASK, TRYAGAIN and then MOVED.
    pub async fn move_slot(&self, key: &str, to: u16) {
        let from = self.primary_of(key).await;
        let mut src = data_conn_with(from, PASSWORD).await.unwrap();
        let mut dst = data_conn_with(to, PASSWORD).await.unwrap();
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
            let Ok(mut conn) = data_conn_with(port, PASSWORD).await else {
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
            let mut conn = data_conn_with(port, PASSWORD).await.unwrap();
            let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut conn).await.unwrap();
            if matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master") {
                out.push(port);
            }
        }
        out
    }

    /// SIGKILLs the node on `port`.
    pub fn kill(&mut self, port: u16) {
        let node = self.nodes.iter_mut().find(|n| n.port == port).unwrap();
        node.kill();
    }

    /// Waits until a primary other than `old` holds `key` and the cluster
    /// says it is ok again; that primary's port and how long it took.
    pub async fn wait_failover(&self, key: &str, old: u16, timeout: Duration) -> (u16, Duration) {
        let started = Instant::now();
        loop {
            let port = self.primary_of(key).await;
            if port != old {
                if let Ok(mut conn) = data_conn_with(port, PASSWORD).await {
                    let info: String = redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query_async(&mut conn)
                        .await
                        .unwrap_or_default();
                    if info.contains("cluster_state:ok") {
                        return (port, started.elapsed());
                    }
                }
            }
            assert!(
                started.elapsed() < timeout,
                "no failover within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
    }
}

fn node(dir: &Path, i: usize) -> Node {
    let port = free_port();
    let dir = dir.join(format!("node-{i}"));
    std::fs::create_dir(&dir).unwrap();
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
        .arg("--cluster-config-file")
        .arg(dir.join("nodes.conf"))
        .args(["--requirepass", PASSWORD, "--masterauth", PASSWORD])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "a cluster node does not listen");
        std::thread::sleep(Duration::from_millis(10));
    }
    Node {
        child: Some(child),
        port,
    }
}
