//! The daemon's unit tests' parts: a broker on the test's private Redis,
//! and a queue's processor on it that goes by the test's clock.

use std::sync::Arc;

use redis::ConnectionAddr;
use tokio_util::sync::CancellationToken;

use super::isolation::Isolation;
use super::processor::{NodeShared, Processor};
use super::writer::{self, Writer};
use crate::broker::Broker;
use crate::broker::events::EventSink;
use crate::broker::fixture::TestRedis;
use crate::broker::keys::QueueKeys;
use crate::broker::queue::QueueStore;
use crate::clock::Clock;
use crate::config::Config;
use crate::handlers::Handler;
use crate::handlers::noop::Noop;

/// The configuration of one `noop` queue `name` on `redis`.
pub(crate) fn config(redis: &TestRedis, name: &str) -> Config {
    let ConnectionAddr::Unix(socket) = redis.client().get_connection_info().addr().clone() else {
        panic!("the test's Redis listens on a unix socket");
    };
    let url = format!("redis+unix://{}", socket.display());
    Config::from_toml(&format!(
        "[redis]\nurl = \"{url}\"\n[queues.{name}]\nhandler = \"noop\"\n"
    ))
    .expect("test config")
}

/// Queue `name`'s processor on node `node`, idle (nothing launched): what
/// the scheduler and the reaper act on. Its events go nowhere.
pub(crate) fn processor(config: &Config, name: &str, node: &str, clock: &Clock) -> Arc<Processor> {
    processor_with(config, name, node, clock, Arc::new(Noop)).0
}

/// Queue `name`'s processor on node `node` running `handler`, and the
/// writer that records its outcomes (not running yet).
pub(crate) fn processor_with(
    config: &Config,
    name: &str,
    node: &str,
    clock: &Clock,
    handler: Arc<dyn Handler>,
) -> (Arc<Processor>, Writer) {
    let broker = Broker::new(&config.redis).expect("broker");
    let keys = QueueKeys::new(name, &config.queue_key(name), node);
    let store = QueueStore::new(broker.clone(), keys, 10);
    let (writer, outcomes, events) = writer::writer(node, broker, EventSink::new("c", 0), clock);
    let processor = Arc::new(Processor::new(
        name,
        store,
        config.queues[name].clone(),
        handler,
        NodeShared {
            scheduler: Default::default(),
            isolation: Arc::new(Isolation::default()),
            events,
            outcomes,
            give_up: CancellationToken::new(),
            metrics: Default::default(),
            clock: clock.clone(),
            traces: None,
            flows: Default::default(),
        },
    ));
    (processor, writer)
}

/// Waits until `condition` holds, for at most 10 s of real time.
pub(crate) async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within 10s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// A new job's envelope, as a producer pushes it.
pub(crate) fn job(id: &str) -> String {
    let payload = serde_json::value::RawValue::from_string("{}".into()).expect("JSON");
    crate::envelope::new_envelope_json(id, &payload, None, "2026-01-01T00:00:00.000Z", None)
}
