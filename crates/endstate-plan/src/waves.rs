//! Ordering a plan's steps into safe waves. A wave is a set of steps of one component executed
//! together, then gated (its instances healthy for `min_healthy_time`, then `pause`) before the
//! next wave starts.
//!
//! - **Dependency order.** Components go in topological order of `depends_on` (dependencies
//!   first, ties by key): every wave of a component comes after every wave of the components it
//!   depends on.
//! - **Per component**, the steps are ordered by host group (in the order of
//!   [`PlanOptions::host_groups`], hosts in no group last), then by failure domain when
//!   `rollout.one_domain_at_a_time` names a host label (values sorted, hosts without the label
//!   last), then by host and slot. Starts, upgrades and reconfigurations come first: a canary of
//!   `rollout.canary` instances alone, then batches of `rollout.batch`. Stops of instances no
//!   longer desired come last, batched the same way, so the instances of a retired host start
//!   elsewhere before its own stop.
//! - **Unavailability.** An upgrade or reconfiguration that must stop the old instance before the
//!   new one starts (a fixed or exclusive port, as the server decides in `agents::assign`) makes an instance
//!   unavailable: a wave holds at most `rollout.max_unavailable` of them. Starts are not counted,
//!   nor are stops of instances no longer desired. A component that needs such steps while its
//!   `max_unavailable` is 0 is [`Blocked`] and gets no wave.
//! - A wave never mixes host groups, nor failure domains when the rollout goes one domain at a
//!   time.
//!
//! Every wave says why it is there, with its numbers, and every step why it is in its wave. Every
//! step is in exactly one wave, unless its component is blocked. Pure and deterministic, like the
//! rest of the planner: the result depends neither on the order of the hosts nor on the order of
//! the steps.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use endstate_spec::{Batch, Component, DesiredState, Duration, HostInfo, OnFailure, Rollout};
use serde::{Deserialize, Serialize};

use crate::placement::HostTable;
use crate::{Step, StepAction};

/// Operational parameters given with a change (CLI `--host-groups`, `--retire`; API `options`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanOptions {
    /// Ordered host groups: every step on a host of group 0 comes before any step on a host of
    /// group 1, and so on; hosts in no group come last. Empty: no ordering by group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_groups: Vec<Vec<String>>,
    /// Hosts to retire: nothing is placed on them any more; their instances start elsewhere
    /// first, then stop on them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retire_hosts: Vec<String>,
    /// Hosts changed first: every wave with a step on them comes before any other wave, and
    /// [`Plan::held_after`](crate::Plan::held_after) says where the change holds for a person.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_hosts: Vec<String>,
}

impl PlanOptions {
    /// Whether no option is set.
    pub fn is_empty(&self) -> bool {
        self.host_groups.is_empty() && self.retire_hosts.is_empty() && self.target_hosts.is_empty()
    }

    /// The hosts the new desired state is placed on: every host but the retired ones.
    pub fn placement_hosts(&self, hosts: &[HostInfo]) -> Vec<HostInfo> {
        hosts
            .iter()
            .filter(|h| !self.retire_hosts.contains(&h.name))
            .cloned()
            .collect()
    }
}

/// What a wave is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaveKind {
    /// The first instances of a component, alone, before any batch.
    Canary,
    /// A batch of starts, upgrades or reconfigurations.
    Batch,
    /// Instances no longer desired, stopped once their replacements are healthy.
    Stop,
}

/// One wave: steps of one component executed together, then gated before the next wave.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wave {
    /// From 0, in execution order.
    pub index: u32,
    /// `system/component`.
    pub component: String,
    /// What the wave is for.
    pub kind: WaveKind,
    /// The failure domain of every step of the wave (`zone=a`), when the component's rollout goes
    /// one domain at a time.
    pub domain: Option<String>,
    /// Why the wave is there and its size (`canary: 1 of 6 instances of shop/web alone first
    /// (rollout.canary = 1)`, `batch 2 of 3 of shop/web in zone=b: 2 instances (rollout.batch = 2,
    /// max_unavailable = 2)`).
    pub reason: String,
    /// How long the wave's instances must stay healthy before the next wave (rollout.min_healthy_time).
    pub min_healthy_ms: u64,
    /// How long to wait after this wave is done before the next one starts (rollout.pause), 0 for none.
    pub pause_after_ms: u64,
    /// The steps, in order.
    pub steps: Vec<WaveStep>,
}

/// A step in its wave, with why it is in this wave.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveStep {
    /// The step, as in [`crate::Plan::steps`].
    #[serde(flatten)]
    pub step: Step,
    /// Why it is in this wave, in parts separated by `; ` (`canary; zone=a, domain 1 of 3`,
    /// `batch 2 of 4; host group 1 (h1, h2)`, `the only batch; after shop/db (depends_on)`);
    /// shared by the steps of a wave that have the same reasons.
    pub why: Arc<str>,
}

/// A rollout rule that cannot be satisfied: the plan is refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocked {
    /// `system/component`.
    pub component: String,
    /// The rule, by its spec path (`rollout.max_unavailable`).
    pub rule: String,
    /// Why it blocks, in a sentence that names the values.
    pub reason: String,
}

/// Orders `steps` (the plan's steps) into waves, in execution order, and lists the rollout rules
/// that cannot be satisfied.
///
/// `current` and `desired` give each component's rollout strategy and dependencies (the desired
/// one wins; a removed component uses the current one); `hosts` gives the labels for failure
/// domains.
pub fn waves(
    current: &DesiredState,
    desired: &DesiredState,
    hosts: &[HostInfo],
    steps: &[Step],
    options: &PlanOptions,
) -> (Vec<Wave>, Vec<Blocked>) {
    waves_in(current, desired, &HostTable::new(hosts), steps, options)
}

/// [`waves`] with the hosts already in a table (the planner's own).
pub(crate) fn waves_in(
    current: &DesiredState,
    desired: &DesiredState,
    hosts: &HostTable<'_>,
    steps: &[Step],
    options: &PlanOptions,
) -> (Vec<Wave>, Vec<Blocked>) {
    let ctx = Context::new(hosts, options);
    let mut by_component: BTreeMap<&str, Vec<&Step>> = BTreeMap::new();
    for step in steps {
        by_component.entry(&*step.component).or_default().push(step);
    }
    let mut waves: Vec<Wave> = Vec::new();
    let mut blocked = Vec::new();
    let mut with_waves: BTreeSet<&str> = BTreeSet::new();
    for key in dependency_order(current, desired, by_component.keys().copied()) {
        let Some(component_steps) = by_component.get(key) else {
            continue;
        };
        let component = desired.components.get(key).or_else(|| current.components.get(key));
        let after: Vec<&str> = component
            .map(|c| {
                c.depends_on
                    .iter()
                    .map(String::as_str)
                    .filter(|dep| with_waves.contains(dep))
                    .collect()
            })
            .unwrap_or_default();
        match component_waves(key, component, component_steps, &after, &ctx) {
            Ok(planned) => {
                with_waves.insert(key);
                for mut wave in planned {
                    wave.index = u32::try_from(waves.len()).unwrap_or(u32::MAX);
                    waves.push(wave);
                }
            }
            Err(block) => blocked.push(block),
        }
    }
    (waves, blocked)
}

/// Whether an upgrade or reconfiguration of `component` starts the new instance beside the old one
/// and stops the old one once the new one is healthy, so that no instance is unavailable. That is
/// the case when no port stands in the way: every port is allocated by the server (the new
/// instance gets ports of its own) and none is exclusive. A component without ports qualifies.
/// This is the rule the server applies when it tells agents how to replace an instance
/// (`upgrade_order` in `endstate-server`'s `agents::assign`); the two must agree.
pub(crate) fn starts_before_stop(component: &Component) -> bool {
    component.ports.iter().all(|p| p.number.is_none() && !p.exclusive)
}

/// Every known component key in dependency order: dependencies first, ties by key (the smallest
/// ready key goes next). A cycle (refused by the spec) is broken at its smallest key rather than
/// looped on.
fn dependency_order<'a>(
    current: &'a DesiredState,
    desired: &'a DesiredState,
    extra: impl Iterator<Item = &'a str>,
) -> Vec<&'a str> {
    let mut deps: BTreeMap<&str, &[String]> = BTreeMap::new();
    for (key, component) in &current.components {
        deps.insert(key, &component.depends_on);
    }
    for (key, component) in &desired.components {
        deps.insert(key, &component.depends_on);
    }
    for key in extra {
        deps.entry(key).or_insert(&[]);
    }
    let mut waiting: BTreeMap<&str, usize> = BTreeMap::new();
    let mut dependents: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (key, on) in &deps {
        let known: BTreeSet<&str> = on
            .iter()
            .map(String::as_str)
            .filter(|dep| deps.contains_key(dep))
            .collect();
        waiting.insert(key, known.len());
        for dep in known {
            dependents.entry(dep).or_default().push(key);
        }
    }
    let mut ready: BTreeSet<&str> = waiting.iter().filter(|(_, n)| **n == 0).map(|(k, _)| *k).collect();
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut order = Vec::with_capacity(deps.len());
    while order.len() < deps.len() {
        let next = match ready.pop_first() {
            Some(next) => next,
            // Only a cycle leaves nothing ready: take its smallest key.
            None => match deps.keys().find(|k| !done.contains(*k)) {
                Some(next) => *next,
                None => break,
            },
        };
        if !done.insert(next) {
            continue;
        }
        order.push(next);
        for dependent in dependents.get(next).into_iter().flatten() {
            if let Some(n) = waiting.get_mut(dependent) {
                *n = n.saturating_sub(1);
                if *n == 0 && !done.contains(dependent) {
                    ready.insert(dependent);
                }
            }
        }
    }
    order
}

/// What the waves of every component need to know about the hosts and the options.
struct Context<'a> {
    hosts: &'a HostTable<'a>,
    groups: BTreeMap<&'a str, usize>,
    options: &'a PlanOptions,
}

impl<'a> Context<'a> {
    fn new(hosts: &'a HostTable<'a>, options: &'a PlanOptions) -> Context<'a> {
        let mut groups = BTreeMap::new();
        for (index, group) in options.host_groups.iter().enumerate() {
            for host in group {
                groups.entry(host.as_str()).or_insert(index);
            }
        }
        Context { hosts, groups, options }
    }

    /// The value of `label` on `host`. `cursor` is where the previous lookup ended: steps come in
    /// host order, so the next host is mostly a few places further.
    fn domain(&self, host: &str, label: &str, cursor: &mut usize) -> Option<&'a str> {
        self.hosts
            .labels(host, cursor)
            .and_then(|labels| labels.get(label))
            .map(String::as_str)
    }

    /// `host group 1 (h1, h2)`, or `in no host group` for a host outside every group.
    fn group_text(&self, group: Option<usize>) -> String {
        match group.and_then(|g| self.options.host_groups.get(g).map(|hosts| (g, hosts))) {
            Some((g, hosts)) => {
                let shown: Vec<&str> = hosts.iter().take(3).map(String::as_str).collect();
                let more = match hosts.len().saturating_sub(shown.len()) {
                    0 => String::new(),
                    n => format!(" and {n} more"),
                };
                format!("host group {} ({}{more})", g + 1, shown.join(", "))
            }
            None => format!(
                "in no host group, after the {}",
                plural(self.options.host_groups.len(), "group")
            ),
        }
    }
}

/// One step with what orders it.
#[derive(Clone, Copy)]
struct Placed<'a> {
    step: &'a Step,
    group: Option<usize>,
    domain: Option<&'a str>,
    disruptive: bool,
}

impl Placed<'_> {
    /// The wave order: host group (none last), domain (none last), host, slot.
    fn order_key(&self) -> (bool, Option<usize>, bool, Option<&str>, &str, u32, StepAction) {
        (
            self.group.is_none(),
            self.group,
            self.domain.is_none(),
            self.domain,
            &self.step.host,
            self.step.slot,
            self.step.action,
        )
    }

    fn same_segment(&self, other: &Placed<'_>) -> bool {
        self.group == other.group && self.domain == other.domain
    }
}

/// The rollout of a component known to neither desired state (the planner never produces such a
/// step): one instance at a time.
fn fallback_rollout() -> Rollout {
    Rollout {
        canary: 0,
        batch: Batch::Size(1),
        max_unavailable: 1,
        one_domain_at_a_time: None,
        pause: None,
        min_healthy_time: Duration::default(),
        on_failure: OnFailure::Halt,
    }
}

/// The waves of one component, or why its rollout rules cannot be satisfied.
fn component_waves(
    key: &str,
    component: Option<&Component>,
    steps: &[&Step],
    after: &[&str],
    ctx: &Context<'_>,
) -> Result<Vec<Wave>, Blocked> {
    let fallback;
    let rollout = match component {
        Some(component) => &component.rollout,
        None => {
            fallback = fallback_rollout();
            &fallback
        }
    };
    let start_first = component.is_none_or(starts_before_stop);
    let label = rollout.one_domain_at_a_time.as_deref();
    let mut changes = Vec::new();
    let mut stops = Vec::new();
    let mut cursor = 0;
    for step in steps {
        let placed = Placed {
            step,
            group: ctx.groups.get(&*step.host).copied(),
            domain: label.and_then(|label| ctx.domain(&step.host, label, &mut cursor)),
            disruptive: !start_first && matches!(step.action, StepAction::Upgrade | StepAction::Reconfigure),
        };
        if step.action == StepAction::Stop {
            stops.push(placed);
        } else {
            changes.push(placed);
        }
    }
    let disruptive = changes.iter().filter(|p| p.disruptive).count();
    if disruptive > 0 && rollout.max_unavailable == 0 {
        return Err(Blocked {
            component: key.to_owned(),
            rule: "rollout.max_unavailable".to_owned(),
            reason: unavailable_reason(key, component, &changes),
        });
    }
    let changes = in_wave_order(changes);
    let stops = in_wave_order(stops);

    // The batch percentage applies to the component's instance count after the change, which is
    // not known here (unchanged instances are not steps): the number of its starts, upgrades and
    // reconfigurations stands in for it, or the number of its stops when it has nothing else.
    let base = if changes.is_empty() { stops.len() } else { changes.len() };
    let (size, size_text) = match rollout.batch {
        Batch::Size(n) => (n.max(1) as usize, format!("rollout.batch = {n}")),
        Batch::Percent(p) => {
            let size = (u64::from(p) * base as u64).div_ceil(100).max(1);
            (
                usize::try_from(size).unwrap_or(usize::MAX),
                format!("rollout.batch = {p}% of {base} = {size}"),
            )
        }
    };
    // A canary that would take every step is no canary: the steps go in batches.
    let canary = usize::try_from(rollout.canary).unwrap_or(usize::MAX);
    let canary = if canary < changes.len() { canary } else { 0 };
    let (canary_steps, batch_steps) = changes.split_at(canary);
    let canary_chunks = chunk(canary_steps, usize::MAX, rollout.max_unavailable);
    let batch_chunks = chunk(batch_steps, size, rollout.max_unavailable);
    let stop_chunks = chunk(&stops, size, u32::MAX);

    let text = Texts {
        key,
        ctx,
        rollout,
        label,
        after,
        changes: changes.len(),
        canary,
        size,
        size_text,
        disruptive: disruptive > 0,
        change_domains: domains(&changes),
        stop_domains: domains(&stops),
    };
    let min_healthy_ms = millis(rollout.min_healthy_time);
    let mut waves = Vec::new();
    let phases = [
        (WaveKind::Canary, &canary_chunks),
        (WaveKind::Batch, &batch_chunks),
        (WaveKind::Stop, &stop_chunks),
    ];
    for (kind, chunks) in phases {
        for (ordinal, chunk) in chunks.iter().enumerate() {
            let first = waves.is_empty();
            let Some(head) = chunk.first() else { continue };
            waves.push(Wave {
                index: 0,
                component: key.to_owned(),
                kind,
                domain: label.map(|label| format!("{label}={}", head.domain.unwrap_or("none"))),
                reason: text.wave_reason(kind, ordinal, chunks.len(), chunk, first),
                min_healthy_ms: if kind == WaveKind::Stop { 0 } else { min_healthy_ms },
                pause_after_ms: rollout.pause.map_or(0, millis),
                steps: {
                    // The steps of a wave mostly share their group and domain, hence their why.
                    let mut last: Option<(StepShape<'_>, Arc<str>)> = None;
                    chunk
                        .iter()
                        .map(|placed| {
                            let retired = ctx.options.retire_hosts.iter().any(|h| *h == *placed.step.host);
                            let shape = (placed.group, placed.domain, retired);
                            let why = match &last {
                                Some((seen, why)) if *seen == shape => Arc::clone(why),
                                _ => {
                                    let why: Arc<str> =
                                        Arc::from(text.step_why(kind, ordinal, chunks.len(), placed, first));
                                    last = Some((shape, why.clone()));
                                    why
                                }
                            };
                            WaveStep {
                                step: placed.step.clone(),
                                why,
                            }
                        })
                        .collect()
                },
            });
        }
    }
    if let Some(last) = waves.last_mut() {
        last.pause_after_ms = 0;
    }
    Ok(waves)
}

/// Where a step's segment comes in the wave order: host group (none last), then domain (none last).
type Segment<'a> = (bool, Option<usize>, bool, Option<&'a str>);

/// `placed` in wave order ([`Placed::order_key`]): by segment (host group, domain), each
/// segment by host and slot. The steps mostly come in host order already: they are put in their
/// segments in the order they come, and a segment is sorted only when it is not in order.
fn in_wave_order(placed: Vec<Placed<'_>>) -> Vec<Placed<'_>> {
    let mut segments: BTreeMap<Segment<'_>, Vec<Placed<'_>>> = BTreeMap::new();
    let total = placed.len();
    for p in placed {
        segments
            .entry((p.group.is_none(), p.group, p.domain.is_none(), p.domain))
            .or_default()
            .push(p);
    }
    let mut out = Vec::with_capacity(total);
    for (_, mut segment) in segments {
        if !segment.is_sorted_by(|a, b| a.order_key() <= b.order_key()) {
            segment.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        }
        out.extend(segment);
    }
    out
}

/// What a step's `why` depends on besides its wave: its host group, its domain, whether its host
/// is retired.
type StepShape<'a> = (Option<usize>, Option<&'a str>, bool);

/// Cuts ordered steps into waves: a wave ends when it holds `size` steps, when the next step is
/// in another host group or domain, or when the next step is disruptive and the wave already
/// holds `max_unavailable` disruptive steps.
fn chunk<'a>(steps: &[Placed<'a>], size: usize, max_unavailable: u32) -> Vec<Vec<Placed<'a>>> {
    let mut out = Vec::new();
    let mut wave: Vec<Placed<'a>> = Vec::new();
    let mut down = 0u32;
    for placed in steps {
        let full = wave.first().is_some_and(|head| {
            wave.len() >= size || !head.same_segment(placed) || (placed.disruptive && down >= max_unavailable)
        });
        if full {
            out.push(std::mem::take(&mut wave));
            down = 0;
        }
        if placed.disruptive {
            down += 1;
        }
        wave.push(*placed);
    }
    if !wave.is_empty() {
        out.push(wave);
    }
    out
}

/// The distinct domains of ordered steps, in domain order (none last).
fn domains<'a>(steps: &[Placed<'a>]) -> Vec<Option<&'a str>> {
    let set: BTreeSet<(bool, Option<&str>)> = steps.iter().map(|p| (p.domain.is_none(), p.domain)).collect();
    set.into_iter().map(|(_, domain)| domain).collect()
}

/// Why a component with disruptive steps cannot roll out with `max_unavailable: 0`.
fn unavailable_reason(key: &str, component: Option<&Component>, changes: &[Placed<'_>]) -> String {
    let verb = if changes
        .iter()
        .any(|p| p.disruptive && p.step.action == StepAction::Upgrade)
    {
        "upgrade"
    } else {
        "reconfigure"
    };
    let port = component
        .and_then(|c| c.ports.iter().find(|p| p.number.is_some() || p.exclusive))
        .map(|port| match (port.number, port.exclusive) {
            (Some(n), true) => format!("port {} is fixed at {n} and exclusive", port.name),
            (Some(n), false) => format!("port {} is fixed at {n}", port.name),
            (None, _) => format!("port {} is exclusive", port.name),
        })
        .unwrap_or_else(|| "its ports do not let a new instance start beside the old one".to_owned());
    format!("max_unavailable is 0, but {key} must stop an instance to {verb} it: {port}")
}

/// The sentences of one component's waves.
struct Texts<'a> {
    key: &'a str,
    ctx: &'a Context<'a>,
    rollout: &'a Rollout,
    label: Option<&'a str>,
    after: &'a [&'a str],
    /// How many starts, upgrades and reconfigurations.
    changes: usize,
    /// How many of them are the canary.
    canary: usize,
    /// The batch size.
    size: usize,
    /// `rollout.batch = 2`, `rollout.batch = 25% of 8 = 2`.
    size_text: String,
    /// Whether some step makes an instance unavailable.
    disruptive: bool,
    change_domains: Vec<Option<&'a str>>,
    stop_domains: Vec<Option<&'a str>>,
}

impl Texts<'_> {
    /// ` in host group 1, zone=a`, or nothing.
    fn location(&self, head: &Placed<'_>) -> String {
        let mut parts = Vec::new();
        if !self.ctx.options.host_groups.is_empty() {
            parts.push(match head.group {
                Some(g) => format!("host group {}", g + 1),
                None => "no host group".to_owned(),
            });
        }
        if let Some(label) = self.label {
            parts.push(format!("{label}={}", head.domain.unwrap_or("none")));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!(" in {}", parts.join(", "))
        }
    }

    fn wave_reason(&self, kind: WaveKind, ordinal: usize, count: usize, chunk: &[Placed<'_>], first: bool) -> String {
        let key = self.key;
        let n = chunk.len();
        let location = chunk.first().map(|head| self.location(head)).unwrap_or_default();
        let mut reason = match kind {
            WaveKind::Canary if count == 1 => format!(
                "canary{location}: {n} of {} of {key} alone first (rollout.canary = {})",
                plural(self.changes, "instance"),
                self.rollout.canary
            ),
            WaveKind::Canary => format!(
                "canary {} of {count} of {key}{location}: {n} of the {} canary instances alone first \
                 (rollout.canary = {}, max_unavailable = {})",
                ordinal + 1,
                self.canary,
                self.rollout.canary,
                self.rollout.max_unavailable
            ),
            WaveKind::Batch => {
                let max = self.rollout.max_unavailable;
                let down = chunk.iter().filter(|p| p.disruptive).count();
                let limit = if self.disruptive && usize::try_from(max).is_ok_and(|m| m < self.size && m == down) {
                    format!(", capped by max_unavailable = {max}")
                } else if self.disruptive {
                    format!(", max_unavailable = {max}")
                } else if chunk
                    .iter()
                    .any(|p| matches!(p.step.action, StepAction::Upgrade | StepAction::Reconfigure))
                {
                    "; each new instance starts before its old one stops".to_owned()
                } else {
                    String::new()
                };
                let instances = plural(n, "instance");
                let size = &self.size_text;
                match (count, self.canary) {
                    (1, 0) => format!("batch: {instances} of {key}{location} ({size}{limit})"),
                    (1, _) if n == 1 => {
                        format!("batch: the last instance of {key}{location}, after the canary ({size}{limit})")
                    }
                    (1, _) => {
                        format!("batch: the other {instances} of {key}{location}, after the canary ({size}{limit})")
                    }
                    _ => format!(
                        "batch {} of {count} of {key}{location}: {instances} ({size}{limit})",
                        ordinal + 1
                    ),
                }
            }
            WaveKind::Stop => {
                let retire = &self.ctx.options.retire_hosts;
                let why = if chunk.iter().all(|p| retire.iter().any(|h| *h == *p.step.host)) {
                    let hosts: BTreeSet<&str> = chunk.iter().map(|p| &*p.step.host).collect();
                    let hosts: Vec<&str> = hosts.into_iter().collect();
                    let word = if hosts.len() == 1 { "host" } else { "hosts" };
                    format!("on retired {word} {}", and_list(&hosts))
                } else {
                    "no longer desired".to_owned()
                };
                let after_new = if self.changes > 0 {
                    ", after the new ones are healthy"
                } else {
                    ""
                };
                if count == 1 {
                    format!("stop {} of {key}{location} {why}{after_new}", plural(n, "instance"))
                } else {
                    format!(
                        "stop batch {} of {count} of {key}{location}: {} {why}{after_new} ({})",
                        ordinal + 1,
                        plural(n, "instance"),
                        self.size_text
                    )
                }
            }
        };
        if first && !self.after.is_empty() {
            reason.push_str(&format!("; after {}, which it depends on", and_list(self.after)));
        }
        reason
    }

    fn step_why(&self, kind: WaveKind, ordinal: usize, count: usize, placed: &Placed<'_>, first: bool) -> String {
        let mut parts = vec![match kind {
            WaveKind::Canary => "canary".to_owned(),
            WaveKind::Batch if count > 1 => format!("batch {} of {count}", ordinal + 1),
            WaveKind::Batch if self.canary > 0 => "the only batch, after the canary".to_owned(),
            WaveKind::Batch => "the only batch".to_owned(),
            WaveKind::Stop => {
                let retired = self.ctx.options.retire_hosts.iter().any(|h| *h == *placed.step.host);
                let what = if retired { "host retired" } else { "no longer desired" };
                if self.changes > 0 {
                    format!("{what}, after the new instances")
                } else {
                    what.to_owned()
                }
            }
        }];
        if !self.ctx.options.host_groups.is_empty() {
            parts.push(self.ctx.group_text(placed.group));
        }
        if let Some(label) = self.label {
            let domains = if kind == WaveKind::Stop {
                &self.stop_domains
            } else {
                &self.change_domains
            };
            let position = domains.iter().position(|d| *d == placed.domain).map_or(0, |i| i + 1);
            parts.push(format!(
                "{label}={}, domain {position} of {}",
                placed.domain.unwrap_or("none"),
                domains.len()
            ));
        }
        if first && !self.after.is_empty() {
            parts.push(format!("after {} (depends_on)", and_list(self.after)));
        }
        parts.join("; ")
    }
}

/// `1 instance`, `2 instances`.
fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// `a`, `a and b`, `a, b and c`.
fn and_list(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_std().as_millis()).unwrap_or(u64::MAX)
}
