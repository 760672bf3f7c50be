//! Many concurrent writers are all acknowledged, durably, and group commit really batches them.

use std::sync::Arc;

use endstate_store::{
    ActualInstance, DesiredInstance, EventQuery, InstanceFilter, InstanceRecord, InstanceTransition, SqliteStore, Store,
};
use endstate_types::{EventSeq, Generation, HostName, Status};

const N_TASKS: u64 = 50;
const N_PER_TASK: u64 = 100;

fn instance(task: u64) -> InstanceRecord {
    InstanceRecord {
        component_key: format!("sys/c{task}"),
        system: "sys".into(),
        host: HostName(format!("h{task}")),
        slot: 0,
        desired: DesiredInstance {
            version: "1".into(),
            config_digest: "d".into(),
            generation: Generation(1),
        },
        actual: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transitions_are_all_acknowledged_and_batched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("endstate.db");
    let store = Arc::new(SqliteStore::open(&path).unwrap());
    store.put_instances((0..N_TASKS).map(instance).collect()).await.unwrap();
    let before = store.stats();

    let mut tasks = Vec::new();
    for task in 0..N_TASKS {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let inst = instance(task);
            let mut seqs = Vec::new();
            for i in 0..N_PER_TASK {
                let transition = InstanceTransition {
                    component_key: inst.component_key.clone(),
                    host: inst.host.clone(),
                    slot: 0,
                    actual: ActualInstance {
                        version: Some("1".into()),
                        status: if i % 2 == 0 { Status::Healthy } else { Status::Degraded },
                        state: format!("s{i}"),
                        since_ms: i64::try_from(i).unwrap(),
                    },
                    change: None,
                    actor: None,
                };
                seqs.extend(store.record_transitions(vec![transition]).await.unwrap());
            }
            seqs
        }));
    }
    let mut seqs: Vec<EventSeq> = Vec::new();
    for task in tasks {
        seqs.extend(task.await.unwrap());
    }
    let total = usize::try_from(N_TASKS * N_PER_TASK).unwrap();
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), total, "every transition is acknowledged with its own seq");

    let stats = store.stats();
    let (batches, ops) = (stats.batches - before.batches, stats.ops - before.ops);
    assert_eq!(ops, N_TASKS * N_PER_TASK, "each call is one write op");
    assert!(
        ops > batches,
        "group commit puts several ops in one batch: {ops} ops in {batches} batches"
    );
    store.close().await;
    drop(store);

    let store = SqliteStore::open(&path).unwrap();
    let mut found = 0;
    let mut query = EventQuery {
        after: Some(EventSeq(0)),
        limit: 1000,
        kinds: Some(vec!["instance.".into()]),
        ..EventQuery::default()
    };
    loop {
        let page = store.query_events(&query).await.unwrap();
        if page.items.is_empty() {
            break;
        }
        found += page.items.len();
        query.after = page.next.map(EventSeq);
    }
    assert_eq!(found, total, "every acknowledged transition is there after a reopen");
    let instances = store.list_instances(InstanceFilter::default()).await.unwrap();
    for inst in instances {
        let state = inst.actual.map(|a| a.state);
        assert_eq!(
            state.as_deref(),
            Some("s99"),
            "each instance ends in its last transition"
        );
    }
}

/// Calls that fail after writing (the second transition of the call is unknown) share batches with
/// good calls: the writer replays such a batch with savepoints, so only the failing calls are undone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_after_writing_undo_only_the_failing_calls() {
    const N_ROUNDS: u64 = 40;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("endstate.db")).unwrap());
    store.put_instances((0..N_TASKS).map(instance).collect()).await.unwrap();
    let before = store.stats();

    let mut tasks = Vec::new();
    for task in 0..N_TASKS {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let inst = instance(task);
            let ghost = InstanceRecord {
                component_key: format!("sys/ghost{task}"),
                ..inst.clone()
            };
            let failing = task % 2 == 1;
            for i in 0..N_ROUNDS {
                let transition = |inst: &InstanceRecord| InstanceTransition {
                    component_key: inst.component_key.clone(),
                    host: inst.host.clone(),
                    slot: 0,
                    actual: ActualInstance {
                        version: Some("1".into()),
                        status: Status::Healthy,
                        state: format!("s{i}"),
                        since_ms: i64::try_from(i).unwrap(),
                    },
                    change: None,
                    actor: None,
                };
                if failing {
                    let result = store
                        .record_transitions(vec![transition(&inst), transition(&ghost)])
                        .await;
                    assert!(
                        matches!(result, Err(endstate_store::StoreError::NotFound { .. })),
                        "a call with an unknown instance fails, got {result:?}"
                    );
                } else {
                    let seqs = store.record_transitions(vec![transition(&inst)]).await.unwrap();
                    assert_eq!(seqs.len(), 1, "one seq per transition");
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stats = store.stats();
    assert_eq!(stats.ops - before.ops, N_TASKS * N_ROUNDS, "each call is one write op");

    let instances = store.list_instances(InstanceFilter::default()).await.unwrap();
    assert_eq!(instances.len(), usize::try_from(N_TASKS).unwrap());
    for inst in instances {
        let task: u64 = inst.host.0.trim_start_matches('h').parse().unwrap();
        let state = inst.actual.map(|a| a.state);
        if task % 2 == 1 {
            assert_eq!(
                state, None,
                "a failed call applies none of its transitions ({})",
                inst.host
            );
        } else {
            let last = format!("s{}", N_ROUNDS - 1);
            assert_eq!(
                state.as_deref(),
                Some(last.as_str()),
                "good calls all apply ({})",
                inst.host
            );
        }
    }
    let mut found = 0;
    let mut query = EventQuery {
        after: Some(EventSeq(0)),
        limit: 1000,
        ..EventQuery::default()
    };
    loop {
        let page = store.query_events(&query).await.unwrap();
        if page.items.is_empty() {
            break;
        }
        for event in &page.items {
            let host = event.host.as_deref().unwrap_or_default();
            let task: u64 = host.trim_start_matches('h').parse().unwrap();
            assert_eq!(task % 2, 0, "no event of a failed call is kept ({host})");
        }
        found += page.items.len();
        query.after = page.next.map(EventSeq);
    }
    assert_eq!(
        found,
        usize::try_from(N_TASKS / 2 * N_ROUNDS).unwrap(),
        "every good transition has its event"
    );
    store.close().await;
}
