//! `--mode exec`: jobs run by a trivial Python worker through the `exec`
//! handler, persistent and oneshot, against the same worker driven
//! directly over its pipes in the same run (no Redis, no daemon: what the
//! Python processes can answer at most), with the ratio between the two.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use super::{Args, QUEUE, Workload, config_file, listed, median, payload, throughput};

/// What a new user writes first: read a line, answer a line.
const WORKER: &str = r#"import json, sys
out = sys.stdout
for line in sys.stdin:
    job = json.loads(line)
    out.write(json.dumps({"id": job["id"], "status": "ok"}) + "\n")
    out.flush()
"#;

/// The PATH of a systemd service: the interpreter a daemon would run.
const SERVICE_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The oneshot form: one request, exit 0.
const ONESHOT: &str = "import json, sys\njson.loads(sys.stdin.read())\n";

pub(super) fn bench(
    args: &Args,
    url: &str,
    conn: &mut redis::Connection,
    redis_pid: Option<u32>,
    dir: &Path,
) -> anyhow::Result<()> {
    let python = python(args.python.as_deref())?;
    let worker = dir.join("worker.py");
    std::fs::write(&worker, WORKER)?;
    let oneshot = dir.join("oneshot.py");
    std::fs::write(&oneshot, ONESHOT)?;
    let n = args.exec_concurrency;
    let queue = |script: &Path, mode: &str| {
        format!(
            "handler = \"exec\"\nconcurrency = {n}\n[queues.{QUEUE}.exec]\ncommand = [{python:?}, {:?}]\nmode = \"{mode}\"\n",
            script.display().to_string()
        )
    };
    println!(
        "exec: a trivial Python worker ({python}), {n} processes, {} jobs",
        args.exec_jobs
    );
    let mut direct = Vec::new();
    for _ in 0..args.runs {
        direct.push(drive_directly(
            &python,
            &worker,
            n as usize,
            args.exec_jobs,
            args.payload,
        )?);
    }
    let reference = median(&direct);
    println!(
        "direct        {reference:>9.0} jobs/s   (the same workers fed over their pipes by {n} threads, no daemon; runs: {})",
        listed(&direct)
    );
    let persistent = Workload {
        label: "exec persistent",
        config: config_file(dir, url, args, Some(&queue(&worker, "persistent")))?,
        jobs: args.exec_jobs,
        runs: args.runs,
        item: payload,
    };
    let run = throughput(args, url, conn, redis_pid, &persistent)?;
    println!(
        "ratio         {:>9.2}          (exec persistent / direct)",
        run.jobs_per_s / reference
    );
    let jobs = (args.exec_jobs / 50).max(100);
    let mut direct = Vec::new();
    for _ in 0..args.runs {
        direct.push(start_directly(
            &python,
            &oneshot,
            n as usize,
            jobs,
            args.payload,
        )?);
    }
    let reference = median(&direct);
    println!(
        "direct        {reference:>9.0} jobs/s   (a process per job, started and fed by {n} threads, no daemon; runs: {})",
        listed(&direct)
    );
    let work = Workload {
        label: "exec oneshot (a process per job)",
        config: config_file(dir, url, args, Some(&queue(&oneshot, "oneshot")))?,
        jobs,
        runs: args.runs,
        item: payload,
    };
    let run = throughput(args, url, conn, redis_pid, &work)?;
    println!(
        "ratio         {:>9.2}          (exec oneshot / direct)",
        run.jobs_per_s / reference
    );
    Ok(())
}

/// `workers` threads each starting `script` once per job of its share of
/// `jobs`, writing the request and waiting for the exit; jobs/s.
fn start_directly(
    python: &str,
    script: &Path,
    workers: usize,
    jobs: usize,
    size: usize,
) -> anyhow::Result<f64> {
    let share = jobs / workers;
    let started = Instant::now();
    let threads: Vec<_> = (0..workers)
        .map(|w| {
            let (python, script) = (python.to_owned(), script.to_owned());
            std::thread::spawn(move || -> anyhow::Result<()> {
                for i in 0..share {
                    let mut child = Command::new(&python)
                        .arg(&script)
                        .stdin(Stdio::piped())
                        .stdout(Stdio::null())
                        .spawn()?;
                    let request = format!(
                        "{{\"id\":\"{w:08x}{i:024x}\",\"queue\":\"{QUEUE}\",\"attempt\":1,\"payload\":{}}}\n",
                        payload(i, size)
                    );
                    let mut stdin = child.stdin.take().expect("piped");
                    stdin.write_all(request.as_bytes())?;
                    drop(stdin);
                    anyhow::ensure!(child.wait()?.success(), "the oneshot worker failed");
                }
                Ok(())
            })
        })
        .collect();
    for thread in threads {
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("a starting thread panicked"))??;
    }
    Ok((share * workers) as f64 / started.elapsed().as_secs_f64())
}

/// The Python interpreter itself, not a wrapper in front of it (pyenv's
/// shims are shell scripts, which would be timed too): `--python`, or the
/// `python3` a service finds in systemd's PATH.
fn python(given: Option<&str>) -> anyhow::Result<String> {
    let program = match given {
        Some(p) => p.to_owned(),
        None => which::which_in("python3", Some(SERVICE_PATH), "/")?
            .display()
            .to_string(),
    };
    let out = Command::new(&program)
        .args(["-c", "import sys; print(sys.executable)"])
        .output()?;
    anyhow::ensure!(out.status.success(), "python3 does not run");
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// `workers` processes of `script`, each fed its share of `jobs` requests
/// one at a time by a thread of its own; jobs/s.
fn drive_directly(
    python: &str,
    script: &Path,
    workers: usize,
    jobs: usize,
    size: usize,
) -> anyhow::Result<f64> {
    let mut children = Vec::new();
    for _ in 0..workers {
        children.push(
            Command::new(python)
                .arg(script)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()?,
        );
    }
    let share = jobs / workers;
    let started = Instant::now();
    let threads: Vec<_> = children
        .iter_mut()
        .enumerate()
        .map(|(w, child)| {
            let mut stdin = child.stdin.take().expect("piped");
            let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut line = String::new();
                for i in 0..share {
                    let id = format!("{w:08x}{i:024x}");
                    let request = format!(
                        "{{\"id\":\"{id}\",\"queue\":\"{QUEUE}\",\"attempt\":1,\"payload\":{}}}\n",
                        payload(i, size)
                    );
                    stdin.write_all(request.as_bytes())?;
                    stdin.flush()?;
                    line.clear();
                    stdout.read_line(&mut line)?;
                    anyhow::ensure!(line.contains(&id), "unexpected reply {line:?}");
                }
                Ok(())
            })
        })
        .collect();
    for thread in threads {
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("a driving thread panicked"))??;
    }
    let took = started.elapsed().as_secs_f64();
    for mut child in children {
        let _killed = child.kill();
        let _reaped = child.wait();
    }
    Ok((share * workers) as f64 / took)
}
