//! Reopening keeps everything; migrations run on a fresh database and refuse a newer one.

use endstate_store::{
    ChangeFilter, ChangeUpdate, EventQuery, NewEvent, NewRevision, PageRequest, SCHEMA_VERSION, SqliteStore, Store,
    StoreError,
};
use endstate_types::{ChangeId, ChangeState, RevisionId};

fn new_revision(n: i64) -> NewRevision {
    NewRevision {
        author: "ann".into(),
        message: format!("revision {n}"),
        source: "api".into(),
        digest: format!("d{n}"),
        desired: serde_json::json!({"n": n}),
        created_ms: n,
        parent: None,
        options: None,
    }
}

fn user_version(path: &std::path::Path) -> u32 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("PRAGMA user_version", [], |row| row.get(0)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("endstate.db");
    let store = SqliteStore::open(&path).unwrap();
    let (revision, change) = store
        .submit_revision(
            new_revision(1),
            vec![NewEvent::new(1, "revision.submitted", "submitted")],
        )
        .await
        .unwrap();
    let update = ChangeUpdate {
        state: ChangeState::Planning,
        plan: None,
        reason: None,
        wave: None,
        progress: None,
        now_ms: 2,
        retire_hosts: Vec::new(),
    };
    let change = store
        .transition_change(change.id, ChangeState::Pending, update, Vec::new())
        .await
        .unwrap();
    let seqs = store
        .append_events(vec![NewEvent::new(3, "note.added", "a note")])
        .await
        .unwrap();
    store.close().await;
    let closed = store.latest_revision().await;
    assert!(
        matches!(closed, Err(StoreError::Closed)),
        "a closed store refuses reads, got {closed:?}"
    );
    let closed = store.append_events(vec![NewEvent::new(4, "note.added", "late")]).await;
    assert!(
        matches!(closed, Err(StoreError::Closed)),
        "a closed store refuses writes, got {closed:?}"
    );

    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(
        store.get_revision(revision.id).await.unwrap(),
        Some(revision),
        "the revision survives a reopen"
    );
    assert_eq!(
        store.get_change(change.id).await.unwrap(),
        Some(change),
        "the change survives a reopen"
    );
    let events = store.query_events(&EventQuery::default()).await.unwrap().items;
    assert_eq!(events.len(), 2, "the events survive a reopen");
    assert_eq!(events[0].seq, seqs[0], "the newest event is the note");
    let next = store
        .append_events(vec![NewEvent::new(5, "note.added", "after reopen")])
        .await
        .unwrap();
    assert!(next[0] > seqs[0], "seqs keep increasing after a reopen");
    let (second, _) = store.submit_revision(new_revision(2), Vec::new()).await.unwrap();
    assert_eq!(second.id, RevisionId(2), "revision numbering continues after a reopen");
    let changes = store
        .list_changes(ChangeFilter::default(), PageRequest::default())
        .await
        .unwrap();
    assert_eq!(
        changes.items.iter().map(|c| c.id).collect::<Vec<_>>(),
        [ChangeId(2), ChangeId(1)]
    );
}

#[tokio::test]
async fn fresh_database_is_migrated_to_the_current_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("endstate.db");
    let store = SqliteStore::open(&path).unwrap();
    store.close().await;
    assert_eq!(
        user_version(&path),
        SCHEMA_VERSION,
        "a fresh database is at the current schema version"
    );
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |row| row.get(0)).unwrap();
    assert_eq!(mode, "wal", "the database is in WAL mode");
    drop(conn);
    // Opening again applies nothing and keeps the version.
    let store = SqliteStore::open(&path).unwrap();
    store.close().await;
    assert_eq!(user_version(&path), SCHEMA_VERSION);
}

/// Migration 6 -> 7 gives every existing (system, event) row its event's kind, so queries by
/// system and kind find events written before it.
#[tokio::test]
async fn events_written_before_the_kind_index_are_found_by_kind_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("endstate.db");
    let store = SqliteStore::open(&path).unwrap();
    store
        .append_events(vec![
            NewEvent {
                systems: vec!["old".into()],
                ..NewEvent::new(1, "change.created", "a change")
            },
            NewEvent {
                systems: vec!["old".into()],
                ..NewEvent::new(2, "note.added", "a note")
            },
        ])
        .await
        .unwrap();
    store.close().await;
    // Back to version 6, as a database of an earlier build would be (what 6 -> 7 and 7 -> 8 add,
    // removed).
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "DROP INDEX changes_converged; DROP INDEX event_systems_by_kind; ALTER TABLE event_systems DROP COLUMN kind; \
         PRAGMA user_version = 6;",
    )
    .unwrap();
    drop(conn);
    let store = SqliteStore::open(&path).unwrap();
    let found = store
        .query_events(&EventQuery {
            systems: Some(vec!["old".into()]),
            kinds: Some(vec!["note.".into()]),
            ..EventQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(
        found.items.iter().map(|e| e.summary.as_str()).collect::<Vec<_>>(),
        ["a note"]
    );
    store.close().await;
    assert_eq!(user_version(&path), SCHEMA_VERSION);
}

#[tokio::test]
async fn newer_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("endstate.db");
    SqliteStore::open(&path).unwrap().close().await;
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
    drop(conn);
    match SqliteStore::open(&path) {
        Err(error @ StoreError::SchemaTooNew { found, known }) => {
            assert_eq!((found, known), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
            let message = error.to_string();
            assert!(message.contains("newer"), "the error says why: {message}");
        }
        other => panic!("a database from a newer build must be refused, got {other:?}"),
    }
    assert_eq!(
        user_version(&path),
        SCHEMA_VERSION + 1,
        "a refused database is left untouched"
    );
}

#[tokio::test]
async fn corrupt_json_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("endstate.db");
    let store = SqliteStore::open(&path).unwrap();
    store
        .append_events(vec![NewEvent::new(1, "note.added", "fine")])
        .await
        .unwrap();
    store.close().await;
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("DROP TRIGGER events_append_only; UPDATE events SET data = '{not json';")
        .unwrap();
    drop(conn);
    let store = SqliteStore::open(&path).unwrap();
    let result = store.query_events(&EventQuery::default()).await;
    match result {
        Err(error @ StoreError::Json { column, .. }) => {
            assert_eq!(column, "events.data");
            assert_eq!(error.to_string(), "stored events.data of event 1 is not valid JSON");
        }
        other => panic!("corrupt JSON must be a Json error, got {other:?}"),
    }
}
