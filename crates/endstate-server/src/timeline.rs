//! The timeline: its query parameters (checked windows, filters, cursors) and `GET /v1/timeline`.

use axum::extract::State;
use axum::{Extension, Json};
use endstate_api::{EventView, Page};
use endstate_store::EventQuery;
use endstate_types::EventSeq;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use utoipa::IntoParams;

use crate::auth::{self, Actor, Verb, authorize};
use crate::error::ApiError;
use crate::extract::{Params, parse_cursor, parse_time};
use crate::{AppState, views};

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct TimelineParams {
    /// A system: its events and those of all its subsystems.
    pub(crate) system: Option<String>,
    /// Kinds, comma-separated; a kind ending in `.` is a prefix (`change.`).
    pub(crate) kind: Option<String>,
    /// Only events about this host.
    pub(crate) host: Option<String>,
    /// Only events about this component (`system/component`).
    pub(crate) component: Option<String>,
    /// Only events done by this actor (a token's name, `server`, `agent:HOST`).
    pub(crate) actor: Option<String>,
    /// From this time on: RFC 3339, or a duration back from now (`90s`, `15m`, `1h`, `7d`).
    /// A window (from `since` to `until` or now) may span at most 400 days.
    pub(crate) since: Option<String>,
    /// Before this time: RFC 3339, or a duration back from now.
    pub(crate) until: Option<String>,
    /// The `next` of the previous page (newest first).
    pub(crate) cursor: Option<String>,
    /// Oldest first, after this sequence number (to follow the timeline).
    #[serde(default, deserialize_with = "crate::extract::seq")]
    #[param(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    pub(crate) after: Option<u64>,
    /// At most this many events (default 100, at most 1000).
    #[serde(default, deserialize_with = "crate::extract::limit")]
    #[param(minimum = 1, maximum = 1000)]
    pub(crate) limit: Option<u32>,
}

/// A short fingerprint of a timeline query's filters (as given, not as resolved, so a relative
/// `since` stays the same query from page to page), carried in its cursors.
pub(crate) fn timeline_filters(params: &TimelineParams) -> String {
    let text = [
        &params.system,
        &params.kind,
        &params.host,
        &params.component,
        &params.actor,
        &params.since,
        &params.until,
    ]
    .iter()
    .map(|field| field.as_deref().unwrap_or(""))
    .collect::<Vec<_>>()
    .join("\u{1f}");
    auth::hex(&Sha256::digest(text.as_bytes()))[..8].to_string()
}

/// The longest time window a timeline query may span.
const MAX_WINDOW_MS: i64 = 400 * 24 * 3600 * 1000;

/// Refuses a reversed window (`since` after `until`, naming both) and one longer than 400 days
/// (from `since` to `until`, or to now).
fn check_window(since_ms: Option<i64>, until_ms: Option<i64>, now: i64) -> Result<(), ApiError> {
    let show = |ms: i64| jiff::Timestamp::from_millisecond(ms).map_or_else(|_| format!("{ms} ms"), |t| t.to_string());
    if let (Some(since), Some(until)) = (since_ms, until_ms)
        && since > until
    {
        let message = format!("since ({}) is after until ({})", show(since), show(until));
        return Err(ApiError::Invalid {
            detail: format!("the time window is reversed: {message}"),
            errors: vec![
                endstate_api::FieldError {
                    field: "since".into(),
                    message: format!("is after until ({})", show(until)),
                },
                endstate_api::FieldError {
                    field: "until".into(),
                    message: format!("is before since ({})", show(since)),
                },
            ],
        });
    }
    if let Some(since) = since_ms {
        let end = until_ms.unwrap_or(now);
        if end.saturating_sub(since) > MAX_WINDOW_MS {
            let days = end.saturating_sub(since) / (24 * 3600 * 1000);
            let mut errors = vec![endstate_api::FieldError {
                field: "since".into(),
                message: format!("makes a window of {days} days; at most 400 days"),
            }];
            if until_ms.is_some() {
                errors.push(endstate_api::FieldError {
                    field: "until".into(),
                    message: format!("makes a window of {days} days; at most 400 days"),
                });
            }
            return Err(ApiError::Invalid {
                detail: format!("the time window spans {days} days; a query may span at most 400 days"),
                errors,
            });
        }
    }
    Ok(())
}

/// Builds the store query for timeline parameters, expanding a system into its subtree.
pub(crate) async fn event_query(state: &AppState, params: &TimelineParams) -> Result<EventQuery, ApiError> {
    let now = state.now_ms();
    let systems = match &params.system {
        None => None,
        Some(system) => {
            let subtree = match state.latest_desired().await? {
                Some((_, desired)) if desired.systems.contains_key(system) => desired.subsystems_closure(system),
                // A system no longer declared still has its history; one that never had any is a mistake.
                _ => {
                    let any = state
                        .store()
                        .query_events(&EventQuery {
                            systems: Some(vec![system.clone()]),
                            limit: 1,
                            ..EventQuery::default()
                        })
                        .await?;
                    if any.items.is_empty() {
                        return Err(ApiError::NotFound(format!(
                            "system {system:?} is not in the latest revision and has no events"
                        )));
                    }
                    vec![system.clone()]
                }
            };
            Some(subtree)
        }
    };
    let kinds: Option<Vec<String>> = params.kind.as_ref().map(|kinds| {
        kinds
            .split(',')
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .collect()
    });
    // A kind is words of lowercase letters, digits and `_` joined by `.` (a prefix ends in `.`).
    // A well-formed kind without events is no error: it may simply not have happened yet.
    for kind in kinds.iter().flatten() {
        let words = kind.strip_suffix('.').unwrap_or(kind);
        let valid = words.split('.').all(|word| {
            !word.is_empty()
                && word
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        });
        if !valid {
            return Err(ApiError::bad_field(
                "kind",
                format!(
                    "{kind:?} is not a kind: lowercase words joined by `.` (e.g. change.converged), or a prefix \
                     ending in `.` (e.g. alert.)"
                ),
            ));
        }
    }
    // A host that never was in the inventory and never had an event is a mistake.
    if let Some(host) = &params.host
        && state
            .store()
            .get_host(&endstate_types::HostName(host.clone()))
            .await?
            .is_none()
    {
        let any = state
            .store()
            .query_events(&EventQuery {
                host: Some(host.clone()),
                limit: 1,
                ..EventQuery::default()
            })
            .await?;
        if any.items.is_empty() {
            return Err(ApiError::NotFound(format!(
                "host {host:?} is not in the inventory and has no events"
            )));
        }
    }
    let before = match params.cursor.as_deref() {
        Some(_) if params.after.is_some() => {
            return Err(ApiError::bad_field("cursor", "give either cursor or after, not both"));
        }
        None => None,
        Some(cursor) => {
            // `SEQ.FILTERS`: a cursor carries the filters of the query that gave it, so one
            // reused with other filters is refused rather than silently paging another list.
            let (seq, filters) = cursor.split_once('.').unwrap_or((cursor, ""));
            if !filters.is_empty() && filters != timeline_filters(params) {
                return Err(ApiError::bad_field(
                    "cursor",
                    format!(
                        "{cursor:?} comes from a query with other filters (system, kind, host, component, actor, \
                         since, until); ask again without a cursor"
                    ),
                ));
            }
            parse_cursor(Some(seq))?.map(EventSeq)
        }
    };
    let since_ms = params
        .since
        .as_deref()
        .map(|t| parse_time("since", t, now))
        .transpose()?;
    let until_ms = params
        .until
        .as_deref()
        .map(|t| parse_time("until", t, now))
        .transpose()?;
    check_window(since_ms, until_ms, now)?;
    Ok(EventQuery {
        systems,
        kinds,
        host: params.host.clone(),
        component: params.component.clone(),
        actor: params.actor.clone(),
        since_ms,
        until_ms,
        after: params.after.map(EventSeq),
        before,
        limit: params.limit.unwrap_or(0),
    })
}

/// The timeline: newest first by default; with `after`, oldest first from a position.
#[utoipa::path(get, path = "/v1/timeline", params(TimelineParams),
    responses((status = 200, body = Page<EventView>), (status = 422, description = "a bad parameter value, a reversed window or one longer than 400 days", body = endstate_api::Problem),
        (status = 404, description = "a system never declared and without events", body = endstate_api::Problem)),
    security(("bearer" = [])))]
pub(crate) async fn timeline(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Params(params): Params<TimelineParams>,
) -> Result<Json<Page<EventView>>, ApiError> {
    authorize(&actor, Verb::Read, None)?;
    let event_query = event_query(&state, &params).await?;
    let page = state.store().query_events(&event_query).await?;
    // Following (`after`): the next position is a plain sequence number; paging back: a cursor.
    let filters = timeline_filters(&params);
    Ok(Json(Page {
        items: page.items.iter().map(views::event_view).collect(),
        next: page.next.map(|n| {
            if params.after.is_some() {
                n.to_string()
            } else {
                format!("{n}.{filters}")
            }
        }),
    }))
}
