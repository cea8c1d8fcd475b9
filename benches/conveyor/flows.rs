//! `--mode flow` (DESIGN section 13): a fan-out of N no-op nodes closed by
//! one fan-in, at 1,000 and 10,000 nodes, and a chain of 1,000, each
//! against N plain no-op jobs pushed at once, interleaved run by run, the
//! daemon (the real binary) started before either is pushed. Reported: the
//! nodes' rate as a share of the plain jobs' (target for the fan-out: at
//! least 0.5x), Redis commands and Redis CPU per node, and, for O(N + E)
//! total work, the commands per node at 1,000 and 10,000.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{
    Args, LIST, QUEUE, commandstats, config_file, cpu_seconds, listed, median, payload, ratios,
    signal,
};

/// One measured run.
struct Run {
    per_s: f64,
    commands: f64,
    redis_us: f64,
    daemon_us: f64,
}

/// A flow's shape.
#[derive(Clone, Copy)]
enum Shape {
    /// `n` nodes that wait for nothing, and a fan-in after all of them.
    Fan(usize),
    /// `n` nodes, each after the one before.
    Chain(usize),
}

impl Shape {
    fn nodes(self) -> usize {
        match self {
            Shape::Fan(n) => n + 1,
            Shape::Chain(n) => n,
        }
    }

    fn label(self) -> String {
        match self {
            Shape::Fan(n) => format!("fan-out of {n} + 1 fan-in"),
            Shape::Chain(n) => format!("chain of {n}"),
        }
    }

    fn document(self, size: usize) -> String {
        let mut jobs = serde_json::Map::new();
        let node = |i: usize, after: Vec<String>| {
            let payload: serde_json::Value = serde_json::from_str(&payload(i, size)).expect("JSON");
            serde_json::json!({"queue": QUEUE, "payload": payload, "after": after})
        };
        match self {
            Shape::Fan(n) => {
                let names: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
                for (i, name) in names.iter().enumerate() {
                    jobs.insert(name.clone(), node(i, vec![]));
                }
                jobs.insert("fan-in".into(), node(n, names));
            }
            Shape::Chain(n) => {
                for i in 0..n {
                    let after = if i == 0 {
                        vec![]
                    } else {
                        vec![format!("n{}", i - 1)]
                    };
                    jobs.insert(format!("n{i}"), node(i, after));
                }
            }
        }
        serde_json::json!({"flow": "bench", "jobs": jobs, "on_failure": "continue"}).to_string()
    }
}

pub(super) fn bench(
    args: &Args,
    url: &str,
    conn: &mut redis::Connection,
    redis_pid: Option<u32>,
    dir: &Path,
) -> anyhow::Result<()> {
    let dir = dir.join("flow");
    std::fs::create_dir_all(&dir)?;
    let cfg = config_file(&dir, url, args, None)?;
    // A fan-out of 10,000 and its fan-in are 10,001 nodes.
    let mut file = std::fs::OpenOptions::new().append(true).open(&cfg)?;
    std::io::Write::write_all(&mut file, b"[flows]\nmax_nodes = 20000\n")?;
    println!(
        "flow: nodes of no-op jobs against as many plain jobs pushed at once, concurrency {}, \
         the daemon started first, interleaved, {} runs",
        args.concurrency, args.runs
    );
    let mut per_node = Vec::new();
    for shape in [Shape::Fan(1_000), Shape::Fan(10_000), Shape::Chain(1_000)] {
        let n = shape.nodes();
        let (mut plain, mut flow) = (Vec::new(), Vec::new());
        for _ in 0..args.runs {
            plain.push(run(args, &cfg, conn, redis_pid, n, None)?);
            flow.push(run(args, &cfg, conn, redis_pid, n, Some(shape))?);
        }
        let rates = |runs: &[Run]| runs.iter().map(|r| r.per_s).collect::<Vec<_>>();
        let of = |runs: &[Run], f: fn(&Run) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        println!("{}: {n} nodes", shape.label());
        for (name, runs) in [("plain jobs", &plain), ("flow nodes", &flow)] {
            println!(
                "  {name:<11} {:>9.0} /s   {:.2} Redis commands each   Redis {:.1} us, daemon {:.1} us of CPU each   (runs: {})",
                median(&rates(runs)),
                of(runs, |r| r.commands),
                of(runs, |r| r.redis_us),
                of(runs, |r| r.daemon_us),
                listed(&rates(runs))
            );
        }
        ratios("  flow/plain", &rates(&plain), &rates(&flow));
        if let Shape::Fan(size) = shape {
            per_node.push((size, of(&flow, |r| r.commands), of(&flow, |r| r.redis_us)));
        }
    }
    if let [(small, c1, r1), (large, c2, r2)] = per_node[..] {
        println!(
            "flow: O(N + E): per node, {small} nodes {c1:.2} commands and {r1:.1} us of Redis CPU, \
             {large} nodes {c2:.2} and {r2:.1} ({:.2}x and {:.2}x)",
            c2 / c1,
            r2 / r1
        );
    }
    Ok(())
}

/// One run: `n` plain jobs, or a flow of `shape`, through a fresh daemon.
fn run(
    args: &Args,
    cfg: &PathBuf,
    conn: &mut redis::Connection,
    redis_pid: Option<u32>,
    n: usize,
    shape: Option<Shape>,
) -> anyhow::Result<Run> {
    redis::cmd("FLUSHALL").query::<()>(conn)?;
    let document = shape.map(|s| s.document(args.payload));
    let bin = args
        .daemon_bin
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_conveyor")));
    let mut daemon = Daemon(
        Command::new(bin)
            .args(["run", "--config"])
            .arg(cfg)
            .env("CONVEYOR_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()?,
    );
    let deadline = Instant::now() + Duration::from_secs(600);
    // Started: listed in its queue.
    while redis::cmd("SCARD")
        .arg(format!("{{{LIST}}}:nodes"))
        .query::<u64>(conn)?
        == 0
    {
        anyhow::ensure!(Instant::now() < deadline, "the daemon did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(200));
    redis::cmd("CONFIG").arg("RESETSTAT").query::<()>(conn)?;
    let redis_cpu0 = redis_pid.map(cpu_seconds).unwrap_or(0.0);
    let daemon_cpu0 = cpu_seconds(daemon.0.id());
    let started = Instant::now();
    let mut pushes = 0;
    match &document {
        Some(doc) => {
            redis::cmd("RPUSH")
                .arg("conveyor:flows")
                .arg(doc)
                .query::<()>(conn)?;
            pushes += 1;
        }
        None => {
            for start in (0..n).step_by(10_000) {
                let mut cmd = redis::cmd("RPUSH");
                cmd.arg(LIST);
                for i in start..(start + 10_000).min(n) {
                    cmd.arg(payload(i, args.payload));
                }
                cmd.query::<()>(conn)?;
                pushes += 1;
            }
        }
    }
    let mut polls = 0u64;
    loop {
        polls += 1;
        let done = match &document {
            Some(_) => redis::cmd("HGET")
                .arg("{flow:bench}:meta")
                .arg("status")
                .query::<Option<String>>(conn)?
                .is_some_and(|s| s != "running"),
            None => {
                redis::cmd("HGET")
                    .arg(format!("{{{LIST}}}:stats"))
                    .arg("processed")
                    .query::<Option<u64>>(conn)?
                    .unwrap_or(0) as usize
                    >= n
            }
        };
        if done {
            break;
        }
        let refused: Option<String> = redis::cmd("LINDEX")
            .arg("{conveyor:flows}:dead")
            .arg(0)
            .query(conn)?;
        anyhow::ensure!(refused.is_none(), "the flow was refused: {refused:?}");
        anyhow::ensure!(Instant::now() < deadline, "the run did not finish");
        std::thread::sleep(Duration::from_millis(1));
    }
    let took = started.elapsed();
    let redis_cpu = redis_pid.map(cpu_seconds).unwrap_or(0.0) - redis_cpu0;
    let daemon_cpu = cpu_seconds(daemon.0.id()) - daemon_cpu0;
    let stats = commandstats(conn)?;
    signal(&daemon.0, "TERM");
    daemon.0.wait()?;
    // Our own pushes and polls are not the daemon's cost.
    let ours = |name: &str| match name {
        "hget" => polls,
        "lindex" => polls,
        "rpush" => pushes,
        "config|resetstat" | "config" => 1,
        _ => 0,
    };
    let commands: u64 = stats
        .iter()
        .filter(|(name, _)| !name.starts_with("info"))
        .map(|(name, calls)| calls.saturating_sub(ours(name)))
        .sum();
    Ok(Run {
        per_s: n as f64 / took.as_secs_f64(),
        commands: commands as f64 / n as f64,
        redis_us: 1e6 * redis_cpu / n as f64,
        daemon_us: 1e6 * daemon_cpu / n as f64,
    })
}

/// The daemon of a run, killed if the run fails.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
