//! The queue's reads against a private Redis: what a blocking pop waits
//! out, and which jobs `take.lua` hands over alone.

use std::time::{Duration, Instant};

use redis::AsyncCommands as _;

use super::QueueStore;
use crate::broker::fixture::TestRedis;
use crate::broker::{Broker, QueueKeys};
use crate::config::{Config, MaskedUrl};
use crate::envelope::parse_item;

const Q: &str = "jobs:work";
const MIB: usize = 1 << 20;

/// The store of queue `work` on `redis`, with a response timeout.
fn store(redis: &TestRedis, response_timeout: Option<Duration>) -> QueueStore {
    let mut config = Config::default();
    config.redis.url = MaskedUrl::new(redis.url());
    if let Some(timeout) = response_timeout {
        config.redis.response_timeout = timeout;
    }
    let broker = Broker::new(&config.redis).expect("a broker of the test's Redis");
    QueueStore::new(broker, QueueKeys::new("work", Q, "n1"), 10)
}

/// redis-rs cuts replies off after 500ms by default; the fetcher's own
/// connection must wait out its whole block instead. (The daemon's half,
/// that an idle daemon still takes a job at once, is in tests/outage.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_pop_outlives_the_default_response_timeout() {
    let redis = TestRedis::start();
    let store = store(&redis, Some(Duration::from_millis(500)));
    let mut fetcher = store.fetcher(Duration::from_secs(2)).await.unwrap();
    let started = Instant::now();
    let taken = fetcher
        .next(MIB, None)
        .await
        .expect("an empty 2s block is not an error");
    assert!(taken.items.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
}

/// "Suspect" has one definition, `take.lua`'s, and the daemon runs alone
/// what it says (its verdict comes back with the jobs it takes). An
/// envelope written `"deliveries" : 1` is a suspect like one written
/// `"deliveries":1`: taken alone, never in a batch beside other jobs. (Before,
/// take.lua looked for `"deliveries":` and the daemon for `"deliveries"`, so
/// the spaced one went out in a batch.) Pinned to the Rust side: a job as the
/// reaper writes it back, its lost run counted, is a suspect; one with no lost
/// run, or a payload's own `deliveries` field, is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspect_however_written_is_taken_alone() {
    let redis = TestRedis::start();
    let store = store(&redis, None);
    let mut conn = redis.conn().await;
    let job = |json: &str| parse_item(json.as_bytes(), MIB).unwrap().envelope;
    let mut recovered = job(r#"{"id":"r","payload":{"x":1},"attempt":2}"#);
    recovered.deliveries = 1;
    let mut clean = job(r#"{"id":"c","payload":{"x":1},"attempt":2}"#);
    clean.deliveries = 0;
    let suspects = [
        recovered.to_json(),
        r#"{"id":"s","payload":{},"attempt":0,"deliveries" : 1}"#.to_owned(),
        r#"{"deliveries":2, "attempt":0, "payload":null, "id":"t"}"#.to_owned(),
        "{\n \"id\": \"u\",\n \"payload\": 1,\n \"attempt\": 0,\n \"deliveries\"\n:\n3\n}"
            .to_owned(),
    ];
    let innocents = [
        clean.to_json(),
        r#"{"id":"a","payload":{},"attempt":0,"deliveries":0}"#.to_owned(),
        r#"{"deliveries":3}"#.to_owned(),
        r#"{"id":"b","payload":{"deliveries":1},"attempt":0}"#.to_owned(),
    ];
    let (before, after) = (r#"{"n":1}"#.to_owned(), r#"{"n":2}"#.to_owned());
    for suspect in &suspects {
        let _: () = conn.rpush(Q, &[&before, suspect, &after]).await.unwrap();
        let first = store.take(3, MIB, None).await.unwrap();
        assert_eq!(
            (first.items, first.suspect),
            (vec![before.clone().into_bytes()], false)
        );
        let alone = store.take(3, MIB, None).await.unwrap();
        assert_eq!(
            (alone.items, alone.suspect),
            (vec![suspect.clone().into_bytes()], true),
            "{suspect} is taken alone"
        );
        let last = store.take(3, MIB, None).await.unwrap();
        assert_eq!(
            (last.items, last.suspect),
            (vec![after.clone().into_bytes()], false)
        );
    }
    for innocent in &innocents {
        let _: () = conn.rpush(Q, &[&before, innocent, &after]).await.unwrap();
        let all = store.take(3, MIB, None).await.unwrap();
        assert_eq!(
            (all.items.len(), all.suspect),
            (3, false),
            "{innocent} goes with the others"
        );
    }
}
