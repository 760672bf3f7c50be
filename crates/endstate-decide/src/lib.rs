//! The Decider: before every wave of a rollout, and at every round while a wave runs, it answers
//! allow, wait, halt or roll back, with every rule it looked at and what it found.
//!
//! Pure and synchronous: the controller gathers the inputs (live instance states, gate readings,
//! freeze windows, the state of the systems) and the current time, the Decider only decides, so
//! the same inputs always give the same decision and every decision can be replayed from the
//! timeline, where the controller writes it with its inputs.
//!
//! # The rules
//!
//! [`decide`] looks at the rules below in this order. Every rule looked at adds a [`Finding`], ok
//! or not; the findings come failures first, then waits, then what passed, each group in rule
//! order. Waves are named from 1 in messages (`wave 2` is index 1).
//!
//! 1. **paused** (a finding only when paused): a paused change waits, with no `recheck_at_ms` of
//!    its own (resuming is an event). Pausing replaces *allow*
//!    by *wait* only: failures are still looked for, and a failure while paused still halts or
//!    rolls back (a paused change with a dying canary must still roll back).
//! 2. **Failure**, while a wave runs (`wave.started_ms` is set):
//!    - `health`: an instance of the wave or of earlier waves at the target that is unhealthy
//!      (`healthy == Some(false)`) or `Failed`, or any that restarted 3 times or more. Instances
//!      of a stop wave are not judged on health (stopped or gone is their end state); instances
//!      whose host is unreachable are not judged on their (stale) health either.
//!    - `deadline`: once `started_ms + deadline_ms` is reached (`now >= ...`), every instance of
//!      the wave must be at the target, running and healthy (stop waves: stopped or gone). A
//!      `deadline_ms` of 0 means no deadline.
//!    - `gate:<name>`: a value breaking its rule. A gate without a value (or whose value is NaN)
//!      waits until the deadline, then fails. `MaxRatioToBaseline` fails when
//!      `value > max_ratio * baseline`: a baseline of 0 allows 0 only (any positive value fails)
//!      unless `max_ratio` is infinite; a baseline without a value waits like a missing value.
//!
//!    An instance that exited or is backing off while its agent restarts it is not a failure by
//!    that alone: it is judged by how often it restarted at the target version (3 or more fail),
//!    and waits meanwhile, so one crash of a process that comes back healthy fails nothing; one
//!    that cannot be spawned fails at once.
//!
//!    A failure rolls back when the rollout goes forward and `on_failure` is `rollback`, and
//!    halts otherwise: a failing rollback halts, it is never rolled back. Going back never
//!    destroys what had no earlier version: while the released waves created instances
//!    ([`Input::created`]), a failure halts (rule `no_earlier_version` says so), and a person
//!    decides (`abort` removes them, `resume` tries again).
//! 3. **Wave not done**, while a wave runs (rule `health` unless said otherwise):
//!    - every instance of the wave at the target, `Running` and healthy: `healthy == Some(true)`,
//!      or `healthy == None` with `healthy_since_ms` set (no probe: the controller sets
//!      `healthy_since_ms` from when it saw the instance running at the target); `None` without
//!      `healthy_since_ms` waits for the first verdict. Stop waves: every instance `Stopped` or
//!      gone (the controller drops instances that are gone).
//!    - an instance whose host is unreachable (`Unknown`) waits, named by host; this applies to
//!      earlier waves' instances too, which must also still run at the target (`Stopped` ones
//!      are taken as stopped by an earlier stop wave).
//!    - `min_healthy_time`: every instance healthy for `min_healthy_ms` (from `healthy_since_ms`,
//!      from now if a healthy instance has none); waits until the last one reaches it.
//!
//!    Waits for the wave's instances and for gate readings recheck at the deadline, when they
//!    would turn into a failure.
//! 4. **pause**: after a done wave that is not the last, `pause_after_ms` from `wave_done_ms`
//!    (when the controller did not record it: from when the last instance reached its minimum
//!    healthy time, or now for a stop wave).
//! 5. Only when a next wave would start (no wave started yet, or the running one is not the last):
//!    - `freeze`: an open freeze window waits until it closes (see [`freeze_window_at`]); a
//!      rollback is never blocked by a freeze. An invalid cron (the spec validates them, so it
//!      should not happen) waits with the parse error.
//!    - `degraded`: a problem outside the change waits, going forward only.
//!    - `conflict`: another open change on the same hosts waits.
//!    - `blast_radius`: a count over its limit waits.
//! 6. Otherwise **allow**; the findings list what passed.
//!
//! Rules of a step are looked at only when the steps before it hold nothing (a pause by a person
//! aside): a wave that is not done yet does not report freeze windows. A wait rechecks at the
//! earliest known end among the findings that hold it (`None` when none has a known end).

mod cron;
mod rules;

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

impl Verdict {
    /// Its word, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Wait => "wait",
            Verdict::Halt => "halt",
            Verdict::Rollback => "rollback",
        }
    }
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
    /// Since when it has been healthy without interruption (at the target), if it is. Without a
    /// probe (`healthy` stays `None`), since when it has been running at the target: the Decider
    /// counts such an instance healthy from then, and waits for a first verdict while it is `None`.
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
    MaxRatioToBaseline {
        /// The same measure on the instances not changed, or why there is none.
        baseline: Result<f64, String>,
        /// The ratio not to exceed.
        max_ratio: f64,
    },
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
    /// Limits (`None`: no limit): on hosts,
    pub max_hosts: Option<u32>,
    /// on instances,
    pub max_instances: Option<u32>,
    /// on failure domains.
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
    /// Instances the released waves created that had no earlier version (a first deployment, a
    /// new component, a scale-up): going back would stop them, so a failure halts instead of
    /// rolling back while there are any.
    #[serde(default)]
    pub created: u32,
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
    /// The reasons that decided, joined: `health: web#0 on h1 is unhealthy; ...` (for a halt or a
    /// rollback, the failures first, then what would have held the rollout anyway); for an allow,
    /// what was checked.
    pub fn summary(&self) -> String {
        let allow = self.verdict == Verdict::Allow;
        let deciding: Vec<String> = self
            .findings
            .iter()
            .filter(|f| f.ok == allow)
            .map(|f| format!("{}: {}", f.rule, f.message))
            .collect();
        if deciding.is_empty() {
            return if allow {
                "nothing to check".to_owned()
            } else {
                "no reason given".to_owned()
            };
        }
        deciding.join("; ")
    }
}

/// Decides: see the rules in the crate docs.
pub fn decide(input: &Input) -> Decision {
    rules::decide(input)
}
