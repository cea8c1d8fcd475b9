//! `--mode slots`: what a job costs Redis and the daemon as the slots
//! change: no-op jobs at concurrency 1, 8, 50, 200 and 500, a row each with
//! jobs/s, Redis commands per job, and Redis's and the daemon's CPU per
//! job. With `--baseline-bin`, each concurrency's runs alternate between
//! that daemon binary and this one, and the rows show both and the median
//! of the runs' ratios (this one's jobs/s over the baseline's).

use std::path::Path;

use super::{Args, Run, Workload, config_file, median, payload, throughput};

/// The concurrencies measured, and the jobs of each run: fewer where a
/// job takes a round trip of its own.
const SLOTS: [(u32, usize); 5] = [
    (1, 20_000),
    (8, 100_000),
    (50, 200_000),
    (200, 200_000),
    (500, 200_000),
];

pub(super) fn bench(
    args: &Args,
    url: &str,
    conn: &mut redis::Connection,
    redis_pid: Option<u32>,
    dir: &Path,
) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for (slots, jobs) in SLOTS {
        let mut this = args.clone();
        this.concurrency = slots;
        let sub = dir.join(format!("slots-{slots}"));
        std::fs::create_dir_all(&sub)?;
        let work = Workload {
            label: "no-op jobs",
            config: config_file(&sub, url, &this, None)?,
            jobs: jobs.min(args.jobs),
            runs: 1,
            item: payload,
        };
        let mut base = this.clone();
        base.daemon_bin.clone_from(&args.baseline_bin);
        let mut runs: [Vec<Run>; 2] = Default::default();
        for _ in 0..args.runs {
            if args.baseline_bin.is_some() {
                runs[0].push(throughput(&base, url, conn, redis_pid, &work)?);
            }
            runs[1].push(throughput(&this, url, conn, redis_pid, &work)?);
        }
        rows.push((slots, work.jobs, runs));
    }
    println!(
        "slots: no-op jobs, events {}, medians of {} runs{}",
        args.events,
        args.runs,
        match &args.baseline_bin {
            Some(bin) => format!(", alternating with the baseline {}", bin.display()),
            None => String::new(),
        }
    );
    println!(
        "| slots | build | jobs/s | Redis commands/job | Redis CPU µs/job | daemon CPU µs/job | jobs/s against the baseline |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|");
    for (slots, jobs, [base, this]) in &rows {
        let row = |build: &str, runs: &[Run], against: String| {
            let figure = |f: fn(&Run) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
            let per_job = |s: f64| 1e6 * s / *jobs as f64;
            println!(
                "| {slots} | {build} | {:.0} | {:.2} | {:.1} | {:.1} | {against} |",
                figure(|r| r.jobs_per_s),
                figure(|r| r.commands_per_job),
                per_job(figure(|r| r.redis_cpu_s)),
                per_job(figure(|r| r.daemon_cpu_s)),
            );
        };
        if base.is_empty() {
            row("this", this, String::new());
            continue;
        }
        row("baseline", base, String::new());
        let ratios: Vec<f64> = this
            .iter()
            .zip(base)
            .map(|(this, base)| this.jobs_per_s / base.jobs_per_s)
            .collect();
        row("this", this, format!("{:.2}x", median(&ratios)));
    }
    Ok(())
}
