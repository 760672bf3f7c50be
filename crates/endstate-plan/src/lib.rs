//! The planner: a pure, deterministic function from (current desired state, new desired state,
//! inventory) to a [`Plan`]: which systems, components, checks, actions and policies are added,
//! changed or removed, with field-level differences, and which instances are started, upgraded,
//! reconfigured or stopped on which hosts, every step with its reason.
//!
//! The same input always gives the same plan: every collection is ordered, and placement breaks
//! ties by host name. The planner does no IO and knows neither the store nor the server, so the
//! CLI runs exactly the same function for `endstate plan` as the server does for a change.
//!
//! The steps are then ordered into safe waves ([`Plan::waves`], see [`waves()`]): dependency
//! order between components, then per component a canary, batches bounded by
//! `rollout.max_unavailable`, one failure domain or host group at a time, and stops of instances
//! no longer desired after their replacements. Rollout rules that cannot be satisfied are listed
//! in [`Plan::blocked`], and such a plan is refused.

mod blueprint;
mod diff;
mod placement;
mod render;
mod replan;
pub mod template;
mod waves;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use endstate_spec::{Component, Count, DesiredState, HostInfo};
use serde::{Deserialize, Serialize};

pub use blueprint::{Blueprint, Rendered, Side, blueprint};
pub use diff::{FieldDiff, diff_values};
pub use placement::{Placement, PlacementKey, place, place_only, runtime_config, unplaceable};

use placement::{HostTable, place_sorted};
pub use render::render;
pub use replan::{CarriedOn, PlanDelta, carry_on};
pub use waves::{Blocked, PlanOptions, Wave, WaveKind, WaveStep, waves};

/// What a plan does to an object or an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// It is new.
    Add,
    /// It exists and some of its fields change.
    Change,
    /// It goes away.
    Remove,
}

/// A declared object added, changed or removed, with its field-level differences.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObjectChange {
    /// `system`, `component`, `check`, `action` or `policy`.
    pub kind: String,
    /// The object's key (`system/component` for components).
    pub name: String,
    /// What happens to it.
    pub op: Op,
    /// For a change: every leaf field that differs, by path. Empty for add and remove.
    pub fields: Vec<FieldDiff>,
}

/// What a step does to an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepAction {
    /// Start a new instance.
    Start,
    /// Run a new version of the artifact.
    Upgrade,
    /// Same version, new configuration (command, args, env, config files, ports, health check).
    Reconfigure,
    /// Stop an instance that is no longer desired.
    Stop,
}

/// One concrete step on one instance, with the reason it is in the plan.
///
/// Its strings are shared with the placements and the other steps (a plan of 100,000 steps holds
/// a few hundred distinct strings); they serialize as plain strings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// What to do.
    pub action: StepAction,
    /// `system/component`.
    pub component: Arc<str>,
    /// The host.
    pub host: Arc<str>,
    /// The slot on that host.
    pub slot: u32,
    /// The version running before, if any.
    pub from_version: Option<Arc<str>>,
    /// The version running after, if any.
    pub to_version: Option<Arc<str>>,
    /// Why the step is there.
    pub reason: Arc<str>,
}

/// A component whose placement cannot be satisfied on the known hosts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unplaced {
    /// `system/component`.
    pub component: String,
    /// How many instances the placement asks for (for `per_host`, at least one host's worth).
    pub wanted: u32,
    /// How many could be placed.
    pub placed: u32,
    /// Which rule blocks it.
    pub reason: String,
}

/// Counts for the summary line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Objects added.
    pub add: u32,
    /// Objects changed.
    pub change: u32,
    /// Objects removed.
    pub remove: u32,
    /// Steps by action.
    pub start: u32,
    /// Upgrades.
    pub upgrade: u32,
    /// Reconfigurations.
    pub reconfigure: u32,
    /// Stops.
    pub stop: u32,
}

/// The planner's output.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Declared objects that change, ordered by kind then name.
    pub objects: Vec<ObjectChange>,
    /// Instance steps, ordered by component, host, slot.
    pub steps: Vec<Step>,
    /// Placements that cannot be satisfied.
    pub unplaced: Vec<Unplaced>,
    /// The counts.
    pub summary: Summary,
    /// The steps ordered into waves: every step is in exactly one wave.
    #[serde(default)]
    pub waves: Vec<Wave>,
    /// Rollout rules that cannot be satisfied: a plan with any is refused.
    #[serde(default)]
    pub blocked: Vec<Blocked>,
    /// The operational parameters it was planned with.
    #[serde(default, skip_serializing_if = "PlanOptions::is_empty")]
    pub options: PlanOptions,
    /// With target hosts: the number of waves that change them, all first; the change holds
    /// after them for a person to resume it (to the other hosts) or abort it. `None`: no hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_after: Option<u32>,
    /// The placement basis: the hosts (with their labels, in name order) the new desired state
    /// was placed on, retired ones included ([`PlanOptions::placement_hosts`] leaves them out).
    /// Once the change converges, its revision stays placed on these hosts until another change
    /// places it anew: a host joining or leaving moves nothing by itself. Recorded by whoever
    /// stores the plan ([`Plan::record_hosts`]), not by the planner: copying 10,000 hosts would
    /// cost a re-plan more than the rest of it. `None`: not recorded (a preview, or a plan stored
    /// before plans recorded their hosts); `Some` of no hosts is a basis too (placed on none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Vec<HostInfo>>,
}

impl Summary {
    /// Adds each step to the count of its action.
    pub(crate) fn count_steps(&mut self, steps: &[Step]) {
        for step in steps {
            match step.action {
                StepAction::Start => self.start += 1,
                StepAction::Upgrade => self.upgrade += 1,
                StepAction::Reconfigure => self.reconfigure += 1,
                StepAction::Stop => self.stop += 1,
            }
        }
    }
}

impl Plan {
    /// Records the hosts the plan placed on (see [`Plan::hosts`]).
    pub fn record_hosts(&mut self, hosts: &[HostInfo]) {
        self.hosts = Some(sorted_hosts(hosts));
    }

    /// Whether the plan changes nothing at all.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty() && self.steps.is_empty() && self.unplaced.is_empty() && self.blocked.is_empty()
    }
}

/// Plans the way from `current` (the desired state in force, `None` for a new server) to `desired`
/// on the given hosts.
pub fn plan(current: Option<&DesiredState>, desired: &DesiredState, hosts: &[HostInfo]) -> Plan {
    plan_with(current, desired, hosts, &PlanOptions::default())
}

/// [`plan`] with operational parameters: host groups order the waves, retired hosts receive no
/// placement (their instances move first, then stop). The current desired state is taken as
/// placed on the same hosts.
pub fn plan_with(
    current: Option<&DesiredState>,
    desired: &DesiredState,
    hosts: &[HostInfo],
    options: &PlanOptions,
) -> Plan {
    plan_from(current.map(|current| (current, hosts)), desired, hosts, options)
}

/// The planner in full: from `current` as it is placed on its own hosts (the hosts its change
/// placed it on, its placement basis) to `desired` placed on `hosts`. Where the two host sets
/// differ (a host joined, left or was relabelled since), every component is placed before and
/// after, so the instances that move are steps of the plan like any other.
pub fn plan_from(
    current: Option<(&DesiredState, &[HostInfo])>,
    desired: &DesiredState,
    hosts: &[HostInfo],
    options: &PlanOptions,
) -> Plan {
    let empty = DesiredState::default();
    let (current, current_hosts) = current.unwrap_or((&empty, hosts));
    let same_hosts = same_hosts(current_hosts, hosts);
    let mut objects = Vec::new();
    diff_kind("system", &current.systems, &desired.systems, &mut objects);
    diff_kind("component", &current.components, &desired.components, &mut objects);
    diff_kind("check", &current.checks, &desired.checks, &mut objects);
    diff_kind("action", &current.actions, &desired.actions, &mut objects);
    diff_kind("policy", &current.policies, &desired.policies, &mut objects);

    // What to place of each component: nothing when it is declared the same before and after (it
    // is placed the same on the same hosts, so it has no step), unless hosts are retired (which
    // moves everything); when only its count changes, only the instances the two counts do not
    // share; otherwise all of it, before and after.
    let retired = &options.retire_hosts;
    let skip = |key: &str| -> Option<u32> {
        if !retired.is_empty() || !same_hosts {
            return Some(0);
        }
        match (current.components.get(key), desired.components.get(key)) {
            (Some(have), Some(want)) if have == want => None,
            (Some(have), Some(want)) => Some(shared_instances(have, want)),
            _ => Some(0),
        }
    };
    let table = HostTable::new(hosts);
    let (before, _) = if same_hosts {
        place_sorted(current, &table, &[], skip)
    } else {
        place_sorted(current, &HostTable::new(current_hosts), &[], skip)
    };
    let (after, mut unplaced) = place_sorted(desired, &table, retired, skip);
    // What cannot be placed is said of every component, changed or not.
    unplaced.extend(unplaceable(desired, hosts, |key| skip(key).is_none()));
    unplaced.sort_by(|a, b| a.component.cmp(&b.component));
    let places = |component: &str| {
        desired
            .components
            .get(component)
            .is_some_and(|c| !matches!(c.placement.count, Count::PerHost(0) | Count::Total(0)))
    };
    let steps = instance_steps(&before, &after, places);

    let mut summary = Summary::default();
    for object in &objects {
        match object.op {
            Op::Add => summary.add += 1,
            Op::Change => summary.change += 1,
            Op::Remove => summary.remove += 1,
        }
    }
    summary.count_steps(&steps);
    let (waves, blocked, held_after) = targeted_first(current, desired, &table, &steps, options);
    Plan {
        objects,
        steps,
        unplaced,
        summary,
        waves,
        blocked,
        options: options.clone(),
        held_after,
        hosts: None,
    }
}

/// Whether two host lists hold the same hosts with the same labels, whatever their order.
pub fn same_hosts(a: &[HostInfo], b: &[HostInfo]) -> bool {
    if std::ptr::eq(a, b) {
        return true;
    }
    if a.len() != b.len() {
        return false;
    }
    if a == b {
        return true;
    }
    sorted_hosts(a) == sorted_hosts(b)
}

/// The hosts in name order (each name once: the first wins), as a plan stores them.
pub fn sorted_hosts(hosts: &[HostInfo]) -> Vec<HostInfo> {
    let mut sorted = hosts.to_vec();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    sorted.dedup_by(|a, b| a.name == b.name);
    sorted
}

/// The waves of the steps on the target hosts (every component, in dependency order), then the
/// waves of the other steps, each part ordered as [`waves::waves`] orders a plan; the number of
/// the first part when a second follows. Without target hosts, [`waves::waves`] alone.
///
/// Dependency order holds within each part: a component's targeted waves may come before its
/// dependency's waves on the other hosts, which is what targeting some hosts first asks for.
fn targeted_first(
    current: &DesiredState,
    desired: &DesiredState,
    hosts: &HostTable<'_>,
    steps: &[Step],
    options: &PlanOptions,
) -> (Vec<Wave>, Vec<Blocked>, Option<u32>) {
    if options.target_hosts.is_empty() {
        let (waves, blocked) = waves::waves_in(current, desired, hosts, steps, options);
        return (fit_blast_radius(waves, desired), blocked, None);
    }
    let (targeted, others): (Vec<Step>, Vec<Step>) = steps
        .iter()
        .cloned()
        .partition(|s| options.target_hosts.iter().any(|h| *h == *s.host));
    let (waves, mut blocked) = waves::waves_in(current, desired, hosts, &targeted, options);
    let mut waves = fit_blast_radius(waves, desired);
    let (rest, more_blocked) = waves::waves_in(current, desired, hosts, &others, options);
    let rest = fit_blast_radius(rest, desired);
    for b in more_blocked {
        if !blocked.contains(&b) {
            blocked.push(b);
        }
    }
    let first = u32::try_from(waves.len()).unwrap_or(u32::MAX);
    let targets = options.target_hosts.join(", ");
    for wave in &mut waves {
        wave.reason = format!("targeted hosts ({targets}) first; {}", wave.reason);
    }
    let held_after = (first > 0 && !rest.is_empty()).then_some(first);
    for (i, mut wave) in rest.into_iter().enumerate() {
        wave.index = first.saturating_add(u32::try_from(i).unwrap_or(u32::MAX));
        wave.reason = format!("after the targeted hosts, once resumed; {}", wave.reason);
        waves.push(wave);
    }
    (waves, blocked, held_after)
}

fn diff_kind<T: Serialize>(
    kind: &str,
    current: &BTreeMap<String, T>,
    desired: &BTreeMap<String, T>,
    out: &mut Vec<ObjectChange>,
) {
    for (name, after) in desired {
        let after = to_value(after);
        match current.get(name) {
            None => out.push(ObjectChange {
                kind: kind.to_string(),
                name: name.clone(),
                op: Op::Add,
                fields: Vec::new(),
            }),
            Some(before) => {
                let fields = diff_values(&to_value(before), &after);
                if !fields.is_empty() {
                    out.push(ObjectChange {
                        kind: kind.to_string(),
                        name: name.clone(),
                        op: Op::Change,
                        fields,
                    });
                }
            }
        }
    }
    for name in current.keys() {
        if !desired.contains_key(name) {
            out.push(ObjectChange {
                kind: kind.to_string(),
                name: name.clone(),
                op: Op::Remove,
                fields: Vec::new(),
            });
        }
    }
}

/// Serializes a spec value for diffing. The spec types serialize infallibly (maps with string
/// keys, no non-finite floats), so a failure would be a bug in them; it shows as `null`.
fn to_value<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

/// How many instances a component keeps where they are when it changes from `have` to `want`:
/// when only its count changes (same kind of count, same everything else) and no template numbers
/// its instances, the instances both counts share are placed the same, so they need no placing;
/// otherwise none.
fn shared_instances(have: &Component, want: &Component) -> u32 {
    let (n, m) = match (have.placement.count, want.placement.count) {
        (Count::PerHost(n), Count::PerHost(m)) | (Count::Total(n), Count::Total(m)) => (n, m),
        _ => return 0,
    };
    let mut same = want.clone();
    same.placement.count = have.placement.count;
    if &same != have || runtime_config(want).to_string().contains("instance.index") {
        return 0;
    }
    n.min(m)
}

/// The steps from the placements `before` to those `after` (both in key order), ordered by
/// component, host and slot; `places(component)` says whether a component still places instances
/// (for the reason of a stop).
fn instance_steps(
    before: &[(PlacementKey, Placement)],
    after: &[(PlacementKey, Placement)],
    places: impl Fn(&str) -> bool,
) -> Vec<Step> {
    let mut steps = Vec::with_capacity(after.len().max(before.len()));
    let mut reasons = StepReasons::default();
    // Both lists in key order at once: the steps come out ordered by component, host and slot.
    let (mut have_iter, mut want_iter) = (before.iter().peekable(), after.iter().peekable());
    loop {
        let order = match (have_iter.peek(), want_iter.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some((have_key, _)), Some((want_key, _))) => have_key.cmp(want_key),
        };
        match order {
            std::cmp::Ordering::Less => {
                let Some((key, have)) = have_iter.next() else { break };
                steps.push(Step {
                    action: StepAction::Stop,
                    component: Arc::clone(&key.component),
                    host: Arc::clone(&key.host),
                    slot: key.slot,
                    from_version: Some(Arc::clone(&have.version)),
                    to_version: None,
                    reason: reasons.stopped(places(&key.component)),
                });
            }
            std::cmp::Ordering::Greater => {
                let Some((key, want)) = want_iter.next() else { break };
                steps.push(Step {
                    action: StepAction::Start,
                    component: Arc::clone(&key.component),
                    host: Arc::clone(&key.host),
                    slot: key.slot,
                    from_version: None,
                    to_version: Some(Arc::clone(&want.version)),
                    reason: reasons.started(want),
                });
            }
            std::cmp::Ordering::Equal => {
                let (Some((key, have)), Some((_, want))) = (have_iter.next(), want_iter.next()) else {
                    break;
                };
                if let Some(step) = changed_step(key, have, want, &mut reasons) {
                    steps.push(step);
                }
            }
        }
    }
    steps
}

/// The reasons of steps, made once and shared: placements of a component share their version,
/// configuration and reason (by pointer), so do their steps' reasons.
#[derive(Default)]
struct StepReasons {
    started: HashMap<*const u8, Arc<str>>,
    upgraded: HashMap<(*const u8, *const u8), Arc<str>>,
    /// `None` when the two configurations are the same.
    reconfigured: HashMap<(*const serde_json::Value, *const serde_json::Value), Option<Arc<str>>>,
    stopped: [Option<Arc<str>>; 2],
}

impl StepReasons {
    fn started(&mut self, want: &Placement) -> Arc<str> {
        Arc::clone(
            self.started
                .entry(Arc::as_ptr(&want.reason).cast::<u8>())
                .or_insert_with(|| Arc::from(format!("new instance: {}", want.reason))),
        )
    }

    fn upgraded(&mut self, have: &Placement, want: &Placement) -> Arc<str> {
        let key = (
            Arc::as_ptr(&have.version).cast::<u8>(),
            Arc::as_ptr(&want.version).cast::<u8>(),
        );
        Arc::clone(self.upgraded.entry(key).or_insert_with(|| {
            Arc::from(format!(
                "artifact.version changes from {} to {}",
                have.version, want.version
            ))
        }))
    }

    fn reconfigured(&mut self, have: &Placement, want: &Placement) -> Option<Arc<str>> {
        let key = (Arc::as_ptr(&have.config), Arc::as_ptr(&want.config));
        self.reconfigured
            .entry(key)
            .or_insert_with(|| {
                (have.config != want.config).then(|| {
                    let fields: Vec<String> = diff_values(&have.config, &want.config)
                        .into_iter()
                        .map(|field| field.path)
                        .collect();
                    Arc::from(format!("configuration changes: {}", fields.join(", ")))
                })
            })
            .clone()
    }

    fn stopped(&mut self, still_placed: bool) -> Arc<str> {
        let reason = &mut self.stopped[usize::from(still_placed)];
        Arc::clone(reason.get_or_insert_with(|| {
            Arc::from(if still_placed {
                "no longer desired: the component's placement no longer selects this slot"
            } else {
                "no longer desired: the component is removed or places no instance"
            })
        }))
    }
}

/// The step that takes one slot from `have` to `want`, if they differ.
fn changed_step(key: &PlacementKey, have: &Placement, want: &Placement, reasons: &mut StepReasons) -> Option<Step> {
    let step = |action: StepAction, reason: Arc<str>| Step {
        action,
        component: Arc::clone(&key.component),
        host: Arc::clone(&key.host),
        slot: key.slot,
        from_version: Some(Arc::clone(&have.version)),
        to_version: Some(Arc::clone(&want.version)),
        reason,
    };
    if have.version != want.version {
        return Some(step(StepAction::Upgrade, reasons.upgraded(have, want)));
    }
    if let Some(reason) = reasons.reconfigured(have, want) {
        return Some(step(StepAction::Reconfigure, reason));
    }
    if have.index != want.index {
        let word = |i: Option<u32>| i.map_or_else(|| "none".to_owned(), |i| i.to_string());
        return Some(step(
            StepAction::Reconfigure,
            Arc::from(format!(
                "instance.index changes from {} to {}: other instances of {} come or go",
                word(have.index),
                word(want.index),
                key.component
            )),
        ));
    }
    None
}

/// Splits every wave larger than the blast radius allowed for its component's system (the
/// tightest `max_in_flight` of the policies covering it) into consecutive waves that fit, steps
/// in order; then numbers the waves again from 0.
fn fit_blast_radius(waves: Vec<Wave>, desired: &DesiredState) -> Vec<Wave> {
    let mut out = Vec::with_capacity(waves.len());
    for wave in waves {
        let system = wave
            .component
            .split_once('/')
            .map_or(wave.component.as_str(), |(s, _)| s);
        let Some((limit, policies)) = desired.max_in_flight(system) else {
            out.push(wave);
            continue;
        };
        let mut parts: Vec<Vec<WaveStep>> = Vec::new();
        let mut part: Vec<WaveStep> = Vec::new();
        let mut part_hosts: HashSet<&str> = HashSet::new();
        for step in &wave.steps {
            let new_host = !part_hosts.contains(&*step.step.host);
            let full = limit.instances.is_some_and(|max| part.len() >= max as usize)
                || (new_host && limit.hosts.is_some_and(|max| part_hosts.len() >= max as usize));
            if full && !part.is_empty() {
                parts.push(std::mem::take(&mut part));
                part_hosts.clear();
            }
            part_hosts.insert(&step.step.host);
            part.push(step.clone());
        }
        parts.push(part);
        if parts.len() == 1 {
            out.push(wave);
            continue;
        }
        let mut allowed = Vec::new();
        if let Some(hosts) = limit.hosts {
            allowed.push(format!("{hosts} host(s)"));
        }
        if let Some(instances) = limit.instances {
            allowed.push(format!("{instances} instance(s)"));
        }
        let why = format!(
            "policy {} allows at most {} in flight",
            policies.join(", "),
            allowed.join(" and ")
        );
        let n = parts.len();
        for (k, steps) in parts.into_iter().enumerate() {
            out.push(Wave {
                reason: format!("{}; part {} of {n}: {why}", wave.reason, k + 1),
                steps: steps
                    .into_iter()
                    .map(|mut s| {
                        s.why = Arc::from(format!("{}; part {} of {n} (max_in_flight)", s.why, k + 1));
                        s
                    })
                    .collect(),
                ..wave.clone()
            });
        }
    }
    for (index, wave) in out.iter_mut().enumerate() {
        wave.index = u32::try_from(index).unwrap_or(u32::MAX);
    }
    out
}
