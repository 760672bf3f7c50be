//! Static policy checks: the rules of `Policy` documents that can be judged on a desired state
//! alone, before it is stored. Pure, no IO.
//!
//! A finding of severity `deny` refuses the revision; every finding names the policy, the rule,
//! the object and why. Rules that need live state (freeze windows) are judged by the Decider at
//! the time a step would run, not here.

use endstate_spec::{ArtifactSource, Batch, DesiredState, Policy, SourceKind};
use serde::{Deserialize, Serialize};

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth knowing; does not stop anything.
    Note,
    /// Refuses the revision.
    Deny,
}

/// One rule of one policy judged on one object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// How bad it is.
    pub severity: Severity,
    /// The policy's name.
    pub policy: String,
    /// The rule, as written in the policy (`require_owners`, …).
    pub rule: &'static str,
    /// The object judged: `system shop`, `component shop/web`.
    pub object: String,
    /// Why.
    pub message: String,
}

/// Judges every policy of `desired` against the systems and components it applies to.
/// Findings are ordered by policy, then object, then rule.
pub fn check(desired: &DesiredState) -> Vec<Finding> {
    let mut findings = Vec::new();
    for policy in desired.policies.values() {
        for system in covered_systems(policy, desired) {
            check_system(policy, desired, system, &mut findings);
        }
    }
    findings.sort_by(|a, b| (&a.policy, &a.object, a.rule).cmp(&(&b.policy, &b.object, b.rule)));
    findings
}

/// The systems a policy covers: those named, plus those whose labels match its selector; every
/// system when it names none and has an empty selector.
fn covered_systems<'a>(policy: &Policy, desired: &'a DesiredState) -> Vec<&'a str> {
    let applies = &policy.applies_to;
    desired
        .systems
        .values()
        .filter(|system| {
            (applies.systems.is_empty() && applies.selector.is_empty())
                || applies.systems.iter().any(|name| name == &system.name)
                || (!applies.selector.is_empty() && applies.selector.matches(&system.labels))
        })
        .map(|system| system.name.as_str())
        .collect()
}

fn check_system(policy: &Policy, desired: &DesiredState, system_name: &str, out: &mut Vec<Finding>) {
    let rules = &policy.rules;
    let Some(system) = desired.systems.get(system_name) else { return };
    let deny = |rule: &'static str, object: String, message: String| Finding {
        severity: Severity::Deny,
        policy: policy.name.clone(),
        rule,
        object,
        message,
    };
    if rules.require_owners && system.owners.is_empty() {
        out.push(deny("require_owners", format!("system {system_name}"), "the system declares no owners".into()));
    }
    if rules.require_escalation && system.escalation.is_none() {
        out.push(deny(
            "require_escalation",
            format!("system {system_name}"),
            "the system declares no escalation contact".into(),
        ));
    }
    for (key, component) in desired.components.iter().filter(|(_, c)| c.system == system_name) {
        if !rules.allowed_artifact_sources.is_empty() {
            let kind = match &component.artifact.source {
                ArtifactSource::Path { .. } => SourceKind::Path,
                ArtifactSource::Url { url, .. } if url.starts_with("https://") => SourceKind::Https,
                ArtifactSource::Url { .. } => SourceKind::Http,
            };
            if !rules.allowed_artifact_sources.contains(&kind) {
                let allowed: Vec<&str> = rules.allowed_artifact_sources.iter().map(|k| source_word(*k)).collect();
                out.push(deny(
                    "allowed_artifact_sources",
                    format!("component {key}"),
                    format!("the artifact comes from a {} source; allowed: {}", source_word(kind), allowed.join(", ")),
                ));
            }
        }
        if let (Some(max), Batch::Percent(percent)) = (rules.max_batch_percent, component.rollout.batch)
            && percent > max
        {
            out.push(deny(
                "max_batch_percent",
                format!("component {key}"),
                format!("rollout batches are {percent}% of the instances; at most {max}% allowed"),
            ));
        }
    }
}

fn source_word(kind: SourceKind) -> &'static str {
    match kind {
        SourceKind::Path => "path",
        SourceKind::Https => "https",
        SourceKind::Http => "http",
    }
}

#[cfg(test)]
mod tests;
