//! Operational parameters of a change (host groups, retired and targeted hosts) and the basis a
//! preview pins: checked against the real inventory of a running server.

use endstate_api::{ChangeOptions, PlanRequest, Problem};

use crate::fake_agent::{enrol, install_crypto};
use crate::{TestServer, docs, submit_request};

const WEB: &str = r#"apiVersion: endstate/v1
kind: System
name: shop
---
apiVersion: endstate/v1
kind: Component
name: web
system: shop
artifact: { version: "1.0", path: bin/svc }
command: svc
ports: [{ name: http }]
placement:
  selector: { role: web }
  count: { per_host: 1 }
rollout: { one_domain_at_a_time: zone }
"#;

async fn web_hosts(server: &TestServer) {
    for (host, zone) in [("h1", "a"), ("h2", "a"), ("h3", "b"), ("h4", "c")] {
        enrol(server, host, &[("role", "web"), ("zone", zone)]).await;
    }
}

async fn plan_for(server: &TestServer, options: ChangeOptions) -> Result<endstate_api::PlanResponse, Problem> {
    server
        .client()
        .plan_with(&PlanRequest {
            documents: docs(&[("web.yaml", WEB)]),
            options,
        })
        .await
        .map_err(|error| {
            error
                .problem()
                .cloned()
                .unwrap_or_else(|| panic!("not a problem: {error}"))
        })
}

#[tokio::test]
async fn host_groups_and_retired_hosts_shape_the_preview_and_unknown_hosts_are_refused_by_field() {
    install_crypto();
    let server = TestServer::start_with_agents(|_| {}).await;
    web_hosts(&server).await;

    let options = ChangeOptions {
        host_groups: vec![vec!["zone=c".into()], vec!["h3".into()]],
        retire_hosts: vec!["h2".into()],
        target_hosts: vec![],
    };
    let preview = plan_for(&server, options).await.unwrap();
    let plan: endstate_plan::Plan = preview.plan;
    // h2 is retired: nothing is placed on it; the groups go first, in their order.
    let hosts: Vec<&str> = plan
        .waves
        .iter()
        .flat_map(|w| w.steps.iter().map(|s| &*s.step.host))
        .collect();
    assert_eq!(hosts, ["h4", "h3", "h1"], "{plan:#?}");
    assert_eq!(plan.options.host_groups, [vec!["h4".to_owned()], vec!["h3".to_owned()]]);
    assert_eq!(plan.options.retire_hosts, ["h2"]);
    assert_eq!(preview.basis.hosts.len(), 4, "{:?}", preview.basis);

    // Every problem at once, each at its field.
    let bad = ChangeOptions {
        host_groups: vec![vec!["zone=a".into()], vec!["h1".into(), "rack=9".into()]],
        retire_hosts: vec!["nope".into()],
        target_hosts: vec![],
    };
    let problem = plan_for(&server, bad).await.unwrap_err();
    assert_eq!(problem.status, 422, "{problem:?}");
    let fields: Vec<(&str, &str)> = problem
        .errors
        .iter()
        .map(|e| (e.field.as_str(), e.message.as_str()))
        .collect();
    assert_eq!(fields.len(), 3, "{fields:#?}");
    assert_eq!(fields[0].0, "options.host_groups[1][0]");
    assert!(fields[0].1.contains("already in group 0"), "{fields:#?}");
    assert_eq!(fields[1].0, "options.host_groups[1][1]");
    assert!(fields[1].1.contains("rack=9 matches no host"), "{fields:#?}");
    assert_eq!(fields[2].0, "options.retire_hosts[0]");
    assert!(fields[2].1.contains("no host named \"nope\""), "{fields:#?}");
    // Nothing was stored.
    assert!(server.client().revision("latest").await.is_err(), "nothing was stored");
    server.stop().await;
}

#[tokio::test]
async fn a_submission_whose_preview_basis_moved_is_refused_saying_what_moved() {
    install_crypto();
    let server = TestServer::start_with_agents(|_| {}).await;
    web_hosts(&server).await;
    let preview = plan_for(&server, ChangeOptions::default()).await.unwrap();

    // A host joins between the preview and the submission: the plan would not be the same.
    enrol(&server, "h5", &[("role", "web"), ("zone", "c")]).await;
    let mut request = submit_request(&[("web.yaml", WEB)], "web");
    request.parent = Some(preview.latest_revision.unwrap_or(0));
    request.basis = Some(preview.basis.clone());
    let error = server.client().submit(&request).await.unwrap_err();
    let problem = error.problem().cloned().unwrap();
    assert_eq!(problem.status, 409, "{problem:?}");
    assert!(problem.kind.ends_with("/basis-moved"), "{problem:?}");
    assert_eq!(problem.errors.len(), 1, "{problem:?}");
    assert_eq!(problem.errors[0].field, "basis");
    assert_eq!(problem.errors[0].message, "host h5 joined (role=web,zone=c)");
    assert!(server.client().revision("latest").await.is_err(), "nothing was stored");

    // Previewed again, it goes through.
    let preview = plan_for(&server, ChangeOptions::default()).await.unwrap();
    request.basis = Some(preview.basis);
    let submitted = server.client().submit(&request).await.unwrap();
    assert_eq!(submitted.revision.id, 1);
    server.stop().await;
}
