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
use endstate_store::Change;
use endstate_types::ChangeState;
use tokio::sync::watch;

use crate::AppState;
use crate::error::ApiError;
use crate::record::{Transition, transition};

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
        matches!(c.state, ChangeState::Rolling | ChangeState::Halted) && !crate::record::Progress::of(c).proposed
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
            endstate_events::Event::ChangeSuperseded,
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
    transition(
        state,
        change,
        ChangeState::Pending,
        update,
        reason,
        endstate_events::Event::ChangeQueued,
    )
    .await?;
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
            endstate_events::Event::ChangeFailed,
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
        transition(
            state,
            change,
            ChangeState::Failed,
            update,
            reason,
            endstate_events::Event::ChangeFailed,
        )
        .await?;
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
        transition(
            state,
            change,
            ChangeState::Planning,
            update,
            reason,
            endstate_events::Event::ChangePlanning,
        )
        .await?
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
            endstate_events::Event::ChangeConverged,
        )
        .await?;
        return Ok(());
    }
    if plan.unplaced.is_empty() && state.fleet().is_some() {
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
                crate::record::Progress {
                    hosts: Some(crate::record::hosts_digest(&hosts)),
                    ..crate::record::Progress::default()
                }
                .to_json(),
            ),
            ..Transition::default()
        };
        let change = transition(
            state,
            &change,
            ChangeState::Rolling,
            update,
            reason,
            endstate_events::Event::ChangeRolling,
        )
        .await?;
        return crate::rollout::drive(state, &change).await;
    }
    let reason = waiting_reason(&plan);
    if change.plan.as_ref() != Some(&plan_json) || change.reason.as_deref() != Some(reason.as_str()) {
        let kind = if change.reason.as_deref() == Some(reason.as_str()) {
            endstate_events::Event::ChangeReplanned
        } else {
            endstate_events::Event::ChangeWaiting
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
