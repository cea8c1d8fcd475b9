//! The daemon's unit tests' parts: a broker on the test's private Redis,
//! and a queue's processor on it that goes by the test's clock.

use std::sync::Arc;

use redis::ConnectionAddr;
use tokio_util::sync::CancellationToken;

use super::isolation::Isolation;
use super::processor::{NodeShared, Processor};
use super::writer;
use crate::broker::Broker;
use crate::broker::events::EventSink;
use crate::broker::fixture::TestRedis;
use crate::broker::keys::QueueKeys;
use crate::broker::queue::QueueStore;
use crate::clock::Clock;
use crate::config::Config;
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
    let broker = Broker::new(&config.redis).expect("broker");
    let keys = QueueKeys::new(name, &config.queue_key(name), node);
    let store = QueueStore::new(broker.clone(), keys, 10);
    let (_writer, outcomes, events) = writer::writer(node, broker, EventSink::new("c", 0), clock);
    Arc::new(Processor::new(
        name,
        store,
        config.queues[name].clone(),
        Arc::new(Noop),
        NodeShared {
            scheduler: Default::default(),
            isolation: Arc::new(Isolation::default()),
            events,
            outcomes,
            give_up: CancellationToken::new(),
            metrics: Default::default(),
            clock: clock.clone(),
        },
    ))
}

/// A new job's envelope, as a producer pushes it.
pub(crate) fn job(id: &str) -> String {
    let payload = serde_json::value::RawValue::from_string("{}".into()).expect("JSON");
    crate::envelope::new_envelope_json(id, &payload, None, "2026-01-01T00:00:00.000Z", None)
}
