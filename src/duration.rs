//! Durations as the configuration writes them (`25s`, `5m`, `1year`): one
//! form for every message, log line and page that names one, so that what
//! people read is what they may write back into the file.
//!
//! Its own home, below both the configuration and the schedules, which
//! both name durations (and the configuration reads the schedules).

use std::time::Duration;

/// `d` as the configuration writes it (`25s`, `5m`).
pub(crate) fn human(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_as_the_configuration_writes_it() {
        assert_eq!(human(Duration::from_secs(25)).to_string(), "25s");
        assert_eq!(human(Duration::from_secs(300)).to_string(), "5m");
        assert_eq!(human(Duration::from_millis(1500)).to_string(), "1s 500ms");
        assert_eq!(human(Duration::from_secs(31_557_600)).to_string(), "1year");
    }
}
