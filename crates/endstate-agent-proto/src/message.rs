//! The messages of the protocol, one enum per direction; their layout on the wire is the protocol.
//!
//! Every struct refuses unknown fields except [`Hello`], [`Facts`], [`Welcome`] and [`Refused`]:
//! the handshake must stay readable by a peer of another version (see the crate docs).

use std::collections::BTreeMap;
use std::fmt;

use endstate_types::{Generation, HostName, Labels};
use serde::{Deserialize, Serialize};

/// Everything an agent sends to the server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromAgent {
    /// The first frame of every connection.
    Hello(Hello),
    /// The host's facts changed (they are also part of [`Hello`]).
    Facts(Facts),
    /// The agent is alive.
    Keepalive(Keepalive),
    /// Observations, in `seq` order.
    Observations(Observations),
    /// Every instance the agent runs, after each (re)connection.
    ActualState(ActualState),
    /// The answer to a [`LogsRequest`].
    Logs(Logs),
    /// Asks for a new certificate for the agent's own key (renewal).
    Renew(Renew),
    /// Output of a running action, live; not durable (the result carries its tail).
    ActionOutput(ActionOutput),
}

/// Everything the server sends to an agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromServer {
    /// The handshake succeeded, in this version.
    Welcome(Welcome),
    /// The handshake failed; the server closes the connection after this frame.
    Refused(Refused),
    /// Observations up to a sequence number are durable.
    Ack(Ack),
    /// The complete set of instances the agent should run.
    DesiredInstances(DesiredInstances),
    /// The host's identity is revoked; the server closes the connection after this frame.
    Revoke(Revoke),
    /// Asks for a keepalive now.
    Ping(Ping),
    /// Asks for the recent output of one instance.
    LogsRequest(LogsRequest),
    /// A renewed certificate, answering [`Renew`].
    Certificate(Certificate),
    /// Runs one action of the host's catalogue (the `actions` of its current [`DesiredInstances`]).
    RunAction(RunAction),
    /// Cancels a running action: its process group is killed.
    CancelAction(CancelAction),
}

/// An inclusive range of protocol versions, `min..=max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRange {
    /// The oldest version spoken.
    pub min: u16,
    /// The newest version spoken; at least `min`.
    pub max: u16,
}

/// `hello`, agent → server: who the agent is and which versions it speaks.
///
/// Unknown fields are ignored, so a newer agent may add some and still be refused with a reason
/// (rather than with a parse error) by an older server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The protocol versions the agent speaks.
    pub versions: VersionRange,
    /// The agent's own release (`0.1.0`), for people and for the inventory.
    pub agent_version: String,
    /// The host, as enrolled (its certificate names the same host).
    pub host: HostName,
    /// The labels given at enrolment (`zone`, `role`, ...).
    pub labels: Labels,
    /// The facts at connection time.
    pub facts: Facts,
}

/// `facts`, agent → server (and inside [`Hello`]): what the host is.
///
/// Unknown fields are ignored: it travels inside [`Hello`], and new facts are expected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    /// The host name the operating system reports (may differ from the enrolled [`Hello::host`]).
    pub hostname: String,
    /// The operating system and distribution (`Debian GNU/Linux 13`).
    pub os: String,
    /// The kernel release (`6.12.0-1-amd64`).
    pub kernel: String,
    /// The machine architecture (`x86_64`, `aarch64`).
    pub arch: String,
    /// Logical CPUs.
    pub cpus: u32,
    /// Physical memory, in bytes.
    pub memory_bytes: u64,
    /// Mounted file systems.
    pub disks: Vec<Disk>,
    /// The agent's own release.
    pub agent_version: String,
}

/// One mounted file system.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// Where it is mounted (`/`, `/var`).
    pub mount: String,
    /// Its size, in bytes.
    pub total_bytes: u64,
    /// The space free for unprivileged users, in bytes.
    pub free_bytes: u64,
}

/// `keepalive`, agent → server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keepalive {
    /// Counts keepalives on this connection from 1; not durable, not acknowledged.
    pub seq: u64,
}

/// `observations`, agent → server: a batch in strictly increasing `seq` order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Observations {
    /// At least one, at most [`MAX_OBSERVATIONS`](crate::limits::MAX_OBSERVATIONS).
    pub observations: Vec<Observation>,
}

/// One thing the agent saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Observation {
    /// Per agent, from 1, strictly increasing across connections and restarts (it is kept in the
    /// agent's data directory), never reused: the server stores each `seq` once.
    pub seq: u64,
    /// When the agent saw it, in milliseconds since the Unix epoch, on the agent's clock.
    /// Buffered observations arrive late; this is when they happened.
    pub at_unix_ms: u64,
    /// What was seen.
    pub observed: Observed,
}

/// What an [`Observation`] saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Observed {
    /// An instance changed state.
    InstanceState(InstanceStateChange),
    /// A health probe gave a result.
    Health(HealthResult),
    /// A sample of an instance's resource use.
    Resources(ResourceUse),
    /// A monitoring check gave a result (Nagios plugin semantics).
    Check(CheckResult),
    /// A run of an action ended on this host, or was refused.
    Action(ActionResult),
}

/// How a run of an action ended on one host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionOutcome {
    /// It exited 0.
    Succeeded,
    /// It exited with another code, by a signal, or could not be spawned.
    Failed,
    /// It ran past its timeout; its process group was killed.
    TimedOut,
    /// It was cancelled; its process group was killed.
    Cancelled,
    /// The agent refused to run it: not in its catalogue at this generation, a parameter that
    /// does not fit its declaration, or a run of the same id already known.
    Refused,
}

/// `action` observation: the end of one run of an action on this host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionResult {
    /// The run's id, as given in [`RunAction::run`].
    pub run: String,
    /// The action, `system/action`, as asked.
    pub action: String,
    /// How it ended.
    pub outcome: ActionOutcome,
    /// The exit code, when it exited normally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The signal that ended it, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// How long it ran, in milliseconds.
    #[serde(default)]
    pub duration_ms: u64,
    /// The tail of its output, stdout and stderr interleaved as they came, bounded.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output: String,
    /// Why, in words (a refusal's reason, a spawn error), bounded.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// `action_output`, agent → server: a piece of a running action's output, as it comes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionOutput {
    /// The run's id.
    pub run: String,
    /// `stdout` or `stderr`.
    pub stream: OutputStream,
    /// The text (invalid UTF-8 replaced), bounded.
    pub data: String,
}

/// Which output stream of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// `run_action`, server → agent: run an action of the catalogue.
///
/// The agent looks `action` up in the catalogue of the generation named here (which must be the
/// one it holds), checks `params` against the declaration it holds, and fills them into the
/// command it holds: the server names an action and gives values, never a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunAction {
    /// The run's id, unique per server (`run-42`).
    pub run: String,
    /// The action, `system/action`.
    pub action: String,
    /// The generation of the catalogue the server checked the request against.
    pub generation: Generation,
    /// Parameter values, as text (`"3"`, `"true"`), defaults already applied.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// The server CA's signature of [`RunAction::signed_bytes`], in lowercase hex: the agent
    /// checks it with the CA certificate it pinned at enrolment before it runs anything.
    pub signature: String,
}

impl RunAction {
    /// What [`signature`](Self::signature) signs: a fixed prefix, then the run, the action, the
    /// generation and the parameters as one JSON array (parameters in name order).
    #[must_use]
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = b"endstate run_action v1\n".to_vec();
        let body = serde_json::json!([self.run, self.action, self.generation.0, self.params]);
        out.extend_from_slice(body.to_string().as_bytes());
        out
    }
}

/// `cancel_action`, server → agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelAction {
    /// The run's id.
    pub run: String,
}

/// One action of a host's catalogue, as the server rendered it for this host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionAssignment {
    /// `system/action`, unique in the set.
    pub name: String,
    /// The argv. Everything but `{{ params.<name> }}` is rendered; the agent fills those.
    pub command: Vec<String>,
    /// Run the single element of `command` with `sh -c`; parameter values are then shell-quoted.
    #[serde(default)]
    pub shell: bool,
    /// The parameters the command may use, each with its rules.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, ActionParameter>,
    /// How long one run may take, in milliseconds; then its process group is killed.
    pub timeout_ms: u64,
}

/// A declared parameter of an action, as the agent checks it (a string's pattern is the server's
/// to check).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionParameter {
    /// `string`, `integer`, `boolean` or `enum`.
    #[serde(rename = "type")]
    pub kind: ActionParameterType,
    /// The allowed values of an `enum`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// The smallest allowed `integer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<i64>,
    /// The largest allowed `integer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<i64>,
}

/// The type of an [`ActionParameter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionParameterType {
    /// Any text (the server checks its pattern).
    String,
    /// A whole number, in decimal.
    Integer,
    /// `true` or `false`.
    Boolean,
    /// One of `values`.
    Enum,
}

/// An instance entered a state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceStateChange {
    /// The instance.
    pub instance: InstanceId,
    /// The generation of the [`DesiredInstances`] the instance was started from.
    pub generation: Generation,
    /// The state it entered.
    pub state: InstanceStateWord,
    /// The artifact version it runs (or ran).
    pub version: String,
    /// The process (and process group) id, while it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The exit code, when it exited normally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The signal that ended it, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// How many times it was restarted since the agent started it at this generation.
    pub restarts: u32,
    /// Why, in words (the spawn error, the stop reason), bounded.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// The states of a supervised instance (the agent's supervisor has the same ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceStateWord {
    /// About to spawn the process.
    Starting,
    /// The process runs.
    Running,
    /// The process could not be spawned.
    SpawnFailed,
    /// The process exited.
    Exited,
    /// Waiting before a restart.
    BackingOff,
    /// Stopping: the group was sent SIGTERM.
    Stopping,
    /// Stopped, and will not be restarted.
    Stopped,
}

/// A health probe's result, after the probe's thresholds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthResult {
    /// The instance probed.
    pub instance: InstanceId,
    /// Whether it is healthy.
    pub healthy: bool,
    /// What the probe saw (`HTTP 503`, `connection refused`), bounded.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// A sample of resource use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceUse {
    /// The instance measured (its whole process group).
    pub instance: InstanceId,
    /// Resident memory, in bytes.
    pub rss_bytes: u64,
    /// CPU time used since the process started, user plus system, in milliseconds.
    pub cpu_millis: u64,
}

/// A monitoring check result, in the shape of a Nagios plugin's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckResult {
    /// The check, `system/check`.
    pub name: String,
    /// What it watched: the host's name or an instance id ([`CheckAssignment::target`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target: String,
    /// How long the check took, in milliseconds.
    #[serde(default)]
    pub duration_ms: u64,
    /// 0 ok, 1 warning, 2 critical, 3 unknown.
    pub status: u8,
    /// The plugin's text output, bounded.
    pub output: String,
    /// The plugin's performance data, unparsed, bounded.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub perfdata: String,
}

/// `actual_state`, agent → server: the complete set of instances the agent runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActualState {
    /// The generation of the last [`DesiredInstances`] the agent accepted, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<Generation>,
    /// The last observation `seq` the agent has produced (0 for none), so the server knows whether
    /// observations are still on their way.
    pub last_seq: u64,
    /// Every instance, running or not, that the agent supervises.
    pub instances: Vec<ActualInstance>,
}

/// One instance in an [`ActualState`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActualInstance {
    /// The instance.
    pub instance: InstanceId,
    /// The generation it was started from.
    pub generation: Generation,
    /// The artifact version it runs.
    pub version: String,
    /// Its current state.
    pub state: InstanceStateWord,
    /// Its process id, while it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Whether it is healthy now (its probe's verdict, or running without a probe), while it
    /// runs; absent otherwise. Health *changes* are observations; this lets a server that
    /// restarted know the health of instances whose health did not change since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
}

/// `welcome`, server → agent: the handshake succeeded.
///
/// Unknown fields are ignored: it answers a [`Hello`] before a version is agreed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The version both sides speak from now on: the highest common one.
    pub version: u16,
    /// The server's own release, for logs.
    pub server_version: String,
}

/// `refused`, server → agent: the handshake failed.
///
/// Unknown fields are ignored: it answers a [`Hello`] before a version is agreed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    /// Why, in words, naming both version ranges when they do not meet. Bounded.
    pub reason: String,
    /// What the agent offered.
    pub agent_versions: VersionRange,
    /// What the server speaks.
    pub server_versions: VersionRange,
}

/// `ack`, server → agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    /// Every observation with `seq <= up_to_seq` is durable on the server; the agent may drop
    /// them from its buffer.
    pub up_to_seq: u64,
}

/// `desired_instances`, server → agent: the complete set of instances to run (not a delta).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredInstances {
    /// Grows with every new set for this host; see [`accept_generation`](crate::accept_generation).
    pub generation: Generation,
    /// Every instance the host should run; any other instance is stopped. Ids are unique.
    pub instances: Vec<InstanceAssignment>,
    /// Every monitoring check the host runs, each on its own schedule; any other stops. Ids are unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckAssignment>,
    /// The host's action catalogue at this generation: the only actions it runs. Names are unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<ActionAssignment>,
}

/// A monitoring check the agent runs every `interval_ms` (after a random delay of up to
/// `splay_ms`) and reports as a `check` observation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckAssignment {
    /// `system/check@target`, unique in the set.
    pub id: String,
    /// The check, `system/check`.
    pub check: String,
    /// What it watches: this host's name, or an instance id.
    pub target: String,
    /// What it runs, rendered by the server (ports and hosts resolved).
    pub probe: CheckProbe,
    /// Between two runs, in milliseconds.
    pub interval_ms: u64,
    /// How long one run may take, in milliseconds (an exec check's process group is then killed).
    pub timeout_ms: u64,
    /// A random delay of up to this before the first run, in milliseconds.
    #[serde(default)]
    pub splay_ms: u64,
}

/// What a monitoring check runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CheckProbe {
    /// A Nagios-convention plugin: exit 0 ok, 1 warning, 2 critical, 3 unknown; the first line
    /// is the message, performance data after `|`. Never run through a shell.
    Exec {
        /// The program, an absolute path.
        command: String,
        /// Its arguments.
        #[serde(default)]
        args: Vec<String>,
    },
    /// An HTTP GET: the status must be `expect_status`, the body contain `body_match`; slower
    /// than `latency_threshold_ms` is a warning.
    Http {
        /// The URL.
        url: String,
        /// The status expected.
        expect_status: u16,
        /// A substring the body must contain.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body_match: Option<String>,
        /// Slower than this, in milliseconds, is a warning.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        latency_threshold_ms: Option<u64>,
    },
    /// A TCP connection.
    Tcp {
        /// The host to connect to.
        host: String,
        /// The port.
        port: u16,
    },
}

/// One instance the agent should run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceAssignment {
    /// `system/component#slot`.
    pub id: InstanceId,
    /// What to run.
    pub artifact: Artifact,
    /// The program, an absolute path or a path relative to the unpacked artifact.
    pub command: String,
    /// Arguments after the program name.
    #[serde(default)]
    pub args: Vec<String>,
    /// The whole environment of the process.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Files written before the process starts, already rendered by the server.
    #[serde(default)]
    pub config_files: Vec<ConfigFile>,
    /// Ports allocated to the instance, by name (`http: 8080`).
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
    /// How the agent decides healthy or not; none means "running is healthy".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthProbe>,
    /// How long the group has after SIGTERM before SIGKILL, in milliseconds.
    pub stop_grace_ms: u64,
    /// How a changed assignment replaces the running one (absent: `stop_first`).
    #[serde(default, skip_serializing_if = "UpgradeOrder::is_stop_first")]
    pub upgrade: UpgradeOrder,
    /// The user and group the process runs as (absent: the agent's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as: Option<RunAs>,
}

/// Whom an instance runs as: names the agent resolves on its host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunAs {
    /// A user that exists on the host.
    pub user: String,
    /// A group (absent: the user's primary group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// How an instance whose assignment changed is replaced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpgradeOrder {
    /// Stop the old run, then start the new one: for exclusive or fixed ports.
    #[default]
    StopFirst,
    /// Start the new run beside the old one and stop the old one once the new one is healthy:
    /// the server gives the new run ports of its own.
    StartFirst,
}

impl UpgradeOrder {
    /// Whether this is the default, [`UpgradeOrder::StopFirst`].
    #[must_use]
    pub fn is_stop_first(&self) -> bool {
        *self == UpgradeOrder::StopFirst
    }
}

/// An artifact: a version, and where to get it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// The version, as declared.
    pub version: String,
    /// Where it comes from.
    pub source: ArtifactSource,
}

/// Where an artifact comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ArtifactSource {
    /// A file or directory already on the host.
    Path {
        /// An absolute path, or a relative one (without `..`) that the agent resolves against its
        /// artifact root.
        path: String,
    },
    /// A download, verified before use.
    Url {
        /// An `http://` or `https://` URL.
        url: String,
        /// The SHA-256 of the content, 64 lowercase hex digits.
        sha256: String,
    },
}

/// A configuration file of an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Where to write it, relative to the instance's directory, without `..`.
    pub path: String,
    /// The final content.
    pub content: String,
}

/// A health probe with its thresholds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthProbe {
    /// What to probe.
    pub probe: Probe,
    /// Between two probes, in milliseconds.
    pub interval_ms: u64,
    /// How long one probe may take, in milliseconds.
    pub timeout_ms: u64,
    /// Consecutive successes before healthy (at least 1).
    pub healthy_after: u32,
    /// Consecutive failures before unhealthy (at least 1).
    pub unhealthy_after: u32,
}

/// What a health probe does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Probe {
    /// `GET http://127.0.0.1:{port}{path}`; a 2xx is a success.
    Http {
        /// The name of one of the instance's `ports`.
        port: String,
        /// The path, starting with `/`.
        path: String,
    },
    /// A TCP connection to `127.0.0.1:{port}`.
    Tcp {
        /// The name of one of the instance's `ports`.
        port: String,
    },
    /// A program; exit code 0 is a success.
    Exec {
        /// The program.
        command: String,
        /// Its arguments.
        #[serde(default)]
        args: Vec<String>,
    },
}

/// `revoke`, server → agent: this host may no longer connect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revoke {
    /// Why, in words, bounded.
    pub reason: String,
}

/// `ping`, server → agent: answer with a [`Keepalive`] now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ping {}

/// `logs_request`, server → agent: the recent output of one instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsRequest {
    /// Chosen by the server, echoed in the answer.
    pub request: u64,
    /// The instance.
    pub instance: InstanceId,
}

/// `logs`, agent → server: the tails of an instance's stdout and stderr.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logs {
    /// The request answered.
    pub request: u64,
    /// The instance.
    pub instance: InstanceId,
    /// Whether the agent supervises it; when not, the streams are empty.
    pub found: bool,
    /// The tail of stdout (lossy UTF-8), at most [`MAX_LOG_BYTES`](crate::limits::MAX_LOG_BYTES).
    pub stdout: String,
    /// The tail of stderr, likewise.
    pub stderr: String,
    /// Every byte the instance wrote to stdout since it started, kept or not (to follow).
    pub stdout_total: u64,
    /// Likewise for stderr.
    pub stderr_total: u64,
}

/// `renew`, agent → server: a certificate signing request for the agent's key and host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Renew {
    /// PEM, at most [`MAX_PEM_BYTES`](crate::limits::MAX_PEM_BYTES).
    pub csr_pem: String,
}

/// `certificate`, server → agent: the renewed certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    /// PEM, at most [`MAX_PEM_BYTES`](crate::limits::MAX_PEM_BYTES).
    pub cert_pem: String,
}

/// An instance id, `system/component#slot` (for example `shop/web#0`).
///
/// Decoding checks the form: both names follow the name rules of `endstate-types` and the slot is
/// a decimal number.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InstanceId(pub String);

// === impl VersionRange ===

impl VersionRange {
    /// The range `min..=max`.
    #[must_use]
    pub const fn new(min: u16, max: u16) -> Self {
        Self { min, max }
    }

    /// Whether `version` is in the range.
    #[must_use]
    pub fn contains(self, version: u16) -> bool {
        (self.min..=self.max).contains(&version)
    }
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}..={}", self.min, self.max)
        }
    }
}

// === impl FromAgent, FromServer ===

impl FromAgent {
    /// The `type` word of this message on the wire.
    #[must_use]
    pub fn type_name(&self) -> &'static str {
        match self {
            FromAgent::Hello(_) => "hello",
            FromAgent::Facts(_) => "facts",
            FromAgent::Keepalive(_) => "keepalive",
            FromAgent::Observations(_) => "observations",
            FromAgent::ActualState(_) => "actual_state",
            FromAgent::Logs(_) => "logs",
            FromAgent::Renew(_) => "renew",
            FromAgent::ActionOutput(_) => "action_output",
        }
    }
}

impl FromServer {
    /// The `type` word of this message on the wire.
    #[must_use]
    pub fn type_name(&self) -> &'static str {
        match self {
            FromServer::Welcome(_) => "welcome",
            FromServer::Refused(_) => "refused",
            FromServer::Ack(_) => "ack",
            FromServer::DesiredInstances(_) => "desired_instances",
            FromServer::Revoke(_) => "revoke",
            FromServer::Ping(_) => "ping",
            FromServer::LogsRequest(_) => "logs_request",
            FromServer::Certificate(_) => "certificate",
            FromServer::RunAction(_) => "run_action",
            FromServer::CancelAction(_) => "cancel_action",
        }
    }
}

// === impl InstanceId ===

impl InstanceId {
    /// The id of slot `slot` of `component` in `system`.
    #[must_use]
    pub fn new(system: &str, component: &str, slot: u32) -> Self {
        Self(format!("{system}/{component}#{slot}"))
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
