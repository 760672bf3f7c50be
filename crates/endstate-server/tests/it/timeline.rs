//! The timeline: subtree and kind filters, time windows, cursor pagination, the live stream.

use futures_util::StreamExt;

use std::time::Duration;

use endstate_client::TimelineQuery;
use endstate_store::Store;

use crate::{CACHE_COMPONENT, SYSTEMS, TestServer, submit_request, wait_for_change, wait_until_waiting};

#[tokio::test]
async fn filters_pagination_and_subtrees() {
    let server = TestServer::start().await;
    let client = server.client();
    let first = client
        .submit(&submit_request(&[("s.yaml", SYSTEMS)], "systems"))
        .await
        .unwrap();
    wait_for_change(&client, first.change.id, &["converged"]).await;
    let second = client
        .submit(&submit_request(
            &[("s.yaml", SYSTEMS), ("c.yaml", CACHE_COMPONENT)],
            "memo",
        ))
        .await
        .unwrap();
    wait_until_waiting(&client, second.change.id).await;

    let all = client.timeline(&TimelineQuery::default()).await.unwrap().items;
    assert!(all.len() >= 5, "{all:#?}");
    assert!(all.windows(2).all(|w| w[0].seq > w[1].seq), "newest first");

    // The second revision touches only the cache system; a query for platform (which aggregates
    // cache) sees it, one for payments does not.
    let of = |system: &str| TimelineQuery {
        system: Some(system.into()),
        kind: Some("revision.submitted".into()),
        ..TimelineQuery::default()
    };
    let platform = client.timeline(&of("platform")).await.unwrap().items;
    assert_eq!(
        platform
            .iter()
            .map(|e| e.data["message"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["memo", "systems"]
    );
    let payments = client.timeline(&of("payments")).await.unwrap().items;
    assert_eq!(
        payments
            .iter()
            .map(|e| e.data["message"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["systems"]
    );

    let changes = client
        .timeline(&TimelineQuery {
            kind: Some("change.".into()),
            ..TimelineQuery::default()
        })
        .await
        .unwrap()
        .items;
    assert!(!changes.is_empty() && changes.iter().all(|e| e.kind.starts_with("change.")));
    assert!(
        changes
            .iter()
            .all(|e| e.change.is_some() && e.actor.as_deref() == Some("server"))
    );

    let future = client
        .timeline(&TimelineQuery {
            since: Some("2999-01-01T00:00:00Z".into()),
            ..TimelineQuery::default()
        })
        .await
        .unwrap()
        .items;
    assert!(future.is_empty());
    let recent = client
        .timeline(&TimelineQuery {
            since: Some("1h".into()),
            ..TimelineQuery::default()
        })
        .await
        .unwrap()
        .items;
    assert_eq!(recent.len(), all.len());

    // Pages of two cover everything exactly once.
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = client
            .timeline(&TimelineQuery {
                limit: Some(2),
                cursor: cursor.clone(),
                ..TimelineQuery::default()
            })
            .await
            .unwrap();
        seen.extend(page.items.iter().map(|e| e.seq));
        match page.next {
            Some(next) if !page.items.is_empty() => cursor = Some(next),
            _ => break,
        }
    }
    assert_eq!(seen, all.iter().map(|e| e.seq).collect::<Vec<_>>());

    // A cursor carries its query's filters: reused with others, it is refused by name.
    let first = client
        .timeline(&TimelineQuery {
            limit: Some(1),
            ..TimelineQuery::default()
        })
        .await
        .unwrap();
    let cursor = first.next.expect("more than one event");
    let error = client
        .timeline(&TimelineQuery {
            kind: Some("change.".into()),
            cursor: Some(cursor.clone()),
            ..TimelineQuery::default()
        })
        .await
        .unwrap_err();
    let problem = error.problem().unwrap();
    assert_eq!(
        (problem.status, problem.errors[0].field.as_str()),
        (422, "cursor"),
        "{problem:?}"
    );
    assert!(problem.errors[0].message.contains("other filters"), "{problem:?}");
    let garbage = client
        .timeline(&TimelineQuery {
            cursor: Some("yesterday".into()),
            ..TimelineQuery::default()
        })
        .await
        .unwrap_err();
    assert_eq!(garbage.problem().unwrap().errors[0].field, "cursor");

    // Following from a position returns what came after, oldest first.
    let after = all.last().unwrap().seq;
    let followed = client
        .timeline(&TimelineQuery {
            after: Some(after),
            ..TimelineQuery::default()
        })
        .await
        .unwrap()
        .items;
    assert_eq!(followed.first().map(|e| e.seq), Some(after + 1));
    server.stop().await;
}

#[tokio::test]
async fn the_stream_delivers_new_events_and_resumes_from_a_position() {
    let server = TestServer::start().await;
    let client = server.client();
    let mut stream = Box::pin(client.stream(&TimelineQuery::default()).await.unwrap());
    let submitted = client
        .submit(&submit_request(&[("s.yaml", SYSTEMS)], "live"))
        .await
        .unwrap();
    let mut kinds = Vec::new();
    let mut last_seq = 0;
    while kinds.last().map(String::as_str) != Some("change.converged") {
        let event = tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(event.seq > last_seq, "in order");
        last_seq = event.seq;
        kinds.push(event.kind);
    }
    assert_eq!(kinds, ["revision.submitted", "change.planning", "change.converged"]);
    assert_eq!(client.change(submitted.change.id).await.unwrap().state, "converged");

    // A stream opened after the fact, from the first event on, replays the rest.
    let mut resumed = Box::pin(
        client
            .stream(&TimelineQuery {
                after: Some(1),
                ..TimelineQuery::default()
            })
            .await
            .unwrap(),
    );
    let next = tokio::time::timeout(std::time::Duration::from_secs(10), resumed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((next.seq, next.kind.as_str()), (2, "change.planning"));
    server.stop().await;
}

#[tokio::test]
async fn live_streams_are_bounded_and_a_closed_one_frees_its_place() {
    let server = TestServer::start_with(|config| config.max_streams = 2).await;
    let client = server.client();
    let first = client.stream(&TimelineQuery::default()).await.unwrap();
    let _second = client.stream(&TimelineQuery::default()).await.unwrap();
    let refused = client.stream(&TimelineQuery::default()).await.err().unwrap();
    assert_eq!(refused.problem().map(|p| p.status), Some(503), "{refused}");
    drop(first);
    // The server notices the closed connection when it next writes to it, or at the latest with
    // the next keep-alive; a new event makes it write now.
    client
        .submit(&submit_request(&[("s.yaml", SYSTEMS)], "wake"))
        .await
        .unwrap();
    let mut reopened = None;
    for _ in 0..100 {
        if let Ok(stream) = client.stream(&TimelineQuery::default()).await {
            reopened = Some(stream);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(reopened.is_some(), "the closed stream's place was not freed");
    server.stop().await;
}

#[tokio::test]
async fn component_and_actor_filters_and_bad_windows() {
    let server = TestServer::start().await;
    let client = server.client();
    crate::describe::with_instances(&server, &client).await;
    client.add_note("cache", "looking into memo").await.unwrap();

    // component: only the instance transitions of cache/memo.
    let memo = client
        .timeline(&TimelineQuery {
            component: Some("cache/memo".into()),
            ..TimelineQuery::default()
        })
        .await
        .unwrap()
        .items;
    assert_eq!(memo.len(), 2, "{memo:#?}");
    assert!(memo.iter().all(|e| e.kind == "instance.transitioned"));
    // actor: what the admin token did (the revision and the note), not the agent's or the server's.
    let by_admin = client
        .timeline(&TimelineQuery {
            actor: Some("admin".into()),
            ..TimelineQuery::default()
        })
        .await
        .unwrap()
        .items;
    let kinds: Vec<&str> = by_admin.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["note.added", "revision.submitted"]);
    let by_agent = client
        .timeline(&TimelineQuery {
            system: Some("shop".into()),
            actor: Some("agent:h-a".into()),
            component: Some("cache/memo".into()),
            ..TimelineQuery::default()
        })
        .await
        .unwrap()
        .items;
    assert_eq!(by_agent.len(), 2, "filters combine with the subtree");
    let nobody = client
        .timeline(&TimelineQuery {
            actor: Some("mallory".into()),
            ..TimelineQuery::default()
        })
        .await
        .unwrap()
        .items;
    assert!(nobody.is_empty());

    let problem = |query: TimelineQuery| {
        let client = client.clone();
        async move { client.timeline(&query).await.unwrap_err().problem().cloned().unwrap() }
    };
    // An unknown system: 404 naming it.
    let unknown = problem(TimelineQuery {
        system: Some("nowhere".into()),
        ..TimelineQuery::default()
    })
    .await;
    assert_eq!(unknown.status, 404);
    assert!(unknown.detail.contains("\"nowhere\""), "{unknown:?}");
    // A reversed window names both ends.
    let reversed = problem(TimelineQuery {
        since: Some("2026-01-02T00:00:00Z".into()),
        until: Some("2026-01-01T00:00:00Z".into()),
        ..TimelineQuery::default()
    })
    .await;
    assert_eq!(reversed.status, 422);
    let fields: Vec<&str> = reversed.errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["since", "until"], "{reversed:?}");
    assert!(reversed.detail.contains("reversed"), "{reversed:?}");
    // More than 400 days.
    let absurd = problem(TimelineQuery {
        since: Some("2000-01-01T00:00:00Z".into()),
        until: Some("2026-01-01T00:00:00Z".into()),
        ..TimelineQuery::default()
    })
    .await;
    assert_eq!(absurd.status, 422);
    assert!(absurd.detail.contains("at most 400 days"), "{absurd:?}");
    let absurd = problem(TimelineQuery {
        since: Some("1990-05-01T00:00:00Z".into()),
        ..TimelineQuery::default()
    })
    .await;
    assert_eq!((absurd.status, absurd.errors[0].field.as_str()), (422, "since"));
    // 400 days exactly is allowed.
    client
        .timeline(&TimelineQuery {
            since: Some("2025-01-01T00:00:00Z".into()),
            until: Some("2026-02-05T00:00:00Z".into()),
            ..TimelineQuery::default()
        })
        .await
        .unwrap();
    // Unparsable, and a duration beyond what durations allow, name the parameter.
    for (since, needle) in [("yesterday", "neither an RFC 3339 time"), ("500d", "366")] {
        let bad = problem(TimelineQuery {
            since: Some(since.into()),
            ..TimelineQuery::default()
        })
        .await;
        assert_eq!((bad.status, bad.errors[0].field.as_str()), (422, "since"), "{since}");
        assert!(bad.errors[0].message.contains(needle), "{since}: {bad:?}");
    }
    // A malformed kind is named; a well-formed one that never happened is an empty page.
    let bad = problem(TimelineQuery {
        kind: Some("change.,Alert!".into()),
        ..TimelineQuery::default()
    })
    .await;
    assert_eq!((bad.status, bad.errors[0].field.as_str()), (422, "kind"), "{bad:?}");
    assert!(bad.errors[0].message.contains("\"Alert!\""), "{bad:?}");
    let none = client
        .timeline(&TimelineQuery {
            kind: Some("alert.opened".into()),
            ..TimelineQuery::default()
        })
        .await
        .unwrap();
    assert!(none.items.is_empty());
    // A host never seen is a mistake.
    let nowhere = problem(TimelineQuery {
        host: Some("nowhere".into()),
        ..TimelineQuery::default()
    })
    .await;
    assert_eq!(nowhere.status, 404, "{nowhere:?}");
    assert!(nowhere.detail.contains("\"nowhere\""), "{nowhere:?}");
    // The live stream refuses the same.
    let refused = client
        .stream(&TimelineQuery {
            system: Some("nowhere".into()),
            ..TimelineQuery::default()
        })
        .await
        .err()
        .unwrap();
    assert_eq!(refused.problem().map(|p| p.status), Some(404));
    server.stop().await;
}

#[tokio::test]
async fn a_system_no_longer_declared_keeps_its_history() {
    let server = TestServer::start().await;
    let client = server.client();
    let first = client
        .submit(&submit_request(&[("s.yaml", SYSTEMS)], "with payments"))
        .await
        .unwrap();
    wait_for_change(&client, first.change.id, &["converged"]).await;
    let without = SYSTEMS.replace("subsystems: [storefront, payments]", "subsystems: [storefront]");
    let without = without.replace(
        "---\napiVersion: endstate/v1\nkind: System\nname: payments\nowners: [team-payments]\n",
        "",
    );
    let second = client
        .submit(&submit_request(&[("s.yaml", &without)], "without payments"))
        .await
        .unwrap();
    wait_for_change(&client, second.change.id, &["converged"]).await;
    assert!(client.system("payments").await.is_err(), "payments is gone");
    let history = client
        .timeline(&TimelineQuery {
            system: Some("payments".into()),
            ..TimelineQuery::default()
        })
        .await
        .unwrap()
        .items;
    assert!(!history.is_empty());
    server.stop().await;
}

/// Retention per kind: a server keeping `instance.` for 2 hours deletes older transitions in
/// the background, but keeps the newest of each instance before the cut (its state then) and
/// every other kind, and says so on the timeline.
#[tokio::test]
async fn retention_deletes_old_events_of_a_kind_but_keeps_the_latest_state() {
    let server = TestServer::start_with(|config| {
        config.retention = vec![endstate_server::RetentionRule::parse("instance.=2h").unwrap()];
        config.retention_interval = Duration::from_millis(100);
    })
    .await;
    let now = jiff::Timestamp::now().as_millisecond();
    let hour = 3_600_000;
    let transition = |ago_h: i64, slot: u32, status: &str| endstate_store::NewEvent {
        systems: vec!["ret".into()],
        host: Some("h-1".into()),
        component: Some("ret/web".into()),
        ..endstate_store::NewEvent::of(
            now - ago_h * hour,
            &endstate_events::Event::InstanceTransitioned(endstate_events::InstanceTransitioned {
                slot,
                version: None,
                status: status.into(),
                state: "running".into(),
                previous_state: None,
                previous_status: None,
                desired: None,
            }),
            format!("#{slot} {status} {ago_h}h ago"),
        )
    };
    server
        .store
        .append_events(vec![
            transition(50, 0, "healthy"),
            transition(40, 0, "unhealthy"),
            transition(30, 0, "healthy"),
            transition(20, 1, "healthy"),
            transition(1, 0, "degraded"),
            endstate_store::NewEvent {
                systems: vec!["ret".into()],
                ..endstate_store::NewEvent::new(now - 50 * hour, "note.added", "an old note")
            },
        ])
        .await
        .unwrap();
    let summaries = || async {
        server
            .client()
            .timeline(&TimelineQuery {
                system: None,
                kind: Some("instance.,note.".into()),
                ..TimelineQuery::default()
            })
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|e| e.summary)
            .collect::<Vec<_>>()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = summaries().await;
        if left.len() == 4 {
            assert_eq!(
                left,
                // Newest first by position on the timeline (the note was appended last).
                [
                    "an old note",
                    "#0 degraded 1h ago",
                    "#1 healthy 20h ago",
                    "#0 healthy 30h ago",
                ]
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not compacted: {left:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The deletions are visible before the event that reports them is appended.
    let compacted = loop {
        let compacted = server
            .client()
            .timeline(&TimelineQuery {
                kind: Some("timeline.compacted".into()),
                ..TimelineQuery::default()
            })
            .await
            .unwrap()
            .items;
        if !compacted.is_empty() || tokio::time::Instant::now() >= deadline {
            break compacted;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(compacted.len(), 1, "{compacted:#?}");
    assert!(
        compacted[0].summary.contains("2 instance. older than 2h00m"),
        "{}",
        compacted[0].summary
    );
    server.stop().await;
}
