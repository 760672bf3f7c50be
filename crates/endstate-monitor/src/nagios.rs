//! The Nagios plugin convention: exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN; the first line of
//! stdout is the message, text after `|` is performance data
//! (`'label'=value[UOM];[warn];[crit];[min];[max]`, space separated), later lines are long
//! output and may carry more performance data after their own `|`.
//!
//! [`parse`] never fails: anything unexpected (another exit code, a signal, a timeout, bytes
//! that are not UTF-8, malformed performance data, too much output) gives a result that says so
//! in [`Outcome::notes`], and an exit that is not 0 to 3 is UNKNOWN.

use serde::{Deserialize, Serialize};

/// The most bytes of the message kept.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// A check's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Fine.
    Ok,
    /// Look at it soon.
    Warning,
    /// Broken.
    Critical,
    /// The check could not tell.
    Unknown,
}

impl Status {
    /// The word, as on the wire and the timeline.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warning => "warning",
            Status::Critical => "critical",
            Status::Unknown => "unknown",
        }
    }

    /// The status of its word (`as_str`).
    pub fn parse(word: &str) -> Option<Status> {
        match word {
            "ok" => Some(Status::Ok),
            "warning" => Some(Status::Warning),
            "critical" => Some(Status::Critical),
            "unknown" => Some(Status::Unknown),
            _ => None,
        }
    }

    /// The Nagios code: ok 0, warning 1, critical 2, unknown 3.
    pub fn severity_code(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::Warning => 1,
            Status::Critical => 2,
            Status::Unknown => 3,
        }
    }

    /// How bad: ok 0, warning 1, unknown 2, critical 3.
    pub fn severity_rank(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::Warning => 1,
            Status::Unknown => 2,
            Status::Critical => 3,
        }
    }

    /// The status of a plugin's exit code (`None` for any code but 0 to 3).
    pub fn from_code(code: i32) -> Option<Status> {
        match code {
            0 => Some(Status::Ok),
            1 => Some(Status::Warning),
            2 => Some(Status::Critical),
            3 => Some(Status::Unknown),
            _ => None,
        }
    }
}

/// How the plugin process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// It ran past its timeout (the caller killed its process group).
    TimedOut {
        /// The timeout, in milliseconds.
        after_ms: u64,
    },
    /// It could not be started.
    SpawnFailed(String),
}

/// One performance datum.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PerfDatum {
    /// The label, unquoted.
    pub label: String,
    /// The value.
    pub value: f64,
    /// The unit of measure (`s`, `ms`, `%`, `B`, `KB`, `c`, ...), if any.
    pub unit: Option<String>,
    /// The warning range, as written.
    pub warn: Option<String>,
    /// The critical range, as written.
    pub crit: Option<String>,
    /// The minimum.
    pub min: Option<f64>,
    /// The maximum.
    pub max: Option<f64>,
}

/// What a plugin said.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// Its status.
    pub status: Status,
    /// The first line, before `|`, trimmed (`(no output)` when empty).
    pub message: String,
    /// The lines after the first, without their performance data.
    pub long_output: String,
    /// Every performance datum that could be read.
    pub perfdata: Vec<PerfDatum>,
    /// What was odd about the run or its output, for people.
    pub notes: Vec<String>,
}

/// Reads a plugin's result. `truncated` says the caller kept only part of stdout.
pub fn parse(exit: &Exit, stdout: &[u8], truncated: bool) -> Outcome {
    let mut notes = Vec::new();
    let status = match exit {
        Exit::Code(code) => Status::from_code(*code).unwrap_or_else(|| {
            let why = if *code > 128 && *code < 128 + 65 {
                format!(
                    "exit code {code}: killed by signal {} ({})?",
                    code - 128,
                    signal_name(code - 128)
                )
            } else {
                format!("exit code {code}, which is not a Nagios status (0 to 3)")
            };
            notes.push(why);
            Status::Unknown
        }),
        Exit::Signal(signal) => {
            notes.push(format!("killed by signal {signal} ({})", signal_name(*signal)));
            Status::Unknown
        }
        Exit::TimedOut { after_ms } => {
            notes.push(format!(
                "timed out after {}; its process group was killed",
                seconds(*after_ms)
            ));
            Status::Unknown
        }
        Exit::SpawnFailed(reason) => {
            notes.push(format!("could not be started: {reason}"));
            Status::Unknown
        }
    };
    let text = match std::str::from_utf8(stdout) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => {
            notes.push("output is not UTF-8; invalid bytes were replaced".to_owned());
            String::from_utf8_lossy(stdout)
        }
    };
    if truncated {
        notes.push("output truncated".to_owned());
    }
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default();
    let (message, first_perf) = match first.split_once('|') {
        Some((message, perf)) => (message.trim(), Some(perf)),
        None => (first.trim(), None),
    };
    let mut perfdata = Vec::new();
    if let Some(perf) = first_perf {
        parse_perfdata(perf, &mut perfdata, &mut notes);
    }
    let mut long = Vec::new();
    for line in lines {
        match line.split_once('|') {
            Some((text, perf)) => {
                if !text.trim().is_empty() {
                    long.push(text.trim_end());
                }
                parse_perfdata(perf, &mut perfdata, &mut notes);
            }
            None => long.push(line.trim_end()),
        }
    }
    let mut message = if message.is_empty() {
        "(no output)".to_owned()
    } else {
        message.to_owned()
    };
    if message.len() > MAX_MESSAGE_BYTES {
        let mut end = MAX_MESSAGE_BYTES;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        notes.push(format!("message cut to {MAX_MESSAGE_BYTES} bytes"));
    }
    Outcome {
        status,
        message,
        long_output: long.join("\n").trim().to_owned(),
        perfdata,
        notes,
    }
}

fn seconds(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        6 => "SIGABRT",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => "a signal",
    }
}

/// Splits performance data into items: spaces separate them, except inside single quotes.
fn items(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                current.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Reads performance data alone (what follows `|`): the data that could be read, and a note for
/// each item that could not.
pub fn perfdata(text: &str) -> (Vec<PerfDatum>, Vec<String>) {
    let mut out = Vec::new();
    let mut notes = Vec::new();
    parse_perfdata(text, &mut out, &mut notes);
    (out, notes)
}

fn parse_perfdata(text: &str, out: &mut Vec<PerfDatum>, notes: &mut Vec<String>) {
    for item in items(text) {
        match parse_datum(&item) {
            Some(datum) => out.push(datum),
            None => notes.push(format!("malformed performance data skipped: {item:?}")),
        }
    }
}

fn parse_datum(item: &str) -> Option<PerfDatum> {
    let (label, rest) = item.rsplit_once('=')?;
    let label = label.trim();
    let label = label
        .strip_prefix('\'')
        .and_then(|l| l.strip_suffix('\''))
        .unwrap_or(label)
        .replace("''", "'");
    if label.is_empty() {
        return None;
    }
    let mut fields = rest.split(';');
    let value_text = fields.next()?;
    let split = value_text
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')))
        .unwrap_or(value_text.len());
    let (number, unit) = value_text.split_at(split);
    let value: f64 = number.parse().ok()?;
    if !value.is_finite() {
        return None;
    }
    let unit = (!unit.is_empty()).then(|| unit.to_owned());
    if unit
        .as_deref()
        .is_some_and(|u| !u.chars().all(|c| c.is_ascii_alphabetic() || c == '%'))
    {
        return None;
    }
    let text_field = |f: Option<&str>| f.map(str::trim).filter(|f| !f.is_empty()).map(str::to_owned);
    let number_field = |f: Option<&str>| -> Result<Option<f64>, ()> {
        match f.map(str::trim).filter(|f| !f.is_empty()) {
            None => Ok(None),
            Some(f) => f.parse::<f64>().map(Some).map_err(|_| ()),
        }
    };
    let warn = text_field(fields.next());
    let crit = text_field(fields.next());
    let min = number_field(fields.next()).ok()?;
    let max = number_field(fields.next()).ok()?;
    Some(PerfDatum {
        label,
        value,
        unit,
        warn,
        crit,
        min,
        max,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_statuses_and_anything_else_is_unknown_with_the_reason() {
        for (code, status) in [
            (0, Status::Ok),
            (1, Status::Warning),
            (2, Status::Critical),
            (3, Status::Unknown),
        ] {
            let out = parse(&Exit::Code(code), b"X - fine\n", false);
            assert_eq!((out.status, out.message.as_str()), (status, "X - fine"));
            assert!(out.notes.is_empty(), "{:?}", out.notes);
        }
        let killed = parse(&Exit::Code(137), b"", false);
        assert_eq!(killed.status, Status::Unknown);
        assert_eq!(killed.notes, ["exit code 137: killed by signal 9 (SIGKILL)?"]);
        let odd = parse(&Exit::Code(7), b"what\n", false);
        assert_eq!(odd.status, Status::Unknown);
        assert!(odd.notes[0].contains("not a Nagios status"), "{:?}", odd.notes);
        let signal = parse(&Exit::Signal(15), b"", false);
        assert_eq!(signal.notes, ["killed by signal 15 (SIGTERM)"]);
        let slow = parse(&Exit::TimedOut { after_ms: 10_000 }, b"", false);
        assert_eq!(slow.status, Status::Unknown);
        assert_eq!(slow.notes, ["timed out after 10s; its process group was killed"]);
        let missing = parse(&Exit::SpawnFailed("no such file".into()), b"", false);
        assert_eq!(missing.notes, ["could not be started: no such file"]);
        assert_eq!(missing.message, "(no output)");
    }

    #[test]
    fn perfdata_with_quotes_units_and_empty_fields() {
        let out = parse(
            &Exit::Code(1),
            b"DISK WARNING - free space: / 3326 MB (56%); | '/ root'=2643MB;5948;5958;0;5968 time=0.01s;;;0 load1=0.5\n",
            false,
        );
        assert_eq!(out.message, "DISK WARNING - free space: / 3326 MB (56%);");
        assert_eq!(out.perfdata.len(), 3, "{:?}", out.notes);
        let root = &out.perfdata[0];
        assert_eq!(root.label, "/ root");
        assert_eq!((root.value, root.unit.as_deref()), (2643.0, Some("MB")));
        assert_eq!(
            (root.warn.as_deref(), root.crit.as_deref()),
            (Some("5948"), Some("5958"))
        );
        assert_eq!((root.min, root.max), (Some(0.0), Some(5968.0)));
        let time = &out.perfdata[1];
        assert_eq!(
            (time.value, time.unit.as_deref(), time.warn.as_deref(), time.min),
            (0.01, Some("s"), None, Some(0.0))
        );
        assert_eq!(
            (out.perfdata[2].label.as_str(), out.perfdata[2].unit.as_deref()),
            ("load1", None)
        );
    }

    #[test]
    fn malformed_perfdata_is_skipped_and_named() {
        let out = parse(&Exit::Code(0), b"OK | good=1 bad novalue= x=abc y=1;2;3;zz\n", false);
        assert_eq!(
            out.perfdata.iter().map(|p| p.label.as_str()).collect::<Vec<_>>(),
            ["good"]
        );
        assert_eq!(out.notes.len(), 4, "{:?}", out.notes);
        assert!(out.notes[0].contains("\"bad\""), "{:?}", out.notes);
    }

    #[test]
    fn multi_line_output_and_perfdata() {
        let out = parse(
            &Exit::Code(2),
            b"CRITICAL - 2 of 3 down | up=1;;;0;3\nweb-1 down\nweb-2 down | latency=0.3s\nweb-3 up\n",
            false,
        );
        assert_eq!(out.message, "CRITICAL - 2 of 3 down");
        assert_eq!(out.long_output, "web-1 down\nweb-2 down\nweb-3 up");
        assert_eq!(
            out.perfdata.iter().map(|p| p.label.as_str()).collect::<Vec<_>>(),
            ["up", "latency"]
        );
    }

    #[test]
    fn non_utf8_and_truncated_and_huge_messages_are_noted() {
        let out = parse(&Exit::Code(0), b"OK \xff\xfe fine\n", true);
        assert_eq!(out.message, "OK \u{fffd}\u{fffd} fine");
        assert_eq!(
            out.notes,
            ["output is not UTF-8; invalid bytes were replaced", "output truncated"]
        );
        let huge = "é".repeat(2000);
        let out = parse(&Exit::Code(0), huge.as_bytes(), false);
        assert!(out.message.len() <= MAX_MESSAGE_BYTES);
        assert!(out.message.chars().all(|c| c == 'é'));
        assert_eq!(out.notes, [format!("message cut to {MAX_MESSAGE_BYTES} bytes")]);
    }

    #[test]
    fn perfdata_alone() {
        let (data, notes) = perfdata("time=0.5s size=10B bad");
        assert_eq!(
            data.iter().map(|d| (d.label.as_str(), d.value)).collect::<Vec<_>>(),
            [("time", 0.5), ("size", 10.0)]
        );
        assert_eq!(notes.len(), 1);
    }

    #[test]
    fn empty_output_says_so() {
        assert_eq!(parse(&Exit::Code(0), b"", false).message, "(no output)");
        assert_eq!(parse(&Exit::Code(0), b"\n\n", false).message, "(no output)");
    }
}
