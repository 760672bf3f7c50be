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
    assert_eq!(alerts[0]["key"]["check"], "alertmanager/HighErrorRate");
    assert_eq!(alerts[0]["key"]["target"], "web-1:9100");
    assert_eq!(alerts[0]["status"], "critical");
    assert_eq!(alerts[0]["message"], "5% of requests fail on web-1");
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
        assert_eq!(response.status(), 400);
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
        if let Some(alert) = alerts.iter().find(|a| a["key"]["check"] == "endstate/keepalive") {
            break alert.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{alerts:#?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(keepalive["key"]["target"], "web-1");
    assert_eq!(keepalive["status"], "critical");

    // What fails on the down host does not page on its own.
    let mut about_it = payload("firing", "critical");
    about_it["alerts"][0]["labels"]["endstate_host"] = "web-1".into();
    assert_eq!(post(&server, &about_it).await.status(), 200);
    let alerts = server.client().alerts().await.unwrap();
    let consequence = alerts
        .iter()
        .find(|a| a["key"]["check"] == "alertmanager/HighErrorRate")
        .unwrap();
    assert_eq!(consequence["consequence_of"], "host web-1 is down", "{consequence:#?}");
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
        .any(|a| a["key"]["check"] == "endstate/keepalive")
    {
        assert!(tokio::time::Instant::now() < deadline, "the keepalive alert stays open");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    server.stop().await;
}

/// A `check` observation of the disk check on `web-1`.
fn disk_result(seq: u64, status: u8, output: &str, perfdata: &str) -> endstate_agent_proto::Observation {
    endstate_agent_proto::Observation {
        seq,
        at_unix_ms: u64::try_from(crate::fake_agent::now_ms()).unwrap(),
        observed: endstate_agent_proto::Observed::Check(endstate_agent_proto::CheckResult {
            name: "platform/disk".into(),
            target: "web-1".into(),
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
    assert_eq!((kept["id"].as_u64(), removed["id"].as_u64()), (Some(1), Some(2)));
    client.unsilence(2).await.unwrap();

    // The same store behind a new server.
    let (store, admin) = (server.store.clone(), server.admin.clone());
    server.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let restarted = endstate_server::Server::with_store(store, &endstate_server::ServerConfig::new(dir.path()))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        restarted
            .serve(listener, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    let client = endstate_client::Client::new(&url, &admin).unwrap();
    let silences = client.silences().await.unwrap();
    assert_eq!(silences.len(), 1, "{silences:#?}");
    assert_eq!(silences[0]["host"], "h1");
    // Numbers are not reused.
    assert_eq!(client.silence(&silence("h3")).await.unwrap()["id"], 3);
    let _ = stop.send(());
    task.await.unwrap();
}
