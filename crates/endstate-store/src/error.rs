//! The one error type of the store: what went wrong, with the context to find it.

use std::sync::Arc;

use endstate_types::{ChangeId, ChangeState, RevisionId};

/// Why a store operation failed.
///
/// The error is `Clone` (sources are shared behind `Arc`), because one failed group commit
/// answers every request of its batch with the same error.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// A compare-and-set on a change's state found another state than the caller expected.
    #[error("change {change} is {found}, expected {expected}", found = found.as_str(), expected = expected.as_str())]
    Conflict {
        /// The change.
        change: ChangeId,
        /// The state the caller expected.
        expected: ChangeState,
        /// The state the store holds.
        found: ChangeState,
    },
    /// The state of another thing than a change stands in the way (a join token used already,
    /// an agent revoked, observations stored since the caller read).
    #[error("{what}: {reason}")]
    Refused {
        /// What: "join token", "agent", "observations".
        what: &'static str,
        /// Why, in words.
        reason: String,
    },
    /// A submission named a parent revision that is no longer the newest.
    #[error("revision {} is the newest, not revision {}", found.0, expected.0)]
    StaleParent {
        /// The parent the caller named.
        expected: RevisionId,
        /// The newest revision in the store (0: none).
        found: RevisionId,
    },
    /// The thing the operation is about does not exist.
    #[error("{what} {key} not found")]
    NotFound {
        /// What kind of thing: "change", "instance".
        what: &'static str,
        /// Its key, as a person would write it.
        key: String,
    },
    /// The request itself is not acceptable (nothing was written).
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was rejected: "event", "token".
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// Applying a schema migration failed (the database stays at version `from`).
    #[error("failed to migrate the store schema from version {from} to {to}")]
    Migration {
        /// The version found in the database.
        from: u32,
        /// The version the migration leads to.
        to: u32,
        /// What SQLite said.
        #[source]
        source: Arc<rusqlite::Error>,
    },
    /// The database was written by a newer build: opening it could lose data, so it is refused.
    #[error("the store schema is version {found}, newer than version {known} this build knows; upgrade endstate")]
    SchemaTooNew {
        /// The version found in the database.
        found: u32,
        /// The newest version this build knows.
        known: u32,
    },
    /// SQLite failed an operation.
    #[error("sqlite failed to {op}")]
    Sqlite {
        /// What the store was doing, e.g. "insert event".
        op: &'static str,
        /// What SQLite said.
        #[source]
        source: Arc<rusqlite::Error>,
    },
    /// A stored JSON column cannot be read back.
    #[error("stored {column} of {key} is not valid JSON")]
    Json {
        /// The column, e.g. "revisions.desired".
        column: &'static str,
        /// The row's key.
        key: String,
        /// What the parser said.
        #[source]
        source: Arc<serde_json::Error>,
    },
    /// A stored value cannot be read back (for example an unknown state word).
    #[error("stored {column} of {key} is unreadable: {detail}")]
    Corrupt {
        /// The column, e.g. "changes.state".
        column: &'static str,
        /// The row's key.
        key: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The store was closed (or its writer stopped); nothing more is accepted.
    #[error("the store is closed")]
    Closed,
    /// A store worker died while serving the request (a bug); the request may or may not have been applied.
    #[error("the store worker serving {op} stopped unexpectedly")]
    Crashed {
        /// What the worker was doing.
        op: &'static str,
    },
}

impl StoreError {
    /// Wraps a SQLite error with what the store was doing.
    pub(crate) fn sqlite(op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
        move |source| StoreError::Sqlite {
            op,
            source: Arc::new(source),
        }
    }
}
