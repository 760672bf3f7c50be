//! Revisions: submit a desired state (validated, statically checked against its policies,
//! stored with its change), preview a plan, list and read revisions.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use endstate_api::{
    Document, Page, PlanRequest, RevisionSource, RevisionView, SpecDiagnostic, SubmitResponse, SubmitRevision,
};
use endstate_spec::{DesiredState, HostInfo, Loaded, SourceFile};
use endstate_store::{NewEvent, NewRevision, PageRequest};
use endstate_types::RevisionId;
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::auth::{self, Actor, Verb, authorize};
use crate::error::ApiError;
use crate::extract::{JsonBody, PageParams, Params, Segment, parse_cursor};
use crate::record::{change_view, touched_systems};

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
        return Err(ApiError::Invalid {
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

/// Validation, including the static checks of `Policy` documents (the spec crate runs them, so
/// their findings are located in the files): the desired state, or every reason it is refused.
/// Validates a submission through the API and composes it with what the Git sources own in the
/// latest revision (see [`crate::compose`]): the desired state, its warnings, and the latest
/// revision it was composed on when a source owns part of it (the submission must land on it).
async fn validate(
    state: &AppState,
    documents: &[Document],
) -> Result<(DesiredState, Vec<SpecDiagnostic>, Option<RevisionId>), ApiError> {
    let files = source_files(documents)?;
    let latest = state.latest_desired().await?;
    let previous = latest.as_ref().map(|(_, d)| d.as_ref());
    let refused = |diagnostics: Vec<SpecDiagnostic>| {
        state.metrics().revisions_refused.inc();
        ApiError::InvalidSpec {
            n_errors: diagnostics.len().max(1),
            diagnostics,
        }
    };
    // Parsed once: who owns what is read from the same parse that is validated.
    let mut parsed = endstate_spec::ParsedSpec::parse(files);
    let owned = crate::compose::owned_elsewhere(&parsed.declarations(), previous, None, |owner| {
        format!("the Git source {owner}")
    });
    if !owned.is_empty() {
        return Err(refused(
            owned
                .into_iter()
                .map(|r| SpecDiagnostic {
                    severity: "error".into(),
                    file: r.path,
                    line: r.line,
                    column: r.column,
                    code: "owned-by-source".into(),
                    message: r.message,
                    expected: Some("an object the API owns: apply the others through their Git source".into()),
                })
                .collect(),
        ));
    }
    let (stand_in, stand_ins) = crate::compose::stand_ins(previous, |system| {
        previous.and_then(|p| crate::compose::system_owner(p, system)).is_some()
    });
    if let Some(stand_in) = stand_in {
        parsed.add(stand_in);
    }
    let hosts = host_infos(state).await?;
    let Loaded { desired, diagnostics } = parsed.validate(&hosts);
    let views: Vec<SpecDiagnostic> = diagnostics.iter().map(diagnostic_view).collect();
    let n_errors = views.iter().filter(|d| d.severity == "error").count();
    let desired = match desired {
        Some(desired) if n_errors == 0 => desired,
        _ => return Err(refused(views)),
    };
    let composed_on = previous.is_some_and(|p| !p.owners.is_empty());
    let desired = crate::compose::with_api(previous, desired, &stand_ins);
    let dangling = crate::compose::dangling(&desired);
    if !dangling.is_empty() {
        return Err(refused(
            dangling
                .into_iter()
                .map(|message| SpecDiagnostic {
                    severity: "error".into(),
                    file: String::new(),
                    line: 0,
                    column: 0,
                    code: "dangling-reference".into(),
                    message,
                    expected: Some("keep the object, or change what names it in its Git source first".into()),
                })
                .collect(),
        ));
    }
    Ok((desired, views, latest.filter(|_| composed_on).map(|(id, _)| id)))
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
    let (desired, warnings, composed_on) = validate(&state, &request.documents).await?;
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
        // Composed with the sources' objects of the latest revision: stored on it, or refused.
        request.parent.map(RevisionId).or(composed_on),
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
    let now = state.now_ms();
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
        ..NewEvent::of(
            now,
            &endstate_events::Event::RevisionSubmitted(endstate_events::RevisionSubmitted {
                message: message.to_owned(),
                source: source.to_string(),
                digest: digest.to_string(),
                summary: crate::record::plan_counts(&plan.summary),
                objects: plan
                    .objects
                    .iter()
                    .map(|o| format!("{:?} {} {}", o.op, o.kind, o.name).to_lowercase())
                    .collect(),
            }),
            summary,
        )
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
    let (desired, warnings, _) = validate(&state, &request.documents).await?;
    Ok(Json(
        preview(&state, &desired, &request.options, latest_revision, warnings).await?,
    ))
}

/// The plan from the revision in force to `desired` on the hosts in service, as its change
/// would be planned; nothing is stored (`POST /v1/plan`, a source's branch previewed).
pub(crate) async fn preview(
    state: &AppState,
    desired: &DesiredState,
    options: &endstate_api::ChangeOptions,
    latest_revision: Option<u64>,
    warnings: Vec<SpecDiagnostic>,
) -> Result<endstate_api::PlanResponse, ApiError> {
    let base = state.in_force().await?;
    let hosts = crate::blueprint::hosts_in_service(state).await?;
    let options = crate::options::resolve(options, &hosts)?;
    let plan = endstate_plan::plan_from(
        base.as_ref().map(|b| (&*b.desired, &b.hosts[..])),
        desired,
        &hosts,
        &options,
    );
    Ok(endstate_api::PlanResponse {
        basis: crate::options::basis(base.as_ref().map(|b| b.revision), &hosts),
        base_revision: base.map(|b| b.revision.0),
        latest_revision,
        plan,
        warnings,
    })
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
