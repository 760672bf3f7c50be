//! `GET /v1/history`: "always broken, or did it just happen?" through the API, from events
//! appended to the store.

use endstate_store::{NewEvent, Store};

use crate::TestServer;
use crate::describe::with_instances;

const HOUR_MS: i64 = 3_600_000;

fn share(view: &endstate_api::HistoryView, window: &str) -> Option<f64> {
    view.unhealthy.iter().find(|s| s.window == window).unwrap().percent
}

fn host_event(at_ms: i64, reachable: bool) -> NewEvent {
    let kind = if reachable {
        "host.reachable"
    } else {
        "host.unreachable"
    };
    NewEvent {
        host: Some("h-a".into()),
        actor: Some("server".into()),
        ..NewEvent::new(at_ms, kind, format!("h-a {kind}"))
    }
}

/// A transition of `cache/memo#slot` on h-a.
pub(crate) fn instance_event(at_ms: i64, slot: u32, status: &str) -> NewEvent {
    NewEvent {
        systems: vec!["cache".into()],
        host: Some("h-a".into()),
        component: Some("cache/memo".into()),
        actor: Some("agent:h-a".into()),
        ..NewEvent::of(
            at_ms,
            &endstate_events::Event::InstanceTransitioned(endstate_events::InstanceTransitioned {
                slot,
                version: Some("1.0".into()),
                status: status.into(),
                state: "running".into(),
                previous_state: None,
                previous_status: None,
                desired: None,
            }),
            format!("memo#{slot} {status}"),
        )
    }
}

#[tokio::test]
async fn history_of_a_host_and_an_instance_from_the_timeline() {
    let server = TestServer::start().await;
    let client = server.client();
    with_instances(&server, &client).await;
    let now = jiff::Timestamp::now().as_millisecond();
    // The host: reachable 40 days ago (before the window), unreachable 3 days ago for 24 hours,
    // then flapping in the last hour and unreachable for the last 5 minutes.
    let minute = 60_000;
    let mut events = vec![
        host_event(now - 40 * 24 * HOUR_MS, true),
        host_event(now - 72 * HOUR_MS, false),
        host_event(now - 48 * HOUR_MS, true),
    ];
    for (idx, reachable) in [false, true, false, true, false].into_iter().enumerate() {
        events.push(host_event(now - (45 - 10 * idx as i64) * minute, reachable));
    }
    // An instance: healthy 10 hours ago, unhealthy for the last 2.5 hours (with a sample of
    // another slot in between, which is not its history).
    events.push(instance_event(now - 10 * HOUR_MS, 1, "healthy"));
    events.push(instance_event(now - 9 * HOUR_MS, 0, "unhealthy"));
    events.push(instance_event(now - 5 * HOUR_MS / 2, 1, "unhealthy"));
    server.store.append_events(events).await.unwrap();

    let host = client.history("host:h-a").await.unwrap();
    assert_eq!((host.target.as_str(), host.kind.as_str()), ("host:h-a", "host"));
    assert_eq!(host.current, "unreachable");
    assert!(host.failing);
    assert!(host.flapping, "{host:?}");
    assert_eq!(host.flips_last_hour, 5);
    assert_eq!(host.transitions, 7, "the event before the window is not counted");
    assert_eq!(host.label, "new");
    // 30 days: 24 h + 10 + 10 + 5 min unreachable of 720 h (the state before the window counts).
    let failing_min = 24.0 * 60.0 + 25.0;
    let expected = |hours: f64| (failing_min / (hours * 60.0) * 10_000.0).round() / 100.0;
    assert_eq!(share(&host, "30d"), Some(expected(720.0)));
    assert_eq!(share(&host, "7d"), Some(expected(168.0)));
    // 24 h: only the flapping: 10 + 10 + 5 minutes (about 1.74%, with a few ms of slack).
    let day = share(&host, "24h").unwrap();
    assert!((day - 25.0 / 1440.0 * 100.0).abs() < 0.01, "{day}");
    assert!(host.first_failed.is_some());

    // Slot 1: known for 10 hours, failing for the last 2.5: 25%, new.
    let instance = client.history("cache/memo#1@h-a").await.unwrap();
    assert_eq!(instance.kind, "instance");
    assert_eq!(instance.current, "unhealthy");
    assert!(instance.failing && !instance.flapping);
    // with_instances recorded slot 1 unhealthy a second ago: that is the latest sample.
    assert_eq!(instance.transitions, 3);
    let day = share(&instance, "24h").unwrap();
    assert!((day - 25.0).abs() < 0.01, "{instance:?}");
    assert_eq!(instance.label, "new");

    server.stop().await;
}

#[tokio::test]
async fn bad_and_unknown_targets_are_clear_errors() {
    let server = TestServer::start().await;
    let client = server.client();
    with_instances(&server, &client).await;
    for target in ["h-a", "cache/memo@h-a", "cache/memo#one@h-a", "host:Bad Name"] {
        let error = client.history(target).await.unwrap_err();
        let problem = error.problem().unwrap();
        assert_eq!(problem.status, 422, "{target}: {problem:?}");
        assert_eq!(problem.errors[0].field, "target");
    }
    let error = client.history("h-a").await.unwrap_err();
    assert!(
        error.problem().unwrap().errors[0]
            .message
            .contains("system/component#slot@host"),
        "{error}"
    );
    let missing = server.get("/v1/history").await;
    assert_eq!(missing.status(), 422);
    for (target, needle) in [
        ("host:nowhere", "host \"nowhere\""),
        ("cache/memo#7@h-a", "cache/memo#7@h-a"),
        ("cache/memo#0@nowhere", "cache/memo#0@nowhere"),
    ] {
        let error = client.history(target).await.unwrap_err();
        let problem = error.problem().unwrap();
        assert_eq!(problem.status, 404, "{target}: {problem:?}");
        assert!(problem.detail.contains(needle), "{target}: {problem:?}");
    }
    // A known host without events yet: unknown, not an error.
    let quiet = client.history("host:h-a").await.unwrap();
    assert_eq!((quiet.current.as_str(), quiet.label.as_str()), ("unknown", "ok"));
    assert_eq!(share(&quiet, "24h"), None);
    server.stop().await;
}

/// A check's history on one host: its `check.status` results (warning and critical fail).
#[tokio::test]
async fn history_of_a_check_on_a_host() {
    let server = TestServer::start().await;
    let client = server.client();
    with_instances(&server, &client).await;
    let now = jiff::Timestamp::now().as_millisecond();
    let status = |ago_ms: i64, check: &str, to: &str| NewEvent {
        systems: vec!["cache".into()],
        host: Some("h-a".into()),
        actor: Some("agent:h-a".into()),
        ..NewEvent::of(
            now - ago_ms,
            &endstate_events::Event::CheckStatus(endstate_events::CheckStatus {
                check: check.into(),
                target: "cache/memo#0@h-a".into(),
                from: None,
                to: to.into(),
                message: String::new(),
                perfdata: String::new(),
            }),
            format!("{check} {to}"),
        )
    };
    server
        .store
        .append_events(vec![
            status(4 * HOUR_MS, "cache/memo-port", "ok"),
            status(2 * HOUR_MS, "cache/memo-port", "critical"),
            // Another check of the same system is not this one's history.
            status(HOUR_MS, "cache/other", "ok"),
        ])
        .await
        .unwrap();
    let check = client.history("check:cache/memo-port@h-a").await.unwrap();
    assert_eq!(
        (check.target.as_str(), check.kind.as_str()),
        ("check:cache/memo-port@h-a", "check")
    );
    assert_eq!(check.current, "critical");
    assert!(check.failing);
    assert_eq!(check.transitions, 2);
    assert!((share(&check, "24h").unwrap() - 50.0).abs() < 0.01, "{check:?}");
    let error = client.history("check:cache/never@h-a").await.unwrap_err();
    assert_eq!(error.problem().unwrap().status, 404, "{error}");
    server.stop().await;
}
