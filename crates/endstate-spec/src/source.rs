//! Source files: the bytes of one spec file, checked to be reasonable UTF-8 text before parsing.

use crate::diagnostic::{Diagnostic, Pos};

/// The largest spec file accepted, in bytes (4 MiB). Larger files are almost certainly a mistake
/// (a generated dump or a binary), and refusing them bounds the memory a spec can take.
pub const MAX_FILE_BYTES: usize = 4 * 1024 * 1024;

/// One spec file: its path (as it should appear in diagnostics) and its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFile {
    /// The path shown in diagnostics, relative to where the user pointed us (e.g. `examples/shop.yaml`).
    pub path: String,
    /// The file's text, UTF-8, without a byte order mark.
    pub text: String,
}

impl SourceFile {
    /// Checks raw file contents and turns them into a source file.
    ///
    /// A UTF-8 byte order mark is removed.
    ///
    /// # Errors
    /// Returns one diagnostic when the file is larger than [`MAX_FILE_BYTES`] (`file-too-large`),
    /// contains a NUL byte (`binary-file`), is not valid UTF-8 (`not-utf8`, at the first bad byte)
    /// or contains a control character YAML does not allow (`control-character`).
    pub fn from_bytes(path: impl Into<String>, bytes: &[u8]) -> Result<SourceFile, Diagnostic> {
        let path = path.into();
        if bytes.len() > MAX_FILE_BYTES {
            return Err(too_large(&path, bytes.len()));
        }
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        if bytes.starts_with(b"\xFF\xFE") || bytes.starts_with(b"\xFE\xFF") {
            return Err(
                Diagnostic::error(&path, Pos::new(1, 1), "not-utf8", "found a UTF-16 byte order mark")
                    .expected("UTF-8 text"),
            );
        }
        if let Some(offset) = bytes.iter().position(|&b| b == 0) {
            return Err(Diagnostic::error(
                &path,
                pos_of(bytes, offset),
                "binary-file",
                "found a NUL byte; this looks like a binary file",
            )
            .expected("UTF-8 YAML text"));
        }
        let text = match std::str::from_utf8(bytes) {
            Ok(text) => text,
            Err(error) => {
                let offset = error.valid_up_to();
                let byte = bytes.get(offset).copied().unwrap_or(0);
                return Err(Diagnostic::error(
                    &path,
                    pos_of(bytes, offset),
                    "not-utf8",
                    format!("found byte 0x{byte:02x} that is not valid UTF-8"),
                )
                .expected("UTF-8 text"));
            }
        };
        if let Some((offset, c)) = text.char_indices().find(|&(_, c)| is_forbidden_control(c)) {
            return Err(Diagnostic::error(
                &path,
                pos_of(bytes, offset),
                "control-character",
                format!("found control character U+{:04X}", u32::from(c)),
            )
            .expected("printable text (tabs and line breaks are fine)"));
        }
        Ok(SourceFile {
            path,
            text: text.to_owned(),
        })
    }
}

/// The diagnostic for a file over [`MAX_FILE_BYTES`].
pub(crate) fn too_large(path: &str, len: usize) -> Diagnostic {
    Diagnostic::error(
        path,
        Pos::FILE,
        "file-too-large",
        format!("found a file of {len} bytes"),
    )
    .expected(format!("at most {MAX_FILE_BYTES} bytes (4 MiB) per spec file"))
}

/// Control characters YAML does not allow in a stream (C0 except tab, LF and CR; DEL; C1 except NEL).
fn is_forbidden_control(c: char) -> bool {
    match c {
        '\t' | '\n' | '\r' | '\u{85}' => false,
        c => c.is_control(),
    }
}

/// The 1-based line and column (in characters) of a byte offset; the bytes before it are UTF-8 or
/// are counted one column per byte where they are not.
fn pos_of(bytes: &[u8], offset: usize) -> Pos {
    let before = bytes.get(..offset).unwrap_or(bytes);
    let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let line = before.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
    let line_bytes = before.get(line_start..).unwrap_or_default();
    let column = String::from_utf8_lossy(line_bytes).chars().count() as u64 + 1;
    Pos::new(line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(bytes: &[u8]) -> String {
        match SourceFile::from_bytes("f.yaml", bytes) {
            Ok(_) => "ok".to_owned(),
            Err(diagnostic) => diagnostic.to_string(),
        }
    }

    #[test]
    fn from_bytes_checks() {
        assert_eq!(err(b"a: 1\n"), "ok");
        assert_eq!(
            SourceFile::from_bytes("f", b"\xEF\xBB\xBFa: 1").map(|s| s.text),
            Ok("a: 1".to_owned())
        );
        assert_eq!(
            err(b"a: 1\nb: \xc3\xa9\xff\n"),
            "f.yaml:2:5: error[not-utf8]: found byte 0xff that is not valid UTF-8; expected UTF-8 text"
        );
        assert_eq!(
            err(b"a: 1\n\x7fELF\x00\x01"),
            "f.yaml:2:5: error[binary-file]: found a NUL byte; this looks like a binary file; expected UTF-8 YAML text"
        );
        assert_eq!(
            err(b"a: \x1b[1m"),
            "f.yaml:1:4: error[control-character]: found control character U+001B; \
             expected printable text (tabs and line breaks are fine)"
        );
        assert_eq!(
            err(b"\xff\xfea\x00"),
            "f.yaml:1:1: error[not-utf8]: found a UTF-16 byte order mark; expected UTF-8 text"
        );
    }
}
