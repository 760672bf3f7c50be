//! Project tasks: `cargo xtask bench [--smoke] [-- ARGS]` runs every benchmark of the project;
//! `cargo xtask tidy` checks the architecture invariants (also run by `cargo test`).

mod tidy;

use std::path::PathBuf;
use std::process::Command;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("bench") => bench(&args[1..]),
        Some("dev") => dev(&args[1..]),
        Some("tidy") => {
            let problems = tidy::check(&workspace_root());
            for problem in &problems {
                eprintln!("{problem}");
            }
            anyhow::ensure!(problems.is_empty(), "{} tidy problem(s)", problems.len());
            println!("tidy: ok");
            Ok(())
        }
        _ => {
            eprintln!(
                "usage:\n  cargo xtask dev [ARGS]                                     build endstate and example-service, run `endstate dev`\n  cargo xtask bench [--smoke] [--only GROUP] [--out FILE]   run every benchmark (release; --smoke: small sizes, dev profile)\n  cargo xtask tidy                                          check the architecture invariants"
            );
            std::process::exit(2);
        }
    }
}

/// `cargo dev`: builds the `endstate` binary and the example service the example systems run,
/// then runs `endstate dev` with the given arguments (Ctrl-C stops it).
fn dev(args: &[String]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .current_dir(workspace_root())
        .args(["build", "--bin", "endstate", "--bin", "example-service"])
        .status()?;
    anyhow::ensure!(
        status.success(),
        "building endstate and example-service failed ({status})"
    );
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace_root().join("target"), PathBuf::from);
    let status = Command::new(target.join("debug").join("endstate"))
        .current_dir(workspace_root())
        .arg("dev")
        .args(args)
        .status()?;
    anyhow::ensure!(status.success(), "endstate dev ended with {status}");
    Ok(())
}

fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Runs the benchmark harness. Full runs are release builds; smoke runs reuse the dev profile
/// the tests built, so CI pays no second full compile. The `agents` group runs the `endstate`
/// binary as real server and agent processes, found next to the harness: both binaries are
/// built by one cargo invocation (so with the same features), then the harness is run.
fn bench(args: &[String]) -> anyhow::Result<()> {
    let smoke = args.iter().any(|a| a == "--smoke");
    let root = workspace_root();
    let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    build.current_dir(&root).args([
        "build",
        "--quiet",
        "--package",
        "endstate-bench",
        "--package",
        "endstate-cli",
        "--bin",
        "endstate-bench",
        "--bin",
        "endstate",
    ]);
    if !smoke {
        build.arg("--release");
    }
    let status = build.status()?;
    anyhow::ensure!(status.success(), "building the benchmark harness failed ({status})");
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), |dir| root.join(dir));
    let harness = target
        .join(if smoke { "debug" } else { "release" })
        .join("endstate-bench");
    let status = Command::new(&harness).current_dir(&root).args(args).status()?;
    anyhow::ensure!(status.success(), "the benchmark harness failed ({status})");
    Ok(())
}
