//! Architecture invariants, checked on the sources and manifests (ARCHITECTURE.md lists them).

use std::path::Path;

/// Crates that must stay pure: no IO, no runtime, no network, no database.
const PURE: &[&str] = &[
    "endstate-types",
    "endstate-spec",
    "endstate-plan",
    "endstate-decide",
    "endstate-agent-proto",
    "endstate-monitor",
    "endstate-pki",
    "endstate-events",
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

/// Crates whose modules may not import each other in a cycle (`use crate::...`, `crate::` paths,
/// `super::`), counted between top-level modules (a directory module's files are one module; the
/// crate root, which declares them all, is left out).
const ACYCLIC: &[&str] = &["endstate-server"];

/// Crates that write and read timeline events only through `endstate_events::Event`: no
/// untyped event (`NewEvent::new`), no payload read by key.
const TYPED_EVENTS: &[&str] = &["endstate-server"];

/// What [`TYPED_EVENTS`] crates may not write (outside comments).
const UNTYPED_EVENT_USES: &[&str] = &["NewEvent::new(", ".data.get(", ".data[", "data.pointer("];

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
        let files = rust_files(&dir.join("src"), false);
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
    // The test kit is for tests and benchmarks: never a normal dependency of a crate that ships.
    if let Ok(entries) = std::fs::read_dir(root.join("crates")) {
        let mut manifests: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path().join("Cargo.toml"))
            .filter(|p| p.exists())
            .collect();
        manifests.sort();
        for path in manifests {
            let Some(manifest) = read(&path, &mut problems) else {
                continue;
            };
            let shown = path.strip_prefix(root).unwrap_or(&path).display().to_string();
            if !shown.contains("endstate-bench") && dependencies(&manifest).iter().any(|d| d == "endstate-testkit") {
                problems.push(format!("{shown}: endstate-testkit may only be a dev-dependency"));
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
    for krate in TYPED_EVENTS {
        for file in rust_files(&root.join("crates").join(krate).join("src"), true) {
            let Some(text) = read(&file, &mut problems) else {
                continue;
            };
            let shown = file.strip_prefix(root).unwrap_or(&file).display().to_string();
            problems.extend(untyped_event_uses(&text).into_iter().map(|(line, what)| {
                format!("{shown}:{line}: an event written or read around endstate_events::Event ({what})")
            }));
        }
    }
    for krate in ACYCLIC {
        let src = root.join("crates").join(krate).join("src");
        let files = rust_files(&src, true);
        if files.is_empty() {
            problems.push(format!("crates/{krate}/src: no Rust file found"));
            continue;
        }
        let mut sources = Vec::new();
        for file in files {
            if let Some(text) = read(&file, &mut problems) {
                let relative = file.strip_prefix(&src).unwrap_or(&file).to_path_buf();
                sources.push((relative, text));
            }
        }
        for cycle in import_cycles(&sources) {
            problems.push(format!(
                "crates/{krate}/src: modules import each other in a cycle: {}",
                cycle.join(" <-> ")
            ));
        }
    }
    problems
}

/// Lines (from 1) that write an untyped event or read a payload by key, outside comments.
fn untyped_event_uses(text: &str) -> Vec<(usize, &'static str)> {
    let mut found = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        for what in UNTYPED_EVENT_USES {
            if code.contains(what) {
                found.push((idx + 1, *what));
            }
        }
    }
    found
}

/// The top-level module a source file belongs to (`agents/conn.rs` and `agents/mod.rs` are
/// `agents`, `rollout.rs` is `rollout`); `None` for the crate root.
fn module_of(path: &Path) -> Option<String> {
    let first = path.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

/// The modules each module names: `crate::x` anywhere in code (a `use crate::{a, b}` group
/// too), and `super::...::x` that climbs to the crate root (`super::super::x` from
/// `agents/conn.rs`); a `super::` that stays inside the file's own top-level module is no edge.
fn imports(
    path: &Path,
    text: &str,
    modules: &std::collections::BTreeSet<String>,
) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let code: String = text
        .lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    // How deep the file's module is: `a.rs` and `agents/mod.rs` 1, `agents/conn.rs` 2.
    let depth = path.components().count() - usize::from(path.file_name().is_some_and(|n| n == "mod.rs"));
    let mut rest = code.as_str();
    loop {
        let next = [rest.find("crate::"), rest.find("super::")].into_iter().flatten().min();
        let Some(at) = next else { break };
        let mut after = &rest[at..];
        let mut up = 0;
        if after.starts_with("crate::") {
            after = &after[7..];
            up = depth;
        } else {
            while let Some(more) = after.strip_prefix("super::") {
                after = more;
                up += 1;
            }
        }
        rest = after;
        if up < depth {
            continue;
        }
        let names: Vec<&str> = if let Some(group) = after.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            group[..end].split(',').map(str::trim).collect()
        } else {
            vec![after]
        };
        for name in names {
            let ident: String = name.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if modules.contains(&ident) {
                out.insert(ident);
            }
        }
    }
    out
}

/// Every cycle among top-level modules (strongly connected components of two or more), each
/// sorted by name.
fn import_cycles(sources: &[(std::path::PathBuf, String)]) -> Vec<Vec<String>> {
    use std::collections::{BTreeMap, BTreeSet};
    let modules: BTreeSet<String> = sources.iter().filter_map(|(path, _)| module_of(path)).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, text) in sources {
        let Some(from) = module_of(path) else { continue };
        let to = imports(path, text, &modules);
        let entry = edges.entry(from.clone()).or_default();
        entry.extend(to.into_iter().filter(|m| *m != from));
    }
    // Reachability by depth-first search from every module: two modules are in one cycle when
    // each reaches the other (modules are few: tens).
    let reach = |start: &String| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![start.clone()];
        while let Some(module) = stack.pop() {
            for next in edges.get(&module).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
        seen
    };
    let reached: BTreeMap<&String, BTreeSet<String>> = modules.iter().map(|m| (m, reach(m))).collect();
    let mut cycles: Vec<Vec<String>> = Vec::new();
    let mut placed = BTreeSet::new();
    for module in &modules {
        if placed.contains(module) || !reached[module].contains(module) {
            continue;
        }
        let cycle: Vec<String> = modules
            .iter()
            .filter(|other| reached[module].contains(*other) && reached[*other].contains(module))
            .cloned()
            .collect();
        placed.extend(cycle.iter().cloned());
        cycles.push(cycle);
    }
    cycles
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

/// Every Rust file under `dir`, in path order; unit-test modules (`tests` directories and
/// `tests.rs`, which may do IO) only `with_tests`.
fn rust_files(dir: &Path, with_tests: bool) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let test_module = path.file_name().is_some_and(|n| n == "tests" || n == "tests.rs");
        if test_module && !with_tests {
            continue;
        }
        if path.is_dir() {
            out.extend(rust_files(&path, with_tests));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
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

    /// An untyped event, or a payload read by key, is found; the typed way is not.
    #[test]
    fn tidy_catches_an_untyped_event() {
        let untyped = "let e = NewEvent::new(now, \"note.added\", s);\nlet run = event.data.get(\"run\");\n// NewEvent::new( in a comment\n";
        assert_eq!(untyped_event_uses(untyped), [(1, "NewEvent::new("), (2, ".data.get(")]);
        let typed = "let e = NewEvent::of(now, &Event::NoteAdded(note), s);\nlet t = event.typed();\n";
        assert!(untyped_event_uses(typed).is_empty());
    }

    /// A deliberate cycle is found, whatever form its imports take (`use crate::{a, b}`, a
    /// `crate::` path in code, `super::` from a directory module); a comment is no import.
    #[test]
    fn tidy_catches_an_import_cycle() {
        let file = |path: &str, text: &str| (std::path::PathBuf::from(path), text.to_owned());
        let sources = vec![
            file("lib.rs", "mod a; mod b; mod c; mod d; mod hub;\nuse crate::a::X;\n"),
            file("a.rs", "use crate::{b, d::Y};\n"),
            file("b.rs", "fn f() { crate::hub::go(); }\n"),
            file("hub/mod.rs", "mod conn;\n"),
            file("hub/conn.rs", "use super::Hub; fn g() { super::super::a::h(); }\n"),
            file("c.rs", "// use crate::a;\nfn c() {}\n"),
            file("d.rs", "use crate::c;\n"),
        ];
        let cycles = import_cycles(&sources);
        assert_eq!(cycles, [vec!["a".to_owned(), "b".into(), "hub".into()]], "{cycles:?}");
        // Without the `super::` edge, no cycle.
        let mut acyclic = sources.clone();
        acyclic[4] = file("hub/conn.rs", "fn g() {}\n");
        assert!(import_cycles(&acyclic).is_empty());
    }
}
