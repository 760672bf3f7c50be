//! The inventory: hosts the agents enrolled plus the static `Host` documents, and one host's view.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::{Extension, Json};
use endstate_api::{HostView, Page};
use endstate_store::{EventQuery, InstanceFilter};
use endstate_types::EventSeq;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::{Actor, Verb, authorize};
use crate::error::ApiError;
use crate::extract::{Params, page_by_key};
use crate::{AppState, views};

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct HostsParams {
    /// Only hosts whose labels match: `zone=a,role=web`, `zone=a|b`.
    selector: Option<String>,
    /// Only hosts serving this system or one of its subsystems.
    system: Option<String>,
    /// Only `agent` hosts or only `static` entries.
    kind: Option<String>,
    /// The `next` of the previous page.
    cursor: Option<String>,
    /// At most this many items (default 500, at most 1000).
    #[serde(default, deserialize_with = "crate::extract::limit")]
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// The inventory: hosts with agents (liveness, labels, facts, what runs on them) and the static
/// entries of the spec (machines without an agent), filtered by labels, system and kind.
#[utoipa::path(get, path = "/v1/hosts", params(HostsParams),
    responses((status = 200, body = Page<HostView>), (status = 400, body = endstate_api::Problem), (status = 404, body = endstate_api::Problem)),
    security(("bearer" = [])))]
pub(crate) async fn list_hosts(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Params(params): Params<HostsParams>,
) -> Result<Json<Page<HostView>>, ApiError> {
    authorize(&actor, Verb::Read, None)?;
    let selector = params
        .selector
        .as_deref()
        .map(endstate_types::Selector::parse)
        .transpose()
        .map_err(|message| ApiError::bad_field("selector", message))?;
    if let Some(kind) = params.kind.as_deref()
        && !matches!(kind, "agent" | "static")
    {
        return Err(ApiError::bad_field(
            "kind",
            format!("{kind:?} is neither agent nor static"),
        ));
    }
    let systems = match params.system.as_deref() {
        None => None,
        Some(system) => match state.latest_desired().await? {
            Some((_, desired)) if desired.systems.contains_key(system) => Some(desired.subsystems_closure(system)),
            _ => {
                return Err(ApiError::NotFound(format!(
                    "system {system:?} is not in the latest revision"
                )));
            }
        },
    };
    let views: Vec<HostView> = host_views(&state)
        .await?
        .into_iter()
        .filter(|h| selector.as_ref().is_none_or(|s| s.matches(&h.labels)))
        .filter(|h| params.kind.as_deref().is_none_or(|k| k == h.kind))
        .filter(|h| {
            systems
                .as_ref()
                .is_none_or(|systems| h.systems.iter().any(|s| systems.contains(s)))
        })
        .collect();
    Ok(Json(page_by_key(
        views,
        |h| h.name.clone(),
        params.cursor,
        params.limit,
    )))
}

/// Every host of the inventory: agents with their liveness and instances, then static entries.
pub(crate) async fn host_views(state: &AppState) -> Result<Vec<HostView>, ApiError> {
    let hosts = state.store().list_hosts().await?;
    let agents = state.store().list_agents().await?;
    let instances = state.store().list_instances(InstanceFilter::default()).await?;
    let desired = state.latest_desired().await?;
    let statics: Vec<&endstate_spec::StaticHost> = desired
        .as_ref()
        .map(|(_, d)| d.hosts.values().collect())
        .unwrap_or_default();
    Ok(views::hosts(&hosts, &agents, &instances, &statics, state.now_ms()))
}

/// The most events of a host read for what ran on it.
const RAN_EVENTS: usize = 20_000;

/// One host of the inventory with the history of its changes (its own events, newest first)
/// and what ran on it when (from its instances' transitions on the timeline).
#[utoipa::path(get, path = "/v1/hosts/{host}", params(("host" = String, Path, description = "The host's name")),
    responses((status = 200, body = endstate_api::HostDetail), (status = 404, body = endstate_api::Problem)),
    security(("bearer" = [])))]
pub(crate) async fn get_host(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(host): Path<String>,
) -> Result<Json<endstate_api::HostDetail>, ApiError> {
    authorize(&actor, Verb::Read, None)?;
    let view = host_views(&state)
        .await?
        .into_iter()
        .find(|h| h.name == host)
        .ok_or_else(|| ApiError::NotFound(format!("host {host:?} is not in the inventory")))?;
    let changes = state
        .store()
        .query_events(&EventQuery {
            host: Some(host.clone()),
            kinds: Some(vec!["host.".into(), "agent.".into()]),
            limit: 100,
            ..EventQuery::default()
        })
        .await?
        .items
        .iter()
        .map(views::event_view)
        .collect();
    // What ran: the newest transitions of the host (at most RAN_EVENTS), newest first, grouped
    // by instance and version.
    let mut ran: BTreeMap<(String, String), endstate_api::RanView> = BTreeMap::new();
    let mut query = EventQuery {
        host: Some(host.clone()),
        kinds: Some(vec!["instance.transitioned".into()]),
        limit: 1000,
        ..EventQuery::default()
    };
    let mut read = 0usize;
    loop {
        let page = state.store().query_events(&query).await?;
        read += page.items.len();
        for event in &page.items {
            let Some(endstate_events::Event::InstanceTransitioned(t)) = event.typed() else {
                continue;
            };
            let instance = format!("{}#{}", event.component.as_deref().unwrap_or("?"), t.slot);
            let version = t.version.unwrap_or_default();
            let time = crate::rfc3339(event.time_ms);
            // Newest first: the first seen of a pair is its last transition.
            let entry = ran
                .entry((instance.clone(), version.clone()))
                .or_insert_with(|| endstate_api::RanView {
                    instance,
                    version,
                    first_seen: time.clone(),
                    last_seen: time.clone(),
                    last_status: t.status,
                    transitions: 0,
                });
            entry.transitions += 1;
            entry.first_seen = time;
        }
        match page.next {
            Some(next) if read < RAN_EVENTS => query.before = Some(EventSeq(next)),
            _ => break,
        }
    }
    let mut ran: Vec<endstate_api::RanView> = ran.into_values().collect();
    ran.sort_by(|a, b| b.last_seen.cmp(&a.last_seen).then(a.instance.cmp(&b.instance)));
    ran.truncate(200);
    Ok(Json(endstate_api::HostDetail {
        host: view,
        changes,
        ran,
    }))
}
