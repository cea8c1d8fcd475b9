//! Open files: the process's soft limit raised to its hard limit at start,
//! and the share of it the web server may take, so that no number of
//! connections to the web port can leave a job without the descriptors it
//! needs (an exec worker's pipes, an HTTP or SMTP connection, Redis).
//!
//! The rule, from the soft limit `S` once raised:
//!
//! - kept for the daemon: [`BASE`] + the Redis pool + [`PER_QUEUE`] a queue
//!   + [`PER_SLOT`] a job slot (the queues' concurrencies summed);
//! - the web server's share is what is left, `S - kept`: a fifth of it (at
//!   most [`MAX_STREAMS`]) for event streams, each of which holds a Redis
//!   connection of its own, and the rest (at most [`MAX_CONNECTIONS`]) for
//!   connections;
//! - when less is left than [`MIN_CONNECTIONS`] and one stream, the web
//!   server takes those anyway (a dashboard that never answers helps no
//!   one), and says at start that the limit is too low for the queues.
//!
//! The queues counted are those of the configuration at start: a reload
//! that adds slots does not shrink the web server's share.

use crate::config::Config;

/// Descriptors the daemon needs whatever its queues: standard streams, the
/// runtime's poller and wakers, signals, the notify socket, the replay
/// stream's and schedules' connections, files and resolver sockets opened
/// for a moment, with room to spare.
pub(super) const BASE: u64 = 128;
/// A queue's own: its fetcher's dedicated Redis connection and its slot
/// for a reconnect.
pub(super) const PER_QUEUE: u64 = 4;
/// A job slot's: an exec worker's three pipes (eight while it is being
/// spawned), or an HTTP or SMTP connection and its pool's spare.
pub(super) const PER_SLOT: u64 = 8;
/// Connections the web server holds at most, however high the limit:
/// browsers, scrapers and scripts on an operator's port need a few dozen.
pub(super) const MAX_CONNECTIONS: usize = 256;
/// Event streams at most (the dashboard holds one per open tab).
pub(super) const MAX_STREAMS: usize = 64;
/// Connections the web server takes even under a limit too low for it.
pub(super) const MIN_CONNECTIONS: usize = 8;

/// The web server's share of the open files limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Budget {
    /// The soft limit it was derived from (None: unlimited).
    pub(super) limit: Option<u64>,
    /// Kept for the daemon's jobs, Redis and clients.
    pub(super) kept: u64,
    /// Connections' descriptors at most (an eighth of them for connections
    /// being closed: see [`super::connections`]).
    pub(super) connections: usize,
    /// Event streams open at once, at most.
    pub(super) streams: usize,
    /// The limit leaves less than the minimum: raise it.
    pub(super) short: bool,
}

impl Budget {
    /// The share `config`'s queues leave under the soft limit `limit`.
    pub(super) fn new(config: &Config, limit: Option<u64>) -> Self {
        let slots: u64 = config
            .queues
            .values()
            .map(|q| u64::from(q.concurrency))
            .sum();
        let queues = config.queues.len() as u64;
        let kept = BASE
            .saturating_add(u64::from(config.redis.pool_size))
            .saturating_add(PER_QUEUE.saturating_mul(queues))
            .saturating_add(PER_SLOT.saturating_mul(slots));
        let left = limit.map_or(u64::MAX, |s| s.saturating_sub(kept));
        let left = usize::try_from(left).unwrap_or(usize::MAX);
        let streams = (left / 5).clamp(1, MAX_STREAMS);
        let connections = left.saturating_sub(streams).min(MAX_CONNECTIONS);
        let short = connections < MIN_CONNECTIONS;
        Self {
            limit,
            kept,
            connections: connections.max(MIN_CONNECTIONS),
            streams,
            short,
        }
    }
}

impl Budget {
    /// Says at start what was chosen, and whether the limit is too low.
    pub(super) fn log(&self) {
        let limit = self
            .limit
            .map_or_else(|| "unlimited".to_owned(), |l| l.to_string());
        tracing::info!(
            connections = self.connections,
            event_streams = self.streams,
            open_files = %limit,
            kept_for_jobs = self.kept,
            "web: connections capped so that the open files limit keeps its share for the jobs"
        );
        if self.short {
            tracing::warn!(
                "web: the open files limit ({limit}) is too low for the queues' concurrency: \
                 raise it (LimitNOFILE= in the systemd unit, ulimit -n) to {} or more",
                self.kept + (MIN_CONNECTIONS + 1) as u64
            );
        }
    }
}

/// The soft limit on open files (None: unlimited).
pub(super) fn soft_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(queues: &[u32]) -> Config {
        let mut text = String::new();
        for (i, n) in queues.iter().enumerate() {
            text.push_str(&format!(
                "[queues.q{i}]\nhandler = \"noop\"\nconcurrency = {n}\n"
            ));
        }
        Config::from_toml(&text).expect("a configuration")
    }

    #[test]
    fn the_web_server_takes_what_the_queues_leave() {
        // Two queues of 4: 128 + 16 (pool) + 8 + 64 = 216 kept.
        let b = Budget::new(&config(&[4, 4]), Some(256));
        assert_eq!(b.kept, 216);
        assert_eq!((b.streams, b.connections), (8, 32));
        assert!(b.kept + (b.streams + b.connections) as u64 <= 256);
        assert!(!b.short);
        // A raised limit: the web server's own ceilings.
        let b = Budget::new(&config(&[4, 4]), Some(65_536));
        assert_eq!((b.streams, b.connections), (MAX_STREAMS, MAX_CONNECTIONS));
        let b = Budget::new(&config(&[4, 4]), None);
        assert_eq!((b.streams, b.connections), (MAX_STREAMS, MAX_CONNECTIONS));
    }

    #[test]
    fn a_limit_too_low_for_the_queues_is_said() {
        let b = Budget::new(&config(&[110]), Some(1024));
        assert_eq!(b.kept, 128 + 16 + 4 + 880);
        assert!(b.short);
        assert_eq!((b.streams, b.connections), (1, MIN_CONNECTIONS));
    }
}
