//! Golden plans: a case is a directory under `tests/golden/` with `before/` (absent for a new
//! server), `after/`, `hosts.txt` (one `name label=value,...` per line), optionally `options.json`
//! (a serialized `PlanOptions`: host groups, retired and targeted hosts) and `plan.txt`, the expected
//! rendering. `UPDATE_GOLDEN=1 cargo test -p endstate-plan` rewrites the expectations;
//! review the diff like any other change.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use endstate_plan::PlanOptions;
use endstate_spec::{DesiredState, HostInfo, SourceFile};

fn load_dir(dir: &Path) -> DesiredState {
    let mut paths: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    let files: Vec<SourceFile> = paths
        .iter()
        .map(|p| SourceFile {
            path: p.file_name().unwrap().to_string_lossy().into(),
            text: std::fs::read_to_string(p).unwrap(),
        })
        .collect();
    let loaded = endstate_spec::load(&files, &[]);
    loaded
        .desired
        .unwrap_or_else(|| panic!("{} is invalid: {:#?}", dir.display(), loaded.diagnostics))
}

fn hosts(text: &str) -> Vec<HostInfo> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let (name, labels) = line.split_once(' ').unwrap_or((line, ""));
            HostInfo {
                name: name.to_string(),
                labels: labels
                    .split(',')
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| {
                        let (k, v) = kv.split_once('=').unwrap();
                        (k.to_string(), v.to_string())
                    })
                    .collect(),
            }
        })
        .collect()
}

fn check(case: &str) {
    check_with(case, |_| {});
}

/// [`check`], with `adjust` applied to the loaded `after/` state: for states the spec refuses but
/// the planner must still handle.
fn check_with(case: &str, adjust: impl Fn(&mut DesiredState)) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(case);
    let before = dir.join("before").exists().then(|| load_dir(&dir.join("before")));
    let mut after = load_dir(&dir.join("after"));
    adjust(&mut after);
    let hosts = hosts(&std::fs::read_to_string(dir.join("hosts.txt")).unwrap_or_default());
    let options: PlanOptions = match std::fs::read_to_string(dir.join("options.json")) {
        Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| panic!("{case}/options.json: {e}")),
        Err(_) => PlanOptions::default(),
    };
    let plan = endstate_plan::plan_with(before.as_ref(), &after, &hosts, &options);
    // Deterministic: the same input gives the same plan, whatever the order of the hosts.
    let mut reversed = hosts.clone();
    reversed.reverse();
    assert_eq!(
        endstate_plan::plan_with(before.as_ref(), &after, &reversed, &options),
        plan,
        "{case}: plan depends on host order"
    );
    // Every step is in exactly one wave, unless its component is blocked.
    let mut in_waves: Vec<_> = plan
        .waves
        .iter()
        .flat_map(|w| w.steps.iter().map(|s| s.step.clone()))
        .collect();
    let mut expected: Vec<_> = plan
        .steps
        .iter()
        .filter(|s| !plan.blocked.iter().any(|b| *b.component == *s.component))
        .cloned()
        .collect();
    in_waves.sort_by(|a, b| (&a.component, &a.host, a.slot).cmp(&(&b.component, &b.host, b.slot)));
    expected.sort_by(|a, b| (&a.component, &a.host, a.slot).cmp(&(&b.component, &b.host, b.slot)));
    assert_eq!(in_waves, expected, "{case}: steps and waves differ");
    let got = endstate_plan::render(&plan, false);
    let expect_path = dir.join("plan.txt");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&expect_path, &got).unwrap();
        return;
    }
    let expect = std::fs::read_to_string(&expect_path).unwrap_or_default();
    assert!(
        got == expect,
        "{case}: plan differs from {}\n--- got ---\n{got}\n--- expected ---\n{expect}",
        expect_path.display()
    );
}

#[test]
fn new_server_places_everything() {
    check("new-server");
}

#[test]
fn upgrade_reconfigure_remove_and_unplaceable() {
    check("upgrade");
}

#[test]
fn nothing_changes() {
    check("no-change");
}

#[test]
fn canary_then_one_zone_at_a_time() {
    check("canary-zones");
}

#[test]
fn dependencies_roll_out_first() {
    check("dependencies");
}

#[test]
fn retired_host_replaced_before_its_instances_stop() {
    check("replace-host");
}

#[test]
fn host_groups_in_order() {
    check("host-groups");
}

#[test]
fn scale_down_stops_in_batches() {
    check("scale-down");
}

#[test]
fn blast_radius_splits_waves() {
    check("blast-radius");
}

#[test]
fn an_instance_index_that_moves_is_a_reconfiguration() {
    check("index-moves");
}

#[test]
fn target_hosts_first_then_hold() {
    check("target-hosts");
}

#[test]
fn max_unavailable_zero_with_fixed_port_is_blocked() {
    // The spec refuses `max_unavailable: 0`; the planner must still refuse such a rollout (a
    // desired state built in code, or stored before the rule) rather than take an instance down.
    check_with("impossible", |after| {
        if let Some(web) = after.components.get_mut("shop/web") {
            web.rollout.max_unavailable = 0;
        }
    });
}
