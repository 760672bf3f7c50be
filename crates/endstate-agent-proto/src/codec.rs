//! Frames: the envelope `{"v": 1, "type": "...", ...}`, size checked first, bounds checked after.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::ProtoError;
use crate::limits::MAX_FRAME_BYTES;
use crate::message::{FromAgent, FromServer, VersionRange};
use crate::validate;

/// The protocol version this crate writes, and the newest it reads.
pub const PROTOCOL_VERSION: u16 = 1;

/// The oldest protocol version this crate reads.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// The versions this crate speaks, `MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION`.
pub const SUPPORTED_VERSIONS: VersionRange = VersionRange::new(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION);

/// A message of either direction: what [`encode`] accepts. Sealed: only [`FromAgent`] and
/// [`FromServer`] are messages.
pub trait Message: Serialize + sealed::Sealed {
    /// The `type` word of this message on the wire.
    fn type_name(&self) -> &'static str;
    /// Checks every bound and rule.
    ///
    /// # Errors
    /// The first bound or rule broken, with its field path.
    fn validate(&self) -> Result<(), ProtoError>;
}

/// The envelope written around every message: `v` first, then the message with its `type`.
#[derive(Serialize)]
struct Envelope<'a, M> {
    v: u16,
    #[serde(flatten)]
    message: &'a M,
}

/// A frame split into its envelope and the rest of its object (`type` included, for serde's tag).
struct Parsed {
    version: Option<Value>,
    kind: String,
    object: Map<String, Value>,
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::FromAgent {}
    impl Sealed for crate::FromServer {}
}

/// Decodes a frame an agent sent.
///
/// # Errors
/// In this order: [`ProtoError::FrameTooLarge`] (nothing parsed), [`ProtoError::Malformed`],
/// [`ProtoError::MissingType`], [`ProtoError::Version`] (`hello` is read whatever its `v`),
/// [`ProtoError::UnknownType`], [`ProtoError::Shape`], then the bounds
/// ([`ProtoError::TooMany`], [`ProtoError::TooLong`], [`ProtoError::Invalid`]).
pub fn decode_from_agent(frame: &[u8]) -> Result<FromAgent, ProtoError> {
    const TYPES: &[&str] = &[
        "hello",
        "facts",
        "keepalive",
        "observations",
        "actual_state",
        "logs",
        "renew",
        "action_output",
    ];
    let message: FromAgent = decode(frame, TYPES, &["hello"])?;
    validate::from_agent(&message)?;
    Ok(message)
}

/// Decodes a frame the server sent.
///
/// # Errors
/// As [`decode_from_agent`]; `welcome` and `refused` are read whatever their `v`.
pub fn decode_from_server(frame: &[u8]) -> Result<FromServer, ProtoError> {
    const TYPES: &[&str] = &[
        "welcome",
        "refused",
        "ack",
        "desired_instances",
        "revoke",
        "ping",
        "logs_request",
        "certificate",
        "run_action",
        "cancel_action",
    ];
    let message: FromServer = decode(frame, TYPES, &["welcome", "refused"])?;
    validate::from_server(&message)?;
    Ok(message)
}

/// Encodes a message as one frame, in [`PROTOCOL_VERSION`].
///
/// # Errors
/// The first bound or rule the message breaks, or [`ProtoError::FrameTooLarge`] when the frame
/// would exceed [`MAX_FRAME_BYTES`]: what the peer would refuse is never produced.
pub fn encode<M: Message>(message: &M) -> Result<Vec<u8>, ProtoError> {
    message.validate()?;
    let envelope = Envelope {
        v: PROTOCOL_VERSION,
        message,
    };
    let frame = serde_json::to_vec(&envelope).map_err(|source| ProtoError::Encode {
        message_type: message.type_name(),
        source,
    })?;
    if frame.len() > MAX_FRAME_BYTES {
        return Err(ProtoError::FrameTooLarge {
            len: frame.len(),
            max: MAX_FRAME_BYTES,
        });
    }
    Ok(frame)
}

// === impl Message ===

impl Message for FromAgent {
    fn type_name(&self) -> &'static str {
        FromAgent::type_name(self)
    }
    fn validate(&self) -> Result<(), ProtoError> {
        validate::from_agent(self)
    }
}

impl Message for FromServer {
    fn type_name(&self) -> &'static str {
        FromServer::type_name(self)
    }
    fn validate(&self) -> Result<(), ProtoError> {
        validate::from_server(self)
    }
}

// === decoding ===

/// Size, JSON, envelope, version, then shape. The handshake types are read whatever their `v`.
fn decode<T: DeserializeOwned>(frame: &[u8], types: &[&str], handshake: &[&str]) -> Result<T, ProtoError> {
    let Parsed { version, kind, object } = envelope(frame)?;
    check_version(version.as_ref(), handshake.contains(&kind.as_str()))?;
    shape(kind, object, types)
}

/// Splits a frame into its `v` (as found), its `type` and the rest of the object.
fn envelope(frame: &[u8]) -> Result<Parsed, ProtoError> {
    if frame.len() > MAX_FRAME_BYTES {
        return Err(ProtoError::FrameTooLarge {
            len: frame.len(),
            max: MAX_FRAME_BYTES,
        });
    }
    // serde_json refuses nesting deeper than 128, so hostile input cannot exhaust the stack.
    let value: Value = serde_json::from_slice(frame).map_err(|error| ProtoError::Malformed {
        detail: error.to_string(),
    })?;
    let Value::Object(mut object) = value else {
        return Err(ProtoError::Malformed {
            detail: "not a JSON object".into(),
        });
    };
    let version = object.remove("v");
    let kind = match object.get("type") {
        Some(Value::String(kind)) => kind.clone(),
        _ => return Err(ProtoError::MissingType),
    };
    Ok(Parsed { version, kind, object })
}

/// `v` is a version this side speaks, or, for a handshake frame, any version at all.
fn check_version(version: Option<&Value>, handshake: bool) -> Result<(), ProtoError> {
    let found = version.and_then(Value::as_u64);
    match found.and_then(|v| u16::try_from(v).ok()) {
        Some(v) if handshake || SUPPORTED_VERSIONS.contains(v) => Ok(()),
        _ => Err(ProtoError::Version {
            found: version.map(|v| cut(&v.to_string())),
            supported: SUPPORTED_VERSIONS,
        }),
    }
}

fn shape<T: DeserializeOwned>(kind: String, object: Map<String, Value>, types: &[&str]) -> Result<T, ProtoError> {
    if !types.contains(&kind.as_str()) {
        return Err(ProtoError::UnknownType { found: cut(&kind) });
    }
    serde_json::from_value(Value::Object(object)).map_err(|error| ProtoError::Shape {
        message_type: kind,
        detail: error.to_string(),
    })
}

/// A value from the peer, cut for an error message.
fn cut(value: &str) -> String {
    const MAX_SHOWN: usize = 64;
    if value.len() <= MAX_SHOWN {
        return value.to_owned();
    }
    let mut end = MAX_SHOWN;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &value[..end])
}
