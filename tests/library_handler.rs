//! A handler from the library does what a built-in does, through the
//! public API alone, and adding it takes its own code and one line of
//! registration: it keeps state in Redis under its queue's slot
//! (`HandlerContext::store`), reads node-wide settings of its own (its
//! `[tally]` table, `HandlerContext::settings`), defines a rate-limit key
//! (`Handler::rate_limit_key`) and masks its own secrets in the startup log
//! (`Registry::mask_secrets`), against a private redis-server.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::sync::Arc;
use std::time::Duration;

use conveyor::config::ConfigError;
use conveyor::handlers::{Handler, HandlerContext, HandlerStore, RateLimitKey};
use conveyor::{HandlerError, Job, Registry, async_trait};
use redis::AsyncCommands as _;
use serde::Deserialize;

use common::*;

/// `[tally]`: the handler's node-wide settings.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    step: i64,
}

/// `[queues.<q>.tally]`: its options, one of them a secret.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    #[allow(dead_code)] // only ever masked
    token: String,
}

/// Adds `[tally] step` to the count of the payload's `name`, in Redis.
struct Tally {
    store: HandlerStore,
    step: i64,
}

impl Tally {
    fn build(ctx: &HandlerContext<'_>) -> Result<Arc<dyn Handler>, ConfigError> {
        let settings: Settings = ctx.settings()?;
        let _: Options = ctx.options()?;
        Ok(Arc::new(Tally {
            store: ctx.store(),
            step: settings.step,
        }))
    }
}

#[async_trait]
impl Handler for Tally {
    async fn handle(&self, job: &Job) -> Result<(), HandlerError> {
        let p: serde_json::Value = job.payload_as()?;
        let name = p["name"]
            .as_str()
            .ok_or_else(|| HandlerError::permanent("no name"))?;
        self.store
            .increment(&format!("count:{name}"), self.step)
            .await?;
        Ok(())
    }

    /// `initial`: the first letter of the name.
    fn rate_limit_key(&self, key: &str, payload: &serde_json::Value) -> Option<RateLimitKey> {
        (key == "initial").then(|| match payload["name"].as_str() {
            Some(name) => RateLimitKey::Value(name.chars().take(1).collect()),
            None => RateLimitKey::Missing,
        })
    }
}

fn registry() -> Registry {
    let mut registry = builtin();
    registry.register("tally", Tally::build);
    registry.mask_secrets("tally", |options| {
        options.insert("token".into(), "***".into());
    });
    registry
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_library_handler_keeps_state_in_redis_and_reads_its_own_settings() {
    let redis = Redis::start();
    let config = config(
        &redis,
        "[tally]\nstep = 2\n\
         [queues.t]\nhandler = \"tally\"\n\
         rate_limit = { limit = 1, window = \"1h\", key = \"initial\" }\n\
         [queues.t.tally]\ntoken = \"tally-secret\"\n",
    );
    let shown = registry().masked_toml(&config);
    assert!(
        !shown.contains("tally-secret") && shown.contains("step = 2"),
        "{shown}"
    );
    let mut conn = redis.conn().await;
    for name in ["ada", "bob"] {
        let _: () = conn
            .rpush("jobs:t", serde_json::json!({ "name": name }).to_string())
            .await
            .unwrap();
    }
    let daemon = TestDaemon::start(config, registry());
    wait_until("ada and bob counted", Duration::from_secs(20), || {
        let mut c = conn.clone();
        async move {
            let ada: Option<i64> = c.get("{jobs:t}:count:ada").await.unwrap();
            let bob: Option<i64> = c.get("{jobs:t}:count:bob").await.unwrap();
            ada == Some(2) && bob == Some(2)
        }
    })
    .await;
    // "alan" shares ada's initial: over the limit of one start an hour in
    // that window, it waits, scheduled, and is not counted.
    let _: () = conn
        .rpush("jobs:t", serde_json::json!({ "name": "alan" }).to_string())
        .await
        .unwrap();
    wait_until(
        "alan held back by the rate limit",
        Duration::from_secs(20),
        || {
            let mut c = conn.clone();
            async move { zcard(&mut c, "{jobs:t}:scheduled").await == 1 }
        },
    )
    .await;
    let alan: Option<i64> = conn.get("{jobs:t}:count:alan").await.unwrap();
    assert_eq!(alan, None);
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_its_settings_rebuilds_its_queues() {
    let redis = Redis::start();
    let queue = "[queues.t]\nhandler = \"tally\"\n[queues.t.tally]\ntoken = \"x\"\n";
    let before = config(&redis, &format!("[tally]\nstep = 2\n{queue}"));
    let after = config(&redis, &format!("[tally]\nstep = 5\n{queue}"));
    let daemon =
        TestDaemon::start_reloadable(before, registry(), Box::new(move || Ok(after.clone())));
    let conn = redis.conn().await;
    let counted = |name: String| {
        let mut c = conn.clone();
        async move {
            let _: () = c
                .rpush("jobs:t", serde_json::json!({ "name": name }).to_string())
                .await
                .unwrap();
            let key = format!("{{jobs:t}}:count:{name}");
            wait_until("the job counted", Duration::from_secs(20), || {
                let (mut c, key) = (c.clone(), key.clone());
                async move { c.get::<_, Option<i64>>(&key).await.unwrap().is_some() }
            })
            .await;
            c.get::<_, Option<i64>>(&key).await.unwrap()
        }
    };
    assert_eq!(counted("first".into()).await, Some(2));
    daemon.shutdown.reload.notify_one();
    // Jobs taken before the reload lands still count 2; one after it, 5.
    let mut steps = Vec::new();
    for i in 0..200 {
        let step = counted(format!("next{i}")).await;
        steps.push(step);
        if step == Some(5) {
            break;
        }
    }
    assert_eq!(steps.last(), Some(&Some(5)), "{steps:?}");
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn its_settings_and_options_are_checked_like_a_built_ins() {
    let redis = Redis::start();
    let refused = |toml: &str| {
        let config = config(&redis, toml);
        registry()
            .build_all(&config)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let err = refused(
        "[tally]\nstepp = 2\n[queues.t]\nhandler = \"tally\"\n[queues.t.tally]\ntoken = \"x\"\n",
    );
    assert!(err.contains("tally") && err.contains("stepp"), "{err}");
    let err = refused("[tally]\nstep = 2\n[queues.t]\nhandler = \"tally\"\n");
    assert!(
        err.contains("queues.t.tally") && err.contains("token"),
        "{err}"
    );
    let err = refused("[tallly]\nstep = 2\n[queues.t]\nhandler = \"noop\"\n");
    assert!(err.contains("[tallly] is not a table"), "{err}");
}

/// A program enqueues typed payloads through `api::Client::enqueue`, with
/// the options `conveyor enqueue` has, and the daemon runs them: the item
/// is the envelope the wire format describes, a delayed job waits in the
/// schedule, a unique one is not enqueued twice, and a payload too large
/// for its queue is refused with nothing pushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_enqueues_typed_jobs_that_the_daemon_runs() {
    use conveyor::api::{ApiError, Client, EnqueueOptions, Enqueued};

    #[derive(serde::Serialize)]
    struct Resize<'a> {
        image: &'a str,
        width: u32,
    }

    let redis = Redis::start();
    let mut conn = redis.conn().await;
    let config = config(
        &redis,
        "[queues.work]\nhandler = \"noop\"\nmax_payload_bytes = 64\n",
    );
    let client = Client::new(&config, "app").unwrap();
    let first = Resize {
        image: "a.png",
        width: 300,
    };
    let Enqueued::Queued { id } = client
        .enqueue("work", &first, &EnqueueOptions::default())
        .await
        .unwrap()
    else {
        panic!("a plain job is queued");
    };
    let items: Vec<Vec<u8>> = conn.lrange("jobs:work", 0, -1).await.unwrap();
    assert_eq!(items.len(), 1);
    let envelope = conveyor::envelope::parse_item(&items[0], 1 << 20)
        .unwrap()
        .envelope;
    assert_eq!(envelope.id, id);
    assert_eq!(envelope.attempt, 0);
    assert_eq!(envelope.payload.get(), r#"{"image":"a.png","width":300}"#);

    let later = EnqueueOptions {
        delay: Some(Duration::from_secs(3600)),
        max_attempts: Some(2),
        ..Default::default()
    };
    client.enqueue("work", &first, &later).await.unwrap();
    assert_eq!(zcard(&mut conn, "{jobs:work}:scheduled").await, 1);

    let once = EnqueueOptions {
        unique_for: Some(Duration::from_secs(600)),
        unique_key: Some("b.png".into()),
        ..Default::default()
    };
    let second = Resize {
        image: "b.png",
        width: 10,
    };
    let Enqueued::Queued { id: holder } = client.enqueue("work", &second, &once).await.unwrap()
    else {
        panic!("the first unique job is queued");
    };
    assert_eq!(
        client.enqueue("work", &second, &once).await.unwrap(),
        Enqueued::Duplicate { holder }
    );

    let large = Resize {
        image: &"x".repeat(100),
        width: 1,
    };
    let refused = client
        .enqueue("work", &large, &EnqueueOptions::default())
        .await;
    assert!(
        matches!(&refused, Err(ApiError::Invalid(e)) if e.contains("payload")),
        "{refused:?}"
    );
    let zero = EnqueueOptions {
        max_attempts: Some(0),
        ..Default::default()
    };
    assert!(matches!(
        client.enqueue("work", &first, &zero).await,
        Err(ApiError::Invalid(_))
    ));
    assert_eq!(
        llen(&mut conn, "jobs:work").await,
        2,
        "nothing refused was pushed"
    );

    let daemon = TestDaemon::start(config, Registry::builtin());
    wait_until(
        "the daemon runs the two waiting jobs",
        Duration::from_secs(20),
        || {
            let mut c = conn.clone();
            async move { stat(&mut c, "jobs:work", "processed").await == 2 }
        },
    )
    .await;
    assert_eq!(zcard(&mut conn, "{jobs:work}:scheduled").await, 1);
    daemon.stop().await.unwrap();
}
