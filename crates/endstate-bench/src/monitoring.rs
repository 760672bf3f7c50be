//! The `monitoring` group: check results through a real `endstate server` process.
//!
//! - **fleet**: N simulated agents ([`crate::agents::sim`]: the real protocol over real
//!   mutual-TLS websockets, in this process) each send a result of 20 checks every period, as
//!   the real agent streams them. One check per agent fails three periods in six, so alerts open
//!   and resolve all the time. A subscriber to the server's live timeline (`GET /v1/stream`,
//!   `kind=alert.opened`) matches each `alert.opened` with the moment the result that made it
//!   hard was sent: **result -> alert** (stored, judged by the alert engine, written and
//!   pushed to a subscriber). Then the same at 2, 5 and 10 times the rate (shorter periods):
//!   and 20 times: the **sustainable rate** is the highest level whose results are
//!   acknowledged (stored) at 95% or more of the rate offered, with a p99 from result to alert
//!   under a second (a floor: the real limit lies between it and the next level).
//! - **agent**: the real `endstate agent` running 20 exec checks every 10 s (Debian's
//!   `check_dummy`, or `/bin/true` without it): its own CPU, the plugins' apart.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use crate::agents::procfs;
use crate::agents::server::{AgentProc, ServerProc, ServerSpec};
use crate::agents::sim::{self, ChecksStats, Fleet};
use crate::figure::{Figure, Goal};

/// Checks per agent.
const CHECKS: usize = 20;
/// The period the issue names.
const PERIOD: Duration = Duration::from_secs(10);

struct Sizes {
    agents: usize,
    /// (period, how long) per load level; the first is the nominal load.
    levels: Vec<(Duration, Duration)>,
    /// How long the real agent's CPU is measured.
    agent_window: Duration,
}

impl Sizes {
    fn new(smoke: bool) -> Sizes {
        if smoke {
            Sizes {
                agents: 20,
                levels: vec![(Duration::from_millis(500), Duration::from_secs(4))],
                agent_window: Duration::from_secs(3),
            }
        } else {
            Sizes {
                agents: 2_000,
                levels: vec![
                    (PERIOD, Duration::from_secs(60)),
                    (PERIOD / 2, Duration::from_secs(30)),
                    (PERIOD / 5, Duration::from_secs(30)),
                    (PERIOD / 10, Duration::from_secs(30)),
                    // Past the target, to see where it stops keeping up.
                    (PERIOD / 20, Duration::from_secs(30)),
                ],
                agent_window: Duration::from_secs(60),
            }
        }
    }
}

fn names(agents: usize) -> [String; 4] {
    [
        format!("monitoring: result -> alert p99, {agents} agents x {CHECKS} checks / 10 s"),
        "monitoring: sustainable check results rate".to_owned(),
        format!("monitoring: agent CPU, {CHECKS} checks every 10 s"),
        "monitoring: server CPU per 1,000 results/s".to_owned(),
    ]
}

fn expected(smoke: bool) -> Vec<(String, &'static str, f64, Goal)> {
    let sizes = Sizes::new(smoke);
    let [p99, rate, agent, server] = names(sizes.agents);
    let nominal = (sizes.agents * CHECKS) as f64 / PERIOD.as_secs_f64();
    vec![
        (p99, "ms", 200.0, Goal::AtMost),
        (rate, "results/s", 10.0 * nominal, Goal::AtLeast),
        (agent, "% core", 1.0, Goal::AtMost),
        // Sensu Go's published sizing: a core per 50 checks/s, i.e. 20 cores per 1,000/s.
        (server, "% core", 2_000.0, Goal::AtMost),
    ]
}

fn not_measured(smoke: bool, reason: &str) -> Vec<Figure> {
    expected(smoke)
        .into_iter()
        .map(|(name, unit, target, goal)| Figure::not_measured(name, unit, target, goal, reason.to_owned()))
        .collect()
}

fn figure(smoke: bool, idx: usize, value: f64, detail: String) -> Figure {
    let (name, unit, target, goal) = expected(smoke).swap_remove(idx);
    if !value.is_finite() {
        return Figure::not_measured(
            name,
            unit,
            target,
            goal,
            format!("the measurement gave {value}; {detail}"),
        );
    }
    Figure {
        name,
        value,
        unit,
        target,
        goal,
        detail,
    }
}

pub(crate) fn run(smoke: bool) -> anyhow::Result<Vec<Figure>> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    crate::agents::raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let exe = match crate::agents::server::endstate_exe() {
            Ok(exe) => exe,
            Err(error) => return Ok(not_measured(smoke, &format!("{error:#}"))),
        };
        let mut figures = Vec::new();
        match fleet(&exe, smoke).await {
            Ok(mut measured) => figures.append(&mut measured),
            Err(error) => {
                eprintln!("monitoring: the fleet benchmark failed: {error:#}");
                let reason = format!("{error:#}");
                for (i, f) in not_measured(smoke, &reason).into_iter().enumerate() {
                    if i != 2 {
                        figures.push(f);
                    }
                }
            }
        }
        match agent_cpu(&exe, smoke).await {
            Ok(f) => figures.push(f),
            Err(error) => {
                eprintln!("monitoring: the agent benchmark failed: {error:#}");
                figures.push(not_measured(smoke, &format!("{error:#}")).swap_remove(2));
            }
        }
        Ok(figures)
    })
}

/// One load level's outcome.
struct Level {
    period: Duration,
    offered: f64,
    acked_rate: f64,
    alerts: Vec<Duration>,
    unmatched: u64,
    ack_p99: Duration,
    server_cpu: f64,
    lost: u64,
}

impl Level {
    fn alert_p99(&self) -> Duration {
        crate::agents::percentile(&mut self.alerts.clone(), 0.99)
    }

    fn sustained(&self) -> bool {
        self.acked_rate >= 0.95 * self.offered && !self.alerts.is_empty() && self.alert_p99() < Duration::from_secs(1)
    }

    fn line(&self) -> String {
        let mut alerts = self.alerts.clone();
        format!(
            "{:.0} results/s offered (period {:?}): {:.0}/s stored, ack p99 {:.0} ms, {} alerts, result -> alert \
             median {:.1} ms p99 {:.1} ms max {:.1} ms ({} not matched), server CPU {:.0}% of a core{}",
            self.offered,
            self.period,
            self.acked_rate,
            crate::agents::millis(self.ack_p99),
            alerts.len(),
            crate::agents::millis(crate::agents::percentile(&mut alerts, 0.5)),
            crate::agents::millis(crate::agents::percentile(&mut alerts, 0.99)),
            crate::agents::millis(alerts.iter().max().copied().unwrap_or_default()),
            self.unmatched,
            self.server_cpu * 100.0,
            if self.lost > 0 {
                format!(", {} connections lost", self.lost)
            } else {
                String::new()
            },
        )
    }
}

async fn fleet(exe: &Path, smoke: bool) -> anyhow::Result<Vec<Figure>> {
    let sizes = Sizes::new(smoke);
    let n = sizes.agents;
    let dir = tempfile::tempdir()?;
    let spec = ServerSpec::local(exe, dir.path().join("server"));
    let mut server = ServerProc::start(&spec).await?;
    let admin = server.admin()?;
    eprintln!("monitoring: enrolling {n} simulated agents");
    let hosts = (0..n).map(|i| format!("mon-{i:05}")).collect();
    let identities = sim::enrol(&server.http, &admin, hosts, BTreeMap::new(), 32).await?;
    let fleet = Fleet::start(identities, server.agent_addr, Duration::from_secs(5), 128);
    let result = measure(&sizes, smoke, &server, &fleet, &admin).await;
    fleet.stop().await;
    server.stop(Duration::from_secs(5)).await;
    if result.is_err() {
        eprintln!(
            "monitoring: server log tail:\n{}",
            crate::agents::server::log_tail(&spec.data_dir.join("server.log"), 20)
        );
    }
    result
}

async fn measure(
    sizes: &Sizes,
    smoke: bool,
    server: &ServerProc,
    fleet: &Fleet,
    admin: &str,
) -> anyhow::Result<Vec<Figure>> {
    fleet.wait_resynced(0, Duration::from_secs(300)).await?;
    let n = fleet.len();
    eprintln!("monitoring: {n} agents connected");

    // The subscriber: every alert.opened, matched with the moment its hardening result was sent.
    let hardened: Arc<Mutex<HashMap<String, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let opened: Arc<Mutex<(Vec<Duration>, u64)>> = Arc::new(Mutex::new((Vec::new(), 0)));
    let client = endstate_client::Client::new(&server.http, admin)?;
    let events = client
        .stream(&endstate_client::TimelineQuery {
            kind: Some("alert.opened".into()),
            ..endstate_client::TimelineQuery::default()
        })
        .await?;
    let subscriber = {
        let (hardened, opened) = (Arc::clone(&hardened), Arc::clone(&opened));
        tokio::spawn(async move {
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                let Ok(event) = event else { break };
                let seen = Instant::now();
                let Some(host) = event.host.clone() else { continue };
                let sent = lock(&hardened).remove(&host);
                let mut opened = lock(&opened);
                match sent {
                    Some(sent) => opened.0.push(seen.saturating_duration_since(sent)),
                    None => opened.1 += 1,
                }
            }
        })
    };

    let mut levels = Vec::new();
    for (period, length) in &sizes.levels {
        let offered = (n * CHECKS) as f64 / period.as_secs_f64();
        eprintln!("monitoring: {offered:.0} results/s for {length:?}");
        *lock(&opened) = (Vec::new(), 0);
        let lost0 = fleet.counters().1;
        let cpu0 = procfs::cpu_seconds(server.pid)?;
        let started = Instant::now();
        let until = started + *length;
        let mut waits = Vec::with_capacity(n);
        for idx in 0..n {
            let (done, wait) = tokio::sync::oneshot::channel();
            fleet
                .command(
                    idx,
                    sim::Command::Checks {
                        until,
                        per_agent: CHECKS,
                        period: *period,
                        hardened: Arc::clone(&hardened),
                        done,
                    },
                )
                .await?;
            waits.push(wait);
        }
        let mut total = ChecksStats::default();
        for wait in waits {
            let stats = wait
                .await
                .map_err(|_| anyhow::anyhow!("an agent dropped its checks"))?
                .map_err(|e| anyhow::anyhow!("checks: {e}"))?;
            total.sent += stats.sent;
            total.acked += stats.acked;
            total.latencies.extend(stats.latencies);
        }
        // Alerts of the last results may still be on their way.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let elapsed = started.elapsed().as_secs_f64().min(length.as_secs_f64());
        let server_cpu = (procfs::cpu_seconds(server.pid)? - cpu0) / started.elapsed().as_secs_f64();
        let (alerts, unmatched) = std::mem::take(&mut *lock(&opened));
        let level = Level {
            period: *period,
            offered,
            acked_rate: total.acked as f64 / elapsed,
            alerts,
            unmatched,
            ack_p99: crate::agents::percentile(&mut total.latencies, 0.99),
            server_cpu,
            lost: fleet.counters().1 - lost0,
        };
        eprintln!("monitoring: {}", level.line());
        levels.push(level);
        lock(&hardened).clear();
    }
    subscriber.abort();

    let nominal = levels.first().ok_or_else(|| anyhow::anyhow!("no load level ran"))?;
    let all = levels.iter().map(Level::line).collect::<Vec<_>>().join("; ");
    let mut figures = vec![figure(
        smoke,
        0,
        crate::agents::millis(nominal.alert_p99()),
        format!(
            "from sending the result that made an alert hard (the second failure in a row) to its alert.opened \
             received by a subscriber of GET /v1/stream; {n} simulated agents over mutual-TLS websockets in the \
             benchmark's process, each {CHECKS} results per period in one frame; at the nominal load: {}",
            nominal.line()
        ),
    )];
    let best = levels
        .iter()
        .filter(|l| l.sustained())
        .map(|l| l.offered)
        .fold(f64::NAN, f64::max);
    figures.push(figure(
        smoke,
        1,
        best,
        format!(
            "the highest offered rate with >= 95% of it stored (acknowledged) and result -> alert p99 < 1 s; \
             the benchmark's simulated agents share the machine's 2 cores with the server; levels: {all}"
        ),
    ));
    figures.push(figure(
        smoke,
        3,
        nominal.server_cpu * 100.0 / (nominal.offered / 1_000.0),
        format!(
            "server utime+stime over the nominal level divided by its rate in thousands/s ({:.0}% of a core at {:.0} \
             results/s); Sensu Go's published sizing is a core per 50 checks/s, i.e. 2,000% per 1,000/s",
            nominal.server_cpu * 100.0,
            nominal.offered
        ),
    ));
    Ok(figures)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

const AGENT_HOST: &str = "bench-checks";

/// A system and 20 exec checks every 10 s on hosts labelled `role: checks`.
fn checks_spec(plugin: &str, args: &[&str]) -> String {
    let mut spec = String::from(
        "apiVersion: endstate/v1\nkind: System\nname: bench\ndescription: The monitoring benchmark's checks.\n",
    );
    let args = args.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", ");
    for i in 0..CHECKS {
        spec.push_str(&format!(
            "---\napiVersion: endstate/v1\nkind: Check\nname: c{i}\nsystem: bench\nexec:\n  command: {plugin}\n  \
             args: [{args}]\ninterval: 10s\ntimeout: 5s\ntargets:\n  selector: {{ role: checks }}\n"
        ));
    }
    spec
}

/// The real agent with 20 checks every 10 s: its own CPU (utime + stime), the plugins' apart.
async fn agent_cpu(exe: &Path, smoke: bool) -> anyhow::Result<Figure> {
    let sizes = Sizes::new(smoke);
    let dir = tempfile::tempdir()?;
    let spec = ServerSpec::local(exe, dir.path().join("server"));
    let mut server = ServerProc::start(&spec).await?;
    let admin = server.admin()?;
    let client = endstate_client::Client::new(&server.http, &admin)?;
    let dummy = "/usr/lib/nagios/plugins/check_dummy";
    let (plugin, args): (&str, &[&str]) = if Path::new(dummy).exists() {
        (dummy, &["0", "bench"])
    } else {
        ("/bin/true", &[])
    };
    crate::agents::server::submit_spec(&client, checks_spec(plugin, args), "monitoring benchmark: 20 checks").await?;
    let token = client
        .create_join_token(&endstate_api::CreateJoinToken {
            ttl: Some("10m".into()),
            labels: BTreeMap::from([("role".to_owned(), "checks".to_owned())]),
            host: Some(AGENT_HOST.into()),
        })
        .await?;
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(agent_dir.join("artifacts"))?;
    std::fs::set_permissions(&agent_dir, std::fs::Permissions::from_mode(0o700))?;
    let log = agent_dir.join("agent.log");
    let agent = AgentProc(
        crate::agents::server::agent_command(
            exe,
            &server.http,
            AGENT_HOST,
            (&agent_dir, &agent_dir.join("artifacts")),
            &token,
            &log,
        )?
        .spawn()?,
    );
    let pid = agent.pid();
    let result = async {
        // Wait until every check reported once, then a period more.
        let started = Instant::now();
        loop {
            let page = client
                .timeline(&endstate_client::TimelineQuery {
                    kind: Some("check.status".into()),
                    host: Some(AGENT_HOST.into()),
                    limit: Some(100),
                    ..endstate_client::TimelineQuery::default()
                })
                .await?;
            if page.items.len() >= CHECKS {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(60),
                "{} of {CHECKS} checks reported within 60 s",
                page.items.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let ran = started.elapsed();
        tokio::time::sleep(if smoke { Duration::from_secs(1) } else { PERIOD }).await;
        let own0 = procfs::cpu_seconds(pid)?;
        let children0 = procfs::children_cpu_seconds(pid)?;
        let t0 = Instant::now();
        tokio::time::sleep(sizes.agent_window).await;
        let elapsed = t0.elapsed().as_secs_f64();
        let own = procfs::cpu_seconds(pid)? - own0;
        let children = procfs::children_cpu_seconds(pid)? - children0;
        Ok(figure(
            smoke,
            2,
            own / elapsed * 100.0,
            format!(
                "utime+stime of the `endstate agent` process over {elapsed:.0} s ({:.0} ms) running {CHECKS} exec \
                 checks of {plugin} every 10 s (all reported {:.1} s after the agent's start); the plugin \
                 processes it forked and reaped, apart: {:.0} ms ({:.2}% of a core); keepalive every 5 s; \
                 clock tick {} ms",
                own * 1000.0,
                ran.as_secs_f64(),
                children * 1000.0,
                children / elapsed * 100.0,
                1000 / procfs::clock_ticks().max(1)
            ),
        ))
    }
    .await;
    drop(agent);
    if result.is_err() {
        eprintln!(
            "monitoring: agent log tail:\n{}",
            crate::agents::server::log_tail(&log, 20)
        );
    }
    server.stop(Duration::from_secs(5)).await;
    result
}
