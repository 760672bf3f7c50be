//! Actions through real agents: `endstate server` and N `endstate agent` processes on this
//! machine, each enrolled with its own join token; an action running `/bin/true` on all of them.
//! Measured: from `POST /v1/runs` to the run recorded as ended with every host's result
//! (`GET /v1/runs/{id}` polled every millisecond), at N = 1, 10 and 50; and the RSS of the server
//! and of one agent at the largest N.
//!
//! The peer, side by side in the same run (full runs only; smoke runs do not install it): Salt,
//! `salt '*' cmd.run /bin/true` on N minions on loopback ([`super::salt`]); its figures are in
//! each endstate figure's detail, next to the anchors of `../shared/brief/performance-anchors.md`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Child;
use std::time::Duration;

use endstate_api::{CreateJoinToken, RunRequest};
use tokio::time::Instant;

use super::server::{ServerProc, ServerSpec};
use super::{Expect, millis, percentile, procfs};
use crate::figure::{Figure, Goal};

const SPEC: &str = r#"apiVersion: endstate/v1
kind: System
name: bench
description: The actions benchmark.
---
apiVersion: endstate/v1
kind: Action
name: noop
system: bench
description: Runs /bin/true on every bench host.
command: [/bin/true]
targets: { selector: { role: [bench] } }
concurrency: 1000
timeout: 30s
reentrant: true
engagement: direct
rate_limit: { runs: 1000, per: 1s }
"#;

fn sizes(smoke: bool) -> Vec<usize> {
    if smoke { vec![1, 3] } else { vec![1, 10, 50] }
}

fn sim_sizes(smoke: bool) -> Vec<usize> {
    if smoke { vec![50] } else { vec![1_000, 10_000] }
}

pub(super) fn expected(smoke: bool) -> Vec<Expect> {
    let mut out = Vec::new();
    for n in sizes(smoke) {
        let (p50, p99) = match n {
            1 => (15.0, 30.0),
            50 => (150.0, 300.0),
            _ => (150.0, 300.0),
        };
        out.push(Expect::new(
            format!("actions: run on {n} real agent(s) -> all results recorded, p50"),
            "ms",
            p50,
            Goal::AtMost,
        ));
        out.push(Expect::new(
            format!("actions: run on {n} real agent(s) -> all results recorded, p99"),
            "ms",
            p99,
            Goal::AtMost,
        ));
    }
    for n in sim_sizes(smoke) {
        let p99 = if n >= 10_000 { 1000.0 } else { 100.0 };
        out.push(Expect::new(
            format!("actions: run on {n} simulated agents -> all results recorded, p99"),
            "ms",
            p99,
            Goal::AtMost,
        ));
    }
    let largest = sizes(smoke).last().copied().unwrap_or(1);
    out.push(Expect::new(
        format!("actions: server RSS with {largest} agents, after the runs"),
        "MB",
        200.0,
        Goal::AtMost,
    ));
    out.push(Expect::new(
        format!("actions: one agent's RSS with {largest} agents, after the runs"),
        "MB",
        70.0,
        Goal::AtMost,
    ));
    out
}

struct Agents(Vec<Child>);

impl Drop for Agents {
    fn drop(&mut self) {
        for child in &self.0 {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
            }
        }
        for child in &mut self.0 {
            for _ in 0..100 {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(super) async fn run(exe: &Path, smoke: bool, figures: &mut Vec<Figure>) -> anyhow::Result<()> {
    let expect = expected(smoke);
    // At most 100 runs of a system within 10 minutes (the per-system limit): 3 sizes x 30.
    let runs = if smoke { 5 } else { 30 };
    let dir = tempfile::tempdir()?;
    let spec = ServerSpec::local(exe, dir.path().join("server"));
    let mut server = ServerProc::start(&spec).await?;
    let admin = server.admin()?;
    let client = endstate_client::Client::new(&server.http, &admin)?;
    super::server::submit_spec(&client, SPEC.to_owned(), "actions benchmark").await?;
    let artifacts = dir.path().join("artifacts");
    std::fs::create_dir_all(&artifacts)?;
    let mut agents = Agents(Vec::new());
    let mut idx = 0;
    let mut salt = if smoke {
        Err("smoke runs do not install Salt; `cargo xtask bench --only actions` does".to_owned())
    } else {
        super::salt::install()
            .and_then(|bin| super::salt::Salt::start(&bin, &dir.path().join("salt")))
            .map_err(|error| format!("Salt could not be started: {error:#}"))
    };
    let result = async {
        for n in sizes(smoke) {
            while agents.0.len() < n {
                let host = format!("bench-{idx:03}");
                idx += 1;
                let token = client
                    .create_join_token(&CreateJoinToken {
                        ttl: Some("10m".into()),
                        labels: BTreeMap::from([("role".to_owned(), "bench".to_owned())]),
                        host: Some(host.clone()),
                    })
                    .await?;
                let data = dir.path().join(&host);
                std::fs::create_dir_all(&data)?;
                let log = data.join("agent.log");
                agents.0.push(
                    super::server::agent_command(exe, &server.http, &host, (&data, &artifacts), &token, &log)?
                        .env("ENDSTATE_LOG", "warn")
                        .spawn()?,
                );
            }
            eprintln!("actions: waiting for {n} agents to hold the catalogue");
            wait_offered(&client, n).await?;
            let mut samples = Vec::with_capacity(runs);
            for _ in 0..runs {
                samples.push(one_run(&client, n).await?);
            }
            let all: Vec<String> = samples.iter().map(|d| format!("{:.1}", millis(*d))).collect();
            let peer = match &mut salt {
                Ok(salt) => salt_runs(salt, n, if smoke { 2 } else { 10 }).await,
                Err(reason) => format!("Salt not measured: {reason}"),
            };
            let detail = format!(
                "POST /v1/runs of `noop` (/bin/true, concurrency 1000) on {n} `endstate agent` process(es) \
                 on this machine to GET /v1/runs/{{id}} showing it ended with {n} result(s), polled every 1 ms; \
                 {runs} runs one after another: {} ms. Side by side: {peer}. Anchors: Salt median 3.45 s at \
                 50 minions (2.72 s threaded), Ansible local about 10.5 s",
                all.join(", ")
            );
            let i = expect
                .iter()
                .position(|e| e.name.contains(&format!(" {n} real agent(s)")))
                .unwrap_or(0);
            let p50 = millis(percentile(&mut samples, 0.5));
            let p99 = millis(percentile(&mut samples, 0.99));
            figures.push(expect[i].figure(p50, detail.clone()));
            figures.push(expect[i + 1].figure(p99, detail));
        }
        let server_rss = procfs::rss_kib(server.pid)? as f64 * 1024.0 / 1e6;
        let agent_rss = agents
            .0
            .first()
            .map(|a| procfs::rss_kib(a.id()))
            .transpose()?
            .unwrap_or_default() as f64
            * 1024.0
            / 1e6;
        let n = agents.0.len();
        let last = expect.len();
        let (master, minion) = match &salt {
            Ok(salt) => {
                let (master, minion) = salt.rss_mb();
                let show = |mb: Option<f64>| mb.map_or_else(|| "unreadable".to_owned(), |mb| format!("{mb:.1} MB"));
                (show(master), show(minion))
            }
            Err(reason) => (format!("not measured ({reason})"), format!("not measured ({reason})")),
        };
        figures.push(expect[last - 2].figure(
            server_rss,
            format!(
                "VmRSS of `endstate server` with {n} connected agents after the runs; side by side, the \
                 salt-master's processes with {n} minions: {master}"
            ),
        ));
        figures.push(expect[last - 1].figure(
            agent_rss,
            format!(
                "VmRSS of the first `endstate agent` process after the runs; side by side, the first \
                 salt-minion's processes: {minion} (anchor: 70 MB)"
            ),
        ));
        anyhow::Ok(())
    }
    .await;
    drop(agents);
    drop(salt);
    server.stop(Duration::from_secs(5)).await;
    result?;
    let sim = simulated(exe, smoke, &expect, figures).await;
    if let Err(error) = &sim {
        eprintln!("actions: the simulated fleet failed: {error:#}");
    }
    sim
}

/// Runs of the action on fleets of simulated agents speaking the real protocol (each answers a
/// `run_action` at once with a successful result): the server's side of a fan-out.
async fn simulated(exe: &Path, smoke: bool, expect: &[Expect], figures: &mut Vec<Figure>) -> anyhow::Result<()> {
    for n in sim_sizes(smoke) {
        let Some(slot) = expect
            .iter()
            .position(|e| e.name.contains(&format!(" {n} simulated agents")))
        else {
            continue;
        };
        let dir = tempfile::tempdir()?;
        let spec = ServerSpec {
            exe: exe.to_path_buf(),
            data_dir: dir.path().join("server"),
            listen: "127.0.0.1:0".into(),
            agent_listen: "127.0.0.1:0".into(),
            keepalive: None,
            https: false,
        };
        let mut server = ServerProc::start(&spec).await?;
        let admin = server
            .admin_token
            .clone()
            .ok_or_else(|| anyhow::anyhow!("the server printed no admin token"))?;
        let client = endstate_client::Client::new(&server.http, &admin)?;
        let result = async {
            super::server::submit_spec(
                &client,
                SPEC.replace("concurrency: 1000", "concurrency: 10000"),
                "actions benchmark",
            )
            .await?;
            eprintln!("actions: enrolling {n} simulated agents");
            let hosts = (0..n).map(|i| format!("bench-{i:05}")).collect();
            let labels = BTreeMap::from([("role".to_owned(), "bench".to_owned())]);
            let identities = super::sim::enrol(&server.http, &admin, hosts, labels, 32).await?;
            let fleet = super::sim::Fleet::start(identities, server.agent_addr, Duration::from_secs(5), 128);
            let measured = async {
                fleet
                    .wait_resynced(0, Duration::from_secs(60) + Duration::from_millis(20 * n as u64))
                    .await?;
                wait_offered(&client, n).await?;
                let runs = if smoke { 3 } else { 10 };
                let mut samples = Vec::with_capacity(runs);
                for _ in 0..runs {
                    samples.push(one_run_recorded(&client, &server.http, &admin, n).await?);
                }
                let all: Vec<String> = samples.iter().map(|d| format!("{:.0}", millis(*d))).collect();
                let p50 = millis(percentile(&mut samples, 0.5));
                let p99 = millis(percentile(&mut samples, 0.99));
                figures.push(expect[slot].figure(
                    p99,
                    format!(
                        "POST /v1/runs of `noop` (concurrency 10000) on {n} simulated agents (one process, real \
                         mutual-TLS websockets, each answering `run_action` at once) to its `action.finished` \
                         event on GET /v1/timeline (polled every 5 ms); {runs} runs: p50 {p50:.0} ms; {} ms",
                        all.join(", ")
                    ),
                ));
                anyhow::Ok(())
            }
            .await;
            fleet.stop().await;
            measured
        }
        .await;
        server.stop(Duration::from_secs(5)).await;
        result?;
    }
    Ok(())
}

/// One run to its `action.finished` event (cheap to poll, unlike a view of thousands of hosts).
async fn one_run_recorded(
    client: &endstate_client::Client,
    server: &str,
    admin: &str,
    n: usize,
) -> anyhow::Result<Duration> {
    let http = super::http_client()?;
    let after = super::newest_seq(&http, server, admin).await?;
    let started = Instant::now();
    let run = client
        .run_action(&RunRequest {
            system: "bench".into(),
            action: "noop".into(),
            ..RunRequest::default()
        })
        .await?;
    anyhow::ensure!(
        run.hosts.len() == n,
        "the run went to {} hosts, not {n}",
        run.hosts.len()
    );
    let query = format!("kind=action.finished&after={after}&limit=10");
    loop {
        let events = super::timeline(&http, server, admin, &query).await?;
        if let Some(event) = events.iter().find(|e| e["data"]["run"] == run.id.as_str()) {
            let took = started.elapsed();
            anyhow::ensure!(
                event["data"]["state"] == "succeeded",
                "{} ended {}",
                run.id,
                event["summary"]
            );
            return Ok(took);
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "{} still runs after 60 s",
            run.id
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Grows Salt to `n` minions and times `runs` runs of `cmd.run /bin/true`; a line for the detail.
async fn salt_runs(salt: &mut super::salt::Salt, n: usize, runs: usize) -> String {
    eprintln!("actions: waiting for {n} salt minions");
    if let Err(error) = salt.grow(n).await {
        return format!("Salt not measured: {error:#}");
    }
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        match salt.cmd(&["cmd.run", "/bin/true"]).await {
            Ok((took, answered)) if answered == n => samples.push(took),
            Ok((_, answered)) => return format!("Salt not measured: {answered} of {n} minions answered"),
            Err(error) => return format!("Salt not measured: {error:#}"),
        }
    }
    let all: Vec<String> = samples.iter().map(|d| format!("{:.0}", millis(*d))).collect();
    format!(
        "`salt '*' cmd.run /bin/true` on {n} salt-minion(s) (wall time of the CLI until every minion \
         answered), {runs} runs: p50 {:.0} ms, p99 {:.0} ms ({} ms)",
        millis(percentile(&mut samples, 0.5)),
        millis(percentile(&mut samples, 0.99)),
        all.join(", ")
    )
}

/// Waits until `n` hosts are offered the action: asks for a run on hosts that do not exist, and
/// reads the hosts the refusal names.
async fn wait_offered(client: &endstate_client::Client, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let refusal = client
            .run_action(&RunRequest {
                system: "bench".into(),
                action: "noop".into(),
                hosts: vec!["no-such-host".into()],
                ..RunRequest::default()
            })
            .await
            .err()
            .and_then(|e| e.problem().map(|p| p.detail.clone()))
            .unwrap_or_default();
        let offered = refusal.split_once("(its hosts: ").map_or(0, |(_, hosts)| {
            hosts.split(", ").filter(|h| h.starts_with("bench-")).count()
        });
        if offered >= n {
            // Sent is not yet received: give the last sets a moment to arrive.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {offered} of {n} agents hold the catalogue after 120 s: {refusal}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn one_run(client: &endstate_client::Client, n: usize) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let run = client
        .run_action(&RunRequest {
            system: "bench".into(),
            action: "noop".into(),
            ..RunRequest::default()
        })
        .await?;
    anyhow::ensure!(
        run.hosts.len() == n,
        "the run went to {} hosts, not {n}",
        run.hosts.len()
    );
    loop {
        let view = client.run(&run.id).await?;
        if view.state != "running" {
            let took = started.elapsed();
            anyhow::ensure!(
                view.state == "succeeded",
                "{} ended {}: {}",
                view.id,
                view.state,
                view.summary
            );
            return Ok(took);
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "{} still runs after 30 s",
            view.id
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
