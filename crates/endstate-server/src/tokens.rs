//! API tokens: create, list, revoke.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use endstate_api::{CreateToken, CreatedToken, TokenView};
use endstate_store::{NewEvent, TokenRecord};

use crate::AppState;
use crate::auth::{self, Actor, Role, Verb, authorize};
use crate::error::ApiError;
use crate::extract::JsonBody;

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
    let now = state.now_ms();
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
            ..NewEvent::of(
                now,
                &endstate_events::Event::TokenCreated(endstate_events::TokenCreated {
                    name: request.name.clone(),
                    role: role.as_str().to_owned(),
                    systems: request.systems.clone(),
                }),
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

/// Revokes every token of a name: from now on it is refused (401, "revoked"). The last admin
/// token is not revoked (409): nobody could administer the server until an offline reset.
#[utoipa::path(post, path = "/v1/tokens/{name}/revoke", params(("name" = String, Path, description = "the token's name")),
    responses((status = 200, body = TokenView), (status = 403, body = endstate_api::Problem), (status = 404, body = endstate_api::Problem),
        (status = 409, description = "the last admin token", body = endstate_api::Problem)), security(("bearer" = [])))]
pub(crate) async fn revoke_token(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<Json<TokenView>, ApiError> {
    authorize(&actor, Verb::Administer, None)?;
    let tokens = state.store().list_tokens().await?;
    // Revoking every admin token would lock everyone out until an offline reset: refused.
    let admins_left = tokens
        .iter()
        .filter(|t| !t.revoked && t.role == "admin" && t.name != name)
        .count();
    let live: Vec<TokenRecord> = tokens.into_iter().filter(|t| t.name == name && !t.revoked).collect();
    let Some(last) = live.last().cloned() else {
        return Err(ApiError::NotFound(format!(
            "no token named {name:?} that is not revoked"
        )));
    };
    if admins_left == 0 && live.iter().any(|t| t.role == "admin") {
        return Err(ApiError::Conflict(format!(
            "{name:?} is the last admin token: create another admin token first (`endstate token create --role admin`)"
        )));
    }
    for token in live {
        state.store().put_token(TokenRecord { revoked: true, ..token }).await?;
    }
    state
        .store()
        .append_events(vec![NewEvent {
            systems: last.systems.clone(),
            actor: Some(actor.name.clone()),
            ..NewEvent::of(
                state.now_ms(),
                &endstate_events::Event::TokenRevoked(endstate_events::TokenRevoked {
                    name: name.clone(),
                    role: last.role.as_str().to_owned(),
                }),
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
