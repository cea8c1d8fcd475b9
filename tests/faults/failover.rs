//! Redis failing over under load: a master, one replica and three
//! sentinels; the daemon is given the sentinels, not an address, and must
//! follow the master to the replica without a restart.
//!
//! Jobs count as enqueued only once a replica acknowledged them (`WAIT 1`):
//! replication is asynchronous, so a write the master took but never passed
//! on is gone with the master, and no worker can keep it. Everything else
//! the daemon did on the old master and the replica missed (a job taken, an
//! outcome recorded) comes back as a job waiting or in flight on the new
//! master: the daemon's periodic in-flight check returns the second kind,
//! and both run again (duplicates, never losses).

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use serde_json::json;

use crate::common::sentinel::{PASSWORD, SENTINEL_PASSWORD, Sentinels, data_conn};
use crate::common::{conveyor, spawn_logged_out, wait_until};
use crate::harness::*;

const WAIT: Duration = Duration::from_secs(60);
/// Outcomes recorded after the failover that count as "working again".
const RESUMED: u64 = 100;

/// Loads `jobs` jobs onto the master and waits for the replica to have them.
async fn load_acknowledged(master: &mut MultiplexedConnection, ledger: &mut Ledger, jobs: usize) {
    let items: Vec<String> = (0..jobs)
        .map(|_| ledger.job(json!({"sleep_ms": fastrand::u64(0..=4)})))
        .collect();
    push_all(master, Q, &items).await;
    let replicas: u64 = redis::cmd("WAIT")
        .arg(1)
        .arg(10_000)
        .query_async(master)
        .await
        .unwrap();
    assert_eq!(replicas, 1, "the replica acknowledged the jobs");
}

/// A daemon given `redis` (a `[redis]` line) working through 10,000
/// acknowledged jobs loaded through `conn`, 50 at a time, caught at 30%.
struct UnderLoad {
    daemon: Daemon,
    ledger: Ledger,
    jobs: usize,
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn thirty_percent_in(
    redis: &str,
    password: &str,
    conn: &mut MultiplexedConnection,
) -> UnderLoad {
    let jobs = 10_000 * scale();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("conveyor.toml");
    std::fs::write(
        &config,
        format!(
            "[redis]\n{redis}\n[daemon]\n{FAST}\n[queues.work]\nhandler = \"fault\"\nconcurrency = 50\n"
        ),
    )
    .unwrap();
    let mut ledger = Ledger::new();
    load_acknowledged(conn, &mut ledger, jobs).await;
    let daemon = Daemon::start_with_env(&config, &[("REDIS_PASSWORD", password)]);
    let at = (jobs * 3 / 10) as u64;
    wait_until("30% done", WAIT, || {
        let mut c = conn.clone();
        async move { processed(&mut c).await >= at }
    })
    .await;
    UnderLoad {
        daemon,
        ledger,
        jobs,
        config,
        _dir: dir,
    }
}

/// Waits until `RESUMED` more outcomes are recorded through `conn` (the
/// new master); the time since `fault`.
async fn resumed(conn: &MultiplexedConnection, fault: Instant) -> Duration {
    let from = processed(&mut conn.clone()).await;
    time_until(WAIT, || {
        let mut c = conn.clone();
        async move { processed(&mut c).await >= from + RESUMED }
    })
    .await
    .expect("processing resumes on the new master");
    fault.elapsed()
}

impl UnderLoad {
    /// Drains through `conn`, prints the scenario's line, and checks that
    /// every job completed and the daemon is healthy.
    async fn all_complete(
        &mut self,
        conn: &mut MultiplexedConnection,
        scenario: &str,
        recover: Duration,
        more: &str,
    ) {
        let tally = self.ledger.drain(conn, WAIT * scale() as u32).await;
        report(scenario, &tally, Some(recover), more);
        if !tally.settled() {
            self.daemon.dump_log(80);
        }
        tally.assert_settled();
        assert_eq!(tally.completed, self.jobs, "{tally:?}");
        self.daemon.assert_healthy();
    }
}

enum Fault {
    /// The master SIGKILLed; the sentinels notice after
    /// `down-after-milliseconds` (1 s) and promote the replica.
    Kill,
    /// `SENTINEL FAILOVER`: the replica promoted and the master demoted to
    /// a replica while both stay up, so a connection to the old master
    /// answers `READONLY` instead of failing.
    SwitchOver,
}

/// 10,000 acknowledged jobs, 50 at a time; the fault at 30%. Time to
/// recover: from the fault until 100 more outcomes are recorded on the new
/// master (the failover's own time, about 1-3 s for a kill, included).
async fn failover_under_load(scenario: &str, fault: Fault) {
    let _serial = serial().await;
    let mut set = Sentinels::start().await;
    let mut master = set.master().await;
    let mut run = thirty_percent_in(&set.config_line(), PASSWORD, &mut master).await;
    // Events followed through the failover by `conveyor monitor`.
    let mut monitor = conveyor();
    monitor
        .args(["--config", run.config.to_str().unwrap(), "monitor"])
        .env("REDIS_PASSWORD", PASSWORD);
    let (_monitor, monitor_logs, monitor_out) = spawn_logged_out(monitor);
    wait_until("the monitor shows events", WAIT, || {
        let out = monitor_out.clone();
        async move { !out.lines().is_empty() }
    })
    .await;

    let faulted = Instant::now();
    let old = match fault {
        Fault::Kill => set.kill_master().await,
        Fault::SwitchOver => set.switch_over().await,
    };
    let (new, failover) = set.wait_new_master(old, WAIT).await;
    let mut master = data_conn(new).await.unwrap();
    let recover = resumed(&master, faulted).await;

    // The monitor's subscription follows the master (it misses what is
    // published while it moves, and says so): a job enqueued once it
    // follows again shows.
    let moved = time_until(WAIT, || {
        let logs = monitor_logs.clone();
        async move { logs.contains("following events again") }
    })
    .await;
    assert!(
        moved.is_some(),
        "the monitor follows the new master: {:?}",
        monitor_logs.lines()
    );
    // The sentinels may tell of the move more than once, and the monitor
    // then moves again (missing what is published meanwhile): a marker
    // every few seconds until one shows.
    let started = Instant::now();
    let mut seen = None;
    for n in 0.. {
        if started.elapsed() > WAIT {
            break;
        }
        let marker = format!("marker-after-the-failover-{n}");
        let item = json!({"id": marker, "payload": {}, "attempt": 0}).to_string();
        let _: () = redis::cmd("RPUSH")
            .arg(Q)
            .arg(&item)
            .query_async(&mut master)
            .await
            .unwrap();
        seen = time_until(Duration::from_secs(3), || {
            let (out, marker) = (monitor_out.clone(), marker.clone());
            async move { out.contains(&marker) }
        })
        .await;
        if seen.is_some() {
            break;
        }
    }
    if seen.is_none() {
        run.daemon.dump_log(200);
    }
    assert!(
        seen.is_some(),
        "the monitor shows a job enqueued after the failover; it printed:\n{}\n{}",
        monitor_logs.lines().join("\n"),
        monitor_out
            .lines()
            .iter()
            .rev()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );

    let more = format!("failover={:.1}s", failover.as_secs_f64());
    run.all_complete(&mut master, scenario, recover, &more)
        .await;
    let logs = run.daemon.logs().lines().join("\n");
    assert!(
        logs.contains(&format!("127.0.0.1:{new}")),
        "the daemon says which master it found: {logs}"
    );
    for secret in [PASSWORD, SENTINEL_PASSWORD] {
        assert!(!logs.contains(secret), "passwords stay out of the log");
    }
    let monitor_text = [monitor_logs.lines(), monitor_out.lines()]
        .concat()
        .join("\n");
    assert!(!monitor_text.contains(PASSWORD) && !monitor_text.contains(SENTINEL_PASSWORD));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_master_killed() {
    failover_under_load("sentinel_master_killed", Fault::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_switchover() {
    failover_under_load("sentinel_switchover", Fault::SwitchOver).await;
}

/// A cluster of three primaries and three replicas
/// (`cluster-node-timeout` 2 s); the primary that holds the queue SIGKILLed
/// at 30%, its replica promoted by the cluster itself. 10,000 jobs
/// acknowledged by the replica (`WAIT 1`), 50 at a time. Time to recover:
/// from the kill until 100 more outcomes are recorded on the new primary
/// (the cluster's failover included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_primary_killed() {
    use crate::common::cluster::{self, Cluster};
    let _serial = serial().await;
    let mut set = Cluster::start().await;
    let mut primary = set.conn_for(Q).await;
    let mut run = thirty_percent_in(&set.config_line(), cluster::PASSWORD, &mut primary).await;
    let old = set.primary_of(Q).await;
    let killed = Instant::now();
    set.kill(old);
    let (new, failover) = set.wait_failover(Q, old, WAIT).await;
    let mut primary = set.conn_to(new).await.unwrap();
    let recover = resumed(&primary, killed).await;
    let more = format!("failover={:.1}s", failover.as_secs_f64());
    run.all_complete(&mut primary, "cluster_primary_killed", recover, &more)
        .await;
    assert!(!run.daemon.logs().contains(cluster::PASSWORD));
}

/// The slot of the queue moved to another primary at 30%, key by key,
/// while the daemon works (the clients meet ASK, TRYAGAIN and MOVED).
/// 10,000 jobs, 50 at a time. Time to recover: from the end of the move
/// until 100 more outcomes are recorded on the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_slot_moved() {
    use crate::common::cluster::{self, Cluster};
    let _serial = serial().await;
    let set = Cluster::start().await;
    let mut primary = set.conn_for(Q).await;
    let mut run = thirty_percent_in(&set.config_line(), cluster::PASSWORD, &mut primary).await;
    let old = set.primary_of(Q).await;
    let to = *set.primaries().await.iter().find(|p| **p != old).unwrap();
    let started = Instant::now();
    set.move_slot(Q, to).await;
    let moved = started.elapsed();
    assert_eq!(set.primary_of(Q).await, to);
    let mut primary = set.conn_to(to).await.unwrap();
    let recover = resumed(&primary, Instant::now()).await;
    let more = format!("move={:.1}s", moved.as_secs_f64());
    run.all_complete(&mut primary, "cluster_slot_moved", recover, &more)
        .await;
}
