//! The conformance suite: the behaviour every [`Store`] backend must show, run unchanged against each.
//!
//! Call [`conformance`] with a fresh, empty store. Each check is its own function, works in its
//! own namespace of systems, hosts and kinds, and panics with a message saying what broke.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Arc;

use endstate_types::{ChangeId, ChangeState, EventSeq, Generation, HostName, Labels, RevisionId, Status};

use crate::{
    ActualInstance, ChangeFilter, ChangeUpdate, DesiredInstance, Event, EventQuery, HostRecord, InstanceFilter,
    InstanceRecord, InstanceTransition, JoinTokenRow, NewEvent, NewRevision, ObservationBatch, PageRequest, Store,
    StoreError, TokenRecord,
};

/// Runs every check against `store`, which must be fresh and empty.
///
/// # Panics
/// On the first behaviour that differs from the contract, with a message naming it.
pub async fn conformance(store: Arc<dyn Store>) {
    let store = store.as_ref();
    revisions_are_numbered_from_one_and_immutable(store).await;
    submit_creates_revision_change_and_events(store).await;
    submit_is_atomic(store).await;
    submit_with_parent_compares_and_sets(store).await;
    a_change_is_added_to_an_existing_revision(store).await;
    transition_change_compares_and_sets(store).await;
    list_changes_filters_and_pages(store).await;
    hosts_upsert_and_list(store).await;
    instances_upsert_and_filter(store).await;
    transitions_update_actual_and_append_events(store).await;
    transitions_of_unknown_instances_write_nothing(store).await;
    event_filters(store).await;
    event_cursors_have_no_gaps_or_duplicates(store).await;
    append_events_rejects_empty_kind_atomically(store).await;
    compaction_keeps_the_latest_state_of_everything(store).await;
    tokens_by_hash(store).await;
    join_tokens_enrol_once(store).await;
    agent_link_state(store).await;
    observations_compare_and_set_on_last_seq(store).await;
    changes_version_moves_with_every_write_of_changes(store).await;
    // Last: it deletes every instance the other checks made.
    replace_instances_deletes_the_others(store).await;
}

fn join_token(hash_hex: &str) -> JoinTokenRow {
    JoinTokenRow {
        hash_hex: hash_hex.into(),
        labels: [("zone".to_owned(), "a".to_owned())].into_iter().collect(),
        host: None,
        created_ms: 10,
        created_by: "token:admin".into(),
        expires_ms: 1_000_000,
        used_ms: None,
        used_by: None,
    }
}

async fn enrol(store: &dyn Store, hash: &str, name: &str, serial: &str) -> Result<crate::AgentRecord, StoreError> {
    store.put_join_token(join_token(hash)).await.unwrap();
    let event = NewEvent {
        systems: Vec::new(),
        host: Some(name.into()),
        ..NewEvent::new(20, "agent.enrolled", format!("{name} enrolled"))
    };
    store
        .enrol_agent(hash, 20, host(name, &[("zone", "a")], 20), serial.into(), vec![event])
        .await
}

async fn join_tokens_enrol_once(store: &dyn Store) {
    assert!(
        store.find_join_token("jt-1").await.unwrap().is_none(),
        "an unknown join token is None"
    );
    let agent = enrol(store, "jt-1", "agent-host-1", "s1").await.unwrap();
    assert_eq!(agent.cert_serial, "s1", "enrolment records the certificate serial");
    assert_eq!((agent.last_seq, agent.generation, agent.revoked_ms), (0, 0, None));
    let used = store.find_join_token("jt-1").await.unwrap().unwrap();
    assert_eq!(used.used_ms, Some(20), "the token is marked used");
    assert_eq!(used.used_by.as_deref(), Some("agent-host-1"));
    assert!(
        store
            .get_host(&HostName("agent-host-1".into()))
            .await
            .unwrap()
            .is_some(),
        "enrolment writes the host record"
    );
    let again = store
        .enrol_agent("jt-1", 30, host("agent-host-2", &[], 30), "s2".into(), Vec::new())
        .await;
    assert!(
        matches!(again, Err(StoreError::Refused { .. })),
        "a used join token is refused: {again:?}"
    );
    assert!(
        store
            .get_agent(&HostName("agent-host-2".into()))
            .await
            .unwrap()
            .is_none(),
        "a refused enrolment writes nothing"
    );
    let unknown = store
        .enrol_agent("jt-none", 30, host("agent-host-2", &[], 30), "s2".into(), Vec::new())
        .await;
    assert!(matches!(unknown, Err(StoreError::NotFound { .. })), "{unknown:?}");
    assert!(
        matches!(
            store.put_join_token(join_token("jt-1")).await,
            Err(StoreError::Invalid { .. })
        ),
        "a second token with the same hash is refused"
    );
}

async fn agent_link_state(store: &dyn Store) {
    let name = HostName("agent-host-3".into());
    enrol(store, "jt-3", &name.0, "s1").await.unwrap();
    let renewed = store.renew_agent(&name, "s2".into(), Vec::new()).await.unwrap();
    assert_eq!(
        (renewed.cert_serial.as_str(), renewed.prev_serial.as_deref()),
        ("s2", Some("s1")),
        "renewal keeps the previous serial"
    );
    store
        .set_agent_reachable(&name, true, Some("s1".into()), Vec::new())
        .await
        .unwrap();
    let agent = store.get_agent(&name).await.unwrap().unwrap();
    assert_eq!(
        agent.prev_serial.as_deref(),
        Some("s1"),
        "connecting with the old serial keeps it"
    );
    assert_eq!(agent.reachable, Some(true));
    store
        .set_agent_reachable(&name, false, Some("s2".into()), Vec::new())
        .await
        .unwrap();
    let agent = store.get_agent(&name).await.unwrap().unwrap();
    assert_eq!(
        agent.prev_serial, None,
        "connecting with the current serial forgets the previous one"
    );
    assert_eq!(agent.reachable, Some(false));

    assert_eq!(store.set_agent_desired(&name, "d1".into()).await.unwrap(), 1);
    assert_eq!(
        store.set_agent_desired(&name, "d1".into()).await.unwrap(),
        1,
        "the same digest keeps the generation"
    );
    assert_eq!(
        store.set_agent_desired(&name, "d2".into()).await.unwrap(),
        2,
        "a new digest bumps it"
    );

    let revoked = store.revoke_agent(&name, 50, Vec::new()).await.unwrap();
    assert_eq!(revoked.revoked_ms, Some(50));
    assert!(
        matches!(
            store.renew_agent(&name, "s3".into(), Vec::new()).await,
            Err(StoreError::Refused { .. })
        ),
        "a revoked agent cannot renew"
    );
    let back = enrol(store, "jt-4", &name.0, "s9").await.unwrap();
    assert_eq!(
        back.revoked_ms, None,
        "enrolling again with a new token lifts the revocation"
    );
    assert_eq!(back.generation, 2, "and keeps the generation, so it only grows");
    let unknown = store.revoke_agent(&HostName("agent-none".into()), 1, Vec::new()).await;
    assert!(matches!(unknown, Err(StoreError::NotFound { .. })), "{unknown:?}");
}

async fn observations_compare_and_set_on_last_seq(store: &dyn Store) {
    let name = HostName("agent-host-5".into());
    enrol(store, "jt-5", &name.0, "s1").await.unwrap();
    let known = instance("obs/web", "obs", &name.0, 0, "1.0");
    store.put_instances(vec![known.clone()]).await.unwrap();
    let mut unknown = instance("obs/gone", "obs", &name.0, 0, "1.0");
    unknown.component_key = "obs/gone".into();
    let batch = ObservationBatch {
        expect_last_seq: 0,
        last_seq: 7,
        transitions: vec![
            transition(&known, "running", Status::Healthy, 100),
            transition(&unknown, "stopped", Status::Unknown, 101),
        ],
        events: vec![event(102, "obs.health", &["obs"], "healthy")],
    };
    let seqs = store.ingest_observations(&name, batch.clone()).await.unwrap();
    assert_eq!(seqs.len(), 3, "one event per transition and per given event");
    assert_eq!(store.get_agent(&name).await.unwrap().unwrap().last_seq, 7);
    let listed = store
        .list_instances(InstanceFilter {
            system: Some(vec!["obs".into()]),
            host: None,
        })
        .await
        .unwrap();
    assert_eq!(
        listed.len(),
        1,
        "a transition of an unknown instance creates no instance"
    );
    assert_eq!(listed[0].actual.as_ref().map(|a| a.state.as_str()), Some("running"));

    let replay = store.ingest_observations(&name, batch).await;
    assert!(
        matches!(replay, Err(StoreError::Refused { .. })),
        "a batch expecting an old last_seq is refused: {replay:?}"
    );
    let page = store.query_events(&systems_query(&["obs"])).await.unwrap();
    assert_eq!(page.items.len(), 3, "a refused batch writes nothing");
}

async fn replace_instances_deletes_the_others(store: &dyn Store) {
    let a = instance("rep/a", "rep", "rep-host", 0, "1.0");
    let b = instance("rep/b", "rep", "rep-host", 0, "1.0");
    store.put_instances(vec![a.clone(), b.clone()]).await.unwrap();
    store
        .record_transitions(vec![transition(&a, "running", Status::Healthy, 5)])
        .await
        .unwrap();
    let mut a2 = a.clone();
    a2.desired.version = "2.0".into();
    store.replace_instances(vec![a2]).await.unwrap();
    let all = store.list_instances(InstanceFilter::default()).await.unwrap();
    assert_eq!(all.len(), 1, "every instance not given is deleted: {all:?}");
    assert_eq!(all[0].desired.version, "2.0", "the given one is updated");
    assert_eq!(
        all[0].actual.as_ref().map(|a| a.state.as_str()),
        Some("running"),
        "and keeps its actual state"
    );
}

async fn revisions_are_numbered_from_one_and_immutable(store: &dyn Store) {
    assert!(
        store.latest_revision().await.unwrap().is_none(),
        "conformance needs a fresh store: found a revision"
    );
    let mut submitted = Vec::new();
    for n in 1..=3 {
        let (revision, change) = store.submit_revision(new_revision(n), Vec::new()).await.unwrap();
        assert_eq!(
            revision.id,
            RevisionId(n),
            "revisions are numbered from 1 in submission order"
        );
        assert_eq!(
            change.revision, revision.id,
            "the change of a submission points at its revision"
        );
        assert_eq!(
            revision.desired,
            new_revision(n).desired,
            "the desired state is returned as given"
        );
        submitted.push(revision);
    }
    for revision in &submitted {
        let read = store.get_revision(revision.id).await.unwrap();
        assert_eq!(
            read.as_ref(),
            Some(revision),
            "get_revision returns the revision as submitted"
        );
    }
    assert_eq!(
        store.latest_revision().await.unwrap().map(|r| r.id),
        Some(RevisionId(3)),
        "latest is the newest"
    );
    assert!(
        store.get_revision(RevisionId(999)).await.unwrap().is_none(),
        "an unknown revision is None"
    );

    let first = store
        .list_revisions(PageRequest { before: None, limit: 2 })
        .await
        .unwrap();
    let ids: Vec<u64> = first.items.iter().map(|r| r.id.0).collect();
    assert_eq!(ids, [3, 2], "revisions are listed newest first");
    assert_eq!(
        first.next,
        Some(2),
        "a full page with more behind it gives the cursor of its last item"
    );
    let second = store
        .list_revisions(PageRequest {
            before: first.next,
            limit: 2,
        })
        .await
        .unwrap();
    let ids: Vec<u64> = second.items.iter().map(|r| r.id.0).collect();
    assert_eq!(ids, [1], "the second page continues below the cursor");
    assert_eq!(second.next, None, "the last page has no cursor");
    assert_eq!(
        second.items[0].digest, submitted[0].digest,
        "listed metadata matches the revision"
    );

    // A later submission leaves earlier revisions exactly as they were.
    store.submit_revision(new_revision(4), Vec::new()).await.unwrap();
    for revision in &submitted {
        let read = store.get_revision(revision.id).await.unwrap();
        assert_eq!(read.as_ref(), Some(revision), "revisions are immutable");
    }
}

async fn submit_creates_revision_change_and_events(store: &dyn Store) {
    let events = vec![
        event(100, "revision.submitted", &["conf-submit"], "revision submitted"),
        event(
            100,
            "change.created",
            &["conf-submit", "conf-submit-child"],
            "change created",
        ),
    ];
    let (revision, change) = store.submit_revision(new_revision(5), events).await.unwrap();
    assert_eq!(change.state, ChangeState::Pending, "a submitted change starts pending");
    assert_eq!(
        change.revision, revision.id,
        "the change reaches the submitted revision"
    );
    assert_eq!(
        (change.plan.as_ref(), change.reason.as_ref(), change.wave),
        (None, None, None),
        "no plan yet"
    );
    assert_eq!(
        store.get_change(change.id).await.unwrap().as_ref(),
        Some(&change),
        "get_change returns it"
    );

    let page = store.query_events(&systems_query(&["conf-submit"])).await.unwrap();
    assert_eq!(page.items.len(), 2, "both events of the submission are on the timeline");
    for event in &page.items {
        assert_eq!(
            event.change,
            Some(change.id),
            "submission events get the new change's id"
        );
    }
    let kinds: BTreeSet<&str> = page.items.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        BTreeSet::from(["change.created", "revision.submitted"]),
        "the events are stored as given"
    );
    let created = page.items.iter().find(|e| e.kind == "change.created").unwrap();
    assert_eq!(
        created.systems,
        ["conf-submit", "conf-submit-child"],
        "an event keeps all its systems"
    );

    let filter = ChangeFilter {
        revision: Some(revision.id),
        ..ChangeFilter::default()
    };
    let changes = store.list_changes(filter, PageRequest::default()).await.unwrap();
    assert_eq!(changes.items, [change], "list_changes filters by revision");
}

async fn a_change_is_added_to_an_existing_revision(store: &dyn Store) {
    let (revision, first) = store.submit_revision(new_revision(7), Vec::new()).await.unwrap();
    let new = crate::NewChange {
        revision: revision.id,
        state: ChangeState::Halted,
        plan: Some(serde_json::json!({ "steps": [] })),
        reason: Some("proposed".into()),
        progress: Some(serde_json::json!({ "released": 0 })),
        options: None,
        created_ms: 700,
    };
    let events = vec![event(700, "change.proposed", &["conf-add-change"], "proposed")];
    let added = store.add_change(new.clone(), events).await.unwrap();
    assert!(added.id > first.id, "a new change gets the next id");
    assert_eq!(
        (
            added.revision,
            added.state,
            added.plan.clone(),
            added.reason.clone(),
            added.progress.clone()
        ),
        (
            revision.id,
            ChangeState::Halted,
            new.plan.clone(),
            new.reason.clone(),
            new.progress.clone()
        ),
        "stored as given"
    );
    assert_eq!(store.get_change(added.id).await.unwrap().as_ref(), Some(&added));
    let page = store.query_events(&systems_query(&["conf-add-change"])).await.unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].change, Some(added.id), "its events name it");
    let missing = crate::NewChange {
        revision: endstate_types::RevisionId(revision.id.0 + 1000),
        ..new
    };
    let refused = store
        .add_change(missing, vec![event(701, "change.proposed", &["conf-add-change"], "x")])
        .await;
    assert!(
        matches!(refused, Err(StoreError::NotFound { what: "revision", .. })),
        "{refused:?}"
    );
    let page = store.query_events(&systems_query(&["conf-add-change"])).await.unwrap();
    assert_eq!(page.items.len(), 1, "nothing is written for a missing revision");
}

async fn submit_with_parent_compares_and_sets(store: &dyn Store) {
    let newest = store.latest_revision().await.unwrap().map_or(RevisionId(0), |r| r.id);
    let stale = RevisionId(newest.0.saturating_sub(1));
    let result = store
        .submit_revision(
            NewRevision {
                parent: Some(stale),
                ..new_revision(7)
            },
            Vec::new(),
        )
        .await;
    assert!(
        matches!(result, Err(StoreError::StaleParent { expected, found }) if expected == stale && found == newest),
        "a stale parent is refused with both revisions named, got {result:?}"
    );
    assert_eq!(
        store.latest_revision().await.unwrap().map(|r| r.id),
        Some(newest).filter(|id| id.0 > 0),
        "a refused submission adds no revision"
    );
    let (revision, _) = store
        .submit_revision(
            NewRevision {
                parent: Some(newest),
                ..new_revision(7)
            },
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(revision.id, RevisionId(newest.0 + 1), "the newest parent is accepted");
}

async fn submit_is_atomic(store: &dyn Store) {
    let before = store.latest_revision().await.unwrap().map(|r| r.id);
    let n_changes = store
        .list_changes(ChangeFilter::default(), page(1000))
        .await
        .unwrap()
        .items
        .len();
    let events = vec![
        event(1, "revision.submitted", &["conf-atomic"], "ok"),
        event(1, "", &["conf-atomic"], "bad"),
    ];
    let result = store.submit_revision(new_revision(6), events).await;
    assert!(
        matches!(result, Err(StoreError::Invalid { .. })),
        "an event without kind is invalid, got {result:?}"
    );
    assert_eq!(
        store.latest_revision().await.unwrap().map(|r| r.id),
        before,
        "a failed submit adds no revision"
    );
    let after = store
        .list_changes(ChangeFilter::default(), page(1000))
        .await
        .unwrap()
        .items
        .len();
    assert_eq!(after, n_changes, "a failed submit adds no change");
    let page = store.query_events(&systems_query(&["conf-atomic"])).await.unwrap();
    assert!(page.items.is_empty(), "a failed submit adds no event");
    let (revision, _) = store.submit_revision(new_revision(6), Vec::new()).await.unwrap();
    assert_eq!(
        Some(revision.id.0),
        before.map(|b| b.0 + 1),
        "a failed submit does not use up a revision number"
    );
}

/// The server keeps what it derived from the changes (the revision in force, the change rolling
/// out) while this number stays the same, so every write of changes must move it.
async fn changes_version_moves_with_every_write_of_changes(store: &dyn Store) {
    let before = store.changes_version();
    let (_, change) = store.submit_revision(new_revision(90), Vec::new()).await.unwrap();
    let submitted = store.changes_version();
    assert!(
        submitted > before,
        "a submitted revision (with its change) moves the changes version"
    );
    store.upsert_host(host("conf-version", &[], 1)).await.unwrap();
    assert_eq!(
        store.changes_version(),
        submitted,
        "a write of anything else leaves the changes version"
    );
    let update = ChangeUpdate {
        state: ChangeState::Planning,
        plan: None,
        reason: Some("planning".into()),
        wave: None,
        progress: None,
        // The same time as its creation: the version must move all the same.
        now_ms: change.updated_ms,
        retire_hosts: Vec::new(),
    };
    store
        .transition_change(change.id, ChangeState::Pending, update, Vec::new())
        .await
        .unwrap();
    let transitioned = store.changes_version();
    assert!(
        transitioned > submitted,
        "a transition moves the changes version, at any time"
    );
}

async fn transition_change_compares_and_sets(store: &dyn Store) {
    let (_, change) = store.submit_revision(new_revision(7), Vec::new()).await.unwrap();
    let plan = serde_json::json!({"waves": [["a"], ["b", "c"]]});
    let update = ChangeUpdate {
        state: ChangeState::Planning,
        plan: Some(plan.clone()),
        reason: Some("planning".into()),
        wave: None,
        progress: None,
        now_ms: 2_000,
        retire_hosts: Vec::new(),
    };
    let events = vec![event(
        2_000,
        "change.transitioned",
        &["conf-cas"],
        "pending -> planning",
    )];
    let planned = store
        .transition_change(change.id, ChangeState::Pending, update, events)
        .await
        .unwrap();
    assert_eq!(
        planned.state,
        ChangeState::Planning,
        "the transition sets the new state"
    );
    assert_eq!(planned.plan.as_ref(), Some(&plan), "the transition sets the plan");
    assert_eq!(planned.updated_ms, 2_000, "the transition sets updated_ms");
    assert_eq!(planned.created_ms, change.created_ms, "created_ms does not move");
    assert_eq!(
        store.get_change(change.id).await.unwrap().as_ref(),
        Some(&planned),
        "the transition is stored"
    );

    let stale = ChangeUpdate {
        state: ChangeState::Rolling,
        plan: None,
        reason: None,
        wave: None,
        progress: None,
        now_ms: 3_000,
        retire_hosts: Vec::new(),
    };
    let stale_events = vec![event(3_000, "change.transitioned", &["conf-cas"], "stale")];
    let result = store
        .transition_change(change.id, ChangeState::Pending, stale.clone(), stale_events)
        .await;
    match result {
        Err(StoreError::Conflict {
            change: id,
            expected,
            found,
        }) => {
            assert_eq!(
                (id, expected, found),
                (change.id, ChangeState::Pending, ChangeState::Planning),
                "conflict"
            );
        }
        other => panic!("a transition from a state the change is not in must be a Conflict, got {other:?}"),
    }
    assert_eq!(
        store.get_change(change.id).await.unwrap().as_ref(),
        Some(&planned),
        "a conflict writes nothing"
    );
    let timeline = store.query_events(&systems_query(&["conf-cas"])).await.unwrap();
    assert_eq!(timeline.items.len(), 1, "a conflicting transition appends no event");
    assert_eq!(
        timeline.items[0].change,
        Some(change.id),
        "transition events get the change's id"
    );

    let rolling = ChangeUpdate {
        wave: Some((1, 2)),
        progress: Some(serde_json::json!({ "released": 1 })),
        ..stale
    };
    let rolled = store
        .transition_change(change.id, ChangeState::Planning, rolling, Vec::new())
        .await
        .unwrap();
    assert_eq!(rolled.wave, Some((1, 2)), "the wave position is set");
    assert_eq!(
        rolled.progress,
        Some(serde_json::json!({ "released": 1 })),
        "the progress is set"
    );
    assert_eq!(
        rolled.plan.as_ref(),
        Some(&plan),
        "a transition without a plan keeps the plan"
    );
    assert_eq!(
        rolled.reason.as_deref(),
        Some("planning"),
        "a transition without a reason keeps the reason"
    );

    let missing = ChangeUpdate {
        state: ChangeState::Failed,
        plan: None,
        reason: None,
        wave: None,
        progress: None,
        now_ms: 1,
        retire_hosts: Vec::new(),
    };
    let result = store
        .transition_change(ChangeId(999_999), ChangeState::Pending, missing, Vec::new())
        .await;
    assert!(
        matches!(result, Err(StoreError::NotFound { .. })),
        "an unknown change is NotFound, got {result:?}"
    );
    assert!(
        store.get_change(ChangeId(999_999)).await.unwrap().is_none(),
        "an unknown change is None"
    );
}

async fn list_changes_filters_and_pages(store: &dyn Store) {
    let (_, open) = store.submit_revision(new_revision(8), Vec::new()).await.unwrap();
    let (_, done) = store.submit_revision(new_revision(9), Vec::new()).await.unwrap();
    let converge = ChangeUpdate {
        state: ChangeState::Converged,
        plan: None,
        reason: Some("end state reached".into()),
        wave: None,
        progress: None,
        now_ms: 5_000,
        retire_hosts: Vec::new(),
    };
    store
        .transition_change(done.id, ChangeState::Pending, converge, Vec::new())
        .await
        .unwrap();
    let open_filter = ChangeFilter {
        open_only: true,
        ..ChangeFilter::default()
    };
    let open_ids: Vec<ChangeId> = store
        .list_changes(open_filter, page(1000))
        .await
        .unwrap()
        .items
        .iter()
        .map(|c| c.id)
        .collect();
    assert!(open_ids.contains(&open.id), "open_only lists open changes");
    assert!(!open_ids.contains(&done.id), "open_only leaves out terminal changes");
    let converged = ChangeFilter {
        converged_only: true,
        ..ChangeFilter::default()
    };
    let newest = store.list_changes(converged, page(1)).await.unwrap();
    assert_eq!(
        newest.items.iter().map(|c| c.id).collect::<Vec<_>>(),
        [done.id],
        "converged_only lists converged changes, newest first"
    );

    let all = store.list_changes(ChangeFilter::default(), page(1000)).await.unwrap();
    assert!(
        all.items.windows(2).all(|w| w[0].id > w[1].id),
        "changes are listed newest first"
    );
    assert_eq!(all.next, None, "everything fits in one page");
    let mut paged = Vec::new();
    let mut request = page(3);
    loop {
        let page = store.list_changes(ChangeFilter::default(), request).await.unwrap();
        paged.extend(page.items.iter().map(|c| c.id));
        match page.next {
            Some(next) => request.before = Some(next),
            None => break,
        }
    }
    let expected: Vec<ChangeId> = all.items.iter().map(|c| c.id).collect();
    assert_eq!(
        paged, expected,
        "paging through changes gives every change once, in order"
    );
}

async fn hosts_upsert_and_list(store: &dyn Store) {
    let web = host("conf-web-1", &[("zone", "a"), ("role", "web")], 10);
    let db = host("conf-db-1", &[("zone", "b")], 11);
    store.upsert_host(web.clone()).await.unwrap();
    store.upsert_host(db.clone()).await.unwrap();
    assert_eq!(
        store.get_host(&web.name).await.unwrap().as_ref(),
        Some(&web),
        "get_host returns the host as given"
    );
    assert!(
        store.get_host(&HostName("conf-none".into())).await.unwrap().is_none(),
        "an unknown host is None"
    );
    let moved = host("conf-web-1", &[("zone", "c")], 20);
    store.upsert_host(moved.clone()).await.unwrap();
    let hosts = store.list_hosts().await.unwrap();
    let ours: Vec<&HostRecord> = hosts.iter().filter(|h| h.name.0.starts_with("conf-")).collect();
    assert_eq!(
        ours,
        [&db, &moved],
        "hosts are listed by name and an upsert replaces the host"
    );
}

async fn instances_upsert_and_filter(store: &dyn Store) {
    let a = instance("conf-shop/web", "conf-shop", "conf-h1", 0, "1.0");
    let b = instance("conf-shop/web", "conf-shop", "conf-h2", 0, "1.0");
    let c = instance("conf-bank/api", "conf-bank", "conf-h1", 1, "2.0");
    store
        .put_instances(vec![a.clone(), b.clone(), c.clone()])
        .await
        .unwrap();

    let shop = InstanceFilter {
        system: Some(vec!["conf-shop".into()]),
        host: None,
    };
    assert_eq!(
        store.list_instances(shop).await.unwrap(),
        [a.clone(), b.clone()],
        "filter by system"
    );
    let h1 = InstanceFilter {
        system: None,
        host: Some(HostName("conf-h1".into())),
    };
    assert_eq!(
        store.list_instances(h1).await.unwrap(),
        [c.clone(), a.clone()],
        "filter by host, ordered by key"
    );
    let both = InstanceFilter {
        system: Some(vec!["conf-shop".into(), "conf-bank".into()]),
        host: Some(HostName("conf-h1".into())),
    };
    assert_eq!(
        store.list_instances(both).await.unwrap(),
        [c.clone(), a.clone()],
        "filters combine"
    );
    let none = InstanceFilter {
        system: Some(Vec::new()),
        host: None,
    };
    assert!(
        store.list_instances(none).await.unwrap().is_empty(),
        "an empty system list matches nothing"
    );

    let mut observed = a.clone();
    observed.actual = Some(ActualInstance {
        version: Some("1.0".into()),
        status: Status::Healthy,
        state: "running".into(),
        since_ms: 50,
    });
    store.put_instances(vec![observed.clone()]).await.unwrap();
    let mut newer = a.clone();
    newer.desired = DesiredInstance {
        version: "1.1".into(),
        config_digest: "cfg-2".into(),
        generation: Generation(2),
    };
    store.put_instances(vec![newer.clone()]).await.unwrap();
    let shop = InstanceFilter {
        system: Some(vec!["conf-shop".into()]),
        host: None,
    };
    let listed = store.list_instances(shop).await.unwrap();
    assert_eq!(listed[0].desired, newer.desired, "an upsert replaces the desired side");
    assert_eq!(
        listed[0].actual, observed.actual,
        "an upsert without actual keeps the observed actual side"
    );
    assert_eq!(listed.len(), 2, "an upsert by key does not duplicate");
}

async fn transitions_update_actual_and_append_events(store: &dyn Store) {
    let inst = instance("conf-tr/svc", "conf-tr", "conf-tr-h1", 0, "3.0");
    store.put_instances(vec![inst.clone()]).await.unwrap();
    let starting = transition(&inst, "starting", Status::Pending, 1_000);
    let running = transition(&inst, "running", Status::Healthy, 1_500);
    let seqs = store.record_transitions(vec![starting, running.clone()]).await.unwrap();
    assert_eq!(seqs.len(), 2, "one event per transition");
    assert!(seqs[0] < seqs[1], "seqs increase in order");

    let filter = InstanceFilter {
        system: Some(vec!["conf-tr".into()]),
        host: None,
    };
    let listed = store.list_instances(filter).await.unwrap();
    assert_eq!(
        listed[0].actual.as_ref(),
        Some(&running.actual),
        "the last transition is the actual state"
    );

    let query = EventQuery {
        host: Some("conf-tr-h1".into()),
        ..EventQuery::default()
    };
    let events = store.query_events(&query).await.unwrap().items;
    let seqs_found: Vec<EventSeq> = events.iter().rev().map(|e| e.seq).collect();
    assert_eq!(
        seqs_found, seqs,
        "the transition events are on the timeline under the host"
    );
    let last = &events[0];
    assert_eq!(
        last.kind, "instance.transitioned",
        "transition events have kind instance.transitioned"
    );
    assert_eq!(
        last.systems,
        ["conf-tr"],
        "transition events belong to the instance's system"
    );
    assert_eq!(
        last.component.as_deref(),
        Some("conf-tr/svc"),
        "transition events name the component"
    );
    assert_eq!(last.time_ms, 1_500, "transition events happen at since_ms");
    assert_eq!(
        last.actor.as_deref(),
        Some("agent:test"),
        "transition events keep the actor"
    );
    assert!(!last.summary.is_empty(), "transition events have a summary");
}

async fn transitions_of_unknown_instances_write_nothing(store: &dyn Store) {
    let known = instance("conf-tx/svc", "conf-tx", "conf-tx-h1", 0, "1.0");
    store.put_instances(vec![known.clone()]).await.unwrap();
    let unknown = instance("conf-tx/ghost", "conf-tx", "conf-tx-h1", 0, "1.0");
    let batch = vec![
        transition(&known, "running", Status::Healthy, 10),
        transition(&unknown, "running", Status::Healthy, 10),
    ];
    let result = store.record_transitions(batch).await;
    assert!(
        matches!(result, Err(StoreError::NotFound { .. })),
        "an unknown instance is NotFound, got {result:?}"
    );
    let filter = InstanceFilter {
        system: Some(vec!["conf-tx".into()]),
        host: None,
    };
    let listed = store.list_instances(filter).await.unwrap();
    assert_eq!(listed[0].actual, None, "a failed call applies none of its transitions");
    let events = store.query_events(&systems_query(&["conf-tx"])).await.unwrap();
    assert!(events.items.is_empty(), "a failed call appends no event");
}

async fn event_filters(store: &dyn Store) {
    let mut batch = vec![
        event(1_000, "cqk.alpha", &["cq-a"], "a1"),
        event(2_000, "cqk.beta.deep", &["cq-b"], "b1"),
        event(3_000, "cqkx.alpha", &["cq-a", "cq-b"], "ab1"),
        event(4_000, "cqk", &["cq-c"], "c1"),
        event(5_000, "cqk.alpha", &["cq-c"], "c2"),
    ];
    batch[0].host = Some("cq-h1".into());
    batch[2].host = Some("cq-h1".into());
    batch[4].host = Some("cq-h2".into());
    batch[0].component = Some("cq-a/web".into());
    batch[3].component = Some("cq-c/web".into());
    batch[4].component = Some("cq-c/web".into());
    batch[1].actor = Some("alice".into());
    batch[4].actor = Some("alice".into());
    batch[2].actor = Some("server".into());
    let seqs = store.append_events(batch).await.unwrap();
    assert_eq!(seqs.len(), 5, "append_events returns one seq per event");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seqs are strictly increasing");

    let summaries = |events: Vec<Event>| -> Vec<String> { events.into_iter().rev().map(|e| e.summary).collect() };
    let run = |query: EventQuery| async move { summaries(store.query_events(&query).await.unwrap().items) };
    let cq = || Some(vec!["cq-a".to_owned(), "cq-b".to_owned(), "cq-c".to_owned()]);

    assert_eq!(
        run(systems_query(&["cq-a"])).await,
        ["a1", "ab1"],
        "systems: an event of the system matches"
    );
    assert_eq!(
        run(systems_query(&["cq-a", "cq-b"])).await,
        ["a1", "b1", "ab1"],
        "systems: any match, no duplicates"
    );
    assert_eq!(
        run(systems_query(&["cq-none"])).await,
        Vec::<String>::new(),
        "systems: others match nothing"
    );
    assert_eq!(
        run(systems_query(&[])).await,
        Vec::<String>::new(),
        "systems: an empty list matches nothing"
    );

    let kinds = |k: &[&str]| Some(k.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
    let q = EventQuery {
        systems: cq(),
        kinds: kinds(&["cqk.alpha"]),
        ..EventQuery::default()
    };
    assert_eq!(run(q).await, ["a1", "c2"], "kinds: exact match");
    let q = EventQuery {
        systems: cq(),
        kinds: kinds(&["cqk."]),
        ..EventQuery::default()
    };
    assert_eq!(
        run(q).await,
        ["a1", "b1", "c2"],
        "kinds: a prefix ending in '.' matches the kinds under it only"
    );
    let q = EventQuery {
        systems: cq(),
        kinds: kinds(&["cqk", "cqkx."]),
        ..EventQuery::default()
    };
    assert_eq!(run(q).await, ["ab1", "c1"], "kinds: several kinds match any");

    let q = EventQuery {
        systems: cq(),
        host: Some("cq-h1".into()),
        ..EventQuery::default()
    };
    assert_eq!(run(q).await, ["a1", "ab1"], "host filter");
    let q = EventQuery {
        host: Some("cq-h2".into()),
        ..EventQuery::default()
    };
    assert_eq!(run(q).await, ["c2"], "host filter without systems");

    let q = EventQuery {
        systems: cq(),
        component: Some("cq-c/web".into()),
        ..EventQuery::default()
    };
    assert_eq!(run(q).await, ["c1", "c2"], "component filter (exact)");
    let q = EventQuery {
        systems: cq(),
        component: Some("cq-c".into()),
        ..EventQuery::default()
    };
    assert_eq!(run(q).await, Vec::<String>::new(), "component filter is not a prefix");
    let q = EventQuery {
        systems: cq(),
        actor: Some("alice".into()),
        ..EventQuery::default()
    };
    assert_eq!(run(q).await, ["b1", "c2"], "actor filter");
    let q = EventQuery {
        systems: cq(),
        actor: Some("alice".into()),
        component: Some("cq-c/web".into()),
        host: Some("cq-h2".into()),
        ..EventQuery::default()
    };
    assert_eq!(run(q).await, ["c2"], "actor, component and host combine");

    let q = EventQuery {
        systems: cq(),
        since_ms: Some(2_000),
        until_ms: Some(4_000),
        ..EventQuery::default()
    };
    assert_eq!(
        run(q).await,
        ["b1", "ab1"],
        "time window: since inclusive, until exclusive"
    );
    let q = EventQuery {
        systems: Some(vec!["cq-a".into(), "cq-c".into()]),
        kinds: kinds(&["cqk."]),
        since_ms: Some(1_000),
        until_ms: Some(6_000),
        ..EventQuery::default()
    };
    assert_eq!(run(q).await, ["a1", "c2"], "filters combine");

    let q = EventQuery {
        systems: cq(),
        ..EventQuery::default()
    };
    let events = store.query_events(&q).await.unwrap().items;
    let ab1 = events.iter().find(|e| e.summary == "ab1").unwrap();
    assert_eq!(ab1.systems, ["cq-a", "cq-b"], "an event keeps its systems");
    assert_eq!(ab1.host.as_deref(), Some("cq-h1"), "an event keeps its host");
    assert_eq!(ab1.time_ms, 3_000, "an event keeps its time");
}

async fn event_cursors_have_no_gaps_or_duplicates(store: &dyn Store) {
    let events: Vec<NewEvent> = (0..25)
        .map(|i| event(10_000 + i, "cursor.tick", &["conf-cursor"], &format!("tick {i}")))
        .collect();
    let appended = store.append_events(events).await.unwrap();

    // Follow from the start, oldest first.
    let mut followed = Vec::new();
    let mut query = EventQuery {
        after: Some(EventSeq(0)),
        limit: 7,
        ..systems_query(&["conf-cursor"])
    };
    loop {
        let page = store.query_events(&query).await.unwrap();
        assert!(page.items.len() <= 7, "a page holds at most limit events");
        followed.extend(page.items.iter().map(|e| e.seq));
        let next = page
            .next
            .expect("an ascending page always gives a cursor to follow from");
        if page.items.is_empty() {
            assert_eq!(
                Some(EventSeq(next)),
                query.after,
                "an empty ascending page keeps the position"
            );
            break;
        }
        query.after = Some(EventSeq(next));
    }
    assert_eq!(followed, appended, "following gives every event once, oldest first");

    // Page back through history, newest first.
    let mut paged = Vec::new();
    let mut query = EventQuery {
        limit: 7,
        ..systems_query(&["conf-cursor"])
    };
    loop {
        let page = store.query_events(&query).await.unwrap();
        paged.extend(page.items.iter().map(|e| e.seq));
        match page.next {
            Some(next) => query.before = Some(EventSeq(next)),
            None => break,
        }
    }
    paged.reverse();
    assert_eq!(paged, appended, "paging back gives every event once, newest first");

    // A follower that is caught up sees new events after its position only.
    let position = *appended.last().unwrap();
    let more = store
        .append_events(vec![event(20_000, "cursor.tick", &["conf-cursor"], "late")])
        .await
        .unwrap();
    let query = EventQuery {
        after: Some(position),
        ..systems_query(&["conf-cursor"])
    };
    let page = store.query_events(&query).await.unwrap();
    assert_eq!(
        page.items.iter().map(|e| e.seq).collect::<Vec<_>>(),
        more,
        "following resumes after the cursor"
    );

    // The whole timeline, unfiltered, is strictly increasing in both directions.
    let mut all = Vec::new();
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
        all.extend(page.items.iter().map(|e| e.seq));
        query.after = page.next.map(EventSeq);
    }
    assert!(
        all.windows(2).all(|w| w[0] < w[1]),
        "the timeline is strictly increasing"
    );
    let newest = store
        .query_events(&EventQuery {
            limit: 1,
            ..EventQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(
        newest.items.first().map(|e| e.seq),
        all.last().copied(),
        "newest first starts at the newest"
    );
}

async fn append_events_rejects_empty_kind_atomically(store: &dyn Store) {
    let events = vec![
        event(1, "conf.ok", &["conf-empty-kind"], "ok"),
        event(1, "", &["conf-empty-kind"], "bad"),
    ];
    let result = store.append_events(events).await;
    assert!(
        matches!(result, Err(StoreError::Invalid { .. })),
        "an event without kind is invalid, got {result:?}"
    );
    let page = store.query_events(&systems_query(&["conf-empty-kind"])).await.unwrap();
    assert!(page.items.is_empty(), "a rejected append writes none of its events");
}

async fn compaction_keeps_the_latest_state_of_everything(store: &dyn Store) {
    let state = |time_ms: i64, host: &str, slot: u32, status: &str| NewEvent {
        systems: vec!["conf-compact".into()],
        host: Some(host.into()),
        component: Some("conf-compact/web".into()),
        data: serde_json::json!({ "slot": slot, "status": status }),
        ..NewEvent::new(
            time_ms,
            "conf.compact.state",
            format!("{host}#{slot} {status} at {time_ms}"),
        )
    };
    store
        .append_events(vec![
            event(5, "conf.other", &["conf-compact"], "another kind at 5"),
            state(10, "h1", 0, "healthy"),
            state(15, "h1", 1, "healthy"),
            state(20, "h1", 0, "unhealthy"),
            state(25, "h2", 0, "healthy"),
            state(26, "h2", 0, "degraded"),
            state(30, "h1", 0, "healthy"),
            state(100, "h1", 0, "unhealthy"),
        ])
        .await
        .unwrap();
    // Older than 50: h1#0 at 10 and 20, h2#0 at 25 go; the newest of each subject before the cut
    // (h1#0 at 30, h1#1 at 15, h2#0 at 26) stays, as does everything newer and other kinds.
    assert_eq!(store.compact_events("conf.compact.", 50, 2).await.unwrap(), 2);
    assert_eq!(store.compact_events("conf.compact.", 50, 2).await.unwrap(), 1);
    assert_eq!(store.compact_events("conf.compact.", 50, 2).await.unwrap(), 0);
    let left: Vec<String> = store
        .query_events(&systems_query(&["conf-compact"]))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| e.summary)
        .collect();
    assert_eq!(
        left,
        [
            "h1#0 unhealthy at 100",
            "h1#0 healthy at 30",
            "h2#0 degraded at 26",
            "h1#1 healthy at 15",
            "another kind at 5",
        ]
    );
    // An exact kind matches only itself; an empty kind is refused.
    assert_eq!(store.compact_events("conf.compact", 1_000, 10).await.unwrap(), 0);
    assert!(matches!(
        store.compact_events("", 1_000, 10).await,
        Err(StoreError::Invalid { .. })
    ));
}

async fn tokens_by_hash(store: &dyn Store) {
    assert_eq!(
        store.count_tokens().await.unwrap(),
        0,
        "conformance needs a fresh store: found tokens"
    );
    let admin = token("t1", "admin", "aa11");
    let reader = TokenRecord {
        systems: vec!["shop".into(), "billing".into()],
        ..token("t2", "reader", "bb22")
    };
    store.put_token(admin.clone()).await.unwrap();
    store.put_token(reader.clone()).await.unwrap();
    assert_eq!(
        store.count_tokens().await.unwrap(),
        2,
        "count_tokens counts stored tokens"
    );
    assert_eq!(
        store.find_token("aa11").await.unwrap().as_ref(),
        Some(&admin),
        "find_token finds by hash"
    );
    assert!(
        store.find_token("t1").await.unwrap().is_none(),
        "find_token looks up the hash, not the id"
    );
    assert!(
        store.find_token("ffff").await.unwrap().is_none(),
        "an unknown hash is None"
    );

    assert_eq!(
        store.find_token("bb22").await.unwrap().as_ref(),
        Some(&reader),
        "a token's systems are kept, in order"
    );
    assert_eq!(
        store.list_tokens().await.unwrap(),
        vec![admin.clone(), reader.clone()],
        "list_tokens lists every token"
    );

    let revoked = TokenRecord {
        revoked: true,
        ..admin.clone()
    };
    store.put_token(revoked.clone()).await.unwrap();
    assert_eq!(
        store.find_token("aa11").await.unwrap(),
        Some(revoked),
        "put_token replaces by id; revoked is kept"
    );
    assert_eq!(
        store.count_tokens().await.unwrap(),
        2,
        "replacing a token does not add one"
    );

    let clash = token("t3", "clash", "bb22");
    let result = store.put_token(clash).await;
    assert!(
        matches!(result, Err(StoreError::Invalid { .. })),
        "a second token with the same hash is refused"
    );
    assert_eq!(
        store.find_token("bb22").await.unwrap(),
        Some(reader),
        "a refused token changes nothing"
    );
}

// === fixtures ===

fn new_revision(n: u64) -> NewRevision {
    NewRevision {
        author: format!("author-{n}"),
        message: format!("revision {n}"),
        source: "cli".into(),
        digest: format!("sha256:{n:04}"),
        desired: serde_json::json!({"systems": {"shop": {"version": n, "nested": [1, 2, {"b": true, "a": null}]}}}),
        created_ms: 1_000 + i64::try_from(n).unwrap(),
        parent: None,
        options: None,
    }
}

fn event(time_ms: i64, kind: &str, systems: &[&str], summary: &str) -> NewEvent {
    NewEvent {
        systems: systems.iter().map(|s| (*s).to_owned()).collect(),
        data: serde_json::json!({"summary": summary}),
        ..NewEvent::new(time_ms, kind, summary)
    }
}

fn systems_query(systems: &[&str]) -> EventQuery {
    EventQuery {
        systems: Some(systems.iter().map(|s| (*s).to_owned()).collect()),
        ..EventQuery::default()
    }
}

fn page(limit: u32) -> PageRequest {
    PageRequest { before: None, limit }
}

fn host(name: &str, labels: &[(&str, &str)], last_seen_ms: i64) -> HostRecord {
    let labels: Labels = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    HostRecord {
        name: HostName(name.into()),
        labels,
        facts: serde_json::json!({"os": "linux", "cpus": 4}),
        last_seen_ms: Some(last_seen_ms),
        retired_ms: None,
    }
}

fn instance(component_key: &str, system: &str, host: &str, slot: u32, version: &str) -> InstanceRecord {
    InstanceRecord {
        component_key: component_key.into(),
        system: system.into(),
        host: HostName(host.into()),
        slot,
        desired: DesiredInstance {
            version: version.into(),
            config_digest: "cfg-1".into(),
            generation: Generation(1),
        },
        actual: None,
    }
}

fn transition(instance: &InstanceRecord, state: &str, status: Status, since_ms: i64) -> InstanceTransition {
    InstanceTransition {
        component_key: instance.component_key.clone(),
        host: instance.host.clone(),
        slot: instance.slot,
        actual: ActualInstance {
            version: Some(instance.desired.version.clone()),
            status,
            state: state.into(),
            since_ms,
        },
        change: None,
        actor: Some("agent:test".into()),
    }
}

fn token(id: &str, role: &str, hash_hex: &str) -> TokenRecord {
    TokenRecord {
        id: id.into(),
        name: format!("{role} token"),
        role: role.into(),
        hash_hex: hash_hex.into(),
        created_ms: 42,
        revoked: false,
        systems: Vec::new(),
    }
}
