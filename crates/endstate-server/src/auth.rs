//! Authentication (bearer tokens, stored hashed) and authorisation, asked in one place as
//! "may this actor do this verb on this system".
//!
//! # Guarantees
//! - Every route but `/healthz` needs a valid token; a missing, unknown or revoked token is a 401.
//! - Secrets are 32 random bytes, shown once; the store keeps only their SHA-256 (a fast hash is
//!   right for high-entropy secrets, and keeps a lookup per request cheap).
//!
//! - Roles grow: `viewer` reads; `operator` also makes changes and operates (runs actions,
//!   acknowledges and silences alerts, adds notes); `approver` also approves other people's runs;
//!   `admin` also manages tokens and hosts. A token may be scoped to systems: then every verb but
//!   reading needs one of them named, and verbs about no system in particular (submitting a whole
//!   revision, managing tokens) are refused.
//!
//! # Caveats
//! - Reading is not scoped: a scoped token still reads every system. Scope is exact: a token for an
//!   aggregate does not reach its subsystems. Single sign-on and groups come later and produce the
//!   same [`Actor`], so [`authorize`] stays the one place to ask.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use endstate_store::TokenRecord;
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::error::ApiError;

/// The prefix of every secret, so a leaked one is recognisable by secret scanners.
const SECRET_PREFIX: &str = "es_";

/// Who is calling, as established from their token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Actor {
    /// The token's name; it appears on the timeline for everything the actor does.
    pub(crate) name: String,
    pub(crate) role: Role,
    /// The systems the actor may act on; empty: every system.
    pub(crate) systems: Vec<String>,
}

/// What a token may do, each role everything the one before may and more.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Role {
    /// Reads everything, changes nothing.
    Viewer,
    /// Makes changes and operates: runs actions, acknowledges and silences alerts, adds notes.
    Operator,
    /// An operator who may also approve other people's runs.
    Approver,
    /// Everything, including tokens and hosts.
    Admin,
}

/// What an actor wants to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verb {
    /// Read state, the timeline, metrics.
    Read,
    /// Submit revisions and steer changes (pause, resume, abort, roll back, scale).
    Write,
    /// Run actions, acknowledge and silence alerts, add notes.
    Operate,
    /// Approve a run someone else asked for.
    Approve,
    /// Manage tokens and hosts.
    Administer,
}

impl Verb {
    fn least_role(self) -> Role {
        match self {
            Verb::Read => Role::Viewer,
            Verb::Write | Verb::Operate => Role::Operator,
            Verb::Approve => Role::Approver,
            Verb::Administer => Role::Admin,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Verb::Read => "read",
            Verb::Write => "make changes",
            Verb::Operate => "operate (run actions, acknowledge, silence, add notes)",
            Verb::Approve => "approve runs",
            Verb::Administer => "manage tokens and hosts",
        }
    }
}

impl Role {
    pub(crate) const NAMES: &'static str = "viewer, operator, approver or admin";

    pub(crate) fn parse(word: &str) -> Option<Role> {
        match word {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "approver" => Some(Role::Approver),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }
}

/// The one authorisation decision: may `actor` do `verb` on `system` (`None`: no system in
/// particular, or all of them).
pub(crate) fn authorize(actor: &Actor, verb: Verb, system: Option<&str>) -> Result<(), ApiError> {
    let on = system.map(|s| format!(" on system {s}")).unwrap_or_default();
    if actor.role < verb.least_role() {
        return Err(ApiError::Forbidden(format!(
            "token {:?} has role {} which may not {}{on}; that needs {} or more",
            actor.name,
            actor.role.as_str(),
            verb.as_str(),
            verb.least_role().as_str(),
        )));
    }
    if verb == Verb::Read || actor.systems.is_empty() {
        return Ok(());
    }
    match system {
        Some(system) if actor.systems.iter().any(|s| s == system) => Ok(()),
        Some(system) => Err(ApiError::Forbidden(format!(
            "token {:?} may {} only on systems {}, not on {system}",
            actor.name,
            verb.as_str(),
            actor.systems.join(", ")
        ))),
        None => Err(ApiError::Forbidden(format!(
            "token {:?} is limited to systems {} and may not {} beyond them",
            actor.name,
            actor.systems.join(", "),
            verb.as_str()
        ))),
    }
}

/// A new random secret.
pub(crate) fn new_secret() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|error| ApiError::Internal(format!("no randomness: {error}")))?;
    Ok(format!("{SECRET_PREFIX}{}", hex(&bytes)))
}

/// The SHA-256 of a secret, in hex: what the store keeps.
pub(crate) fn hash_secret(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// Creates the first admin token if the store has none. Returns its secret, to be shown once.
pub(crate) async fn bootstrap_admin(state: &AppState) -> Result<Option<String>, ApiError> {
    if state.store().count_tokens().await? > 0 {
        return Ok(None);
    }
    let secret = new_secret()?;
    state
        .store()
        .put_token(TokenRecord {
            id: hash_secret(&secret)[..16].to_string(),
            name: "admin".to_string(),
            role: Role::Admin.as_str().to_string(),
            hash_hex: hash_secret(&secret),
            created_ms: state.now_ms(),
            revoked: false,
            systems: Vec::new(),
        })
        .await?;
    Ok(Some(secret))
}

/// Middleware: rate-limits per client, then authenticates the bearer token and puts the [`Actor`]
/// into the request's extensions.
pub(crate) async fn require_token(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_string(), |info| info.0.ip().to_string());
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|value| value.to_str().map(str::to_owned));
    match authenticate(&state, &peer, header).await {
        Ok(actor) => {
            request.extensions_mut().insert(actor);
            next.run(request).await
        }
        Err(error) => axum::response::IntoResponse::into_response(error),
    }
}

/// Rate limits a route that authenticates by other means (enrolment's join token) by the
/// caller's address, before anything else is done.
pub(crate) async fn limit_by_peer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_string(), |info| info.0.ip().to_string());
    match state.limiter().check(&format!("peer:{peer}")) {
        Ok(()) => next.run(request).await,
        Err(error) => axum::response::IntoResponse::into_response(error),
    }
}

/// Authenticates a request.
///
/// Rate limits: a caller who has proven who they are draws from their token's bucket; one who
/// has not draws from their address's bucket, every failed attempt costs a request from it, and
/// an empty bucket stops an attempt before the store is asked. So neither made-up tokens nor a
/// flood of anonymous calls can bypass the limit or load the store.
async fn authenticate(
    state: &AppState,
    peer: &str,
    header: Option<Result<String, axum::http::header::ToStrError>>,
) -> Result<Actor, ApiError> {
    let peer_key = format!("peer:{peer}");
    let refuse = |error: ApiError| -> Result<Actor, ApiError> {
        state.limiter().check(&peer_key)?;
        Err(error)
    };
    let secret = match &header {
        None => {
            return refuse(ApiError::Unauthenticated(
                "this call needs a bearer token (Authorization: Bearer <token>); `endstate dev` prints one",
            ));
        }
        Some(Err(_)) => return refuse(ApiError::Unauthenticated("the Authorization header is not valid text")),
        Some(Ok(value)) => match value.split_once(' ') {
            Some((scheme, secret)) if scheme.eq_ignore_ascii_case("bearer") => secret.trim(),
            _ => {
                return refuse(ApiError::Unauthenticated(
                    "the Authorization header must be `Bearer <token>`",
                ));
            }
        },
    };
    let well_formed = secret.len() == SECRET_PREFIX.len() + 64
        && secret.starts_with(SECRET_PREFIX)
        && secret[SECRET_PREFIX.len()..].bytes().all(|b| b.is_ascii_hexdigit());
    if !well_formed {
        return refuse(ApiError::Unauthenticated(
            "the bearer token is not known to this server",
        ));
    }
    state.limiter().peek(&peer_key)?;
    let Some(record) = state.store().find_token(&hash_secret(secret)).await? else {
        return refuse(ApiError::Unauthenticated(
            "the bearer token is not known to this server",
        ));
    };
    if record.revoked {
        return refuse(ApiError::Unauthenticated("the bearer token was revoked"));
    }
    state.limiter().check(&format!("token:{}", record.id))?;
    let role = Role::parse(&record.role)
        .ok_or_else(|| ApiError::Internal(format!("token {:?} has an unknown role {:?}", record.name, record.role)))?;
    Ok(Actor {
        name: record.name,
        role,
        systems: record.systems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(role: Role, systems: &[&str]) -> Actor {
        Actor {
            name: "t".into(),
            role,
            systems: systems.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn each_role_may_what_the_one_before_may_and_more() {
        let viewer = actor(Role::Viewer, &[]);
        assert!(authorize(&viewer, Verb::Read, None).is_ok());
        assert!(
            matches!(authorize(&viewer, Verb::Write, Some("shop")), Err(ApiError::Forbidden(m)) if m.contains("on system shop") && m.contains("needs operator"))
        );
        let operator = actor(Role::Operator, &[]);
        assert!(authorize(&operator, Verb::Operate, Some("shop")).is_ok());
        assert!(authorize(&operator, Verb::Write, None).is_ok());
        assert!(
            matches!(authorize(&operator, Verb::Approve, Some("shop")), Err(ApiError::Forbidden(m)) if m.contains("needs approver"))
        );
        let approver = actor(Role::Approver, &[]);
        assert!(authorize(&approver, Verb::Approve, Some("shop")).is_ok());
        assert!(authorize(&approver, Verb::Administer, None).is_err());
        assert!(authorize(&actor(Role::Admin, &[]), Verb::Administer, None).is_ok());
    }

    #[test]
    fn a_scoped_token_acts_only_on_its_systems_but_reads_everything() {
        let scoped = actor(Role::Approver, &["shop", "billing"]);
        assert!(authorize(&scoped, Verb::Operate, Some("billing")).is_ok());
        assert!(authorize(&scoped, Verb::Read, Some("search")).is_ok());
        assert!(authorize(&scoped, Verb::Read, None).is_ok());
        assert!(
            matches!(authorize(&scoped, Verb::Approve, Some("search")), Err(ApiError::Forbidden(m)) if m.contains("only on systems shop, billing, not on search"))
        );
        assert!(
            matches!(authorize(&scoped, Verb::Write, None), Err(ApiError::Forbidden(m)) if m.contains("limited to systems shop, billing"))
        );
        let admin = actor(Role::Admin, &["shop"]);
        assert!(
            authorize(&admin, Verb::Administer, None).is_err(),
            "a scoped admin manages no tokens"
        );
    }

    #[test]
    fn secrets_are_random_and_hashed() {
        let (Ok(a), Ok(b)) = (new_secret(), new_secret()) else {
            panic!("no randomness")
        };
        assert_ne!(a, b);
        assert!(a.starts_with("es_") && a.len() == 3 + 64);
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
