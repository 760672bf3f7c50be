//! Alertmanager's webhook payload, posted to a real server: its alerts become endstate alerts,
//! on the list and on the timeline of the system they name, and resolve the same way.

use endstate_client::TimelineQuery;

use crate::TestServer;

fn payload(status: &str, severity: &str) -> serde_json::Value {
    serde_json::json!({
        "version": "4",
        "groupKey": "{}:{alertname=\"HighErrorRate\"}",
        "status": status,
        "receiver": "endstate",
        "groupLabels": { "alertname": "HighErrorRate" },
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example:9093",
        "alerts": [{
            "status": status,
            "labels": { "alertname": "HighErrorRate", "instance": "web-1:9100", "severity": severity, "system": "storefront" },
            "annotations": { "summary": "5% of requests fail on web-1" },
            "startsAt": "2026-11-22T10:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus.example:9090/graph",
            "fingerprint": "c0ffee"
        }]
    })
}

async fn post(server: &TestServer, body: &serde_json::Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/v1/alertmanager", server.url))
        .bearer_auth(&server.admin)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn kinds(server: &TestServer) -> Vec<(String, String)> {
    let page = server
        .client()
        .timeline(&TimelineQuery {
            kind: Some("alert.".into()),
            system: Some("storefront".into()),
            ..TimelineQuery::default()
        })
        .await
        .unwrap();
    page.items.into_iter().map(|e| (e.kind, e.summary)).collect()
}

#[tokio::test]
async fn an_alertmanager_alert_is_an_endstate_alert_until_it_resolves() {
    let server = TestServer::start().await;
    let response = post(&server, &payload("firing", "critical")).await;
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    let alerts = server.client().alerts().await.unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0].key.check, "alertmanager/HighErrorRate");
    assert_eq!(alerts[0].key.target, "web-1:9100");
    assert_eq!(alerts[0].status, "critical");
    assert_eq!(alerts[0].message, "5% of requests fail on web-1");
    let seen = kinds(&server).await;
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0].0, "alert.opened");
    assert!(
        seen[0].1.contains("alertmanager/HighErrorRate on web-1:9100: critical"),
        "{seen:#?}"
    );

    // Sent again (Alertmanager repeats), nothing new; resolved, it closes.
    post(&server, &payload("firing", "critical")).await;
    assert_eq!(kinds(&server).await.len(), 1);
    post(&server, &payload("resolved", "critical")).await;
    assert!(server.client().alerts().await.unwrap().is_empty());
    let seen = kinds(&server).await;
    assert_eq!(
        seen.first().map(|(k, _)| k.as_str()),
        Some("alert.resolved"),
        "{seen:#?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_malformed_alertmanager_payload_is_refused_by_field() {
    let server = TestServer::start().await;
    for (body, field) in [
        (serde_json::json!({ "version": "4" }), "alerts"),
        (
            serde_json::json!({ "alerts": [{ "status": "firing", "labels": {} }] }),
            "alerts[0].labels.alertname",
        ),
        (
            serde_json::json!({ "alerts": [{ "status": "odd", "labels": { "alertname": "A" } }] }),
            "alerts[0].status",
        ),
    ] {
        let response = post(&server, &body).await;
        assert_eq!(response.status(), 422);
        let problem: endstate_api::Problem = response.json().await.unwrap();
        assert_eq!(problem.errors[0].field, field, "{problem:?}");
    }
    assert!(
        server.client().alerts().await.unwrap().is_empty(),
        "nothing half-stored"
    );
    let unauthenticated = reqwest::Client::new()
        .post(format!("{}/v1/alertmanager", server.url))
        .json(&payload("firing", "critical"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
    server.stop().await;
}

#[tokio::test]
async fn a_host_that_goes_down_alerts_once_and_what_fails_on_it_is_a_consequence() {
    crate::fake_agent::install_crypto();
    let server =
        TestServer::start_with_agents(|config| config.agents.keepalive_interval = std::time::Duration::from_secs(10))
            .await;
    let identity = crate::fake_agent::enrol(&server, "web-1", &[]).await;
    let agent = crate::fake_agent::FakeAgent::join(&identity).await;
    crate::fake_agent::wait_for_liveness(&server, "web-1", "reachable").await;
    assert!(
        server.client().alerts().await.unwrap().is_empty(),
        "a reachable host raises nothing"
    );

    agent.close().await;
    crate::fake_agent::wait_for_liveness(&server, "web-1", "unreachable").await;
    let deadline = tokio::time::Instant::now() + crate::fake_agent::WAIT;
    let keepalive = loop {
        let alerts = server.client().alerts().await.unwrap();
        if let Some(alert) = alerts.iter().find(|a| a.key.check == "endstate/keepalive") {
            break alert.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{alerts:#?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(keepalive.key.target, "web-1");
    assert_eq!(keepalive.status, "critical");

    // What fails on the down host does not page on its own.
    let mut about_it = payload("firing", "critical");
    about_it["alerts"][0]["labels"]["endstate_host"] = "web-1".into();
    assert_eq!(post(&server, &about_it).await.status(), 200);
    let alerts = server.client().alerts().await.unwrap();
    let consequence = alerts
        .iter()
        .find(|a| a.key.check == "alertmanager/HighErrorRate")
        .unwrap();
    assert_eq!(
        consequence.consequence_of.as_deref().unwrap(),
        "host web-1 is down",
        "{consequence:#?}"
    );
    let suppressed = kinds(&server).await;
    assert!(
        suppressed
            .iter()
            .any(|(k, s)| k == "alert.suppressed" && s.contains("a consequence: host web-1 is down")),
        "{suppressed:#?}"
    );

    // Back, the keepalive alert resolves.
    let _agent = crate::fake_agent::FakeAgent::join(&identity).await;
    crate::fake_agent::wait_for_liveness(&server, "web-1", "reachable").await;
    let deadline = tokio::time::Instant::now() + crate::fake_agent::WAIT;
    while server
        .client()
        .alerts()
        .await
        .unwrap()
        .iter()
        .any(|a| a.key.check == "endstate/keepalive")
    {
        assert!(tokio::time::Instant::now() < deadline, "the keepalive alert stays open");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    server.stop().await;
}

/// A `check` observation of the disk check on `web-1`.
fn disk_result(seq: u64, status: u8, output: &str, perfdata: &str) -> endstate_agent_proto::Observation {
    check_result(seq, "platform/disk", "web-1", status, output, perfdata)
}

/// A `check` observation of `check` on `target`, now.
fn check_result(
    seq: u64,
    check: &str,
    target: &str,
    status: u8,
    output: &str,
    perfdata: &str,
) -> endstate_agent_proto::Observation {
    endstate_agent_proto::Observation {
        seq,
        at_unix_ms: u64::try_from(crate::fake_agent::now_ms()).unwrap(),
        observed: endstate_agent_proto::Observed::Check(endstate_agent_proto::CheckResult {
            name: check.into(),
            target: target.into(),
            duration_ms: 15,
            status,
            output: output.into(),
            perfdata: perfdata.into(),
        }),
    }
}

#[tokio::test]
async fn agent_check_results_become_statuses_alerts_and_metrics() {
    crate::fake_agent::install_crypto();
    let server =
        TestServer::start_with_agents(|config| config.agents.keepalive_interval = std::time::Duration::from_secs(10))
            .await;
    let identity = crate::fake_agent::enrol(&server, "web-1", &[]).await;
    let mut agent = crate::fake_agent::FakeAgent::join(&identity).await;
    let send = |results: Vec<endstate_agent_proto::Observation>| {
        endstate_agent_proto::FromAgent::Observations(endstate_agent_proto::Observations { observations: results })
    };
    agent
        .send(&send(vec![disk_result(
            1,
            0,
            "DISK OK - free 60%",
            "/=40%;80;90;0;100",
        )]))
        .await;
    // One warning is soft; the second in a row opens the alert.
    agent
        .send(&send(vec![disk_result(
            2,
            1,
            "DISK WARNING - free 15%",
            "/=85%;80;90;0;100",
        )]))
        .await;
    let statuses = crate::fake_agent::wait_for_event(&server, "check.status", Some("web-1"), |e| {
        e.summary.contains("ok -> warning")
    })
    .await;
    assert!(
        statuses.summary.contains("check platform/disk on web-1"),
        "{statuses:?}"
    );
    assert!(
        server.client().alerts().await.unwrap().is_empty(),
        "one warning is soft"
    );
    agent
        .send(&send(vec![disk_result(
            3,
            1,
            "DISK WARNING - free 14%",
            "/=86%;80;90;0;100",
        )]))
        .await;
    let opened = crate::fake_agent::wait_for_event(&server, "alert.opened", Some("web-1"), |_| true).await;
    assert!(
        opened.summary.contains("warning: DISK WARNING - free 14%"),
        "{opened:?}"
    );

    // The last status and performance data, for Prometheus.
    let metrics = reqwest::Client::new()
        .get(format!("{}/metrics", server.url))
        .bearer_auth(&server.admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"endstate_check_status{check="platform/disk",target="web-1"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"endstate_check_perfdata{check="platform/disk",target="web-1",label="/",unit="%"} 86"#),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn silences_survive_a_restart_and_removed_ones_stay_removed() {
    let server = TestServer::start().await;
    let client = server.client();
    let silence = |host: &str| endstate_api::CreateSilence {
        host: Some(host.into()),
        until: "2h".into(),
        reason: format!("work on {host}"),
        ..endstate_api::CreateSilence::default()
    };
    let kept = client.silence(&silence("h1")).await.unwrap();
    let removed = client.silence(&silence("h2")).await.unwrap();
    assert_eq!((Some(kept.id), Some(removed.id)), (Some(1), Some(2)));
    client.unsilence(2).await.unwrap();

    // The same data directory behind a new server. (Keeping only the store object while the
    // test server's directory was deleted made reads that open a new connection fail: the
    // intermittent 500 "the store failed" this test used to see.)
    let server = server.restart().await;
    let client = server.client();
    let silences = client.silences().await.unwrap();
    assert_eq!(silences.len(), 1, "{silences:#?}");
    assert_eq!(silences[0].host.as_deref().unwrap(), "h1");
    // Numbers are not reused.
    assert_eq!(client.silence(&silence("h3")).await.unwrap().id, 3);
    server.stop().await;
}

#[tokio::test]
async fn an_open_alert_survives_a_restart_acknowledged_and_does_not_open_again() {
    crate::fake_agent::install_crypto();
    let server =
        TestServer::start_with_agents(|config| config.agents.keepalive_interval = std::time::Duration::from_secs(10))
            .await;
    let identity = crate::fake_agent::enrol(&server, "web-1", &[]).await;
    let mut agent = crate::fake_agent::FakeAgent::join(&identity).await;
    let send = |results: Vec<endstate_agent_proto::Observation>| {
        endstate_agent_proto::FromAgent::Observations(endstate_agent_proto::Observations { observations: results })
    };
    for seq in 1..=2 {
        agent
            .send(&send(vec![disk_result(seq, 2, "DISK CRITICAL - free 4%", "")]))
            .await;
    }
    crate::fake_agent::wait_for_event(&server, "alert.opened", Some("web-1"), |_| true).await;
    server
        .client()
        .ack("platform/disk", "web-1", "ordering a bigger disk")
        .await
        .unwrap();
    let before = server.client().alerts().await.unwrap();
    assert_eq!(before.len(), 1, "{before:#?}");
    drop(agent);

    let server = server.restart().await;
    let alerts = server.client().alerts().await.unwrap();
    assert_eq!(alerts.len(), 1, "the open alert is taken back: {alerts:#?}");
    let kept = |a: &endstate_api::AlertView| (a.key.clone(), a.status.clone(), a.opened_ms, a.acked.clone());
    assert_eq!(kept(&alerts[0]), kept(&before[0]), "{alerts:#?}");
    assert_eq!(alerts[0].acked.as_ref().unwrap().comment, "ordering a bigger disk");

    // Still failing after the restart: no second alert; a change of severity is a change of
    // the same alert; OK resolves it.
    let moved = crate::fake_agent::Identity {
        agent_url: server.agent_url.clone().unwrap(),
        ..identity
    };
    let mut agent = crate::fake_agent::FakeAgent::join(&moved).await;
    agent
        .send(&send(vec![disk_result(3, 2, "DISK CRITICAL - free 3%", "")]))
        .await;
    agent
        .send(&send(vec![disk_result(4, 1, "DISK WARNING - free 12%", "")]))
        .await;
    let changed = crate::fake_agent::wait_for_event(&server, "alert.changed", Some("web-1"), |_| true).await;
    assert!(changed.summary.contains("warning: DISK WARNING"), "{changed:?}");
    agent
        .send(&send(vec![disk_result(5, 0, "DISK OK - free 60%", "")]))
        .await;
    crate::fake_agent::wait_for_event(&server, "alert.resolved", Some("web-1"), |_| true).await;
    let opened = crate::fake_agent::events(&server, "alert.opened", Some("web-1")).await;
    assert_eq!(opened.len(), 1, "opened once, before the restart: {opened:#?}");
    assert!(server.client().alerts().await.unwrap().is_empty());

    // Resolved, it stays resolved across another restart.
    drop(agent);
    let server = server.restart().await;
    assert!(server.client().alerts().await.unwrap().is_empty());
    server.stop().await;
}

/// An Alertmanager payload of one firing alert on `instance` of `system`.
fn firing(instance: &str, system: &str) -> serde_json::Value {
    let mut body = payload("firing", "critical");
    body["alerts"][0]["labels"]["instance"] = instance.into();
    body["alerts"][0]["labels"]["system"] = system.into();
    body
}

#[tokio::test]
async fn open_alerts_are_acknowledged_and_annotated_in_bulk_by_filter() {
    let server = TestServer::start().await;
    for (instance, system) in [
        ("web-1:9100", "storefront"),
        ("web-2:9100", "storefront"),
        ("db-1:9100", "payments"),
    ] {
        let response = post(&server, &firing(instance, system)).await;
        assert_eq!(response.status(), 200, "{:?}", response.text().await);
    }
    let client = server.client();
    let bulk = |system: Option<&str>, all: bool, acknowledge: bool, comment: &str| endstate_api::BulkAlerts {
        system: system.map(String::from),
        all,
        acknowledge,
        comment: comment.into(),
        ..endstate_api::BulkAlerts::default()
    };

    // A note on storefront's two, then both acknowledged; payments' is left alone.
    let noted = client
        .bulk_alerts(&bulk(
            Some("storefront"),
            false,
            false,
            "the load balancer was drained at 10:02",
        ))
        .await
        .unwrap();
    assert_eq!(noted.matched, 2, "{noted:#?}");
    let acked = client
        .bulk_alerts(&bulk(
            Some("storefront"),
            false,
            true,
            "INC-42: rolling back the LB config",
        ))
        .await
        .unwrap();
    assert_eq!(acked.matched, 2, "{acked:#?}");
    let by_target = |alerts: &[endstate_api::AlertView], target: &str| {
        alerts
            .iter()
            .find(|a| a.key.target == target)
            .cloned()
            .unwrap_or_else(|| panic!("{target} in {alerts:#?}"))
    };
    let alerts = client.alerts().await.unwrap();
    for target in ["web-1:9100", "web-2:9100"] {
        let alert = by_target(&alerts, target);
        assert_eq!(
            alert.acked.as_ref().unwrap().comment,
            "INC-42: rolling back the LB config",
            "{alert:#?}"
        );
        assert_eq!(
            alert.notes[0].comment, "the load balancer was drained at 10:02",
            "{alert:#?}"
        );
    }
    assert!(by_target(&alerts, "db-1:9100").acked.is_none());
    let events = |kind: &str| {
        let client = server.client();
        let kind = kind.to_owned();
        async move {
            client
                .timeline(&TimelineQuery {
                    kind: Some(kind),
                    ..TimelineQuery::default()
                })
                .await
                .unwrap()
                .items
        }
    };
    assert_eq!(events("alert.annotated").await.len(), 2);
    assert_eq!(events("alert.acknowledged").await.len(), 2);

    // No filter is refused, naming what to give; a blank comment too.
    for (request, field) in [
        (bulk(None, false, true, "x"), "all"),
        (bulk(Some("storefront"), true, true, "x"), "all"),
        (bulk(Some("storefront"), false, true, "  "), "comment"),
    ] {
        let error = client.bulk_alerts(&request).await.unwrap_err().to_string();
        assert!(error.contains(field), "{request:?}: {error}");
    }
    let nothing = client
        .bulk_alerts(&bulk(Some("nowhere"), false, true, "x"))
        .await
        .unwrap();
    assert_eq!(nothing.matched, 0);

    // Every open alert, then a restart: acknowledgements and notes are kept.
    let everything = client.bulk_alerts(&bulk(None, true, true, "all hands")).await.unwrap();
    assert_eq!(everything.matched, 3, "{everything:#?}");
    let server = server.restart().await;
    let alerts = server.client().alerts().await.unwrap();
    assert_eq!(alerts.len(), 3, "{alerts:#?}");
    assert_eq!(
        by_target(&alerts, "db-1:9100").acked.as_ref().unwrap().comment,
        "all hands"
    );
    assert_eq!(
        by_target(&alerts, "web-1:9100").notes[0].comment,
        "the load balancer was drained at 10:02"
    );
    server.stop().await;
}

/// A ticket system on a free loopback port: answers every POST with the link of a new ticket;
/// counts them.
async fn ticket_system() -> (String, std::sync::Arc<std::sync::atomic::AtomicU32>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/tickets", listener.local_addr().unwrap());
    let opened = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = std::sync::Arc::clone(&opened);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut buf = vec![0; 64 * 1024];
            let _ = stream.read(&mut buf).await;
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            let body = format!(r#"{{"id": {n}, "url": "https://tickets.example/OPS-{n}"}}"#);
            let _ = stream
                .write_all(
                    format!(
                        "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .await;
        }
    });
    (url, opened)
}

fn script(dir: &std::path::Path, name: &str, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test]
async fn an_alert_opens_a_ticket_and_runs_command_handlers_whose_failures_are_on_the_timeline() {
    let (tickets, opened) = ticket_system().await;
    let scripts = tempfile::tempdir().unwrap();
    let out = scripts.path().to_owned();
    let pager = script(
        scripts.path(),
        "pager",
        &format!(
            "cat > {}/paged-$ENDSTATE_ALERT_REASON.json\necho \"paged for $ENDSTATE_ALERT_CHECK on $ENDSTATE_ALERT_TARGET ($ENDSTATE_ALERT_STATUS)\"",
            out.display()
        ),
    );
    let broken = script(scripts.path(), "broken", "echo 'no route to the pager' >&2\nexit 3");
    let server = TestServer::start_with(|config| {
        config.monitor.commands = vec![pager.clone(), broken.clone()];
        config.monitor.ticket_webhook = Some(tickets.clone());
    })
    .await;
    let response = post(&server, &payload("firing", "critical")).await;
    assert_eq!(response.status(), 200, "{:?}", response.text().await);

    let wait = |kind: &'static str, pick: fn(&endstate_api::EventView) -> bool| {
        let client = server.client();
        async move {
            for _ in 0..200 {
                let page = client
                    .timeline(&TimelineQuery {
                        kind: Some(kind.into()),
                        ..TimelineQuery::default()
                    })
                    .await
                    .unwrap();
                if let Some(found) = page.items.into_iter().find(&pick) {
                    return found;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            panic!("no {kind} event as expected");
        }
    };
    // The ticket: opened once, its link on the alert and the timeline.
    let ticket = wait("alert.ticket", |_| true).await;
    assert!(
        ticket.summary.contains("ticket https://tickets.example/OPS-1 opened"),
        "{ticket:?}"
    );
    let alerts = server.client().alerts().await.unwrap();
    assert_eq!(
        alerts[0].ticket.as_deref().unwrap(),
        "https://tickets.example/OPS-1",
        "{alerts:#?}"
    );

    // The handlers: one ran with the notification on stdin, one failed, saying how.
    let handled = wait("alert.handled", |e| e.data["reason"] == "opened").await;
    assert_eq!(
        handled.data["output"], "paged for alertmanager/HighErrorRate on web-1:9100 (critical)\n",
        "{handled:?}"
    );
    let stdin: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("paged-opened.json")).unwrap()).unwrap();
    assert_eq!(stdin["kind"], "endstate.alert");
    assert_eq!(stdin["alert"]["key"]["check"], "alertmanager/HighErrorRate");
    let failed = wait("alert.handler_failed", |_| true).await;
    assert!(failed.summary.contains("failed (opened): exit code 3"), "{failed:?}");
    assert_eq!(failed.data["output"], "no route to the pager\n");
    // The failure is on the alert too.
    let alerts = server.client().alerts().await.unwrap();
    assert!(
        alerts[0]
            .notify_failed
            .as_deref()
            .unwrap_or_default()
            .ends_with("broken: exit code 3"),
        "{alerts:#?}"
    );

    // The ticket survives a restart; resolving runs the handlers again, and opens no ticket.
    let server = server.restart().await;
    assert_eq!(
        server.client().alerts().await.unwrap()[0].ticket.as_deref().unwrap(),
        "https://tickets.example/OPS-1"
    );
    let response = post(&server, &payload("resolved", "critical")).await;
    assert_eq!(response.status(), 200);
    let wait_resolved = || {
        let client = server.client();
        async move {
            for _ in 0..200 {
                let page = client
                    .timeline(&TimelineQuery {
                        kind: Some("alert.handled".into()),
                        ..TimelineQuery::default()
                    })
                    .await
                    .unwrap();
                if page.items.iter().any(|e| e.data["reason"] == "resolved") {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            panic!("the handler did not run for the resolution");
        }
    };
    wait_resolved().await;
    assert!(out.join("paged-resolved.json").exists());
    assert_eq!(
        opened.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one ticket, for the opening"
    );
    server.stop().await;
}

const DEPENDS: &str = "apiVersion: endstate/v1
kind: System
name: payments
---
apiVersion: endstate/v1
kind: Component
name: api
system: payments
artifact: { version: '1', path: /opt/api }
command: bin/api
placement: { selector: { role: nowhere }, count: { total: 1 } }
---
apiVersion: endstate/v1
kind: System
name: shop
---
apiVersion: endstate/v1
kind: Component
name: web
system: shop
artifact: { version: '1', path: /opt/web }
command: bin/web
placement: { selector: { role: nowhere }, count: { total: 1 } }
depends_on: [payments/api]
";

/// An HTTP check's observation of `target`: OK (0) or not.
fn result_of(seq: u64, check: &str, target: &str, status: u8) -> endstate_agent_proto::Observation {
    let word = if status == 0 { "OK" } else { "CRITICAL" };
    check_result(seq, check, target, status, &format!("HTTP {word} on {target}"), "")
}

#[tokio::test]
async fn an_alert_of_a_system_whose_dependency_is_down_is_a_consequence_that_pages_nobody() {
    crate::fake_agent::install_crypto();
    let server =
        TestServer::start_with_agents(|config| config.agents.keepalive_interval = std::time::Duration::from_secs(10))
            .await;
    server
        .client()
        .submit(&crate::submit_request(&[("shop.yaml", DEPENDS)], "shop needs payments"))
        .await
        .unwrap();
    let identity = crate::fake_agent::enrol(&server, "web-1", &[]).await;
    let mut agent = crate::fake_agent::FakeAgent::join(&identity).await;
    let mut seq = 0;
    let mut send = |check: &str, target: &str, status: u8| {
        seq += 1;
        endstate_agent_proto::FromAgent::Observations(endstate_agent_proto::Observations {
            observations: vec![result_of(seq, check, target, status)],
        })
    };
    // payments/api fails: its alert opens and pages.
    for _ in 0..2 {
        agent.send(&send("payments/http", "payments/api#0@web-1", 2)).await;
    }
    crate::fake_agent::wait_for_event(&server, "alert.opened", Some("web-1"), |e| {
        e.data["key"]["check"] == "payments/http"
    })
    .await;
    // Then shop/web, which depends on it: a consequence, held back, saying of what.
    for _ in 0..2 {
        agent.send(&send("shop/http", "shop/web#0@web-1", 2)).await;
    }
    let held = crate::fake_agent::wait_for_event(&server, "alert.suppressed", Some("web-1"), |e| {
        e.data["key"]["check"] == "shop/http"
    })
    .await;
    assert!(
        held.summary.contains(
            "a consequence: shop/web depends on payments/api, whose check payments/http on payments/api#0@web-1 is critical"
        ),
        "{held:?}"
    );
    let alerts = server.client().alerts().await.unwrap();
    let shop = alerts.iter().find(|a| a.key.check == "shop/http").unwrap();
    assert!(
        shop.consequence_of
            .as_deref()
            .unwrap_or_default()
            .starts_with("shop/web depends on payments/api"),
        "{shop:#?}"
    );
    let payments = alerts.iter().find(|a| a.key.check == "payments/http").unwrap();
    assert!(
        payments.consequence_of.is_none(),
        "the cause is not a consequence: {payments:#?}"
    );

    // payments recovers; shop/web still failing is its own problem now and pages on its next change.
    agent.send(&send("payments/http", "payments/api#0@web-1", 0)).await;
    crate::fake_agent::wait_for_event(&server, "alert.resolved", Some("web-1"), |e| {
        e.data["key"]["check"] == "payments/http"
    })
    .await;
    agent.send(&send("shop/http", "shop/web#0@web-1", 1)).await;
    let changed = crate::fake_agent::wait_for_event(&server, "alert.changed", Some("web-1"), |e| {
        e.data["key"]["check"] == "shop/http"
    })
    .await;
    assert!(changed.data["consequence_of"].is_null(), "{changed:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_silence_planned_ahead_holds_only_from_its_start() {
    let server = TestServer::start().await;
    let client = server.client();
    let planned = client
        .silence(&endstate_api::CreateSilence {
            system: Some("storefront".into()),
            starts: Some("1h".into()),
            until: "3h".into(),
            reason: "database upgrade tonight".into(),
            ..endstate_api::CreateSilence::default()
        })
        .await
        .unwrap();
    let now = crate::fake_agent::now_ms();
    let starts = planned.starts_ms;
    assert!((now + 3_500_000..=now + 3_700_000).contains(&starts), "{planned:#?}");
    // Not yet: the alert opens and is not silenced.
    post(&server, &payload("firing", "critical")).await;
    let alerts = client.alerts().await.unwrap();
    assert!(alerts[0].silenced_by.is_none(), "{alerts:#?}");
    let created = kinds(&server).await;
    assert!(
        !created.iter().any(|(kind, _)| kind == "alert.suppressed"),
        "{created:#?}"
    );
    // Listed, saying from when.
    let listed = client.silences().await.unwrap();
    assert_eq!(listed.len(), 1);
    let timeline = client
        .timeline(&TimelineQuery {
            kind: Some("silence.created".into()),
            ..TimelineQuery::default()
        })
        .await
        .unwrap();
    assert!(timeline.items[0].summary.contains(", from "), "{:?}", timeline.items[0]);

    // A start after the end is refused, naming `starts`.
    let error = client
        .silence(&endstate_api::CreateSilence {
            system: Some("storefront".into()),
            starts: Some("3h".into()),
            until: "1h".into(),
            reason: "x".into(),
            ..endstate_api::CreateSilence::default()
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("starts") && error.contains("is not before until"),
        "{error}"
    );
    server.stop().await;
}

/// With the server's clock paused, a silence planned an hour ahead starts when the clock is
/// moved past its start and ends when it is moved past its end: hours of a silence's life in a
/// test that never sleeps.
#[tokio::test]
async fn a_paused_clock_moves_a_planned_silence_through_its_window_without_sleeping() {
    let clock = endstate_server::Clock::paused();
    let start = clock.now_ms();
    let server = TestServer::start_with(|config| config.clock = clock.clone()).await;
    let client = server.client();
    let planned = client
        .silence(&endstate_api::CreateSilence {
            system: Some("storefront".into()),
            starts: Some("1h".into()),
            until: "3h".into(),
            reason: "database upgrade tonight".into(),
            ..endstate_api::CreateSilence::default()
        })
        .await
        .unwrap();
    assert_eq!(Some(planned.starts_ms), Some(start + 3_600_000), "{planned:#?}");
    let id = planned.id;
    let silenced_by = || async {
        post(&server, &payload("firing", "critical")).await;
        let alerts = client.alerts().await.unwrap();
        assert_eq!(alerts.len(), 1, "{alerts:#?}");
        alerts[0].silenced_by
    };
    assert_eq!(silenced_by().await, None, "not before its start");
    clock.advance(std::time::Duration::from_secs(90 * 60));
    assert_eq!(silenced_by().await, Some(id), "inside its window");
    clock.advance(std::time::Duration::from_secs(2 * 3600));
    assert_eq!(silenced_by().await, None, "after its end");
    let expired = client
        .timeline(&TimelineQuery {
            kind: Some("silence.expired".into()),
            ..TimelineQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(expired.items.len(), 1, "{:?}", expired.items);
    assert_eq!(
        expired.items[0].time,
        jiff::Timestamp::from_millisecond(start + 3_600_000 * 7 / 2)
            .unwrap()
            .strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string(),
        "recorded at the paused clock's time"
    );
    server.stop().await;
}

/// More deliveries in a day than one page of the timeline holds. At start, the one queued first
/// and never recorded as sent is sent again, and none of those recorded is, even when their
/// outcomes were recorded in another order than they were queued (as concurrent sends finish),
/// so that an outcome sits on an older page than its delivery.
#[tokio::test]
async fn unfinished_deliveries_are_found_beyond_the_first_page() {
    use endstate_events::{Delivery, DeliverySubject, Event, Notified};
    use endstate_store::{NewEvent, Store};

    let receiver = endstate_testkit::webhook::Receiver::start();
    let url = receiver.url.clone();
    let server = TestServer::start_with(|config| config.monitor.webhooks = vec![url.clone()]).await;
    let now = jiff::Timestamp::now().as_millisecond();
    let id = |i: usize| format!("d_{i:05}");
    let queued = |i: usize, time: i64| {
        let delivery = Delivery {
            id: id(i),
            url: url.clone(),
            ticket: false,
            subject: DeliverySubject {
                system: "lab".into(),
                host: "h-1".into(),
                check: "lab/http".into(),
                target: "h-1".into(),
                reason: "opened".into(),
            },
            body: serde_json::json!({ "delivery": i }).to_string(),
        };
        NewEvent::of(
            time,
            &Event::AlertDeliveryQueued(delivery),
            format!("notification {} queued", id(i)),
        )
    };
    const SENT: usize = 1_500;
    let mut events = vec![queued(0, now - 60_000)];
    events.extend((1..=SENT).map(|i| queued(i, now - 50_000)));
    events.extend((1..=SENT).rev().map(|i| {
        let notified = Notified {
            url: url.clone(),
            delivery: id(i),
            reason: "opened".into(),
            check: "lab/http".into(),
            target: "h-1".into(),
            error: None,
        };
        NewEvent::of(now - 40_000, &Event::AlertNotified(notified), format!("{} sent", id(i)))
    }));
    server.store.append_events(events).await.unwrap();

    let server = server.restart().await;
    let client = server.client();
    let mut resent = false;
    for _ in 0..200 {
        let page = client
            .timeline(&TimelineQuery {
                kind: Some("alert.notified".into()),
                limit: Some(5),
                ..TimelineQuery::default()
            })
            .await
            .unwrap();
        if page.items.iter().any(|e| e.data["delivery"] == id(0)) {
            resent = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(resent, "the unfinished delivery was not sent again");
    // Sent oldest first: anything recorded would follow at once.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        receiver.received(),
        [serde_json::json!({ "delivery": 0 })],
        "only the unfinished delivery is sent again"
    );
    server.stop().await;
}
