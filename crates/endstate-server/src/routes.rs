//! The routes of API v1 and their handlers. Handlers validate, authorise, call the store and map
//! to the wire types of `endstate-api`; they decide nothing the planner or the runner decides.

use std::collections::{BTreeMap, BTreeSet};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use endstate_api::{
    ChangeView, CreateNote, CreateToken, CreatedToken, Document, EventView, HostView, InstanceView, MAX_BODY_BYTES,
    MAX_NOTE_BYTES, Page, PlanRequest, RevisionSource, RevisionView, SpecDiagnostic, SubmitResponse, SubmitRevision,
    SystemDescription, SystemView, TokenView,
};
use endstate_spec::{DesiredState, HostInfo, Loaded, SourceFile};
use endstate_store::{ChangeFilter, EventQuery, InstanceFilter, NewEvent, NewRevision, PageRequest, TokenRecord};
use endstate_types::{ChangeId, EventSeq, RevisionId};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use utoipa::IntoParams;

use crate::auth::{self, Actor, Role, Verb, authorize};
use crate::error::ApiError;
use crate::{AppState, now_ms, views};

/// The whole application: every route, authentication, limits and metrics.
pub(crate) fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/revisions", post(submit_revision).get(list_revisions))
        .route("/v1/revisions/{id}", get(get_revision))
        .route("/v1/plan", post(preview_plan))
        .route("/v1/changes", get(list_changes))
        .route("/v1/changes/{id}", get(get_change))
        .route("/v1/changes/{id}/pause", post(crate::changes::pause))
        .route("/v1/changes/{id}/resume", post(crate::changes::resume))
        .route("/v1/changes/{id}/abort", post(crate::changes::abort))
        .route("/v1/changes/{id}/accept", post(crate::changes::accept))
        .route("/v1/in-force", get(crate::blueprint::in_force_view))
        .route("/v1/version", get(version))
        .route("/v1/systems/{name}/rollback", post(crate::changes::rollback))
        .route("/v1/systems", get(list_systems))
        .route("/v1/systems/{name}", get(get_system))
        .route("/v1/systems/{name}/describe", get(describe_system))
        .route("/v1/systems/{name}/notes", post(add_note))
        .route("/v1/components", get(list_components))
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
        .route("/v1/instances", get(list_instances))
        .route("/v1/hosts", get(list_hosts))
        .route("/v1/hosts/{host}", get(get_host))
        .route("/v1/timeline", get(timeline))
        .route("/v1/history", get(crate::history::history))
        .route("/v1/why", get(crate::why::why))
        .route("/v1/prometheus/targets", get(crate::prometheus::targets))
        .route("/v1/stream", get(crate::stream::stream))
        .route("/v1/runs", post(crate::actions::request).get(crate::actions::list))
        .route("/v1/runs/{id}", get(crate::actions::get))
        .route("/v1/runs/{id}/approve", post(crate::actions::approve))
        .route("/v1/runs/{id}/cancel", post(crate::actions::cancel))
        .route("/v1/tokens", post(create_token).get(list_tokens))
        .route("/v1/tokens/{name}/revoke", post(revoke_token))
        .route("/v1/join-tokens", post(crate::agents::routes::create_join_token))
        .route("/v1/hosts/{host}/revoke", post(crate::agents::routes::revoke_host))
        .route("/v1/hosts/{host}/logs", get(crate::agents::routes::instance_logs))
        .route("/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(state.clone(), auth::require_token));
    Router::new()
        .route("/healthz", get(healthz))
        .route(
            "/v1/agents/enrol",
            post(crate::agents::routes::enrol)
                .layer(middleware::from_fn_with_state(state.clone(), auth::limit_by_peer)),
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

/// A JSON body whose errors name the field that is wrong (`documents[0].path`).
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| match rejection {
                BytesRejection::FailedToBufferBody(ref failed) if failed.body_text().contains("length limit") => {
                    ApiError::TooLarge { limit: MAX_BODY_BYTES }
                }
                other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                    ApiError::TooLarge { limit: MAX_BODY_BYTES }
                }
                other => ApiError::bad_field("body", other.body_text()),
            })?;
        let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
            let path = error.path().to_string();
            let field = if path == "." { "body".to_string() } else { path };
            ApiError::bad_field(field, error.into_inner().to_string())
        })?;
        Ok(JsonBody(value))
    }
}

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

#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "This API's OpenAPI document")), security(("bearer" = [])))]
pub(crate) async fn openapi(Extension(actor): Extension<Actor>) -> Result<Response, ApiError> {
    authorize(&actor, Verb::Read, None)?;
    Ok(Json(crate::openapi::document()).into_response())
}

fn source_files(documents: &[Document]) -> Result<Vec<SourceFile>, ApiError> {
    if documents.is_empty() {
        return Err(ApiError::bad_field("documents", "at least one document is needed"));
    }
    let mut errors = Vec::new();
    for (idx, document) in documents.iter().enumerate() {
        if document.path.trim().is_empty() {
            errors.push(endstate_api::FieldError {
                field: format!("documents[{idx}].path"),
                message: "is empty".into(),
            });
        }
        if document.content.len() > endstate_spec::MAX_FILE_BYTES {
            errors.push(endstate_api::FieldError {
                field: format!("documents[{idx}].content"),
                message: format!(
                    "is {} bytes; a spec file may be at most {} bytes",
                    document.content.len(),
                    endstate_spec::MAX_FILE_BYTES
                ),
            });
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::BadRequest {
            detail: format!("{} invalid document(s)", errors.len()),
            errors,
        });
    }
    Ok(documents
        .iter()
        .map(|d| SourceFile {
            path: d.path.clone(),
            text: d.content.clone(),
        })
        .collect())
}

pub(crate) fn diagnostic_view(diagnostic: &endstate_spec::Diagnostic) -> SpecDiagnostic {
    SpecDiagnostic {
        severity: match diagnostic.severity {
            endstate_spec::Severity::Error => "error",
            endstate_spec::Severity::Warning => "warning",
        }
        .to_string(),
        file: diagnostic.file.clone(),
        line: diagnostic.line,
        column: diagnostic.column,
        code: diagnostic.code.clone(),
        message: diagnostic.message.clone(),
        expected: diagnostic.expected.clone(),
    }
}

/// The hosts in service: every host of the inventory but those a converged change retired.
pub(crate) async fn host_infos(state: &AppState) -> Result<Vec<HostInfo>, ApiError> {
    Ok(state
        .store()
        .list_hosts()
        .await?
        .into_iter()
        .filter(|host| host.retired_ms.is_none())
        .map(|host| HostInfo {
            name: host.name.0,
            labels: host.labels,
        })
        .collect())
}

/// The hosts a converged change retired: they run nothing until they enrol again.
pub(crate) async fn retired_hosts(state: &AppState) -> Result<Vec<String>, ApiError> {
    Ok(state
        .store()
        .list_hosts()
        .await?
        .into_iter()
        .filter(|host| host.retired_ms.is_some())
        .map(|host| host.name.0)
        .collect())
}

/// Validation, including the static checks of `Policy` documents (the spec crate runs them, so
/// their findings are located in the files): the desired state, or every reason it is refused.
async fn validate(state: &AppState, documents: &[Document]) -> Result<(DesiredState, Vec<SpecDiagnostic>), ApiError> {
    let files = source_files(documents)?;
    let hosts = host_infos(state).await?;
    let Loaded { desired, diagnostics } = endstate_spec::load(&files, &hosts);
    let views: Vec<SpecDiagnostic> = diagnostics.iter().map(diagnostic_view).collect();
    let n_errors = views.iter().filter(|d| d.severity == "error").count();
    let desired = match desired {
        Some(desired) if n_errors == 0 => desired,
        _ => {
            state.metrics().revisions_refused.inc();
            return Err(ApiError::InvalidSpec {
                n_errors: n_errors.max(1),
                diagnostics: views,
            });
        }
    };
    Ok((desired, views))
}

/// The systems a plan touches: the systems whose own declaration, components, checks or actions change.
pub(crate) fn touched_systems(
    plan: &endstate_plan::Plan,
    before: Option<&DesiredState>,
    after: &DesiredState,
) -> Vec<String> {
    let mut systems = BTreeSet::new();
    let system_of = |kind: &str, name: &str| -> Option<String> {
        let find = |state: &DesiredState| match kind {
            "system" => Some(name.to_string()),
            "component" => state.components.get(name).map(|c| c.system.clone()),
            "check" => state.checks.get(name).map(|c| c.system.clone()),
            "action" => state.actions.get(name).map(|a| a.system.clone()),
            _ => None,
        };
        find(after).or_else(|| before.and_then(find))
    };
    for object in &plan.objects {
        if let Some(system) = system_of(&object.kind, &object.name) {
            systems.insert(system);
        }
    }
    for step in &plan.steps {
        if let Some(system) = system_of("component", &step.component) {
            systems.insert(system);
        }
    }
    systems.into_iter().collect()
}

fn source_word(source: &RevisionSource) -> String {
    match &source.reference {
        Some(reference) => format!("{}:{reference}", source.kind),
        None => source.kind.clone(),
    }
}

fn parse_source(word: &str) -> RevisionSource {
    match word.split_once(':') {
        Some((kind, reference)) => RevisionSource {
            kind: kind.to_string(),
            reference: Some(reference.to_string()),
        },
        None => RevisionSource {
            kind: word.to_string(),
            reference: None,
        },
    }
}

pub(crate) fn revision_view(
    meta: &endstate_store::RevisionMeta,
    desired: Option<(&DesiredState, serde_json::Value)>,
    counts: BTreeMap<String, u64>,
) -> RevisionView {
    RevisionView {
        id: meta.id.0,
        created_at: crate::rfc3339(meta.created_ms),
        author: meta.author.clone(),
        message: meta.message.clone(),
        source: parse_source(&meta.source),
        digest: meta.digest.clone(),
        counts,
        desired: desired.map(|(_, json)| json),
    }
}

pub(crate) fn counts(desired: &DesiredState) -> BTreeMap<String, u64> {
    BTreeMap::from([
        ("systems".to_string(), desired.systems.len() as u64),
        ("components".to_string(), desired.components.len() as u64),
        ("checks".to_string(), desired.checks.len() as u64),
        ("actions".to_string(), desired.actions.len() as u64),
        ("policies".to_string(), desired.policies.len() as u64),
    ])
}

fn meta_of(revision: &endstate_store::Revision) -> endstate_store::RevisionMeta {
    endstate_store::RevisionMeta {
        id: revision.id,
        author: revision.author.clone(),
        message: revision.message.clone(),
        source: revision.source.clone(),
        digest: revision.digest.clone(),
        created_ms: revision.created_ms,
    }
}

pub(crate) fn change_view(change: &endstate_store::Change, with_plan: bool) -> ChangeView {
    ChangeView {
        id: change.id.0,
        revision: change.revision.0,
        state: change.state.as_str().to_string(),
        terminal: change.state.is_terminal(),
        reason: change.reason.clone(),
        wave: change.wave.map(|(k, n)| [k, n]),
        created_at: crate::rfc3339(change.created_ms),
        updated_at: crate::rfc3339(change.updated_ms),
        plan: if with_plan { change.plan.clone() } else { None },
        rollout: change.progress.as_ref().map(|_| {
            let progress = crate::rollout::Progress::of(change);
            endstate_api::RolloutView {
                released: progress.released,
                direction: if progress.back { "back" } else { "forward" }.into(),
                paused: progress.paused,
                paused_by: progress.paused_by,
                back_reason: progress.back_reason,
            }
        }),
    }
}

/// Submit a desired state: validate, run static policy checks, store it as the next revision
/// with its change. The change runner takes it from there.
#[utoipa::path(post, path = "/v1/revisions", request_body = SubmitRevision,
    responses((status = 201, body = SubmitResponse), (status = 400, body = endstate_api::Problem), (status = 401, body = endstate_api::Problem),
        (status = 403, body = endstate_api::Problem), (status = 413, body = endstate_api::Problem), (status = 422, description = "invalid spec or denied by policy", body = endstate_api::Problem)),
    security(("bearer" = [])))]
pub(crate) async fn submit_revision(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    JsonBody(request): JsonBody<SubmitRevision>,
) -> Result<(StatusCode, Json<SubmitResponse>), ApiError> {
    authorize(&actor, Verb::Write, None)?;
    let (desired, warnings) = validate(&state, &request.documents).await?;
    let source = if request.source.kind.is_empty() {
        RevisionSource {
            kind: "api".into(),
            reference: None,
        }
    } else {
        request.source.clone()
    };
    let hosts = crate::blueprint::hosts_in_service(&state).await?;
    let options = crate::options::resolve(&request.options, &hosts)?;
    if let Some(previewed) = &request.basis {
        let now = crate::options::basis(state.base().await?.map(|(id, _)| id), &hosts);
        let differences = crate::options::differences(previewed, &now);
        if !differences.is_empty() {
            return Err(ApiError::BasisMoved(differences));
        }
    }
    let (revision, change) = submit_desired(
        &state,
        &actor.name,
        &desired,
        &request.message,
        source_word(&source),
        request.parent.map(RevisionId),
        &options,
    )
    .await?;
    let counts = counts(&desired);
    Ok((
        StatusCode::CREATED,
        Json(SubmitResponse {
            revision: revision_view(&meta_of(&revision), None, counts),
            change: change_view(&change, true),
            warnings,
        }),
    ))
}

/// Stores a validated desired state as the next revision with its change and its
/// `revision.submitted` event, in one transaction.
pub(crate) async fn submit_desired(
    state: &AppState,
    actor: &str,
    desired: &DesiredState,
    message: &str,
    source: String,
    parent: Option<RevisionId>,
    options: &endstate_plan::PlanOptions,
) -> Result<(endstate_store::Revision, endstate_store::Change), ApiError> {
    let canonical = serde_json::to_value(desired)
        .map_err(|error| ApiError::Internal(format!("cannot serialize a desired state: {error}")))?;
    let digest = format!(
        "sha256:{}",
        auth::hex(&Sha256::digest(canonical.to_string().as_bytes()))
    );
    // Planned from the same base as the change will be: the last revision that converged.
    let previous = state.in_force().await?;
    let hosts = crate::blueprint::hosts_in_service(state).await?;
    let plan = endstate_plan::plan_from(
        previous.as_ref().map(|p| (&*p.desired, &p.hosts[..])),
        desired,
        &hosts,
        options,
    );
    let systems = touched_systems(&plan, previous.as_ref().map(|p| p.desired.as_ref()), desired);
    let now = now_ms();
    let summary = format!(
        "revision submitted by {}: {} ({} to add, {} to change, {} to remove)",
        actor,
        if message.is_empty() { "(no message)" } else { message },
        plan.summary.add,
        plan.summary.change,
        plan.summary.remove
    );
    let event = NewEvent {
        systems,
        actor: Some(actor.to_owned()),
        data: serde_json::json!({
            "message": message,
            "source": source,
            "digest": digest,
            "summary": plan.summary,
            "objects": plan.objects.iter().map(|o| format!("{:?} {} {}", o.op, o.kind, o.name).to_lowercase()).collect::<Vec<_>>(),
        }),
        ..NewEvent::new(now, "revision.submitted", summary)
    };
    let (revision, change) = state
        .store()
        .submit_revision(
            NewRevision {
                author: actor.to_owned(),
                message: message.to_owned(),
                source: source.clone(),
                digest,
                desired: canonical,
                created_ms: now,
                // The store checks it in the same transaction as the insert.
                parent,
                options: crate::options::stored(options),
            },
            vec![event],
        )
        .await?;
    state.metrics().revisions_submitted.inc();
    state.written();
    Ok((revision, change))
}

/// Preview what a desired state would change, from the last revision that converged, on the
/// known hosts. Nothing is stored. The change for these documents is planned from the same base
/// by the same planner.
#[utoipa::path(post, path = "/v1/plan", request_body = PlanRequest,
    responses((status = 200, body = endstate_api::PlanResponse), (status = 422, body = endstate_api::Problem)),
    security(("bearer" = [])))]
pub(crate) async fn preview_plan(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    JsonBody(request): JsonBody<PlanRequest>,
) -> Result<Json<endstate_api::PlanResponse>, ApiError> {
    authorize(&actor, Verb::Read, None)?;
    let latest_revision = state.store().latest_revision().await?.map(|r| r.id.0);
    let (desired, warnings) = validate(&state, &request.documents).await?;
    let base = state.in_force().await?;
    let hosts = crate::blueprint::hosts_in_service(&state).await?;
    let options = crate::options::resolve(&request.options, &hosts)?;
    let plan = endstate_plan::plan_from(
        base.as_ref().map(|b| (&*b.desired, &b.hosts[..])),
        &desired,
        &hosts,
        &options,
    );
    let plan = serde_json::to_value(&plan).map_err(|error| ApiError::Internal(error.to_string()))?;
    Ok(Json(endstate_api::PlanResponse {
        basis: crate::options::basis(base.as_ref().map(|b| b.revision), &hosts),
        base_revision: base.map(|b| b.revision.0),
        latest_revision,
        plan,
        warnings,
    }))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct PageParams {
    /// The `next` of the previous page.
    cursor: Option<String>,
    /// At most this many items (default 100, at most 1000).
    limit: Option<u32>,
    /// For changes: only those not terminal.
    open: Option<bool>,
}

/// The one path parameter of a route (`{id}`, `{name}`), refused as problem details when it is
/// not valid text.
pub(crate) struct Segment(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for Segment {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(segment)| Segment(segment))
            .map_err(|rejection| ApiError::bad_field("path", rejection.body_text()))
    }
}

/// Query parameters whose errors name the parameter that is wrong (`limit`, `since`). A
/// parameter given empty (`?system=&kind=`, as a form sends a field left blank) is absent.
pub(crate) struct Params<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let raw = parts.uri.query().unwrap_or("");
        let given: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form_urlencoded::parse(raw.as_bytes()).filter(|(_, value)| !value.is_empty()))
            .finish();
        let deserializer = serde_urlencoded::Deserializer::new(form_urlencoded::parse(given.as_bytes()));
        serde_path_to_error::deserialize(deserializer)
            .map(Params)
            .map_err(|error| {
                let path = error.path().to_string();
                let message = error.into_inner().to_string();
                // An unknown parameter has no path of its own; its name is in the message.
                let field = if path == "." { "query".to_string() } else { path };
                ApiError::bad_field(field, message)
            })
    }
}

fn parse_cursor(cursor: Option<&str>) -> Result<Option<u64>, ApiError> {
    cursor
        .map(|text| {
            text.parse::<u64>()
                .map_err(|_| ApiError::bad_field("cursor", format!("{text:?} is not a cursor this server gave")))
        })
        .transpose()
}

/// List revisions, newest first.
#[utoipa::path(get, path = "/v1/revisions", params(PageParams), responses((status = 200, body = Page<RevisionView>)), security(("bearer" = [])))]
pub(crate) async fn list_revisions(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Params(params): Params<PageParams>,
) -> Result<Json<Page<RevisionView>>, ApiError> {
    authorize(&actor, Verb::Read, None)?;
    let page = state
        .store()
        .list_revisions(PageRequest {
            before: parse_cursor(params.cursor.as_deref())?,
            limit: params.limit.unwrap_or(0),
        })
        .await?;
    Ok(Json(Page {
        items: page
            .items
            .iter()
            .map(|meta| revision_view(meta, None, BTreeMap::new()))
            .collect(),
        next: page.next.map(|n| n.to_string()),
    }))
}

/// One revision with its normalised desired state; `latest` names the newest.
#[utoipa::path(get, path = "/v1/revisions/{id}", params(("id" = String, Path, description = "a revision number, or `latest`")),
    responses((status = 200, body = RevisionView), (status = 404, body = endstate_api::Problem)), security(("bearer" = [])))]
pub(crate) async fn get_revision(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Segment(id): Segment,
) -> Result<Json<RevisionView>, ApiError> {
    authorize(&actor, Verb::Read, None)?;
    let revision = if id == "latest" {
        state
            .store()
            .latest_revision()
            .await?
            .ok_or_else(|| ApiError::NotFound("no revision was submitted yet".into()))?
    } else {
        let number = id
            .strip_prefix('r')
            .unwrap_or(&id)
            .parse::<u64>()
            .map_err(|_| ApiError::bad_field("id", format!("{id:?} is neither a revision number nor `latest`")))?;
        state
            .store()
            .get_revision(RevisionId(number))
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("revision {number} does not exist")))?
    };
    let desired = state
        .desired(revision.id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("revision {} vanished", revision.id)))?;
    Ok(Json(revision_view(
        &meta_of(&revision),
        Some((&desired, revision.desired.clone())),
        counts(&desired),
    )))
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

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct SystemsParams {
    /// Only the top-level systems (those that are no other system's subsystem), each with its tree.
    tree: Option<bool>,
    /// The `next` of the previous page.
    cursor: Option<String>,
    /// At most this many items (default 500, at most 1000).
    limit: Option<u32>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// The `next` of the previous page.
    cursor: Option<String>,
    /// At most this many items (default 500, at most 1000).
    limit: Option<u32>,
}

/// The default and largest page of the lists keyed by name.
const LIST_PAGE: (u32, u32) = (500, 1000);

/// One page of a list ordered by `key`: the items after the `cursor` key, at most `limit`.
/// The cursor is the key of the last item, so a page boundary never skips or repeats an item
/// even when items are added or removed between calls.
fn page_by_key<T>(
    mut items: Vec<T>,
    key: impl Fn(&T) -> String,
    cursor: Option<String>,
    limit: Option<u32>,
) -> Page<T> {
    let limit = limit.unwrap_or(LIST_PAGE.0).clamp(1, LIST_PAGE.1) as usize;
    items.sort_by_key(|item| key(item));
    let mut items: Vec<T> = match &cursor {
        Some(after) => items
            .into_iter()
            .filter(|item| key(item).as_str() > after.as_str())
            .collect(),
        None => items,
    };
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().map(&key)
    } else {
        None
    };
    Page { items, next }
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
    /// up from its whole subtree, naming the leaf). Default: all of them.
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
    responses((status = 201, body = EventView), (status = 400, description = "blank or longer than 4 KiB: the field `text` is named", body = endstate_api::Problem),
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
        data: serde_json::json!({ "text": text }),
        ..NewEvent::new(now_ms(), "note.added", summary)
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
    Ok(views::hosts(&hosts, &agents, &instances, &statics, now_ms()))
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
            let slot = event.data.get("slot").and_then(serde_json::Value::as_u64).unwrap_or(0);
            let instance = format!("{}#{slot}", event.component.as_deref().unwrap_or("?"));
            let text = |field: &str, default: &str| {
                event
                    .data
                    .get(field)
                    .and_then(|v| v.as_str())
                    .unwrap_or(default)
                    .to_string()
            };
            let time = crate::rfc3339(event.time_ms);
            // Newest first: the first seen of a pair is its last transition.
            let entry = ran
                .entry((instance.clone(), text("version", "")))
                .or_insert_with(|| endstate_api::RanView {
                    instance,
                    version: text("version", ""),
                    first_seen: time.clone(),
                    last_seen: time.clone(),
                    last_status: text("status", "unknown"),
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
    pub(crate) after: Option<u64>,
    /// At most this many events (default 100, at most 1000).
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

/// Parses `since`/`until`: RFC 3339 or a duration back from `now_ms`.
pub(crate) fn parse_time(field: &str, text: &str, now_ms: i64) -> Result<i64, ApiError> {
    if let Ok(ts) = text.parse::<jiff::Timestamp>() {
        return Ok(ts.as_millisecond());
    }
    // Durations are written as in specs (`90s`, `1h30m`, `7d`), so one parser serves both.
    match endstate_spec::Duration::parse(text) {
        Ok(back) => {
            let back_ms = i64::try_from(back.as_std().as_millis()).unwrap_or(i64::MAX);
            Ok(now_ms.saturating_sub(back_ms))
        }
        Err(reason) => Err(ApiError::bad_field(
            field,
            format!("{text:?} is neither an RFC 3339 time nor a duration like 90s, 15m, 1h or 7d ({reason})"),
        )),
    }
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
        return Err(ApiError::BadRequest {
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
            return Err(ApiError::BadRequest {
                detail: format!("the time window spans {days} days; a query may span at most 400 days"),
                errors,
            });
        }
    }
    Ok(())
}

/// Builds the store query for timeline parameters, expanding a system into its subtree.
pub(crate) async fn event_query(state: &AppState, params: &TimelineParams) -> Result<EventQuery, ApiError> {
    let now = now_ms();
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
    responses((status = 200, body = Page<EventView>), (status = 400, description = "a bad parameter, a reversed window or one longer than 400 days", body = endstate_api::Problem),
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

/// Create a named token. Its secret is in the answer and never again.
#[utoipa::path(post, path = "/v1/tokens", request_body = CreateToken, responses((status = 201, body = CreatedToken), (status = 400, body = endstate_api::Problem), (status = 403, body = endstate_api::Problem), (status = 409, description = "a token of that name is not revoked", body = endstate_api::Problem)), security(("bearer" = [])))]
pub(crate) async fn create_token(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    JsonBody(request): JsonBody<CreateToken>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    authorize(&actor, Verb::Administer, None)?;
    endstate_types::validate_name(&request.name).map_err(|error| ApiError::bad_field("name", error.to_string()))?;
    let role = Role::parse(&request.role).ok_or_else(|| {
        ApiError::bad_field(
            "role",
            format!("{:?} is not a role; expected {}", request.role, Role::NAMES),
        )
    })?;
    for (i, system) in request.systems.iter().enumerate() {
        endstate_types::validate_name(system)
            .map_err(|error| ApiError::bad_field(format!("systems[{i}]"), error.to_string()))?;
    }
    let tokens = state.store().list_tokens().await?;
    if tokens.iter().any(|t| t.name == request.name && !t.revoked) {
        return Err(ApiError::Conflict(format!(
            "a token named {:?} exists and is not revoked; revoke it first or choose another name",
            request.name
        )));
    }
    let secret = auth::new_secret()?;
    let hash_hex = auth::hash_secret(&secret);
    let now = now_ms();
    state
        .store()
        .put_token(TokenRecord {
            id: hash_hex[..16].to_string(),
            name: request.name.clone(),
            role: role.as_str().to_string(),
            hash_hex,
            created_ms: now,
            revoked: false,
            systems: request.systems.clone(),
        })
        .await?;
    let scope = if request.systems.is_empty() {
        String::new()
    } else {
        format!(" for {}", request.systems.join(", "))
    };
    state
        .store()
        .append_events(vec![NewEvent {
            systems: request.systems.clone(),
            actor: Some(actor.name.clone()),
            data: serde_json::json!({ "name": request.name, "role": role.as_str(), "systems": request.systems }),
            ..NewEvent::new(
                now,
                "token.created",
                format!(
                    "token {} ({}{scope}) created by {}",
                    request.name,
                    role.as_str(),
                    actor.name
                ),
            )
        }])
        .await?;
    state.written();
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            name: request.name,
            role: role.as_str().to_string(),
            systems: request.systems,
            secret,
        }),
    ))
}

/// Every token, revoked ones too (never a secret).
#[utoipa::path(get, path = "/v1/tokens", responses((status = 200, body = Vec<TokenView>), (status = 403, body = endstate_api::Problem)), security(("bearer" = [])))]
pub(crate) async fn list_tokens(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    authorize(&actor, Verb::Administer, None)?;
    let tokens = state.store().list_tokens().await?;
    Ok(Json(
        tokens
            .into_iter()
            .map(|t| TokenView {
                name: t.name,
                role: t.role,
                systems: t.systems,
                created_ms: t.created_ms,
                revoked: t.revoked,
            })
            .collect(),
    ))
}

/// Revokes every token of a name: from now on it is refused (401, "revoked").
#[utoipa::path(post, path = "/v1/tokens/{name}/revoke", params(("name" = String, Path, description = "the token's name")),
    responses((status = 200, body = TokenView), (status = 403, body = endstate_api::Problem), (status = 404, body = endstate_api::Problem)), security(("bearer" = [])))]
pub(crate) async fn revoke_token(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<Json<TokenView>, ApiError> {
    authorize(&actor, Verb::Administer, None)?;
    let tokens = state.store().list_tokens().await?;
    let live: Vec<TokenRecord> = tokens.into_iter().filter(|t| t.name == name && !t.revoked).collect();
    let Some(last) = live.last().cloned() else {
        return Err(ApiError::NotFound(format!(
            "no token named {name:?} that is not revoked"
        )));
    };
    for token in live {
        state.store().put_token(TokenRecord { revoked: true, ..token }).await?;
    }
    state
        .store()
        .append_events(vec![NewEvent {
            systems: last.systems.clone(),
            actor: Some(actor.name.clone()),
            data: serde_json::json!({ "name": name, "role": last.role }),
            ..NewEvent::new(
                now_ms(),
                "token.revoked",
                format!("token {name} revoked by {}", actor.name),
            )
        }])
        .await?;
    state.written();
    Ok(Json(TokenView {
        name: last.name,
        role: last.role,
        systems: last.systems,
        created_ms: last.created_ms,
        revoked: true,
    }))
}
