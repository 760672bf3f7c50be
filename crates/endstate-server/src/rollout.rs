//! The controller: executes a change's waves through the agents, asks the Decider before every
//! wave and at every round while one runs, and acts on its answer.
//!
//! # Expected flow
//! 1. The runner plans the change; a plan with instance steps makes the change `rolling` with
//!    nothing released yet ([`Progress::released`] = 0).
//! 2. Every round, [`drive`] renders what hosts should run from the change's progress (released
//!    waves at the change's revision, the rest at the base revision: [`released_keys`]), gathers
//!    the Decider's input from what the agents report, and decides:
//!    - `allow`: the current wave is done; the next one is released (or, after the last, the
//!      change converges once every instance of the revision is observed healthy);
//!    - `wait`: the reason goes on the change (and on the timeline when it differs from the last);
//!    - `halt`: the change is `halted` and waits for a person (`endstate change resume|abort`);
//!    - `rollback`: the change turns back: waves are withdrawn newest first, each gated like a
//!      forward wave (its instances healthy again at the base revision), until none is left, then
//!      the change is `rolled_back`.
//! 3. Every decision that changes something, and every wait whose reason changed, is written to
//!    the timeline with its findings and inputs.
//! 4. Going forward, when the hosts in service differ from those the plan was made on (a host
//!    joined or left, labels changed: [`Progress::hosts`]), the waves still to come are planned
//!    again on them (`endstate_plan::carry_on`): the released waves stay, a joining host's
//!    instances get steps in the waves to come, a leaving host's unreleased steps go
//!    (`change.replanned`, saying which steps).
//!
//! # Guarantees
//! - The controller keeps nothing in memory: progress is stored with the change (compare-and-set
//!   on its state), so a restarted server continues from the same wave.
//! - Pause, resume and abort take the same lock as the controller's round, so a person's request
//!   and a round never overwrite each other's progress (one server; replicas need a
//!   compare-and-set on the progress itself).
//!
//! # Caveats
//! - Metric gates are read from Prometheus (`RolloutConfig::prometheus_url`) with instant
//!   queries: thresholds, and canary against baseline (`max_ratio_to_baseline`: the same query
//!   for the new version and for the version in force); check gates from the monitoring checks'
//!   latest results (`monitor`).
//! - Only one change rolls out at a time (a newer revision waits for the one rolling out or
//!   halted: see `runner`), so the blast radius in flight is the next wave, and there are no
//!   conflicts between changes to gather.
//! - Until its step is released, a joining host runs its instances as the base revision has them
//!   (the hub renders every host in service); going back is not re-planned.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use endstate_decide::{
    Direction, FreezeView, GateReading, GateRule, Input, InstanceState, InstanceView, OnFailure, Verdict, WaveView,
};
use endstate_plan::{Plan, StepAction, Wave, WaveKind, WaveStep};
use endstate_spec::{DesiredState, HostInfo};
use endstate_store::{Change, NewEvent};
use endstate_types::ChangeState;

use crate::AppState;
use crate::error::ApiError;
use crate::fleet::{Fleet, Live};
use crate::record::{Progress, Transition, hosts_digest, plan_of, transition};

/// How long a wave's instances have to become healthy before the wave counts as failed.
pub const DEFAULT_WAVE_DEADLINE: Duration = Duration::from_secs(120);

/// How long a host's agent stays unreachable before its instances move elsewhere, by default.
pub const DEFAULT_EVACUATE_AFTER: Duration = Duration::from_secs(600);

/// Settings of the controller.
#[derive(Clone, Debug)]
pub struct RolloutConfig {
    /// How long a wave's instances have to become healthy (at the change's revision, or back at
    /// the base revision when rolling back).
    pub wave_deadline: Duration,
    /// The Prometheus server metric gates query (`http://127.0.0.1:9090`); without it, a
    /// component with gates cannot be gated and its waves wait, saying so.
    pub prometheus_url: Option<String>,
    /// How to authenticate to that Prometheus (read from a file at start).
    pub prometheus_auth: Option<crate::prometheus::PrometheusAuth>,
    /// A host whose agent has been unreachable this long (while this server runs) leaves the
    /// hosts in service: the server proposes moving its instances elsewhere, and that change
    /// starts by itself, gated like any other. `None`: hosts never leave by being unreachable.
    pub evacuate_after: Option<Duration>,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self {
            wave_deadline: DEFAULT_WAVE_DEADLINE,
            prometheus_url: None,
            prometheus_auth: None,
            evacuate_after: Some(DEFAULT_EVACUATE_AFTER),
        }
    }
}

pub(crate) async fn drive(state: &AppState, change: &Change) -> Result<(), ApiError> {
    let Some(fleet) = state.fleet() else {
        return Ok(());
    };
    let fleet = &*fleet;
    let Some(plan) = plan_of(change) else {
        let reason = "the change's plan is unreadable".to_owned();
        transition(
            state,
            change,
            ChangeState::Failed,
            Transition::default(),
            reason,
            endstate_events::Event::ChangeFailed,
        )
        .await?;
        return Ok(());
    };
    let Some(desired) = state.desired(change.revision).await? else {
        return Ok(());
    };
    // The revision in force as the blueprint holds it: no read of the changes while none was written.
    let current = state.current().await?;
    let in_force = current.base.as_ref();
    let base = in_force.map(|b| Arc::clone(&b.desired));
    let mut progress = match Progress::read(change) {
        Ok(progress) => progress,
        Err(reason) => {
            tracing::warn!(change = change.id.0, reason, "Change left alone.");
            return Ok(());
        }
    };
    if !progress.back {
        let hosts = crate::blueprint::hosts_in_service(state).await?;
        let digest = hosts_digest(&hosts);
        match &progress.hosts {
            // A change from before hosts were recorded: its plan's hosts are those of now.
            None => progress.hosts = Some(digest),
            Some(seen) if *seen != digest => {
                return replan(
                    state,
                    fleet,
                    change,
                    &plan,
                    progress,
                    (in_force.map(|b| (&*b.desired, &b.hosts[..])), &*desired),
                    &hosts,
                    digest,
                )
                .await;
            }
            Some(_) => {}
        }
    }
    fleet.refresh(state).await?;

    let now = state.now_ms();
    let input = gather(state, fleet, &plan, &progress, &desired, base.as_deref(), now).await?;
    let decision = endstate_decide::decide(&input);
    state.recheck_at(decision.recheck_at_ms);
    let count = plan.waves.len() as u32;
    let summary = decision.summary();
    let recorded = endstate_events::Decision {
        verdict: decision.verdict.as_str().to_owned(),
        findings: decision
            .findings
            .iter()
            .map(|f| endstate_events::Finding {
                rule: f.rule.clone(),
                ok: f.ok,
                message: f.message.clone(),
            })
            .collect(),
        recheck_at_ms: decision.recheck_at_ms,
        input: serde_json::to_value(&input).unwrap_or_default(),
    };
    let decision_event = |kind: fn(endstate_events::Decision) -> endstate_events::Event, text: String| NewEvent {
        change: Some(change.id),
        actor: Some("server".into()),
        ..NewEvent::of(now, &kind(recorded.clone()), text)
    };
    match decision.verdict {
        Verdict::Allow if !progress.back && plan.held_after == Some(progress.released) && !progress.held => {
            // The targeted hosts are done: a person decides whether the others follow.
            progress.held = true;
            progress.last_decision = Some(summary.clone());
            let targets = plan.options.target_hosts.join(", ");
            let reason = format!(
                "holding after the targeted hosts ({targets}): waves 1-{} done; `endstate change resume {id}` \
                 goes on to the other hosts (wave {}/{count}), `endstate change abort {id}` goes back",
                progress.released,
                progress.released + 1,
                id = change.id.0
            );
            let events = vec![decision_event(
                endstate_events::Event::DecisionHalt,
                format!(
                    "change {}: hold after the targeted hosts ({targets}); {summary}",
                    change.id.0
                ),
            )];
            let update = Transition {
                progress: Some(progress.to_json()),
                events,
                ..Transition::default()
            };
            transition(
                state,
                change,
                ChangeState::Halted,
                update,
                reason,
                endstate_events::Event::ChangeHalted,
            )
            .await?;
        }
        Verdict::Allow if !progress.back && progress.released < count => {
            let index = progress.released;
            let Some(wave) = plan.waves.get(index as usize) else {
                return Ok(());
            };
            let before = if index == 0 {
                format!("before wave 1/{count}: {summary}")
            } else {
                format!("wave {index}/{count} done: {summary}")
            };
            progress.released += 1;
            progress.begin_wave(now);
            let reason = format!("wave {}/{count} ({}): {}", index + 1, wave_word(wave), wave.reason);
            let events = vec![decision_event(
                endstate_events::Event::DecisionAllow,
                format!("change {}: allow; {before}", change.id.0),
            )];
            transition(
                state,
                change,
                ChangeState::Rolling,
                Transition {
                    wave: Some((index, count)),
                    progress: Some(progress.to_json()),
                    events,
                    ..Transition::default()
                },
                reason,
                endstate_events::Event::ChangeWaveStarted,
            )
            .await?;
            fleet.refresh(state).await?;
        }
        Verdict::Allow if !progress.back => match fleet.progress(state, change.revision).await? {
            Ok(total) => {
                let reason = format!(
                    "{total} instances running and healthy at revision {} after {count} waves",
                    change.revision.0
                );
                let events = vec![decision_event(
                    endstate_events::Event::DecisionAllow,
                    format!("change {}: allow; last wave done: {summary}", change.id.0),
                )];
                let update = Transition {
                    events,
                    ..Transition::default()
                };
                transition(
                    state,
                    change,
                    ChangeState::Converged,
                    update,
                    reason,
                    endstate_events::Event::ChangeConverged,
                )
                .await?;
            }
            Err(waiting) => wait(state, change, &mut progress, waiting, None).await?,
        },
        Verdict::Allow => {
            // Going back: the withdrawn wave's instances are healthy again at the base revision.
            if progress.released == 0 {
                let why = progress.back_reason.clone().unwrap_or_default();
                let reason = format!("back at the last converged revision: {why}");
                let events = vec![decision_event(
                    endstate_events::Event::DecisionAllow,
                    format!("change {}: allow; rollback done: {summary}", change.id.0),
                )];
                let update = Transition {
                    events,
                    ..Transition::default()
                };
                transition(
                    state,
                    change,
                    ChangeState::RolledBack,
                    update,
                    reason,
                    endstate_events::Event::ChangeRolledBack,
                )
                .await?;
            } else {
                progress.released -= 1;
                progress.begin_wave(now);
                let index = progress.released;
                let reason = format!(
                    "rolling back: withdrawing wave {}/{count}; {}",
                    index + 1,
                    progress.back_reason.clone().unwrap_or_default()
                );
                let events = vec![decision_event(
                    endstate_events::Event::DecisionAllow,
                    format!("change {}: allow; wave {} withdrawn: {summary}", change.id.0, index + 2),
                )];
                let update = Transition {
                    wave: Some((index, count)),
                    progress: Some(progress.to_json()),
                    events,
                    ..Transition::default()
                };
                transition(
                    state,
                    change,
                    ChangeState::Rolling,
                    update,
                    reason,
                    endstate_events::Event::ChangeRollingBack,
                )
                .await?;
                fleet.refresh(state).await?;
            }
        }
        Verdict::Wait => {
            let event = (progress.last_decision.as_deref() != Some(summary.as_str())).then(|| {
                decision_event(
                    endstate_events::Event::DecisionWait,
                    format!("change {}: wait; {summary}", change.id.0),
                )
            });
            let reason = match progress.current() {
                Some(index) if progress.back => {
                    format!("rolling back, wave {}/{count} withdrawn; waiting: {summary}", index + 1)
                }
                Some(index) => format!("wave {}/{count}; waiting: {summary}", index + 1),
                None => format!("waiting before wave 1/{count}: {summary}"),
            };
            progress.last_decision = Some(summary.clone());
            wait(state, change, &mut progress, reason, event).await?;
        }
        Verdict::Halt => {
            progress.last_decision = Some(summary.clone());
            let reason = format!("halted: {summary}");
            let events = vec![decision_event(
                endstate_events::Event::DecisionHalt,
                format!("change {}: halt; {summary}", change.id.0),
            )];
            let update = Transition {
                progress: Some(progress.to_json()),
                events,
                ..Transition::default()
            };
            transition(
                state,
                change,
                ChangeState::Halted,
                update,
                reason,
                endstate_events::Event::ChangeHalted,
            )
            .await?;
        }
        Verdict::Rollback => {
            let index = progress.released.saturating_sub(1);
            progress.back = true;
            progress.back_reason = Some(summary.clone());
            progress.released = index;
            progress.begin_wave(now);
            let reason = format!("rolling back: withdrawing wave {}/{count}; {summary}", index + 1);
            let events = vec![decision_event(
                endstate_events::Event::DecisionRollback,
                format!("change {}: roll back; {summary}", change.id.0),
            )];
            let update = Transition {
                wave: Some((index, count)),
                progress: Some(progress.to_json()),
                events,
                ..Transition::default()
            };
            transition(
                state,
                change,
                ChangeState::Rolling,
                update,
                reason,
                endstate_events::Event::ChangeRollingBack,
            )
            .await?;
            fleet.refresh(state).await?;
        }
    }
    Ok(())
}

/// The hosts in service changed while the change rolls forward: plans the waves still to come
/// again on them, or says why the plan carries on as it is.
#[allow(clippy::too_many_arguments)]
async fn replan(
    state: &AppState,
    fleet: &dyn Fleet,
    change: &Change,
    plan: &Plan,
    mut progress: Progress,
    (base, desired): (Option<(&DesiredState, &[HostInfo])>, &DesiredState),
    hosts: &[HostInfo],
    digest: String,
) -> Result<(), ApiError> {
    let mut fresh = endstate_plan::plan_from(base, desired, hosts, &plan.options);
    fresh.record_hosts(hosts);
    progress.hosts = Some(digest);
    let refused = fresh
        .blocked
        .iter()
        .map(|b| format!("{} ({}): {}", b.component, b.rule, b.reason))
        .chain(
            fresh
                .unplaced
                .iter()
                .map(|u| format!("{} cannot be placed: {}", u.component, u.reason)),
        )
        .collect::<Vec<_>>();
    let carried = endstate_plan::carry_on(plan, progress.released, progress.held, fresh);
    let Some(carried) = carried else {
        let reason = if refused.is_empty() {
            // The same steps: only the recorded hosts change.
            change.reason.clone().unwrap_or_default()
        } else {
            format!(
                "the hosts in service changed, but the rest of the rollout cannot be planned on them ({}): \
                 carrying on with the waves as planned",
                refused.join("; ")
            )
        };
        return wait(state, change, &mut progress, reason, None).await;
    };
    let count = u32::try_from(carried.plan.waves.len()).unwrap_or(u32::MAX);
    let reason = format!(
        "the hosts in service changed: the waves still to come are planned again on them: {}; {} waves \
         released of {count}",
        carried.delta.describe(),
        progress.released
    );
    let plan_json = serde_json::to_value(&carried.plan).map_err(|error| ApiError::Internal(error.to_string()))?;
    let update = Transition {
        plan: Some(plan_json),
        wave: Some((progress.released.saturating_sub(1), count)),
        progress: Some(progress.to_json()),
        ..Transition::default()
    };
    transition(
        state,
        change,
        ChangeState::Rolling,
        update,
        reason,
        endstate_events::Event::ChangeReplanned,
    )
    .await?;
    fleet.refresh(state).await?;
    Ok(())
}

/// Records a wait: the reason on the change when it differs, the decision on the timeline when given.
async fn wait(
    state: &AppState,
    change: &Change,
    progress: &mut Progress,
    reason: String,
    event: Option<NewEvent>,
) -> Result<(), ApiError> {
    let progress_json = progress.to_json();
    if change.reason.as_deref() == Some(reason.as_str())
        && change.progress.as_ref() == Some(&progress_json)
        && event.is_none()
    {
        return Ok(());
    }
    let update = Transition {
        progress: Some(progress_json),
        events: event.into_iter().collect(),
        quiet: true,
        ..Transition::default()
    };
    transition(
        state,
        change,
        ChangeState::Rolling,
        update,
        reason,
        endstate_events::Event::ChangeWaiting,
    )
    .await?;
    Ok(())
}

fn wave_word(wave: &Wave) -> String {
    let kind = match wave.kind {
        WaveKind::Canary => "canary",
        WaveKind::Batch => "batch",
        WaveKind::Stop => "stop",
    };
    match &wave.domain {
        Some(domain) => format!("{kind} of {} in {domain}", wave.component),
        None => format!("{kind} of {}", wave.component),
    }
}

/// Gathers the Decider's input from the plan, the progress and what the agents report.
async fn gather(
    state: &AppState,
    fleet: &dyn Fleet,
    plan: &Plan,
    progress: &Progress,
    desired: &DesiredState,
    base: Option<&DesiredState>,
    now: i64,
) -> Result<Input, ApiError> {
    let config = state.rollout_config();
    let count = plan.waves.len() as u32;
    let current = progress
        .current()
        .and_then(|i| plan.waves.get(i as usize).map(|w| (i, w)));
    let wave = current.map(|(index, wave)| WaveView {
        index,
        count,
        started_ms: progress.wave_started_ms,
        // Going back restores instances of the revision that converged, which already held their
        // minimum healthy time: each withdrawn wave waits for their health, not for that time again
        // (nor for a pause).
        min_healthy_ms: if progress.back { 0 } else { wave.min_healthy_ms },
        pause_after_ms: if progress.back { 0 } else { wave.pause_after_ms },
        deadline_ms: u64::try_from(config.wave_deadline.as_millis()).unwrap_or(u64::MAX),
        stops_only: wave.steps.iter().all(|s| expects_gone(s, progress.back)),
    });
    // A stop on a host that left the fleet (its agent revoked, or unreachable longer than the
    // evacuation time) is done: nothing will ever report its instance stopped (read only when
    // such a stop waits on a host that is not connected). A host that comes back gets a set
    // without the instance, and its agent stops it.
    let waits_on_absent = plan
        .waves
        .iter()
        .flat_map(|w| &w.steps)
        .any(|s| expects_gone(s, progress.back) && !fleet.connected(&s.step.host));
    let gone = if waits_on_absent {
        crate::blueprint::hosts_gone(state).await?
    } else {
        crate::blueprint::Gone::default()
    };
    let mut wave_instances = Vec::new();
    if let Some((_, wave)) = current {
        for step in &wave.steps {
            wave_instances.push(view(fleet, step, progress.back, &gone).await);
        }
    }
    let mut earlier_instances = Vec::new();
    if !progress.back {
        let earlier = progress.released.saturating_sub(1) as usize;
        for wave in plan.waves.iter().take(earlier) {
            for step in &wave.steps {
                earlier_instances.push(view(fleet, step, false, &gone).await);
            }
        }
    }
    let on_failure = current
        .and_then(|(_, wave)| {
            desired
                .components
                .get(&wave.component)
                .or_else(|| base.and_then(|b| b.components.get(&wave.component)))
        })
        .map_or(OnFailure::Halt, |component| match component.rollout.on_failure {
            endstate_spec::OnFailure::Halt => OnFailure::Halt,
            endstate_spec::OnFailure::Rollback => OnFailure::Rollback,
        });
    let last_wave = if progress.back {
        progress.released == 0
    } else {
        progress.released == count
    };
    Ok(Input {
        now_ms: now,
        direction: if progress.back {
            Direction::Back
        } else {
            Direction::Forward
        },
        paused: progress.paused,
        wave,
        wave_instances,
        earlier_instances,
        // The Decider derives when the wave was done from the instances' healthy times.
        wave_done_ms: None,
        gates: if progress.back {
            // A rollback is gated on health: the metrics of the version being withdrawn say
            // nothing about the one coming back.
            Vec::new()
        } else {
            gates(state, plan, progress, desired, base).await
        },
        freezes: freezes(plan, desired, base),
        degraded: degraded(state, plan, desired, base).await?,
        conflicts: Vec::new(),
        blast: blast(plan, progress, desired),
        on_failure,
        last_wave,
        // Instances the released waves created with no earlier version: going back would stop them.
        created: if progress.back {
            0
        } else {
            let created = plan
                .waves
                .iter()
                .take(progress.released as usize)
                .flat_map(|wave| &wave.steps)
                .filter(|s| s.step.action == StepAction::Start && s.step.from_version.is_none())
                .count();
            u32::try_from(created).unwrap_or(u32::MAX)
        },
    })
}

/// What would be in flight if the next wave started, and the limits of the policies covering
/// its component's system. One change rolls out at a time and a wave starts only once the one
/// before is done, so the next wave is all that would be in flight.
fn blast(plan: &Plan, progress: &Progress, desired: &DesiredState) -> endstate_decide::BlastRadius {
    let next = if progress.back {
        None
    } else {
        plan.waves.get(progress.released as usize)
    };
    let Some(wave) = next else {
        return endstate_decide::BlastRadius::default();
    };
    let system = wave
        .component
        .split_once('/')
        .map_or(wave.component.as_str(), |(s, _)| s);
    let limit = desired
        .max_in_flight(system)
        .map(|(limit, _)| limit)
        .unwrap_or_default();
    let hosts: BTreeSet<&str> = wave.steps.iter().map(|s| &*s.step.host).collect();
    endstate_decide::BlastRadius {
        hosts: u32::try_from(hosts.len()).unwrap_or(u32::MAX),
        instances: u32::try_from(wave.steps.len()).unwrap_or(u32::MAX),
        domains: u32::from(wave.domain.is_some()),
        max_hosts: limit.hosts,
        max_instances: limit.instances,
        max_domains: None,
    }
}

/// The metric gates of the components whose waves are released, read from Prometheus.
async fn gates(
    state: &AppState,
    plan: &Plan,
    progress: &Progress,
    desired: &DesiredState,
    base: Option<&DesiredState>,
) -> Vec<GateReading> {
    let components: BTreeSet<&str> = plan
        .waves
        .iter()
        .take(progress.released as usize)
        .map(|w| w.component.as_str())
        .collect();
    let mut readings = Vec::new();
    for key in components {
        let Some(component) = desired.components.get(key) else {
            continue;
        };
        let version = &component.artifact.version;
        for gate in &component.gates {
            if let Some(check) = &gate.check {
                // Fresh: results from the last three intervals (and a timeout) of the check.
                let declared = desired
                    .checks
                    .values()
                    .find(|c| check.split_once('/') == Some((c.system.as_str(), c.name.as_str())));
                let fresh_ms = declared.map_or(30_000, |c| {
                    i64::try_from(3 * c.interval.as_std().as_millis() + c.timeout.as_std().as_millis())
                        .unwrap_or(i64::MAX)
                });
                let (value, source) =
                    state
                        .monitor()
                        .check_gate(check, key, gate.perfdata.as_deref(), state.now_ms(), fresh_ms);
                let name = format!("{key}:{}", gate.name);
                for rule in [gate.max.map(GateRule::Max), gate.min.map(GateRule::Min)]
                    .into_iter()
                    .flatten()
                {
                    readings.push(GateReading {
                        name: name.clone(),
                        source: source.clone(),
                        value: value.clone(),
                        rule,
                    });
                }
                continue;
            }
            let query = gate.query_for(version);
            let value = ask_prometheus(state, &query).await;
            let name = format!("{key}:{}", gate.name);
            let source = format!("prometheus: {query}");
            // Canary against baseline: the same query for the version in force (the instances
            // not changed yet). A new component, or a change that keeps the version, has no
            // baseline to compare with: the ratio is not checked then.
            let before = base
                .and_then(|b| b.components.get(key))
                .map(|c| &c.artifact.version)
                .filter(|before| *before != version);
            if let (Some(max_ratio), Some(before)) = (gate.max_ratio_to_baseline, before) {
                let baseline = ask_prometheus(state, &gate.query_for(before)).await;
                readings.push(GateReading {
                    name: name.clone(),
                    source: source.clone(),
                    value: value.clone(),
                    rule: GateRule::MaxRatioToBaseline { baseline, max_ratio },
                });
            }
            if let Some(max) = gate.max {
                readings.push(GateReading {
                    name: name.clone(),
                    source: source.clone(),
                    value: value.clone(),
                    rule: GateRule::Max(max),
                });
            }
            if let Some(min) = gate.min {
                readings.push(GateReading {
                    name,
                    source,
                    value,
                    rule: GateRule::Min(min),
                });
            }
        }
    }
    readings
}

async fn ask_prometheus(state: &AppState, query: &str) -> Result<f64, String> {
    match &state.rollout_config().prometheus_url {
        Some(url) => {
            crate::prometheus::query(
                state.http(),
                url,
                state.rollout_config().prometheus_auth.as_ref(),
                query,
            )
            .await
        }
        None => Err("no Prometheus to ask: start the server with --prometheus-url".to_owned()),
    }
}

/// Instances of the systems the plan touches that no step changes and that are unhealthy: a
/// system already degraded for reasons of its own.
async fn degraded(
    state: &AppState,
    plan: &Plan,
    desired: &DesiredState,
    base: Option<&DesiredState>,
) -> Result<Vec<String>, ApiError> {
    let systems = crate::record::touched_systems(plan, base, desired);
    if systems.is_empty() {
        return Ok(Vec::new());
    }
    let stepped: BTreeSet<(&str, &str, u32)> = plan.steps.iter().map(|s| (&*s.component, &*s.host, s.slot)).collect();
    let instances = state
        .store()
        .list_instances(endstate_store::InstanceFilter {
            system: Some(systems),
            host: None,
        })
        .await?;
    Ok(instances
        .iter()
        .filter(|i| !stepped.contains(&(i.component_key.as_str(), i.host.0.as_str(), i.slot)))
        .filter(|i| {
            i.actual
                .as_ref()
                .is_some_and(|a| a.status == endstate_types::Status::Unhealthy)
        })
        .map(|i| format!("{}#{} on {} is unhealthy", i.component_key, i.slot, i.host.0))
        .collect())
}

/// The freeze windows of the policies (of the change's revision) covering a system the plan touches.
fn freezes(plan: &Plan, desired: &DesiredState, base: Option<&DesiredState>) -> Vec<FreezeView> {
    let systems = crate::record::touched_systems(plan, base, desired);
    let mut out = Vec::new();
    for policy in desired.policies.values() {
        if !systems.iter().any(|system| policy.covers(system, desired)) {
            continue;
        }
        for window in &policy.rules.freeze_windows {
            out.push(FreezeView {
                policy: policy.name.clone(),
                cron: window.cron.clone(),
                duration_ms: u64::try_from(window.duration.as_std().as_millis()).unwrap_or(u64::MAX),
                reason: window.reason.clone(),
            });
        }
    }
    out
}

/// Whether a step's end state (going forward, or back) is the instance gone.
fn expects_gone(step: &WaveStep, back: bool) -> bool {
    match step.step.action {
        StepAction::Stop => !back,
        StepAction::Start => back,
        StepAction::Upgrade | StepAction::Reconfigure => false,
    }
}

/// What the Decider sees of one step's instance.
async fn view(fleet: &dyn Fleet, step: &WaveStep, back: bool, gone: &crate::blueprint::Gone) -> InstanceView {
    let (system, component) = step
        .step
        .component
        .split_once('/')
        .unwrap_or(("", &step.step.component));
    let id = endstate_agent_proto::InstanceId::new(system, component, step.step.slot).0;
    let host = step.step.host.to_string();
    let (live, generation) = fleet.observed(&host, &id).await;
    let connected = fleet.connected(&host);
    if expects_gone(step, back) {
        let done = gone.contains(&host)
            || live.as_ref().is_none_or(|l| {
                matches!(l.state, None | Some(endstate_agent_proto::InstanceStateWord::Stopped)) && connected
            });
        return InstanceView {
            id,
            host,
            at_target: done,
            state: if done {
                InstanceState::Stopped
            } else if connected {
                InstanceState::Pending
            } else {
                InstanceState::Unknown
            },
            healthy: None,
            healthy_since_ms: None,
            restarts: 0,
        };
    }
    let version = if back {
        &step.step.from_version
    } else {
        &step.step.to_version
    };
    let version = version.as_deref().unwrap_or_default();
    let Some(live) = live else {
        return InstanceView {
            id,
            host,
            at_target: false,
            state: if connected {
                InstanceState::Pending
            } else {
                InstanceState::Unknown
            },
            healthy: None,
            healthy_since_ms: None,
            restarts: 0,
        };
    };
    let at_target = live.version == *version && generation.is_some_and(|g| live.generation >= g);
    let state = instance_state(&live, connected);
    InstanceView {
        id,
        host,
        at_target,
        state: if at_target { state } else { InstanceState::Pending },
        healthy: if at_target { live.healthy } else { None },
        healthy_since_ms: if at_target { live.healthy_since_ms } else { None },
        restarts: if at_target { live.restarts } else { 0 },
    }
}

fn instance_state(live: &Live, connected: bool) -> InstanceState {
    use endstate_agent_proto::InstanceStateWord as W;
    match live.state {
        None if !connected => InstanceState::Unknown,
        None => InstanceState::Pending,
        Some(W::Running) => InstanceState::Running,
        Some(W::Starting | W::Stopping | W::Stopped) => InstanceState::Pending,
        Some(state @ (W::SpawnFailed | W::Exited | W::BackingOff)) => {
            InstanceState::Failed(crate::fleet::word(state).to_owned())
        }
    }
}

/// What a person asks of a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Command {
    Pause,
    Resume,
    Abort,
    /// Accept a proposed change (a rebalance that waits for a person).
    Accept,
}

/// Applies a person's command to a change, under the controller's lock. Returns the updated change.
pub(crate) async fn command(
    state: &AppState,
    change: &Change,
    command: Command,
    actor: &str,
    why: Option<&str>,
) -> Result<Change, ApiError> {
    let mut progress = Progress::read(change).map_err(ApiError::Conflict)?;
    let why = why.map(|w| format!(": {w}")).unwrap_or_default();
    let refuse = |what: &str| {
        Err(ApiError::Conflict(format!(
            "change {} is {}: {what}",
            change.id.0,
            change.state.as_str()
        )))
    };
    let (to, kind, reason): (ChangeState, crate::record::Kind, String) = match (command, change.state) {
        (_, s) if s.is_terminal() => return refuse("it is over"),
        (Command::Accept, ChangeState::Halted) if progress.proposed => {
            progress.proposed = false;
            progress.last_decision = None;
            (
                ChangeState::Rolling,
                endstate_events::Event::ChangeAccepted,
                format!("accepted by {actor}{why}; rolling out in waves, gated"),
            )
        }
        (Command::Accept, _) => return refuse("only a proposed change waits to be accepted"),
        (Command::Resume, ChangeState::Halted) if progress.proposed => {
            return refuse("it is a proposal: `endstate change accept` rolls it out");
        }
        (Command::Pause, ChangeState::Rolling) if progress.paused => return refuse("it is already paused"),
        (Command::Pause, ChangeState::Rolling) => {
            progress.paused = true;
            progress.paused_by = Some(actor.to_owned());
            (
                ChangeState::Rolling,
                endstate_events::Event::ChangePaused,
                format!("paused by {actor}{why}"),
            )
        }
        (Command::Pause, _) => return refuse("only a rolling change can be paused"),
        (Command::Resume, ChangeState::Rolling | ChangeState::Halted)
            if progress.paused || change.state == ChangeState::Halted =>
        {
            progress.paused = false;
            progress.paused_by = None;
            progress.last_decision = None;
            if change.state == ChangeState::Halted {
                // The current wave gets a new deadline.
                progress.wave_started_ms = Some(state.now_ms());
            }
            (
                ChangeState::Rolling,
                endstate_events::Event::ChangeResumed,
                format!("resumed by {actor}{why}"),
            )
        }
        (Command::Resume, _) => return refuse("only a paused or halted change can be resumed"),
        (Command::Abort, ChangeState::Rolling | ChangeState::Halted) if progress.back => {
            return refuse("it is already rolling back");
        }
        (Command::Abort, ChangeState::Rolling | ChangeState::Halted) => {
            let reason = format!("aborted by {actor}{why}");
            progress.back = true;
            progress.back_reason = Some(reason.clone());
            progress.paused = false;
            progress.paused_by = None;
            progress.begin_wave(state.now_ms());
            // The newest released wave is withdrawn first.
            progress.released = progress.released.saturating_sub(1);
            if Progress::of(change).released == 0 {
                // Nothing was released: nothing to undo.
                let update = Transition {
                    actor: Some(actor.to_owned()),
                    ..Transition::default()
                };
                return transition(
                    state,
                    change,
                    ChangeState::RolledBack,
                    update,
                    format!("{reason}; no wave had started"),
                    endstate_events::Event::ChangeRolledBack,
                )
                .await;
            }
            (
                ChangeState::Rolling,
                endstate_events::Event::ChangeRollingBack,
                format!("rolling back: {reason}"),
            )
        }
        (Command::Abort, _) => {
            let update = Transition {
                actor: Some(actor.to_owned()),
                ..Transition::default()
            };
            return transition(
                state,
                change,
                ChangeState::Failed,
                update,
                format!("aborted by {actor}{why} before it rolled"),
                endstate_events::Event::ChangeAborted,
            )
            .await;
        }
    };
    let update = Transition {
        progress: Some(progress.to_json()),
        actor: Some(actor.to_owned()),
        ..Transition::default()
    };
    let updated = transition(state, change, to, update, reason, kind).await?;
    if let Some(fleet) = state.fleet() {
        fleet.refresh(state).await?;
    }
    Ok(updated)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = "apiVersion: endstate/v1\nkind: System\nname: shop\n---\napiVersion: endstate/v1\nkind: Component\nname: web\nsystem: shop\nartifact: { version: \"2\", path: bin/web }\ncommand: web\nplacement:\n  selector: { role: web }\n  count: { per_host: 2 }\nrollout: { canary: 0, batch: { percent: 100 } }\n---\napiVersion: endstate/v1\nkind: Policy\nname: careful\napplies_to: { systems: [shop] }\nrules:\n  max_in_flight: { hosts: 2, instances: 3 }\n";

    #[test]
    fn the_next_wave_is_measured_against_the_tightest_policy() {
        let hosts: Vec<endstate_spec::HostInfo> = (1..=4)
            .map(|i| endstate_spec::HostInfo {
                name: format!("h{i}"),
                labels: [("role".to_owned(), "web".to_owned())].into_iter().collect(),
            })
            .collect();
        let files = [endstate_spec::SourceFile {
            path: "a.yaml".into(),
            text: SPEC.into(),
        }];
        let desired = endstate_spec::load(&files, &hosts).desired.unwrap();
        let plan = endstate_plan::plan(None, &desired, &hosts);
        // Eight starts, split to fit: two hosts and at most three instances per wave.
        assert_eq!(plan.waves.len(), 3, "{:#?}", plan.waves);
        let mut progress = Progress::default();
        let first = blast(&plan, &progress, &desired);
        assert_eq!((first.hosts, first.instances), (2, 3));
        assert_eq!((first.max_hosts, first.max_instances), (Some(2), Some(3)));
        progress.released = u32::try_from(plan.waves.len()).unwrap();
        assert_eq!(
            blast(&plan, &progress, &desired),
            endstate_decide::BlastRadius::default()
        );
    }
}
