//! `systemctl reload` (SIGHUP): the configuration read again and applied
//! without a restart, and without dropping or rerunning a job.
//!
//! A configuration that does not validate, or a queue whose handler cannot
//! be built from it, is refused with the reason logged, and the running
//! one is kept whole. Otherwise: a queue that is gone, or whose settings
//! changed (concurrency, rate limit, timeout, handler options, ...), stops
//! taking jobs and its running jobs finish (none is cut short); then the
//! queues that are new or changed start, after the node is listed in them;
//! the schedules start again from the new configuration. Queues that did
//! not change run on untouched. Settings of the whole node (`[redis]`,
//! `[daemon]`, `[events]`, `[web]`) take a restart; a reload that changes them says
//! so and applies the rest.

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Reloader;
use super::heartbeat::Heartbeat;
use super::notify;
use super::periodic::Periodic;
use super::queues::Queues;
use super::retry::Retry;
use super::stages::HANDLER_GRACE;
use super::writer::Events;
use crate::broker::Broker;
use crate::clock::Clock;
use crate::config::Config;
use crate::handlers::Registry;

/// What a reload works with.
pub(super) struct Context<'a> {
    pub(super) registry: &'a Registry,
    pub(super) broker: &'a Broker,
    pub(super) heartbeat: &'a Heartbeat,
    pub(super) events: &'a Events,
    pub(super) stop_background: &'a CancellationToken,
    /// A shutdown that begins during a reload ends it where it stands.
    pub(super) terminate: &'a CancellationToken,
    pub(super) clock: &'a Clock,
}

/// Beats until the node is listed (or `cancel`): a queue's first job is
/// taken only once the node is in its `{K}:nodes`, where a reaper looks
/// for the jobs of a node that died.
pub(super) async fn register(
    heartbeat: &Heartbeat,
    cancel: &CancellationToken,
    clock: &Clock,
) -> bool {
    let mut retry = Retry::new("registering the node", clock);
    loop {
        match heartbeat.beat().await {
            Ok(()) => return true,
            Err(e) => {
                if !retry.wait(&e, cancel).await {
                    return false;
                }
            }
        }
    }
}

/// The schedules' component, restarted by a reload.
pub(super) struct Periodics {
    task: JoinHandle<()>,
    stop: CancellationToken,
}

impl Periodics {
    /// Starts the schedules of `config` whose queues `queues` runs.
    pub(super) fn start(
        config: &Config,
        queues: &Queues,
        events: &Events,
        parent: &CancellationToken,
        clock: &Clock,
    ) -> Self {
        let stores: Vec<_> = queues
            .snapshot()
            .iter()
            .map(|p| p.store().clone())
            .collect();
        let stop = parent.child_token();
        let periodic = Periodic::new(config, &stores, events.clone(), clock.clone());
        let task = tokio::spawn(periodic.run(stop.clone()));
        Self { task, stop }
    }

    /// Stops them and waits.
    pub(super) async fn stop(self) {
        self.stop.cancel();
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "schedules task failed");
        }
    }
}

/// Reads the configuration again and applies it; says how it went to the
/// log and to systemd.
pub(super) async fn reload(
    config: &mut Config,
    reloader: Option<&Reloader>,
    queues: &mut Queues,
    periodic: &mut Periodics,
    cx: &Context<'_>,
) {
    notify::reloading("reloading the configuration");
    let Some(reloader) = reloader else {
        tracing::warn!(
            "reload: this daemon was started without a configuration file to read again"
        );
        notify::ready("running");
        return;
    };
    let status = match apply(config, reloader, queues, periodic, cx).await {
        Ok(summary) => {
            tracing::info!(changes = %summary, "configuration reloaded");
            "running (configuration reloaded)".to_owned()
        }
        Err(why) => {
            tracing::error!(error = %why, "reload refused; the running configuration is kept");
            format!("running; the last reload was refused: {why}")
        }
    };
    notify::ready(&status);
}

async fn apply(
    config: &mut Config,
    reloader: &Reloader,
    queues: &mut Queues,
    periodic: &mut Periodics,
    cx: &Context<'_>,
) -> Result<String, String> {
    let mut new = reloader().map_err(|e| e.to_string())?;
    if new.queues.is_empty() {
        return Err("no queues configured: add a [queues.<name>] table".into());
    }
    for (section, same) in [
        ("[redis]", new.redis == config.redis),
        ("[daemon]", new.daemon == config.daemon),
        ("[events]", new.events == config.events),
        ("[web]", new.web == config.web),
    ] {
        if !same {
            tracing::warn!(
                section,
                "reload: this section changed; a restart applies it, a reload does not"
            );
        }
    }
    // What the node runs with stays as it started.
    new.redis = config.redis.clone();
    new.daemon = config.daemon.clone();
    new.events = config.events.clone();
    new.web = config.web.clone();

    let running = queues.names();
    let removed: Vec<String> = running
        .iter()
        .filter(|name| !new.queues.contains_key(*name))
        .cloned()
        .collect();
    let changed: Vec<String> = running
        .iter()
        .filter(|name| queues.changed(name, &new))
        .cloned()
        .collect();
    let added: Vec<String> = new
        .queues
        .keys()
        .filter(|name| !running.contains(name))
        .cloned()
        .collect();
    // Every handler is built before anything stops: a queue that cannot
    // be built refuses the whole reload.
    cx.registry
        .check_settings(&new)
        .map_err(|e| e.to_string())?;
    let mut built = Vec::new();
    for name in changed.iter().chain(&added) {
        let handler = cx
            .registry
            .build_one(&new, cx.broker, name)
            .map_err(|e| e.to_string())?;
        built.push((name.clone(), handler));
    }

    let stopping: Vec<&String> = removed.iter().chain(&changed).collect();
    for name in &stopping {
        queues.stop(name);
    }
    for name in &stopping {
        tracing::info!(queue = %name, "reload: stopping the queue; its running jobs finish first");
        tokio::select! {
            _ = queues.retire(name, HANDLER_GRACE) => {}
            // The shutdown takes over: it drains what is stopping.
            _ = cx.terminate.cancelled() => return Err("a shutdown began".into()),
        }
    }
    for (name, handler) in built {
        queues.add(&name, &new, handler).await;
    }
    if !register(cx.heartbeat, cx.terminate, cx.clock).await {
        return Err("a shutdown began".into());
    }
    // A new or changed queue that is paused takes nothing from its start.
    if let Err(e) = super::pause::look(cx.broker, &queues.processors()).await {
        tracing::warn!(error = %e, "could not read which queues are paused; will look again");
    }
    queues.launch();
    let old = std::mem::replace(
        periodic,
        Periodics::start(&new, queues, cx.events, cx.stop_background, cx.clock),
    );
    old.stop().await;
    let schedules = new.schedules.len();
    *config = new;
    Ok(format!(
        "queues added: [{}], removed: [{}], restarted with new settings: [{}]; {schedules} schedule{}",
        added.join(", "),
        removed.join(", "),
        changed.join(", "),
        if schedules == 1 { "" } else { "s" }
    ))
}
