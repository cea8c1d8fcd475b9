//! `--mode scaleout`: more daemons, and more Redis.
//!
//! First 1, 2 and 4 daemons share one queue on one Redis: jobs/s, and
//! Redis's CPU and commands per job, which must not grow with the daemons
//! (no daemon may add work per job for its peers). Then three queues whose
//! lists hash to three primaries run on a 3-primary Redis Cluster, against
//! the same three queues on one Redis, with the same 2 daemons: the figures
//! say whether Redis or the daemons are the limit. On a 2-core machine the
//! daemons and every redis-server share the cores, so the cluster's gain is
//! bounded by them, not by Redis.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::server::{Family, ServerCommand, ServerProcess, free_port};
use super::{Args, commandstats, cpu_seconds, listed, median, payload, signal};

/// Three queues on three primaries (slots 1782, 7589 and 15533).
const QUEUES: [&str; 3] = ["work", "orders", "webhooks"];

/// One way of running: its servers, the daemons' configuration, how many.
struct Setup {
    label: String,
    config: PathBuf,
    daemons: usize,
    /// Each queue's list and the server (index into `servers`) holding it.
    queues: Vec<(String, usize)>,
    servers: Vec<Server>,
}

struct Server {
    url: String,
    pid: u32,
}

struct Figures {
    jobs_per_s: f64,
    redis_us_per_job: f64,
    commands_per_job: f64,
}

pub(super) fn bench(
    args: &Args,
    url: &str,
    redis_pid: Option<u32>,
    dir: &Path,
) -> anyhow::Result<()> {
    let Some(pid) = redis_pid else {
        println!("scaleout: skipped with --redis-url (it needs redis-server's CPU time)");
        return Ok(());
    };
    println!(
        "scaleout: {} no-op jobs per run, concurrency {} per daemon, events {}",
        args.jobs, args.concurrency, args.events
    );
    println!(
        "{:<46} {:>8}  {:>13}  {:>12}  (runs)",
        "setup", "jobs/s", "Redis CPU/job", "commands/job"
    );
    let mut one = None;
    for daemons in [1, 2, 4] {
        let setup = Setup {
            label: format!("{daemons} daemon(s), 1 queue, 1 Redis"),
            config: config(dir, &format!("url = \"{url}\""), args, &["bench"])?,
            daemons,
            queues: vec![(super::LIST.to_owned(), 0)],
            servers: vec![Server {
                url: url.to_owned(),
                pid,
            }],
        };
        let f = measure(args, &setup)?;
        let base = *one.get_or_insert(f.jobs_per_s);
        println!("{:<46} {:>7.2}x", "  against 1 daemon", f.jobs_per_s / base);
    }

    // Three queues: one Redis, then a 3-primary cluster.
    let single = Setup {
        label: "2 daemons, 3 queues, 1 Redis".into(),
        config: config(dir, &format!("url = \"{url}\""), args, &QUEUES)?,
        daemons: 2,
        queues: QUEUES.iter().map(|q| (format!("jobs:{q}"), 0)).collect(),
        servers: vec![Server {
            url: url.to_owned(),
            pid,
        }],
    };
    let single = measure(args, &single)?;
    let cluster = Cluster::start(dir)?;
    let nodes: Vec<String> = cluster
        .ports
        .iter()
        .map(|p| format!("\"redis://127.0.0.1:{p}\""))
        .collect();
    let mut servers = Vec::new();
    for node in &cluster.nodes {
        servers.push(Server {
            url: format!("redis://127.0.0.1:{}", node.port),
            pid: node.pid().unwrap_or_default(),
        });
    }
    let mut queues = Vec::new();
    for q in QUEUES {
        let list = format!("jobs:{q}");
        let owner = cluster.owner(&list)?;
        queues.push((list, owner));
    }
    let spread = {
        let mut owners: Vec<usize> = queues.iter().map(|(_, o)| *o).collect();
        owners.sort_unstable();
        owners.dedup();
        owners.len()
    };
    let on_cluster = Setup {
        label: format!("2 daemons, 3 queues, cluster ({spread} primaries)"),
        config: config(
            dir,
            &format!("cluster = {{ nodes = [{}] }}", nodes.join(", ")),
            args,
            &QUEUES,
        )?,
        daemons: 2,
        queues,
        servers,
    };
    let on_cluster = measure(args, &on_cluster)?;
    println!(
        "cluster against one Redis: {:.2}x the rate, {:.2}x the Redis CPU per job, {:.2}x the commands per job",
        on_cluster.jobs_per_s / single.jobs_per_s,
        on_cluster.redis_us_per_job / single.redis_us_per_job,
        on_cluster.commands_per_job / single.commands_per_job
    );
    Ok(())
}

fn config(dir: &Path, redis: &str, args: &Args, queues: &[&str]) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("scaleout-{}.toml", fastrand::u32(..)));
    let mut text = format!("[redis]\n{redis}\n");
    for q in queues {
        text.push_str(&format!(
            "[queues.{q}]\nhandler = \"noop\"\nconcurrency = {}\nevents = \"{}\"\n",
            args.concurrency, args.events
        ));
    }
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Runs `setup` `--runs` times; prints and returns the medians.
fn measure(args: &Args, setup: &Setup) -> anyhow::Result<Figures> {
    let mut rates = Vec::new();
    let mut redis_us = Vec::new();
    let mut commands = Vec::new();
    let per_queue = args.jobs / setup.queues.len();
    let jobs = per_queue * setup.queues.len();
    let mut conns: Vec<redis::Connection> = Vec::new();
    for s in &setup.servers {
        conns.push(redis::Client::open(s.url.as_str())?.get_connection()?);
    }
    for _ in 0..args.runs {
        for conn in &mut conns {
            redis::cmd("FLUSHALL").query::<()>(conn)?;
        }
        for (list, at) in &setup.queues {
            preload(&mut conns[*at], list, per_queue, args.payload)?;
        }
        for conn in &mut conns {
            redis::cmd("CONFIG").arg("RESETSTAT").query::<()>(conn)?;
        }
        let cpu0: f64 = setup.servers.iter().map(|s| cpu_seconds(s.pid)).sum();
        let daemons: Vec<Daemon> = (0..setup.daemons)
            .map(|_| Daemon::start(&setup.config))
            .collect::<anyhow::Result<_>>()?;
        let mut polls = vec![0u64; conns.len()];
        let mut processed = |conns: &mut [redis::Connection]| -> u64 {
            setup
                .queues
                .iter()
                .map(|(list, at)| {
                    polls[*at] += 1;
                    redis::cmd("HGET")
                        .arg(format!("{{{list}}}:stats"))
                        .arg("processed")
                        .query::<Option<u64>>(&mut conns[*at])
                        .ok()
                        .flatten()
                        .unwrap_or(0)
                })
                .sum()
        };
        let deadline = Instant::now() + Duration::from_secs(600);
        let (first, t_first) = loop {
            let n = processed(&mut conns);
            if n > 0 {
                break (n, Instant::now());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the daemons did not start working"
            );
            std::thread::sleep(Duration::from_micros(500));
        };
        let t_end = loop {
            if processed(&mut conns) as usize >= jobs {
                break Instant::now();
            }
            anyhow::ensure!(Instant::now() < deadline, "the run did not finish");
            std::thread::sleep(Duration::from_millis(1));
        };
        let cpu: f64 = setup
            .servers
            .iter()
            .map(|s| cpu_seconds(s.pid))
            .sum::<f64>()
            - cpu0;
        let mut calls = 0u64;
        for (i, conn) in conns.iter_mut().enumerate() {
            for (name, n) in commandstats(conn)? {
                let ours = match name.as_str() {
                    "hget" => polls[i],
                    "config|resetstat" | "config" => 1,
                    _ => 0,
                };
                if !name.starts_with("info") {
                    calls += n.saturating_sub(ours);
                }
            }
        }
        drop(daemons);
        rates.push((jobs as u64 - first) as f64 / (t_end - t_first).as_secs_f64());
        redis_us.push(1e6 * cpu / jobs as f64);
        commands.push(calls as f64 / jobs as f64);
    }
    let f = Figures {
        jobs_per_s: median(&rates),
        redis_us_per_job: median(&redis_us),
        commands_per_job: median(&commands),
    };
    println!(
        "{:<46} {:>8.0}  {:>10.2} us  {:>12.2}  ({})",
        setup.label,
        f.jobs_per_s,
        f.redis_us_per_job,
        f.commands_per_job,
        listed(&rates)
    );
    Ok(f)
}

fn preload(conn: &mut redis::Connection, list: &str, n: usize, size: usize) -> anyhow::Result<()> {
    for start in (0..n).step_by(10_000) {
        let mut cmd = redis::cmd("RPUSH");
        cmd.arg(list);
        for i in start..(start + 10_000).min(n) {
            cmd.arg(payload(i, size));
        }
        cmd.query::<()>(conn)?;
    }
    Ok(())
}

/// A daemon child, stopped (SIGTERM, then waited for) when dropped.
struct Daemon(Child);

impl Daemon {
    fn start(config: &Path) -> anyhow::Result<Self> {
        let child = Command::new(env!("CARGO_BIN_EXE_conveyor"))
            .args(["run", "--config"])
            .arg(config)
            .env("CONVEYOR_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Self(child))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        signal(&self.0, "TERM");
        let _reaped = self.0.wait();
    }
}

/// Three cluster-enabled redis-servers, no replicas, all slots assigned.
struct Cluster {
    ports: Vec<u16>,
    nodes: Vec<ServerProcess>,
}

impl Cluster {
    fn start(dir: &Path) -> anyhow::Result<Self> {
        let family = Family::Redis;
        let mut cluster = Self {
            ports: Vec::new(),
            nodes: Vec::new(),
        };
        for i in 0..3 {
            let port = free_port();
            let node_dir = dir.join(format!("cluster-{i}"));
            std::fs::create_dir_all(&node_dir)?;
            let node = ServerCommand::new(family, &node_dir)
                .port(port)
                .cluster(free_port())
                .start()?;
            cluster.nodes.push(node);
            cluster.ports.push(port);
        }
        let addresses: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        // It waits for the nodes to join without end if they cannot.
        let created = Command::new("timeout")
            .arg("60")
            .arg(family.cli())
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        anyhow::ensure!(created.success(), "--cluster create failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        for port in &cluster.ports {
            let mut conn =
                redis::Client::open(format!("redis://127.0.0.1:{port}"))?.get_connection()?;
            loop {
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut conn)?;
                if info.contains("cluster_state:ok") {
                    break;
                }
                anyhow::ensure!(Instant::now() < deadline, "the cluster did not come up");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(cluster)
    }

    /// The index of the node whose primary slots hold `key`.
    fn owner(&self, key: &str) -> anyhow::Result<usize> {
        for (i, port) in self.ports.iter().enumerate() {
            let mut conn =
                redis::Client::open(format!("redis://127.0.0.1:{port}"))?.get_connection()?;
            let slot: u16 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(key)
                .query(&mut conn)?;
            let mine: Vec<Vec<redis::Value>> =
                redis::cmd("CLUSTER").arg("SLOTS").query(&mut conn)?;
            for range in mine {
                let from: u16 = redis::from_redis_value(range[0].clone())?;
                let to: u16 = redis::from_redis_value(range[1].clone())?;
                let redis::Value::Array(primary) = &range[2] else {
                    continue;
                };
                let owner: u16 = redis::from_redis_value(primary[1].clone())?;
                if (from..=to).contains(&slot) && owner == *port {
                    return Ok(i);
                }
            }
        }
        anyhow::bail!("no node holds {key}")
    }
}
