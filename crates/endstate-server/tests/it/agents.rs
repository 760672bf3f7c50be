//! The agent link, end to end: enrolment over HTTP, then a scripted fake agent speaking the real
//! protocol over real mutual TLS (see [`crate::fake_agent`]), checked against what the server
//! answers on the link and shows through its API.

use std::collections::BTreeMap;
use std::time::Duration;

use endstate_agent_proto::{
    ActualState, DesiredInstances, FromAgent, FromServer, HealthResult, InstanceId, InstanceStateChange,
    InstanceStateWord, Logs, LogsRequest, Observation, Observations, Observed, Renew, SUPPORTED_VERSIONS, VersionRange,
    limits,
};
use endstate_api::{InstanceView, LogsView, Page};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::fake_agent::{
    FakeAgent, Identity, client_config, enrol, enrol_request, enrol_with, events, foreign_cert, hello, host_view,
    install_crypto, instance_state, join_token, now_ms, problem, wait_for_event, wait_for_liveness,
};
use crate::{TestServer, submit_request, wait_for_change};

const WEB: &str = "shop/web#0";

/// One component placed on the host labelled zone=a, with a dynamic port and the host's zone
/// rendered into its arguments.
const SHOP: &str = r#"apiVersion: endstate/v1
kind: System
name: shop
owners: [team-shop]
---
apiVersion: endstate/v1
kind: Component
name: web
system: shop
artifact: { version: "1.0", path: bin/svc }
command: svc
args: ["--listen", "127.0.0.1:{{ ports.http }}", "--zone", "{{ host.labels.zone }}"]
ports: [{ name: http }]
placement:
  selector: { zone: a }
  count: { total: 1 }
"#;

/// A server with an agent listener and a keepalive interval long enough (30 s to be declared
/// silent) that only what a test does changes a host's liveness.
async fn agent_server() -> TestServer {
    install_crypto();
    TestServer::start_with_agents(|config| config.agents.keepalive_interval = Duration::from_secs(10)).await
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn desired(message: FromServer) -> Option<DesiredInstances> {
    match message {
        FromServer::DesiredInstances(desired) => Some(desired),
        _ => None,
    }
}

fn empty_actual_state() -> FromAgent {
    FromAgent::ActualState(ActualState {
        generation: None,
        last_seq: 0,
        instances: Vec::new(),
    })
}

async fn count(server: &TestServer, kind: &str, host: &str) -> usize {
    events(server, kind, Some(host)).await.len()
}

async fn post_admin(server: &TestServer, path: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}{path}", server.url))
        .bearer_auth(&server.admin)
        .send()
        .await
        .unwrap()
}

/// `GET /v1/hosts/{host}/logs?instance=shop/web%230` in a task of its own, so the test can play
/// the agent meanwhile.
fn logs_call(server: &TestServer, host: &str) -> tokio::task::JoinHandle<reqwest::Response> {
    let url = format!("{}/v1/hosts/{host}/logs?instance=shop/web%230", server.url);
    let admin = server.admin.clone();
    tokio::spawn(async move {
        reqwest::Client::new()
            .get(url)
            .bearer_auth(admin)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .unwrap()
    })
}

async fn logs_request(agent: &mut FakeAgent) -> LogsRequest {
    agent
        .recv_until("a logs_request", |m| match m {
            FromServer::LogsRequest(request) => Some(request),
            _ => None,
        })
        .await
}

#[tokio::test]
async fn enrolment_issues_a_certificate_once_per_join_token() {
    let server = agent_server().await;
    let token = join_token(&server, json!({ "labels": { "zone": "a" } })).await;
    let identity = enrol_with(&server, &token, "web-1", &[("zone", "b"), ("role", "web")]).await;

    // The token's labels win over the ones the agent asked for.
    let expected = labels(&[("role", "web"), ("zone", "a")]);
    assert_eq!(identity.host, "web-1");
    assert_eq!(identity.labels, expected);
    assert_eq!(Some(&identity.agent_url), server.agent_url.as_ref());
    let cert = endstate_pki::verify_agent_cert(&identity.ca_pem, &identity.cert_pem, now_ms()).unwrap();
    assert_eq!(cert.host_name, "web-1");
    let view = host_view(&server, "web-1").await;
    assert_eq!(view.labels, expected);
    assert_eq!(view.liveness, "unknown", "enrolled, never connected");
    wait_for_event(&server, "agent.enrolled", Some("web-1"), |e| {
        e.data["serial"] == cert.serial.as_str()
    })
    .await;

    // The same token again, even for another host.
    let csr = identity.csr("web-2");
    let (status, refused) = problem(enrol_request(&server, &token, "web-2", &csr, &[]).await).await;
    assert_eq!(status, 401);
    assert_eq!(refused.detail, "enrolment refused: the join token was already used");
    wait_for_event(&server, "agent.enrol_refused", Some("web-2"), |e| {
        e.summary.contains("already used")
    })
    .await;

    // A token the server never made.
    let unknown = format!("esj_{}", "0".repeat(64));
    let (status, refused) = problem(enrol_request(&server, &unknown, "web-2", &csr, &[]).await).await;
    assert_eq!(status, 401);
    assert_eq!(refused.detail, "enrolment refused: the join token is unknown");

    // An expired token.
    let short = join_token(&server, json!({ "ttl": "1s" })).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, refused) = problem(enrol_request(&server, &short, "web-2", &csr, &[]).await).await;
    assert_eq!(status, 401);
    assert!(
        refused
            .detail
            .starts_with("enrolment refused: the join token expired at "),
        "{refused:?}"
    );

    // A token fixed to a host refuses another, and is not used up by the refusal.
    let fixed = join_token(&server, json!({ "host": "db-1" })).await;
    let (status, refused) = problem(enrol_request(&server, &fixed, "db-2", &identity.csr("db-2"), &[]).await).await;
    assert_eq!(status, 401);
    assert!(refused.detail.contains("is for host db-1, not db-2"), "{refused:?}");
    let db = enrol_with(&server, &fixed, "db-1", &[]).await;
    assert_eq!(db.host, "db-1");

    // A host enrolled and not revoked cannot be enrolled again.
    let fresh = join_token(&server, json!({})).await;
    let (status, refused) = problem(enrol_request(&server, &fresh, "web-1", &identity.csr("web-1"), &[]).await).await;
    assert_eq!(status, 409);
    assert!(refused.detail.contains("already enrolled"), "{refused:?}");

    // Every refusal is on the timeline, and none made a host.
    let refusals = events(&server, "agent.enrol_refused", None).await;
    assert_eq!(refusals.len(), 4, "{refusals:#?}");
    let page: Page<endstate_api::HostView> = server.get_json("/v1/hosts").await;
    let names: Vec<&str> = page.items.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["db-1", "web-1"]);
    server.stop().await;
}

#[tokio::test]
async fn hello_is_welcomed_and_the_desired_set_follows_the_target_revision() {
    let server = agent_server().await;
    let identity = enrol(&server, "web-1", &[("zone", "a")]).await;
    // The hello asks for other labels: the ones decided at enrolment stay.
    let mut agent = FakeAgent::connect(&identity).await.unwrap();
    let forged = hello("web-1", SUPPORTED_VERSIONS, labels(&[("zone", "b")]));
    match agent.hello_with(forged).await {
        Some(FromServer::Welcome(welcome)) => assert_eq!(welcome.version, 1, "{welcome:?}"),
        other => panic!("expected a welcome, got {other:?}"),
    }
    let view = wait_for_liveness(&server, "web-1", "reachable").await;
    assert_eq!(
        view.facts["hostname"], "web-1.fake",
        "the facts of the hello are stored"
    );
    assert_eq!(view.labels, labels(&[("zone", "a")]));
    wait_for_event(&server, "host.reachable", Some("web-1"), |_| true).await;

    // Nothing is desired yet: an empty set, with a generation.
    agent.send(&empty_actual_state()).await;
    let empty = agent.recv_until("desired_instances", desired).await;
    assert!(empty.generation.0 >= 1, "{empty:?}");
    assert!(empty.instances.is_empty(), "{empty:?}");

    // A revision placing a component on this host: the change rolls, and the agent gets it.
    let client = server.client();
    let submitted = client
        .submit(&submit_request(&[("shop.yaml", SHOP)], "web"))
        .await
        .unwrap();
    let set = agent
        .recv_until("a set with instances", |m| {
            desired(m).filter(|d| !d.instances.is_empty())
        })
        .await;
    assert!(set.generation > empty.generation, "{set:?} after {empty:?}");
    assert_eq!(set.instances.len(), 1, "{set:?}");
    let web = &set.instances[0];
    assert_eq!(web.id.0, WEB);
    assert_eq!(web.artifact.version, "1.0");
    assert_eq!(web.command, "svc");
    let port = web.ports["http"];
    assert!((20_000..30_000).contains(&port), "a dynamic port: {port}");
    assert_eq!(web.args, ["--listen", &format!("127.0.0.1:{port}"), "--zone", "a"]);
    wait_for_change(&client, submitted.change.id, &["rolling"]).await;

    // The agent reports the instance running and healthy at that generation: the change converges.
    let observed = |seq: u64, observed: Observed| Observation {
        seq,
        at_unix_ms: u64::try_from(now_ms()).unwrap(),
        observed,
    };
    agent
        .send(&FromAgent::Observations(Observations {
            observations: vec![
                observed(
                    1,
                    Observed::InstanceState(InstanceStateChange {
                        instance: InstanceId(WEB.into()),
                        generation: set.generation,
                        state: InstanceStateWord::Running,
                        version: "1.0".into(),
                        pid: Some(4242),
                        exit_code: None,
                        signal: None,
                        restarts: 0,
                        detail: String::new(),
                    }),
                ),
                observed(
                    2,
                    Observed::Health(HealthResult {
                        instance: InstanceId(WEB.into()),
                        healthy: true,
                        detail: String::new(),
                    }),
                ),
            ],
        }))
        .await;
    let acked = agent
        .recv_until("an ack", |m| match m {
            FromServer::Ack(ack) => Some(ack.up_to_seq),
            _ => None,
        })
        .await;
    assert_eq!(acked, 2);
    let change = wait_for_change(&client, submitted.change.id, &["converged", "failed"]).await;
    assert_eq!(change.state, "converged", "{change:?}");
    let instances: Page<InstanceView> = server.get_json("/v1/instances").await;
    let instance = instances.items.iter().find(|i| i.host == "web-1").unwrap();
    assert_eq!(
        (instance.state.as_str(), instance.status.as_str()),
        ("running", "healthy"),
        "{instance:?}"
    );
    server.stop().await;
}

/// A peer the TLS layer must refuse: the connection fails, or the first read finds it closed.
async fn assert_refused_by_tls(connected: Result<FakeAgent, String>) {
    match connected {
        Err(error) => assert!(error.starts_with("TLS") || error.starts_with("websocket"), "{error}"),
        Ok(mut agent) => {
            let first = agent.hello("web-1").await;
            assert!(first.is_none(), "a peer without a certificate of the CA got {first:?}");
        }
    }
}

#[tokio::test]
async fn a_certificate_of_another_ca_or_none_fails_the_handshake() {
    let server = agent_server().await;
    let identity = enrol(&server, "web-1", &[]).await;

    // A certificate for the same host name, from another CA.
    let (foreign, foreign_key) = foreign_cert("web-1");
    let config = client_config(&identity.ca_pem, Some((&foreign.cert_pem, &foreign_key)));
    assert_refused_by_tls(FakeAgent::connect_with(&identity.agent_url, config, "web-1").await).await;
    wait_for_event(&server, "agent.refused", None, |e| {
        e.summary
            .contains("TLS handshake failed: invalid peer certificate: UnknownIssuer")
            && e.host.is_none()
    })
    .await;

    // No certificate at all. (On a server of its own: the timeline keeps at most one failed
    // handshake per few seconds, so that scanners cannot flood it.)
    let bare = agent_server().await;
    let bare_identity = enrol(&bare, "web-1", &[]).await;
    let config = client_config(&bare_identity.ca_pem, None);
    assert_refused_by_tls(FakeAgent::connect_with(&bare_identity.agent_url, config, "web-1").await).await;
    wait_for_event(&bare, "agent.refused", None, |e| {
        e.summary.contains("TLS handshake failed: peer sent no certificates") && e.host.is_none()
    })
    .await;
    bare.stop().await;

    // Neither touched the host, whose own certificate still connects.
    assert_eq!(host_view(&server, "web-1").await.liveness, "unknown");
    let _agent = FakeAgent::join(&identity).await;
    wait_for_liveness(&server, "web-1", "reachable").await;
    server.stop().await;
}

#[tokio::test]
async fn revoking_a_host_ends_its_link_and_refuses_its_certificate() {
    let server = agent_server().await;
    let identity = enrol(&server, "web-1", &[]).await;
    let mut agent = FakeAgent::join(&identity).await;
    wait_for_liveness(&server, "web-1", "reachable").await;

    let response = post_admin(&server, "/v1/hosts/web-1/revoke").await;
    assert_eq!(response.status(), 200);
    let view: endstate_api::HostView = response.json().await.unwrap();
    assert_eq!(view.liveness, "revoked");
    let frames = agent.expect_closed().await;
    assert!(
        frames
            .iter()
            .any(|f| matches!(f, FromServer::Revoke(r) if r.reason.contains("revoked by admin"))),
        "{frames:?}"
    );
    assert_eq!(host_view(&server, "web-1").await.liveness, "revoked");
    wait_for_event(&server, "agent.revoked", Some("web-1"), |e| {
        e.summary.contains("revoked by admin")
    })
    .await;

    // The same certificate again: the server says revoke before any hello, and closes.
    let mut again = FakeAgent::connect(&identity).await.unwrap();
    let frames = again.expect_closed().await;
    assert!(
        matches!(frames.as_slice(), [FromServer::Revoke(r)] if r.reason.contains("is revoked")),
        "{frames:?}"
    );
    wait_for_event(&server, "agent.refused", Some("web-1"), |e| {
        e.summary.contains("is revoked")
    })
    .await;
    assert_eq!(host_view(&server, "web-1").await.liveness, "revoked");

    // Unknown hosts cannot be revoked; a revoked host may enrol again, and only its new
    // certificate connects.
    assert_eq!(post_admin(&server, "/v1/hosts/nope/revoke").await.status(), 404);
    let renewed = enrol(&server, "web-1", &[]).await;
    let mut old = FakeAgent::connect(&identity).await.unwrap();
    let frames = old.expect_closed().await;
    assert!(
        matches!(frames.as_slice(), [FromServer::Refused(r)] if r.reason.contains("superseded")),
        "{frames:?}"
    );
    let _agent = FakeAgent::join(&renewed).await;
    wait_for_liveness(&server, "web-1", "reachable").await;
    server.stop().await;
}

#[tokio::test]
async fn observations_are_stored_once_and_gaps_are_recorded() {
    let server = agent_server().await;
    let identity = enrol(&server, "web-1", &[]).await;
    let mut agent = FakeAgent::join(&identity).await;

    assert_eq!(agent.observe(1..=5, WEB).await, 5);
    assert_eq!(count(&server, "instance.transitioned", "web-1").await, 5);

    // A resend after a lost ack: acknowledged again, stored once.
    assert_eq!(agent.observe(3..=5, WEB).await, 5);
    assert_eq!(count(&server, "instance.transitioned", "web-1").await, 5);

    // A gap: stored, and the missing ones named.
    assert_eq!(agent.observe(8..=8, WEB).await, 8);
    assert_eq!(count(&server, "instance.transitioned", "web-1").await, 6);
    let lost = events(&server, "agent.observations_lost", Some("web-1")).await;
    assert_eq!(lost.len(), 1, "{lost:#?}");
    assert_eq!(
        (lost[0].data["from"].as_u64(), lost[0].data["to"].as_u64()),
        (Some(6), Some(7))
    );
    assert!(lost[0].summary.contains("6 to 7"), "{lost:#?}");

    // The server remembers the last seq across connections.
    agent.close().await;
    wait_for_event(&server, "host.unreachable", Some("web-1"), |_| true).await;
    let mut agent = FakeAgent::join(&identity).await;
    assert_eq!(agent.observe(1..=8, WEB).await, 8);
    assert_eq!(count(&server, "instance.transitioned", "web-1").await, 6);
    assert_eq!(count(&server, "agent.observations_lost", "web-1").await, 1);
    assert_eq!(agent.observe(9..=9, WEB).await, 9);
    assert_eq!(count(&server, "instance.transitioned", "web-1").await, 7);
    server.stop().await;
}

#[tokio::test]
async fn bad_frames_are_recorded_and_the_connection_goes_on() {
    let server = agent_server().await;
    let identity = enrol(&server, "web-1", &[]).await;
    let bad = [
        (
            "malformed JSON",
            WsMessage::text(r#"{"v":1,"type":"#),
            "malformed frame",
        ),
        (
            "an unknown type",
            WsMessage::text(r#"{"v":1,"type":"launch"}"#),
            "unknown message type \"launch\"",
        ),
        ("a binary frame", WsMessage::binary(vec![1u8, 2, 3]), "binary frame"),
        (
            "an unknown field",
            WsMessage::text(r#"{"v":1,"type":"keepalive","seq":1,"surprise":true}"#),
            "surprise",
        ),
    ];
    let mut seq = 0;
    let mut previous: Option<FakeAgent> = None;
    for (what, frame, reason) in bad {
        // A connection per frame (one event per connection and minute); the new one replaces
        // the previous, which is kept open until then so the host never looks gone.
        let mut agent = FakeAgent::join(&identity).await;
        agent.send_raw(frame).await.unwrap();
        seq += 1;
        assert_eq!(
            agent.observe(seq..=seq, WEB).await,
            seq,
            "after {what} the connection goes on"
        );
        // Registered now (it was acknowledged), so the previous connection was closed by the
        // server and dropping it changes nothing.
        drop(previous.take());
        wait_for_event(&server, "agent.protocol_error", Some("web-1"), |e| {
            e.summary.contains(reason)
        })
        .await;
        previous = Some(agent);
    }
    assert_eq!(count(&server, "agent.protocol_error", "web-1").await, 4);

    // A second bad frame on the same connection within the minute is logged, not recorded.
    let mut agent = previous.take().unwrap();
    agent.send_raw(WsMessage::text("not json")).await.unwrap();
    seq += 1;
    assert_eq!(agent.observe(seq..=seq, WEB).await, seq);
    assert_eq!(count(&server, "agent.protocol_error", "web-1").await, 4);

    // A frame over the protocol's bound ends the connection.
    let oversized = format!(
        r#"{{"v":1,"type":"keepalive","seq":1,"pad":"{}"}}"#,
        "x".repeat(limits::MAX_FRAME_BYTES)
    );
    let _ = agent.send_raw(WsMessage::text(oversized)).await;
    agent.expect_closed().await;
    wait_for_event(&server, "host.unreachable", Some("web-1"), |e| {
        e.summary
            .contains("connection error: Space limit exceeded: Message too long")
    })
    .await;
    assert_eq!(
        count(&server, "host.unreachable", "web-1").await,
        1,
        "nothing else was unreachable"
    );

    // The server is otherwise unaffected: another agent, and this one again, still work.
    let other = enrol(&server, "web-2", &[]).await;
    let mut other = FakeAgent::join(&other).await;
    assert_eq!(other.observe(1..=1, WEB).await, 1);
    let mut agent = FakeAgent::join(&identity).await;
    seq += 1;
    assert_eq!(agent.observe(seq..=seq, WEB).await, seq);
    server.stop().await;
}

#[tokio::test]
async fn a_silent_agent_becomes_unreachable_and_its_instances_unknown() {
    install_crypto();
    let server =
        TestServer::start_with_agents(|config| config.agents.keepalive_interval = Duration::from_millis(300)).await;
    let identity = enrol(&server, "web-1", &[("zone", "a")]).await;
    let client = server.client();
    let submitted = client
        .submit(&submit_request(&[("shop.yaml", SHOP)], "web"))
        .await
        .unwrap();
    wait_for_change(&client, submitted.change.id, &["rolling"]).await;

    // A live agent first: it keeps its keepalives going while it waits.
    let mut agent = FakeAgent::join(&identity).await;
    agent.keepalive_every = Some(Duration::from_millis(100));
    agent.send(&empty_actual_state()).await;
    let set = agent
        .recv_until("a set with instances", |m| {
            desired(m).filter(|d| !d.instances.is_empty())
        })
        .await;
    assert_eq!(set.instances[0].id.0, WEB);
    assert_eq!(agent.observe(1..=1, WEB).await, 1);
    let is = |state: &'static str| {
        move |instances: &Page<InstanceView>| {
            instances
                .items
                .iter()
                .any(|i| i.host == "web-1" && i.component == "shop/web" && i.state == state)
        }
    };
    let instances: Page<InstanceView> = agent.while_alive(server.get_json("/v1/instances")).await;
    assert!(is("running")(&instances), "{instances:#?}");

    // Keepalives keep it reachable well past the three intervals it may miss.
    agent.while_alive(tokio::time::sleep(Duration::from_millis(2000))).await;
    assert_eq!(count(&server, "host.unreachable", "web-1").await, 0);
    assert_eq!(host_view(&server, "web-1").await.liveness, "reachable");

    // Then silence, with the connection open.
    agent.keepalive_every = None;
    let gone = wait_for_event(&server, "host.unreachable", Some("web-1"), |_| true).await;
    assert!(
        gone.data["reason"].as_str().unwrap().contains("no keepalive"),
        "{gone:#?}"
    );
    assert_eq!(gone.data["instances"], 1);
    assert_eq!(host_view(&server, "web-1").await.liveness, "unreachable");
    let instances: Page<InstanceView> = server.get_json("/v1/instances").await;
    assert!(is("unknown")(&instances), "{instances:#?}");
    let unknown = instances.items.iter().find(|i| i.host == "web-1").unwrap();
    assert_eq!(unknown.status, "unknown", "{unknown:?}");
    agent.expect_closed().await;

    // Reconnecting makes it reachable again.
    let mut agent = FakeAgent::join(&identity).await;
    agent.keepalive_every = Some(Duration::from_millis(100));
    assert_eq!(agent.observe(2..=2, WEB).await, 2);
    agent
        .while_alive(wait_for_liveness(&server, "web-1", "reachable"))
        .await;
    assert_eq!(count(&server, "host.reachable", "web-1").await, 2);
    server.stop().await;
}

#[tokio::test]
async fn a_closed_connection_is_unreachable_at_once_and_reconnecting_reachable() {
    // The keepalive interval is long: only the closing can explain an unreachable host.
    let server = agent_server().await;
    let identity = enrol(&server, "web-1", &[]).await;
    let agent = FakeAgent::join(&identity).await;
    wait_for_liveness(&server, "web-1", "reachable").await;

    agent.close().await;
    let gone = wait_for_event(&server, "host.unreachable", Some("web-1"), |_| true).await;
    assert!(
        gone.data["reason"].as_str().unwrap().contains("closed by the agent"),
        "{gone:#?}"
    );
    assert_eq!(host_view(&server, "web-1").await.liveness, "unreachable");

    let agent = FakeAgent::join(&identity).await;
    wait_for_liveness(&server, "web-1", "reachable").await;
    wait_for_event(&server, "host.reachable", Some("web-1"), |_| true).await;
    assert_eq!(count(&server, "host.reachable", "web-1").await, 2);

    // A connection dropped without a close frame is noticed as well.
    drop(agent);
    let deadline = tokio::time::Instant::now() + crate::fake_agent::WAIT;
    loop {
        let gone = events(&server, "host.unreachable", Some("web-1")).await;
        if gone.len() == 2 {
            let reason = gone[0].data["reason"].as_str().unwrap();
            assert!(reason.starts_with("connection"), "{gone:#?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{gone:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(host_view(&server, "web-1").await.liveness, "unreachable");
    server.stop().await;
}

#[tokio::test]
async fn a_hello_naming_another_host_or_no_common_version_is_refused() {
    let server = agent_server().await;
    let identity = enrol(&server, "web-1", &[]).await;
    enrol(&server, "web-2", &[]).await;
    let mut agent = FakeAgent::connect(&identity).await.unwrap();
    match agent.hello("web-2").await {
        Some(FromServer::Refused(refused)) => assert!(
            refused
                .reason
                .contains("names host web-2 but the certificate is for web-1"),
            "{refused:?}"
        ),
        other => panic!("expected refused, got {other:?}"),
    }
    agent.expect_closed().await;
    wait_for_event(&server, "agent.refused", Some("web-1"), |e| {
        e.summary.contains("names host web-2")
    })
    .await;

    // No common version: refused, naming both ranges.
    let mut agent = FakeAgent::connect(&identity).await.unwrap();
    match agent
        .hello_with(hello("web-1", VersionRange::new(2, 3), BTreeMap::new()))
        .await
    {
        Some(FromServer::Refused(refused)) => {
            assert_eq!(refused.agent_versions, VersionRange::new(2, 3));
            assert_eq!(refused.server_versions, SUPPORTED_VERSIONS);
            assert!(refused.reason.contains("no common protocol version"), "{refused:?}");
        }
        other => panic!("expected refused, got {other:?}"),
    }
    agent.expect_closed().await;

    // Anything but a hello first.
    let mut agent = FakeAgent::connect(&identity).await.unwrap();
    let keepalive = FromAgent::Keepalive(endstate_agent_proto::Keepalive { seq: 1 });
    match agent.hello_with(keepalive).await {
        Some(FromServer::Refused(refused)) => {
            assert!(
                refused.reason.contains("expected hello first, got keepalive"),
                "{refused:?}"
            );
        }
        other => panic!("expected refused, got {other:?}"),
    }
    agent.expect_closed().await;
    assert_eq!(host_view(&server, "web-1").await.liveness, "unknown");
    assert_eq!(host_view(&server, "web-2").await.liveness, "unknown");
    server.stop().await;
}

#[tokio::test]
async fn renewal_gives_a_new_certificate_and_the_previous_one_lasts_until_the_new_one_is_used() {
    let server = agent_server().await;
    let identity = enrol(&server, "web-1", &[]).await;
    let old_serial = identity.serial();
    let mut agent = FakeAgent::join(&identity).await;

    // A CSR naming another host is refused (recorded), and no certificate comes.
    agent
        .send(&FromAgent::Renew(Renew {
            csr_pem: identity.csr("web-2"),
        }))
        .await;
    agent.send(&crate::fake_agent::observations(1..=1, WEB)).await;
    let mut before_ack = Vec::new();
    agent
        .recv_until("an ack", |m| match m {
            FromServer::Ack(ack) => Some(ack),
            other => {
                before_ack.push(other);
                None
            }
        })
        .await;
    assert!(
        !before_ack.iter().any(|m| matches!(m, FromServer::Certificate(_))),
        "{before_ack:?}"
    );
    wait_for_event(&server, "agent.protocol_error", Some("web-1"), |e| {
        e.summary.contains("renewal refused")
    })
    .await;

    // A CSR for the agent's own key and host.
    agent
        .send(&FromAgent::Renew(Renew {
            csr_pem: identity.csr("web-1"),
        }))
        .await;
    let cert_pem = agent
        .recv_until("a certificate", |m| match m {
            FromServer::Certificate(certificate) => Some(certificate.cert_pem),
            _ => None,
        })
        .await;
    let renewed = identity.with_cert(&cert_pem);
    let new_cert = endstate_pki::verify_agent_cert(&identity.ca_pem, &cert_pem, now_ms()).unwrap();
    assert_eq!(new_cert.host_name, "web-1");
    assert_ne!(new_cert.serial, old_serial);
    wait_for_event(&server, "agent.renewed", Some("web-1"), |e| {
        e.data["serial"] == new_cert.serial.as_str()
    })
    .await;

    // The previous certificate still connects, as long as the new one has not been used...
    let mut old_again = FakeAgent::join(&identity).await;
    assert_eq!(old_again.observe(2..=2, WEB).await, 2);
    // ...the new one connects (the ack means its hello is recorded)...
    let mut with_new = FakeAgent::join(&renewed).await;
    assert_eq!(with_new.observe(3..=3, WEB).await, 3);
    // ...and from then on the previous one is superseded.
    let mut stale = FakeAgent::connect(&identity).await.unwrap();
    let frames = stale.expect_closed().await;
    assert!(
        matches!(frames.as_slice(), [FromServer::Refused(r)] if r.reason.contains(&format!("certificate {old_serial} of host web-1 was superseded"))),
        "{frames:?}"
    );
    wait_for_event(&server, "agent.refused", Some("web-1"), |e| {
        e.summary.contains("superseded")
    })
    .await;
    assert_eq!(
        with_new.observe(4..=4, WEB).await,
        4,
        "the new connection is unaffected"
    );
    server.stop().await;
}

#[tokio::test]
async fn logs_are_asked_of_the_agent_over_the_link() {
    let server = agent_server().await;
    let identity: Identity = enrol(&server, "web-1", &[]).await;
    let mut agent = FakeAgent::join(&identity).await;
    assert_eq!(agent.observe(1..=1, WEB).await, 1, "connected and registered");

    // The agent answers.
    let call = logs_call(&server, "web-1");
    let request = logs_request(&mut agent).await;
    assert_eq!(request.instance.0, WEB);
    agent
        .send(&FromAgent::Logs(Logs {
            request: request.request,
            instance: request.instance.clone(),
            found: true,
            stdout: "listening on 127.0.0.1:20001\n".into(),
            stderr: "warning: cold cache\n".into(),
            stdout_total: 1000,
            stderr_total: 20,
        }))
        .await;
    let response = call.await.unwrap();
    assert_eq!(response.status(), 200);
    let logs: LogsView = response.json().await.unwrap();
    assert_eq!(logs.host, "web-1");
    assert_eq!(logs.instance, WEB);
    assert_eq!(logs.stdout, "listening on 127.0.0.1:20001\n");
    assert_eq!(logs.stderr, "warning: cold cache\n");
    assert_eq!((logs.stdout_total, logs.stderr_total), (1000, 20));

    // The agent does not run it.
    let call = logs_call(&server, "web-1");
    let request = logs_request(&mut agent).await;
    agent
        .send(&FromAgent::Logs(Logs {
            request: request.request,
            instance: request.instance.clone(),
            found: false,
            stdout: String::new(),
            stderr: String::new(),
            stdout_total: 0,
            stderr_total: 0,
        }))
        .await;
    let (status, refused) = problem(call.await.unwrap()).await;
    assert_eq!(status, 404);
    assert!(refused.detail.contains("runs no instance shop/web#0"), "{refused:?}");

    // The agent does not answer.
    let call = logs_call(&server, "web-1");
    let unanswered = logs_request(&mut agent).await;
    let (status, refused) = problem(call.await.unwrap()).await;
    assert_eq!(status, 503);
    assert!(refused.detail.contains("did not answer"), "{refused:?}");
    // A late answer is dropped, and the link goes on.
    agent
        .send(&FromAgent::Logs(Logs {
            request: unanswered.request,
            instance: unanswered.instance,
            found: true,
            stdout: "late".into(),
            stderr: String::new(),
            stdout_total: 4,
            stderr_total: 0,
        }))
        .await;
    assert_eq!(agent.observe(2..=2, WEB).await, 2);

    // A host without a connection.
    let (status, refused) = problem(logs_call(&server, "db-9").await.unwrap()).await;
    assert_eq!(status, 409);
    assert!(refused.detail.contains("not connected"), "{refused:?}");
    server.stop().await;
}

#[tokio::test]
async fn the_desired_generation_only_grows_and_is_resent_after_actual_state() {
    let server = agent_server().await;
    let identity = enrol(&server, "web-1", &[("zone", "a")]).await;
    let mut agent = FakeAgent::join(&identity).await;
    agent.send(&empty_actual_state()).await;
    let first = agent.recv_until("desired_instances", desired).await;

    // A reconnection with nothing new gets the same generation again, as the complete set.
    agent.close().await;
    let mut agent = FakeAgent::join(&identity).await;
    agent
        .send(&FromAgent::ActualState(ActualState {
            generation: Some(first.generation),
            last_seq: 0,
            instances: Vec::new(),
        }))
        .await;
    let again = agent.recv_until("desired_instances", desired).await;
    assert_eq!(again, first);
    server.stop().await;
}

#[tokio::test]
async fn only_the_host_asked_answers_a_logs_request() {
    let server = agent_server().await;
    let web = enrol(&server, "web-1", &[]).await;
    let other = enrol(&server, "web-2", &[]).await;
    let mut web = FakeAgent::join(&web).await;
    let mut other = FakeAgent::join(&other).await;
    assert_eq!(web.observe(1..=1, WEB).await, 1);
    assert_eq!(other.observe(1..=1, WEB).await, 1);

    let call = logs_call(&server, "web-1");
    let request = logs_request(&mut web).await;
    // Another host answers first, with the request's number (they are easy to guess).
    let answer = |stdout: &str| {
        FromAgent::Logs(Logs {
            request: request.request,
            instance: request.instance.clone(),
            found: true,
            stdout: stdout.into(),
            stderr: String::new(),
            stdout_total: 6,
            stderr_total: 0,
        })
    };
    other.send(&answer("forged")).await;
    assert_eq!(other.observe(2..=2, WEB).await, 2, "its answer was handled");
    web.send(&answer("genuine")).await;
    let response = call.await.unwrap();
    assert_eq!(response.status(), 200);
    let logs: LogsView = response.json().await.unwrap();
    assert_eq!(logs.stdout, "genuine");
    server.stop().await;
}

#[tokio::test]
async fn a_retired_run_of_an_older_generation_does_not_change_the_instance_state() {
    let server = agent_server().await;
    let identity = enrol(&server, "web-1", &[]).await;
    let mut agent = FakeAgent::join(&identity).await;
    let at = |seq: u64, generation: u64, state: InstanceStateWord, version: &str| {
        let mut observation = instance_state(seq, WEB, state);
        if let Observed::InstanceState(change) = &mut observation.observed {
            change.generation = endstate_types::Generation(generation);
            change.version = version.to_owned();
        }
        observation
    };
    // Start-before-stop: generation 2's run is running before generation 1's run is stopped.
    let batch = FromAgent::Observations(Observations {
        observations: vec![
            at(1, 1, InstanceStateWord::Running, "1.0"),
            at(2, 2, InstanceStateWord::Starting, "2.0"),
            at(3, 2, InstanceStateWord::Running, "2.0"),
            at(4, 1, InstanceStateWord::Stopping, "1.0"),
            at(5, 1, InstanceStateWord::Stopped, "1.0"),
        ],
    });
    agent.send(&batch).await;
    let acked = agent
        .recv_until("an ack", |m| match m {
            FromServer::Ack(ack) => Some(ack.up_to_seq),
            _ => None,
        })
        .await;
    assert_eq!(acked, 5);
    let previous = events(&server, "instance.previous_run", Some("web-1")).await;
    assert_eq!(previous.len(), 2, "the old run's stop is recorded: {previous:#?}");
    assert!(
        previous.iter().all(|e| e.summary.contains("1.0 at generation g1")),
        "{previous:#?}"
    );
    let transitions = events(&server, "instance.transitioned", Some("web-1")).await;
    let states: Vec<&str> = transitions
        .iter()
        .rev()
        .map(|e| e.data["state"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(states, ["running", "starting", "running"], "{transitions:#?}");
    server.stop().await;
}

/// With the server's clock paused, a wave whose instance is healthy waits out an hour's
/// `min_healthy_time` only when the clock is moved past it: the controller and the Decider read
/// the server's clock, so a test decides when the hour has passed instead of sleeping through it.
#[tokio::test]
async fn a_paused_clock_holds_a_wave_for_its_min_healthy_time_until_it_is_moved() {
    install_crypto();
    let clock = endstate_server::Clock::paused();
    let server = TestServer::start_with_agents(|config| {
        config.clock = clock.clone();
        // No liveness sweep gets in the way when the clock jumps an hour.
        config.agents.keepalive_interval = Duration::from_secs(24 * 3600);
    })
    .await;
    let identity = enrol(&server, "web-1", &[("zone", "a")]).await;
    let mut agent = FakeAgent::join(&identity).await;
    let client = server.client();
    let held = SHOP.replace(
        "  count: { total: 1 }\n",
        "  count: { total: 1 }\nrollout: { min_healthy_time: 1h }\n",
    );
    let submitted = client
        .submit(&submit_request(&[("shop.yaml", &held)], "web"))
        .await
        .unwrap();
    let set = agent
        .recv_until("a set with instances", |m| {
            desired(m).filter(|d| !d.instances.is_empty())
        })
        .await;
    let at_unix_ms = u64::try_from(clock.now_ms()).unwrap();
    agent
        .send(&FromAgent::Observations(Observations {
            observations: vec![
                Observation {
                    seq: 1,
                    at_unix_ms,
                    observed: Observed::InstanceState(InstanceStateChange {
                        instance: InstanceId(WEB.into()),
                        generation: set.generation,
                        state: InstanceStateWord::Running,
                        version: "1.0".into(),
                        pid: Some(4242),
                        exit_code: None,
                        signal: None,
                        restarts: 0,
                        detail: String::new(),
                    }),
                },
                Observation {
                    seq: 2,
                    at_unix_ms,
                    observed: Observed::Health(HealthResult {
                        instance: InstanceId(WEB.into()),
                        healthy: true,
                        detail: String::new(),
                    }),
                },
            ],
        }))
        .await;
    let id = submitted.change.id;
    let mut waiting = None;
    for _ in 0..200 {
        let change = client.change(id).await.unwrap();
        if change.reason.as_deref().is_some_and(|r| r.contains("min_healthy_time")) {
            waiting = Some(change);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let waiting = match waiting {
        Some(change) => change,
        None => panic!("never held: {:?}", client.change(id).await),
    };
    assert_eq!(waiting.state, "rolling", "{waiting:?}");
    // Rounds go by (the runner looks every 200 ms), the clock stands still: still held.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let still = client.change(id).await.unwrap();
    assert_eq!(still.state, "rolling", "{still:?}");
    assert!(
        still.reason.as_deref().unwrap_or_default().contains("min_healthy_time"),
        "{still:?}"
    );

    clock.advance(Duration::from_secs(3600));
    let change = wait_for_change(&client, id, &["converged", "failed", "halted"]).await;
    assert_eq!(change.state, "converged", "{change:?}");
    let allowed = events(&server, "decision.allow", None).await;
    assert!(
        allowed.iter().any(|e| e.summary.contains("healthy for at least 1h")),
        "{allowed:#?}"
    );
    server.stop().await;
}
