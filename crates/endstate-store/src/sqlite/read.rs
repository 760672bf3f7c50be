//! Reads: queries on a read-only connection, and the mapping of rows back to records.
//!
//! Nothing read back is trusted: a malformed JSON column or an unknown state word is an error, never a panic.

use std::sync::Arc;

use endstate_types::{ChangeId, ChangeState, EventSeq, Generation, HostName, RevisionId, Status};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};

use crate::StoreError;
use crate::model::{
    ActualInstance, Change, ChangeFilter, DesiredInstance, Event, EventQuery, HostRecord, InstanceFilter,
    InstanceRecord, Page, PageRequest, Revision, RevisionMeta, TokenRecord, page_limit,
};

const REVISION_COLUMNS: &str = "id, author, message, source, digest, created_ms, desired";
const CHANGE_COLUMNS: &str =
    "id, revision, state, plan, reason, wave_index, wave_count, created_ms, updated_ms, progress, options";
const EVENT_COLUMNS: &str = "seq, time_ms, kind, systems, host, component, change_id, actor, summary, data";
const INSTANCE_COLUMNS: &str = "component_key, host, slot, system, desired_version, desired_config_digest, generation, \
     actual_version, actual_status, actual_state, actual_since_ms";
const TOKEN_COLUMNS: &str = "id, name, role, hash_hex, created_ms, revoked, systems";

pub(crate) fn get_revision(conn: &Connection, id: RevisionId) -> Result<Option<Revision>, StoreError> {
    let sql = format!("SELECT {REVISION_COLUMNS} FROM revisions WHERE id = ?1");
    one(conn, "read a revision", &sql, params![sql_u64(id.0)], revision_row)?
        .map(Revision::try_from)
        .transpose()
}

pub(crate) fn latest_revision(conn: &Connection) -> Result<Option<Revision>, StoreError> {
    let sql = format!("SELECT {REVISION_COLUMNS} FROM revisions ORDER BY id DESC LIMIT 1");
    one(conn, "read the latest revision", &sql, [], revision_row)?
        .map(Revision::try_from)
        .transpose()
}

pub(crate) fn list_revisions(conn: &Connection, page: PageRequest) -> Result<Page<RevisionMeta>, StoreError> {
    let limit = page_limit(page.limit);
    let sql = "SELECT id, author, message, source, digest, created_ms FROM revisions \
               WHERE id < ?1 ORDER BY id DESC LIMIT ?2";
    let before = before_arg(page.before);
    let rows = many(conn, "list revisions", sql, params![before, limit + 1], |row| {
        Ok(RevisionMeta {
            id: RevisionId(get_u64(row, 0)?),
            author: row.get(1)?,
            message: row.get(2)?,
            source: row.get(3)?,
            digest: row.get(4)?,
            created_ms: row.get(5)?,
        })
    })?;
    Ok(newest_first_page(rows, limit, |r| r.id.0))
}

pub(crate) fn get_change(conn: &Connection, id: ChangeId) -> Result<Option<Change>, StoreError> {
    let sql = format!("SELECT {CHANGE_COLUMNS} FROM changes WHERE id = ?1");
    one(conn, "read a change", &sql, params![sql_u64(id.0)], change_row)?
        .map(Change::try_from)
        .transpose()
}

pub(crate) fn list_changes(
    conn: &Connection,
    filter: &ChangeFilter,
    page: PageRequest,
) -> Result<Page<Change>, StoreError> {
    let limit = page_limit(page.limit);
    let mut sql = format!("SELECT {CHANGE_COLUMNS} FROM changes WHERE id < ?1");
    if filter.open_only {
        sql.push_str(" AND state IN ('pending', 'planning', 'rolling', 'halted')");
    }
    if filter.converged_only {
        sql.push_str(" AND state = 'converged'");
    }
    let revision = filter.revision.map(|r| sql_u64(r.0));
    if revision.is_some() {
        sql.push_str(" AND revision = ?3");
    } else {
        sql.push_str(" AND ?3 IS NULL");
    }
    sql.push_str(" ORDER BY id DESC LIMIT ?2");
    let before = before_arg(page.before);
    let rows = many(
        conn,
        "list changes",
        &sql,
        params![before, limit + 1, revision],
        change_row,
    )?;
    let changes = rows.into_iter().map(Change::try_from).collect::<Result<Vec<_>, _>>()?;
    Ok(newest_first_page(changes, limit, |c| c.id.0))
}

pub(crate) fn get_host(conn: &Connection, name: &HostName) -> Result<Option<HostRecord>, StoreError> {
    let sql = "SELECT name, labels, facts, last_seen_ms, retired_ms FROM hosts WHERE name = ?1";
    one(conn, "read a host", sql, params![name.0], host_row)?
        .map(HostRecord::try_from)
        .transpose()
}

pub(crate) fn list_hosts(conn: &Connection) -> Result<Vec<HostRecord>, StoreError> {
    let sql = "SELECT name, labels, facts, last_seen_ms, retired_ms FROM hosts ORDER BY name";
    many(conn, "list hosts", sql, [], host_row)?
        .into_iter()
        .map(HostRecord::try_from)
        .collect()
}

pub(crate) fn list_instances(conn: &Connection, filter: &InstanceFilter) -> Result<Vec<InstanceRecord>, StoreError> {
    let mut sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE 1 = 1");
    let mut args: Vec<SqlValue> = Vec::new();
    if let Some(systems) = &filter.system {
        sql.push_str(" AND system IN (");
        sql.push_str(&placeholders(systems.len()));
        sql.push(')');
        args.extend(systems.iter().map(|s| SqlValue::Text(s.clone())));
    }
    if let Some(host) = &filter.host {
        sql.push_str(" AND host = ?");
        args.push(SqlValue::Text(host.0.clone()));
    }
    sql.push_str(" ORDER BY component_key, host, slot");
    many(conn, "list instances", &sql, params_from_iter(args), instance_row)?
        .into_iter()
        .map(InstanceRecord::try_from)
        .collect()
}

pub(crate) fn query_events(conn: &Connection, query: &EventQuery) -> Result<Page<Event>, StoreError> {
    let limit = page_limit(query.limit);
    let ascending = query.after.is_some();
    let empty = Page {
        items: Vec::new(),
        next: if ascending { query.after.map(|s| s.0) } else { None },
    };
    if query.systems.as_ref().is_some_and(Vec::is_empty) || query.kinds.as_ref().is_some_and(Vec::is_empty) {
        return Ok(empty);
    }
    let mut sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE 1 = 1");
    let mut args: Vec<SqlValue> = Vec::new();
    // Bounds on seq and time, repeated inside the system subquery so its index narrows early.
    let mut bounds = String::new();
    let mut bound_args: Vec<SqlValue> = Vec::new();
    if let Some(after) = query.after {
        bounds.push_str(" AND seq > ?");
        bound_args.push(SqlValue::Integer(seq_arg(after)));
    }
    if let Some(before) = query.before {
        bounds.push_str(" AND seq < ?");
        bound_args.push(SqlValue::Integer(seq_arg(before)));
    }
    if let Some(since) = query.since_ms {
        bounds.push_str(" AND time_ms >= ?");
        bound_args.push(SqlValue::Integer(since));
    }
    if let Some(until) = query.until_ms {
        bounds.push_str(" AND time_ms < ?");
        bound_args.push(SqlValue::Integer(until));
    }
    // The kinds, as a condition and its arguments (used in the system subquery too, where the
    // index on (system, kind, time) answers it without reading the events).
    let kind_filter = query.kinds.as_ref().map(|kinds| {
        let terms: Vec<&str> = kinds
            .iter()
            .map(|kind| {
                if kind.ends_with('.') {
                    "(kind >= ? AND kind < ?)"
                } else {
                    "kind = ?"
                }
            })
            .collect();
        let mut kind_args = Vec::new();
        for kind in kinds {
            if let Some(stem) = kind.strip_suffix('.') {
                // Every kind starting with "stem." sorts in ["stem.", "stem/"): '/' follows '.'.
                kind_args.push(SqlValue::Text(kind.clone()));
                kind_args.push(SqlValue::Text(format!("{stem}/")));
            } else {
                kind_args.push(SqlValue::Text(kind.clone()));
            }
        }
        (format!(" AND ({})", terms.join(" OR ")), kind_args)
    });
    if let Some(systems) = &query.systems {
        sql.push_str(" AND seq IN (SELECT seq FROM event_systems WHERE system IN (");
        sql.push_str(&placeholders(systems.len()));
        sql.push(')');
        args.extend(systems.iter().map(|s| SqlValue::Text(s.clone())));
        if let Some((terms, kind_args)) = &kind_filter {
            sql.push_str(terms);
            args.extend(kind_args.iter().cloned());
        }
        sql.push_str(&bounds);
        args.extend(bound_args.iter().cloned());
        sql.push(')');
    }
    match (&query.host, &kind_filter) {
        // A host's events of some kinds: found in the index on (host, kind, time) alone. Left to
        // itself, the planner walks every event of the host newest first to spare a sort, which
        // on a busy host means reading tens of thousands of instance transitions for a few
        // host events.
        (Some(host), Some((terms, kind_args))) => {
            sql.push_str(" AND seq IN (SELECT seq FROM events INDEXED BY events_by_host_kind WHERE host = ?");
            args.push(SqlValue::Text(host.clone()));
            sql.push_str(terms);
            args.extend(kind_args.iter().cloned());
            sql.push_str(&bounds);
            args.extend(bound_args.iter().cloned());
            sql.push(')');
        }
        (Some(host), None) => {
            sql.push_str(" AND host = ?");
            args.push(SqlValue::Text(host.clone()));
        }
        (None, _) => {}
    }
    if let Some((terms, kind_args)) = kind_filter {
        sql.push_str(&terms);
        args.extend(kind_args);
    }
    if let Some(component) = &query.component {
        sql.push_str(" AND component = ?");
        args.push(SqlValue::Text(component.clone()));
    }
    if let Some(actor) = &query.actor {
        sql.push_str(" AND actor = ?");
        args.push(SqlValue::Text(actor.clone()));
    }
    sql.push_str(&bounds);
    args.extend(bound_args);
    sql.push_str(if ascending {
        " ORDER BY seq ASC LIMIT ?"
    } else {
        " ORDER BY seq DESC LIMIT ?"
    });
    args.push(SqlValue::Integer(i64::from(limit) + 1));
    let rows = many(conn, "query events", &sql, params_from_iter(args), event_row)?;
    let events = rows.into_iter().map(Event::try_from).collect::<Result<Vec<_>, _>>()?;
    if ascending {
        let mut events = events;
        events.truncate(limit as usize);
        let next = events.last().map(|e| e.seq).or(query.after).map(|s| s.0);
        Ok(Page { items: events, next })
    } else {
        Ok(newest_first_page(events, limit, |e| e.seq.0))
    }
}

pub(crate) fn find_token(conn: &Connection, hash_hex: &str) -> Result<Option<TokenRecord>, StoreError> {
    let sql = format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE hash_hex = ?1");
    one(conn, "find a token", &sql, params![hash_hex], token_row)
}

pub(crate) fn list_tokens(conn: &Connection) -> Result<Vec<TokenRecord>, StoreError> {
    let sql = format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_ms, id");
    let mut stmt = conn.prepare(&sql).map_err(StoreError::sqlite("list tokens"))?;
    let rows = stmt
        .query_map([], token_row)
        .map_err(StoreError::sqlite("list tokens"))?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(StoreError::sqlite("list tokens"))
}

pub(crate) fn count_tokens(conn: &Connection) -> Result<u64, StoreError> {
    conn.query_row("SELECT COUNT(*) FROM tokens", [], |row| get_u64(row, 0))
        .map_err(StoreError::sqlite("count tokens"))
}

// === rows ===
//
// Row functions read raw columns only (SQLite type errors surface as `StoreError::Sqlite`);
// the `TryFrom` impls then parse JSON and words, so a corrupt value names its column and row.

pub(crate) struct RevisionRow {
    meta: RevisionMeta,
    desired: String,
}

pub(crate) struct ChangeRow {
    id: u64,
    revision: u64,
    state: String,
    plan: Option<String>,
    reason: Option<String>,
    wave: (Option<u32>, Option<u32>),
    created_ms: i64,
    updated_ms: i64,
    progress: Option<String>,
    options: Option<String>,
}

pub(crate) struct HostRow {
    name: String,
    labels: String,
    facts: String,
    last_seen_ms: Option<i64>,
    retired_ms: Option<i64>,
}

pub(crate) struct InstanceRow {
    component_key: String,
    host: String,
    slot: u32,
    system: String,
    desired: DesiredInstance,
    actual_version: Option<String>,
    actual_status: Option<String>,
    actual_state: Option<String>,
    actual_since_ms: Option<i64>,
}

pub(crate) struct EventRow {
    seq: u64,
    time_ms: i64,
    kind: String,
    systems: String,
    host: Option<String>,
    component: Option<String>,
    change: Option<u64>,
    actor: Option<String>,
    summary: String,
    data: String,
}

fn revision_row(row: &Row<'_>) -> rusqlite::Result<RevisionRow> {
    Ok(RevisionRow {
        meta: RevisionMeta {
            id: RevisionId(get_u64(row, 0)?),
            author: row.get(1)?,
            message: row.get(2)?,
            source: row.get(3)?,
            digest: row.get(4)?,
            created_ms: row.get(5)?,
        },
        desired: row.get(6)?,
    })
}

pub(crate) fn change_row(row: &Row<'_>) -> rusqlite::Result<ChangeRow> {
    Ok(ChangeRow {
        id: get_u64(row, 0)?,
        revision: get_u64(row, 1)?,
        state: row.get(2)?,
        plan: row.get(3)?,
        reason: row.get(4)?,
        wave: (row.get(5)?, row.get(6)?),
        created_ms: row.get(7)?,
        updated_ms: row.get(8)?,
        progress: row.get(9)?,
        options: row.get(10)?,
    })
}

fn host_row(row: &Row<'_>) -> rusqlite::Result<HostRow> {
    Ok(HostRow {
        name: row.get(0)?,
        labels: row.get(1)?,
        facts: row.get(2)?,
        last_seen_ms: row.get(3)?,
        retired_ms: row.get(4)?,
    })
}

fn instance_row(row: &Row<'_>) -> rusqlite::Result<InstanceRow> {
    Ok(InstanceRow {
        component_key: row.get(0)?,
        host: row.get(1)?,
        slot: row.get(2)?,
        system: row.get(3)?,
        desired: DesiredInstance {
            version: row.get(4)?,
            config_digest: row.get(5)?,
            generation: Generation(get_u64(row, 6)?),
        },
        actual_version: row.get(7)?,
        actual_status: row.get(8)?,
        actual_state: row.get(9)?,
        actual_since_ms: row.get(10)?,
    })
}

fn event_row(row: &Row<'_>) -> rusqlite::Result<EventRow> {
    Ok(EventRow {
        seq: get_u64(row, 0)?,
        time_ms: row.get(1)?,
        kind: row.get(2)?,
        systems: row.get(3)?,
        host: row.get(4)?,
        component: row.get(5)?,
        change: row.get::<_, Option<i64>>(6)?.map(|v| to_u64(6, v)).transpose()?,
        actor: row.get(7)?,
        summary: row.get(8)?,
        data: row.get(9)?,
    })
}

fn token_row(row: &Row<'_>) -> rusqlite::Result<TokenRecord> {
    Ok(TokenRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        role: row.get(2)?,
        hash_hex: row.get(3)?,
        created_ms: row.get(4)?,
        revoked: row.get(5)?,
        systems: row
            .get::<_, String>(6)?
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

// === impl TryFrom for records ===

impl TryFrom<RevisionRow> for Revision {
    type Error = StoreError;

    fn try_from(row: RevisionRow) -> Result<Revision, StoreError> {
        let RevisionRow { meta, desired } = row;
        let desired = json("revisions.desired", || meta.id.to_string(), &desired)?;
        let RevisionMeta {
            id,
            author,
            message,
            source,
            digest,
            created_ms,
        } = meta;
        Ok(Revision {
            id,
            author,
            message,
            source,
            digest,
            desired,
            created_ms,
        })
    }
}

impl TryFrom<ChangeRow> for Change {
    type Error = StoreError;

    fn try_from(row: ChangeRow) -> Result<Change, StoreError> {
        let id = ChangeId(row.id);
        let key = || id.to_string();
        let state = ChangeState::parse(&row.state).ok_or_else(|| StoreError::Corrupt {
            column: "changes.state",
            key: key(),
            detail: format!("unknown change state {:?}", row.state),
        })?;
        let plan = row
            .plan
            .as_deref()
            .map(|plan| json("changes.plan", key, plan))
            .transpose()?;
        let progress = row
            .progress
            .as_deref()
            .map(|progress| json("changes.progress", key, progress))
            .transpose()?;
        let options = row
            .options
            .as_deref()
            .map(|options| json("changes.options", key, options))
            .transpose()?;
        let wave = match row.wave {
            (Some(index), Some(count)) => Some((index, count)),
            _ => None,
        };
        Ok(Change {
            id,
            revision: RevisionId(row.revision),
            state,
            plan,
            reason: row.reason,
            wave,
            progress,
            options,
            created_ms: row.created_ms,
            updated_ms: row.updated_ms,
        })
    }
}

impl TryFrom<HostRow> for HostRecord {
    type Error = StoreError;

    fn try_from(row: HostRow) -> Result<HostRecord, StoreError> {
        let key = || row.name.clone();
        let labels = json("hosts.labels", key, &row.labels)?;
        let facts = json("hosts.facts", key, &row.facts)?;
        Ok(HostRecord {
            name: HostName(row.name),
            labels,
            facts,
            last_seen_ms: row.last_seen_ms,
            retired_ms: row.retired_ms,
        })
    }
}

impl TryFrom<InstanceRow> for InstanceRecord {
    type Error = StoreError;

    fn try_from(row: InstanceRow) -> Result<InstanceRecord, StoreError> {
        let actual = match (row.actual_status, row.actual_state, row.actual_since_ms) {
            (Some(status), Some(state), Some(since_ms)) => Some(ActualInstance {
                version: row.actual_version,
                status: parse_status(&status).ok_or_else(|| StoreError::Corrupt {
                    column: "instances.actual_status",
                    key: format!("{}@{}#{}", row.component_key, row.host, row.slot),
                    detail: format!("unknown status {status:?}"),
                })?,
                state,
                since_ms,
            }),
            _ => None,
        };
        Ok(InstanceRecord {
            component_key: row.component_key,
            system: row.system,
            host: HostName(row.host),
            slot: row.slot,
            desired: row.desired,
            actual,
        })
    }
}

impl TryFrom<EventRow> for Event {
    type Error = StoreError;

    fn try_from(row: EventRow) -> Result<Event, StoreError> {
        let key = || format!("event {}", row.seq);
        Ok(Event {
            seq: EventSeq(row.seq),
            time_ms: row.time_ms,
            systems: json("events.systems", key, &row.systems)?,
            data: json("events.data", key, &row.data)?,
            kind: row.kind,
            host: row.host,
            component: row.component,
            change: row.change.map(ChangeId),
            actor: row.actor,
            summary: row.summary,
        })
    }
}

// === helpers ===

fn one<T, P: rusqlite::Params>(
    conn: &Connection,
    op: &'static str,
    sql: &str,
    params: P,
    map: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<Option<T>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(StoreError::sqlite(op))?;
    stmt.query_row(params, map).optional().map_err(StoreError::sqlite(op))
}

fn many<T, P: rusqlite::Params>(
    conn: &Connection,
    op: &'static str,
    sql: &str,
    params: P,
    map: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(StoreError::sqlite(op))?;
    let rows = stmt.query_map(params, map).map_err(StoreError::sqlite(op))?;
    rows.collect::<rusqlite::Result<Vec<T>>>()
        .map_err(StoreError::sqlite(op))
}

/// Cuts a newest-first result fetched with `limit + 1` rows into a page and its cursor.
fn newest_first_page<T>(mut items: Vec<T>, limit: u32, id: impl Fn(&T) -> u64) -> Page<T> {
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    let next = if more { items.last().map(id) } else { None };
    Page { items, next }
}

fn json<T: serde::de::DeserializeOwned>(
    column: &'static str,
    key: impl FnOnce() -> String,
    text: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|source| StoreError::Json {
        column,
        key: key(),
        source: Arc::new(source),
    })
}

pub(crate) fn parse_status(word: &str) -> Option<Status> {
    [
        Status::Healthy,
        Status::Pending,
        Status::Unknown,
        Status::Degraded,
        Status::Unhealthy,
    ]
    .into_iter()
    .find(|status| status.as_str() == word)
}

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// Reads a non-negative integer column.
pub(crate) fn get_u64(row: &Row<'_>, idx: usize) -> rusqlite::Result<u64> {
    to_u64(idx, row.get::<_, i64>(idx)?)
}

fn to_u64(idx: usize, value: i64) -> rusqlite::Result<u64> {
    u64::try_from(value).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, value))
}

/// An id or seq as an SQL integer (ids above `i64::MAX` cannot exist in SQLite; they saturate, matching nothing).
pub(crate) fn sql_u64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// An exclusive upper bound on ids as an SQL integer (no bound: the largest).
fn before_arg(before: Option<u64>) -> i64 {
    before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX))
}

/// A seq as an SQL integer (seqs above `i64::MAX` cannot exist; they saturate).
fn seq_arg(seq: EventSeq) -> i64 {
    i64::try_from(seq.0).unwrap_or(i64::MAX)
}
