//! What each host should run: the placement of a desired state, rendered into the protocol's
//! instance assignments (ports allocated, templates rendered), with a digest per host.
//!
//! Pure and deterministic: the same desired state and hosts give the same assignments, ports and
//! digests, so a restarted server sends nothing new and agents restart nothing.

use std::collections::{BTreeMap, BTreeSet};

use endstate_agent_proto::{
    ActionAssignment, ActionParameter, ActionParameterType, Artifact, ArtifactSource, CheckAssignment,
    CheckProbe as WireCheckProbe, ConfigFile, HealthProbe, InstanceAssignment, InstanceId, Probe as WireProbe,
    UpgradeOrder,
};
use endstate_plan::template::{ConfigTemplate, InstanceTemplates, TemplateVars, render_instance};
use endstate_plan::{Placement, PlacementKey};
use endstate_spec::{ArtifactSource as SpecSource, Component, DesiredState, HostInfo, Probe};
use sha2::{Digest, Sha256};

use crate::blueprint::Current;

/// Ports allocated when a component does not fix one, unless the server is given others.
pub(crate) const DEFAULT_DYNAMIC_PORTS: std::ops::RangeInclusive<u16> = 20_000..=29_999;

/// How long an instance has after SIGTERM (components do not declare it yet).
const STOP_GRACE_MS: u64 = 10_000;

/// What one host should run.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct HostAssignments {
    /// Every instance, by id.
    pub(crate) instances: Vec<InstanceAssignment>,
    /// Every monitoring check the host runs, by id.
    pub(crate) checks: Vec<CheckAssignment>,
    /// The host's action catalogue, by name (`system/action`).
    pub(crate) actions: Vec<ActionAssignment>,
    /// Per instance id: the component key, the slot, the version and the digest of the assignment.
    pub(crate) index: BTreeMap<String, InstanceMeta>,
    /// SHA-256 of the whole set: the generation grows when it changes.
    pub(crate) digest: String,
    /// Instances that could not be rendered, with the reason (they are not sent).
    pub(crate) problems: Vec<String>,
}

/// What the server keeps about one assigned instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct InstanceMeta {
    pub(crate) component_key: String,
    pub(crate) system: String,
    pub(crate) slot: u32,
    pub(crate) version: String,
    pub(crate) digest: String,
}

/// Every host's set, rendered from the blueprint (what every instance should run now: see
/// [`crate::blueprint`]). Every host in service gets a set (empty when nothing is placed on it),
/// and so does every host the blueprint places on; the hosts in service decide no placement.
///
/// `one_machine`: every agent runs on this one machine (`endstate dev`, a lab), so a dynamic port
/// is unique across hosts, not only on its host.
pub(crate) fn sets(
    current: &Current,
    in_service: &[HostInfo],
    salt: &str,
    one_machine: bool,
    ports: &std::ops::RangeInclusive<u16>,
) -> BTreeMap<String, HostAssignments> {
    let chosen: BTreeMap<PlacementKey, (&Component, Placement)> = current
        .blueprint
        .placements
        .iter()
        .filter_map(|(key, rendered)| {
            let component = current.desired_of(rendered.side)?.components.get(&*key.component)?;
            Some((key.clone(), (component, rendered.placement.clone())))
        })
        .collect();
    // The labels templates see: a host's as it is in service, else as the placement saw it.
    let mut hosts: Vec<HostInfo> = in_service.to_vec();
    let mut known: BTreeSet<String> = hosts.iter().map(|h| h.name.clone()).collect();
    let basis = current
        .rollout
        .iter()
        .flat_map(|r| r.hosts.iter())
        .chain(current.base.iter().flat_map(|b| b.hosts.iter()));
    for host in basis {
        if known.insert(host.name.clone()) {
            hosts.push(host.clone());
        }
    }
    assignments_of(&chosen, &hosts, salt, one_machine, ports)
}

/// The assignments of `desired` placed on `hosts` (what [`sets`] renders for a revision in force
/// on those hosts with no change rolling out).
#[cfg(test)]
pub(crate) fn assignments(desired: &DesiredState, hosts: &[HostInfo], salt: &str) -> BTreeMap<String, HostAssignments> {
    let (placements, _unplaced) = endstate_plan::place(desired, hosts);
    let chosen: BTreeMap<PlacementKey, (&Component, Placement)> = placements
        .into_iter()
        .filter_map(|(key, placement)| {
            let component = desired.components.get(&*key.component)?;
            Some((key, (component, placement)))
        })
        .collect();
    assignments_of(&chosen, hosts, salt, false, &DEFAULT_DYNAMIC_PORTS)
}

fn assignments_of(
    placements: &BTreeMap<PlacementKey, (&Component, Placement)>,
    hosts: &[HostInfo],
    salt: &str,
    one_machine: bool,
    dynamic: &std::ops::RangeInclusive<u16>,
) -> BTreeMap<String, HostAssignments> {
    let labels: BTreeMap<&str, &endstate_types::Labels> = hosts.iter().map(|h| (h.name.as_str(), &h.labels)).collect();
    let mut out: BTreeMap<String, HostAssignments> = hosts
        .iter()
        .map(|h| (h.name.clone(), HostAssignments::default()))
        .collect();
    // Ports taken, per machine: per host, or all in one when the agents share a machine.
    let mut taken: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    let machine = |host: &str| if one_machine { String::new() } else { host.to_owned() };
    // Fixed ports first, so dynamic ones never take them.
    for (key, (component, _)) in placements {
        let used = taken.entry(machine(&key.host)).or_default();
        used.extend(component.ports.iter().filter_map(|p| p.number));
    }
    for (key, (component, placement)) in placements {
        // The planner's index (a change in it is a planned reconfiguration), 0 when the
        // component's templates do not use it.
        let this_index = placement.index.unwrap_or(0);
        let id = InstanceId::new(&component.system, &component.name, key.slot);
        let used = taken.entry(machine(&key.host)).or_default();
        // Start-before-stop needs the new instance on other ports than the old one, for an
        // upgrade and for a reconfiguration alike: the ports follow the version and the config.
        let version_salt = match upgrade_order(component) {
            UpgradeOrder::StartFirst => {
                // The index is rendered too (`instance.index`), and moves when other instances do.
                let config = Sha256::digest(placement.config.to_string().as_bytes());
                format!("{salt}/{}/{}/{this_index}", placement.version, hex8(&config))
            }
            UpgradeOrder::StopFirst => salt.to_owned(),
        };
        let ports = allocate_ports(component, &version_salt, &key.host, &id, used, dynamic);
        let host_labels = labels.get(&*key.host).map(|l| (*l).clone()).unwrap_or_default();
        let host = out.entry(key.host.to_string()).or_default();
        match assignment(
            component,
            &placement.version,
            id.clone(),
            &key.host,
            this_index,
            host_labels,
            ports,
        ) {
            Ok(assignment) => {
                let digest = digest_of(&assignment);
                host.index.insert(
                    id.0.clone(),
                    InstanceMeta {
                        component_key: key.component.to_string(),
                        system: component.system.clone(),
                        slot: key.slot,
                        version: placement.version.to_string(),
                        digest,
                    },
                );
                host.instances.push(assignment);
            }
            Err(reason) => host.problems.push(format!("{id} on {}: {reason}", key.host)),
        }
    }
    for host in out.values_mut() {
        host.digest = digest_of(&host.instances);
    }
    out
}

fn assignment(
    component: &Component,
    version: &str,
    id: InstanceId,
    host: &str,
    instance_index: u32,
    host_labels: endstate_types::Labels,
    ports: BTreeMap<String, u16>,
) -> Result<InstanceAssignment, String> {
    let templates = InstanceTemplates {
        command: component.command.clone(),
        args: component.args.clone(),
        env: component.env.clone(),
        config_files: component
            .config_files
            .iter()
            .map(|f| ConfigTemplate {
                path: f.path.clone(),
                template: f.template.clone(),
            })
            .collect(),
    };
    let vars = TemplateVars {
        instance_host: host.to_owned(),
        instance_index,
        component_name: component.name.clone(),
        component_system: component.system.clone(),
        component_version: version.to_owned(),
        host_labels: host_labels.into_iter().collect(),
        ports: ports.clone(),
    };
    let rendered = render_instance(&templates, &vars).map_err(|errors| errors.to_string())?;
    let source = match &component.artifact.source {
        SpecSource::Path { path } => ArtifactSource::Path { path: path.clone() },
        SpecSource::Url { url, sha256 } => ArtifactSource::Url {
            url: url.clone(),
            sha256: sha256.clone(),
        },
    };
    let health = component.health.as_ref().map(|health| HealthProbe {
        probe: match &health.probe {
            Probe::Http { port, path } => WireProbe::Http {
                port: port.clone(),
                path: path.clone(),
            },
            Probe::Tcp { port } => WireProbe::Tcp { port: port.clone() },
            Probe::Exec { command, args } => WireProbe::Exec {
                command: command.clone(),
                args: args.clone(),
            },
        },
        interval_ms: millis(health.interval),
        timeout_ms: millis(health.timeout),
        healthy_after: health.healthy_threshold.max(1),
        unhealthy_after: health.unhealthy_threshold.max(1),
    });
    Ok(InstanceAssignment {
        id,
        artifact: Artifact {
            version: version.to_owned(),
            source,
        },
        command: rendered.command,
        args: rendered.args,
        env: rendered.env,
        config_files: rendered
            .config_files
            .into_iter()
            .map(|f| ConfigFile {
                path: f.path,
                content: f.contents,
            })
            .collect(),
        ports,
        health,
        stop_grace_ms: STOP_GRACE_MS,
        upgrade: upgrade_order(component),
        run_as: component.run_as.as_ref().map(|run_as| endstate_agent_proto::RunAs {
            user: run_as.user.clone(),
            group: run_as.group.clone(),
        }),
    })
}

/// Start-before-stop when no port stands in the way: every port is allocated by the server (a new
/// version gets ports of its own) and none is declared exclusive. Otherwise stop-then-start.
fn upgrade_order(component: &Component) -> UpgradeOrder {
    if component.ports.iter().all(|p| p.number.is_none() && !p.exclusive) {
        UpgradeOrder::StartFirst
    } else {
        UpgradeOrder::StopFirst
    }
}

fn hex8(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn millis(duration: endstate_spec::Duration) -> u64 {
    u64::try_from(duration.as_std().as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Ports of one instance: fixed numbers as declared; the others from a hash of (host, instance,
/// port name) in the dynamic range, moving up past ports already taken on the host. Stable as
/// long as the instances of the host are.
fn allocate_ports(
    component: &Component,
    salt: &str,
    host: &str,
    id: &InstanceId,
    used: &mut BTreeSet<u16>,
    dynamic: &std::ops::RangeInclusive<u16>,
) -> BTreeMap<String, u16> {
    let first = *dynamic.start();
    let len = dynamic.end().saturating_sub(first).saturating_add(1).max(1);
    let mut ports = BTreeMap::new();
    for port in &component.ports {
        let number = match port.number {
            Some(number) => number,
            None => {
                let hash = Sha256::digest(format!("{salt}/{host}/{id}/{}", port.name).as_bytes());
                let start = u16::from_be_bytes([hash[0], hash[1]]) % len;
                let mut candidate = start;
                while used.contains(&(first + candidate)) {
                    candidate = (candidate + 1) % len;
                    if candidate == start {
                        break;
                    }
                }
                let number = first + candidate;
                used.insert(number);
                number
            }
        };
        ports.insert(port.name.clone(), number);
    }
    ports
}

/// Adds every check of `desired` to the hosts that run it: a check of a component runs on each
/// of its instances' hosts, watching that instance (`system/component#slot@host`; ports resolved
/// from the instance's); a check
/// of a host selector runs on each matching host, watching the host. An exec check's arguments
/// may name `{{ ports.<name> }}`, `{{ instance.host }}` and `{{ instance.id }}`. The sets'
/// digests then cover their checks.
pub(crate) fn add_checks(desired: &DesiredState, sets: &mut BTreeMap<String, HostAssignments>, hosts: &[HostInfo]) {
    for check in desired.checks.values() {
        let key = format!("{}/{}", check.system, check.name);
        let timing = |id: String, target: String, probe: WireCheckProbe| CheckAssignment {
            id,
            check: key.clone(),
            target,
            probe,
            interval_ms: millis(check.interval),
            timeout_ms: millis(check.timeout),
            splay_ms: u64::try_from(check.splay.as_std().as_millis()).unwrap_or(u64::MAX),
        };
        match &check.targets {
            endstate_spec::Targets::Component(component) => {
                for (host, set) in sets.iter_mut() {
                    let mut rendered = Vec::new();
                    for instance in &set.instances {
                        let Some(meta) = set.index.get(&instance.id.0) else {
                            continue;
                        };
                        if meta.component_key != *component {
                            continue;
                        }
                        match check_probe(&check.probe, host, Some(instance)) {
                            // Instance ids are per host (`shop/web#0` on every host): the
                            // target names the host too.
                            Ok(probe) => rendered.push(timing(
                                format!("{key}@{}@{host}", instance.id.0),
                                format!("{}@{host}", instance.id.0),
                                probe,
                            )),
                            Err(reason) => set
                                .problems
                                .push(format!("check {key} of {} on {host}: {reason}", instance.id.0)),
                        }
                    }
                    set.checks.extend(rendered);
                }
            }
            endstate_spec::Targets::Hosts(selector) => {
                for host in hosts.iter().filter(|h| selector.matches(&h.labels)) {
                    let Some(set) = sets.get_mut(&host.name) else { continue };
                    match check_probe(&check.probe, &host.name, None) {
                        Ok(probe) => set
                            .checks
                            .push(timing(format!("{key}@{}", host.name), host.name.clone(), probe)),
                        Err(reason) => set.problems.push(format!("check {key} on {}: {reason}", host.name)),
                    }
                }
            }
        }
    }
    for set in sets.values_mut() {
        if !set.checks.is_empty() {
            set.checks.sort_by(|a, b| a.id.cmp(&b.id));
            set.digest = digest_of(&(&set.instances, &set.checks));
        }
    }
}

/// Adds every `Action` of `desired` to the catalogue of the hosts it targets: a component's
/// action on each host running one instance of it (its `{{ ports.<name> }}` are that instance's;
/// a host with several instances of the component is not offered it, with a problem saying so),
/// a selector's action on each matching host. Everything in the command but
/// `{{ params.<name> }}` is rendered here; the agent fills those in. Call after [`add_checks`]:
/// the sets' digests then cover their catalogues.
pub(crate) fn add_actions(desired: &DesiredState, sets: &mut BTreeMap<String, HostAssignments>, hosts: &[HostInfo]) {
    for action in desired.actions.values() {
        let key = format!("{}/{}", action.system, action.name);
        let parameters: BTreeMap<String, ActionParameter> = action
            .parameters
            .iter()
            .map(|(name, p)| {
                let kind = match p.kind {
                    endstate_spec::ParameterType::String => ActionParameterType::String,
                    endstate_spec::ParameterType::Integer => ActionParameterType::Integer,
                    endstate_spec::ParameterType::Boolean => ActionParameterType::Boolean,
                    endstate_spec::ParameterType::Enum => ActionParameterType::Enum,
                };
                let wire = ActionParameter {
                    kind,
                    values: p.values.clone(),
                    min: p.min,
                    max: p.max,
                };
                (name.clone(), wire)
            })
            .collect();
        for host in hosts {
            let Some(set) = sets.get_mut(&host.name) else { continue };
            let ports = match &action.targets {
                endstate_spec::Targets::Hosts(selector) if selector.matches(&host.labels) => None,
                endstate_spec::Targets::Hosts(_) => continue,
                endstate_spec::Targets::Component(component) => {
                    let mine: Vec<&InstanceAssignment> = set
                        .instances
                        .iter()
                        .filter(|i| set.index.get(&i.id.0).is_some_and(|m| m.component_key == *component))
                        .collect();
                    match mine.as_slice() {
                        [] => continue,
                        [one] => Some(one.ports.clone()),
                        _ => {
                            set.problems.push(format!(
                                "action {key} is not offered on {}: it runs {} instances of {component}",
                                host.name,
                                mine.len()
                            ));
                            continue;
                        }
                    }
                }
            };
            let mut command = Vec::with_capacity(action.command.len());
            let mut failed = None;
            for element in &action.command {
                match render_action_element(element, action, host, ports.as_ref()) {
                    Ok(text) => command.push(text),
                    Err(reason) => failed = Some(reason),
                }
            }
            if let Some(reason) = failed {
                set.problems.push(format!("action {key} on {}: {reason}", host.name));
                continue;
            }
            set.actions.push(ActionAssignment {
                name: key.clone(),
                command,
                shell: action.shell,
                parameters: parameters.clone(),
                timeout_ms: millis(action.timeout),
            });
        }
    }
    for set in sets.values_mut() {
        if !set.actions.is_empty() {
            set.actions.sort_by(|a, b| a.name.cmp(&b.name));
            set.digest = digest_of(&(&set.instances, &set.checks, &set.actions));
        }
    }
}

/// Renders one element of an action's command for a host, leaving `{{ params.<name> }}`
/// (normalised to that spelling) for the agent.
fn render_action_element(
    element: &str,
    action: &endstate_spec::Action,
    host: &HostInfo,
    ports: Option<&BTreeMap<String, u16>>,
) -> Result<String, String> {
    let mut out = String::with_capacity(element.len());
    let mut rest = element;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| format!("{element:?} has an unclosed placeholder"))?;
        let variable = after[..close].trim();
        let value = match variable {
            "instance.host" => host.name.clone(),
            "action.name" => action.name.clone(),
            "action.system" => action.system.clone(),
            _ => {
                if let Some(param) = variable.strip_prefix("params.") {
                    format!("{{{{ params.{param} }}}}")
                } else if let Some(key) = variable.strip_prefix("host.labels.") {
                    host.labels
                        .get(key)
                        .cloned()
                        .ok_or_else(|| format!("the host has no label {key:?}"))?
                } else if let Some(port) = variable.strip_prefix("ports.") {
                    ports
                        .and_then(|p| p.get(port))
                        .map(u16::to_string)
                        .ok_or_else(|| format!("no port named {port:?} on the target"))?
                } else {
                    return Err(format!("{{{{ {variable} }}}} is not a variable of actions"));
                }
            }
        };
        out.push_str(&value);
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A check's probe as the agent runs it, for one target.
fn check_probe(
    probe: &endstate_spec::CheckProbe,
    host: &str,
    instance: Option<&InstanceAssignment>,
) -> Result<WireCheckProbe, String> {
    let port = |port: &endstate_spec::PortRef| -> Result<u16, String> {
        match port {
            endstate_spec::PortRef::Number(n) => Ok(*n),
            endstate_spec::PortRef::Name(name) => instance
                .and_then(|i| i.ports.get(name).copied())
                .ok_or_else(|| format!("no port named {name:?} on the target")),
        }
    };
    Ok(match probe {
        endstate_spec::CheckProbe::Exec { command, args } => {
            let mut rendered = Vec::with_capacity(args.len());
            for arg in args {
                let mut text = arg.replace("{{ instance.host }}", host);
                if let Some(instance) = instance {
                    text = text.replace("{{ instance.id }}", &instance.id.0);
                    for (name, number) in &instance.ports {
                        text = text.replace(&format!("{{{{ ports.{name} }}}}"), &number.to_string());
                    }
                }
                if text.contains("{{") {
                    return Err(format!("argument {arg:?} names a variable this target does not have"));
                }
                rendered.push(text);
            }
            WireCheckProbe::Exec {
                command: command.clone(),
                args: rendered,
            }
        }
        endstate_spec::CheckProbe::Http {
            target,
            expect_status,
            body_match,
            latency_threshold,
        } => WireCheckProbe::Http {
            url: match target {
                endstate_spec::HttpTarget::Url(url) => url.clone(),
                endstate_spec::HttpTarget::Port { port: p, path } => {
                    let slash = if path.starts_with('/') { "" } else { "/" };
                    format!("http://127.0.0.1:{}{slash}{path}", port(p)?)
                }
            },
            expect_status: *expect_status,
            body_match: body_match.clone(),
            latency_threshold_ms: latency_threshold.map(millis),
        },
        endstate_spec::CheckProbe::Tcp {
            host: target_host,
            port: p,
        } => WireCheckProbe::Tcp {
            host: target_host.clone().unwrap_or_else(|| "127.0.0.1".to_owned()),
            port: port(p)?,
        },
    })
}

fn digest_of<T: serde::Serialize>(value: &T) -> String {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> DesiredState {
        let files = [endstate_spec::SourceFile {
            path: "test.yaml".into(),
            text: yaml.into(),
        }];
        let loaded = endstate_spec::load(&files, &[]);
        assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
        loaded.desired.unwrap()
    }

    const SPEC: &str = r#"
apiVersion: endstate/v1
kind: System
name: shop
---
apiVersion: endstate/v1
kind: Component
name: web
system: shop
artifact: { version: "1.0", path: bin/svc }
command: svc
args: ["--listen", "127.0.0.1:{{ ports.http }}", "--zone", "{{ host.labels.zone }}", "--n", "{{ instance.index }}"]
ports: [{ name: http }, { name: admin, number: 9000 }]
health: { http: { port: http, path: /health } }
placement: { count: { total: 3 } }
"#;

    fn hosts() -> Vec<HostInfo> {
        ["a", "b", "c"]
            .iter()
            .map(|zone| HostInfo {
                name: format!("h-{zone}"),
                labels: [("zone".to_owned(), (*zone).to_owned())].into_iter().collect(),
            })
            .collect()
    }

    #[test]
    fn every_host_gets_its_rendered_instances_deterministically() {
        let desired = load(SPEC);
        let first = assignments(&desired, &hosts(), "salt");
        assert_eq!(
            first,
            assignments(&desired, &hosts(), "salt"),
            "same input, same output"
        );
        assert_eq!(first.len(), 3);
        let mut indexes = Vec::new();
        for (host, set) in &first {
            assert_eq!(set.instances.len(), 1, "{host}: {set:?}");
            let instance = &set.instances[0];
            assert_eq!(instance.id.0, "shop/web#0");
            let http = instance.ports["http"];
            assert!(DEFAULT_DYNAMIC_PORTS.contains(&http));
            assert_eq!(instance.ports["admin"], 9000, "a fixed port is kept");
            assert_eq!(instance.args[1], format!("127.0.0.1:{http}"), "ports are rendered");
            assert_eq!(
                instance.args[3],
                host.trim_start_matches("h-"),
                "host labels are rendered"
            );
            indexes.push(instance.args[5].clone());
            assert!(instance.health.is_some());
        }
        indexes.sort();
        assert_eq!(indexes, ["0", "1", "2"], "instance indexes are distinct across hosts");
    }

    #[test]
    fn a_new_version_changes_the_digest_of_every_host_running_it() {
        let before = assignments(&load(SPEC), &hosts(), "salt");
        let after = assignments(&load(&SPEC.replace("\"1.0\"", "\"1.1\"")), &hosts(), "salt");
        for (host, set) in &before {
            assert_ne!(set.digest, after[host].digest, "{host}");
            assert_eq!(after[host].instances[0].artifact.version, "1.1");
        }
    }

    #[test]
    fn dynamic_ports_upgrade_start_first_on_new_ports_and_fixed_ports_stop_first() {
        // SPEC's web has a fixed admin port: stop-then-start on the same ports.
        let before = assignments(&load(SPEC), &hosts(), "salt");
        let after = assignments(&load(&SPEC.replace("\"1.0\"", "\"1.1\"")), &hosts(), "salt");
        assert_eq!(before["h-a"].instances[0].upgrade, UpgradeOrder::StopFirst);
        assert_eq!(before["h-a"].instances[0].ports, after["h-a"].instances[0].ports);
        // Without it, every port is the server's: the new version starts beside the old one.
        let dynamic = SPEC.replace(", { name: admin, number: 9000 }", "");
        let before = assignments(&load(&dynamic), &hosts(), "salt");
        let after = assignments(&load(&dynamic.replace("\"1.0\"", "\"1.1\"")), &hosts(), "salt");
        for host in ["h-a", "h-b", "h-c"] {
            assert_eq!(after[host].instances[0].upgrade, UpgradeOrder::StartFirst);
            assert_ne!(
                before[host].instances[0].ports["http"], after[host].instances[0].ports["http"],
                "{host}: the new version needs its own port"
            );
        }
        // A reconfiguration at the same version starts beside the old instance too.
        let reconfigured = assignments(&load(&dynamic.replace("\"--zone\"", "\"--region\"")), &hosts(), "salt");
        for host in ["h-a", "h-b", "h-c"] {
            assert_ne!(before[host].instances[0].args, reconfigured[host].instances[0].args);
            assert_ne!(
                before[host].instances[0].ports["http"], reconfigured[host].instances[0].ports["http"],
                "{host}: the reconfigured instance needs its own port"
            );
        }
    }

    #[test]
    fn another_server_picks_other_ports_for_the_same_names() {
        let ours = assignments(&load(SPEC), &hosts(), "server-1");
        let theirs = assignments(&load(SPEC), &hosts(), "server-2");
        assert_ne!(
            ours["h-a"].instances[0].ports["http"],
            theirs["h-a"].instances[0].ports["http"]
        );
    }

    /// Agents sharing one machine (`endstate dev`, a lab) get ports unique across their hosts:
    /// 300 hosts of one instance each would share a port somewhere with one range per host.
    #[test]
    fn agents_on_one_machine_never_share_a_port() {
        let desired = load(
            &SPEC
                .replace(", { name: admin, number: 9000 }", "")
                .replace("count: { total: 3 }", "count: { per_host: 1 }"),
        );
        let many: Vec<HostInfo> = (0..300)
            .map(|i| HostInfo {
                name: format!("h-{i}"),
                labels: hosts()[i % 3].labels.clone(),
            })
            .collect();
        let (placements, _) = endstate_plan::place(&desired, &many);
        let chosen: BTreeMap<PlacementKey, (&Component, Placement)> = placements
            .into_iter()
            .filter_map(|(key, placement)| Some((key.clone(), (desired.components.get(&*key.component)?, placement))))
            .collect();
        let ports = |one_machine: bool| -> Vec<u16> {
            assignments_of(&chosen, &many, "salt", one_machine, &DEFAULT_DYNAMIC_PORTS)
                .values()
                .flat_map(|set| set.instances.iter().map(|i| i.ports["http"]))
                .collect()
        };
        let distinct = |ports: &[u16]| ports.iter().collect::<BTreeSet<_>>().len();
        let per_host = ports(false);
        assert_eq!(per_host.len(), 300);
        assert!(
            distinct(&per_host) < 300,
            "the test needs a collision per host to mean anything"
        );
        let shared = ports(true);
        assert_eq!(distinct(&shared), 300, "one machine: every port its own");
        // A window of its own (a second lab on the machine): every port in it, still distinct.
        let window = 31_000..=31_299;
        let windowed: Vec<u16> = assignments_of(&chosen, &many, "salt", true, &window)
            .values()
            .flat_map(|set| set.instances.iter().map(|i| i.ports["http"]))
            .collect();
        assert!(windowed.iter().all(|p| window.contains(p)), "{windowed:?}");
        assert_eq!(distinct(&windowed), 300);
    }

    #[test]
    fn a_missing_label_is_a_problem_not_an_empty_value() {
        let mut hosts = hosts();
        hosts[1].labels.clear();
        let set = assignments(&load(SPEC), &hosts, "salt");
        let broken = &set["h-b"];
        assert!(broken.instances.is_empty());
        assert!(broken.problems[0].contains("host.labels.zone"), "{:?}", broken.problems);
    }

    const SPREAD: &str = r#"
apiVersion: endstate/v1
kind: System
name: shop
---
apiVersion: endstate/v1
kind: Component
name: web
system: shop
artifact: { version: "1.0", path: bin/svc }
command: svc
args: ["--listen", "127.0.0.1:{{ ports.http }}", "--n", "{{ instance.index }}"]
ports: [{ name: http }]
placement: { count: { total: 4 }, spread_by: zone }
---
apiVersion: endstate/v1
kind: Component
name: agent
system: shop
artifact: { version: "2.0", path: bin/agent }
command: agent
placement: { count: { per_host: 1 } }
"#;

    fn zoned(name: &str, zone: u8) -> HostInfo {
        HostInfo {
            name: name.into(),
            labels: [("zone".to_owned(), format!("z{zone}"))].into_iter().collect(),
        }
    }

    /// The revision in force as the server reads it back from the store: its converged change's
    /// stored plan records the hosts it was placed on (`crate::blueprint::basis_of`).
    fn in_force(desired: &std::sync::Arc<DesiredState>, stored_plan: &serde_json::Value) -> Current {
        let hosts = crate::blueprint::basis_of(Some(stored_plan)).expect("the plan records its hosts");
        let change = endstate_store::Change {
            id: endstate_types::ChangeId(1),
            revision: endstate_types::RevisionId(1),
            state: endstate_types::ChangeState::Converged,
            plan: Some(stored_plan.clone()),
            reason: None,
            wave: None,
            progress: None,
            options: None,
            created_ms: 0,
            updated_ms: 0,
        };
        let blueprint = endstate_plan::blueprint(Some((desired, &hosts)), None);
        let hosts = std::sync::Arc::new(hosts);
        Current {
            key: String::new(),
            base: Some(crate::blueprint::InForce {
                revision: change.revision,
                change,
                desired: std::sync::Arc::clone(desired),
                hosts,
            }),
            rollout: None,
            blueprint,
        }
    }

    /// What each host runs: its instances' full assignments (ids, versions, ports, arguments).
    fn running(sets: &BTreeMap<String, HostAssignments>) -> BTreeMap<String, Vec<InstanceAssignment>> {
        sets.iter()
            .filter(|(_, set)| !set.instances.is_empty())
            .map(|(host, set)| (host.clone(), set.instances.clone()))
            .collect()
    }

    proptest::proptest! {
        /// With no change submitted, hosts joining (in any zone), leaving, coming back, agents
        /// restarting and the server restarting (the revision in force read back from its stored
        /// plan) never move an instance, nor change what any host runs.
        #[test]
        fn hosts_coming_and_going_never_move_an_instance(
            ops in proptest::collection::vec((0u8..4, 0u8..8, 0u8..4), 1..40),
        ) {
            let desired = std::sync::Arc::new(load(SPREAD));
            let basis: Vec<HostInfo> = (0..4).map(|i| zoned(&format!("h{i}"), i % 2)).collect();
            let mut plan = endstate_plan::plan(None, &desired, &basis);
            plan.record_hosts(&basis);
            let stored = serde_json::to_value(&plan).unwrap();
            let mut current = in_force(&desired, &stored);
            let mut in_service = basis.clone();
            let first = running(&sets(&current, &in_service, "salt", false, &DEFAULT_DYNAMIC_PORTS));
            proptest::prop_assert_eq!(first.len(), 4, "every basis host runs something: {:?}", first.keys());
            for (op, host, zone) in ops {
                let name = format!("h{host}");
                match op {
                    // A host enrols (or comes back), in some zone.
                    0 => {
                        in_service.retain(|h| h.name != name);
                        in_service.push(zoned(&name, zone));
                    }
                    // A host leaves (revoked, retired elsewhere, gone).
                    1 => in_service.retain(|h| h.name != name),
                    // An agent restarts: it comes back with the same labels.
                    2 => {
                        if let Some(at) = in_service.iter().position(|h| h.name == name) {
                            let again = in_service.remove(at);
                            in_service.push(again);
                        }
                    }
                    // The server restarts: everything is read back from the store.
                    _ => current = in_force(&desired, &stored),
                }
                let now = running(&sets(&current, &in_service, "salt", false, &DEFAULT_DYNAMIC_PORTS));
                proptest::prop_assert_eq!(&now, &first);
                // Every host in service gets a set, if only an empty one.
                let rendered = sets(&current, &in_service, "salt", false, &DEFAULT_DYNAMIC_PORTS);
                for host in &in_service {
                    proptest::prop_assert!(rendered.contains_key(&host.name));
                }
            }
        }
    }
}
