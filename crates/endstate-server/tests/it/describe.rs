//! `GET /v1/systems/{name}/describe` and notes (`POST /v1/systems/{name}/notes`).

use endstate_client::{Client, TimelineQuery};
use endstate_store::{ActualInstance, DesiredInstance, HostRecord, InstanceRecord, InstanceTransition, Store};
use endstate_types::{Generation, HostName, Status};

use crate::{TestServer, submit_request, wait_until_waiting};

/// shop aggregates storefront and payments; cache is shared by storefront and platform.
pub(crate) const SPEC: &str = endstate_testkit::fixtures::DESCRIBE_SHOP;

/// Submits [`SPEC`], then puts a host `h-a` (zone a) with both memo instances in the store:
/// slot 0 healthy, slot 1 unhealthy (a transition, so it is on the timeline).
pub(crate) async fn with_instances(server: &TestServer, client: &Client) {
    let submitted = client
        .submit(&submit_request(&[("s.yaml", SPEC)], "shop"))
        .await
        .unwrap();
    let store = server.store.as_ref();
    store
        .upsert_host(HostRecord {
            name: HostName("h-a".into()),
            labels: [("zone".to_string(), "a".to_string())].into_iter().collect(),
            facts: serde_json::json!({}),
            last_seen_ms: Some(1),
            retired_ms: None,
        })
        .await
        .unwrap();
    let record = |slot: u32| InstanceRecord {
        component_key: "cache/memo".into(),
        system: "cache".into(),
        host: HostName("h-a".into()),
        slot,
        desired: DesiredInstance {
            version: "1.0.0".into(),
            config_digest: "d".into(),
            generation: Generation(1),
        },
        actual: None,
    };
    store.put_instances(vec![record(0), record(1)]).await.unwrap();
    let now = jiff::Timestamp::now().as_millisecond();
    let transition = |slot: u32, status: Status, state: &str| InstanceTransition {
        component_key: "cache/memo".into(),
        host: HostName("h-a".into()),
        slot,
        actual: ActualInstance {
            version: Some("1.0.0".into()),
            status,
            state: state.into(),
            since_ms: now - 1_000,
        },
        change: None,
        actor: Some("agent:h-a".into()),
    };
    store
        .record_transitions(vec![
            transition(0, Status::Healthy, "running"),
            transition(1, Status::Unhealthy, "crashed"),
        ])
        .await
        .unwrap();
    // Without agents the change waits; what is described is the latest revision either way.
    wait_until_waiting(client, submitted.change.id).await;
}

#[tokio::test]
async fn describe_answers_the_3am_questions_on_one_screen() {
    let server = TestServer::start().await;
    let client = server.client();
    with_instances(&server, &client).await;

    let shop = client.describe("shop").await.unwrap();
    assert_eq!(shop.description, "The web shop, as customers see it.");
    assert_eq!(shop.owners, ["team-shop", "alice"]);
    assert_eq!(shop.labels["tier"], "customer-facing");
    let escalation = shop.escalation.as_ref().unwrap();
    assert_eq!(escalation.contact, "shop-oncall");
    assert_eq!(escalation.pager.as_deref(), Some("shop-oncall@pager.example.com"));
    assert_eq!(escalation.phone.as_deref(), Some("+41 44 000 00 00"));
    assert_eq!(escalation.email.as_deref(), Some("shop-oncall@example.com"));
    assert_eq!(
        escalation.url.as_deref(),
        Some("https://wiki.example.com/shop/escalation")
    );
    let links: Vec<(&str, &str)> = shop.links.iter().map(|l| (l.title.as_str(), l.url.as_str())).collect();
    assert_eq!(
        links,
        [
            ("Dashboard", "https://grafana.example.com/d/shop"),
            ("Runbook", "https://wiki.example.com/shop/runbook")
        ]
    );
    // Only the system's own actions are its rules of engagement.
    let rules: Vec<(&str, &str)> = shop
        .actions
        .iter()
        .map(|a| (a.name.as_str(), a.engagement.as_str()))
        .collect();
    assert_eq!(rules, [("drain", "approval")]);
    assert_eq!(shop.actions[0].targets, "hosts zone=a");
    // The status rolls up from the unhealthy instance of the shared cache, naming the leaf.
    assert_eq!(shop.status.status, "unhealthy");
    assert_eq!(shop.status.path, ["shop", "storefront", "cache", "cache/memo"]);
    assert!(
        shop.status
            .reason
            .as_deref()
            .unwrap()
            .contains("cache/memo#1 on h-a is unhealthy"),
        "{:?}",
        shop.status
    );
    let subsystems: Vec<(&str, &str)> = shop
        .subsystems
        .iter()
        .map(|s| (s.name.as_str(), s.status.status.as_str()))
        .collect();
    assert_eq!(subsystems, [("payments", "healthy"), ("storefront", "unhealthy")]);
    assert!(shop.aggregates.is_empty(), "shop is a top-level system");
    assert!(shop.components.is_empty(), "shop has no components of its own");
    // The subtree's events: the revision and the instance transitions of cache, newest first.
    let kinds: Vec<&str> = shop.recent_events.iter().map(|e| e.kind.as_str()).collect();
    assert!(kinds.contains(&"instance.transitioned"), "{kinds:?}");
    assert!(kinds.contains(&"revision.submitted"), "{kinds:?}");
    assert!(shop.recent_events.windows(2).all(|w| w[0].seq > w[1].seq));

    // The shared subsystem: both aggregates are found by scanning (no parent pointer).
    let cache = client.describe("cache").await.unwrap();
    let aggregates: Vec<&str> = cache.aggregates.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(aggregates, ["platform", "storefront"]);
    assert!(cache.aggregates.iter().all(|s| s.status.status == "unhealthy"));
    let rules: Vec<(&str, &str, Option<&str>)> = cache
        .actions
        .iter()
        .map(|a| (a.name.as_str(), a.engagement.as_str(), a.escalate_to.as_deref()))
        .collect();
    assert_eq!(
        rules,
        [
            ("failover", "escalate", Some("dba-oncall")),
            ("flush", "direct", None),
            ("restart", "approval", None)
        ]
    );
    assert_eq!(cache.components.len(), 1);
    let memo = &cache.components[0];
    assert_eq!(
        (memo.key.as_str(), memo.desired_instances, memo.ready_instances),
        ("cache/memo", 2, 1)
    );
    let instances: Vec<(&str, u32, &str, &str)> = memo
        .instances
        .iter()
        .map(|i| (i.host.as_str(), i.slot, i.state.as_str(), i.status.as_str()))
        .collect();
    assert_eq!(
        instances,
        [("h-a", 0, "running", "healthy"), ("h-a", 1, "crashed", "unhealthy")]
    );

    // Many-to-many: payments belongs to shop only, and has no events of its own but the revision.
    let payments = client.describe("payments").await.unwrap();
    assert_eq!(payments.aggregates.len(), 1);
    assert_eq!(payments.aggregates[0].name, "shop");
    assert!(payments.recent_events.len() <= 10);

    // At most 10 events, even when the subtree has more.
    for n in 0..12 {
        client.add_note("cache", &format!("note {n}")).await.unwrap();
    }
    let cache = client.describe("cache").await.unwrap();
    assert_eq!(cache.recent_events.len(), 10);
    assert_eq!(cache.recent_events[0].summary, "note 11");

    let missing = client.describe("nope").await.unwrap_err();
    let problem = missing.problem().unwrap();
    assert_eq!(problem.status, 404);
    assert!(problem.detail.contains("\"nope\""), "{problem:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_note_is_on_the_timeline_with_its_author_and_bad_notes_store_nothing() {
    let server = TestServer::start().await;
    let client = server.client();
    client
        .submit(&submit_request(&[("s.yaml", SPEC)], "shop"))
        .await
        .unwrap();

    let event = client
        .add_note("cache", "Restarted memo by hand.\nSee INC-42 for why.")
        .await
        .unwrap();
    assert_eq!(event.kind, "note.added");
    assert_eq!(event.actor.as_deref(), Some("admin"), "signed with the token's name");
    assert_eq!(event.systems, ["cache"]);
    assert_eq!(event.summary, "Restarted memo by hand.…");
    assert_eq!(event.data["text"], "Restarted memo by hand.\nSee INC-42 for why.");
    // On the timeline of every aggregate of cache.
    let notes = |system: &str| TimelineQuery {
        system: Some(system.into()),
        kind: Some("note.".into()),
        ..TimelineQuery::default()
    };
    for system in ["cache", "platform", "shop"] {
        let found = client.timeline(&notes(system)).await.unwrap().items;
        assert_eq!(found.iter().map(|e| e.seq).collect::<Vec<_>>(), [event.seq], "{system}");
    }
    let before = count(&client).await;

    // Several megabytes: refused naming `text`, nothing stored.
    let huge = "x".repeat(3 * 1024 * 1024);
    let error = client.add_note("cache", &huge).await.unwrap_err();
    let problem = error.problem().unwrap();
    assert_eq!(problem.status, 422, "{problem:?}");
    assert_eq!(problem.errors[0].field, "text");
    assert!(problem.errors[0].message.contains("at most 4096 bytes"), "{problem:?}");
    // One byte over the bound is refused, the bound itself is accepted.
    let error = client.add_note("cache", &"y".repeat(4097)).await.unwrap_err();
    assert_eq!(error.problem().unwrap().errors[0].field, "text");
    let at_bound = client.add_note("cache", &"z".repeat(4096)).await.unwrap();
    assert_eq!(at_bound.data["text"].as_str().unwrap().len(), 4096);
    // Blank.
    let error = client.add_note("cache", "  \n ").await.unwrap_err();
    assert_eq!(error.problem().unwrap().errors[0].field, "text");
    // Unknown system: 404 naming it.
    let error = client.add_note("nowhere", "hello").await.unwrap_err();
    let problem = error.problem().unwrap();
    assert_eq!(problem.status, 404);
    assert!(problem.detail.contains("\"nowhere\""), "{problem:?}");
    // A viewer may not write notes.
    let viewer = client.create_token("night-viewer", "viewer", &[]).await.unwrap();
    let viewer = Client::new(&server.url, &viewer.secret).unwrap();
    let error = viewer.add_note("cache", "hi").await.unwrap_err();
    assert_eq!(error.problem().unwrap().status, 403);
    // A body beyond the API's limit is 413.
    let response = reqwest::Client::new()
        .post(format!("{}/v1/systems/cache/notes", server.url))
        .bearer_auth(&server.admin)
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"text":"{}"}}"#,
            "x".repeat(endstate_api::MAX_BODY_BYTES + 1)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);

    assert_eq!(
        count(&client).await,
        before + 1,
        "only the note at the bound was stored"
    );
    server.stop().await;
}

/// How many notes the timeline holds.
async fn count(client: &Client) -> usize {
    let notes = TimelineQuery {
        kind: Some("note.added".into()),
        ..TimelineQuery::default()
    };
    client.timeline(&notes).await.unwrap().items.len()
}
