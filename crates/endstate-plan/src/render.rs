//! The plan as text, in the style of `terraform plan`.

use std::fmt::Write;

use endstate_spec::Duration;

use crate::{Op, Plan, StepAction, WaveKind};

const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const RED: &str = "\x1b[31m";
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

/// Renders a plan for a person. With `color`, additions are green, changes yellow and removals
/// red (ANSI escapes); without, the output is plain text (what the golden files hold).
pub fn render(plan: &Plan, color: bool) -> String {
    let paint = |code: &'static str| if color { code } else { "" };
    let reset = paint(RESET);
    let mut out = String::new();
    if plan.is_empty() {
        out.push_str("No changes. The desired state matches what is in force.\n");
        return out;
    }
    for object in &plan.objects {
        let (sign, code) = match object.op {
            Op::Add => ('+', GREEN),
            Op::Change => ('~', YELLOW),
            Op::Remove => ('-', RED),
        };
        let _ = writeln!(out, "{}{sign} {} {}{reset}", paint(code), object.kind, object.name);
        for field in &object.fields {
            let line = match (&field.before, &field.after) {
                (Some(before), Some(after)) => format!("{}~ {}: {before} -> {after}", paint(YELLOW), field.path),
                (None, Some(after)) => format!("{}+ {}: {after}", paint(GREEN), field.path),
                (Some(before), None) => format!("{}- {}: {before}", paint(RED), field.path),
                (None, None) => continue,
            };
            let _ = writeln!(out, "    {line}{reset}");
        }
    }
    if !plan.steps.is_empty() {
        let _ = writeln!(out, "\n{}Instances:{reset}", paint(BOLD));
        for step in &plan.steps {
            let (sign, word, code) = action_words(step.action);
            let versions = match (&step.from_version, &step.to_version) {
                (Some(from), Some(to)) if from != to => format!("{from} -> {to}"),
                (_, Some(to)) => to.to_string(),
                (Some(from), None) => from.to_string(),
                (None, None) => String::new(),
            };
            let _ = writeln!(
                out,
                "  {}{sign} {word:<11} {}#{} on {} ({versions}){reset}: {}",
                paint(code),
                step.component,
                step.slot,
                step.host,
                step.reason
            );
        }
    }
    if !plan.waves.is_empty() {
        let _ = writeln!(out, "\n{}Waves:{reset}", paint(BOLD));
        let total = plan.waves.len();
        for wave in &plan.waves {
            let kind = match wave.kind {
                WaveKind::Canary => "canary",
                WaveKind::Batch => "batch",
                WaveKind::Stop => "stop",
            };
            let domain = wave.domain.as_deref().map(|d| format!(" {d}")).unwrap_or_default();
            let _ = writeln!(
                out,
                "  {}wave {}/{total} {kind} {}{domain}{reset}: {}",
                paint(BOLD),
                u64::from(wave.index) + 1,
                wave.component,
                wave.reason
            );
            for wave_step in &wave.steps {
                let step = &wave_step.step;
                let (sign, word, code) = action_words(step.action);
                let _ = writeln!(
                    out,
                    "    {}{sign} {word:<11} {}#{} on {}{reset}: {}",
                    paint(code),
                    step.component,
                    step.slot,
                    step.host,
                    wave_step.why
                );
            }
            let mut gate = Vec::new();
            if wave.min_healthy_ms > 0 {
                gate.push(format!("healthy for {}", Duration::from_millis(wave.min_healthy_ms)));
            }
            if wave.pause_after_ms > 0 {
                gate.push(format!("pause {}", Duration::from_millis(wave.pause_after_ms)));
            }
            if !gate.is_empty() {
                let _ = writeln!(out, "    then: {}", gate.join(", then "));
            }
            if plan.held_after == Some(wave.index + 1) {
                let _ = writeln!(
                    out,
                    "  {}-- hold: the targeted hosts are done; `endstate change resume` goes on to the other hosts, `abort` goes back{reset}",
                    paint(BOLD)
                );
            }
        }
    }
    if !plan.blocked.is_empty() {
        let _ = writeln!(out, "\n{}Blocked:{reset}", paint(BOLD));
        for blocked in &plan.blocked {
            let _ = writeln!(
                out,
                "  {}! {}: {}: {}{reset}",
                paint(RED),
                blocked.component,
                blocked.rule,
                blocked.reason
            );
        }
    }
    if !plan.unplaced.is_empty() {
        let _ = writeln!(out, "\n{}Cannot be placed:{reset}", paint(BOLD));
        for unplaced in &plan.unplaced {
            let _ = writeln!(
                out,
                "  {}! {}: {} of {} instances placed: {}{reset}",
                paint(RED),
                unplaced.component,
                unplaced.placed,
                unplaced.wanted,
                unplaced.reason
            );
        }
    }
    let s = &plan.summary;
    let _ = writeln!(
        out,
        "\n{}Plan:{reset} {} to add, {} to change, {} to remove; instances: {} to start, {} to upgrade, {} to reconfigure, {} to stop.",
        paint(BOLD),
        s.add,
        s.change,
        s.remove,
        s.start,
        s.upgrade,
        s.reconfigure,
        s.stop
    );
    out
}

/// The sign, word and colour of an action.
fn action_words(action: StepAction) -> (char, &'static str, &'static str) {
    match action {
        StepAction::Start => ('+', "start", GREEN),
        StepAction::Upgrade => ('~', "upgrade", YELLOW),
        StepAction::Reconfigure => ('~', "reconfigure", YELLOW),
        StepAction::Stop => ('-', "stop", RED),
    }
}
