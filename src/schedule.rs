//! When schedules tick: five-field cron expressions in a time zone, or a
//! fixed interval. Pure calendar logic; the daemon's `periodic` component
//! enqueues the ticks, once each however many daemons run.
//!
//! Ticks are whole seconds. A cron expression is read by `croner` (ranges,
//! steps, lists, month and day names; day of month and day of week joined
//! by OR, as cron does), on `jiff`'s time zones. Daylight saving is handled
//! the way cron users expect: a local time that a change skips does not
//! fire that day, and a local time that a change repeats fires once (the
//! first time). An interval `every = "5m"` ticks at the multiples of its
//! length since the Unix epoch, so every daemon agrees on its ticks and no
//! time zone changes them.

use std::cmp::Ordering;
use std::time::Duration;

use croner::parser::{CronParser, Seconds, Year};
use croner::{CivilDate, CivilDateTime, CivilTime, Cron, CronDateTime, Resolution, Weekday};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{SignedDuration, Timestamp, ZonedDateTime};

use crate::config::bounds::EVERY;
use crate::duration::human;

/// How a schedule ticks.
#[derive(Debug, Clone)]
pub(crate) enum Spec {
    /// A cron expression in a time zone.
    Cron {
        /// The expression as written.
        expr: String,
        /// The time zone's name (`UTC` by default).
        zone: String,
        /// Parsed.
        cron: Box<Cron>,
        /// Resolved.
        tz: TimeZone,
    },
    /// Every so many whole seconds.
    Every(Duration),
}

/// The most ticks looked at past ones that DST rules out, before giving up.
const SEARCH: usize = 1000;

impl Spec {
    /// A cron expression (five fields) in time zone `zone` (IANA name).
    pub(crate) fn cron(expr: &str, zone: &str) -> Result<Self, String> {
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| format!("{expr:?} is not a five-field cron expression: {e}"))?;
        let tz = TimeZone::get(zone).map_err(|e| {
            format!(
                "{zone:?} is not a known time zone (an IANA name such as \"Europe/Paris\"): {e}"
            )
        })?;
        let spec = Self::Cron {
            expr: expr.to_owned(),
            zone: zone.to_owned(),
            cron: Box::new(cron),
            tz,
        };
        // An expression that can never match ("0 0 30 2 *") is an error now,
        // not a schedule that silently never runs.
        spec.next_after(Timestamp::now())
            .ok_or_else(|| format!("{expr:?} never matches a date"))?;
        Ok(spec)
    }

    /// An interval of whole seconds, 1s to a year (`1y`) ([`EVERY`]).
    pub(crate) fn every(interval: Duration) -> Result<Self, String> {
        let bounds = EVERY;
        if !bounds.contains(&interval) || interval.subsec_nanos() != 0 {
            return Err(format!(
                "{} is not a whole number of seconds from {} to {}",
                human(interval),
                human(*bounds.start()),
                human(*bounds.end())
            ));
        }
        Ok(Self::Every(interval))
    }

    /// The schedule in words: `0 3 * * * (Europe/Paris)`, `every 5m`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Cron { expr, zone, .. } => format!("{expr} ({zone})"),
            Self::Every(d) => format!("every {}", human(*d)),
        }
    }

    /// What identifies the schedule's ticks, kept beside its last tick so
    /// that an edited schedule starts afresh: `cron 0 3 * * * Europe/Paris`,
    /// `every 300`.
    pub(crate) fn fingerprint(&self) -> String {
        match self {
            Self::Cron { expr, zone, .. } => format!("cron {expr} {zone}"),
            Self::Every(d) => format!("every {}", d.as_secs()),
        }
    }

    /// The first tick strictly after `t`.
    pub(crate) fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        match self {
            Self::Every(d) => {
                // Checked: [`Spec::every`] bounds the step, and a time at
                // the end of jiff's range has no next tick.
                let step = i64::try_from(d.as_secs()).ok()?;
                let next = t
                    .as_second()
                    .div_euclid(step)
                    .checked_add(1)?
                    .checked_mul(step)?;
                Timestamp::from_second(next).ok()
            }
            Self::Cron { cron, tz, .. } => {
                let mut tick = cron
                    .find_next_occurrence(&Zoned(t.to_zoned_datetime(tz.clone())), false)
                    .ok()?;
                for _ in 0..SEARCH {
                    if acceptable(cron, &tick) {
                        return Some(tick.0.timestamp());
                    }
                    tick = cron.find_next_occurrence(&tick, false).ok()?;
                }
                None
            }
        }
    }

    /// The latest tick at or before `t`.
    pub(crate) fn latest_at_or_before(&self, t: Timestamp) -> Option<Timestamp> {
        match self {
            Self::Every(d) => {
                let step = i64::try_from(d.as_secs()).ok()?;
                Timestamp::from_second(t.as_second().div_euclid(step).checked_mul(step)?).ok()
            }
            Self::Cron { cron, tz, .. } => {
                let mut tick = cron
                    .find_previous_occurrence(&Zoned(t.to_zoned_datetime(tz.clone())), true)
                    .ok()?;
                for _ in 0..SEARCH {
                    if acceptable(cron, &tick) {
                        return Some(tick.0.timestamp());
                    }
                    tick = cron.find_previous_occurrence(&tick, false).ok()?;
                }
                None
            }
        }
    }
}

/// Whether an occurrence croner found is one we fire: not a fixed-time tick
/// that croner moved out of a skipped local hour (its wall clock no longer
/// matches the expression), and not the second pass of a repeated local time.
fn acceptable(cron: &Cron, t: &Zoned) -> bool {
    if !cron.is_time_matching(t).unwrap_or(false) {
        return false;
    }
    match t.resolve_civil(t.to_civil()) {
        Ok(Resolution::Ambiguous(_, later)) => later.cmp_instant(t) != Ordering::Equal,
        _ => true,
    }
}

/// A zoned time as croner searches in it: croner's own `jiff` support is
/// for jiff 0.2, so it is driven through its `CronDateTime` trait.
#[derive(Debug, Clone, PartialEq)]
struct Zoned(ZonedDateTime);

impl CronDateTime for Zoned {
    fn to_civil(&self) -> CivilDateTime {
        let d = self.0.datetime();
        CivilDateTime::new(
            CivilDate::from_parts_unchecked(d.year().into(), d.month() as u32, d.day() as u32),
            CivilTime::from_parts_unchecked(d.hour() as u32, d.minute() as u32, d.second() as u32),
        )
    }

    fn civil_weekday(&self) -> Weekday {
        Weekday::from_days_from_sunday(self.0.weekday().to_sunday_zero_offset() as u32)
    }

    fn resolve_civil(
        &self,
        civil: CivilDateTime,
    ) -> Result<Resolution<Self>, croner::errors::CronError> {
        use croner::errors::CronError::{InvalidDate, InvalidTime};
        let datetime = jiff::civil::DateTime::new(
            i16::try_from(civil.year()).map_err(|_| InvalidDate)?,
            civil.month() as i8,
            civil.day() as i8,
            civil.hour() as i8,
            civil.minute() as i8,
            civil.second() as i8,
            0,
        )
        .map_err(|_| InvalidDate)?;
        let ambiguous = self.0.time_zone().to_ambiguous_zoned_datetime(datetime);
        Ok(match ambiguous.offset() {
            AmbiguousOffset::Unambiguous { .. } => {
                Resolution::Single(Zoned(ambiguous.unambiguous().map_err(|_| InvalidTime)?))
            }
            AmbiguousOffset::Fold { .. } => Resolution::Ambiguous(
                Zoned(ambiguous.clone().earlier().map_err(|_| InvalidTime)?),
                Zoned(ambiguous.later().map_err(|_| InvalidTime)?),
            ),
            AmbiguousOffset::Gap { .. } => Resolution::Gap,
        })
    }

    fn checked_add_seconds(&self, seconds: i64) -> Option<Self> {
        self.0
            .checked_add(SignedDuration::from_secs(seconds))
            .ok()
            .map(Zoned)
    }

    fn cmp_instant(&self, other: &Self) -> Ordering {
        self.0.timestamp().cmp(&other.0.timestamp())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A local time in Europe/Paris; `later` picks the second of a repeated one.
    fn paris(local: &str, later: bool) -> Timestamp {
        let tz = TimeZone::get("Europe/Paris").expect("tzdata");
        let at = tz.to_ambiguous_zoned_datetime(local.parse().expect("a civil time"));
        let zoned = if later { at.later() } else { at.earlier() };
        zoned.expect("resolves").timestamp()
    }

    fn utc(text: &str) -> Timestamp {
        text.parse().expect("a timestamp")
    }

    /// The next `n` ticks after `from`, as UTC instants.
    fn ticks(spec: &Spec, from: Timestamp, n: usize) -> Vec<Timestamp> {
        let mut out = Vec::new();
        let mut t = from;
        for _ in 0..n {
            t = spec.next_after(t).expect("a next tick");
            out.push(t);
        }
        out
    }

    #[test]
    fn fields_take_ranges_steps_lists_and_names() {
        let spec = Spec::cron("*/15 9-17 * * MON-FRI", "UTC").expect("parses");
        // Friday 2026-11-27 17:50 UTC: the next is Monday 09:00.
        assert_eq!(
            ticks(&spec, utc("2026-11-27T17:50:00Z"), 2),
            [utc("2026-11-30T09:00:00Z"), utc("2026-11-30T09:15:00Z")]
        );
        let spec = Spec::cron("0 0 1 JAN,JUL *", "UTC").expect("parses");
        assert_eq!(
            ticks(&spec, utc("2026-11-29T00:00:00Z"), 2),
            [utc("2027-01-01T00:00:00Z"), utc("2027-07-01T00:00:00Z")]
        );
        // Day of month OR day of week, as cron does.
        let spec = Spec::cron("0 12 13 * FRI", "UTC").expect("parses");
        assert_eq!(
            ticks(&spec, utc("2026-12-10T00:00:00Z"), 3),
            [
                utc("2026-12-11T12:00:00Z"), // Friday
                utc("2026-12-13T12:00:00Z"), // the 13th
                utc("2026-12-18T12:00:00Z"), // Friday
            ]
        );
    }

    #[test]
    fn bad_expressions_and_zones_say_what_is_wrong() {
        let err = Spec::cron("0 3 * *", "UTC").unwrap_err();
        assert!(err.contains("five-field"), "{err}");
        assert!(Spec::cron("0 3 * * * *", "UTC").is_err(), "six fields");
        assert!(Spec::cron("61 * * * *", "UTC").is_err());
        let err = Spec::cron("0 0 30 2 *", "UTC").unwrap_err();
        assert!(err.contains("never matches"), "{err}");
        let err = Spec::cron("0 3 * * *", "Europe/Pariss").unwrap_err();
        assert!(err.contains("not a known time zone"), "{err}");
        assert!(Spec::every(Duration::from_millis(1500)).is_err());
        assert!(Spec::every(Duration::ZERO).is_err());
        // Up to a year; beyond, refused rather than wrapped.
        let year = Spec::every(Duration::from_secs(31_557_600)).expect("1y");
        assert!(year.next_after(Timestamp::MAX).is_none());
        assert!(year.next_after(Timestamp::now()).is_some());
        for huge in [
            Duration::from_secs(31_557_601),
            Duration::from_secs(u64::MAX),
        ] {
            let err = Spec::every(huge).map(|_| ()).unwrap_err();
            assert!(err.contains("from 1s to 1year"), "{err}");
        }
    }

    #[test]
    fn a_local_time_skipped_by_spring_forward_does_not_fire() {
        // 2026-03-29 in Paris: 02:00 CET becomes 03:00 CEST; 02:30 does not exist.
        let daily = Spec::cron("30 2 * * *", "Europe/Paris").expect("parses");
        assert_eq!(
            ticks(&daily, paris("2026-03-28T00:00", false), 2),
            [
                paris("2026-03-28T02:30", false),
                paris("2026-03-30T02:30", false)
            ]
        );
        let hourly = Spec::cron("0 * * * *", "Europe/Paris").expect("parses");
        assert_eq!(
            ticks(&hourly, paris("2026-03-29T00:30", false), 3),
            [
                paris("2026-03-29T01:00", false),
                paris("2026-03-29T03:00", false),
                paris("2026-03-29T04:00", false),
            ]
        );
        // Looking back from that afternoon, the latest daily tick is the day before.
        assert_eq!(
            daily.latest_at_or_before(paris("2026-03-29T12:00", false)),
            Some(paris("2026-03-28T02:30", false))
        );
    }

    #[test]
    fn a_local_time_repeated_by_fall_back_fires_once() {
        // 2026-10-25 in Paris: 03:00 CEST becomes 02:00 CET; 02:00-02:59 happen twice.
        let daily = Spec::cron("30 2 * * *", "Europe/Paris").expect("parses");
        assert_eq!(
            ticks(&daily, paris("2026-10-24T12:00", false), 2),
            [
                paris("2026-10-25T02:30", false),
                paris("2026-10-26T02:30", false)
            ]
        );
        let hourly = Spec::cron("0 * * * *", "Europe/Paris").expect("parses");
        assert_eq!(
            ticks(&hourly, paris("2026-10-25T00:30", false), 3),
            [
                paris("2026-10-25T01:00", false),
                paris("2026-10-25T02:00", false),
                paris("2026-10-25T03:00", false),
            ]
        );
        // From inside the second pass, the latest tick is the first 02:30.
        assert_eq!(
            daily.latest_at_or_before(paris("2026-10-25T02:40", true)),
            Some(paris("2026-10-25T02:30", false))
        );
        assert_eq!(
            daily.next_after(paris("2026-10-25T02:20", true)),
            Some(paris("2026-10-26T02:30", false))
        );
    }

    #[test]
    fn a_tick_is_its_own_latest_and_not_its_own_next() {
        let daily = Spec::cron("0 3 * * *", "UTC").expect("parses");
        let tick = utc("2026-11-29T03:00:00Z");
        assert_eq!(daily.latest_at_or_before(tick), Some(tick));
        assert_eq!(daily.next_after(tick), Some(utc("2026-11-30T03:00:00Z")));
        // A fraction of a second later is still after that tick.
        let later = utc("2026-11-29T03:00:00.5Z");
        assert_eq!(daily.latest_at_or_before(later), Some(tick));
    }

    #[test]
    fn intervals_tick_at_multiples_since_the_epoch() {
        let every = Spec::every(Duration::from_secs(300)).expect("valid");
        let t = utc("2026-11-29T10:07:30Z");
        assert_eq!(
            every.latest_at_or_before(t),
            Some(utc("2026-11-29T10:05:00Z"))
        );
        assert_eq!(every.next_after(t), Some(utc("2026-11-29T10:10:00Z")));
        let tick = utc("2026-11-29T10:10:00Z");
        assert_eq!(every.latest_at_or_before(tick), Some(tick));
        assert_eq!(every.next_after(tick), Some(utc("2026-11-29T10:15:00Z")));
        assert_eq!(every.describe(), "every 5m");
        assert_eq!(every.fingerprint(), "every 300");
    }
}
