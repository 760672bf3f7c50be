//! A person's commands to changes: pause, resume, abort, and rollback to an earlier revision.
//!
//! Each takes the controller's lock ([`AppState::rollout_lock`]), so it never races a round, and
//! is written to the timeline with who asked and why.

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use endstate_api::Page;
use endstate_api::{ChangeCommand, ChangeView, RollbackRequest};
use endstate_store::{Change, ChangeFilter, PageRequest};
use endstate_types::{ChangeId, ChangeState, RevisionId};

use crate::AppState;
use crate::auth::{Actor, Verb, authorize};
use crate::error::ApiError;
use crate::extract::{JsonBody, Segment};
use crate::extract::{PageParams, Params, parse_cursor};
use crate::record::change_view;
use crate::rollout::Command;

/// The longest reason a person may give.
const MAX_REASON_BYTES: usize = 4096;

/// Pause a rolling change: no further wave starts until it is resumed. A failing wave still
/// halts or rolls back.
#[utoipa::path(post, path = "/v1/changes/{id}/pause", params(("id" = u64, Path, description = "the change number")),
    request_body = ChangeCommand,
    responses((status = 200, body = ChangeView), (status = 404, body = endstate_api::Problem), (status = 409, body = endstate_api::Problem)),
    security(("bearer" = [])))]
pub(crate) async fn pause(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Segment(id): Segment,
    JsonBody(request): JsonBody<ChangeCommand>,
) -> Result<Json<ChangeView>, ApiError> {
    run(&state, &actor, &id, Command::Pause, request).await
}

/// Resume a paused or halted change (a halted wave gets a new deadline).
#[utoipa::path(post, path = "/v1/changes/{id}/resume", params(("id" = u64, Path, description = "the change number")),
    request_body = ChangeCommand,
    responses((status = 200, body = ChangeView), (status = 404, body = endstate_api::Problem), (status = 409, body = endstate_api::Problem)),
    security(("bearer" = [])))]
pub(crate) async fn resume(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Segment(id): Segment,
    JsonBody(request): JsonBody<ChangeCommand>,
) -> Result<Json<ChangeView>, ApiError> {
    run(&state, &actor, &id, Command::Resume, request).await
}

/// Accept a change the server proposed (a rebalance onto a host that joined): it rolls out in
/// waves, gated like any other.
#[utoipa::path(post, path = "/v1/changes/{id}/accept", params(("id" = u64, Path, description = "the change number")),
    request_body = ChangeCommand,
    responses((status = 200, body = ChangeView), (status = 404, body = endstate_api::Problem), (status = 409, body = endstate_api::Problem)),
    security(("bearer" = [])))]
pub(crate) async fn accept(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Segment(id): Segment,
    JsonBody(request): JsonBody<ChangeCommand>,
) -> Result<Json<ChangeView>, ApiError> {
    run(&state, &actor, &id, Command::Accept, request).await
}

/// Abort a change: one not rolling yet fails; a rolling or halted one goes back to the last
/// converged revision, wave by wave, gated like a rollout.
#[utoipa::path(post, path = "/v1/changes/{id}/abort", params(("id" = u64, Path, description = "the change number")),
    request_body = ChangeCommand,
    responses((status = 200, body = ChangeView), (status = 404, body = endstate_api::Problem), (status = 409, body = endstate_api::Problem)),
    security(("bearer" = [])))]
pub(crate) async fn abort(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Segment(id): Segment,
    JsonBody(request): JsonBody<ChangeCommand>,
) -> Result<Json<ChangeView>, ApiError> {
    run(&state, &actor, &id, Command::Abort, request).await
}

async fn run(
    state: &AppState,
    actor: &Actor,
    id: &str,
    command: Command,
    request: ChangeCommand,
) -> Result<Json<ChangeView>, ApiError> {
    authorize(actor, Verb::Write, None)?;
    let reason = reason_of(request.reason.as_deref())?;
    let number = parse_change(id)?;
    let _controller = state.rollout_lock().lock().await;
    let change = get(state, number).await?;
    let updated = crate::rollout::command(state, &change, command, &actor.name, reason).await?;
    Ok(Json(change_view(&updated, false)))
}

/// Go back to an earlier revision. While a change is rolling out (or halted) and no other
/// revision is asked for, that change is aborted: it goes back to the last converged revision,
/// gated. Otherwise the revision asked for (by default the one converged before the last) is
/// submitted again as a new revision, whose change rolls out like any other (once a change in
/// flight has ended: a rollout is not cut short).
///
/// Revisions hold the whole desired state: going back to one reverts every system to it; the
/// system named is the one the person acts on (authorisation, the timeline).
#[utoipa::path(post, path = "/v1/systems/{name}/rollback", params(("name" = String, Path, description = "the system")),
    request_body = RollbackRequest,
    responses((status = 201, body = ChangeView), (status = 200, body = ChangeView), (status = 404, body = endstate_api::Problem), (status = 409, body = endstate_api::Problem)),
    security(("bearer" = [])))]
pub(crate) async fn rollback(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Segment(system): Segment,
    JsonBody(request): JsonBody<RollbackRequest>,
) -> Result<(StatusCode, Json<ChangeView>), ApiError> {
    authorize(&actor, Verb::Write, Some(&system))?;
    let reason = reason_of(request.reason.as_deref())?;
    let latest = state.latest_desired().await?;
    if !latest.as_ref().is_some_and(|(_, d)| d.systems.contains_key(&system)) {
        return Err(ApiError::NotFound(format!(
            "system {system:?} is not in the latest revision"
        )));
    }
    let _controller = state.rollout_lock().lock().await;
    let changes = all_changes(&state).await?;
    let base = changes.iter().find(|c| c.state == ChangeState::Converged);
    let in_flight = changes
        .iter()
        .find(|c| matches!(c.state, ChangeState::Rolling | ChangeState::Halted));
    if let Some(change) = in_flight
        && (request.to.is_none() || request.to == base.map(|b| b.revision.0))
    {
        let updated = crate::rollout::command(&state, change, Command::Abort, &actor.name, reason).await?;
        return Ok((StatusCode::OK, Json(change_view(&updated, false))));
    }
    let to = match request.to {
        Some(to) => RevisionId(to),
        None => {
            let mut converged = changes.iter().filter(|c| c.state == ChangeState::Converged);
            let _last = converged.next();
            match converged.next() {
                Some(previous) => previous.revision,
                None => {
                    return Err(ApiError::Conflict(
                        "there is no earlier converged revision to go back to; name one with `to`".into(),
                    ));
                }
            }
        }
    };
    let desired = state
        .desired(to)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("revision {} does not exist", to.0)))?;
    let message = match reason {
        Some(why) => format!("rollback of {system} to revision {} by {}: {why}", to.0, actor.name),
        None => format!("rollback of {system} to revision {} by {}", to.0, actor.name),
    };
    let (_, change) = crate::revisions::submit_desired(
        &state,
        &actor.name,
        &desired,
        &message,
        format!("rollback:{}", to.0),
        None,
        &endstate_plan::PlanOptions::default(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(change_view(&change, false))))
}

fn reason_of(reason: Option<&str>) -> Result<Option<&str>, ApiError> {
    match reason.map(str::trim) {
        Some(text) if text.len() > MAX_REASON_BYTES => Err(ApiError::bad_field(
            "reason",
            format!("is {} bytes; at most {MAX_REASON_BYTES}", text.len()),
        )),
        Some("") | None => Ok(None),
        Some(text) => Ok(Some(text)),
    }
}

/// A change number from a path segment (`12` or `c12`), or a problem naming `id`.
pub(crate) fn parse_change(id: &str) -> Result<u64, ApiError> {
    id.strip_prefix('c')
        .unwrap_or(id)
        .parse::<u64>()
        .map_err(|_| ApiError::bad_field("id", format!("{id:?} is not a change number")))
}

async fn get(state: &AppState, number: u64) -> Result<Change, ApiError> {
    state
        .store()
        .get_change(ChangeId(number))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("change {number} does not exist")))
}

/// Every change, newest first (a few pages at most in practice).
async fn all_changes(state: &AppState) -> Result<Vec<Change>, ApiError> {
    let mut out = Vec::new();
    let mut before = None;
    loop {
        let page = state
            .store()
            .list_changes(ChangeFilter::default(), PageRequest { before, limit: 500 })
            .await?;
        out.extend(page.items);
        match page.next {
            Some(next) if out.len() < 10_000 => before = Some(next),
            _ => return Ok(out),
        }
    }
}

/// The most instances a component may be scaled to.
const MAX_SCALE: u32 = 10_000;

/// Scale one component: the latest revision with that component's count changed is submitted
/// as a new revision (source `scale`), whose change is planned and rolled out like any other,
/// so only that component's instances move. The count keeps its kind (per host or in total).
///
/// A desired state taken from Git is not changed: the next commit declares its own count.
#[utoipa::path(post, path = "/v1/components/{system}/{name}/scale",
    params(("system" = String, Path, description = "the system"), ("name" = String, Path, description = "the component")),
    request_body = endstate_api::ScaleRequest,
    responses((status = 201, body = ChangeView), (status = 400, body = endstate_api::Problem), (status = 404, body = endstate_api::Problem)),
    security(("bearer" = [])))]
pub(crate) async fn scale(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    axum::extract::Path((system, name)): axum::extract::Path<(String, String)>,
    JsonBody(request): JsonBody<endstate_api::ScaleRequest>,
) -> Result<(StatusCode, Json<ChangeView>), ApiError> {
    authorize(&actor, Verb::Write, Some(&system))?;
    let reason = reason_of(request.reason.as_deref())?;
    if request.count == 0 || request.count > MAX_SCALE {
        return Err(ApiError::bad_field(
            "count",
            format!(
                "is {}; expected 1 to {MAX_SCALE} (to run none, remove the component from the spec)",
                request.count
            ),
        ));
    }
    let key = format!("{system}/{name}");
    let Some((revision, latest)) = state.latest_desired().await? else {
        return Err(ApiError::NotFound(
            "no revision was submitted yet: there is nothing to scale".into(),
        ));
    };
    let Some(component) = latest.components.get(&key) else {
        return Err(ApiError::NotFound(format!(
            "component {key:?} is not in the latest revision ({})",
            revision.0
        )));
    };
    if let Some(owner) = crate::compose::system_owner(&latest, &component.system) {
        return Err(ApiError::Conflict(format!(
            "{key} belongs to system {}, which the Git source {owner} owns: change its count there (a commit)",
            component.system
        )));
    }
    let (before, after) = match component.placement.count {
        endstate_spec::Count::PerHost(n) => (n, endstate_spec::Count::PerHost(request.count)),
        endstate_spec::Count::Total(n) => (n, endstate_spec::Count::Total(request.count)),
    };
    let unit = match after {
        endstate_spec::Count::PerHost(_) => " per host",
        endstate_spec::Count::Total(_) => " in total",
    };
    if before == request.count {
        return Err(ApiError::Conflict(format!(
            "{key} already runs {before}{unit} in revision {}",
            revision.0
        )));
    }
    let mut desired = (*latest).clone();
    if let Some(component) = desired.components.get_mut(&key) {
        component.placement.count = after;
    }
    let why = reason.map(|r| format!(": {r}")).unwrap_or_default();
    let message = format!(
        "scale {key} from {before} to {}{unit} (on revision {}) by {}{why}",
        request.count, revision.0, actor.name
    );
    let (_, change) = crate::revisions::submit_desired(
        &state,
        &actor.name,
        &desired,
        &message,
        format!("scale:{}", revision.0),
        Some(revision),
        &endstate_plan::PlanOptions::default(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(change_view(&change, false))))
}

/// List changes, newest first.
#[utoipa::path(get, path = "/v1/changes", params(PageParams), responses((status = 200, body = Page<ChangeView>)), security(("bearer" = [])))]
pub(crate) async fn list_changes(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Params(params): Params<PageParams>,
) -> Result<Json<Page<ChangeView>>, ApiError> {
    authorize(&actor, Verb::Read, None)?;
    let page = state
        .store()
        .list_changes(
            ChangeFilter {
                open_only: params.open.unwrap_or(false),
                ..ChangeFilter::default()
            },
            PageRequest {
                before: parse_cursor(params.cursor.as_deref())?,
                limit: params.limit.unwrap_or(0),
            },
        )
        .await?;
    Ok(Json(Page {
        items: page.items.iter().map(|change| change_view(change, false)).collect(),
        next: page.next.map(|n| n.to_string()),
    }))
}

/// One change with its plan.
#[utoipa::path(get, path = "/v1/changes/{id}", params(("id" = u64, Path, description = "the change number")),
    responses((status = 200, body = ChangeView), (status = 404, body = endstate_api::Problem)), security(("bearer" = [])))]
pub(crate) async fn get_change(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Segment(id): Segment,
) -> Result<Json<ChangeView>, ApiError> {
    authorize(&actor, Verb::Read, None)?;
    let number = crate::changes::parse_change(&id)?;
    let change = state
        .store()
        .get_change(ChangeId(number))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("change {number} does not exist")))?;
    Ok(Json(change_view(&change, true)))
}
