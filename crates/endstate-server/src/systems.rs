//! Systems, components and instances as the views see them, and notes on a system.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use endstate_api::{CreateNote, EventView, InstanceView, MAX_NOTE_BYTES, Page, SystemDescription, SystemView};
use endstate_store::NewEvent;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::{Actor, Verb, authorize};
use crate::error::ApiError;
use crate::extract::{JsonBody, ListParams, Params, Segment, page_by_key};
use crate::timeline::{TimelineParams, event_query};
use crate::{AppState, views};

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct SystemsParams {
    /// Only the top-level systems (those that are no other system's subsystem), each with its tree.
    tree: Option<bool>,
    /// The `next` of the previous page.
    cursor: Option<String>,
    /// At most this many items (default 500, at most 1000).
    #[serde(default, deserialize_with = "crate::extract::limit")]
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// List systems with their rolled-up status.
#[utoipa::path(get, path = "/v1/systems", params(SystemsParams), responses((status = 200, body = Page<SystemView>)), security(("bearer" = [])))]
pub(crate) async fn list_systems(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Params(params): Params<SystemsParams>,
) -> Result<Json<Page<SystemView>>, ApiError> {
    authorize(&actor, Verb::Read, None)?;
    let systems = match views::World::load(&state).await? {
        Some(world) => world.systems(params.tree.unwrap_or(false)),
        None => Vec::new(),
    };
    Ok(Json(page_by_key(
        systems,
        |s| s.name.clone(),
        params.cursor,
        params.limit,
    )))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct SystemParams {
    /// How many levels of subsystems to expand (0: the system alone, its status still rolled
    /// up from its whole subtree, naming the leaf; at most 1000). Default: all of them.
    #[serde(default, deserialize_with = "crate::extract::depth")]
    #[param(minimum = 0, maximum = 1000)]
    depth: Option<usize>,
}

/// One system with its subsystems and components, each with its status.
#[utoipa::path(get, path = "/v1/systems/{name}", params(("name" = String, Path), SystemParams),
    responses((status = 200, body = SystemView), (status = 404, body = endstate_api::Problem)), security(("bearer" = [])))]
pub(crate) async fn get_system(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Segment(name): Segment,
    Params(params): Params<SystemParams>,
) -> Result<Json<SystemView>, ApiError> {
    authorize(&actor, Verb::Read, Some(&name))?;
    let world = views::World::load(&state).await?;
    world
        .and_then(|world| world.system_to_depth(&name, params.depth.unwrap_or(usize::MAX)))
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("system {name:?} is not in the latest revision")))
}

/// How many recent events a description carries.
const DESCRIBE_EVENTS: u32 = 10;

/// Everything about one system on one screen: what it is, owners, escalation contact, links,
/// rules of engagement (its actions), subsystems and the aggregates it belongs to, the rolled-up
/// status with the leaf that decided it, its components with their instances, and the last
/// events of its subtree.
#[utoipa::path(get, path = "/v1/systems/{name}/describe", params(("name" = String, Path)),
    responses((status = 200, body = SystemDescription), (status = 404, body = endstate_api::Problem)), security(("bearer" = [])))]
pub(crate) async fn describe_system(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Segment(name): Segment,
) -> Result<Json<SystemDescription>, ApiError> {
    authorize(&actor, Verb::Read, Some(&name))?;
    let world = views::World::load(&state).await?;
    let mut description = world
        .and_then(|world| world.description(&name))
        .ok_or_else(|| ApiError::NotFound(format!("system {name:?} is not in the latest revision")))?;
    let query = event_query(
        &state,
        &TimelineParams {
            system: Some(name),
            limit: Some(DESCRIBE_EVENTS),
            ..TimelineParams::default()
        },
    )
    .await?;
    let page = state.store().query_events(&query).await?;
    description.recent_events = page.items.iter().map(views::event_view).collect();
    Ok(Json(description))
}

/// Add a note to a system's timeline (`note.added`, by the token's name). Nothing is stored
/// unless the whole note is valid.
#[utoipa::path(post, path = "/v1/systems/{name}/notes", params(("name" = String, Path)), request_body = CreateNote,
    responses((status = 201, body = EventView), (status = 422, description = "blank or longer than 4 KiB: the field `text` is named", body = endstate_api::Problem),
        (status = 403, body = endstate_api::Problem), (status = 404, body = endstate_api::Problem), (status = 413, body = endstate_api::Problem)),
    security(("bearer" = [])))]
pub(crate) async fn add_note(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Segment(name): Segment,
    JsonBody(request): JsonBody<CreateNote>,
) -> Result<(StatusCode, Json<EventView>), ApiError> {
    authorize(&actor, Verb::Operate, Some(&name))?;
    let text = request.text.trim();
    if text.is_empty() {
        return Err(ApiError::bad_field("text", "is blank; write what happened"));
    }
    if request.text.len() > MAX_NOTE_BYTES {
        return Err(ApiError::bad_field(
            "text",
            format!(
                "is {} bytes; a note may be at most {MAX_NOTE_BYTES} bytes (link to longer material)",
                request.text.len()
            ),
        ));
    }
    let known = state
        .latest_desired()
        .await?
        .is_some_and(|(_, desired)| desired.systems.contains_key(&name));
    if !known {
        return Err(ApiError::NotFound(format!(
            "system {name:?} is not in the latest revision; a note is added to a declared system"
        )));
    }
    // The summary is the first line, cut to a line's length; the whole note is in `data.text`.
    let first = text.lines().next().unwrap_or_default();
    let mut summary: String = first.chars().take(200).collect();
    if summary.len() < text.len() {
        summary.push('…');
    }
    let event = NewEvent {
        systems: vec![name.clone()],
        actor: Some(actor.name.clone()),
        ..NewEvent::of(
            state.now_ms(),
            &endstate_events::Event::NoteAdded(endstate_events::NoteAdded { text: text.to_owned() }),
            summary,
        )
    };
    let seqs = state.store().append_events(vec![event.clone()]).await?;
    state.written();
    let seq = seqs
        .first()
        .copied()
        .ok_or_else(|| ApiError::Internal("the store returned no seq for a note".into()))?;
    let stored = endstate_store::Event {
        seq,
        time_ms: event.time_ms,
        kind: event.kind,
        systems: event.systems,
        host: None,
        component: None,
        change: None,
        actor: event.actor,
        summary: event.summary,
        data: event.data,
    };
    Ok((StatusCode::CREATED, Json(views::event_view(&stored))))
}

/// List components with placement and status.
#[utoipa::path(get, path = "/v1/components", params(ListParams), responses((status = 200, body = Page<endstate_api::ComponentView>)), security(("bearer" = [])))]
pub(crate) async fn list_components(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Params(params): Params<ListParams>,
) -> Result<Json<Page<endstate_api::ComponentView>>, ApiError> {
    authorize(&actor, Verb::Read, None)?;
    let world = views::World::load(&state).await?;
    let components = world.map(|world| world.components()).unwrap_or_default();
    Ok(Json(page_by_key(
        components,
        |c| c.key.clone(),
        params.cursor,
        params.limit,
    )))
}

/// List instances, desired and actual.
#[utoipa::path(get, path = "/v1/instances", params(ListParams), responses((status = 200, body = Page<InstanceView>)), security(("bearer" = [])))]
pub(crate) async fn list_instances(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Params(params): Params<ListParams>,
) -> Result<Json<Page<InstanceView>>, ApiError> {
    authorize(&actor, Verb::Read, None)?;
    let world = views::World::load(&state).await?;
    let mut instances = world.map(|world| world.instances()).unwrap_or_default();
    if let Some(hub) = state.hub() {
        // What the agents last sampled; kept in memory, not on the timeline.
        let mut by_host: std::collections::HashMap<String, _> = std::collections::HashMap::new();
        for view in &mut instances {
            let live = by_host
                .entry(view.host.clone())
                .or_insert_with(|| hub.live_of(&view.host));
            if let Some(l) = live.get(&format!("{}#{}", view.component, view.slot)) {
                view.rss_bytes = Some(l.rss_bytes).filter(|b| *b > 0);
                view.cpu_millis = Some(l.cpu_millis).filter(|_| l.rss_bytes > 0);
                view.restarts = Some(l.restarts);
            }
        }
    }
    let key = |i: &InstanceView| format!("{}#{:010}@{}", i.component, i.slot, i.host);
    Ok(Json(page_by_key(instances, key, params.cursor, params.limit)))
}
