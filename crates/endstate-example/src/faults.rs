//! The fault knobs and where they come from.
//!
//! Sources are layered, later wins per key: built-in defaults (healthy), markers in the version string,
//! the config file, the environment. Every value is validated; a bad one is a [`ConfigError`] naming the
//! key and where it was set (`file:line` or the environment variable), never a panic.

use std::fmt;

/// Latency a `-slow` version marker adds to every traffic request.
pub(crate) const SLOW_MARKER_LATENCY_MS: u64 = 300;
/// Error rate an `-errors` version marker sets (every traffic request fails, so a gate notices at once).
pub(crate) const ERRORS_MARKER_RATE: f64 = 1.0;
/// Upper bound for `latency_ms`, so a typo cannot park requests for hours.
pub(crate) const MAX_LATENCY_MS: u64 = 60_000;

/// Environment variables and the config keys they set.
pub(crate) const ENV_KEYS: [(&str, &str); 3] = [
    ("EXAMPLE_FAIL_HEALTH", "fail_health"),
    ("EXAMPLE_ERROR_RATE", "error_rate"),
    ("EXAMPLE_LATENCY_MS", "latency_ms"),
];

/// The effective faults of one process.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct Faults {
    /// `/health` answers 503.
    pub(crate) fail_health: bool,
    /// Probability in `[0, 1]` that a traffic request answers 500.
    pub(crate) error_rate: f64,
    /// Delay added before answering a traffic request.
    pub(crate) latency_ms: u64,
}

/// A configuration value that cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) struct ConfigError {
    /// Where it was set: `path:line` or `environment variable NAME`.
    pub(crate) origin: String,
    /// The key, when the problem is tied to one.
    pub(crate) key: Option<String>,
    pub(crate) message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{}: key `{key}`: {}", self.origin, self.message),
            None => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}

impl Faults {
    /// Faults implied by the version string: `-bad-health`, `-errors`, `-slow` anywhere in it
    /// (several may be combined, e.g. `1.2.0-slow-errors`).
    pub(crate) fn from_version(version: &str) -> Self {
        Faults {
            fail_health: version.contains("-bad-health"),
            error_rate: if version.contains("-errors") {
                ERRORS_MARKER_RATE
            } else {
                0.0
            },
            latency_ms: if version.contains("-slow") {
                SLOW_MARKER_LATENCY_MS
            } else {
                0
            },
        }
    }

    /// Sets one key from its textual value; the error is a message for the user.
    fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "fail_health" => {
                self.fail_health = match value.to_ascii_lowercase().as_str() {
                    "true" | "yes" | "on" | "1" => true,
                    "false" | "no" | "off" | "0" => false,
                    _ => return Err(format!("expected true or false, got {value:?}")),
                }
            }
            "error_rate" => {
                let rate: f64 = value
                    .parse()
                    .map_err(|_| format!("expected a number between 0 and 1, got {value:?}"))?;
                if !(0.0..=1.0).contains(&rate) {
                    return Err(format!("expected a number between 0 and 1, got {value:?}"));
                }
                self.error_rate = rate;
            }
            "latency_ms" => {
                let ms: u64 = value
                    .parse()
                    .map_err(|_| format!("expected whole milliseconds (0 to {MAX_LATENCY_MS}), got {value:?}"))?;
                if ms > MAX_LATENCY_MS {
                    return Err(format!(
                        "expected whole milliseconds (0 to {MAX_LATENCY_MS}), got {value:?}"
                    ));
                }
                self.latency_ms = ms;
            }
            _ => return Err("unknown key (known: fail_health, error_rate, latency_ms)".to_owned()),
        }
        Ok(())
    }

    /// Applies a config file's text. `origin` is how the file is named in errors (the path as given).
    /// A file whose first non-blank character is `{` is JSON, otherwise `key = value` lines with `#` comments.
    pub(crate) fn apply_file(&mut self, origin: &str, text: &str) -> Result<(), ConfigError> {
        if text.trim_start().starts_with('{') {
            self.apply_json(origin, text)
        } else {
            self.apply_lines(origin, text)
        }
    }

    fn apply_lines(&mut self, origin: &str, text: &str) -> Result<(), ConfigError> {
        let mut seen: Vec<(String, usize)> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            let at = || format!("{origin}:{line_no}");
            let line = raw.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(ConfigError {
                    origin: at(),
                    key: None,
                    message: format!("expected `key = value`, got {line:?}"),
                });
            };
            let key = key.trim();
            let value = unquote(value.trim());
            if let Some((_, first)) = seen.iter().find(|(k, _)| k == key) {
                return Err(ConfigError {
                    origin: at(),
                    key: Some(key.to_owned()),
                    message: format!("set twice (first on line {first})"),
                });
            }
            seen.push((key.to_owned(), line_no));
            self.set(key, value).map_err(|message| ConfigError {
                origin: at(),
                key: Some(key.to_owned()),
                message,
            })?;
        }
        Ok(())
    }

    fn apply_json(&mut self, origin: &str, text: &str) -> Result<(), ConfigError> {
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(text).map_err(|err| ConfigError {
                origin: format!("{origin}:{}", err.line()),
                key: None,
                message: format!("invalid JSON object: {err}"),
            })?;
        for (key, value) in &map {
            // serde_json forgets positions; the first line mentioning the quoted key is where it was set.
            let quoted = format!("\"{key}\"");
            let line_no = text.lines().position(|l| l.contains(&quoted)).map_or(1, |i| i + 1);
            let error = |message: String| ConfigError {
                origin: format!("{origin}:{line_no}"),
                key: Some(key.clone()),
                message,
            };
            let textual = match value {
                serde_json::Value::Bool(b) => b.to_string(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::String(s) => s.clone(),
                other => return Err(error(format!("expected a boolean, number or string, got {other}"))),
            };
            self.set(key, &textual).map_err(error)?;
        }
        Ok(())
    }

    /// Applies the `EXAMPLE_*` environment variables; `lookup` reads one (empty counts as unset).
    pub(crate) fn apply_env(&mut self, lookup: impl Fn(&str) -> Option<std::ffi::OsString>) -> Result<(), ConfigError> {
        for (var, key) in ENV_KEYS {
            let Some(raw) = lookup(var) else { continue };
            let error = |message: String| ConfigError {
                origin: format!("environment variable {var}"),
                key: Some(key.to_owned()),
                message,
            };
            let value = raw.into_string().map_err(|_| error("not valid UTF-8".to_owned()))?;
            let value = value.trim();
            if value.is_empty() {
                continue;
            }
            self.set(key, value).map_err(error)?;
        }
        Ok(())
    }
}

/// Strips one pair of matching surrounding quotes.
fn unquote(value: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = value.strip_prefix(q).and_then(|v| v.strip_suffix(q)) {
            return inner;
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_markers_turn_on_faults() {
        assert_eq!(Faults::from_version("1.0.0"), Faults::default());
        let f = Faults::from_version("1.1.0-bad-health");
        assert!(f.fail_health);
        assert_eq!(Faults::from_version("2.0.0-errors").error_rate, 1.0);
        let f = Faults::from_version("1.2.0-slow-errors");
        assert_eq!(
            (f.latency_ms, f.error_rate, f.fail_health),
            (SLOW_MARKER_LATENCY_MS, 1.0, false)
        );
    }

    #[test]
    fn key_value_file_parses_and_later_sources_win() {
        let mut f = Faults::from_version("1.0.0-slow");
        f.apply_file(
            "c.conf",
            "# faults\n\nfail_health = true\nerror_rate = 0.25 # a quarter\nlatency_ms = \"0\"\n",
        )
        .unwrap();
        assert_eq!(
            f,
            Faults {
                fail_health: true,
                error_rate: 0.25,
                latency_ms: 0
            }
        );
    }

    #[test]
    fn json_file_parses() {
        let mut f = Faults::default();
        f.apply_file(
            "c.json",
            "{\n  \"fail_health\": false,\n  \"error_rate\": 1,\n  \"latency_ms\": 50\n}\n",
        )
        .unwrap();
        assert_eq!(
            f,
            Faults {
                fail_health: false,
                error_rate: 1.0,
                latency_ms: 50
            }
        );
    }

    #[test]
    fn bad_values_name_key_and_line() {
        let cases = [
            ("error_rate = 1.5", "c.conf:2: key `error_rate`"),
            ("error_rate = NaN", "c.conf:2: key `error_rate`"),
            ("latency_ms = -3", "c.conf:2: key `latency_ms`"),
            ("latency_ms = 600000", "c.conf:2: key `latency_ms`"),
            ("fail_health = maybe", "c.conf:2: key `fail_health`"),
            ("fial_health = true", "c.conf:2: key `fial_health`: unknown key"),
            ("just words", "c.conf:2: expected `key = value`"),
        ];
        for (line, expected) in cases {
            let err = Faults::default()
                .apply_file("c.conf", &format!("# header\n{line}\n"))
                .unwrap_err();
            assert!(err.to_string().starts_with(expected), "{line}: {err}");
        }
        let err = Faults::default()
            .apply_file("c.conf", "latency_ms = 1\nlatency_ms = 2\n")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "c.conf:2: key `latency_ms`: set twice (first on line 1)"
        );
    }

    #[test]
    fn bad_json_names_key_and_line() {
        let err = Faults::default()
            .apply_file("c.json", "{\n \"latency_ms\": 10,\n \"error_rate\": 2\n}")
            .unwrap_err();
        assert!(err.to_string().starts_with("c.json:3: key `error_rate`"), "{err}");
        let err = Faults::default()
            .apply_file("c.json", "{\n \"latency_ms\": [1]\n}")
            .unwrap_err();
        assert!(err.to_string().starts_with("c.json:2: key `latency_ms`"), "{err}");
        let err = Faults::default()
            .apply_file("c.json", "{\n \"latency_ms\": 10,\n}")
            .unwrap_err();
        assert!(err.to_string().starts_with("c.json:3: invalid JSON"), "{err}");
    }

    #[test]
    fn environment_overrides_and_is_validated() {
        let mut f = Faults {
            fail_health: true,
            error_rate: 0.5,
            latency_ms: 7,
        };
        f.apply_env(|var| match var {
            "EXAMPLE_FAIL_HEALTH" => Some("false".into()),
            "EXAMPLE_ERROR_RATE" => Some("".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(
            f,
            Faults {
                fail_health: false,
                error_rate: 0.5,
                latency_ms: 7
            }
        );
        let err = f
            .apply_env(|var| (var == "EXAMPLE_LATENCY_MS").then(|| "soon".into()))
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("environment variable EXAMPLE_LATENCY_MS: key `latency_ms`"),
            "{err}"
        );
    }
}
