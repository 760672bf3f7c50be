//! The records the store keeps and the requests it answers. Field names serialize as snake_case.

use endstate_types::{ChangeId, ChangeState, EventSeq, Generation, HostName, Labels, RevisionId, Status};
use serde::{Deserialize, Serialize};

/// The page size used when a request asks for 0 items.
pub const DEFAULT_PAGE_LIMIT: u32 = 100;
/// The largest page the store returns; larger limits are capped to it.
pub const MAX_PAGE_LIMIT: u32 = 1000;

/// A desired state to record as the next revision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewRevision {
    /// Who submitted it.
    pub author: String,
    /// Why, in the author's words.
    pub message: String,
    /// Where it came from: "cli", "api", `git:<commit>`.
    pub source: String,
    /// The digest of the canonical desired state (computed by the caller).
    pub digest: String,
    /// The desired state, opaque to the store; stored as canonical JSON (sorted keys).
    pub desired: serde_json::Value,
    /// When it was accepted.
    pub created_ms: i64,
    /// A compare-and-set on the newest revision: when given, the submission is refused with
    /// [`StoreError::StaleParent`](crate::StoreError::StaleParent) unless this is the newest
    /// revision (`RevisionId(0)`: none yet), checked in the same transaction as the insert.
    pub parent: Option<RevisionId>,
    /// The operational parameters of its change (host groups, retired and targeted hosts),
    /// opaque to the store.
    pub options: Option<serde_json::Value>,
}

/// A change of a revision already recorded (no new revision): moving instances under the
/// revision in force (a rebalance the server proposes), recorded with its plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewChange {
    /// The revision it reaches (it must exist).
    pub revision: RevisionId,
    /// The state it starts in.
    pub state: ChangeState,
    /// Its plan, opaque to the store.
    pub plan: Option<serde_json::Value>,
    /// Why it is in its state.
    pub reason: Option<String>,
    /// Controller progress, opaque to the store.
    pub progress: Option<serde_json::Value>,
    /// Operational parameters, opaque to the store.
    pub options: Option<serde_json::Value>,
    /// When it was made.
    pub created_ms: i64,
}

/// An immutable, numbered desired state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Revision {
    /// Numbered from 1, in acceptance order, never reused.
    pub id: RevisionId,
    /// Who submitted it.
    pub author: String,
    /// Why.
    pub message: String,
    /// Where it came from.
    pub source: String,
    /// The digest of the desired state.
    pub digest: String,
    /// The desired state.
    pub desired: serde_json::Value,
    /// When it was accepted.
    pub created_ms: i64,
}

/// A revision without its (possibly large) desired state, for listings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionMeta {
    /// Numbered from 1.
    pub id: RevisionId,
    /// Who submitted it.
    pub author: String,
    /// Why.
    pub message: String,
    /// Where it came from.
    pub source: String,
    /// The digest of the desired state.
    pub digest: String,
    /// When it was accepted.
    pub created_ms: i64,
}

/// The work of reaching one revision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// Numbered from 1.
    pub id: ChangeId,
    /// The revision it reaches.
    pub revision: RevisionId,
    /// Where it is in its life.
    pub state: ChangeState,
    /// The planner's output, opaque to the store.
    pub plan: Option<serde_json::Value>,
    /// Why it is in its state (the outcome reason once terminal).
    pub reason: Option<String>,
    /// `(current wave index, number of waves)` while rolling.
    pub wave: Option<(u32, u32)>,
    /// The controller's progress through the waves, opaque to the store.
    pub progress: Option<serde_json::Value>,
    /// The operational parameters it was submitted with, opaque to the store.
    pub options: Option<serde_json::Value>,
    /// When it was created (the revision's time).
    pub created_ms: i64,
    /// When it last transitioned.
    pub updated_ms: i64,
}

/// Which changes to list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeFilter {
    /// Only changes that are not terminal.
    pub open_only: bool,
    /// Only the changes of this revision.
    pub revision: Option<RevisionId>,
    /// Only converged changes: the first, newest, is the revision in force.
    #[serde(default)]
    pub converged_only: bool,
}

/// A state transition of a change. `None` fields keep their stored value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChangeUpdate {
    /// The new state.
    pub state: ChangeState,
    /// A new plan, or `None` to keep the current one.
    pub plan: Option<serde_json::Value>,
    /// A new reason, or `None` to keep the current one.
    pub reason: Option<String>,
    /// A new wave position, or `None` to keep the current one.
    pub wave: Option<(u32, u32)>,
    /// New controller progress, or `None` to keep the current one.
    pub progress: Option<serde_json::Value>,
    /// Hosts to mark retired (no placement any more), in the same transaction: a change that
    /// retired them converged.
    pub retire_hosts: Vec<String>,
    /// When the transition happens.
    pub now_ms: i64,
}

/// A page of a newest-first listing (revisions, changes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRequest {
    /// Only items with an id strictly below this (the `next` of the previous page).
    pub before: Option<u64>,
    /// At most this many items; 0 means [`DEFAULT_PAGE_LIMIT`], capped at [`MAX_PAGE_LIMIT`].
    pub limit: u32,
}

/// One page of results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    /// The items, in the order of the listing.
    pub items: Vec<T>,
    /// The cursor for the next page in the same direction, if there may be one.
    ///
    /// Newest-first pages: the id or seq to pass as `before`; `None` when there is nothing older.
    /// Ascending event pages (`EventQuery::after`): the seq to pass as `after`; always `Some`,
    /// because new events may arrive (it is the last seq returned, or `after` itself when the page is empty).
    pub next: Option<u64>,
}

/// A host of the inventory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostRecord {
    /// The host's name.
    pub name: HostName,
    /// Labels (zone, rack, role).
    pub labels: Labels,
    /// Facts (os, cpus, memory), opaque to the store.
    pub facts: serde_json::Value,
    /// When its agent was last heard from.
    pub last_seen_ms: Option<i64>,
    /// When a converged change retired it (nothing is placed on a retired host); kept by
    /// [`upsert_host`](crate::Store::upsert_host).
    #[serde(default)]
    pub retired_ms: Option<i64>,
}

/// One placement of a component on a host, desired and actual.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// The component, qualified by its system (e.g. "shop/web"). Part of the key.
    pub component_key: String,
    /// The system the component belongs to.
    pub system: String,
    /// The host. Part of the key.
    pub host: HostName,
    /// Which placement on the host (0 for the first). Part of the key.
    pub slot: u32,
    /// What should run.
    pub desired: DesiredInstance,
    /// What was last observed; `None` if never observed.
    pub actual: Option<ActualInstance>,
}

/// The desired side of an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredInstance {
    /// The version to run.
    pub version: String,
    /// The digest of its configuration.
    pub config_digest: String,
    /// The generation of this desired state.
    pub generation: Generation,
}

/// The actual side of an instance, as last observed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActualInstance {
    /// The running version, if anything runs.
    pub version: Option<String>,
    /// Its health.
    pub status: Status,
    /// Its state word ("running", "starting", "stopped", "crashed").
    pub state: String,
    /// Since when it is in this state.
    pub since_ms: i64,
}

/// Which instances to list. Empty filter: all.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceFilter {
    /// Only instances of one of these systems.
    pub system: Option<Vec<String>>,
    /// Only instances on this host.
    pub host: Option<HostName>,
}

/// An observed state transition of an instance (the hot path of observations).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceTransition {
    /// The instance's component.
    pub component_key: String,
    /// The instance's host.
    pub host: HostName,
    /// The instance's slot.
    pub slot: u32,
    /// The new actual state; `since_ms` is also the time of the timeline event.
    pub actual: ActualInstance,
    /// The change that caused it, if known.
    pub change: Option<ChangeId>,
    /// Who reported it (e.g. "agent:web-1").
    pub actor: Option<String>,
}

/// An event of the timeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Its position in the timeline: strictly increasing, never reused.
    pub seq: EventSeq,
    /// When it happened.
    pub time_ms: i64,
    /// What happened: "revision.submitted", "change.transitioned", "instance.transitioned", ...
    pub kind: String,
    /// The systems it belongs to.
    pub systems: Vec<String>,
    /// The host it is about.
    pub host: Option<String>,
    /// The component it is about.
    pub component: Option<String>,
    /// The change it is part of.
    pub change: Option<ChangeId>,
    /// Who did it.
    pub actor: Option<String>,
    /// One human line.
    pub summary: String,
    /// Details, opaque to the store.
    pub data: serde_json::Value,
}

/// An event to append; the store gives it its seq.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    /// When it happened.
    pub time_ms: i64,
    /// What happened; must not be empty.
    pub kind: String,
    /// The systems it belongs to (duplicates are ignored).
    pub systems: Vec<String>,
    /// The host it is about.
    pub host: Option<String>,
    /// The component it is about.
    pub component: Option<String>,
    /// The change it is part of. Events given with a submission or a change transition get that
    /// change's id when this is `None`.
    pub change: Option<ChangeId>,
    /// Who did it.
    pub actor: Option<String>,
    /// One human line.
    pub summary: String,
    /// Details.
    pub data: serde_json::Value,
}

impl Event {
    /// What it says, typed: a kind this build does not know, or a payload that does not fit, is
    /// [`endstate_events::Body::Unknown`], verbatim.
    pub fn body(&self) -> endstate_events::Body {
        endstate_events::Body::parse(&self.kind, &self.data)
    }

    /// The typed event, when its kind is known and its payload fits.
    pub fn typed(&self) -> Option<endstate_events::Event> {
        endstate_events::Event::parse(&self.kind, &self.data).ok()
    }
}

/// A timeline query. Every given filter must match (logical and).
///
/// Direction: with `after`, events with `seq > after` come oldest first (follow the timeline
/// from a position); otherwise newest first, below `before` if given (page back through history).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventQuery {
    /// Events belonging to any of these systems (the caller expands a subtree). Empty: nothing matches.
    pub systems: Option<Vec<String>>,
    /// Events of any of these kinds: an exact kind, or a prefix ending in '.' ("change."). Empty: nothing matches.
    pub kinds: Option<Vec<String>>,
    /// Events about this host.
    pub host: Option<String>,
    /// Events about this component (`system/component`, exact).
    pub component: Option<String>,
    /// Events done by this actor (exact: a token's name, `server`, `agent:HOST`).
    pub actor: Option<String>,
    /// Events at or after this time.
    pub since_ms: Option<i64>,
    /// Events strictly before this time.
    pub until_ms: Option<i64>,
    /// Ascending from this position (exclusive).
    pub after: Option<EventSeq>,
    /// Descending from this position (exclusive); with `after`, an upper bound of the ascending range.
    pub before: Option<EventSeq>,
    /// At most this many events; 0 means [`DEFAULT_PAGE_LIMIT`], capped at [`MAX_PAGE_LIMIT`].
    pub limit: u32,
}

/// An API token, stored by the hash of its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Its id (unique).
    pub id: String,
    /// A human name.
    pub name: String,
    /// The role it grants.
    pub role: String,
    /// The SHA-256 of the secret, lowercase hex (unique).
    pub hash_hex: String,
    /// When it was created.
    pub created_ms: i64,
    /// Whether it was revoked (revoked tokens are still found, so the caller can tell why it fails).
    pub revoked: bool,
    /// The systems it may act on (names without commas); empty: every system.
    pub systems: Vec<String>,
}

// === impl NewEvent ===

impl NewEvent {
    /// An event of a known kind, written through its typed payload; set the other fields directly.
    pub fn of(time_ms: i64, event: &endstate_events::Event, summary: impl Into<String>) -> NewEvent {
        NewEvent {
            time_ms,
            kind: event.kind().to_owned(),
            summary: summary.into(),
            data: event.data(),
            ..NewEvent::default()
        }
    }

    /// An event of any kind with an untyped payload: for tests and for what came from elsewhere
    /// verbatim. The server writes its own events with [`NewEvent::of`] (tidy checks).
    pub fn new(time_ms: i64, kind: impl Into<String>, summary: impl Into<String>) -> NewEvent {
        NewEvent {
            time_ms,
            kind: kind.into(),
            summary: summary.into(),
            ..NewEvent::default()
        }
    }
}

/// The effective page size for a requested limit.
pub(crate) fn page_limit(limit: u32) -> u32 {
    match limit {
        0 => DEFAULT_PAGE_LIMIT,
        n => n.min(MAX_PAGE_LIMIT),
    }
}

/// A one-time join token, as stored: only the SHA-256 of its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenRow {
    /// SHA-256 of the secret, lowercase hex. The key.
    pub hash_hex: String,
    /// Labels every host enrolled with it gets (they win over the agent's own).
    pub labels: Labels,
    /// The host name it admits, when the operator fixed one; else the agent proposes its name.
    pub host: Option<String>,
    /// When it was created.
    pub created_ms: i64,
    /// Who created it (`token:NAME`).
    pub created_by: String,
    /// When it stops being accepted.
    pub expires_ms: i64,
    /// When it was used, once it was.
    pub used_ms: Option<i64>,
    /// The host it enrolled, once it was used.
    pub used_by: Option<String>,
}

/// The server's side of an enrolled agent: its identity and where its link stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// The host.
    pub host: HostName,
    /// When it enrolled (last time, if it enrolled again after a revocation).
    pub enrolled_ms: i64,
    /// When it was revoked; a revoked agent may not connect.
    pub revoked_ms: Option<i64>,
    /// The serial of its current certificate (lowercase hex).
    pub cert_serial: String,
    /// The serial of its previous certificate, still accepted until the agent connects with the current one.
    pub prev_serial: Option<String>,
    /// Whether its keepalives arrive: `None` before the first connection.
    pub reachable: Option<bool>,
    /// The last observation `seq` stored for it (0 for none).
    pub last_seq: u64,
    /// The generation of its current desired instance set (0 for none sent).
    pub generation: u64,
    /// The digest of that set, so the generation grows only when the set changes.
    pub desired_digest: Option<String>,
}

/// A batch of observations of one host, stored at once with the agent's new `last_seq`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObservationBatch {
    /// The `last_seq` the caller read; the write is refused with `Conflict` when it moved.
    pub expect_last_seq: u64,
    /// The highest `seq` of the batch.
    pub last_seq: u64,
    /// Instance transitions: applied to instances that exist, each with its `instance.transitioned`
    /// event; a transition of an instance the store does not know is kept as an event only.
    pub transitions: Vec<InstanceTransition>,
    /// Other events (health, resources, gaps).
    pub events: Vec<NewEvent>,
}
