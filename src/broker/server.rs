//! What the server is, from `INFO server`: its family, its version and its
//! mode. Redis 7 and Valkey 8 write them under different names: Redis
//! writes `redis_version:` and `redis_mode:`; Valkey writes
//! `server_name:valkey`, `valkey_version:` and `server_mode:` (its
//! `redis_version:` is the Redis version it answers as, 7.2.4 for 8.1).
//! Every field conveyor reads from INFO is read here, both ways.

use redis::Value;

use super::{Broker, BrokerError, is_denial};

/// The server conveyor talks to, as it describes itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Server {
    /// `redis`, `valkey`, or what a compatible server calls itself.
    pub(crate) name: String,
    /// Its own version, not the Redis version it is compatible with.
    pub(crate) version: String,
    /// `standalone`, `sentinel` or `cluster`.
    pub(crate) mode: String,
}

impl Server {
    /// From the text of `INFO server`. A server that names none of these
    /// fields is taken for a standalone Redis of unknown version.
    pub(crate) fn parse(info: &str) -> Self {
        let field = |name: &str| {
            info.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key == name).then(|| value.trim().to_owned())
            })
        };
        let name = field("server_name").unwrap_or_else(|| "redis".into());
        let version = field(&format!("{name}_version"))
            .or_else(|| field("redis_version"))
            .unwrap_or_else(|| "(version unknown)".into());
        let mode = field("server_mode")
            .or_else(|| field("redis_mode"))
            .unwrap_or_else(|| "standalone".into());
        Self {
            name,
            version,
            mode,
        }
    }
}

impl std::fmt::Display for Server {
    /// `redis 7.0.15`, `valkey 8.1.8`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.name, self.version)
    }
}

impl Broker {
    /// The server, from `INFO server`; `None` if this user may not run INFO.
    /// In a cluster, one node's (redis-rs asks every primary).
    pub(crate) async fn server(&self) -> Result<Option<Server>, BrokerError> {
        let mut conn = self.conn().await?;
        let reply: Value = match redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await
        {
            Ok(reply) => reply,
            Err(e) if is_denial(&e) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let text = match reply {
            // One text per primary, by address.
            Value::Map(nodes) => nodes.into_iter().next().map(|(_, text)| text),
            text => Some(text),
        };
        match text.map(redis::from_redis_value::<String>) {
            Some(Ok(info)) => Ok(Some(Server::parse(&info))),
            other => Err(BrokerError::Protocol(format!(
                "INFO server answered {other:?}"
            ))),
        }
    }

    /// Refuses a Sentinel or a Cluster node given as the plain `url`,
    /// which would otherwise answer PING and then fail every job command.
    /// A user who may not run INFO passes: then we cannot tell.
    pub(crate) async fn standalone(&self) -> Result<(), BrokerError> {
        if self.is_cluster() {
            return Ok(());
        }
        let Some(server) = self.server().await? else {
            return Ok(());
        };
        let reason = match server.mode.as_str() {
            "sentinel" => format!(
                "this is a Sentinel ({server}), not a data server: in place of url, give \
                 the sentinels and the name of the master they watch, \
                 sentinel = {{ master = \"mymaster\", nodes = [\"redis://host:26379\"] }}, \
                 and conveyor follows the master through failovers"
            ),
            "cluster" => format!(
                "this is a node of a Cluster ({server}): in place of url, list some of its \
                 nodes, cluster = {{ nodes = [\"redis://host:7000\"] }}"
            ),
            _ => return Ok(()),
        };
        Err(BrokerError::BadUrl {
            url: self.url(),
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The start of `INFO server` as each server wrote it.
    const REDIS_7: &str = "# Server\r\nredis_version:7.0.15\r\nredis_git_sha1:00000000\r\n\
        redis_git_dirty:0\r\nredis_build_id:1b2ad4a1b8bd4bd0\r\nredis_mode:sentinel\r\n\
        os:Linux 6.1.0 x86_64\r\n";
    const VALKEY_8: &str = "# Server\r\nredis_version:7.2.4\r\nserver_name:valkey\r\n\
        valkey_version:8.1.8\r\nvalkey_release_stage:ga\r\nredis_git_sha1:00000000\r\n\
        redis_git_dirty:1\r\nredis_build_id:7eb4ebc9d7e91f4e\r\nserver_mode:cluster\r\n\
        os:Linux 6.18.44 x86_64\r\n";

    #[test]
    fn redis_and_valkey_are_told_apart_with_their_own_versions_and_modes() {
        let redis = Server::parse(REDIS_7);
        assert_eq!(redis.to_string(), "redis 7.0.15");
        assert_eq!(redis.mode, "sentinel");
        let valkey = Server::parse(VALKEY_8);
        assert_eq!(valkey.to_string(), "valkey 8.1.8");
        assert_eq!(valkey.mode, "cluster");
    }

    #[test]
    fn a_server_that_says_little_is_a_standalone_redis() {
        let bare = Server::parse("# Server\r\nredis_version:6.2.0\r\n");
        assert_eq!(bare.to_string(), "redis 6.2.0");
        assert_eq!(bare.mode, "standalone");
        assert_eq!(Server::parse("").mode, "standalone");
    }
}
