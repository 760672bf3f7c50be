//! Rollout benchmarks: the planner at fleet scale, the Decider, and a health regression through a
//! real server to a halted (or rolled back) change.
//!
//! Targets (from the issue):
//! - plan 100,000 instances on 10,000 hosts across 10 zones in at most 100 ms, with at most
//!   200 MB of memory;
//! - re-plan after one instance changed in at most 1 ms (the planner places only the components
//!   whose declaration changed, and of a component whose count alone changed only the instances
//!   the two counts do not share; it still diffs every declared object);
//! - one Decider evaluation, metric queries excluded, in under 1 ms;
//! - from an unhealthy observation of a canary to the change halted in at most 100 ms beyond the
//!   detection interval (here the agent reports the verdict, so the detection is immediate), no
//!   step released after the halt, and a rollback started at most 1 s after its decision
//!   ([`halt`]).
//!
//! Every figure is measured in this process, except the planner's memory: a fresh process of this
//! harness plans once and reports its peak resident memory (see [`plan_memory_child`]).

mod halt;

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

use endstate_decide::{
    BlastRadius, Direction, FreezeView, GateReading, GateRule, Input, InstanceState, InstanceView, OnFailure, Verdict,
    WaveView,
};
use endstate_plan::{PlanOptions, StepAction};
use endstate_spec::{DesiredState, HostInfo, SourceFile};

use crate::figure::{Figure, Goal};

/// The hidden argument that makes this harness the fresh process measuring the planner's memory.
pub(crate) const PLAN_MEMORY_ARG: &str = "--rollout-plan-memory";

const ZONES: usize = 10;

/// The sizes of one run.
struct Sizes {
    hosts: usize,
    plan_runs: usize,
    replan_runs: usize,
    decide_calls: usize,
}

impl Sizes {
    fn of(smoke: bool) -> Sizes {
        if smoke {
            Sizes {
                hosts: 500,
                plan_runs: 1,
                replan_runs: 3,
                decide_calls: 2_000,
            }
        } else {
            Sizes {
                hosts: 10_000,
                plan_runs: 5,
                replan_runs: 200,
                decide_calls: 100_000,
            }
        }
    }
}

/// The `planner` group: the planner at fleet scale and the Decider, in this process.
pub(crate) fn run_planner(smoke: bool) -> anyhow::Result<Vec<Figure>> {
    let sizes = Sizes::of(smoke);
    let mut figures = Vec::new();
    eprintln!("planner: planning {} hosts", sizes.hosts);
    figures.extend(plan_figures(&sizes)?);
    eprintln!("planner: {} Decider evaluations", sizes.decide_calls);
    figures.extend(decide_figure(&sizes)?);
    Ok(figures)
}

/// The `rollout` group: a health regression through a real server.
pub(crate) fn run(smoke: bool) -> anyhow::Result<Vec<Figure>> {
    Ok(halt::run(smoke))
}

/// The fleet: hosts over 10 zones, and the desired state of 10 components before (version 1) and
/// after (version 2) an upgrade of every one of them.
struct Fleet {
    hosts: Vec<HostInfo>,
    before: DesiredState,
    after: DesiredState,
}

fn fleet(n_hosts: usize) -> anyhow::Result<Fleet> {
    let hosts = fleet_hosts(n_hosts);
    Ok(Fleet {
        before: fleet_state(n_hosts, "1.0.0", 0, &hosts)?,
        after: fleet_state(n_hosts, "2.0.0", 0, &hosts)?,
        hosts,
    })
}

fn fleet_hosts(n: usize) -> Vec<HostInfo> {
    (0..n)
        .map(|i| HostInfo {
            name: format!("host-{i:05}"),
            labels: [
                ("role".to_owned(), "node".to_owned()),
                ("zone".to_owned(), format!("z{}", i % ZONES)),
            ]
            .into_iter()
            .collect(),
        })
        .collect()
}

/// The fleet's desired state at `version`, as YAML documents loaded and validated by
/// `endstate-spec`: 10 components placing 10 instances per host on average (6 `per_host: 1`
/// components, one `per_host: 2`, and 3 `total` ones spread by zone, 40%, 100% and 60% of the host
/// count), with their ports, probes, rollout strategies and dependencies. `extra_worker` adds
/// instances to the `worker` total.
fn fleet_state(n_hosts: usize, version: &str, extra_worker: usize, hosts: &[HostInfo]) -> anyhow::Result<DesiredState> {
    // name, count, ports, health, rollout, depends_on
    let tenth = |n: usize| n_hosts * n / 10;
    let components: [(&str, String, &str, &str, &str, &str); 10] = [
        (
            "node-exporter",
            "{ per_host: 1 }".into(),
            "",
            "",
            "canary: 10\n  batch: { percent: 10 }\n  one_domain_at_a_time: zone\n  min_healthy_time: 30s",
            "",
        ),
        (
            "log-shipper",
            "{ per_host: 1 }".into(),
            "ports:\n  - name: metrics\n    exclusive: true\n",
            "health:\n  tcp: { port: metrics }\n  interval: 5s\n",
            "canary: 5\n  batch: { size: 500 }\n  max_unavailable: 250\n  one_domain_at_a_time: zone\n  min_healthy_time: 30s\n  on_failure: rollback",
            "",
        ),
        (
            "dns-cache",
            "{ per_host: 1 }".into(),
            "ports:\n  - name: dns\n    number: 5353\n",
            "health:\n  tcp: { port: dns }\n  interval: 5s\n",
            "canary: 1\n  batch: { percent: 5 }\n  max_unavailable: 100\n  one_domain_at_a_time: zone\n  min_healthy_time: 1m\n  on_failure: rollback",
            "",
        ),
        (
            "sidecar-proxy",
            "{ per_host: 2 }".into(),
            "ports:\n  - name: admin\n  - name: proxy\n",
            "health:\n  http: { port: admin, path: /ready }\n  interval: 2s\n",
            "canary: 20\n  batch: { percent: 10 }\n  one_domain_at_a_time: zone\n  min_healthy_time: 30s\n  on_failure: rollback",
            "",
        ),
        (
            "security-agent",
            "{ per_host: 1 }".into(),
            "",
            "health:\n  exec: { command: bin/check, args: [--quick] }\n  interval: 30s\n",
            "canary: 1\n  batch: { size: 1000 }\n  one_domain_at_a_time: zone\n  pause: 1m",
            "",
        ),
        (
            "cert-rotator",
            "{ per_host: 1 }".into(),
            "",
            "",
            "batch: { percent: 25 }",
            "",
        ),
        (
            "backup-agent",
            "{ per_host: 1 }".into(),
            "",
            "",
            "batch: { percent: 50 }",
            "",
        ),
        (
            "db-proxy",
            format!("{{ total: {} }}\n  spread_by: zone", tenth(4)),
            "ports:\n  - name: sql\n    exclusive: true\n",
            "health:\n  tcp: { port: sql }\n  interval: 2s\n",
            "canary: 2\n  batch: { size: 100 }\n  max_unavailable: 50\n  one_domain_at_a_time: zone\n  min_healthy_time: 1m\n  on_failure: rollback",
            "",
        ),
        (
            "api",
            format!("{{ total: {} }}\n  spread_by: zone", tenth(10)),
            "ports:\n  - name: http\n",
            "health:\n  http: { port: http, path: /health }\n  interval: 1s\n  timeout: 1s\n",
            "canary: 10\n  batch: { percent: 5 }\n  max_unavailable: 200\n  one_domain_at_a_time: zone\n  min_healthy_time: 30s\n  on_failure: rollback",
            "[db-proxy]",
        ),
        (
            "worker",
            format!("{{ total: {} }}\n  spread_by: zone", tenth(6) + extra_worker),
            "",
            "",
            "canary: 5\n  batch: { size: 300 }\n  one_domain_at_a_time: zone\n  min_healthy_time: 30s\n  on_failure: halt",
            "[api]",
        ),
    ];
    let mut text = String::from(
        "apiVersion: endstate/v1\nkind: System\nname: fleet\ndescription: The rollout benchmark's fleet.\n",
    );
    for (name, count, ports, health, rollout, depends_on) in components {
        write!(
            text,
            "---\napiVersion: endstate/v1\nkind: Component\nname: {name}\nsystem: fleet\n\
             artifact:\n  version: \"{version}\"\n  url: https://artifacts.example.com/{name}-{version}.tar.gz\n  \
             sha256: {sha}\ncommand: bin/{name}\nargs: [\"--host\", \"{{{{ instance.host }}}}\"]\n\
             env: {{ RUST_LOG: info }}\n{ports}{health}\
             placement:\n  selector: {{ role: node }}\n  count: {count}\nrollout:\n  {rollout}\n",
            sha = "ab".repeat(32),
        )?;
        if !depends_on.is_empty() {
            writeln!(text, "depends_on: {depends_on}")?;
        }
    }
    let files = [SourceFile {
        path: "fleet.yaml".to_owned(),
        text,
    }];
    let loaded = endstate_spec::load(&files, hosts);
    let desired = loaded.desired.ok_or_else(|| {
        anyhow::anyhow!(
            "the generated fleet spec has {} diagnostics, the first: {}",
            loaded.diagnostics.len(),
            loaded.diagnostics.first().map(ToString::to_string).unwrap_or_default()
        )
    })?;
    Ok(desired)
}

fn plan_figures(sizes: &Sizes) -> anyhow::Result<Vec<Figure>> {
    let fleet = fleet(sizes.hosts)?;
    let options = PlanOptions::default();
    let n_instances = endstate_plan::place(&fleet.after, &fleet.hosts).0.len();

    // 1. The full plan of an upgrade of every component.
    let mut timings = Vec::with_capacity(sizes.plan_runs);
    let mut shape = String::new();
    for _ in 0..sizes.plan_runs {
        let started = Instant::now();
        let plan = endstate_plan::plan_with(Some(&fleet.before), &fleet.after, &fleet.hosts, &options);
        let elapsed = started.elapsed();
        anyhow::ensure!(
            plan.steps.len() == n_instances && plan.steps.iter().all(|s| s.action == StepAction::Upgrade),
            "the upgrade plan has {} steps, expected {n_instances} upgrades",
            plan.steps.len()
        );
        anyhow::ensure!(
            plan.blocked.is_empty() && plan.unplaced.is_empty(),
            "the upgrade plan is blocked or unplaced: {:?} {:?}",
            plan.blocked.first(),
            plan.unplaced.first()
        );
        let in_waves: usize = plan.waves.iter().map(|w| w.steps.len()).sum();
        anyhow::ensure!(
            in_waves == n_instances,
            "{in_waves} steps in waves, expected {n_instances}"
        );
        if shape.is_empty() {
            // What the runner stores with the change.
            let json = serde_json::to_vec(&plan)?.len();
            shape = format!(
                "{} steps in {} waves, {} MB as JSON",
                plan.steps.len(),
                plan.waves.len(),
                json / 1_000_000
            );
        }
        drop(black_box(plan));
        timings.push(elapsed);
    }
    let runs: Vec<String> = timings.iter().map(|t| format!("{:.0}", millis(*t))).collect();
    let (median, max) = median_max(&mut timings);
    let what = format!(
        "{n_instances} instances, {} hosts, {ZONES} zones, 10 components v1->v2: {shape}",
        sizes.hosts
    );
    let mut figures = vec![
        Figure {
            name: "rollout: plan 100k instances, median".to_owned(),
            value: millis(median),
            unit: "ms",
            target: 100.0,
            goal: Goal::AtMost,
            detail: format!("plan_with, {what}; median of {}", sizes.plan_runs),
        },
        Figure {
            name: "rollout: plan 100k instances, max".to_owned(),
            value: millis(max),
            unit: "ms",
            target: 100.0,
            goal: Goal::AtMost,
            detail: format!("runs in order: {} ms", runs.join(", ")),
        },
    ];
    figures.push(plan_memory_figure(sizes.hosts));

    // 2. A re-plan after one instance changed: one more `worker` instance, from the converged v2.
    let one_more = fleet_state(sizes.hosts, "2.0.0", 1, &fleet.hosts)?;
    // A re-plan takes about a millisecond: a few runs would measure this machine's noise (the
    // first runs, caches cold, take twice as long), so it runs as often as the smoke size allows.
    let runs = sizes.replan_runs;
    let mut timings = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let plan = endstate_plan::plan_with(Some(&fleet.after), &one_more, &fleet.hosts, &options);
        let elapsed = started.elapsed();
        anyhow::ensure!(
            plan.steps.len() == 1 && plan.steps.iter().all(|s| s.action == StepAction::Start),
            "the re-plan has {} steps, expected one start",
            plan.steps.len()
        );
        drop(black_box(plan));
        timings.push(elapsed);
    }
    let (replan, replan_max) = median_max(&mut timings);
    let replan_p99 = quantile(&timings, 0.99);
    // What placing the changed component alone costs: the floor of a planner that would re-place
    // only the components that changed.
    let mut only_worker = DesiredState::default();
    if let Some((key, component)) = one_more.components.iter().find(|(k, _)| k.ends_with("/worker")) {
        only_worker.components.insert(key.clone(), component.clone());
    }
    let started = Instant::now();
    let placed = black_box(endstate_plan::place(&only_worker, &fleet.hosts)).0.len();
    let place_one = started.elapsed();
    figures.push(Figure {
        name: "rollout: re-plan after one instance changed".to_owned(),
        value: millis(replan),
        unit: "ms",
        target: 1.0,
        goal: Goal::AtMost,
        detail: format!(
            "plan_with from the converged v2 to v2 with one more worker instance (1 start step): the planner \
             places only what the two counts of the changed component do not share (it still selects and \
             orders that component's hosts) and diffs every declared object; median of {runs}, p99 {:.2} ms, max {:.1} ms; placing the changed component alone \
             ({placed} instances) takes {:.2} ms",
            millis(replan_p99),
            millis(replan_max),
            millis(place_one)
        ),
    });
    Ok(figures)
}

/// Peak memory of one plan, measured in a fresh process of this harness (this process has run
/// other benchmarks, whose freed memory would hide the planner's).
fn plan_memory_figure(hosts: usize) -> Figure {
    let name = "rollout: plan 100k instances, peak memory".to_owned();
    match plan_memory(hosts) {
        Ok((growth_kib, detail)) => Figure {
            name,
            value: growth_kib as f64 / 1024.0,
            unit: "MB",
            target: 200.0,
            goal: Goal::AtMost,
            detail,
        },
        Err(error) => Figure::not_measured(name, "MB", 200.0, Goal::AtMost, format!("{error:#}")),
    }
}

fn plan_memory(hosts: usize) -> anyhow::Result<(u64, String)> {
    let exe = std::env::current_exe()?;
    let output = std::process::Command::new(&exe)
        .arg(PLAN_MEMORY_ARG)
        .arg(hosts.to_string())
        .stdin(std::process::Stdio::null())
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "the planning process failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let field = |name: &str| {
        report
            .get(name)
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| anyhow::anyhow!("the planning process reported no {name}: {report}"))
    };
    let (rss_before, hwm_after, rss_after) = (
        field("rss_before_kib")?,
        field("hwm_after_kib")?,
        field("rss_after_kib")?,
    );
    let growth = hwm_after.saturating_sub(rss_before);
    let detail = format!(
        "a fresh process builds the inputs ({} MB resident), resets its peak (/proc/self/clear_refs), plans once: \
         peak VmHWM minus VmRSS before; VmRSS after, the plan held: +{} MB (malloc keeps what was freed)",
        rss_before / 1024,
        rss_after.saturating_sub(rss_before) / 1024
    );
    Ok((growth, detail))
}

/// The fresh process of [`plan_memory_figure`]: builds the fleet, resets the peak resident size,
/// plans once, prints `{"rss_before_kib", "hwm_after_kib", "rss_after_kib"}`.
pub(crate) fn plan_memory_child(hosts: &str) -> anyhow::Result<()> {
    let hosts: usize = hosts.parse()?;
    let fleet = fleet(hosts)?;
    let options = PlanOptions::default();
    let rss_before = status_kib("VmRSS:")?;
    // Writing 5 resets the peak resident size (VmHWM) to the current one (Linux >= 4.0).
    std::fs::write("/proc/self/clear_refs", "5")
        .map_err(|e| anyhow::anyhow!("cannot reset the peak resident size (/proc/self/clear_refs): {e}"))?;
    let hwm_reset = status_kib("VmHWM:")?;
    anyhow::ensure!(
        hwm_reset <= rss_before + 4096,
        "the peak resident size was not reset ({hwm_reset} KiB after the reset, {rss_before} KiB resident)"
    );
    let plan = endstate_plan::plan_with(Some(&fleet.before), &fleet.after, &fleet.hosts, &options);
    let hwm_after = status_kib("VmHWM:")?;
    let rss_after = status_kib("VmRSS:")?;
    anyhow::ensure!(!plan.steps.is_empty(), "the plan has no step");
    drop(black_box(plan));
    println!(
        "{}",
        serde_json::json!({ "rss_before_kib": rss_before, "hwm_after_kib": hwm_after, "rss_after_kib": rss_after })
    );
    Ok(())
}

fn status_kib(field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("/proc/self/status has no {field}"))
}

/// One Decider evaluation: a wave of 100 instances done, 300 earlier instances healthy, 3 gate
/// readings passing, 3 freeze windows whose crons never fire (30 February, 31 April, 31 June) and
/// that last 300 days, so each is scanned back 300 days: the decision is allow, after every rule.
fn decide_figure(sizes: &Sizes) -> anyhow::Result<Vec<Figure>> {
    let input = decide_input();
    let decision = endstate_decide::decide(&input);
    anyhow::ensure!(
        decision.verdict == Verdict::Allow,
        "the Decider's input should allow, it says {:?}: {}",
        decision.verdict,
        decision.summary()
    );
    anyhow::ensure!(
        decision.findings.iter().any(|f| f.rule == "freeze" && f.ok),
        "the freeze windows were not looked at: {}",
        decision.summary()
    );
    let mut timings = Vec::with_capacity(sizes.decide_calls);
    for _ in 0..sizes.decide_calls {
        let started = Instant::now();
        let decision = endstate_decide::decide(black_box(&input));
        let elapsed = started.elapsed();
        drop(black_box(decision));
        timings.push(elapsed);
    }
    timings.sort_unstable();
    let p50 = quantile(&timings, 0.5);
    let p99 = quantile(&timings, 0.99);
    Ok(vec![
        Figure {
            name: "rollout: one Decider evaluation, p50".to_owned(),
            value: micros(p50) / 1000.0,
            unit: "ms",
            target: 1.0,
            goal: Goal::AtMost,
            detail: format!(
                "decide() alone, timed per call: wave of 100 instances done + 300 earlier healthy, 3 gate readings, \
                 3 freeze windows (crons that never fire, 300 days each): allow; {} calls",
                sizes.decide_calls
            ),
        },
        Figure {
            name: "rollout: one Decider evaluation, p99".to_owned(),
            value: micros(p99) / 1000.0,
            unit: "ms",
            target: 1.0,
            goal: Goal::AtMost,
            detail: format!(
                "p50 {:.1} us, p99 {:.1} us, max {:.1} us",
                micros(p50),
                micros(p99),
                micros(timings.last().copied().unwrap_or_default())
            ),
        },
    ])
}

fn decide_input() -> Input {
    // 2025-03-14 12:00 UTC.
    let now_ms: i64 = 1_741_953_600_000;
    let instance = |i: usize, wave: usize| InstanceView {
        id: format!("fleet/api#{}", i % 4),
        host: format!("host-{:05}", wave * 1000 + i),
        at_target: true,
        state: InstanceState::Running,
        healthy: Some(true),
        healthy_since_ms: Some(now_ms - 60_000 - i as i64),
        restarts: 0,
    };
    let freeze = |cron: &str, reason: &str| FreezeView {
        policy: "fleet-freezes".to_owned(),
        cron: cron.to_owned(),
        duration_ms: 300 * 24 * 3_600_000,
        reason: reason.to_owned(),
    };
    Input {
        now_ms,
        direction: Direction::Forward,
        paused: false,
        wave: Some(WaveView {
            index: 3,
            count: 20,
            started_ms: Some(now_ms - 120_000),
            min_healthy_ms: 30_000,
            pause_after_ms: 0,
            deadline_ms: 600_000,
            stops_only: false,
        }),
        wave_instances: (0..100).map(|i| instance(i, 3)).collect(),
        earlier_instances: (0..300).map(|i| instance(i, i / 100)).collect(),
        wave_done_ms: Some(now_ms - 30_000),
        gates: vec![
            GateReading {
                name: "error-rate".to_owned(),
                source: "sum(rate(http_errors_total[5m])) / sum(rate(http_requests_total[5m]))".to_owned(),
                value: Ok(0.002),
                rule: GateRule::Max(0.01),
            },
            GateReading {
                name: "throughput".to_owned(),
                source: "sum(rate(http_requests_total[5m]))".to_owned(),
                value: Ok(1250.0),
                rule: GateRule::Min(100.0),
            },
            GateReading {
                name: "latency-p99".to_owned(),
                source: "histogram_quantile(0.99, rate(http_duration_seconds_bucket[5m]))".to_owned(),
                value: Ok(0.21),
                rule: GateRule::MaxRatioToBaseline {
                    baseline: Ok(0.2),
                    max_ratio: 1.5,
                },
            },
        ],
        freezes: vec![
            freeze("0 0 30 2 *", "never: 30 February"),
            freeze("30 12 31 4 *", "never: 31 April"),
            freeze("0 */2 31 6 *", "never: 31 June"),
        ],
        degraded: Vec::new(),
        conflicts: Vec::new(),
        blast: BlastRadius::default(),
        on_failure: OnFailure::Rollback,
        last_wave: false,
        created: 0,
    }
}

/// The median and the maximum.
fn median_max(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort_unstable();
    (quantile(samples, 0.5), samples.last().copied().unwrap_or_default())
}

/// The `q` quantile of sorted samples (nearest rank).
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(idx).copied().unwrap_or_default()
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1_000.0
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1_000_000.0
}
