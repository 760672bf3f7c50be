//! 5-field cron expressions (UTC) and freeze windows.
//!
//! The grammar is the one `endstate-spec` validates (`check_cron`): `minute hour day-of-month
//! month day-of-week`, each field `*` or a comma list of `value` or `a-b`, each with an optional
//! `/step`. Months (`jan`..`dec`) and weekdays (`sun`..`sat`) also take three-letter English
//! names, in any case; weekday 7 is Sunday, like 0. `a/step` means `a-<last>/step`.
//!
//! Day-of-month and day-of-week combine as in Vixie cron: when both are restricted, a day matches
//! if either matches; a field written starting with `*` (`*`, `*/2`) counts as unrestricted, and
//! then the other alone decides.
//!
//! Times are milliseconds since the Unix epoch, in UTC; the civil calendar is computed here
//! (proleptic Gregorian, `days_from_civil`/`civil_from_days`), without a time library.

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;
const DAY_MINUTES: i64 = 1_440;

/// How far back [`freeze_window_at`] looks for the opening of a window: 400 days, in minutes.
///
/// A window lasting longer is therefore seen only during its first 400 days (a freeze longer
/// than a year is not a window).
pub(crate) const MAX_SCAN_MINUTES: i64 = 400 * DAY_MINUTES;

/// A parsed cron expression: the matching values of each field, as bit sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    /// Bit `m` set: minute `m` (0-59) matches.
    minutes: u64,
    /// Bit `h`: hour `h` (0-23).
    hours: u32,
    /// Bit `d`: day of month `d` (1-31).
    days: u32,
    /// Bit `m`: month `m` (1-12).
    months: u16,
    /// Bit `w`: weekday `w` (0 = Sunday .. 6; a 7 in the expression sets bit 0).
    weekdays: u8,
    /// Whether the day-of-month field does not start with `*`.
    days_restricted: bool,
    /// Whether the day-of-week field does not start with `*`.
    weekdays_restricted: bool,
}

/// Why a cron expression cannot be parsed: a lowercase sentence naming the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CronError(pub String);

/// One field of the expression: its name in messages, its bounds and its names.
struct Field {
    what: &'static str,
    min: u32,
    max: u32,
    /// The last value of an open range (`*`, `a/step`): `max`, but 6 for weekdays (7 is an alias).
    last: u32,
    /// Names of the values from `min` on.
    names: &'static [&'static str],
}

const FIELDS: [Field; 5] = [
    Field {
        what: "minute",
        min: 0,
        max: 59,
        last: 59,
        names: &[],
    },
    Field {
        what: "hour",
        min: 0,
        max: 23,
        last: 23,
        names: &[],
    },
    Field {
        what: "day of month",
        min: 1,
        max: 31,
        last: 31,
        names: &[],
    },
    Field {
        what: "month",
        min: 1,
        max: 12,
        last: 12,
        names: &[
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ],
    },
    Field {
        what: "day of week",
        min: 0,
        max: 7,
        last: 6,
        names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
    },
];

impl Cron {
    /// Parses `minute hour day-of-month month day-of-week` (see the module docs for the grammar).
    pub fn parse(expression: &str) -> Result<Cron, CronError> {
        let fields: Vec<&str> = expression.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields.as_slice() else {
            return Err(CronError(format!(
                "found {} fields in cron expression `{expression}`, expected 5: minute hour day-of-month month day-of-week",
                fields.len()
            )));
        };
        let [f_minute, f_hour, f_day, f_month, f_weekday] = &FIELDS;
        let weekdays = parse_field(weekday, f_weekday)?;
        // Sunday is 0 and 7: fold bit 7 into bit 0.
        let weekdays = (weekdays & 0x7f) | ((weekdays >> 7) & 1);
        Ok(Cron {
            minutes: parse_field(minute, f_minute)?,
            hours: narrow(parse_field(hour, f_hour)?),
            days: narrow(parse_field(day, f_day)?),
            months: narrow(parse_field(month, f_month)?),
            weekdays: narrow(weekdays),
            days_restricted: !day.starts_with('*'),
            weekdays_restricted: !weekday.starts_with('*'),
        })
    }

    /// Whether the day `days` since the epoch (UTC) matches the day-of-month, month and
    /// day-of-week fields.
    fn day_matches(&self, days: i64) -> bool {
        let (_, month, day) = civil_from_days(days);
        if self.months & (1 << month) == 0 {
            return false;
        }
        let by_day = self.days & (1 << day) != 0;
        let by_weekday = self.weekdays & (1 << weekday(days)) != 0;
        if self.days_restricted && self.weekdays_restricted {
            by_day || by_weekday
        } else {
            by_day && by_weekday
        }
    }

    /// The latest minute (since the epoch) at or before `from` and at or after `floor` at which
    /// the expression fires. Skips whole days and hours that do not match: at most one step per
    /// day between them, plus the hours of one matching day.
    fn latest_firing(&self, from: i64, floor: i64) -> Option<i64> {
        let mut day = from.div_euclid(DAY_MINUTES);
        let mut limit = from.rem_euclid(DAY_MINUTES); // the latest minute of the day to consider
        loop {
            let day_start = day.checked_mul(DAY_MINUTES)?;
            if day_start.saturating_add(limit) < floor {
                return None;
            }
            if self.day_matches(day) {
                // `limit` is below 1440, so these fit.
                let mut hour = u32::try_from(limit / 60).ok()?;
                let mut minute = u32::try_from(limit % 60).ok()?;
                while let Some(h) = highest_at_or_below(u64::from(self.hours), hour) {
                    let max_minute = if h == hour { minute } else { 59 };
                    if let Some(m) = highest_at_or_below(self.minutes, max_minute) {
                        let at = day_start + i64::from(h) * 60 + i64::from(m);
                        return (at >= floor).then_some(at);
                    }
                    // Only the first hour looked at can lack a minute: try the hours before it.
                    let Some(before) = h.checked_sub(1) else { break };
                    hour = before;
                    minute = 59;
                }
            }
            day -= 1;
            limit = DAY_MINUTES - 1;
        }
    }
}

/// If a window opened by `cron` and lasting `duration_ms` is open at `now_ms`, when it opened and
/// when it closes.
///
/// A window opens at every minute `T` (UTC) at which `cron` fires and is open while
/// `T <= now < T + duration`; the latest such `T` is returned, with `T + duration`. The search goes
/// back from `now` at most `duration`, and at most 400 days: a window longer than that is seen only
/// during its first 400 days. It skips non-matching days and hours whole, so it costs a few dozen
/// bit operations per day looked at.
pub fn freeze_window_at(cron: &Cron, duration_ms: u64, now_ms: i64) -> Option<(i64, i64)> {
    let duration = i64::try_from(duration_ms).unwrap_or(i64::MAX);
    if duration == 0 {
        return None;
    }
    let now_minute = now_ms.div_euclid(MINUTE_MS);
    // The earliest opening still open at now: T * 60000 + duration > now.
    let earliest = now_ms.saturating_sub(duration).div_euclid(MINUTE_MS) + 1;
    let floor = earliest.max(now_minute - (MAX_SCAN_MINUTES - 1));
    let opened = cron.latest_firing(now_minute, floor)?.checked_mul(MINUTE_MS)?;
    Some((opened, opened.saturating_add(duration)))
}

/// Parses one field into a bit set of its values.
fn parse_field(text: &str, field: &Field) -> Result<u64, CronError> {
    let what = field.what;
    let mut bits = 0u64;
    for item in text.split(',') {
        if item.is_empty() {
            return Err(CronError(format!("found an empty item in the {what} field `{text}`")));
        }
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, Some(step)),
            None => (item, None),
        };
        let step = match step {
            None => 1,
            Some(step) => match step.parse::<u32>() {
                Ok(value) if (1..=field.max).contains(&value) => value,
                _ => return Err(CronError(format!("found step `{step}` in the {what} field `{text}`"))),
            },
        };
        let (low, high) = if range == "*" {
            (field.min, field.last)
        } else {
            match range.split_once('-') {
                Some((low, high)) => {
                    let (low, high) = (value(low, field)?, value(high, field)?);
                    if low > high {
                        return Err(CronError(format!(
                            "found the backwards range `{range}` in the {what} field"
                        )));
                    }
                    (low, high)
                }
                None => {
                    let low = value(range, field)?;
                    // `a/step` runs to the end of the field; `a` alone is just `a`.
                    if item.contains('/') {
                        (low, field.last.max(low))
                    } else {
                        (low, low)
                    }
                }
            }
        };
        let mut v = low;
        while v <= high {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

/// One value of a field: a number or, for months and weekdays, a three-letter name.
fn value(text: &str, field: &Field) -> Result<u32, CronError> {
    let parsed = text.parse::<u32>().ok().or_else(|| {
        field
            .names
            .iter()
            .position(|name| name.eq_ignore_ascii_case(text))
            .and_then(|index| u32::try_from(index).ok())
            .map(|index| index + field.min)
    });
    match parsed {
        Some(v) if (field.min..=field.max).contains(&v) => Ok(v),
        _ => Err(CronError(format!(
            "found `{text}` in the {} field, outside {}-{}",
            field.what, field.min, field.max
        ))),
    }
}

/// Narrows a field's bit set to its storage type (every field but minutes fits in 32 bits).
fn narrow<T: TryFrom<u64> + Default>(bits: u64) -> T {
    T::try_from(bits).unwrap_or_default()
}

/// The highest set bit of `bits` at or below `position`.
fn highest_at_or_below(bits: u64, position: u32) -> Option<u32> {
    let mask = if position >= 63 {
        u64::MAX
    } else {
        (1u64 << (position + 1)) - 1
    };
    let masked = bits & mask;
    (masked != 0).then(|| 63 - masked.leading_zeros())
}

/// The weekday of the day `days` since the epoch, 0 = Sunday (1970-01-01 was a Thursday).
fn weekday(days: i64) -> u32 {
    // rem_euclid(7) is in 0..7.
    u32::try_from((days + 4).rem_euclid(7)).unwrap_or(0)
}

/// (year, month 1-12, day 1-31) of the day `days` since 1970-01-01 (H. Hinnant's algorithm).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], from March
    let day = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Both are small and positive.
    (year, u32::try_from(month).unwrap_or(1), u32::try_from(day).unwrap_or(1))
}

/// `2024-05-03T18:00:00Z` (with `.mmm` when the milliseconds are not 0): RFC 3339, UTC.
pub(crate) fn format_time(ms: i64) -> String {
    let days = ms.div_euclid(DAY_MS);
    let in_day = ms.rem_euclid(DAY_MS);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute) = (in_day / 3_600_000, in_day / MINUTE_MS % 60);
    let (second, milli) = (in_day / 1_000 % 60, in_day % 1_000);
    let fraction = if milli == 0 {
        String::new()
    } else {
        format!(".{milli:03}")
    };
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{fraction}Z")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Days since the epoch of a civil date (H. Hinnant's algorithm), the inverse of
    /// `civil_from_days`.
    fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
        let year = if month <= 2 { year - 1 } else { year };
        let era = year.div_euclid(400);
        let yoe = year.rem_euclid(400);
        let month = i64::from(month);
        let mp = if month > 2 { month - 3 } else { month + 9 };
        let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// Milliseconds since the epoch of a UTC time.
    fn utc(year: i64, month: u32, day: u32, hour: i64, minute: i64) -> i64 {
        days_from_civil(year, month, day) * DAY_MS + hour * 3_600_000 + minute * MINUTE_MS
    }

    const HOUR: u64 = 3_600_000;

    #[test]
    fn civil_calendar() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(weekday(0), 4);
        // `date -u -d 2024-05-03T18:00:00Z +%s`: 1714759200, a Friday.
        assert_eq!(utc(2024, 5, 3, 18, 0), 1_714_759_200_000);
        assert_eq!(weekday(days_from_civil(2024, 5, 3)), 5);
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        assert_eq!(civil_from_days(days_from_civil(2000, 3, 1) - 1), (2000, 2, 29));
        assert_eq!(civil_from_days(days_from_civil(1900, 3, 1) - 1), (1900, 2, 28));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        for days in -800_000..800_000 {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(format_time(utc(2024, 5, 3, 18, 0)), "2024-05-03T18:00:00Z");
        assert_eq!(
            format_time(utc(1969, 12, 31, 23, 59) + 1_234),
            "1969-12-31T23:59:01.234Z"
        );
    }

    #[test]
    fn parses_values_ranges_steps_and_names() {
        let cron = Cron::parse("*/15 0-6 1,15 jan-mar mon-fri").unwrap();
        assert_eq!(cron.minutes, (1 << 0) | (1 << 15) | (1 << 30) | (1 << 45));
        assert_eq!(cron.hours, 0b111_1111);
        assert_eq!(cron.days, (1 << 1) | (1 << 15));
        assert_eq!(cron.months, 0b1110);
        assert_eq!(cron.weekdays, 0b11_1110);
        assert!(cron.days_restricted && cron.weekdays_restricted);

        let cron = Cron::parse("0 18 * * FRI").unwrap();
        assert_eq!((cron.minutes, cron.hours, cron.weekdays), (1, 1 << 18, 1 << 5));
        assert_eq!(cron.days, 0xffff_fffe);
        assert_eq!(cron.months, 0x1ffe);
        assert!(!cron.days_restricted && cron.weekdays_restricted);

        // 7 is Sunday; ranges through 7 wrap onto 0.
        assert_eq!(Cron::parse("0 0 * * 7").unwrap().weekdays, 1);
        assert_eq!(Cron::parse("0 0 * * fri-7").unwrap().weekdays, 0b110_0001);
        // Names in any case, steps on ranges and on a start value.
        assert_eq!(Cron::parse("0 0 * Jan-JUN/2 *").unwrap().months, 0b10_1010);
        assert_eq!(
            Cron::parse("10/20 * * * *").unwrap().minutes,
            (1 << 10) | (1 << 30) | (1 << 50)
        );
        assert_eq!(
            Cron::parse("0 */6 * * *").unwrap().hours,
            (1 << 0) | (1 << 6) | (1 << 12) | (1 << 18)
        );
        assert_eq!(Cron::parse("0 0 * * */2").unwrap().weekdays, 0b101_0101);
        assert_eq!(Cron::parse("0 0 * * mon/2").unwrap().weekdays, 0b10_1010);
        assert_eq!(Cron::parse("1,2,5-7 * * * *").unwrap().minutes, 0b1110_0110);
        assert_eq!(Cron::parse("  59 23   31 12 sun ").unwrap().minutes, 1 << 59);
        // `*/2` counts as unrestricted for the day-of-month / day-of-week rule.
        let cron = Cron::parse("0 0 */2 * mon").unwrap();
        assert!(!cron.days_restricted && cron.weekdays_restricted);
    }

    #[test]
    fn refuses_what_the_spec_refuses() {
        for (bad, why) in [
            (
                "0 18 * *",
                "found 4 fields in cron expression `0 18 * *`, expected 5: minute hour day-of-month month day-of-week",
            ),
            ("60 * * * *", "found `60` in the minute field, outside 0-59"),
            ("0 24 * * *", "found `24` in the hour field, outside 0-23"),
            ("0 0 0 * *", "found `0` in the day of month field, outside 1-31"),
            ("0 0 * 13 *", "found `13` in the month field, outside 1-12"),
            ("0 0 * * 8", "found `8` in the day of week field, outside 0-7"),
            ("0 0 * * fr", "found `fr` in the day of week field, outside 0-7"),
            ("0 0 * foo *", "found `foo` in the month field, outside 1-12"),
            ("0 0 * * jan", "found `jan` in the day of week field, outside 0-7"),
            ("*/0 * * * *", "found step `0` in the minute field `*/0`"),
            ("*/x * * * *", "found step `x` in the minute field `*/x`"),
            ("0 */24 * * *", "found step `24` in the hour field `*/24`"),
            ("5-1 * * * *", "found the backwards range `5-1` in the minute field"),
            ("1,,2 * * * *", "found an empty item in the minute field `1,,2`"),
            ("*-5 * * * *", "found `*` in the minute field, outside 0-59"),
            (
                "",
                "found 0 fields in cron expression ``, expected 5: minute hour day-of-month month day-of-week",
            ),
        ] {
            assert_eq!(Cron::parse(bad), Err(CronError(why.to_owned())), "{bad}");
        }
    }

    #[test]
    fn day_of_month_and_day_of_week_combine_with_or_when_both_restricted() {
        // The 13th, or any Friday.
        let cron = Cron::parse("0 0 13 * fri").unwrap();
        assert!(cron.day_matches(days_from_civil(2024, 5, 13))); // a Monday, the 13th
        assert!(cron.day_matches(days_from_civil(2024, 5, 3))); // a Friday, the 3rd
        assert!(!cron.day_matches(days_from_civil(2024, 5, 4)));
        // Only one restricted: that one decides.
        let cron = Cron::parse("0 0 * * fri").unwrap();
        assert!(!cron.day_matches(days_from_civil(2024, 5, 13)));
        assert!(cron.day_matches(days_from_civil(2024, 5, 10)));
        let cron = Cron::parse("0 0 13 * *").unwrap();
        assert!(cron.day_matches(days_from_civil(2024, 5, 13)));
        assert!(!cron.day_matches(days_from_civil(2024, 5, 10)));
        // `*/2` is unrestricted (Vixie): odd days that are Mondays.
        let cron = Cron::parse("0 0 */2 * mon").unwrap();
        assert!(cron.day_matches(days_from_civil(2024, 5, 13)));
        assert!(!cron.day_matches(days_from_civil(2024, 5, 6)));
        assert!(!cron.day_matches(days_from_civil(2024, 5, 15)));
        // The month always applies.
        let cron = Cron::parse("0 0 13 jun fri").unwrap();
        assert!(!cron.day_matches(days_from_civil(2024, 5, 13)));
        assert!(cron.day_matches(days_from_civil(2024, 6, 13)));
        assert!(cron.day_matches(days_from_civil(2024, 6, 7)));
    }

    #[test]
    fn freeze_window_inside_at_the_edges_and_outside() {
        let cron = Cron::parse("0 18 * * fri").unwrap();
        let opened = utc(2024, 5, 3, 18, 0); // a Friday
        let window = Some((opened, opened + 48 * HOUR as i64));
        // Inside: the opening minute itself, later that evening, the next day, the last ms.
        assert_eq!(freeze_window_at(&cron, 48 * HOUR, opened), window);
        assert_eq!(freeze_window_at(&cron, 48 * HOUR, opened + 59_999), window);
        assert_eq!(freeze_window_at(&cron, 48 * HOUR, utc(2024, 5, 4, 9, 30)), window);
        assert_eq!(
            freeze_window_at(&cron, 48 * HOUR, utc(2024, 5, 5, 17, 59) + 59_999),
            window
        );
        // Outside: just before it opens, the moment it closes, the week after.
        assert_eq!(freeze_window_at(&cron, 48 * HOUR, opened - 1), None);
        assert_eq!(freeze_window_at(&cron, 48 * HOUR, utc(2024, 5, 5, 18, 0)), None);
        assert_eq!(freeze_window_at(&cron, 48 * HOUR, utc(2024, 5, 8, 12, 0)), None);
        // A zero duration never opens.
        assert_eq!(freeze_window_at(&cron, 0, opened), None);
    }

    #[test]
    fn freeze_window_across_midnight_and_a_month_boundary() {
        // Every day at 22:30 for 4 hours: on the night from the 31st of May to the 1st of June.
        let cron = Cron::parse("30 22 * * *").unwrap();
        let opened = utc(2024, 5, 31, 22, 30);
        let window = Some((opened, opened + 4 * HOUR as i64));
        assert_eq!(freeze_window_at(&cron, 4 * HOUR, utc(2024, 6, 1, 0, 0)), window);
        assert_eq!(freeze_window_at(&cron, 4 * HOUR, utc(2024, 6, 1, 2, 29)), window);
        assert_eq!(freeze_window_at(&cron, 4 * HOUR, utc(2024, 6, 1, 2, 30)), None);
        // The last day of a month, across a year boundary.
        let cron = Cron::parse("0 20 31 dec *").unwrap();
        let opened = utc(2023, 12, 31, 20, 0);
        assert_eq!(
            freeze_window_at(&cron, 6 * HOUR, utc(2024, 1, 1, 1, 0)),
            Some((opened, opened + 6 * HOUR as i64))
        );
        assert_eq!(freeze_window_at(&cron, 6 * HOUR, utc(2024, 12, 31, 19, 0)), None);
    }

    #[test]
    fn freeze_window_takes_the_latest_opening() {
        // Every 15 minutes for an hour: the windows overlap; the latest opening is returned.
        let cron = Cron::parse("*/15 * * * *").unwrap();
        let now = utc(2024, 5, 3, 10, 50);
        let opened = utc(2024, 5, 3, 10, 45);
        assert_eq!(freeze_window_at(&cron, HOUR, now), Some((opened, opened + HOUR as i64)));
        // Hours that do not match are skipped: at 9:00 only, now 10:05, open for 2 hours.
        let cron = Cron::parse("0 9 * * *").unwrap();
        let opened = utc(2024, 5, 3, 9, 0);
        assert_eq!(
            freeze_window_at(&cron, 2 * HOUR, utc(2024, 5, 3, 10, 5)),
            Some((opened, opened + 2 * HOUR as i64))
        );
        // In the opening hour but before its minute: yesterday's opening, if still open.
        let cron = Cron::parse("30 10 * * *").unwrap();
        let yesterday = utc(2024, 5, 2, 10, 30);
        assert_eq!(
            freeze_window_at(&cron, 25 * HOUR, utc(2024, 5, 3, 10, 10)),
            Some((yesterday, yesterday + 25 * HOUR as i64))
        );
        assert_eq!(freeze_window_at(&cron, HOUR, utc(2024, 5, 3, 10, 10)), None);
    }

    #[test]
    fn freeze_window_with_the_weekday_rule() {
        // Opens on the 1st of the month or on Mondays (both restricted: either).
        let cron = Cron::parse("0 0 1 * mon").unwrap();
        // Wednesday 2024-05-01 (the 1st).
        let first = utc(2024, 5, 1, 0, 0);
        assert_eq!(
            freeze_window_at(&cron, HOUR, first + 60_000),
            Some((first, first + HOUR as i64))
        );
        // Monday 2024-05-06.
        let monday = utc(2024, 5, 6, 0, 0);
        assert_eq!(
            freeze_window_at(&cron, HOUR, monday + 60_000),
            Some((monday, monday + HOUR as i64))
        );
        // Tuesday 2024-05-07: neither.
        assert_eq!(freeze_window_at(&cron, HOUR, utc(2024, 5, 7, 0, 30)), None);
        // Sunday as 7 and as 0.
        for expression in ["0 0 * * 7", "0 0 * * 0", "0 0 * * SUN"] {
            let cron = Cron::parse(expression).unwrap();
            let sunday = utc(2024, 5, 5, 0, 0);
            assert_eq!(
                freeze_window_at(&cron, HOUR, sunday + 1),
                Some((sunday, sunday + HOUR as i64)),
                "{expression}"
            );
            assert_eq!(
                freeze_window_at(&cron, HOUR, utc(2024, 5, 6, 0, 1)),
                None,
                "{expression}"
            );
        }
    }

    /// The skipping scan agrees with a plain minute-by-minute one.
    #[test]
    fn freeze_window_agrees_with_a_plain_scan() {
        let fires = |cron: &Cron, minute: i64| {
            let day = minute.div_euclid(DAY_MINUTES);
            let in_day = minute.rem_euclid(DAY_MINUTES);
            cron.day_matches(day) && cron.hours & (1 << (in_day / 60)) != 0 && cron.minutes & (1 << (in_day % 60)) != 0
        };
        let plain = |cron: &Cron, duration_ms: u64, now_ms: i64| {
            let now_minute = now_ms.div_euclid(MINUTE_MS);
            (0..MAX_SCAN_MINUTES.min(duration_ms as i64 / MINUTE_MS + 2))
                .map(|back| now_minute - back)
                .filter(|minute| minute * MINUTE_MS + duration_ms as i64 > now_ms)
                .find(|minute| fires(cron, *minute))
                .map(|minute| (minute * MINUTE_MS, minute * MINUTE_MS + duration_ms as i64))
        };
        let expressions = [
            "0 18 * * fri",
            "*/7 */5 * * *",
            "59 23 31 * *",
            "0 0 1 * mon",
            "30 2 29 feb *",
            "5,50 9-17 * jan-mar,oct sat,sun",
            "0 12 */3 * *",
            "15 * 13 * fri",
        ];
        // A small linear congruential generator: the same cases every run.
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |bound: u64| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) % bound
        };
        for expression in expressions {
            let cron = Cron::parse(expression).unwrap();
            for _ in 0..300 {
                let now = utc(2023, 1, 1, 0, 0) + next(3 * 366 * DAY_MS as u64) as i64;
                let duration = 1 + next(8 * DAY_MS as u64);
                assert_eq!(
                    freeze_window_at(&cron, duration, now),
                    plain(&cron, duration, now),
                    "{expression} at {} for {duration}ms",
                    format_time(now)
                );
            }
        }
    }

    #[test]
    fn freeze_window_scan_is_capped_at_400_days() {
        // Opens on the 20th of December for 14 days: a holiday freeze is seen whole.
        let cron = Cron::parse("0 0 20 dec *").unwrap();
        let opened = utc(2024, 12, 20, 0, 0);
        let fourteen_days = 14 * 24 * HOUR;
        assert_eq!(
            freeze_window_at(&cron, fourteen_days, utc(2025, 1, 2, 23, 59)),
            Some((opened, opened + fourteen_days as i64))
        );
        assert_eq!(freeze_window_at(&cron, fourteen_days, utc(2025, 1, 3, 0, 0)), None);
        // Opens on the 29th of February only (2024, then 2028) for 500 days: seen during its
        // first 400 days only.
        let cron = Cron::parse("0 0 29 feb *").unwrap();
        let opened = utc(2024, 2, 29, 0, 0);
        let long = 500 * 24 * HOUR;
        let day = 24 * HOUR as i64;
        assert_eq!(
            freeze_window_at(&cron, long, opened + 399 * day),
            Some((opened, opened + long as i64))
        );
        assert_eq!(freeze_window_at(&cron, long, opened + 401 * day), None);
        // Never firing (the 30th of February): the scan ends, nothing found.
        let cron = Cron::parse("0 0 30 feb *").unwrap();
        assert_eq!(freeze_window_at(&cron, u64::MAX, utc(2024, 3, 1, 0, 0)), None);
        // Huge durations and times do not overflow.
        let cron = Cron::parse("* * * * *").unwrap();
        assert!(freeze_window_at(&cron, u64::MAX, 0).is_some());
        assert!(freeze_window_at(&cron, u64::MAX, i64::MIN / 2).is_some());
        assert!(freeze_window_at(&cron, 60_000, i64::MAX - 1).is_some());
    }
}
