//! Placement: which instances of which component run on which host, decided from the
//! component's placement rule and the inventory alone.

use std::collections::BTreeMap;
use std::sync::Arc;

use endstate_spec::{Component, Count, DesiredState, HostInfo};
use serde_json::Value;

use crate::Unplaced;

/// The identity of one instance: a component, a host and a slot on that host.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PlacementKey {
    /// `system/component`.
    pub component: String,
    /// The host.
    pub host: String,
    /// The slot on the host, from 0.
    pub slot: u32,
}

/// What one instance should run.
#[derive(Clone, Debug, PartialEq)]
pub struct Placement {
    /// The artifact version.
    pub version: String,
    /// Everything that defines the running process apart from its version (see [`runtime_config`]),
    /// shared by every placement of the component.
    pub config: Arc<Value>,
    /// Why this instance is placed here.
    pub reason: String,
    /// `{{ instance.index }}`: the instance's 0-based index among the component's placements in
    /// key order (host, then slot), when the component's templates use it (`None` otherwise).
    /// Moving another instance can change it: that is a reconfiguration of this one.
    pub index: Option<u32>,
}

/// The part of a component that defines its running processes, apart from the artifact version:
/// a difference here means a reconfiguration. Placement, rollout strategy, gates and dependencies
/// change how a change is carried out, not what runs, so they are left out.
pub fn runtime_config(component: &Component) -> Value {
    let mut value = serde_json::to_value(component).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        for key in ["placement", "rollout", "gates", "depends_on", "name", "system"] {
            map.remove(key);
        }
        if let Some(Value::Object(artifact)) = map.get_mut("artifact") {
            artifact.remove("version");
        }
    }
    value
}

/// Places every component of `desired` on `hosts`. Deterministic: hosts are taken in name order,
/// and a total count is spread round-robin over the values of the spread label (in order), then
/// over the hosts within each value.
pub fn place(desired: &DesiredState, hosts: &[HostInfo]) -> (BTreeMap<PlacementKey, Placement>, Vec<Unplaced>) {
    place_only(desired, hosts, |_| true)
}

/// [`place`] for the components whose key `wanted` accepts.
pub fn place_only(
    desired: &DesiredState,
    hosts: &[HostInfo],
    wanted: impl Fn(&str) -> bool,
) -> (BTreeMap<PlacementKey, Placement>, Vec<Unplaced>) {
    place_inner(desired, hosts, wanted, true)
}

/// What of the components `wanted` accepts cannot be placed, without placing the rest.
pub fn unplaceable(desired: &DesiredState, hosts: &[HostInfo], wanted: impl Fn(&str) -> bool) -> Vec<Unplaced> {
    place_inner(desired, hosts, wanted, false).1
}

fn place_inner(
    desired: &DesiredState,
    hosts: &[HostInfo],
    wanted: impl Fn(&str) -> bool,
    place: bool,
) -> (BTreeMap<PlacementKey, Placement>, Vec<Unplaced>) {
    let mut sorted: Vec<&HostInfo> = hosts.iter().collect();
    if place {
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
    }
    // Built as a list and made a map at once at the end (a bulk build from sorted keys is much
    // cheaper than a search per insert); the components with `instance.index` are numbered then.
    let mut placements: Vec<(PlacementKey, Placement)> = Vec::new();
    let mut indexed: Vec<&str> = Vec::new();
    let mut unplaced = Vec::new();
    for (key, component) in desired.components.iter().filter(|(key, _)| wanted(key)) {
        let selector = &component.placement.selector;
        // Only whether one host matches, when nothing is placed.
        let eligible: Vec<&HostInfo> = if place {
            sorted
                .iter()
                .copied()
                .filter(|host| selector.matches(&host.labels))
                .collect()
        } else {
            sorted
                .iter()
                .copied()
                .find(|host| selector.matches(&host.labels))
                .into_iter()
                .collect()
        };
        let wanted = match component.placement.count {
            Count::PerHost(n) => n,
            Count::Total(n) => n,
        };
        if wanted == 0 {
            continue;
        }
        if eligible.is_empty() {
            unplaced.push(Unplaced {
                component: key.clone(),
                wanted,
                placed: 0,
                reason: format!(
                    "no known host matches the selector {selector} ({} hosts known)",
                    hosts.len()
                ),
            });
            continue;
        }
        if !place {
            continue;
        }
        let version = component.artifact.version.clone();
        let config = Arc::new(runtime_config(component));
        if config.to_string().contains("instance.index") {
            indexed.push(key.as_str());
        }
        match component.placement.count {
            Count::PerHost(n) => {
                let reason = format!("{n} per host on every host matching {selector}");
                for host in &eligible {
                    for slot in 0..n {
                        placements.push((
                            PlacementKey {
                                component: key.clone(),
                                host: host.name.clone(),
                                slot,
                            },
                            Placement {
                                version: version.clone(),
                                config: Arc::clone(&config),
                                reason: reason.clone(),
                                index: None,
                            },
                        ));
                    }
                }
            }
            Count::Total(n) => {
                let order = spread_order(&eligible, component.placement.spread_by.as_deref());
                let mut per_host: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
                // One reason per spread value.
                let mut reasons: BTreeMap<&str, String> = BTreeMap::new();
                for idx in 0..n as usize {
                    let host = order[idx % order.len()];
                    let slot = per_host.entry(host.name.as_str()).or_insert(0);
                    let value = component
                        .placement
                        .spread_by
                        .as_ref()
                        .map_or("", |label| host.labels.get(label).map_or("none", String::as_str));
                    let reason = reasons
                        .entry(value)
                        .or_insert_with(|| match &component.placement.spread_by {
                            Some(label) => format!(
                                "{n} in total over hosts matching {selector}, spread by {label} ({label}={value})"
                            ),
                            None => format!("{n} in total over hosts matching {selector}"),
                        })
                        .clone();
                    placements.push((
                        PlacementKey {
                            component: key.clone(),
                            host: host.name.clone(),
                            slot: *slot,
                        },
                        Placement {
                            version: version.clone(),
                            config: Arc::clone(&config),
                            reason,
                            index: None,
                        },
                    ));
                    *slot += 1;
                }
            }
        }
    }
    let mut placements: BTreeMap<PlacementKey, Placement> = placements.into_iter().collect();
    for key in indexed {
        // The component's keys are consecutive in the map, in the order the server numbers them.
        let start = PlacementKey {
            component: key.to_owned(),
            host: String::new(),
            slot: 0,
        };
        for (index, (_, placement)) in placements
            .range_mut(start..)
            .take_while(|(k, _)| k.component == key)
            .enumerate()
        {
            placement.index = Some(u32::try_from(index).unwrap_or(u32::MAX));
        }
    }
    (placements, unplaced)
}

/// The order in which hosts receive instances of a total count: one host of each spread value in
/// turn, so consecutive instances land in different failure domains.
fn spread_order<'a>(eligible: &[&'a HostInfo], spread_by: Option<&str>) -> Vec<&'a HostInfo> {
    let Some(label) = spread_by else {
        return eligible.to_vec();
    };
    let mut domains: BTreeMap<Option<&str>, Vec<&'a HostInfo>> = BTreeMap::new();
    for host in eligible {
        domains
            .entry(host.labels.get(label).map(String::as_str))
            .or_default()
            .push(host);
    }
    let longest = domains.values().map(Vec::len).max().unwrap_or(0);
    let mut order = Vec::with_capacity(eligible.len());
    for round in 0..longest {
        for hosts in domains.values() {
            if let Some(host) = hosts.get(round) {
                order.push(*host);
            }
        }
    }
    order
}
