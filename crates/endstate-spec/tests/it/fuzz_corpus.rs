//! The committed fuzz corpus (including the regressions the fuzzer found) replayed on stable:
//! no input panics, a refused spec always has an error, and every diagnostic is one line.

use endstate_spec::{SourceFile, load};

#[test]
fn issue_2_fuzz_corpus_replays_cleanly() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/spec_parse");
    let mut n_inputs = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        n_inputs += 1;
        let Ok(file) = SourceFile::from_bytes("fuzz.yaml", &bytes) else {
            continue;
        };
        let loaded = load(&[file], &[]);
        assert_eq!(loaded.desired.is_some(), !loaded.has_errors(), "{}", path.display());
        for diagnostic in &loaded.diagnostics {
            let line = diagnostic.to_string();
            assert!(
                !line.contains('\n') && !line.contains('\r'),
                "{}: multi-line diagnostic {line:?}",
                path.display()
            );
        }
    }
    assert!(n_inputs >= 8, "the corpus is missing from {}", dir.display());
}

#[test]
fn issue_2_found_values_with_newlines_are_escaped() {
    let text = "apiVersion: \"endstate/v1\\nkind: System\"\nkind: System\nname: a\n";
    let loaded = load(
        &[SourceFile {
            path: "a.yaml".into(),
            text: text.into(),
        }],
        &[],
    );
    let lines: Vec<String> = loaded.diagnostics.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("endstate/v1\\nkind: System"), "{lines:?}");
}
