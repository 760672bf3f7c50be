//! The server about itself: `/healthz`, `/v1/version`, `/metrics`.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use crate::AppState;
use crate::auth::{Actor, Verb, authorize};
use crate::error::ApiError;

/// The server's version and the API's.
#[utoipa::path(get, path = "/v1/version", responses((status = 200, body = endstate_api::VersionView)), security(("bearer" = [])))]
pub(crate) async fn version(
    Extension(actor): Extension<crate::auth::Actor>,
) -> Result<Json<endstate_api::VersionView>, ApiError> {
    crate::auth::authorize(&actor, crate::auth::Verb::Read, None)?;
    Ok(Json(endstate_api::VersionView {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        api: "v1".to_owned(),
    }))
}

/// Liveness, for load balancers and service managers: `ok` while the server serves.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = String, content_type = "text/plain")), security(()))]
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus metrics (OpenMetrics text)")), security(("bearer" = [])))]
pub(crate) async fn metrics(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
) -> Result<Response, ApiError> {
    authorize(&actor, Verb::Read, None)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics().encode(),
    )
        .into_response())
}
