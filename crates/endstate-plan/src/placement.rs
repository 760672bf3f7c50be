//! Placement: which instances of which component run on which host, decided from the
//! component's placement rule and the inventory alone.
//!
//! Placements are built in key order (component, host, slot) as one list: no map, no sort. The
//! strings they hold are shared (`Arc<str>`): a component's key, version and reasons once per
//! component, a host's name once per host, so placing 100,000 instances allocates no string per
//! instance.

use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use endstate_spec::{Component, Count, DesiredState, HostInfo};
use endstate_types::Labels;
use serde_json::Value;

use crate::Unplaced;

/// The identity of one instance: a component, a host and a slot on that host.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PlacementKey {
    /// `system/component`.
    pub component: Arc<str>,
    /// The host.
    pub host: Arc<str>,
    /// The slot on the host, from 0.
    pub slot: u32,
}

/// What one instance should run.
#[derive(Clone, Debug, PartialEq)]
pub struct Placement {
    /// The artifact version.
    pub version: Arc<str>,
    /// Everything that defines the running process apart from its version (see [`runtime_config`]),
    /// shared by every placement of the component.
    pub config: Arc<Value>,
    /// Why this instance is placed here.
    pub reason: Arc<str>,
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
    let table = HostTable::new(hosts);
    let (placements, unplaced) = place_sorted(desired, &table, &[], |key| wanted(key).then_some(0));
    (placements.into_iter().collect(), unplaced)
}

/// What of the components `wanted` accepts cannot be placed, without placing the rest.
pub fn unplaceable(desired: &DesiredState, hosts: &[HostInfo], wanted: impl Fn(&str) -> bool) -> Vec<Unplaced> {
    let mut unplaced = Vec::new();
    for (key, component) in desired.components.iter().filter(|(key, _)| wanted(key)) {
        let selector = &component.placement.selector;
        if wanted_count(component) > 0 && !hosts.iter().any(|host| selector.matches(&host.labels)) {
            unplaced.push(no_host(key, component, hosts.len()));
        }
    }
    unplaced
}

/// The known hosts in name order (each name once), with their names made shareable on first use.
pub(crate) struct HostTable<'a> {
    hosts: Vec<&'a HostInfo>,
    names: Vec<OnceCell<Arc<str>>>,
    /// How many hosts were given (for messages).
    given: usize,
}

impl<'a> HostTable<'a> {
    pub(crate) fn new(hosts: &'a [HostInfo]) -> HostTable<'a> {
        let mut sorted: Vec<&HostInfo> = hosts.iter().collect();
        if !sorted.is_sorted_by(|a, b| a.name < b.name) {
            sorted.sort_by(|a, b| a.name.cmp(&b.name));
            sorted.dedup_by(|a, b| a.name == b.name);
        }
        HostTable {
            names: (0..sorted.len()).map(|_| OnceCell::new()).collect(),
            hosts: sorted,
            given: hosts.len(),
        }
    }

    /// The labels of the host named `name`. `cursor` is where a previous lookup ended: a lookup
    /// of a later name gallops on from there (lookups in name order cost little more than a pass
    /// over their hosts), an earlier one searches the whole table.
    pub(crate) fn labels(&self, name: &str, cursor: &mut usize) -> Option<&'a Labels> {
        let hosts = &self.hosts;
        let before = |host: &&HostInfo| host.name.as_str() < name;
        // Every host before `low` is before `name`.
        let mut low = if *cursor <= hosts.len() && (*cursor == 0 || before(&hosts[*cursor - 1])) {
            *cursor
        } else {
            0
        };
        let mut step = 1;
        loop {
            let probe = low + step - 1;
            match hosts.get(probe) {
                Some(host) if before(host) => {
                    low = probe + 1;
                    step *= 2;
                }
                _ => {
                    let high = probe.min(hosts.len());
                    *cursor = low + hosts[low..high].partition_point(before);
                    break;
                }
            }
        }
        hosts.get(*cursor).filter(|h| h.name == name).map(|h| &h.labels)
    }

    fn name(&self, index: usize) -> Arc<str> {
        Arc::clone(self.names[index].get_or_init(|| Arc::from(self.hosts[index].name.as_str())))
    }
}

fn wanted_count(component: &Component) -> u32 {
    match component.placement.count {
        Count::PerHost(n) | Count::Total(n) => n,
    }
}

fn no_host(key: &str, component: &Component, known: usize) -> Unplaced {
    Unplaced {
        component: key.to_owned(),
        wanted: wanted_count(component),
        placed: 0,
        reason: format!(
            "no known host matches the selector {} ({known} hosts known)",
            component.placement.selector
        ),
    }
}

/// Places the components for which `skip` answers `Some(k)`, on the table's hosts but the
/// `retired` ones, leaving out each one's first `k` instances: for a total count the first `k` in
/// spread order, for a count per host the slots below `k` on every host. (Changing a count alone
/// leaves the instances both counts share where they are: only the others need placing.)
///
/// The placements come out in key order: components in key order, then hosts in name order, then
/// slots.
pub(crate) fn place_sorted(
    desired: &DesiredState,
    table: &HostTable<'_>,
    retired: &[String],
    skip: impl Fn(&str) -> Option<u32>,
) -> (Vec<(PlacementKey, Placement)>, Vec<Unplaced>) {
    let mut placements: Vec<(PlacementKey, Placement)> = Vec::new();
    let mut unplaced = Vec::new();
    for (key, component) in &desired.components {
        let Some(skip) = skip(key) else { continue };
        let selector = &component.placement.selector;
        let eligible_host = |host: &HostInfo| selector.matches(&host.labels) && !retired.contains(&host.name);
        let wanted = wanted_count(component);
        if wanted == 0 {
            continue;
        }
        if skip >= wanted {
            // Nothing of it to place here; only whether it could be placed at all.
            if !table.hosts.iter().any(|host| eligible_host(host)) {
                unplaced.push(no_host(key, component, table.given));
            }
            continue;
        }
        let eligible: Vec<usize> = (0..table.hosts.len())
            .filter(|&i| eligible_host(table.hosts[i]))
            .collect();
        if eligible.is_empty() {
            unplaced.push(no_host(key, component, table.given));
            continue;
        }
        let key_arc: Arc<str> = Arc::from(key.as_str());
        let version: Arc<str> = Arc::from(component.artifact.version.as_str());
        let config = Arc::new(runtime_config(component));
        let indexed = config.to_string().contains("instance.index");
        let first = placements.len();
        let mut push = |host: usize, slot: u32, reason: &Arc<str>| {
            placements.push((
                PlacementKey {
                    component: Arc::clone(&key_arc),
                    host: table.name(host),
                    slot,
                },
                Placement {
                    version: Arc::clone(&version),
                    config: Arc::clone(&config),
                    reason: Arc::clone(reason),
                    index: None,
                },
            ));
        };
        match component.placement.count {
            Count::PerHost(n) => {
                let reason: Arc<str> = Arc::from(format!("{n} per host on every host matching {selector}"));
                for &host in &eligible {
                    for slot in skip..n {
                        push(host, slot, &reason);
                    }
                }
            }
            Count::Total(n) => {
                let spread_by = component.placement.spread_by.as_deref();
                let position = spread_positions(table, &eligible, spread_by);
                let len = eligible.len();
                // One reason per spread value.
                let mut reasons: HashMap<&str, Arc<str>> = HashMap::new();
                for (&host, &pos) in eligible.iter().zip(&position) {
                    // Instance `i` goes to the host at position `i % len` of the spread order, in
                    // its slot `i / len`: this host holds instances `pos`, `pos + len`, ...
                    let n = n as usize;
                    let count = n / len + usize::from(pos < n % len);
                    let skip = skip as usize;
                    let from = if skip > pos { (skip - pos).div_ceil(len) } else { 0 };
                    if from >= count {
                        continue;
                    }
                    let value = spread_by.map_or("", |label| {
                        table.hosts[host].labels.get(label).map_or("none", String::as_str)
                    });
                    let reason = reasons
                        .entry(value)
                        .or_insert_with(|| {
                            Arc::from(match spread_by {
                                Some(label) => format!(
                                    "{n} in total over hosts matching {selector}, spread by {label} ({label}={value})"
                                ),
                                None => format!("{n} in total over hosts matching {selector}"),
                            })
                        })
                        .clone();
                    for slot in from..count {
                        push(host, u32::try_from(slot).unwrap_or(u32::MAX), &reason);
                    }
                }
            }
        }
        if indexed {
            // In key order, as the server numbers them (`skip` is 0 for such components).
            for (index, (_, placement)) in placements[first..].iter_mut().enumerate() {
                placement.index = Some(u32::try_from(index).unwrap_or(u32::MAX));
            }
        }
    }
    (placements, unplaced)
}

/// FNV-1a of a short string (a label value): a cheap first comparison, not a defence.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    }) | 1
}

/// Each eligible host's position in the order in which hosts receive instances of a total count:
/// one host of each spread value in turn (hosts without the label first, then the values in
/// order), so consecutive instances land in different failure domains.
fn spread_positions(table: &HostTable<'_>, eligible: &[usize], spread_by: Option<&str>) -> Vec<usize> {
    let Some(label) = spread_by else {
        return (0..eligible.len()).collect();
    };
    // Failure domains are mostly few: a list searched in order beats a map, up to a point; a
    // short hash of each value spares most string comparisons.
    const FEW: usize = 16;
    let mut domains: Vec<(Option<&str>, Vec<usize>)> = Vec::new();
    let mut hashes: Vec<u64> = Vec::new();
    let mut many: HashMap<Option<&str>, usize> = HashMap::new();
    for (at, &host) in eligible.iter().enumerate() {
        let value = table.hosts[host].labels.get(label).map(String::as_str);
        let hash = value.map_or(0, fnv1a);
        let found = if domains.len() <= FEW {
            hashes
                .iter()
                .zip(&domains)
                .position(|(h, (v, _))| *h == hash && *v == value)
        } else {
            many.get(&value).copied()
        };
        let d = found.unwrap_or_else(|| {
            domains.push((value, Vec::new()));
            hashes.push(hash);
            if domains.len() == FEW + 1 {
                many.extend(domains.iter().enumerate().map(|(d, (v, _))| (*v, d)));
            } else if domains.len() > FEW + 1 {
                many.insert(value, domains.len() - 1);
            }
            domains.len() - 1
        });
        domains[d].1.push(at);
    }
    domains.sort_by(|a, b| a.0.cmp(&b.0));
    let longest = domains.iter().map(|(_, hosts)| hosts.len()).max().unwrap_or(0);
    let mut position = vec![0; eligible.len()];
    let mut next = 0;
    for round in 0..longest {
        for (_, hosts) in &domains {
            if let Some(&at) = hosts.get(round) {
                position[at] = next;
                next += 1;
            }
        }
    }
    position
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: String, rack: usize) -> HostInfo {
        HostInfo {
            name,
            labels: [("rack".to_owned(), format!("r{rack:02}"))].into_iter().collect(),
        }
    }

    /// Lookups in any order find every host, and nothing for names not in the table, wherever
    /// the cursor was.
    #[test]
    fn labels_are_found_from_any_cursor() {
        let hosts: Vec<HostInfo> = (0..100).map(|i| host(format!("h{:03}", i * 2), i % 7)).collect();
        let table = HostTable::new(&hosts);
        let mut cursor = 0;
        // Ascending, descending, jumping, and names between and beyond the hosts.
        let order = (0..200).chain((0..200).rev()).chain((0..200).map(|i| (i * 37) % 200));
        for i in order {
            let name = format!("h{i:03}");
            let want = hosts.iter().find(|h| h.name == name).map(|h| &h.labels);
            assert_eq!(table.labels(&name, &mut cursor), want, "{name}");
        }
        assert_eq!(table.labels("h999", &mut cursor), None);
        assert_eq!(table.labels("a", &mut cursor), None);
        assert_eq!(table.labels("h000", &mut cursor), Some(&hosts[0].labels));
    }

    /// With more failure domains than the short list holds, the spread order is still one host
    /// of each domain in turn, domains in order.
    #[test]
    fn many_domains_spread_in_turn() {
        let hosts: Vec<HostInfo> = (0..120).map(|i| host(format!("h{i:03}"), (i * 13) % 40)).collect();
        let table = HostTable::new(&hosts);
        let eligible: Vec<usize> = (0..hosts.len()).collect();
        let position = spread_positions(&table, &eligible, Some("rack"));
        let mut order = vec![""; hosts.len()];
        for (at, &pos) in position.iter().enumerate() {
            order[pos] = &hosts[at].name;
        }
        // The first 40 positions take one host of each rack, racks in order.
        let racks: Vec<&str> = order[..40]
            .iter()
            .map(|name| hosts.iter().find(|h| h.name == *name).unwrap().labels["rack"].as_str())
            .collect();
        let expected: Vec<String> = (0..40).map(|r| format!("r{r:02}")).collect();
        assert_eq!(racks, expected);
        let mut sorted = position.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..hosts.len()).collect::<Vec<_>>());
    }
}
