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
