//! What to run: [`InstanceSpec`] and its [`RestartPolicy`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The smallest delay between two starts, whatever the policy says, so a misconfigured policy
/// (a zero `initial_backoff`) cannot make the agent spin forking a crashing process.
pub const MIN_BACKOFF: Duration = Duration::from_millis(10);

/// One instance to supervise: a program run as its own process group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSpec {
    /// The instance, `system/component#slot`; unique within a supervisor.
    pub id: String,
    /// The program to execute. Give an absolute path: the child's environment is exactly
    /// [`env`](Self::env), so a bare name is looked up in that `PATH`, if any.
    pub program: PathBuf,
    /// Arguments after the program name.
    pub args: Vec<String>,
    /// The whole environment of the process: nothing is inherited from the agent.
    pub env: BTreeMap<String, String>,
    /// The working directory; a missing one is a spawn error (and a restart with backoff).
    pub work_dir: PathBuf,
    /// How long the group has after SIGTERM before it is sent SIGKILL.
    pub stop_grace: Duration,
    /// How soon an instance that exited is started again.
    pub restart: RestartPolicy,
    /// The user and group ids the process runs as (`setgid`, then `setuid`, supplementary groups
    /// dropped); `None`: the agent's own.
    pub run_as: Option<(u32, u32)>,
}

/// Exponential backoff between restarts: `initial_backoff`, doubled on every consecutive failure,
/// capped at `max_backoff` (and never below [`MIN_BACKOFF`]).
///
/// A run that lasted at least `reset_after` counts as stable: the next restart starts again from
/// `initial_backoff`. A failed spawn is a run of zero length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// The delay before the first restart after a stable run.
    pub initial_backoff: Duration,
    /// The cap of the delay.
    pub max_backoff: Duration,
    /// How long a process must run before its exit no longer counts as a consecutive failure.
    pub reset_after: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            reset_after: Duration::from_secs(30),
        }
    }
}

impl RestartPolicy {
    /// The delay before restart number `attempt` (1-based) of a series of consecutive failures.
    #[must_use]
    pub fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        let delay = self
            .initial_backoff
            .checked_mul(1 << doublings)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff);
        delay.max(MIN_BACKOFF)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_doubles_up_to_the_cap() {
        let policy = RestartPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
            reset_after: Duration::from_secs(1),
        };
        let delays: Vec<u128> = (1..=6).map(|attempt| policy.delay(attempt).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500, 500]);
        assert_eq!(policy.delay(u32::MAX), Duration::from_millis(500));
    }

    #[test]
    fn delay_has_a_floor() {
        let policy = RestartPolicy {
            initial_backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
            reset_after: Duration::ZERO,
        };
        assert_eq!(policy.delay(1), MIN_BACKOFF);
    }
}
