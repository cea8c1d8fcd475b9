//! `--mode email`: emails at wire speed.
//!
//! - throughput: the daemon sends `--email-jobs` emails at
//!   `--email-concurrency` into Postfix's `smtp-sink`, and, interleaved run
//!   by run, Postfix's own `smtp-source -d` sends as many messages over as
//!   many sessions into the same sink; both rates, their ratio, and the
//!   daemon's CPU per email.
//! - latency: an idle daemon, one email at a time, from `RPUSH` to the
//!   moment the SMTP server has the whole message (a server of the bench's
//!   own, which notes when the end of the data arrives and then says 250).
//!
//! Needs Debian's `postfix` (its service need not run) for the throughput.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{
    Args, LIST, Server, Workload, config_file, listed, median, median_quantile, signal, throughput,
};

const SINK: &str = "/usr/sbin/smtp-sink";
const SOURCE: &str = "/usr/sbin/smtp-source";

/// An email job of about `size` bytes of text.
fn email(i: usize, size: usize) -> String {
    format!(
        "{{\"to\":\"b@example.com\",\"subject\":\"bench {i}\",\"text\":\"{}\"}}",
        "x".repeat(size)
    )
}

/// The email queue and `[email]` sending to `smtp_url`. One attempt: a
/// failure shows as a job left dead, not as a retry that waits.
fn queue(smtp_url: &str, concurrency: u32) -> String {
    format!(
        "handler = \"email\"\nconcurrency = {concurrency}\ntimeout = \"5m\"\nmax_attempts = 1\n\
         [email]\ntransport = \"smtp\"\nsmtp_url = \"{smtp_url}\"\nfrom = \"bench <a@example.com>\"\n",
    )
}

pub(super) fn bench(
    args: &Args,
    url: &str,
    conn: &mut redis::Connection,
    redis_pid: Option<u32>,
    dir: &Path,
) -> anyhow::Result<()> {
    if Path::new(SINK).exists() && Path::new(SOURCE).exists() {
        wire_speed(args, url, conn, redis_pid, dir)?;
    } else {
        println!("email throughput: skipped, {SINK} and {SOURCE} come with Debian's postfix");
    }
    tls(args, url, conn, redis_pid, dir)?;
    latency(args, url, conn, dir)
}

/// Plain and STARTTLS side by side, into the tests' SMTP server (aiosmtpd,
/// which speaks STARTTLS where smtp-sink does not): the server, in Python,
/// bounds both rates, so the figure that tells TLS's cost is the daemon's
/// CPU per email.
fn tls(
    args: &Args,
    url: &str,
    conn: &mut redis::Connection,
    redis_pid: Option<u32>,
    dir: &Path,
) -> anyhow::Result<()> {
    let Some(python) = ["/usr/bin/python3", "python3"].into_iter().find(|py| {
        Command::new(py)
            .args(["-W", "ignore", "-c", "import aiosmtpd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }) else {
        println!("email TLS: skipped, no python3 with aiosmtpd (Debian's python3-aiosmtpd)");
        return Ok(());
    };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ca = dir.join("ca");
    std::fs::create_dir_all(&ca)?;
    let made = Command::new(repo.join("scripts/test-ca"))
        .arg(&ca)
        .output()?;
    anyhow::ensure!(made.status.success(), "scripts/test-ca failed");
    let jobs = (args.email_jobs / 10).max(100);
    println!(
        "email TLS: {jobs} emails, concurrency {}, into aiosmtpd (tests/smtp/server.py)",
        args.email_concurrency
    );
    for (label, tls_args, query) in [
        ("email into aiosmtpd, plain", &[][..], ""),
        (
            "email into aiosmtpd, STARTTLS",
            &["--starttls"][..],
            "?tls=starttls",
        ),
    ] {
        let mut server = Command::new(python);
        server
            .args(["-W", "ignore"])
            .arg(repo.join("tests/smtp/server.py"))
            .arg("--tls-cert")
            .arg(ca.join("server.pem"))
            .arg("--tls-key")
            .arg(ca.join("server.key"))
            .args(tls_args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut server = Server(server.spawn()?);
        let port = ready_port(&mut server.0)?;
        let queue = format!(
            "{}ca_file = \"{}\"\n",
            queue(
                &format!("smtp://127.0.0.1:{port}{query}"),
                args.email_concurrency
            ),
            ca.join("ca.pem").display()
        );
        let work = Workload {
            label,
            config: config_file(dir, url, args, Some(&queue))?,
            jobs,
            runs: args.runs,
            item: email,
        };
        let run = throughput(args, url, conn, redis_pid, &work)?;
        all_sent(conn)?;
        println!(
            "daemon CPU    {:>9.1} us per email ({label})",
            1e6 * run.daemon_cpu_s / jobs as f64
        );
    }
    Ok(())
}

/// The port of the tests' SMTP server, from its `ready <port>` line.
fn ready_port(server: &mut Child) -> anyhow::Result<u16> {
    use std::io::BufRead as _;
    let stdout = server
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    line.strip_prefix("ready ")
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("the SMTP server said {line:?}"))
}

fn wire_speed(
    args: &Args,
    url: &str,
    conn: &mut redis::Connection,
    redis_pid: Option<u32>,
    dir: &Path,
) -> anyhow::Result<()> {
    let port = super::server::free_port();
    let mut sink = Command::new(SINK);
    // As root, smtp-sink wants a user to run as.
    if is_root() {
        sink.args(["-u", "nobody"]);
    }
    let sink = Server(
        sink.args(["-c", &format!("127.0.0.1:{port}"), "256"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    wait_for_port(port)?;
    let n = args.email_concurrency;
    println!(
        "email: {} emails of about {} B of text, concurrency {n}, into smtp-sink; smtp-source -d -s {n} interleaved",
        args.email_jobs, args.payload
    );
    let work = Workload {
        label: "email into smtp-sink",
        config: config_file(
            dir,
            url,
            args,
            Some(&queue(&format!("smtp://127.0.0.1:{port}"), n)),
        )?,
        jobs: args.email_jobs,
        runs: 1,
        item: email,
    };
    let (mut ours, mut theirs, mut cpu) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.runs {
        let run = throughput(args, url, conn, redis_pid, &work)?;
        all_sent(conn)?;
        ours.push(run.jobs_per_s);
        cpu.push(1e6 * run.daemon_cpu_s / args.email_jobs as f64);
        theirs.push(smtp_source(port, n, args.email_jobs)?);
    }
    drop(sink);
    let ratios: Vec<f64> = ours.iter().zip(&theirs).map(|(a, b)| a / b).collect();
    println!(
        "email         {:>9.0} emails/s (daemon, runs: {})",
        median(&ours),
        listed(&ours)
    );
    println!(
        "smtp-source   {:>9.0} msgs/s   (-d -s {n}, runs: {})",
        median(&theirs),
        listed(&theirs)
    );
    println!(
        "ratio         {:>9.2}          (daemon / smtp-source, median of the runs' ratios); daemon CPU {:.1} us per email",
        median(&ratios),
        median(&cpu)
    );
    Ok(())
}

/// The run counts outcomes; a failed send would count as fast as a sent
/// one, so a run with any failure is not a figure.
pub(super) fn all_sent(conn: &mut redis::Connection) -> anyhow::Result<()> {
    let failed: Option<u64> = redis::cmd("HGET")
        .arg(format!("{{{LIST}}}:stats"))
        .arg("failed")
        .query(conn)?;
    anyhow::ensure!(failed.unwrap_or(0) == 0, "{failed:?} emails failed");
    Ok(())
}

/// One `smtp-source -d` run of `messages` over `sessions`; messages/s.
fn smtp_source(port: u16, sessions: u32, messages: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let status = Command::new(SOURCE)
        .args([
            "-d",
            "-s",
            &sessions.to_string(),
            "-m",
            &messages.to_string(),
        ])
        .args(["-f", "a@example.com", "-t", "b@example.com"])
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "smtp-source failed");
    Ok(messages as f64 / started.elapsed().as_secs_f64())
}

/// An idle daemon sending one email at a time to the bench's own SMTP
/// server; milliseconds from `RPUSH` to the end of the data at the server.
fn latency(args: &Args, url: &str, conn: &mut redis::Connection, dir: &Path) -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let (tx, rx) = std::sync::mpsc::channel::<Instant>();
    std::thread::spawn(move || accept(listener, tx));
    let config = config_file(
        dir,
        url,
        args,
        Some(&queue(&format!("smtp://127.0.0.1:{port}"), 10)),
    )?;
    let mut all = Vec::new();
    for _ in 0..args.runs {
        redis::cmd("FLUSHALL").query::<()>(conn)?;
        let mut daemon = daemon(&config)?;
        // The first email also waits for the daemon to start.
        redis::cmd("RPUSH")
            .arg(LIST)
            .arg(email(0, 100))
            .query::<()>(conn)?;
        rx.recv_timeout(Duration::from_secs(30))?;
        let mut samples = Vec::with_capacity(args.email_latency_jobs);
        for i in 0..args.email_latency_jobs {
            let sent = Instant::now();
            redis::cmd("RPUSH")
                .arg(LIST)
                .arg(email(i, 100))
                .query::<()>(conn)?;
            let accepted = rx.recv_timeout(Duration::from_secs(10))?;
            samples.push((accepted - sent).as_secs_f64() * 1000.0);
        }
        // Stopped as a service is: it ends its SMTP sessions with QUIT.
        signal(&daemon, "TERM");
        daemon.wait()?;
        samples.sort_by(f64::total_cmp);
        all.push(samples);
    }
    println!(
        "email latency p50 {:.3} ms, p99 {:.3} ms   ({} sequential emails, idle daemon, RPUSH to the server having the message)",
        median_quantile(&all, 0.50),
        median_quantile(&all, 0.99),
        args.email_latency_jobs
    );
    Ok(())
}

fn daemon(config: &Path) -> anyhow::Result<Child> {
    Ok(Command::new(env!("CARGO_BIN_EXE_conveyor"))
        .args(["run", "--config"])
        .arg(config)
        .env("CONVEYOR_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()?)
}

/// A minimal SMTP server: every session is accepted, every message taken;
/// the end of each message's data is sent to `tx` before the 250 goes out.
fn accept(listener: TcpListener, tx: std::sync::mpsc::Sender<Instant>) {
    for stream in listener.incoming().flatten() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            if let Err(e) = session(stream, &tx) {
                eprintln!("bench SMTP session: {e}");
            }
        });
    }
}

fn session(
    stream: std::net::TcpStream,
    tx: &std::sync::mpsc::Sender<Instant>,
) -> std::io::Result<()> {
    use std::io::{BufRead as _, BufReader, Write as _};
    stream.set_nodelay(true)?;
    let mut out = stream.try_clone()?;
    let mut lines = BufReader::new(stream);
    out.write_all(b"220 bench ESMTP\r\n")?;
    let mut line = String::new();
    let mut in_data = false;
    loop {
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if in_data {
            if line == ".\r\n" {
                in_data = false;
                let _gone = tx.send(Instant::now());
                out.write_all(b"250 2.0.0 taken\r\n")?;
            }
            continue;
        }
        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-bench\r\n250 8BITMIME\r\n",
            "DATA" => {
                in_data = true;
                b"354 go ahead\r\n"
            }
            "QUIT" => {
                out.write_all(b"221 bye\r\n")?;
                return Ok(());
            }
            _ => b"250 ok\r\n",
        };
        out.write_all(reply)?;
    }
}

pub(super) fn wait_for_port(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|uids| uids.split_whitespace().next() == Some("0"))
        })
        .unwrap_or(false)
}
