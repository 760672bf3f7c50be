//! Typed identifiers: numbers the store hands out, and names people write.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A desired-state revision, numbered from 1 in the order the store accepted them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RevisionId(pub u64);

/// A change: the work of reaching one revision. Numbered from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChangeId(pub u64);

/// The position of an event in its server's timeline. Strictly increasing, never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventSeq(pub u64);

/// A generation number: a writer holding an older generation than the reader has seen is stale.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Generation(pub u64);

/// The name of a host, as its agent reports it (or as a static inventory entry declares it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HostName(pub String);

/// Why a name is not acceptable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("a name cannot be empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`].
    #[error("a name is at most {max} characters, found {len}")]
    TooLong {
        /// The length found.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The name contains a character outside `a-z 0-9 - _ .`, or does not start with a letter or digit.
    #[error(
        "found {found:?}: a name uses lowercase letters, digits, '-', '_' and '.', and starts with a letter or digit"
    )]
    BadChar {
        /// The offending character.
        found: char,
    },
}

/// The longest name accepted, in characters.
const MAX_NAME_LEN: usize = 63;

/// Checks that `name` is a valid name for a system, component, host, check, action or policy.
///
/// Names appear in URLs, file names and label values, so they are kept to a portable alphabet.
///
/// # Errors
/// Returns the first rule the name breaks.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return Err(NameError::Empty);
    };
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(NameError::BadChar { found: first });
    }
    if let Some(found) = chars.find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.')))
    {
        return Err(NameError::BadChar { found });
    }
    let len = name.chars().count();
    if len > MAX_NAME_LEN {
        return Err(NameError::TooLong { len, max: MAX_NAME_LEN });
    }
    Ok(())
}

// === impl Display ===

impl fmt::Display for RevisionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

impl fmt::Display for ChangeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

impl fmt::Display for EventSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "g{}", self.0)
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(validate_name("web-1.a_b"), Ok(()));
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert_eq!(validate_name("Web"), Err(NameError::BadChar { found: 'W' }));
        assert_eq!(validate_name("-x"), Err(NameError::BadChar { found: '-' }));
        assert_eq!(validate_name("a b"), Err(NameError::BadChar { found: ' ' }));
        assert!(matches!(
            validate_name(&"a".repeat(64)),
            Err(NameError::TooLong { len: 64, .. })
        ));
    }
}
