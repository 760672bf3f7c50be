//! The host agent: the [`link`] to the server (enrolment, identity, the mutual-TLS websocket),
//! the [`Runtime`] that reconciles the server's desired instances, and below it a [`Supervisor`]
//! that runs instances as process groups, restarts them with exponential backoff, stops them
//! gracefully and keeps their recent output.
//!
//! - [`link`]: `link::run` is the agent process: it enrols with a join token once, keeps its
//!   identity in its data directory, connects, streams buffered observations and keepalives,
//!   applies desired sets, answers log requests, renews its certificate and reconnects with
//!   jittered backoff.
//! - [`runtime`]: the [`Runtime`], the agent's reconciler. It applies the server's
//!   `DesiredInstances` (newer generations only, persisted first): installs artifacts, prepares a
//!   fresh run directory per assignment, starts, replaces (start-before-stop where the server allows it, else stop-then-start) and stops instances on
//!   the supervisor, probes their health, samples their memory and CPU, and reports all of it as
//!   protocol observations. At start it kills what a previous agent left running and restarts the
//!   last accepted set.
//! - [`artifact`]: an [`ArtifactCache`] fetches artifacts (a local path, or an `http` URL checked
//!   by SHA-256) into a content-addressed cache and installs each version into its own immutable
//!   directory.
//! - [`health`]: [`probe`] runs one http, tcp or exec probe; a [`HealthTracker`] turns probe
//!   results into a health state with thresholds (pure).
//! - [`facts`]: [`facts::collect`] reads the host's facts (hostname, OS, kernel, CPUs, memory,
//!   disks) from `/proc` and `/etc` into the protocol's `Facts`, within its bounds.
//! - [`buffer`]: the [`ObservationBuffer`], a durable, bounded, append-only log of observations
//!   with seqs, kept until the server acknowledges them; when full it compacts the oldest
//!   (latest observation per instance and state kept) and counts what it summarised.
//!
//! The rest of this page is about the supervisor.
//!
//! # Expected flow
//!
//! [`Supervisor::spawn`] returns a [`SupervisorHandle`]. [`SupervisorHandle::start`] takes an
//! [`InstanceSpec`]; [`SupervisorHandle::subscribe`] yields every [`InstanceEvent`];
//! [`SupervisorHandle::logs`] reads a [`LogSnapshot`]; [`SupervisorHandle::stop`] returns once the
//! instance is stopped; [`SupervisorHandle::shutdown`] (or dropping every handle) stops everything.
//!
//! Tasks and channels:
//! - The supervisor task owns the table of instances. It serves a closed set of commands from a
//!   bounded `mpsc` (each with a `oneshot` reply) and never waits on a process, so a slow stop
//!   does not delay other commands.
//! - One task per instance spawns the process, waits for it, backs off and restarts it, and stops
//!   it. The supervisor asks it to stop through a `watch<bool>`; it says it is done through another.
//!   It sends every state transition on one `broadcast` channel shared by all instances.
//! - Two short-lived tasks per run copy stdout and stderr into the instance's ring buffers (a
//!   `std::sync::Mutex` each, held only to copy bytes).
//!
//! # Guarantees
//!
//! - Each run is the leader of a new process group (`pgid == pid`), with stdin from `/dev/null`,
//!   exactly the spec's environment (nothing inherited) and its working directory.
//! - A stop sends SIGTERM to the whole group, waits up to `stop_grace` for the leader **and every
//!   other member** to exit, then sends SIGKILL to the group. `Stopped { killed }` says whether
//!   SIGKILL was needed.
//! - When the leader exits by itself, members it left in its group get the same treatment
//!   (SIGTERM, `stop_grace`, SIGKILL) before the restart, so two runs never overlap.
//! - An instance that exits, whatever its code, is restarted after the [`RestartPolicy`] delay:
//!   `initial_backoff` doubled per consecutive failure up to `max_backoff`; a run that lasted
//!   `reset_after` resets the series. A spawn failure (missing program or working directory) is a
//!   `SpawnFailed` event with the OS error and counts as a failure; nothing panics.
//! - Every state transition is an event, in order per instance (see [`InstanceState`] for the flow).
//!   `BackingOff` and `Stopped` come after the run's output was read into the buffers.
//! - Each stream keeps its last [`SupervisorConfig::log_capacity`] bytes and counts the bytes it dropped.
//! - If the supervisor's tasks are dropped (the runtime shuts down), each live group is sent SIGKILL.
//! - All timing uses `tokio::time`, so backoff can be tested with paused time.
//!
//! # Assumptions
//!
//! - Linux or another Unix with process groups. The program path is absolute or resolvable with the
//!   spec's own `PATH`.
//! - Programs do not leave their process group on purpose (`setsid`, `setpgid`); see Caveats.
//!
//! # Caveats
//!
//! - A process that calls `setsid`/`setpgid` escapes the group and is neither stopped nor killed.
//!   Reading its output stops one second after the group is gone. Containing such processes needs
//!   cgroups, not done yet.
//! - The agent is not a child subreaper: orphans of an instance are reparented to init, and until
//!   init reaps them they count as group members (so a stop may wait the full grace).
//! - A group's id is signalled only while it is known to exist; between its last member dying
//!   and the next check (20 ms polling), a reused pid that made itself a group leader could in
//!   theory be signalled.
//! - Events are a `broadcast`: a subscriber more than [`SupervisorConfig::event_capacity`] events
//!   behind gets `Lagged` and misses events. The ring buffers are the source for logs, not events.
//! - Instances that exit with code 0 are restarted too (the agent keeps what was declared running);
//!   one-shot jobs are not modelled.
//! - Restarting the agent does not re-adopt running instances: the supervisor's groups die with
//!   it when it exits normally, and the [`Runtime`] kills those left by a `kill -9` when it
//!   starts again (see [`runtime`]).
//! - There is no OS trait seam: tests run real processes (spawning a missing program is also real).

mod actions;
pub mod artifact;
pub mod buffer;
mod checks;
#[cfg(feature = "cli")]
pub mod cli;
mod event;
pub mod facts;
mod group;
pub mod health;
pub mod https;
mod instance;
pub mod link;
mod logs;
pub mod runtime;
mod spec;
mod supervisor;

pub use artifact::{ArtifactCache, ArtifactError, ArtifactRef, FetchLimits, Installed, VersionDir};
pub use buffer::{BufferError, BufferLimits, BufferStats, ObservationBuffer, SyncPolicy};
pub use event::{InstanceEvent, InstanceState};
pub use health::{HealthState, HealthTracker, Probe, ProbeResult, probe};
pub use logs::{DEFAULT_LOG_CAPACITY, LogSnapshot, StreamLog};
pub use runtime::{ApplyOutcome, ApplySummary, Runtime, RuntimeConfig, RuntimeError};
pub use spec::{InstanceSpec, MIN_BACKOFF, RestartPolicy};
pub use supervisor::{Supervisor, SupervisorConfig, SupervisorError, SupervisorHandle};

/// An error and its sources, `: `-separated (reqwest's `Display` alone says little).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
