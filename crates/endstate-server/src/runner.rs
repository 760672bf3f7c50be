//! The change runner: takes each open change from pending through planning to its end.
//!
//! # Expected flow
//! 1. A revision is submitted: its change is `pending`. The runner is woken.
//! 2. The runner moves the newest open change to `planning`, plans it against the last converged
//!    revision on the current inventory, and stores the plan.
//! 3. A plan with no instance step and nothing unplaceable has nothing to execute on hosts: the
//!    change is `converged` (its systems, policies, checks and actions are in force). A plan
//!    whose rollout rules cannot be satisfied (`Plan::blocked`) is refused: the change `failed`,
//!    naming the rule. A plan with components that cannot be placed waits in `planning`, saying
//!    why, and is re-planned every round, so a host joining the inventory is taken into account.
//!    Otherwise, with agents, the change goes `rolling` and [`crate::rollout`] executes its waves.
//! 4. An older open change that has not started rolling is `superseded` by a newer one: only the
//!    newest desired state is pursued. A change rolling out (or halted mid-way) is not cut short:
//!    superseding it would put the instances of its released waves back at once, ungated. The
//!    newest change waits in `pending`, saying for which change, until that one converges, rolls
//!    back or fails (`endstate change abort` takes a halted one back, gated; `resume` carries it
//!    on); then it is planned from the revision in force.

//! # Guarantees
//! - Every round re-reads the store; the runner keeps no state of its own, so a restart (or
//!   another replica) continues where the store says.
//! - Every transition is a compare-and-set on the state the runner read, written atomically with
//!   its timeline event: two runners cannot both move the same change.
//!
//! # Caveats
//! - The plan is made on the hosts in service when the change starts rolling; the controller
//!   plans the waves still to come again when they change (see `rollout`).
//! - A halted change holds every newer change until a person aborts or resumes it: that is the
//!   point (a half-done rollout is a state someone must decide about), and the queued change says
//!   so, naming both commands.

use std::time::Duration;

use endstate_plan::Plan;
use endstate_store::{Change, ChangeUpdate, NewEvent};
use endstate_types::ChangeState;
use tokio::sync::watch;

use crate::error::ApiError;
use crate::metrics::StateLabels;
use crate::{AppState, now_ms};

/// Runs rounds until `stop` turns true.
pub(crate) async fn run(state: AppState, interval: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        if let Err(error) = round(&state).await {
            tracing::warn!(error = %crate::chain(&error), "Change runner round failed; retrying.");
        }
        tokio::select! {
            _ = state.0.runner_wake.notified() => {}
            _ = tokio::time::sleep(state.runner_sleep(interval)) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
    }
}

/// One round over the open changes.
pub(crate) async fn round(state: &AppState) -> Result<(), ApiError> {
    let _controller = state.rollout_lock().lock().await;
    let open = state.open_changes(1000).await?;
    state.metrics().open_changes.set(open.len() as i64);
    let Some(newest) = open.first() else {
        // Nothing open: the hosts in service may ask for instances to move (a change too).
        return crate::blueprint::propose(state).await;
    };
    // A proposal waiting for a person holds nothing back: a newer change supersedes it.
    let active = open.iter().find(|c| {
        matches!(c.state, ChangeState::Rolling | ChangeState::Halted) && !crate::rollout::Progress::of(c).proposed
    });
    for change in &open[1..] {
        if active.is_some_and(|a| a.id == change.id) {
            continue;
        }
        let reason = format!(
            "superseded by change {} for revision {}",
            newest.id.0, newest.revision.0
        );
        transition(
            state,
            change,
            ChangeState::Superseded,
            Transition::default(),
            reason,
            "change.superseded",
        )
        .await?;
    }
    match active {
        Some(active) if active.id != newest.id => {
            queue_behind(state, newest, active).await?;
            drive(state, active).await
        }
        _ => drive(state, newest).await,
    }
}

/// Keeps `change` pending while `active` rolls out or is halted, saying so once.
async fn queue_behind(state: &AppState, change: &Change, active: &Change) -> Result<(), ApiError> {
    let id = active.id.0;
    let what = match active.state {
        ChangeState::Halted => format!(
            "is halted ({}); `endstate change abort {id}` takes it back, `endstate change resume {id}` carries it on",
            active.reason.as_deref().unwrap_or("no reason given")
        ),
        _ => "is rolling out".to_owned(),
    };
    let reason = format!(
        "waiting for change {id} (revision {}) to end: it {what}; a rollout is not cut short, since that would put its released instances back at once, ungated; this change is planned once it ends",
        active.revision.0
    );
    // Said once per state of the other change (not per wave).
    if change.reason.as_deref() == Some(reason.as_str()) {
        return Ok(());
    }
    let update = Transition {
        quiet: true,
        ..Transition::default()
    };
    transition(state, change, ChangeState::Pending, update, reason, "change.queued").await?;
    Ok(())
}

async fn drive(state: &AppState, change: &Change) -> Result<(), ApiError> {
    if change.state == ChangeState::Rolling {
        return crate::rollout::drive(state, change).await;
    }
    if !matches!(change.state, ChangeState::Pending | ChangeState::Planning) {
        return Ok(());
    }
    let Some(desired) = state.desired(change.revision).await? else {
        let reason = format!("revision {} is missing from the store", change.revision.0);
        transition(
            state,
            change,
            ChangeState::Failed,
            Transition::default(),
            reason,
            "change.failed",
        )
        .await?;
        return Ok(());
    };
    // Planned from the same base as every preview: the last revision that converged, as it is
    // placed (on its placement basis), to the new one placed on the hosts in service.
    let current = state.in_force().await?;
    let hosts = crate::blueprint::hosts_in_service(state).await?;
    let options = crate::options::of_change(change);
    let mut plan = endstate_plan::plan_from(
        current.as_ref().map(|c| (&*c.desired, &c.hosts[..])),
        &desired,
        &hosts,
        &options,
    );
    // The placement basis, stored with the plan: the revision stays placed on these hosts.
    plan.record_hosts(&hosts);
    if !plan.blocked.is_empty() {
        let rules: Vec<String> = plan
            .blocked
            .iter()
            .map(|b| format!("{} ({}): {}", b.component, b.rule, b.reason))
            .collect();
        let reason = format!("refused: the rollout cannot be satisfied: {}", rules.join("; "));
        let plan_json = serde_json::to_value(&plan).map_err(|error| ApiError::Internal(error.to_string()))?;
        let update = Transition {
            plan: Some(plan_json),
            ..Transition::default()
        };
        transition(state, change, ChangeState::Failed, update, reason, "change.failed").await?;
        return Ok(());
    }
    let plan_json = serde_json::to_value(&plan).map_err(|error| ApiError::Internal(error.to_string()))?;
    let change = if change.state == ChangeState::Pending {
        let reason = format!(
            "planned: {} to add, {} to change, {} to remove; {} instance steps",
            plan.summary.add,
            plan.summary.change,
            plan.summary.remove,
            plan.steps.len()
        );
        let update = Transition {
            plan: Some(plan_json.clone()),
            ..Transition::default()
        };
        transition(state, change, ChangeState::Planning, update, reason, "change.planning").await?
    } else {
        change.clone()
    };
    if plan.steps.is_empty() && plan.unplaced.is_empty() {
        let n_objects = desired.systems.len()
            + desired.components.len()
            + desired.checks.len()
            + desired.actions.len()
            + desired.policies.len();
        let reason = format!("{n_objects} declared objects in force, no instance to change");
        let update = Transition {
            plan: Some(plan_json),
            ..Transition::default()
        };
        transition(
            state,
            &change,
            ChangeState::Converged,
            update,
            reason,
            "change.converged",
        )
        .await?;
        return Ok(());
    }
    if plan.unplaced.is_empty() && state.hub().is_some() {
        let stepped: std::collections::BTreeSet<&str> = plan.steps.iter().map(|s| &*s.host).collect();
        let reason = format!(
            "{} instance steps on {} hosts in {} waves; asking the Decider before wave 1",
            plan.steps.len(),
            stepped.len(),
            plan.waves.len()
        );
        let update = Transition {
            plan: Some(plan_json),
            wave: Some((0, u32::try_from(plan.waves.len()).unwrap_or(u32::MAX))),
            progress: Some(
                serde_json::to_value(crate::rollout::Progress {
                    hosts: Some(crate::rollout::hosts_digest(&hosts)),
                    ..crate::rollout::Progress::default()
                })
                .unwrap_or_default(),
            ),
            ..Transition::default()
        };
        let change = transition(state, &change, ChangeState::Rolling, update, reason, "change.rolling").await?;
        return crate::rollout::drive(state, &change).await;
    }
    let reason = waiting_reason(&plan);
    if change.plan.as_ref() != Some(&plan_json) || change.reason.as_deref() != Some(reason.as_str()) {
        let kind = if change.reason.as_deref() == Some(reason.as_str()) {
            "change.replanned"
        } else {
            "change.waiting"
        };
        let update = Transition {
            plan: Some(plan_json),
            ..Transition::default()
        };
        transition(state, &change, ChangeState::Planning, update, reason, kind).await?;
    }
    Ok(())
}

fn waiting_reason(plan: &Plan) -> String {
    if let Some(unplaced) = plan.unplaced.first() {
        let more = match plan.unplaced.len() {
            1 => String::new(),
            n => format!(" (and {} more components)", n - 1),
        };
        return format!(
            "waiting: {} cannot be placed ({} of {} instances): {}{more}",
            unplaced.component, unplaced.placed, unplaced.wanted, unplaced.reason
        );
    }
    let hosts: std::collections::BTreeSet<&str> = plan.steps.iter().map(|s| &*s.host).collect();
    format!(
        "waiting: {} instance steps on {} hosts need agents to execute them, and this server has no executor yet",
        plan.steps.len(),
        hosts.len()
    )
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

/// Moves a change from the state it was read in to `to`, with its timeline event (and `extra`'s),
/// in one transaction; a compare-and-set on the state read.
pub(crate) async fn transition(
    state: &AppState,
    change: &Change,
    to: ChangeState,
    extra: Transition,
    reason: String,
    kind: &str,
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
    let now = now_ms();
    let base = state.base().await?.map(|(_, desired)| desired);
    // The systems the change touches, from the plan it has (or gets now); before it is planned,
    // every system of its revision.
    let systems = match state.desired(change.revision).await? {
        Some(desired) => match plan
            .as_ref()
            .or(change.plan.as_ref())
            .map(|p| serde_json::from_value::<Plan>(p.clone()))
        {
            Some(Ok(plan)) => crate::routes::touched_systems(&plan, base.as_deref(), &desired),
            _ => desired.systems.keys().cloned().collect(),
        },
        None => Vec::new(),
    };
    let event = NewEvent {
        systems: systems.clone(),
        change: Some(change.id),
        actor: Some(actor.clone()),
        data: serde_json::json!({ "from": change.state.as_str(), "to": to.as_str(), "reason": reason, "revision": change.revision.0, "wave": wave }),
        ..NewEvent::new(
            now,
            kind,
            format!(
                "change {} {} -> {}: {reason}",
                change.id.0,
                change.state.as_str(),
                to.as_str()
            ),
        )
    };
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
        data: serde_json::json!({ "change": change.id.0 }),
        ..NewEvent::new(
            now,
            "host.retired",
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
        tracing::debug!(change = change.id.0, kind, "Change waits.");
    } else {
        tracing::info!(
            change = change.id.0,
            from = change.state.as_str(),
            to = to.as_str(),
            kind,
            "Change transitioned."
        );
    }
    Ok(updated)
}
