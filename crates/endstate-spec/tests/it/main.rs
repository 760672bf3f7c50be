//! Integration tests of spec v1: every case goes through `load` and compares the rendered
//! diagnostics, one per line, with the expected text.

use endstate_spec::{Count, HostInfo, Loaded, SourceFile, load};

const SHOP: [(&str, &str); 3] = [
    ("shop/systems.yaml", include_str!("../data/shop/systems.yaml")),
    ("shop/components.yaml", include_str!("../data/shop/components.yaml")),
    ("shop/operations.yml", include_str!("../data/shop/operations.yml")),
];

fn files(files: &[(&str, &str)]) -> Vec<SourceFile> {
    files
        .iter()
        .map(|(path, text)| SourceFile {
            path: (*path).to_owned(),
            text: (*text).to_owned(),
        })
        .collect()
}

fn render(loaded: &Loaded) -> String {
    loaded.diagnostics.iter().map(|d| format!("{d}\n")).collect()
}

/// Loads `files` (without hosts) and compares the diagnostics with `expect` (leading indentation and
/// blank lines ignored).
#[track_caller]
fn check(input: &[(&str, &str)], expect: &str) {
    check_with_hosts(input, &[], expect);
}

#[track_caller]
fn check_with_hosts(input: &[(&str, &str)], hosts: &[HostInfo], expect: &str) {
    let loaded = load(&files(input), hosts);
    let actual = render(&loaded);
    let expect: String = expect
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(actual, expect, "\n--- actual ---\n{actual}");
    assert_eq!(loaded.desired.is_some(), !loaded.has_errors());
}

/// A minimal valid system and component to build cases on.
const BASE: &str = "\
apiVersion: endstate/v1
kind: System
name: shop
---
apiVersion: endstate/v1
kind: Component
name: api
system: shop
artifact: { version: '1', path: /opt/api }
command: bin/api
placement: { count: { total: 3 } }
";

mod errors;
mod fuzz_corpus;
mod limits;
mod valid;
