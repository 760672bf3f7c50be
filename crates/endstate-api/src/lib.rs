//! The HTTP wire types of the endstate API, version 1: requests, views, events and problem details.
//!
//! Everything here is a serialized format, and so part of the API: a field is added, never
//! renamed or removed, within `/v1`. The server maps its domain and store types to these views;
//! the client and the CLI read them. Every type derives `utoipa::ToSchema`, so `/openapi.json`
//! is generated from the same definitions that are serialized.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An integer given as a JSON number, also when written with a zero fraction (`1620483712.0`):
/// JSON Schema's `integer` allows it, so a generated client may send it.
fn integral_i64<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    let value = serde_json::Number::deserialize(deserializer)?;
    if let Some(n) = value.as_i64() {
        return Ok(n);
    }
    match value.as_f64() {
        #[allow(clippy::cast_possible_truncation)]
        Some(f) if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 => Ok(f as i64),
        _ => Err(serde::de::Error::custom(format!("{value} is not an integer"))),
    }
}

/// An unsigned integer of a request body (see [`integral_i64`]): a JSON number, also with a zero
/// fraction, in the range of `T`.
fn unsigned_of<T: TryFrom<u64>>(value: &serde_json::Number) -> Option<T> {
    let n = value.as_u64().or_else(|| {
        let f = value.as_f64()?;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        (f.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&f)).then_some(f as u64)
    })?;
    T::try_from(n).ok()
}

fn integral_unsigned<'de, D: serde::Deserializer<'de>, T: TryFrom<u64>>(deserializer: D) -> Result<T, D::Error> {
    let value = serde_json::Number::deserialize(deserializer)?;
    unsigned_of(&value).ok_or_else(|| serde::de::Error::custom(format!("{value} is not an integer in range")))
}

fn integral_unsigned_opt<'de, D: serde::Deserializer<'de>, T: TryFrom<u64>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    match Option::<serde_json::Number>::deserialize(deserializer)? {
        None => Ok(None),
        Some(value) => unsigned_of(&value)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("{value} is not an integer in range"))),
    }
}

/// The version prefix of every route.
pub const API_PREFIX: &str = "/v1";

/// The largest request body the server accepts, in bytes (a spec of many files fits well below).
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// The content type of error responses (RFC 9457).
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// One file of a desired state, as read from a spec directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// The path the document was read from, relative to where the spec directory was given; used in error locations.
    pub path: String,
    /// The YAML text of the file (one or more documents separated by `---`).
    pub content: String,
}

/// Where a revision came from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub struct RevisionSource {
    /// `cli`, `api` or `git` (later `git` carries the commit).
    pub kind: String,
    /// A free reference: the spec directory, a commit id, a URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// `POST /v1/revisions`: submit a desired state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRevision {
    /// The spec files. At least one.
    #[schema(min_items = 1)]
    pub documents: Vec<Document>,
    /// Why this change is made, as in a commit message.
    #[serde(default)]
    pub message: String,
    /// Where the documents came from.
    #[serde(default)]
    pub source: RevisionSource,
    /// The latest revision the client saw when it planned (`latest_revision` of `POST /v1/plan`).
    /// When given, the server refuses the submission with 409 if another revision was submitted
    /// since, so what is submitted is what was previewed. `0` means "none was submitted yet".
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "integral_unsigned_opt"
    )]
    pub parent: Option<u64>,
    /// How the change is rolled out on the hosts (host groups, retired and targeted hosts).
    #[serde(default, skip_serializing_if = "ChangeOptions::is_empty")]
    pub options: ChangeOptions,
    /// What the previewed plan was computed from (`basis` of `POST /v1/plan`). When given, the
    /// server refuses the submission with 409, saying what differs, if the hosts or the base
    /// revision moved since: what runs is what was previewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basis: Option<PlanBasis>,
}

/// Operational parameters of a change, given with it (CLI `--host-group`, `--retire`, `--target`).
///
/// A host is named by its name, or a set of hosts by a `key=value` label selector.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeOptions {
    /// Ordered host groups: every step on group 0 before any on group 1, and so on; hosts in no
    /// group last. Each entry is a list of host names or selectors, e.g. `[["zone=a"], ["zone=b"]]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_groups: Vec<Vec<String>>,
    /// Hosts to retire: their instances start elsewhere first, then stop on them; once the change
    /// converges nothing is placed on them any more (until they enrol again).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retire_hosts: Vec<String>,
    /// Hosts to change first: their waves come before any other, and the change holds (`halted`)
    /// once they are done, until a person resumes it for the other hosts or aborts it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_hosts: Vec<String>,
}

impl ChangeOptions {
    /// Whether no option is set.
    pub fn is_empty(&self) -> bool {
        self.host_groups.is_empty() && self.retire_hosts.is_empty() && self.target_hosts.is_empty()
    }
}

/// What a plan was computed from: the base revision and the hosts it may place on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanBasis {
    /// The last revision that converged (absent: none has).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "integral_unsigned_opt"
    )]
    pub base_revision: Option<u64>,
    /// Every host in service with its labels.
    pub hosts: BTreeMap<String, BTreeMap<String, String>>,
}

/// `POST /v1/plan`: preview what a desired state would change, without storing anything.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanRequest {
    /// The spec files.
    #[schema(min_items = 1)]
    pub documents: Vec<Document>,
    /// Operational parameters, as the change would be submitted with.
    #[serde(default, skip_serializing_if = "ChangeOptions::is_empty")]
    pub options: ChangeOptions,
}

/// The answer to `POST /v1/plan`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlanResponse {
    /// The revision the plan starts from: the last one whose change converged (what is really in
    /// force), absent when none has. A change for these documents is planned from the same base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_revision: Option<u64>,
    /// The newest revision submitted; pass it as `parent` when submitting what was previewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_revision: Option<u64>,
    /// The plan: the planner's record (`endstate_plan::Plan`, golden-tested there), typed.
    #[schema(value_type = Object)]
    pub plan: endstate_plan::Plan,
    /// What the plan was computed from; pass it as `basis` when submitting what was previewed.
    #[serde(default)]
    pub basis: PlanBasis,
    /// Warnings from validation.
    pub warnings: Vec<SpecDiagnostic>,
}

/// A problem found in a spec, located in its file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SpecDiagnostic {
    /// `error` or `warning`.
    pub severity: String,
    /// The file, as given in [`Document::path`].
    pub file: String,
    /// 1-based line.
    pub line: u64,
    /// 1-based column.
    pub column: u64,
    /// A stable identifier of the kind of problem, e.g. `unknown-field`.
    pub code: String,
    /// What was found.
    pub message: String,
    /// What was expected, when that can be said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
}

/// The answer to a submitted revision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SubmitResponse {
    /// The revision stored.
    pub revision: RevisionView,
    /// The change that will reach it.
    pub change: ChangeView,
    /// Warnings from validation and static policy checks (errors would have refused the revision).
    pub warnings: Vec<SpecDiagnostic>,
}

/// A stored desired-state revision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RevisionView {
    /// The number of the revision, from 1.
    pub id: u64,
    /// When it was stored (RFC 3339).
    pub created_at: String,
    /// Who submitted it (the token's name).
    pub author: String,
    /// The submitter's message.
    pub message: String,
    /// Where it came from.
    pub source: RevisionSource,
    /// `sha256:` digest of the canonical desired state.
    pub digest: String,
    /// Counts of the objects it declares, by kind.
    pub counts: BTreeMap<String, u64>,
    /// The normalised desired state, only on `GET /v1/revisions/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub desired: Option<serde_json::Value>,
}

/// A change: the work of reaching a revision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChangeView {
    /// The number of the change.
    pub id: u64,
    /// The revision it reaches.
    pub revision: u64,
    /// `pending`, `planning`, `rolling`, `converged`, `halted`, `rolled_back`, `failed` or `superseded`.
    pub state: String,
    /// Whether no more work will happen for it.
    pub terminal: bool,
    /// Why it is in this state (what it waits for, why it stopped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The wave being executed and the number of waves, while rolling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave: Option<[u32; 2]>,
    /// When the change was created (RFC 3339).
    pub created_at: String,
    /// When it last moved (RFC 3339).
    pub updated_at: String,
    /// The plan, once planned (see `endstate-plan`'s `Plan`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub plan: Option<serde_json::Value>,
    /// Where the rollout is, once it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutView>,
}

/// The server's build (`GET /v1/version`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VersionView {
    /// The server's version, like `0.1.0`.
    pub version: String,
    /// The API's version: `v1`.
    pub api: String,
}

/// What is in force, and what newer change did not get there (`GET /v1/in-force`): what
/// `endstate status` says first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InForceView {
    /// The revision in force: the one whose change converged last (`None` before any did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// The change that put it in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<u64>,
    /// Since when (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// The newest change after it that did not converge (rolling out, halted, proposed, pending,
    /// rolled back or failed), if any; superseded ones are left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newer: Option<ChangeView>,
    /// One line, e.g. `revision 4 rolled back at 23:16:05; revision 2 in force`, with what to do.
    pub summary: String,
}

/// A change's progress through its waves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RolloutView {
    /// How many waves hosts execute (the first `released` waves of the plan).
    pub released: u32,
    /// `forward`, or `back` while rolling back.
    pub direction: String,
    /// Whether a person paused it.
    pub paused: bool,
    /// Who paused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_by: Option<String>,
    /// Why it is going back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub back_reason: Option<String>,
}

/// `POST /v1/changes/{id}/pause|resume|abort`: a person's command to a change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeCommand {
    /// Why, for the timeline (at most 4 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /v1/systems/{name}/rollback`: go back to an earlier revision.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The revision to go back to; by default the last converged one (while a change is rolling
    /// out) or the one converged before it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "integral_unsigned_opt"
    )]
    pub to: Option<u64>,
    /// Why, for the timeline (at most 4 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /v1/components/{system}/{name}/scale`: run another number of instances of one component.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    /// The new count (1 to 10,000), of the same kind as declared: per host or in total.
    #[schema(minimum = 1, maximum = 10000)]
    #[serde(deserialize_with = "integral_unsigned")]
    pub count: u32,
    /// Why, for the timeline (at most 4 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /v1/silences`: keep matching alerts from notifying for a while.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSilence {
    /// Only this system's checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Only this check, `system/check`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    /// Only checks running on this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Only checks running on hosts with all these labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// When it starts (a maintenance planned ahead): RFC 3339, or a duration from now (`1h`).
    /// Default now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts: Option<String>,
    /// When it ends: RFC 3339, or a duration from now (`2h`). At most 30 days ahead.
    #[schema(min_length = 1)]
    pub until: String,
    /// Why (at most 4 KiB).
    #[schema(min_length = 1, max_length = 4096)]
    pub reason: String,
}

/// `POST /v1/alerts/ack`: acknowledge an open alert.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    /// The check, `system/check`.
    #[schema(min_length = 1)]
    pub check: String,
    /// What it watches: a host name or an instance id.
    #[schema(min_length = 1)]
    pub target: String,
    /// What you are doing about it (at most 4 KiB).
    #[schema(min_length = 1, max_length = 4096)]
    pub comment: String,
}

/// `POST /v1/alerts/bulk`: acknowledge or annotate every open alert that matches, at once (at
/// least one filter, or `all`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkAlerts {
    /// Only this system's alerts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Only this check's (`system/check`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    /// Only alerts of checks running on this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Only this target (a host name or an instance id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Every open alert (instead of filters).
    #[serde(default)]
    pub all: bool,
    /// Acknowledge them (the comment is the acknowledgement's); otherwise add the comment to
    /// each as a note, leaving acknowledgement as it is.
    #[serde(default)]
    pub acknowledge: bool,
    /// What you are doing about them (at most 4 KiB).
    #[schema(min_length = 1, max_length = 4096)]
    pub comment: String,
}

/// A system with its rolled-up status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SystemView {
    /// The system's name.
    pub name: String,
    /// What it is.
    pub description: String,
    /// Who owns it.
    pub owners: Vec<String>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// The names of its direct subsystems.
    pub subsystems: Vec<String>,
    /// The names of its components (`system/component`).
    pub components: Vec<String>,
    /// The rolled-up status: the worst of its components and subsystems.
    pub status: StatusView,
    /// The subsystems expanded with their own status, on `GET /v1/systems/{name}` (and `?tree=true` on the list).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(no_recursion)]
    pub children: Vec<SystemView>,
    /// Components with their status, on `GET /v1/systems/{name}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub component_status: Vec<ComponentView>,
}

/// A status and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StatusView {
    /// `healthy`, `pending`, `unknown`, `degraded` or `unhealthy`.
    pub status: String,
    /// The reason for anything but healthy, naming the leaf that made it so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The path from this object to the leaf that decided the status, e.g. `["shop", "payments", "payments/api"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path: Vec<String>,
}

/// A component with its placement and status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ComponentView {
    /// `system/component`.
    pub key: String,
    /// Its system.
    pub system: String,
    /// The declared version.
    pub version: String,
    /// How many instances the placement asks for on the known hosts.
    pub desired_instances: u64,
    /// How many are running the declared version and healthy.
    pub ready_instances: u64,
    /// Its status.
    pub status: StatusView,
    /// The component's declaration, as normalised.
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
}

/// One instance: a placement of a component on a host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InstanceView {
    /// `system/component`.
    pub component: String,
    /// The host.
    pub host: String,
    /// The slot on that host, from 0.
    pub slot: u32,
    /// The version it should run.
    pub desired_version: String,
    /// The version it runs, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_version: Option<String>,
    /// Its status.
    pub status: String,
    /// Its state word as the agent reported it (`running`, `starting`, `exited`, …).
    pub state: String,
    /// Since when it is in this state (RFC 3339).
    pub since: String,
    /// Resident memory of its process group, last sampled by its agent, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    /// CPU time its process group used (user + system), in milliseconds, last sampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
    /// Restarts since its agent started it at this assignment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<u32>,
}

/// A host of the inventory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HostView {
    /// The host's name.
    pub name: String,
    /// `agent` (enrolled, reports its facts) or `static` (declared in the spec, no agent).
    #[serde(default = "agent_kind")]
    pub kind: String,
    /// What it is (static entries).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Its labels (zone, rack, role, …).
    pub labels: BTreeMap<String, String>,
    /// Its facts (os, kernel, cpus, memory, …).
    #[schema(value_type = Object)]
    pub facts: serde_json::Value,
    /// The systems it serves: those of the instances placed on it, and those a static entry declares.
    #[serde(default)]
    pub systems: Vec<String>,
    /// `reachable`, `unreachable`, `unknown`, `revoked`, or `static` for a static entry.
    pub liveness: String,
    /// When it was last heard from (RFC 3339), if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    /// The instances placed on it (`system/component#slot`).
    pub instances: Vec<String>,
}

fn agent_kind() -> String {
    "agent".to_string()
}

/// `GET /v1/hosts/{host}`: one host of the inventory with the history of its changes and what
/// ran on it when.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HostDetail {
    /// The host as the inventory lists it.
    pub host: HostView,
    /// Its own events (enrolment, reachability, facts changed, renewal, revocation,
    /// retirement), newest first, at most 100.
    pub changes: Vec<EventView>,
    /// What ran on it: each instance and version, from its first to its last transition
    /// among the newest 20,000 transitions of the host (newest last seen first, at most 200).
    pub ran: Vec<RanView>,
}

/// One instance at one version on a host, over the time the timeline saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RanView {
    /// `system/component#slot`.
    pub instance: String,
    /// The version it ran (empty when it reported none).
    pub version: String,
    /// Its first transition at that version (RFC 3339).
    pub first_seen: String,
    /// Its last transition at that version (RFC 3339).
    pub last_seen: String,
    /// Its status at the last transition.
    pub last_status: String,
    /// How many transitions.
    pub transitions: u64,
}

/// One timeline event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    /// Its position in this server's timeline; also the cursor.
    pub seq: u64,
    /// When it happened (RFC 3339).
    pub time: String,
    /// What happened, e.g. `revision.submitted`, `change.transitioned`.
    pub kind: String,
    /// The systems it belongs to.
    pub systems: Vec<String>,
    /// The host it concerns, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The component it concerns (`system/component`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    /// The change it belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<u64>,
    /// Who did it (a token's name, `server`, an agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// One human line.
    pub summary: String,
    /// Structured details: inputs, reasons, before and after.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// A page of results with the cursor of the next page.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// `POST /v1/tokens`: create a named API token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// A name for the token, shown on the timeline for everything it does.
    #[schema(pattern = r"^[a-z0-9][a-z0-9._-]{0,62}$")]
    pub name: String,
    /// `viewer` (reads), `operator` (also makes changes and runs actions), `approver` (also
    /// approves other people's runs) or `admin` (also manages tokens and hosts).
    #[schema(pattern = r"^(viewer|operator|approver|admin)$")]
    pub role: String,
    /// The systems the token may act on (it reads every system); empty: all of them.
    #[serde(default)]
    #[schema(inline, value_type = Vec<String>, pattern = r"^[a-z0-9][a-z0-9._-]{0,62}$")]
    pub systems: Vec<String>,
}

/// A token as listed (never its secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    /// The token's name.
    pub name: String,
    /// Its role.
    pub role: String,
    /// The systems it may act on; empty: all of them.
    pub systems: Vec<String>,
    /// When it was created, in milliseconds since the Unix epoch.
    pub created_ms: i64,
    /// Whether it was revoked.
    pub revoked: bool,
}

/// A created token. The secret is shown this once; the server keeps only its hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    /// The token's name.
    pub name: String,
    /// Its role.
    pub role: String,
    /// The systems it may act on; empty: all of them.
    #[serde(default)]
    pub systems: Vec<String>,
    /// The bearer secret.
    pub secret: String,
}

/// An error, as RFC 9457 problem details.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem (`about:blank` or `https://endstate.dev/problems/...`).
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind of problem.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong here.
    pub detail: String,
    /// Fields that were wrong, by path (e.g. `documents[0].path`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Spec problems, located in their files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub diagnostics: Vec<SpecDiagnostic>,
}

/// One wrong field of a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    /// The field's path in the request, e.g. `documents[2].content` or the query parameter's name.
    pub field: String,
    /// Why it is wrong.
    pub message: String,
}

/// `POST /v1/join-tokens`: create a one-time join token for a new host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJoinToken {
    /// How long it is accepted: a duration like `1h` (default) or `15m`; at most `7d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = r"^([0-9]+(ms|s|m|h|d))+$")]
    pub ttl: Option<String>,
    /// Labels the host gets; they win over the labels the agent asks for.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The only host name it admits; without it, the agent proposes its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// A created join token. The secret is shown this once; the server keeps only its hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedJoinToken {
    /// The secret, `esj_…`, for `endstate agent --join-token`.
    pub secret: String,
    /// When it stops being accepted (RFC 3339).
    pub expires: String,
    /// The labels it gives.
    pub labels: BTreeMap<String, String>,
    /// The host it is for, if fixed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// SHA-256 of the server's CA certificate (DER, hex): the agent checks the CA it receives against it.
    pub ca_sha256: String,
}

/// `POST /v1/agents/enrol`: an agent asks for its identity, with a join token instead of a bearer token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrolRequest {
    /// The join token's secret.
    #[schema(min_length = 1)]
    pub join_token: String,
    /// The host name the agent proposes (the token may fix another: then this must match it).
    #[schema(pattern = r"^[a-z0-9][a-z0-9._-]{0,62}$")]
    pub host: String,
    /// A certificate signing request (PEM) for the agent's own key, naming `host`.
    #[schema(min_length = 1)]
    pub csr_pem: String,
    /// Labels the agent asks for; the token's labels win.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The agent's identity, as issued.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EnrolResponse {
    /// The host name, as in the certificate.
    pub host: String,
    /// The agent's client certificate (PEM).
    pub cert_pem: String,
    /// The server's CA certificate (PEM): the only root the agent trusts for the agent link.
    pub ca_pem: String,
    /// Where the agent connects: `wss://host:port/v1/agent`.
    pub agent_url: String,
    /// The labels the host got.
    pub labels: BTreeMap<String, String>,
}

/// `POST /v1/agents/endpoint`: an enrolled agent asks where to connect now (the server moved).
/// No bearer token: the agent proves who it is with its certificate and a signature of
/// `endstate-agent-endpoint HOST UNIX_S` by its key, within 5 minutes of the server's clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointRequest {
    /// The host, as in its certificate.
    #[schema(pattern = r"^[a-z0-9][a-z0-9._-]{0,62}$")]
    pub host: String,
    /// When the request was made, unix seconds.
    #[serde(deserialize_with = "integral_i64")]
    pub unix_s: i64,
    /// The agent's client certificate (PEM).
    pub cert_pem: String,
    /// The signature of `endstate-agent-endpoint HOST UNIX_S` by the agent's key, hex (DER ECDSA).
    pub signature_hex: String,
}

/// Where an agent connects now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EndpointResponse {
    /// `wss://host:port/v1/agent`.
    pub agent_url: String,
}

/// The message an agent signs to ask for its endpoint.
#[must_use]
pub fn endpoint_message(host: &str, unix_s: i64) -> String {
    format!("endstate-agent-endpoint {host} {unix_s}")
}

/// `GET /v1/hosts/{host}/logs?instance=…`: the recent output of one instance, asked of its agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogsView {
    /// The host.
    pub host: String,
    /// The instance, `system/component#slot`.
    pub instance: String,
    /// The tail of its stdout.
    pub stdout: String,
    /// The tail of its stderr.
    pub stderr: String,
    /// Every byte written to stdout since the instance started (to follow: print what is new).
    pub stdout_total: u64,
    /// Likewise for stderr.
    pub stderr_total: u64,
}

/// The largest note, in bytes of UTF-8 (`POST /v1/systems/{name}/notes`).
pub const MAX_NOTE_BYTES: usize = 4 * 1024;

/// `GET /v1/systems/{name}/describe`: everything the person woken at night needs about one
/// system on one screen. A view of its own rather than more fields on [`SystemView`]: that one
/// is a recursive status tree returned for every system of a list, and contacts, links,
/// actions, aggregates, instances and recent events would weigh on every node of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SystemDescription {
    /// The system's name.
    pub name: String,
    /// The revision this description was made from (the latest).
    pub revision: u64,
    /// What it is.
    pub description: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Who owns it.
    pub owners: Vec<String>,
    /// Whom to escalate to, when declared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation: Option<EscalationView>,
    /// Dashboards, runbooks, repositories.
    pub links: Vec<LinkView>,
    /// Rules of engagement: the actions declared on this system and who may run them how.
    pub actions: Vec<ActionRule>,
    /// The rolled-up status of the system and its whole subtree, naming the leaf that decided it.
    pub status: StatusView,
    /// Its direct subsystems, each with its own rolled-up status.
    pub subsystems: Vec<RelatedSystem>,
    /// The label selector that adds subsystems (`tier=storage`), when declared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subsystem_selector: Option<String>,
    /// The aggregates it belongs to directly (many-to-many), each with its rolled-up status.
    pub aggregates: Vec<RelatedSystem>,
    /// Its own components (not its subsystems'), each with its instances per host.
    pub components: Vec<ComponentInstances>,
    /// The newest events of the system and its subsystems (at most 10), newest first.
    pub recent_events: Vec<EventView>,
}

/// How to reach whom to escalate to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EscalationView {
    /// The contact (a person, a team, a rotation).
    pub contact: String,
    /// A pager address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pager: Option<String>,
    /// A phone number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// An email address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// A page with more (the rotation, the escalation policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// A link shown next to a system.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LinkView {
    /// What it is (`Dashboard`, `Runbook`).
    pub title: String,
    /// Where.
    pub url: String,
}

/// One action of a system and its rule of engagement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ActionRule {
    /// The action's name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// `direct` (anyone allowed to act on the system runs it), `approval` (a second person
    /// approves each run) or `escalate` (only the escalation contact runs it).
    pub engagement: String,
    /// Whom to escalate to, for `escalate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalate_to: Option<String>,
    /// What it runs on: `component system/name` or `hosts key=value,…`.
    pub targets: String,
}

/// Another system, with its rolled-up status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RelatedSystem {
    /// Its name.
    pub name: String,
    /// Its rolled-up status.
    pub status: StatusView,
}

/// A component with its instances.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ComponentInstances {
    /// `system/component`.
    pub key: String,
    /// The declared version.
    pub version: String,
    /// How many instances the placement asks for on the known hosts.
    pub desired_instances: u64,
    /// How many run the declared version and are healthy.
    pub ready_instances: u64,
    /// Its status.
    pub status: StatusView,
    /// Its instances, desired and observed, by host and slot.
    pub instances: Vec<InstanceView>,
}

/// `POST /v1/systems/{name}/notes`: a note on a system's timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNote {
    /// The note: not blank, at most [`MAX_NOTE_BYTES`] bytes.
    pub text: String,
}

/// `GET /v1/history?target=…`: "always broken, or did it just happen?" for a host or an
/// instance, computed from its transitions on the timeline over the last 30 days.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HistoryView {
    /// The target as given, normalised: `host:NAME`, `system/component#slot@host` or
    /// `check:system/check@host`.
    pub target: String,
    /// `host`, `instance` or `check`.
    pub kind: String,
    /// When this was computed (RFC 3339); the windows end here.
    pub now: String,
    /// The current state: for a host `reachable`/`unreachable`, for an instance its last
    /// status (`healthy`, `degraded`, `unhealthy`, `pending`, `unknown`); `unknown` without events.
    pub current: String,
    /// Whether it is failing now (an instance degraded or unhealthy, a host unreachable).
    pub failing: bool,
    /// When the current failure started (RFC 3339), while failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<String>,
    /// When it first failed in the last 30 days (RFC 3339), if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_failed: Option<String>,
    /// How many transitions (timeline events of the target) happened in the last 30 days.
    pub transitions: u64,
    /// The share of time failing over the last 24 hours, 7 days and 30 days.
    pub unhealthy: Vec<UnhealthyShare>,
    /// Whether it is flapping: at least 5 changes between healthy and failing in the last hour.
    pub flapping: bool,
    /// How many changes between healthy and failing happened in the last hour.
    pub flips_last_hour: u64,
    /// `chronic` (failing more than 50% of the observed last 7 days and more than 24 hours in
    /// them, or failing for more than 24 hours now), `new` (failing now, not chronic) or `ok`.
    pub label: String,
}

/// `GET /v1/why?target=…`: what changed right before a target's state changed, ranked by
/// closeness in time and in topology, each with why it is listed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WhyView {
    /// The target, normalised: `host:NAME`, `system/component#slot@host`,
    /// `check:system/check@host` or `system:NAME`.
    pub target: String,
    /// `host`, `instance`, `check` or `system`.
    pub kind: String,
    /// The moment explained (RFC 3339): when the target's state changed, or the time given.
    pub at: String,
    /// How `at` was chosen, e.g. "when it turned unhealthy (failing since then)".
    pub at_reason: String,
    /// The start of the window looked at (RFC 3339); it ends at `at`.
    pub since: String,
    /// The systems looked at: the target's system and its subsystems (a host: the systems it runs).
    pub systems: Vec<String>,
    /// The hosts looked at: the target's host, or the hosts of the system.
    pub hosts: Vec<String>,
    /// What may explain it, most likely first.
    pub suspects: Vec<Suspect>,
    /// How many timeline events were read.
    pub considered: u64,
    /// Whether the window held more candidate events than are read (the oldest were left out).
    pub truncated: bool,
}

/// One thing that changed before the target's state did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Suspect {
    /// 1 for the most likely.
    pub rank: u32,
    /// Closeness in time times closeness in topology times the weight of its kind, 0 to 100.
    pub score: f64,
    /// `change`, `revision`, `action`, `host` or `note`.
    pub category: String,
    /// When its newest event before `at` happened (RFC 3339).
    pub time: String,
    /// How long before `at`, in seconds.
    pub before_s: u64,
    /// That event's kind, e.g. `change.wave_started`.
    pub kind: String,
    /// That event's summary.
    pub summary: String,
    /// Why it is listed, in one line: what it is, how close in time, how close in topology.
    pub reason: String,
    /// The event's position on the timeline.
    pub seq: u64,
    /// The change it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<u64>,
    /// The action run it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// How many events of the same change or run fell in the window (this one included).
    pub events: u32,
}

/// The share of one window a target spent failing, weighted by time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UnhealthyShare {
    /// `24h`, `7d` or `30d`.
    pub window: String,
    /// Failing time over observed time, in percent (0 to 100); absent when nothing was observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Seconds of the window whose state is known (before the first event, and while an
    /// instance's host is unreachable, the state is unknown and not counted).
    pub observed_s: u64,
    /// Seconds of those spent failing.
    pub failing_s: u64,
}

/// `POST /v1/runs`: run an action of a system's catalogue.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// The system whose action it is.
    #[schema(pattern = r"^[a-z0-9][a-z0-9._-]{0,62}$")]
    pub system: String,
    /// The action's name.
    #[schema(pattern = r"^[a-z0-9][a-z0-9._-]{0,62}$")]
    pub action: String,
    /// Parameter values: JSON strings, numbers or booleans as declared (a string is also taken
    /// for a number or a boolean: `"5"`, `"true"`). Omitted ones take their default.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: BTreeMap<String, serde_json::Value>,
    /// Only these of the action's hosts; empty: all of them.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Why, for the timeline and the approver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /v1/runs/{id}/cancel` and `/approve`: an optional reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunDecision {
    /// Why, for the timeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A run of an action: who asked, why, with what, and what happened on each host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunView {
    /// `run-N`.
    pub id: String,
    /// The system.
    pub system: String,
    /// The action.
    pub action: String,
    /// The parameter values it ran with, defaults applied.
    pub params: BTreeMap<String, String>,
    /// Why, as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The token that asked for it.
    pub requested_by: String,
    /// When, RFC 3339.
    pub requested_at: String,
    /// The token that approved it, when approval was needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    /// `awaiting_approval`, `running`, `succeeded` (every host), `failed` (some host did not
    /// succeed), `cancelled` or `interrupted` (the server restarted while it ran).
    pub state: String,
    /// One line for people: "2 of 3 hosts succeeded; web-c failed (exit code 1)".
    pub summary: String,
    /// Per host, in name order.
    pub hosts: Vec<RunHostView>,
    /// When it ended, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

/// One host of a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunHostView {
    /// The host.
    pub host: String,
    /// `pending` (waiting for a concurrency slot or approval), `running`, `succeeded`, `failed`,
    /// `timed_out`, `cancelled`, `refused` (by the agent, with the reason in `detail`) or `lost`
    /// (the host disconnected, or no result came in time).
    pub state: String,
    /// The exit code, when it exited normally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The signal that ended it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// How long it ran, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Its output so far (the tail, at most 64 KiB).
    pub output: String,
    /// How many bytes of output there were in all, so a follower can print only what is new.
    pub output_bytes: u64,
    /// Why, in words (a refusal, a lost host).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

// === alerts, silences, review ===

/// What an alert is about: one check on one target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CheckKeyView {
    /// `system/check`.
    pub check: String,
    /// What it looked at: a host, or an instance (`system/component#slot@host`).
    pub target: String,
}

/// An acknowledgement or a note on an alert.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AlertNoteView {
    /// Who.
    pub author: String,
    /// What they said.
    pub comment: String,
    /// When (Unix milliseconds).
    pub at_ms: i64,
}

/// Always broken, or did it just happen: the history of an alert's check on its host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AlertHistory {
    /// `new`, `chronic` (failing more than half of 7 days and more than a day of it) or `ok`.
    pub label: String,
    /// Since when it fails (RFC 3339).
    #[serde(default)]
    pub failing_since: Option<String>,
    /// When it first failed in the last 30 days (RFC 3339).
    #[serde(default)]
    pub first_failed: Option<String>,
    /// Its share failing over 7 days, in percent.
    #[serde(default)]
    pub failing_7d_percent: Option<f64>,
    /// Whether it flaps.
    pub flapping: bool,
}

/// An alert: one per failing (check, target).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AlertView {
    /// What.
    pub key: CheckKeyView,
    /// The check's system.
    pub system: String,
    /// Where it ran (empty for an external alert without a host).
    pub host: String,
    /// `warning`, `critical`, `unknown` (`ok` once resolved).
    pub status: String,
    /// The last message.
    pub message: String,
    /// When it opened (Unix milliseconds).
    pub opened_ms: i64,
    /// When its status last changed.
    pub last_change_ms: i64,
    /// Status changes since it opened.
    pub transitions: u32,
    /// Whether it flaps.
    pub flapping: bool,
    /// Who acknowledged it.
    #[serde(default)]
    pub acked: Option<AlertNoteView>,
    /// The ticket opened for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    /// Why its last notification did not get through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_failed: Option<String>,
    /// Notes, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<AlertNoteView>,
    /// The silence that keeps it quiet.
    #[serde(default)]
    pub silenced_by: Option<u64>,
    /// Why it is only a consequence (`host h1 is down`).
    #[serde(default)]
    pub consequence_of: Option<String>,
    /// When it resolved.
    #[serde(default)]
    pub resolved_ms: Option<i64>,
    /// The history of its check on its host (`GET /v1/alerts` only; absent when nothing is stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<AlertHistory>,
}

/// The answer to `POST /v1/alerts/bulk`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BulkAlertsView {
    /// How many alerts were acknowledged or annotated.
    pub matched: u64,
    /// Those alerts, as they are now.
    pub alerts: Vec<AlertView>,
}

/// A silence: while active, matching alerts do not notify.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SilenceView {
    /// Its number.
    pub id: u64,
    /// Only this system's checks.
    #[serde(default)]
    pub system: Option<String>,
    /// Only this check (`system/check`).
    #[serde(default)]
    pub check: Option<String>,
    /// Only checks running on this host.
    #[serde(default)]
    pub host: Option<String>,
    /// Only checks on hosts with all these labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// From when (Unix milliseconds).
    pub starts_ms: i64,
    /// Until when (excluded).
    pub ends_ms: i64,
    /// Why.
    pub reason: String,
    /// Who.
    pub author: String,
}

/// One alert of a reviewed period, as the timeline has it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FiredAlert {
    /// `system/check`.
    pub check: String,
    /// What it looked at.
    pub target: String,
    /// The check's system.
    pub system: String,
    /// Its status when it opened.
    pub status: String,
    /// Its message when it opened.
    pub message: String,
    /// When it opened (Unix milliseconds).
    pub opened_ms: i64,
    /// Who acknowledged it first.
    #[serde(default)]
    pub acknowledged_by: Option<String>,
    /// From opening to the first acknowledgement.
    #[serde(default)]
    pub to_ack_ms: Option<i64>,
    /// From opening to resolution.
    #[serde(default)]
    pub to_resolve_ms: Option<i64>,
}

/// Counts of a reviewed period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReviewSummary {
    /// Alerts opened.
    pub opened: u64,
    /// Of those, acknowledged.
    pub acknowledged: u64,
    /// Of those, resolved.
    pub resolved: u64,
    /// The median time to the first acknowledgement.
    #[serde(default)]
    pub median_to_ack_ms: Option<i64>,
    /// The median time to resolution.
    #[serde(default)]
    pub median_to_resolve_ms: Option<i64>,
}

/// The review of a period: what needs a person now, and what fired.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReviewView {
    /// The period's start (Unix milliseconds).
    pub since_ms: i64,
    /// Its end: now.
    pub until_ms: i64,
    /// Open alerts nobody acknowledged, not silenced and not consequences.
    pub unacknowledged: Vec<AlertView>,
    /// Open alerts of checks failing for long: fix or retire the check.
    pub chronic: Vec<AlertView>,
    /// Open alerts of checks that flap.
    pub flapping: Vec<AlertView>,
    /// Open alerts kept quiet by a silence.
    pub silenced: Vec<AlertView>,
    /// Silences ending within the hour: renew or let go.
    pub expiring_silences: Vec<SilenceView>,
    /// Every alert opened in the period, oldest first.
    pub fired: Vec<FiredAlert>,
    /// The period's counts and median times.
    pub summary: ReviewSummary,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// JSON Schema's `integer` allows a zero fraction, so generated clients may send `7.0`.
    #[test]
    fn integers_of_requests_may_come_with_a_zero_fraction() {
        let scale: ScaleRequest = serde_json::from_str(r#"{"count": 9999.0}"#).unwrap();
        assert_eq!(scale.count, 9999);
        let rollback: RollbackRequest = serde_json::from_str(r#"{"to": 7.0}"#).unwrap();
        assert_eq!(rollback.to, Some(7));
        assert_eq!(serde_json::from_str::<RollbackRequest>("{}").unwrap().to, None);
        let basis: PlanBasis = serde_json::from_str(r#"{"base_revision": 2668150.0, "hosts": {}}"#).unwrap();
        assert_eq!(basis.base_revision, Some(2_668_150));
        for bad in [
            r#"{"count": 2.5}"#,
            r#"{"count": -1}"#,
            r#"{"count": 4294967296}"#,
            r#"{"count": "3"}"#,
        ] {
            assert!(serde_json::from_str::<ScaleRequest>(bad).is_err(), "{bad}");
        }
    }
}

/// `POST /v1/sources`: follow a branch of a Git repository as desired state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddSource {
    /// Its name: lowercase letters, digits and `-`, at most 63 characters.
    #[schema(min_length = 1, max_length = 63)]
    pub name: String,
    /// The repository: `file://`, `http://`, `https://` or `ssh://` (or `user@host:path`), without
    /// a password (put it in `credentials_file`).
    #[schema(min_length = 1)]
    pub repository: String,
    /// The branch followed. Default `main`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Directories (or files) of the repository holding its spec files (`*.yaml`, `*.yml`),
    /// relative. Default: all of it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// How often the repository is fetched, as a duration (`30s`, `5m`). Default `30s`; at least `1s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// A file on the server holding `user:password` (or `user:token`) for HTTP(S). Only its path is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<String>,
    /// A file on the server holding the secret of the forge's webhook (`POST
    /// /v1/sources/{name}/hook`): GitHub, Gitea and Forgejo sign each call with it (HMAC-SHA256),
    /// GitLab sends it as its token. Without it, the webhook is refused. Only its path is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret_file: Option<String>,
}

/// A Git source: what it follows, what it last saw, and what it owns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SourceView {
    /// Its name.
    pub name: String,
    /// The repository, without credentials.
    pub repository: String,
    /// The branch followed.
    pub branch: String,
    /// The paths read (`[""]`: the whole repository).
    pub paths: Vec<String>,
    /// How often it is fetched (ms).
    pub interval_ms: u64,
    /// The credentials file's path, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<String>,
    /// The webhook secret file's path, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret_file: Option<String>,
    /// The branch's head at the last fetch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
    /// The last commit handled (applied, unchanged, untouched or refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled: Option<String>,
    /// The commit the latest revision holds of this source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<String>,
    /// The commit the revision in force holds of this source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_force: Option<String>,
    /// When it was last fetched (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetched_at: Option<String>,
    /// How many fetches of its repository this server made.
    pub fetches: u64,
    /// Why the last fetch or commit failed, while it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The problems of the last refused commit, located (`file:line:column`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// The systems it owns in the latest revision.
    pub systems: Vec<String>,
    /// Where it stands, in a sentence: `in force at 3f2a9c0`, `behind: …`, `failing: …`.
    pub summary: String,
}

/// `POST /v1/sources/{name}/plan`: preview a branch of the source's repository against the
/// revision in force, before it is merged. Nothing is stored or applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourcePlanRequest {
    /// The branch previewed. Default: the branch the source follows.
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Operational parameters, as the change would be submitted with.
    #[serde(default, skip_serializing_if = "ChangeOptions::is_empty")]
    pub options: ChangeOptions,
}

/// The preview of a branch of a source: the commit read, and either the plan from the revision
/// in force to what the branch declares (composed with what the other origins own) or the
/// problems that would refuse it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SourcePlan {
    /// The source.
    pub source: String,
    /// The branch previewed.
    #[serde(rename = "ref")]
    pub branch: String,
    /// The branch's head, previewed.
    pub commit: String,
    /// Its author, `Name <email>`.
    pub author: String,
    /// The first line of its message.
    pub subject: String,
    /// Why the commit would be refused, located (`file:line:column: …`); empty when it plans.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// The plan, when the commit would be accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<PlanResponse>,
}

/// The answer to a forge's webhook call that was accepted: the source's repository is fetched now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HookAccepted {
    /// The source.
    pub source: String,
    /// The forge's delivery id, when it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<String>,
    /// What happens now.
    pub detail: String,
}
