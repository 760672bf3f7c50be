//! Hostile and large input: clean errors, no panic, no stack overflow, and scale.

use super::*;
use endstate_spec::MAX_FILE_BYTES;

#[test]
fn fifty_megabyte_file_is_refused() {
    let big = vec![b'a'; 50 * 1024 * 1024];
    let error = SourceFile::from_bytes("big.yaml", &big).expect_err("too big");
    assert_eq!(
        error.to_string(),
        format!(
            "big.yaml: error[file-too-large]: found a file of 52428800 bytes; expected at most {MAX_FILE_BYTES} bytes (4 MiB) per spec file"
        )
    );
}

#[test]
fn binary_garbage_and_non_utf8() {
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let error = SourceFile::from_bytes("garbage.yaml", &garbage).expect_err("binary");
    assert!(
        ["binary-file", "not-utf8", "control-character"].contains(&error.code.as_str()),
        "{error}"
    );
    let error = SourceFile::from_bytes("latin1.yaml", b"name: caf\xe9\n").expect_err("latin-1");
    assert_eq!(
        error.to_string(),
        "latin1.yaml:1:10: error[not-utf8]: found byte 0xe9 that is not valid UTF-8; expected UTF-8 text"
    );
}

#[test]
fn deeply_nested_yaml() {
    check(
        &[
            ("deep1.yaml", &"[".repeat(100_000)),
            ("deep2.yaml", &format!("{BASE}args: {}", "[".repeat(100_000))),
            ("deep3.yaml", &format!("apiVersion: endstate/v1\nkind: System\nname: x\nlabels:\n{}", (1..2000).map(|i| format!("{}a:\n", " ".repeat(i))).collect::<String>())),
            ("deep5.yaml", &format!("kind: System\nname: x\nlabels:\n{}", (1..2000).map(|i| format!("{}a:\n", " ".repeat(i))).collect::<String>())),
            ("deep4.yaml", &format!("apiVersion: endstate/v1\nkind: System\nname: y\nlabels: {}", "{a: ".repeat(100_000))),
        ],
        "
        deep1.yaml:1:256: error[too-deep]: found nesting more than 64 levels deep; expected at most 64 levels of nesting
        deep2.yaml:12:262: error[too-deep]: found nesting more than 64 levels deep; expected at most 64 levels of nesting
        deep3.yaml:6:3: error[wrong-type]: found a mapping; expected a string
        deep4.yaml:4:13: error[wrong-type]: found a mapping; expected a string
        deep5.yaml:67:65: error[too-deep]: found nesting more than 64 levels deep; expected at most 64 levels of nesting
        ",
    );
}

#[test]
fn two_thousand_files() {
    let mut input = vec![(
        "systems.yaml".to_owned(),
        "apiVersion: endstate/v1\nkind: System\nname: shop\n".to_owned(),
    )];
    for i in 0..2000 {
        let depends = if i > 0 {
            format!("depends_on: [c{}]\n", i - 1)
        } else {
            String::new()
        };
        input.push((
            format!("components/c{i:04}.yaml"),
            format!("apiVersion: endstate/v1\nkind: Component\nname: c{i}\nsystem: shop\nartifact: {{ version: '1', path: /x }}\ncommand: x\nplacement: {{ count: {{ per_host: 1 }} }}\n{depends}"),
        ));
    }
    let refs: Vec<(&str, &str)> = input.iter().map(|(p, t)| (p.as_str(), t.as_str())).collect();
    let loaded = load(&files(&refs), &[]);
    assert_eq!(render(&loaded), "");
    assert_eq!(loaded.desired.map(|d| d.components.len()), Some(2000));
}

#[test]
fn oversized_text_given_directly_is_refused() {
    let text = "#".repeat(MAX_FILE_BYTES + 1);
    check(
        &[("big.yaml", &text)],
        &format!(
            "big.yaml: error[file-too-large]: found a file of {} bytes; expected at most {MAX_FILE_BYTES} bytes (4 MiB) per spec file",
            MAX_FILE_BYTES + 1
        ),
    );
}

#[test]
fn no_files() {
    check(
        &[],
        ": error[no-spec-files]: found no spec file; expected at least one `*.yaml` or `*.yml` file",
    );
}
