//! Golden plans: a case is a directory under `tests/golden/` with `before/` (absent for a new
//! server), `after/`, `hosts.txt` (one `name label=value,...` per line) and `plan.txt`, the
//! expected rendering. `UPDATE_GOLDEN=1 cargo test -p endstate-plan` rewrites the expectations;
//! review the diff like any other change.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use endstate_spec::{DesiredState, HostInfo, SourceFile};

fn load_dir(dir: &Path) -> DesiredState {
    let mut paths: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    let files: Vec<SourceFile> = paths
        .iter()
        .map(|p| SourceFile {
            path: p.file_name().unwrap().to_string_lossy().into(),
            text: std::fs::read_to_string(p).unwrap(),
        })
        .collect();
    let loaded = endstate_spec::load(&files, &[]);
    loaded
        .desired
        .unwrap_or_else(|| panic!("{} is invalid: {:#?}", dir.display(), loaded.diagnostics))
}

fn hosts(text: &str) -> Vec<HostInfo> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let (name, labels) = line.split_once(' ').unwrap_or((line, ""));
            HostInfo {
                name: name.to_string(),
                labels: labels
                    .split(',')
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| {
                        let (k, v) = kv.split_once('=').unwrap();
                        (k.to_string(), v.to_string())
                    })
                    .collect(),
            }
        })
        .collect()
}

fn check(case: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(case);
    let before = dir.join("before").exists().then(|| load_dir(&dir.join("before")));
    let after = load_dir(&dir.join("after"));
    let hosts = hosts(&std::fs::read_to_string(dir.join("hosts.txt")).unwrap_or_default());
    let plan = endstate_plan::plan(before.as_ref(), &after, &hosts);
    // Deterministic: the same input gives the same plan, whatever the order of the hosts.
    let mut reversed = hosts.clone();
    reversed.reverse();
    assert_eq!(
        endstate_plan::plan(before.as_ref(), &after, &reversed),
        plan,
        "{case}: plan depends on host order"
    );
    let got = endstate_plan::render(&plan, false);
    let expect_path = dir.join("plan.txt");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&expect_path, &got).unwrap();
        return;
    }
    let expect = std::fs::read_to_string(&expect_path).unwrap_or_default();
    assert!(
        got == expect,
        "{case}: plan differs from {}\n--- got ---\n{got}\n--- expected ---\n{expect}",
        expect_path.display()
    );
}

#[test]
fn new_server_places_everything() {
    check("new-server");
}

#[test]
fn upgrade_reconfigure_remove_and_unplaceable() {
    check("upgrade");
}

#[test]
fn nothing_changes() {
    check("no-change");
}
