//! Project tasks: `cargo xtask test [ARGS]` installs (or names) what the test suite needs and
//! runs it; `cargo xtask dev` starts the embedded default; `cargo xtask bench [--smoke] [-- ARGS]`
//! runs every benchmark of the project; `cargo xtask tidy` checks the architecture invariants
//! (also run by `cargo test`).

mod tidy;

use std::path::PathBuf;
use std::process::Command;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("bench") => bench(&args[1..]),
        Some("dev") => dev(&args[1..]),
        Some("test") => test(&args[1..]),
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
                "usage:\n  cargo xtask test [ARGS]                                    install what the tests need (or name it), run `cargo test --workspace`\n  cargo xtask dev [ARGS]                                     build endstate and example-service, run `endstate dev`\n  cargo xtask bench [--smoke] [--only GROUP] [--out FILE]   run every benchmark (release; --smoke: small sizes, dev profile)\n  cargo xtask tidy                                          check the architecture invariants"
            );
            std::process::exit(2);
        }
    }
}

/// What the test suite and the example systems need besides Rust and a C compiler.
struct Prerequisite {
    /// What it is for.
    what: &'static str,
    /// Paths that must all exist (`any`: one of them).
    paths: &'static [&'static str],
    any: bool,
    /// The Debian packages that bring them.
    packages: &'static [&'static str],
}

const PREREQUISITES: &[Prerequisite] = &[
    Prerequisite {
        what: "Nagios-compatible plugins (the monitoring tests and the examples' checks)",
        paths: &[
            "/usr/lib/nagios/plugins/check_http",
            "/usr/lib/nagios/plugins/check_tcp",
        ],
        any: false,
        packages: &["monitoring-plugins-basic", "monitoring-plugins-standard"],
    },
    Prerequisite {
        what: "Prometheus (the metric-gate rollout test)",
        paths: &["/usr/bin/prometheus"],
        any: false,
        packages: &["prometheus"],
    },
    Prerequisite {
        what: "systemd-analyze (the check of the systemd units in packaging/)",
        paths: &["/usr/bin/systemd-analyze"],
        any: false,
        packages: &["systemd"],
    },
    Prerequisite {
        what: "man from man-db (the check that the man pages open)",
        paths: &["/usr/bin/man"],
        any: false,
        packages: &["man-db"],
    },
    Prerequisite {
        what: "ip from iproute2 (the partition test's network namespaces)",
        paths: &["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"],
        any: true,
        packages: &["iproute2"],
    },
];

/// The prerequisites that are missing.
fn missing() -> Vec<&'static Prerequisite> {
    PREREQUISITES
        .iter()
        .filter(|p| {
            let present = |path: &&str| std::path::Path::new(path).exists();
            if p.any {
                !p.paths.iter().any(present)
            } else {
                !p.paths.iter().all(present)
            }
        })
        .collect()
}

/// What is missing and the exact command that installs it, or `None`.
fn describe_missing() -> Option<String> {
    let missing = missing();
    if missing.is_empty() {
        return None;
    }
    let packages: Vec<&str> = missing.iter().flat_map(|p| p.packages.iter().copied()).collect();
    let why: Vec<String> = missing
        .iter()
        .map(|p| format!("  - {}: {}", p.what, p.packages.join(" ")))
        .collect();
    Some(format!(
        "missing:\n{}\ninstall them with:\n  sudo apt-get install -y {}",
        why.join("\n"),
        packages.join(" ")
    ))
}

/// Installs what is missing with apt-get when running as root on Debian; otherwise says
/// exactly what to install.
fn install_prerequisites() -> Result<(), String> {
    let Some(problem) = describe_missing() else {
        return Ok(());
    };
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !(root && std::path::Path::new("/usr/bin/apt-get").exists()) {
        return Err(problem);
    }
    let packages: Vec<&str> = missing().iter().flat_map(|p| p.packages.iter().copied()).collect();
    eprintln!("Installing what the tests need: {}", packages.join(" "));
    let _ = Command::new("apt-get").args(["update", "-qq"]).status();
    let _ = Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq"])
        .args(&packages)
        .status();
    match describe_missing() {
        None => Ok(()),
        Some(still) => Err(format!("apt-get did not install everything; {still}")),
    }
}

/// `cargo xtask test [ARGS]`: the README's test command. Installs what the suite needs (or says
/// exactly what to install, and stops before the first test), then runs the whole suite.
fn test(args: &[String]) -> anyhow::Result<()> {
    if let Err(problem) = install_prerequisites() {
        anyhow::bail!("the test suite cannot run on this machine yet; {problem}");
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .current_dir(workspace_root())
        .args(["test", "--workspace", "--locked"])
        .args(args)
        .status()?;
    anyhow::ensure!(status.success(), "the test suite failed ({status})");
    Ok(())
}

/// `cargo dev`: builds the `endstate` binary and the example service the example systems run,
/// then runs `endstate dev` with the given arguments (Ctrl-C stops it).
fn dev(args: &[String]) -> anyhow::Result<()> {
    // Said once, at start: which example checks cannot run, and what brings them.
    if let Some(problem) = describe_missing() {
        eprintln!(
            "warning: the example checks that run Nagios plugins (check_http, check_tcp) show UNKNOWN until they are installed; {problem}"
        );
    }
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
        "--package",
        "endstate-agent",
        "--bin",
        "endstate-agent",
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
