//! The writer thread: the only connection that writes, applying queued requests with group commit.
//!
//! # Expected flow
//! Callers send a [`WriteOp`] with a oneshot reply. The thread blocks for the first request, then
//! takes every request already waiting (up to [`MAX_BATCH`]), applying each as it is taken, all
//! within ONE transaction; it commits (one fsync for the whole batch), and only then answers them all.
//!
//! Requests are applied without a savepoint of their own (a savepoint per request copies every page
//! it touches into the sub-journal: the largest CPU cost of small requests). That is safe because
//! a request that fails before its first write has nothing to undo. A request that fails after
//! writing (or whose failure ended the transaction) makes the writer roll the whole transaction back
//! and apply the batch again from its start, this time each request in its own SAVEPOINT, so that
//! only the failing request's writes are undone; later requests of the batch go on without savepoints.
//!
//! # Guarantees
//! - An `Ok` reply means the request's effects are committed and fsynced (`synchronous=FULL`).
//! - A failing request writes nothing and is answered with its error; the others of the batch
//!   commit normally.
//! - If the transaction cannot begin or commit, or a failure ends it, the whole batch is rolled back
//!   and every request not already failed by its own error gets that error.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use endstate_types::{ChangeId, ChangeState, EventSeq};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use crate::StoreError;
use crate::model::{
    AgentRecord, Change, ChangeUpdate, HostRecord, InstanceRecord, InstanceTransition, JoinTokenRow, NewChange,
    NewEvent, NewRevision, ObservationBatch, Revision, TokenRecord,
};
use crate::sqlite::read;

/// The most requests applied in one transaction.
pub(crate) const MAX_BATCH: usize = 8 * 1024;

/// How many applied requests between two checkpoint requests.
const CHECKPOINT_EVERY_OPS: usize = 2048;

pub(crate) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A request to the writer thread.
pub(crate) enum WriteOp {
    SubmitRevision(NewRevision, Vec<NewEvent>, Reply<(Revision, Change)>),
    AddChange(NewChange, Vec<NewEvent>, Reply<Change>),
    TransitionChange(ChangeId, ChangeState, ChangeUpdate, Vec<NewEvent>, Reply<Change>),
    UpsertHost(HostRecord, Reply<()>),
    PutInstances(Vec<InstanceRecord>, Reply<()>),
    RecordTransitions(Vec<InstanceTransition>, Reply<Vec<EventSeq>>),
    AppendEvents(Vec<NewEvent>, Reply<Vec<EventSeq>>),
    /// Deletes old events of a kind, keeping the newest of each subject (kind, before, limit).
    CompactEvents(String, i64, u32, Reply<u64>),
    PutToken(TokenRecord, Reply<()>),
    /// The writes of the agent link (enrolment, revocation, observations), one variant for them all.
    Agent(AgentOp, Reply<AgentReply>),
    /// Finish the current batch, close the connection, then answer.
    Shutdown(oneshot::Sender<()>),
}

/// A write of the agent link.
pub(crate) enum AgentOp {
    PutJoinToken(JoinTokenRow),
    Enrol {
        token_hash: String,
        at_ms: i64,
        host: HostRecord,
        serial: String,
        events: Vec<NewEvent>,
    },
    Renew {
        host: String,
        serial: String,
        events: Vec<NewEvent>,
    },
    Revoke {
        host: String,
        at_ms: i64,
        events: Vec<NewEvent>,
    },
    Reachable {
        host: String,
        reachable: bool,
        serial: Option<String>,
        events: Vec<NewEvent>,
    },
    Desired {
        host: String,
        digest: String,
    },
    Ingest {
        host: String,
        batch: ObservationBatch,
    },
    ReplaceInstances(Vec<InstanceRecord>),
}

/// What an [`AgentOp`] produced.
pub(crate) enum AgentReply {
    Done,
    Agent(AgentRecord),
    Generation(u64),
    Seqs(Vec<EventSeq>),
}

/// Counters of the writer, shared with the store handle.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) batches: AtomicU64,
    pub(crate) ops: AtomicU64,
    pub(crate) max_batch: AtomicU64,
    /// Batches with a write of changes, counted once committed (or failed), before any of them
    /// is answered ([`Store::changes_version`](crate::Store::changes_version)).
    pub(crate) changes_written: AtomicU64,
}

/// What applying one request produced, held until its batch commits.
enum Outcome {
    Revision(Result<(Revision, Change), StoreError>),
    Change(Result<Change, StoreError>),
    Done(Result<(), StoreError>),
    Seqs(Result<Vec<EventSeq>, StoreError>),
    Count(Result<u64, StoreError>),
    Agent(Result<AgentReply, StoreError>),
}

/// The requests of the open transaction and, for a prefix of them, what applying them produced.
///
/// A request without an outcome was never applied (the transaction had already failed): it gets
/// the batch's error.
#[derive(Default)]
struct Batch {
    ops: Vec<WriteOp>,
    outcomes: Vec<Outcome>,
}

/// Runs the writer loop until every sender is gone or a `Shutdown` arrives.
pub(crate) fn run(
    conn: Connection,
    mut rx: mpsc::Receiver<WriteOp>,
    counters: Arc<Counters>,
    checkpoint: std::sync::mpsc::SyncSender<()>,
) {
    let mut n_since_checkpoint = 0;
    let mut shutdown: Option<oneshot::Sender<()>> = None;
    let mut batch = Batch::default();
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        let mut open = begin(&conn);
        while let Some(op) = next.take() {
            if let WriteOp::Shutdown(reply) = op {
                shutdown = Some(reply);
                break;
            }
            batch.ops.push(op);
            if open.is_ok() {
                open = apply_last(&conn, &mut batch);
            }
            // A failed transaction takes no more requests: they go to the next one.
            if open.is_ok() && batch.ops.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        let n_ops = batch.ops.len();
        let committed = match open {
            Ok(()) => commit(&conn),
            Err(error) => {
                if !conn.is_autocommit() {
                    let _ = exec(&conn, "roll back a batch", "ROLLBACK");
                }
                Err(error)
            }
        };
        if let Err(error) = &committed {
            tracing::error!(error = %error, n_ops, "Store batch failed to commit.");
        }
        // Counters first, so a caller that got its answer sees its batch counted.
        n_since_checkpoint += n_ops;
        if n_since_checkpoint >= CHECKPOINT_EVERY_OPS {
            // A full channel means a checkpoint is already pending: nothing to add.
            let _ = checkpoint.try_send(());
            n_since_checkpoint = 0;
        }
        counters.batches.fetch_add(1, Ordering::Relaxed);
        counters.ops.fetch_add(n_ops as u64, Ordering::Relaxed);
        counters.max_batch.fetch_max(n_ops as u64, Ordering::Relaxed);
        if batch.ops.iter().any(|op| {
            matches!(
                op,
                WriteOp::SubmitRevision(..) | WriteOp::AddChange(..) | WriteOp::TransitionChange(..)
            )
        }) {
            counters.changes_written.fetch_add(1, Ordering::SeqCst);
        }
        let batch_error = committed.as_ref().err();
        let mut outcomes = batch.outcomes.drain(..);
        for op in batch.ops.drain(..) {
            answer(op, outcomes.next(), batch_error);
        }
        drop(outcomes);
        if shutdown.is_some() {
            break;
        }
    }
    rx.close();
    // Requests that raced with the shutdown are refused, not left hanging.
    while let Ok(op) = rx.try_recv() {
        fail(op, StoreError::Closed);
    }
    drop(conn);
    if let Some(reply) = shutdown {
        let _ = reply.send(());
    }
}

fn begin(conn: &Connection) -> Result<(), StoreError> {
    exec(conn, "begin a transaction", "BEGIN IMMEDIATE")
}

fn commit(conn: &Connection) -> Result<(), StoreError> {
    exec(conn, "commit a batch", "COMMIT").inspect_err(|_| {
        if !conn.is_autocommit() {
            let _ = exec(conn, "roll back a batch", "ROLLBACK");
        }
    })
}

/// Applies the batch's last request, without a savepoint.
///
/// If it failed after writing, or its failure ended the transaction, replays the batch with a
/// savepoint per request (see the module docs). An error means the transaction is lost: the batch fails.
fn apply_last(conn: &Connection, batch: &mut Batch) -> Result<(), StoreError> {
    let Some(op) = batch.ops.last() else {
        return Ok(());
    };
    let changes = conn.total_changes();
    let outcome = apply(conn, op);
    if outcome.failed() && (conn.is_autocommit() || conn.total_changes() != changes) {
        return replay(conn, batch);
    }
    batch.outcomes.push(outcome);
    Ok(())
}

/// Rolls the transaction back, begins another and applies the whole batch again, each request in
/// its own savepoint so that a failing one leaves no partial writes.
fn replay(conn: &Connection, batch: &mut Batch) -> Result<(), StoreError> {
    tracing::debug!(
        n_ops = batch.ops.len(),
        "A request failed after writing; replaying its batch with savepoints."
    );
    batch.outcomes.clear();
    if !conn.is_autocommit() {
        exec(conn, "roll back a batch", "ROLLBACK")?;
    }
    begin(conn)?;
    for op in &batch.ops {
        let outcome = guarded(conn, op);
        if outcome.failed() && conn.is_autocommit() {
            return Err(outcome
                .error()
                .cloned()
                .unwrap_or(StoreError::Crashed { op: "apply a batch" }));
        }
        batch.outcomes.push(outcome);
    }
    Ok(())
}

/// Applies one request inside a savepoint: on error, its partial writes are undone.
fn guarded(conn: &Connection, op: &WriteOp) -> Outcome {
    if let Err(error) = exec(conn, "open a savepoint", "SAVEPOINT op") {
        return Outcome::of(op, error);
    }
    let outcome = apply(conn, op);
    let closed = if outcome.failed() {
        exec(conn, "roll back a savepoint", "ROLLBACK TO op")
            .and_then(|()| exec(conn, "release a savepoint", "RELEASE op"))
    } else {
        exec(conn, "release a savepoint", "RELEASE op")
    };
    match closed {
        Ok(()) => outcome,
        Err(error) => Outcome::of(op, error),
    }
}

/// Applies one request in the open transaction.
fn apply(conn: &Connection, op: &WriteOp) -> Outcome {
    match op {
        WriteOp::SubmitRevision(new, events, _) => Outcome::Revision(submit_revision(conn, new, events)),
        WriteOp::TransitionChange(id, expect, update, events, _) => {
            Outcome::Change(transition_change(conn, *id, *expect, update, events))
        }
        WriteOp::AddChange(new, events, _) => Outcome::Change(add_change(conn, new, events)),
        WriteOp::UpsertHost(host, _) => Outcome::Done(upsert_host(conn, host)),
        WriteOp::PutInstances(instances, _) => Outcome::Done(put_instances(conn, instances)),
        WriteOp::RecordTransitions(transitions, _) => Outcome::Seqs(record_transitions(conn, transitions)),
        WriteOp::AppendEvents(events, _) => Outcome::Seqs(append_events(conn, events)),
        WriteOp::CompactEvents(kind, before_ms, limit, _) => {
            Outcome::Count(compact_events(conn, kind, *before_ms, *limit))
        }
        WriteOp::PutToken(token, _) => Outcome::Done(put_token(conn, token)),
        WriteOp::Agent(op, _) => Outcome::Agent(crate::sqlite::agents::apply(conn, op)),
        WriteOp::Shutdown(_) => Outcome::Done(Ok(())),
    }
}

impl Outcome {
    /// A failure of `op`.
    fn of(op: &WriteOp, error: StoreError) -> Outcome {
        match op {
            WriteOp::SubmitRevision(..) => Outcome::Revision(Err(error)),
            WriteOp::TransitionChange(..) | WriteOp::AddChange(..) => Outcome::Change(Err(error)),
            WriteOp::RecordTransitions(..) | WriteOp::AppendEvents(..) => Outcome::Seqs(Err(error)),
            WriteOp::CompactEvents(..) => Outcome::Count(Err(error)),
            WriteOp::Agent(..) => Outcome::Agent(Err(error)),
            WriteOp::UpsertHost(..) | WriteOp::PutInstances(..) | WriteOp::PutToken(..) | WriteOp::Shutdown(_) => {
                Outcome::Done(Err(error))
            }
        }
    }

    fn error(&self) -> Option<&StoreError> {
        match self {
            Outcome::Revision(result) => result.as_ref().err(),
            Outcome::Change(result) => result.as_ref().err(),
            Outcome::Done(result) => result.as_ref().err(),
            Outcome::Seqs(result) => result.as_ref().err(),
            Outcome::Count(result) => result.as_ref().err(),
            Outcome::Agent(result) => result.as_ref().err(),
        }
    }

    fn failed(&self) -> bool {
        self.error().is_some()
    }
}

/// Answers `op` once its batch is over: its own error if it failed, else the batch's error if the
/// batch failed, else its result.
fn answer(op: WriteOp, outcome: Option<Outcome>, batch_error: Option<&StoreError>) {
    match (op, outcome) {
        (WriteOp::SubmitRevision(.., reply), Some(Outcome::Revision(result))) => send(reply, result, batch_error),
        (WriteOp::Agent(_, reply), Some(Outcome::Agent(result))) => send(reply, result, batch_error),
        (WriteOp::TransitionChange(.., reply) | WriteOp::AddChange(.., reply), Some(Outcome::Change(result))) => {
            send(reply, result, batch_error)
        }
        (
            WriteOp::UpsertHost(_, reply) | WriteOp::PutInstances(_, reply) | WriteOp::PutToken(_, reply),
            Some(Outcome::Done(result)),
        ) => send(reply, result, batch_error),
        (WriteOp::RecordTransitions(_, reply) | WriteOp::AppendEvents(_, reply), Some(Outcome::Seqs(result))) => {
            send(reply, result, batch_error);
        }
        (WriteOp::CompactEvents(.., reply), Some(Outcome::Count(result))) => send(reply, result, batch_error),
        // Never applied (the batch failed first); a mismatched outcome cannot happen.
        (op, _) => fail(
            op,
            batch_error
                .cloned()
                .unwrap_or(StoreError::Crashed { op: "apply a write" }),
        ),
    }
}

fn send<T>(reply: Reply<T>, result: Result<T, StoreError>, batch_error: Option<&StoreError>) {
    let result = match (result, batch_error) {
        (Err(error), _) => Err(error),
        (Ok(_), Some(error)) => Err(error.clone()),
        (Ok(value), None) => Ok(value),
    };
    // The caller may have gone away (cancelled); its write stands all the same.
    let _ = reply.send(result);
}

fn fail(op: WriteOp, error: StoreError) {
    match op {
        WriteOp::SubmitRevision(.., reply) => drop(reply.send(Err(error))),
        WriteOp::TransitionChange(.., reply) | WriteOp::AddChange(.., reply) => drop(reply.send(Err(error))),
        WriteOp::Agent(_, reply) => drop(reply.send(Err(error))),
        WriteOp::UpsertHost(_, reply) | WriteOp::PutInstances(_, reply) | WriteOp::PutToken(_, reply) => {
            drop(reply.send(Err(error)));
        }
        WriteOp::RecordTransitions(_, reply) | WriteOp::AppendEvents(_, reply) => {
            drop(reply.send(Err(error)));
        }
        WriteOp::CompactEvents(.., reply) => drop(reply.send(Err(error))),
        WriteOp::Shutdown(reply) => drop(reply.send(())),
    }
}

fn exec(conn: &Connection, op: &'static str, sql: &str) -> Result<(), StoreError> {
    conn.prepare_cached(sql)
        .and_then(|mut stmt| stmt.execute([]))
        .map(drop)
        .map_err(StoreError::sqlite(op))
}

// === operations ===

fn submit_revision(
    conn: &Connection,
    new: &NewRevision,
    events: &[NewEvent],
) -> Result<(Revision, Change), StoreError> {
    validate_events(events)?;
    if let Some(expected) = new.parent {
        let op = "read the newest revision";
        let newest: i64 = conn
            .prepare_cached("SELECT COALESCE(MAX(id), 0) FROM revisions")
            .and_then(|mut stmt| stmt.query_row([], |row| row.get(0)))
            .map_err(StoreError::sqlite(op))?;
        let found = endstate_types::RevisionId(u64::try_from(newest).unwrap_or_default());
        if found != expected {
            return Err(StoreError::StaleParent { expected, found });
        }
    }
    let desired = new.desired.to_string();
    let op = "insert a revision";
    conn.prepare_cached(
        "INSERT INTO revisions (author, message, source, digest, desired, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            new.author,
            new.message,
            new.source,
            new.digest,
            desired,
            new.created_ms
        ])
    })
    .map_err(StoreError::sqlite(op))?;
    let revision_id = conn.last_insert_rowid();
    let op = "insert a change";
    let options = new.options.as_ref().map(serde_json::Value::to_string);
    conn.prepare_cached(
        "INSERT INTO changes (revision, state, created_ms, updated_ms, options) VALUES (?1, ?2, ?3, ?3, ?4)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            revision_id,
            ChangeState::Pending.as_str(),
            new.created_ms,
            options
        ])
    })
    .map_err(StoreError::sqlite(op))?;
    let change_id = ChangeId(u64::try_from(conn.last_insert_rowid()).unwrap_or_default());
    for event in events {
        insert_event(conn, event, Some(change_id))?;
    }
    let revision = Revision {
        id: endstate_types::RevisionId(u64::try_from(revision_id).unwrap_or_default()),
        author: new.author.clone(),
        message: new.message.clone(),
        source: new.source.clone(),
        digest: new.digest.clone(),
        desired: new.desired.clone(),
        created_ms: new.created_ms,
    };
    let change = read_change(conn, change_id)?;
    Ok((revision, change))
}

fn add_change(conn: &Connection, new: &NewChange, events: &[NewEvent]) -> Result<Change, StoreError> {
    validate_events(events)?;
    let exists: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM revisions WHERE id = ?1)")
        .and_then(|mut stmt| stmt.query_row(params![read::sql_u64(new.revision.0)], |row| row.get(0)))
        .map_err(StoreError::sqlite("look up a revision"))?;
    if !exists {
        return Err(StoreError::NotFound {
            what: "revision",
            key: new.revision.0.to_string(),
        });
    }
    let json = |value: &Option<serde_json::Value>| value.as_ref().map(serde_json::Value::to_string);
    conn.prepare_cached(
        "INSERT INTO changes (revision, state, plan, reason, progress, options, created_ms, updated_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            read::sql_u64(new.revision.0),
            new.state.as_str(),
            json(&new.plan),
            new.reason,
            json(&new.progress),
            json(&new.options),
            new.created_ms
        ])
    })
    .map_err(StoreError::sqlite("insert a change"))?;
    let change_id = ChangeId(u64::try_from(conn.last_insert_rowid()).unwrap_or_default());
    for event in events {
        insert_event(conn, event, Some(change_id))?;
    }
    read_change(conn, change_id)
}

fn transition_change(
    conn: &Connection,
    id: ChangeId,
    expect: ChangeState,
    update: &ChangeUpdate,
    events: &[NewEvent],
) -> Result<Change, StoreError> {
    let current = read_change(conn, id)?;
    if current.state != expect {
        return Err(StoreError::Conflict {
            change: id,
            expected: expect,
            found: current.state,
        });
    }
    validate_events(events)?;
    let plan = update.plan.as_ref().map(serde_json::Value::to_string);
    let (wave_index, wave_count) = update.wave.unzip();
    let progress = update.progress.as_ref().map(serde_json::Value::to_string);
    conn.prepare_cached(
        "UPDATE changes SET state = ?2, plan = COALESCE(?3, plan), reason = COALESCE(?4, reason), \
         wave_index = COALESCE(?5, wave_index), wave_count = COALESCE(?6, wave_count), updated_ms = ?7, \
         progress = COALESCE(?8, progress) WHERE id = ?1",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            read::sql_u64(id.0),
            update.state.as_str(),
            plan,
            update.reason,
            wave_index,
            wave_count,
            update.now_ms,
            progress
        ])
    })
    .map_err(StoreError::sqlite("update a change"))?;
    for host in &update.retire_hosts {
        conn.prepare_cached("UPDATE hosts SET retired_ms = ?2 WHERE name = ?1")
            .and_then(|mut stmt| stmt.execute(params![host, update.now_ms]))
            .map_err(StoreError::sqlite("retire a host"))?;
    }
    for event in events {
        insert_event(conn, event, Some(id))?;
    }
    read_change(conn, id)
}

fn read_change(conn: &Connection, id: ChangeId) -> Result<Change, StoreError> {
    read::get_change(conn, id)?.ok_or_else(|| StoreError::NotFound {
        what: "change",
        key: id.to_string(),
    })
}

pub(crate) fn upsert_host(conn: &Connection, host: &HostRecord) -> Result<(), StoreError> {
    let labels = serde_json::to_string(&host.labels).map_err(|source| StoreError::Json {
        column: "hosts.labels",
        key: host.name.0.clone(),
        source: Arc::new(source),
    })?;
    conn.prepare_cached(
        "INSERT INTO hosts (name, labels, facts, last_seen_ms) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (name) DO UPDATE SET labels = excluded.labels, facts = excluded.facts, \
         last_seen_ms = excluded.last_seen_ms",
    )
    .and_then(|mut stmt| stmt.execute(params![host.name.0, labels, host.facts.to_string(), host.last_seen_ms]))
    .map(drop)
    .map_err(StoreError::sqlite("upsert a host"))
}

pub(crate) fn put_instances(conn: &Connection, instances: &[InstanceRecord]) -> Result<(), StoreError> {
    for instance in instances {
        let desired = &instance.desired;
        let generation = i64::try_from(desired.generation.0).map_err(|_| StoreError::Invalid {
            what: "instance",
            reason: format!("generation {} is too large", desired.generation),
        })?;
        let key = params![
            instance.component_key,
            instance.host.0,
            instance.slot,
            instance.system,
            desired.version,
            desired.config_digest,
            generation
        ];
        let result = match &instance.actual {
            None => conn
                .prepare_cached(
                    "INSERT INTO instances (component_key, host, slot, system, desired_version, \
                     desired_config_digest, generation) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                     ON CONFLICT (component_key, host, slot) DO UPDATE SET system = excluded.system, \
                     desired_version = excluded.desired_version, \
                     desired_config_digest = excluded.desired_config_digest, generation = excluded.generation",
                )
                .and_then(|mut stmt| stmt.execute(key)),
            Some(actual) => conn
                .prepare_cached(
                    "INSERT OR REPLACE INTO instances (component_key, host, slot, system, desired_version, \
                     desired_config_digest, generation, actual_version, actual_status, actual_state, \
                     actual_since_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )
                .and_then(|mut stmt| {
                    stmt.execute(params![
                        instance.component_key,
                        instance.host.0,
                        instance.slot,
                        instance.system,
                        desired.version,
                        desired.config_digest,
                        generation,
                        actual.version,
                        actual.status.as_str(),
                        actual.state,
                        actual.since_ms
                    ])
                }),
        };
        result.map_err(StoreError::sqlite("upsert an instance"))?;
    }
    Ok(())
}

pub(crate) fn record_transitions(
    conn: &Connection,
    transitions: &[InstanceTransition],
) -> Result<Vec<EventSeq>, StoreError> {
    let mut seqs = Vec::with_capacity(transitions.len());
    for t in transitions {
        let key = || format!("{}@{}#{}", t.component_key, t.host, t.slot);
        let found: Option<(String, Option<String>, Option<String>)> = conn
            .prepare_cached(
                "SELECT system, actual_state, actual_status FROM instances \
                 WHERE component_key = ?1 AND host = ?2 AND slot = ?3",
            )
            .and_then(|mut stmt| {
                stmt.query_row(params![t.component_key, t.host.0, t.slot], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
                .optional()
            })
            .map_err(StoreError::sqlite("read an instance"))?;
        let Some((system, previous_state, previous_status)) = found else {
            return Err(StoreError::NotFound {
                what: "instance",
                key: key(),
            });
        };
        let actual = &t.actual;
        conn.prepare_cached(
            "UPDATE instances SET actual_version = ?4, actual_status = ?5, actual_state = ?6, actual_since_ms = ?7 \
             WHERE component_key = ?1 AND host = ?2 AND slot = ?3",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                t.component_key,
                t.host.0,
                t.slot,
                actual.version,
                actual.status.as_str(),
                actual.state,
                actual.since_ms
            ])
        })
        .map_err(StoreError::sqlite("update an instance"))?;
        let was = previous_state.clone().unwrap_or_else(|| "unobserved".to_owned());
        let typed = endstate_events::Event::InstanceTransitioned(endstate_events::InstanceTransitioned {
            slot: t.slot,
            version: actual.version.clone(),
            status: actual.status.as_str().to_owned(),
            state: actual.state.clone(),
            previous_state,
            previous_status,
            desired: None,
        });
        let event = NewEvent {
            systems: vec![system],
            host: Some(t.host.0.clone()),
            component: Some(t.component_key.clone()),
            change: t.change,
            actor: t.actor.clone(),
            ..NewEvent::of(
                actual.since_ms,
                &typed,
                format!(
                    "{} on {} slot {} is {} ({}), was {was}",
                    t.component_key,
                    t.host,
                    t.slot,
                    actual.state,
                    actual.status.as_str()
                ),
            )
        };
        seqs.push(insert_event(conn, &event, None)?);
    }
    Ok(seqs)
}

/// Deletes at most `limit` events of `kind` (exact, or a prefix ending in `.`) older than
/// `before_ms`, except the newest of each subject older than `before_ms`, so the state of every
/// subject at the cut (and its latest state) survives. A subject is what an event is about: its
/// kind, host, component and the `slot`, `check` and `target` of its data.
fn compact_events(conn: &Connection, kind: &str, before_ms: i64, limit: u32) -> Result<u64, StoreError> {
    let (low, high) = match kind.strip_suffix('.') {
        // Every kind starting with "stem." sorts in ["stem.", "stem/"): '/' follows '.'.
        Some(stem) => (kind.to_string(), format!("{stem}/")),
        None => (kind.to_string(), format!("{kind}\u{0}")),
    };
    let subject = "kind, host, component, json_extract(data, '$.slot'), json_extract(data, '$.check'), \
                   json_extract(data, '$.target')";
    let doomed = format!(
        "SELECT seq FROM events WHERE kind >= ?1 AND kind < ?2 AND time_ms < ?3 \
         AND seq NOT IN (SELECT MAX(seq) FROM events WHERE kind >= ?1 AND kind < ?2 AND time_ms < ?3 GROUP BY {subject}) \
         ORDER BY seq LIMIT ?4"
    );
    exec(
        conn,
        "compact the timeline",
        "CREATE TEMP TABLE IF NOT EXISTS doomed (seq INTEGER PRIMARY KEY)",
    )?;
    exec(conn, "compact the timeline", "DELETE FROM doomed")?;
    conn.prepare_cached(&format!("INSERT INTO doomed (seq) {doomed}"))
        .and_then(|mut stmt| stmt.execute(params![low, high, before_ms, i64::from(limit)]))
        .map_err(StoreError::sqlite("compact the timeline"))?;
    exec(
        conn,
        "compact the timeline",
        "DELETE FROM event_systems WHERE seq IN (SELECT seq FROM doomed)",
    )?;
    let deleted = conn
        .prepare_cached("DELETE FROM events WHERE seq IN (SELECT seq FROM doomed)")
        .and_then(|mut stmt| stmt.execute([]))
        .map_err(StoreError::sqlite("compact the timeline"))?;
    exec(conn, "compact the timeline", "DELETE FROM doomed")?;
    Ok(deleted as u64)
}

fn append_events(conn: &Connection, events: &[NewEvent]) -> Result<Vec<EventSeq>, StoreError> {
    validate_events(events)?;
    events.iter().map(|event| insert_event(conn, event, None)).collect()
}

/// Refuses a call with an invalid event before it writes anything.
pub(crate) fn validate_events(events: &[NewEvent]) -> Result<(), StoreError> {
    events.iter().try_for_each(validate_event)
}

fn validate_event(event: &NewEvent) -> Result<(), StoreError> {
    if event.kind.is_empty() {
        return Err(StoreError::Invalid {
            what: "event",
            reason: "the kind is empty".to_owned(),
        });
    }
    Ok(())
}

/// Inserts one event (its `change`, when `None`, is `default_change`) and indexes it by system.
pub(crate) fn insert_event(
    conn: &Connection,
    event: &NewEvent,
    default_change: Option<ChangeId>,
) -> Result<EventSeq, StoreError> {
    validate_event(event)?;
    let mut systems: Vec<&str> = event.systems.iter().map(String::as_str).collect();
    systems.sort_unstable();
    systems.dedup();
    let systems_json = serde_json::to_string(&systems).map_err(|source| StoreError::Json {
        column: "events.systems",
        key: "a new event".to_owned(),
        source: Arc::new(source),
    })?;
    let change = event.change.or(default_change).map(|c| read::sql_u64(c.0));
    conn.prepare_cached(
        "INSERT INTO events (time_ms, kind, systems, host, component, change_id, actor, summary, data) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            event.time_ms,
            event.kind,
            systems_json,
            event.host,
            event.component,
            change,
            event.actor,
            event.summary,
            event.data.to_string()
        ])
    })
    .map_err(StoreError::sqlite("insert an event"))?;
    let seq = conn.last_insert_rowid();
    let mut stmt = conn
        .prepare_cached("INSERT INTO event_systems (system, seq, time_ms, kind) VALUES (?1, ?2, ?3, ?4)")
        .map_err(StoreError::sqlite("index an event by system"))?;
    for system in systems {
        stmt.execute(params![system, seq, event.time_ms, event.kind])
            .map_err(StoreError::sqlite("index an event by system"))?;
    }
    Ok(EventSeq(u64::try_from(seq).unwrap_or_default()))
}

fn put_token(conn: &Connection, token: &TokenRecord) -> Result<(), StoreError> {
    let holder: Option<String> = conn
        .prepare_cached("SELECT id FROM tokens WHERE hash_hex = ?1")
        .and_then(|mut stmt| stmt.query_row(params![token.hash_hex], |row| row.get(0)).optional())
        .map_err(StoreError::sqlite("find a token"))?;
    if holder.is_some_and(|holder| holder != token.id) {
        return Err(StoreError::Invalid {
            what: "token",
            reason: "another token has the same hash".to_owned(),
        });
    }
    conn.prepare_cached(
        "INSERT INTO tokens (id, name, role, hash_hex, created_ms, revoked, systems) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, role = excluded.role, hash_hex = excluded.hash_hex, \
         created_ms = excluded.created_ms, revoked = excluded.revoked, systems = excluded.systems",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            token.id,
            token.name,
            token.role,
            token.hash_hex,
            token.created_ms,
            token.revoked,
            token.systems.join(",")
        ])
    })
    .map(drop)
    .map_err(StoreError::sqlite("upsert a token"))
}
