//! Every event kind round-trips through its golden JSON.
//!
//! `UPDATE_GOLDEN=1 cargo test -p endstate-events` rewrites `tests/golden/`; a diff there is a
//! change of the timeline's record, to review as one: stored events of the old shape must still
//! read (or read as unknown, verbatim).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use endstate_events::*;
use serde_json::json;

fn transition(from: &str, to: &str, wave: Option<(u32, u32)>) -> ChangeTransition {
    ChangeTransition {
        from: from.into(),
        to: to.into(),
        reason: format!("{from} to {to}, for the golden file"),
        revision: 4,
        wave,
    }
}

fn decision(verdict: &str) -> Decision {
    Decision {
        verdict: verdict.into(),
        findings: vec![
            Finding {
                rule: "health".into(),
                ok: verdict == "allow",
                message: "shop/web#0 on web-1 is healthy".into(),
            },
            Finding {
                rule: "min_healthy_time".into(),
                ok: true,
                message: "healthy for 30s of 30s".into(),
            },
        ],
        recheck_at_ms: (verdict == "wait").then_some(1_767_225_630_000),
        input: json!({"now_ms": 1_767_225_600_000_i64, "direction": "forward", "paused": false}),
    }
}

fn alert(status: &str) -> Alert {
    Alert {
        key: CheckKey {
            check: "shop/http".into(),
            target: "shop/web#0@web-1".into(),
        },
        system: "shop".into(),
        host: "web-1".into(),
        status: status.into(),
        message: "HTTP CRITICAL: 503 Service Unavailable".into(),
        opened_ms: 1_767_225_600_000,
        last_change_ms: 1_767_225_660_000,
        transitions: 2,
        flapping: false,
        acked: Some(AlertNote {
            author: "alice".into(),
            comment: "looking".into(),
            at_ms: 1_767_225_700_000,
        }),
        ticket: Some("https://tickets.example/T-12".into()),
        notify_failed: None,
        notes: vec![AlertNote {
            author: "bob".into(),
            comment: "the load balancer drains it".into(),
            at_ms: 1_767_225_710_000,
        }],
        silenced_by: None,
        consequence_of: None,
        resolved_ms: (status == "ok").then_some(1_767_225_900_000),
    }
}

fn host_result(state: &str) -> ActionHostResult {
    ActionHostResult {
        run: "run-7".into(),
        action: "flush".into(),
        state: state.into(),
        exit_code: (state != "refused").then_some(0),
        signal: None,
        duration_ms: 412,
        detail: if state == "refused" {
            "not in the catalogue".into()
        } else {
            String::new()
        },
        output: "flushed 12 keys\n".into(),
    }
}

/// One example of every kind.
fn examples() -> Vec<Event> {
    let labels = BTreeMap::from([("zone".to_owned(), "a".to_owned())]);
    vec![
        Event::RevisionSubmitted(RevisionSubmitted {
            message: "bump web".into(),
            source: "cli".into(),
            digest: format!("sha256:{}", "ab".repeat(32)),
            summary: PlanCounts {
                change: 1,
                upgrade: 2,
                ..PlanCounts::default()
            },
            objects: vec!["change component shop/web".into()],
        }),
        Event::ChangeProposed(ChangeProposed {
            revision: 4,
            to: "halted".into(),
            joined: vec!["web-9".into()],
            gone: vec![],
            steps: 2,
            waves: 2,
            reason: "proposed rebalance of revision 4: web-9 joined".into(),
        }),
        Event::ChangeQueued(transition("pending", "pending", None)),
        Event::ChangePlanning(transition("pending", "planning", None)),
        Event::ChangeRolling(transition("planning", "rolling", Some((0, 3)))),
        Event::ChangeWaiting(transition("rolling", "rolling", None)),
        Event::ChangeWaveStarted(transition("rolling", "rolling", Some((1, 3)))),
        Event::ChangeReplanned(transition("rolling", "rolling", Some((1, 3)))),
        Event::ChangePaused(transition("rolling", "rolling", None)),
        Event::ChangeResumed(transition("halted", "rolling", None)),
        Event::ChangeAccepted(transition("halted", "rolling", None)),
        Event::ChangeHalted(transition("rolling", "halted", None)),
        Event::ChangeRollingBack(transition("rolling", "rolling", Some((1, 3)))),
        Event::ChangeRolledBack(transition("rolling", "rolled_back", None)),
        Event::ChangeConverged(transition("rolling", "converged", None)),
        Event::ChangeFailed(transition("planning", "failed", None)),
        Event::ChangeAborted(transition("pending", "failed", None)),
        Event::ChangeSuperseded(transition("pending", "superseded", None)),
        Event::DecisionAllow(decision("allow")),
        Event::DecisionWait(decision("wait")),
        Event::DecisionHalt(decision("halt")),
        Event::DecisionRollback(decision("rollback")),
        Event::InstanceTransitioned(InstanceTransitioned {
            slot: 0,
            version: Some("1.4.2".into()),
            status: "healthy".into(),
            state: "running".into(),
            previous_state: Some("starting".into()),
            previous_status: Some("pending".into()),
            desired: None,
        }),
        Event::InstanceUnassignable(Problems {
            problems: vec!["shop/web#3 on web-2: no free port in 20000-20099".into()],
        }),
        Event::InstancePreviousRun(InstancePreviousRun {
            instance: "shop/web#0".into(),
            state: "exited".into(),
            version: "1.4.1".into(),
            generation: 6,
            received_ms: 1_767_225_600_000,
        }),
        Event::InstanceDetail(InstanceDetail {
            instance: "shop/web#0".into(),
            state: "exited".into(),
            exit_code: None,
            signal: Some(9),
            restarts: 3,
            detail: "killed by signal 9".into(),
            received_ms: 1_767_225_600_000,
        }),
        Event::InstanceHealth(InstanceHealth {
            instance: "shop/web#0".into(),
            healthy: false,
            detail: "GET /healthz: 503".into(),
        }),
        Event::HostUnreachable(HostUnreachable {
            reason: "no keepalive for 30000 ms".into(),
            instances: 4,
        }),
        Event::HostReachable(HostReachable {
            peer: "192.0.2.10:51234".into(),
            agent_version: "0.1.0".into(),
        }),
        Event::HostFactsChanged(HostFactsChanged {
            changes: vec![FieldChange {
                path: "kernel".into(),
                before: Some(json!("6.12.0-1-amd64")),
                after: Some(json!("6.12.0-2-amd64")),
            }],
        }),
        Event::HostRetired(HostRetired { change: 9 }),
        Event::JoinTokenCreated(JoinTokenCreated {
            labels: labels.clone(),
            host: Some("web-9".into()),
            expires: "2027-01-01T00:00:00.000Z".into(),
        }),
        Event::AgentEnrolled(AgentEnrolled {
            peer: "192.0.2.19:40000".into(),
            labels: labels.clone(),
            serial: "0a1b2c3d".into(),
            token_by: "admin".into(),
        }),
        Event::AgentEnrolRefused(PeerRefused {
            peer: "192.0.2.66:40000".into(),
            reason: "the join token was used already".into(),
        }),
        Event::AgentRevoked(Empty {}),
        Event::AgentObservationsLost(ObservationsLost { from: 41, to: 44 }),
        Event::AgentRenewed(AgentRenewed {
            serial: "0a1b2c3e".into(),
            not_after: "2027-03-01T00:00:00.000Z".into(),
        }),
        Event::AgentProtocolError(Reason {
            reason: "a frame of 20 MiB is over the limit of 16 MiB".into(),
        }),
        Event::AgentRefused(PeerRefused {
            peer: "192.0.2.66:40001".into(),
            reason: "its certificate was revoked".into(),
        }),
        Event::ActionRequested(ActionRequested {
            run: "run-7".into(),
            action: "flush".into(),
            params: BTreeMap::from([("scope".to_owned(), "all".to_owned())]),
            reason: Some("stale keys".into()),
            hosts: vec!["cache-1".into(), "cache-2".into()],
            engagement: "approval".into(),
            concurrency: 1,
            timeout_ms: 60_000,
            reentrant: false,
        }),
        Event::ActionEscalated(ActionEscalated {
            action: "failover".into(),
            params: BTreeMap::new(),
            reason: None,
            escalate_to: "dba on call".into(),
        }),
        Event::ActionApproved(ActionApproved {
            run: "run-7".into(),
            action: "flush".into(),
            reason: Some("ok for now".into()),
            requested_by: "alice".into(),
        }),
        Event::ActionStarted(ActionStarted {
            run: "run-7".into(),
            action: "flush".into(),
            hosts: vec!["cache-1".into(), "cache-2".into()],
        }),
        Event::ActionCancelled(ActionCancelled {
            run: "run-7".into(),
            action: "flush".into(),
            reason: Some("wrong cluster".into()),
            killed_on: vec!["cache-1".into()],
        }),
        Event::ActionHostLost(ActionHostLost {
            run: "run-7".into(),
            action: "flush".into(),
            reason: "the host disconnected".into(),
        }),
        Event::ActionFinished(ActionFinished {
            run: "run-7".into(),
            action: "flush".into(),
            state: "succeeded".into(),
            hosts: Some(BTreeMap::from([("cache-1".to_owned(), "succeeded".to_owned())])),
        }),
        Event::ActionHostFinished(host_result("succeeded")),
        Event::ActionRefused(host_result("refused")),
        Event::CheckStatus(CheckStatus {
            check: "shop/http".into(),
            target: "shop/web#0@web-1".into(),
            from: Some("ok".into()),
            to: "critical".into(),
            message: "HTTP CRITICAL: 503 Service Unavailable".into(),
            perfdata: "time=0.01s;;;0".into(),
        }),
        Event::AlertOpened(alert("critical")),
        Event::AlertChanged(alert("warning")),
        Event::AlertResolved(alert("ok")),
        Event::AlertSuppressed(alert("critical")),
        Event::AlertAcknowledged(alert("critical")),
        Event::AlertAnnotated(alert("critical")),
        Event::AlertDeliveryQueued(Delivery {
            id: "d_0123456789abcdef01234567".into(),
            url: "https://hooks.example/endstate".into(),
            ticket: false,
            subject: DeliverySubject {
                system: "shop".into(),
                host: "web-1".into(),
                check: "shop/http".into(),
                target: "shop/web#0@web-1".into(),
                reason: "opened".into(),
            },
            body: "{\"kind\":\"endstate.alert\"}".into(),
        }),
        Event::AlertNotified(Notified {
            url: "https://hooks.example/endstate".into(),
            delivery: "d_0123456789abcdef01234567".into(),
            reason: "opened".into(),
            check: "shop/http".into(),
            target: "shop/web#0@web-1".into(),
            error: None,
        }),
        Event::AlertNotifyFailed(Notified {
            url: "https://hooks.example/endstate".into(),
            delivery: "d_0123456789abcdef01234567".into(),
            reason: "changed (warning -> critical)".into(),
            check: "shop/http".into(),
            target: "shop/web#0@web-1".into(),
            error: Some("503 after 5 attempts".into()),
        }),
        Event::AlertTicket(Ticket {
            url: "https://tickets.example/hook".into(),
            delivery: "d_0123456789abcdef01234568".into(),
            ticket: "https://tickets.example/T-12".into(),
            check: "shop/http".into(),
            target: "shop/web#0@web-1".into(),
            alert: Some(alert("critical")),
        }),
        Event::AlertTicketFailed(TicketFailed {
            url: "https://tickets.example/hook".into(),
            delivery: "d_0123456789abcdef01234568".into(),
            error: "no link in the answer".into(),
            check: "shop/http".into(),
            target: "shop/web#0@web-1".into(),
        }),
        Event::AlertHandled(Handled {
            command: "/usr/local/bin/page".into(),
            reason: "opened".into(),
            check: "shop/http".into(),
            target: "shop/web#0@web-1".into(),
            error: None,
            output: "paged alice\n".into(),
        }),
        Event::AlertHandlerFailed(Handled {
            command: "/usr/local/bin/page".into(),
            reason: "opened".into(),
            check: "shop/http".into(),
            target: "shop/web#0@web-1".into(),
            error: Some("exit code 2".into()),
            output: "no pager configured\n".into(),
        }),
        Event::SilenceCreated(Silence {
            id: 3,
            system: Some("shop".into()),
            check: None,
            host: Some("web-1".into()),
            labels: labels.clone(),
            starts_ms: 1_767_225_600_000,
            ends_ms: 1_767_229_200_000,
            reason: "kernel upgrade".into(),
            author: "alice".into(),
        }),
        Event::SilenceRemoved(SilenceId { id: 3 }),
        Event::SilenceExpired(SilenceId { id: 3 }),
        Event::TokenCreated(TokenCreated {
            name: "deploy-bot".into(),
            role: "operator".into(),
            systems: vec!["shop".into()],
        }),
        Event::TokenRevoked(TokenRevoked {
            name: "deploy-bot".into(),
            role: "operator".into(),
        }),
        Event::TokenAdminReset(AdminReset { revoked: 1 }),
        Event::NoteAdded(NoteAdded {
            text: "the CDN is down; expect errors".into(),
        }),
        Event::SourceAdded(SourceDefinition {
            name: "shop".into(),
            repository: "https://forge.example/ops/shop.git".into(),
            branch: "main".into(),
            paths: vec!["systems/shop".into()],
            interval_ms: 30_000,
            credentials_file: Some("/etc/endstate/forge.credentials".into()),
            webhook_secret_file: Some("/etc/endstate/forge.webhook-secret".into()),
        }),
        Event::SourceRemoved(SourceRemoved { name: "shop".into() }),
        Event::SourceCommit(SourceCommitSeen {
            name: "shop".into(),
            repository: "https://forge.example/ops/shop.git".into(),
            branch: "main".into(),
            commit: "3f2a9c0d5e6b7a8f9e0d1c2b3a4f5e6d7c8b9a0f".into(),
            author: "Ada <ada@example.org>".into(),
            committer: "Ada <ada@example.org>".into(),
            message: "shop/web 1.4.2\n\nThe checkout fix.\n".into(),
            outcome: "refused".into(),
            revision: None,
            superseded: vec!["9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d shop/web 1.4.1".into()],
            rewritten_from: None,
            problems: vec!["systems/shop/web.yaml:7:12: unknown field `verison`".into()],
        }),
        Event::SourceFailed(SourceFailed {
            name: "shop".into(),
            reason: "fetching https://forge.example/ops/shop.git failed: connection refused".into(),
        }),
        Event::SourceRecovered(SourceRemoved { name: "shop".into() }),
        Event::TimelineCompacted(Compacted {
            deleted: vec![KindCount {
                kind: "check.status".into(),
                deleted: 1200,
            }],
            rules: vec![KeepRule {
                kind: "check.status".into(),
                keep_s: 604_800,
            }],
        }),
    ]
}

#[test]
fn every_kind_has_an_example() {
    let all = examples();
    let kinds_shown: BTreeSet<&str> = all.iter().map(Event::kind).collect();
    let kinds: BTreeSet<&str> = KINDS.iter().copied().collect();
    assert_eq!(kinds_shown, kinds, "every kind needs exactly one golden example");
    assert_eq!(kinds_shown.len(), all.len(), "one example per kind");
}

#[test]
fn every_kind_round_trips_through_its_golden_json() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    for event in examples() {
        let kind = event.kind();
        let body = Body::Known(Box::new(event.clone()));
        let text = format!("{}\n", serde_json::to_string_pretty(&body).unwrap());
        let path = dir.join(format!("{kind}.json"));
        if update {
            std::fs::write(&path, &text).unwrap();
        }
        let golden = std::fs::read_to_string(&path)
            .unwrap_or_else(|error| panic!("{}: {error} (UPDATE_GOLDEN=1 writes it)", path.display()));
        assert_eq!(
            text, golden,
            "{kind}: the record changed; review tests/golden/{kind}.json"
        );
        // Read back from the golden file: the same event, typed.
        let read: Body = serde_json::from_str(&golden).unwrap();
        assert_eq!(
            read,
            Body::Known(Box::new(event)),
            "{kind}: the golden file does not read back as written"
        );
        // And from the store's two columns.
        assert_eq!(
            Body::parse(kind, &body.data()),
            body,
            "{kind}: kind and data do not read back"
        );
    }
    // No golden file of a kind that is gone.
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let kind = name.trim_end_matches(".json");
        assert!(KINDS.contains(&kind), "tests/golden/{name} is of no known kind");
    }
}

/// Events written before the record was typed still read: a transition's wave as a list, an
/// instance's `previous_state` as null, a store's `agent.revoked` as `{}`.
#[test]
fn records_of_the_earlier_shape_still_read() {
    let old = [
        (
            "change.rolling",
            json!({"from": "planning", "to": "rolling", "reason": "r", "revision": 2, "wave": [0, 3]}),
        ),
        (
            "change.converged",
            json!({"from": "rolling", "to": "converged", "reason": "r", "revision": 2, "wave": null}),
        ),
        (
            "instance.transitioned",
            json!({"slot": 1, "version": null, "status": "unknown", "state": "unknown", "previous_state": null, "previous_status": null}),
        ),
        (
            "instance.transitioned",
            json!({"slot": 1, "version": "1.0", "status": "unknown", "state": "stopped", "desired": false}),
        ),
        ("agent.revoked", json!({})),
        (
            "alert.notified",
            json!({"url": "u", "delivery": "d", "reason": "opened", "check": "c", "target": "t", "error": null}),
        ),
        (
            "action.finished",
            json!({"state": "interrupted", "run": "run-1", "action": "flush"}),
        ),
    ];
    for (kind, data) in old {
        let body = Body::parse(kind, &data);
        assert!(matches!(body, Body::Known(_)), "{kind} {data}: {body:?}");
    }
}
