//! HTTP routes of the agent link: join tokens, enrolment, revocation and instance logs.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, extract::ConnectInfo};
use endstate_agent_proto::{FromServer, InstanceId, LogsRequest};
use endstate_api::{CreateJoinToken, CreatedJoinToken, EnrolRequest, EnrolResponse, HostView, LogsView};
use endstate_pki::{JoinToken, JoinTokenRecord};
use endstate_store::{HostRecord, JoinTokenRow, NewEvent, StoreError};
use endstate_types::HostName;
use serde::Deserialize;

use crate::AppState;
use crate::auth::{Actor, Verb, authorize};
use crate::error::ApiError;
use crate::extract::{JsonBody, Params, Segment};

/// The longest a join token may live.
const MAX_JOIN_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// How long `logs` waits for the agent.
const LOGS_TIMEOUT: Duration = Duration::from_secs(5);

fn hub(state: &AppState) -> Result<&std::sync::Arc<super::Hub>, ApiError> {
    state
        .hub()
        .ok_or_else(|| ApiError::Unavailable("this server has no agent listener (start it with --agent-listen)".into()))
}

/// `POST /v1/join-tokens` (admin): a one-time join token.
#[utoipa::path(post, path = "/v1/join-tokens", request_body = CreateJoinToken,
    responses((status = 201, body = CreatedJoinToken), (status = 400, body = endstate_api::Problem),
        (status = 401, body = endstate_api::Problem), (status = 403, body = endstate_api::Problem)),
    security(("bearer" = [])))]
pub(crate) async fn create_join_token(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    JsonBody(request): JsonBody<CreateJoinToken>,
) -> Result<(StatusCode, Json<CreatedJoinToken>), ApiError> {
    authorize(&actor, Verb::Administer, None)?;
    let hub = hub(&state)?;
    let ttl = match &request.ttl {
        None => endstate_pki::DEFAULT_JOIN_TTL,
        Some(text) => {
            let ttl = endstate_spec::Duration::parse(text)
                .map_err(|error| ApiError::bad_field("ttl", format!("{text:?}: {error}")))?
                .as_std();
            if ttl.is_zero() || ttl > MAX_JOIN_TTL {
                return Err(ApiError::bad_field(
                    "ttl",
                    format!("{text:?}: expected more than 0s and at most 7d"),
                ));
            }
            ttl
        }
    };
    for (key, value) in &request.labels {
        endstate_types::validate_name(key).map_err(|e| ApiError::bad_field(format!("labels.{key}"), e.to_string()))?;
        if value.is_empty() || value.len() > 63 {
            return Err(ApiError::bad_field(
                format!("labels.{key}"),
                "a label value has 1 to 63 characters",
            ));
        }
    }
    if let Some(host) = &request.host {
        endstate_types::validate_name(host).map_err(|e| ApiError::bad_field("host", e.to_string()))?;
    }
    let now = crate::clock::system_now_ms();
    let (secret, record) = JoinToken::generate(now, ttl, request.labels.clone())
        .map_err(|e| ApiError::Internal(format!("cannot make a join token: {e}")))?;
    state
        .store()
        .put_join_token(JoinTokenRow {
            hash_hex: record.hash_hex.clone(),
            labels: request.labels.clone(),
            host: request.host.clone(),
            created_ms: now,
            created_by: actor.name.clone(),
            expires_ms: record.expires_at,
            used_ms: None,
            used_by: None,
        })
        .await?;
    state
        .store()
        .append_events(vec![NewEvent {
            actor: Some(actor.name.clone()),
            host: request.host.clone(),
            ..NewEvent::of(
                now,
                &endstate_events::Event::JoinTokenCreated(endstate_events::JoinTokenCreated {
                    labels: request.labels.clone(),
                    host: request.host.clone(),
                    expires: crate::rfc3339(record.expires_at),
                }),
                format!("join token created by {}", actor.name),
            )
        }])
        .await?;
    state.written();
    Ok((
        StatusCode::CREATED,
        Json(CreatedJoinToken {
            secret: secret.expose().to_owned(),
            expires: crate::rfc3339(record.expires_at),
            labels: request.labels,
            host: request.host,
            ca_sha256: hub.tls.ca_sha256.clone(),
        }),
    ))
}

/// `POST /v1/agents/enrol` (no bearer token: the join token is the credential).
#[utoipa::path(post, path = "/v1/agents/enrol", request_body = EnrolRequest,
    responses((status = 201, body = EnrolResponse), (status = 400, body = endstate_api::Problem),
        (status = 401, body = endstate_api::Problem), (status = 409, body = endstate_api::Problem),
        (status = 429, body = endstate_api::Problem)),
    security(()))]
pub(crate) async fn enrol(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    JsonBody(request): JsonBody<EnrolRequest>,
) -> Result<(StatusCode, Json<EnrolResponse>), ApiError> {
    let hub = hub(&state)?;
    let now = crate::clock::system_now_ms();
    endstate_types::validate_name(&request.host).map_err(|e| ApiError::bad_field("host", e.to_string()))?;
    let hash = endstate_pki::join_hash(&request.join_token);
    let Some(row) = state.store().find_join_token(&hash).await? else {
        return Err(refuse_enrol(&state, peer, &request.host, "the join token is unknown".into()).await);
    };
    let record = JoinTokenRecord {
        hash_hex: row.hash_hex.clone(),
        expires_at: row.expires_ms,
        labels: row.labels.clone(),
    };
    if let Err(error) = record.check(&request.join_token, now, row.used_ms.is_some()) {
        // The error names the join token itself ("the join token was already used").
        return Err(refuse_enrol(&state, peer, &request.host, error.to_string()).await);
    }
    if let Some(fixed) = &row.host
        && fixed != &request.host
    {
        return Err(refuse_enrol(
            &state,
            peer,
            &request.host,
            format!("the join token is for host {fixed}, not {}", request.host),
        )
        .await);
    }
    let name = HostName(request.host.clone());
    if let Some(agent) = state.store().get_agent(&name).await?
        && agent.revoked_ms.is_none()
    {
        return Err(ApiError::Conflict(format!(
            "host {} is already enrolled; revoke it first (endstate hosts revoke {})",
            request.host, request.host
        )));
    }
    let issued = hub
        .tls
        .ca
        .sign_agent(&request.csr_pem, &request.host, now, hub.config.cert_lifetime)
        .map_err(|e| ApiError::bad_field("csr_pem", e.to_string()))?;
    // The token's labels win: the operator decides what a host is, not the host.
    let mut labels = request.labels.clone();
    labels.extend(row.labels.clone());
    let event = NewEvent {
        host: Some(request.host.clone()),
        actor: Some(format!("agent:{}", request.host)),
        ..NewEvent::of(
            now,
            &endstate_events::Event::AgentEnrolled(endstate_events::AgentEnrolled {
                peer: peer.to_string(),
                labels: labels.clone(),
                serial: issued.serial.clone(),
                token_by: row.created_by.clone(),
            }),
            format!("host {} enrolled from {peer}", request.host),
        )
    };
    let host = HostRecord {
        name: name.clone(),
        labels: labels.clone(),
        facts: serde_json::json!({}),
        last_seen_ms: None,
        retired_ms: None,
    };
    match state
        .store()
        .enrol_agent(&hash, now, host, issued.serial.clone(), vec![event])
        .await
    {
        Ok(_) => {}
        Err(StoreError::Refused { reason, .. }) => {
            return Err(refuse_enrol(&state, peer, &request.host, format!("the join token: {reason}")).await);
        }
        Err(error) => return Err(error.into()),
    }
    state.written();
    tracing::info!(host = request.host, %peer, "Agent enrolled.");
    Ok((
        StatusCode::CREATED,
        Json(EnrolResponse {
            host: request.host,
            cert_pem: issued.cert_pem,
            ca_pem: hub.tls.ca_pem.clone(),
            agent_url: hub.agent_url(),
            labels,
        }),
    ))
}

/// `POST /v1/agents/endpoint` (no bearer token: the agent's certificate and a fresh signature by
/// its key are the credential): where an enrolled, unrevoked agent connects now, for an agent
/// whose server moved (it keeps trusting only its pinned CA on the link).
#[utoipa::path(post, path = "/v1/agents/endpoint", request_body = endstate_api::EndpointRequest,
    responses((status = 200, body = endstate_api::EndpointResponse), (status = 400, body = endstate_api::Problem),
        (status = 401, body = endstate_api::Problem), (status = 429, body = endstate_api::Problem)),
    security(()))]
pub(crate) async fn endpoint(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    JsonBody(request): JsonBody<endstate_api::EndpointRequest>,
) -> Result<Json<endstate_api::EndpointResponse>, ApiError> {
    let hub = hub(&state)?;
    let now = crate::clock::system_now_ms();
    let refused = |reason: String| {
        tracing::warn!(%peer, host = request.host, reason, "Endpoint request refused.");
        ApiError::Unauthorized(format!("the agent endpoint is refused: {reason}"))
    };
    // `abs_diff`: any i64 the request carries, however far off, without overflow.
    if (now / 1000).abs_diff(request.unix_s) > 300 {
        return Err(refused(format!(
            "the request was made at {} s, the server's clock says {} s (more than 5 minutes apart)",
            request.unix_s,
            now / 1000
        )));
    }
    let signature = (0..request.signature_hex.len())
        .step_by(2)
        .map(|i| {
            request
                .signature_hex
                .get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(|| ApiError::bad_field("signature_hex", "not hex".to_owned()))?;
    let message = endstate_api::endpoint_message(&request.host, request.unix_s);
    let identity =
        endstate_pki::verify_agent_signature(&hub.tls.ca_pem, &request.cert_pem, now, message.as_bytes(), &signature)
            .map_err(|e| refused(e.to_string()))?;
    if identity.host_name != request.host {
        return Err(refused(format!("the certificate is host {}'s", identity.host_name)));
    }
    match state.store().get_agent(&HostName(request.host.clone())).await? {
        Some(agent) if agent.revoked_ms.is_none() => {}
        Some(_) => return Err(refused(format!("host {} is revoked", request.host))),
        None => return Err(refused(format!("host {} is not enrolled", request.host))),
    }
    Ok(Json(endstate_api::EndpointResponse {
        agent_url: hub.agent_url(),
    }))
}

/// Records a refused enrolment (log and timeline) and the error to answer.
async fn refuse_enrol(state: &AppState, peer: std::net::SocketAddr, host: &str, reason: String) -> ApiError {
    tracing::warn!(%peer, host, reason, "Enrolment refused.");
    let event = NewEvent {
        host: Some(host.to_owned()),
        actor: Some(format!("peer:{}", peer.ip())),
        ..NewEvent::of(
            crate::clock::system_now_ms(),
            &endstate_events::Event::AgentEnrolRefused(endstate_events::PeerRefused {
                peer: peer.to_string(),
                reason: reason.clone(),
            }),
            format!("enrolment of {host} from {peer} refused: {reason}"),
        )
    };
    if state.store().append_events(vec![event]).await.is_ok() {
        state.written();
    }
    ApiError::Unauthorized(format!("enrolment refused: {reason}"))
}

/// `POST /v1/hosts/{host}/revoke` (admin).
#[utoipa::path(post, path = "/v1/hosts/{host}/revoke", params(("host" = String, Path, description = "The host")),
    responses((status = 200, body = HostView), (status = 401, body = endstate_api::Problem),
        (status = 403, body = endstate_api::Problem), (status = 404, body = endstate_api::Problem)),
    security(("bearer" = [])))]
pub(crate) async fn revoke_host(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Segment(host): Segment,
) -> Result<Json<HostView>, ApiError> {
    authorize(&actor, Verb::Administer, None)?;
    let name = HostName(host.clone());
    let now = crate::clock::system_now_ms();
    let event = NewEvent {
        host: Some(host.clone()),
        actor: Some(actor.name.clone()),
        ..NewEvent::of(
            now,
            &endstate_events::Event::AgentRevoked(endstate_events::Empty {}),
            format!("host {host} revoked by {}", actor.name),
        )
    };
    match state.store().revoke_agent(&name, now, vec![event]).await {
        Ok(_) => {}
        Err(StoreError::NotFound { .. }) => {
            return Err(ApiError::NotFound(format!("host {host} has no enrolled agent")));
        }
        Err(error) => return Err(error.into()),
    }
    if let Some(hub) = state.hub() {
        if let Some(conn) = hub.connection(&host) {
            let _ = conn
                .tx
                .send(FromServer::Revoke(endstate_agent_proto::Revoke {
                    reason: format!("revoked by {}", actor.name),
                }))
                .await;
            // Give the writer a moment to deliver the frame before the connection closes.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        hub.disconnect(&host);
        hub.refresh(&state).await?;
    }
    state.written();
    let views = crate::hosts::host_views(&state).await?;
    views
        .into_iter()
        .find(|v| v.name == host)
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("host {host}")))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct LogsParams {
    /// The instance, `system/component#slot`.
    #[param(pattern = r"^[a-z0-9][a-z0-9._-]{0,62}/[a-z0-9][a-z0-9._-]{0,62}#[0-9]{1,9}$")]
    pub(crate) instance: String,
}

/// `GET /v1/hosts/{host}/logs?instance=…` (admin: output may hold secrets).
#[utoipa::path(get, path = "/v1/hosts/{host}/logs",
    params(("host" = String, Path, description = "The host"), LogsParams),
    responses((status = 200, body = LogsView), (status = 400, body = endstate_api::Problem),
        (status = 401, body = endstate_api::Problem), (status = 403, body = endstate_api::Problem),
        (status = 404, body = endstate_api::Problem), (status = 409, description = "the host is not connected", body = endstate_api::Problem),
        (status = 503, description = "the host's agent did not answer in time", body = endstate_api::Problem)),
    security(("bearer" = [])))]
pub(crate) async fn instance_logs(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Segment(host): Segment,
    Params(params): Params<LogsParams>,
) -> Result<Json<LogsView>, ApiError> {
    let system = params.instance.split('/').next().unwrap_or_default().to_owned();
    authorize(&actor, Verb::Administer, Some(&system))?;
    let hub = hub(&state)?;
    let Some(conn) = hub.connection(&host) else {
        // The host's state, not the server's: a conflict the caller can wait out, not a 5xx.
        return Err(ApiError::Conflict(format!("host {host} is not connected")));
    };
    let instance = InstanceId(params.instance.clone());
    let request = hub.next_id();
    let answer = hub.expect_logs(request, &host);
    let message = FromServer::LogsRequest(LogsRequest {
        request,
        instance: instance.clone(),
    });
    if endstate_agent_proto::encode(&message).is_err() {
        hub.forget_logs(request);
        return Err(ApiError::bad_field(
            "instance",
            format!("{:?} is not an instance id like system/component#0", params.instance),
        ));
    }
    if conn.tx.send(message).await.is_err() {
        hub.forget_logs(request);
        return Err(ApiError::Unavailable(format!("host {host} disconnected")));
    }
    let logs = match tokio::time::timeout(LOGS_TIMEOUT, answer).await {
        Ok(Ok(logs)) => logs,
        _ => {
            hub.forget_logs(request);
            return Err(ApiError::Unavailable(format!("host {host} did not answer within 5 s")));
        }
    };
    if !logs.found {
        return Err(ApiError::NotFound(format!("host {host} runs no instance {instance}")));
    }
    Ok(Json(LogsView {
        host,
        instance: logs.instance.0,
        stdout: logs.stdout,
        stderr: logs.stderr,
        stdout_total: logs.stdout_total,
        stderr_total: logs.stderr_total,
    }))
}
