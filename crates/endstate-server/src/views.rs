//! Views: the desired state joined with the inventory and observed instances, with statuses
//! rolled up through components and subsystems, worst first, always naming the leaf that decided.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use endstate_api::{
    ActionRule, ComponentInstances, ComponentView, EscalationView, EventView, HostView, InstanceView, LinkView,
    RelatedSystem, StatusView, SystemDescription, SystemView,
};
use endstate_plan::{Blueprint, PlacementKey};
use endstate_spec::{DesiredState, HostInfo, StaticHost};
use endstate_store::{Event, HostRecord, InstanceFilter, InstanceRecord};
use endstate_types::Status;

use crate::AppState;
use crate::blueprint::Current;
use crate::error::ApiError;

/// A host not heard from for this long is unreachable.
const HOST_STALE_MS: i64 = 30_000;

/// Everything a status needs, read once per request.
pub(crate) struct World {
    /// The revision whose systems are shown: the change's while one rolls out, else the one in
    /// force (before anything converged, the latest).
    revision: endstate_types::RevisionId,
    desired: Arc<DesiredState>,
    records: BTreeMap<PlacementKey, InstanceRecord>,
    placed: Shown,
}

/// Where the placements shown come from.
enum Shown {
    /// The blueprint: what the agents are told to run (the revision in force, and the released
    /// waves of the change rolling out).
    Current(Arc<Current>),
    /// Nothing in force and nothing rolling out: the latest revision as it would be placed on
    /// the hosts in service (every instance pending).
    Latest(Arc<Placed>),
}

impl Shown {
    fn blueprint(&self) -> &Blueprint {
        match self {
            Shown::Current(current) => &current.blueprint,
            Shown::Latest(placed) => &placed.blueprint,
        }
    }
}

/// The placement of one revision on one set of hosts, kept by the server until either changes.
pub(crate) struct Placed {
    revision: endstate_types::RevisionId,
    hosts: Vec<HostInfo>,
    blueprint: Blueprint,
}

/// A computed status with its reason and the path to the leaf that decided it.
#[derive(Clone, Debug)]
struct Rolled {
    status: Status,
    reason: Option<String>,
    path: Vec<String>,
}

impl crate::AppState {
    /// The placement of `revision` on `hosts`: the one kept when both are the same, else placed
    /// anew and kept.
    pub(crate) fn placed(
        &self,
        revision: endstate_types::RevisionId,
        desired: &DesiredState,
        hosts: Vec<HostInfo>,
    ) -> Arc<Placed> {
        let mut cache = self
            .0
            .placement_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(placed) = cache.as_ref()
            && placed.revision == revision
            && placed.hosts == hosts
        {
            return Arc::clone(placed);
        }
        let blueprint = endstate_plan::blueprint(Some((desired, &hosts)), None);
        let placed = Arc::new(Placed {
            revision,
            hosts,
            blueprint,
        });
        *cache = Some(Arc::clone(&placed));
        placed
    }
}

impl World {
    /// Reads what every instance should run (the blueprint the agents are told) and the
    /// instances. `None` before the first revision.
    pub(crate) async fn load(state: &AppState) -> Result<Option<World>, ApiError> {
        let (current, instances) = tokio::try_join!(state.current(), async {
            Ok(state.store().list_instances(InstanceFilter::default()).await?)
        })?;
        let (revision, desired, placed) = match current.shown() {
            Some((revision, desired)) => (revision, Arc::clone(desired), Shown::Current(Arc::clone(&current))),
            None => {
                let (latest, hosts) =
                    tokio::try_join!(state.latest_desired(), crate::blueprint::hosts_in_service(state))?;
                let Some((revision, desired)) = latest else {
                    return Ok(None);
                };
                let placed = state.placed(revision, &desired, hosts);
                (revision, desired, Shown::Latest(placed))
            }
        };
        let records = instances
            .into_iter()
            .map(|record| {
                (
                    PlacementKey {
                        component: Arc::from(record.component_key.as_str()),
                        host: Arc::from(record.host.0.as_str()),
                        slot: record.slot,
                    },
                    record,
                )
            })
            .collect();
        Ok(Some(World {
            revision,
            desired,
            records,
            placed,
        }))
    }

    fn component_status(&self, key: &str) -> (Rolled, u64, u64) {
        if let Some(unplaced) = self.placed.blueprint().unplaced.iter().find(|u| u.component == key) {
            let rolled = Rolled {
                status: Status::Pending,
                reason: Some(format!(
                    "{} of {} instances can be placed: {}",
                    unplaced.placed, unplaced.wanted, unplaced.reason
                )),
                path: vec![key.to_string()],
            };
            return (rolled, u64::from(unplaced.wanted), 0);
        }
        let mut worst = Rolled {
            status: Status::Healthy,
            reason: None,
            path: vec![key.to_string()],
        };
        let mut n_desired = 0u64;
        let mut n_ready = 0u64;
        for (placement_key, rendered) in self.placed.blueprint().placements.range(range_of(key)) {
            let placement = &rendered.placement;
            n_desired += 1;
            let instance = format!("{key}#{} on {}", placement_key.slot, placement_key.host);
            let (status, reason) = match self.records.get(placement_key).and_then(|r| r.actual.as_ref()) {
                None => (Status::Pending, format!("{instance} is not running yet")),
                Some(actual) if actual.version.as_deref() != Some(&*placement.version) => (
                    Status::Pending,
                    format!(
                        "{instance} runs {} instead of {}",
                        actual.version.as_deref().unwrap_or("nothing"),
                        placement.version
                    ),
                ),
                Some(actual) if actual.status == Status::Healthy => {
                    n_ready += 1;
                    continue;
                }
                Some(actual) => (
                    actual.status,
                    format!("{instance} is {} ({})", actual.status.as_str(), actual.state),
                ),
            };
            if status > worst.status {
                worst = Rolled {
                    status,
                    reason: Some(reason),
                    path: vec![key.to_string()],
                };
            }
        }
        if let Some(reason) = &mut worst.reason {
            *reason = format!("{n_ready}/{n_desired} instances ready; {reason}");
        }
        (worst, n_desired, n_ready)
    }

    fn system_status(&self, name: &str, memo: &mut HashMap<String, Rolled>) -> Rolled {
        if let Some(found) = memo.get(name) {
            return found.clone();
        }
        // Cycles are refused when a spec is loaded; this guard only keeps a corrupt store from looping.
        memo.insert(
            name.to_string(),
            Rolled {
                status: Status::Unknown,
                reason: Some(format!("{name}: cycle")),
                path: vec![],
            },
        );
        let mut worst = Rolled {
            status: Status::Healthy,
            reason: None,
            path: vec![name.to_string()],
        };
        for (key, _) in self.desired.components_of(name) {
            let (rolled, _, _) = self.component_status(key);
            if rolled.status > worst.status {
                let mut path = vec![name.to_string()];
                path.extend(rolled.path);
                let reason = rolled.reason.map(|reason| format!("{key}: {reason}"));
                worst = Rolled {
                    status: rolled.status,
                    reason,
                    path,
                };
            }
        }
        if let Some(system) = self.desired.systems.get(name) {
            for sub in &system.subsystems {
                let rolled = self.system_status(sub, memo);
                if rolled.status > worst.status {
                    let mut path = vec![name.to_string()];
                    path.extend(rolled.path);
                    worst = Rolled {
                        status: rolled.status,
                        reason: rolled.reason,
                        path,
                    };
                }
            }
        }
        if worst.status == Status::Healthy {
            worst.path.clear();
        }
        memo.insert(name.to_string(), worst.clone());
        worst
    }

    fn system_view(&self, name: &str, depth: usize, memo: &mut HashMap<String, Rolled>) -> Option<SystemView> {
        let system = self.desired.systems.get(name)?;
        let rolled = self.system_status(name, memo);
        let children = if depth > 0 {
            system
                .subsystems
                .iter()
                .filter_map(|sub| self.system_view(sub, depth - 1, memo))
                .collect()
        } else {
            Vec::new()
        };
        let component_status = if depth > 0 {
            self.desired
                .components_of(name)
                .map(|(key, _)| self.component_view(key))
                .collect()
        } else {
            Vec::new()
        };
        Some(SystemView {
            name: system.name.clone(),
            description: system.description.clone(),
            owners: system.owners.clone(),
            labels: system.labels.clone(),
            subsystems: system.subsystems.clone(),
            components: self.desired.components_of(name).map(|(key, _)| key.clone()).collect(),
            status: status_view(&rolled),
            children,
            component_status,
        })
    }

    fn component_view(&self, key: &str) -> ComponentView {
        let (rolled, n_desired, n_ready) = self.component_status(key);
        let component = self.desired.components.get(key);
        ComponentView {
            key: key.to_string(),
            system: component.map(|c| c.system.clone()).unwrap_or_default(),
            version: component.map(|c| c.artifact.version.clone()).unwrap_or_default(),
            desired_instances: n_desired,
            ready_instances: n_ready,
            status: status_view(&rolled),
            spec: component.and_then(|c| serde_json::to_value(c).ok()).unwrap_or_default(),
        }
    }

    /// One system and `depth` levels of its subsystems (its status always rolled up from all).
    pub(crate) fn system_to_depth(&self, name: &str, depth: usize) -> Option<SystemView> {
        self.system_view(name, depth, &mut HashMap::new())
    }

    /// What `endstate describe` shows of one system, but its recent events (the caller adds
    /// them): contacts, links, actions, its direct subsystems and the aggregates it belongs to
    /// (found by scanning every system: there is no parent pointer), each with its rolled-up
    /// status, and its own components with their instances.
    pub(crate) fn description(&self, name: &str) -> Option<SystemDescription> {
        let system = self.desired.systems.get(name)?;
        let mut memo = HashMap::new();
        let status = status_view(&self.system_status(name, &mut memo));
        let mut related = |other: &str| RelatedSystem {
            name: other.to_string(),
            status: status_view(&self.system_status(other, &mut memo)),
        };
        let subsystems = system.subsystems.iter().map(|sub| related(sub)).collect();
        let aggregates = self
            .desired
            .systems
            .values()
            .filter(|other| other.subsystems.iter().any(|sub| sub == name))
            .map(|other| related(&other.name))
            .collect();
        let actions = self
            .desired
            .actions
            .values()
            .filter(|action| action.system == name)
            .map(|action| ActionRule {
                name: action.name.clone(),
                description: action.description.clone(),
                engagement: match action.engagement {
                    endstate_spec::Engagement::Direct => "direct",
                    endstate_spec::Engagement::Approval => "approval",
                    endstate_spec::Engagement::Escalate => "escalate",
                }
                .to_string(),
                escalate_to: action.escalate_to.clone(),
                targets: match &action.targets {
                    endstate_spec::Targets::Component(key) => format!("component {key}"),
                    endstate_spec::Targets::Hosts(selector) => format!("hosts {selector}"),
                },
            })
            .collect();
        let instances = self.instances();
        let components = self
            .desired
            .components_of(name)
            .map(|(key, component)| {
                let (rolled, desired_instances, ready_instances) = self.component_status(key);
                ComponentInstances {
                    key: key.clone(),
                    version: component.artifact.version.clone(),
                    desired_instances,
                    ready_instances,
                    status: status_view(&rolled),
                    instances: instances.iter().filter(|i| &i.component == key).cloned().collect(),
                }
            })
            .collect();
        Some(SystemDescription {
            name: system.name.clone(),
            revision: self.revision.0,
            description: system.description.clone(),
            labels: system.labels.clone(),
            owners: system.owners.clone(),
            escalation: system.escalation.as_ref().map(|e| EscalationView {
                contact: e.contact.clone(),
                pager: e.pager.clone(),
                phone: e.phone.clone(),
                email: e.email.clone(),
                url: e.url.clone(),
            }),
            links: system
                .links
                .iter()
                .map(|l| LinkView {
                    title: l.title.clone(),
                    url: l.url.clone(),
                })
                .collect(),
            actions,
            status,
            subsystems,
            subsystem_selector: system.subsystem_selector.as_ref().map(ToString::to_string),
            aggregates,
            components,
            recent_events: Vec::new(),
        })
    }

    /// Every system (flat), or the top-level systems with their trees.
    pub(crate) fn systems(&self, tree: bool) -> Vec<SystemView> {
        let mut memo = HashMap::new();
        if tree {
            let mut is_sub = std::collections::BTreeSet::new();
            for system in self.desired.systems.values() {
                is_sub.extend(system.subsystems.iter().cloned());
            }
            self.desired
                .systems
                .keys()
                .filter(|name| !is_sub.contains(*name))
                .filter_map(|name| self.system_view(name, usize::MAX, &mut memo))
                .collect()
        } else {
            self.desired
                .systems
                .keys()
                .filter_map(|name| self.system_view(name, 0, &mut memo))
                .collect()
        }
    }

    /// Every component with its status.
    pub(crate) fn components(&self) -> Vec<ComponentView> {
        self.desired
            .components
            .keys()
            .map(|key| self.component_view(key))
            .collect()
    }

    /// Every desired instance with what was observed, then observed instances no longer desired.
    pub(crate) fn instances(&self) -> Vec<InstanceView> {
        let mut out = Vec::new();
        for (key, rendered) in &self.placed.blueprint().placements {
            let placement = &rendered.placement;
            let record = self.records.get(key);
            let actual = record.and_then(|r| r.actual.as_ref());
            out.push(InstanceView {
                component: key.component.to_string(),
                host: key.host.to_string(),
                slot: key.slot,
                desired_version: placement.version.to_string(),
                actual_version: actual.and_then(|a| a.version.clone()),
                status: actual.map_or(Status::Pending, |a| a.status).as_str().to_string(),
                state: actual.map_or_else(|| "not started".to_string(), |a| a.state.clone()),
                since: actual.map(|a| crate::rfc3339(a.since_ms)).unwrap_or_default(),
                rss_bytes: None,
                cpu_millis: None,
                restarts: None,
            });
        }
        for (key, record) in &self.records {
            if self.placed.blueprint().placements.contains_key(key) {
                continue;
            }
            let actual = record.actual.as_ref();
            out.push(InstanceView {
                component: key.component.to_string(),
                host: key.host.to_string(),
                slot: key.slot,
                desired_version: "(to be stopped)".to_string(),
                actual_version: actual.and_then(|a| a.version.clone()),
                status: actual.map_or(Status::Unknown, |a| a.status).as_str().to_string(),
                state: actual.map_or_else(|| "unknown".to_string(), |a| a.state.clone()),
                since: actual.map(|a| crate::rfc3339(a.since_ms)).unwrap_or_default(),
                rss_bytes: None,
                cpu_millis: None,
                restarts: None,
            });
        }
        out
    }
}

/// The range of placement keys of one component.
fn range_of(key: &str) -> std::ops::RangeInclusive<PlacementKey> {
    PlacementKey {
        component: Arc::from(key),
        host: Arc::from(""),
        slot: 0,
    }..=PlacementKey {
        component: Arc::from(key),
        host: Arc::from("\u{10FFFF}"),
        slot: u32::MAX,
    }
}

fn status_view(rolled: &Rolled) -> StatusView {
    StatusView {
        status: rolled.status.as_str().to_string(),
        reason: rolled.reason.clone(),
        path: rolled.path.clone(),
    }
}

/// Hosts with liveness and what is placed on them.
/// Hosts with their liveness: for a host with an agent, what the agent link says (`reachable`,
/// `unreachable`, `revoked`, or `unknown` before its first connection); for a host known without
/// an agent, how long ago it was last seen.
/// The inventory: every host with an agent record or a last report, then the static entries of
/// the desired state whose name no agent has (an agent of the same name wins).
pub(crate) fn hosts(
    hosts: &[HostRecord],
    agents: &[endstate_store::AgentRecord],
    instances: &[InstanceRecord],
    statics: &[&StaticHost],
    now_ms: i64,
) -> Vec<HostView> {
    let mut views: Vec<HostView> = hosts
        .iter()
        .map(|host| {
            let agent = agents.iter().find(|a| a.host == host.name);
            let liveness = match agent {
                Some(agent) if agent.revoked_ms.is_some() => "revoked",
                Some(agent) => match agent.reachable {
                    Some(true) => "reachable",
                    Some(false) => "unreachable",
                    None => "unknown",
                },
                None => match host.last_seen_ms {
                    None => "unknown",
                    Some(seen) if now_ms - seen > HOST_STALE_MS => "unreachable",
                    Some(_) => "reachable",
                },
            };
            let on_host: Vec<&InstanceRecord> = instances.iter().filter(|i| i.host == host.name).collect();
            let mut systems: Vec<String> = on_host.iter().map(|i| i.system.clone()).collect();
            systems.sort();
            systems.dedup();
            HostView {
                name: host.name.0.clone(),
                kind: "agent".to_string(),
                description: String::new(),
                labels: host.labels.clone(),
                facts: host.facts.clone(),
                systems,
                liveness: liveness.to_string(),
                last_seen: host.last_seen_ms.map(crate::rfc3339),
                instances: on_host
                    .iter()
                    .map(|i| {
                        let actual = i.actual.as_ref().map_or_else(
                            || "not observed".to_owned(),
                            |a| format!("{} {}", a.state, a.status.as_str()),
                        );
                        format!("{}#{} {} ({actual})", i.component_key, i.slot, i.desired.version)
                    })
                    .collect(),
            }
        })
        .collect();
    for entry in statics {
        if views.iter().any(|v| v.name == entry.name) {
            continue;
        }
        views.push(HostView {
            name: entry.name.clone(),
            kind: "static".to_string(),
            description: entry.description.clone(),
            labels: entry.labels.clone(),
            facts: serde_json::to_value(&entry.facts).unwrap_or_default(),
            systems: entry.systems.clone(),
            liveness: "static".to_string(),
            last_seen: None,
            instances: Vec::new(),
        });
    }
    views.sort_by(|a, b| a.name.cmp(&b.name));
    views
}

pub(crate) fn event_view(event: &Event) -> EventView {
    EventView {
        seq: event.seq.0,
        time: crate::rfc3339(event.time_ms),
        kind: event.kind.clone(),
        systems: event.systems.clone(),
        host: event.host.clone(),
        component: event.component.clone(),
        change: event.change.map(|c| c.0),
        actor: event.actor.clone(),
        summary: event.summary.clone(),
        data: event.data.clone(),
    }
}
