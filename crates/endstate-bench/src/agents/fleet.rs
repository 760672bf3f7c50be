//! The simulated fleet against a real server process: server memory per idle agent, keepalives
//! per server CPU second, dead agent detection, observation ingest, and the reconnect storm
//! after a server restart.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::server::{ServerProc, ServerSpec};
use super::sim::{Command, Fleet, IngestStats};
use super::{Expect, http_client, millis, newest_seq, percentile, procfs, timeline};
use crate::figure::{Figure, Goal};

/// Sizes of one run.
struct Sizes {
    agents: usize,
    keepalive: Duration,
    settle: Duration,
    flood: Duration,
    ingest_agents: usize,
    ingest_batch: usize,
    ingest: Duration,
}

impl Sizes {
    fn new(smoke: bool) -> Sizes {
        if smoke {
            Sizes {
                agents: 200,
                keepalive: Duration::from_secs(1),
                settle: Duration::from_secs(2),
                flood: Duration::from_secs(1),
                ingest_agents: 10,
                ingest_batch: 100,
                ingest: Duration::from_secs(2),
            }
        } else {
            Sizes {
                agents: 10_000,
                keepalive: Duration::from_secs(5),
                settle: Duration::from_secs(12),
                flood: Duration::from_secs(10),
                ingest_agents: 50,
                ingest_batch: 200,
                ingest: Duration::from_secs(10),
            }
        }
    }
}

/// The figures this scenario gives, in order (so a failure can report the missing ones).
pub(super) fn expected(smoke: bool) -> Vec<Expect> {
    let sizes = Sizes::new(smoke);
    let n = sizes.agents;
    vec![
        Expect::new(
            format!("agents: server RSS per idle agent, {n} agents"),
            "KiB",
            16.0,
            Goal::AtMost,
        ),
        Expect::new(
            "agents: keepalives per server CPU second".to_owned(),
            "keepalives/s",
            20_000.0,
            Goal::AtLeast,
        ),
        Expect::new(
            "agents: observation ingest".to_owned(),
            "obs/s",
            50_000.0,
            Goal::AtLeast,
        ),
        Expect::new(
            "agents: observation send-to-ack latency p99".to_owned(),
            "ms",
            50.0,
            Goal::AtMost,
        ),
        Expect::new(
            format!("agents: dead agent detected, {n} connected"),
            "s",
            3.0 * sizes.keepalive.as_secs_f64(),
            Goal::AtMost,
        ),
        Expect::new(
            format!("agents: reconnect storm, {n} agents resynced"),
            "s",
            10.0,
            Goal::AtMost,
        ),
    ]
}

/// Memory of the server process.
struct Memory {
    rss_kib: u64,
    pss_kib: Option<u64>,
}

fn memory(pid: u32) -> anyhow::Result<Memory> {
    Ok(Memory {
        rss_kib: procfs::rss_kib(pid)?,
        pss_kib: procfs::pss_kib(pid),
    })
}

pub(super) async fn run(exe: &std::path::Path, smoke: bool, figures: &mut Vec<Figure>) -> anyhow::Result<()> {
    let sizes = Sizes::new(smoke);
    let expect = expected(smoke);
    let n = sizes.agents;
    let dir = tempfile::tempdir()?;
    let spec = ServerSpec {
        exe: exe.to_path_buf(),
        data_dir: dir.path().join("server"),
        listen: "127.0.0.1:0".into(),
        agent_listen: "127.0.0.1:0".into(),
        keepalive: Some(format!("{}ms", sizes.keepalive.as_millis())),
    };
    let mut server = ServerProc::start(&spec).await?;
    let admin = server
        .admin_token
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the server printed no admin token"))?;
    let http = http_client()?;

    // Identities: enrolled before anything is measured.
    eprintln!("agents: enrolling {n} simulated agents (join token + CSR each)");
    let started = Instant::now();
    let hosts = (0..n).map(|i| format!("sim-{i:05}")).collect();
    let identities = super::sim::enrol(&server.http, &admin, hosts, BTreeMap::new(), 32).await?;
    let enrol_time = started.elapsed();
    eprintln!(
        "agents: enrolled {n} in {:.1} s ({:.0}/s)",
        enrol_time.as_secs_f64(),
        n as f64 / enrol_time.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = memory(server.pid)?;

    // Connect them all (the first connections ramp 128 at a time, as a fleet's start would).
    let fleet = Fleet::start(identities, server.agent_addr, sizes.keepalive, 128);
    let result = measure(
        &sizes,
        &expect,
        &spec,
        &mut server,
        &fleet,
        &http,
        &admin,
        before,
        enrol_time,
        figures,
    )
    .await;
    fleet.stop().await;
    server.stop(Duration::from_secs(5)).await;
    if result.is_err() {
        eprintln!(
            "agents: server log tail:\n{}",
            super::server::log_tail(&spec.data_dir.join("server.log"), 20)
        );
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    sizes: &Sizes,
    expect: &[Expect],
    spec: &ServerSpec,
    server: &mut ServerProc,
    fleet: &Fleet,
    http: &reqwest::Client,
    admin: &str,
    before: Memory,
    enrol_time: Duration,
    figures: &mut Vec<Figure>,
) -> anyhow::Result<()> {
    let n = sizes.agents;
    let connect_timeout = Duration::from_secs(60) + Duration::from_millis(20 * n as u64);
    let connect_time = fleet.wait_resynced(0, connect_timeout).await?;
    eprintln!(
        "agents: {n} connected and resynced in {:.1} s; settling {:?}",
        connect_time.as_secs_f64(),
        sizes.settle
    );

    // 1. Memory per idle agent.
    let cpu_before = procfs::cpu_seconds(server.pid)?;
    tokio::time::sleep(sizes.settle).await;
    let idle_cpu = (procfs::cpu_seconds(server.pid)? - cpu_before) / sizes.settle.as_secs_f64();
    let after = memory(server.pid)?;
    let connected = fleet.connected();
    anyhow::ensure!(
        connected == n,
        "only {connected} of {n} agents are connected after settling; last errors: {}",
        fleet.last_errors()
    );
    let per_agent = after.rss_kib.saturating_sub(before.rss_kib) as f64 / n as f64;
    let pss = match (before.pss_kib, after.pss_kib) {
        (Some(b), Some(a)) => format!(
            "PSS {b} -> {a} KiB ({:.2} KiB per agent)",
            a.saturating_sub(b) as f64 / n as f64
        ),
        _ => "PSS not readable".to_owned(),
    };
    figures.push(expect[0].figure(
        per_agent,
        format!(
            "server process RSS {} -> {} KiB from before connecting to {n} connected idle agents \
             (keepalive every {:?}), / {n}; {pss}; idle server CPU {:.2}% of a core over {:?}; \
             setup: enrolment {:.1} s, connection ramp (128 at a time) {:.1} s",
            before.rss_kib,
            after.rss_kib,
            sizes.keepalive,
            idle_cpu * 100.0,
            sizes.settle,
            enrol_time.as_secs_f64(),
            connect_time.as_secs_f64()
        ),
    ));

    // 2. Keepalives per server CPU second.
    eprintln!("agents: flooding keepalives from {n} connections for {:?}", sizes.flood);
    let cpu0 = procfs::cpu_seconds(server.pid)?;
    let started = Instant::now();
    let until = started + sizes.flood;
    let mut waits = Vec::with_capacity(n);
    for idx in 0..n {
        let (done, wait) = oneshot::channel();
        fleet.command(idx, Command::Flood { until, done }).await?;
        waits.push(wait);
    }
    let mut sent = 0;
    for wait in waits {
        sent += wait
            .await
            .map_err(|_| anyhow::anyhow!("an agent dropped its flood"))?
            .map_err(|e| anyhow::anyhow!("flood: {e}"))?;
    }
    let wall = started.elapsed();
    let cpu = procfs::cpu_seconds(server.pid)? - cpu0;
    figures.push(expect[1].figure(
        sent as f64 / cpu,
        format!(
            "{sent} keepalives from {n} connections in {:?} (one websocket frame and TLS record each), \
             then one actual_state per connection as a fence (its cost is included); server CPU \
             {cpu:.2} s over {:.1} s wall ({:.0}% of a core), i.e. {:.0} keepalives/s of wall time; \
             the load generator shares the 2 cores",
            sizes.flood,
            wall.as_secs_f64(),
            cpu / wall.as_secs_f64() * 100.0,
            sent as f64 / wall.as_secs_f64()
        ),
    ));

    // 3. Observation ingest.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let m = sizes.ingest_agents.min(n);
    eprintln!(
        "agents: {m} agents streaming {}-observation batches for {:?}",
        sizes.ingest_batch, sizes.ingest
    );
    let cpu0 = procfs::cpu_seconds(server.pid)?;
    let started = Instant::now();
    let until = started + sizes.ingest;
    let mut waits = Vec::with_capacity(m);
    for idx in 0..m {
        let (done, wait) = oneshot::channel();
        fleet
            .command(
                idx,
                Command::Ingest {
                    until,
                    batch: sizes.ingest_batch,
                    done,
                },
            )
            .await?;
        waits.push(wait);
    }
    let mut total = IngestStats::default();
    for wait in waits {
        let stats = wait
            .await
            .map_err(|_| anyhow::anyhow!("an agent dropped its ingest"))?
            .map_err(|e| anyhow::anyhow!("ingest: {e}"))?;
        total.observations += stats.observations;
        total.bytes += stats.bytes;
        total.latencies.extend(stats.latencies);
    }
    let wall = started.elapsed();
    let cpu = procfs::cpu_seconds(server.pid)? - cpu0;
    // Acknowledged means committed: the newest observation of an agent is on the timeline.
    let host = fleet.host(0).to_owned();
    let page = timeline(http, &server.http, admin, &format!("host={host}&limit=1")).await?;
    let queryable = page
        .first()
        .and_then(|e| e.get("kind"))
        .and_then(|k| k.as_str())
        .map(str::to_owned)
        .unwrap_or_default();
    anyhow::ensure!(
        queryable == "instance.transitioned",
        "the newest event of {host} is {queryable:?}, not its last observation"
    );
    let batches = total.latencies.len();
    anyhow::ensure!(batches > 0, "no observation batch was acknowledged");
    let p50 = millis(percentile(&mut total.latencies, 0.5));
    let p99 = millis(percentile(&mut total.latencies, 0.99));
    let max = millis(percentile(&mut total.latencies, 1.0));
    let obs_bytes = total.bytes as f64 / total.observations.max(1) as f64;
    figures.push(expect[2].figure(
        total.observations as f64 / wall.as_secs_f64(),
        format!(
            "{} observations acked in {:.1} s: {m} agents, each sending a {}-observation batch and \
             waiting for its ack (closed loop, so queues stay bounded), {batches} batches, \
             ~{obs_bytes:.0} B per observation on the wire (instance_state running / passing health \
             of instances the store does not know: one timeline event each); {n} agents connected; \
             server CPU {cpu:.1} s ({:.0}% of a core)",
            total.observations,
            wall.as_secs_f64(),
            sizes.ingest_batch,
            cpu / wall.as_secs_f64() * 100.0
        ),
    ));
    figures.push(expect[3].figure(
        p99,
        format!(
            "from sending a batch of {} to its ack (sent after the commit, so the observations are \
             queryable); {batches} batches, median {p50:.1} ms, max {max:.1} ms",
            sizes.ingest_batch
        ),
    ));

    // 4. Dead agent detection.
    let victim = n - 1;
    let host = fleet.host(victim).to_owned();
    let after_seq = newest_seq(http, &server.http, admin).await?;
    let (done, wait) = oneshot::channel();
    fleet.command(victim, Command::Silence { done }).await?;
    let silent_since = wait.await?;
    let limit = sizes.keepalive * 5 + Duration::from_secs(20);
    eprintln!("agents: {host} fell silent; waiting for host.unreachable (up to {limit:?})");
    let query = format!("kind=host.unreachable&host={host}&after={after_seq}&limit=10");
    let detected = loop {
        if !timeline(http, &server.http, admin, &query).await?.is_empty() {
            break Some(silent_since.elapsed());
        }
        if silent_since.elapsed() > limit {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let interval = sizes.keepalive.as_secs_f64();
    match detected {
        Some(detected) => figures.push(expect[4].figure(
            detected.as_secs_f64(),
            format!(
                "from the silent agent's last keepalive (its socket stays open) to host.unreachable \
                 on the timeline (polled every 50 ms), with {n} agents connected; keepalive interval \
                 {interval} s, so {:.2} intervals; the server declares a host dead after more than 3 \
                 intervals of silence and looks every half interval",
                detected.as_secs_f64() / interval
            ),
        )),
        None => figures.push(expect[4].not_measured(format!(
            "no host.unreachable for {host} within {limit:?} of its last keepalive"
        ))),
    }
    // The silenced agent was disconnected by the server; it reconnects like the others.
    let deadline = Instant::now() + Duration::from_secs(60);
    while fleet.connected() < n {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} of {n} agents connected a minute after the detection; last errors: {}",
            fleet.connected(),
            fleet.last_errors()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 5. Reconnect storm: kill the server, start it again on the same data directory and ports.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restart = server.restart_spec(spec);
    let (welcomes0, lost0) = fleet.counters();
    eprintln!("agents: killing the server under {n} connected agents and starting it again");
    let killed_ns = fleet.now_ns();
    let killed = Instant::now();
    server.kill();
    *server = ServerProc::start(&restart).await?;
    let ready = killed.elapsed();
    let storm = fleet.wait_resynced(killed_ns, Duration::from_secs(120)).await;
    let elapsed = killed.elapsed();
    let (welcomes, lost) = fleet.counters();
    match storm {
        Ok(_) => {
            let times = fleet.resynced_after(killed_ns);
            let first = times.iter().min().copied().unwrap_or(killed_ns);
            let mut per_second: BTreeMap<u64, usize> = BTreeMap::new();
            for t in &times {
                *per_second.entry((t - killed_ns) / 1_000_000_000).or_default() += 1;
            }
            let peak = per_second.values().max().copied().unwrap_or(0);
            figures.push(expect[5].figure(
                elapsed.as_secs_f64(),
                format!(
                    "from SIGKILL of the server to the last of {n} agents resynced (welcome, \
                     actual_state sent, desired_instances received) on the restarted server (same \
                     data directory and agent port); server listening {:.2} s after the kill (its \
                     start took {:.2} s); first resync at {:.2} s; peak {peak} resyncs in one second; \
                     {} welcomes for {} lost connections; reconnection with the real agent's backoff \
                     (0.5 s doubling to 10 s, ±50%)",
                    ready.as_secs_f64(),
                    server.ready_after.as_secs_f64(),
                    (first - killed_ns) as f64 / 1e9,
                    welcomes - welcomes0,
                    lost - lost0
                ),
            ));
        }
        Err(error) => figures.push(expect[5].not_measured(format!("{error:#}"))),
    }
    Ok(())
}
