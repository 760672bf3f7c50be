//! Health of an instance: one [`probe`] (http, tcp or exec, the IO) and a [`HealthTracker`] that
//! turns a series of probe results into a state with thresholds (pure).
//!
//! # Expected flow
//!
//! Every `interval` the caller runs [`probe`] with the component's timeout and feeds
//! [`ProbeResult::ok`] to [`HealthTracker::observe`], which says when the state changes.
//!
//! # Guarantees
//!
//! - [`probe`] never fails and never takes much longer than its timeout: every problem (refused
//!   connection, bad status, timeout, missing program) is a failed [`ProbeResult`] whose `detail`
//!   says what happened.
//! - HTTP probes go to `127.0.0.1`, use no proxy, follow no redirect (a 3xx is a failure) and open
//!   a new connection each time, so a probe sees what a new client would.
//! - An exec probe runs as the leader of its own process group with exactly the given environment,
//!   in the given working directory (the instance's, when the runtime probes) and with stdin from
//!   `/dev/null`. At the timeout the whole group is sent SIGKILL; after a normal
//!   exit, members the command left behind in its group are sent SIGKILL too, so probes never pile
//!   up. The first [`DETAIL_OUTPUT_LIMIT`] bytes of its stdout go into the detail; the rest is read and dropped.
//!
//! # Caveats
//!
//! - Probes are IPv4 loopback only (`127.0.0.1`); an instance listening on `::1` alone fails them.
//! - A command that leaves its process group (`setsid`) escapes the kill, as with the supervisor.
//! - Killing the leftovers of an exited exec probe signals its group id after the leader was
//!   reaped; like the supervisor's check, a reused id in that instant could in theory be hit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio::process::Command;

/// How many bytes of an exec probe's stdout are kept in its [`ProbeResult::detail`].
pub const DETAIL_OUTPUT_LIMIT: usize = 512;

/// One probe of one instance, with its ports already resolved to numbers.
///
/// The spec's `Probe` names a declared port (`port: http`); the agent resolves it with the ports
/// it allocated to the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// `GET http://127.0.0.1:{port}{path}`; a 2xx status is healthy.
    Http {
        /// The port on loopback.
        port: u16,
        /// The path, starting with `/` (one is added when missing).
        path: String,
    },
    /// A TCP connect to `127.0.0.1:{port}`.
    Tcp {
        /// The port on loopback.
        port: u16,
    },
    /// A command; exit status 0 is healthy.
    Exec {
        /// The program; absolute, or found through the `PATH` of `env`.
        program: PathBuf,
        /// Its arguments.
        args: Vec<String>,
        /// Its whole environment: nothing is inherited from the agent.
        env: BTreeMap<String, String>,
        /// Its working directory (the instance's); the agent's own when none.
        work_dir: Option<PathBuf>,
        /// The user and group ids it runs as: the instance's (`run_as`), so a probe never runs
        /// with more rights than what it probes; the agent's own when none.
        run_as: Option<(u32, u32)>,
    },
}

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    /// Whether the probe passed.
    pub ok: bool,
    /// What happened, for people: `HTTP 200 OK`, `connection refused`, `timed out after 2s`, ...
    pub detail: String,
}

/// The health of an instance as far as its probes tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthState {
    /// Not enough results yet.
    Unknown,
    /// `healthy_threshold` consecutive passes.
    Healthy,
    /// `unhealthy_threshold` consecutive failures.
    Unhealthy,
}

/// Turns consecutive probe results into a [`HealthState`].
///
/// From any state, `healthy_threshold` consecutive passes make it `Healthy` and
/// `unhealthy_threshold` consecutive failures make it `Unhealthy`; a result of the other kind
/// starts the count again. A threshold of 0 counts as 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthTracker {
    /// Consecutive passes that make an instance healthy.
    pub healthy_threshold: u32,
    /// Consecutive failures that make an instance unhealthy.
    pub unhealthy_threshold: u32,
    state: HealthState,
    // Invariant: at most one of the two is non-zero.
    passes: u32,
    failures: u32,
}

// === impl HealthTracker ===

impl HealthTracker {
    /// A tracker in state `Unknown`.
    #[must_use]
    pub fn new(healthy_threshold: u32, unhealthy_threshold: u32) -> Self {
        Self {
            healthy_threshold,
            unhealthy_threshold,
            state: HealthState::Unknown,
            passes: 0,
            failures: 0,
        }
    }

    /// The current state.
    #[must_use]
    pub fn state(&self) -> HealthState {
        self.state
    }

    /// Counts one probe result; returns the new state when it changed.
    pub fn observe(&mut self, ok: bool) -> Option<HealthState> {
        let next = if ok {
            self.failures = 0;
            self.passes = self.passes.saturating_add(1);
            (self.passes >= self.healthy_threshold.max(1)).then_some(HealthState::Healthy)
        } else {
            self.passes = 0;
            self.failures = self.failures.saturating_add(1);
            (self.failures >= self.unhealthy_threshold.max(1)).then_some(HealthState::Unhealthy)
        };
        match next {
            Some(next) if next != self.state => {
                self.state = next;
                Some(next)
            }
            _ => None,
        }
    }
}

// === probes ===

/// Runs one probe, giving up (and killing an exec probe's process group) after `timeout`.
pub async fn probe(probe: &Probe, timeout: Duration) -> ProbeResult {
    match probe {
        Probe::Http { port, path } => http(*port, path, timeout).await,
        Probe::Tcp { port } => tcp(*port, timeout).await,
        Probe::Exec {
            program,
            args,
            env,
            work_dir,
            run_as,
        } => exec(program, args, env, (work_dir.as_deref(), *run_as), timeout).await,
    }
}

fn fail(detail: impl Into<String>) -> ProbeResult {
    ProbeResult {
        ok: false,
        detail: detail.into(),
    }
}

async fn http(port: u16, path: &str, timeout: Duration) -> ProbeResult {
    let slash = if path.starts_with('/') { "" } else { "/" };
    let url = format!("http://127.0.0.1:{port}{slash}{path}");
    // A client per probe: no pooled connection hides a listener that stopped accepting, and
    // probes run seconds apart. No proxy: the agent reads no environment.
    let client = match reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .timeout(timeout)
        .build()
    {
        Ok(client) => client,
        Err(error) => return fail(format!("GET {url}: could not build an HTTP client: {error}")),
    };
    // reqwest's timeout covers the body too; the outer one is a guarantee, not the usual path.
    match tokio::time::timeout(timeout, client.get(&url).send()).await {
        Err(_elapsed) => fail(format!("GET {url}: timed out after {timeout:?}")),
        Ok(Err(error)) if error.is_timeout() => fail(format!("GET {url}: timed out after {timeout:?}")),
        Ok(Err(error)) => fail(format!("GET {url}: {}", crate::error_chain(&error))),
        Ok(Ok(response)) => {
            let status = response.status();
            ProbeResult {
                ok: status.is_success(),
                detail: format!("GET {url}: HTTP {status}"),
            }
        }
    }
}

async fn tcp(port: u16, timeout: Duration) -> ProbeResult {
    let address = format!("127.0.0.1:{port}");
    match tokio::time::timeout(timeout, TcpStream::connect(("127.0.0.1", port))).await {
        Err(_elapsed) => fail(format!("connect {address}: timed out after {timeout:?}")),
        Ok(Err(error)) => fail(format!("connect {address}: {error}")),
        Ok(Ok(_stream)) => ProbeResult {
            ok: true,
            detail: format!("connect {address}: connected"),
        },
    }
}

async fn exec(
    program: &Path,
    args: &[String],
    env: &BTreeMap<String, String>,
    (work_dir, run_as): (Option<&Path>, Option<(u32, u32)>),
    timeout: Duration,
) -> ProbeResult {
    let shown = program.display();
    let mut command = Command::new(program);
    if let Some(work_dir) = work_dir {
        command.current_dir(work_dir);
    }
    if let Some((uid, gid)) = run_as {
        command.gid(gid).uid(uid);
    }
    let mut child = match command
        .args(args)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(error) => return fail(format!("{shown}: could not start: {error}")),
    };
    let group = crate::group::led_by(&child);
    let kill_group = || crate::group::kill_now(group);
    let stdout = child.stdout.take();
    let run = async {
        // Read while waiting, so a chatty command never blocks on a full pipe. Once the leader
        // exited, what it left in its group is killed, which also closes the pipe it may hold.
        tokio::join!(read_bounded(stdout, DETAIL_OUTPUT_LIMIT), async {
            let status = child.wait().await;
            kill_group();
            status
        })
    };
    let outcome = tokio::time::timeout(timeout, run).await;
    match outcome {
        Err(_elapsed) => {
            // The leader is not reaped yet, so the group id is still ours.
            kill_group();
            let _ = child.wait().await;
            fail(format!(
                "{shown}: timed out after {timeout:?}; its process group was killed"
            ))
        }
        Ok((_, Err(error))) => fail(format!("{shown}: could not wait for it: {error}")),
        Ok((output, Ok(status))) => {
            let output = String::from_utf8_lossy(&output);
            let output = output.trim();
            let what = match (status.code(), status_signal(&status)) {
                (Some(code), _) => format!("exit code {code}"),
                (None, Some(signal)) => format!("killed by signal {signal}"),
                (None, None) => "exited".to_owned(),
            };
            ProbeResult {
                ok: status.success(),
                detail: if output.is_empty() {
                    format!("{shown}: {what}")
                } else {
                    format!("{shown}: {what}: {output}")
                },
            }
        }
    }
}

fn status_signal(status: &std::process::ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    status.signal()
}

/// Reads `stream` to its end, keeping the first `limit` bytes.
async fn read_bounded(stream: Option<impl AsyncRead + Unpin>, limit: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut stream) = stream else {
        return kept;
    };
    let mut buf = [0_u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use HealthState::{Healthy, Unhealthy, Unknown};

    /// Feeds `results` (`+` pass, `-` failure) to a tracker and compares the state after each.
    #[track_caller]
    fn check(healthy_threshold: u32, unhealthy_threshold: u32, results: &str, expect: &[HealthState]) {
        let mut tracker = HealthTracker::new(healthy_threshold, unhealthy_threshold);
        assert_eq!(tracker.state(), Unknown);
        let mut states = Vec::new();
        for result in results.chars() {
            let before = tracker.state();
            let changed = tracker.observe(result == '+');
            let after = tracker.state();
            assert_eq!(
                changed,
                (after != before).then_some(after),
                "{results}: observe says what changed"
            );
            states.push(after);
        }
        assert_eq!(
            states, expect,
            "thresholds {healthy_threshold}/{unhealthy_threshold}, results {results}"
        );
    }

    #[test]
    fn thresholds() {
        for (healthy, unhealthy, results, expect) in [
            (1, 1, "+", &[Healthy][..]),
            (1, 1, "-", &[Unhealthy]),
            (1, 1, "+-+", &[Healthy, Unhealthy, Healthy]),
            (2, 3, "+", &[Unknown]),
            (2, 3, "++", &[Unknown, Healthy]),
            (2, 3, "+-+", &[Unknown, Unknown, Unknown]),
            (2, 3, "--", &[Unknown, Unknown]),
            (2, 3, "---", &[Unknown, Unknown, Unhealthy]),
            // Healthy stays healthy through fewer failures than the threshold.
            (
                2,
                3,
                "++--+--",
                &[Unknown, Healthy, Healthy, Healthy, Healthy, Healthy, Healthy],
            ),
            (2, 3, "++---", &[Unknown, Healthy, Healthy, Healthy, Unhealthy]),
            // Unhealthy needs the full run of passes to recover.
            (
                2,
                3,
                "---+-++",
                &[Unknown, Unknown, Unhealthy, Unhealthy, Unhealthy, Unhealthy, Healthy],
            ),
            // A threshold of 0 counts as 1.
            (0, 0, "+-", &[Healthy, Unhealthy]),
        ] {
            check(healthy, unhealthy, results, expect);
        }
    }

    #[test]
    fn counts_do_not_overflow() {
        let mut tracker = HealthTracker::new(u32::MAX, 1);
        tracker.passes = u32::MAX - 1;
        assert_eq!(tracker.observe(true), Some(Healthy));
        assert_eq!(tracker.observe(true), None);
        assert_eq!(tracker.state(), Healthy);
    }
}
