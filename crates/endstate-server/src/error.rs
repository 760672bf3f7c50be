//! The server's errors and the one place that maps them to HTTP statuses and problem details.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use endstate_api::{FieldError, PROBLEM_CONTENT_TYPE, Problem, SpecDiagnostic};

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// No bearer token, or one the server does not know.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// A credential other than a bearer token (a join token) was refused; the reason is safe to show.
    #[error("{0}")]
    Unauthorized(String),
    /// The token is known but may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The request could not be read (not JSON, a value of the wrong type, an unknown field or
    /// parameter, a path that is not text): 400, raised only by the extractors. The fields say
    /// where.
    #[error("{detail}")]
    BadRequest { detail: String, errors: Vec<FieldError> },
    /// The request was read, and a value in it is refused for its meaning (a name that breaks
    /// the rules, a reversed window, an unknown action parameter, a target that does not parse):
    /// 422. The fields say where.
    #[error("{detail}")]
    Invalid { detail: String, errors: Vec<FieldError> },
    /// The body is larger than the limit.
    #[error("the request body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// The spec has errors; the diagnostics locate them.
    #[error("the desired state has {n_errors} error(s)")]
    InvalidSpec {
        n_errors: usize,
        diagnostics: Vec<SpecDiagnostic>,
    },
    /// The request conflicts with the current state (e.g. a newer revision than the one previewed).
    #[error("{0}")]
    Conflict(String),
    /// The hosts or the base revision moved since the plan submitted was previewed; each item
    /// says what moved (also in `errors`, under the field `basis`).
    #[error("the actual state moved since the plan was previewed: {}; preview it again", .0.join("; "))]
    BasisMoved(Vec<String>),
    /// The server cannot take this request now (a bounded resource is used up).
    #[error("{0}")]
    Unavailable(String),
    /// The route exists, but not with this method.
    #[error("the method {0} is not allowed on this route; see /openapi.json")]
    MethodNotAllowed(String),
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The client sends too fast.
    #[error("too many requests: at most {per_second} per second with bursts of {burst}; retry after {retry_after_s} s")]
    RateLimited {
        per_second: u32,
        burst: u32,
        retry_after_s: u64,
    },
    /// An action's or a system's run rate limit: too many runs lately; the message says which.
    #[error("{0}")]
    TooManyRuns(String),
    /// The store failed. The details go to the log, never to the client.
    #[error("the store failed")]
    Store(#[source] endstate_store::StoreError),
    /// A bug or an unexpected state. The details go to the log, never to the client.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// A value the handler refuses for its meaning (422), naming its field.
    pub(crate) fn bad_field(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        let field = field.into();
        let message = message.into();
        ApiError::Invalid {
            detail: format!("invalid {field}: {message}"),
            errors: vec![FieldError { field, message }],
        }
    }

    /// A request the extractors could not read (400), naming the field.
    pub(crate) fn malformed(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        let field = field.into();
        let message = message.into();
        ApiError::BadRequest {
            detail: format!("invalid {field}: {message}"),
            errors: vec![FieldError { field, message }],
        }
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthenticated", "Authentication required"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", "Credential refused"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            ApiError::BadRequest { .. } => (StatusCode::BAD_REQUEST, "bad-request", "Bad request"),
            ApiError::Invalid { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-request",
                "Refused for its meaning",
            ),
            ApiError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too-large", "Request body too large"),
            ApiError::InvalidSpec { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-spec",
                "The desired state is invalid",
            ),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            ApiError::BasisMoved(_) => (
                StatusCode::CONFLICT,
                "basis-moved",
                "The actual state moved since the preview",
            ),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable"),
            ApiError::MethodNotAllowed(_) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate-limited", "Too many requests"),
            ApiError::TooManyRuns(_) => (StatusCode::TOO_MANY_REQUESTS, "too-many-runs", "Too many runs"),
            ApiError::Store(_) | ApiError::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal server error")
            }
        }
    }
}

impl From<endstate_store::StoreError> for ApiError {
    fn from(error: endstate_store::StoreError) -> ApiError {
        match error {
            endstate_store::StoreError::StaleParent { expected, found } => ApiError::Conflict(format!(
                "revision {} was submitted after the plan you previewed (made when revision {} was the latest); plan again",
                found.0, expected.0
            )),
            endstate_store::StoreError::Refused { what, reason } => ApiError::Conflict(format!("{what}: {reason}")),
            other => ApiError::Store(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, slug, title) = self.parts();
        if status.is_server_error() {
            // The detail stays in the log; the client gets only the title.
            let detail = match &self {
                ApiError::Internal(detail) => detail.clone(),
                other => crate::chain(other),
            };
            tracing::error!(error = %detail, "Request failed.");
        }
        let (errors, diagnostics) = match &self {
            ApiError::BadRequest { errors, .. } | ApiError::Invalid { errors, .. } => (errors.clone(), Vec::new()),
            ApiError::InvalidSpec { diagnostics, .. } => (Vec::new(), diagnostics.clone()),
            ApiError::BasisMoved(moved) => (
                moved
                    .iter()
                    .map(|message| FieldError {
                        field: "basis".into(),
                        message: message.clone(),
                    })
                    .collect(),
                Vec::new(),
            ),
            _ => (Vec::new(), Vec::new()),
        };
        let problem = Problem {
            kind: format!("https://endstate.dev/problems/{slug}"),
            title: title.to_string(),
            status: status.as_u16(),
            detail: self.to_string(),
            errors,
            diagnostics,
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
        match &self {
            ApiError::Unauthenticated(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"endstate\""),
                );
            }
            ApiError::RateLimited { retry_after_s, .. } => {
                if let Ok(value) = HeaderValue::from_str(&retry_after_s.to_string()) {
                    headers.insert(header::RETRY_AFTER, value);
                }
            }
            _ => {}
        }
        response
    }
}
