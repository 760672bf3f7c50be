//! Project tasks: `cargo xtask bench [--smoke] [-- ARGS]` runs every benchmark of the project;
//! `cargo xtask tidy` checks the architecture invariants (also run by `cargo test`).

mod tidy;

use std::path::PathBuf;
use std::process::Command;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("bench") => bench(&args[1..]),
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
                "usage:\n  cargo xtask bench [--smoke] [--only GROUP] [--out FILE]   run every benchmark (release; --smoke: small sizes, dev profile)\n  cargo xtask tidy                                          check the architecture invariants"
            );
            std::process::exit(2);
        }
    }
}

fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Runs the benchmark harness. Full runs are release builds; smoke runs reuse the dev profile
/// the tests built, so CI pays no second full compile.
fn bench(args: &[String]) -> anyhow::Result<()> {
    let smoke = args.iter().any(|a| a == "--smoke");
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .current_dir(workspace_root())
        .args(["run", "--quiet", "--package", "endstate-bench"]);
    if !smoke {
        command.arg("--release");
    }
    command.arg("--").args(args);
    let status = command.status()?;
    anyhow::ensure!(status.success(), "the benchmark harness failed ({status})");
    Ok(())
}
