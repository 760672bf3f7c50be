//! A real `endstate server` process: started from the release binary with a data directory,
//! its addresses and admin token read from its stdout, killed with SIGKILL, restarted on the
//! same data directory and ports.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long a server has to print that it listens.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running server process.
pub(crate) struct ServerProc {
    child: Child,
    pub(crate) pid: u32,
    /// `http://ADDR`
    pub(crate) http: String,
    pub(crate) http_addr: SocketAddr,
    pub(crate) agent_addr: SocketAddr,
    /// The admin token, when this start created it (the first start on a data directory).
    pub(crate) admin_token: Option<String>,
    /// From the spawn to the "listening" line.
    pub(crate) ready_after: Duration,
}

/// How to start a server.
#[derive(Clone, Debug)]
pub(crate) struct ServerSpec {
    pub(crate) exe: PathBuf,
    pub(crate) data_dir: PathBuf,
    /// `--listen`, `127.0.0.1:0` the first time.
    pub(crate) listen: String,
    /// `--agent-listen`, `127.0.0.1:0` the first time.
    pub(crate) agent_listen: String,
    /// `--keepalive-interval`, when not the default.
    pub(crate) keepalive: Option<String>,
    /// Serve the API over HTTPS (the default of `endstate server`); otherwise `--insecure-http`:
    /// the other groups measure the server, not TLS.
    pub(crate) https: bool,
}

impl ServerSpec {
    /// A first start in `data_dir`: loopback, free ports, the default keepalive.
    pub(crate) fn local(exe: &Path, data_dir: PathBuf) -> ServerSpec {
        ServerSpec {
            exe: exe.to_path_buf(),
            data_dir,
            listen: "127.0.0.1:0".into(),
            agent_listen: "127.0.0.1:0".into(),
            keepalive: None,
            https: false,
        }
    }
}

/// `endstate agent` enrolling with `token` into the server at `server` as `host`, its data in
/// `data_dir`, its log (stderr) in `log`; stdin and stdout closed. The caller adds what it
/// needs (the log level) and spawns it.
pub(crate) fn agent_command(
    exe: &Path,
    server: &str,
    host: &str,
    (data_dir, artifacts): (&Path, &Path),
    token: &endstate_api::CreatedJoinToken,
    log: &Path,
) -> anyhow::Result<Command> {
    let mut command = Command::new(exe);
    // `endstate agent`, or the agent's own binary, which has no subcommand.
    if exe.file_name().is_none_or(|name| name != "endstate-agent") {
        command.arg("agent");
    }
    command
        .arg("--server")
        .arg(server)
        .arg("--name")
        .arg(host)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--artifact-root")
        .arg(artifacts)
        .args(["--ca-sha256", &token.ca_sha256])
        .env("ENDSTATE_JOIN_TOKEN", &token.secret)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?);
    Ok(command)
}

/// An agent process; stopped (SIGTERM, then SIGKILL after 10 s) when dropped.
pub(crate) struct AgentProc(pub(crate) std::process::Child);

impl AgentProc {
    pub(crate) fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
        for _ in 0..200 {
            if self.0.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl ServerProc {
    /// The admin token this start created (the first start on a data directory).
    pub(crate) fn admin(&self) -> anyhow::Result<String> {
        self.admin_token
            .clone()
            .ok_or_else(|| anyhow::anyhow!("the server printed no admin token"))
    }

    /// Starts the server and waits until it listens. Its log (stderr) goes to `server.log` in
    /// the data directory, at level warn, so logging costs the server next to nothing.
    pub(crate) async fn start(spec: &ServerSpec) -> anyhow::Result<ServerProc> {
        std::fs::create_dir_all(&spec.data_dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(spec.data_dir.join("server.log"))?;
        let mut command = Command::new(&spec.exe);
        command
            .arg("server")
            .arg("--listen")
            .arg(&spec.listen)
            .arg("--agent-listen")
            .arg(&spec.agent_listen)
            .arg("--data-dir")
            .arg(&spec.data_dir)
            .args(["--rate-limit", "1000000", "--rate-burst", "1000000"])
            .env("ENDSTATE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        if let Some(keepalive) = &spec.keepalive {
            command.arg("--keepalive-interval").arg(keepalive);
        }
        if !spec.https {
            // The API over plain HTTP on loopback: these figures are the server's, not TLS's
            // (the agent link is mutual TLS as always). The `tls` group measures the difference.
            command.arg("--insecure-http");
        }
        let started = Instant::now();
        let mut child = command
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", spec.exe.display()))?;
        let pid = child.id();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("the server's stdout is not piped"))?;
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Nobody listens any more: keep draining so the server never blocks on stdout.
                    continue;
                }
            }
        });
        let mut agent_addr = None;
        let mut admin_token = None;
        let deadline = started + START_TIMEOUT;
        let mut server = ServerProc {
            child,
            pid,
            http: String::new(),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            agent_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_token: None,
            ready_after: Duration::ZERO,
        };
        loop {
            let line = match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(line)) => line,
                Ok(None) => {
                    let status = server.child.try_wait().ok().flatten();
                    anyhow::bail!(
                        "the server exited before listening ({status:?}); see {}",
                        spec.data_dir.join("server.log").display()
                    );
                }
                Err(_) => anyhow::bail!("the server did not listen within {START_TIMEOUT:?}"),
            };
            if let Some(rest) = line.strip_prefix("agents connect to wss://") {
                let addr = rest.split('/').next().unwrap_or_default();
                agent_addr = Some(addr.parse::<SocketAddr>()?);
            } else if let Some(rest) = line.strip_prefix("admin token written to ") {
                let path = rest.split(" (mode 0600)").next().unwrap_or_default();
                admin_token = Some(std::fs::read_to_string(path)?.trim().to_owned());
            } else if let Some(url) = line.strip_prefix("endstate server listening on ") {
                let (scheme, addr) = url.trim().split_once("://").unwrap_or(("http", url.trim()));
                server.http_addr = addr.parse()?;
                server.http = format!("{scheme}://{}", server.http_addr);
                break;
            }
        }
        server.ready_after = started.elapsed();
        server.agent_addr = agent_addr.ok_or_else(|| anyhow::anyhow!("the server printed no agent address"))?;
        server.admin_token = admin_token;
        Ok(server)
    }

    /// The spec to start this server again on the same data directory and ports.
    pub(crate) fn restart_spec(&self, spec: &ServerSpec) -> ServerSpec {
        ServerSpec {
            listen: self.http_addr.to_string(),
            agent_listen: self.agent_addr.to_string(),
            ..spec.clone()
        }
    }

    /// SIGKILL, and wait for it.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub(crate) async fn stop(&mut self, grace: Duration) {
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill();
    }

    /// Whether it still runs.
    pub(crate) fn running(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if self.running() {
            self.kill();
        }
    }
}

/// The release `endstate` binary next to this harness (cargo builds both into the same directory).
pub(crate) fn endstate_exe() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?.with_file_name("endstate");
    anyhow::ensure!(
        exe.is_file(),
        "{} is missing: build it first (`cargo build --release --bin endstate`; `cargo xtask bench` does)",
        exe.display()
    );
    Ok(exe)
}

/// The last lines of a log, for errors.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Submits one spec document (`bench.yaml`) as a revision, as `endstate apply` would.
pub(crate) async fn submit_spec(
    client: &endstate_client::Client,
    content: String,
    message: &str,
) -> anyhow::Result<()> {
    client
        .submit(&endstate_api::SubmitRevision {
            documents: vec![endstate_api::Document {
                path: "bench.yaml".into(),
                content,
            }],
            message: message.into(),
            source: endstate_api::RevisionSource {
                kind: "cli".into(),
                reference: None,
            },
            parent: None,
            options: Default::default(),
            basis: None,
        })
        .await?;
    Ok(())
}
