//! A change's stored record: its plan, its rollout progress (a versioned record), the systems it
//! touches, how the API shows it, and its transitions (a compare-and-set on the state, written
//! with its timeline event). The runner, the controller, the blueprint and the handlers all read
//! and write changes through this module, so none of them imports another for it.

use std::collections::BTreeSet;

use endstate_api::ChangeView;
use endstate_plan::{PlacementKey, Plan};
use endstate_spec::{DesiredState, HostInfo};
use endstate_store::{Change, ChangeUpdate, NewEvent};
use endstate_types::ChangeState;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::ApiError;
use crate::metrics::StateLabels;

/// The systems a plan touches: the systems whose own declaration, components, checks or actions change.
pub(crate) fn touched_systems(
    plan: &endstate_plan::Plan,
    before: Option<&DesiredState>,
    after: &DesiredState,
) -> Vec<String> {
    let mut systems = BTreeSet::new();
    let system_of = |kind: &str, name: &str| -> Option<String> {
        let find = |state: &DesiredState| match kind {
            "system" => Some(name.to_string()),
            "component" => state.components.get(name).map(|c| c.system.clone()),
            "check" => state.checks.get(name).map(|c| c.system.clone()),
            "action" => state.actions.get(name).map(|a| a.system.clone()),
            _ => None,
        };
        find(after).or_else(|| before.and_then(find))
    };
    for object in &plan.objects {
        if let Some(system) = system_of(&object.kind, &object.name) {
            systems.insert(system);
        }
    }
    for step in &plan.steps {
        if let Some(system) = system_of("component", &step.component) {
            systems.insert(system);
        }
    }
    systems.into_iter().collect()
}

pub(crate) fn change_view(change: &endstate_store::Change, with_plan: bool) -> ChangeView {
    ChangeView {
        id: change.id.0,
        revision: change.revision.0,
        state: change.state.as_str().to_string(),
        terminal: change.state.is_terminal(),
        reason: change.reason.clone(),
        wave: change.wave.map(|(k, n)| [k, n]),
        created_at: crate::rfc3339(change.created_ms),
        updated_at: crate::rfc3339(change.updated_ms),
        plan: if with_plan { change.plan.clone() } else { None },
        rollout: change.progress.as_ref().map(|_| {
            let progress = crate::record::Progress::of(change);
            endstate_api::RolloutView {
                released: progress.released,
                direction: if progress.back { "back" } else { "forward" }.into(),
                paused: progress.paused,
                paused_by: progress.paused_by,
                back_reason: progress.back_reason,
            }
        }),
    }
}

/// The version of [`Progress`] this build writes. A record without one is version 1 (the same
/// shape); a newer one is not driven by this build (a server of a newer release owns it).
pub(crate) const PROGRESS_VERSION: u32 = 1;

fn first_version() -> u32 {
    1
}

/// A change's progress through its waves, stored with the change: a versioned record, written and
/// read only through this type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Progress {
    /// The record's version ([`PROGRESS_VERSION`]).
    #[serde(default = "first_version")]
    pub(crate) version: u32,
    /// Waves whose steps hosts execute: `waves[..released]`.
    pub(crate) released: u32,
    /// Whether the change is going back to the base revision.
    #[serde(default)]
    pub(crate) back: bool,
    /// When the current wave was released (or, going back, withdrawn).
    pub(crate) wave_started_ms: Option<i64>,
    /// Paused by a person.
    #[serde(default)]
    pub(crate) paused: bool,
    /// Who paused it, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) paused_by: Option<String>,
    /// Why it is going back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) back_reason: Option<String>,
    /// The summary of the last decision written to the timeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) last_decision: Option<String>,
    /// Whether the change already held after its targeted hosts ([`Plan::held_after`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) held: bool,
    /// A digest of the hosts in service (names and labels) the plan was made, or last made
    /// again, on ([`hosts_digest`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) hosts: Option<String>,
    /// A rebalance the server proposed that waits for a person (`endstate change accept`);
    /// cleared once accepted. A newer revision supersedes it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) proposed: bool,
}

/// A digest of hosts' names and labels, whatever their order.
pub(crate) fn hosts_digest(hosts: &[HostInfo]) -> String {
    use sha2::{Digest, Sha256};
    let mut sorted: Vec<&HostInfo> = hosts.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut hasher = Sha256::new();
    for host in sorted {
        hasher.update(host.name.as_bytes());
        for (key, value) in &host.labels {
            hasher.update([0]);
            hasher.update(key.as_bytes());
            hasher.update([b'=']);
            hasher.update(value.as_bytes());
        }
        hasher.update([b'\n']);
    }
    hasher.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            version: PROGRESS_VERSION,
            released: 0,
            back: false,
            wave_started_ms: None,
            paused: false,
            paused_by: None,
            back_reason: None,
            last_decision: None,
            held: false,
            hosts: None,
            proposed: false,
        }
    }
}

impl Progress {
    /// The change's progress, for the views: one this build cannot read shows as not started.
    pub(crate) fn of(change: &Change) -> Progress {
        Progress::read(change).unwrap_or_default()
    }

    /// The change's progress, for the controller: refused when unreadable or newer than this
    /// build, so that it never drives a change from a wrong position.
    pub(crate) fn read(change: &Change) -> Result<Progress, String> {
        // None (or null): nothing released yet.
        let Some(value) = change.progress.as_ref().filter(|v| !v.is_null()) else {
            return Ok(Progress::default());
        };
        let progress: Progress = serde_json::from_value(value.clone())
            .map_err(|error| format!("change {}: its progress is unreadable: {error}", change.id.0))?;
        if progress.version > PROGRESS_VERSION {
            return Err(format!(
                "change {}: its progress is of version {}, newer than this server's {PROGRESS_VERSION}",
                change.id.0, progress.version
            ));
        }
        Ok(Progress {
            version: PROGRESS_VERSION,
            ..progress
        })
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// A wave was released (or withdrawn) now: its deadline counts from now, and its first
    /// decision goes on the timeline whatever the last one said.
    pub(crate) fn begin_wave(&mut self, now: i64) {
        self.wave_started_ms = Some(now);
        self.last_decision = None;
    }

    /// The index of the current wave: the last released going forward, the last withdrawn going back.
    pub(crate) fn current(&self) -> Option<u32> {
        if self.back {
            Some(self.released)
        } else {
            self.released.checked_sub(1)
        }
    }
}

/// The instances whose steps are released: hosts run them as the change's revision has them.
pub(crate) fn released_keys(plan: &Plan, released: u32) -> BTreeSet<PlacementKey> {
    plan.waves
        .iter()
        .take(released as usize)
        .flat_map(|wave| wave.steps.iter())
        .map(|s| PlacementKey {
            component: s.step.component.clone(),
            host: s.step.host.clone(),
            slot: s.step.slot,
        })
        .collect()
}

/// The plan a change carries.
pub(crate) fn plan_of(change: &Change) -> Option<Plan> {
    change
        .plan
        .as_ref()
        .and_then(|plan| serde_json::from_value(plan.clone()).ok())
}

/// What a transition writes besides the state and the reason.
#[derive(Default)]
pub(crate) struct Transition {
    /// A new plan.
    pub(crate) plan: Option<serde_json::Value>,
    /// A new wave position.
    pub(crate) wave: Option<(u32, u32)>,
    /// New controller progress.
    pub(crate) progress: Option<serde_json::Value>,
    /// More events, written in the same transaction (decisions).
    pub(crate) events: Vec<NewEvent>,
    /// Who asked for it (`server` when not a person).
    pub(crate) actor: Option<String>,
    /// Log at debug, not info (waits are frequent).
    pub(crate) quiet: bool,
}

/// The kind of a change's transition event: a variant of [`endstate_events::Event`] that takes a
/// [`endstate_events::ChangeTransition`] (`Event::ChangeRolling`).
pub(crate) type Kind = fn(endstate_events::ChangeTransition) -> endstate_events::Event;

/// A plan's counts, as the timeline records them.
pub(crate) fn plan_counts(summary: &endstate_plan::Summary) -> endstate_events::PlanCounts {
    endstate_events::PlanCounts {
        add: summary.add,
        change: summary.change,
        remove: summary.remove,
        start: summary.start,
        upgrade: summary.upgrade,
        reconfigure: summary.reconfigure,
        stop: summary.stop,
    }
}

/// Moves a change from the state it was read in to `to`, with its timeline event (and `extra`'s),
/// in one transaction; a compare-and-set on the state read.
pub(crate) async fn transition(
    state: &AppState,
    change: &Change,
    to: ChangeState,
    extra: Transition,
    reason: String,
    kind: Kind,
) -> Result<Change, ApiError> {
    let Transition {
        plan,
        wave,
        progress,
        events: mut more,
        actor,
        quiet,
    } = extra;
    let actor = actor.unwrap_or_else(|| "server".into());
    let now = state.now_ms();
    let base = state.base().await?.map(|(_, desired)| desired);
    // The systems the change touches, from the plan it has (or gets now); before it is planned,
    // every system of its revision.
    let systems = match state.desired(change.revision).await? {
        Some(desired) => match plan
            .as_ref()
            .or(change.plan.as_ref())
            .map(|p| serde_json::from_value::<Plan>(p.clone()))
        {
            Some(Ok(plan)) => crate::record::touched_systems(&plan, base.as_deref(), &desired),
            _ => desired.systems.keys().cloned().collect(),
        },
        None => Vec::new(),
    };
    let event = NewEvent {
        systems: systems.clone(),
        change: Some(change.id),
        actor: Some(actor.clone()),
        ..NewEvent::of(
            now,
            &kind(endstate_events::ChangeTransition {
                from: change.state.as_str().to_owned(),
                to: to.as_str().to_owned(),
                reason: reason.clone(),
                revision: change.revision.0,
                wave,
            }),
            format!(
                "change {} {} -> {}: {reason}",
                change.id.0,
                change.state.as_str(),
                to.as_str()
            ),
        )
    };
    let event_kind = event.kind.clone();
    // A change that retires hosts has moved their instances away once it converges: from then
    // on nothing is placed on them (recorded in the same transaction).
    let retire_hosts = if to == ChangeState::Converged {
        crate::options::of_change(change).retire_hosts
    } else {
        Vec::new()
    };
    more.extend(retire_hosts.iter().map(|host| NewEvent {
        systems: systems.clone(),
        host: Some(host.clone()),
        actor: Some(actor.clone()),
        ..NewEvent::of(
            now,
            &endstate_events::Event::HostRetired(endstate_events::HostRetired { change: change.id.0 }),
            format!(
                "host {host} retired by change {}: its instances moved; nothing is placed on it until it enrols again",
                change.id.0
            ),
        )
    }));
    let updated = state
        .store()
        .transition_change(
            change.id,
            change.state,
            ChangeUpdate {
                state: to,
                plan,
                reason: Some(reason),
                wave,
                progress,
                now_ms: now,
                retire_hosts,
            },
            std::iter::once(event)
                .chain(more.drain(..).map(|e| NewEvent {
                    systems: if e.systems.is_empty() {
                        systems.clone()
                    } else {
                        e.systems
                    },
                    ..e
                }))
                .collect(),
        )
        .await?;
    state
        .metrics()
        .change_transitions
        .get_or_create(&StateLabels {
            state: to.as_str().to_string(),
        })
        .inc();
    state.written();
    if quiet {
        tracing::debug!(change = change.id.0, kind = event_kind, "Change waits.");
    } else {
        tracing::info!(
            change = change.id.0,
            from = change.state.as_str(),
            to = to.as_str(),
            kind = event_kind,
            "Change transitioned."
        );
    }
    Ok(updated)
}

/// Every event of the kinds `prefix` starts (`silence.`), oldest first, each given to `each`:
/// what the server keeps in memory (silences, runs, sources) is rebuilt from these at start.
pub(crate) async fn replay_events(
    state: &AppState,
    prefix: &str,
    mut each: impl FnMut(&endstate_store::Event),
) -> Result<(), ApiError> {
    const PAGE: u32 = 1000;
    // `after` makes the store list oldest first: the order things happened in.
    let mut after = Some(endstate_types::EventSeq(0));
    loop {
        let page = state
            .store()
            .query_events(&endstate_store::EventQuery {
                kinds: Some(vec![prefix.to_owned()]),
                after,
                limit: PAGE,
                ..endstate_store::EventQuery::default()
            })
            .await?;
        page.items.iter().for_each(&mut each);
        match page.items.last() {
            Some(last) if page.items.len() == PAGE as usize => after = Some(last.seq),
            _ => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use endstate_types::{ChangeId, RevisionId};

    use super::*;

    fn change(progress: Option<serde_json::Value>) -> Change {
        Change {
            id: ChangeId(7),
            revision: RevisionId(3),
            state: ChangeState::Rolling,
            plan: None,
            reason: None,
            wave: None,
            progress,
            options: None,
            created_ms: 0,
            updated_ms: 0,
        }
    }

    #[test]
    fn progress_is_a_versioned_record() {
        let written = Progress {
            released: 2,
            held: true,
            ..Progress::default()
        };
        let json = written.to_json();
        assert_eq!(json["version"], PROGRESS_VERSION);
        assert_eq!(Progress::read(&change(Some(json))), Ok(written));
        // Written before the record had a version: the same shape, version 1.
        let old = serde_json::json!({ "released": 1, "back": false, "wave_started_ms": 5, "paused": false });
        let read = Progress::read(&change(Some(old))).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((read.version, read.released, read.wave_started_ms), (1, 1, Some(5)));
        // From a newer server, or unreadable: the controller is refused, the views show nothing released.
        let newer = serde_json::json!({ "version": PROGRESS_VERSION + 1, "released": 4 });
        let refused = Progress::read(&change(Some(newer.clone()))).expect_err("a newer record was driven");
        assert!(refused.contains("newer than this server's"), "{refused}");
        assert_eq!(Progress::of(&change(Some(newer))).released, 0);
        let broken = serde_json::json!({ "released": "two" });
        assert!(Progress::read(&change(Some(broken))).is_err());
    }
}
