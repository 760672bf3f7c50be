//! The Master: desired revisions, changes, inventory, instances, the timeline and API tokens,
//! behind the object-safe [`Store`] trait, with the embedded [`SqliteStore`] backend.
//!
//!
//! The trait is the contract; `testing::conformance` (feature `testing`) is its executable form, which every backend
//! (SQLite today, PostgreSQL later) must pass unchanged. Times are unix milliseconds given by the
//! caller: the store never reads the clock.
//!
//! # The SQLite backend
//!
//! [`SqliteStore::open`] opens one database file in WAL mode with `synchronous=FULL`,
//! `foreign_keys=ON` and a busy timeout, and migrates its schema (`PRAGMA user_version`, an
//! append-only list of migrations each applied in its own transaction; see [`SCHEMA_VERSION`]).
//!
//! Threads and channels:
//! - `endstate-store-writer` owns the only writing connection. Requests arrive on a bounded tokio
//!   mpsc (16 Ki requests; callers wait to enqueue when it is full) with a oneshot reply each. It
//!   takes every waiting request (up to 8192), applies them inside one transaction, commits once
//!   (one fsync), then answers them all: group commit. Requests run without a savepoint of their
//!   own (a request that fails before writing has nothing to undo); when one fails after writing,
//!   the writer rolls the transaction back and applies the batch again with a SAVEPOINT per
//!   request, so only the failing request is undone.
//! - `endstate-store-checkpointer` runs PASSIVE WAL checkpoints when the writer asks (every ~2048
//!   requests), so copying the WAL into the database file stays off the commit path.
//! - Reads run on `spawn_blocking` with a pooled read-only connection (up to 8 kept idle); WAL lets
//!   them run while the writer writes, each seeing the last committed state.
//!
//! Schema (version 1): `revisions` (immutable: triggers refuse UPDATE and DELETE), `changes`
//! (partial index on open changes), `hosts`, `instances` (key `(component_key, host, slot)`,
//! indexed by system and host), `events` (append-only: a trigger refuses UPDATE; `seq` is an
//! AUTOINCREMENT key; indexed by time, kind and host) and `event_systems(system, seq, time_ms)`
//! (one row per system an event belongs to; keyed by `(system, seq)`, indexed by `(system, time_ms)`),
//! and `tokens` (unique hash).
//!
//! # Guarantees
//! - An `Ok` from a write means it is committed and fsynced: it survives `kill -9` and power loss.
//! - Every write call is atomic: all of its rows and events, or nothing. One failing request does
//!   not fail the others committed in the same batch.
//! - Revision and change ids are numbered from 1; event seqs strictly increase and are never reused
//!   (AUTOINCREMENT), so a cursor (`after`/`before`) never skips or repeats an event.
//! - `transition_change` is a compare-and-set on the state, serialized by the single writer.
//! - A database written by a newer build is refused (`SchemaTooNew`) and left untouched.
//! - Nothing read back is trusted: a corrupt JSON column or unknown state word is an error, never a panic.
//!
//! # Caveats
//! - Throughput of single-operation callers is bounded by Little's law: requests in flight divided by
//!   the commit cycle (apply + fsync). On a disk with ~4 ms fsync, 256 concurrent single-transition
//!   callers cannot reach 100k transitions/s (at most 256 per commit); more concurrency makes bigger
//!   batches, up to the writer's CPU limit (one core). Most of a commit's cost is writing the WAL
//!   frames of every page the batch dirtied (the event indexes by host and by system are touched at
//!   one page per distinct host/system), not the fsync wait itself.
//! - Event queries by system without a time window scan the system's whole index range before the
//!   limit applies (fine for thousands, slow for millions of events of one subtree).
//! - A request whose caller gave up (future dropped) is still applied if it was enqueued.
//! - There is no retention yet: the timeline only grows (dropping the append-only trigger would be
//!   a migration).
//! - `open` blocks (migrations); call it before serving or from `spawn_blocking`.
mod error;
mod model;
mod sqlite;
mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use error::StoreError;
pub use model::{
    ActualInstance, AgentRecord, Change, ChangeFilter, ChangeUpdate, DEFAULT_PAGE_LIMIT, DesiredInstance, Event,
    EventQuery, HostRecord, InstanceFilter, InstanceRecord, InstanceTransition, JoinTokenRow, MAX_PAGE_LIMIT,
    NewChange, NewEvent, NewRevision, ObservationBatch, Page, PageRequest, Revision, RevisionMeta, TokenRecord,
};
pub use sqlite::{SCHEMA_VERSION, SqliteStore, WriterStats};
pub use store::Store;
