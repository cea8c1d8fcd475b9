//! `--mode traces`: the no-op throughput with tracing off, and on at sample
//! ratio 1.0 exporting every span to a live receiver, interleaved run by
//! run so that the machine's drift touches both alike; the medians, the
//! rate with tracing on as a share of the rate with it off, and what that
//! costs per job.
//!
//! The receiver is a sink of the bench's own on loopback: it reads each
//! OTLP/HTTP request whole and answers 200 with an empty body (a valid
//! empty `ExportTraceServiceResponse`), counting requests and bytes, so
//! that what is measured is the daemon's side: spans made, queued, encoded
//! and sent.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Args, Workload, config_file, listed, median, payload, ratios, throughput};

pub(super) fn bench(
    args: &Args,
    url: &str,
    conn: &mut redis::Connection,
    redis_pid: Option<u32>,
    dir: &Path,
) -> anyhow::Result<()> {
    let sink = Sink::start()?;
    let workload = |label, sub: &str, tracing: Option<u16>| -> anyhow::Result<Workload> {
        let dir = dir.join(sub);
        std::fs::create_dir_all(&dir)?;
        let config = config_file(&dir, url, args, None)?;
        if let Some(port) = tracing {
            let mut file = std::fs::OpenOptions::new().append(true).open(&config)?;
            writeln!(
                file,
                "[tracing]\notlp_endpoint = \"http://127.0.0.1:{port}\"\nsample_ratio = 1.0"
            )?;
        }
        Ok(Workload {
            label,
            config,
            jobs: args.jobs,
            runs: 1,
            item: payload,
        })
    };
    let off = workload("no-op jobs, tracing off", "traces-off", None)?;
    let on = workload(
        "no-op jobs, tracing on (ratio 1.0)",
        "traces-on",
        Some(sink.port),
    )?;
    println!(
        "traces: {} no-op jobs per run, concurrency {}, tracing off and on, interleaved",
        args.jobs, args.concurrency
    );
    let mut rates: [Vec<f64>; 2] = Default::default();
    let mut received = Vec::new();
    for _ in 0..args.runs {
        rates[0].push(throughput(args, url, conn, redis_pid, &off)?.jobs_per_s);
        let before = sink.bytes.load(Ordering::Relaxed);
        rates[1].push(throughput(args, url, conn, redis_pid, &on)?.jobs_per_s);
        received.push(sink.bytes.load(Ordering::Relaxed) - before);
    }
    for (name, rates) in ["tracing off", "tracing on"].iter().zip(&rates) {
        println!(
            "{name:<12} {:>9.0} jobs/s   (runs: {})",
            median(rates),
            listed(rates)
        );
    }
    let cost: Vec<f64> = rates[0]
        .iter()
        .zip(&rates[1])
        .map(|(off, on)| (1.0 / on - 1.0 / off) * 1e6)
        .collect();
    ratios("on/off", &rates[0], &rates[1]);
    println!(
        "cost         {:>9.2} us/job   (wall time per job, on minus off; runs: {})",
        median(&cost),
        cost.iter()
            .map(|c| format!("{c:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let per_run: Vec<f64> = received.iter().map(|b| *b as f64).collect();
    println!(
        "received     {:>9.0} bytes of spans per job (median; {} export requests in all)",
        median(&per_run) / args.jobs as f64,
        sink.requests.load(Ordering::Relaxed)
    );
    Ok(())
}

/// The OTLP receiver: answers every request 200, counting them.
struct Sink {
    port: u16,
    requests: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

impl Sink {
    fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let requests = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let (r, b) = (requests.clone(), bytes.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (r, b) = (r.clone(), b.clone());
                std::thread::spawn(move || serve(stream, &r, &b));
            }
        });
        Ok(Self {
            port,
            requests,
            bytes,
        })
    }
}

/// Keep-alive HTTP/1.1: each request's head, then its body by its
/// content-length, then an empty 200; until the client closes.
fn serve(stream: TcpStream, requests: &AtomicU64, bytes: &AtomicU64) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        requests.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(length as u64, Ordering::Relaxed);
        let answer =
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if out.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}
