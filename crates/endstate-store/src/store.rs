//! The `Store` trait: what every backend of the Master provides.

use endstate_types::{ChangeId, ChangeState, EventSeq, HostName, RevisionId};

use crate::StoreError;
use crate::model::{
    AgentRecord, Change, ChangeFilter, ChangeUpdate, Event, EventQuery, HostRecord, InstanceFilter, InstanceRecord,
    InstanceTransition, JoinTokenRow, NewChange, NewEvent, NewRevision, ObservationBatch, Page, PageRequest, Revision,
    RevisionMeta, TokenRecord,
};

/// The Master: desired revisions, changes, inventory, instances, the timeline and API tokens.
///
/// Object safe; the server holds it as `Arc<dyn Store>`. Times are unix milliseconds supplied by
/// the caller: a store never reads the clock. Every write is durable when it returns `Ok`.
/// Every backend must pass `testing::conformance` (feature `testing`).
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Records the next revision, its change (state `Pending`) and `events`, atomically.
    ///
    /// # Errors
    /// `Invalid` for an event without a kind; `Sqlite`/`Closed` on storage failure (nothing is written).
    async fn submit_revision(&self, new: NewRevision, events: Vec<NewEvent>) -> Result<(Revision, Change), StoreError>;

    /// Records a change of an existing revision with `events`, atomically (the events name it).
    ///
    /// # Errors
    /// `NotFound` when the revision does not exist, `Invalid` for an event without a kind
    /// (nothing is written in either case); storage failures.
    async fn add_change(&self, new: NewChange, events: Vec<NewEvent>) -> Result<Change, StoreError>;

    /// One revision.
    ///
    /// # Errors
    /// On storage failure or unreadable data.
    async fn get_revision(&self, id: RevisionId) -> Result<Option<Revision>, StoreError>;

    /// The newest revision.
    ///
    /// # Errors
    /// On storage failure or unreadable data.
    async fn latest_revision(&self) -> Result<Option<Revision>, StoreError>;

    /// Revisions, newest first.
    ///
    /// # Errors
    /// On storage failure or unreadable data.
    async fn list_revisions(&self, page: PageRequest) -> Result<Page<RevisionMeta>, StoreError>;

    /// One change.
    ///
    /// # Errors
    /// On storage failure or unreadable data.
    async fn get_change(&self, id: ChangeId) -> Result<Option<Change>, StoreError>;

    /// Changes, newest first.
    ///
    /// # Errors
    /// On storage failure or unreadable data.
    async fn list_changes(&self, filter: ChangeFilter, page: PageRequest) -> Result<Page<Change>, StoreError>;

    /// Moves a change from `expect` to `update.state` (compare-and-set), with `events`, atomically.
    ///
    /// # Errors
    /// `Conflict` when the change is not in state `expect`, `NotFound` when it does not exist
    /// (nothing is written in either case); storage failures.
    async fn transition_change(
        &self,
        id: ChangeId,
        expect: ChangeState,
        update: ChangeUpdate,
        events: Vec<NewEvent>,
    ) -> Result<Change, StoreError>;

    /// A number that changes after every committed write of changes (a revision submitted, a
    /// change added or transitioned) made through this store, and only grows: what was read of
    /// the changes while it stayed the same still holds. Read it before reading the changes it
    /// guards. Per process: a store shared by several servers needs its own notice of the others'
    /// writes.
    fn changes_version(&self) -> u64;

    /// Inserts or replaces a host.
    ///
    /// # Errors
    /// On storage failure.
    async fn upsert_host(&self, host: HostRecord) -> Result<(), StoreError>;

    /// One host.
    ///
    /// # Errors
    /// On storage failure or unreadable data.
    async fn get_host(&self, name: &HostName) -> Result<Option<HostRecord>, StoreError>;

    /// All hosts, by name.
    ///
    /// # Errors
    /// On storage failure or unreadable data.
    async fn list_hosts(&self) -> Result<Vec<HostRecord>, StoreError>;

    /// Inserts or updates instances by `(component_key, host, slot)`, atomically.
    /// An instance given with `actual: None` keeps its stored actual state.
    ///
    /// # Errors
    /// On storage failure.
    async fn put_instances(&self, instances: Vec<InstanceRecord>) -> Result<(), StoreError>;

    /// Instances matching the filter, by key.
    ///
    /// # Errors
    /// On storage failure or unreadable data.
    async fn list_instances(&self, filter: InstanceFilter) -> Result<Vec<InstanceRecord>, StoreError>;

    /// Records observed instance transitions: updates each instance's actual state and appends one
    /// `instance.transitioned` event per transition, atomically; returns the events' seqs in order.
    ///
    /// # Errors
    /// `NotFound` when an instance does not exist (nothing of the call is written); storage failures.
    async fn record_transitions(&self, transitions: Vec<InstanceTransition>) -> Result<Vec<EventSeq>, StoreError>;

    /// Appends events atomically; returns their seqs in order.
    ///
    /// # Errors
    /// `Invalid` for an event without a kind; storage failures.
    async fn append_events(&self, events: Vec<NewEvent>) -> Result<Vec<EventSeq>, StoreError>;

    /// Retention: deletes at most `limit` events of `kind` (exact, or a prefix ending in `.`)
    /// older than `before_ms`, except the newest of each subject older than `before_ms` (a
    /// subject: kind, host, component, and the `slot`, `check` and `target` of the data), so
    /// compaction never loses the latest state of anything. Returns how many were deleted;
    /// fewer than `limit` means none is left to delete.
    ///
    /// # Errors
    /// `Invalid` for an empty kind; storage failures (nothing is deleted).
    async fn compact_events(&self, kind: &str, before_ms: i64, limit: u32) -> Result<u64, StoreError>;

    /// Queries the timeline.
    ///
    /// # Errors
    /// On storage failure or unreadable data.
    async fn query_events(&self, query: &EventQuery) -> Result<Page<Event>, StoreError>;

    /// Inserts or replaces a token by id.
    ///
    /// # Errors
    /// `Invalid` when another token has the same hash; storage failures.
    async fn put_token(&self, token: TokenRecord) -> Result<(), StoreError>;

    /// The token with this hash (revoked or not).
    ///
    /// # Errors
    /// On storage failure or unreadable data.
    async fn find_token(&self, hash_hex: &str) -> Result<Option<TokenRecord>, StoreError>;

    /// How many tokens exist, revoked ones included.
    ///
    /// # Errors
    /// On storage failure.
    async fn count_tokens(&self) -> Result<u64, StoreError>;

    /// Every token, revoked ones too, oldest first.
    ///
    /// # Errors
    /// On storage failure or unreadable data.
    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;

    // --- agents ---

    /// Stores a new join token.
    ///
    /// # Errors
    /// `Invalid` when a token with the same hash exists; storage failures.
    async fn put_join_token(&self, token: JoinTokenRow) -> Result<(), StoreError>;

    /// The join token with this hash, used or not.
    ///
    /// # Errors
    /// On storage failure or unreadable data.
    async fn find_join_token(&self, hash_hex: &str) -> Result<Option<JoinTokenRow>, StoreError>;

    /// Uses a join token and enrols a host, atomically: marks the token used (a compare-and-set on
    /// "unused"), inserts or updates the host record (labels and facts), and sets the agent record
    /// (certificate serial, enrolment time, not revoked; the link state of an earlier enrolment
    /// of the same name is kept, so sequence numbers and generations only grow), with `events`.
    ///
    /// # Errors
    /// `NotFound` for an unknown token, `Refused` when it was used already (nothing is written).
    async fn enrol_agent(
        &self,
        token_hash: &str,
        at_ms: i64,
        host: HostRecord,
        cert_serial: String,
        events: Vec<NewEvent>,
    ) -> Result<AgentRecord, StoreError>;

    /// One agent record.
    ///
    /// # Errors
    /// On storage failure or unreadable data.
    async fn get_agent(&self, host: &HostName) -> Result<Option<AgentRecord>, StoreError>;

    /// Every agent record, by host.
    ///
    /// # Errors
    /// On storage failure or unreadable data.
    async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError>;

    /// Records a renewed certificate: the current serial becomes the previous one.
    ///
    /// # Errors
    /// `NotFound` for an unknown host, `Refused` for a revoked one; storage failures.
    async fn renew_agent(
        &self,
        host: &HostName,
        cert_serial: String,
        events: Vec<NewEvent>,
    ) -> Result<AgentRecord, StoreError>;

    /// Revokes an agent: it may no longer connect until it enrols again with a new join token.
    ///
    /// # Errors
    /// `NotFound` for an unknown host; storage failures.
    async fn revoke_agent(&self, host: &HostName, at_ms: i64, events: Vec<NewEvent>)
    -> Result<AgentRecord, StoreError>;

    /// Records whether an agent is reachable, with `events`. `serial`: the certificate it connected
    /// with; when it is the current one, the previous serial is forgotten.
    ///
    /// # Errors
    /// `NotFound` for an unknown host; storage failures.
    async fn set_agent_reachable(
        &self,
        host: &HostName,
        reachable: bool,
        serial: Option<String>,
        events: Vec<NewEvent>,
    ) -> Result<(), StoreError>;

    /// Records the digest of the agent's desired instance set and returns its generation: the
    /// stored one when the digest is unchanged, else the next one.
    ///
    /// # Errors
    /// `NotFound` for an unknown host; storage failures.
    async fn set_agent_desired(&self, host: &HostName, digest: String) -> Result<u64, StoreError>;

    /// Stores a batch of observations of one agent atomically (see [`ObservationBatch`]) and
    /// returns the seqs of the events written.
    ///
    /// # Errors
    /// `Refused` when the stored `last_seq` is not `batch.expect_last_seq`, `NotFound` for an
    /// unknown host (nothing is written); `Invalid` events; storage failures.
    async fn ingest_observations(&self, host: &HostName, batch: ObservationBatch) -> Result<Vec<EventSeq>, StoreError>;

    /// Makes `instances` the complete set of desired instances: inserts or updates them (keeping
    /// their actual state) and deletes every other instance, atomically.
    ///
    /// # Errors
    /// On storage failure.
    async fn replace_instances(&self, instances: Vec<InstanceRecord>) -> Result<(), StoreError>;
}
