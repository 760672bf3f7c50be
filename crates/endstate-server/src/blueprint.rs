//! The one authority for placement: what every instance should run now, read from the record of
//! changes (the revision in force on its placement basis, and the released waves of the change
//! rolling out), never from the hosts of the moment.
//!
//! The agent hub renders each host's set from [`AppState::current`], and the views read the same
//! [`Current`], so `status` says what agents are told. A host joining, leaving or coming back
//! changes no placement here; moving instances is a change (`rebalance`), proposed by the server.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use endstate_plan::{Blueprint, Plan, PlanOptions, StepAction};
use endstate_spec::{DesiredState, HostInfo};
use endstate_store::{Change, ChangeFilter, NewChange, NewEvent, PageRequest};
use endstate_types::{ChangeState, RevisionId};

use crate::AppState;
use crate::error::ApiError;
use crate::record::Progress;

/// The revision in force: the one whose change converged last.
#[derive(Clone)]
pub(crate) struct InForce {
    pub(crate) revision: RevisionId,
    /// The change that put it in force.
    pub(crate) change: Change,
    pub(crate) desired: Arc<DesiredState>,
    /// Its placement basis: the hosts its change placed it on, retired ones left out.
    pub(crate) hosts: Arc<Vec<HostInfo>>,
}

/// A placement basis read back from a stored plan, by (change, version of the change).
pub(crate) type CachedBasis = ((u64, i64), Arc<Vec<HostInfo>>);

/// The change rolling out (or halted mid-way).
#[derive(Clone)]
pub(crate) struct RollingChange {
    pub(crate) change: Change,
    pub(crate) desired: Arc<DesiredState>,
    /// How many of its waves are released.
    pub(crate) released: u32,
    /// The hosts its plan places its revision on, retired ones left out.
    pub(crate) hosts: Arc<Vec<HostInfo>>,
}

/// What every instance should run now, with what it was computed from.
pub(crate) struct Current {
    /// What identifies it: recomputed when this differs.
    pub(crate) key: String,
    pub(crate) base: Option<InForce>,
    pub(crate) rollout: Option<RollingChange>,
    pub(crate) blueprint: Blueprint,
}

impl Current {
    /// The desired state an instance of `side` is declared in.
    pub(crate) fn desired_of(&self, side: endstate_plan::Side) -> Option<&DesiredState> {
        match side {
            endstate_plan::Side::Base => self.base.as_ref().map(|b| &*b.desired),
            endstate_plan::Side::Target => self.rollout.as_ref().map(|r| &*r.desired),
        }
    }

    /// The desired state whose systems, checks and actions are in force for the agents: the
    /// change's while one rolls out, else the base's.
    pub(crate) fn shown(&self) -> Option<(RevisionId, &Arc<DesiredState>)> {
        self.rollout
            .as_ref()
            .map(|r| (r.change.revision, &r.desired))
            .or(self.base.as_ref().map(|b| (b.revision, &b.desired)))
    }

    /// The revision a host reaches when every released step is done.
    pub(crate) fn target(&self) -> Option<RevisionId> {
        self.shown().map(|(id, _)| id)
    }
}

/// The placement basis a stored plan records (`hosts`, minus the hosts its options retire), read
/// without parsing the whole plan. `None` for plans made before plans recorded their hosts.
pub(crate) fn basis_of(plan: Option<&serde_json::Value>) -> Option<Vec<HostInfo>> {
    use serde::Deserialize;
    let plan = plan?;
    let hosts = Vec::<HostInfo>::deserialize(plan.get("hosts")?).ok()?;
    let options = plan
        .get("options")
        .and_then(|o| PlanOptions::deserialize(o).ok())
        .unwrap_or_default();
    Some(options.placement_hosts(&hosts))
}

/// The hosts instances may be placed on now: known, not retired, not revoked, and not
/// unreachable for longer than [`RolloutConfig::evacuate_after`](crate::RolloutConfig).
pub(crate) async fn hosts_in_service(state: &AppState) -> Result<Vec<HostInfo>, ApiError> {
    Ok(fleet_hosts(state).await?.in_service)
}

/// The hosts in service and the retired ones, from one read of the hosts.
#[derive(Debug, Default)]
pub(crate) struct FleetHosts {
    /// See [`hosts_in_service`].
    pub(crate) in_service: Vec<HostInfo>,
    /// Hosts a converged change retired: they run nothing until they enrol again.
    pub(crate) retired: Vec<String>,
}

/// The hosts in service and the retired ones, from one read of the hosts (the agent hub renders
/// a set for each, at every change of what runs).
pub(crate) async fn fleet_hosts(state: &AppState) -> Result<FleetHosts, ApiError> {
    let (hosts, gone) = tokio::try_join!(
        async { state.store().list_hosts().await.map_err(ApiError::from) },
        hosts_gone(state)
    )?;
    let mut fleet = FleetHosts::default();
    for host in hosts {
        if host.retired_ms.is_some() {
            fleet.retired.push(host.name.0);
        } else if !gone.contains(&host.name.0) {
            fleet.in_service.push(HostInfo {
                name: host.name.0,
                labels: host.labels,
            });
        }
    }
    Ok(fleet)
}

/// Hosts that left the fleet without a change retiring them: their agent was revoked, or has
/// been unreachable longer than the evacuation time. Nothing will ever report their instances
/// stopped, so a stop on one of them counts as done.
#[derive(Debug, Default)]
pub(crate) struct Gone {
    /// Revoked agents' hosts.
    pub(crate) revoked: BTreeSet<String>,
    /// Hosts unreachable longer than the evacuation time, with how long (ms).
    pub(crate) unreachable: BTreeMap<String, i64>,
}

impl Gone {
    pub(crate) fn contains(&self, host: &str) -> bool {
        self.revoked.contains(host) || self.unreachable.contains_key(host)
    }

    /// Why `host` left: `p-b left the hosts in service: unreachable for 12m00s (evacuated after
    /// 10m00s)`, `p-c left the hosts in service (revoked)`.
    pub(crate) fn why(&self, host: &str, state: &AppState) -> String {
        match self.unreachable.get(host) {
            Some(ms) => format!(
                "{host} left the hosts in service: unreachable for {} (evacuated after {})",
                crate::why::ago(*ms),
                state
                    .rollout_config()
                    .evacuate_after
                    .map_or_else(String::new, |d| crate::why::ago(
                        i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
                    ))
            ),
            None if self.revoked.contains(host) => format!("{host} left the hosts in service (revoked)"),
            None => format!("{host} left the hosts in service"),
        }
    }
}

/// The hosts that are [`Gone`] now.
pub(crate) async fn hosts_gone(state: &AppState) -> Result<Gone, ApiError> {
    let now = state.now_ms();
    let evacuate_after = state
        .rollout_config()
        .evacuate_after
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let mut gone = Gone::default();
    for agent in state.store().list_agents().await? {
        if agent.revoked_ms.is_some() {
            gone.revoked.insert(agent.host.0);
        } else if agent.reachable == Some(false)
            && let Some(after) = evacuate_after
        {
            let unreachable = now.saturating_sub(state.unreachable_since(&agent.host.0));
            if unreachable >= after {
                gone.unreachable.insert(agent.host.0, unreachable);
            }
        }
    }
    Ok(gone)
}

impl AppState {
    /// Since when `host`'s agent has been unreachable, as far as this server watched it: the
    /// moment it marked it so ([`AppState::note_unreachable`]), or the server's start.
    pub(crate) fn unreachable_since(&self, host: &str) -> i64 {
        let since = self
            .0
            .unreachable_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(host)
            .copied();
        since.unwrap_or(self.0.started_ms).max(self.0.started_ms)
    }

    /// `host`'s agent was marked unreachable at `at_ms`.
    pub(crate) fn note_unreachable(&self, host: &str, at_ms: i64) {
        self.0
            .unreachable_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(host.to_owned(), at_ms);
    }

    /// The revision in force with its placement basis; `None` while no change has converged.
    /// A change planned before plans recorded their hosts is taken as placed on the hosts in
    /// service.
    pub(crate) async fn in_force(&self) -> Result<Option<InForce>, ApiError> {
        let Some(change) = self.converged_change().await? else {
            return Ok(None);
        };
        let Some(desired) = self.desired(change.revision).await? else {
            return Ok(None);
        };
        let hosts = self.basis(&change).await?;
        Ok(Some(InForce {
            revision: change.revision,
            change,
            desired,
            hosts,
        }))
    }

    /// The change whose convergence put the revision in force: the newest converged one.
    pub(crate) async fn converged_change(&self) -> Result<Option<Change>, ApiError> {
        let filter = ChangeFilter {
            converged_only: true,
            ..ChangeFilter::default()
        };
        let newest = self
            .store()
            .list_changes(filter, PageRequest { before: None, limit: 1 })
            .await?;
        Ok(newest.items.into_iter().next())
    }

    /// The open changes (not terminal), newest first, at most `limit`.
    pub(crate) async fn open_changes(&self, limit: u32) -> Result<Vec<Change>, ApiError> {
        let filter = ChangeFilter {
            open_only: true,
            ..ChangeFilter::default()
        };
        let page = self
            .store()
            .list_changes(filter, PageRequest { before: None, limit })
            .await?;
        Ok(page.items)
    }

    /// The change rolling out or halted mid-way, if any.
    pub(crate) async fn rolling_change(&self) -> Result<Option<RollingChange>, ApiError> {
        let Some(change) = self
            .open_changes(50)
            .await?
            .into_iter()
            .find(|c| matches!(c.state, ChangeState::Rolling | ChangeState::Halted))
        else {
            return Ok(None);
        };
        let Some(desired) = self.desired(change.revision).await? else {
            return Ok(None);
        };
        let hosts = self.basis(&change).await?;
        Ok(Some(RollingChange {
            released: crate::record::Progress::of(&change).released,
            change,
            desired,
            hosts,
        }))
    }

    /// The placement basis of a change's plan, read once per version of the change (a stored
    /// plan of 10,000 hosts takes milliseconds to read back). A change planned before plans
    /// recorded their hosts is taken as placed on the hosts in service.
    async fn basis(&self, change: &Change) -> Result<Arc<Vec<HostInfo>>, ApiError> {
        let key = (change.id.0, change.updated_ms);
        let cached = self
            .0
            .basis_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, hosts)| Arc::clone(hosts));
        if let Some(hosts) = cached {
            return Ok(hosts);
        }
        let Some(hosts) = basis_of(change.plan.as_ref()) else {
            return Ok(Arc::new(hosts_in_service(self).await?));
        };
        let hosts = Arc::new(hosts);
        let mut cache = self
            .0
            .basis_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The revision in force and the change rolling out: two are in use at a time.
        if cache.len() >= 4 {
            cache.remove(0);
        }
        cache.push((key, Arc::clone(&hosts)));
        Ok(hosts)
    }

    /// What every instance should run now: computed again only when the revision in force, the
    /// change rolling out, its released waves or the hosts its plan was made on differ.
    pub(crate) async fn current(&self) -> Result<Arc<Current>, ApiError> {
        // Read before the changes it guards: a write of changes after this moves it, and the next
        // call reads them again. While it stays, nothing it was computed from changed (revisions
        // are immutable, a basis is read from its change), so the controller's rounds, every
        // agent's resync and every view share one read of the changes.
        let version = self.store().changes_version();
        if let Some((seen, cached)) = self.current_cache().as_ref()
            && *seen == version
        {
            return Ok(Arc::clone(cached));
        }
        let (base, rollout) = tokio::try_join!(self.in_force(), self.rolling_change())?;
        let key = key_of(base.as_ref(), rollout.as_ref());
        if let Some((seen, cached)) = self.current_cache().as_mut()
            && cached.key == key
        {
            *seen = version;
            return Ok(Arc::clone(cached));
        }
        let released = rollout
            .as_ref()
            .and_then(|r| crate::record::plan_of(&r.change).map(|plan| crate::record::released_keys(&plan, r.released)))
            .unwrap_or_default();
        let blueprint = endstate_plan::blueprint(
            base.as_ref().map(|b| (&*b.desired, &b.hosts[..])),
            rollout.as_ref().map(|r| (&*r.desired, &r.hosts[..], &released)),
        );
        let current = Arc::new(Current {
            key,
            base,
            rollout,
            blueprint,
        });
        *self.current_cache() = Some((version, Arc::clone(&current)));
        Ok(current)
    }

    fn current_cache(&self) -> std::sync::MutexGuard<'_, Option<(u64, Arc<Current>)>> {
        self.0
            .current_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn key_of(base: Option<&InForce>, rollout: Option<&RollingChange>) -> String {
    use std::fmt::Write;
    let mut key = String::new();
    if let Some(base) = base {
        let _ = write!(
            key,
            "base={}@{};hosts={}",
            base.revision.0,
            base.change.id.0,
            crate::record::hosts_digest(&base.hosts)
        );
    }
    if let Some(rollout) = rollout {
        let progress = crate::record::Progress::of(&rollout.change);
        let _ = write!(
            key,
            ";change={};released={};back={};hosts={}",
            rollout.change.id.0,
            rollout.released,
            progress.back,
            crate::record::hosts_digest(&rollout.hosts)
        );
    }
    key
}

/// How often, at most, the hosts in service are compared with the placement basis.
const PROPOSE_EVERY_MS: i64 = 2_000;

/// With no change open: when the hosts in service would place the revision in force otherwise
/// than its placement basis (a host left, joined, or came back with other labels), proposes a
/// change of the same revision that moves the instances, planned and rolled out in waves and
/// gated like any other (`change.proposed`).
///
/// When every host in service is already in the basis (hosts only left: revoked, or retired by
/// hand), it starts by itself: instances leave hosts that are gone. When a host joined or was
/// relabelled, it waits for a person (`endstate change accept N`, or `abort N` to drop it): a
/// new host is no reason to move healthy instances by itself. Each set of hosts is looked at
/// once (until the server restarts), and the hosts at most every [`PROPOSE_EVERY_MS`]: the
/// runner's idle rounds follow every write (each observation batch), and reading every host
/// and agent at each would load a large fleet's server for nothing.
pub(crate) async fn propose(state: &AppState) -> Result<(), ApiError> {
    let checked = state.now_ms();
    let last = state.0.proposals_checked_ms.load(std::sync::atomic::Ordering::Relaxed);
    if checked.saturating_sub(last) < PROPOSE_EVERY_MS {
        return Ok(());
    }
    state
        .0
        .proposals_checked_ms
        .store(checked, std::sync::atomic::Ordering::Relaxed);
    let Some(in_force) = state.in_force().await? else {
        return Ok(());
    };
    let hosts = hosts_in_service(state).await?;
    if endstate_plan::same_hosts(&in_force.hosts, &hosts) {
        return Ok(());
    }
    let seen = format!("{}:{}", in_force.change.id.0, crate::record::hosts_digest(&hosts));
    {
        let mut last = state
            .0
            .proposals_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.as_deref() == Some(seen.as_str()) {
            return Ok(());
        }
        *last = Some(seen);
    }
    let desired = &*in_force.desired;
    let mut plan = endstate_plan::plan_from(
        Some((desired, &in_force.hosts[..])),
        desired,
        &hosts,
        &PlanOptions::default(),
    );
    plan.record_hosts(&hosts);
    if plan.steps.is_empty() {
        return Ok(());
    }
    let joined: Vec<&str> = hosts
        .iter()
        .filter(|h| !in_force.hosts.contains(h))
        .map(|h| h.name.as_str())
        .collect();
    let gone: Vec<&str> = in_force
        .hosts
        .iter()
        .filter(|h| !hosts.iter().any(|now| now.name == h.name))
        .map(|h| h.name.as_str())
        .collect();
    let what = rebalance_summary(&plan);
    let count = u32::try_from(plan.waves.len()).unwrap_or(u32::MAX);
    let mut why = Vec::new();
    if !gone.is_empty() {
        let left = hosts_gone(state).await?;
        let (why_left, others): (Vec<&str>, Vec<&str>) = gone.iter().partition(|host| left.contains(host));
        why.extend(why_left.iter().map(|host| left.why(host, state)));
        if !others.is_empty() {
            why.push(format!("{} left the hosts in service", others.join(", ")));
        }
    }
    if !joined.is_empty() {
        why.push(format!("{} joined (or came back with other labels)", joined.join(", ")));
    }
    let why = why.join("; ");
    if !plan.blocked.is_empty() {
        let rules: Vec<String> = plan
            .blocked
            .iter()
            .map(|b| format!("{} ({}): {}", b.component, b.rule, b.reason))
            .collect();
        tracing::warn!(
            why,
            rules = rules.join("; "),
            "A rebalance cannot be planned; instances stay where they are."
        );
        return Ok(());
    }
    let progress = Progress {
        hosts: Some(crate::record::hosts_digest(&hosts)),
        proposed: !joined.is_empty(),
        ..Progress::default()
    };
    let (to, reason) = if joined.is_empty() {
        (
            ChangeState::Rolling,
            format!(
                "rebalance of revision {}: {why}: {what}; started by itself (instances leave hosts that are gone), \
                 {} steps in {count} waves; asking the Decider before wave 1",
                in_force.revision.0,
                plan.steps.len()
            ),
        )
    } else {
        (
            ChangeState::Halted,
            format!(
                "proposed rebalance of revision {}: {why}: {what}; {} steps in {count} waves, waiting for a person: \
                 `endstate change accept N` rolls it out in waves, gated, `endstate change abort N` drops it",
                in_force.revision.0,
                plan.steps.len()
            ),
        )
    };
    let plan_json = serde_json::to_value(&plan).map_err(|error| ApiError::Internal(error.to_string()))?;
    let systems = crate::record::touched_systems(&plan, Some(desired), desired);
    let now = state.now_ms();
    let event = NewEvent {
        systems,
        actor: Some("server".into()),
        ..NewEvent::of(
            now,
            &endstate_events::Event::ChangeProposed(endstate_events::ChangeProposed {
                revision: in_force.revision.0,
                to: to.as_str().to_owned(),
                joined: joined.iter().map(ToString::to_string).collect(),
                gone: gone.iter().map(ToString::to_string).collect(),
                steps: plan.steps.len() as u64,
                waves: count,
                reason: reason.clone(),
            }),
            reason.clone(),
        )
    };
    let new = NewChange {
        revision: in_force.revision,
        state: to,
        plan: Some(plan_json),
        reason: Some(reason),
        progress: Some(progress.to_json()),
        options: None,
        created_ms: now,
    };
    let change = state.store().add_change(new, vec![event]).await?;
    tracing::info!(change = change.id.0, state = to.as_str(), "Rebalance proposed.");
    state.written();
    Ok(())
}

/// What a rebalance moves, per component: `2 instances of storefront/web onto web-9, off web-3`.
fn rebalance_summary(plan: &Plan) -> String {
    use std::collections::{BTreeMap, BTreeSet};
    let mut by_component: BTreeMap<&str, (u32, BTreeSet<&str>, BTreeSet<&str>)> = BTreeMap::new();
    for step in &plan.steps {
        let entry = by_component.entry(&step.component).or_default();
        match step.action {
            StepAction::Stop => {
                entry.2.insert(&step.host);
            }
            StepAction::Start | StepAction::Upgrade | StepAction::Reconfigure => {
                entry.0 += 1;
                entry.1.insert(&step.host);
            }
        }
    }
    by_component
        .iter()
        .map(|(component, (n, onto, off))| {
            let mut text = format!("{n} instance(s) of {component}");
            if !onto.is_empty() {
                text.push_str(&format!(
                    " onto {}",
                    onto.iter().copied().collect::<Vec<_>>().join(", ")
                ));
            }
            if !off.is_empty() {
                text.push_str(&format!(" off {}", off.iter().copied().collect::<Vec<_>>().join(", ")));
            }
            text
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// What is in force and what newer change did not get there.
#[utoipa::path(get, path = "/v1/in-force", responses((status = 200, body = endstate_api::InForceView)), security(("bearer" = [])))]
pub(crate) async fn in_force_view(
    axum::extract::State(state): axum::extract::State<AppState>,
    axum::Extension(actor): axum::Extension<crate::auth::Actor>,
) -> Result<axum::Json<endstate_api::InForceView>, ApiError> {
    crate::auth::authorize(&actor, crate::auth::Verb::Read, None)?;
    let in_force = state.in_force().await?;
    let recent = state
        .store()
        .list_changes(
            ChangeFilter::default(),
            PageRequest {
                before: None,
                limit: 50,
            },
        )
        .await?;
    let after = in_force.as_ref().map_or(0, |f| f.change.id.0);
    let newer = recent
        .items
        .iter()
        .find(|c| c.id.0 > after && c.state != ChangeState::Superseded)
        .cloned();
    Ok(axum::Json(in_force_summary(
        in_force.as_ref().map(|f| &f.change),
        newer.as_ref(),
    )))
}

/// The one line `status` starts with, from the change in force and the newest one after it.
pub(crate) fn in_force_summary(in_force: Option<&Change>, newer: Option<&Change>) -> endstate_api::InForceView {
    let time = |ms: i64| {
        let text = crate::rfc3339(ms);
        text.get(11..19).map_or(text.clone(), str::to_owned)
    };
    let base = match in_force {
        Some(change) => format!(
            "revision {} in force (change {}, since {})",
            change.revision.0,
            change.id.0,
            time(change.updated_ms)
        ),
        None => "no revision in force yet".to_owned(),
    };
    let summary = match newer {
        None => base,
        Some(change) => {
            let (id, revision) = (change.id.0, change.revision.0);
            let proposed = crate::record::Progress::of(change).proposed;
            let what = match change.state {
                ChangeState::RolledBack => format!(
                    "revision {revision} rolled back at {} (change {id}): apply a fixed revision to try again",
                    time(change.updated_ms)
                ),
                ChangeState::Failed => format!(
                    "revision {revision} failed at {} (change {id}): {}",
                    time(change.updated_ms),
                    change.reason.as_deref().unwrap_or("no reason given")
                ),
                ChangeState::Halted if proposed => format!(
                    "change {id} proposed (revision {revision}): `endstate change accept {id}` rolls it out, \
                     `endstate change abort {id}` drops it"
                ),
                ChangeState::Halted => format!(
                    "revision {revision} halted (change {id}): `endstate change resume {id}` carries it on, \
                     `endstate change abort {id}` takes it back"
                ),
                ChangeState::Rolling => match change.wave {
                    Some((wave, count)) => {
                        format!(
                            "revision {revision} rolling out (change {id}, wave {}/{count})",
                            wave + 1
                        )
                    }
                    None => format!("revision {revision} rolling out (change {id})"),
                },
                state => format!("revision {revision} {} (change {id})", state.as_str()),
            };
            format!("{what}; {base}")
        }
    };
    endstate_api::InForceView {
        revision: in_force.map(|c| c.revision.0),
        change: in_force.map(|c| c.id.0),
        since: in_force.map(|c| crate::rfc3339(c.updated_ms)),
        newer: newer.map(|c| crate::record::change_view(c, false)),
        summary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plan made while no host was in service is placed on no host: its basis is recorded
    /// (empty), not taken from the hosts in service of each moment. Recorded as absent, it made
    /// every host that enrolled later receive instances outside any change, and every read of the
    /// revision in force read the whole host list (quadratic when 10,000 agents connect).
    #[test]
    fn a_plan_on_no_hosts_keeps_an_empty_basis() {
        let desired = endstate_spec::DesiredState::default();
        let mut plan = endstate_plan::plan(None, &desired, &[]);
        plan.record_hosts(&[]);
        let stored = serde_json::to_value(&plan).unwrap();
        assert_eq!(basis_of(Some(&stored)), Some(Vec::new()), "{stored}");

        let hosts = vec![HostInfo {
            name: "h1".into(),
            labels: Default::default(),
        }];
        plan.record_hosts(&hosts);
        let stored = serde_json::to_value(&plan).unwrap();
        assert_eq!(basis_of(Some(&stored)), Some(hosts));

        // A plan stored before plans recorded their hosts has no basis of its own.
        let unrecorded = serde_json::to_value(endstate_plan::plan(None, &desired, &[])).unwrap();
        assert_eq!(basis_of(Some(&unrecorded)), None, "{unrecorded}");
    }
}
