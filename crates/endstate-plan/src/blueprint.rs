//! The blueprint: what every instance should run now, from the record of changes alone.
//!
//! The revision in force is placed on its placement basis (the hosts its change placed it on,
//! [`Plan::hosts`](crate::Plan::hosts)), not on the hosts of now; a change rolling out adds the
//! instances of its released waves as its own plan placed them. The hosts in service are not an
//! input, so a host joining, leaving or coming back moves nothing: only a change does. The agent
//! hub renders each host's set from it and the views read it, so both say the same.

use std::collections::{BTreeMap, BTreeSet};

use endstate_spec::{DesiredState, HostInfo};

use crate::{Placement, PlacementKey, Unplaced, place};

/// Which desired state an instance is rendered from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The revision in force.
    Base,
    /// The revision of the change rolling out (its step is released, or it does not differ).
    Target,
}

/// One instance of the blueprint.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    /// Whose component declaration it runs.
    pub side: Side,
    /// What it runs.
    pub placement: Placement,
}

/// What every instance should run now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Blueprint {
    /// Every instance, in key order.
    pub placements: BTreeMap<PlacementKey, Rendered>,
    /// What the revision shown cannot place (the change's while one rolls out, else the base's).
    pub unplaced: Vec<Unplaced>,
}

/// The blueprint of the revision in force (`base`, on its placement basis) and of the change
/// rolling out, if any (`rollout`: its desired state, the hosts its plan placed it on, retired
/// ones left out, and the instances whose steps are released).
///
/// An instance whose step is released runs as the change places it; any other runs as the base
/// has it (a start not yet released runs nowhere, a stop not yet released keeps running);
/// instances no step touches are the same on both sides and are rendered from the change's.
pub fn blueprint(
    base: Option<(&DesiredState, &[HostInfo])>,
    rollout: Option<(&DesiredState, &[HostInfo], &BTreeSet<PlacementKey>)>,
) -> Blueprint {
    let (before, base_unplaced) = match base {
        Some((desired, hosts)) => place(desired, hosts),
        None => Default::default(),
    };
    let Some((target, target_hosts, released)) = rollout else {
        let placements = before
            .into_iter()
            .map(|(key, placement)| {
                let rendered = Rendered {
                    side: Side::Base,
                    placement,
                };
                (key, rendered)
            })
            .collect();
        return Blueprint {
            placements,
            unplaced: base_unplaced,
        };
    };
    let (after, unplaced) = place(target, target_hosts);
    let mut placements: BTreeMap<PlacementKey, Rendered> = BTreeMap::new();
    for (key, placement) in after {
        let old = before.get(&key);
        let unchanged = old.is_some_and(|old| {
            old.version == placement.version && old.config == placement.config && old.index == placement.index
        });
        if released.contains(&key) || unchanged {
            placements.insert(
                key,
                Rendered {
                    side: Side::Target,
                    placement,
                },
            );
        } else if let Some(old) = old {
            let rendered = Rendered {
                side: Side::Base,
                placement: old.clone(),
            };
            placements.insert(key, rendered);
        }
    }
    for (key, placement) in before {
        if placements.contains_key(&key) || released.contains(&key) {
            continue;
        }
        placements.insert(
            key,
            Rendered {
                side: Side::Base,
                placement,
            },
        );
    }
    Blueprint { placements, unplaced }
}

#[cfg(test)]
mod tests {
    use endstate_spec::SourceFile;

    use super::*;

    fn desired(version: &str, count: u32) -> DesiredState {
        let text = format!(
            "apiVersion: endstate/v1\nkind: System\nname: shop\n---\napiVersion: endstate/v1\nkind: Component\n\
             name: web\nsystem: shop\nartifact: {{ version: \"{version}\", path: bin/web }}\ncommand: web\n\
             placement:\n  count: {{ total: {count} }}\n  spread_by: zone\n"
        );
        let loaded = endstate_spec::load(
            &[SourceFile {
                path: "spec.yaml".into(),
                text,
            }],
            &[],
        );
        loaded.desired.unwrap_or_else(|| panic!("{:#?}", loaded.diagnostics))
    }

    fn host(name: &str, zone: &str) -> HostInfo {
        HostInfo {
            name: name.into(),
            labels: [("zone".to_owned(), zone.to_owned())].into_iter().collect(),
        }
    }

    fn hosts_of(blueprint: &Blueprint) -> Vec<(String, u32, String)> {
        blueprint
            .placements
            .iter()
            .map(|(k, r)| (k.host.to_string(), k.slot, r.placement.version.to_string()))
            .collect()
    }

    /// Mid-rollout: a released step runs the change's version, an unreleased one the base's, a
    /// start not yet released nowhere and a stop not yet released still runs.
    #[test]
    fn released_steps_run_the_change_and_the_rest_the_base() {
        let base_hosts = [host("a", "a"), host("b", "b")];
        let target_hosts = [host("a", "a"), host("b", "b"), host("c", "c")];
        let (v1, v2) = (desired("1.0.0", 2), desired("2.0.0", 3));
        let nothing = BTreeSet::new();
        let held = blueprint(Some((&v1, &base_hosts)), Some((&v2, &target_hosts, &nothing)));
        assert_eq!(
            hosts_of(&held),
            [("a".into(), 0, "1.0.0".into()), ("b".into(), 0, "1.0.0".into())]
        );
        let released: BTreeSet<PlacementKey> = [("a", 0), ("c", 0)]
            .into_iter()
            .map(|(h, slot)| PlacementKey {
                component: "shop/web".into(),
                host: h.into(),
                slot,
            })
            .collect();
        let mixed = blueprint(Some((&v1, &base_hosts)), Some((&v2, &target_hosts, &released)));
        assert_eq!(
            hosts_of(&mixed),
            [
                ("a".into(), 0, "2.0.0".into()),
                ("b".into(), 0, "1.0.0".into()),
                ("c".into(), 0, "2.0.0".into())
            ]
        );
        assert_eq!(mixed.placements.values().filter(|r| r.side == Side::Target).count(), 2);
    }
}
