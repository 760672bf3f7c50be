//! `GET /v1/why`: what changed right before, through the API, from events appended to the store.

use endstate_store::{NewEvent, Store};
use endstate_types::ChangeId;

use crate::TestServer;
use crate::describe::with_instances;
use crate::history::instance_event;

const MINUTE_MS: i64 = 60_000;

fn event(at_ms: i64, kind: &str, systems: &[&str], host: Option<&str>, summary: &str) -> NewEvent {
    NewEvent {
        systems: systems.iter().map(|s| (*s).to_string()).collect(),
        host: host.map(str::to_string),
        actor: Some("alice".into()),
        ..NewEvent::new(at_ms, kind, summary)
    }
}

#[tokio::test]
async fn why_ranks_what_changed_before_an_instance_failed() {
    let server = TestServer::start().await;
    let client = server.client();
    with_instances(&server, &client).await;
    let now = jiff::Timestamp::now().as_millisecond();
    // cache/memo#0 was healthy, failed 30 minutes ago, and is healthy again (with_instances
    // recorded it healthy a second ago).
    let failed = now - 30 * MINUTE_MS;
    let mut change = event(
        failed - 2 * MINUTE_MS,
        "change.wave_started",
        &["cache"],
        None,
        "change 9: wave 1/2 started",
    );
    change.change = Some(ChangeId(9));
    let mut run = event(
        failed - 20 * MINUTE_MS,
        "action.finished",
        &["cache"],
        None,
        "run-3 of flush finished",
    );
    run.data = endstate_events::Event::ActionFinished(endstate_events::ActionFinished {
        run: "run-3".into(),
        action: "flush".into(),
        state: "succeeded".into(),
        hosts: None,
    })
    .data();
    let events = vec![
        instance_event(now - 3 * 60 * MINUTE_MS, 0, "healthy"),
        // Before the default window of 1 hour: only seen with a longer window.
        event(failed - 2 * 60 * MINUTE_MS, "note.added", &["cache"], None, "old note"),
        run,
        event(
            failed - 5 * MINUTE_MS,
            "note.added",
            &["payments"],
            None,
            "unrelated system",
        ),
        event(
            failed - 10 * MINUTE_MS,
            "host.facts_changed",
            &[],
            Some("h-a"),
            "h-a kernel 6.1 -> 6.2",
        ),
        change,
        // After the moment: not a suspect.
        event(failed + MINUTE_MS, "note.added", &["cache"], None, "after"),
        instance_event(failed, 0, "unhealthy"),
    ];
    server.store.append_events(events).await.unwrap();

    let why = client.why("cache/memo#0@h-a", None, None).await.unwrap();
    assert_eq!(
        (why.target.as_str(), why.kind.as_str()),
        ("cache/memo#0@h-a", "instance")
    );
    // Compared as times: the server writes milliseconds with three digits, jiff trims zeros.
    assert_eq!(
        why.at.parse::<jiff::Timestamp>().unwrap().as_millisecond(),
        failed,
        "the moment is when it turned unhealthy: {why:#?}"
    );
    assert!(why.at_reason.contains("recovered since"), "{}", why.at_reason);
    assert_eq!(why.systems, ["cache"]);
    assert_eq!(why.hosts, ["h-a"]);
    let shown: Vec<(&str, &str)> = why
        .suspects
        .iter()
        .map(|s| (s.summary.as_str(), s.reason.as_str()))
        .collect();
    assert_eq!(
        shown,
        [
            (
                "change 9: wave 1/2 started",
                "change 9, in progress then (change.wave_started), 2m00s before, on cache, the target's system"
            ),
            (
                "h-a kernel 6.1 -> 6.2",
                "a host event (host.facts_changed), 10m00s before, on h-a, the target's host"
            ),
            (
                "run-3 of flush finished",
                "action run run-3 (action.finished), 20m00s before, on cache, the target's system"
            ),
        ],
        "{why:#?}"
    );

    // A longer window reaches the old note; an explicit moment moves the window.
    let wide = client.why("cache/memo#0@h-a", None, Some("3h")).await.unwrap();
    assert!(wide.suspects.iter().any(|s| s.summary == "old note"), "{wide:#?}");
    let at = jiff::Timestamp::from_millisecond(failed - 15 * MINUTE_MS)
        .unwrap()
        .to_string();
    let earlier = client.why("cache/memo#0@h-a", Some(&at), None).await.unwrap();
    assert_eq!(earlier.at_reason, "as given");
    let summaries: Vec<&str> = earlier.suspects.iter().map(|s| s.summary.as_str()).collect();
    assert_eq!(summaries, ["run-3 of flush finished"]);

    // The system's aggregate looks at its subsystems too.
    let storefront = client.why("storefront", Some(&why.at), None).await.unwrap();
    assert_eq!(storefront.kind, "system");
    assert_eq!(storefront.systems, ["storefront", "cache"]);
    let first = &storefront.suspects[0];
    assert!(first.reason.ends_with("on cache, a subsystem"), "{storefront:#?}");
    server.stop().await;
}

#[tokio::test]
async fn bad_input_to_why_is_named_by_field() {
    let server = TestServer::start().await;
    let client = server.client();
    with_instances(&server, &client).await;
    for (target, at, window, field, needle) in [
        ("cache/memo@h-a", None, None, "target", "system:NAME"),
        ("host:Bad Name", None, None, "target", "host"),
        (
            "cache",
            Some("yesterday-ish"),
            None,
            "at",
            "neither an RFC 3339 time nor a duration",
        ),
        ("cache", Some("2999-01-01T00:00:00Z"), None, "at", "in the future"),
        ("cache", None, Some("40d"), "window", "between 1s and 30d"),
        ("cache", None, Some("soon"), "window", "not a duration"),
    ] {
        let error = client.why(target, at, window).await.unwrap_err();
        let problem = error.problem().unwrap();
        assert_eq!(problem.status, 422, "{target}: {problem:?}");
        assert_eq!(problem.errors[0].field, field, "{problem:?}");
        assert!(problem.errors[0].message.contains(needle), "{problem:?}");
    }
    let missing = server.get("/v1/why").await;
    assert_eq!(missing.status(), 422);
    let limit = server.get("/v1/why?target=cache&limit=0").await;
    assert_eq!(limit.status(), 422);
    for (target, needle) in [("nowhere", "system \"nowhere\""), ("host:nowhere", "host \"nowhere\"")] {
        let error = client.why(target, None, None).await.unwrap_err();
        let problem = error.problem().unwrap();
        assert_eq!(problem.status, 404, "{target}: {problem:?}");
        assert!(problem.detail.contains(needle), "{target}: {problem:?}");
    }
    server.stop().await;
}
