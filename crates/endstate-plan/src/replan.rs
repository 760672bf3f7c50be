//! Re-planning a change in the middle of its rollout, when the hosts changed (one joined, one
//! left, labels moved): the waves already released stay as they are, the rest follows a fresh
//! plan of the same change on the hosts as they are now.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{Plan, Step, StepAction, Summary};

/// A plan carried on after the hosts changed, and what changed in it.
#[derive(Clone, Debug, PartialEq)]
pub struct CarriedOn {
    /// The plan to carry on with: the released waves, then the fresh plan's waves without the
    /// steps already released.
    pub plan: Plan,
    /// What changed in the waves not yet released.
    pub delta: PlanDelta,
}

/// The difference between the unreleased steps of two plans.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanDelta {
    /// Steps the fresh plan has that the old one had not (`component#slot@host action`), e.g. on
    /// a host that joined.
    pub added: Vec<String>,
    /// Steps the old plan had not released that the fresh plan has not, e.g. on a host that left.
    pub dropped: Vec<String>,
}

impl PlanDelta {
    /// `2 steps added (web#0@h4 upgrade, ...); 1 dropped (...)`.
    pub fn describe(&self) -> String {
        let list = |steps: &[String]| {
            let shown: Vec<&str> = steps.iter().take(5).map(String::as_str).collect();
            let more = match steps.len().saturating_sub(shown.len()) {
                0 => String::new(),
                n => format!(" and {n} more"),
            };
            format!("{}{more}", shown.join(", "))
        };
        let mut parts = Vec::new();
        if !self.added.is_empty() {
            parts.push(format!("{} step(s) added ({})", self.added.len(), list(&self.added)));
        }
        if !self.dropped.is_empty() {
            parts.push(format!(
                "{} step(s) dropped ({})",
                self.dropped.len(),
                list(&self.dropped)
            ));
        }
        if parts.is_empty() {
            "the same steps in another order".to_owned()
        } else {
            parts.join("; ")
        }
    }
}

/// What identifies a step across two plans: its instance, what it does and to which version.
type StepId = (Arc<str>, Arc<str>, u32, StepAction, Option<Arc<str>>);

fn id_of(step: &Step) -> StepId {
    (
        Arc::clone(&step.component),
        Arc::clone(&step.host),
        step.slot,
        step.action,
        step.to_version.clone(),
    )
}

fn text_of((component, host, slot, action, _): &StepId) -> String {
    let action = match action {
        StepAction::Start => "start",
        StepAction::Upgrade => "upgrade",
        StepAction::Reconfigure => "reconfigure",
        StepAction::Stop => "stop",
    };
    format!("{component}#{slot}@{host} {action}")
}

/// Carries `old` on, whose first `released` waves hosts already execute, with `fresh`: the plan of
/// the same change (same base, same revision, same options) on the hosts as they are now. `held`:
/// whether the change already held after its targeted hosts.
///
/// The result keeps `old`'s released waves as they are and appends `fresh`'s waves without the
/// instances those waves already changed (waves left empty go), numbered on; its steps are the
/// released ones and the fresh plan's others. `None` when the steps not yet released are the same
/// (nothing to re-plan), or when the fresh plan is refused (blocked) or cannot place everything:
/// then the old plan carries on as it is.
pub fn carry_on(old: &Plan, released: u32, held: bool, fresh: Plan) -> Option<CarriedOn> {
    if !fresh.blocked.is_empty() || !fresh.unplaced.is_empty() {
        return None;
    }
    let released = (released as usize).min(old.waves.len());
    let (done, pending) = old.waves.split_at(released);
    let done_instances: BTreeSet<(&str, &str, u32)> = done
        .iter()
        .flat_map(|w| &w.steps)
        .map(|s| (&*s.step.component, &*s.step.host, s.step.slot))
        .collect();
    let is_done = |step: &Step| done_instances.contains(&(&*step.component, &*step.host, step.slot));

    let before: BTreeSet<StepId> = pending.iter().flat_map(|w| &w.steps).map(|s| id_of(&s.step)).collect();
    let after: BTreeSet<StepId> = fresh
        .waves
        .iter()
        .flat_map(|w| &w.steps)
        .filter(|s| !is_done(&s.step))
        .map(|s| id_of(&s.step))
        .collect();
    if before == after {
        return None;
    }
    let delta = PlanDelta {
        added: after.difference(&before).map(text_of).collect(),
        dropped: before.difference(&after).map(text_of).collect(),
    };

    let fresh_held_after = fresh.held_after;
    let mut waves = done.to_vec();
    let mut remaining_targeted = 0u32;
    for (index, wave) in fresh.waves.into_iter().enumerate() {
        let mut wave = wave;
        wave.steps.retain(|s| !is_done(&s.step));
        if wave.steps.is_empty() {
            continue;
        }
        if fresh_held_after.is_some_and(|h| (index as u32) < h) {
            remaining_targeted += 1;
        }
        wave.index = u32::try_from(waves.len()).unwrap_or(u32::MAX);
        waves.push(wave);
    }
    let mut steps: Vec<Step> = done.iter().flat_map(|w| &w.steps).map(|s| s.step.clone()).collect();
    steps.extend(fresh.steps.into_iter().filter(|s| !is_done(s)));
    steps.sort_by(|a, b| (&a.component, &a.host, a.slot).cmp(&(&b.component, &b.host, b.slot)));

    let mut summary = Summary {
        add: fresh.summary.add,
        change: fresh.summary.change,
        remove: fresh.summary.remove,
        ..Summary::default()
    };
    summary.count_steps(&steps);
    // The hold after the targeted hosts: once held, it has done its work; otherwise it comes
    // after the targeted waves still to run.
    let held_after = match (held, old.held_after) {
        (true, held_after) | (false, held_after @ None) => held_after,
        (false, Some(_)) => fresh_held_after.map(|_| released as u32 + remaining_targeted),
    };
    Some(CarriedOn {
        plan: Plan {
            objects: fresh.objects,
            steps,
            unplaced: fresh.unplaced,
            summary,
            waves,
            blocked: fresh.blocked,
            options: old.options.clone(),
            held_after,
            hosts: fresh.hosts,
        },
        delta,
    })
}

#[cfg(test)]
mod tests {
    use endstate_spec::{DesiredState, HostInfo, SourceFile};

    use super::*;
    use crate::{PlanOptions, plan_with};

    fn state(version: &str) -> DesiredState {
        let text = format!(
            "apiVersion: endstate/v1\nkind: System\nname: shop\n---\napiVersion: endstate/v1\nkind: Component\n\
             name: web\nsystem: shop\nartifact: {{ version: \"{version}\", path: bin/web }}\ncommand: web\n\
             placement:\n  selector: {{ role: web }}\n  count: {{ per_host: 1 }}\nrollout:\n  canary: 1\n  \
             batch: {{ size: 1 }}\n  one_domain_at_a_time: zone\n"
        );
        let loaded = endstate_spec::load(
            &[SourceFile {
                path: "spec.yaml".into(),
                text,
            }],
            &[],
        );
        match loaded.desired {
            Some(desired) => desired,
            None => panic!("{:#?}", loaded.diagnostics),
        }
    }

    fn hosts(names: &[(&str, &str)]) -> Vec<HostInfo> {
        names
            .iter()
            .map(|(name, zone)| HostInfo {
                name: (*name).to_owned(),
                labels: [("role", "web"), ("zone", zone)]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            })
            .collect()
    }

    fn hosts_of(plan: &Plan) -> Vec<Vec<String>> {
        plan.waves
            .iter()
            .map(|w| w.steps.iter().map(|s| s.step.host.to_string()).collect())
            .collect()
    }

    /// A host that joins during the rollout gets its step in the waves still to come, in its
    /// domain's place; the released waves stay as they were; a host that left loses its steps.
    #[test]
    fn a_joining_host_is_added_to_the_waves_to_come_and_a_leaving_one_dropped() {
        let (v1, v2) = (state("1.0"), state("2.0"));
        let options = PlanOptions::default();
        let first = hosts(&[("a1", "a"), ("a2", "a"), ("b1", "b"), ("c1", "c")]);
        let old = plan_with(Some(&v1), &v2, &first, &options);
        assert_eq!(hosts_of(&old), [vec!["a1"], vec!["a2"], vec!["b1"], vec!["c1"]]);

        // After the canary (wave 1) and wave 2, b2 joins and c1 leaves.
        let now = hosts(&[("a1", "a"), ("a2", "a"), ("b1", "b"), ("b2", "b")]);
        let fresh = plan_with(Some(&v1), &v2, &now, &options);
        let carried = carry_on(&old, 2, false, fresh).expect("the hosts changed the steps");
        assert_eq!(
            hosts_of(&carried.plan),
            [vec!["a1"], vec!["a2"], vec!["b1"], vec!["b2"]]
        );
        assert_eq!(carried.plan.waves[..2], old.waves[..2]);
        assert!(carried.plan.waves.iter().enumerate().all(|(i, w)| w.index == i as u32));
        assert_eq!(carried.delta.added, ["shop/web#0@b2 upgrade"]);
        assert_eq!(carried.delta.dropped, ["shop/web#0@c1 upgrade"]);
        assert_eq!(carried.plan.steps.len(), 4);
        assert_eq!(carried.plan.summary.upgrade, 4);
        let in_waves: usize = carried.plan.waves.iter().map(|w| w.steps.len()).sum();
        assert_eq!(in_waves, carried.plan.steps.len());

        // The same hosts again: nothing to re-plan.
        let same = plan_with(Some(&v1), &v2, &first, &options);
        assert_eq!(carry_on(&old, 2, false, same), None);
    }

    /// A joining host whose zone comes before the released waves' zones still runs after them:
    /// released waves never move.
    #[test]
    fn released_waves_stay_first_whatever_joins() {
        let (v1, v2) = (state("1.0"), state("2.0"));
        let options = PlanOptions::default();
        let old = plan_with(Some(&v1), &v2, &hosts(&[("b1", "b"), ("c1", "c")]), &options);
        let now = hosts(&[("a0", "a"), ("b1", "b"), ("c1", "c")]);
        let carried = carry_on(&old, 1, false, plan_with(Some(&v1), &v2, &now, &options)).unwrap();
        assert_eq!(hosts_of(&carried.plan), [vec!["b1"], vec!["a0"], vec!["c1"]]);
    }
}
