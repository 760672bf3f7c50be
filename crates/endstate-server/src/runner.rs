//! The change runner: takes each open change from pending through planning to its end.
//!
//! # Expected flow
//! 1. A revision is submitted: its change is `pending`. The runner is woken.
//! 2. The runner moves the newest open change to `planning`, plans it against the last converged
//!    revision on the current inventory, and stores the plan.
//! 3. A plan with no instance step and nothing unplaceable has nothing to execute on hosts: the
//!    change is `converged` (its systems, policies, checks and actions are in force).
//!    Otherwise the change stays open in `planning` with the reason it waits (unplaceable
//!    components, or steps that need agents to execute them) and is re-planned every round, so
//!    a host joining the inventory is taken into account.
//! 4. An older open change is `superseded` by a newer one: only the newest desired state is pursued.
//!
//! # Guarantees
//! - Every round re-reads the store; the runner keeps no state of its own, so a restart (or
//!   another replica) continues where the store says.
//! - Every transition is a compare-and-set on the state the runner read, written atomically with
//!   its timeline event: two runners cannot both move the same change.
//!
//! # Caveats
//! - Executing steps through agents, waves and gates come with the agents and rollout work; until
//!   then a change with instance steps waits in `planning`, saying so.

use std::time::Duration;

use endstate_plan::Plan;
use endstate_store::{Change, ChangeFilter, ChangeUpdate, NewEvent, PageRequest};
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
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
    }
}

/// One round over the open changes.
pub(crate) async fn round(state: &AppState) -> Result<(), ApiError> {
    let open = state
        .store()
        .list_changes(
            ChangeFilter {
                open_only: true,
                revision: None,
            },
            PageRequest {
                before: None,
                limit: 1000,
            },
        )
        .await?
        .items;
    state.metrics().open_changes.set(open.len() as i64);
    let Some((newest, older)) = open.split_first() else {
        return Ok(());
    };
    for change in older {
        let reason = format!(
            "superseded by change {} for revision {}",
            newest.id.0, newest.revision.0
        );
        transition(
            state,
            change,
            ChangeState::Superseded,
            None,
            reason,
            "change.superseded",
        )
        .await?;
    }
    drive(state, newest).await
}

async fn drive(state: &AppState, change: &Change) -> Result<(), ApiError> {
    if change.state == ChangeState::Rolling {
        return watch_rolling(state, change).await;
    }
    if !matches!(change.state, ChangeState::Pending | ChangeState::Planning) {
        return Ok(());
    }
    let Some(desired) = state.desired(change.revision).await? else {
        let reason = format!("revision {} is missing from the store", change.revision.0);
        transition(state, change, ChangeState::Failed, None, reason, "change.failed").await?;
        return Ok(());
    };
    // Planned from the same base as every preview: the last revision that converged.
    let current = state.base().await?.map(|(_, desired)| desired);
    let hosts = crate::routes::host_infos(state).await?;
    let plan = endstate_plan::plan(current.as_deref(), &desired, &hosts);
    let plan_json = serde_json::to_value(&plan).map_err(|error| ApiError::Internal(error.to_string()))?;
    let change = if change.state == ChangeState::Pending {
        let reason = format!(
            "planned: {} to add, {} to change, {} to remove; {} instance steps",
            plan.summary.add,
            plan.summary.change,
            plan.summary.remove,
            plan.steps.len()
        );
        transition(
            state,
            change,
            ChangeState::Planning,
            Some(plan_json.clone()),
            reason,
            "change.planning",
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
        transition(
            state,
            &change,
            ChangeState::Converged,
            Some(plan_json),
            reason,
            "change.converged",
        )
        .await?;
        return Ok(());
    }
    if plan.unplaced.is_empty() && state.hub().is_some() {
        let hosts: std::collections::BTreeSet<&str> = plan.steps.iter().map(|s| s.host.as_str()).collect();
        let reason = format!(
            "{} instance steps on {} hosts, in one wave (waves and gates come with the rollout work)",
            plan.steps.len(),
            hosts.len()
        );
        transition(
            state,
            &change,
            ChangeState::Rolling,
            Some(plan_json),
            reason,
            "change.rolling",
        )
        .await?;
        if let Some(hub) = state.hub() {
            hub.refresh(state).await?;
        }
        return Ok(());
    }
    let reason = waiting_reason(&plan);
    if change.plan.as_ref() != Some(&plan_json) || change.reason.as_deref() != Some(reason.as_str()) {
        let kind = if change.reason.as_deref() == Some(reason.as_str()) {
            "change.replanned"
        } else {
            "change.waiting"
        };
        transition(state, &change, ChangeState::Planning, Some(plan_json), reason, kind).await?;
    }
    Ok(())
}

/// A rolling change converges once every instance of its revision is observed running and
/// healthy at its version; until then its reason says what it waits for.
async fn watch_rolling(state: &AppState, change: &Change) -> Result<(), ApiError> {
    let Some(hub) = state.hub() else {
        return Ok(());
    };
    hub.refresh(state).await?;
    match hub.progress(state, change.revision).await? {
        Ok(total) => {
            let reason = format!(
                "{total} instances running and healthy at revision {}",
                change.revision.0
            );
            transition(state, change, ChangeState::Converged, None, reason, "change.converged").await?;
        }
        Err(waiting) => {
            let reason = waiting;
            if change.reason.as_deref() != Some(reason.as_str()) {
                transition(state, change, ChangeState::Rolling, None, reason, "change.progress").await?;
            }
        }
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
    let hosts: std::collections::BTreeSet<&str> = plan.steps.iter().map(|s| s.host.as_str()).collect();
    format!(
        "waiting: {} instance steps on {} hosts need agents to execute them, and this server has no executor yet",
        plan.steps.len(),
        hosts.len()
    )
}

async fn transition(
    state: &AppState,
    change: &Change,
    to: ChangeState,
    plan: Option<serde_json::Value>,
    reason: String,
    kind: &str,
) -> Result<Change, ApiError> {
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
        systems,
        change: Some(change.id),
        actor: Some("server".into()),
        data: serde_json::json!({ "from": change.state.as_str(), "to": to.as_str(), "reason": reason, "revision": change.revision.0 }),
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
    let updated = state
        .store()
        .transition_change(
            change.id,
            change.state,
            ChangeUpdate {
                state: to,
                plan,
                reason: Some(reason),
                wave: None,
                now_ms: now,
            },
            vec![event],
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
    tracing::info!(
        change = change.id.0,
        from = change.state.as_str(),
        to = to.as_str(),
        "Change transitioned."
    );
    Ok(updated)
}
