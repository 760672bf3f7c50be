//! End-to-end tests of the `endstate` binary: real server processes on free loopback ports,
//! real data directories, the CLI as a user runs it.

#![allow(clippy::unwrap_used)]

mod actions;
mod agents;
mod describe;
mod hosts;
mod inventory;
mod monitoring;
mod offline;
mod packaging;
mod rollout;
mod server;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub(crate) fn bin() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_endstate"));
    command
        .env_remove("ENDSTATE_SERVER")
        .env_remove("ENDSTATE_TOKEN")
        .env("NO_COLOR", "1");
    command
}

pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs the binary to completion, isolated from the user's config.
pub(crate) fn run(args: &[&str], config: &Path) -> Output {
    bin()
        .args(args)
        .env("ENDSTATE_CONFIG", config)
        .current_dir(repo_root())
        .output()
        .unwrap()
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A long-running `endstate` process whose stdout lines are collected.
pub(crate) struct Process {
    pub(crate) child: Child,
    lines: mpsc::Receiver<String>,
    pub(crate) seen: Vec<String>,
}

impl Process {
    pub(crate) fn spawn(args: &[&str], config: &Path) -> Process {
        let mut command = bin();
        command.args(args);
        // Labs running side by side each allocate their instances' ports in a window of their own.
        if args.first() == Some(&"dev")
            && let Some(at) = args.iter().position(|a| *a == "--data-dir")
            && let Some(data) = args.get(at + 1)
        {
            command.args(["--dynamic-ports", &ports_window(Path::new(data))]);
        }
        let mut child = command
            .env("ENDSTATE_CONFIG", config)
            .env("ENDSTATE_LOG", "info")
            .current_dir(repo_root())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Process {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (at most 30 s) for a stdout line containing `needle` and returns it.
    pub(crate) fn wait_for(&mut self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("no line with {needle:?}; saw {:#?}", self.seen),
            }
        }
    }

    /// The URL after `needle` on its line (`... https://127.0.0.1:PORT`).
    pub(crate) fn wait_for_url(&mut self, needle: &str) -> String {
        let line = self.wait_for(needle);
        let start = line.find("http").unwrap();
        line[start..].split_whitespace().next().unwrap().to_string()
    }
}

impl Drop for Process {
    /// SIGTERM first, so `endstate dev` stops its agents and they stop their instances; SIGKILL
    /// after 20 s.
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The dynamic ports of one lab: a window of 250 of its own among the labs of this test run
/// (tests run side by side), the same for every start on one data directory.
pub(crate) fn ports_window(data: &Path) -> String {
    static WINDOWS: std::sync::Mutex<std::collections::BTreeMap<std::path::PathBuf, u16>> =
        std::sync::Mutex::new(std::collections::BTreeMap::new());
    let mut windows = WINDOWS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let next = u16::try_from(windows.len()).unwrap_or(0);
    let index = *windows.entry(data.to_path_buf()).or_insert(next);
    let first = 20_000 + (index % 40) * 250;
    format!("{first}-{}", first + 249)
}
