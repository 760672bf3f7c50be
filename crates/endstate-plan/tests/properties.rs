//! Properties of the wave planner over random small desired states: random hosts with zone labels,
//! random components (counts, ports, rollout settings, dependencies on lower-numbered components),
//! before and after versions, retired hosts and host groups.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use endstate_plan::{Plan, PlanOptions, StepAction, WaveKind, place, plan_with};
use endstate_spec::{
    Artifact, ArtifactSource, Batch, Component, Count, DesiredState, Duration, HostInfo, OnFailure, Placement, Port,
    Rollout, System,
};
use endstate_types::{Selector, SelectorTerm};
use proptest::prelude::*;

const ZONES: [&str; 3] = ["a", "b", "c"];

/// One component as declared in one of the two states.
#[derive(Clone, Debug)]
struct Side {
    present: bool,
    version: u8,
    env: u8,
    per_host: bool,
    count: u32,
    /// 0..3: `zone: a|b|c`; 3: every host.
    zone: u8,
}

#[derive(Clone, Debug)]
struct Comp {
    before: Side,
    after: Side,
    /// 0: none, 1: dynamic, 2: fixed, 3: dynamic but exclusive.
    ports: u8,
    canary: u32,
    batch: Batch,
    max_unavailable: u32,
    one_domain: bool,
    spread: bool,
    pause: bool,
    deps: u8,
}

#[derive(Clone, Debug)]
struct Case {
    /// Per host: zone (3: no zone label), host group (3: none), retired.
    hosts: Vec<(u8, u8, bool)>,
    /// Whether the options give host groups.
    groups: bool,
    comps: Vec<Comp>,
    /// Components are named in a rotated order, so that key order and dependency order differ.
    rotate: usize,
    shuffle: u64,
}

fn side() -> impl Strategy<Value = Side> {
    (
        prop::bool::weighted(0.8),
        1u8..3,
        0u8..2,
        any::<bool>(),
        1u32..6,
        0u8..4,
    )
        .prop_map(|(present, version, env, per_host, count, zone)| Side {
            present,
            version,
            env,
            per_host,
            count: if per_host { count.min(2) } else { count },
            zone,
        })
}

fn comp() -> impl Strategy<Value = Comp> {
    (
        side(),
        side(),
        0u8..4,
        0u32..4,
        prop_oneof![(1u32..5).prop_map(Batch::Size), (1u32..=100).prop_map(Batch::Percent)],
        0u32..4,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<u8>(),
    )
        .prop_map(
            |(before, after, ports, canary, batch, max_unavailable, one_domain, spread, pause, deps)| Comp {
                before,
                after,
                ports,
                canary,
                batch,
                max_unavailable,
                one_domain,
                spread,
                pause,
                deps,
            },
        )
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec((0u8..4, 0u8..4, prop::bool::weighted(0.2)), 1..9),
        prop::bool::weighted(0.3),
        prop::collection::vec(comp(), 1..6),
        0usize..5,
        any::<u64>(),
    )
        .prop_map(|(hosts, groups, comps, rotate, shuffle)| Case {
            hosts,
            groups,
            comps,
            rotate,
            shuffle,
        })
}

/// The key of the `i`th component: dependencies go only to lower `i`, which are not always lower
/// keys.
fn key(case: &Case, i: usize) -> String {
    format!("s/c{}", (i * 3 + case.rotate) % 5)
}

fn state(case: &Case, after: bool) -> DesiredState {
    let mut desired = DesiredState::default();
    desired.systems.insert(
        "s".into(),
        System {
            name: "s".into(),
            description: String::new(),
            owners: Vec::new(),
            escalation: None,
            links: Vec::new(),
            labels: BTreeMap::new(),
            subsystems: Vec::new(),
            subsystem_selector: None,
        },
    );
    let present: Vec<bool> = case
        .comps
        .iter()
        .map(|c| if after { c.after.present } else { c.before.present })
        .collect();
    for (i, comp) in case.comps.iter().enumerate() {
        let side = if after { &comp.after } else { &comp.before };
        if !side.present {
            continue;
        }
        let ports = match comp.ports {
            0 => Vec::new(),
            n => vec![Port {
                name: "http".into(),
                number: (n == 2).then_some(8000 + i as u16),
                exclusive: n == 3,
            }],
        };
        let selector = match ZONES.get(usize::from(side.zone)) {
            Some(zone) => Selector(BTreeMap::from([(
                "zone".to_owned(),
                SelectorTerm::Equals((*zone).to_owned()),
            )])),
            None => Selector::default(),
        };
        let depends_on = (0..i)
            .filter(|j| comp.deps & (1 << j) != 0 && present[*j])
            .map(|j| key(case, j))
            .collect();
        let key = key(case, i);
        desired.components.insert(
            key.clone(),
            Component {
                system: "s".into(),
                name: key.trim_start_matches("s/").to_owned(),
                description: String::new(),
                artifact: Artifact {
                    version: format!("{}.0", side.version),
                    source: ArtifactSource::Path { path: "bin/x".into() },
                },
                command: "x".into(),
                args: Vec::new(),
                env: BTreeMap::from([("E".to_owned(), side.env.to_string())]),
                config_files: Vec::new(),
                run_as: None,
                ports,
                health: None,
                placement: Placement {
                    selector,
                    count: if side.per_host {
                        Count::PerHost(side.count)
                    } else {
                        Count::Total(side.count)
                    },
                    spread_by: comp.spread.then(|| "zone".to_owned()),
                },
                rollout: Rollout {
                    canary: comp.canary,
                    batch: comp.batch,
                    max_unavailable: comp.max_unavailable,
                    one_domain_at_a_time: comp.one_domain.then(|| "zone".to_owned()),
                    pause: comp.pause.then(|| Duration::from_secs(5)),
                    min_healthy_time: Duration::from_secs(10),
                    on_failure: OnFailure::Halt,
                },
                gates: Vec::new(),
                depends_on,
            },
        );
    }
    desired
}

fn hosts(case: &Case) -> Vec<HostInfo> {
    case.hosts
        .iter()
        .enumerate()
        .map(|(i, (zone, _, _))| HostInfo {
            name: format!("h{i}"),
            labels: ZONES
                .get(usize::from(*zone))
                .map(|z| BTreeMap::from([("zone".to_owned(), (*z).to_owned())]))
                .unwrap_or_default(),
        })
        .collect()
}

fn options(case: &Case) -> PlanOptions {
    let mut host_groups = vec![Vec::new(); 3];
    let mut retire_hosts = Vec::new();
    for (i, (_, group, retired)) in case.hosts.iter().enumerate() {
        if let Some(members) = host_groups.get_mut(usize::from(*group)).filter(|_| case.groups) {
            members.push(format!("h{i}"));
        }
        if *retired {
            retire_hosts.push(format!("h{i}"));
        }
    }
    host_groups.retain(|g: &Vec<String>| !g.is_empty());
    PlanOptions {
        host_groups,
        retire_hosts,
        target_hosts: Vec::new(),
    }
}

/// The hosts in another order, decided by the case's shuffle seed.
fn shuffled(hosts: &[HostInfo], seed: u64) -> Vec<HostInfo> {
    let mut out = hosts.to_vec();
    out.sort_by_key(|h| {
        let mut x = seed
            ^ h.name
                .bytes()
                .fold(0u64, |acc, b| acc.wrapping_mul(31).wrapping_add(u64::from(b)));
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^ (x >> 33)
    });
    out
}

struct Input {
    current: DesiredState,
    desired: DesiredState,
    hosts: Vec<HostInfo>,
    options: PlanOptions,
}

impl Input {
    fn new(case: &Case) -> Input {
        Input {
            current: state(case, false),
            desired: state(case, true),
            hosts: hosts(case),
            options: options(case),
        }
    }

    fn plan(&self) -> Plan {
        plan_with(Some(&self.current), &self.desired, &self.hosts, &self.options)
    }

    /// The definition that rules a component's rollout: the desired one, else the current one.
    fn component(&self, key: &str) -> &Component {
        self.desired
            .components
            .get(key)
            .or_else(|| self.current.components.get(key))
            .unwrap()
    }

    fn disruptive(&self, component: &str, action: StepAction) -> bool {
        let c = self.component(component);
        let start_first = c.ports.iter().all(|p| p.number.is_none() && !p.exclusive);
        matches!(action, StepAction::Upgrade | StepAction::Reconfigure) && !start_first
    }

    fn label(&self, host: &str, label: &str) -> Option<String> {
        self.hosts
            .iter()
            .find(|h| h.name == host)
            .and_then(|h| h.labels.get(label).cloned())
    }

    fn group(&self, host: &str) -> Option<usize> {
        self.options
            .host_groups
            .iter()
            .position(|g| g.iter().any(|h| h == host))
    }
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// (1) No wave holds more than `max_unavailable` steps that take an instance down, and a
    /// component that needs such steps with `max_unavailable: 0` is blocked, not in any wave.
    #[test]
    fn max_unavailable_is_never_exceeded(case in case()) {
        let input = Input::new(&case);
        let plan = input.plan();
        for wave in &plan.waves {
            let max = input.component(&wave.component).rollout.max_unavailable;
            let down = wave.steps.iter().filter(|s| input.disruptive(&s.step.component, s.step.action)).count();
            prop_assert!(down <= max as usize, "wave {} has {down} disruptive steps, max {max}", wave.index);
            prop_assert!(wave.steps.iter().all(|s| *s.step.component == *wave.component));
            prop_assert!(!wave.steps.is_empty());
        }
        let blocked: BTreeSet<&str> = plan.blocked.iter().map(|b| b.component.as_str()).collect();
        let should: BTreeSet<&str> = plan
            .steps
            .iter()
            .filter(|s| input.disruptive(&s.component, s.action) && input.component(&s.component).rollout.max_unavailable == 0)
            .map(|s| &*s.component)
            .collect();
        prop_assert_eq!(blocked, should);
    }

    /// (2) Every wave of a component comes after every wave of the components it depends on;
    /// within a component, the canary comes first, then the batches, then the stops.
    #[test]
    fn dependencies_and_phases_in_order(case in case()) {
        let input = Input::new(&case);
        let plan = input.plan();
        for (i, wave) in plan.waves.iter().enumerate() {
            prop_assert_eq!(wave.index as usize, i);
        }
        let mut span: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
        for wave in &plan.waves {
            let entry = span.entry(wave.component.as_str()).or_insert((wave.index, wave.index));
            entry.1 = wave.index;
        }
        for (component, (first, _)) in &span {
            for dep in &input.component(component).depends_on {
                if let Some((_, dep_last)) = span.get(dep.as_str()) {
                    prop_assert!(dep_last < first, "{component} (from wave {first}) before its dependency {dep} (until wave {dep_last})");
                }
            }
        }
        let rank = |kind: WaveKind| match kind {
            WaveKind::Canary => 0,
            WaveKind::Batch => 1,
            WaveKind::Stop => 2,
        };
        for component in span.keys() {
            let kinds: Vec<u8> = plan.waves.iter().filter(|w| w.component == *component).map(|w| rank(w.kind)).collect();
            prop_assert!(kinds.windows(2).all(|w| w[0] <= w[1]), "{component}: phases out of order: {kinds:?}");
            // Stops of instances no longer desired come after every start, upgrade and
            // reconfiguration of their component, in waves of their own.
            let waves = || plan.waves.iter().filter(|w| w.component == *component);
            for wave in waves() {
                let stops = wave.steps.iter().all(|s| s.step.action == StepAction::Stop);
                let changes = wave.steps.iter().all(|s| s.step.action != StepAction::Stop);
                prop_assert!(if wave.kind == WaveKind::Stop { stops } else { changes }, "wave {} mixes stops and changes", wave.index);
            }
            let last_change = waves().filter(|w| w.kind != WaveKind::Stop).map(|w| w.index).max();
            let first_stop = waves().filter(|w| w.kind == WaveKind::Stop).map(|w| w.index).min();
            if let (Some(last_change), Some(first_stop)) = (last_change, first_stop) {
                prop_assert!(last_change < first_stop);
            }
            let last = plan.waves.iter().rfind(|w| w.component == *component).unwrap();
            prop_assert_eq!(last.pause_after_ms, 0);
        }
    }

    /// (3) Every step is in exactly one wave (unless its component is blocked), and a plan whose
    /// steps all succeed converges: applying the waves in order to the placement before gives
    /// exactly the placement after.
    #[test]
    fn waves_converge(case in case()) {
        let input = Input::new(&case);
        let plan = input.plan();
        let blocked: BTreeSet<&str> = plan.blocked.iter().map(|b| b.component.as_str()).collect();
        let order = |s: &endstate_plan::Step| (s.component.clone(), s.host.clone(), s.slot);
        let mut in_waves: Vec<_> = plan.waves.iter().flat_map(|w| w.steps.iter().map(|s| s.step.clone())).collect();
        let mut expected: Vec<_> = plan.steps.iter().filter(|s| !blocked.contains(&*s.component)).cloned().collect();
        in_waves.sort_by_key(order);
        expected.sort_by_key(order);
        prop_assert_eq!(in_waves, expected);

        let (before, _) = place(&input.current, &input.hosts);
        let (after, _) = place(&input.desired, &input.options.placement_hosts(&input.hosts));
        let mut running: BTreeMap<_, std::sync::Arc<str>> = before.into_iter().map(|(k, p)| (k, p.version)).collect();
        for wave in &plan.waves {
            for ws in &wave.steps {
                let step = &ws.step;
                let k = endstate_plan::PlacementKey { component: step.component.clone(), host: step.host.clone(), slot: step.slot };
                match step.action {
                    StepAction::Start => {
                        prop_assert!(!running.contains_key(&k), "start of a running instance {k:?}");
                        running.insert(k, step.to_version.clone().unwrap());
                    }
                    StepAction::Upgrade | StepAction::Reconfigure => {
                        prop_assert!(running.contains_key(&k), "change of an instance not running {k:?}");
                        running.insert(k, step.to_version.clone().unwrap());
                    }
                    StepAction::Stop => {
                        prop_assert!(running.remove(&k).is_some(), "stop of an instance not running {k:?}");
                    }
                }
            }
        }
        let wanted: BTreeMap<_, std::sync::Arc<str>> = after.into_iter().map(|(k, p)| (k, p.version)).collect();
        let unblocked = |m: BTreeMap<endstate_plan::PlacementKey, std::sync::Arc<str>>| -> BTreeMap<_, _> {
            m.into_iter().filter(|(k, _)| !blocked.contains(&*k.component)).collect()
        };
        prop_assert_eq!(unblocked(running), unblocked(wanted));
    }

    /// (4) The same input gives the same plan, whatever the order of the hosts.
    #[test]
    fn deterministic_and_independent_of_host_order(case in case()) {
        let input = Input::new(&case);
        let plan = input.plan();
        prop_assert_eq!(&input.plan(), &plan);
        let reordered = plan_with(Some(&input.current), &input.desired, &shuffled(&input.hosts, case.shuffle), &input.options);
        prop_assert_eq!(&reordered, &plan);
        let mut reversed = input.hosts.clone();
        reversed.reverse();
        prop_assert_eq!(&plan_with(Some(&input.current), &input.desired, &reversed, &input.options), &plan);
    }

    /// (5) With one domain at a time, no wave mixes failure domains, and `domain` names the one it
    /// is in; no wave mixes host groups.
    #[test]
    fn one_domain_and_one_host_group_per_wave(case in case()) {
        let input = Input::new(&case);
        let plan = input.plan();
        for wave in &plan.waves {
            let groups: BTreeSet<Option<usize>> = wave.steps.iter().map(|s| input.group(&s.step.host)).collect();
            prop_assert!(groups.len() <= 1, "wave {} mixes host groups {groups:?}", wave.index);
            match &input.component(&wave.component).rollout.one_domain_at_a_time {
                Some(label) => {
                    let domains: BTreeSet<String> = wave
                        .steps
                        .iter()
                        .map(|s| format!("{label}={}", input.label(&s.step.host, label).unwrap_or_else(|| "none".into())))
                        .collect();
                    prop_assert_eq!(domains.len(), 1, "wave {} mixes domains {:?}", wave.index, domains);
                    prop_assert_eq!(wave.domain.as_ref(), domains.iter().next());
                }
                None => prop_assert_eq!(&wave.domain, &None),
            }
        }
    }

    /// (6) When only counts change, the planner places only the instances the two counts do not
    /// share; its steps are still exactly the difference between placing everything before and
    /// after: a start for every instance only after, a stop for every instance only before.
    #[test]
    fn a_count_change_alone_plans_the_difference_of_the_placements(case in case()) {
        let mut case = case;
        for comp in &mut case.comps {
            comp.after = Side { count: comp.after.count, ..comp.before.clone() };
            if comp.before.per_host {
                comp.after.count = comp.after.count.min(2);
            }
        }
        for host in &mut case.hosts {
            host.2 = false;
        }
        let input = Input::new(&case);
        let plan = input.plan();
        let (before, _) = place(&input.current, &input.hosts);
        let (after, _) = place(&input.desired, &input.hosts);
        let mut expected: Vec<(String, String, u32, StepAction)> = Vec::new();
        for key in before.keys().filter(|k| !after.contains_key(*k)) {
            expected.push((key.component.to_string(), key.host.to_string(), key.slot, StepAction::Stop));
        }
        for key in after.keys().filter(|k| !before.contains_key(*k)) {
            expected.push((key.component.to_string(), key.host.to_string(), key.slot, StepAction::Start));
        }
        expected.sort();
        let mut got: Vec<(String, String, u32, StepAction)> = plan
            .steps
            .iter()
            .map(|s| (s.component.to_string(), s.host.to_string(), s.slot, s.action))
            .collect();
        got.sort();
        prop_assert_eq!(got, expected);
    }
}
