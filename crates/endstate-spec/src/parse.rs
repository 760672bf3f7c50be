//! Parsing: splits a file into YAML documents, reads each one's header, dispatches on `kind` and
//! deserializes the typed document, turning every serde-saphyr error into a one-line [`Diagnostic`].
//!
//! Each document is parsed on its own, so an error in one (even a syntax error) does not hide the
//! problems of the others. Document boundaries are `---` lines at column 0, which is exactly where YAML
//! itself ends a document (a document marker ends even a block scalar).

use serde::de::DeserializeOwned;
use serde_saphyr::{Error as YamlError, Location, Spanned};

use crate::diagnostic::{Diagnostic, Pos};
use crate::doc::{ActionDoc, CheckDoc, ComponentDoc, Header, HostDoc, PolicyDoc, SystemDoc};
use crate::source::SourceFile;

/// The API version every document must declare.
pub(crate) const API_VERSION: &str = "endstate/v1";

/// The kinds of documents, in the order they are documented.
pub(crate) const KINDS: [&str; 6] = ["System", "Component", "Check", "Action", "Policy", "Host"];

/// A typed document, before validation.
#[derive(Debug)]
pub(crate) enum RawDoc {
    System(Box<SystemDoc>),
    Component(Box<ComponentDoc>),
    Check(Box<CheckDoc>),
    Action(Box<ActionDoc>),
    Policy(Box<PolicyDoc>),
    Host(Box<HostDoc>),
}

/// A parsed document and where it came from.
#[derive(Debug)]
pub(crate) struct Parsed {
    /// Index into the files given to `load`.
    pub(crate) file: usize,
    /// Lines before the document in its file: locations inside `doc` are relative to the document.
    pub(crate) line_offset: u64,
    /// Where the document starts (its first line with content), for problems of the whole document.
    pub(crate) start: Pos,
    pub(crate) doc: RawDoc,
}

/// One document's text and its first line in the file (0-based).
struct Piece<'a> {
    text: &'a str,
    line_offset: u64,
}

/// Parses every document of `file`, appending the typed documents to `out` and problems to `diagnostics`.
pub(crate) fn parse_file(file_idx: usize, file: &SourceFile, out: &mut Vec<Parsed>, diagnostics: &mut Vec<Diagnostic>) {
    for piece in split_documents(&file.text) {
        if let Some(parsed) = parse_document(file_idx, &file.path, &piece, diagnostics) {
            out.push(parsed);
        }
    }
}

/// Splits a file's text at `---` lines (keeping directives such as `%YAML` with the document they precede).
fn split_documents(text: &str) -> Vec<Piece<'_>> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut start_line = 0u64;
    // The first line of a run of directive lines (and blank or comment lines between them) just seen.
    let mut directives: Option<(usize, u64)> = None;
    let mut offset = 0;
    for (line_idx, line) in text.split_inclusive('\n').enumerate() {
        let line_idx = line_idx as u64;
        let is_marker = line
            .strip_prefix("---")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']));
        if is_marker {
            let (split, split_line) = directives.unwrap_or((offset, line_idx));
            if split > start {
                pieces.push(Piece {
                    text: text.get(start..split).unwrap_or_default(),
                    line_offset: start_line,
                });
            }
            start = split;
            start_line = split_line;
            directives = None;
        } else if line.starts_with('%') {
            directives.get_or_insert((offset, line_idx));
        } else if !is_blank_or_comment(line) {
            directives = None;
        }
        offset += line.len();
    }
    if start < text.len() {
        pieces.push(Piece {
            text: text.get(start..).unwrap_or_default(),
            line_offset: start_line,
        });
    }
    pieces
}

fn is_blank_or_comment(line: &str) -> bool {
    let trimmed = line.trim_start();
    trimmed.is_empty() || trimmed.starts_with('#')
}

/// The options every document is parsed with: YAML 1.2 booleans only, no snippets in messages, and
/// the default budget (nesting depth 64, 250,000 nodes), so hostile input ends in an error, not a crash.
fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        strict_booleans: true,
        with_snippet: false,
        reject_unsupported_tags: true,
    }
}

fn parse_document(file_idx: usize, path: &str, piece: &Piece<'_>, diagnostics: &mut Vec<Diagnostic>) -> Option<Parsed> {
    let start = content_start(piece)?;
    // Fast path: a block-style document with `apiVersion: endstate/v1` and a known `kind` at column 0
    // goes straight to its typed parse, which checks both fields again (so a misread cannot pass).
    let kind = match quick_header(piece.text) {
        Some(kind) => kind.to_owned(),
        None => slow_header(path, piece, start, diagnostics)?,
    };
    let n_before = diagnostics.len();
    let doc = match kind.as_str() {
        "System" => typed(path, piece, diagnostics).map(|d| RawDoc::System(Box::new(d))),
        "Component" => typed(path, piece, diagnostics).map(|d| RawDoc::Component(Box::new(d))),
        "Check" => typed(path, piece, diagnostics).map(|d| RawDoc::Check(Box::new(d))),
        "Action" => typed(path, piece, diagnostics).map(|d| RawDoc::Action(Box::new(d))),
        "Host" => typed(path, piece, diagnostics).map(|d| RawDoc::Host(Box::new(d))),
        _ => typed(path, piece, diagnostics).map(|d| RawDoc::Policy(Box::new(d))),
    };
    let Some(doc) = doc else {
        // The typed parse stops at its first problem; report every other unknown top-level field
        // of the document too, so one run shows them all.
        unknown_top_level_fields(&kind, path, piece, n_before, diagnostics);
        return None;
    };
    Some(Parsed {
        file: file_idx,
        line_offset: piece.line_offset,
        start,
        doc,
    })
}

/// Adds an `unknown-field` diagnostic for every top-level key of the document that its kind does
/// not have, except those already reported since `n_before`.
fn unknown_top_level_fields(
    kind: &str,
    path: &str,
    piece: &Piece<'_>,
    n_before: usize,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let schema = match kind {
        "System" => schemars::schema_for!(SystemDoc),
        "Component" => schemars::schema_for!(ComponentDoc),
        "Check" => schemars::schema_for!(CheckDoc),
        "Action" => schemars::schema_for!(ActionDoc),
        "Host" => schemars::schema_for!(HostDoc),
        _ => schemars::schema_for!(PolicyDoc),
    };
    let schema = schema.to_value();
    let Some(properties) = schema.get("properties").and_then(|p| p.as_object()) else {
        return;
    };
    let known: Vec<&str> = properties.keys().map(String::as_str).collect();
    let Ok(keys) = serde_saphyr::from_str_with_options::<
        std::collections::HashMap<Spanned<String>, serde::de::IgnoredAny>,
    >(piece.text, options()) else {
        return;
    };
    let mut unknown: Vec<(Pos, &str)> = keys
        .keys()
        .filter(|key| !known.contains(&key.value.as_str()))
        .map(|key| {
            (
                spanned_pos(key, piece.line_offset, Pos::new(piece.line_offset + 1, 1)),
                key.value.as_str(),
            )
        })
        .collect();
    unknown.sort();
    // Say what is expected the way the typed parse said it, when it reported an unknown field.
    let expected = diagnostics[n_before..]
        .iter()
        .find(|d| d.code == "unknown-field")
        .and_then(|d| d.expected.clone())
        .unwrap_or_else(|| format!("one of {}", quoted_list(known.iter().copied())));
    for (pos, key) in unknown {
        let already = diagnostics[n_before..]
            .iter()
            .any(|d| d.code == "unknown-field" && d.line == pos.line && d.column == pos.column);
        if !already {
            diagnostics.push(
                Diagnostic::error(path, pos, "unknown-field", format!("found field `{key}`"))
                    .expected(expected.clone()),
            );
        }
    }
}

/// Reads `apiVersion` and `kind` leniently and reports what is wrong with them; returns the kind.
fn slow_header(path: &str, piece: &Piece<'_>, start: Pos, diagnostics: &mut Vec<Diagnostic>) -> Option<String> {
    let header = match serde_saphyr::from_str_with_options::<Option<Header>>(piece.text, options()) {
        Ok(header) => header?,
        Err(error) => {
            let mut diagnostic = convert_error(&error, path, piece);
            if matches!(
                error.without_snippet(),
                YamlError::Unexpected { .. } | YamlError::SerdeInvalidType { .. }
            ) && diagnostic.line == start.line
            {
                diagnostic.code = "not-a-mapping".to_owned();
                diagnostic.message = "found a document that is not a mapping".to_owned();
                diagnostic.expected =
                    Some("a mapping with `apiVersion`, `kind`, `name` and the kind's fields".to_owned());
            }
            diagnostics.push(diagnostic);
            return None;
        }
    };
    let mut header_ok = true;
    match &header.api_version {
        None => {
            header_ok = false;
            diagnostics.push(
                Diagnostic::error(path, start, "missing-field", "found no `apiVersion`")
                    .expected(format!("`apiVersion: {API_VERSION}`")),
            );
        }
        Some(version) if version.value.0 != API_VERSION => {
            header_ok = false;
            diagnostics.push(
                Diagnostic::error(
                    path,
                    spanned_pos(version, piece.line_offset, start),
                    "unsupported-api-version",
                    format!("found apiVersion `{}`", version.value.0),
                )
                .expected(format!("`{API_VERSION}`")),
            );
        }
        Some(_) => {}
    }
    let kinds = format!("one of {}", quoted_list(KINDS));
    let kind = match &header.kind {
        None => {
            diagnostics.push(Diagnostic::error(path, start, "missing-field", "found no `kind`").expected(kinds));
            return None;
        }
        Some(kind) => kind,
    };
    if !KINDS.contains(&kind.value.0.as_str()) {
        diagnostics.push(
            Diagnostic::error(
                path,
                spanned_pos(kind, piece.line_offset, start),
                "unknown-kind",
                format!("found kind `{}`", kind.value.0),
            )
            .expected(kinds),
        );
        return None;
    }
    if !header_ok {
        return None;
    }
    Some(kind.value.0.clone())
}

/// `kind` of a block-style document whose `apiVersion: endstate/v1` and known `kind` are plain at column 0.
fn quick_header(text: &str) -> Option<&'static str> {
    let mut api_version_ok = false;
    let mut kind = None;
    for line in text.lines() {
        let value = |key: &str| {
            let rest = line.strip_prefix(key)?.strip_prefix(':')?;
            let rest = rest.split(" #").next().unwrap_or(rest).trim();
            Some(rest)
        };
        if let Some(version) = value("apiVersion") {
            api_version_ok = version == API_VERSION;
        } else if let Some(found) = value("kind") {
            kind = KINDS.iter().find(|known| **known == found).copied();
        }
    }
    if api_version_ok { kind } else { None }
}

fn typed<T: DeserializeOwned>(path: &str, piece: &Piece<'_>, diagnostics: &mut Vec<Diagnostic>) -> Option<T> {
    match serde_saphyr::from_str_with_options::<T>(piece.text, options()) {
        Ok(doc) => Some(doc),
        Err(error) => {
            diagnostics.push(convert_error(&error, path, piece));
            None
        }
    }
}

/// The first line of a document with content (not blank, a comment, a directive or a bare `---`), or
/// `None` for a document with no content at all.
fn content_start(piece: &Piece<'_>) -> Option<Pos> {
    piece.text.lines().enumerate().find_map(|(idx, line)| {
        let content = line.strip_prefix("---").unwrap_or(line);
        let is_empty = is_blank_or_comment(content) || line.starts_with('%');
        (!is_empty).then(|| Pos::new(piece.line_offset + idx as u64 + 1, 1))
    })
}

/// The position of a spanned value, or `fallback` when it has none (a default).
pub(crate) fn spanned_pos<T>(spanned: &Spanned<T>, line_offset: u64, fallback: Pos) -> Pos {
    location_pos(&spanned.referenced, line_offset).unwrap_or(fallback)
}

fn location_pos(location: &Location, line_offset: u64) -> Option<Pos> {
    (location.line() > 0).then(|| Pos::new(location.line() + line_offset, location.column().max(1)))
}

/// `a`, `b`, `c` as "`a`, `b`, `c`".
pub(crate) fn quoted_list<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    items
        .into_iter()
        .map(|item| format!("`{item}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Turns a serde-saphyr error into a one-line diagnostic: its own position suffix and snippet removed,
/// what was found taken from the source where the error does not say.
fn convert_error(error: &YamlError, path: &str, piece: &Piece<'_>) -> Diagnostic {
    let error = innermost(error);
    let location = error.location();
    let pos = location
        .as_ref()
        .and_then(|location| location_pos(location, piece.line_offset))
        .unwrap_or(Pos::new(piece.line_offset + 1, 1));
    let found = location.as_ref().and_then(|location| found_text(piece.text, location));
    let found_or = |fallback: &str| {
        found
            .as_ref()
            .map_or_else(|| fallback.to_owned(), |text| format!("`{text}`"))
    };
    let (code, message, expected): (&str, String, Option<String>) = match error {
        YamlError::SerdeUnknownField { field, expected, .. } => (
            "unknown-field",
            format!("found field `{field}`"),
            Some(if expected.is_empty() {
                "no fields here".to_owned()
            } else {
                format!("one of {}", quoted_list(expected.iter().copied()))
            }),
        ),
        YamlError::SerdeMissingField { field, .. } => (
            "missing-field",
            format!("found no `{field}`"),
            Some(format!("field `{field}`")),
        ),
        YamlError::SerdeUnknownVariant { variant, expected, .. } => (
            "unknown-variant",
            format!("found `{variant}`"),
            Some(format!("one of {}", quoted_list(expected.iter().copied()))),
        ),
        YamlError::SerdeInvalidType {
            unexpected, expected, ..
        } => ("wrong-type", format!("found {unexpected}"), Some(expected.clone())),
        YamlError::SerdeInvalidValue {
            unexpected, expected, ..
        } => ("invalid-value", format!("found {unexpected}"), Some(expected.clone())),
        YamlError::SerdeInvalidLength { len, expected, .. } => {
            ("invalid-value", format!("found {len} elements"), Some(expected.clone()))
        }
        YamlError::InvalidBooleanStrict { .. } => (
            "invalid-boolean",
            format!(
                "found {}, which is not a boolean in spec v1",
                found_or("a non-standard boolean")
            ),
            Some("`true` or `false` (`yes`, `no`, `on` and `off` are not booleans)".to_owned()),
        ),
        YamlError::InvalidScalar { ty, .. } => (
            "wrong-type",
            format!("found {}", found_or("a value")),
            Some(describe_type(ty)),
        ),
        YamlError::Unexpected { expected, .. } => (
            "wrong-type",
            format!(
                "found {}",
                found
                    .as_deref()
                    .map_or_else(|| "something else".to_owned(), describe_found)
            ),
            Some(describe_expected(expected)),
        ),
        YamlError::NullIntoString { .. } => (
            "wrong-type",
            "found an empty value".to_owned(),
            Some("a string".to_owned()),
        ),
        YamlError::DuplicateMappingKey { key, .. } => (
            "duplicate-key",
            match key {
                Some(key) => format!("found key `{key}` a second time in the same mapping"),
                None => "found a key a second time in the same mapping".to_owned(),
            },
            Some("each key once".to_owned()),
        ),
        YamlError::ExpectedMappingEndAfterEnumVariantValue { .. } => (
            "invalid-value",
            format!(
                "found {} after the first key of a one-key mapping",
                found_or("another key")
            ),
            Some("exactly one key".to_owned()),
        ),
        YamlError::Budget {
            breach: serde_saphyr::budget::BudgetBreach::Depth { .. },
            ..
        } => (
            "too-deep",
            "found nesting more than 64 levels deep".to_owned(),
            Some("at most 64 levels of nesting".to_owned()),
        ),
        YamlError::Budget { .. } => (
            "too-complex",
            format!(
                "found a document over the parser's limits ({})",
                strip_position(&error.to_string())
            ),
            Some("a smaller document, nested at most 64 levels deep".to_owned()),
        ),
        YamlError::Eof { .. } => (
            "yaml-syntax",
            "found the end of the document too early".to_owned(),
            None,
        ),
        YamlError::Message { msg, .. } => {
            let msg = strip_position(msg);
            match msg.split_once("; expected ") {
                Some((message, expected)) => ("invalid-value", message.to_owned(), Some(expected.to_owned())),
                None => ("invalid-value", msg, None),
            }
        }
        other => {
            let text = strip_position(&other.to_string());
            if text.contains("recursion limit") || text.contains("nesting") {
                (
                    "too-deep",
                    "found nesting more than 64 levels deep".to_owned(),
                    Some("at most 64 levels of nesting".to_owned()),
                )
            } else {
                ("yaml-syntax", format!("found invalid YAML: {text}"), None)
            }
        }
    };
    let mut diagnostic = Diagnostic::error(path, pos, code, lowercase_first(&message));
    diagnostic.expected = expected;
    diagnostic
}

/// Errors raised through an alias carry the original error; report that one.
fn innermost(error: &YamlError) -> &YamlError {
    let mut error = error.without_snippet();
    while let YamlError::AliasError { error: inner, .. } = error {
        error = inner.without_snippet();
    }
    error
}

/// The source text at a location, up to the end of its line (at most 40 characters).
fn found_text(text: &str, location: &Location) -> Option<String> {
    let offset = usize::try_from(location.span().byte_offset()?).ok()?;
    let rest = text.get(offset..)?;
    let len = location
        .span()
        .byte_len()
        .and_then(|len| usize::try_from(len).ok())
        .filter(|len| *len > 0);
    let rest = len.and_then(|len| rest.get(..len)).unwrap_or(rest);
    let line = rest.lines().next()?.trim_end();
    if line.is_empty() {
        return None;
    }
    let mut found: String = line.chars().take(40).collect();
    if line.chars().nth(40).is_some() {
        found.push_str("...");
    }
    Some(found)
}

/// Describes source text for "found ...": collections by their shape, scalars quoted.
fn describe_found(text: &str) -> String {
    if text.starts_with('[') || text.starts_with("- ") || text == "-" {
        "a list".to_owned()
    } else if text.starts_with('{') || text.contains(": ") || text.ends_with(':') {
        "a mapping".to_owned()
    } else {
        format!("`{text}`")
    }
}

/// serde-saphyr's "expected ..." words in spec terms.
fn describe_expected(expected: &str) -> String {
    match expected.trim_start_matches("expected ") {
        "sequence start" => "a list".to_owned(),
        "mapping start" => "a mapping".to_owned(),
        "string scalar" => "a string".to_owned(),
        other => other.to_owned(),
    }
}

fn describe_type(ty: &str) -> String {
    match ty {
        "u8" | "u16" | "u32" | "u64" | "usize" => {
            let max = match ty {
                "u8" => u64::from(u8::MAX),
                "u16" => u64::from(u16::MAX),
                "u32" => u64::from(u32::MAX),
                _ => u64::MAX,
            };
            format!("a whole number from 0 to {max}")
        }
        "i8" | "i16" | "i32" | "i64" | "isize" => "an integer".to_owned(),
        "f32" | "f64" => "a number".to_owned(),
        "bool" => "`true` or `false`".to_owned(),
        other => format!("a value of type {other}"),
    }
}

/// Removes serde-saphyr's " at line N, column M" suffix (the diagnostic carries the position itself).
fn strip_position(text: &str) -> String {
    let first_line = text.lines().next().unwrap_or_default();
    match first_line.rfind(" at line ") {
        Some(idx) => first_line.get(..idx).unwrap_or(first_line).to_owned(),
        None => first_line.to_owned(),
    }
}

fn lowercase_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) if first.is_uppercase() && !chars.clone().next().is_some_and(char::is_uppercase) => {
            first.to_lowercase().chain(chars).collect()
        }
        _ => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_document_markers() {
        let text = "a: 1\n---\nb: 2\n--- # c\nc: |\n  x\n---x: 1\n%YAML 1.2\n---\nd: 4\n";
        let pieces: Vec<(u64, &str)> = split_documents(text).iter().map(|p| (p.line_offset, p.text)).collect();
        assert_eq!(
            pieces,
            vec![
                (0, "a: 1\n"),
                (1, "---\nb: 2\n"),
                (3, "--- # c\nc: |\n  x\n---x: 1\n"),
                (7, "%YAML 1.2\n---\nd: 4\n"),
            ]
        );
    }
}
