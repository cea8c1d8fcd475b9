//! The clock: now in the forms Redis scores, envelopes and events use.

/// Now as RFC 3339 with milliseconds, UTC. Formatted at most once per
/// millisecond per thread: events and envelopes ask for it per job.
pub fn now_rfc3339() -> String {
    with_now_rfc3339(str::to_owned)
}

/// Calls `f` with now as RFC 3339 (see [`now_rfc3339`]), without a copy.
pub fn with_now_rfc3339<R>(f: impl FnOnce(&str) -> R) -> R {
    thread_local! {
        static LAST: std::cell::RefCell<(i64, String)> = const { std::cell::RefCell::new((i64::MIN, String::new())) };
    }
    let now = jiff::Timestamp::now();
    LAST.with_borrow_mut(|(ms, text)| {
        if *ms != now.as_millisecond() {
            *ms = now.as_millisecond();
            *text = format!("{now:.3}");
        }
        f(text)
    })
}

/// A time in ms since the epoch as RFC 3339 with milliseconds, UTC.
pub fn rfc3339_ms(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| format!("{t:.3}"))
        .unwrap_or_else(|_| ms.to_string())
}

/// Now in milliseconds since the epoch; scores of `{K}:scheduled` use it.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// An age or uptime as people read it: `42s`, `3m05s`, `2h10m`, `3d04h`.
pub fn age(secs: f64) -> String {
    let s = secs as u64;
    match s {
        0..60 => format!("{secs:.0}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::age;

    #[test]
    fn ages_read_like_uptime() {
        assert_eq!(age(4.2), "4s");
        assert_eq!(age(185.0), "3m05s");
        assert_eq!(age(7800.0), "2h10m");
        assert_eq!(age(273_600.0), "3d04h");
    }
}
