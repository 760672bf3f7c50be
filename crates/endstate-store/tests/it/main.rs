//! Integration tests of the store: the conformance suite against SQLite, durability, migrations and group commit.
#![allow(clippy::unwrap_used)]

mod durability;
mod group_commit;

use std::sync::Arc;

use endstate_store::{SqliteStore, Store, testing};

fn temp_store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("endstate.db")).unwrap();
    (dir, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_passes_conformance() {
    let (_dir, store) = temp_store();
    let store: Arc<dyn Store> = Arc::new(store);
    testing::conformance(store).await;
}
