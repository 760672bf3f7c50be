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
        Some("schemathesis") => schemathesis(&args[1..]),
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
                "usage:\n  cargo xtask test [ARGS]                                    install what the tests need (or name it), run `cargo test --workspace`\n  cargo xtask dev [ARGS]                                     build endstate and example-service, run `endstate dev`\n  cargo xtask bench [--smoke] [--only GROUP] [--out FILE]   run every benchmark (release; --smoke: small sizes, dev profile)\n  cargo xtask tidy                                          check the architecture invariants\n  cargo xtask schemathesis [--max-examples N]               check the OpenAPI document against a real `endstate dev` (schemathesis, pinned)"
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
        what: "git and git-http-backend (the Git source tests push to real repositories)",
        paths: &["/usr/bin/git", "/usr/lib/git-core/git-http-backend"],
        any: false,
        packages: &["git"],
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
    let packages: Vec<&str> = missing().iter().flat_map(|p| p.packages.iter().copied()).collect();
    if apt_install(&packages, "what the tests need").is_err() {
        return Err(problem);
    }
    match describe_missing() {
        None => Ok(()),
        Some(still) => Err(format!("apt-get did not install everything; {still}")),
    }
}

/// Installs Debian packages with apt-get when running as root on a machine that has it;
/// otherwise says exactly what to install.
fn apt_install(packages: &[&str], what: &str) -> Result<(), String> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !(root && std::path::Path::new("/usr/bin/apt-get").exists()) {
        return Err(format!(
            "missing: {what}; install it with:\n  sudo apt-get install -y {}",
            packages.join(" ")
        ));
    }
    eprintln!("Installing {what}: {}", packages.join(" "));
    let _ = Command::new("apt-get").args(["update", "-qq"]).status();
    let installed = Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq"])
        .args(packages)
        .status()
        .is_ok_and(|status| status.success());
    if installed {
        Ok(())
    } else {
        Err(format!("apt-get could not install {}", packages.join(" ")))
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

/// The schemathesis release the OpenAPI check runs (pip, into `target/schemathesis-venv`).
const SCHEMATHESIS: &str = "4.32.5";

/// `cargo xtask schemathesis [--max-examples N]`: checks the OpenAPI document against a real
/// `endstate dev` (one agent, the example systems, HTTPS with its own CA, on free loopback
/// ports, in `target/tmp`) with every schemathesis check: server errors, status codes, content
/// types, response schemas, schema-valid requests refused and schema-violating ones accepted.
/// `schemathesis.toml` says which statuses a schema-valid request may meet (ARCHITECTURE.md,
/// "Errors"). `.ci/run` runs it.
fn schemathesis(args: &[String]) -> anyhow::Result<()> {
    use std::io::BufRead;
    let max_examples = match args {
        [] => "10".to_owned(),
        [flag, n] if flag == "--max-examples" && n.parse::<u32>().is_ok() => n.clone(),
        _ => anyhow::bail!("usage: cargo xtask schemathesis [--max-examples N]"),
    };
    let root = workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let venv = target.join("schemathesis-venv");
    let st = venv.join("bin").join("st");
    let installed = Command::new(&st)
        .arg("--version")
        .output()
        .ok()
        .is_some_and(|out| String::from_utf8_lossy(&out.stdout).contains(SCHEMATHESIS));
    if !installed {
        let venv_made = |quiet: bool| {
            let mut command = Command::new("python3");
            command.arg("-m").arg("venv").arg("--clear").arg(&venv);
            if quiet {
                command.stderr(std::process::Stdio::null());
            }
            command.status().is_ok_and(|status| status.success())
        };
        if !venv_made(true) {
            // A fresh Debian machine has no Python, or Python without venv.
            apt_install(
                &["python3", "python3-venv"],
                "Python and its venv (schemathesis, from PyPI)",
            )
            .map_err(|problem| anyhow::anyhow!("the OpenAPI check cannot run on this machine yet; {problem}"))?;
            anyhow::ensure!(venv_made(false), "python3 -m venv failed: install python3-venv");
        }
        let status = Command::new(venv.join("bin").join("pip"))
            .args(["install", "--quiet", &format!("schemathesis=={SCHEMATHESIS}")])
            .status()?;
        anyhow::ensure!(
            status.success(),
            "pip install schemathesis=={SCHEMATHESIS} failed ({status})"
        );
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .current_dir(&root)
        .args(["build", "--bin", "endstate", "--bin", "example-service"])
        .status()?;
    anyhow::ensure!(status.success(), "building endstate failed ({status})");
    let data = target.join("tmp").join("schemathesis-dev");
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data)?;
    let free_port = || -> anyhow::Result<u16> { Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()) };
    let (api, agents) = (free_port()?, free_port()?);
    let mut dev = Command::new(target.join("debug").join("endstate"))
        .current_dir(&root)
        .env("ENDSTATE_CONFIG", data.join("client.json"))
        .env("ENDSTATE_LOG", "warn")
        .arg("dev")
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen", &format!("127.0.0.1:{api}")])
        .args(["--agent-listen", &format!("127.0.0.1:{agents}"), "--agents", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = dev
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout of endstate dev"))?;
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let token = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match seen.recv_timeout(left) {
            Ok(line) => {
                if let Some(token) = line.trim().strip_prefix("admin token:") {
                    break Ok(token.trim().to_owned());
                }
            }
            Err(_) => break Err(anyhow::anyhow!("endstate dev printed no admin token within 2 minutes")),
        }
    };
    let outcome = token.and_then(|token| {
        let status = Command::new(&st)
            .arg("--config-file")
            .arg(root.join("schemathesis.toml"))
            .arg("run")
            .arg(format!("https://127.0.0.1:{api}/openapi.json"))
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .arg("--tls-verify")
            .arg(data.join("pki").join("ca.pem"))
            .args(["--max-examples", &max_examples, "--checks", "all", "--no-color"])
            .status()?;
        anyhow::ensure!(status.success(), "schemathesis found problems ({status})");
        Ok(())
    });
    // A graceful stop, so `endstate dev` stops its agent and their instances.
    let _ = Command::new("kill").args(["-TERM", &dev.id().to_string()]).status();
    let _ = dev.wait();
    outcome
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
