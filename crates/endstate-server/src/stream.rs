//! The live stream of timeline events (server-sent events), resumable with `Last-Event-ID`.
//!
//! # Guarantees
//! - Only stored events are sent, in sequence order, each with its sequence number as the SSE
//!   id: a client that reconnects with `Last-Event-ID` (or `after`) misses nothing.
//! - Without a position the stream starts at the newest event (history is read with `/v1/timeline`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use endstate_store::EventQuery;
use endstate_types::EventSeq;
use futures_util::{Stream, StreamExt};

use crate::AppState;
use crate::auth::{Actor, Verb, authorize};
use crate::error::ApiError;
use crate::extract::Params;
use crate::timeline::{TimelineParams, event_query};

/// How long a subscriber waits for a wake-up before it looks at the store anyway.
const POLL: Duration = Duration::from_secs(2);

/// Live timeline events as server-sent events; same filters as `/v1/timeline`.
#[utoipa::path(get, path = "/v1/stream", params(TimelineParams),
    responses((status = 200, description = "text/event-stream of EventView, `id` = seq, `event` = kind"),
        (status = 404, description = "a system or host never declared and without events", body = endstate_api::Problem)),
    security(("bearer" = [])))]
pub(crate) async fn stream(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    Params(mut params): Params<TimelineParams>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    authorize(&actor, Verb::Read, None)?;
    if let Some(last) = headers.get("last-event-id") {
        let last = last
            .to_str()
            .ok()
            .and_then(|text| text.parse::<u64>().ok())
            .ok_or_else(|| ApiError::bad_field("Last-Event-ID", "is not a sequence number this server sent"))?;
        params.after = Some(last);
    }
    params.cursor = None;
    let mut query = event_query(&state, &params).await?;
    if query.after.is_none() {
        let newest = state
            .store()
            .query_events(&EventQuery {
                limit: 1,
                ..EventQuery::default()
            })
            .await?;
        query.after = Some(newest.items.first().map_or(EventSeq(0), |event| event.seq));
    }
    query.before = None;
    query.limit = 500;
    let permit = state.0.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::Unavailable("too many live streams are open on this server; retry later, or read /v1/timeline".into())
    })?;
    let wake = state.0.appended.subscribe();
    let stopping = state.0.stopping.subscribe();
    // The permit lives as long as the stream's state and is returned when the client goes away.
    let start = (state, query, (wake, stopping, permit), VecDeque::new());
    let events = futures_util::stream::unfold(
        start,
        |(state, mut query, (mut wake, mut stopping, permit), mut buffer)| async move {
            loop {
                if *stopping.borrow() {
                    return None;
                }
                if let Some(event) = buffer.pop_front() {
                    return Some((Ok(event), (state, query, (wake, stopping, permit), buffer)));
                }
                wake.mark_unchanged();
                match state.store().query_events(&query).await {
                    Ok(page) if !page.items.is_empty() => {
                        for event in &page.items {
                            query.after = Some(event.seq);
                            let view = crate::views::event_view(event);
                            let data = serde_json::to_string(&view).unwrap_or_default();
                            buffer.push_back(
                                SseEvent::default()
                                    .id(event.seq.0.to_string())
                                    .event(view.kind)
                                    .data(data),
                            );
                        }
                        continue;
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(error = %crate::chain(&error), "Stream read failed; retrying."),
                }
                tokio::select! {
                    _ = tokio::time::timeout(POLL, wake.changed()) => {}
                    _ = stopping.changed() => {}
                }
            }
        },
    );
    // A first comment makes the server send the response head at once, so a client knows the
    // stream is open before the first event exists.
    let opened = futures_util::stream::once(async { Ok(SseEvent::default().comment("stream open")) });
    Ok(Sse::new(opened.chain(events)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
