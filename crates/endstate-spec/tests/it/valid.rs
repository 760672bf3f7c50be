//! A realistic valid spec, and what it normalises to.

use super::*;
use endstate_spec::{ArtifactSource, Batch, Duration, OnFailure, Targets};

#[test]
fn shop_spec_is_valid_and_normalised() {
    let loaded = load(&files(&SHOP), &[]);
    assert_eq!(render(&loaded), "");
    let desired = loaded.desired.expect("no errors");
    assert_eq!(
        desired.systems.keys().collect::<Vec<_>>(),
        ["catalog", "payments", "shop"]
    );
    assert_eq!(
        desired.components.keys().collect::<Vec<_>>(),
        ["payments/gateway", "shop/api", "shop/db"]
    );
    assert_eq!(desired.subsystems_closure("shop"), ["catalog", "payments", "shop"]);
    assert_eq!(desired.subsystems_closure("payments"), ["payments"]);
    assert_eq!(
        desired
            .components_of("shop")
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>(),
        ["shop/api", "shop/db"]
    );

    let api = &desired.components["shop/api"];
    assert_eq!(api.depends_on, ["payments/gateway", "shop/db"]);
    assert_eq!(api.placement.count, Count::Total(6));
    assert_eq!(api.placement.selector.to_string(), "role=web,zone in (a|b)");
    assert_eq!(api.placement.spread_by.as_deref(), Some("zone"));
    assert_eq!(api.rollout.batch, Batch::Percent(25));
    assert_eq!(api.rollout.max_unavailable, 2);
    assert_eq!(api.rollout.one_domain_at_a_time.as_deref(), Some("zone"));
    assert_eq!(api.rollout.pause, Some(Duration::from_secs(30)));
    assert_eq!(api.rollout.min_healthy_time, Duration::from_secs(10));
    assert_eq!(api.rollout.on_failure, OnFailure::Rollback);
    assert_eq!(api.artifact.version, "2.4.1");
    assert!(matches!(&api.artifact.source, ArtifactSource::Url { sha256, .. } if sha256.starts_with("9f86d0")));

    // Defaults.
    let gateway = &desired.components["payments/gateway"];
    assert_eq!(gateway.artifact.version, "1.10");
    assert_eq!(gateway.rollout.canary, 1);
    assert_eq!(gateway.rollout.batch, Batch::Size(1));
    assert_eq!(gateway.rollout.on_failure, OnFailure::Halt);
    assert_eq!(gateway.rollout.min_healthy_time, Duration::from_secs(90));
    assert!(gateway.placement.selector.is_empty());
    assert_eq!(desired.components["shop/db"].placement.count, Count::PerHost(1));

    assert_eq!(
        desired.checks["shop-api-http"].targets,
        Targets::Component("shop/api".to_owned())
    );
    assert_eq!(desired.checks["disk"].interval, Duration::from_secs(60));
    assert_eq!(desired.actions["flush-cache"].parameters.len(), 3);
    assert_eq!(
        desired.policies["production-safety"].rules.freeze_windows[0].duration,
        Duration::from_secs(62 * 3600)
    );

    // The stored form round-trips through JSON, durations as strings.
    let json = serde_json::to_string(&desired).expect("serializable");
    assert!(json.contains(r#""min_healthy_time":"1m30s""#), "{json}");
    let back: endstate_spec::DesiredState = serde_json::from_str(&json).expect("deserializable");
    assert_eq!(back, desired);
}

#[test]
fn file_order_does_not_matter() {
    let mut reversed = SHOP;
    reversed.reverse();
    assert_eq!(load(&files(&reversed), &[]), load(&files(&SHOP), &[]));
}

#[test]
fn selector_matching_no_known_host_is_a_warning() {
    let hosts = [HostInfo {
        name: "h1".to_owned(),
        labels: [("role".to_owned(), "web".to_owned())].into(),
    }];
    let input = format!("{BASE}placement: {{ selector: {{ role: db }}, count: {{ total: 1 }} }}\n")
        .replace("placement: { count: { total: 3 } }\n", "");
    check_with_hosts(
        &[("a.yaml", &input)],
        &hosts,
        "a.yaml:11:24: warning[selector-matches-no-host]: found placement selector `role=db`, which matches none of the 1 known hosts",
    );
    // Without an inventory there is nothing to compare with.
    check(&[("a.yaml", &input)], "");
}

#[test]
fn json_schema_describes_every_kind() {
    let schema = endstate_spec::json_schema();
    let text = serde_json::to_string_pretty(&schema).expect("json");
    for kind in [
        "System",
        "Component",
        "Check",
        "Action",
        "Policy",
        "Host",
        "endstate/v1",
        "per_host",
        "one_domain_at_a_time",
    ] {
        assert!(text.contains(kind), "schema lacks {kind}");
    }
    assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
    assert!(
        schema["anyOf"].as_array().is_some_and(|kinds| kinds.len() == 6),
        "{text}"
    );
}

/// Many-to-many aggregation with a selector: `storage` aggregates every system labelled
/// `tier: storage` (never itself), `shop` lists `db` by name too, so `db` is in both; a system
/// added with the label joins the aggregate in the next revision.
#[test]
fn selector_aggregate_gains_members_and_shares_them() {
    let system = |name: &str, extra: &str| format!("---\napiVersion: endstate/v1\nkind: System\nname: {name}\n{extra}");
    let base = [
        system(
            "storage",
            "labels: { tier: storage }\nsubsystem_selector: { tier: storage }\n",
        ),
        system("shop", "subsystems: [db, web]\n"),
        system("db", "labels: { tier: storage }\n"),
        system("web", "labels: { tier: web }\n"),
    ]
    .concat();
    let loaded = load(&files(&[("a.yaml", &base)]), &[]);
    assert_eq!(render(&loaded), "");
    let desired = loaded.desired.expect("no errors");
    assert_eq!(desired.systems["storage"].subsystems, ["db"]);
    assert_eq!(desired.systems["shop"].subsystems, ["db", "web"]);
    assert_eq!(
        desired.systems["storage"]
            .subsystem_selector
            .as_ref()
            .map(ToString::to_string),
        Some("tier=storage".to_owned())
    );

    let grown = format!("{base}{}", system("blobs", "labels: { tier: storage }\n"));
    let loaded = load(&files(&[("a.yaml", &grown)]), &[]);
    assert_eq!(render(&loaded), "");
    let desired = loaded.desired.expect("no errors");
    assert_eq!(desired.systems["storage"].subsystems, ["blobs", "db"]);
    assert_eq!(desired.subsystems_closure("storage"), ["blobs", "db", "storage"]);
}

/// A static inventory entry: a machine without an agent, with labels, facts (any scalar, kept as
/// text) and the systems it serves; an enrolled agent of the same name is a warning.
#[test]
fn static_hosts_are_in_the_desired_state() {
    let input = "\
apiVersion: endstate/v1
kind: System
name: net
---
apiVersion: endstate/v1
kind: Host
name: core-switch-1
description: Core switch, rack 12.
labels: { zone: a, role: switch }
facts: { vendor: arista, ports: 48, poe: false }
systems: [net]
";
    let loaded = load(&files(&[("a.yaml", input)]), &[]);
    assert_eq!(render(&loaded), "");
    let desired = loaded.desired.expect("no errors");
    let switch = &desired.hosts["core-switch-1"];
    assert_eq!(switch.systems, ["net"]);
    assert_eq!(switch.labels["role"], "switch");
    assert_eq!(
        switch.facts.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        ["poe=false", "ports=48", "vendor=arista"]
    );
    let agent = HostInfo {
        name: "core-switch-1".into(),
        labels: Default::default(),
    };
    let loaded = load(&files(&[("a.yaml", input)]), &[agent]);
    assert_eq!(
        render(&loaded),
        "a.yaml:7:7: warning[static-host-has-agent]: found static host `core-switch-1`, which is also an enrolled agent; the agent's entry is kept\n"
    );
}
