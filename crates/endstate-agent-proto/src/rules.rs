//! The rules both sides apply to what they receive: version negotiation, generations, sequence numbers.

use std::fmt;

use endstate_types::Generation;

use crate::message::{Refused, VersionRange};

/// What to do with an incoming [`DesiredInstances`](crate::DesiredInstances).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GenerationDecision {
    /// It is newer than anything seen: apply it and remember its generation.
    Accept,
    /// It is not newer: keep what runs, and log why.
    Ignore(IgnoreReason),
}

/// Why a generation is ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IgnoreReason {
    /// An older generation arrived (a stale writer, or a delayed frame).
    Older {
        /// What the agent has.
        current: Generation,
        /// What arrived.
        incoming: Generation,
    },
    /// The same generation arrived again (a resend after reconnecting): already applied.
    Same {
        /// The generation.
        current: Generation,
    },
}

/// What the server does with an observation, given the last `seq` it stored for the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqDecision {
    /// The next one: store it.
    Next,
    /// Already stored (a resend of an unacknowledged batch): drop it, and acknowledge again.
    Duplicate,
    /// Newer than the next one: observations in between are missing (the agent's buffer
    /// overflowed, or its data directory was lost). Store it, and record the gap.
    Gap {
        /// The first missing `seq`.
        from: u64,
        /// The last missing `seq`.
        to: u64,
    },
}

/// No protocol version is spoken by both sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no common protocol version: the agent speaks {agent}, the server speaks {server}")]
pub struct NoCommonVersion {
    /// What the agent offered.
    pub agent: VersionRange,
    /// What the server speaks.
    pub server: VersionRange,
}

/// The highest version in both ranges.
///
/// # Errors
/// [`NoCommonVersion`], naming both ranges, when they do not meet or one is not a range.
pub fn negotiate(agent: VersionRange, server: VersionRange) -> Result<u16, NoCommonVersion> {
    let low = agent.min.max(server.min);
    let high = agent.max.min(server.max);
    let valid = |range: VersionRange| range.min >= 1 && range.min <= range.max;
    if valid(agent) && valid(server) && low <= high {
        Ok(high)
    } else {
        Err(NoCommonVersion { agent, server })
    }
}

/// Whether an agent holding `current` (none before its first set) applies `incoming`.
///
/// Only a strictly newer generation is applied, so a stale server (or a delayed frame) cannot roll
/// an agent back, and a resend is harmless.
#[must_use]
pub fn accept_generation(current: Option<Generation>, incoming: Generation) -> GenerationDecision {
    match current {
        None => GenerationDecision::Accept,
        Some(current) if incoming > current => GenerationDecision::Accept,
        Some(current) if incoming == current => GenerationDecision::Ignore(IgnoreReason::Same { current }),
        Some(current) => GenerationDecision::Ignore(IgnoreReason::Older { current, incoming }),
    }
}

/// How the server treats observation `incoming` when the last one it stored is `last_stored`
/// (0 when none).
#[must_use]
pub fn classify_seq(last_stored: u64, incoming: u64) -> SeqDecision {
    let next = last_stored.saturating_add(1);
    if incoming <= last_stored {
        SeqDecision::Duplicate
    } else if incoming == next {
        SeqDecision::Next
    } else {
        SeqDecision::Gap {
            from: next,
            to: incoming - 1,
        }
    }
}

// === impl Refused ===

impl From<NoCommonVersion> for Refused {
    fn from(no_common: NoCommonVersion) -> Self {
        Refused {
            reason: no_common.to_string(),
            agent_versions: no_common.agent,
            server_versions: no_common.server,
        }
    }
}

// === impl Display ===

impl fmt::Display for IgnoreReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IgnoreReason::Older { current, incoming } => {
                write!(f, "generation {incoming} is older than {current}, which the agent has")
            }
            IgnoreReason::Same { current } => write!(f, "generation {current} is already applied"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_picks_the_highest_common_version() {
        let range = VersionRange::new;
        assert_eq!(negotiate(range(1, 3), range(2, 5)), Ok(3));
        assert_eq!(negotiate(range(1, 1), range(1, 1)), Ok(1));
        assert_eq!(negotiate(range(4, 9), range(1, 5)), Ok(5));
        let error = negotiate(range(3, 4), range(1, 2)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "no common protocol version: the agent speaks 3..=4, the server speaks 1..=2"
        );
        assert!(
            negotiate(range(2, 1), range(1, 5)).is_err(),
            "an empty range meets nothing"
        );
        assert!(negotiate(range(0, 0), range(0, 5)).is_err(), "0 is not a version");
    }

    #[test]
    fn sequence_numbers() {
        assert_eq!(classify_seq(0, 1), SeqDecision::Next);
        assert_eq!(classify_seq(7, 8), SeqDecision::Next);
        assert_eq!(classify_seq(7, 7), SeqDecision::Duplicate);
        assert_eq!(classify_seq(7, 0), SeqDecision::Duplicate);
        assert_eq!(classify_seq(7, 10), SeqDecision::Gap { from: 8, to: 9 });
        assert_eq!(classify_seq(u64::MAX, u64::MAX), SeqDecision::Duplicate);
    }
}
