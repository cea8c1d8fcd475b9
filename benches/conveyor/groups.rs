//! `--mode groups` (DESIGN section 14):
//! - the no-op throughput of jobs of 100 tenants with `group = { key =
//!   "tenant", limit = 4 }` against the same jobs with no group,
//!   interleaved run by run so that the machine's drift touches both
//!   alike; the medians, the grouped rate as a share of the plain one, and
//!   the Redis commands per job each way (target: at least 0.5x);
//! - the noisy neighbour: a daemon of concurrency 10 (in this process, its
//!   handler a 1 ms sleep) busy with one tenant's 10,000 jobs, then 100
//!   other tenants push one job each; the time from their push to their
//!   job's start, p50 and p99, with `group` and without.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use conveyor::Job;
use conveyor::handlers::{Handler, HandlerError};
use tokio::sync::mpsc;

use super::{
    Args, LIST, QUEUE, Workload, config_file, in_process, listed, median, median_quantile, ratios,
    throughput,
};

/// The tenants the jobs are spread over, in turn.
const TENANTS: usize = 100;

/// The most jobs of one tenant in flight at once.
const LIMIT: u32 = 4;

/// A no-op job of tenant `i % TENANTS`, `size` bytes long.
fn tenant_payload(i: usize, size: usize) -> String {
    let head = format!("{{\"tenant\":\"t{}\",\"n\":{i},\"pad\":\"", i % TENANTS);
    let pad = size.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(pad))
}

pub(super) fn bench(
    args: &Args,
    url: &str,
    conn: &mut redis::Connection,
    redis_pid: Option<u32>,
    dir: &Path,
) -> anyhow::Result<()> {
    let workload = |label, sub: &str, group: Option<&str>| -> anyhow::Result<Workload> {
        let dir = dir.join(sub);
        std::fs::create_dir_all(&dir)?;
        let config = config_file(&dir, url, args, None)?;
        if let Some(group) = group {
            let mut file = std::fs::OpenOptions::new().append(true).open(&config)?;
            writeln!(file, "{group}")?;
        }
        Ok(Workload {
            label,
            config,
            jobs: args.jobs,
            runs: 1,
            item: tenant_payload,
        })
    };
    let plain = workload("no-op jobs of 100 tenants, no group", "plain", None)?;
    let group = format!("group = {{ key = \"tenant\", limit = {LIMIT} }}");
    let grouped = workload("the same, grouped", "grouped", Some(&group))?;
    println!(
        "groups: {} no-op jobs of {TENANTS} tenants per run, concurrency {}, \
         no group and `{group}`, interleaved",
        args.jobs, args.concurrency
    );
    // With --baseline-bin, the grouped jobs also run on that build, in
    // turn with this one: an A/B of the grouped take in the same run.
    let mut base = args.clone();
    base.daemon_bin.clone_from(&args.baseline_bin);
    let mut rates: [Vec<f64>; 3] = Default::default();
    let mut commands: [Vec<f64>; 3] = Default::default();
    for _ in 0..args.runs {
        let mut each = vec![(args, &plain), (args, &grouped)];
        if args.baseline_bin.is_some() {
            each.push((&base, &grouped));
        }
        for (i, (args, work)) in each.into_iter().enumerate() {
            let run = throughput(args, url, conn, redis_pid, work)?;
            rates[i].push(run.jobs_per_s);
            commands[i].push(run.commands_per_job);
        }
    }
    let names = ["no group", "grouped", "baseline"];
    for (i, name) in names
        .iter()
        .enumerate()
        .filter(|(i, _)| !rates[*i].is_empty())
    {
        println!(
            "{name:<12} {:>9.0} jobs/s   {:.3} Redis commands/job   (runs: {})",
            median(&rates[i]),
            median(&commands[i]),
            listed(&rates[i])
        );
    }
    ratios("grouped/none", &rates[0], &rates[1]);
    if args.baseline_bin.is_some() {
        ratios("grouped/base", &rates[2], &rates[1]);
    }
    neighbours(args, url, conn)
}

/// The flood of the noisy tenant, and how many neighbours push after it.
const FLOOD: usize = 10_000;
const NEIGHBOURS: usize = 100;

/// Sends each job's tenant and start, then works for 1 ms.
struct Started(mpsc::UnboundedSender<(String, Instant)>);

#[derive(serde::Deserialize)]
struct Tenant {
    tenant: String,
}

#[async_trait]
impl Handler for Started {
    async fn handle(&self, job: &Job) -> Result<(), HandlerError> {
        let Tenant { tenant } = job.payload_as()?;
        self.0
            .send((tenant, Instant::now()))
            .map_err(|_| HandlerError::permanent("bench gone"))?;
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok(())
    }
}

fn neighbours(args: &Args, url: &str, conn: &mut redis::Connection) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "groups: noisy neighbour: concurrency 10, 1 ms jobs; tenant a pushes {FLOOD}, then \
         {NEIGHBOURS} tenants one each; their push to start"
    );
    for grouped in [false, true] {
        let mut all = Vec::new();
        for _ in 0..args.runs {
            redis::cmd("FLUSHALL").query::<()>(conn)?;
            all.push(runtime.block_on(neighbours_run(url, grouped))?);
        }
        println!(
            "{:<12} p50 {:>8.1} ms   p99 {:>8.1} ms   (medians of {} runs)",
            if grouped { "grouped" } else { "no group" },
            median_quantile(&all, 0.50),
            median_quantile(&all, 0.99),
            args.runs
        );
    }
    Ok(())
}

/// One run: the neighbours' start delays in ms, sorted.
async fn neighbours_run(url: &str, grouped: bool) -> anyhow::Result<Vec<f64>> {
    let group = if grouped {
        "group = { key = \"tenant\" }\n"
    } else {
        ""
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (daemon, shutdown) = in_process(
        &format!(
            "[redis]\nurl = \"{url}\"\n[queues.{QUEUE}]\nhandler = \"started\"\n\
             concurrency = 10\nevents = \"off\"\n{group}"
        ),
        "started",
        Started(tx),
    )?;
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let job = |tenant: &str, n: usize| format!("{{\"tenant\":\"{tenant}\",\"n\":{n}}}");
    let flood: Vec<String> = (0..FLOOD).map(|n| job("a", n)).collect();
    redis::cmd("RPUSH")
        .arg(LIST)
        .arg(&flood)
        .query_async::<()>(&mut conn)
        .await?;
    // The daemon is busy with the flood.
    tokio::time::timeout(Duration::from_secs(30), rx.recv()).await?;
    let others: Vec<String> = (0..NEIGHBOURS).map(|n| job(&format!("n{n}"), n)).collect();
    let pushed = Instant::now();
    redis::cmd("RPUSH")
        .arg(LIST)
        .arg(&others)
        .query_async::<()>(&mut conn)
        .await?;
    let mut delays = Vec::with_capacity(NEIGHBOURS);
    while delays.len() < NEIGHBOURS {
        let (tenant, started) = tokio::time::timeout(Duration::from_secs(120), rx.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("daemon gone"))?;
        if tenant != "a" {
            delays.push((started - pushed).as_secs_f64() * 1000.0);
        }
    }
    shutdown.terminate.cancel();
    daemon.await??;
    delays.sort_by(f64::total_cmp);
    Ok(delays)
}
