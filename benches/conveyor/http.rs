//! `--mode http`: jobs POSTed to a web server at wire speed.
//!
//! The daemon sends `--http-jobs` jobs at `--http-concurrency` to Debian's
//! nginx answering 204 (one worker process), and, interleaved run by run,
//! `wrk` (one thread, as many connections) POSTs the same body to the same
//! endpoint for as long as the daemon's run took; both rates, their ratio,
//! and the daemon's CPU per job.
//!
//! Needs Debian's `nginx` (its service need not run) and `wrk`.

use std::path::Path;
use std::process::{Command, Stdio};

use super::email::wait_for_port;
use super::server::free_port;
use super::{Args, Workload, config_file, listed, median, payload, throughput};

const NGINX: &str = "/usr/sbin/nginx";
const WRK: &str = "/usr/bin/wrk";

pub(super) fn bench(
    args: &Args,
    url: &str,
    conn: &mut redis::Connection,
    redis_pid: Option<u32>,
    dir: &Path,
) -> anyhow::Result<()> {
    if !Path::new(NGINX).exists() || !Path::new(WRK).exists() {
        println!("http: skipped, needs Debian's nginx and wrk ({NGINX}, {WRK})");
        return Ok(());
    }
    let port = free_port();
    let nginx = nginx(dir, port)?;
    let endpoint = format!("http://127.0.0.1:{port}/jobs");
    let n = args.http_concurrency;
    println!(
        "http: {} jobs of {} B, concurrency {n}, POSTed to nginx answering 204 (1 worker); wrk -t1 -c{n} interleaved",
        args.http_jobs, args.payload
    );
    let queue = format!(
        "handler = \"http\"\nconcurrency = {n}\nmax_attempts = 1\n[queues.bench.http]\nurl = \"{endpoint}\"\n"
    );
    let work = Workload {
        label: "http into nginx",
        config: config_file(dir, url, args, Some(&queue))?,
        jobs: args.http_jobs,
        runs: 1,
        item: payload,
    };
    let script = dir.join("post.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = '{}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n",
            payload(0, args.payload)
        ),
    )?;
    let (mut ours, mut theirs, mut cpu) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.runs {
        let run = throughput(args, url, conn, redis_pid, &work)?;
        super::email::all_sent(conn)?;
        ours.push(run.jobs_per_s);
        cpu.push(1e6 * run.daemon_cpu_s / args.http_jobs as f64);
        let seconds = (args.http_jobs as f64 / run.jobs_per_s).ceil().max(3.0);
        theirs.push(wrk(&endpoint, n, seconds as u64, &script)?);
    }
    drop(nginx);
    let ratios: Vec<f64> = ours.iter().zip(&theirs).map(|(a, b)| a / b).collect();
    println!(
        "http          {:>9.0} jobs/s   (daemon, runs: {})",
        median(&ours),
        listed(&ours)
    );
    println!(
        "wrk           {:>9.0} req/s    (-t1 -c{n}, runs: {})",
        median(&theirs),
        listed(&theirs)
    );
    println!(
        "ratio         {:>9.2}          (daemon / wrk, median of the runs' ratios); daemon CPU {:.1} us per job",
        median(&ratios),
        median(&cpu)
    );
    Ok(())
}

/// nginx, stopped with SIGTERM when dropped: killed, its master would leave
/// its worker running.
struct Nginx(std::process::Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _sent = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let _reaped = self.0.wait();
    }
}

/// nginx in the foreground with one worker, answering 204 to everything.
fn nginx(dir: &Path, port: u16) -> anyhow::Result<Nginx> {
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(prefix.join("logs"))?;
    let conf = prefix.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes 1;\npid {pid};\nerror_log stderr error;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 1000000;\n\
               server {{ listen 127.0.0.1:{port}; location / {{ return 204; }} }}\n}}\n",
            pid = prefix.join("nginx.pid").display()
        ),
    )?;
    let server = Nginx(
        Command::new(NGINX)
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    wait_for_port(port)?;
    Ok(server)
}

/// One `wrk` run of `seconds`; requests/s, as wrk reports them.
fn wrk(endpoint: &str, connections: u32, seconds: u64, script: &Path) -> anyhow::Result<f64> {
    let out = Command::new(WRK)
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "-s",
        ])
        .arg(script)
        .arg(endpoint)
        .output()?;
    anyhow::ensure!(out.status.success(), "wrk failed");
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        !text.contains("Non-2xx"),
        "wrk saw answers other than 2xx:\n{text}"
    );
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no Requests/sec in wrk's output:\n{text}"))
}
