//! The agent's reconciler: turns the server's [`DesiredInstances`] (a complete set with a
//! generation) into supervised processes, and reports everything that happens to them as protocol
//! [`Observed`] values.
//!
//! # Layout (under [`RuntimeConfig::data_dir`])
//!
//! ```text
//! runtime/generation            the last accepted generation, "<n>\n"
//! runtime/desired.json          the desired set of that generation, as the protocol frame it came in
//! runtime/groups.json           the process groups running now (see "Agent restart")
//! cache/, versions/             the ArtifactCache (see `artifact`)
//! instances/<system>/<component>/<slot>/<generation>-<digest>/   one directory per run
//! ```
//!
//! `groups.json` is `{"boot_id": "<this boot>", "groups": [{"instance": "shop/web#0", "pgid": 4242,
//! "start_ticks": 123456}]}`, where `start_ticks` is field 22 of the leader's `/proc/<pid>/stat`
//! (or `null`).
//!
//! # Expected flow
//!
//! [`Runtime::start`] once, with the sender of the observations (the durable buffer's writer
//! reads the other end). Then [`Runtime::apply`] for every `desired_instances` frame;
//! [`Runtime::generation`] and [`Runtime::actual`] for `actual_state`; [`Runtime::logs`] for
//! people; [`Runtime::shutdown`] when the agent stops.
//!
//! Tasks and channels:
//! - One **worker** task per instance owns its current run (and, during a start-first
//!   replacement, the new run beside it). [`Runtime::apply`] only hands it the latest assignment
//!   through a `watch` and returns; the worker installs the artifact, prepares the run directory,
//!   stops the old run and starts the new one (or starts the new one beside the old one, waits for
//!   it to be healthy and then stops the old one), and starts the health loops. A newer apply
//!   supersedes an older one in progress: an install, a backoff or a start-first replacement not
//!   healthy yet is abandoned (the cache removes partial downloads; the new run is stopped) and the
//!   worker goes on with the newest assignment.
//! - One **bookkeeper** subscribes to the [`Supervisor`]'s events. It never waits: it updates the
//!   state of the run (for [`Runtime::actual`]) and the set of live process groups under short
//!   `std` locks, and queues the observation without waiting (`try_send`).
//! - One **forwarder** moves queued observations to the caller's channel with `send().await`:
//!   backpressure from the buffer writer slows the forwarder only, never the bookkeeping.
//! - One **groups writer** rewrites `groups.json` (coalescing changes), one **sampler** measures
//!   resources every [`RuntimeConfig::resource_interval`], and one **health loop** per probed run
//!   probes it.
//!
//! No lock is held across an `.await`.
//!
//! # Guarantees
//!
//! - **Generations.** A set is applied only when [`accept_generation`] says so; an older or equal
//!   generation changes nothing and returns [`ApplyOutcome::Ignored`]. A set that breaks a
//!   protocol bound or rule (checked with the protocol's own validator) is refused with
//!   [`RuntimeError::Invalid`] before anything. The set and then its generation are persisted
//!   (temporary file, fsync, rename, directory fsync) **before** anything is acted on.
//! - **Reconciliation.** Instances missing from the set are stopped. New ones are installed and
//!   started. One whose assignment changed in any field (artifact, command, args, env, config files,
//!   ports, health, stop grace, upgrade order) is replaced: the new artifact is installed and the
//!   new run directory prepared while the old run keeps running, then, in the order the new
//!   assignment's `upgrade` asks:
//!   - `stop_first` (the default): the old run is stopped, then the new one started.
//!   - `start_first`, when the old run is `running`: the new run is started **beside** the old one
//!     (under its own supervisor id, in its own run directory; the server gave it ports of its
//!     own), and the old run keeps running until the new one is healthy (with a probe: its
//!     [`HealthTracker`] verdict is healthy; without one: it is running). Then the old run is
//!     retired: its health loop ended, its process group stopped, its logs forgotten. A new run
//!     that never gets healthy (a crash loop with backoff, a failing probe) is supervised as any
//!     run and the old one keeps serving for as long as it takes. A newer assignment that arrives
//!     meanwhile abandons the new run (it is stopped first) and is handled from the old run as
//!     usual. When the old run is not running (it crash-loops, say), there is nothing to keep
//!     serving and the replacement is stop-then-start.
//!
//!   An instance whose assignment is unchanged is not touched, even by a new generation: it keeps
//!   running, and keeps the generation it was started from. The one exception: an old run whose
//!   start-first replacement was abandoned for a newer set that asks for the old run's assignment
//!   again is kept, and re-announced (an `instance_state` of its current state, and its health
//!   afresh) with the newer set's generation, which it reports from then on: the server saw the
//!   abandoned run's newer generation and ignores the observations of older ones.
//! - **Runs.** A run executes `command` (absolute, or relative to the installed version directory:
//!   artifacts are single files, so command `example-service` with artifact `bin/example-service`
//!   runs `<version dir>/example-service`) with exactly the assignment's `args` and `env`, in a new
//!   run directory `instances/<system>/<component>/<slot>/<generation>-<digest>/`, where `digest`
//!   is the first 12 hex digits of the SHA-256 of the assignment's JSON. The directory is created
//!   empty (an existing one, left by an earlier agent, is removed first), the config files are
//!   written into it, and the runtime never modifies it after the start: a changed assignment gets
//!   a new directory. After a start, the run directories of the slot other than the newest 2 are
//!   removed.
//! - **Artifacts.** A `path` source is absolute, or relative to [`RuntimeConfig::artifact_root`]
//!   (without `..`); a `url` source is downloaded and verified by the [`ArtifactCache`]. Any failure
//!   before the spawn (artifact missing, SHA-256 mismatch, timeout, a config file path that would
//!   escape the run directory, an unknown probe port) is an `instance_state` observation
//!   `spawn_failed` with a `detail` naming the error, for that instance only; nothing panics and
//!   other instances are unaffected. It is retried after the [`RestartPolicy`] delay
//!   (`restart.delay(failures)`: 1 s, 2 s, 4 s, ... up to `max_backoff` with the defaults), and at
//!   once when a newer apply carries the same assignment. While a replacement cannot be installed,
//!   the old run keeps running.
//! - **Observations.** Every supervisor transition of a run is an `instance_state` with the run's
//!   generation and version, its pid while it has one, the exit code or signal, the restarts of
//!   this run (starts minus one) and a detail (the spawn error, the backoff, a SIGKILL). Health is
//!   an observation on every change: with a probe, after its thresholds ([`HealthTracker`]), counted
//!   afresh after every restart of the process, so the first verdict on a restarted process is
//!   always reported (even when a quick restart never crossed the unhealthy threshold); without
//!   one, "running is healthy": `healthy: true` when it runs, `healthy: false` when it exits.
//!   Every detail is cut to [`MAX_DETAIL_BYTES`].
//! - **Two runs of one instance** (a start-first replacement in progress). Both report their
//!   `instance_state` changes, each with its own generation and version (the server ignores the
//!   older generation's). Health and resources are an instance's, not a run's, so only the new run
//!   reports them from its start: the old run is not probed any more and its "running is healthy"
//!   changes (its `healthy: false` when it stops) are not reported. [`Runtime::actual`] and
//!   [`Runtime::logs`] show the new run from its start as well: it is what the server's desired
//!   set asks for, and its generation is the one the server keeps for the instance. When the new
//!   run is abandoned, the old run reports its health again (afresh, so the first verdict is
//!   reported) and is what `actual` and `logs` show.
//! - **Resources.** Every `resource_interval`, each running instance's whole process group is
//!   measured: the resident memory (`VmRSS` of `/proc/<pid>/status`) and the CPU time (`utime +
//!   stime` of `/proc/<pid>/stat`, converted with `sysconf(_SC_CLK_TCK)`, or 100 per second when
//!   that fails) of every live process whose process group is the instance's, summed.
//! - **Agent restart.** Every live process group is recorded in `groups.json`, rewritten atomically
//!   as runs start and stop. [`Runtime::start`] first kills what a previous agent (killed with
//!   `kill -9`, or crashed) left running: SIGTERM to each recorded group, 2 s of grace, SIGKILL; then
//!   it removes the record. It then loads the last accepted generation and restarts that set from
//!   `desired.json`, so instances come back without waiting for the server, and a resend of the same
//!   generation is rightly ignored. Instances are restarted deterministically, not **re-adopted**:
//!   a re-adopted process has no stdout/stderr pipes (its logs would be lost) and is not a child of
//!   the new agent (its exit could not be waited for, nor its status read), so it could be neither
//!   supervised nor restarted properly. A group is only signalled when it still has a live member,
//!   the record is from this boot, the group id is not the agent's own and, when its leader still
//!   exists, the leader's start time is the recorded one (so a reused id is left alone).
//! - [`Runtime::shutdown`] stops every instance (each with its grace), ends the supervisor,
//!   removes `groups.json`, and hands the remaining observations to the channel (waiting up to 5 s
//!   for a slow receiver). Dropping every [`Runtime`] without it stops the instances in the
//!   background, without the final observations.
//!
//! # Assumptions
//!
//! - Linux: `/proc` is read for resources and for the groups to kill.
//! - One agent per data directory.
//! - Assignments come from the server, already rendered: ports are in `args`/`env` and are only
//!   used here to resolve health probe port names.
//!
//! # Caveats
//!
//! - **A `stop_first` replacement** leaves the instance down between the stop of the old run and
//!   the readiness of the new one. **A `start_first` one** relies on the server for distinct
//!   ports (the runtime does not check them) and does not switch traffic: whatever routes to the
//!   instance must follow its ports. Without a probe, "healthy" is "running": a new run that is
//!   spawned and then crashes counts as healthy the moment it runs, and the old run is stopped.
//!   With a probe, the old run is stopped as soon as the new one's verdict is healthy, even if the
//!   new one's health turns bad later.
//! - While a start-first replacement waits, the old run's own health is not watched: if it goes
//!   bad, nothing reports it (its state changes still are).
//! - A run directory is per generation and assignment and is started empty: an agent restarted
//!   at the same generation starts its instances from fresh directories. Durable instance data
//!   does not belong there (volumes are not modelled yet).
//! - A replaced or removed run is forgotten by the supervisor with its logs: [`Runtime::logs`]
//!   shows the current run only (across its restarts); during a start-first replacement, the new
//!   one.
//! - Health probes start one interval after the start. Probe and resource intervals are at least
//!   100 ms whatever is asked.
//! - A process group is recorded after its spawn is observed: an agent killed in that instant (or
//!   while `groups.json` is being rewritten) leaves that group untracked and running.
//! - The CPU time of the members that already exited is not counted, so `cpu_millis` can go down.
//! - If the bookkeeper's queue (4,096 observations) is full because the receiver stalls, state
//!   observations are dropped (and logged) rather than stalling the bookkeeping. Health and resource
//!   observations wait instead.
//! - An instance id that was removed and comes back is started afresh; restarts count per run.
//! - If `desired.json` is missing, unreadable or of another generation than `generation`, nothing
//!   is restarted at start: the instances come back only with a newer generation from the server.

mod procfs;
mod state;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use endstate_agent_proto::limits::MAX_DETAIL_BYTES;
use endstate_agent_proto::{
    ActualInstance, ArtifactSource, DesiredInstances, FromServer, GenerationDecision, HealthProbe, HealthResult,
    IgnoreReason, InstanceAssignment, InstanceId, InstanceStateChange, InstanceStateWord, Observed, ProtoError,
    ResourceUse, UpgradeOrder, accept_generation, encode,
};
use endstate_types::{Generation, validate_name};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior, sleep};
use tracing::{debug, info, warn};

use crate::health::{self, HealthState, HealthTracker, Probe};
use crate::{
    ArtifactCache, ArtifactError, ArtifactRef, InstanceEvent, InstanceSpec, InstanceState, LogSnapshot, RestartPolicy,
    Supervisor, SupervisorConfig, SupervisorError, SupervisorHandle, VersionDir,
};

/// The default interval between two resource samples.
pub const DEFAULT_RESOURCE_INTERVAL: Duration = Duration::from_secs(10);

/// The shortest probe or sampling interval, whatever is asked.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// How long the groups left by a previous agent have after SIGTERM.
const LEFTOVER_GRACE: Duration = Duration::from_secs(2);
/// How often those groups are checked for members.
const LEFTOVER_POLL: Duration = Duration::from_millis(20);
/// Observations queued between the runtime's tasks and the forwarder.
const QUEUE_CAPACITY: usize = 4096;
/// How long [`Runtime::shutdown`] waits for the receiver to take the last observations.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// Run directories kept per slot besides the current one.
const KEEP_OTHER_RUN_DIRS: usize = 1;
/// Hex digits of the assignment's digest in a run directory's name.
const DIGEST_LEN: usize = 12;

// === public types ===

/// How the runtime is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// The agent's data directory: `runtime/`, `cache/`, `versions/`, `instances/` go under it.
    pub data_dir: PathBuf,
    /// What a relative artifact `path` is resolved against.
    pub artifact_root: PathBuf,
    /// How often each running instance's resource use is sampled (at least 100 ms).
    pub resource_interval: Duration,
    /// How the supervisor is sized.
    pub supervisor: SupervisorConfig,
    /// The backoff between restarts of an instance, also used between install attempts.
    pub restart: RestartPolicy,
    /// CAs trusted besides the platform's for `https` artifacts and HTTP checks.
    pub trusted_cas: Vec<rustls_pki_types::CertificateDer<'static>>,
}

impl RuntimeConfig {
    /// A configuration with the defaults: resources every 10 s, the default supervisor and policy.
    #[must_use]
    pub fn new(data_dir: impl Into<PathBuf>, artifact_root: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            artifact_root: artifact_root.into(),
            resource_interval: DEFAULT_RESOURCE_INTERVAL,
            supervisor: SupervisorConfig::default(),
            restart: RestartPolicy::default(),
            trusted_cas: Vec::new(),
        }
    }
}

/// What [`Runtime::apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The set was accepted, persisted and handed to the instances' workers.
    Applied(ApplySummary),
    /// The set is not newer than what the agent has: nothing changed.
    Ignored(IgnoreReason),
}

/// The instances of an accepted set, by what happens to them. The work itself (install, stop,
/// start) happens in the background after [`Runtime::apply`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplySummary {
    /// The generation accepted.
    pub generation: Generation,
    /// New instances, to install and start.
    pub started: Vec<InstanceId>,
    /// Instances whose assignment changed, to replace (in the order their `upgrade` asks).
    pub replaced: Vec<InstanceId>,
    /// Instances no longer in the set, to stop.
    pub stopped: Vec<InstanceId>,
    /// Instances whose assignment is the same: left alone.
    pub unchanged: Vec<InstanceId>,
    /// Instances whose assignment is the same but could not be started: tried again now.
    pub retried: Vec<InstanceId>,
}

/// Errors of the [`Runtime`].
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A file system operation failed.
    #[error("could not {action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A file of the runtime does not hold what the runtime writes.
    #[error("{}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The desired set breaks a rule or bound of the protocol.
    #[error("refused the desired instances")]
    Invalid {
        /// The rule broken, with its field.
        #[source]
        source: ProtoError,
    },
    /// The HTTP client of the checks could not be built.
    #[error("could not build the HTTP client of the checks")]
    HttpClient(#[source] reqwest::Error),
    /// The artifact cache could not be set up.
    #[error("could not set up the artifact cache")]
    ArtifactCache {
        /// Why.
        #[source]
        source: ArtifactError,
    },
    /// An instance's artifact could not be fetched or installed.
    #[error("could not install the artifact of {instance}")]
    Artifact {
        /// The instance.
        instance: InstanceId,
        /// Why.
        #[source]
        source: ArtifactError,
    },
    /// An instance's assignment cannot be run as it is.
    #[error("{instance}: {reason}")]
    Assignment {
        /// The instance.
        instance: InstanceId,
        /// What is wrong with it.
        reason: String,
    },
    /// The runtime supervises no instance with this id.
    #[error("unknown instance {0:?}")]
    UnknownInstance(String),
    /// The instance has no process run yet (its artifact is not installed yet, or failed to).
    #[error("instance {0:?} has not been started yet")]
    NotStarted(String),
    /// [`Runtime::shutdown`] was called.
    #[error("the runtime has shut down")]
    ShutDown,
}

/// The agent's reconciler. See the module documentation. Cheap to clone: every clone is the same
/// runtime.
#[derive(Debug, Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

// === internal types ===

/// What every task of the runtime shares.
#[derive(Debug)]
struct Shared {
    config: RuntimeConfig,
    supervisor: SupervisorHandle,
    artifacts: ArtifactCache,
    queue: mpsc::Sender<Queued>,
    /// Every run the supervisor may still send events about, by supervisor id.
    runs: Mutex<HashMap<String, Arc<Run>>>,
    /// The live process groups, for `groups.json`.
    groups: Mutex<state::Groups>,
    groups_changed: Notify,
    next_run: AtomicU64,
    clock_ticks: u64,
}

/// An item of the queue to the forwarder.
#[derive(Debug)]
enum Queued {
    Observed(Observed),
    /// Answered once everything queued before it was handed to the receiver.
    Flush(oneshot::Sender<()>),
}

/// One run: one assignment started once under its own supervisor id, restarted by the supervisor
/// until it is stopped.
#[derive(Debug)]
struct Run {
    /// The supervisor's id, unique for the life of the runtime: `<instance> run <n>`.
    key: String,
    instance: InstanceId,
    version: String,
    /// Whether a health loop decides its health (else running is healthy).
    probed: bool,
    /// Whether the process, as it is now, is healthy (with a probe: the health loop's verdict on
    /// it; without one: it is running). What a start-first replacement waits for.
    healthy_now: watch::Sender<bool>,
    state: Mutex<RunState>,
}

#[derive(Debug)]
struct RunState {
    /// The generation it reports: the one it was started from, unless it was re-announced.
    generation: Generation,
    word: InstanceStateWord,
    /// The pid while it runs.
    pid: Option<u32>,
    /// The group recorded in `groups.json`, until its members are gone.
    pgid: Option<u32>,
    starts: u32,
    /// Without a probe: the health last counted (running is healthy).
    healthy: bool,
    /// Whether it reports the instance's health and resources: false for an old run while its
    /// start-first replacement runs beside it.
    reporting: bool,
    /// Bumped when the run reports again or is re-announced: its health loop counts afresh.
    epoch: u64,
}

impl Run {
    /// Whether the run reports health and resources. Turned back on, the health is counted afresh
    /// (without a probe, the current health is reported at once).
    fn set_reporting(&self, shared: &Shared, reporting: bool) {
        let mut run_state = lock(&self.state);
        if run_state.reporting == reporting {
            return;
        }
        run_state.reporting = reporting;
        if reporting {
            run_state.epoch += 1;
            if let Some(health) = self.unprobed_health(&mut run_state) {
                // Under the lock, so no later change of this run is queued before it.
                shared.observe_now(health);
            }
        }
    }

    /// Reports the run's current state again, as a run of `generation` from now on, and counts
    /// its health afresh.
    fn announce(&self, shared: &Shared, generation: Generation, detail: String) {
        let mut run_state = lock(&self.state);
        run_state.generation = generation;
        run_state.reporting = true;
        run_state.epoch += 1;
        shared.observe_now(Observed::InstanceState(InstanceStateChange {
            instance: self.instance.clone(),
            generation,
            state: run_state.word,
            version: self.version.clone(),
            pid: run_state.pid,
            exit_code: None,
            signal: None,
            restarts: run_state.starts.saturating_sub(1),
            detail: bounded(detail),
        }));
        if let Some(health) = self.unprobed_health(&mut run_state) {
            shared.observe_now(health);
        }
    }

    /// Without a probe, the health observation of the run as it is now ("running is healthy").
    fn unprobed_health(&self, run_state: &mut RunState) -> Option<Observed> {
        if self.probed {
            return None;
        }
        let running = run_state.word == InstanceStateWord::Running;
        run_state.healthy = running;
        Some(Observed::Health(HealthResult {
            instance: self.instance.clone(),
            healthy: running,
            detail: unprobed_detail(run_state.word),
        }))
    }
}

/// The latest assignment of an instance, and the generation it came with.
#[derive(Debug)]
struct Target {
    generation: Generation,
    assignment: InstanceAssignment,
    digest: String,
}

/// The runtime's side of a worker.
#[derive(Debug)]
struct WorkerHandle {
    /// None: stop and go away.
    desired: watch::Sender<Option<Arc<Target>>>,
    retry: Arc<Notify>,
    status: Arc<Mutex<WorkerStatus>>,
    task: JoinHandle<()>,
}

/// What a worker is doing, for [`Runtime::actual`] and [`Runtime::logs`].
#[derive(Debug, Default)]
struct WorkerStatus {
    /// The run that stands for the instance now, if any: the current run, or the start-first
    /// replacement beside it from its start.
    run: Option<Arc<Run>>,
    /// A target it is installing or failed to install (the current run, if any, keeps running).
    pending: Option<Pending>,
}

#[derive(Debug, Clone)]
struct Pending {
    generation: Generation,
    version: String,
    /// `Starting` while installing, `SpawnFailed` after a failure.
    word: InstanceStateWord,
}

type Workers = Arc<Mutex<BTreeMap<InstanceId, WorkerHandle>>>;

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    workers: Workers,
    /// Serialises apply and shutdown.
    apply_lock: tokio::sync::Mutex<()>,
    generation: Mutex<Option<Generation>>,
    shut_down: AtomicBool,
    background: Mutex<Option<Background>>,
    /// The monitoring checks of the current set.
    checks: crate::checks::Checks,
    /// The action catalogue of the current set, and the runs in flight.
    actions: crate::actions::Actions,
    /// Live output of runs, until the link takes it.
    action_output: Mutex<Option<mpsc::Receiver<endstate_agent_proto::ActionOutput>>>,
}

#[derive(Debug)]
struct Background {
    bookkeeper: JoinHandle<()>,
    drain: watch::Sender<bool>,
    forwarder: JoinHandle<()>,
    groups_writer: JoinHandle<()>,
    sampler: JoinHandle<()>,
}

/// Everything a run needs, ready before the old run is stopped.
#[derive(Debug)]
struct Prepared {
    spec: InstanceSpec,
    health: Option<HealthPlan>,
}

#[derive(Debug, Clone)]
struct HealthPlan {
    probe: Probe,
    interval: Duration,
    timeout: Duration,
    healthy_after: u32,
    unhealthy_after: u32,
}

/// A run a worker supervises.
struct Current {
    run: Arc<Run>,
    target: Arc<Target>,
    /// Its run directory.
    work_dir: PathBuf,
    /// Dropping it ends the health loop.
    _health: Option<watch::Sender<()>>,
}

/// Why a worker woke up.
enum Wake {
    /// A new target, or a retry was asked, or a delay passed.
    Again,
    /// The runtime is gone: stop and end.
    Gone,
}

/// How a wait for a start-first replacement to be healthy ended.
enum Replacement {
    /// It is healthy: the old run can go.
    Healthy,
    /// A new target: see whether the replacement is still wanted.
    Again,
    /// The runtime is gone: stop and end.
    Gone,
}

// === impl Runtime ===

impl Runtime {
    /// Starts the runtime: kills what a previous agent left running (see "Agent restart" in the
    /// module docs), loads the last accepted generation and restarts its instances.
    ///
    /// # Errors
    ///
    /// [`RuntimeError::Io`] when `data_dir/runtime` cannot be created or its files read;
    /// [`RuntimeError::Corrupt`] when the generation file is not a number;
    /// [`RuntimeError::ArtifactCache`].
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime.
    pub async fn start(config: RuntimeConfig, observations: mpsc::Sender<Observed>) -> Result<Runtime, RuntimeError> {
        let dir = runtime_dir(&config);
        let boot_id = blocking({
            let dir = dir.clone();
            move || {
                state::create_dir(&dir)?;
                Ok(procfs::boot_id())
            }
        })
        .await?;
        let leftovers = blocking({
            let dir = dir.clone();
            move || Ok(state::read_groups(&dir))
        })
        .await?;
        kill_leftovers(leftovers, &boot_id).await;
        let (generation, desired) = blocking({
            let dir = dir.clone();
            move || {
                state::remove_groups(&dir)?;
                let generation = state::load_generation(&dir)?;
                let desired = generation.and_then(|generation| state::load_desired(&dir, generation));
                Ok((generation, desired))
            }
        })
        .await?;

        let artifacts = ArtifactCache::with_trust(
            &config.data_dir,
            crate::artifact::FetchLimits::default(),
            &config.trusted_cas,
        )
        .map_err(|source| RuntimeError::ArtifactCache { source })?;
        let supervisor = Supervisor::spawn(config.supervisor);
        let events = supervisor.subscribe();
        let (queue, queue_rx) = mpsc::channel(QUEUE_CAPACITY);
        let shared = Arc::new(Shared {
            config,
            supervisor,
            artifacts,
            queue,
            runs: Mutex::new(HashMap::new()),
            groups: Mutex::new(state::Groups {
                boot_id,
                groups: BTreeMap::new(),
            }),
            groups_changed: Notify::new(),
            next_run: AtomicU64::new(1),
            clock_ticks: procfs::clock_ticks(),
        });
        let (drain, drain_rx) = watch::channel(false);
        let background = Background {
            bookkeeper: tokio::spawn(bookkeeper(Arc::clone(&shared), events, drain_rx)),
            drain,
            forwarder: tokio::spawn(forwarder(queue_rx, observations.clone())),
            groups_writer: tokio::spawn(groups_writer(Arc::clone(&shared))),
            sampler: tokio::spawn(sampler(Arc::clone(&shared))),
        };
        let checks = crate::checks::Checks::new(
            {
                let shared = Arc::clone(&shared);
                Arc::new(move |observed| shared.observe_now(observed))
            },
            crate::checks::http_client(&shared.config.trusted_cas).map_err(RuntimeError::HttpClient)?,
        );
        let (output_tx, output_rx) = mpsc::channel(256);
        let actions = crate::actions::Actions::new(
            crate::actions::Outlets {
                results: observations,
                output: output_tx,
                groups: {
                    let shared = Arc::clone(&shared);
                    Arc::new(move |pgid, label: Option<String>| {
                        let record = label.map(|instance| state::GroupRecord {
                            instance,
                            start_ticks: procfs::start_ticks(pgid),
                        });
                        shared.set_group(pgid, record);
                    })
                },
            },
            shared.config.artifact_root.clone(),
        );
        let runtime = Runtime {
            inner: Arc::new(Inner {
                shared,
                workers: Arc::new(Mutex::new(BTreeMap::new())),
                apply_lock: tokio::sync::Mutex::new(()),
                generation: Mutex::new(generation),
                shut_down: AtomicBool::new(false),
                background: Mutex::new(Some(background)),
                checks,
                actions,
                action_output: Mutex::new(Some(output_rx)),
            }),
        };
        match desired {
            Some(desired) => {
                info!(generation = %desired.generation, n_instances = desired.instances.len(), "Restarting the instances of the last accepted generation.");
                runtime.reconcile(desired);
            }
            None => info!(generation = ?generation, "Runtime started with no instances."),
        }
        Ok(runtime)
    }

    /// Applies a desired set if it is newer than the last accepted one. Returns once the set is
    /// persisted and handed to the instances' workers; installs, stops and starts happen in the
    /// background (see the module docs).
    ///
    /// # Errors
    ///
    /// [`RuntimeError::Invalid`] when the set breaks a protocol rule (nothing is done);
    /// [`RuntimeError::Io`] when it cannot be persisted (nothing is done);
    /// [`RuntimeError::ShutDown`].
    pub async fn apply(&self, desired: DesiredInstances) -> Result<ApplyOutcome, RuntimeError> {
        let _applying = self.inner.apply_lock.lock().await;
        if self.inner.shut_down.load(Ordering::SeqCst) {
            return Err(RuntimeError::ShutDown);
        }
        // The protocol's own validator, through the encoder: the frame is also what is persisted.
        let frame = encode(&FromServer::DesiredInstances(desired.clone()))
            .map_err(|source| RuntimeError::Invalid { source })?;
        let incoming = desired.generation;
        if let GenerationDecision::Ignore(reason) = accept_generation(self.generation(), incoming) {
            info!(%reason, "Ignoring desired instances.");
            return Ok(ApplyOutcome::Ignored(reason));
        }
        let dir = runtime_dir(&self.inner.shared.config);
        blocking(move || state::save_desired(&dir, &frame, incoming)).await?;
        *lock(&self.inner.generation) = Some(incoming);
        let summary = self.reconcile(desired);
        info!(
            generation = %incoming,
            started = summary.started.len(),
            replaced = summary.replaced.len(),
            stopped = summary.stopped.len(),
            unchanged = summary.unchanged.len(),
            retried = summary.retried.len(),
            "Applied desired instances."
        );
        Ok(ApplyOutcome::Applied(summary))
    }

    /// Runs an action of the current catalogue, or reports why not; returns once it started or
    /// was refused. Its result comes as an `action` observation.
    pub async fn run_action(&self, request: endstate_agent_proto::RunAction) {
        self.inner.actions.run(request).await;
    }

    /// Reports a run request refused before it reached the catalogue (its signature), with the
    /// reason, as an `action` observation.
    pub async fn refuse_action(&self, request: &endstate_agent_proto::RunAction, reason: String) {
        self.inner.actions.refuse(request, reason).await;
    }

    /// Kills a running action's process group; an unknown run is ignored.
    pub fn cancel_action(&self, run: &str) {
        self.inner.actions.cancel(run);
    }

    /// The live output of actions, once (the link takes it).
    pub fn take_action_output(&self) -> Option<mpsc::Receiver<endstate_agent_proto::ActionOutput>> {
        lock(&self.inner.action_output).take()
    }

    /// The generation of the last accepted set, if any (loaded from the data directory at start).
    #[must_use]
    pub fn generation(&self) -> Option<Generation> {
        *lock(&self.inner.generation)
    }

    /// Every instance supervised now, in id order: its current run (generation, version, state,
    /// pid), or, before its first run, `starting` (installing) or `spawn_failed`. An instance being
    /// replaced stop-first shows its old run until it is stopped; one being replaced start-first
    /// shows its new run from its start (what the server asked for), and its old run again only if
    /// the new one is abandoned.
    pub async fn actual(&self) -> Vec<ActualInstance> {
        let statuses: Vec<(InstanceId, Arc<Mutex<WorkerStatus>>)> = lock(&self.inner.workers)
            .iter()
            .map(|(id, worker)| (id.clone(), Arc::clone(&worker.status)))
            .collect();
        let mut actual = Vec::with_capacity(statuses.len());
        for (instance, status) in statuses {
            let status = lock(&status);
            if let Some(run) = &status.run {
                let run_state = lock(&run.state);
                actual.push(ActualInstance {
                    instance,
                    generation: run_state.generation,
                    version: run.version.clone(),
                    state: run_state.word,
                    pid: run_state.pid,
                    healthy: (run_state.word == InstanceStateWord::Running).then(|| *run.healthy_now.borrow()),
                });
            } else if let Some(pending) = &status.pending {
                actual.push(ActualInstance {
                    instance,
                    generation: pending.generation,
                    version: pending.version.clone(),
                    state: pending.word,
                    pid: None,
                    healthy: None,
                });
            }
        }
        actual
    }

    /// The stdout and stderr tails of an instance's current run (across its restarts): the run
    /// [`Runtime::actual`] shows.
    ///
    /// # Errors
    ///
    /// [`RuntimeError::UnknownInstance`]; [`RuntimeError::NotStarted`] before its first run;
    /// [`RuntimeError::ShutDown`].
    pub async fn logs(&self, instance: &str) -> Result<LogSnapshot, RuntimeError> {
        let key = {
            let workers = lock(&self.inner.workers);
            let worker = workers
                .get(&InstanceId(instance.to_owned()))
                .ok_or_else(|| RuntimeError::UnknownInstance(instance.to_owned()))?;
            let status = lock(&worker.status);
            let run = status
                .run
                .as_ref()
                .ok_or_else(|| RuntimeError::NotStarted(instance.to_owned()))?;
            run.key.clone()
        };
        self.inner
            .shared
            .supervisor
            .logs(&key)
            .await
            .map_err(|error| match error {
                SupervisorError::ShutDown => RuntimeError::ShutDown,
                // Stopped and forgotten in the meantime.
                SupervisorError::UnknownInstance(_) | SupervisorError::AlreadySupervised(_) => {
                    RuntimeError::NotStarted(instance.to_owned())
                }
            })
    }

    /// Stops every instance (each with its grace, concurrently), ends the supervisor, removes
    /// `groups.json` and hands the last observations to the channel. Later applies fail with
    /// [`RuntimeError::ShutDown`]; calling it again does nothing.
    pub async fn shutdown(&self) {
        let _applying = self.inner.apply_lock.lock().await;
        if self.inner.shut_down.swap(true, Ordering::SeqCst) {
            return;
        }
        self.inner.checks.stop();
        let workers = std::mem::take(&mut *lock(&self.inner.workers));
        info!(n_instances = workers.len(), "Runtime stopping every instance.");
        for worker in workers.values() {
            worker.desired.send_replace(None);
        }
        for (id, worker) in workers {
            if let Err(error) = worker.task.await {
                warn!(instance = %id, %error, "Instance worker ended abnormally.");
            }
        }
        let shared = &self.inner.shared;
        let _ = shared.supervisor.shutdown().await;
        let Some(background) = lock(&self.inner.background).take() else {
            return;
        };
        background.sampler.abort();
        background.groups_writer.abort();
        // Every event is in the broadcast by now: the bookkeeper records them all, then ends.
        background.drain.send_replace(true);
        let _ = background.bookkeeper.await;
        let dir = runtime_dir(&shared.config);
        let groups = {
            let groups = lock(&shared.groups);
            state::Groups {
                boot_id: groups.boot_id.clone(),
                groups: groups.groups.clone(),
            }
        };
        if let Err(error) = blocking(move || state::write_groups(&dir, &groups)).await {
            warn!(error = %crate::error_chain(&error), "Could not update the process group record.");
        }
        // Bounded as a whole: with a stalled receiver, even queueing the marker can wait.
        let (flushed, flushed_rx) = oneshot::channel();
        let flush = async {
            if shared.queue.send(Queued::Flush(flushed)).await.is_ok() {
                let _ = flushed_rx.await;
            }
        };
        if tokio::time::timeout(FLUSH_TIMEOUT, flush).await.is_err() {
            warn!("The observation receiver did not take the last observations in time.");
        }
        background.forwarder.abort();
        info!("Runtime shut down.");
    }

    /// Hands each instance of an accepted set to its worker (sync: no IO, no waiting).
    fn reconcile(&self, desired: DesiredInstances) -> ApplySummary {
        self.inner.checks.set(&desired.checks);
        self.inner.actions.set(desired.generation, &desired.actions);
        let mut summary = ApplySummary {
            generation: desired.generation,
            ..ApplySummary::default()
        };
        let wanted: BTreeSet<InstanceId> = desired.instances.iter().map(|a| a.id.clone()).collect();
        let mut workers = lock(&self.inner.workers);
        for (id, worker) in workers.iter() {
            if !wanted.contains(id) && worker.desired.borrow().is_some() {
                worker.desired.send_replace(None);
                summary.stopped.push(id.clone());
            }
        }
        for assignment in desired.instances {
            let id = assignment.id.clone();
            let target = Arc::new(Target {
                generation: desired.generation,
                digest: digest(&assignment),
                assignment,
            });
            match workers.get(&id) {
                Some(worker) if !worker.task.is_finished() => {
                    let previous = worker.desired.borrow().clone();
                    match previous {
                        Some(previous) if previous.assignment == target.assignment => {
                            let failed = lock(&worker.status)
                                .pending
                                .as_ref()
                                .is_some_and(|pending| pending.word == InstanceStateWord::SpawnFailed);
                            if failed {
                                worker.retry.notify_one();
                                summary.retried.push(id);
                            } else {
                                summary.unchanged.push(id);
                            }
                        }
                        Some(_) => {
                            worker.desired.send_replace(Some(target));
                            summary.replaced.push(id);
                        }
                        None => {
                            worker.desired.send_replace(Some(target));
                            summary.started.push(id);
                        }
                    }
                }
                _ => {
                    let handle = spawn_worker(&self.inner.shared, &self.inner.workers, id.clone(), target);
                    workers.insert(id.clone(), handle);
                    summary.started.push(id);
                }
            }
        }
        summary
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Not shut down: the workers see their targets gone and stop their runs; the background
        // tasks would otherwise keep the supervisor alive.
        if let Some(background) = lock(&self.background).take() {
            background.bookkeeper.abort();
            background.forwarder.abort();
            background.groups_writer.abort();
            background.sampler.abort();
        }
    }
}

// === impl Shared ===

impl Shared {
    /// Queues an observation, waiting for room.
    async fn observe(&self, observed: Observed) {
        // An error means the forwarder is gone: the runtime is going away.
        let _ = self.queue.send(Queued::Observed(observed)).await;
    }

    /// Queues an observation without waiting; drops it (and says so) when the queue is full.
    fn observe_now(&self, observed: Observed) {
        if let Err(mpsc::error::TrySendError::Full(dropped)) = self.queue.try_send(Queued::Observed(observed)) {
            warn!(
                ?dropped,
                "Observation queue full (the receiver is not keeping up); dropping an observation."
            );
        }
    }

    fn set_group(&self, pgid: u32, record: Option<state::GroupRecord>) {
        {
            let mut groups = lock(&self.groups);
            match record {
                Some(record) => groups.groups.insert(pgid, record),
                None => groups.groups.remove(&pgid),
            };
        }
        self.groups_changed.notify_one();
    }

    /// Records one supervisor event: the run's state, the live groups, and the observations.
    fn record(&self, event: InstanceEvent) {
        let Some(run) = lock(&self.runs).get(&event.id).cloned() else {
            debug!(id = %event.id, "Event of a run the runtime does not know.");
            return;
        };
        let mut out = Vec::with_capacity(2);
        let mut group_change = None;
        {
            let mut run_state = lock(&run.state);
            let mut exit_code = None;
            let mut signal = None;
            let mut detail = String::new();
            let mut pid = None;
            let word = match &event.state {
                InstanceState::Starting => {
                    run_state.starts = run_state.starts.saturating_add(1);
                    run_state.pid = None;
                    InstanceStateWord::Starting
                }
                InstanceState::Running { pid: running } => {
                    run_state.pid = Some(*running);
                    run_state.pgid = Some(*running);
                    pid = Some(*running);
                    group_change = Some((
                        *running,
                        Some(state::GroupRecord {
                            instance: run.instance.0.clone(),
                            start_ticks: procfs::start_ticks(*running),
                        }),
                    ));
                    InstanceStateWord::Running
                }
                InstanceState::SpawnFailed { error } => {
                    run_state.pid = None;
                    detail = format!("could not spawn: {error}");
                    InstanceStateWord::SpawnFailed
                }
                InstanceState::Exited { code, signal: by } => {
                    run_state.pid = None;
                    exit_code = *code;
                    signal = *by;
                    InstanceStateWord::Exited
                }
                InstanceState::BackingOff { attempt, delay } => {
                    // The supervisor reaped the group's leftovers before this event.
                    group_change = run_state.pgid.take().map(|pgid| (pgid, None));
                    detail = format!("restart {attempt} of a series, in {delay:?}");
                    InstanceStateWord::BackingOff
                }
                InstanceState::Stopping => {
                    pid = run_state.pid;
                    InstanceStateWord::Stopping
                }
                InstanceState::Stopped { killed } => {
                    run_state.pid = None;
                    group_change = run_state.pgid.take().map(|pgid| (pgid, None));
                    if *killed {
                        detail = "killed with SIGKILL after the stop grace period".to_owned();
                    }
                    InstanceStateWord::Stopped
                }
            };
            run_state.word = word;
            if word == InstanceStateWord::Running {
                // Without a probe, running is healthy; with one, the health loop decides.
                if !run.probed {
                    run.healthy_now.send_replace(true);
                }
            } else {
                run.healthy_now.send_replace(false);
            }
            out.push(Observed::InstanceState(InstanceStateChange {
                instance: run.instance.clone(),
                generation: run_state.generation,
                state: word,
                version: run.version.clone(),
                pid,
                exit_code,
                signal,
                restarts: run_state.starts.saturating_sub(1),
                detail: bounded(detail),
            }));
            // Without a probe, running is healthy (reported by the run that reports the
            // instance's health; an old run being replaced beside its successor does not).
            if !run.probed {
                let running = word == InstanceStateWord::Running;
                if running != run_state.healthy {
                    run_state.healthy = running;
                    if run_state.reporting {
                        out.push(Observed::Health(HealthResult {
                            instance: run.instance.clone(),
                            healthy: running,
                            detail: unprobed_detail(word),
                        }));
                    }
                }
            }
        }
        if let Some((pgid, record)) = group_change {
            self.set_group(pgid, record);
        }
        if matches!(event.state, InstanceState::Stopped { .. }) {
            // The last event of a run: its key is never started again.
            lock(&self.runs).remove(&event.id);
        }
        for observed in out {
            self.observe_now(observed);
        }
    }
}

// === background tasks ===

async fn bookkeeper(
    shared: Arc<Shared>,
    mut events: broadcast::Receiver<InstanceEvent>,
    mut drain: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            biased;
            event = events.recv() => match event {
                Ok(event) => shared.record(event),
                Err(broadcast::error::RecvError::Lagged(n_missed)) => {
                    warn!(n_missed, "The runtime missed supervisor events; states may be stale until the next transition.");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = drain.wait_for(|drain| *drain) => {
                loop {
                    match events.try_recv() {
                        Ok(event) => shared.record(event),
                        Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                        Err(_) => return,
                    }
                }
            }
        }
    }
}

async fn forwarder(mut queue: mpsc::Receiver<Queued>, observations: mpsc::Sender<Observed>) {
    let mut open = true;
    while let Some(item) = queue.recv().await {
        match item {
            Queued::Observed(observed) => {
                if open && observations.send(observed).await.is_err() {
                    open = false;
                    warn!("The observation receiver is gone; discarding observations from now on.");
                }
            }
            Queued::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

async fn groups_writer(shared: Arc<Shared>) {
    let dir = runtime_dir(&shared.config);
    loop {
        shared.groups_changed.notified().await;
        let groups = {
            let groups = lock(&shared.groups);
            state::Groups {
                boot_id: groups.boot_id.clone(),
                groups: groups.groups.clone(),
            }
        };
        let dir = dir.clone();
        if let Err(error) = blocking(move || state::write_groups(&dir, &groups)).await {
            warn!(error = %crate::error_chain(&error), "Could not update the process group record.");
        }
    }
}

async fn sampler(shared: Arc<Shared>) {
    let period = shared.config.resource_interval.max(MIN_INTERVAL);
    let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let running: Vec<(InstanceId, i32)> = lock(&shared.runs)
            .values()
            .filter_map(|run| {
                let run_state = lock(&run.state);
                let pid = run_state
                    .pid
                    .filter(|_| run_state.word == InstanceStateWord::Running && run_state.reporting)?;
                Some((run.instance.clone(), i32::try_from(pid).ok()?))
            })
            .collect();
        if running.is_empty() {
            continue;
        }
        let pgids: BTreeSet<i32> = running.iter().map(|(_, pgid)| *pgid).collect();
        let usage = match tokio::task::spawn_blocking(move || procfs::group_usage(&pgids)).await {
            Ok(usage) => usage,
            Err(error) => {
                warn!(%error, "Resource sampling failed.");
                continue;
            }
        };
        for (instance, pgid) in running {
            if let Some(usage) = usage.get(&pgid) {
                shared
                    .observe(Observed::Resources(ResourceUse {
                        instance,
                        rss_bytes: usage.rss_bytes,
                        cpu_millis: procfs::ticks_to_millis(usage.cpu_ticks, shared.clock_ticks),
                    }))
                    .await;
            }
        }
    }
}

async fn health_loop(shared: Arc<Shared>, run: Arc<Run>, plan: HealthPlan, mut cancel: watch::Receiver<()>) {
    let instance = run.instance.clone();
    let mut tracker = HealthTracker::new(plan.healthy_after, plan.unhealthy_after);
    // The process (starts) and the reporting period (epoch) the tracker counts for.
    let mut counted = (0, 0);
    loop {
        tokio::select! {
            () = sleep(plan.interval) => {}
            _ = cancel.changed() => return,
        }
        // A restarted process starts unknown: the server forgets the health of an instance that
        // exits, so the first verdict on the new process must be reported even when it is the
        // same as the old one's (a quick restart is not seen as a failure by the thresholds).
        // Likewise when the run reports again after another run of the instance reported.
        let (now, reporting) = {
            let run_state = lock(&run.state);
            ((run_state.starts, run_state.epoch), run_state.reporting)
        };
        if now != counted {
            counted = now;
            tracker = HealthTracker::new(plan.healthy_after, plan.unhealthy_after);
        }
        if !reporting {
            // An old run beside its replacement: the instance's health is the new run's.
            continue;
        }
        // A probe is not interrupted: it ends within its timeout and kills what it started.
        let result = health::probe(&plan.probe, plan.timeout).await;
        if cancel.has_changed().is_err() {
            return;
        }
        let (same_period, running_as_probed) = {
            let run_state = lock(&run.state);
            (
                run_state.epoch == counted.1 && run_state.reporting,
                run_state.starts == counted.0 && run_state.word == InstanceStateWord::Running,
            )
        };
        if !same_period {
            // Muted or re-announced during the probe: the next tick counts afresh.
            continue;
        }
        let healthy = match tracker.observe(result.ok) {
            Some(HealthState::Healthy) => true,
            Some(HealthState::Unhealthy) => false,
            Some(HealthState::Unknown) | None => continue,
        };
        // What a start-first replacement waits for: a verdict on the process running now.
        run.healthy_now.send_replace(healthy && running_as_probed);
        shared
            .observe(Observed::Health(HealthResult {
                instance: instance.clone(),
                healthy,
                detail: bounded(result.detail),
            }))
            .await;
    }
}

// === workers ===

fn spawn_worker(shared: &Arc<Shared>, workers: &Workers, id: InstanceId, target: Arc<Target>) -> WorkerHandle {
    let (desired, desired_rx) = watch::channel(Some(target));
    let retry = Arc::new(Notify::new());
    let status = Arc::new(Mutex::new(WorkerStatus::default()));
    let worker = Worker {
        shared: Arc::clone(shared),
        id,
        desired: desired_rx,
        retry: Arc::clone(&retry),
        status: Arc::clone(&status),
        workers: Arc::downgrade(workers),
        current: None,
        next: None,
        reported: None,
    };
    WorkerHandle {
        desired,
        retry,
        status,
        task: tokio::spawn(worker.run()),
    }
}

/// The task that owns one instance's runs.
struct Worker {
    shared: Arc<Shared>,
    id: InstanceId,
    desired: watch::Receiver<Option<Arc<Target>>>,
    retry: Arc<Notify>,
    status: Arc<Mutex<WorkerStatus>>,
    workers: Weak<Mutex<BTreeMap<InstanceId, WorkerHandle>>>,
    /// The run that serves.
    current: Option<Current>,
    /// A start-first replacement running beside `current` until it is healthy.
    next: Option<Current>,
    /// The newest generation of a run this worker started (what the server last heard of).
    reported: Option<Generation>,
}

impl Worker {
    async fn run(mut self) {
        let mut failures: u32 = 0;
        loop {
            let target = self.desired.borrow_and_update().clone();
            let Some(target) = target else {
                let never_ran = self.current.is_none() && self.next.is_none();
                self.retire_next().await;
                self.retire().await;
                let pending = lock(&self.status).pending.take();
                if let Some(pending) = pending.filter(|_| never_ran) {
                    // It never ran (it was installing, or could not be installed): no run stops to
                    // say it is gone, so this does, or the server would wait for it.
                    self.shared
                        .observe(Observed::InstanceState(InstanceStateChange {
                            instance: self.id.clone(),
                            generation: pending.generation,
                            state: InstanceStateWord::Stopped,
                            version: pending.version,
                            pid: None,
                            exit_code: None,
                            signal: None,
                            restarts: 0,
                            detail: format!("removed before it ever ran (it was {})", word_name(pending.word)),
                        }))
                        .await;
                }
                if self.leave() {
                    return;
                }
                continue;
            };
            if let Some(next) = &self.next {
                if next.target.assignment == target.assignment {
                    // The replacement under way is still what is wanted.
                    match self.await_next().await {
                        Replacement::Healthy => {
                            self.promote().await;
                            continue;
                        }
                        Replacement::Again => continue,
                        Replacement::Gone => break,
                    }
                }
                debug!(instance = %self.id, "Superseded before the start-first replacement was healthy.");
                self.abandon_next().await;
            }
            if self
                .current
                .as_ref()
                .is_some_and(|current| current.target.assignment == target.assignment)
            {
                // Up to date (for instance after a revert during an install).
                lock(&self.status).pending = None;
                failures = 0;
                self.adopt(&target);
                match self.wait(None).await {
                    Wake::Again => continue,
                    Wake::Gone => break,
                }
            }
            lock(&self.status).pending = Some(Pending {
                generation: target.generation,
                version: target.assignment.artifact.version.clone(),
                word: InstanceStateWord::Starting,
            });
            let prepared = tokio::select! {
                prepared = prepare(&self.shared, &target) => Ok(prepared),
                changed = self.desired.changed() => Err(if changed.is_ok() { Wake::Again } else { Wake::Gone }),
            };
            let prepared = match prepared {
                Ok(prepared) => prepared,
                Err(Wake::Again) => {
                    debug!(instance = %self.id, "Superseded while installing.");
                    continue;
                }
                Err(Wake::Gone) => break,
            };
            match prepared {
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let detail = bounded(crate::error_chain(&error));
                    warn!(instance = %self.id, %detail, failures, "Instance could not be prepared.");
                    lock(&self.status).pending = Some(Pending {
                        generation: target.generation,
                        version: target.assignment.artifact.version.clone(),
                        word: InstanceStateWord::SpawnFailed,
                    });
                    self.shared
                        .observe(Observed::InstanceState(InstanceStateChange {
                            instance: self.id.clone(),
                            generation: target.generation,
                            state: InstanceStateWord::SpawnFailed,
                            version: target.assignment.artifact.version.clone(),
                            pid: None,
                            exit_code: None,
                            signal: None,
                            restarts: failures - 1,
                            detail,
                        }))
                        .await;
                    let delay = self.shared.config.restart.delay(failures);
                    match self.wait(Some(delay)).await {
                        Wake::Again => continue,
                        Wake::Gone => break,
                    }
                }
                Ok(prepared) if self.starts_beside(&target) => {
                    failures = 0;
                    // The top of the loop waits for it to be healthy (or abandons it).
                    if !self.start_next(target, prepared).await {
                        break;
                    }
                }
                Ok(prepared) => {
                    failures = 0;
                    self.retire().await;
                    if self.desired.has_changed().unwrap_or(true) {
                        // Changed while the old run stopped: start from the newest target instead.
                        continue;
                    }
                    if !self.start(target, prepared).await {
                        break;
                    }
                }
            }
        }
        // The runtime is gone (or shutting down).
        self.retire_next().await;
        self.retire().await;
        lock(&self.status).pending = None;
    }

    /// Waits for a new target, a retry, or `delay`.
    async fn wait(&mut self, delay: Option<Duration>) -> Wake {
        let delay = async {
            match delay {
                Some(delay) => sleep(delay).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = self.desired.changed() => match changed {
                Ok(()) => Wake::Again,
                Err(_) => Wake::Gone,
            },
            () = self.retry.notified() => Wake::Again,
            () = delay => Wake::Again,
        }
    }

    /// Waits for the start-first replacement to be healthy, or for a new target.
    async fn await_next(&mut self) -> Replacement {
        let Some(next) = &self.next else {
            return Replacement::Again;
        };
        let mut healthy = next.run.healthy_now.subscribe();
        tokio::select! {
            biased;
            changed = self.desired.changed() => match changed {
                Ok(()) => Replacement::Again,
                Err(_) => Replacement::Gone,
            },
            // The run holds the sender: this cannot fail while `next` is kept.
            _ = healthy.wait_for(|healthy| *healthy) => Replacement::Healthy,
        }
    }

    /// Removes this worker from the runtime unless it was given a new target meanwhile. Returns
    /// whether the worker should end.
    fn leave(&self) -> bool {
        let Some(workers) = self.workers.upgrade() else {
            return true;
        };
        let mut workers = lock(&workers);
        // Under the lock `reconcile` sends with, so no target can be handed over after this check.
        if self.desired.borrow().is_some() {
            return false;
        }
        workers.remove(&self.id);
        true
    }

    /// Whether `target` replaces the current run start-first: it asks for it and there is a
    /// running run to keep serving meanwhile.
    fn starts_beside(&self, target: &Target) -> bool {
        target.assignment.upgrade == UpgradeOrder::StartFirst
            && self
                .current
                .as_ref()
                .is_some_and(|current| lock(&current.run.state).word == InstanceStateWord::Running)
    }

    /// Starts a prepared run as the current one (nothing else runs). Returns false when the
    /// supervisor is gone.
    async fn start(&mut self, target: Arc<Target>, prepared: Prepared) -> bool {
        let Some(started) = self.launch(target, prepared).await else {
            return false;
        };
        {
            let mut status = lock(&self.status);
            status.run = Some(Arc::clone(&started.run));
            status.pending = None;
        }
        let work_dir = started.work_dir.clone();
        self.current = Some(started);
        self.remove_stale_run_dirs(work_dir).await;
        true
    }

    /// Starts a prepared run beside the current one, as the run the instance reports from now on.
    /// Returns false when the supervisor is gone.
    async fn start_next(&mut self, target: Arc<Target>, prepared: Prepared) -> bool {
        let Some(started) = self.launch(target, prepared).await else {
            return false;
        };
        if let Some(current) = &self.current {
            current.run.set_reporting(&self.shared, false);
            info!(instance = %self.id, old = %current.run.key, new = %started.run.key, "Started a replacement beside the running run; the old run stops once the new one is healthy.");
        }
        {
            let mut status = lock(&self.status);
            status.run = Some(Arc::clone(&started.run));
            status.pending = None;
        }
        let work_dir = started.work_dir.clone();
        self.next = Some(started);
        self.remove_stale_run_dirs(work_dir).await;
        true
    }

    /// Removes the run directories of the slot but `newest` and the [`KEEP_OTHER_RUN_DIRS`] newest
    /// others, except those of the runs this worker supervises.
    async fn remove_stale_run_dirs(&self, newest: PathBuf) {
        let Some(slot_dir) = newest.parent().map(Path::to_owned) else {
            return;
        };
        let live: Vec<PathBuf> = self
            .current
            .iter()
            .chain(&self.next)
            .map(|run| run.work_dir.clone())
            .collect();
        let removed = tokio::task::spawn_blocking(move || {
            let stale = state::stale_run_dirs(&slot_dir, &newest, KEEP_OTHER_RUN_DIRS);
            let mut n_removed = 0;
            for dir in stale.iter().filter(|dir| !live.contains(dir)) {
                match std::fs::remove_dir_all(dir) {
                    Ok(()) => n_removed += 1,
                    Err(error) => warn!(dir = %dir.display(), %error, "Could not remove an old run directory."),
                }
            }
            n_removed
        })
        .await;
        debug!(instance = %self.id, removed = ?removed, "Old run directories removed.");
    }

    /// The start-first replacement is healthy: it becomes the current run and the old one goes.
    async fn promote(&mut self) {
        let Some(next) = self.next.take() else {
            return;
        };
        info!(instance = %self.id, run = %next.run.key, "The start-first replacement is healthy; retiring the old run.");
        if let Some(old) = self.current.replace(next) {
            self.retire_run(old).await;
        }
    }

    /// Stops the start-first replacement (superseded before it was healthy): the old run is the
    /// instance's again.
    async fn abandon_next(&mut self) {
        let Some(next) = self.next.take() else {
            return;
        };
        // Its last changes (stopping, stopped) are not the instance's health any more.
        next.run.set_reporting(&self.shared, false);
        if let Some(current) = &self.current {
            lock(&self.status).run = Some(Arc::clone(&current.run));
        }
        info!(instance = %self.id, run = %next.run.key, "Abandoning the start-first replacement.");
        self.retire_run(next).await;
        if let Some(current) = &self.current {
            current.run.set_reporting(&self.shared, true);
        }
    }

    /// The current run is what `target` asks for. When the server heard of a newer run of this
    /// instance since (a start-first replacement, abandoned), the current run is re-announced
    /// with the target's generation: the server ignores observations of older generations.
    fn adopt(&mut self, target: &Arc<Target>) {
        let Some(current) = &mut self.current else {
            return;
        };
        let generation = lock(&current.run.state).generation;
        if self.reported.is_none_or(|reported| reported <= generation) {
            return;
        }
        info!(instance = %self.id, run = %current.run.key, from = %generation, to = %target.generation, "Keeping the run: its replacement was abandoned for its own assignment.");
        current.run.announce(
            &self.shared,
            target.generation,
            format!(
                "kept from generation {generation}: its replacement was abandoned for generation {}",
                target.generation
            ),
        );
        current.target = Arc::clone(target);
        self.reported = Some(target.generation);
    }

    /// Starts a run under a new supervisor id, with its health loop. None when the supervisor is
    /// gone.
    async fn launch(&mut self, target: Arc<Target>, prepared: Prepared) -> Option<Current> {
        let n = self.shared.next_run.fetch_add(1, Ordering::Relaxed);
        let key = format!("{} run {n}", self.id);
        let run = Arc::new(Run {
            key: key.clone(),
            instance: self.id.clone(),
            version: target.assignment.artifact.version.clone(),
            probed: prepared.health.is_some(),
            healthy_now: watch::Sender::new(false),
            state: Mutex::new(RunState {
                generation: target.generation,
                word: InstanceStateWord::Starting,
                pid: None,
                pgid: None,
                starts: 0,
                healthy: false,
                reporting: true,
                epoch: 0,
            }),
        });
        let work_dir = prepared.spec.work_dir.clone();
        let mut spec = prepared.spec;
        spec.id = key.clone();
        lock(&self.shared.runs).insert(key.clone(), Arc::clone(&run));
        if let Err(error) = self.shared.supervisor.start(spec).await {
            lock(&self.shared.runs).remove(&key);
            warn!(instance = %self.id, %error, "Could not start the instance.");
            return None;
        }
        info!(instance = %self.id, generation = %target.generation, version = %run.version, dir = %work_dir.display(), "Instance run started.");
        self.reported = self.reported.max(Some(target.generation));
        let health = prepared.health.map(|plan| {
            let (cancel, cancel_rx) = watch::channel(());
            tokio::spawn(health_loop(Arc::clone(&self.shared), Arc::clone(&run), plan, cancel_rx));
            cancel
        });
        Some(Current {
            run,
            target,
            work_dir,
            _health: health,
        })
    }

    /// Stops the current run, if any (its health loop first), and forgets it.
    async fn retire(&mut self) {
        if let Some(current) = self.current.take() {
            self.retire_run(current).await;
        }
    }

    /// Stops the start-first replacement, if any, and forgets it.
    async fn retire_next(&mut self) {
        if let Some(next) = self.next.take() {
            self.retire_run(next).await;
        }
    }

    /// Stops a run (its health loop first) and forgets it.
    async fn retire_run(&self, retired: Current) {
        let Current {
            run, _health: health, ..
        } = retired;
        drop(health);
        let supervisor = &self.shared.supervisor;
        if let Err(error) = supervisor.stop(&run.key).await {
            debug!(instance = %self.id, %error, "Stopping a run the supervisor no longer has.");
        }
        let _ = supervisor.forget(&run.key).await;
        let mut status = lock(&self.status);
        if status.run.as_ref().is_some_and(|shown| Arc::ptr_eq(shown, &run)) {
            status.run = None;
        }
        info!(instance = %self.id, run = %run.key, "Instance run stopped.");
    }
}

// === preparing a run ===

/// Installs the artifact and creates the run directory with its config files.
async fn prepare(shared: &Shared, target: &Target) -> Result<Prepared, RuntimeError> {
    let assignment = &target.assignment;
    let instance = &assignment.id;
    let invalid = |reason: String| RuntimeError::Assignment {
        instance: instance.clone(),
        reason,
    };
    let (system, component, slot) = split_instance_id(instance).map_err(invalid)?;
    let artifact = match &assignment.artifact.source {
        ArtifactSource::Path { path } => {
            ArtifactRef::Path(resolve_artifact_path(&shared.config.artifact_root, path).map_err(invalid)?)
        }
        ArtifactSource::Url { url, sha256 } => ArtifactRef::Url {
            url: url.clone(),
            sha256: sha256.clone(),
        },
    };
    let version = VersionDir {
        component: format!("{system}/{component}"),
        version: assignment.artifact.version.clone(),
    };
    let installed = shared
        .artifacts
        .install(&artifact, &version)
        .await
        .map_err(|source| RuntimeError::Artifact {
            instance: instance.clone(),
            source,
        })?;
    let program = relative_to(&installed.dir, &assignment.command).ok_or_else(|| {
        invalid(format!(
            "command {:?}: must be absolute, or relative without '..'",
            assignment.command
        ))
    })?;
    let work_dir = shared
        .config
        .data_dir
        .join("instances")
        .join(system)
        .join(component)
        .join(slot)
        .join(format!("{}-{}", target.generation.0, target.digest));
    let run_as = assignment
        .run_as
        .as_ref()
        .map(resolve_run_as)
        .transpose()
        .map_err(invalid)?;
    let health = assignment
        .health
        .as_ref()
        .map(|health| health_plan(health, assignment, &installed.dir, (&work_dir, run_as)))
        .transpose()
        .map_err(invalid)?;
    let files = assignment.config_files.clone();
    let dir = work_dir.clone();
    let instance_id = instance.clone();
    let data_dir = shared.config.data_dir.clone();
    blocking(move || {
        if run_as.is_some() {
            // The instance's user reaches its program and run directory through the data
            // directory: traversal only, not listing (the identity key stays 0600).
            allow_traversal(&data_dir)?;
        }
        create_run_dir(&instance_id, &dir, &files, run_as)
    })
    .await?;
    Ok(Prepared {
        spec: InstanceSpec {
            id: instance.0.clone(),
            program,
            args: assignment.args.clone(),
            env: assignment.env.clone(),
            work_dir,
            stop_grace: Duration::from_millis(assignment.stop_grace_ms),
            restart: shared.config.restart,
            run_as,
        },
        health,
    })
}

/// The user and group ids of `run_as` on this host: refused, saying why, when the user or group
/// does not exist, or when the agent is not root and is not that user already.
fn resolve_run_as(run_as: &endstate_agent_proto::RunAs) -> Result<(u32, u32), String> {
    use nix::unistd::{Group, User};
    let user = User::from_name(&run_as.user)
        .map_err(|e| format!("run_as: cannot look up user `{}`: {e}", run_as.user))?
        .ok_or_else(|| format!("run_as: user `{}` does not exist on this host", run_as.user))?;
    let gid = match &run_as.group {
        Some(name) => {
            Group::from_name(name)
                .map_err(|e| format!("run_as: cannot look up group `{name}`: {e}"))?
                .ok_or_else(|| format!("run_as: group `{name}` does not exist on this host"))?
                .gid
        }
        None => user.gid,
    };
    let me = nix::unistd::geteuid();
    if !me.is_root() && me != user.uid {
        return Err(format!(
            "run_as: user `{}` needs the agent to run as root (it runs as uid {me})",
            run_as.user
        ));
    }
    Ok((user.uid.as_raw(), gid.as_raw()))
}

/// A fresh run directory with the config files in it, owned by the instance's user when it runs
/// as another one.
fn create_run_dir(
    instance: &InstanceId,
    dir: &Path,
    files: &[endstate_agent_proto::ConfigFile],
    run_as: Option<(u32, u32)>,
) -> Result<(), RuntimeError> {
    let io_failed = |action: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| RuntimeError::Io { action, path, source }
    };
    match std::fs::remove_dir_all(dir) {
        Ok(()) => debug!(dir = %dir.display(), "Removed a run directory left by an earlier agent."),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(io_failed("remove the old run directory", dir)(error)),
    }
    std::fs::create_dir_all(dir).map_err(io_failed("create the run directory", dir))?;
    // Config files often hold secrets: the run directory is its instance's alone.
    std::fs::set_permissions(
        dir,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o700),
    )
    .map_err(io_failed("protect the run directory", dir))?;
    for file in files {
        let relative = plain_relative(&file.path).ok_or_else(|| RuntimeError::Assignment {
            instance: instance.clone(),
            reason: format!("config file {:?}: must be a relative path without '..'", file.path),
        })?;
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_failed("create directory", parent))?;
        }
        // `create_new`: a path listed twice is an error, not a silent overwrite.
        std::os::unix::fs::OpenOptionsExt::mode(std::fs::OpenOptions::new().write(true).create_new(true), 0o600)
            .open(&path)
            .and_then(|mut out| std::io::Write::write_all(&mut out, file.content.as_bytes()))
            .map_err(io_failed("write config file", &path))?;
    }
    if let Some((uid, gid)) = run_as {
        chown_tree(dir, uid, gid).map_err(io_failed("hand the run directory to the instance's user", dir))?;
    }
    Ok(())
}

/// Adds `o+x` to a directory, so other users may pass through it.
fn allow_traversal(dir: &Path) -> Result<(), RuntimeError> {
    use std::os::unix::fs::PermissionsExt;
    let failed = |source| RuntimeError::Io {
        action: "let the instance's user through",
        path: dir.to_owned(),
        source,
    };
    let mode = std::fs::metadata(dir).map_err(failed)?.permissions().mode();
    if mode & 0o001 == 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o001)).map_err(failed)?;
    }
    Ok(())
}

/// `chown` of a directory and everything in it (no symbolic link is followed).
fn chown_tree(dir: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            chown_tree(&entry.path(), uid, gid)?;
        } else {
            std::os::unix::fs::lchown(entry.path(), Some(uid), Some(gid))?;
        }
    }
    Ok(())
}

fn health_plan(
    health: &HealthProbe,
    assignment: &InstanceAssignment,
    version_dir: &Path,
    (work_dir, run_as): (&Path, Option<(u32, u32)>),
) -> Result<HealthPlan, String> {
    let port = |name: &String| {
        assignment
            .ports
            .get(name)
            .copied()
            .ok_or_else(|| format!("health probe port {name:?} is not one of the instance's ports"))
    };
    let probe = match &health.probe {
        endstate_agent_proto::Probe::Http { port: name, path } => Probe::Http {
            port: port(name)?,
            path: path.clone(),
        },
        endstate_agent_proto::Probe::Tcp { port: name } => Probe::Tcp { port: port(name)? },
        endstate_agent_proto::Probe::Exec { command, args } => Probe::Exec {
            program: probe_program(version_dir, command),
            args: args.clone(),
            env: assignment.env.clone(),
            work_dir: Some(work_dir.to_owned()),
            run_as,
        },
    };
    Ok(HealthPlan {
        probe,
        interval: Duration::from_millis(health.interval_ms).max(MIN_INTERVAL),
        timeout: Duration::from_millis(health.timeout_ms.max(1)),
        healthy_after: health.healthy_after,
        unhealthy_after: health.unhealthy_after,
    })
}

/// An exec probe's program: absolute; relative to the version directory when it contains a `/`
/// or names a file there; else a bare name looked up through the instance's `PATH`.
fn probe_program(version_dir: &Path, command: &str) -> PathBuf {
    let path = Path::new(command);
    if path.is_absolute() {
        return path.to_owned();
    }
    let candidate = version_dir.join(path);
    if command.contains('/') || candidate.is_file() {
        candidate
    } else {
        path.to_owned()
    }
}

// === names and paths ===

/// `system/component#slot` split into its parts, each a valid path segment.
fn split_instance_id(id: &InstanceId) -> Result<(&str, &str, &str), String> {
    let malformed = || format!("instance id {:?} is not system/component#slot", id.0);
    let (system, rest) = id.0.split_once('/').ok_or_else(malformed)?;
    let (component, slot) = rest.rsplit_once('#').ok_or_else(malformed)?;
    let valid = validate_name(system).is_ok()
        && validate_name(component).is_ok()
        && !slot.is_empty()
        && slot.parse::<u32>().is_ok()
        && slot.bytes().all(|b| b.is_ascii_digit());
    if valid {
        Ok((system, component, slot))
    } else {
        Err(malformed())
    }
}

/// A relative path made only of plain segments (`.` allowed), not empty.
fn plain_relative(path: &str) -> Option<&Path> {
    let path = Path::new(path);
    let mut n_normal = 0;
    for component in path.components() {
        match component {
            Component::Normal(_) => n_normal += 1,
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (n_normal > 0).then_some(path)
}

/// `path` if absolute, else `base/path` when `path` is plain relative.
fn relative_to(base: &Path, path: &str) -> Option<PathBuf> {
    if Path::new(path).is_absolute() {
        return Some(PathBuf::from(path));
    }
    plain_relative(path).map(|relative| base.join(relative))
}

/// An artifact `path` source: absolute, or relative to the artifact root without `..`.
fn resolve_artifact_path(root: &Path, path: &str) -> Result<PathBuf, String> {
    relative_to(root, path).ok_or_else(|| {
        format!("artifact path {path:?}: must be absolute, or relative to the artifact root without '..'")
    })
}

/// The first [`DIGEST_LEN`] hex digits of the SHA-256 of the assignment's JSON.
fn digest(assignment: &InstanceAssignment) -> String {
    // Struct fields serialise in declaration order and maps are sorted, so this is stable.
    let bytes = serde_json::to_vec(assignment).unwrap_or_else(|_| format!("{assignment:?}").into_bytes());
    Sha256::digest(&bytes)
        .iter()
        .take(DIGEST_LEN / 2)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

// === killing what a previous agent left ===

/// SIGTERM to every recorded group that is still ours, [`LEFTOVER_GRACE`], then SIGKILL.
async fn kill_leftovers(recorded: state::Groups, boot_id: &str) {
    if recorded.groups.is_empty() {
        return;
    }
    if !recorded.boot_id.is_empty() && !boot_id.is_empty() && recorded.boot_id != boot_id {
        info!(
            n_groups = recorded.groups.len(),
            "The recorded process groups are from an earlier boot; nothing to kill."
        );
        return;
    }
    let own = nix::unistd::getpgrp().as_raw();
    let candidates: BTreeMap<i32, state::GroupRecord> = recorded
        .groups
        .into_iter()
        .filter_map(|(pgid, record)| {
            let pgid = i32::try_from(pgid).ok().filter(|pgid| *pgid > 1 && *pgid != own);
            if pgid.is_none() {
                warn!(instance = %record.instance, "Not signalling a recorded process group id that cannot be an instance's.");
            }
            Some((pgid?, record))
        })
        .collect();
    let mut groups = tokio::task::spawn_blocking(move || {
        let ids: BTreeSet<i32> = candidates.keys().copied().collect();
        let live = procfs::live_groups(&ids);
        candidates
            .into_iter()
            .filter(|(pgid, record)| {
                if !live.contains(pgid) {
                    return false;
                }
                // A leader that exists with another start time is another process: the id was reused.
                let reused = procfs::read_stat(*pgid).is_some_and(|stat| {
                    stat.pgrp == *pgid && record.start_ticks.is_some_and(|ticks| ticks != stat.start_ticks)
                });
                if reused {
                    warn!(pgid, instance = %record.instance, "A recorded process group id was reused; not signalling it.");
                }
                !reused
            })
            .map(|(pgid, _)| pgid)
            .collect::<BTreeSet<i32>>()
    })
    .await
    .unwrap_or_default();
    if groups.is_empty() {
        return;
    }
    for pgid in &groups {
        warn!(pgid, "Stopping a process group left running by the previous agent.");
        let _ = killpg(Pid::from_raw(*pgid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + LEFTOVER_GRACE;
    loop {
        let ids = groups.clone();
        groups = tokio::task::spawn_blocking(move || procfs::live_groups(&ids))
            .await
            .unwrap_or_default();
        if groups.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            for pgid in &groups {
                warn!(pgid, "Killing a process group that outlived its grace period.");
                let _ = killpg(Pid::from_raw(*pgid), Signal::SIGKILL);
            }
            return;
        }
        sleep(LEFTOVER_POLL).await;
    }
}

// === helpers ===

fn runtime_dir(config: &RuntimeConfig) -> PathBuf {
    config.data_dir.join("runtime")
}

/// Locks a mutex; a poisoned one is used as it is (every critical section here leaves the data
/// consistent before anything that could panic).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs file work on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RuntimeError> + Send + 'static,
) -> Result<T, RuntimeError> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|error| {
        Err(RuntimeError::Io {
            action: "finish file work in",
            path: PathBuf::from("(blocking task)"),
            source: io::Error::other(error),
        })
    })
}

/// `text` cut to [`MAX_DETAIL_BYTES`] at a character boundary, marked with `...` when cut.
fn bounded(mut text: String) -> String {
    if text.len() <= MAX_DETAIL_BYTES {
        return text;
    }
    let mut end = MAX_DETAIL_BYTES - 3;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str("...");
    text
}

/// The detail of a health observation of a run without a probe.
fn unprobed_detail(word: InstanceStateWord) -> String {
    if word == InstanceStateWord::Running {
        "running (no health probe)".to_owned()
    } else {
        format!("not running ({})", word_name(word))
    }
}

fn word_name(word: InstanceStateWord) -> &'static str {
    match word {
        InstanceStateWord::Starting => "starting",
        InstanceStateWord::Running => "running",
        InstanceStateWord::SpawnFailed => "spawn failed",
        InstanceStateWord::Exited => "exited",
        InstanceStateWord::BackingOff => "backing off",
        InstanceStateWord::Stopping => "stopping",
        InstanceStateWord::Stopped => "stopped",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids() {
        assert_eq!(
            split_instance_id(&InstanceId::new("shop", "web", 3)),
            Ok(("shop", "web", "3"))
        );
        for bad in [
            "shop",
            "shop/web",
            "shop/web#",
            "shop/web#x",
            "../x#1",
            "shop/../#1",
            "Shop/web#1",
            "shop/web#-1",
        ] {
            assert!(split_instance_id(&InstanceId(bad.to_owned())).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths() {
        let root = Path::new("/srv/artifacts");
        assert_eq!(
            resolve_artifact_path(root, "bin/example-service"),
            Ok(PathBuf::from("/srv/artifacts/bin/example-service"))
        );
        assert_eq!(resolve_artifact_path(root, "/opt/x"), Ok(PathBuf::from("/opt/x")));
        for bad in ["", "../x", "bin/../../x", "."] {
            let error = resolve_artifact_path(root, bad).unwrap_err();
            assert!(error.contains("without '..'"), "{bad}: {error}");
        }
        assert_eq!(plain_relative("conf/app.toml"), Some(Path::new("conf/app.toml")));
        assert_eq!(plain_relative("./app.toml"), Some(Path::new("./app.toml")));
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "./"] {
            assert_eq!(plain_relative(bad), None, "{bad}");
        }
        let version_dir = Path::new("/data/versions/shop/web/1.0-abc");
        assert_eq!(
            relative_to(version_dir, "example-service"),
            Some(version_dir.join("example-service"))
        );
        assert_eq!(probe_program(version_dir, "test"), PathBuf::from("test"));
        assert_eq!(probe_program(version_dir, "bin/check"), version_dir.join("bin/check"));
        assert_eq!(
            probe_program(version_dir, "/usr/bin/test"),
            PathBuf::from("/usr/bin/test")
        );
    }

    #[test]
    fn details_are_bounded() {
        assert_eq!(bounded("short".to_owned()), "short");
        let long = bounded("é".repeat(MAX_DETAIL_BYTES));
        assert!(long.len() <= MAX_DETAIL_BYTES);
        assert!(long.ends_with("..."));
    }

    #[test]
    fn config_files_stay_in_the_run_directory() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let instance = InstanceId::new("shop", "web", 0);
        let file = |path: &str| endstate_agent_proto::ConfigFile {
            path: path.to_owned(),
            content: "x".to_owned(),
        };
        create_run_dir(&instance, &run, &[file("conf/app.toml")], None).unwrap();
        assert_eq!(std::fs::read_to_string(run.join("conf/app.toml")).unwrap(), "x");
        // Created afresh: what was there is gone.
        create_run_dir(&instance, &run, &[], None).unwrap();
        assert!(!run.join("conf").exists());
        for bad in ["../escape", "/etc/escape", "a/../../escape"] {
            let error = create_run_dir(&instance, &run, &[file(bad)], None).unwrap_err();
            assert!(error.to_string().contains("without '..'"), "{error}");
        }
        assert!(!dir.path().join("escape").exists());
        let twice = create_run_dir(&instance, &run, &[file("a"), file("a")], None).unwrap_err();
        assert!(twice.to_string().contains("write config file"), "{twice}");
    }
}
