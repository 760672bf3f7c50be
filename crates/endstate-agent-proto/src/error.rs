//! Why a frame was refused, on decode or on encode.

use crate::message::VersionRange;

/// Why a frame cannot be decoded, or a message cannot be encoded.
///
/// Every variant names what was wrong and where; a bound names the field path inside the message
/// (`instances[3].env.PATH`) and the limit.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The frame is larger than [`MAX_FRAME_BYTES`](crate::limits::MAX_FRAME_BYTES); nothing was parsed.
    #[error("frame of {len} bytes, at most {max}")]
    FrameTooLarge {
        /// The frame's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The frame is not a JSON object (syntax error, not UTF-8, too deeply nested, not an object).
    #[error("malformed frame: {detail}")]
    Malformed {
        /// What the JSON parser said, with line and column.
        detail: String,
    },
    /// The envelope's `v` is missing, not a number, or a version this side does not speak.
    #[error("protocol version {}, this side speaks {supported}", found.as_deref().unwrap_or("missing"))]
    Version {
        /// The `v` found, as written (absent when there was none).
        found: Option<String>,
        /// The versions this side speaks.
        supported: VersionRange,
    },
    /// The envelope's `type` is missing or not a string.
    #[error("the frame has no \"type\" string")]
    MissingType,
    /// The `type` is not one this side receives.
    #[error("unknown message type {found:?}")]
    UnknownType {
        /// The `type` found.
        found: String,
    },
    /// The message does not have the shape of its type: a missing field, an unknown field, a
    /// wrong type of value.
    #[error("{message_type}: {detail}")]
    Shape {
        /// The message type.
        message_type: String,
        /// What the deserializer said (it names the field).
        detail: String,
    },
    /// A list has too many items.
    #[error("{field}: {len} items, at most {max}")]
    TooMany {
        /// The field path inside the message.
        field: String,
        /// How many were found.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A string is too long.
    #[error("{field}: {len} bytes, at most {max}")]
    TooLong {
        /// The field path inside the message.
        field: String,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A value breaks a rule other than a size (an id's form, an order, a range).
    #[error("{field}: {reason}")]
    Invalid {
        /// The field path inside the message.
        field: String,
        /// The rule broken, with the value found.
        reason: String,
    },
    /// The message could not be serialized (not expected with these types; kept rather than a panic).
    #[error("cannot serialize a {message_type} message")]
    Encode {
        /// The message type.
        message_type: &'static str,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
}
