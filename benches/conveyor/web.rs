//! `--mode web`: what watching costs the workers.
//!
//! The no-op throughput run, interleaved run by run: without `[web]`; with
//! the web server on, a scraper reading `/metrics` every second and the
//! dashboard's event stream (`/api/events?latest=20`) open all along; and
//! the same with every event streamed (`/api/events`, as a program
//! following them reads it). The rates, the costs in percent against
//! without (the dashboard's bound: under 5%), and what the watchers got.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::server::free_port;
use super::{Args, Workload, listed, median, payload, throughput};

/// The dashboard's event stream, as its page opens it.
const DASHBOARD_EVENTS: &str = "/api/events?latest=20";
/// Every event, as a program following them reads it.
const ALL_EVENTS: &str = "/api/events";

pub(super) fn bench(
    args: &Args,
    url: &str,
    conn: &mut redis::Connection,
    redis_pid: Option<u32>,
    dir: &Path,
) -> anyhow::Result<()> {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    println!(
        "web: {} no-op jobs, without [web] and with it (a /metrics scrape every 1 s, an event stream open), interleaved",
        args.jobs
    );
    let queue = |web: &str| {
        format!(
            "[redis]\nurl = \"{url}\"\n{web}[queues.{}]\nevents = \"{}\"\nhandler = \"noop\"\nconcurrency = {}\n",
            super::QUEUE,
            args.events,
            args.concurrency
        )
    };
    let plain = dir.join("plain.toml");
    std::fs::write(&plain, queue(""))?;
    let watched = dir.join("watched.toml");
    std::fs::write(&watched, queue(&format!("[web]\nlisten = \"{addr}\"\n")))?;
    let work = |label, config| Workload {
        label,
        config,
        jobs: args.jobs,
        runs: 1,
        item: payload,
    };
    let plain = work("without [web]", plain);
    let dashboard = work(
        "with /metrics scraped and the dashboard's event stream open",
        watched.clone(),
    );
    let everything = work("with /metrics scraped and every event streamed", watched);
    let mut rates: [Vec<f64>; 3] = Default::default();
    let mut streamed: [Vec<f64>; 2] = Default::default();
    let mut scrapes = Vec::new();
    for _ in 0..args.runs {
        rates[0].push(throughput(args, url, conn, redis_pid, &plain)?.jobs_per_s);
        for (i, (work, path)) in [(&dashboard, DASHBOARD_EVENTS), (&everything, ALL_EVENTS)]
            .into_iter()
            .enumerate()
        {
            let watchers = Watchers::start(&addr, path);
            let run = throughput(args, url, conn, redis_pid, work)?;
            let (scraped, events) = watchers.stop();
            rates[i + 1].push(run.jobs_per_s);
            streamed[i].push(events as f64);
            scrapes.push(scraped as f64);
        }
    }
    let cost = |with: &[f64]| -> Vec<f64> {
        rates[0]
            .iter()
            .zip(with)
            .map(|(a, b)| 100.0 * (a - b) / a)
            .collect()
    };
    println!(
        "without [web] {:>9.0} jobs/s   (runs: {})",
        median(&rates[0]),
        listed(&rates[0])
    );
    for (i, label) in ["dashboard", "all events"].into_iter().enumerate() {
        let c = cost(&rates[i + 1]);
        println!(
            "{label:<13} {:>9.0} jobs/s   (runs: {}); cost {:.1} % (median of the runs' costs: {}); events streamed per run {}",
            median(&rates[i + 1]),
            listed(&rates[i + 1]),
            median(&c),
            listed(&c),
            listed(&streamed[i])
        );
    }
    println!("scrapes       {} per run", listed(&scrapes));
    Ok(())
}

/// The scraper and the event stream's reader, each a thread that
/// (re)connects until stopped: the daemon comes and goes with each run.
struct Watchers {
    stop: Arc<AtomicBool>,
    scrapes: Arc<AtomicU64>,
    events: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Watchers {
    fn start(addr: &str, path: &'static str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let scrapes = Arc::new(AtomicU64::new(0));
        let events = Arc::new(AtomicU64::new(0));
        let scraper = {
            let (addr, stop, scrapes) = (addr.to_owned(), stop.clone(), scrapes.clone());
            std::thread::spawn(move || {
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    if Instant::now() < next {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    match get(&addr, "/metrics") {
                        Some(answer) if answer.starts_with("HTTP/1.1 200") => {
                            scrapes.fetch_add(1, Ordering::Relaxed);
                            next = Instant::now() + Duration::from_secs(1);
                        }
                        _ => next = Instant::now() + Duration::from_millis(20),
                    }
                }
            })
        };
        let reader = {
            let (addr, stop, events) = (addr.to_owned(), stop.clone(), events.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if stream_events(&addr, path, &stop, &events).is_none() {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            })
        };
        Self {
            stop,
            scrapes,
            events,
            threads: vec![scraper, reader],
        }
    }

    /// Stops both; (scrapes answered, events read).
    fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        (
            self.scrapes.load(Ordering::Relaxed),
            self.events.load(Ordering::Relaxed),
        )
    }
}

/// One plain HTTP/1.1 GET; the whole answer.
fn get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    Some(answer)
}

/// Reads `/api/events` until the server ends it or `stop`, counting events.
fn stream_events(addr: &str, path: &str, stop: &AtomicBool, events: &AtomicU64) -> Option<()> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(100))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .ok()?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut tail = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match s.read(&mut buf) {
            Ok(0) => return Some(()),
            Ok(n) => {
                // Count "data:" at line starts, across read boundaries.
                tail.extend_from_slice(&buf[..n]);
                let found = memchr::memmem::find_iter(&tail, b"\ndata:").count();
                events.fetch_add(found as u64, Ordering::Relaxed);
                tail.drain(..tail.len().saturating_sub(5));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(()),
        }
    }
    Some(())
}
