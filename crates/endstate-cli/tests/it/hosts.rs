//! Helpers for tests that run agents as separate hosts: a server process, agent processes with
//! their own data directories (optionally inside their own network namespace), the CLI to observe
//! them, and guards that leave nothing running.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::{bin, repo_root, text};

/// How long the tests wait for anything that depends on processes, the network or the runner.
pub(crate) const PATIENCE: Duration = Duration::from_secs(90);

/// Polls `check` every 300 ms until it gives `Ok`; panics after `timeout` with what it waited for
/// and the last thing `check` said.
pub(crate) fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) => {
                assert!(
                    Instant::now() < deadline,
                    "timed out after {timeout:?} waiting for {what}; last: {last}"
                );
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

// === processes ===

/// A long-running process started by a test. Drop sends SIGTERM (and SIGCONT, in case it was
/// stopped), waits up to 25 s, then SIGKILLs it.
pub(crate) struct Proc {
    pub(crate) name: String,
    child: Option<Child>,
    lines: Option<mpsc::Receiver<String>>,
    pub(crate) seen: Vec<String>,
    pub(crate) log: PathBuf,
}

impl Proc {
    /// Starts `command` with stderr appended to `log`; stdout is collected line by line.
    pub(crate) fn spawn(name: &str, mut command: Command, log: &Path) -> Proc {
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            name: name.to_owned(),
            child: Some(child),
            lines: Some(lines),
            seen: Vec::new(),
            log: log.to_owned(),
        }
    }

    pub(crate) fn pid(&self) -> Pid {
        let child = self.child.as_ref().expect("the process was not killed");
        Pid::from_raw(i32::try_from(child.id()).unwrap())
    }

    pub(crate) fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).unwrap_or_else(|e| panic!("{signal} to {}: {e}", self.name));
    }

    /// Whether it still runs (it did not exit).
    pub(crate) fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `kill -9`: no shutdown path runs. Returns after the process is reaped.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits (at most 30 s) for a stdout line containing `needle` and returns it.
    pub(crate) fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        let lines = self.lines.as_ref().unwrap();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "{}: no line with {needle:?}; saw {:#?}\nlog:\n{}",
                    self.name,
                    self.seen,
                    self.log_tail()
                ),
            }
        }
    }

    /// The last 4 KiB of its log.
    pub(crate) fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut start = log.len().saturating_sub(4096);
        while !log.is_char_boundary(start) {
            start += 1;
        }
        log[start..].to_owned()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
        }
        let deadline = Instant::now() + Duration::from_secs(25);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The pids whose command line matches `pattern` (`pgrep -f`).
pub(crate) fn pgrep(pattern: &str) -> Vec<i32> {
    let out = Command::new("pgrep").args(["-f", pattern]).output().unwrap();
    text(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|pid| *pid != std::process::id().cast_signed())
        .collect()
}

pub(crate) fn alive(pid: i32) -> bool {
    // A zombie still answers kill(0); its state in /proc says it is gone.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
    kill(Pid::from_raw(pid), None).is_ok() && !matches!(state, Some(Some('Z' | 'X')) | None)
}

/// Last line of defence: when dropped (last, also after a failed assertion), SIGKILLs whatever
/// still runs from the test's temporary directory: only processes this test started have it in
/// their command line.
pub(crate) struct Reaper(pub(crate) PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in pgrep(&self.0.display().to_string()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Asserts (waiting up to 30 s) that nothing started from `dir` still runs.
pub(crate) fn assert_nothing_left(dir: &Path) {
    let pattern = dir.display().to_string();
    wait_until("every process of the test to end", Duration::from_secs(30), || {
        let left: Vec<i32> = pgrep(&pattern).into_iter().filter(|p| alive(*p)).collect();
        if left.is_empty() {
            Ok(())
        } else {
            let lines: Vec<String> = left
                .iter()
                .map(|p| {
                    let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                    format!("{p}: {}", text(&cmdline).replace('\0', " "))
                })
                .collect();
            Err(format!("left running:\n{}", lines.join("\n")))
        }
    });
}

/// A free TCP port on `ip` (bound, then released).
pub(crate) fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// === the server and the CLI ===

/// An `endstate server` process.
pub(crate) struct Server {
    pub(crate) proc: Proc,
    pub(crate) url: String,
    pub(crate) agent_addr: String,
    pub(crate) admin_token: Option<String>,
    /// The server's CA, which the CLI pins.
    pub(crate) ca_file: PathBuf,
    /// Its SHA-256, which agents pin at enrolment.
    pub(crate) ca_sha256: String,
}

/// Starts `endstate server` on `data`, its API on `ip` (a free port), its agent listener on
/// `agent_listen`.
pub(crate) fn start_server(root: &Path, data: &Path, ip: &str, agent_listen: &str) -> Server {
    start_server_on(root, data, &format!("{ip}:0"), agent_listen)
}

/// `start_server` with the API on `api_listen`.
pub(crate) fn start_server_on(root: &Path, data: &Path, api_listen: &str, agent_listen: &str) -> Server {
    start_server_with(root, data, api_listen, agent_listen, &[])
}

/// `start_server_on` with more flags for `endstate server`.
pub(crate) fn start_server_with(
    root: &Path,
    data: &Path,
    api_listen: &str,
    agent_listen: &str,
    flags: &[&str],
) -> Server {
    let mut command = bin();
    command
        .args([
            "server",
            "--listen",
            api_listen,
            "--agent-listen",
            agent_listen,
            "--data-dir",
        ])
        .arg(data)
        .arg("--agents-on-one-machine")
        .args(["--dynamic-ports", &crate::ports_window(data)])
        .args(flags)
        .env("ENDSTATE_CONFIG", root.join("client.json"))
        .env("ENDSTATE_LOG", "info,tower_http=warn")
        .current_dir(repo_root());
    let mut proc = Proc::spawn("server", command, &root.join("server.log"));
    let agents = proc.wait_for_line("agents connect to wss://");
    let listening = proc.wait_for_line("endstate server listening on");
    let agent_addr = agents
        .split("wss://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_owned();
    let admin_token = proc
        .seen
        .iter()
        .find_map(|l| l.strip_prefix("admin token written to "))
        .and_then(|rest| rest.split(" (mode 0600)").next())
        .map(|path| std::fs::read_to_string(path).unwrap().trim().to_owned());
    let url = listening[listening.find("https://").unwrap()..].trim().to_owned();
    Server {
        proc,
        url,
        agent_addr,
        admin_token,
        ca_file: data.join("pki").join("ca.pem"),
        ca_sha256: agents
            .split("(CA sha256 ")
            .nth(1)
            .and_then(|rest| rest.split(')').next())
            .unwrap()
            .to_owned(),
    }
}

/// The CLI pointed at one server.
#[derive(Clone)]
pub(crate) struct Cli {
    pub(crate) url: String,
    pub(crate) token: String,
    pub(crate) config: PathBuf,
    pub(crate) ca_file: PathBuf,
}

impl Cli {
    pub(crate) fn run(&self, args: &[&str]) -> Output {
        bin()
            .args(["--server", &self.url, "--token", &self.token])
            .arg("--ca-file")
            .arg(&self.ca_file)
            .args(args)
            .env("ENDSTATE_CONFIG", &self.config)
            .current_dir(repo_root())
            .output()
            .unwrap()
    }

    /// Runs a command that must succeed; its stdout.
    pub(crate) fn ok(&self, args: &[&str]) -> Result<String, String> {
        let out = self.run(args);
        if out.status.success() {
            Ok(text(&out.stdout))
        } else {
            Err(format!("endstate {args:?}: {:?}: {}", out.status, text(&out.stderr)))
        }
    }

    /// `endstate timeline -o json --limit 1000 [ARGS]`, oldest first.
    pub(crate) fn timeline(&self, args: &[&str]) -> Result<Vec<Event>, String> {
        let mut all = vec!["timeline", "-o", "json", "--limit", "1000"];
        all.extend_from_slice(args);
        let out = self.ok(&all)?;
        Ok(out
            .lines()
            .map(|line| Event(serde_json::from_str(line).unwrap()))
            .collect())
    }

    /// `endstate hosts -o json`: name → liveness.
    pub(crate) fn liveness(&self) -> Result<BTreeMap<String, String>, String> {
        let out = self.ok(&["hosts", "-o", "json"])?;
        let hosts: Vec<serde_json::Value> = serde_json::from_str(&out).map_err(|e| e.to_string())?;
        Ok(hosts
            .iter()
            .map(|h| {
                (
                    h["name"].as_str().unwrap().to_owned(),
                    h["liveness"].as_str().unwrap().to_owned(),
                )
            })
            .collect())
    }

    /// Waits until every host of `names` has `liveness` (`reachable`, `unreachable`).
    pub(crate) fn wait_liveness(&self, names: &[&str], liveness: &str) {
        wait_until(&format!("{names:?} to be {liveness}"), PATIENCE, || {
            let all = self.liveness()?;
            if names.iter().all(|n| all.get(*n).map(String::as_str) == Some(liveness)) {
                Ok(())
            } else {
                Err(format!("{all:?}"))
            }
        });
    }

    /// A one-time join token for `host` with `labels`.
    pub(crate) fn join_token(&self, host: &str, labels: &str) -> String {
        let out = self
            .ok(&[
                "token", "create", "--join", "--ttl", "10m", "--labels", labels, "--host", host, "-o", "json",
            ])
            .unwrap();
        let created: serde_json::Value = serde_json::from_str(&out).unwrap();
        created["secret"].as_str().unwrap().to_owned()
    }

    /// `endstate apply DIR --yes` with `extra` flags; panics unless it exits with `code`.
    pub(crate) fn apply(&self, dir: &Path, extra: &[&str], code: i32) -> Output {
        let dir = dir.display().to_string();
        let mut args = vec!["apply", dir.as_str(), "--yes"];
        args.extend_from_slice(extra);
        let out = self.run(&args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "endstate {args:?}:\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        out
    }
}

/// One timeline event, as `timeline -o json` prints it.
#[derive(Clone, Debug)]
pub(crate) struct Event(pub(crate) serde_json::Value);

impl Event {
    pub(crate) fn seq(&self) -> u64 {
        self.0["seq"].as_u64().unwrap()
    }
    pub(crate) fn kind(&self) -> &str {
        self.0["kind"].as_str().unwrap_or_default()
    }
    pub(crate) fn host(&self) -> &str {
        self.0["host"].as_str().unwrap_or_default()
    }
    pub(crate) fn component(&self) -> &str {
        self.0["component"].as_str().unwrap_or_default()
    }
    pub(crate) fn summary(&self) -> &str {
        self.0["summary"].as_str().unwrap_or_default()
    }
    pub(crate) fn data(&self, key: &str) -> &serde_json::Value {
        &self.0["data"][key]
    }
    pub(crate) fn data_str(&self, key: &str) -> &str {
        self.0["data"][key].as_str().unwrap_or_default()
    }
    /// Milliseconds since the epoch.
    pub(crate) fn time_ms(&self) -> i64 {
        self.0["time"]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_millisecond()
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "#{} {} {} {}",
            self.seq(),
            self.0["time"].as_str().unwrap_or_default(),
            self.kind(),
            self.summary()
        )
    }
}

pub(crate) fn show(events: &[&Event]) -> String {
    events.iter().map(|e| format!("  {e}\n")).collect()
}

// === agents ===

/// Where one agent keeps its things in the test's directory.
#[derive(Clone)]
pub(crate) struct AgentHome {
    pub(crate) name: String,
    pub(crate) labels: String,
    pub(crate) dir: PathBuf,
    pub(crate) log: PathBuf,
}

impl AgentHome {
    pub(crate) fn new(root: &Path, name: &str, labels: &str) -> AgentHome {
        let dir = root.join("agents").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        AgentHome {
            name: name.to_owned(),
            labels: labels.to_owned(),
            dir,
            log: root.join(format!("{name}.log")),
        }
    }

    /// The `pgrep -f` pattern of the processes of one component this agent runs.
    pub(crate) fn instances_pattern(&self, system: &str, component: &str) -> String {
        format!("{}/versions/{system}/{component}/", self.dir.display())
    }

    /// The pids of the live processes of `system/component` on this agent.
    pub(crate) fn instance_pids(&self, system: &str, component: &str) -> Vec<i32> {
        pgrep(&self.instances_pattern(system, component))
            .into_iter()
            .filter(|p| alive(*p))
            .collect()
    }

    /// Waits until exactly one process of `system/component` runs here, not one of `not`; its pid.
    pub(crate) fn wait_one_instance(&self, system: &str, component: &str, not: &[i32]) -> i32 {
        wait_until(
            &format!("one process of {system}/{component} on {} (not {not:?})", self.name),
            PATIENCE,
            || match self.instance_pids(system, component).as_slice() {
                [pid] if !not.contains(pid) => Ok(*pid),
                pids => Err(format!("{pids:?}\nagent log:\n{}", tail(&self.log))),
            },
        )
    }

    /// `endstate agent` for this home, inside `netns` when given; with `join_token` on the first start.
    pub(crate) fn start(
        &self,
        server: &Server,
        artifact_root: &Path,
        join_token: Option<&str>,
        netns: Option<&str>,
    ) -> Proc {
        let exe = env!("CARGO_BIN_EXE_endstate");
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, exe]);
                c
            }
            None => Command::new(exe),
        };
        command
            .args([
                "agent",
                "--server",
                &server.url,
                "--ca-sha256",
                &server.ca_sha256,
                "--name",
                &self.name,
                "--labels",
                &self.labels,
            ])
            .arg("--data-dir")
            .arg(&self.dir)
            .arg("--artifact-root")
            .arg(artifact_root)
            .args(["--keepalive", "1s", "--exit-with-parent"])
            .env_remove("ENDSTATE_SERVER")
            .env_remove("ENDSTATE_TOKEN")
            .env_remove("ENDSTATE_JOIN_TOKEN")
            .env("ENDSTATE_CONFIG", self.dir.join("unused-client.json"))
            .env("ENDSTATE_LOG", "info")
            .current_dir(&self.dir);
        if let Some(token) = join_token {
            command.env("ENDSTATE_JOIN_TOKEN", token);
        }
        Proc::spawn(&format!("agent {}", self.name), command, &self.log)
    }

    /// The seq the server acknowledged last, from the buffer's `state` file (0 before any ack).
    pub(crate) fn acked_seq(&self) -> u64 {
        std::fs::read_to_string(self.dir.join("buffer").join("state"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("acked "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The observations in the buffer that the server has not acknowledged, in seq order.
    pub(crate) fn pending(&self) -> Vec<serde_json::Value> {
        let acked = self.acked_seq();
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.join("buffer"))
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|e| e == "jsonl"));
        files.sort();
        let mut out = Vec::new();
        for file in files {
            for line in std::fs::read_to_string(&file).unwrap_or_default().lines() {
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(line)
                    && value["seq"].as_u64().is_some_and(|s| s > acked)
                {
                    out.push(value);
                }
            }
        }
        out
    }
}

/// The last 3 KiB of a file.
pub(crate) fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut start = text.len().saturating_sub(3072);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_owned()
}

// === specs ===

pub(crate) const SYSTEM: &str = "apiVersion: endstate/v1\nkind: System\nname: lab\nowners: [team-lab]\n";

/// A copy of `example-service` under `root/artifacts`, so a rebuild during the test changes nothing.
pub(crate) fn example_service(root: &Path) -> PathBuf {
    let built = Path::new(env!("CARGO_BIN_EXE_endstate")).with_file_name("example-service");
    assert!(
        built.exists(),
        "{} is missing: build it with `cargo build --bin example-service` (cargo test --workspace builds it)",
        built.display()
    );
    let dir = root.join("artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("example-service");
    if !copy.exists() {
        std::fs::copy(&built, &copy).unwrap();
    }
    copy
}

/// An executable script under `root/artifacts`.
pub(crate) fn script(root: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = root.join("artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A component of system `lab` running `example-service` with an HTTP health probe, one instance on
/// each host whose zone is one of `zones`.
pub(crate) fn service(name: &str, binary: &Path, zones: &str) -> String {
    format!(
        "apiVersion: endstate/v1\nkind: Component\nname: {name}\nsystem: lab\nartifact:\n  version: \"1.0.0\"\n  path: {}\ncommand: example-service\nargs: [\"--listen\", \"127.0.0.1:{{{{ ports.http }}}}\", \"--name\", \"{name}-{{{{ instance.index }}}}\"]\nports:\n  - name: http\nhealth:\n  http: {{ port: http, path: /health }}\n  interval: 1s\n  timeout: 1s\nplacement:\n  selector: {{ zone: [{zones}] }}\n  count: {{ per_host: 1 }}\n",
        binary.display()
    )
}

/// A component of system `lab` running a script, one instance per host of `zones`. With `quiet`, a
/// health probe that fails but never reaches its threshold: no health observation at all (without
/// a probe, the agent observes health with every state change, at the same time).
pub(crate) fn script_component(name: &str, script: &Path, zones: &str, quiet: bool) -> String {
    let health = if quiet {
        "health:\n  exec: { command: /bin/false }\n  interval: 1s\n  timeout: 1s\n  unhealthy_threshold: 1000000\n"
    } else {
        ""
    };
    format!(
        "apiVersion: endstate/v1\nkind: Component\nname: {name}\nsystem: lab\nartifact:\n  version: \"1.0.0\"\n  path: {}\ncommand: {}\n{health}placement:\n  selector: {{ zone: [{zones}] }}\n  count: {{ per_host: 1 }}\n",
        script.display(),
        script.file_name().unwrap().to_str().unwrap()
    )
}

/// Writes a spec directory: the `lab` system and `components`.
pub(crate) fn write_spec(dir: &Path, components: &[String]) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("systems.yaml"), SYSTEM).unwrap();
    std::fs::write(dir.join("components.yaml"), components.join("---\n")).unwrap();
    dir.to_owned()
}

// === checks on the timeline ===

/// The `instance.transitioned` events of `component` slot `slot` on `host`, in seq order.
pub(crate) fn transitions<'a>(events: &'a [Event], host: &str, component: &str, slot: u64) -> Vec<&'a Event> {
    events
        .iter()
        .filter(|e| {
            e.kind() == "instance.transitioned"
                && e.host() == host
                && e.component() == component
                && e.data("slot").as_u64() == Some(slot)
        })
        .collect()
}

/// Asserts that no transition is recorded twice: the same state, status and time (an observation
/// stored twice). The status is part of the key because a health result observed in the same
/// millisecond as a state change is a transition of its own, with the same state and time.
pub(crate) fn assert_no_duplicates(transitions: &[&Event]) {
    let mut seen = std::collections::BTreeSet::new();
    for event in transitions {
        let key = (
            event.data_str("state").to_owned(),
            event.data_str("status").to_owned(),
            event.time_ms(),
        );
        assert!(
            seen.insert(key.clone()),
            "transition {key:?} recorded twice:\n{}",
            show(transitions)
        );
    }
}

/// Asserts that times do not go back in seq order.
pub(crate) fn assert_in_order(transitions: &[&Event]) {
    for pair in transitions.windows(2) {
        assert!(
            pair[0].seq() < pair[1].seq() && pair[0].time_ms() <= pair[1].time_ms(),
            "out of order: {} then {}:\n{}",
            pair[0],
            pair[1],
            show(transitions)
        );
    }
}

// === network namespaces ===

/// A network namespace joined to the host by a veth pair, removed with its links on drop.
pub(crate) struct Netns {
    pub(crate) name: String,
    pub(crate) host_if: String,
    pub(crate) host_ip: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), text(&out.stderr).trim()))
    }
}

impl Netns {
    /// A namespace `es-<random>` with `10.200.<n>.2/30` inside and `10.200.<n>.1/30` on the host
    /// side; `Err` says why there is none (not root, no `ip`, or setting it up failed). Set
    /// `ENDSTATE_TEST_NO_NETNS=1` to test the fallback.
    pub(crate) fn create() -> Result<Netns, String> {
        if std::env::var_os("ENDSTATE_TEST_NO_NETNS").is_some() {
            return Err("ENDSTATE_TEST_NO_NETNS is set".into());
        }
        if !nix::unistd::Uid::effective().is_root() {
            return Err("not root".into());
        }
        if Command::new("ip").arg("-V").output().is_err() {
            return Err("no `ip` command".into());
        }
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
            ^ std::process::id();
        let tag = format!("{:06x}", seed & 0xff_ffff);
        let used = Command::new("ip")
            .args(["-4", "-o", "addr"])
            .output()
            .map_err(|e| e.to_string())?;
        let used = text(&used.stdout);
        let n = (0..250u32)
            .map(|i| (seed + i) % 250 + 3)
            .find(|n| !used.contains(&format!("10.200.{n}.")))
            .ok_or("no free 10.200.x.0/30 subnet")?;
        let netns = Netns {
            name: format!("es-{tag}"),
            host_if: format!("esh{tag}"),
            host_ip: format!("10.200.{n}.1"),
        };
        let ns_if = format!("esn{tag}");
        let ns_ip = format!("10.200.{n}.2");
        // From here on, drop removes whatever was made.
        ip(&["netns", "add", &netns.name])?;
        ip(&["link", "add", &netns.host_if, "type", "veth", "peer", "name", &ns_if])?;
        ip(&["link", "set", &ns_if, "netns", &netns.name])?;
        ip(&["addr", "add", &format!("{}/30", netns.host_ip), "dev", &netns.host_if])?;
        ip(&["link", "set", &netns.host_if, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", netns.name.as_str(), "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        inside(&["addr", "add", &format!("{ns_ip}/30"), "dev", &ns_if])?;
        inside(&["link", "set", &ns_if, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// Whether process `pid` runs in this namespace.
    pub(crate) fn holds(&self, pid: i32) -> bool {
        let out = Command::new("ip")
            .args(["netns", "identify", &pid.to_string()])
            .output()
            .unwrap();
        text(&out.stdout).split_whitespace().any(|name| name == self.name)
    }

    /// Cuts the namespace off: the host side of the veth pair goes down.
    pub(crate) fn cut(&self) {
        ip(&["link", "set", &self.host_if, "down"]).unwrap();
    }

    pub(crate) fn heal(&self) {
        ip(&["link", "set", &self.host_if, "up"]).unwrap();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Whatever still runs inside was started by this test.
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &self.name]).output() {
            for pid in text(&out.stdout).lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}
