//! Durations as people write them in specs: `500ms`, `30s`, `5m`, `1h30m`, `2d`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A span of time, written as one or more `<integer><unit>` parts with the units `ms`, `s`, `m`,
/// `h` and `d`, largest first (`1h30m`, `1500ms`, `2m30s`).
///
/// It serializes back to a canonical string (`90s` becomes `1m30s`), which parses to the same value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

/// The longest duration accepted: 366 days (a freeze window or a timeout longer than a year is a typo).
const MAX_MILLIS: u64 = 366 * 24 * 3600 * 1000;

const UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1000),
    ("ms", 1),
];

/// What a duration looks like, for error messages.
pub(crate) const EXPECTED_DURATION: &str = "a duration like `500ms`, `30s`, `5m`, `1h30m` or `2d`";

impl Duration {
    /// A duration of whole seconds.
    pub const fn from_secs(secs: u64) -> Duration {
        Duration(std::time::Duration::from_secs(secs))
    }

    /// A duration of milliseconds.
    pub const fn from_millis(millis: u64) -> Duration {
        Duration(std::time::Duration::from_millis(millis))
    }

    /// The standard library duration.
    pub fn as_std(self) -> std::time::Duration {
        self.0
    }

    /// Whether the duration is zero.
    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }

    /// Parses the spec notation.
    ///
    /// # Errors
    /// Returns a lowercase description of the problem when `text` is not a duration.
    pub fn parse(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("found an empty duration".to_owned());
        }
        let mut rest = text;
        let mut total: u64 = 0;
        let mut last_unit_rank = None;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            if digits == 0 {
                return Err(format!("found `{text}`, which does not start with a number"));
            }
            let (number, after) = rest.split_at(digits);
            let unit_len = after.find(|c: char| c.is_ascii_digit()).unwrap_or(after.len());
            let (unit, after) = after.split_at(unit_len);
            if unit.is_empty() {
                return Err(format!("found `{text}` without a unit"));
            }
            let Some(rank) = UNITS.iter().position(|(name, _)| *name == unit) else {
                return Err(format!("found unknown unit `{unit}` in `{text}`"));
            };
            if last_unit_rank.is_some_and(|last| rank <= last) {
                return Err(format!("found `{text}` with units repeated or out of order"));
            }
            last_unit_rank = Some(rank);
            let number: u64 = number
                .parse()
                .map_err(|_| format!("found `{text}`, which is too long"))?;
            let millis = UNITS.get(rank).map_or(1, |(_, millis)| *millis);
            total = number
                .checked_mul(millis)
                .and_then(|part| total.checked_add(part))
                .filter(|total| *total <= MAX_MILLIS)
                .ok_or_else(|| format!("found `{text}`, which is longer than 366 days"))?;
            rest = after;
        }
        Ok(Duration::from_millis(total))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut millis = u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX);
        if millis == 0 {
            return f.write_str("0s");
        }
        for (name, unit) in UNITS {
            if millis >= unit {
                write!(f, "{}{name}", millis / unit)?;
                millis %= unit;
            }
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(EXPECTED_DURATION)
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Duration, E> {
                Duration::parse(text).map_err(|message| E::custom(format!("{message}; expected {EXPECTED_DURATION}")))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Duration, E> {
                Err(E::custom(format!(
                    "found the number {n} without a unit; expected {EXPECTED_DURATION}"
                )))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Duration, E> {
                Err(E::custom(format!(
                    "found the number {n} without a unit; expected {EXPECTED_DURATION}"
                )))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

impl schemars::JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?$",
            "description": "A duration: `<integer><unit>` parts, largest unit first, units ms, s, m, h, d (e.g. `500ms`, `1h30m`).",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_format() {
        for (text, millis, canonical) in [
            ("500ms", 500, "500ms"),
            ("30s", 30_000, "30s"),
            ("90s", 90_000, "1m30s"),
            ("1h30m", 5_400_000, "1h30m"),
            ("2d", 172_800_000, "2d"),
            ("1s500ms", 1500, "1s500ms"),
            ("0s", 0, "0s"),
        ] {
            let duration = Duration::parse(text).unwrap_or_default();
            assert_eq!(duration, Duration::from_millis(millis), "{text}");
            assert_eq!(duration.to_string(), canonical);
            assert_eq!(Duration::parse(canonical), Ok(duration));
        }
        for bad in [
            "",
            "30",
            "s",
            "5x",
            "1m1h",
            "1s1s",
            "99999999999999999999s",
            "400d",
            "-5s",
            "1.5s",
        ] {
            assert!(Duration::parse(bad).is_err(), "{bad}");
        }
    }
}
