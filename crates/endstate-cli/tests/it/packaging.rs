//! What an operator installs: the systemd units pass `systemd-analyze verify`, the man pages open
//! with `man -l`, completions are generated, `version` answers, a LICENSE matches Cargo.toml,
//! and `endstate server` takes its flags from a config file.

use std::process::Command;

use crate::server::{cli, start_server};
use crate::{repo_root, run, text};

#[test]
fn the_systemd_units_pass_systemd_analyze_verify() {
    let analyze = std::path::Path::new("/usr/bin/systemd-analyze");
    assert!(
        analyze.exists(),
        "systemd-analyze is missing: install Debian's `systemd` package (`cargo xtask test` does)"
    );
    let dir = tempfile::tempdir().unwrap();
    for unit in ["endstate-server.service", "endstate-agent.service"] {
        let text = std::fs::read_to_string(repo_root().join("packaging/systemd").join(unit)).unwrap();
        // The binary this build made stands in for the installed one.
        let text = text.replace("/usr/local/bin/endstate", env!("CARGO_BIN_EXE_endstate"));
        let path = dir.path().join(unit);
        std::fs::write(&path, text).unwrap();
        // `--man=no`: the pages its Documentation= names are installed with `endstate man`, not here.
        let out = Command::new(analyze)
            .args(["verify", "--man=no"])
            .arg(&path)
            .output()
            .unwrap();
        let said = format!("{}{}", text_of(&out.stdout), text_of(&out.stderr));
        // Only problems of this unit count: a container without systemd running warns about others.
        let ours: Vec<&str> = said.lines().filter(|l| l.contains(unit)).collect();
        assert!(ours.is_empty(), "{unit}: {said}");
        assert!(out.status.success(), "{unit}: {said}");
    }
}

fn text_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn man_pages_open_completions_generate_and_the_license_matches() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.json");
    let out = run(&["man", dir.path().join("man").to_str().unwrap()], &config);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for page in [
        "endstate.1",
        "endstate-server.1",
        "endstate-agent.1",
        "endstate-apply.1",
    ] {
        let path = dir.path().join("man").join(page);
        assert!(path.exists(), "{page} missing");
        let shown = Command::new("man")
            .arg("-l")
            .arg(&path)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100")
            .output()
            .expect("man is missing: install Debian's `man-db` package (`cargo xtask test` does)");
        assert!(shown.status.success(), "{page}: {}", text(&shown.stderr));
        let page_name = page.trim_end_matches(".1");
        assert!(
            text(&shown.stdout).contains(page_name),
            "{page}: {}",
            text(&shown.stdout)
        );
    }
    for shell in ["bash", "zsh", "fish"] {
        let out = run(&["completions", shell], &config);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert!(text(&out.stdout).contains("endstate"), "{shell}");
        assert!(text(&out.stdout).contains("rollback"), "{shell} completes the commands");
    }
    let license = std::fs::read_to_string(repo_root().join("LICENSE")).unwrap();
    let manifest = std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    assert!(manifest.contains("license = \"Apache-2.0\""));
    assert!(license.contains("Apache License") && license.contains("Version 2.0, January 2004"));
}

#[test]
fn version_names_the_client_and_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.json");
    let out = run(&["version"], &config);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!(
            "client: endstate {v}\nserver: none configured\n",
            v = env!("CARGO_PKG_VERSION")
        )
    );
    let (_server, url, token) = start_server(&dir.path().join("data"), &config);
    let out = cli(&["version", "-o", "json"], &url, &token.unwrap(), &config);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["server"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(shown["server"]["api"], "v1");
}

/// Every flag of `endstate server` can come from a YAML file; the command line wins over it, and
/// a setting that is not a flag is refused with its place in the file.
#[test]
fn the_server_takes_its_flags_from_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.json");
    let settings = dir.path().join("server.yaml");
    std::fs::write(
        &settings,
        "listen: 127.0.0.1:1\nagent-listen: none\ninsecure-http: true\nretain: [check.status=7d]\n",
    )
    .unwrap();
    // `--listen` on the command line wins over the file's (port 1 would fail to bind).
    let mut server = crate::Process::spawn(
        &[
            "server",
            "--config-file",
            settings.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
        ],
        &config,
    );
    let line = server.wait_for("endstate server listening on");
    assert!(
        line.contains("http://127.0.0.1:"),
        "insecure-http came from the file: {line}"
    );
    assert_ne!(
        line.rsplit(':').next(),
        Some("1"),
        "the command line's --listen won: {line}"
    );
    drop(server);

    std::fs::write(&settings, "listen: 127.0.0.1:0\n\nlisten-twice: yes\n").unwrap();
    let out = run(&["server", "--config-file", settings.to_str().unwrap()], &config);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains(&format!("{}:3:1: unknown setting `listen-twice`", settings.display())),
        "{}",
        text(&out.stderr)
    );
}
