//! The embedded SQLite backend: one writer thread with group commit, a small pool of read-only connections.

mod agents;
mod read;
mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use endstate_types::{ChangeId, ChangeState, EventSeq, HostName, RevisionId};
use rusqlite::{Connection, OpenFlags};
use tokio::sync::{mpsc, oneshot};

use crate::model::{
    AgentRecord, Change, ChangeFilter, ChangeUpdate, Event, EventQuery, HostRecord, InstanceFilter, InstanceRecord,
    InstanceTransition, JoinTokenRow, NewChange, NewEvent, NewRevision, ObservationBatch, Page, PageRequest, Revision,
    RevisionMeta, TokenRecord,
};
use crate::{Store, StoreError};

pub use schema::SCHEMA_VERSION;

/// How long a connection waits for a lock held by another connection (or process) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How many idle read-only connections are kept.
const MAX_IDLE_READERS: usize = 8;
/// How many write requests may wait for the writer before callers wait to enqueue (backpressure).
const WRITE_QUEUE: usize = 16 * 1024;

/// The embedded store: a SQLite database in WAL mode.
///
/// See the crate documentation for its guarantees. Dropping it lets the writer finish what is
/// queued and stop; [`SqliteStore::close`] does the same and waits for it.
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    writes: mpsc::Sender<writer::WriteOp>,
    readers: Arc<ReaderPool>,
    counters: Arc<writer::Counters>,
    closed: AtomicBool,
}

/// Counters of the group-committing writer since open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Transactions committed (or attempted).
    pub batches: u64,
    /// Write requests applied.
    pub ops: u64,
    /// The most requests in one transaction.
    pub max_batch: u64,
}

#[derive(Debug)]
struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

// === impl SqliteStore ===

impl SqliteStore {
    /// Opens (or creates) the database at `path`, migrates its schema and starts the writer thread.
    ///
    /// Blocking: call it before serving, or from `spawn_blocking`.
    ///
    /// # Errors
    /// `SchemaTooNew` when the database was written by a newer build, `Migration` when a migration
    /// fails, `Sqlite` when the file cannot be opened or configured.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        let mut conn = Connection::open(&path).map_err(StoreError::sqlite("open the database"))?;
        configure(&conn, true)?;
        let version = schema::migrate(&mut conn)?;
        tracing::info!(path = %path.display(), version, "Store opened.");
        let (writes, queue) = mpsc::channel(WRITE_QUEUE);
        let counters = Arc::new(writer::Counters::default());
        let thread_counters = Arc::clone(&counters);
        let checkpoint_conn = Connection::open(&path).map_err(StoreError::sqlite("open the checkpointer"))?;
        checkpoint_conn
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(StoreError::sqlite("configure the checkpointer"))?;
        let (checkpoint, checkpoints) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("endstate-store-checkpointer".to_owned())
            .spawn(move || checkpointer(checkpoint_conn, checkpoints))
            .map_err(|_| StoreError::Crashed {
                op: "start the checkpointer thread",
            })?;
        std::thread::Builder::new()
            .name("endstate-store-writer".to_owned())
            .spawn(move || writer::run(conn, queue, thread_counters, checkpoint))
            .map_err(|_| StoreError::Crashed {
                op: "start the writer thread",
            })?;
        let readers = Arc::new(ReaderPool {
            path: path.clone(),
            idle: Mutex::new(Vec::new()),
        });
        Ok(SqliteStore {
            path,
            writes,
            readers,
            counters,
            closed: AtomicBool::new(false),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Counters of the writer: how well group commit batches.
    pub fn stats(&self) -> WriterStats {
        WriterStats {
            batches: self.counters.batches.load(Ordering::Relaxed),
            ops: self.counters.ops.load(Ordering::Relaxed),
            max_batch: self.counters.max_batch.load(Ordering::Relaxed),
        }
    }

    /// Finishes the queued writes, closes every connection and refuses further requests with `Closed`.
    /// Idempotent.
    pub async fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let (done, wait) = oneshot::channel();
        if self.writes.send(writer::WriteOp::Shutdown(done)).await.is_ok() {
            let _ = wait.await;
        }
        self.readers
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    async fn write<T>(&self, op: impl FnOnce(writer::Reply<T>) -> writer::WriteOp) -> Result<T, StoreError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(StoreError::Closed);
        }
        let (reply, answer) = oneshot::channel();
        self.writes.send(op(reply)).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn read<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(StoreError::Closed);
        }
        let pool = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || {
            let conn = pool.take()?;
            let result = f(&conn);
            pool.give_back(conn);
            result
        })
        .await
        .map_err(|_| StoreError::Crashed { op })?
    }
}

impl ReaderPool {
    fn take(&self) -> Result<Connection, StoreError> {
        if let Some(conn) = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
        {
            return Ok(conn);
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(&self.path, flags).map_err(StoreError::sqlite("open a reader"))?;
        configure(&conn, false)?;
        Ok(conn)
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
    }
}

/// Copies committed WAL frames into the database file when the writer asks, off the commit path.
///
/// PASSIVE checkpoints never block the writer or readers; SQLite restarts the WAL from its start
/// once a checkpoint caught up. Ends when the writer stops.
fn checkpointer(conn: Connection, requests: std::sync::mpsc::Receiver<()>) {
    while requests.recv().is_ok() {
        let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get::<_, i64>(0));
        if let Err(error) = result {
            tracing::warn!(error = %error, "Store checkpoint failed; the next one will retry.");
        }
    }
}

/// Sets the pragmas every connection needs; the writer also sets the durable journal mode.
fn configure(conn: &Connection, writer: bool) -> Result<(), StoreError> {
    let op = "configure a connection";
    conn.busy_timeout(BUSY_TIMEOUT).map_err(StoreError::sqlite(op))?;
    conn.set_prepared_statement_cache_capacity(64);
    if writer {
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(StoreError::sqlite("switch to WAL mode"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Corrupt {
                column: "PRAGMA journal_mode",
                key: "the database".to_owned(),
                detail: format!("WAL mode is required, SQLite kept {mode:?}"),
            });
        }
        // Checkpoints normally run on the checkpointer thread; the writer only checkpoints itself
        // as a safety net if the WAL grows past ~400 MB (the checkpointer fell behind).
        conn.execute_batch(
            "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA wal_autocheckpoint = 100000; \
             PRAGMA cache_size = -65536; PRAGMA temp_store = MEMORY; PRAGMA mmap_size = 268435456;",
        )
        .map_err(StoreError::sqlite(op))?;
    } else {
        conn.execute_batch("PRAGMA query_only = ON; PRAGMA cache_size = -16384; PRAGMA mmap_size = 268435456;")
            .map_err(StoreError::sqlite(op))?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn submit_revision(&self, new: NewRevision, events: Vec<NewEvent>) -> Result<(Revision, Change), StoreError> {
        self.write(|reply| writer::WriteOp::SubmitRevision(new, events, reply))
            .await
    }

    async fn add_change(&self, new: NewChange, events: Vec<NewEvent>) -> Result<Change, StoreError> {
        self.write(|reply| writer::WriteOp::AddChange(new, events, reply)).await
    }

    fn changes_version(&self) -> u64 {
        self.counters.changes_written.load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn get_revision(&self, id: RevisionId) -> Result<Option<Revision>, StoreError> {
        self.read("get a revision", move |conn| read::get_revision(conn, id))
            .await
    }

    async fn latest_revision(&self) -> Result<Option<Revision>, StoreError> {
        self.read("get the latest revision", read::latest_revision).await
    }

    async fn list_revisions(&self, page: PageRequest) -> Result<Page<RevisionMeta>, StoreError> {
        self.read("list revisions", move |conn| read::list_revisions(conn, page))
            .await
    }

    async fn get_change(&self, id: ChangeId) -> Result<Option<Change>, StoreError> {
        self.read("get a change", move |conn| read::get_change(conn, id)).await
    }

    async fn list_changes(&self, filter: ChangeFilter, page: PageRequest) -> Result<Page<Change>, StoreError> {
        self.read("list changes", move |conn| read::list_changes(conn, &filter, page))
            .await
    }

    async fn transition_change(
        &self,
        id: ChangeId,
        expect: ChangeState,
        update: ChangeUpdate,
        events: Vec<NewEvent>,
    ) -> Result<Change, StoreError> {
        self.write(|reply| writer::WriteOp::TransitionChange(id, expect, update, events, reply))
            .await
    }

    async fn upsert_host(&self, host: HostRecord) -> Result<(), StoreError> {
        self.write(|reply| writer::WriteOp::UpsertHost(host, reply)).await
    }

    async fn get_host(&self, name: &HostName) -> Result<Option<HostRecord>, StoreError> {
        let name = name.clone();
        self.read("get a host", move |conn| read::get_host(conn, &name)).await
    }

    async fn list_hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        self.read("list hosts", read::list_hosts).await
    }

    async fn put_instances(&self, instances: Vec<InstanceRecord>) -> Result<(), StoreError> {
        self.write(|reply| writer::WriteOp::PutInstances(instances, reply))
            .await
    }

    async fn list_instances(&self, filter: InstanceFilter) -> Result<Vec<InstanceRecord>, StoreError> {
        self.read("list instances", move |conn| read::list_instances(conn, &filter))
            .await
    }

    async fn record_transitions(&self, transitions: Vec<InstanceTransition>) -> Result<Vec<EventSeq>, StoreError> {
        self.write(|reply| writer::WriteOp::RecordTransitions(transitions, reply))
            .await
    }

    async fn append_events(&self, events: Vec<NewEvent>) -> Result<Vec<EventSeq>, StoreError> {
        self.write(|reply| writer::WriteOp::AppendEvents(events, reply)).await
    }

    async fn compact_events(&self, kind: &str, before_ms: i64, limit: u32) -> Result<u64, StoreError> {
        if kind.is_empty() {
            return Err(StoreError::Invalid {
                what: "compaction",
                reason: "it needs a kind".into(),
            });
        }
        let kind = kind.to_string();
        self.write(|reply| writer::WriteOp::CompactEvents(kind, before_ms, limit, reply))
            .await
    }

    async fn query_events(&self, query: &EventQuery) -> Result<Page<Event>, StoreError> {
        let query = query.clone();
        self.read("query events", move |conn| read::query_events(conn, &query))
            .await
    }

    async fn put_token(&self, token: TokenRecord) -> Result<(), StoreError> {
        self.write(|reply| writer::WriteOp::PutToken(token, reply)).await
    }

    async fn find_token(&self, hash_hex: &str) -> Result<Option<TokenRecord>, StoreError> {
        let hash_hex = hash_hex.to_owned();
        self.read("find a token", move |conn| read::find_token(conn, &hash_hex))
            .await
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.read("list tokens", read::list_tokens).await
    }

    async fn count_tokens(&self) -> Result<u64, StoreError> {
        self.read("count tokens", read::count_tokens).await
    }

    async fn put_join_token(&self, token: JoinTokenRow) -> Result<(), StoreError> {
        self.agent_write(writer::AgentOp::PutJoinToken(token)).await.map(drop)
    }

    async fn find_join_token(&self, hash_hex: &str) -> Result<Option<JoinTokenRow>, StoreError> {
        let hash_hex = hash_hex.to_owned();
        self.read("read a join token", move |conn| {
            agents::find_join_token(conn, &hash_hex)
        })
        .await
    }

    async fn enrol_agent(
        &self,
        token_hash: &str,
        at_ms: i64,
        host: HostRecord,
        cert_serial: String,
        events: Vec<NewEvent>,
    ) -> Result<AgentRecord, StoreError> {
        let op = writer::AgentOp::Enrol {
            token_hash: token_hash.to_owned(),
            at_ms,
            host,
            serial: cert_serial,
            events,
        };
        agent_record(self.agent_write(op).await?)
    }

    async fn get_agent(&self, host: &HostName) -> Result<Option<AgentRecord>, StoreError> {
        let host = host.0.clone();
        self.read("read an agent", move |conn| agents::get_agent(conn, &host))
            .await
    }

    async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        self.read("list agents", agents::list_agents).await
    }

    async fn renew_agent(
        &self,
        host: &HostName,
        cert_serial: String,
        events: Vec<NewEvent>,
    ) -> Result<AgentRecord, StoreError> {
        let op = writer::AgentOp::Renew {
            host: host.0.clone(),
            serial: cert_serial,
            events,
        };
        agent_record(self.agent_write(op).await?)
    }

    async fn revoke_agent(
        &self,
        host: &HostName,
        at_ms: i64,
        events: Vec<NewEvent>,
    ) -> Result<AgentRecord, StoreError> {
        let op = writer::AgentOp::Revoke {
            host: host.0.clone(),
            at_ms,
            events,
        };
        agent_record(self.agent_write(op).await?)
    }

    async fn set_agent_reachable(
        &self,
        host: &HostName,
        reachable: bool,
        serial: Option<String>,
        events: Vec<NewEvent>,
    ) -> Result<(), StoreError> {
        let op = writer::AgentOp::Reachable {
            host: host.0.clone(),
            reachable,
            serial,
            events,
        };
        self.agent_write(op).await.map(drop)
    }

    async fn set_agent_desired(&self, host: &HostName, digest: String) -> Result<u64, StoreError> {
        let op = writer::AgentOp::Desired {
            host: host.0.clone(),
            digest,
        };
        match self.agent_write(op).await? {
            writer::AgentReply::Generation(generation) => Ok(generation),
            _ => Err(StoreError::Crashed {
                op: "set an agent's desired set",
            }),
        }
    }

    async fn ingest_observations(&self, host: &HostName, batch: ObservationBatch) -> Result<Vec<EventSeq>, StoreError> {
        let op = writer::AgentOp::Ingest {
            host: host.0.clone(),
            batch,
        };
        match self.agent_write(op).await? {
            writer::AgentReply::Seqs(seqs) => Ok(seqs),
            _ => Err(StoreError::Crashed {
                op: "ingest observations",
            }),
        }
    }

    async fn replace_instances(&self, instances: Vec<InstanceRecord>) -> Result<(), StoreError> {
        self.agent_write(writer::AgentOp::ReplaceInstances(instances))
            .await
            .map(drop)
    }
}

impl SqliteStore {
    async fn agent_write(&self, op: writer::AgentOp) -> Result<writer::AgentReply, StoreError> {
        self.write(|reply| writer::WriteOp::Agent(op, reply)).await
    }
}

fn agent_record(reply: writer::AgentReply) -> Result<AgentRecord, StoreError> {
    match reply {
        writer::AgentReply::Agent(agent) => Ok(agent),
        _ => Err(StoreError::Crashed { op: "write an agent" }),
    }
}
