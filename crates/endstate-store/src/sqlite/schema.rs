//! The versioned schema: an ordered list of migrations, applied at open, tracked in `PRAGMA user_version`.

use std::sync::Arc;

use rusqlite::Connection;

use crate::StoreError;

/// Migration `i` takes the schema from version `i` to `i + 1`. Append only: never edit a released entry.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1: the first schema.
    r"
CREATE TABLE revisions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    author      TEXT NOT NULL,
    message     TEXT NOT NULL,
    source      TEXT NOT NULL,
    digest      TEXT NOT NULL,
    desired     TEXT NOT NULL,
    created_ms  INTEGER NOT NULL
);
CREATE TRIGGER revisions_immutable BEFORE UPDATE ON revisions
BEGIN SELECT RAISE(ABORT, 'revisions are immutable'); END;
CREATE TRIGGER revisions_kept BEFORE DELETE ON revisions
BEGIN SELECT RAISE(ABORT, 'revisions are immutable'); END;

CREATE TABLE changes (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    revision    INTEGER NOT NULL REFERENCES revisions(id),
    state       TEXT NOT NULL,
    plan        TEXT,
    reason      TEXT,
    wave_index  INTEGER,
    wave_count  INTEGER,
    created_ms  INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL
);
CREATE INDEX changes_by_revision ON changes(revision, id);
CREATE INDEX changes_open ON changes(id) WHERE state IN ('pending', 'planning', 'rolling', 'halted');

CREATE TABLE hosts (
    name          TEXT PRIMARY KEY,
    labels        TEXT NOT NULL,
    facts         TEXT NOT NULL,
    last_seen_ms  INTEGER
) WITHOUT ROWID;

CREATE TABLE instances (
    component_key          TEXT NOT NULL,
    host                   TEXT NOT NULL,
    slot                   INTEGER NOT NULL,
    system                 TEXT NOT NULL,
    desired_version        TEXT NOT NULL,
    desired_config_digest  TEXT NOT NULL,
    generation             INTEGER NOT NULL,
    actual_version         TEXT,
    actual_status          TEXT,
    actual_state           TEXT,
    actual_since_ms        INTEGER,
    PRIMARY KEY (component_key, host, slot)
) WITHOUT ROWID;
CREATE INDEX instances_by_system ON instances(system);
CREATE INDEX instances_by_host ON instances(host);

CREATE TABLE events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ms    INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    systems    TEXT NOT NULL,
    host       TEXT,
    component  TEXT,
    change_id  INTEGER,
    actor      TEXT,
    summary    TEXT NOT NULL,
    data       TEXT NOT NULL
);
CREATE INDEX events_by_time ON events(time_ms);
CREATE INDEX events_by_kind ON events(kind);
CREATE INDEX events_by_host ON events(host) WHERE host IS NOT NULL;
CREATE TRIGGER events_append_only BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'the timeline is append-only'); END;

-- One row per (system, event): an event may belong to several systems.
CREATE TABLE event_systems (
    system   TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    time_ms  INTEGER NOT NULL,
    PRIMARY KEY (system, seq)
) WITHOUT ROWID;
CREATE INDEX event_systems_by_time ON event_systems(system, time_ms);

CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL,
    hash_hex    TEXT NOT NULL UNIQUE,
    created_ms  INTEGER NOT NULL,
    revoked     INTEGER NOT NULL
);
",
    // 1 -> 2: agents: join tokens, enrolled identities and their link state.
    r"
CREATE TABLE join_tokens (
    hash_hex    TEXT PRIMARY KEY,
    labels      TEXT NOT NULL,
    host        TEXT,
    created_ms  INTEGER NOT NULL,
    created_by  TEXT NOT NULL,
    expires_ms  INTEGER NOT NULL,
    used_ms     INTEGER,
    used_by     TEXT
) WITHOUT ROWID;

CREATE TABLE agents (
    host            TEXT PRIMARY KEY,
    enrolled_ms     INTEGER NOT NULL,
    revoked_ms      INTEGER,
    cert_serial     TEXT NOT NULL,
    prev_serial     TEXT,
    reachable       INTEGER,
    last_seq        INTEGER NOT NULL DEFAULT 0,
    generation      INTEGER NOT NULL DEFAULT 0,
    desired_digest  TEXT
) WITHOUT ROWID;
",
    // 2 -> 3: rollouts: the controller's progress through a change's waves.
    r"
ALTER TABLE changes ADD COLUMN progress TEXT;
",
    // 3 -> 4: operational parameters given with a change; hosts retired by a converged change.
    r"
ALTER TABLE changes ADD COLUMN options TEXT;
ALTER TABLE hosts ADD COLUMN retired_ms INTEGER;
",
    // 4 -> 5: API tokens scoped to systems (comma-separated names; empty: every system).
    r"
ALTER TABLE tokens ADD COLUMN systems TEXT NOT NULL DEFAULT '';
",
    // 5 -> 6: a host's events of one kind in a time window (`why` reads a host's own events
    // without walking every instance transition of a busy host).
    r"
CREATE INDEX events_by_host_kind ON events(host, kind, time_ms) WHERE host IS NOT NULL;
",
    // 6 -> 7: the kind beside each (system, event) row, so a system's events of some kinds over a
    // long window are found in the index without reading every event of the system (`why` over
    // 30 days). Existing rows get their kind from their event.
    r"
ALTER TABLE event_systems ADD COLUMN kind TEXT NOT NULL DEFAULT '';
UPDATE event_systems SET kind = (SELECT kind FROM events WHERE events.seq = event_systems.seq);
CREATE INDEX event_systems_by_kind ON event_systems(system, kind, time_ms);
",
    // 7 -> 8: the newest converged change (the revision in force, read at every controller
    // round) from an index, however many changes failed or rolled back since.
    r"
CREATE INDEX changes_converged ON changes(id) WHERE state = 'converged';
",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Brings the database to [`SCHEMA_VERSION`], one migration per transaction.
///
/// # Errors
/// `SchemaTooNew` when the database is newer than this build; `Migration` when a step fails
/// (that step is rolled back; earlier steps stay).
pub(crate) fn migrate(conn: &mut Connection) -> Result<u32, StoreError> {
    loop {
        // The version is read inside the exclusive transaction, so two processes opening the same
        // file at once never apply a migration twice.
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)
            .map_err(StoreError::sqlite("lock the schema"))?;
        let found: u32 = tx
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(StoreError::sqlite("read the schema version"))?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found,
                known: SCHEMA_VERSION,
            });
        }
        let Some(sql) = MIGRATIONS.get(found as usize) else {
            return Ok(found);
        };
        let (from, to) = (found, found + 1);
        let fail = |source| StoreError::Migration {
            from,
            to,
            source: Arc::new(source),
        };
        tx.execute_batch(sql).map_err(fail)?;
        tx.pragma_update(None, "user_version", to).map_err(fail)?;
        tx.commit().map_err(fail)?;
        tracing::info!(from, to, "Store schema migrated.");
    }
}
