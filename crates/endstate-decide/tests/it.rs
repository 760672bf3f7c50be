//! The Decider's rules, one test per rule and their precedence, as the controller sees them.

#![allow(clippy::unwrap_used)]

use endstate_decide::{
    BlastRadius, Decision, Direction, Finding, FreezeView, GateReading, GateRule, Input, InstanceState, InstanceView,
    OnFailure, Verdict, WaveView, decide,
};

/// 2024-05-03T12:00:00Z, a Friday.
const NOW: i64 = 1_714_737_600_000;
const SEC: i64 = 1_000;
const MIN: i64 = 60 * SEC;

fn instance(id: &str, host: &str) -> InstanceView {
    InstanceView {
        id: id.to_owned(),
        host: host.to_owned(),
        at_target: true,
        state: InstanceState::Running,
        healthy: Some(true),
        healthy_since_ms: Some(NOW - 5 * MIN),
        restarts: 0,
    }
}

/// Wave 2 of 3 (index 1), started 10 minutes ago, its two instances healthy for 5 minutes (1
/// needed), deadline 30 minutes; wave 1's instance healthy; nothing else in the way.
fn input() -> Input {
    Input {
        now_ms: NOW,
        direction: Direction::Forward,
        paused: false,
        wave: Some(WaveView {
            index: 1,
            count: 3,
            started_ms: Some(NOW - 10 * MIN),
            min_healthy_ms: 60_000,
            pause_after_ms: 0,
            deadline_ms: 30 * 60_000,
            stops_only: false,
        }),
        wave_instances: vec![instance("shop/web#1", "h2"), instance("shop/web#2", "h3")],
        earlier_instances: vec![instance("shop/web#0", "h1")],
        wave_done_ms: None,
        gates: Vec::new(),
        freezes: Vec::new(),
        degraded: Vec::new(),
        conflicts: Vec::new(),
        blast: BlastRadius::default(),
        on_failure: OnFailure::Rollback,
        last_wave: false,
        created: 0,
    }
}

fn gate(value: Result<f64, String>, rule: GateRule) -> GateReading {
    GateReading {
        name: "error-rate".to_owned(),
        source: "errors/s".to_owned(),
        value,
        rule,
    }
}

fn freeze(cron: &str, hours: u64) -> FreezeView {
    FreezeView {
        policy: "prod".to_owned(),
        cron: cron.to_owned(),
        duration_ms: hours * 3_600_000,
        reason: "the weekend".to_owned(),
    }
}

/// The first finding, which decided.
fn first(decision: &Decision) -> &Finding {
    &decision.findings[0]
}

/// The findings of a rule.
fn of<'a>(decision: &'a Decision, rule: &str) -> Vec<&'a Finding> {
    decision.findings.iter().filter(|f| f.rule == rule).collect()
}

fn finding(rule: &str, ok: bool, message: &str) -> Finding {
    Finding {
        rule: rule.to_owned(),
        ok,
        message: message.to_owned(),
    }
}

#[test]
fn allows_when_everything_passes_and_says_what_was_checked() {
    let decision = decide(&input());
    assert_eq!(decision.verdict, Verdict::Allow);
    assert_eq!(decision.recheck_at_ms, None);
    assert!(decision.findings.iter().all(|f| f.ok));
    assert_eq!(
        decision.summary(),
        "health: no failure among 3 instances; \
         health: 2 of 2 instances of wave 2 healthy; \
         min_healthy_time: every instance of wave 2 healthy for at least 1m; \
         deadline: every instance of wave 2 healthy within the deadline of 30m; \
         freeze: no freeze window declared; \
         degraded: no problem outside the change; \
         conflict: no other open change on these hosts; \
         blast_radius: no limit on what is in flight"
    );
}

#[test]
fn paused_waits() {
    let mut input = input();
    input.paused = true;
    let decision = decide(&input);
    assert_eq!(decision.verdict, Verdict::Wait);
    assert_eq!(
        first(&decision),
        &finding(
            "paused",
            false,
            "paused by a person; resume with `endstate change resume`"
        )
    );
    assert_eq!(decision.recheck_at_ms, None);
    assert_eq!(
        decision.summary(),
        "paused: paused by a person; resume with `endstate change resume`"
    );
    // The other rules were still looked at.
    assert!(!of(&decision, "freeze").is_empty());
}

#[test]
fn a_failure_while_paused_still_rolls_back() {
    let mut input = input();
    input.paused = true;
    input.wave_instances[0].healthy = Some(false);
    let decision = decide(&input);
    assert_eq!(decision.verdict, Verdict::Rollback);
    assert_eq!(
        first(&decision),
        &finding("health", false, "shop/web#1 on h2 is unhealthy at the new version")
    );
    assert_eq!(
        decision.findings[1],
        finding(
            "paused",
            false,
            "paused by a person, but a failure does not wait for a resume"
        )
    );
    assert_eq!(decision.recheck_at_ms, None);
}

#[test]
fn an_unhealthy_instance_rolls_back_or_halts() {
    let mut input = input();
    input.wave_instances[1].healthy = Some(false);
    let decision = decide(&input);
    assert_eq!(decision.verdict, Verdict::Rollback);
    assert_eq!(
        first(&decision),
        &finding("health", false, "shop/web#2 on h3 is unhealthy at the new version")
    );
    assert!(
        decision
            .summary()
            .starts_with("health: shop/web#2 on h3 is unhealthy at the new version")
    );

    input.on_failure = OnFailure::Halt;
    assert_eq!(decide(&input).verdict, Verdict::Halt);

    // A failing rollback halts: never roll back a rollback.
    input.on_failure = OnFailure::Rollback;
    input.direction = Direction::Back;
    let decision = decide(&input);
    assert_eq!(decision.verdict, Verdict::Halt);
    assert_eq!(
        first(&decision).message,
        "shop/web#2 on h3 is unhealthy at the version rolled back to"
    );
}

#[test]
fn a_failed_instance_and_one_restarting_too_often_fail() {
    let mut input = input();
    input.wave_instances[0].state = InstanceState::Failed("exited with status 1".to_owned());
    input.wave_instances[0].restarts = 3;
    input.wave_instances[1].restarts = 4;
    let decision = decide(&input);
    assert_eq!(decision.verdict, Verdict::Rollback);
    assert_eq!(
        &decision.findings[..2],
        &[
            finding(
                "health",
                false,
                "shop/web#1 on h2 failed: exited with status 1 (3 restarts)"
            ),
            finding("health", false, "shop/web#2 on h3 restarted 4 times at the new version"),
        ]
    );
    // Failed, not at the target yet (an install failing): not a failure, a wait for the deadline.
    let mut input = self::input();
    input.wave_instances[0].at_target = false;
    input.wave_instances[0].state = InstanceState::Failed("artifact download failed".to_owned());
    let decision = decide(&input);
    assert_eq!(decision.verdict, Verdict::Wait);
    assert_eq!(
        first(&decision).message,
        "1 of 2 instances of wave 2 healthy; waiting for shop/web#1 on h2 (not at the new version: artifact download failed)"
    );
}

/// One crash of an instance its agent restarts (exited, backing off) is not a failure: it waits,
/// and goes on once the instance runs healthy again; 3 restarts at the target fail. One that
/// cannot be spawned fails at once.
#[test]
fn one_crash_that_its_agent_restarts_waits_and_three_restarts_fail() {
    for word in ["exited", "backing_off"] {
        let mut input = input();
        input.earlier_instances[0].state = InstanceState::Failed(word.to_owned());
        input.earlier_instances[0].restarts = 1;
        input.wave_instances[0].state = InstanceState::Failed(word.to_owned());
        input.wave_instances[0].restarts = 1;
        let decision = decide(&input);
        assert_eq!(decision.verdict, Verdict::Wait, "{word}: {decision:#?}");
        assert!(of(&decision, "health").iter().all(|f| !f.message.contains("restarted")));
        // Back up and healthy: the rollout goes on.
        input.earlier_instances[0] = self::instance("shop/web#0", "h1");
        input.earlier_instances[0].restarts = 1;
        input.wave_instances[0] = self::instance("shop/web#1", "h2");
        input.wave_instances[0].restarts = 1;
        assert_eq!(decide(&input).verdict, Verdict::Allow, "{word}");
        // Crashing again and again: a failure.
        input.earlier_instances[0].state = InstanceState::Failed(word.to_owned());
        input.earlier_instances[0].restarts = 3;
        assert_eq!(decide(&input).verdict, Verdict::Rollback, "{word}");
    }
    let mut input = input();
    input.wave_instances[0].state = InstanceState::Failed("spawn_failed".to_owned());
    let decision = decide(&input);
    assert_eq!(decision.verdict, Verdict::Rollback);
    assert_eq!(first(&decision).message, "shop/web#1 on h2 failed: spawn_failed");
}

/// Going back never destroys what had no earlier version: a failure with instances the released
/// waves created halts, and says why; without any, it rolls back as declared.
#[test]
fn a_failure_halts_instead_of_going_back_over_instances_with_no_earlier_version() {
    let mut input = input();
    input.wave_instances[0].healthy = Some(false);
    input.created = 2;
    let decision = decide(&input);
    assert_eq!(decision.verdict, Verdict::Halt);
    assert_eq!(
        of(&decision, "no_earlier_version"),
        [&finding(
            "no_earlier_version",
            false,
            "going back would stop 2 instances that had no earlier version: halting instead; \
             `endstate change abort` removes them, `endstate change resume` tries again"
        )]
    );
    input.created = 0;
    let decision = decide(&input);
    assert_eq!(decision.verdict, Verdict::Rollback);
    assert!(of(&decision, "no_earlier_version").is_empty());
}

#[test]
fn an_earlier_wave_failing_fails_the_rollout() {
    let mut input = input();
    input.earlier_instances[0].healthy = Some(false);
    let decision = decide(&input);
    assert_eq!(decision.verdict, Verdict::Rollback);
    assert_eq!(
        first(&decision).message,
        "shop/web#0 on h1 is unhealthy at the new version"
    );
    // Not running any more (being restarted): waits.
    let mut input = self::input();
    input.earlier_instances[0].state = InstanceState::Pending;
    let decision = decide(&input);
    assert_eq!(decision.verdict, Verdict::Wait);
    assert_eq!(
        first(&decision),
        &finding(
            "health",
            false,
            "instances of earlier waves not running: shop/web#0 on h1 (not running)"
        )
    );
}

#[test]
fn failures_are_looked_for_only_while_a_wave_runs() {
    let mut input = input();
    input.wave.as_mut().unwrap().started_ms = None;
    input.wave_instances[0].healthy = Some(false);
    let decision = decide(&input);
    assert_eq!(decision.verdict, Verdict::Allow);
    assert!(of(&decision, "health").is_empty());
}

#[test]
fn a_wave_not_done_waits_until_its_deadline() {
    let mut input = input();
    input.wave_instances[1].state = InstanceState::Pending;
    input.wave_instances[1].healthy = None;
    input.wave_instances[1].healthy_since_ms = None;
    let decision = decide(&input);
    assert_eq!(decision.verdict, Verdict::Wait);
    assert_eq!(
        first(&decision),
        &finding(
            "health",
            false,
            "1 of 2 instances of wave 2 healthy; waiting for shop/web#2 on h3 (starting)"
        )
    );
    // The deadline is 30 minutes after the start, 10 minutes ago.
    assert_eq!(decision.recheck_at_ms, Some(NOW + 20 * MIN));
    assert_eq!(
        of(&decision, "deadline"),
        vec![&finding(
            "deadline",
            true,
            "wave 2 started 10m ago; deadline 30m, at 2024-05-03T12:20:00Z"
        )]
    );
    // Not examined: the minimum healthy time, and what comes before the next wave.
    assert!(of(&decision, "min_healthy_time").is_empty());
    assert!(of(&decision, "freeze").is_empty());

    // Not at the target yet, or running without a verdict.
    input.wave_instances[1].at_target = false;
    input.wave_instances[0].healthy = None;
    input.wave_instances[0].healthy_since_ms = None;
    assert_eq!(
        first(&decide(&input)).message,
        "0 of 2 instances of wave 2 healthy; waiting for shop/web#1 on h2 (no health verdict yet), \
         shop/web#2 on h3 (not yet at the new version)"
    );
}

#[test]
fn the_deadline_fails_a_wave_not_done() {
    let mut input = input();
    input.wave.as_mut().unwrap().started_ms = Some(NOW - 30 * MIN);
    input.wave_instances[1].state = InstanceState::Pending;
    input.wave_instances[1].healthy = None;
    let decision = decide(&input);
    assert_eq!(decision.verdict, Verdict::Rollback);
    assert_eq!(
        first(&decision),
        &finding(
            "deadline",
            false,
            "wave 2 not healthy 30m after it started: shop/web#2 on h3 (starting)"
        )
    );
    assert_eq!(decision.recheck_at_ms, None);
    // Done in time: the deadline passing changes nothing.
    let mut input = self::input();
    input.wave.as_mut().unwrap().started_ms = Some(NOW - 60 * MIN);
    assert_eq!(decide(&input).verdict, Verdict::Allow);
    // A deadline of 0 is no deadline.
    let mut input = self::input();
    input.wave.as_mut().unwrap().deadline_ms = 0;
    input.wave_instances[1].state = InstanceState::Pending;
    let decision = decide(&input);
    assert_eq!(decision.verdict, Verdict::Wait);
    assert_eq!(decision.recheck_at_ms, None);
    assert_eq!(
        of(&decision, "deadline"),
        vec![&finding("deadline", true, "wave 2 has no deadline")]
    );
}

#[test]
fn the_minimum_healthy_time_waits_until_the_last_instance_reaches_it() {
    let mut input = input();
    input.wave_instances[0].healthy_since_ms = Some(NOW - 20 * SEC);
    input.wave_instances[1].healthy_since_ms = Some(NOW - 50 * SEC);
    let decision = decide(&input);
    assert_eq!(decision.verdict, Verdict::Wait);
    assert_eq!(
        first(&decision),
        &finding(
            "min_healthy_time",
            false,
            "every instance of wave 2 must stay healthy for 1m; the last, shop/web#1 on h2, until 2024-05-03T12:00:40Z"
        )
    );
    assert_eq!(decision.recheck_at_ms, Some(NOW + 40 * SEC));
    // Without a probe, healthy from when the controller saw it running at the target.
    let mut input = self::input();
    input.wave_instances[0].healthy = None;
    input.wave_instances[0].healthy_since_ms = Some(NOW - 10 * SEC);
    let decision = decide(&input);
    assert_eq!(first(&decision).rule, "min_healthy_time");
    assert_eq!(decision.recheck_at_ms, Some(NOW + 50 * SEC));
}

#[test]
fn an_unreachable_host_waits() {
    let mut input = input();
    input.wave_instances[1].state = InstanceState::Unknown;
    input.wave_instances[1].healthy = Some(false); // stale: not judged
    let decision = decide(&input);
    assert_eq!(decision.verdict, Verdict::Wait);
    assert_eq!(
        first(&decision),
        &finding("health", false, "host h3 unreachable (shop/web#2)")
    );
    assert_eq!(
        decision.findings[1].message,
        "1 of 2 instances of wave 2 healthy; 1 on an unreachable host"
    );
    assert_eq!(decision.recheck_at_ms, Some(NOW + 20 * MIN));
    // An earlier wave's host too.
    let mut input = self::input();
    input.earlier_instances[0].state = InstanceState::Unknown;
    let decision = decide(&input);
    assert_eq!(decision.verdict, Verdict::Wait);
    assert_eq!(
        first(&decision),
        &finding("health", false, "host h1 unreachable (shop/web#0)")
    );
}

#[test]
fn a_stop_wave_is_done_when_its_instances_are_stopped_or_gone() {
    let mut input = input();
    let wave = input.wave.as_mut().unwrap();
    wave.stops_only = true;
    input.wave_instances[0].state = InstanceState::Stopped;
    input.wave_instances[0].healthy = Some(false); // not judged
    input.wave_instances[1].restarts = 5; // not judged either
    let decision = decide(&input);
    assert_eq!(decision.verdict, Verdict::Wait);
    assert_eq!(
        first(&decision),
        &finding(
            "health",
            false,
            "1 of 2 instances of wave 2 stopped; waiting for shop/web#2 on h3 (running)"
        )
    );
    input.wave_instances[1].state = InstanceState::Stopped;
    let decision = decide(&input);
    assert_eq!(decision.verdict, Verdict::Allow);
    assert!(
        decision
            .findings
            .contains(&finding("health", true, "2 of 2 instances of wave 2 stopped"))
    );
    input.wave_instances.clear();
    let decision = decide(&input);
    assert_eq!(decision.verdict, Verdict::Allow);
    assert!(
        decision
            .findings
            .contains(&finding("health", true, "every instance of wave 2 is gone"))
    );
    // The deadline applies.
    input.wave_instances = vec![instance("shop/web#2", "h3")];
    input.wave.as_mut().unwrap().started_ms = Some(NOW - 31 * MIN);
    let decision = decide(&input);
    assert_eq!(decision.verdict, Verdict::Rollback);
    assert_eq!(
        first(&decision),
        &finding(
            "deadline",
            false,
            "wave 2 not stopped 30m after it started: shop/web#2 on h3 (running)"
        )
    );
}

#[test]
fn gates_fail_on_values_breaking_their_rule() {
    for (value, rule, message) in [
        (0.2, GateRule::Max(0.05), "0.2 > max 0.05 (source: errors/s)"),
        (80.0, GateRule::Min(100.0), "80 < min 100 (source: errors/s)"),
        (
            0.05,
            GateRule::MaxRatioToBaseline {
                baseline: Ok(0.02),
                max_ratio: 2.0,
            },
            "0.05 > 0.04 (2 × baseline 0.02) (source: errors/s)",
        ),
        (
            0.001,
            GateRule::MaxRatioToBaseline {
                baseline: Ok(0.0),
                max_ratio: 2.0,
            },
            "0.001 > 0 (2 × baseline 0) (source: errors/s)",
        ),
    ] {
        let mut input = input();
        input.gates = vec![gate(Ok(value), rule)];
        let decision = decide(&input);
        assert_eq!(decision.verdict, Verdict::Rollback, "{message}");
        assert_eq!(first(&decision), &finding("gate:error-rate", false, message));
    }
    for (value, rule, message) in [
        (0.05, GateRule::Max(0.05), "0.05 <= max 0.05 (source: errors/s)"),
        (100.0, GateRule::Min(100.0), "100 >= min 100 (source: errors/s)"),
        (
            0.03,
            GateRule::MaxRatioToBaseline {
                baseline: Ok(0.02),
                max_ratio: 2.0,
            },
            "0.03 <= 0.04 (2 × baseline 0.02) (source: errors/s)",
        ),
        (
            0.0,
            GateRule::MaxRatioToBaseline {
                baseline: Ok(0.0),
                max_ratio: 2.0,
            },
            "0 <= 0 (2 × baseline 0) (source: errors/s)",
        ),
        (
            5.0,
            GateRule::MaxRatioToBaseline {
                baseline: Ok(0.0),
                max_ratio: f64::INFINITY,
            },
            "5 <= inf (inf × baseline 0) (source: errors/s)",
        ),
    ] {
        let mut input = input();
        input.gates = vec![gate(Ok(value), rule)];
        let decision = decide(&input);
        assert_eq!(decision.verdict, Verdict::Allow, "{message}");
        assert_eq!(
            of(&decision, "gate:error-rate"),
            vec![&finding("gate:error-rate", true, message)]
        );
    }
}

#[test]
fn a_gate_without_a_reading_waits_until_the_deadline_then_fails() {
    let mut input = input();
    input.gates = vec![gate(Err("the query returned nothing".to_owned()), GateRule::Max(0.05))];
    let decision = decide(&input);
    assert_eq!(decision.verdict, Verdict::Wait);
    assert_eq!(
        first(&decision),
        &finding(
            "gate:error-rate",
            false,
            "no reading: the query returned nothing (source: errors/s)"
        )
    );
    assert_eq!(decision.recheck_at_ms, Some(NOW + 20 * MIN));
    // A baseline without a reading: the same.
    input.gates = vec![gate(
        Ok(0.1),
        GateRule::MaxRatioToBaseline {
            baseline: Err("timeout".to_owned()),
            max_ratio: 2.0,
        },
    )];
    assert_eq!(
        first(&decide(&input)).message,
        "no reading: no baseline: timeout (source: errors/s)"
    );
    // NaN is no reading.
    input.gates = vec![gate(Ok(f64::NAN), GateRule::Max(0.05))];
    assert_eq!(
        first(&decide(&input)).message,
        "no reading: the value is not a number (source: errors/s)"
    );
    // After the deadline: a failure.
    input.gates = vec![gate(Err("the query returned nothing".to_owned()), GateRule::Max(0.05))];
    input.wave.as_mut().unwrap().started_ms = Some(NOW - 45 * MIN);
    let decision = decide(&input);
    assert_eq!(decision.verdict, Verdict::Rollback);
    assert_eq!(
        first(&decision),
        &finding(
            "gate:error-rate",
            false,
            "no reading for 30m: the query returned nothing (source: errors/s)"
        )
    );
}

#[test]
fn the_pause_after_a_wave_waits_unless_it_is_the_last() {
    let mut input = input();
    input.wave.as_mut().unwrap().pause_after_ms = 5 * 60_000;
    input.wave_done_ms = Some(NOW - MIN);
    let decision = decide(&input);
    assert_eq!(decision.verdict, Verdict::Wait);
    assert_eq!(
        first(&decision),
        &finding(
            "pause",
            false,
            "wave 2 done at 2024-05-03T11:59:00Z; pausing 5m before wave 3, until 2024-05-03T12:04:00Z"
        )
    );
    assert_eq!(decision.recheck_at_ms, Some(NOW + 4 * MIN));
    // Over.
    input.wave_done_ms = Some(NOW - 5 * MIN);
    assert_eq!(decide(&input).verdict, Verdict::Allow);
    // Not recorded: from when the last instance reached its minimum healthy time (4 minutes ago).
    input.wave_done_ms = None;
    assert_eq!(decide(&input).recheck_at_ms, Some(NOW + MIN));
    input.wave_instances[1].healthy_since_ms = Some(NOW - 2 * MIN);
    assert_eq!(decide(&input).recheck_at_ms, Some(NOW + 4 * MIN));
    // The last wave: no pause.
    input.last_wave = true;
    let decision = decide(&input);
    assert_eq!(decision.verdict, Verdict::Allow);
    assert!(of(&decision, "pause").is_empty());
}

#[test]
fn an_open_freeze_window_waits_until_it_closes() {
    let mut input = input();
    input.freezes = vec![freeze("0 18 * * fri", 48), freeze("0 9 * * fri", 8)];
    let decision = decide(&input);
    assert_eq!(decision.verdict, Verdict::Wait);
    assert_eq!(
        decision.findings.iter().filter(|f| !f.ok).collect::<Vec<_>>(),
        vec![&finding(
            "freeze",
            false,
            "freeze window of policy prod (cron `0 9 * * fri`, 8h): the weekend; closes at 2024-05-03T17:00:00Z"
        )]
    );
    assert_eq!(decision.recheck_at_ms, Some(1_714_755_600_000));
    // Not open.
    input.freezes = vec![freeze("0 18 * * fri", 48)];
    let decision = decide(&input);
    assert_eq!(decision.verdict, Verdict::Allow);
    assert_eq!(
        of(&decision, "freeze"),
        vec![&finding("freeze", true, "no freeze window open (1 checked)")]
    );
    // Invalid (the spec should have refused it): waits with the parse error.
    input.freezes = vec![freeze("0 18 * *", 48)];
    let decision = decide(&input);
    assert_eq!(decision.verdict, Verdict::Wait);
    assert_eq!(
        first(&decision).message,
        "freeze window of policy prod has an invalid cron `0 18 * *`: found 4 fields in cron expression \
         `0 18 * *`, expected 5: minute hour day-of-month month day-of-week"
    );
    assert_eq!(decision.recheck_at_ms, None);
}

#[test]
fn a_rollback_is_never_blocked_by_a_freeze_or_a_degraded_system() {
    let mut input = input();
    input.direction = Direction::Back;
    input.freezes = vec![freeze("0 9 * * fri", 8)];
    input.degraded = vec!["shop/db#0 on h3 is unhealthy".to_owned()];
    let decision = decide(&input);
    assert_eq!(decision.verdict, Verdict::Allow);
    assert!(decision.findings.contains(&finding(
        "freeze",
        true,
        "a rollback is never blocked by a freeze window"
    )));
    assert!(decision.findings.contains(&finding(
        "degraded",
        true,
        "a rollback is not held by problems outside the change (1 problem)"
    )));
}

#[test]
fn freezes_are_looked_at_only_when_a_next_wave_would_start() {
    // The last wave done: the change converges, a freeze does not hold it.
    let mut input = input();
    input.freezes = vec![freeze("0 9 * * fri", 8)];
    input.last_wave = true;
    let decision = decide(&input);
    assert_eq!(decision.verdict, Verdict::Allow);
    assert!(of(&decision, "freeze").is_empty());
    // Before the first wave: only the rules before a wave.
    input.wave = None;
    input.wave_instances.clear();
    input.earlier_instances.clear();
    let decision = decide(&input);
    assert_eq!(decision.verdict, Verdict::Wait);
    assert_eq!(
        decision.findings.iter().map(|f| f.rule.as_str()).collect::<Vec<_>>(),
        vec!["freeze", "degraded", "conflict", "blast_radius"]
    );
}

#[test]
fn a_degraded_system_a_conflict_and_the_blast_radius_wait() {
    let mut input = input();
    input.degraded = vec!["shop/db#0 on h3 is unhealthy".to_owned()];
    input.conflicts = vec!["change 12 on h1, h2".to_owned()];
    input.blast = BlastRadius {
        hosts: 9,
        instances: 9,
        domains: 2,
        max_hosts: Some(8),
        max_instances: None,
        max_domains: Some(3),
    };
    let decision = decide(&input);
    assert_eq!(decision.verdict, Verdict::Wait);
    assert_eq!(decision.recheck_at_ms, None);
    assert_eq!(
        decision.summary(),
        "degraded: already degraded: shop/db#0 on h3 is unhealthy; \
         conflict: another open change: change 12 on h1, h2; \
         blast_radius: 9 hosts in flight if the next wave starts, over the limit of 8"
    );
    assert!(decision.findings.contains(&finding(
        "blast_radius",
        true,
        "in flight if the next wave starts: 2 failure domains (limit 3)"
    )));
}

#[test]
fn precedence_failure_then_waits_by_earliest_recheck() {
    // A failure beats a wave not done, a gate without reading and a pause by a person.
    let mut input = input();
    input.paused = true;
    input.wave_instances[0].state = InstanceState::Pending;
    input.wave_instances[1].healthy = Some(false);
    input.gates = vec![gate(Err("down".to_owned()), GateRule::Max(1.0))];
    let decision = decide(&input);
    assert_eq!(decision.verdict, Verdict::Rollback);
    let rules: Vec<(&str, bool)> = decision.findings.iter().map(|f| (f.rule.as_str(), f.ok)).collect();
    assert_eq!(
        rules,
        vec![
            ("health", false),
            ("paused", false),
            ("health", false),
            ("gate:error-rate", false),
            ("deadline", true),
        ]
    );
    // Several waits: look again at the earliest known end.
    let mut input = self::input();
    input.wave.as_mut().unwrap().pause_after_ms = 10 * 60_000;
    input.wave_done_ms = Some(NOW - MIN);
    input.freezes = vec![freeze("0 9 * * fri", 8)];
    let decision = decide(&input);
    // The pause holds; the freeze is not looked at before the pause is over.
    assert_eq!(first(&decision).rule, "pause");
    assert!(of(&decision, "freeze").is_empty());
    assert_eq!(decision.recheck_at_ms, Some(NOW + 9 * MIN));
    input.wave_done_ms = Some(NOW - 20 * MIN);
    let decision = decide(&input);
    assert_eq!(first(&decision).rule, "freeze");
    assert_eq!(decision.recheck_at_ms, Some(1_714_755_600_000));
}

#[test]
fn a_hundred_instances_name_a_few() {
    let mut input = input();
    input.wave_instances = (0..100)
        .map(|i| InstanceView {
            state: InstanceState::Pending,
            ..instance(&format!("shop/web#{i}"), "h")
        })
        .collect();
    let decision = decide(&input);
    assert_eq!(
        first(&decision).message,
        "0 of 100 instances of wave 2 healthy; waiting for shop/web#0 on h (starting), shop/web#1 on h (starting), \
         shop/web#2 on h (starting), shop/web#3 on h (starting), shop/web#4 on h (starting) and 95 more"
    );
}

#[test]
fn input_and_decision_round_trip_as_json() {
    let mut input = input();
    input.paused = true;
    input.wave_instances[0].state = InstanceState::Failed("exited with status 1".to_owned());
    input.wave_instances[1].healthy = None;
    input.gates = vec![
        gate(Ok(0.2), GateRule::Max(0.05)),
        gate(Err("no data".to_owned()), GateRule::Min(1.0)),
        gate(
            Ok(0.1),
            GateRule::MaxRatioToBaseline {
                baseline: Err("timeout".to_owned()),
                max_ratio: 1.5,
            },
        ),
    ];
    input.freezes = vec![freeze("0 18 * * fri", 48)];
    input.degraded = vec!["shop/db#0 on h3 is unhealthy".to_owned()];
    input.conflicts = vec!["change 12 on h1".to_owned()];
    input.blast.max_hosts = Some(3);
    input.wave_done_ms = Some(NOW);
    let json = serde_json::to_string(&input).unwrap();
    let back: Input = serde_json::from_str(&json).unwrap();
    assert_eq!(back, input);
    assert!(
        json.contains(r#""state":{"state":"failed","detail":"exited with status 1"}"#),
        "{json}"
    );

    let decision = decide(&input);
    let json = serde_json::to_string(&decision).unwrap();
    let back: Decision = serde_json::from_str(&json).unwrap();
    assert_eq!(back, decision);
    assert!(json.contains(r#""verdict":"rollback""#), "{json}");
    // The same input gives the same decision.
    assert_eq!(
        decide(&serde_json::from_str(&serde_json::to_string(&input).unwrap()).unwrap()),
        decision
    );
}
