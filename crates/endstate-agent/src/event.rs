//! State transitions of instances, as broadcast to subscribers.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// One state transition of one instance.
#[derive(Debug, Clone)]
pub struct InstanceEvent {
    /// The instance ([`InstanceSpec::id`](crate::InstanceSpec::id)).
    pub id: String,
    /// The state it entered.
    pub state: InstanceState,
    /// When it entered it, on the tokio clock.
    pub at: Instant,
}

/// The states of a supervised instance.
///
/// # Expected flow
///
/// `Starting`, then `Running` (or `SpawnFailed`), then `Exited`, then `BackingOff`, then
/// `Starting` again, and so on. A stop makes `Stopping`, `Exited` (when a process was running) and
/// `Stopped`; `Stopped` is always the last event of an instance until it is started again.
#[derive(Debug, Clone)]
pub enum InstanceState {
    /// About to spawn the process.
    Starting,
    /// The process was spawned; it leads its own process group, whose id is `pid`.
    Running {
        /// The process id, also the process group id.
        pid: u32,
    },
    /// The process could not be spawned (missing program, missing working directory, ...).
    SpawnFailed {
        /// The error of the operating system.
        error: Arc<io::Error>,
    },
    /// The group leader exited (by itself, or because it was stopped).
    Exited {
        /// The exit code, when it exited normally.
        code: Option<i32>,
        /// The signal that terminated it, when one did.
        signal: Option<i32>,
    },
    /// Waiting before the next start.
    BackingOff {
        /// How many consecutive failures this delay follows (1 for the first).
        attempt: u32,
        /// How long the supervisor waits before `Starting`.
        delay: Duration,
    },
    /// A stop was asked; the group is sent SIGTERM.
    Stopping,
    /// The instance is stopped and will not be restarted.
    Stopped {
        /// Whether the group had to be sent SIGKILL because it outlived the grace period.
        killed: bool,
    },
}
