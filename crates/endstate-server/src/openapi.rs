//! The OpenAPI document, generated from the handlers and the wire types.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "endstate API", description = "Declarative, federated operations control plane. Every call needs `Authorization: Bearer <token>`; errors are RFC 9457 problem details."),
    paths(
        crate::routes::submit_revision,
        crate::routes::list_revisions,
        crate::routes::get_revision,
        crate::routes::preview_plan,
        crate::routes::list_changes,
        crate::routes::get_change,
        crate::changes::pause,
        crate::changes::resume,
        crate::changes::abort,
        crate::changes::accept,
        crate::blueprint::in_force_view,
        crate::routes::version,
        crate::changes::rollback,
        crate::changes::scale,
        crate::monitor::list_alerts,
        crate::monitor::ack,
        crate::monitor::bulk,
        crate::monitor::alertmanager,
        crate::monitor::review,
        crate::monitor::create_silence,
        crate::monitor::list_silences,
        crate::monitor::remove_silence,
        crate::routes::list_systems,
        crate::routes::get_system,
        crate::routes::describe_system,
        crate::routes::add_note,
        crate::routes::list_components,
        crate::routes::list_instances,
        crate::routes::list_hosts,
        crate::routes::get_host,
        crate::routes::timeline,
        crate::history::history,
        crate::why::why,
        crate::prometheus::targets,
        crate::stream::stream,
        crate::routes::create_token,
        crate::routes::list_tokens,
        crate::actions::request,
        crate::actions::list,
        crate::actions::get,
        crate::actions::approve,
        crate::actions::cancel,
        crate::routes::revoke_token,
        crate::routes::openapi,
        crate::routes::metrics,
        crate::routes::healthz,
        crate::agents::routes::create_join_token,
        crate::agents::routes::enrol,
        crate::agents::routes::endpoint,
        crate::agents::routes::revoke_host,
        crate::agents::routes::instance_logs,
    ),
    modifiers(&BearerAuth)
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

/// The document, as served at `/openapi.json`.
pub(crate) fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
