//! The peer for actions: Salt, installed with pip into a virtual environment (`target/salt-venv`,
//! or `ENDSTATE_BENCH_SALT_VENV`), a `salt-master` and N `salt-minion`s on loopback ports of
//! their own, keys auto-accepted. Measured like endstate's actions: the wall time of
//! `salt '*' cmd.run /bin/true` (the CLI a person runs) until every minion answered, and the RSS
//! of the master's and of one minion's processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

/// The daemons, each its own process group, killed with it when dropped.
pub(super) struct Salt {
    bin: PathBuf,
    dir: PathBuf,
    master: Option<Child>,
    minions: Vec<Child>,
    publish_port: u16,
    ret_port: u16,
}

impl Drop for Salt {
    fn drop(&mut self) {
        for child in self.minions.iter_mut().chain(self.master.iter_mut()) {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
            let _ = child.wait();
        }
    }
}

/// The venv's `bin`, installing Salt into it first when it is not there.
pub(super) fn install() -> anyhow::Result<PathBuf> {
    let venv = std::env::var_os("ENDSTATE_BENCH_SALT_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/salt-venv"));
    let bin = venv.join("bin");
    if bin.join("salt-master").exists() {
        return Ok(std::path::absolute(bin)?);
    }
    eprintln!("actions: installing Salt with pip into {}", venv.display());
    let status = Command::new("python3").arg("-m").arg("venv").arg(&venv).status()?;
    anyhow::ensure!(status.success(), "python3 -m venv {} failed", venv.display());
    let status = Command::new(bin.join("pip"))
        .args(["install", "--quiet", "salt"])
        .status()?;
    anyhow::ensure!(status.success(), "pip install salt failed");
    Ok(std::path::absolute(bin)?)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Salt {
    pub(super) fn start(bin: &Path, dir: &Path) -> anyhow::Result<Salt> {
        let (publish_port, ret_port) = (free_port()?, free_port()?);
        let root = dir.join("master");
        std::fs::create_dir_all(&root)?;
        std::fs::write(
            dir.join("master.conf"),
            format!(
                "interface: 127.0.0.1\npublish_port: {publish_port}\nret_port: {ret_port}\nroot_dir: {root}\n\
                 user: {user}\nauto_accept: True\nlog_level: warning\npidfile: {root}/master.pid\nsock_dir: {root}/sock\n\
                 worker_threads: 5\n",
                root = root.display(),
                user = whoami(),
            ),
        )?;
        std::fs::create_dir_all(dir.join("conf"))?;
        std::fs::rename(dir.join("master.conf"), dir.join("conf/master"))?;
        let master = daemon(
            Command::new(bin.join("salt-master"))
                .arg("-c")
                .arg(dir.join("conf"))
                .arg("--log-file")
                .arg(root.join("master.log")),
        )?;
        Ok(Salt {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            master: Some(master),
            minions: Vec::new(),
            publish_port,
            ret_port,
        })
    }

    /// Starts minions until there are `n`, and waits until all of them answer a ping.
    pub(super) async fn grow(&mut self, n: usize) -> anyhow::Result<()> {
        while self.minions.len() < n {
            let idx = self.minions.len();
            let root = self.dir.join(format!("minion-{idx:03}"));
            std::fs::create_dir_all(&root)?;
            std::fs::write(
                root.join("minion"),
                format!(
                    "master: 127.0.0.1\nmaster_port: {}\npublish_port: {}\nid: minion-{idx:03}\nroot_dir: {r}\n\
                     user: {}\nlog_level: warning\npidfile: {r}/minion.pid\nsock_dir: {r}/sock\n",
                    self.ret_port,
                    self.publish_port,
                    whoami(),
                    r = root.display(),
                ),
            )?;
            self.minions.push(daemon(
                Command::new(self.bin.join("salt-minion"))
                    .arg("-c")
                    .arg(&root)
                    .arg("--log-file")
                    .arg(root.join("minion.log")),
            )?);
        }
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let answered = self.cmd(&["test.ping"]).await.map(|(_, n)| n).unwrap_or(0);
            if answered >= n {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {answered} of {n} salt minions answer a ping after 300 s"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// `salt '*' FUNCTION ARGS --out=json`: its wall time and how many minions answered.
    pub(super) async fn cmd(&self, args: &[&str]) -> anyhow::Result<(Duration, usize)> {
        let started = Instant::now();
        let mut command = Command::new(self.bin.join("salt"));
        command
            .arg("-c")
            .arg(self.dir.join("conf"))
            .arg("*")
            .args(args)
            .args(["--out=json", "--static", "--timeout=30"])
            .stdin(Stdio::null())
            .stderr(Stdio::null());
        let out = tokio::task::spawn_blocking(move || command.output()).await??;
        let took = started.elapsed();
        let answered = serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_object().map(serde_json::Map::len))
            .unwrap_or(0);
        Ok((took, answered))
    }

    /// RSS of the master (all its processes) and of the first minion (all its processes), MB.
    pub(super) fn rss_mb(&self) -> (Option<f64>, Option<f64>) {
        let group_rss = |child: &Child| -> Option<f64> {
            let pgid = child.id();
            let mut kib = 0;
            for entry in std::fs::read_dir("/proc").ok()? {
                let Some(pid) = entry.ok().and_then(|e| e.file_name().to_str()?.parse::<u32>().ok()) else {
                    continue;
                };
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                    continue;
                };
                let fields: Vec<&str> = stat
                    .rsplit_once(')')
                    .map(|(_, r)| r)
                    .unwrap_or_default()
                    .split_whitespace()
                    .collect();
                if fields.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid) {
                    kib += super::procfs::rss_kib(pid).unwrap_or(0);
                }
            }
            Some(kib as f64 * 1024.0 / 1e6)
        };
        (
            self.master.as_ref().and_then(group_rss),
            self.minions.first().and_then(group_rss),
        )
    }
}

fn daemon(command: &mut Command) -> anyhow::Result<Child> {
    use std::os::unix::process::CommandExt;
    Ok(command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()?)
}

fn whoami() -> String {
    std::env::var("USER").unwrap_or_else(|_| "root".to_owned())
}
