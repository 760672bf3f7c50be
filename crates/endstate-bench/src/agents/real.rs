//! The real agent: `endstate agent` enrolled with a join token into a real server, running 10
//! instances of a tiny artifact (a shell script that execs `sleep`). Its idle footprint, the
//! binary's size, and how long the server takes to know that an instance was killed.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use endstate_api::CreateJoinToken;
use tokio::time::Instant;

use super::server::{AgentProc, ServerProc, ServerSpec};
use super::{Expect, http_client, millis, newest_seq, percentile, procfs, timeline};
use crate::figure::{Figure, Goal};

const HOST: &str = "bench-agent";
const INSTANCES: usize = 10;

const SPEC: &str = r#"apiVersion: endstate/v1
kind: System
name: bench
description: The agent benchmark's idle instances.
---
apiVersion: endstate/v1
kind: Component
name: sleeper
system: bench
artifact:
  version: "1.0.0"
  path: bin/sleeper
command: sleeper
placement:
  selector: { role: bench }
  count: { per_host: 10 }
# All ten at once: this measures the agent at rest, not a rollout.
rollout: { canary: 0, batch: { percent: 100 }, min_healthy_time: 0s }
"#;

pub(super) fn expected(smoke: bool) -> Vec<Expect> {
    let _ = smoke;
    vec![
        Expect::new(
            format!("agents: agent idle RSS, {INSTANCES} instances"),
            "MB",
            10.0,
            Goal::AtMost,
        ),
        Expect::new(
            format!("agents: agent idle CPU, {INSTANCES} instances"),
            "% core",
            0.1,
            Goal::AtMost,
        ),
        Expect::new("agents: agent binary size".to_owned(), "MB", 25.0, Goal::AtMost),
        Expect::new(
            "agents: instance killed -> server timeline, median".to_owned(),
            "ms",
            1000.0,
            Goal::AtMost,
        ),
        Expect::new(
            "agents: instance killed -> server timeline, max".to_owned(),
            "ms",
            1000.0,
            Goal::AtMost,
        ),
    ]
}

pub(super) async fn run(exe: &Path, smoke: bool, figures: &mut Vec<Figure>) -> anyhow::Result<()> {
    let expect = expected(smoke);
    let (settle, window, crashes) = if smoke {
        (Duration::from_secs(1), Duration::from_secs(3), 2)
    } else {
        (Duration::from_secs(5), Duration::from_secs(20), 5)
    };
    let dir = tempfile::tempdir()?;
    let spec = ServerSpec::local(exe, dir.path().join("server"));
    let mut server = ServerProc::start(&spec).await?;
    let admin = server.admin()?;
    let client = endstate_client::Client::new(&server.http, &admin)?;
    let http = http_client()?;

    // The artifact: a script that becomes `sleep`.
    let artifacts = dir.path().join("artifacts");
    std::fs::create_dir_all(artifacts.join("bin"))?;
    let script = artifacts.join("bin/sleeper");
    std::fs::write(&script, "#!/bin/sh\nexec sleep 100000\n")?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    super::server::submit_spec(&client, SPEC.to_owned(), "agent benchmark: 10 idle instances").await?;
    let token = client
        .create_join_token(&CreateJoinToken {
            ttl: Some("10m".into()),
            labels: BTreeMap::from([("role".to_owned(), "bench".to_owned())]),
            host: Some(HOST.into()),
        })
        .await?;
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(&agent_dir)?;
    let log = agent_dir.join("agent.log");
    // What a host runs: the agent's own binary, built beside `endstate` (without the server and
    // the CLI); `endstate agent` when it is missing.
    let agent_exe = Some(exe.with_file_name("endstate-agent"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| exe.to_path_buf());
    let agent = AgentProc(
        super::server::agent_command(&agent_exe, &server.http, HOST, (&agent_dir, &artifacts), &token, &log)?
            .spawn()?,
    );
    let pid = agent.pid();
    let result = measure(
        pid,
        &agent_exe,
        &server,
        &http,
        &admin,
        (settle, window, crashes),
        &expect,
        figures,
    )
    .await;
    if result.is_err() {
        eprintln!("agents: agent log tail:\n{}", super::server::log_tail(&log, 20));
    }
    drop(agent);
    server.stop(Duration::from_secs(5)).await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    pid: u32,
    exe: &Path,
    server: &ServerProc,
    http: &reqwest::Client,
    admin: &str,
    (settle, window, crashes): (Duration, Duration, usize),
    expect: &[Expect],
    figures: &mut Vec<Figure>,
) -> anyhow::Result<()> {
    eprintln!("agents: waiting for the real agent to run {INSTANCES} instances");
    let started = Instant::now();
    wait_instances(pid, Duration::from_secs(60)).await?;
    let up = started.elapsed();
    tokio::time::sleep(settle).await;

    // Idle footprint.
    eprintln!("agents: measuring the idle agent for {window:?}");
    let cpu0 = procfs::cpu_seconds(pid)?;
    let ns0 = procfs::threads_cpu_ns(pid);
    let t0 = Instant::now();
    let mut rss_max = 0;
    let mut pss_max = None;
    let mut parts = None;
    while t0.elapsed() < window {
        let rss = procfs::rss_kib(pid)?;
        if rss >= rss_max {
            parts = procfs::rss_parts_kib(pid);
        }
        rss_max = rss_max.max(rss);
        pss_max = pss_max.max(procfs::pss_kib(pid));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let cpu = procfs::cpu_seconds(pid)? - cpu0;
    let ns = procfs::threads_cpu_ns(pid).zip(ns0).map(|(b, a)| b.saturating_sub(a));
    let elapsed = t0.elapsed().as_secs_f64();
    let running = procfs::children_named(pid, "sleep").len();
    anyhow::ensure!(
        running == INSTANCES,
        "{running} instances run after the window, not {INSTANCES}"
    );
    let pss = pss_max.map_or_else(
        || "PSS not readable".to_owned(),
        |p| format!("max PSS {:.2} MB", kib_mb(p)),
    );
    let parts = parts.map_or_else(String::new, |(anon, file)| {
        format!(
            "; of the max RSS, {:.2} MB anonymous (heap, stacks) and {:.2} MB file-backed (pages of the \
             binary and libraries, shared with the server process running the same binary)",
            kib_mb(anon),
            kib_mb(file)
        )
    });
    figures.push(expect[0].figure(
        kib_mb(rss_max),
        format!(
            "max VmRSS of the `{}` process (instances not counted) sampled every 500 ms over \
             {window:?}, idle with {INSTANCES} supervised instances (keepalive every 5 s), after \
             {INSTANCES} instances ran {:.1} s after its start (enrolment included) + {settle:?}; {pss}{parts}",
            exe.file_name().map_or_else(|| "?".into(), |n| n.to_string_lossy()),
            up.as_secs_f64()
        ),
    ));
    let ticks = procfs::clock_ticks();
    figures.push(expect[1].figure(
        cpu / elapsed * 100.0,
        format!(
            "utime+stime of the agent process from /proc over {elapsed:.1} s: {:.0} ms (resolution {} ms); \
             its threads' run time from schedstat: {}",
            cpu * 1000.0,
            1000 / ticks.max(1),
            ns.map_or_else(
                || "unreadable".to_owned(),
                |ns| format!(
                    "{:.2} ms = {:.4}% of a core",
                    ns as f64 / 1e6,
                    ns as f64 / 1e9 / elapsed * 100.0
                )
            )
        ),
    ));
    let size = std::fs::metadata(exe)?.len();
    let stripped = stripped_size(exe).map_or_else(
        || "`strip` unavailable, stripped size unknown".to_owned(),
        |s| format!("{:.2} MB stripped of symbols and debug info", s as f64 / 1e6),
    );
    let whole = std::fs::metadata(exe.with_file_name("endstate")).map_or(0, |m| m.len());
    figures.push(expect[2].figure(
        size as f64 / 1e6,
        format!(
            "target/{}/{} ({} bytes) as built (the profile keeps line tables for backtraces): what a host \
             installs; {stripped}; the whole `endstate` (server, CLI and agent) is {:.2} MB as built",
            exe.parent().and_then(|d| d.file_name()).map_or_else(|| "?".into(), |d| d.to_string_lossy()),
            exe.file_name().map_or_else(|| "?".into(), |n| n.to_string_lossy()),
            size,
            whole as f64 / 1e6
        ),
    ));

    // Instance crash to the server knowing it.
    let mut latencies = Vec::new();
    for round in 0..crashes {
        let pids = procfs::children_named(pid, "sleep");
        anyhow::ensure!(pids.len() == INSTANCES, "{} instances run, not {INSTANCES}", pids.len());
        let victim = pids[round % pids.len()];
        let slot = slot_of(victim).ok_or_else(|| anyhow::anyhow!("the slot of pid {victim} is unknown"))?;
        let after = newest_seq(http, &server.http, admin).await?;
        let query = format!("host={HOST}&kind=instance.transitioned&after={after}&limit=100");
        let killed = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(victim)?),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        let seen = loop {
            let events = timeline(http, &server.http, admin, &query).await?;
            if events.iter().any(|e| {
                e["component"] == "bench/sleeper" && e["data"]["slot"] == slot && e["data"]["state"] == "exited"
            }) {
                break Some(killed.elapsed());
            }
            if killed.elapsed() > Duration::from_secs(10) {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let Some(seen) = seen else {
            anyhow::bail!("the server's timeline shows no exit of slot {slot} within 10 s of its kill");
        };
        latencies.push(seen);
        // The supervisor restarts it after its backoff; wait for it before the next round.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let pids = procfs::children_named(pid, "sleep");
            if pids.len() == INSTANCES && !pids.contains(&victim) {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "slot {slot} did not come back within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let all: Vec<String> = latencies.iter().map(|d| format!("{:.0}", millis(*d))).collect();
    let detail = format!(
        "kill -9 of an instance's process to its `exited` transition on GET /v1/timeline (polled every \
         20 ms); {} kills of different instances: {} ms",
        latencies.len(),
        all.join(", ")
    );
    let median = millis(percentile(&mut latencies, 0.5));
    let max = millis(percentile(&mut latencies, 1.0));
    figures.push(expect[3].figure(median, detail.clone()));
    figures.push(expect[4].figure(max, detail));
    Ok(())
}

async fn wait_instances(pid: u32, limit: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if procfs::children_named(pid, "sleep").len() == INSTANCES {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < limit,
            "the agent runs {} of {INSTANCES} instances after {limit:?}",
            procfs::children_named(pid, "sleep").len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The slot of an instance process, from its run directory
/// `instances/<system>/<component>/<slot>/<generation>-<digest>`.
fn slot_of(pid: u32) -> Option<u64> {
    let cwd: PathBuf = procfs::cwd(pid)?;
    cwd.parent()?.file_name()?.to_str()?.parse().ok()
}

/// The size of a stripped copy of the binary, when `strip` is installed.
fn stripped_size(exe: &Path) -> Option<u64> {
    let dir = tempfile::tempdir().ok()?;
    let out = dir.path().join("endstate");
    let status = Command::new("strip")
        .arg("-o")
        .arg(&out)
        .arg(exe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?;
    if !status.success() {
        return None;
    }
    std::fs::metadata(&out).ok().map(|m| m.len())
}

fn kib_mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}
