//! Architecture invariants, checked on the sources and manifests (ARCHITECTURE.md lists them).

use std::path::Path;

/// Crates that must stay pure: no IO, no runtime, no network, no database.
const PURE: &[&str] = &[
    "endstate-types",
    "endstate-spec",
    "endstate-plan",
    "endstate-decide",
    "endstate-agent-proto",
];

/// Dependencies a pure crate may not have.
const IMPURE_DEPS: &[&str] = &[
    "tokio",
    "axum",
    "reqwest",
    "rusqlite",
    "hyper",
    "tower",
    "tower-http",
    "endstate-store",
    "endstate-server",
    "endstate-client",
];

/// Paths a pure crate's source may not name (outside comments).
const IMPURE_PATHS: &[&str] = &[
    "std::fs",
    "std::env",
    "std::net",
    "std::process",
    "std::{",
    "tokio::",
    "std::time::Instant",
    "SystemTime::now",
    "Timestamp::now",
    "println!",
    "eprintln!",
];

/// Crates that may not depend on the store (the planner proposes, it does not read state).
const NOT_ON_STORE: &[&str] = &["endstate-plan", "endstate-decide", "endstate-spec", "endstate-api"];

/// Every problem found, as `path: what`. A crate or file that cannot be read is a problem too, so
/// renaming a crate cannot make the check pass by checking nothing.
pub(crate) fn check(root: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let read = |path: &Path, problems: &mut Vec<String>| match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(error) => {
            let shown = path.strip_prefix(root).unwrap_or(path).display().to_string();
            problems.push(format!(
                "{shown}: cannot read it ({error}); is the crate list in xtask/src/tidy.rs stale?"
            ));
            None
        }
    };
    for krate in PURE {
        let dir = root.join("crates").join(krate);
        let Some(manifest) = read(&dir.join("Cargo.toml"), &mut problems) else {
            continue;
        };
        let deps = dependencies(&manifest);
        for dep in IMPURE_DEPS {
            if deps.iter().any(|d| d == dep) {
                problems.push(format!("crates/{krate}/Cargo.toml: a pure crate depends on {dep}"));
            }
        }
        let files = rust_files(&dir.join("src"));
        if files.is_empty() {
            problems.push(format!("crates/{krate}/src: no Rust file found"));
        }
        for file in files {
            let Some(text) = read(&file, &mut problems) else {
                continue;
            };
            for (line_idx, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for path in IMPURE_PATHS {
                    if code.contains(path) {
                        let shown = file.strip_prefix(root).unwrap_or(&file).display().to_string();
                        problems.push(format!("{shown}:{}: a pure crate uses {path}", line_idx + 1));
                    }
                }
            }
        }
    }
    for krate in NOT_ON_STORE {
        let Some(manifest) = read(&root.join("crates").join(krate).join("Cargo.toml"), &mut problems) else {
            continue;
        };
        if dependencies(&manifest).iter().any(|d| d == "endstate-store") {
            problems.push(format!("crates/{krate}/Cargo.toml: depends on endstate-store"));
        }
    }
    problems
}

/// The names in the `[dependencies]` table of a manifest (not dev-dependencies: tests may do IO).
fn dependencies(manifest: &str) -> Vec<String> {
    let mut in_deps = false;
    let mut out = Vec::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps && let Some((name, _)) = line.split_once(['=', '.']) {
            let name = name.trim();
            if !name.is_empty() && !name.starts_with('#') {
                out.push(name.to_string());
            }
        }
    }
    out
}

fn rust_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            // Unit-test modules may do IO.
            if path.file_name().is_some_and(|n| n != "tests") {
                out.extend(rust_files(&path));
            }
        } else if path.extension().is_some_and(|e| e == "rs") && path.file_name().is_some_and(|n| n != "tests.rs") {
            out.push(path);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn architecture_invariants_hold() {
        let problems = check(&crate::workspace_root());
        assert!(problems.is_empty(), "tidy problems:\n{}", problems.join("\n"));
    }

    #[test]
    fn tidy_catches_an_impure_crate() {
        let dir = std::env::temp_dir().join(format!("endstate-tidy-{}", std::process::id()));
        let krate = dir.join("crates").join("endstate-plan");
        std::fs::create_dir_all(krate.join("src")).unwrap();
        std::fs::write(
            krate.join("Cargo.toml"),
            "[dependencies]\ntokio.workspace = true\n\n[dev-dependencies]\ntempfile = \"3\"\n",
        )
        .unwrap();
        std::fs::write(
            krate.join("src/lib.rs"),
            "//! x\nfn f() { let _ = std::fs::read(\"x\"); } // std::env in a comment is fine\n",
        )
        .unwrap();
        let problems = check(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(problems.iter().any(|p| p.contains("depends on tokio")), "{problems:?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("lib.rs:2: a pure crate uses std::fs")),
            "{problems:?}"
        );
        assert!(!problems.iter().any(|p| p.contains("std::env")), "{problems:?}");
        assert!(!problems.iter().any(|p| p.contains("tempfile")), "{problems:?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("endstate-types/Cargo.toml: cannot read it")),
            "{problems:?}"
        );
    }
}
