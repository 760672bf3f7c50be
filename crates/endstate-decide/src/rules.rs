//! The rules of [`crate::decide`], in the order the crate docs give.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::cron::{Cron, format_time, freeze_window_at};
use crate::{
    Decision, Direction, Finding, GateReading, GateRule, Input, InstanceState, InstanceView, OnFailure, Verdict,
    WaveView,
};

const PAUSED: &str = "paused";
const HEALTH: &str = "health";
const MIN_HEALTHY: &str = "min_healthy_time";
const DEADLINE: &str = "deadline";
const PAUSE: &str = "pause";
const FREEZE: &str = "freeze";
const DEGRADED: &str = "degraded";
const CONFLICT: &str = "conflict";
const BLAST_RADIUS: &str = "blast_radius";

/// Restarts at the target version that count as a failure.
const MAX_RESTARTS: u32 = 3;
/// A failure halts rather than going back, since going back would stop instances that had no
/// earlier version.
const NO_EARLIER_VERSION: &str = "no_earlier_version";

/// How many instances a message names before `and N more`.
const LISTED: usize = 5;

/// What a finding does to the verdict; the order is the order of the findings in a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Halt or roll back.
    Fail,
    /// Wait, until a known time or not.
    Wait(Option<i64>),
    /// Passed.
    Pass,
}

/// The findings so far, each with its kind.
#[derive(Default)]
struct Findings(Vec<(Kind, Finding)>);

impl Findings {
    fn push(&mut self, kind: Kind, rule: &str, message: String) {
        let ok = kind == Kind::Pass;
        self.0.push((
            kind,
            Finding {
                rule: rule.to_owned(),
                ok,
                message,
            },
        ));
    }

    fn pass(&mut self, rule: &str, message: String) {
        self.push(Kind::Pass, rule, message);
    }

    fn wait(&mut self, rule: &str, message: String, until: Option<i64>) {
        self.push(Kind::Wait(until), rule, message);
    }

    fn fail(&mut self, rule: &str, message: String) {
        self.push(Kind::Fail, rule, message);
    }

    /// Whether a finding from index `start` on holds the rollout.
    fn blocked_since(&self, start: usize) -> bool {
        self.0
            .get(start..)
            .unwrap_or_default()
            .iter()
            .any(|(kind, _)| *kind != Kind::Pass)
    }

    /// The decision: a failure halts or rolls back, else anything not passed waits (until the
    /// earliest known end), else allow. Findings sorted failures, waits, passes, each in rule order.
    fn into_decision(mut self, direction: Direction, on_failure: OnFailure, created: u32) -> Decision {
        let failed = self.0.iter().any(|(kind, _)| *kind == Kind::Fail);
        let roll_back = failed && direction == Direction::Forward && on_failure == OnFailure::Rollback;
        if roll_back && created > 0 {
            self.fail(
                NO_EARLIER_VERSION,
                format!(
                    "going back would stop {} that had no earlier version: halting instead; \
                     `endstate change abort` removes them, `endstate change resume` tries again",
                    plural(created as usize, "instance")
                ),
            );
        }
        let mut found = self.0;
        let verdict = if failed {
            if roll_back && created == 0 {
                Verdict::Rollback
            } else {
                Verdict::Halt
            }
        } else if found.iter().any(|(kind, _)| matches!(kind, Kind::Wait(_))) {
            Verdict::Wait
        } else {
            Verdict::Allow
        };
        let recheck_at_ms = if verdict == Verdict::Wait {
            found
                .iter()
                .filter_map(|(kind, _)| match kind {
                    Kind::Wait(until) => *until,
                    _ => None,
                })
                .min()
        } else {
            None
        };
        if failed {
            for (_, finding) in found.iter_mut().filter(|(_, f)| f.rule == PAUSED) {
                finding.message = "paused by a person, but a failure does not wait for a resume".to_owned();
            }
        }
        // Stable: rule order within each kind.
        found.sort_by_key(|(kind, _)| match kind {
            Kind::Fail => 0,
            Kind::Wait(_) => 1,
            Kind::Pass => 2,
        });
        Decision {
            verdict,
            findings: found.into_iter().map(|(_, finding)| finding).collect(),
            recheck_at_ms,
        }
    }
}

pub(crate) fn decide(input: &Input) -> Decision {
    let mut found = Findings::default();
    if input.paused {
        found.wait(
            PAUSED,
            "paused by a person; resume with `endstate change resume`".to_owned(),
            None,
        );
    }
    // Whether nothing so far holds the rollout, a pause by a person aside.
    let mut clear = true;
    let running = input
        .wave
        .as_ref()
        .and_then(|wave| wave.started_ms.map(|started| (wave, started)));
    let mut done_at = None;
    if let Some((wave, started)) = running {
        let start = found.0.len();
        done_at = Some(running_wave(input, wave, started, &mut found));
        clear = !found.blocked_since(start);
    }
    if clear
        && let (Some((wave, _)), Some(done_at)) = (running, done_at)
        && !input.last_wave
    {
        let start = found.0.len();
        pause(input, wave, done_at, &mut found);
        clear = !found.blocked_since(start);
    }
    // A next wave starts unless the running wave is the last one.
    let next_wave_starts = running.is_none() || !input.last_wave;
    if clear && next_wave_starts {
        next_wave(input, &mut found);
    }
    found.into_decision(input.direction, input.on_failure, input.created)
}

/// Where a wave instance is on its way to done.
enum Progress {
    /// Done: healthy since then (stop waves: stopped, since `None`).
    Done(Option<i64>),
    /// Its host is unreachable.
    Unreachable,
    /// Not yet, and why (`starting`).
    Waiting(String),
}

/// Rule 2 and 3 on a running wave: failures, deadline, gates, then whether it is done. Returns when
/// it was done, for the pause after it (meaningful only when nothing held it).
fn running_wave(input: &Input, wave: &WaveView, started: i64, found: &mut Findings) -> i64 {
    let now = input.now_ms;
    let target = target_version(input.direction);
    let label = wave_label(wave.index);
    let deadline_at = (wave.deadline_ms > 0).then(|| started.saturating_add(ms(wave.deadline_ms)));
    let deadline_passed = deadline_at.is_some_and(|at| now >= at);
    // Until when a wait of this wave lasts at most: the deadline turns it into a failure.
    let until = deadline_at.filter(|_| !deadline_passed);

    // Failures. A stop wave's instances are judged by the deadline only.
    let judged: &[InstanceView] = if wave.stops_only { &[] } else { &input.wave_instances };
    let mut failures = 0;
    for instance in judged.iter().chain(&input.earlier_instances) {
        if let Some(why) = failure(instance, target) {
            found.fail(HEALTH, format!("{} on {} {why}", instance.id, instance.host));
            failures += 1;
        }
    }
    let checked = judged.len() + input.earlier_instances.len();
    if failures == 0 && checked > 0 {
        found.pass(HEALTH, format!("no failure among {}", plural(checked, "instance")));
    }

    // Unreachable hosts, by host.
    let mut unreachable: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for instance in input.wave_instances.iter().chain(&input.earlier_instances) {
        if instance.state == InstanceState::Unknown {
            unreachable.entry(&instance.host).or_default().push(instance.id.clone());
        }
    }
    for (host, ids) in &unreachable {
        found.wait(HEALTH, format!("host {host} unreachable ({})", list(ids)), until);
    }

    // Progress of the wave.
    let total = input.wave_instances.len();
    let mut done = 0;
    let mut on_unreachable = 0;
    let mut waiting = Vec::new();
    let mut missing = Vec::new();
    // The instance that reaches the minimum healthy time last, and when.
    let mut last_healthy: Option<(i64, &InstanceView)> = None;
    for instance in &input.wave_instances {
        let name = || format!("{} on {}", instance.id, instance.host);
        match progress(instance, wave.stops_only, target) {
            Progress::Done(since) => {
                done += 1;
                if !wave.stops_only {
                    let reach = since.unwrap_or(now).saturating_add(ms(wave.min_healthy_ms));
                    if last_healthy.is_none_or(|(latest, _)| reach > latest) {
                        last_healthy = Some((reach, instance));
                    }
                }
            }
            Progress::Unreachable => {
                on_unreachable += 1;
                missing.push(format!("{} (host unreachable)", name()));
            }
            Progress::Waiting(why) => {
                let entry = format!("{} ({why})", name());
                missing.push(entry.clone());
                waiting.push(entry);
            }
        }
    }
    let verb = if wave.stops_only { "stopped" } else { "healthy" };
    let counted = format!("{done} of {} of {label} {verb}", plural(total, "instance"));
    if done == total {
        found.pass(
            HEALTH,
            match (total, wave.stops_only) {
                (0, true) => format!("every instance of {label} is gone"),
                (0, false) => format!("{label} has no instance to watch"),
                _ => counted,
            },
        );
    } else {
        let mut message = counted;
        if !waiting.is_empty() {
            let _ = write!(message, "; waiting for {}", list(&waiting));
        }
        if on_unreachable > 0 {
            let hosts = if on_unreachable == 1 {
                "an unreachable host"
            } else {
                "unreachable hosts"
            };
            let _ = write!(message, "; {on_unreachable} on {hosts}");
        }
        found.wait(HEALTH, message, until);
    }

    // Instances of earlier waves must still run (their failures and hosts are reported above).
    let earlier: Vec<String> = input
        .earlier_instances
        .iter()
        .filter(|instance| failure(instance, target).is_none())
        .filter_map(|instance| {
            earlier_problem(instance, target).map(|why| format!("{} on {} ({why})", instance.id, instance.host))
        })
        .collect();
    if !earlier.is_empty() {
        found.wait(
            HEALTH,
            format!("instances of earlier waves not running: {}", list(&earlier)),
            None,
        );
    }

    // Minimum healthy time, once every instance is healthy.
    if !wave.stops_only && done == total && wave.min_healthy_ms > 0 {
        let min = duration(wave.min_healthy_ms);
        match last_healthy {
            Some((reach, instance)) if reach > now => {
                // No elapsed time in the message: the same wait reads the same at every round,
                // so the timeline records it once.
                found.wait(
                    MIN_HEALTHY,
                    format!(
                        "every instance of {label} must stay healthy for {min}; the last, {} on {}, until {}",
                        instance.id,
                        instance.host,
                        format_time(reach)
                    ),
                    Some(reach),
                );
            }
            _ => found.pass(
                MIN_HEALTHY,
                format!("every instance of {label} healthy for at least {min}"),
            ),
        }
    }

    // Deadline.
    match deadline_at {
        None => found.pass(DEADLINE, format!("{label} has no deadline")),
        Some(at) => {
            let limit = duration(wave.deadline_ms);
            if done == total {
                found.pass(
                    DEADLINE,
                    format!("every instance of {label} {verb} within the deadline of {limit}"),
                );
            } else if deadline_passed {
                found.fail(
                    DEADLINE,
                    format!("{label} not {verb} {limit} after it started: {}", list(&missing)),
                );
            } else {
                let age = now.saturating_sub(started).max(0).unsigned_abs();
                found.pass(
                    DEADLINE,
                    format!(
                        "{label} started {} ago; deadline {limit}, at {}",
                        duration(age),
                        format_time(at)
                    ),
                );
            }
        }
    }

    // Gates.
    for gate in &input.gates {
        check_gate(gate, wave.deadline_ms, deadline_passed, until, found);
    }

    // When the wave was done: as recorded, else when its last instance reached the minimum healthy
    // time (now for a stop wave or an empty one).
    input
        .wave_done_ms
        .unwrap_or_else(|| last_healthy.map_or(now, |(reach, _)| reach.min(now)))
}

/// Why an instance counts as failed, if it does: `is unhealthy at the new version`.
fn failure(instance: &InstanceView, target: &str) -> Option<String> {
    let restarts = instance.restarts;
    let judged = instance.at_target && instance.state != InstanceState::Unknown;
    // Exited or backing off while its agent restarts it: judged by its restarts at the target
    // (below), not by one exit. One that cannot even be spawned will not get better by itself.
    let restarting = matches!(&instance.state, InstanceState::Failed(detail) if detail != "spawn_failed");
    if judged
        && !(restarting && restarts < MAX_RESTARTS)
        && let InstanceState::Failed(detail) = &instance.state
    {
        let restarts = if restarts > 0 {
            format!(" ({})", plural(restarts as usize, "restart"))
        } else {
            String::new()
        };
        Some(format!("failed: {detail}{restarts}"))
    } else if judged && instance.healthy == Some(false) {
        Some(format!("is unhealthy at {target}"))
    } else if restarts >= MAX_RESTARTS {
        Some(format!("restarted {restarts} times at {target}"))
    } else {
        None
    }
}

/// Where a wave instance is. Without a health verdict (`healthy` is `None`), a running instance
/// at the target counts as healthy since `healthy_since_ms` if the controller gave it (no probe),
/// and as waiting for its first verdict otherwise.
fn progress(instance: &InstanceView, stops_only: bool, target: &str) -> Progress {
    use InstanceState::{Failed, Pending, Running, Stopped, Unknown};
    if instance.state == Unknown {
        return Progress::Unreachable;
    }
    if stops_only {
        return match &instance.state {
            Stopped => Progress::Done(None),
            Running => Progress::Waiting("running".to_owned()),
            Pending => Progress::Waiting("pending".to_owned()),
            Failed(detail) => Progress::Waiting(format!("failed: {detail}")),
            Unknown => Progress::Unreachable,
        };
    }
    if !instance.at_target {
        return Progress::Waiting(match &instance.state {
            Failed(detail) => format!("not at {target}: {detail}"),
            _ => format!("not yet at {target}"),
        });
    }
    match (&instance.state, instance.healthy, instance.healthy_since_ms) {
        (Running, Some(true), since) => Progress::Done(since),
        (Running, None, Some(since)) => Progress::Done(Some(since)),
        (Running, None, None) => Progress::Waiting("no health verdict yet".to_owned()),
        (Running, Some(false), _) => Progress::Waiting("unhealthy".to_owned()),
        (Pending, ..) => Progress::Waiting("starting".to_owned()),
        (Failed(detail), ..) => Progress::Waiting(format!("failed: {detail}")),
        (Stopped, ..) => Progress::Waiting("stopped".to_owned()),
        (Unknown, ..) => Progress::Unreachable,
    }
}

/// Why an instance of an earlier wave holds the next wave, if it does: it must still run at the
/// target (a stopped one is taken as stopped by a stop wave; unreachable hosts are reported apart).
fn earlier_problem(instance: &InstanceView, target: &str) -> Option<String> {
    match &instance.state {
        InstanceState::Unknown | InstanceState::Stopped => None,
        _ if !instance.at_target => Some(format!("no longer at {target}")),
        InstanceState::Running => None,
        InstanceState::Pending => Some("not running".to_owned()),
        InstanceState::Failed(detail) => Some(format!("failed: {detail}")),
    }
}

/// One gate: a value breaking its rule fails; no value waits until the deadline, then fails.
fn check_gate(gate: &GateReading, deadline_ms: u64, deadline_passed: bool, until: Option<i64>, found: &mut Findings) {
    let rule = format!("gate:{}", gate.name);
    let source = &gate.source;
    let no_reading = |why: &str, found: &mut Findings| {
        if deadline_passed {
            found.fail(
                &rule,
                format!("no reading for {}: {why} (source: {source})", duration(deadline_ms)),
            );
        } else {
            found.wait(&rule, format!("no reading: {why} (source: {source})"), until);
        }
    };
    let value = match &gate.value {
        Ok(value) if value.is_nan() => return no_reading("the value is not a number", found),
        Ok(value) => *value,
        Err(why) => return no_reading(why, found),
    };
    match &gate.rule {
        GateRule::Max(max) => {
            if value > *max {
                found.fail(&rule, format!("{value} > max {max} (source: {source})"));
            } else {
                found.pass(&rule, format!("{value} <= max {max} (source: {source})"));
            }
        }
        GateRule::Min(min) => {
            if value < *min {
                found.fail(&rule, format!("{value} < min {min} (source: {source})"));
            } else {
                found.pass(&rule, format!("{value} >= min {min} (source: {source})"));
            }
        }
        GateRule::MaxRatioToBaseline { baseline, max_ratio } => {
            let baseline = match baseline {
                Ok(baseline) if baseline.is_nan() => return no_reading("the baseline is not a number", found),
                Ok(baseline) => *baseline,
                Err(why) => return no_reading(&format!("no baseline: {why}"), found),
            };
            // A baseline of 0 allows 0 only, unless the ratio is infinite (inf × 0: no limit).
            let limit = max_ratio * baseline;
            let limit = if limit.is_nan() { f64::INFINITY } else { limit };
            let how = format!("{max_ratio} × baseline {baseline}");
            if value > limit {
                found.fail(&rule, format!("{value} > {limit} ({how}) (source: {source})"));
            } else {
                found.pass(&rule, format!("{value} <= {limit} ({how}) (source: {source})"));
            }
        }
    }
}

/// Rule 4: the pause after a done wave that is not the last.
fn pause(input: &Input, wave: &WaveView, done_at: i64, found: &mut Findings) {
    if wave.pause_after_ms == 0 {
        return;
    }
    let end = done_at.saturating_add(ms(wave.pause_after_ms));
    let (label, next) = (wave_label(wave.index), wave_label(wave.index.saturating_add(1)));
    let length = duration(wave.pause_after_ms);
    if end > input.now_ms {
        found.wait(
            PAUSE,
            format!(
                "{label} done at {}; pausing {length} before {next}, until {}",
                format_time(done_at),
                format_time(end)
            ),
            Some(end),
        );
    } else {
        found.pass(
            PAUSE,
            format!("the pause of {length} after {label} ended at {}", format_time(end)),
        );
    }
}

/// Rule 5: what must hold before a next wave starts.
fn next_wave(input: &Input, found: &mut Findings) {
    let forward = input.direction == Direction::Forward;

    // Freeze windows.
    if input.freezes.is_empty() {
        found.pass(FREEZE, "no freeze window declared".to_owned());
    } else if !forward {
        found.pass(FREEZE, "a rollback is never blocked by a freeze window".to_owned());
    } else {
        let start = found.0.len();
        for freeze in &input.freezes {
            let policy = &freeze.policy;
            match Cron::parse(&freeze.cron) {
                Err(error) => found.wait(
                    FREEZE,
                    format!(
                        "freeze window of policy {policy} has an invalid cron `{}`: {error}",
                        freeze.cron
                    ),
                    None,
                ),
                Ok(cron) => {
                    if let Some((_, close)) = freeze_window_at(&cron, freeze.duration_ms, input.now_ms) {
                        found.wait(
                            FREEZE,
                            format!(
                                "freeze window of policy {policy} (cron `{}`, {}): {}; closes at {}",
                                freeze.cron,
                                duration(freeze.duration_ms),
                                freeze.reason,
                                format_time(close)
                            ),
                            Some(close),
                        );
                    }
                }
            }
        }
        if !found.blocked_since(start) {
            found.pass(
                FREEZE,
                format!("no freeze window open ({} checked)", input.freezes.len()),
            );
        }
    }

    // Systems already degraded.
    if input.degraded.is_empty() {
        found.pass(DEGRADED, "no problem outside the change".to_owned());
    } else if !forward {
        found.pass(
            DEGRADED,
            format!(
                "a rollback is not held by problems outside the change ({})",
                plural(input.degraded.len(), "problem")
            ),
        );
    } else {
        for problem in &input.degraded {
            found.wait(DEGRADED, format!("already degraded: {problem}"), None);
        }
    }

    // Other changes on the same hosts.
    if input.conflicts.is_empty() {
        found.pass(CONFLICT, "no other open change on these hosts".to_owned());
    }
    for conflict in &input.conflicts {
        found.wait(CONFLICT, format!("another open change: {conflict}"), None);
    }

    // Blast radius.
    let blast = &input.blast;
    let mut within = Vec::new();
    for (count, limit, noun) in [
        (blast.hosts, blast.max_hosts, "host"),
        (blast.instances, blast.max_instances, "instance"),
        (blast.domains, blast.max_domains, "failure domain"),
    ] {
        let Some(limit) = limit else { continue };
        let count_text = plural(count as usize, noun);
        if count > limit {
            found.wait(
                BLAST_RADIUS,
                format!("{count_text} in flight if the next wave starts, over the limit of {limit}"),
                None,
            );
        } else {
            within.push(format!("{count_text} (limit {limit})"));
        }
    }
    if blast.max_hosts.is_none() && blast.max_instances.is_none() && blast.max_domains.is_none() {
        found.pass(BLAST_RADIUS, "no limit on what is in flight".to_owned());
    } else if !within.is_empty() {
        found.pass(
            BLAST_RADIUS,
            format!("in flight if the next wave starts: {}", within.join(", ")),
        );
    }
}

/// `the new version` or, for a rollback, the version it goes back to.
fn target_version(direction: Direction) -> &'static str {
    match direction {
        Direction::Forward => "the new version",
        Direction::Back => "the version rolled back to",
    }
}

/// Waves are named from 1 in messages: index 0 is `wave 1`.
fn wave_label(index: u32) -> String {
    format!("wave {}", u64::from(index) + 1)
}

/// `1 instance`, `3 instances`.
fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// The first few items, joined with commas, then `and N more`.
fn list<T: AsRef<str>>(items: &[T]) -> String {
    let shown: Vec<&str> = items.iter().take(LISTED).map(AsRef::as_ref).collect();
    let mut out = shown.join(", ");
    if items.len() > LISTED {
        let _ = write!(out, " and {} more", items.len() - LISTED);
    }
    out
}

/// Milliseconds as an `i64`, saturating.
fn ms(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// `48h`, `1h30m`, `1m5s`, `1.5s`, `250ms`.
pub(crate) fn duration(ms: u64) -> String {
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    let (secs, milli) = (ms / 1_000, ms % 1_000);
    let (hours, minutes, seconds) = (secs / 3_600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if hours > 0 {
        let _ = write!(out, "{hours}h");
    }
    if minutes > 0 {
        let _ = write!(out, "{minutes}m");
    }
    if secs < 60 && milli > 0 {
        let fraction = format!("{milli:03}");
        let _ = write!(out, "{seconds}.{}s", fraction.trim_end_matches('0'));
    } else if seconds > 0 {
        let _ = write!(out, "{seconds}s");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(0), "0ms");
        assert_eq!(duration(250), "250ms");
        assert_eq!(duration(1_500), "1.5s");
        assert_eq!(duration(1_050), "1.05s");
        assert_eq!(duration(30_000), "30s");
        assert_eq!(duration(65_000), "1m5s");
        assert_eq!(duration(5_400_000), "1h30m");
        assert_eq!(duration(48 * 3_600_000), "48h");
        assert_eq!(duration(3_600_500), "1h");
    }

    #[test]
    fn lists_are_capped() {
        let items: Vec<String> = (0..7).map(|i| format!("i{i}")).collect();
        assert_eq!(list(&items), "i0, i1, i2, i3, i4 and 2 more");
        assert_eq!(list(&items[..2]), "i0, i1");
    }
}
