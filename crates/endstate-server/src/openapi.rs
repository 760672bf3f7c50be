//! The OpenAPI document, generated from the handlers and the wire types.

use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::auth::{Actor, Verb, authorize};
use crate::error::ApiError;

#[derive(OpenApi)]
#[openapi(
    info(title = "endstate API", description = "Declarative, federated operations control plane. Every call needs `Authorization: Bearer <token>`; errors are RFC 9457 problem details."),
    paths(
        crate::revisions::submit_revision,
        crate::revisions::list_revisions,
        crate::revisions::get_revision,
        crate::revisions::preview_plan,
        crate::changes::list_changes,
        crate::changes::get_change,
        crate::changes::pause,
        crate::changes::resume,
        crate::changes::abort,
        crate::changes::accept,
        crate::blueprint::in_force_view,
        crate::meta::version,
        crate::changes::rollback,
        crate::changes::scale,
        crate::sources::add,
        crate::sources::list,
        crate::sources::show,
        crate::sources::sync,
        crate::sources::plan,
        crate::sources::remove,
        crate::sources::hook,
        crate::monitor::list_alerts,
        crate::monitor::ack,
        crate::monitor::bulk,
        crate::monitor::alertmanager,
        crate::monitor::review,
        crate::monitor::create_silence,
        crate::monitor::list_silences,
        crate::monitor::remove_silence,
        crate::systems::list_systems,
        crate::systems::get_system,
        crate::systems::describe_system,
        crate::systems::add_note,
        crate::systems::list_components,
        crate::systems::list_instances,
        crate::hosts::list_hosts,
        crate::hosts::get_host,
        crate::timeline::timeline,
        crate::history::history,
        crate::why::why,
        crate::prometheus::targets,
        crate::stream::stream,
        crate::tokens::create_token,
        crate::tokens::list_tokens,
        crate::actions::request,
        crate::actions::list,
        crate::actions::get,
        crate::actions::approve,
        crate::actions::cancel,
        crate::tokens::revoke_token,
        crate::openapi::openapi,
        crate::meta::metrics,
        crate::meta::healthz,
        crate::agents::routes::create_join_token,
        crate::agents::routes::enrol,
        crate::agents::routes::endpoint,
        crate::agents::routes::revoke_host,
        crate::agents::routes::instance_logs,
    ),
    modifiers(&BearerAuth, &ProblemResponses)
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every error the server can answer, on every operation it can answer it for, as the server
/// sends it: RFC 9457 problem details (`application/problem+json`). Malformed parameters or
/// bodies (400), a missing or refused token (401, 403) on routes that need one, an unknown id in
/// the path (404), a write whose basis moved (409), a body too large or not JSON (413, 415), a
/// value refused for its meaning (422) on routes that take parameters or a body, rate limits
/// (429), the store failing (500) or a bound reached (503).
struct ProblemResponses;

impl Modify for ProblemResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
        let problem = || {
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build()
        };
        for (path, item) in &mut openapi.paths.paths {
            let with_params = path.contains('{');
            for (writes, operation) in [
                (false, &mut item.get),
                (true, &mut item.put),
                (true, &mut item.post),
                (true, &mut item.delete),
                (true, &mut item.patch),
            ]
            .into_iter()
            .filter_map(|(writes, operation)| Some((writes, operation.as_mut()?)))
            {
                let anonymous = operation.security.as_ref().is_some_and(|all| {
                    all.iter()
                        .all(|req| serde_json::to_value(req).is_ok_and(|v| v == serde_json::json!({})))
                });
                let with_body = operation.request_body.is_some();
                let with_query = operation.parameters.as_ref().is_some_and(|all| !all.is_empty());
                let mut statuses = vec![(
                    "400",
                    "The request could not be read: not JSON, a value of the wrong type, an unknown field or parameter (the field is named)",
                )];
                if with_params || with_body || with_query {
                    statuses.push((
                        "422",
                        "The request was read, and a value in it is refused for its meaning: a name, a window, a target, a spec (the field or document is named)",
                    ));
                }
                if !anonymous {
                    statuses.push(("401", "No bearer token, or one the server does not know or revoked"));
                    statuses.push(("403", "The token's role or systems do not allow it"));
                }
                if with_params {
                    statuses.push(("404", "Nothing of that id or name"));
                }
                if writes {
                    // The store refuses a write whose basis moved (a newer revision, a state
                    // changed meanwhile): every write can meet it.
                    statuses.push((
                        "409",
                        "What the request acts on changed meanwhile or is in a state that forbids it (the problem says what)",
                    ));
                }
                if with_body {
                    statuses.push(("413", "The body is larger than the route accepts"));
                    statuses.push(("415", "The body is not JSON"));
                }
                statuses.push(("429", "Rate limited: retry after the time the problem says"));
                statuses.push(("500", "The server failed (the store, say); nothing was done"));
                statuses.push((
                    "503",
                    "A bound is reached (live streams, say) or the server is stopping",
                ));
                let responses = &mut operation.responses.responses;
                for (status, why) in statuses {
                    responses
                        .entry(status.to_owned())
                        .or_insert_with(|| RefOr::T(ResponseBuilder::new().description(why).build()));
                }
                for (status, response) in responses.iter_mut() {
                    if status.as_str() >= "400"
                        && let RefOr::T(response) = response
                    {
                        response.content.clear();
                        response
                            .content
                            .insert(endstate_api::PROBLEM_CONTENT_TYPE.to_owned(), problem().into());
                    }
                }
            }
        }
    }
}

/// The document, as served at `/openapi.json`.
pub(crate) fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "This API's OpenAPI document")), security(("bearer" = [])))]
pub(crate) async fn openapi(Extension(actor): Extension<Actor>) -> Result<Response, ApiError> {
    authorize(&actor, Verb::Read, None)?;
    Ok(Json(crate::openapi::document()).into_response())
}
