//! The Decider: before every wave of a rollout, and at every round while a wave runs, it answers
//! allow, wait, halt or roll back, with every rule it looked at and what it found.
//!
//! Pure and synchronous: the controller gathers the inputs (live instance states, gate readings,
//! freeze windows, the state of the systems) and the current time, the Decider only decides, so
//! the same inputs always give the same decision and every decision can be replayed from the
//! timeline, where the controller writes it with its inputs.

mod cron;

use serde::{Deserialize, Serialize};

pub use cron::{Cron, CronError, freeze_window_at};

/// Which way a rollout is going.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Towards the change's revision.
    Forward,
    /// Back to the last converged revision, after a halt that asked for it or by hand.
    Back,
}

/// What a failed rollout does (the component's `rollout.on_failure`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Stop and wait for a person.
    Halt,
    /// Go back to the last converged revision.
    Rollback,
}

/// The live state of one instance changed by the rollout, as the controller observed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceView {
    /// `system/component#slot`.
    pub id: String,
    /// The host.
    pub host: String,
    /// Whether the agent reports it at the version and generation the wave asked for.
    pub at_target: bool,
    /// What the agent reports.
    pub state: InstanceState,
    /// The health verdict of its probe, `None` before the first verdict or without a probe.
    pub healthy: Option<bool>,
    /// Since when it has been healthy without interruption (at the target), if it is.
    pub healthy_since_ms: Option<i64>,
    /// Restarts of the process at the target version.
    pub restarts: u32,
}

/// An instance's state, as far as the Decider cares.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "detail")]
pub enum InstanceState {
    /// Not observed yet at the target (being installed, starting, or the agent has not reported).
    Pending,
    /// Running.
    Running,
    /// Exited, failed to spawn or backing off between restarts; the detail says which.
    Failed(String),
    /// Its host is unreachable: its state is not known.
    Unknown,
    /// Stopped (for a wave of stops: the end state).
    Stopped,
}

/// The wave the decision is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveView {
    /// From 0.
    pub index: u32,
    /// How many waves in all.
    pub count: u32,
    /// When it started (its steps were released to the agents); `None` before it started.
    pub started_ms: Option<i64>,
    /// How long its instances must stay healthy before it is done.
    pub min_healthy_ms: u64,
    /// The pause after it before the next wave.
    pub pause_after_ms: u64,
    /// How long its instances have to become healthy before the wave counts as failed.
    pub deadline_ms: u64,
    /// Whether it only stops instances (then its instances are done when they are gone).
    pub stops_only: bool,
}

/// A metric gate's reading, gathered by the controller (a Prometheus query, a streamed metric).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GateReading {
    /// The gate's name as declared (`error-rate`).
    pub name: String,
    /// What was measured, for people (the query).
    pub source: String,
    /// The value, or why there is none (the query failed, returned nothing).
    pub value: Result<f64, String>,
    /// The rule the value must satisfy.
    pub rule: GateRule,
}

/// What a gate's value must satisfy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateRule {
    /// At most this.
    Max(f64),
    /// At least this.
    Min(f64),
    /// At most `max_ratio` times the baseline (canary against baseline).
    MaxRatioToBaseline { baseline: Result<f64, String>, max_ratio: f64 },
}

/// A freeze window declared by a policy that covers a system of the change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreezeView {
    /// The policy that declares it.
    pub policy: String,
    /// When it opens (5-field cron, UTC); valid (the spec checked it).
    pub cron: String,
    /// How long it stays closed.
    pub duration_ms: u64,
    /// Why, as declared.
    pub reason: String,
}

/// Limits on what may be in flight at once, across all changes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlastRadius {
    /// Hosts with a released, unfinished step if the next wave starts.
    pub hosts: u32,
    /// Instances likewise.
    pub instances: u32,
    /// Failure domains likewise.
    pub domains: u32,
    /// Limits (`None`: no limit).
    pub max_hosts: Option<u32>,
    pub max_instances: Option<u32>,
    pub max_domains: Option<u32>,
}

/// Everything one decision looks at.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Input {
    /// Now, in milliseconds since the epoch (the controller reads the clock, not the Decider).
    pub now_ms: i64,
    /// Which way the rollout goes.
    pub direction: Direction,
    /// Whether a person paused the change.
    pub paused: bool,
    /// The current wave; `None` before the first wave is released.
    pub wave: Option<WaveView>,
    /// The instances the current wave changed.
    pub wave_instances: Vec<InstanceView>,
    /// The instances earlier waves changed (they must stay healthy).
    pub earlier_instances: Vec<InstanceView>,
    /// When the current wave was done (all healthy for min_healthy_time), if it is, as the
    /// controller recorded it: the pause after it counts from then.
    pub wave_done_ms: Option<i64>,
    /// Metric gates of the components being changed.
    pub gates: Vec<GateReading>,
    /// Freeze windows of the policies covering the change's systems.
    pub freezes: Vec<FreezeView>,
    /// Problems of the change's systems outside the instances it changes
    /// (`shop/db#0 on h3 is unhealthy`): a system already degraded.
    pub degraded: Vec<String>,
    /// Other open changes on the same hosts (`change 12 on h1, h2`).
    pub conflicts: Vec<String>,
    /// What would be in flight if the next wave started.
    pub blast: BlastRadius,
    /// What to do on failure.
    pub on_failure: OnFailure,
    /// Whether this is the last wave (then `Allow` means the change may converge).
    pub last_wave: bool,
}

/// The answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The current wave is done: start the next one (or, after the last, converge).
    Allow,
    /// Not yet: look again at `recheck_at_ms` or when something changes.
    Wait,
    /// Stop and wait for a person.
    Halt,
    /// Go back to the last converged revision.
    Rollback,
}

/// One rule looked at, and what it found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// The rule (`health`, `min_healthy_time`, `deadline`, `gate:error-rate`, `freeze`, `degraded`,
    /// `conflict`, `blast_radius`, `pause`, `paused`).
    pub rule: String,
    /// Whether it lets the rollout go on.
    pub ok: bool,
    /// What it found, naming values and instances.
    pub message: String,
}

/// A decision with its reasons.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The answer.
    pub verdict: Verdict,
    /// Every rule looked at, the ones that decided first.
    pub findings: Vec<Finding>,
    /// When to look again, for a wait with a known end (a pause, min healthy time, a freeze window).
    pub recheck_at_ms: Option<i64>,
}

impl Decision {
    /// The reasons that decided, joined: `health: web#0 on h1 is unhealthy; ...`; for an allow,
    /// a summary of what was checked.
    pub fn summary(&self) -> String {
        let deciding: Vec<String> = self
            .findings
            .iter()
            .filter(|f| f.ok == (self.verdict == Verdict::Allow))
            .map(|f| format!("{}: {}", f.rule, f.message))
            .collect();
        deciding.join("; ")
    }
}

/// Decides. See the crate docs and the rules on [`Input`]'s fields.
pub fn decide(input: &Input) -> Decision {
    // Placeholder until the rules land: allow when every instance of the wave is running and healthy.
    let done = input
        .wave_instances
        .iter()
        .all(|i| i.at_target && i.state == InstanceState::Running && i.healthy != Some(false));
    Decision {
        verdict: if done { Verdict::Allow } else { Verdict::Wait },
        findings: Vec::new(),
        recheck_at_ms: None,
    }
}
