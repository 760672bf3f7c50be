//! Validation and normalisation: typed documents in, [`DesiredState`] and diagnostics out.
//!
//! Each document is first checked on its own and normalised (defaults filled in, placeholders where
//! it is broken, since a state with errors is never returned). Then the documents are checked
//! together: duplicate names, references, cycles, host selectors and the static rules of policies.

use std::collections::{BTreeMap, BTreeSet};

use endstate_types::{NameError, Selector, validate_name};
use serde_saphyr::Spanned;

use crate::HostInfo;
use crate::diagnostic::{Diagnostic, Pos};
use crate::doc::{
    ActionDoc, CheckDoc, ComponentDoc, ExecDoc, HostDoc, ParamValueDoc, PolicyDoc, PortRefDoc, SystemDoc, TargetsDoc,
};
use crate::model::{
    Action, AppliesTo, Artifact, ArtifactSource, Batch, Check, CheckProbe, Component, ConfigFile, Count, DesiredState,
    Escalation, FreezeWindow, Gate, Health, HttpTarget, Link, MaxInFlight, ParamValue, Parameter, ParameterType,
    Placement, Policy, Port, PortRef, Probe, Rollout, Rules, RunAs, StaticHost, System, Targets,
};
use crate::parse::{Parsed, RawDoc, quoted_list, spanned_pos};
use crate::template::{ACTION_VARIABLES, COMPONENT_VARIABLES, check_cron, check_template};

/// Where a document is, to place its diagnostics.
#[derive(Clone, Copy)]
struct DocCtx<'a> {
    file: &'a str,
    line_offset: u64,
    start: Pos,
}

/// A reference to resolve later, with where it was written.
#[derive(Clone, Debug)]
struct Ref {
    name: String,
    pos: Pos,
}

struct SystemEntry<'a> {
    ctx: DocCtx<'a>,
    name_pos: Pos,
    system: System,
    /// The subsystems listed by name (a selector's members are added once every system is known).
    subsystems: Vec<Ref>,
    /// Where `subsystem_selector` was written.
    selector_pos: Option<Pos>,
}

struct ComponentEntry<'a> {
    ctx: DocCtx<'a>,
    name_pos: Pos,
    system_pos: Pos,
    artifact_pos: Pos,
    batch_pos: Pos,
    selector_pos: Pos,
    component: Component,
    depends_on: Vec<Ref>,
    gate_checks: Vec<GateCheck>,
}

/// A gate measured by a check, to resolve once every check is known.
struct GateCheck {
    gate: String,
    /// The check's name in the component's system.
    check: Ref,
}

struct CheckEntry<'a> {
    ctx: DocCtx<'a>,
    name_pos: Pos,
    system_pos: Pos,
    check: Check,
    target: TargetRef,
    /// Port names the check uses (its `port:`, `{{ ports.<name> }}` in its arguments), to look
    /// up on its target component.
    port_names: Vec<Ref>,
}

struct ActionEntry<'a> {
    ctx: DocCtx<'a>,
    name_pos: Pos,
    system_pos: Pos,
    action: Action,
    target: TargetRef,
}

struct HostEntry<'a> {
    ctx: DocCtx<'a>,
    name_pos: Pos,
    host: StaticHost,
    systems: Vec<Ref>,
}

struct PolicyEntry<'a> {
    ctx: DocCtx<'a>,
    name_pos: Pos,
    policy: Policy,
    systems: Vec<Ref>,
}

/// The targets of a check or an action, before the component reference is resolved.
enum TargetRef {
    Component(Ref),
    Hosts(Selector, Pos),
    Invalid,
}

/// Diagnostics, collected.
struct Out {
    diagnostics: Vec<Diagnostic>,
}

/// Validates parsed documents and, when there is no error, returns the desired state.
pub(crate) fn validate(
    paths: &[&str],
    docs: Vec<Parsed>,
    hosts: &[HostInfo],
    diagnostics: &mut Vec<Diagnostic>,
) -> DesiredState {
    let mut out = Out {
        diagnostics: std::mem::take(diagnostics),
    };
    let mut systems = Vec::new();
    let mut components = Vec::new();
    let mut checks = Vec::new();
    let mut actions = Vec::new();
    let mut policies = Vec::new();
    let mut static_hosts = Vec::new();
    for parsed in &docs {
        let ctx = DocCtx {
            file: paths.get(parsed.file).copied().unwrap_or_default(),
            line_offset: parsed.line_offset,
            start: parsed.start,
        };
        match &parsed.doc {
            RawDoc::System(doc) => systems.push(system(ctx, doc, &mut out)),
            RawDoc::Component(doc) => components.push(component(ctx, doc, &mut out)),
            RawDoc::Check(doc) => checks.push(check(ctx, doc, &mut out)),
            RawDoc::Action(doc) => actions.push(action(ctx, doc, &mut out)),
            RawDoc::Policy(doc) => policies.push(policy(ctx, doc, &mut out)),
            RawDoc::Host(doc) => static_hosts.push(static_host(ctx, doc, &mut out)),
        }
    }

    // Names: the first declaration wins, later ones are reported.
    let mut systems = unique(
        systems,
        "system",
        |e| (e.system.name.clone(), e.ctx, e.name_pos),
        &mut out,
    );
    resolve_subsystem_selectors(&mut systems, &mut out);
    let components = unique(
        components,
        "component",
        |e| (e.component.key(), e.ctx, e.name_pos),
        &mut out,
    );
    let checks = unique(checks, "check", |e| (e.check.name.clone(), e.ctx, e.name_pos), &mut out);
    let actions = unique(
        actions,
        "action",
        |e| (e.action.name.clone(), e.ctx, e.name_pos),
        &mut out,
    );
    let policies = unique(
        policies,
        "policy",
        |e| (e.policy.name.clone(), e.ctx, e.name_pos),
        &mut out,
    );

    let system_names: BTreeSet<&str> = systems.keys().map(String::as_str).collect();
    let check_system = |ctx: DocCtx<'_>, name: &str, pos: Pos, out: &mut Out| {
        if !system_names.contains(name) {
            out.push(
                ctx.error(
                    pos,
                    "dangling-reference",
                    format!("found system `{name}`, which is not declared"),
                )
                .expected(expect_one_of("a declared system", system_names.iter().copied())),
            );
        }
    };

    // References from systems, components, checks, actions and policies.
    for entry in systems.values() {
        for sub in &entry.subsystems {
            check_system(entry.ctx, &sub.name, sub.pos, &mut out);
        }
    }
    let mut resolved_deps: BTreeMap<String, Vec<(String, Pos)>> = BTreeMap::new();
    for (key, entry) in &components {
        let system = &entry.component.system;
        check_system(entry.ctx, system, entry.system_pos, &mut out);
        let mut deps = Vec::new();
        for dep in &entry.depends_on {
            let target = qualify(system, &dep.name);
            if components.contains_key(&target) {
                deps.push((target, dep.pos));
            } else {
                let siblings = components
                    .values()
                    .filter(|c| &c.component.system == system)
                    .map(|c| c.component.name.as_str());
                out.push(
                    entry
                        .ctx
                        .error(
                            dep.pos,
                            "dangling-reference",
                            format!("found dependency `{}`, which is not declared", dep.name),
                        )
                        .expected(expect_one_of(
                            &format!("a component of system `{system}` or `system/component`"),
                            siblings,
                        )),
                );
            }
        }
        resolved_deps.insert(key.clone(), deps);
    }
    let resolve_target = |ctx: DocCtx<'_>, system: &str, target: &TargetRef, out: &mut Out| -> Option<String> {
        let TargetRef::Component(reference) = target else {
            return None;
        };
        let key = qualify(system, &reference.name);
        if components.contains_key(&key) {
            Some(key)
        } else {
            out.push(
                ctx.error(
                    reference.pos,
                    "dangling-reference",
                    format!("found target component `{}`, which is not declared", reference.name),
                )
                .expected(expect_one_of(
                    &format!("a component of system `{system}` or `system/component`"),
                    components
                        .values()
                        .filter(|c| c.component.system == system)
                        .map(|c| c.component.name.as_str()),
                )),
            );
            None
        }
    };
    let mut final_checks = BTreeMap::new();
    for (name, mut entry) in checks {
        check_system(entry.ctx, &entry.check.system, entry.system_pos, &mut out);
        let key = resolve_target(entry.ctx, &entry.check.system, &entry.target, &mut out);
        for port in &entry.port_names {
            match key.as_ref().and_then(|key| components.get(key)) {
                Some(target) if target.component.ports.iter().any(|p| p.name == port.name) => {}
                Some(target) => out.push(
                    entry
                        .ctx
                        .error(
                            port.pos,
                            "unknown-port",
                            format!(
                                "found port `{}`, which component `{}` does not declare",
                                port.name,
                                target.component.key()
                            ),
                        )
                        .expected(expect_one_of(
                            "a declared port",
                            target.component.ports.iter().map(|p| p.name.as_str()),
                        )),
                ),
                None if matches!(entry.target, TargetRef::Hosts(..)) => out.push(
                    entry
                        .ctx
                        .error(
                            port.pos,
                            "unknown-port",
                            format!("found port name `{}` on a check of hosts", port.name),
                        )
                        .expected("a port number (port names need `targets.component`)"),
                ),
                None => {}
            }
        }
        if let Some(key) = key {
            entry.check.targets = Targets::Component(key);
        }
        final_checks.insert(name, entry);
    }
    // Gates measured by a check: the check must be of the component's system and target it.
    for entry in components.values() {
        let component = &entry.component;
        for gate in &entry.gate_checks {
            match final_checks
                .get(&gate.check.name)
                .filter(|c| c.check.system == component.system)
            {
                Some(check) if check.check.targets == Targets::Component(component.key()) => {}
                Some(_) => out.push(
                    entry
                        .ctx
                        .error(
                            gate.check.pos,
                            "invalid-gate",
                            format!(
                                "found gate `{}` on check `{}`, which does not target component `{}`",
                                gate.gate,
                                gate.check.name,
                                component.key()
                            ),
                        )
                        .expected(format!("a check with `targets: {{ component: {} }}`", component.name)),
                ),
                None => out.push(
                    entry
                        .ctx
                        .error(
                            gate.check.pos,
                            "dangling-reference",
                            format!(
                                "found gate `{}` on check `{}`, which is not declared",
                                gate.gate, gate.check.name
                            ),
                        )
                        .expected(expect_one_of(
                            &format!(
                                "a check of system `{}` targeting `{}`",
                                component.system, component.name
                            ),
                            final_checks
                                .values()
                                .filter(|c| c.check.targets == Targets::Component(component.key()))
                                .map(|c| c.check.name.as_str()),
                        )),
                ),
            }
        }
    }
    let mut final_actions = BTreeMap::new();
    for (name, mut entry) in actions {
        check_system(entry.ctx, &entry.action.system, entry.system_pos, &mut out);
        if let Some(key) = resolve_target(entry.ctx, &entry.action.system, &entry.target, &mut out) {
            entry.action.targets = Targets::Component(key);
        }
        final_actions.insert(name, entry);
    }
    for entry in policies.values() {
        for reference in &entry.systems {
            check_system(entry.ctx, &reference.name, reference.pos, &mut out);
        }
    }
    let static_hosts = unique(
        static_hosts,
        "host",
        |e| (e.host.name.clone(), e.ctx, e.name_pos),
        &mut out,
    );
    for entry in static_hosts.values() {
        for reference in &entry.systems {
            check_system(entry.ctx, &reference.name, reference.pos, &mut out);
        }
        // An enrolled agent of the same name is the same machine seen twice.
        if hosts.iter().any(|h| h.name == entry.host.name) {
            out.push(entry.ctx.warning(
                entry.name_pos,
                "static-host-has-agent",
                format!(
                    "found static host `{}`, which is also an enrolled agent; the agent's entry is kept",
                    entry.host.name
                ),
            ));
        }
    }

    // Cycles.
    let component_graph: BTreeMap<&str, Vec<(&str, Pos)>> = resolved_deps
        .iter()
        .map(|(key, deps)| {
            (
                key.as_str(),
                deps.iter().map(|(dep, pos)| (dep.as_str(), *pos)).collect(),
            )
        })
        .collect();
    for (path, pos) in find_cycles(&component_graph) {
        if let Some(entry) = path.first().and_then(|first| components.get(*first)) {
            out.push(entry.ctx.error(
                pos,
                "dependency-cycle",
                format!("found a dependency cycle: {}", path.join(" -> ")),
            ));
        }
    }
    let system_graph: BTreeMap<&str, Vec<(&str, Pos)>> = systems
        .iter()
        .map(|(name, entry)| {
            let subs = entry
                .subsystems
                .iter()
                .filter(|sub| systems.contains_key(&sub.name))
                .map(|sub| (sub.name.as_str(), sub.pos))
                .collect();
            (name.as_str(), subs)
        })
        .collect();
    for (path, pos) in find_cycles(&system_graph) {
        if let Some(entry) = path.first().and_then(|first| systems.get(*first)) {
            out.push(entry.ctx.error(
                pos,
                "subsystem-cycle",
                format!("found a subsystem cycle: {}", path.join(" -> ")),
            ));
        }
    }

    // Selectors that match no known host (only when an inventory is given).
    if !hosts.is_empty() {
        let warn = |ctx: DocCtx<'_>, selector: &Selector, pos: Pos, what: &str, out: &mut Out| {
            if !hosts.iter().any(|host| selector.matches(&host.labels)) {
                out.push(ctx.warning(
                    pos,
                    "selector-matches-no-host",
                    format!(
                        "found {what} selector `{selector}`, which matches none of the {} known hosts",
                        hosts.len()
                    ),
                ));
            }
        };
        for entry in components.values() {
            warn(
                entry.ctx,
                &entry.component.placement.selector,
                entry.selector_pos,
                "placement",
                &mut out,
            );
        }
        for entry in final_checks.values() {
            if let TargetRef::Hosts(selector, pos) = &entry.target {
                warn(entry.ctx, selector, *pos, "target", &mut out);
            }
        }
        for entry in final_actions.values() {
            if let TargetRef::Hosts(selector, pos) = &entry.target {
                warn(entry.ctx, selector, *pos, "target", &mut out);
            }
        }
    }

    // The static rules of policies.
    for entry in policies.values() {
        let policy = &entry.policy;
        let applies = &policy.applies_to;
        let covered = systems.values().filter(|s| {
            (applies.systems.is_empty() && applies.selector.is_empty())
                || applies.systems.contains(&s.system.name)
                || (!applies.selector.is_empty() && applies.selector.matches(&s.system.labels))
        });
        for sys in covered {
            let name = &sys.system.name;
            if policy.rules.require_owners && sys.system.owners.is_empty() {
                out.push(
                    sys.ctx
                        .error(
                            sys.name_pos,
                            "policy-violation",
                            format!(
                                "found system `{name}` without owners, which policy `{}` requires",
                                policy.name
                            ),
                        )
                        .expected("at least one entry in `owners`"),
                );
            }
            if policy.rules.require_escalation && sys.system.escalation.is_none() {
                out.push(
                    sys.ctx
                        .error(
                            sys.name_pos,
                            "policy-violation",
                            format!(
                                "found system `{name}` without escalation, which policy `{}` requires",
                                policy.name
                            ),
                        )
                        .expected("an `escalation` contact"),
                );
            }
            for comp in components.values().filter(|c| &c.component.system == name) {
                let kind = comp.component.artifact.source.kind();
                let allowed = &policy.rules.allowed_artifact_sources;
                if !allowed.is_empty() && !allowed.contains(&kind) {
                    out.push(
                        comp.ctx
                            .error(
                                comp.artifact_pos,
                                "policy-violation",
                                format!(
                                    "found a {} artifact source, which policy `{}` does not allow",
                                    source_word(kind),
                                    policy.name
                                ),
                            )
                            .expected(format!(
                                "one of {}",
                                quoted_list(allowed.iter().map(|k| source_word(*k)))
                            )),
                    );
                }
                // A batch given as a size is judged as the share of a total count it is; with a
                // count per host the total depends on the inventory, so only the Decider can judge it.
                let batch = match (comp.component.rollout.batch, comp.component.placement.count) {
                    (Batch::Percent(percent), _) => Some((percent, format!("{percent}%"))),
                    // One instance at a time is the smallest batch there is: always allowed.
                    (Batch::Size(size), Count::Total(total)) if total > 0 && size > 1 => {
                        let percent = (size.saturating_mul(100)).div_ceil(total);
                        Some((percent, format!("{size} of {total} instances ({percent}%)")))
                    }
                    _ => None,
                };
                if let (Some(max @ 1..=100), Some((percent, shown))) = (policy.rules.max_batch_percent, batch)
                    && percent > max
                {
                    out.push(
                        comp.ctx
                            .error(
                                comp.batch_pos,
                                "policy-violation",
                                format!(
                                    "found batch of {shown}, above the {max}% policy `{}` allows",
                                    policy.name
                                ),
                            )
                            .expected(format!("at most {max}%")),
                    );
                }
            }
        }
    }

    *diagnostics = out.diagnostics;
    DesiredState {
        systems: systems.into_iter().map(|(name, entry)| (name, entry.system)).collect(),
        components: components
            .into_iter()
            .map(|(key, mut entry)| {
                let mut deps: Vec<String> = resolved_deps
                    .remove(&key)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(dep, _)| dep)
                    .collect();
                deps.sort();
                deps.dedup();
                entry.component.depends_on = deps;
                (key, entry.component)
            })
            .collect(),
        checks: final_checks
            .into_iter()
            .map(|(name, entry)| (name, entry.check))
            .collect(),
        actions: final_actions
            .into_iter()
            .map(|(name, entry)| (name, entry.action))
            .collect(),
        policies: policies.into_iter().map(|(name, entry)| (name, entry.policy)).collect(),
        hosts: static_hosts
            .into_iter()
            .map(|(name, entry)| (name, entry.host))
            .collect(),
        owners: BTreeMap::new(),
        sources: BTreeMap::new(),
    }
}

/// Names as written, each with where, to resolve once every document is known.
fn refs(ctx: DocCtx<'_>, names: &[Spanned<String>]) -> Vec<Ref> {
    names
        .iter()
        .map(|name| Ref {
            name: name.value.clone(),
            pos: ctx.pos(name),
        })
        .collect()
}

fn static_host<'a>(ctx: DocCtx<'a>, doc: &HostDoc, out: &mut Out) -> HostEntry<'a> {
    let name_pos = ctx.pos(&doc.name);
    check_name(ctx, &doc.name.value, name_pos, "host", out);
    let systems = refs(ctx, &doc.systems);
    let mut names: Vec<String> = systems.iter().map(|s| s.name.clone()).collect();
    names.sort();
    names.dedup();
    HostEntry {
        ctx,
        name_pos,
        host: StaticHost {
            name: doc.name.value.clone(),
            description: doc.description.clone(),
            labels: doc.labels.clone(),
            facts: doc.facts.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect(),
            systems: names,
        },
        systems,
    }
}

// === documents one by one ===

fn system<'a>(ctx: DocCtx<'a>, doc: &SystemDoc, out: &mut Out) -> SystemEntry<'a> {
    let name_pos = ctx.pos(&doc.name);
    check_name(ctx, &doc.name.value, name_pos, "system", out);
    for owner in &doc.owners {
        if owner.trim().is_empty() {
            out.push(
                ctx.error(name_pos, "invalid-value", "found an empty owner")
                    .expected("a team or person"),
            );
        }
    }
    let escalation = doc.escalation.as_ref().map(|e| {
        if e.contact.trim().is_empty() {
            out.push(
                ctx.error(name_pos, "invalid-value", "found an empty escalation contact")
                    .expected("a team or person"),
            );
        }
        Escalation {
            contact: e.contact.clone(),
            pager: e.pager.clone(),
            phone: e.phone.clone(),
            email: e.email.clone(),
            url: e.url.clone(),
        }
    });
    let links = doc
        .links
        .iter()
        .map(|link| {
            if !is_http_url(&link.value.url) {
                out.push(
                    ctx.error(
                        ctx.pos(link),
                        "invalid-url",
                        format!("found link URL `{}`", link.value.url),
                    )
                    .expected("an `http://` or `https://` URL"),
                );
            }
            Link {
                title: link.value.title.clone(),
                url: link.value.url.clone(),
            }
        })
        .collect();
    let subsystems: Vec<Ref> = doc
        .subsystems
        .iter()
        .map(|sub| {
            let pos = ctx.pos(sub);
            check_name(ctx, &sub.value, pos, "subsystem", out);
            Ref {
                name: sub.value.clone(),
                pos,
            }
        })
        .collect();
    let mut names: Vec<String> = subsystems.iter().map(|s| s.name.clone()).collect();
    names.sort();
    names.dedup();
    SystemEntry {
        ctx,
        name_pos,
        system: System {
            name: doc.name.value.clone(),
            description: doc.description.clone(),
            owners: doc.owners.clone(),
            escalation,
            links,
            labels: doc.labels.clone(),
            subsystems: names,
            subsystem_selector: doc
                .subsystem_selector
                .as_ref()
                .map(|selector| Selector(selector.value.0.clone())),
        },
        subsystems,
        selector_pos: doc.subsystem_selector.as_ref().map(|selector| ctx.pos(selector)),
    }
}

/// Adds to each aggregate with a `subsystem_selector` the systems whose labels match it (never
/// itself), located at the selector, so a cycle through a selector is reported there.
fn resolve_subsystem_selectors(systems: &mut BTreeMap<String, SystemEntry<'_>>, out: &mut Out) {
    let labels: Vec<(String, endstate_types::Labels)> = systems
        .iter()
        .map(|(name, entry)| (name.clone(), entry.system.labels.clone()))
        .collect();
    for (name, entry) in systems.iter_mut() {
        let (Some(selector), Some(pos)) = (entry.system.subsystem_selector.clone(), entry.selector_pos) else {
            continue;
        };
        let members: Vec<&String> = labels
            .iter()
            .filter(|(other, other_labels)| other != name && selector.matches(other_labels))
            .map(|(other, _)| other)
            .collect();
        if members.is_empty() {
            out.push(entry.ctx.warning(
                pos,
                "selector-matches-no-system",
                format!("found subsystem selector `{selector}`, which matches no other declared system"),
            ));
        }
        for member in members {
            if !entry.system.subsystems.contains(member) {
                entry.system.subsystems.push(member.clone());
                entry.subsystems.push(Ref {
                    name: member.clone(),
                    pos,
                });
            }
        }
        entry.system.subsystems.sort();
    }
}

fn component<'a>(ctx: DocCtx<'a>, doc: &ComponentDoc, out: &mut Out) -> ComponentEntry<'a> {
    let name_pos = ctx.pos(&doc.name);
    let system_pos = ctx.pos(&doc.system);
    check_name(ctx, &doc.name.value, name_pos, "component", out);
    check_name(ctx, &doc.system.value, system_pos, "system", out);

    // Artifact.
    let artifact_pos = ctx.pos(&doc.artifact);
    let a = &doc.artifact.value;
    if a.version.value.trim().is_empty() {
        out.push(
            ctx.error(ctx.pos(&a.version), "invalid-value", "found an empty version")
                .expected("a version such as `\"2.4.1\"`"),
        );
    }
    let source = match (&a.path, &a.url) {
        (Some(path), None) => {
            if let Some(sha) = &a.sha256 {
                out.push(
                    ctx.error(ctx.pos(sha), "conflicting-fields", "found `sha256` with a local `path`")
                        .expected("`sha256` only with `url`"),
                );
            }
            if path.value.trim().is_empty() {
                out.push(
                    ctx.error(ctx.pos(path), "invalid-value", "found an empty artifact path")
                        .expected("a path on the host"),
                );
            }
            ArtifactSource::Path {
                path: path.value.clone(),
            }
        }
        (None, Some(url)) => {
            if !is_http_url(&url.value) {
                out.push(
                    ctx.error(
                        ctx.pos(url),
                        "invalid-url",
                        format!("found artifact URL `{}`", url.value),
                    )
                    .expected("an `https://` or `http://` URL"),
                );
            }
            let sha256 = match &a.sha256 {
                None => {
                    out.push(
                        ctx.error(
                            artifact_pos,
                            "missing-field",
                            "found an artifact `url` without `sha256`",
                        )
                        .expected("`sha256` with the 64 hexadecimal digits of the download's SHA-256"),
                    );
                    String::new()
                }
                Some(sha) => {
                    if sha.value.len() != 64 || !sha.value.chars().all(|c| c.is_ascii_hexdigit()) {
                        out.push(
                            ctx.error(ctx.pos(sha), "invalid-value", format!("found sha256 `{}`", sha.value))
                                .expected("64 hexadecimal digits"),
                        );
                    }
                    sha.value.to_ascii_lowercase()
                }
            };
            ArtifactSource::Url {
                url: url.value.clone(),
                sha256,
            }
        }
        (Some(_), Some(url)) => {
            out.push(
                ctx.error(
                    ctx.pos(url),
                    "conflicting-fields",
                    "found both `path` and `url` in the artifact",
                )
                .expected("exactly one of `path` and `url`"),
            );
            ArtifactSource::Path { path: String::new() }
        }
        (None, None) => {
            out.push(
                ctx.error(
                    artifact_pos,
                    "missing-field",
                    "found an artifact with neither `path` nor `url`",
                )
                .expected("exactly one of `path` and `url`"),
            );
            ArtifactSource::Path { path: String::new() }
        }
    };

    // Ports, then everything that refers to them.
    let mut ports: Vec<Port> = Vec::new();
    for port in &doc.ports {
        let pos = ctx.pos(port);
        let p = &port.value;
        check_identifier(ctx, &p.name, pos, "port", out);
        if ports.iter().any(|seen| seen.name == p.name) {
            out.push(
                ctx.error(pos, "duplicate-name", format!("found port `{}` a second time", p.name))
                    .expected("unique port names"),
            );
        }
        if p.number == Some(0) {
            out.push(
                ctx.error(pos, "invalid-value", "found port number 0")
                    .expected("a port number from 1 to 65535"),
            );
        }
        ports.push(Port {
            name: p.name.clone(),
            number: p.number,
            exclusive: p.exclusive,
        });
    }
    let mut port_names: Vec<&str> = ports.iter().map(|p| p.name.as_str()).collect();
    port_names.sort_unstable();
    port_names.dedup();
    let known = |variable: &str| {
        COMPONENT_VARIABLES.contains(&variable)
            || variable
                .strip_prefix("ports.")
                .is_some_and(|port| port_names.contains(&port))
            || variable.strip_prefix("host.labels.").is_some_and(|key| !key.is_empty())
    };
    let expected_variables = || {
        let mut list = quoted_list(COMPONENT_VARIABLES);
        list.push_str(", `host.labels.<key>`");
        for port in &port_names {
            list.push_str(&format!(", `ports.{port}`"));
        }
        format!("one of {list}")
    };
    let check_text = |text: &str, pos: Pos, out: &mut Out| {
        for problem in check_template(text, &known) {
            out.push(
                ctx.error(pos, problem.code, problem.message)
                    .expected(expected_variables()),
            );
        }
    };
    let command_pos = ctx.pos(&doc.command);
    if doc.command.value.trim().is_empty() {
        out.push(
            ctx.error(command_pos, "invalid-value", "found an empty command")
                .expected("the program to run"),
        );
    }
    check_text(&doc.command.value, command_pos, out);
    for arg in &doc.args {
        check_text(&arg.value, ctx.pos(arg), out);
    }
    for (key, value) in &doc.env {
        let pos = ctx.pos(value);
        if !is_env_name(key) {
            out.push(
                ctx.error(pos, "invalid-name", format!("found environment variable name `{key}`"))
                    .expected("letters, digits and `_`, not starting with a digit"),
            );
        }
        check_text(&value.value, pos, out);
    }
    let mut config_files = Vec::new();
    for file in &doc.config_files {
        let pos = ctx.pos(&file.path);
        let path = &file.path.value;
        if path.trim().is_empty() || path.split(['/', '\\']).any(|part| part == "..") {
            out.push(
                ctx.error(pos, "invalid-value", format!("found config file path `{path}`"))
                    .expected("a non-empty path without `..`"),
            );
        }
        if config_files.iter().any(|seen: &ConfigFile| &seen.path == path) {
            out.push(
                ctx.error(
                    pos,
                    "duplicate-name",
                    format!("found config file `{path}` a second time"),
                )
                .expected("each path once"),
            );
        }
        check_text(&file.template.value, ctx.pos(&file.template), out);
        config_files.push(ConfigFile {
            path: path.clone(),
            template: file.template.value.clone(),
        });
    }

    let run_as = doc.run_as.as_ref().map(|run_as| {
        let names = std::iter::once(&run_as.value.user).chain(run_as.value.group.as_ref());
        for name in names {
            if !is_account_name(&name.value) {
                out.push(
                    ctx.error(ctx.pos(name), "invalid-name", format!("found user or group name `{}`", name.value))
                        .expected("a POSIX account name: lowercase letters, digits, `_` and `-`, starting with a letter or `_`, at most 32 characters"),
                );
            }
        }
        RunAs {
            user: run_as.value.user.value.clone(),
            group: run_as.value.group.as_ref().map(|g| g.value.clone()),
        }
    });

    // Metric gates.
    let mut gates: Vec<Gate> = Vec::new();
    let mut gate_checks: Vec<GateCheck> = Vec::new();
    for gate in &doc.gates {
        let pos = ctx.pos(gate);
        let g = &gate.value;
        if gates.iter().any(|seen| seen.name == g.name) {
            out.push(
                ctx.error(pos, "duplicate-name", format!("found gate `{}` a second time", g.name))
                    .expected("each gate name once per component"),
            );
        }
        if g.name.trim().is_empty() {
            out.push(
                ctx.error(pos, "invalid-name", "found a gate without a name")
                    .expected("a name such as `error-rate`"),
            );
        }
        let query = g.prometheus.as_ref().map_or("", |q| q.value.as_str());
        let query_pos = g.prometheus.as_ref().map_or(pos, |q| ctx.pos(q));
        match (&g.prometheus, &g.check) {
            (Some(_), Some(check)) => out.push(
                ctx.error(
                    ctx.pos(check),
                    "invalid-gate",
                    format!("found gate `{}` with both a query and a check", g.name),
                )
                .expected("either `prometheus` or `check`"),
            ),
            (None, None) => out.push(
                ctx.error(
                    pos,
                    "invalid-gate",
                    format!("found gate `{}` measuring nothing", g.name),
                )
                .expected("`prometheus: <query>` or `check: <check of this system>`"),
            ),
            (Some(q), None) if q.value.trim().is_empty() => out.push(
                ctx.error(ctx.pos(q), "invalid-value", "found an empty query")
                    .expected("a PromQL query giving one number"),
            ),
            (None, Some(check)) => {
                if g.max_ratio_to_baseline.is_some() {
                    out.push(
                        ctx.error(
                            ctx.pos(check),
                            "invalid-gate",
                            format!("found gate `{}` comparing a check with the baseline", g.name),
                        )
                        .expected("`max` or `min` on a check gate (the baseline is for queries)"),
                    );
                }
                gate_checks.push(GateCheck {
                    gate: g.name.clone(),
                    check: Ref {
                        name: check.value.clone(),
                        pos: ctx.pos(check),
                    },
                });
            }
            _ => {}
        }
        if g.perfdata.is_some() && g.check.is_none() {
            out.push(
                ctx.error(
                    pos,
                    "invalid-gate",
                    format!("found gate `{}` with perfdata but no check", g.name),
                )
                .expected("`perfdata` only beside `check`"),
            );
        }
        let names_version = query.contains("{{ version }}") || query.contains("{{version}}");
        match g.max_ratio_to_baseline {
            Some(ratio) if !ratio.is_finite() || ratio <= 0.0 => out.push(
                ctx.error(
                    pos,
                    "invalid-gate",
                    format!("found max_ratio_to_baseline {ratio} on gate `{}`", g.name),
                )
                .expected("a finite number above 0"),
            ),
            Some(_) if !names_version && g.check.is_none() => out.push(
                ctx.error(
                    query_pos,
                    "invalid-gate",
                    format!(
                        "found gate `{}` comparing with the baseline, but its query does not name the version",
                        g.name
                    ),
                )
                .expected("`{{ version }}` in the query, e.g. `rate(errors_total{version=\"{{ version }}\"}[1m])`"),
            ),
            _ => {}
        }
        match (g.max, g.min) {
            // A check gate without bounds: no instance may fail it.
            (None, None) if g.check.is_some() && g.perfdata.is_none() => {}
            (None, None) if g.max_ratio_to_baseline.is_none() => out.push(
                ctx.error(pos, "invalid-gate", format!("found gate `{}` without bounds", g.name))
                    .expected(if g.check.is_some() {
                        "`max`, `min` or both for a performance-data gate"
                    } else {
                        "`max`, `min`, `max_ratio_to_baseline` or several"
                    }),
            ),
            (max, min) if max.is_some_and(|v| !v.is_finite()) || min.is_some_and(|v| !v.is_finite()) => out.push(
                ctx.error(
                    pos,
                    "invalid-gate",
                    format!("found a bound of gate `{}` that is not a finite number", g.name),
                )
                .expected("finite numbers"),
            ),
            (Some(max), Some(min)) if min > max => out.push(
                ctx.error(
                    pos,
                    "invalid-gate",
                    format!("found gate `{}` with min {min} above max {max}", g.name),
                )
                .expected("min at most max"),
            ),
            _ => {}
        }
        let count_gate = g.check.is_some() && g.perfdata.is_none() && g.max.is_none() && g.min.is_none();
        gates.push(Gate {
            name: g.name.clone(),
            prometheus: query.to_owned(),
            check: g.check.as_ref().map(|c| format!("{}/{}", doc.system.value, c.value)),
            perfdata: g.perfdata.clone(),
            max: if count_gate {
                Some(0.0)
            } else {
                g.max.filter(|v| v.is_finite())
            },
            min: g.min.filter(|v| v.is_finite()),
            max_ratio_to_baseline: g.max_ratio_to_baseline.filter(|v| v.is_finite() && *v > 0.0),
        });
    }

    // Health.
    let health = doc.health.as_ref().map(|health| {
        let health_pos = ctx.pos(health);
        let h = &health.value;
        let declared = |port: &Spanned<String>, out: &mut Out| {
            if !port_names.contains(&port.value.as_str()) {
                out.push(
                    ctx.error(
                        ctx.pos(port),
                        "unknown-port",
                        format!(
                            "found health check port `{}`, which the component does not declare",
                            port.value
                        ),
                    )
                    .expected(expect_one_of("a port declared in `ports`", port_names.iter().copied())),
                );
            }
            port.value.clone()
        };
        let mut probes = Vec::new();
        if let Some(http) = &h.http {
            probes.push((
                ctx.pos(http),
                Probe::Http {
                    port: declared(&http.value.port, out),
                    path: http.value.path.clone(),
                },
            ));
        }
        if let Some(tcp) = &h.tcp {
            probes.push((
                ctx.pos(tcp),
                Probe::Tcp {
                    port: declared(&tcp.value.port, out),
                },
            ));
        }
        if let Some(exec) = &h.exec {
            probes.push((
                ctx.pos(exec),
                exec_probe(ctx, &exec.value, out, |command, args| Probe::Exec { command, args }),
            ));
        }
        let probe = one_of(ctx, probes, health_pos, "`http`, `tcp` and `exec`", "health probe", out)
            .unwrap_or(Probe::Tcp { port: String::new() });
        check_timeout(ctx, &h.timeout, &h.interval, health_pos, out);
        for (what, value) in [
            ("healthy_threshold", h.healthy_threshold),
            ("unhealthy_threshold", h.unhealthy_threshold),
        ] {
            if value == 0 {
                out.push(
                    ctx.error(health_pos, "invalid-value", format!("found `{what}: 0`"))
                        .expected("at least 1"),
                );
            }
        }
        Health {
            probe,
            interval: h.interval.value,
            timeout: h.timeout.value,
            healthy_threshold: h.healthy_threshold,
            unhealthy_threshold: h.unhealthy_threshold,
        }
    });

    // Placement and rollout.
    let p = &doc.placement;
    let count_pos = ctx.pos(&p.count);
    let count = p.count.value;
    if matches!(count, Count::PerHost(0) | Count::Total(0)) {
        out.push(
            ctx.error(count_pos, "invalid-value", "found a count of 0")
                .expected("at least 1 (remove the component to run none)"),
        );
    }
    for label in [&p.spread_by, &doc.rollout.one_domain_at_a_time].into_iter().flatten() {
        if label.trim().is_empty() {
            out.push(
                ctx.error(count_pos, "invalid-value", "found an empty host label name")
                    .expected("a host label such as `zone`"),
            );
        }
    }
    let r = &doc.rollout;
    let canary_pos = ctx.pos_or(&r.canary, count_pos);
    if let Count::Total(total @ 1..) = count
        && r.canary.value > total
    {
        out.push(
            ctx.error(
                canary_pos,
                "invalid-rollout",
                format!("found canary {} larger than the total count {total}", r.canary.value),
            )
            .expected(format!("a canary of at most {total}")),
        );
    }
    let batch_pos = ctx.pos_or(&r.batch, artifact_pos);
    match r.batch.value {
        Batch::Size(0) => out.push(
            ctx.error(batch_pos, "invalid-rollout", "found a batch size of 0")
                .expected("at least 1"),
        ),
        Batch::Percent(percent) if !(1..=100).contains(&percent) => out.push(
            ctx.error(
                batch_pos,
                "invalid-rollout",
                format!("found a batch of {percent} percent"),
            )
            .expected("a percentage from 1 to 100"),
        ),
        _ => {}
    }
    // `max_unavailable: 0` is valid: a component that starts a new instance before stopping the
    // old one (server-allocated ports, none exclusive) upgrades without downtime. When it cannot,
    // the planner refuses the rollout, naming the port that forces stop-then-start.

    let depends_on: Vec<Ref> = doc
        .depends_on
        .iter()
        .map(|dep| Ref {
            name: dep.value.clone(),
            pos: ctx.pos(dep),
        })
        .collect();
    for dep in &depends_on {
        check_reference_syntax(ctx, &dep.name, dep.pos, "dependency", out);
    }

    ComponentEntry {
        ctx,
        name_pos,
        system_pos,
        artifact_pos,
        batch_pos,
        selector_pos: ctx.pos_or(&p.selector, count_pos),
        component: Component {
            system: doc.system.value.clone(),
            name: doc.name.value.clone(),
            description: doc.description.clone(),
            artifact: Artifact {
                version: a.version.value.clone(),
                source,
            },
            command: doc.command.value.clone(),
            args: doc.args.iter().map(|a| a.value.clone()).collect(),
            env: doc.env.iter().map(|(k, v)| (k.clone(), v.value.clone())).collect(),
            config_files,
            run_as,
            ports,
            health,
            placement: Placement {
                selector: Selector(p.selector.value.0.clone()),
                count,
                spread_by: p.spread_by.clone(),
            },
            rollout: Rollout {
                canary: r.canary.value,
                batch: r.batch.value,
                max_unavailable: r.max_unavailable.value,
                one_domain_at_a_time: r.one_domain_at_a_time.clone(),
                pause: r.pause,
                min_healthy_time: r.min_healthy_time,
                on_failure: r.on_failure,
            },
            gates,
            depends_on: Vec::new(),
        },
        depends_on,
        gate_checks,
    }
}

fn check<'a>(ctx: DocCtx<'a>, doc: &CheckDoc, out: &mut Out) -> CheckEntry<'a> {
    let name_pos = ctx.pos(&doc.name);
    let system_pos = ctx.pos(&doc.system);
    check_name(ctx, &doc.name.value, name_pos, "check", out);
    check_name(ctx, &doc.system.value, system_pos, "system", out);
    let mut port_name = None;
    let mut port_ref = |port: &Spanned<PortRefDoc>, out: &mut Out| -> PortRef {
        let pos = ctx.pos(port);
        match &port.value {
            PortRefDoc::Number(n) => match u16::try_from(*n) {
                Ok(n) if n > 0 => PortRef::Number(n),
                _ => {
                    out.push(
                        ctx.error(pos, "invalid-value", format!("found port {n}"))
                            .expected("a port number from 1 to 65535 or a port name"),
                    );
                    PortRef::Number(0)
                }
            },
            PortRefDoc::Name(name) => {
                port_name = Some(Ref {
                    name: name.clone(),
                    pos,
                });
                PortRef::Name(name.clone())
            }
        }
    };
    let mut probes = Vec::new();
    if let Some(exec) = &doc.exec {
        probes.push((
            ctx.pos(exec),
            exec_probe(ctx, &exec.value, out, |command, args| CheckProbe::Exec {
                command,
                args,
            }),
        ));
    }
    if let Some(http) = &doc.http {
        let pos = ctx.pos(http);
        let h = &http.value;
        let target = match (&h.url, &h.port) {
            (Some(url), None) => {
                if !is_http_url(&url.value) {
                    out.push(
                        ctx.error(ctx.pos(url), "invalid-url", format!("found check URL `{}`", url.value))
                            .expected("an `http://` or `https://` URL"),
                    );
                }
                if h.path.is_some() {
                    out.push(
                        ctx.error(pos, "conflicting-fields", "found `path` with `url`")
                            .expected("the path inside `url`"),
                    );
                }
                HttpTarget::Url(url.value.clone())
            }
            (None, Some(port)) => HttpTarget::Port {
                port: port_ref(port, out),
                path: h.path.clone().unwrap_or_else(|| "/".to_owned()),
            },
            (Some(_), Some(port)) => {
                out.push(
                    ctx.error(
                        ctx.pos(port),
                        "conflicting-fields",
                        "found both `url` and `port` in the http check",
                    )
                    .expected("exactly one of `url` and `port`"),
                );
                HttpTarget::Url(String::new())
            }
            (None, None) => {
                out.push(
                    ctx.error(
                        pos,
                        "missing-field",
                        "found an http check with neither `url` nor `port`",
                    )
                    .expected("exactly one of `url` and `port` (with `path`)"),
                );
                HttpTarget::Url(String::new())
            }
        };
        let status = h.expect_status.value;
        if !(100..=599).contains(&status) {
            out.push(
                ctx.error(
                    ctx.pos_or(&h.expect_status, pos),
                    "invalid-value",
                    format!("found HTTP status {status}"),
                )
                .expected("a status from 100 to 599"),
            );
        }
        probes.push((
            pos,
            CheckProbe::Http {
                target,
                expect_status: status,
                body_match: h.body_match.clone(),
                latency_threshold: h.latency_threshold,
            },
        ));
    }
    if let Some(tcp) = &doc.tcp {
        let port = port_ref(&tcp.value.port, out);
        probes.push((
            ctx.pos(tcp),
            CheckProbe::Tcp {
                host: tcp.value.host.clone(),
                port,
            },
        ));
    }
    let probe = one_of(ctx, probes, name_pos, "`exec`, `http` and `tcp`", "check", out).unwrap_or(CheckProbe::Exec {
        command: String::new(),
        args: Vec::new(),
    });
    check_timeout(ctx, &doc.timeout, &doc.interval, name_pos, out);
    let target = targets(ctx, &doc.targets, out);
    let mut port_names: Vec<Ref> = port_name.into_iter().collect();
    // An exec check's arguments: `{{ instance.host }}` always; `{{ instance.id }}` and
    // `{{ ports.<name> }}` only on a component's instances.
    if let Some(exec) = &doc.exec {
        let pos = ctx.pos(exec);
        let on_component = matches!(target, TargetRef::Component(_));
        let known = |v: &str| {
            v == "instance.host"
                || (on_component && (v == "instance.id" || v.strip_prefix("ports.").is_some_and(|p| !p.contains('.'))))
        };
        for arg in &exec.value.args {
            for problem in check_template(arg, &known) {
                out.push(
                    ctx.error(pos, problem.code, format!("{} in argument `{arg}`", problem.message))
                        .expected(if on_component {
                            "one of `instance.host`, `instance.id`, `ports.<name>`"
                        } else {
                            "`instance.host` (a check of hosts has no instance or ports)"
                        }),
                );
            }
            if on_component {
                for name in crate::template::variables(arg) {
                    if let Some(port) = name.strip_prefix("ports.") {
                        port_names.push(Ref {
                            name: port.to_owned(),
                            pos,
                        });
                    }
                }
            }
        }
    }
    CheckEntry {
        ctx,
        name_pos,
        system_pos,
        check: Check {
            name: doc.name.value.clone(),
            system: doc.system.value.clone(),
            probe,
            interval: doc.interval.value,
            timeout: doc.timeout.value,
            splay: doc.splay,
            targets: provisional_targets(&target),
        },
        target,
        port_names,
    }
}

fn action<'a>(ctx: DocCtx<'a>, doc: &ActionDoc, out: &mut Out) -> ActionEntry<'a> {
    let name_pos = ctx.pos(&doc.name);
    let system_pos = ctx.pos(&doc.system);
    check_name(ctx, &doc.name.value, name_pos, "action", out);
    check_name(ctx, &doc.system.value, system_pos, "system", out);

    let mut parameters = BTreeMap::new();
    for (name, spanned) in &doc.parameters {
        let pos = ctx.pos(spanned);
        check_identifier(ctx, name, pos, "parameter", out);
        let p = &spanned.value;
        let mut problem = |message: String, expected: &str| {
            out.push(
                ctx.error(pos, "invalid-parameter", format!("parameter `{name}`: {message}"))
                    .expected(expected),
            );
        };
        if p.kind == ParameterType::Enum && p.values.is_empty() {
            problem(
                "found an enum without `values`".to_owned(),
                "a non-empty list of `values`",
            );
        }
        if p.kind != ParameterType::Enum && !p.values.is_empty() {
            problem(
                "found `values` on a parameter that is not an enum".to_owned(),
                "`values` only with `type: enum`",
            );
        }
        let mut seen = BTreeSet::new();
        for value in &p.values {
            if !seen.insert(value) {
                problem(format!("found enum value `{value}` twice"), "each value once");
            }
        }
        if let Some(pattern) = &p.pattern
            && let Err(error) = regex_lite::Regex::new(pattern)
        {
            problem(
                format!("found pattern `{pattern}`, which is not a regular expression: {error}"),
                "a regular expression (the whole value must match)",
            );
        }
        if p.pattern.is_some() && p.kind != ParameterType::String {
            problem(
                "found `pattern` on a parameter that is not a string".to_owned(),
                "`pattern` only with `type: string`",
            );
        }
        if (p.min.is_some() || p.max.is_some()) && p.kind != ParameterType::Integer {
            problem(
                "found `min`/`max` on a parameter that is not an integer".to_owned(),
                "`min` and `max` only with `type: integer`",
            );
        }
        if let (Some(min), Some(max)) = (p.min, p.max)
            && min > max
        {
            problem(format!("found `min` {min} above `max` {max}"), "`min` at most `max`");
        }
        let default = p.default.as_ref().and_then(|value| match (p.kind, value) {
            (ParameterType::Boolean, ParamValueDoc::Boolean(b)) => Some(ParamValue::Boolean(*b)),
            (ParameterType::Integer, ParamValueDoc::Integer(n)) => {
                if p.min.is_some_and(|min| *n < min) || p.max.is_some_and(|max| *n > max) {
                    problem(
                        format!("found default {n} outside `min`..`max`"),
                        "a default within `min` and `max`",
                    );
                }
                Some(ParamValue::Integer(*n))
            }
            (ParameterType::String, ParamValueDoc::String(s)) => Some(ParamValue::String(s.clone())),
            (ParameterType::Enum, ParamValueDoc::String(s)) => {
                if !p.values.contains(s) {
                    problem(
                        format!("found default `{s}`, which is not one of its values"),
                        &format!("one of {}", quoted_list(p.values.iter().map(String::as_str))),
                    );
                }
                Some(ParamValue::String(s.clone()))
            }
            (kind, value) => {
                let kind = match kind {
                    ParameterType::String => "a string (quote it)",
                    ParameterType::Integer => "an integer",
                    ParameterType::Boolean => "`true` or `false`",
                    ParameterType::Enum => "one of its `values`",
                };
                problem(
                    format!("found default {}", describe_param(value)),
                    &format!("a default of its type: {kind}"),
                );
                None
            }
        });
        if p.required && p.default.is_some() {
            out.push(
                ctx.warning(
                    pos,
                    "default-on-required",
                    format!("parameter `{name}`: found a default on a required parameter"),
                )
                .expected("either `required: true` or a `default`"),
            );
        }
        parameters.insert(
            name.clone(),
            Parameter {
                kind: p.kind,
                values: p.values.clone(),
                pattern: p.pattern.clone(),
                min: p.min,
                max: p.max,
                default,
                required: p.required,
            },
        );
    }

    let command_pos = ctx.pos(&doc.command);
    if doc.command.value.is_empty() {
        out.push(
            ctx.error(command_pos, "invalid-value", "found an empty command")
                .expected("the argv to run, program first"),
        );
    }
    if doc.shell.value && doc.command.value.len() > 1 {
        out.push(
            ctx.error(
                ctx.pos_or(&doc.shell, command_pos),
                "conflicting-fields",
                format!("found `shell: true` with {} command elements", doc.command.value.len()),
            )
            .expected("exactly one element, the script given to `sh -c`"),
        );
    }
    let on_component = doc.targets.value.component.is_some();
    let known = |variable: &str| {
        ACTION_VARIABLES.contains(&variable)
            || variable
                .strip_prefix("params.")
                .is_some_and(|param| parameters.contains_key(param))
            || variable.strip_prefix("host.labels.").is_some_and(|key| !key.is_empty())
            || (on_component && variable.strip_prefix("ports.").is_some_and(|port| !port.is_empty()))
    };
    for (idx, element) in doc.command.value.iter().enumerate() {
        let pos = ctx.pos(element);
        if idx == 0 && element.value.trim().is_empty() {
            out.push(
                ctx.error(pos, "invalid-value", "found an empty program")
                    .expected("the program to run"),
            );
        }
        for problem in check_template(&element.value, &known) {
            let mut list = quoted_list(ACTION_VARIABLES);
            list.push_str(", `host.labels.<key>`");
            if on_component {
                list.push_str(", `ports.<name>`");
            }
            for param in parameters.keys() {
                list.push_str(&format!(", `params.{param}`"));
            }
            out.push(
                ctx.error(pos, problem.code, problem.message)
                    .expected(format!("one of {list}")),
            );
        }
    }
    if doc.concurrency.value == 0 {
        out.push(
            ctx.error(
                ctx.pos_or(&doc.concurrency, name_pos),
                "invalid-value",
                "found `concurrency: 0`",
            )
            .expected("at least 1"),
        );
    }
    if doc.timeout.is_zero() {
        out.push(
            ctx.error(name_pos, "invalid-value", "found a timeout of 0s")
                .expected("a positive duration"),
        );
    }
    if doc.engagement.value == crate::model::Engagement::Escalate
        && doc.escalate_to.as_deref().is_none_or(|e| e.trim().is_empty())
    {
        out.push(
            ctx.error(
                ctx.pos_or(&doc.engagement, name_pos),
                "missing-field",
                "found `engagement: escalate` without `escalate_to`",
            )
            .expected("`escalate_to` naming the team or person"),
        );
    }
    if let Some(limit) = &doc.rate_limit {
        if limit.runs.value == 0 {
            out.push(
                ctx.error(ctx.pos(&limit.runs), "invalid-value", "found `rate_limit.runs: 0`")
                    .expected("at least 1 (an action that must never run is better removed)"),
            );
        }
        if limit.per.is_zero() {
            out.push(
                ctx.error(ctx.pos(&limit.runs), "invalid-value", "found `rate_limit.per` of 0s")
                    .expected("a positive duration, e.g. `10m`"),
            );
        }
    }
    let target = targets(ctx, &doc.targets, out);
    ActionEntry {
        ctx,
        name_pos,
        system_pos,
        action: Action {
            name: doc.name.value.clone(),
            system: doc.system.value.clone(),
            description: doc.description.clone(),
            parameters,
            command: doc.command.value.iter().map(|c| c.value.clone()).collect(),
            shell: doc.shell.value,
            targets: provisional_targets(&target),
            concurrency: doc.concurrency.value,
            timeout: doc.timeout,
            allow_during_rollout: doc.allow_during_rollout,
            reentrant: doc.reentrant,
            engagement: doc.engagement.value,
            escalate_to: doc.escalate_to.clone(),
            rate_limit: doc
                .rate_limit
                .as_ref()
                .map_or_else(crate::model::RateLimit::default, |r| crate::model::RateLimit {
                    runs: r.runs.value,
                    per: r.per,
                }),
        },
        target,
    }
}

fn policy<'a>(ctx: DocCtx<'a>, doc: &PolicyDoc, out: &mut Out) -> PolicyEntry<'a> {
    let name_pos = ctx.pos(&doc.name);
    check_name(ctx, &doc.name.value, name_pos, "policy", out);
    let systems = refs(ctx, &doc.applies_to.systems);
    let rules = &doc.rules;
    let max_batch_percent = rules.max_batch_percent.as_ref().map(|max| {
        if !(1..=100).contains(&max.value) {
            out.push(
                ctx.error(
                    ctx.pos(max),
                    "invalid-value",
                    format!("found `max_batch_percent: {}`", max.value),
                )
                .expected("a percentage from 1 to 100"),
            );
        }
        max.value
    });
    let freeze_windows = rules
        .freeze_windows
        .iter()
        .map(|window| {
            let pos = ctx.pos(&window.cron);
            if let Err(message) = check_cron(&window.cron.value) {
                out.push(ctx.error(pos, "invalid-cron", message).expected(
                    "5 fields: minute (0-59) hour (0-23) day-of-month (1-31) month (1-12) day-of-week (0-7)",
                ));
            }
            if window.duration.value.is_zero() {
                out.push(
                    ctx.error(
                        ctx.pos_or(&window.duration, pos),
                        "invalid-value",
                        "found a freeze window of 0s",
                    )
                    .expected("a positive duration"),
                );
            }
            if window.reason.trim().is_empty() {
                out.push(
                    ctx.error(pos, "invalid-value", "found a freeze window without a reason")
                        .expected("a `reason` shown to whoever it blocks"),
                );
            }
            FreezeWindow {
                cron: window.cron.value.clone(),
                duration: window.duration.value,
                reason: window.reason.clone(),
            }
        })
        .collect();
    let max_in_flight = rules.max_in_flight.as_ref().map(|limit| {
        let value = &limit.value;
        for (field, given) in [("hosts", value.hosts), ("instances", value.instances)] {
            if given == Some(0) {
                out.push(
                    ctx.error(
                        ctx.pos(limit),
                        "invalid-value",
                        format!("found `max_in_flight.{field}: 0`"),
                    )
                    .expected("at least 1 (nothing could ever change)"),
                );
            }
        }
        if value.hosts.is_none() && value.instances.is_none() {
            out.push(
                ctx.error(ctx.pos(limit), "invalid-value", "found `max_in_flight` without a limit")
                    .expected("`hosts`, `instances` or both"),
            );
        }
        MaxInFlight {
            hosts: value.hosts.filter(|n| *n > 0),
            instances: value.instances.filter(|n| *n > 0),
        }
    });
    let mut allowed = rules.allowed_artifact_sources.clone();
    allowed.sort();
    allowed.dedup();
    let mut system_names: Vec<String> = systems.iter().map(|s| s.name.clone()).collect();
    system_names.sort();
    system_names.dedup();
    PolicyEntry {
        ctx,
        name_pos,
        policy: Policy {
            name: doc.name.value.clone(),
            applies_to: AppliesTo {
                systems: system_names,
                selector: Selector(doc.applies_to.selector.0.clone()),
            },
            rules: Rules {
                require_owners: rules.require_owners,
                require_escalation: rules.require_escalation,
                allowed_artifact_sources: allowed,
                max_batch_percent,
                freeze_windows,
                max_in_flight,
            },
        },
        systems,
    }
}

// === shared pieces ===

fn exec_probe<T>(ctx: DocCtx<'_>, exec: &ExecDoc, out: &mut Out, make: impl FnOnce(String, Vec<String>) -> T) -> T {
    if exec.command.value.trim().is_empty() {
        out.push(
            ctx.error(ctx.pos(&exec.command), "invalid-value", "found an empty command")
                .expected("the program to run"),
        );
    }
    make(exec.command.value.clone(), exec.args.clone())
}

/// Exactly one of several alternatives: reports none or more than one.
fn one_of<T>(ctx: DocCtx<'_>, mut found: Vec<(Pos, T)>, pos: Pos, names: &str, what: &str, out: &mut Out) -> Option<T> {
    match found.len() {
        0 => {
            out.push(
                ctx.error(pos, "missing-field", format!("found a {what} with none of {names}"))
                    .expected(format!("exactly one of {names}")),
            );
            None
        }
        1 => found.pop().map(|(_, value)| value),
        _ => {
            let second = found.get(1).map_or(pos, |(pos, _)| *pos);
            out.push(
                ctx.error(second, "conflicting-fields", format!("found more than one of {names}"))
                    .expected(format!("exactly one of {names}")),
            );
            None
        }
    }
}

fn targets(ctx: DocCtx<'_>, targets: &Spanned<TargetsDoc>, out: &mut Out) -> TargetRef {
    let pos = ctx.pos(targets);
    match (&targets.value.component, &targets.value.selector) {
        (Some(component), None) => {
            let pos = ctx.pos(component);
            check_reference_syntax(ctx, &component.value, pos, "target component", out);
            TargetRef::Component(Ref {
                name: component.value.clone(),
                pos,
            })
        }
        (None, Some(selector)) => TargetRef::Hosts(Selector(selector.value.0.clone()), ctx.pos_or(selector, pos)),
        (Some(_), Some(selector)) => {
            out.push(
                ctx.error(
                    ctx.pos_or(selector, pos),
                    "conflicting-fields",
                    "found both `component` and `selector` in `targets`",
                )
                .expected("exactly one of `component` and `selector`"),
            );
            TargetRef::Invalid
        }
        (None, None) => {
            out.push(
                ctx.error(
                    pos,
                    "missing-field",
                    "found `targets` with neither `component` nor `selector`",
                )
                .expected("exactly one of `component` and `selector`"),
            );
            TargetRef::Invalid
        }
    }
}

fn provisional_targets(target: &TargetRef) -> Targets {
    match target {
        TargetRef::Component(reference) => Targets::Component(reference.name.clone()),
        TargetRef::Hosts(selector, _) => Targets::Hosts(selector.clone()),
        TargetRef::Invalid => Targets::Hosts(Selector::default()),
    }
}

fn check_timeout(
    ctx: DocCtx<'_>,
    timeout: &Spanned<crate::Duration>,
    interval: &Spanned<crate::Duration>,
    fallback: Pos,
    out: &mut Out,
) {
    if interval.value.is_zero() {
        out.push(
            ctx.error(
                ctx.pos_or(interval, fallback),
                "invalid-value",
                "found an interval of 0s",
            )
            .expected("a positive duration"),
        );
    }
    if timeout.value.is_zero() {
        out.push(
            ctx.error(ctx.pos_or(timeout, fallback), "invalid-value", "found a timeout of 0s")
                .expected("a positive duration"),
        );
    } else if timeout.value > interval.value {
        out.push(
            ctx.error(
                ctx.pos_or(timeout, fallback),
                "invalid-value",
                format!(
                    "found timeout {} longer than interval {}",
                    timeout.value, interval.value
                ),
            )
            .expected("a timeout of at most the interval"),
        );
    }
}

fn check_name(ctx: DocCtx<'_>, name: &str, pos: Pos, what: &str, out: &mut Out) {
    if let Err(error) = validate_name(name) {
        let expected = match error {
            NameError::Empty => "a non-empty name".to_owned(),
            NameError::TooLong { max, .. } => format!("at most {max} characters"),
            NameError::BadChar { .. } => {
                "lowercase letters, digits, `-`, `_` and `.`, starting with a letter or digit".to_owned()
            }
        };
        out.push(
            ctx.error(pos, "invalid-name", format!("found {what} name `{name}`"))
                .expected(expected),
        );
    }
}

/// Names used inside template variables (`ports.<name>`, `params.<name>`) cannot contain dots.
fn check_identifier(ctx: DocCtx<'_>, name: &str, pos: Pos, what: &str, out: &mut Out) {
    if validate_name(name).is_err() || name.contains('.') {
        out.push(
            ctx.error(pos, "invalid-name", format!("found {what} name `{name}`"))
                .expected("lowercase letters, digits, `-` and `_`, starting with a letter or digit"),
        );
    }
}

/// A component reference: `name` or `system/name`.
fn check_reference_syntax(ctx: DocCtx<'_>, reference: &str, pos: Pos, what: &str, out: &mut Out) {
    let valid = match reference.split_once('/') {
        Some((system, name)) => validate_name(system).is_ok() && validate_name(name).is_ok(),
        None => validate_name(reference).is_ok(),
    };
    if !valid {
        out.push(
            ctx.error(pos, "invalid-name", format!("found {what} `{reference}`"))
                .expected("`component` or `system/component`"),
        );
    }
}

fn qualify(system: &str, reference: &str) -> String {
    if reference.contains('/') {
        reference.to_owned()
    } else {
        format!("{system}/{reference}")
    }
}

fn is_http_url(url: &str) -> bool {
    ["https://", "http://"].iter().any(|scheme| {
        url.strip_prefix(scheme)
            .is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace))
    })
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn describe_param(value: &ParamValueDoc) -> String {
    match value {
        ParamValueDoc::Boolean(b) => format!("`{b}` (a boolean)"),
        ParamValueDoc::Integer(n) => format!("`{n}` (an integer)"),
        ParamValueDoc::Float(x) => format!("`{x}` (a decimal number)"),
        ParamValueDoc::String(s) => format!("`{s}` (a string)"),
    }
}

fn source_word(kind: crate::model::SourceKind) -> &'static str {
    match kind {
        crate::model::SourceKind::Path => "path",
        crate::model::SourceKind::Https => "https",
        crate::model::SourceKind::Http => "http",
    }
}

/// "a declared system (`a`, `b`, ...)" listing at most 8 names.
fn expect_one_of<'a>(what: &str, names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.take(9).collect();
    if names.is_empty() {
        return what.to_owned();
    }
    let mut list = quoted_list(names.iter().take(8).copied());
    if names.len() > 8 {
        list.push_str(", ...");
    }
    format!("{what} ({list})")
}

/// Keeps the first entry of every name, reporting the others as duplicates.
fn unique<'a, E>(
    entries: Vec<E>,
    what: &str,
    key: impl Fn(&E) -> (String, DocCtx<'a>, Pos),
    out: &mut Out,
) -> BTreeMap<String, E> {
    let mut kept: BTreeMap<String, E> = BTreeMap::new();
    for entry in entries {
        let (name, ctx, pos) = key(&entry);
        match kept.get(&name) {
            Some(first) => {
                let (_, first_ctx, first_pos) = key(first);
                out.push(
                    ctx.error(
                        pos,
                        "duplicate-name",
                        format!(
                            "found {what} `{name}` a second time; first declared at {}:{first_pos}",
                            first_ctx.file
                        ),
                    )
                    .expected(format!("one {what} per name")),
                );
            }
            None => {
                kept.insert(name, entry);
            }
        }
    }
    kept
}

/// Cycles in a graph, each once: the path (first node repeated at the end) and the position of the
/// edge that closes it. Iterative, so a long chain cannot overflow the stack.
fn find_cycles<'a>(graph: &BTreeMap<&'a str, Vec<(&'a str, Pos)>>) -> Vec<(Vec<&'a str>, Pos)> {
    #[derive(Clone, Copy, PartialEq)]
    enum Color {
        White,
        Gray,
        Black,
    }
    let mut color: BTreeMap<&str, Color> = graph.keys().map(|k| (*k, Color::White)).collect();
    let mut cycles = Vec::new();
    let mut seen = BTreeSet::new();
    for &root in graph.keys() {
        if color.get(root) != Some(&Color::White) {
            continue;
        }
        // The DFS path: (node, index of the next edge to follow).
        let mut stack: Vec<(&str, usize)> = vec![(root, 0)];
        color.insert(root, Color::Gray);
        while let Some((node, edge_idx)) = stack.last().copied() {
            let edges = graph.get(node).map(Vec::as_slice).unwrap_or_default();
            let Some(&(next, pos)) = edges.get(edge_idx) else {
                color.insert(node, Color::Black);
                stack.pop();
                continue;
            };
            if let Some(top) = stack.last_mut() {
                top.1 += 1;
            }
            match color.get(next).copied().unwrap_or(Color::Black) {
                Color::White => {
                    color.insert(next, Color::Gray);
                    stack.push((next, 0));
                }
                Color::Gray => {
                    let from = stack.iter().position(|(n, _)| *n == next).unwrap_or(0);
                    let mut path: Vec<&str> = stack.get(from..).unwrap_or_default().iter().map(|(n, _)| *n).collect();
                    // One report per cycle, whichever node the search entered it from.
                    let mut canonical = path.clone();
                    if let Some(min_idx) = canonical.iter().enumerate().min_by_key(|(_, n)| **n).map(|(i, _)| i) {
                        canonical.rotate_left(min_idx);
                    }
                    if seen.insert(canonical) {
                        path.push(next);
                        cycles.push((path, pos));
                    }
                }
                Color::Black => {}
            }
        }
    }
    cycles
}

// === impl DocCtx, Out ===

impl DocCtx<'_> {
    fn pos<T>(&self, spanned: &Spanned<T>) -> Pos {
        spanned_pos(spanned, self.line_offset, self.start)
    }

    fn pos_or<T>(&self, spanned: &Spanned<T>, fallback: Pos) -> Pos {
        spanned_pos(spanned, self.line_offset, fallback)
    }

    fn error(&self, pos: Pos, code: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic::error(self.file, pos, code, message)
    }

    fn warning(&self, pos: Pos, code: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic::warning(self.file, pos, code, message)
    }
}

impl Out {
    fn push(&mut self, diagnostic: Diagnostic) {
        self.diagnostics.push(diagnostic);
    }
}

/// A user or group name as `useradd` accepts it by default (Debian's `NAME_REGEX` without `$`).
fn is_account_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && name.len() <= 32
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}
