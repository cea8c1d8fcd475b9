//! The bounds of every duration and number of the configuration, checked
//! by [`Config::validate`] before any rule that ties settings together (so
//! that none of those rules can overflow), at `conveyor check` and at start
//! (exit 78, naming the setting).
//!
//! A value inside its bounds can never make the daemon panic or wrap a
//! time: the largest durations are days, where an `Instant`, a due time in
//! milliseconds and Redis's TTLs hold centuries; the largest counts are
//! far below what the integers holding them can. Each bound is named in
//! the doc comment of its setting.

use std::ops::RangeInclusive;
use std::time::Duration;

use super::{Config, ConfigError, human};

const MS: Duration = Duration::from_millis(1);
const SECOND: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);
/// humantime's year (`1y`, 365.25 days), which it prints as `1year`.
const YEAR: Duration = Duration::from_secs(31_557_600);

/// `redis.pool_size`: connections for short commands.
pub const POOL_SIZE: RangeInclusive<u64> = 1..=1024;
/// `redis.response_timeout`.
pub const RESPONSE_TIMEOUT: RangeInclusive<Duration> = Duration::from_millis(10)..=HOUR;
/// `redis.sentinel.db`: a database number.
pub const DB: RangeInclusive<u64> = 0..=65_535;
/// `daemon.shutdown_timeout`.
pub const SHUTDOWN_TIMEOUT: RangeInclusive<Duration> = Duration::ZERO..=DAY;
/// `daemon.heartbeat_interval`.
pub const HEARTBEAT_INTERVAL: RangeInclusive<Duration> = Duration::from_millis(100)..=HOUR;
/// `daemon.node_ttl` (which must also exceed 2 x `heartbeat_interval`).
pub const NODE_TTL: RangeInclusive<Duration> = Duration::from_millis(200)..=DAY;
/// `daemon.max_deliveries`.
pub const MAX_DELIVERIES: RangeInclusive<u64> = 1..=1000;
/// `daemon.threads`.
pub const THREADS: RangeInclusive<u64> = 1..=256;
/// `events.stream_maxlen` (0: no stream).
pub const STREAM_MAXLEN: RangeInclusive<u64> = 0..=100_000_000;
/// `queues.<q>.concurrency`.
pub const CONCURRENCY: RangeInclusive<u64> = 1..=10_000;
/// `queues.<q>.max_attempts`, and a schedule's.
pub const MAX_ATTEMPTS: RangeInclusive<u64> = 1..=1_000_000;
/// `queues.<q>.backoff.base` and `.max` (`base` at most `max`). The most a
/// job waits for its next attempt, 7 days, is also the most a handler may
/// ask for ([`HandlerError::retry_in`](crate::HandlerError::retry_in)).
pub const BACKOFF: RangeInclusive<Duration> = MS..=Duration::from_secs(7 * 24 * 3600);
/// `queues.<q>.timeout`: one run of the handler.
pub const TIMEOUT: RangeInclusive<Duration> = MS..=Duration::from_secs(7 * 24 * 3600);
/// `queues.<q>.max_payload_bytes`.
pub const MAX_PAYLOAD_BYTES: RangeInclusive<u64> = 1..=512 * 1024 * 1024;
/// `queues.<q>.rate_limit.limit`: starts in one window.
pub const RATE_LIMIT: RangeInclusive<u64> = 1..=1_000_000;
/// `queues.<q>.rate_limit.window`.
pub const RATE_WINDOW: RangeInclusive<Duration> = MS..=Duration::from_secs(7 * 24 * 3600);
/// `queues.<q>.dead_max_jobs`.
pub const DEAD_MAX_JOBS: RangeInclusive<u64> = 1..=10_000_000;
/// `queues.<q>.limit`.
pub const LIMIT: RangeInclusive<u64> = 1..=1_000_000;

/// `queues.<q>.debounce.window` and `max_wait`.
pub const DEBOUNCE: RangeInclusive<Duration> = MS..=Duration::from_secs(7 * 24 * 3600);

/// The longest `group.key`, in bytes.
pub const GROUP_KEY_BYTES: usize = 128;
/// `queues.<q>.track_ttl`.
pub const TRACK_TTL: RangeInclusive<Duration> = SECOND..=YEAR;
/// `schedules.<s>.unique_for`.
pub const UNIQUE_FOR: RangeInclusive<Duration> = SECOND..=YEAR;
/// `schedules.<s>.every`: the intervals a schedule may tick at, whole
/// seconds, 1s to a year. Checked by the schedule's parser
/// (`schedule::Spec::every`), which needs whole seconds.
pub const EVERY: RangeInclusive<Duration> = SECOND..=YEAR;
/// A handler's cached response (the `http` handler's `cache_ttl`).
pub const CACHE_TTL: RangeInclusive<Duration> = SECOND..=YEAR;

/// Refuses `value` of the setting `key` outside `bounds`.
pub(crate) fn duration(
    key: &str,
    value: Duration,
    bounds: &RangeInclusive<Duration>,
) -> Result<(), ConfigError> {
    if bounds.contains(&value) {
        return Ok(());
    }
    Err(ConfigError::Invalid(format!(
        "{key} must be between {} and {} (it is {})",
        human(*bounds.start()),
        human(*bounds.end()),
        human(value)
    )))
}

/// Refuses `value` of the setting `key` outside `bounds`.
pub(crate) fn number(
    key: &str,
    value: impl TryInto<u64> + Copy + std::fmt::Display,
    bounds: &RangeInclusive<u64>,
) -> Result<(), ConfigError> {
    if value.try_into().is_ok_and(|v| bounds.contains(&v)) {
        return Ok(());
    }
    Err(ConfigError::Invalid(format!(
        "{key} must be between {} and {} (it is {value})",
        bounds.start(),
        bounds.end()
    )))
}

/// Every bounded setting of `config`, in the file's order.
pub(super) fn check(config: &Config) -> Result<(), ConfigError> {
    let r = &config.redis;
    number("redis.pool_size", r.pool_size, &POOL_SIZE)?;
    duration(
        "redis.response_timeout",
        r.response_timeout,
        &RESPONSE_TIMEOUT,
    )?;
    if let Some(s) = &r.sentinel {
        number("redis.sentinel.db", s.db, &DB)?;
    }
    let d = &config.daemon;
    duration(
        "daemon.shutdown_timeout",
        d.shutdown_timeout,
        &SHUTDOWN_TIMEOUT,
    )?;
    duration(
        "daemon.heartbeat_interval",
        d.heartbeat_interval,
        &HEARTBEAT_INTERVAL,
    )?;
    duration("daemon.node_ttl", d.node_ttl, &NODE_TTL)?;
    number("daemon.max_deliveries", d.max_deliveries, &MAX_DELIVERIES)?;
    number("daemon.threads", d.threads, &THREADS)?;
    number(
        "events.stream_maxlen",
        config.events.stream_maxlen,
        &STREAM_MAXLEN,
    )?;
    for (name, q) in &config.queues {
        let at = |field: &str| format!("queues.{name}.{field}");
        number(&at("concurrency"), q.concurrency, &CONCURRENCY)?;
        number(&at("max_attempts"), q.max_attempts, &MAX_ATTEMPTS)?;
        duration(&at("backoff.base"), q.backoff.base, &BACKOFF)?;
        duration(&at("backoff.max"), q.backoff.max, &BACKOFF)?;
        duration(&at("timeout"), q.timeout, &TIMEOUT)?;
        number(
            &at("max_payload_bytes"),
            q.max_payload_bytes,
            &MAX_PAYLOAD_BYTES,
        )?;
        if let Some(rl) = &q.rate_limit {
            number(&at("rate_limit.limit"), rl.limit, &RATE_LIMIT)?;
            duration(&at("rate_limit.window"), rl.window, &RATE_WINDOW)?;
        }
        number(&at("dead_max_jobs"), q.dead_max_jobs, &DEAD_MAX_JOBS)?;
        if let Some(limit) = q.limit {
            number(&at("limit"), limit, &LIMIT)?;
        }
        if let Some(d) = &q.debounce {
            if d.key.is_empty() || d.key.len() > GROUP_KEY_BYTES {
                return Err(ConfigError::Invalid(format!(
                    "{}: must be 1 to {GROUP_KEY_BYTES} bytes, got {}",
                    at("debounce.key"),
                    d.key.len()
                )));
            }
            duration(&at("debounce.window"), d.window, &DEBOUNCE)?;
            if let Some(max_wait) = d.max_wait {
                duration(&at("debounce.max_wait"), max_wait, &DEBOUNCE)?;
                if max_wait < d.window {
                    return Err(ConfigError::Invalid(format!(
                        "{}: must be at least the window ({}), got {}",
                        at("debounce.max_wait"),
                        human(d.window),
                        human(max_wait)
                    )));
                }
            }
        }
        if let Some(group) = &q.group {
            if group.key.is_empty() || group.key.len() > GROUP_KEY_BYTES {
                return Err(ConfigError::Invalid(format!(
                    "{}: must be 1 to {GROUP_KEY_BYTES} bytes, got {}",
                    at("group.key"),
                    group.key.len()
                )));
            }
            if let Some(limit) = group.limit {
                number(&at("group.limit"), limit, &LIMIT)?;
            }
            if group.ordered && group.limit.is_some_and(|l| l != 1) {
                return Err(ConfigError::Invalid(format!(
                    "{}: an ordered group runs one job at a time: its limit is 1 (or unset), not {}",
                    at("group.limit"),
                    group.limit.unwrap_or(0)
                )));
            }
        }
        duration(&at("track_ttl"), q.track_ttl, &TRACK_TTL)?;
    }
    for (name, s) in &config.schedules {
        let at = |field: &str| format!("schedules.{name}.{field}");
        if let Some(n) = s.max_attempts {
            number(&at("max_attempts"), n, &MAX_ATTEMPTS)?;
        }
        if let Some(d) = s.unique_for {
            duration(&at("unique_for"), d, &UNIQUE_FOR)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_out_of_bounds_is_named_with_its_bounds() {
        let e = duration("queues.q.timeout", Duration::MAX, &TIMEOUT).unwrap_err();
        assert!(
            e.to_string().starts_with(
                "invalid configuration: queues.q.timeout must be between 1ms and 7days (it is "
            ),
            "{e}"
        );
        duration("queues.q.timeout", *TIMEOUT.end(), &TIMEOUT).expect("the bound is in");
        let e = number("daemon.threads", 0usize, &THREADS).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid configuration: daemon.threads must be between 1 and 256 (it is 0)"
        );
        let e = number("redis.sentinel.db", -1i64, &DB).unwrap_err();
        assert!(e.to_string().contains("(it is -1)"), "{e}");
        number("events.stream_maxlen", 0u64, &STREAM_MAXLEN).expect("0 turns it off");
    }

    /// The largest value of each bound, where the daemon adds it to a time:
    /// nothing overflows.
    #[test]
    fn the_largest_values_add_to_any_time_without_overflow() {
        let now = std::time::Instant::now();
        for end in [
            RESPONSE_TIMEOUT.end(),
            SHUTDOWN_TIMEOUT.end(),
            NODE_TTL.end(),
            BACKOFF.end(),
            TIMEOUT.end(),
            RATE_WINDOW.end(),
            TRACK_TTL.end(),
            UNIQUE_FOR.end(),
            EVERY.end(),
            CACHE_TTL.end(),
        ] {
            assert!(now.checked_add(*end * 4).is_some(), "{end:?}");
            let ms = i64::try_from(end.as_millis()).expect("ms fit an i64");
            assert!(crate::clock::now_ms().checked_add(ms * 4).is_some());
        }
    }
}
