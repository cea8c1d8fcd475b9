//! `--mode history`: the no-op throughput with the queue's history on (the
//! default) and off (`history = false`), interleaved run by run so that
//! the machine's drift touches both alike; the medians, the rate with it
//! on as a share of the rate with it off, and the Redis commands per job
//! each way (the history adds two `BITFIELD`s per flush).

use std::io::Write as _;
use std::path::Path;

use super::{Args, Workload, config_file, listed, median, payload, ratios, throughput};

pub(super) fn bench(
    args: &Args,
    url: &str,
    conn: &mut redis::Connection,
    redis_pid: Option<u32>,
    dir: &Path,
) -> anyhow::Result<()> {
    let workload = |label, sub: &str, history: bool| -> anyhow::Result<Workload> {
        let dir = dir.join(sub);
        std::fs::create_dir_all(&dir)?;
        let config = config_file(&dir, url, args, None)?;
        let mut file = std::fs::OpenOptions::new().append(true).open(&config)?;
        writeln!(file, "history = {history}")?;
        Ok(Workload {
            label,
            config,
            jobs: args.jobs,
            runs: 1,
            item: payload,
        })
    };
    let off = workload("no-op jobs, history off", "history-off", false)?;
    let on = workload("no-op jobs, history on", "history-on", true)?;
    println!(
        "history: {} no-op jobs per run, concurrency {}, history off and on, interleaved",
        args.jobs, args.concurrency
    );
    let mut rates: [Vec<f64>; 2] = Default::default();
    let mut commands: [Vec<f64>; 2] = Default::default();
    for _ in 0..args.runs {
        for (i, work) in [&off, &on].into_iter().enumerate() {
            let run = throughput(args, url, conn, redis_pid, work)?;
            rates[i].push(run.jobs_per_s);
            commands[i].push(run.commands_per_job);
        }
    }
    for (i, name) in ["history off", "history on"].iter().enumerate() {
        println!(
            "{name:<12} {:>9.0} jobs/s   {:.3} Redis commands/job   (runs: {})",
            median(&rates[i]),
            median(&commands[i]),
            listed(&rates[i])
        );
    }
    ratios("on/off", &rates[0], &rates[1]);
    Ok(())
}
