//! Statuses that roll up, and the states a change moves through.

use serde::{Deserialize, Serialize};

/// The health of anything that rolls up: an instance, a component, a system.
///
/// The order is "worst last", so `max()` over children gives the rolled-up status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Everything declared runs and is healthy.
    Healthy,
    /// Nothing is known to be wrong, but the end state is not reached yet (work pending or no data).
    Pending,
    /// No observation is available (for example the host is unreachable).
    Unknown,
    /// Some of it is unhealthy, but it still serves.
    Degraded,
    /// It is down.
    Unhealthy,
}

impl Status {
    /// The word used in the CLI and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Healthy => "healthy",
            Status::Pending => "pending",
            Status::Unknown => "unknown",
            Status::Degraded => "degraded",
            Status::Unhealthy => "unhealthy",
        }
    }
}

/// Where a change is in its life.
///
/// A change is open (not terminal) until the end state is really reached or it was given up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeState {
    /// Accepted, not yet planned.
    Pending,
    /// Being planned.
    Planning,
    /// Waves are being executed.
    Rolling,
    /// The end state was reached and observed.
    Converged,
    /// A gate stopped it; it waits for a person.
    Halted,
    /// It was undone back to the last converged revision.
    RolledBack,
    /// It cannot go on.
    Failed,
    /// A newer revision replaced it before it finished.
    Superseded,
}

impl ChangeState {
    /// Whether the change is over (no more work will happen for it).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            ChangeState::Converged | ChangeState::RolledBack | ChangeState::Failed | ChangeState::Superseded
        )
    }

    /// The word used in the CLI, the API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeState::Pending => "pending",
            ChangeState::Planning => "planning",
            ChangeState::Rolling => "rolling",
            ChangeState::Converged => "converged",
            ChangeState::Halted => "halted",
            ChangeState::RolledBack => "rolled_back",
            ChangeState::Failed => "failed",
            ChangeState::Superseded => "superseded",
        }
    }

    /// Parses the word written by [`ChangeState::as_str`].
    pub fn parse(word: &str) -> Option<ChangeState> {
        Some(match word {
            "pending" => ChangeState::Pending,
            "planning" => ChangeState::Planning,
            "rolling" => ChangeState::Rolling,
            "converged" => ChangeState::Converged,
            "halted" => ChangeState::Halted,
            "rolled_back" => ChangeState::RolledBack,
            "failed" => ChangeState::Failed,
            "superseded" => ChangeState::Superseded,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worst_rolls_up() {
        let statuses = [Status::Healthy, Status::Degraded, Status::Pending];
        assert_eq!(statuses.iter().max(), Some(&Status::Degraded));
    }

    #[test]
    fn change_state_words_round_trip() {
        for state in [
            ChangeState::Pending,
            ChangeState::Planning,
            ChangeState::Rolling,
            ChangeState::Converged,
            ChangeState::Halted,
            ChangeState::RolledBack,
            ChangeState::Failed,
            ChangeState::Superseded,
        ] {
            assert_eq!(ChangeState::parse(state.as_str()), Some(state));
        }
        assert_eq!(ChangeState::parse("nope"), None);
    }
}
