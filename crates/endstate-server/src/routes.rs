//! The router of API v1: every route and the layers around them (authentication, limits,
//! metrics). The handlers live with what they handle; nothing imports this module.

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use endstate_api::MAX_BODY_BYTES;

use crate::AppState;
use crate::auth;
use crate::error::ApiError;

/// The whole application: every route, authentication, limits and metrics.
pub(crate) fn router(state: AppState) -> Router {
    let api = Router::new()
        .route(
            "/v1/revisions",
            post(crate::revisions::submit_revision).get(crate::revisions::list_revisions),
        )
        .route("/v1/revisions/{id}", get(crate::revisions::get_revision))
        .route("/v1/plan", post(crate::revisions::preview_plan))
        .route("/v1/changes", get(crate::changes::list_changes))
        .route("/v1/changes/{id}", get(crate::changes::get_change))
        .route("/v1/changes/{id}/pause", post(crate::changes::pause))
        .route("/v1/changes/{id}/resume", post(crate::changes::resume))
        .route("/v1/changes/{id}/abort", post(crate::changes::abort))
        .route("/v1/changes/{id}/accept", post(crate::changes::accept))
        .route("/v1/in-force", get(crate::blueprint::in_force_view))
        .route("/v1/version", get(crate::meta::version))
        .route("/v1/systems/{name}/rollback", post(crate::changes::rollback))
        .route("/v1/systems", get(crate::systems::list_systems))
        .route("/v1/systems/{name}", get(crate::systems::get_system))
        .route("/v1/systems/{name}/describe", get(crate::systems::describe_system))
        .route("/v1/systems/{name}/notes", post(crate::systems::add_note))
        .route("/v1/components", get(crate::systems::list_components))
        .route("/v1/alerts", get(crate::monitor::list_alerts))
        .route("/v1/alerts/ack", post(crate::monitor::ack))
        .route("/v1/alerts/bulk", post(crate::monitor::bulk))
        .route("/v1/alertmanager", post(crate::monitor::alertmanager))
        .route("/v1/review", get(crate::monitor::review))
        .route(
            "/v1/silences",
            post(crate::monitor::create_silence).get(crate::monitor::list_silences),
        )
        .route(
            "/v1/silences/{id}",
            axum::routing::delete(crate::monitor::remove_silence),
        )
        .route("/v1/components/{system}/{name}/scale", post(crate::changes::scale))
        .route("/v1/sources", post(crate::sources::add).get(crate::sources::list))
        .route(
            "/v1/sources/{name}",
            get(crate::sources::show).delete(crate::sources::remove),
        )
        .route("/v1/sources/{name}/sync", post(crate::sources::sync))
        .route("/v1/sources/{name}/plan", post(crate::sources::plan))
        .route("/v1/instances", get(crate::systems::list_instances))
        .route("/v1/hosts", get(crate::hosts::list_hosts))
        .route("/v1/hosts/{host}", get(crate::hosts::get_host))
        .route("/v1/timeline", get(crate::timeline::timeline))
        .route("/v1/history", get(crate::history::history))
        .route("/v1/why", get(crate::why::why))
        .route("/v1/prometheus/targets", get(crate::prometheus::targets))
        .route("/v1/stream", get(crate::stream::stream))
        .route("/v1/runs", post(crate::actions::request).get(crate::actions::list))
        .route("/v1/runs/{id}", get(crate::actions::get))
        .route("/v1/runs/{id}/approve", post(crate::actions::approve))
        .route("/v1/runs/{id}/cancel", post(crate::actions::cancel))
        .route(
            "/v1/tokens",
            post(crate::tokens::create_token).get(crate::tokens::list_tokens),
        )
        .route("/v1/tokens/{name}/revoke", post(crate::tokens::revoke_token))
        .route("/v1/join-tokens", post(crate::agents::routes::create_join_token))
        .route("/v1/hosts/{host}/revoke", post(crate::agents::routes::revoke_host))
        .route("/v1/hosts/{host}/logs", get(crate::agents::routes::instance_logs))
        .route("/openapi.json", get(crate::openapi::openapi))
        .route("/metrics", get(crate::meta::metrics))
        .layer(middleware::from_fn_with_state(state.clone(), auth::require_token));
    Router::new()
        .route("/healthz", get(crate::meta::healthz))
        .route(
            "/v1/agents/enrol",
            post(crate::agents::routes::enrol)
                .layer(middleware::from_fn_with_state(state.clone(), auth::limit_by_peer)),
        )
        // Authenticated by the forge's signature under the source's secret, not a bearer token.
        .route(
            "/v1/sources/{name}/hook",
            post(crate::sources::hook).layer(middleware::from_fn_with_state(state.clone(), auth::limit_by_peer)),
        )
        .route(
            "/v1/agents/endpoint",
            post(crate::agents::routes::endpoint)
                .layer(middleware::from_fn_with_state(state.clone(), auth::limit_by_peer)),
        )
        .merge(api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), record_metrics))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError::MethodNotAllowed(method.to_string())
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route; see /openapi.json for the API".into())
}

async fn record_metrics(State(state): State<AppState>, request: Request, next: Next) -> Response {
    // Only the standard methods become label values: a made-up method must not add series.
    let method = match request.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => m.to_string(),
        _ => "other".to_string(),
    };
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |path| path.as_str().to_string());
    let started = tokio::time::Instant::now();
    let response = next.run(request).await;
    let labels = crate::metrics::RequestLabels {
        method,
        route,
        status: response.status().as_u16(),
    };
    state.metrics().requests.get_or_create(&labels).inc();
    state
        .metrics()
        .request_seconds
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}
