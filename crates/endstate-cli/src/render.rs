//! Text for people: the status tree, timeline lines, the hosts table.

use std::fmt::Write;

use endstate_api::{EventView, HostView, StatusView, SystemView};

fn paint(status: &str, color: bool) -> String {
    if !color {
        return status.to_string();
    }
    let code = match status {
        "healthy" => "32",
        "pending" | "unknown" => "33",
        _ => "31",
    };
    format!("\x1b[{code}m{status}\x1b[0m")
}

fn reason(status: &StatusView) -> String {
    status.reason.as_ref().map(|r| format!("  {r}")).unwrap_or_default()
}

/// Systems as a tree: each line a system or component, its status, and why when not healthy.
pub(crate) fn status_tree(systems: &[SystemView], color: bool) -> String {
    let mut out = String::new();
    for system in systems {
        let _ = writeln!(
            out,
            "{}  {}{}",
            system.name,
            paint(&system.status.status, color),
            reason(&system.status)
        );
        children(system, "", color, &mut out);
    }
    out
}

fn children(system: &SystemView, prefix: &str, color: bool, out: &mut String) {
    let n = system.component_status.len() + system.children.len();
    let mut idx = 0;
    for component in &system.component_status {
        idx += 1;
        let (branch, _) = if idx == n {
            ("└─ ", "   ")
        } else {
            ("├─ ", "│  ")
        };
        let _ = writeln!(
            out,
            "{prefix}{branch}{} {} ({}/{} ready)  {}{}",
            component.key,
            component.version,
            component.ready_instances,
            component.desired_instances,
            paint(&component.status.status, color),
            reason(&component.status)
        );
    }
    for child in &system.children {
        idx += 1;
        let (branch, next) = if idx == n {
            ("└─ ", "   ")
        } else {
            ("├─ ", "│  ")
        };
        let _ = writeln!(
            out,
            "{prefix}{branch}{}  {}",
            child.name,
            paint(&child.status.status, color)
        );
        children(child, &format!("{prefix}{next}"), color, out);
    }
}

/// One timeline event on one line.
pub(crate) fn event_line(event: &EventView, color: bool) -> String {
    let systems = if event.systems.is_empty() {
        String::new()
    } else {
        format!(" [{}]", event.systems.join(","))
    };
    let kind = if color {
        format!("\x1b[1m{:<20}\x1b[0m", event.kind)
    } else {
        format!("{:<20}", event.kind)
    };
    let actor = event.actor.as_ref().map(|a| format!(" ({a})")).unwrap_or_default();
    format!("{}  {kind}{systems}{actor}  {}", event.time, event.summary)
}

/// Hosts as a table.
pub(crate) fn hosts_table(hosts: &[HostView]) -> String {
    let mut out = format!("{:<24} {:<12} {:<22} {}\n", "HOST", "LIVENESS", "INSTANCES", "LABELS");
    for host in hosts {
        let labels: Vec<String> = host.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        // Each instance line ends with `(state status)`, e.g. `(running healthy)`.
        let healthy = host.instances.iter().filter(|i| i.ends_with(" healthy)")).count();
        let instances = match host.instances.len() {
            0 => "0".to_owned(),
            n => format!("{n} ({healthy} healthy)"),
        };
        let _ = writeln!(
            out,
            "{:<24} {:<12} {:<22} {}",
            host.name,
            host.liveness,
            instances,
            labels.join(",")
        );
    }
    out
}

/// `endstate inventory`: one line per host, agents and static entries alike.
pub(crate) fn inventory_table(hosts: &[HostView]) -> String {
    let mut out = format!(
        "{:<24} {:<7} {:<12} {:<24} {:<28} {}\n",
        "HOST", "KIND", "LIVENESS", "SYSTEMS", "LABELS", "FACTS"
    );
    for host in hosts {
        let labels: Vec<String> = host.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let facts = scalar_facts(&host.facts);
        // The facts people look for first: what it is and how big.
        let shown: Vec<String> = ["os", "vendor", "model", "cpus", "memory_bytes"]
            .iter()
            .filter_map(|key| facts.iter().find(|(k, _)| k == key))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(
            out,
            "{:<24} {:<7} {:<12} {:<24} {:<28} {}",
            host.name,
            host.kind,
            host.liveness,
            none_if_empty(&host.systems.join(",")),
            none_if_empty(&labels.join(",")),
            shown.join(" ")
        );
    }
    out
}

/// The top-level facts that are scalars, as text, in key order.
fn scalar_facts(facts: &serde_json::Value) -> Vec<(String, String)> {
    let Some(object) = facts.as_object() else {
        return Vec::new();
    };
    let mut out: Vec<(String, String)> = object
        .iter()
        .filter_map(|(key, value)| {
            let text = match value {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                _ => return None,
            };
            Some((key.clone(), text))
        })
        .collect();
    out.sort();
    out
}

/// `endstate inventory --csv`: fixed columns, then one `fact:KEY` column per scalar fact any
/// host has (empty where a host lacks it).
pub(crate) fn inventory_csv(hosts: &[HostView]) -> anyhow::Result<String> {
    let facts: Vec<Vec<(String, String)>> = hosts.iter().map(|h| scalar_facts(&h.facts)).collect();
    let keys: std::collections::BTreeSet<&str> = facts.iter().flatten().map(|(k, _)| k.as_str()).collect();
    let mut writer = csv::Writer::from_writer(Vec::new());
    let mut header = vec![
        "name".to_string(),
        "kind".into(),
        "liveness".into(),
        "systems".into(),
        "labels".into(),
        "description".into(),
        "last_seen".into(),
        "instances".into(),
    ];
    header.extend(keys.iter().map(|k| format!("fact:{k}")));
    writer.write_record(&header)?;
    for (host, facts) in hosts.iter().zip(&facts) {
        let labels: Vec<String> = host.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut record = vec![
            host.name.clone(),
            host.kind.clone(),
            host.liveness.clone(),
            host.systems.join(" "),
            labels.join(";"),
            host.description.clone(),
            host.last_seen.clone().unwrap_or_default(),
            host.instances.len().to_string(),
        ];
        record.extend(keys.iter().map(|key| {
            facts
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        }));
        writer.write_record(&record)?;
    }
    Ok(String::from_utf8(writer.into_inner()?)?)
}

/// `endstate inventory HOST`: the host, its changes, and what ran on it when.
pub(crate) fn host_detail(d: &endstate_api::HostDetail) -> String {
    let h = &d.host;
    let mut out = String::new();
    let what = if h.description.is_empty() {
        String::new()
    } else {
        format!(": {}", h.description)
    };
    let _ = writeln!(out, "{} ({}){what}", h.name, h.kind);
    let _ = writeln!(out, "  liveness    {}", h.liveness);
    if let Some(seen) = &h.last_seen {
        let _ = writeln!(out, "  last seen   {seen}");
    }
    let labels: Vec<String> = h.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = writeln!(out, "  labels      {}", none_if_empty(&labels.join(", ")));
    let _ = writeln!(out, "  systems     {}", none_if_empty(&h.systems.join(", ")));
    let _ = writeln!(out, "\nFacts");
    let facts = scalar_facts(&h.facts);
    if facts.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    let width = facts.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, value) in &facts {
        let _ = writeln!(out, "  {key:<width$}  {value}");
    }
    let _ = writeln!(out, "\nRuns now");
    if h.instances.is_empty() {
        let _ = writeln!(out, "  (nothing)");
    }
    for instance in &h.instances {
        let _ = writeln!(out, "  {instance}");
    }
    let _ = writeln!(out, "\nWhat ran here, newest first");
    if d.ran.is_empty() {
        let _ = writeln!(out, "  (nothing on the timeline)");
    }
    for ran in &d.ran {
        let _ = writeln!(
            out,
            "  {} {}  {} .. {}  last {} ({} transition(s))",
            ran.instance,
            if ran.version.is_empty() {
                "(no version)"
            } else {
                ran.version.as_str()
            },
            ran.first_seen,
            ran.last_seen,
            ran.last_status,
            ran.transitions
        );
    }
    let _ = writeln!(out, "\nChanges of the host, newest first");
    if d.changes.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for event in &d.changes {
        let _ = writeln!(out, "  {}  {:<20} {}", event.time, event.kind, event.summary);
    }
    out
}

/// `endstate describe`: one system on one screen, in the order the 3 a.m. questions come.
pub(crate) fn description(d: &endstate_api::SystemDescription, color: bool) -> String {
    let mut out = String::new();
    let what = if d.description.is_empty() {
        "(no description)"
    } else {
        d.description.as_str()
    };
    let _ = writeln!(out, "{}: {what}", d.name);
    let _ = writeln!(
        out,
        "  status      {}{}",
        paint(&d.status.status, color),
        reason(&d.status)
    );
    if d.status.path.len() > 1 {
        let _ = writeln!(out, "              decided by {}", d.status.path.join(" > "));
    }
    let labels: Vec<String> = d.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = writeln!(out, "  labels      {}", none_if_empty(&labels.join(",")));
    let _ = writeln!(out, "  owners      {}", none_if_empty(&d.owners.join(", ")));
    match &d.escalation {
        Some(e) => {
            let mut line = e.contact.clone();
            for (what, value) in [
                ("pager", &e.pager),
                ("phone", &e.phone),
                ("email", &e.email),
                ("url", &e.url),
            ] {
                if let Some(value) = value {
                    let _ = write!(line, "  {what} {value}");
                }
            }
            let _ = writeln!(out, "  escalation  {line}");
        }
        None => {
            let _ = writeln!(out, "  escalation  (none declared)");
        }
    }
    let _ = writeln!(out, "  revision    {}", d.revision);

    let _ = writeln!(out, "\nLinks");
    if d.links.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    let width = d.links.iter().map(|l| l.title.len()).max().unwrap_or(0);
    for link in &d.links {
        let _ = writeln!(out, "  {:<width$}  {}", link.title, link.url);
    }

    let _ = writeln!(out, "\nRules of engagement");
    if d.actions.is_empty() {
        let _ = writeln!(out, "  (no actions declared)");
    }
    let width = d.actions.iter().map(|a| a.name.len()).max().unwrap_or(0);
    for action in &d.actions {
        let how = match action.engagement.as_str() {
            "direct" => "direct: anyone who may act on the system".to_string(),
            "approval" => "needs approval: a second person approves each run".to_string(),
            "escalate" => format!(
                "escalate only: run by {}",
                action
                    .escalate_to
                    .as_deref()
                    .or(d.escalation.as_ref().map(|e| e.contact.as_str()))
                    .unwrap_or("the escalation contact")
            ),
            other => other.to_string(),
        };
        let _ = writeln!(out, "  {:<width$}  {how}; on {}", action.name, action.targets);
        if !action.description.is_empty() {
            let _ = writeln!(out, "  {:<width$}  {}", "", action.description);
        }
    }

    let related = |title: &str, systems: &[endstate_api::RelatedSystem], empty: &str, out: &mut String| {
        let _ = writeln!(out, "\n{title}");
        if systems.is_empty() {
            let _ = writeln!(out, "  {empty}");
        }
        let width = systems.iter().map(|s| s.name.len()).max().unwrap_or(0);
        for system in systems {
            let _ = writeln!(
                out,
                "  {:<width$}  {}{}",
                system.name,
                paint(&system.status.status, color),
                reason(&system.status)
            );
        }
    };
    related("Subsystems", &d.subsystems, "(none)", &mut out);
    if let Some(selector) = &d.subsystem_selector {
        let _ = writeln!(out, "  (and every system labelled {selector})");
    }
    related("Part of", &d.aggregates, "(none: a top-level system)", &mut out);

    let _ = writeln!(out, "\nComponents");
    if d.components.is_empty() {
        let _ = writeln!(out, "  (none of its own)");
    }
    for component in &d.components {
        let _ = writeln!(
            out,
            "  {} {} ({}/{} ready)  {}{}",
            component.key,
            component.version,
            component.ready_instances,
            component.desired_instances,
            paint(&component.status.status, color),
            reason(&component.status)
        );
        if component.instances.is_empty() {
            let _ = writeln!(out, "    (no instances placed)");
        }
        for i in &component.instances {
            let version = match &i.actual_version {
                Some(actual) if actual != &i.desired_version => format!("{actual} (wants {})", i.desired_version),
                Some(actual) => actual.clone(),
                None => format!("- (wants {})", i.desired_version),
            };
            let since = if i.since.is_empty() {
                String::new()
            } else {
                format!("  since {}", i.since)
            };
            let _ = writeln!(
                out,
                "    {} #{}  {}  {} {}{since}",
                i.host,
                i.slot,
                version,
                i.state,
                paint(&i.status, color)
            );
        }
    }

    let _ = writeln!(out, "\nLast events (subtree, oldest first)");
    if d.recent_events.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for event in d.recent_events.iter().rev() {
        let _ = writeln!(out, "  {}", event_line(event, color));
    }
    out
}

fn none_if_empty(text: &str) -> &str {
    if text.is_empty() { "(none)" } else { text }
}

/// `endstate history`: the answer to "always broken, or did it just happen?".
pub(crate) fn history(h: &endstate_api::HistoryView, color: bool) -> String {
    let mut out = String::new();
    let label = if color {
        let code = match h.label.as_str() {
            "chronic" => "31",
            "new" => "33",
            _ => "32",
        };
        format!("\x1b[{code}m{}\x1b[0m", h.label)
    } else {
        h.label.clone()
    };
    let _ = writeln!(out, "{} ({}): {label}", h.target, h.kind);
    let failing = match &h.failing_since {
        Some(since) => format!(", failing since {since}"),
        None if h.failing => ", failing".to_string(),
        None => String::new(),
    };
    let _ = writeln!(
        out,
        "  now           {}{failing}",
        paint_word(&h.current, h.failing, color)
    );
    let _ = writeln!(
        out,
        "  first failed  {}",
        h.first_failed.as_deref().unwrap_or("not in the last 30 days")
    );
    let _ = writeln!(out, "  transitions   {} in the last 30 days", h.transitions);
    let shares: Vec<String> = h
        .unhealthy
        .iter()
        .map(|s| match s.percent {
            Some(p) => format!("{} {p:.2}%", s.window),
            None => format!("{} -", s.window),
        })
        .collect();
    let _ = writeln!(out, "  failing       {}  (of the time observed)", shares.join("   "));
    let _ = writeln!(
        out,
        "  flapping      {} ({} change(s) between healthy and failing in the last hour; 5 or more is flapping)",
        if h.flapping { "yes" } else { "no" },
        h.flips_last_hour
    );
    out
}

/// `endstate why`: what changed right before, most likely first.
pub(crate) fn why(w: &endstate_api::WhyView) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} ({}) at {}, {}", w.target, w.kind, w.at, w.at_reason);
    let _ = writeln!(
        out,
        "  looked at     {} to {}: systems {}; hosts {}",
        w.since,
        w.at,
        none_if_empty(&w.systems.join(", ")),
        none_if_empty(&w.hosts.join(", "))
    );
    let _ = writeln!(
        out,
        "  read          {} event(s){}",
        w.considered,
        if w.truncated { " (the oldest were left out)" } else { "" }
    );
    if w.suspects.is_empty() {
        let _ = writeln!(
            out,
            "\nNothing changed in that window: no change, action, host event, revision or note."
        );
        return out;
    }
    let _ = writeln!(out, "\nWhat changed before, most likely first");
    for s in &w.suspects {
        let _ = writeln!(out, "  {:>2}. [{:>5.1}] {}  {}", s.rank, s.score, s.time, s.summary);
        let _ = writeln!(out, "             {}", s.reason);
    }
    out
}

fn paint_word(word: &str, bad: bool, color: bool) -> String {
    if color && bad {
        format!("\x1b[31m{word}\x1b[0m")
    } else {
        word.to_string()
    }
}
