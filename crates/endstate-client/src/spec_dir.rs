//! Reads a spec directory from disk: every `*.yaml` / `*.yml` file below it, in a stable order,
//! checked by [`SourceFile::from_bytes`]. This is the only place spec files are read.

use std::path::{Path, PathBuf};

use endstate_spec::{Diagnostic, Severity, SourceFile};

/// Reads every `*.yaml` and `*.yml` file below `dir`, recursively, sorted by path.
///
/// Paths in the result (and in diagnostics) are `dir` joined with the path inside it, written with
/// `/` separators: `examples/shop.yaml` when called with `examples`. Hidden files and directories
/// (starting with `.`) are skipped, and symbolic links are not followed.
///
/// # Errors
/// Returns every problem found, not only the first: a file too big, binary, not UTF-8 or unreadable,
/// an unreadable directory, a `dir` that does not exist or is not a directory, or a directory with no
/// YAML file at all.
pub fn read_spec_dir(dir: &Path) -> Result<Vec<SourceFile>, Vec<Diagnostic>> {
    let (files, problems) = read_spec_dir_all(dir);
    if problems.is_empty() { Ok(files) } else { Err(problems) }
}

/// Like [`read_spec_dir`], but returns the files that could be read beside the problems of those
/// that could not, so `endstate validate` reports the problems inside the readable files too.
pub fn read_spec_dir_all(dir: &Path) -> (Vec<SourceFile>, Vec<Diagnostic>) {
    let shown = display_path(dir);
    let mut problems = Vec::new();
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return (
                Vec::new(),
                vec![problem(
                    &shown,
                    "not-a-directory",
                    "found a file where a spec directory was expected",
                )],
            );
        }
        Err(error) => {
            return (
                Vec::new(),
                vec![problem(
                    &shown,
                    "unreadable",
                    format!("cannot read the spec directory: {error}"),
                )],
            );
        }
    }
    let mut paths = Vec::new();
    let mut pending: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = match std::fs::read_dir(&current) {
            Ok(entries) => entries,
            Err(error) => {
                problems.push(problem(
                    &display_path(&current),
                    "unreadable",
                    format!("cannot read directory: {error}"),
                ));
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(error) => {
                    problems.push(problem(
                        &display_path(&current),
                        "unreadable",
                        format!("cannot list directory: {error}"),
                    ));
                    continue;
                }
            };
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => pending.push(path),
                Ok(kind) if kind.is_file() && is_yaml(&path) => paths.push(path),
                // A YAML name that is not a regular file is never skipped silently: a file left
                // out of a spec would remove what it declares. Links to regular files are
                // followed; links to directories are not (they could loop).
                Ok(_) if is_yaml(&path) => match std::fs::metadata(&path) {
                    Ok(target) if target.is_file() => paths.push(path),
                    Ok(_) => problems.push(
                        problem(
                            &display_path(&path),
                            "not-a-file",
                            "found a YAML name that is not a regular file",
                        )
                        .with_expected("a regular file, or a link to one"),
                    ),
                    Err(error) => problems.push(problem(
                        &display_path(&path),
                        "unreadable",
                        format!("cannot follow the link: {error}"),
                    )),
                },
                Ok(_) => {}
                Err(error) => problems.push(problem(
                    &display_path(&path),
                    "unreadable",
                    format!("cannot stat file: {error}"),
                )),
            }
        }
    }
    paths.sort();
    let mut files = Vec::with_capacity(paths.len());
    for path in &paths {
        let shown = display_path(path);
        // Refuse huge files before reading them into memory.
        if let Ok(meta) = std::fs::metadata(path)
            && meta.len() > endstate_spec::MAX_FILE_BYTES as u64
        {
            problems.push(
                problem(
                    &shown,
                    "file-too-large",
                    format!("found a file of {} bytes", meta.len()),
                )
                .with_expected(&format!(
                    "at most {} bytes (4 MiB) per spec file",
                    endstate_spec::MAX_FILE_BYTES
                )),
            );
            continue;
        }
        match std::fs::read(path) {
            Ok(bytes) => match SourceFile::from_bytes(shown, &bytes) {
                Ok(file) => files.push(file),
                Err(diagnostic) => problems.push(diagnostic),
            },
            Err(error) => problems.push(problem(&shown, "unreadable", format!("cannot read file: {error}"))),
        }
    }
    if paths.is_empty() && problems.is_empty() {
        problems.push(
            problem(
                &display_path(dir),
                "no-spec-files",
                "found no spec file in the directory",
            )
            .with_expected("at least one `*.yaml` or `*.yml` file"),
        );
    }
    (files, problems)
}

fn is_yaml(path: &Path) -> bool {
    path.extension()
        .and_then(|ext| ext.to_str())
        .is_some_and(|ext| ext == "yaml" || ext == "yml")
}

/// A path as shown to people: `/` separators on every platform.
fn display_path(path: &Path) -> String {
    path.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
        .replace("//", "/")
}

fn problem(file: &str, code: &str, message: impl Into<String>) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        file: file.to_owned(),
        line: 0,
        column: 0,
        code: code.to_owned(),
        message: message.into(),
        expected: None,
    }
}

trait WithExpected {
    fn with_expected(self, expected: &str) -> Self;
}

impl WithExpected for Diagnostic {
    fn with_expected(mut self, expected: &str) -> Self {
        self.expected = Some(expected.to_owned());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_to_files_are_followed_and_other_yaml_names_reported() {
        let dir = tempfile::tempdir().unwrap();
        let spec = dir.path().join("spec");
        std::fs::create_dir_all(&spec).unwrap();
        let outside = dir.path().join("shared.yaml");
        std::fs::write(&outside, "apiVersion: endstate/v1\nkind: System\nname: shared\n").unwrap();
        std::os::unix::fs::symlink(&outside, spec.join("linked.yaml")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("missing.yaml"), spec.join("dangling.yaml")).unwrap();
        std::fs::create_dir_all(spec.join("odd.yaml")).unwrap();
        let (files, problems) = read_spec_dir_all(&spec);
        assert_eq!(files.len(), 1);
        assert!(files[0].path.ends_with("linked.yaml") && files[0].text.contains("shared"));
        let codes: Vec<&str> = problems.iter().map(|p| p.code.as_str()).collect();
        assert_eq!(codes, ["unreadable"], "{problems:?}");
        assert!(problems[0].file.ends_with("dangling.yaml"));
    }

    #[test]
    fn reads_yaml_files_recursively_and_reports_every_problem() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("specs");
        std::fs::create_dir_all(root.join("b/c")).expect("mkdir");
        std::fs::create_dir_all(root.join(".git")).expect("mkdir");
        std::fs::write(root.join("a.yaml"), "kind: System\n").expect("write");
        std::fs::write(root.join("b/c/d.yml"), "kind: System\n").expect("write");
        std::fs::write(root.join("b/readme.md"), "not yaml").expect("write");
        std::fs::write(root.join(".git/x.yaml"), "\0").expect("write");
        let files = read_spec_dir(&root).expect("readable");
        let paths: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
        let prefix = display_path(&root);
        assert_eq!(paths, [format!("{prefix}/a.yaml"), format!("{prefix}/b/c/d.yml")]);

        std::fs::write(root.join("bin.yaml"), b"\x7fELF\0\0").expect("write");
        std::fs::write(root.join("latin1.yaml"), b"name: caf\xe9\n").expect("write");
        std::fs::write(root.join("huge.yaml"), vec![b'#'; endstate_spec::MAX_FILE_BYTES + 1]).expect("write");
        let problems = read_spec_dir(&root).expect_err("bad files");
        let codes: Vec<(String, &str)> = problems
            .iter()
            .map(|d| (d.file.trim_start_matches(&prefix).to_owned(), d.code.as_str()))
            .collect();
        assert_eq!(
            codes,
            [
                ("/bin.yaml".to_owned(), "binary-file"),
                ("/huge.yaml".to_owned(), "file-too-large"),
                ("/latin1.yaml".to_owned(), "not-utf8")
            ]
        );
    }

    #[test]
    fn missing_or_empty_directory_is_an_error() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let problems = read_spec_dir(&tmp.path().join("nope")).expect_err("missing");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].code, "unreadable");
        let problems = read_spec_dir(tmp.path()).expect_err("empty");
        assert_eq!(problems[0].code, "no-spec-files");
    }

    #[test]
    fn thousands_of_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        for i in 0..3000 {
            let dir = tmp.path().join(format!("d{}", i % 30));
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::fs::write(dir.join(format!("f{i}.yaml")), "a: 1\n").expect("write");
        }
        assert_eq!(read_spec_dir(tmp.path()).map(|files| files.len()), Ok(3000));
    }
}
