//! The operational parameters of a change (`options`: host groups, retired and targeted hosts)
//! checked against the hosts in service, and the basis a previewed plan was computed from.
//!
//! Hosts are resolved to names when the change is submitted and stored so: a label that changes
//! during the rollout does not move a host from one group to another.

use std::collections::{BTreeMap, BTreeSet};

use endstate_api::{ChangeOptions, FieldError, PlanBasis};
use endstate_plan::PlanOptions;
use endstate_spec::HostInfo;
use endstate_types::RevisionId;

use crate::error::ApiError;

/// Resolves `options` (host names and `key=value` selectors) against the hosts in service.
/// Every problem is reported, each with the path of its field (`options.host_groups[1][0]`).
pub(crate) fn resolve(options: &ChangeOptions, hosts: &[HostInfo]) -> Result<PlanOptions, ApiError> {
    let mut errors = Vec::new();
    let mut resolved = PlanOptions::default();
    let mut grouped: BTreeMap<String, usize> = BTreeMap::new();
    for (g, group) in options.host_groups.iter().enumerate() {
        if group.is_empty() {
            errors.push(field(
                format!("options.host_groups[{g}]"),
                "an empty group: name hosts or a selector",
            ));
        }
        let mut members = BTreeSet::new();
        for (i, entry) in group.iter().enumerate() {
            let path = format!("options.host_groups[{g}][{i}]");
            for host in select(entry, hosts, &path, &mut errors) {
                match grouped.get(&host) {
                    Some(&other) if other != g => errors.push(field(
                        path.clone(),
                        format!("host {host} is already in group {other}: a host belongs to one group"),
                    )),
                    _ => {
                        grouped.insert(host.clone(), g);
                        members.insert(host);
                    }
                }
            }
        }
        resolved.host_groups.push(members.into_iter().collect());
    }
    resolved.retire_hosts = names(&options.retire_hosts, "options.retire_hosts", hosts, &mut errors);
    resolved.target_hosts = names(&options.target_hosts, "options.target_hosts", hosts, &mut errors);
    if !hosts.is_empty() && resolved.retire_hosts.len() == hosts.len() {
        errors.push(field(
            "options.retire_hosts",
            "that retires every host in service, leaving none to place instances on",
        ));
    }
    for host in &resolved.target_hosts {
        if resolved.retire_hosts.contains(host) {
            errors.push(field(
                "options.target_hosts",
                format!("host {host} is both targeted and retired: retiring it already moves its instances first"),
            ));
        }
    }
    if errors.is_empty() {
        Ok(resolved)
    } else {
        let detail = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        Err(ApiError::Invalid {
            detail: format!("invalid options: {detail}"),
            errors,
        })
    }
}

fn names(entries: &[String], path: &str, hosts: &[HostInfo], errors: &mut Vec<FieldError>) -> Vec<String> {
    let mut out = BTreeSet::new();
    for (i, entry) in entries.iter().enumerate() {
        out.extend(select(entry, hosts, &format!("{path}[{i}]"), errors));
    }
    out.into_iter().collect()
}

/// The hosts `entry` names: one host by name, or every host whose label matches `key=value`.
fn select(entry: &str, hosts: &[HostInfo], path: &str, errors: &mut Vec<FieldError>) -> Vec<String> {
    let entry = entry.trim();
    if let Some((key, value)) = entry.split_once('=') {
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() || value.is_empty() {
            errors.push(field(
                path,
                format!("found {entry:?}; expected a host name or key=value"),
            ));
            return Vec::new();
        }
        let matched: Vec<String> = hosts
            .iter()
            .filter(|h| h.labels.get(key).is_some_and(|v| v == value))
            .map(|h| h.name.clone())
            .collect();
        if matched.is_empty() {
            errors.push(field(
                path,
                format!("the selector {key}={value} matches no host in service"),
            ));
        }
        return matched;
    }
    if hosts.iter().any(|h| h.name == entry) {
        return vec![entry.to_owned()];
    }
    let known: Vec<&str> = hosts.iter().take(5).map(|h| h.name.as_str()).collect();
    let more = if hosts.len() > known.len() { ", …" } else { "" };
    errors.push(field(
        path,
        format!(
            "no host named {entry:?} is in service (hosts: {}{more})",
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        ),
    ));
    Vec::new()
}

fn field(path: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: path.into(),
        message: message.into(),
    }
}

/// The stored form of a change's options (`None` when there are none).
pub(crate) fn stored(options: &PlanOptions) -> Option<serde_json::Value> {
    (!options.is_empty()).then(|| serde_json::to_value(options).unwrap_or_default())
}

/// The options a change was submitted with.
pub(crate) fn of_change(change: &endstate_store::Change) -> PlanOptions {
    change
        .options
        .as_ref()
        .and_then(|o| serde_json::from_value(o.clone()).ok())
        .unwrap_or_default()
}

/// What a plan is computed from: the base revision and the hosts in service with their labels.
pub(crate) fn basis(base: Option<RevisionId>, hosts: &[HostInfo]) -> PlanBasis {
    PlanBasis {
        base_revision: base.map(|id| id.0),
        hosts: hosts
            .iter()
            .map(|h| {
                let labels = h.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                (h.name.clone(), labels)
            })
            .collect(),
    }
}

/// What differs between the basis a plan was previewed on and the current one, one line each.
pub(crate) fn differences(previewed: &PlanBasis, now: &PlanBasis) -> Vec<String> {
    let mut out = Vec::new();
    if previewed.base_revision != now.base_revision {
        let word = |r: Option<u64>| r.map_or_else(|| "none".to_owned(), |r| format!("revision {r}"));
        out.push(format!(
            "the base (the last converged revision) moved from {} to {}",
            word(previewed.base_revision),
            word(now.base_revision)
        ));
    }
    let labels = |l: &BTreeMap<String, String>| {
        if l.is_empty() {
            "no labels".to_owned()
        } else {
            l.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
        }
    };
    for (host, now_labels) in &now.hosts {
        match previewed.hosts.get(host) {
            None => out.push(format!("host {host} joined ({})", labels(now_labels))),
            Some(before) if before != now_labels => out.push(format!(
                "the labels of host {host} changed from {} to {}",
                labels(before),
                labels(now_labels)
            )),
            Some(_) => {}
        }
    }
    for host in previewed.hosts.keys() {
        if !now.hosts.contains_key(host) {
            out.push(format!("host {host} left (removed, revoked or retired)"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, zone: &str) -> HostInfo {
        HostInfo {
            name: name.into(),
            labels: [("zone".to_owned(), zone.to_owned())].into_iter().collect(),
        }
    }

    #[test]
    fn selectors_and_names_resolve_and_every_problem_has_its_path() {
        let hosts = [host("h1", "a"), host("h2", "a"), host("h3", "b")];
        let options = ChangeOptions {
            host_groups: vec![vec!["zone=a".into()], vec!["h3".into()]],
            retire_hosts: vec!["h2".into()],
            target_hosts: vec![],
        };
        let resolved = resolve(&options, &hosts).unwrap();
        assert_eq!(
            resolved.host_groups,
            vec![vec!["h1".to_owned(), "h2".to_owned()], vec!["h3".to_owned()]]
        );
        assert_eq!(resolved.retire_hosts, vec!["h2".to_owned()]);

        let bad = ChangeOptions {
            host_groups: vec![vec!["zone=a".into()], vec!["h1".into(), "zone=z".into(), "=x".into()]],
            retire_hosts: vec!["h9".into()],
            target_hosts: vec!["h1".into(), "h2".into()],
        };
        let Err(ApiError::Invalid { errors, .. }) = resolve(
            &ChangeOptions {
                retire_hosts: vec!["h9".into(), "h2".into()],
                ..bad
            },
            &hosts,
        ) else {
            panic!("expected a bad request");
        };
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "options.host_groups[1][0]",
                "options.host_groups[1][1]",
                "options.host_groups[1][2]",
                "options.retire_hosts[0]",
                "options.target_hosts",
            ]
        );
        assert!(errors[0].message.contains("already in group 0"), "{errors:?}");
        assert!(errors[3].message.contains("no host named \"h9\""), "{errors:?}");
        assert!(
            errors[4].message.contains("h2 is both targeted and retired"),
            "{errors:?}"
        );
    }

    #[test]
    fn retiring_every_host_is_refused() {
        let hosts = [host("h1", "a")];
        let options = ChangeOptions {
            retire_hosts: vec!["h1".into()],
            ..ChangeOptions::default()
        };
        assert!(matches!(resolve(&options, &hosts), Err(ApiError::Invalid { .. })));
    }

    #[test]
    fn differences_name_what_moved() {
        let before = basis(Some(RevisionId(3)), &[host("h1", "a"), host("h2", "a")]);
        let after = basis(Some(RevisionId(4)), &[host("h1", "b"), host("h3", "c")]);
        assert_eq!(
            differences(&before, &after),
            [
                "the base (the last converged revision) moved from revision 3 to revision 4",
                "the labels of host h1 changed from zone=a to zone=b",
                "host h3 joined (zone=c)",
                "host h2 left (removed, revoked or retired)",
            ]
        );
        assert!(differences(&before, &before).is_empty());
    }
}
