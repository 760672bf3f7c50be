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
    /// The keepalive period of each agent in the paced flood.
    paced: Duration,
    ingest_agents: usize,
    /// Batch sizes of the ingest ramp, one level each.
    ingest_batches: &'static [usize],
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
                paced: Duration::from_millis(20),
                ingest_agents: 10,
                ingest_batches: &[20, 100],
                ingest: Duration::from_secs(1),
            }
        } else {
            Sizes {
                agents: 10_000,
                keepalive: Duration::from_secs(5),
                settle: Duration::from_secs(12),
                flood: Duration::from_secs(10),
                paced: Duration::from_millis(250),
                ingest_agents: 50,
                ingest_batches: &[20, 50, 100, 200],
                ingest: Duration::from_secs(5),
            }
        }
    }

    /// Keepalives per second offered by the paced flood.
    fn paced_rate(&self) -> f64 {
        self.agents as f64 / self.paced.as_secs_f64()
    }
}

const MEMORY: usize = 0;
const FLOOD: usize = 1;
const PACED: usize = 2;
const INGEST: usize = 3;
const INGEST_P99: usize = 4;
const DEAD: usize = 5;
const STORM: usize = 6;

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
            "agents: keepalives per server CPU second, flood".to_owned(),
            "keepalives/s",
            20_000.0,
            Goal::AtLeast,
        ),
        Expect::new(
            format!(
                "agents: keepalives per server CPU second, {:.0}/s paced",
                sizes.paced_rate()
            ),
            "keepalives/s",
            20_000.0,
            Goal::AtLeast,
        ),
        Expect::new(
            "agents: observation ingest, best load with p99 <= 50 ms".to_owned(),
            "obs/s",
            50_000.0,
            Goal::AtLeast,
        ),
        Expect::new(
            "agents: observation send-to-ack p99 at that load".to_owned(),
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
    /// Anonymous (heap, stacks) and file-backed (the SQLite database mapped, the binary) resident
    /// memory: connections cost anonymous memory; the database's pages read while agents resync
    /// are file-backed.
    parts_kib: Option<(u64, u64)>,
}

fn memory(pid: u32) -> anyhow::Result<Memory> {
    Ok(Memory {
        rss_kib: procfs::rss_kib(pid)?,
        pss_kib: procfs::pss_kib(pid),
        parts_kib: procfs::rss_parts_kib(pid),
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
        https: false,
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
        let log = spec.data_dir.join("server.log");
        eprintln!("agents: server log tail:\n{}", super::server::log_tail(&log, 20));
        // The whole log, for a look after the temporary directory is gone.
        let kept = std::path::Path::new("target").join("bench-agents-server.log");
        if std::fs::copy(&log, &kept).is_ok() {
            eprintln!("agents: the server's log is kept in {}", kept.display());
        }
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
    let parts = match (before.parts_kib, after.parts_kib) {
        (Some((anon0, file0)), Some((anon1, file1))) => format!(
            "RssAnon {anon0} -> {anon1} KiB ({:.2} KiB per agent), RssFile {file0} -> {file1} KiB",
            anon1.saturating_sub(anon0) as f64 / n as f64
        ),
        _ => "RssAnon/RssFile not readable".to_owned(),
    };
    figures.push(expect[MEMORY].figure(
        per_agent,
        format!(
            "server process RSS {} -> {} KiB from before connecting to {n} connected idle agents \
             (keepalive every {:?}), / {n}; {pss}; {parts}; idle server CPU {:.2}% of a core over {:?} \
             ({} keepalives per CPU second, all background work included); setup: enrolment \
             {:.1} s, connection ramp (128 at a time) {:.1} s",
            before.rss_kib,
            after.rss_kib,
            sizes.keepalive,
            idle_cpu * 100.0,
            sizes.settle,
            if idle_cpu > 0.0 {
                format!("{:.0}", n as f64 / sizes.keepalive.as_secs_f64() / idle_cpu)
            } else {
                "too little CPU to tell".to_owned()
            },
            enrol_time.as_secs_f64(),
            connect_time.as_secs_f64()
        ),
    ));

    // 2. Keepalives per server CPU second: as fast as the connections take them, then paced,
    // so that each keepalive is its own TCP segment (as from real agents) rather than coalesced.
    let flood = keepalives(fleet, server.pid, sizes.flood, None).await?;
    figures.push(expect[FLOOD].figure(flood.0, flood.1));
    let paced = keepalives(fleet, server.pid, sizes.flood, Some(sizes.paced)).await?;
    figures.push(expect[PACED].figure(paced.0, paced.1));

    // 3. Observation ingest, at rising loads (batch sizes): the figure is the best throughput
    // whose p99 stays within 50 ms (B2's ramp).
    let m = sizes.ingest_agents.min(n);
    let mut levels = Vec::new();
    for batch in sizes.ingest_batches {
        tokio::time::sleep(Duration::from_secs(1)).await;
        levels.push(ingest(fleet, server.pid, m, *batch, sizes.ingest).await?);
    }
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
    let within = levels
        .iter()
        .filter(|l| l.p99_ms <= 50.0)
        .max_by(|a, b| a.rate.total_cmp(&b.rate));
    let chosen = within
        .or_else(|| levels.iter().min_by(|a, b| a.p99_ms.total_cmp(&b.p99_ms)))
        .ok_or_else(|| anyhow::anyhow!("no ingest level ran"))?;
    let all: Vec<String> = levels.iter().map(IngestLevel::line).collect();
    figures.push(expect[INGEST].figure(
        chosen.rate,
        format!(
            "{}; {m} agents, each sending a batch and waiting for its ack (closed loop, so queues stay \
             bounded), {:?} per level; observations are instance_state running / passing health of \
             instances the store does not know (one timeline event each), ~{:.0} B each on the wire; \
             {n} agents connected; levels: {}",
            if within.is_some() {
                "the best level within p99 50 ms"
            } else {
                "no level kept p99 within 50 ms: the level with the lowest p99"
            },
            sizes.ingest,
            chosen.bytes_per_obs,
            all.join("; ")
        ),
    ));
    figures.push(expect[INGEST_P99].figure(
        chosen.p99_ms,
        format!(
            "from sending a batch to its ack (sent after the commit, so the observations are \
             queryable), at {}",
            chosen.line()
        ),
    ));

    // 4. Dead agent detection: three agents fall silent at different moments of the server's
    // liveness sweep; the figure is the slowest detection.
    const VICTIMS: usize = 3;
    let after_seq = newest_seq(http, &server.http, admin).await?;
    let mut silent = Vec::new();
    for victim in (0..VICTIMS).map(|i| n - 1 - i) {
        let (done, wait) = oneshot::channel();
        fleet.command(victim, Command::Silence { done }).await?;
        silent.push((fleet.host(victim).to_owned(), wait.await?, std::time::SystemTime::now()));
        tokio::time::sleep(sizes.keepalive.mul_f64(0.37)).await;
    }
    let limit = sizes.keepalive * 5 + Duration::from_secs(20);
    eprintln!("agents: {VICTIMS} agents fell silent; waiting for host.unreachable (up to {limit:?})");
    let query = format!("kind=host.unreachable&after={after_seq}&limit=100");
    let mut slowest_poll = Duration::ZERO;
    // Per victim: seen by the poll after, and recorded by the server after, its last keepalive.
    let mut detected: BTreeMap<String, (Duration, Option<i64>)> = BTreeMap::new();
    while detected.len() < silent.len() && silent[0].1.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let asked = Instant::now();
        let events = timeline(http, &server.http, admin, &query).await?;
        slowest_poll = slowest_poll.max(asked.elapsed());
        for event in events {
            let Some((host, since, wall)) = silent
                .iter()
                .find(|(h, _, _)| event.get("host").and_then(|e| e.as_str()) == Some(h.as_str()))
            else {
                continue;
            };
            if detected.contains_key(host) {
                continue;
            }
            // When the server recorded it, on its own clock (the same machine's).
            let recorded = event
                .get("time")
                .and_then(|t| t.as_str())
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .zip(jiff::Timestamp::try_from(*wall).ok())
                .map(|(t, silent)| t.as_millisecond() - silent.as_millisecond());
            detected.insert(host.clone(), (since.elapsed(), recorded));
        }
    }
    let interval = sizes.keepalive.as_secs_f64();
    if detected.len() == silent.len() {
        let slowest = detected.values().map(|(d, _)| *d).max().unwrap_or_default();
        let each: Vec<String> = silent
            .iter()
            .filter_map(|(host, _, _)| {
                let (seen, recorded) = detected.get(host)?;
                Some(format!(
                    "{host} {:.2} s (recorded at {})",
                    seen.as_secs_f64(),
                    recorded.map_or_else(|| "?".to_owned(), |ms| format!("{:.2} s", ms as f64 / 1000.0))
                ))
            })
            .collect();
        figures.push(expect[DEAD].figure(
            slowest.as_secs_f64(),
            format!(
                "the slowest of {VICTIMS} agents silenced {:.2} s apart: from its last keepalive (its socket \
                 stays open) to host.unreachable on the timeline (polled every 50 ms, slowest poll {:.0} \
                 ms), {:.2} intervals of {interval} s, with {n} agents connected; each: {}; the server \
                 declares a host dead after 2.5 intervals of silence and looks every quarter interval",
                sizes.keepalive.mul_f64(0.37).as_secs_f64(),
                millis(slowest_poll),
                slowest.as_secs_f64() / interval,
                each.join(", ")
            ),
        ));
    } else {
        figures.push(expect[DEAD].not_measured(format!(
            "{} of {VICTIMS} silent agents were declared unreachable within {limit:?}",
            detected.len()
        )));
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
    let own_cpu0 = procfs::cpu_seconds(std::process::id())?;
    server.kill();
    *server = ServerProc::start(&restart).await?;
    let ready = killed.elapsed();
    let storm = fleet.wait_resynced(killed_ns, Duration::from_secs(120)).await;
    let elapsed = killed.elapsed();
    let server_cpu = procfs::cpu_seconds(server.pid)?;
    let own_cpu = procfs::cpu_seconds(std::process::id())? - own_cpu0;
    let (welcomes, lost) = fleet.counters();
    match storm {
        Ok(_) => {
            let times = fleet.resynced_after(killed_ns);
            let first = times.iter().min().copied().unwrap_or(killed_ns);
            let welcomes_at = fleet.welcomed_after(killed_ns);
            let since_kill = |t: u64| t.saturating_sub(killed_ns) as f64 / 1e9;
            let welcomed = format!(
                "welcomes from {:.2} s to {:.2} s",
                since_kill(welcomes_at.iter().min().copied().unwrap_or(killed_ns)),
                since_kill(welcomes_at.iter().max().copied().unwrap_or(killed_ns))
            );
            let mut per_second: BTreeMap<u64, usize> = BTreeMap::new();
            for t in &times {
                *per_second.entry((t - killed_ns) / 1_000_000_000).or_default() += 1;
            }
            let peak = per_second.values().max().copied().unwrap_or(0);
            figures.push(expect[STORM].figure(
                elapsed.as_secs_f64(),
                format!(
                    "from SIGKILL of the server to the last of {n} agents resynced (welcome, \
                     actual_state sent, desired_instances received) on the restarted server (same \
                     data directory and agent port); server listening {:.2} s after the kill (its \
                     start took {:.2} s); {welcomed}; first resync at {:.2} s; peak {peak} resyncs in one second; \
                     {} welcomes for {} lost connections; reconnection with the real agent's backoff \
                     (0.5 s doubling to 10 s, ±50%); CPU until then: restarted server {server_cpu:.1} s \
                     ({:.2} ms per agent: TLS handshake with client certificate, hello, store writes, \
                     resync), load generator {own_cpu:.1} s, on 2 cores",
                    ready.as_secs_f64(),
                    server.ready_after.as_secs_f64(),
                    (first - killed_ns) as f64 / 1e9,
                    welcomes - welcomes0,
                    lost - lost0,
                    server_cpu * 1000.0 / n as f64
                ),
            ));
        }
        Err(error) => figures.push(expect[STORM].not_measured(format!("{error:#}"))),
    }
    Ok(())
}

/// Drives every agent's keepalives for `window`, as fast as possible (`period` None) or one per
/// `period` each; answers keepalives per server CPU second and the detail.
async fn keepalives(
    fleet: &Fleet,
    server: u32,
    window: Duration,
    period: Option<Duration>,
) -> anyhow::Result<(f64, String)> {
    let n = fleet.len();
    let how = match period {
        None => "as fast as each connection takes them".to_owned(),
        Some(p) => format!(
            "each agent one per {p:?} from a random phase ({:.0}/s offered)",
            n as f64 / p.as_secs_f64()
        ),
    };
    eprintln!("agents: keepalives from {n} connections for {window:?}, {how}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu0 = procfs::cpu_seconds(server)?;
    let started = Instant::now();
    let until = started + window;
    let mut waits = Vec::with_capacity(n);
    for idx in 0..n {
        let (done, wait) = oneshot::channel();
        fleet.command(idx, Command::Flood { until, period, done }).await?;
        waits.push(wait);
    }
    let mut sent = 0;
    for wait in waits {
        sent += wait
            .await
            .map_err(|_| anyhow::anyhow!("an agent dropped its keepalives"))?
            .map_err(|e| anyhow::anyhow!("keepalives: {e}"))?;
    }
    let wall = started.elapsed();
    let cpu = procfs::cpu_seconds(server)? - cpu0;
    anyhow::ensure!(sent > 0 && cpu > 0.0, "{sent} keepalives, {cpu} s of server CPU");
    Ok((
        sent as f64 / cpu,
        format!(
            "{sent} keepalives from {n} connections in {window:?}, {how}; one websocket frame and TLS \
             record each; then one actual_state per connection as a fence (its cost included); server \
             CPU {cpu:.2} s over {:.1} s wall ({:.0}% of a core), {:.0} keepalives/s of wall time; the \
             load generator shares the 2 cores",
            wall.as_secs_f64(),
            cpu / wall.as_secs_f64() * 100.0,
            sent as f64 / wall.as_secs_f64()
        ),
    ))
}

/// One load level of the ingest ramp.
struct IngestLevel {
    batch: usize,
    agents: usize,
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    batches: usize,
    bytes_per_obs: f64,
    server_cpu: f64,
}

impl IngestLevel {
    fn line(&self) -> String {
        format!(
            "{} x {}-observation batches in flight: {:.0} obs/s, p50 {:.1} ms, p99 {:.1} ms, max {:.1} \
             ms, {} batches, server {:.0}% of a core",
            self.agents, self.batch, self.rate, self.p50_ms, self.p99_ms, self.max_ms, self.batches, self.server_cpu
        )
    }
}

/// `agents` agents stream batches of `batch` observations for `window`, each waiting for the
/// ack of its batch before the next.
async fn ingest(
    fleet: &Fleet,
    server: u32,
    agents: usize,
    batch: usize,
    window: Duration,
) -> anyhow::Result<IngestLevel> {
    eprintln!("agents: {agents} agents streaming {batch}-observation batches for {window:?}");
    let cpu0 = procfs::cpu_seconds(server)?;
    let started = Instant::now();
    let until = started + window;
    let mut waits = Vec::with_capacity(agents);
    for idx in 0..agents {
        let (done, wait) = oneshot::channel();
        fleet.command(idx, Command::Ingest { until, batch, done }).await?;
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
    let cpu = procfs::cpu_seconds(server)? - cpu0;
    let batches = total.latencies.len();
    anyhow::ensure!(batches > 0, "no observation batch was acknowledged");
    Ok(IngestLevel {
        batch,
        agents,
        rate: total.observations as f64 / wall.as_secs_f64(),
        p50_ms: millis(percentile(&mut total.latencies, 0.5)),
        p99_ms: millis(percentile(&mut total.latencies, 0.99)),
        max_ms: millis(percentile(&mut total.latencies, 1.0)),
        batches,
        bytes_per_obs: total.bytes as f64 / total.observations.max(1) as f64,
        server_cpu: cpu / wall.as_secs_f64() * 100.0,
    })
}
