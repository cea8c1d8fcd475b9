//! The shipped example configuration parses, validates, and says what the
//! documentation says it does.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::path::Path;
use std::time::Duration;

use conveyor::config::{Config, EmailTransport, EventLevel};
use conveyor::handlers::Registry;

fn example() -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/conveyor.toml");
    let config = Config::from_file(&path).expect("config/conveyor.toml parses");
    config.validate().expect("config/conveyor.toml is valid");
    config
}

#[test]
fn the_example_config_parses_with_the_documented_values() {
    let c = example();
    assert_eq!(c.redis.url.expose(), "redis://127.0.0.1:6379/0");
    assert_eq!(c.redis.pool_size, 16);
    assert_eq!(c.daemon.shutdown_timeout, Duration::from_secs(25));
    assert_eq!(c.daemon.heartbeat_interval, Duration::from_secs(5));
    assert_eq!(c.daemon.node_ttl, Duration::from_secs(30));
    assert_eq!(c.events.channel, "conveyor:events");
    assert_eq!(c.events.stream_maxlen, 10_000);
    assert_eq!(c.email.transport, EmailTransport::File);
    assert!(
        c.email.dir.ends_with("config/outbox"),
        "relative to the file: {:?}",
        c.email.dir
    );

    assert_eq!(c.email.timeout, Duration::from_secs(30));
    assert_eq!(c.email.from, "conveyor <noreply@localhost>");
    let email = &c.queues["email"];
    assert_eq!(email.handler, "email");
    assert_eq!(email.concurrency, 10);
    assert_eq!(email.max_attempts, 25);
    assert_eq!(email.backoff.base, Duration::from_secs(15));
    assert_eq!(email.timeout, Duration::from_secs(300));
    assert!(email.rate_limit.is_none());

    let orders = &c.queues["orders"];
    assert_eq!(orders.handler, "publish");
    let channel = orders.options.as_ref().and_then(|o| o.get("channel"));
    assert_eq!(channel.and_then(|c| c.as_str()), Some("orders"));
    assert_eq!(c.queue_key("orders"), "jobs:orders");
    assert_eq!(orders.events, EventLevel::All);
    assert_eq!(c.queues["default"].handler, "noop");
}

#[tokio::test]
async fn every_queue_of_the_example_has_a_known_handler() {
    let c = example();
    let handlers = Registry::builtin()
        .build_all(&c)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(handlers.len(), c.queues.len());
}
