//! Diagnostics: what is wrong (or suspicious) in a spec, and exactly where.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How bad a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The spec cannot be accepted.
    Error,
    /// The spec is accepted, but something looks unintended.
    Warning,
}

/// One problem found in a spec, with its location.
///
/// `line` and `column` are 1-based. A `line` of 0 means the diagnostic is about the whole file
/// (too big, not UTF-8 text, unreadable) or the whole directory; `Display` then leaves the position out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The file, as given in [`crate::SourceFile::path`].
    pub file: String,
    /// 1-based line, or 0 for the whole file.
    pub line: u64,
    /// 1-based column (in characters), or 0 for the whole file.
    pub column: u64,
    /// A stable kebab-case identifier of the kind of problem, e.g. `unknown-field`.
    pub code: String,
    /// What was found, lowercase, without a trailing period.
    pub message: String,
    /// What was expected instead, when that can be said.
    pub expected: Option<String>,
}

/// A position in a file, carried through validation so that every diagnostic can point at its cause.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Pos {
    pub(crate) line: u64,
    pub(crate) column: u64,
}

// === impl Diagnostic ===

impl Diagnostic {
    pub(crate) fn new(severity: Severity, file: &str, pos: Pos, code: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity,
            file: file.to_owned(),
            line: pos.line,
            column: pos.column,
            code: code.to_owned(),
            message: one_line(message.into()),
            expected: None,
        }
    }

    pub(crate) fn error(file: &str, pos: Pos, code: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(Severity::Error, file, pos, code, message)
    }

    pub(crate) fn warning(file: &str, pos: Pos, code: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(Severity::Warning, file, pos, code, message)
    }

    /// Adds what was expected.
    pub(crate) fn expected(mut self, expected: impl Into<String>) -> Diagnostic {
        self.expected = Some(one_line(expected.into()));
        self
    }

    /// Whether this is an error (rather than a warning).
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// The order diagnostics are reported in: by file, line, column, then the rest for determinism.
    pub(crate) fn sort_key(&self) -> impl Ord + '_ {
        (
            &self.file,
            self.line,
            self.column,
            self.severity,
            &self.code,
            &self.message,
        )
    }
}

/// The longest message kept, in characters; a found value can be arbitrarily long.
const MAX_MESSAGE_CHARS: usize = 400;

/// Makes a message one printable line: a diagnostic quotes what it found, and what it found may
/// hold newlines or control characters (found by fuzzing). Long messages are cut.
fn one_line(text: String) -> String {
    if text.chars().all(|c| !c.is_control()) && text.chars().count() <= MAX_MESSAGE_CHARS {
        return text;
    }
    let mut out = String::with_capacity(text.len().min(MAX_MESSAGE_CHARS + 8));
    for (idx, c) in text.chars().enumerate() {
        if idx == MAX_MESSAGE_CHARS {
            out.push('…');
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    out
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, ": {severity}[{}]: {}", self.code, self.message)?;
        if let Some(expected) = &self.expected {
            write!(f, "; expected {expected}")?;
        }
        Ok(())
    }
}

impl Pos {
    /// The position that stands for "the whole file".
    pub(crate) const FILE: Pos = Pos { line: 0, column: 0 };

    pub(crate) fn new(line: u64, column: u64) -> Pos {
        Pos { line, column }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}
