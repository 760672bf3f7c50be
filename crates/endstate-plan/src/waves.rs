//! Ordering a plan's steps into safe waves: dependency order between components, then per
//! component a canary, batches bounded by `max_unavailable`, one failure domain at a time, host
//! groups in the order given; instances that move off a retired host start elsewhere before the
//! old ones stop. Every step says why it is in its wave.
//!
//! Pure and deterministic, like the rest of the planner.

use std::collections::BTreeMap;

use endstate_spec::{DesiredState, HostInfo};
use serde::{Deserialize, Serialize};

use crate::Step;

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
}

impl PlanOptions {
    /// Whether no option is set.
    pub fn is_empty(&self) -> bool {
        self.host_groups.is_empty() && self.retire_hosts.is_empty()
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
    /// Why the wave is there and its size (`canary: 1 of 6 instances alone first (rollout.canary = 1)`).
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
    /// Why it is in this wave (`zone=a, the first domain`, `after shop/db, which it depends on`).
    pub why: String,
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

/// Orders `steps` (the plan's steps, sorted as the planner sorts them) into waves.
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
    // Placeholder until the full algorithm lands: one wave per component, in component order.
    let _ = (current, desired, hosts, options);
    let mut by_component: BTreeMap<&str, Vec<&Step>> = BTreeMap::new();
    for step in steps {
        by_component.entry(step.component.as_str()).or_default().push(step);
    }
    let waves = by_component
        .into_iter()
        .enumerate()
        .map(|(index, (component, steps))| Wave {
            index: index as u32,
            component: component.to_owned(),
            kind: WaveKind::Batch,
            domain: None,
            reason: format!("all {} steps of {component}", steps.len()),
            min_healthy_ms: 0,
            pause_after_ms: 0,
            steps: steps
                .into_iter()
                .map(|s| WaveStep {
                    step: s.clone(),
                    why: "every step of the component".into(),
                })
                .collect(),
        })
        .collect();
    (waves, Vec::new())
}
