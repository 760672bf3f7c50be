//! The inventory (`endstate inventory`, list, filters, CSV, one host) and `endstate why`, through
//! the binary, on a store seeded with hosts, instances and their history while the server is
//! stopped, so every figure in the goldens is known.

use endstate_store::{
    ActualInstance, DesiredInstance, HostRecord, InstanceRecord, InstanceTransition, NewEvent, SqliteStore, Store,
};
use endstate_types::{ChangeId, Generation, HostName, Status};

use crate::describe::{SPEC, mask};
use crate::server::{cli, start_server};
use crate::{repo_root, text};

const MINUTE_MS: i64 = 60_000;

/// A switch without an agent, serving the platform.
const STATIC_HOST: &str = "
---
apiVersion: endstate/v1
kind: Host
name: core-switch-1
description: Core switch, rack 12.
labels: { zone: a, role: switch }
facts: { vendor: arista, model: 7050X }
systems: [platform]
";

#[track_caller]
fn golden(name: &str, actual: &str) {
    let path = repo_root().join("crates/endstate-cli/tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    assert_eq!(actual, std::fs::read_to_string(&path).unwrap(), "golden {name}");
}

/// Two agent hosts running cache/memo; on h-a, memo went to 1.1.0 and failed 30 minutes ago,
/// after a change, a kernel update and a note.
async fn seed(store: &SqliteStore, now: i64) {
    for (name, zone, kernel) in [("h-a", "a", "6.12.0"), ("h-b", "b", "6.1.0")] {
        store
            .upsert_host(HostRecord {
                name: HostName(name.into()),
                labels: [("zone".to_string(), zone.to_string())].into(),
                facts: serde_json::json!({
                    "hostname": name, "os": "Debian GNU/Linux 13", "kernel": kernel, "arch": "x86_64",
                    "cpus": 4, "memory_bytes": 8_589_934_592u64, "disks": [], "agent_version": "0.1.0",
                }),
                last_seen_ms: None,
                retired_ms: None,
            })
            .await
            .unwrap();
    }
    let record = |host: &str| InstanceRecord {
        component_key: "cache/memo".into(),
        system: "cache".into(),
        host: HostName(host.into()),
        slot: 0,
        desired: DesiredInstance {
            version: "1.1.0".into(),
            config_digest: "d".into(),
            generation: Generation(1),
        },
        actual: None,
    };
    store.put_instances(vec![record("h-a"), record("h-b")]).await.unwrap();
    let transition =
        |host: &str, ago_min: i64, version: &str, status: Status, change: Option<u64>| InstanceTransition {
            component_key: "cache/memo".into(),
            host: HostName(host.into()),
            slot: 0,
            actual: ActualInstance {
                version: Some(version.into()),
                status,
                state: "running".into(),
                since_ms: now - ago_min * MINUTE_MS,
            },
            change: change.map(ChangeId),
            actor: Some(format!("agent:{host}")),
        };
    for t in [
        transition("h-a", 180, "1.0.0", Status::Healthy, None),
        transition("h-b", 180, "1.0.0", Status::Healthy, None),
        transition("h-a", 40, "1.1.0", Status::Healthy, Some(2)),
        transition("h-a", 30, "1.1.0", Status::Unhealthy, Some(2)),
    ] {
        store.record_transitions(vec![t]).await.unwrap();
    }
    let at = |ago_min: i64| now - ago_min * MINUTE_MS;
    store
        .append_events(vec![
            NewEvent {
                host: Some("h-a".into()),
                actor: Some("agent:h-a".into()),
                ..NewEvent::new(
                    at(50),
                    "host.facts_changed",
                    "host h-a facts changed: kernel: \"6.1.0\" -> \"6.12.0\"",
                )
            },
            NewEvent {
                systems: vec!["cache".into()],
                change: Some(ChangeId(2)),
                actor: Some("server".into()),
                ..NewEvent::new(
                    at(41),
                    "change.wave_started",
                    "change 2: wave 1/2 started (canary, zone=a): cache/memo",
                )
            },
            NewEvent {
                systems: vec!["cache".into()],
                actor: Some("alice".into()),
                ..NewEvent::new(at(35), "note.added", "alice: raised memo's memory limit by hand")
            },
            // Another system's event: not a suspect.
            NewEvent {
                systems: vec!["payments".into()],
                actor: Some("bob".into()),
                ..NewEvent::new(at(33), "note.added", "bob: payments maintenance")
            },
        ])
        .await
        .unwrap();
}

#[test]
fn inventory_and_why_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.json");
    let data = dir.path().join("data");
    let (server, url, token) = start_server(&data, &config);
    let token = token.unwrap();
    let spec = dir.path().join("spec");
    std::fs::create_dir_all(&spec).unwrap();
    std::fs::write(spec.join("systems.yaml"), format!("{SPEC}{STATIC_HOST}")).unwrap();
    let out = cli(&["apply", spec.to_str().unwrap(), "--yes"], &url, &token, &config);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    drop(server);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let now = jiff::Timestamp::now().as_millisecond();
    runtime.block_on(async {
        let store = SqliteStore::open(data.join("endstate.db")).unwrap();
        seed(&store, now).await;
        store.close().await;
    });
    let (_server, url, _) = start_server(&data, &config);
    let run = |args: &[&str]| {
        let out = cli(args, &url, &token, &config);
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };

    // The list: agents and the static switch.
    let (code, out, err) = run(&["inventory"]);
    assert_eq!(code, Some(0), "{err}");
    golden("inventory.txt", &mask(&out));
    // CSV: one column per fact, empty where a host lacks it.
    let (code, out, err) = run(&["inventory", "--csv"]);
    assert_eq!(code, Some(0), "{err}");
    golden("inventory.csv", &mask(&out));
    // Filters: labels, a system's subtree (platform aggregates cache), kind.
    let names = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["-o", "json", "inventory"];
        all.extend_from_slice(args);
        let (code, out, err) = run(&all);
        assert_eq!(code, Some(0), "{err}");
        let hosts: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        hosts.iter().map(|h| h["name"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(names(&["--selector", "zone=a"]), ["core-switch-1", "h-a"]);
    assert_eq!(names(&["--selector", "zone=a|b,role=switch"]), ["core-switch-1"]);
    assert_eq!(names(&["--system", "platform"]), ["core-switch-1", "h-a", "h-b"]);
    assert_eq!(names(&["--system", "storefront"]), ["h-a", "h-b"]);
    assert_eq!(names(&["--kind", "static"]), ["core-switch-1"]);
    // Bad filters: named, exit 2.
    let (code, _, err) = run(&["inventory", "--selector", "zone"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("selector: \"zone\" is not key=value"), "{err}");
    let (code, _, err) = run(&["inventory", "--kind", "virtual"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("kind:"), "{err}");
    let (code, _, err) = run(&["inventory", "--system", "nowhere"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("\"nowhere\""), "{err}");

    // One host: facts, what ran there when, and its changes.
    let (code, out, err) = run(&["inventory", "h-a"]);
    assert_eq!(code, Some(0), "{err}");
    golden("inventory-h-a.txt", &mask(&out));
    let (code, _, err) = run(&["inventory", "nowhere"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("not in the inventory"), "{err}");

    // why: the failure 30 minutes ago, explained by what came before it, nearest first.
    let (code, out, err) = run(&["why", "cache/memo#0@h-a"]);
    assert_eq!(code, Some(0), "{err}");
    golden("why-memo.txt", &mask(&out));
    // history of the same instance: new, failing since the moment why explains.
    let (code, out, err) = run(&["history", "cache/memo#0@h-a"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(mask(&out).starts_with("cache/memo#0@h-a (instance): new\n"), "{out}");
    let (code, _, err) = run(&["why", "cache/memo#0@h-a", "--window", "90d"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("window:"), "{err}");
}
