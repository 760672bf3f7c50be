//! What the controller sees of the agents, and the narrow way it reaches them: the [`Fleet`]
//! trait, which the agent hub implements. The controller (`runner`, `rollout`) names no type of
//! the hub, so it can be driven by another fleet (a test's, or a peer server's later) and moved
//! out of this crate without taking the hub along.

use endstate_agent_proto::InstanceStateWord;
use endstate_types::RevisionId;

use crate::AppState;
use crate::error::ApiError;

/// What the server knows of one instance from its agent's observations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Live {
    pub(crate) state: Option<InstanceStateWord>,
    pub(crate) version: String,
    pub(crate) generation: u64,
    pub(crate) healthy: Option<bool>,
    pub(crate) restarts: u32,
    /// Since when the instance has been healthy without interruption (the agent's time of the
    /// first passing verdict), while it is.
    pub(crate) healthy_since_ms: Option<i64>,
    pub(crate) rss_bytes: u64,
    pub(crate) cpu_millis: u64,
}

/// The word of an instance state, as on the wire.
pub(crate) fn word(state: InstanceStateWord) -> &'static str {
    match state {
        InstanceStateWord::Starting => "starting",
        InstanceStateWord::Running => "running",
        InstanceStateWord::SpawnFailed => "spawn_failed",
        InstanceStateWord::Exited => "exited",
        InstanceStateWord::BackingOff => "backing_off",
        InstanceStateWord::Stopping => "stopping",
        InstanceStateWord::Stopped => "stopped",
    }
}

/// The agents as the controller uses them.
#[async_trait::async_trait]
pub(crate) trait Fleet: Send + Sync {
    /// Renders every host's desired set again from the blueprint and sends the sets that changed.
    async fn refresh(&self, state: &AppState) -> Result<(), ApiError>;

    /// Whether `revision` is really reached: every assigned instance observed running, healthy,
    /// at its version and at its host's current generation (`Ok(n)`); `Err` says what is missing.
    async fn progress(&self, state: &AppState, revision: RevisionId) -> Result<Result<usize, String>, ApiError>;

    /// Whether the host's agent is connected now.
    fn connected(&self, host: &str) -> bool;

    /// What the host's agent last reported of one instance, and the generation its assignment
    /// last changed at (`None` when it is not assigned).
    async fn observed(&self, host: &str, instance: &str) -> (Option<Live>, Option<u64>);
}
