//! `lua/publish_if_heard.lua`: publishes lifecycle events on the events
//! channel only if anyone subscribes to it now. Returns how many subscribe.

use redis::ScriptInvocation;

use crate::event::EventBatch;

script!("publish_if_heard.lua");

/// One call of `publish_if_heard.lua` (it has no KEYS).
pub(crate) struct Call<'a> {
    /// ARGV[1] the events channel.
    pub(crate) channel: &'a str,
    /// ARGV[2..] the events, in order.
    pub(crate) events: &'a EventBatch,
}

impl Call<'_> {
    /// The invocation.
    pub(crate) fn invocation(&self) -> ScriptInvocation<'static> {
        let mut inv = SCRIPT.prepare_invoke();
        inv.arg(self.channel);
        for e in self.events.iter() {
            inv.arg(e);
        }
        inv
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt as _;

    use super::*;
    use crate::broker::fixture::TestRedis;

    #[tokio::test]
    async fn publishes_only_while_someone_listens() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let mut events = EventBatch::default();
        events.push_json(r#"{"n":1}"#);
        events.push_json(r#"{"n":2}"#);
        let call = Call {
            channel: "ch",
            events: &events,
        };
        let heard: u64 = call.invocation().invoke_async(&mut conn).await.unwrap();
        assert_eq!(heard, 0);
        let mut pubsub = redis.client().get_async_pubsub().await.unwrap();
        pubsub.subscribe("ch").await.unwrap();
        let heard: u64 = call.invocation().invoke_async(&mut conn).await.unwrap();
        assert_eq!(heard, 1);
        // A marker after them: the subscriber gets the events in order,
        // then the marker, and nothing else.
        let _: u64 = redis::cmd("PUBLISH")
            .arg("ch")
            .arg("marker")
            .query_async(&mut conn)
            .await
            .unwrap();
        let mut messages = pubsub.into_on_message();
        for expected in [r#"{"n":1}"#, r#"{"n":2}"#, "marker"] {
            let message = tokio::time::timeout(Duration::from_secs(5), messages.next())
                .await
                .expect("published in time")
                .expect("a message");
            assert_eq!(message.get_payload_bytes(), expected.as_bytes());
        }
    }
}
