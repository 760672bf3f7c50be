//! What handlers share: extractors whose errors name the field (`JsonBody`, `Params`,
//! `Segment`), times and cursors in query strings, and paging by key.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use endstate_api::{MAX_BODY_BYTES, Page};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use utoipa::IntoParams;

use crate::error::ApiError;

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
                other => ApiError::malformed("body", other.body_text()),
            })?;
        let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
            let path = error.path().to_string();
            let field = if path == "." { "body".to_string() } else { path };
            ApiError::malformed(field, error.into_inner().to_string())
        })?;
        Ok(JsonBody(value))
    }
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct PageParams {
    /// The `next` of the previous page.
    pub(crate) cursor: Option<String>,
    /// At most this many items (default 100, at most 1000).
    #[serde(default, deserialize_with = "crate::extract::limit")]
    #[param(minimum = 1, maximum = 1000)]
    pub(crate) limit: Option<u32>,
    /// For changes: only those not terminal.
    pub(crate) open: Option<bool>,
}

/// A `limit` query parameter: from 1 to 1000 (the page sizes the store serves), refused
/// otherwise rather than quietly changed, so a client learns its page is not the one it asked for.
pub(crate) fn limit<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    match Option::<u32>::deserialize(deserializer)? {
        Some(n) if !(1..=1000).contains(&n) => Err(serde::de::Error::custom(format!("is {n}; expected 1 to 1000"))),
        limit => Ok(limit),
    }
}

/// A `depth` query parameter: from 0 to 1000 (deeper than any tree of systems a spec can hold).
pub(crate) fn depth<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<usize>, D::Error> {
    match Option::<u64>::deserialize(deserializer)? {
        Some(n) if n > 1000 => Err(serde::de::Error::custom(format!("is {n}; expected 0 to 1000"))),
        depth => Ok(depth.and_then(|n| usize::try_from(n).ok())),
    }
}

/// A timeline position (`after`): what the store can hold, up to `i64::MAX`.
pub(crate) fn seq<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    match Option::<u64>::deserialize(deserializer)? {
        Some(n) if i64::try_from(n).is_err() => Err(serde::de::Error::custom(format!(
            "is {n}; expected at most {}",
            i64::MAX
        ))),
        seq => Ok(seq),
    }
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
            .map_err(|rejection| ApiError::malformed("path", rejection.body_text()))
    }
}

/// Query parameters whose errors name the parameter that is wrong (`limit`, `since`). A text
/// parameter given empty (`?system=&kind=`, as a form sends a field left blank) is absent; an
/// empty number or flag (`?limit=`) is refused, as the OpenAPI document says.
pub(crate) struct Params<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let raw = parts.uri.query().unwrap_or("");
        let blank: Vec<String> = form_urlencoded::parse(raw.as_bytes())
            .filter(|(_, value)| value.is_empty())
            .map(|(name, _)| name.into_owned())
            .collect();
        if !blank.is_empty() {
            // Read as given: a blank that cannot be read as its parameter is not text.
            let as_given = serde_urlencoded::Deserializer::new(form_urlencoded::parse(raw.as_bytes()));
            if let Err(error) = serde_path_to_error::deserialize::<_, T>(as_given) {
                let path = error.path().to_string();
                if blank.contains(&path) {
                    return Err(ApiError::malformed(path, format!("is empty: {}", error.into_inner())));
                }
            }
        }
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
                ApiError::malformed(field, message)
            })
    }
}

pub(crate) fn parse_cursor(cursor: Option<&str>) -> Result<Option<u64>, ApiError> {
    cursor
        .map(|text| {
            text.parse::<u64>()
                .map_err(|_| ApiError::bad_field("cursor", format!("{text:?} is not a cursor this server gave")))
        })
        .transpose()
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// The `next` of the previous page.
    pub(crate) cursor: Option<String>,
    /// At most this many items (default 500, at most 1000).
    #[serde(default, deserialize_with = "crate::extract::limit")]
    #[param(minimum = 1, maximum = 1000)]
    pub(crate) limit: Option<u32>,
}

/// The default and largest page of the lists keyed by name.
pub(crate) const LIST_PAGE: (u32, u32) = (500, 1000);

/// One page of a list ordered by `key`: the items after the `cursor` key, at most `limit`.
/// The cursor is the key of the last item, so a page boundary never skips or repeats an item
/// even when items are added or removed between calls.
pub(crate) fn page_by_key<T>(
    mut items: Vec<T>,
    key: impl Fn(&T) -> String,
    cursor: Option<String>,
    limit: Option<u32>,
) -> Page<T> {
    let limit = limit.unwrap_or(LIST_PAGE.0).min(LIST_PAGE.1) as usize;
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
