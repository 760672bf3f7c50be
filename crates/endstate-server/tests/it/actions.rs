//! Runs of actions through an agent speaking the real protocol: the agent's catalogue comes with
//! its desired set, a run names an action and gives values (never a command), the output and the
//! result come back and end on the timeline; a result the server never asked for is recorded as
//! the agent's refusal, and a bad request is refused by field.

use endstate_agent_proto::{
    ActionOutcome, ActionOutput, ActionResult, FromAgent, FromServer, Observation, Observations, Observed, OutputStream,
};

use crate::fake_agent::{FakeAgent, enrol, install_crypto, now_ms, wait_for_event};
use crate::{TestServer, submit_request, wait_for_change};

const LAB: &str = "apiVersion: endstate/v1\nkind: System\nname: lab\n---\n\
apiVersion: endstate/v1\nkind: Action\nname: say\nsystem: lab\ndescription: Says a word.\n\
parameters:\n  word: { type: enum, values: [hello, bye], default: hello }\n  times: { type: integer, min: 1, max: 3 }\n\
command: [/bin/echo, \"{{ params.word }}\", \"on {{ instance.host }} in {{ host.labels.zone }}\"]\n\
targets: { selector: { role: [ops] } }\nconcurrency: 2\nengagement: direct\n";

fn result(seq: u64, run: &str, action: &str, outcome: ActionOutcome, output: &str, detail: &str) -> FromAgent {
    FromAgent::Observations(Observations {
        observations: vec![Observation {
            seq,
            at_unix_ms: u64::try_from(now_ms()).unwrap(),
            observed: Observed::Action(ActionResult {
                run: run.into(),
                action: action.into(),
                outcome,
                exit_code: (outcome == ActionOutcome::Succeeded).then_some(0),
                signal: None,
                duration_ms: 12,
                output: output.into(),
                detail: detail.into(),
            }),
        }],
    })
}

#[tokio::test]
async fn a_run_goes_to_the_agent_as_a_catalogue_name_and_comes_back_on_the_timeline() {
    install_crypto();
    let server = TestServer::start_with_agents(|_| {}).await;
    let identity = enrol(&server, "ops-1", &[("role", "ops"), ("zone", "a")]).await;
    let mut agent = FakeAgent::join(&identity).await;
    let client = server.client();
    let submitted = client
        .submit(&submit_request(&[("lab.yaml", LAB)], "lab"))
        .await
        .unwrap();
    wait_for_change(&client, submitted.change.id, &["converged"]).await;

    // The catalogue comes with the desired set, rendered for the host but the parameters.
    let generation = loop {
        match agent.recv().await {
            Some(FromServer::DesiredInstances(set)) if !set.actions.is_empty() => {
                assert_eq!(set.actions.len(), 1, "{set:?}");
                assert_eq!(set.actions[0].name, "lab/say");
                assert_eq!(
                    set.actions[0].command,
                    ["/bin/echo", "{{ params.word }}", "on ops-1 in a"]
                );
                break set.generation;
            }
            Some(_) => {}
            None => panic!("the connection closed"),
        }
    };

    // Bad requests are refused by field; nothing is sent.
    let bad = client
        .run_action(&endstate_api::RunRequest {
            system: "lab".into(),
            action: "say".into(),
            params: [
                ("times".to_owned(), serde_json::json!(9)),
                ("loud".to_owned(), serde_json::json!(true)),
            ]
            .into_iter()
            .collect(),
            ..endstate_api::RunRequest::default()
        })
        .await
        .unwrap_err();
    let problem = bad.problem().unwrap();
    let fields: Vec<&str> = problem.errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["params.loud", "params.times"], "{problem:?}");

    let run = client
        .run_action(&endstate_api::RunRequest {
            system: "lab".into(),
            action: "say".into(),
            params: [("word".to_owned(), serde_json::json!("bye"))].into_iter().collect(),
            reason: Some("testing".into()),
            ..endstate_api::RunRequest::default()
        })
        .await
        .unwrap();
    assert_eq!(run.state, "running");
    assert_eq!(run.hosts.len(), 1);
    let request = loop {
        match agent.recv().await {
            Some(FromServer::RunAction(request)) => break request,
            Some(_) => {}
            None => panic!("the connection closed"),
        }
    };
    assert_eq!(request.run, run.id);
    assert_eq!(request.action, "lab/say");
    assert_eq!(request.generation, generation);
    assert_eq!(
        request.params,
        [("word".to_owned(), "bye".to_owned())].into_iter().collect(),
        "defaults applied, unset optional ones absent"
    );
    // Signed by the CA the agent pinned at enrolment.
    let signature: Vec<u8> = (0..request.signature.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&request.signature[i..i + 2], 16).unwrap())
        .collect();
    endstate_pki::verify_ca_signature(&identity.ca_pem, &request.signed_bytes(), &signature).unwrap();

    // Live output, then the result.
    agent
        .send(&FromAgent::ActionOutput(ActionOutput {
            run: run.id.clone(),
            stream: OutputStream::Stdout,
            data: "bye on ops-1".into(),
        }))
        .await;
    let deadline = tokio::time::Instant::now() + crate::fake_agent::WAIT;
    while client.run(&run.id).await.unwrap().hosts[0].output != "bye on ops-1" {
        assert!(tokio::time::Instant::now() < deadline, "the live output never showed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    agent
        .send(&result(
            1,
            &run.id,
            "lab/say",
            ActionOutcome::Succeeded,
            "bye on ops-1 in a\n",
            "",
        ))
        .await;
    let finished = wait_for_event(&server, "action.finished", None, |_| true).await;
    assert!(
        finished.summary.contains("succeeded: 1 of 1 hosts succeeded"),
        "{finished:?}"
    );
    let view = client.run(&run.id).await.unwrap();
    assert_eq!(view.state, "succeeded");
    assert_eq!(view.hosts[0].exit_code, Some(0));
    assert_eq!(view.hosts[0].output, "bye on ops-1 in a\n");
    let host_finished = wait_for_event(&server, "action.host_finished", Some("ops-1"), |_| true).await;
    assert_eq!(host_finished.actor.as_deref(), Some("agent:ops-1"));

    // A refusal by the agent of something this server never asked for is recorded as such.
    agent
        .send(&result(
            2,
            "run-99",
            "lab/rm",
            ActionOutcome::Refused,
            "",
            "lab/rm is not in this host's catalogue at generation 2",
        ))
        .await;
    let refused = wait_for_event(&server, "action.refused", Some("ops-1"), |_| true).await;
    assert!(
        refused
            .summary
            .contains("refused run-99 of lab/rm: lab/rm is not in this host's catalogue")
            && refused.summary.contains("never asked for"),
        "{refused:?}"
    );
    // Resent (its ack was lost): stored once.
    agent
        .send(&result(2, "run-99", "lab/rm", ActionOutcome::Refused, "", "again"))
        .await;
    agent
        .send(&result(3, &run.id, "lab/say", ActionOutcome::Failed, "", "late"))
        .await;
    wait_for_event(&server, "action.host_finished", Some("ops-1"), |e| {
        e.summary.contains("late")
    })
    .await;
    assert_eq!(
        client.run(&run.id).await.unwrap().hosts[0].state,
        "succeeded",
        "a host's first end stands"
    );
    let refusals = crate::fake_agent::events(&server, "action.refused", None).await;
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_host_that_disconnects_mid_run_is_lost_and_the_others_complete() {
    install_crypto();
    // A 10 s keepalive interval: the fake agents are not dropped for silence while the test waits
    // on the API (only the drop below disconnects one), and the sets are refreshed every 2.5 s.
    let server =
        TestServer::start_with_agents(|config| config.agents.keepalive_interval = std::time::Duration::from_secs(10))
            .await;
    let client = server.client();
    let first = enrol(&server, "ops-1", &[("role", "ops"), ("zone", "a")]).await;
    let second = enrol(&server, "ops-2", &[("role", "ops"), ("zone", "b")]).await;
    let mut agents = vec![FakeAgent::join(&first).await, FakeAgent::join(&second).await];
    for agent in &mut agents {
        agent.keepalive_every = Some(std::time::Duration::from_millis(200));
    }
    let submitted = client
        .submit(&submit_request(&[("lab.yaml", LAB)], "lab"))
        .await
        .unwrap();
    wait_for_change(&client, submitted.change.id, &["converged"]).await;
    for agent in &mut agents {
        loop {
            match agent.recv().await {
                Some(FromServer::DesiredInstances(set)) if !set.actions.is_empty() => break,
                Some(_) => {}
                None => panic!("the connection closed"),
            }
        }
    }

    let unknown = client
        .run_action(&endstate_api::RunRequest {
            system: "nope".into(),
            action: "say".into(),
            ..endstate_api::RunRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.problem().unwrap().errors[0].field, "system", "{unknown:?}");

    let run = client
        .run_action(&endstate_api::RunRequest {
            system: "lab".into(),
            action: "say".into(),
            ..endstate_api::RunRequest::default()
        })
        .await
        .unwrap();
    assert_eq!(run.hosts.len(), 2, "{run:?}");
    for agent in &mut agents {
        loop {
            match agent.recv().await {
                Some(FromServer::RunAction(request)) => {
                    assert_eq!(request.run, run.id);
                    break;
                }
                Some(_) => {}
                None => panic!("the connection closed"),
            }
        }
    }
    // ops-2 goes away mid-run; ops-1 finishes.
    drop(agents.pop());
    agents[0]
        .send(&result(1, &run.id, "lab/say", ActionOutcome::Succeeded, "hello\n", ""))
        .await;
    let finished = wait_for_event(&server, "action.finished", None, |_| true).await;
    assert!(
        finished
            .summary
            .contains("failed: 1 of 2 hosts succeeded; ops-2 lost (the host disconnected while it ran"),
        "{finished:?}"
    );
    let view = client.run(&run.id).await.unwrap();
    assert_eq!(view.state, "failed");
    let states: Vec<(&str, &str)> = view.hosts.iter().map(|h| (h.host.as_str(), h.state.as_str())).collect();
    assert_eq!(states, [("ops-1", "succeeded"), ("ops-2", "lost")]);
    let lost = wait_for_event(&server, "action.host_lost", Some("ops-2"), |_| true).await;
    assert!(lost.summary.contains("disconnected"), "{lost:?}");
    server.stop().await;
}
