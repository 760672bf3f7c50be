//! Actions through real agents: `endstate server` and N `endstate agent` processes on this
//! machine, each enrolled with its own join token; an action running `/bin/true` on all of them.
//! Measured: from `POST /v1/runs` to the run recorded as ended with every host's result
//! (`GET /v1/runs/{id}` polled every millisecond), at N = 1, 10 and 50; and the RSS of the server
//! and of one agent at the largest N.
//!
//! The peer is Salt (`salt '*' cmd.run /bin/true` with N minions on loopback); this harness does
//! not install Salt, so its figures are the ones recorded in `../shared/brief/performance-anchors.md`
//! and are quoted in the details, not measured side by side.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use endstate_api::{CreateJoinToken, Document, RevisionSource, RunRequest, SubmitRevision};
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
    let runs = if smoke { 5 } else { 40 };
    let dir = tempfile::tempdir()?;
    let spec = ServerSpec {
        exe: exe.to_path_buf(),
        data_dir: dir.path().join("server"),
        listen: "127.0.0.1:0".into(),
        agent_listen: "127.0.0.1:0".into(),
        keepalive: None,
    };
    let mut server = ServerProc::start(&spec).await?;
    let admin = server
        .admin_token
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the server printed no admin token"))?;
    let client = endstate_client::Client::new(&server.http, &admin)?;
    client
        .submit(&SubmitRevision {
            documents: vec![Document {
                path: "bench.yaml".into(),
                content: SPEC.into(),
            }],
            message: "actions benchmark".into(),
            source: RevisionSource {
                kind: "cli".into(),
                reference: None,
            },
            parent: None,
            options: Default::default(),
            basis: None,
        })
        .await?;
    let artifacts = dir.path().join("artifacts");
    std::fs::create_dir_all(&artifacts)?;
    let mut agents = Agents(Vec::new());
    let mut idx = 0;
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
                agents.0.push(
                    Command::new(exe)
                        .arg("agent")
                        .arg("--server")
                        .arg(&server.http)
                        .arg("--name")
                        .arg(&host)
                        .arg("--data-dir")
                        .arg(&data)
                        .arg("--artifact-root")
                        .arg(&artifacts)
                        .args(["--ca-sha256", &token.ca_sha256])
                        .env("ENDSTATE_JOIN_TOKEN", &token.secret)
                        .env("ENDSTATE_LOG", "warn")
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(std::fs::File::create(data.join("agent.log"))?)
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
            let detail = format!(
                "POST /v1/runs of `noop` (/bin/true, concurrency 1000) on {n} `endstate agent` process(es) \
                 on this machine to GET /v1/runs/{{id}} showing it ended with {n} result(s), polled every 1 ms; \
                 {runs} runs one after another: {} ms. Peer: Salt `cmd.run /bin/true` median 3.45 s at 50 \
                 minions (2.72 s threaded), Ansible local about 10.5 s (performance-anchors.md, not re-run here)",
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
        figures.push(expect[last - 2].figure(
            server_rss,
            format!(
                "VmRSS of `endstate server` with {n} connected agents after the runs (salt-master: not measured here)"
            ),
        ));
        figures.push(
            expect[last - 1].figure(
                agent_rss,
                "VmRSS of the first `endstate agent` process after the runs; a salt-minion measured 70 MB RSS on \
             this machine (performance-anchors.md)"
                    .to_owned(),
            ),
        );
        anyhow::Ok(())
    }
    .await;
    drop(agents);
    server.stop(Duration::from_secs(5)).await;
    result
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
