//! The agent link, server side: enrolment, the mutual-TLS websocket listener, the hub of connected
//! agents, desired instance sets with generations, observation ingest and liveness.
//!
//! # Expected flow
//!
//! 1. An operator creates a join token (`POST /v1/join-tokens`); the agent enrols with it
//!    (`POST /v1/agents/enrol`, see [`routes`]) and receives a client certificate signed by the
//!    server's CA ([`tls`]), the CA certificate and the agent URL.
//! 2. The agent connects to the agent listener ([`conn`]): TLS with a client certificate from
//!    this CA (rustls checks the chain), then the server checks the certificate's host and serial
//!    against the store (revoked hosts and superseded certificates are refused), then `hello`.
//! 3. The hub computes what every host should run from the target revision ([`assign`]): the
//!    newest rolling change's revision, else the last converged one. A host's generation grows
//!    only when its set changes (the store keeps the digest), and the set is sent whenever the
//!    connection has not seen that generation.
//! 4. Observations are stored in order, exactly once (a compare-and-set on the agent's
//!    `last_seq`), then acknowledged. Instance states and health become instance transitions.
//! 5. A host whose keepalives stop (detected within [`KEEPALIVE_MISSES`] intervals), or whose connection
//!    closes, is marked unreachable, and its instances `unknown` (not dead), on the timeline.

pub(crate) mod assign;
pub(crate) mod conn;
pub(crate) mod routes;
pub(crate) mod tls;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use endstate_agent_proto::{DesiredInstances, FromServer, InstanceStateWord, Logs};
use endstate_spec::HostInfo;
use endstate_store::{ActualInstance, DesiredInstance, InstanceRecord, InstanceTransition, NewEvent, ObservationBatch};
use endstate_types::{Generation, HostName, RevisionId, Status};
use tokio::sync::{mpsc, oneshot};

use crate::AppState;
use crate::error::ApiError;
use crate::fleet::{Fleet, Live, word};

pub use tls::TlsError;

/// Keepalives missed before a host is unreachable.
pub const KEEPALIVE_MISSES: u32 = 3;

/// Settings of the agent link.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// How often agents send a keepalive (told to them at enrolment and in their flags).
    pub keepalive_interval: Duration,
    /// How long an agent certificate lives; agents renew at 2/3 of it.
    pub cert_lifetime: Duration,
    /// The URL agents connect to, when it is not the listener's own address (behind NAT).
    pub advertise_url: Option<String>,
    /// Every agent runs on this one machine (`endstate dev`, a lab): a port the server
    /// allocates is unique across hosts, not only on its host.
    pub one_machine: bool,
    /// The ports the server allocates to components that fix none (20000-29999 by default):
    /// firewall rules name it; labs sharing a machine each take their own.
    pub dynamic_ports: std::ops::RangeInclusive<u16>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            keepalive_interval: Duration::from_secs(5),
            cert_lifetime: endstate_pki::DEFAULT_AGENT_LIFETIME,
            advertise_url: None,
            one_machine: false,
            dynamic_ports: assign::DEFAULT_DYNAMIC_PORTS,
        }
    }
}

/// The hub: every connected agent, the live state of their instances, and what they should run.
pub(crate) struct Hub {
    pub(crate) tls: tls::AgentTls,
    pub(crate) config: AgentConfig,
    agent_url: Mutex<String>,
    conns: Mutex<HashMap<String, ConnHandle>>,
    live: Mutex<HashMap<String, BTreeMap<String, Live>>>,
    /// Per logs request: the host asked, and who waits for its answer.
    logs_waiters: Mutex<HashMap<u64, (String, oneshot::Sender<Logs>)>>,
    next_id: AtomicU64,
    assigned: tokio::sync::Mutex<Assigned>,
    started_ms: i64,
    /// When a failed TLS handshake was last put on the timeline (at most one per 10 s).
    pub(crate) last_tls_event_ms: AtomicI64,
    /// Per host: serialises a connection's hello and registration with the marking of the
    /// previous connection as unreachable.
    host_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Serialises the full refreshes of [`Hub::refresh_host`], so agents reconnecting before the
    /// sets are computed wait for one computation instead of each making its own.
    refreshing: tokio::sync::Mutex<()>,
    /// Per host: the generation of its current set and the actions (`system/action`) of its
    /// catalogue, readable without waiting for a refresh.
    catalogues: Mutex<HashMap<String, (u64, std::collections::BTreeSet<String>)>>,
}

/// One connected agent.
#[derive(Clone)]
pub(crate) struct ConnHandle {
    pub(crate) id: u64,
    pub(crate) tx: mpsc::Sender<FromServer>,
    pub(crate) last_heard_ms: Arc<AtomicI64>,
    pub(crate) sent_generation: Arc<AtomicU64>,
    pub(crate) close: Arc<tokio::sync::Notify>,
    /// The address the agent connects from: where its instances are reached (Prometheus targets).
    pub(crate) peer_ip: std::net::IpAddr,
}

/// The assignments of the current target, cached until the target or the hosts change.
#[derive(Default)]
struct Assigned {
    key: Option<String>,
    /// The key of the blueprint the sets were rendered from ([`crate::blueprint::Current::key`]).
    blueprint: Option<String>,
    target: Option<RevisionId>,
    hosts: BTreeMap<String, assign::HostAssignments>,
    /// Per (host, instance id): the generation its assignment last changed at. An instance the
    /// agent started then is at its end state; a newer set that leaves it unchanged does not
    /// restart it, so it keeps reporting that generation.
    generations: BTreeMap<(String, String), u64>,
    /// Per host: the generation of its set, as the store gave it when the sets were computed
    /// (only the computation writes a host's digest, so it stays current until the next one).
    host_generations: BTreeMap<String, u64>,
}

impl Hub {
    pub(crate) fn new(tls: tls::AgentTls, config: AgentConfig, started_ms: i64) -> Hub {
        Hub {
            tls,
            config,
            agent_url: Mutex::new(String::new()),
            conns: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            logs_waiters: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            assigned: tokio::sync::Mutex::new(Assigned::default()),
            started_ms,
            last_tls_event_ms: AtomicI64::new(0),
            host_locks: Mutex::new(HashMap::new()),
            refreshing: tokio::sync::Mutex::new(()),
            catalogues: Mutex::new(HashMap::new()),
        }
    }

    /// The hosts whose current catalogue offers `action` (`system/action`), in name order.
    pub(crate) fn action_hosts(&self, action: &str) -> Vec<String> {
        let mut hosts: Vec<String> = lock(&self.catalogues)
            .iter()
            .filter(|(_, (_, actions))| actions.contains(action))
            .map(|(host, _)| host.clone())
            .collect();
        hosts.sort();
        hosts
    }

    /// The generation of the catalogue a run of `action` on `host` must name: the host's current
    /// set, once its connection was sent it. Else why not (yet).
    pub(crate) fn action_generation(&self, host: &str, action: &str) -> Result<u64, String> {
        let Some((generation, actions)) = lock(&self.catalogues).get(host).cloned() else {
            return Err(format!("{host} has no catalogue"));
        };
        if !actions.contains(action) {
            return Err(format!("the catalogue of {host} no longer offers {action}"));
        }
        let Some(conn) = self.connection(host) else {
            return Err(format!("{host} is not connected"));
        };
        if conn.sent_generation.load(Ordering::Relaxed) != generation {
            return Err(format!(
                "{host} has not been sent generation {generation} of its catalogue yet"
            ));
        }
        Ok(generation)
    }

    pub(crate) fn agent_url(&self) -> String {
        lock(&self.agent_url).clone()
    }

    pub(crate) fn set_agent_url(&self, url: String) {
        *lock(&self.agent_url) = url;
    }

    pub(crate) fn host_lock(&self, host: &str) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(lock(&self.host_locks).entry(host.to_owned()).or_default())
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a connection, replacing (and closing) an older one of the same host.
    pub(crate) fn register(&self, host: &str, handle: ConnHandle) {
        if let Some(old) = lock(&self.conns).insert(host.to_owned(), handle) {
            old.close.notify_one();
        }
    }

    /// Removes a connection if it is still the registered one; says whether it was.
    pub(crate) fn unregister(&self, host: &str, id: u64) -> bool {
        let mut conns = lock(&self.conns);
        if conns.get(host).is_some_and(|c| c.id == id) {
            conns.remove(host);
            true
        } else {
            false
        }
    }

    pub(crate) fn connection(&self, host: &str) -> Option<ConnHandle> {
        lock(&self.conns).get(host).cloned()
    }

    pub(crate) fn connected(&self) -> Vec<(String, ConnHandle)> {
        lock(&self.conns).iter().map(|(h, c)| (h.clone(), c.clone())).collect()
    }

    /// Closes the connection of a host (after a revocation).
    pub(crate) fn disconnect(&self, host: &str) {
        if let Some(conn) = lock(&self.conns).remove(host) {
            conn.close.notify_one();
        }
    }

    pub(crate) fn live_of(&self, host: &str) -> BTreeMap<String, Live> {
        lock(&self.live).get(host).cloned().unwrap_or_default()
    }

    pub(crate) fn update_live<T>(&self, host: &str, f: impl FnOnce(&mut BTreeMap<String, Live>) -> T) -> T {
        f(lock(&self.live).entry(host.to_owned()).or_default())
    }

    pub(crate) fn expect_logs(&self, request: u64, host: &str) -> oneshot::Receiver<Logs> {
        let (tx, rx) = oneshot::channel();
        lock(&self.logs_waiters).insert(request, (host.to_owned(), tx));
        rx
    }

    pub(crate) fn forget_logs(&self, request: u64) {
        lock(&self.logs_waiters).remove(&request);
    }

    /// Hands an answer to its request, when `host` is the host that was asked: request numbers
    /// are easy to guess, and another agent must not answer for it.
    pub(crate) fn deliver_logs(&self, host: &str, logs: Logs) {
        let mut waiters = lock(&self.logs_waiters);
        match waiters.get(&logs.request) {
            Some((asked, _)) if asked == host => {
                if let Some((_, waiter)) = waiters.remove(&logs.request) {
                    let _ = waiter.send(logs);
                }
            }
            Some((asked, _)) => tracing::warn!(
                host,
                asked = asked.as_str(),
                request = logs.request,
                "An agent answered a logs request made to another host; ignored."
            ),
            None => {}
        }
    }

    /// Brings the desired instance sets up to date: recomputes them when the target revision or
    /// the hosts changed (then also replaces the store's instance records), and sends each
    /// connected host its set when it has not seen its generation.
    pub(crate) async fn refresh(&self, state: &AppState) -> Result<(), ApiError> {
        // Independent reads, at once: this is on the way of every set sent after a decision.
        let (
            current,
            crate::blueprint::FleetHosts {
                in_service: hosts,
                retired,
            },
        ) = tokio::try_join!(state.current(), crate::blueprint::fleet_hosts(state))?;
        let key = rendering_key(&current, &hosts);
        let target = current.target();
        let mut assigned = self.assigned.lock().await;
        if assigned.key.as_ref() != Some(&key) {
            let mut sets = assign::sets(
                &current,
                &hosts,
                &self.tls.ca_sha256,
                self.config.one_machine,
                &self.config.dynamic_ports,
            );
            // Checks and actions follow what is rendered: the change's revision while it rolls
            // out, else the base.
            if let Some((_, desired)) = current.shown() {
                assign::add_checks(desired, &mut sets, &hosts);
                assign::add_actions(desired, &mut sets, &hosts);
            }
            // A retired host runs nothing: it gets an empty set, not none (it would keep what it has).
            for host in retired {
                sets.entry(host).or_default();
            }
            let mut records = Vec::new();
            let mut problems = Vec::new();
            // Every host's generation at once, so the store commits them together rather than
            // one transaction per host (thousands of hosts); the instances are read meanwhile.
            let generations_of = futures_util::future::try_join_all(sets.iter().map(|(host, set)| async move {
                let name = HostName(host.clone());
                let generation = state.store().set_agent_desired(&name, set.digest.clone()).await?;
                Ok::<_, ApiError>((host.clone(), generation))
            }));
            let instances = async {
                state
                    .store()
                    .list_instances(endstate_store::InstanceFilter::default())
                    .await
                    .map_err(ApiError::from)
            };
            let (host_generations, instances) = tokio::try_join!(generations_of, instances)?;
            let host_generations: BTreeMap<String, u64> = host_generations.into_iter().collect();
            let existing: BTreeMap<(String, String, u32), (String, u64)> = instances
                .into_iter()
                .map(|i| {
                    (
                        (i.host.0, i.component_key, i.slot),
                        (i.desired.config_digest, i.desired.generation.0),
                    )
                })
                .collect();
            let mut generations = BTreeMap::new();
            for (host, set) in &sets {
                let name = HostName(host.clone());
                let host_generation = host_generations.get(host).copied().unwrap_or_default();
                problems.extend(set.problems.iter().cloned());
                for (id, meta) in &set.index {
                    let generation = match existing.get(&(host.clone(), meta.component_key.clone(), meta.slot)) {
                        Some((digest, generation)) if *digest == meta.digest => *generation,
                        _ => host_generation,
                    };
                    generations.insert((host.clone(), id.clone()), generation);
                    records.push(InstanceRecord {
                        component_key: meta.component_key.clone(),
                        system: meta.system.clone(),
                        host: name.clone(),
                        slot: meta.slot,
                        desired: DesiredInstance {
                            version: meta.version.clone(),
                            config_digest: meta.digest.clone(),
                            generation: Generation(generation),
                        },
                        actual: None,
                    });
                }
            }
            state.store().replace_instances(records).await?;
            if !problems.is_empty() {
                let systems: Vec<String> = current
                    .shown()
                    .map(|(_, d)| d.systems.keys().cloned().collect())
                    .unwrap_or_default();
                state
                    .store()
                    .append_events(vec![NewEvent {
                        systems,
                        actor: Some("server".into()),
                        ..NewEvent::of(
                            state.now_ms(),
                            &endstate_events::Event::InstanceUnassignable(endstate_events::Problems {
                                problems: problems.clone(),
                            }),
                            format!(
                                "{} instances cannot be rendered: {}",
                                problems.len(),
                                problems.join("; ")
                            ),
                        )
                    }])
                    .await?;
            }
            assigned.key = Some(key);
            assigned.blueprint = Some(current.key.clone());
            assigned.target = target;
            assigned.hosts = sets;
            assigned.generations = generations;
            assigned.host_generations = host_generations;
            *lock(&self.catalogues) = assigned
                .hosts
                .iter()
                .map(|(host, set)| {
                    let generation = assigned.host_generations.get(host).copied().unwrap_or_default();
                    (
                        host.clone(),
                        (generation, set.actions.iter().map(|a| a.name.clone()).collect()),
                    )
                })
                .collect();
            state.written();
        }
        for (host, conn) in self.connected() {
            if let (Some(set), Some(generation)) = (assigned.hosts.get(&host), assigned.host_generations.get(&host)) {
                send_set(&host, &conn, set, *generation);
            }
        }
        Ok(())
    }

    /// Sends one host its set, for a connection that just told its actual state: from the
    /// computed sets when they are of the current target and know the host (the runner and
    /// the tick keep them current), else after a full [`refresh`](Self::refresh). Thousands of
    /// agents reconnecting at once thus cost one set each, not a refresh of every host each.
    pub(crate) async fn refresh_host(&self, state: &AppState, host: &str) -> Result<(), ApiError> {
        // The blueprint alone decides what the host runs; the hosts in service (read in full,
        // thousands of rows) only decide which hosts get a set, and the periodic refresh keeps
        // up with them. So a resync reads no host list: with 10,000 agents reconnecting, that
        // read per agent made the resyncs quadratic.
        let current = state.current().await?;
        if self.send_computed(host, &current.key).await {
            return Ok(());
        }
        let _refreshing = self.refreshing.lock().await;
        if self.send_computed(host, &current.key).await {
            return Ok(());
        }
        self.refresh(state).await
    }

    /// Sends a host its set from the computed sets, when they are of this blueprint and know the host.
    async fn send_computed(&self, host: &str, blueprint: &str) -> bool {
        let assigned = self.assigned.lock().await;
        if assigned.blueprint.as_deref() != Some(blueprint) {
            return false;
        }
        let (Some(set), Some(generation)) = (assigned.hosts.get(host), assigned.host_generations.get(host)) else {
            return false;
        };
        if let Some(conn) = self.connection(host) {
            send_set(host, &conn, set, *generation);
        }
        true
    }

    /// Every assigned instance of a connected host with the port Prometheus scrapes (`metrics`,
    /// else `http`, else the first): (host, address, instance id, component key, version, port).
    pub(crate) async fn scrape_targets(&self) -> Vec<(String, std::net::IpAddr, String, String, String, u16)> {
        let assigned = self.assigned.lock().await;
        let mut out = Vec::new();
        for (host, set) in &assigned.hosts {
            let Some(conn) = self.connection(host) else {
                continue;
            };
            for instance in &set.instances {
                let port = ["metrics", "http"]
                    .iter()
                    .find_map(|name| instance.ports.get(*name))
                    .or_else(|| instance.ports.values().next());
                let (Some(port), Some(meta)) = (port, set.index.get(&instance.id.0)) else {
                    continue;
                };
                out.push((
                    host.clone(),
                    conn.peer_ip,
                    instance.id.0.clone(),
                    meta.component_key.clone(),
                    meta.version.clone(),
                    *port,
                ));
            }
        }
        out
    }

    /// What the hub knows of one instance: what its agent last reported, and the generation its
    /// assignment last changed at (`None` when it is not assigned).
    pub(crate) async fn observed(&self, host: &str, instance: &str) -> (Option<Live>, Option<u64>) {
        let generation = self
            .assigned
            .lock()
            .await
            .generations
            .get(&(host.to_owned(), instance.to_owned()))
            .copied();
        let live = lock(&self.live).get(host).and_then(|l| l.get(instance)).cloned();
        (live, generation)
    }

    /// Whether the target revision is really reached: every assigned instance observed running,
    /// healthy, at its version and at its host's current generation. `Err` says what is missing.
    pub(crate) async fn progress(
        &self,
        state: &AppState,
        revision: RevisionId,
    ) -> Result<Result<usize, String>, ApiError> {
        let assigned = self.assigned.lock().await;
        if assigned.target != Some(revision) {
            return Ok(Err(format!(
                "the instance sets of revision {} are not computed yet",
                revision.0
            )));
        }
        let _ = state;
        let mut total = 0;
        let mut waiting = Vec::new();
        for (host, set) in &assigned.hosts {
            let live = self.live_of(host);
            for (id, meta) in &set.index {
                let generation = assigned
                    .generations
                    .get(&(host.clone(), id.clone()))
                    .copied()
                    .unwrap_or(0);
                total += 1;
                let seen = live.get(id);
                let ok = seen.is_some_and(|l| {
                    l.state == Some(InstanceStateWord::Running)
                        && l.healthy == Some(true)
                        && l.version == meta.version
                        && l.generation >= generation
                });
                if !ok {
                    let what = match seen {
                        None => "not observed yet".to_owned(),
                        Some(l) => format!(
                            "{} {}{}",
                            l.state.map_or("unknown", word),
                            l.version,
                            match l.healthy {
                                Some(true) => ", healthy",
                                Some(false) => ", unhealthy",
                                None => "",
                            }
                        ),
                    };
                    waiting.push(format!("{id} on {host} ({what})"));
                }
            }
        }
        if waiting.is_empty() {
            Ok(Ok(total))
        } else {
            let shown: Vec<&str> = waiting.iter().take(3).map(String::as_str).collect();
            let more = if waiting.len() > 3 {
                format!(" and {} more", waiting.len() - 3)
            } else {
                String::new()
            };
            Ok(Err(format!(
                "{} of {total} instances at the new revision; waiting for {}{more}",
                total - waiting.len(),
                shown.join(", ")
            )))
        }
    }

    /// Marks hosts unreachable whose keepalives stopped, and hosts the store believes reachable
    /// that did not reconnect since this server started.
    pub(crate) async fn sweep(&self, state: &AppState) -> Result<(), ApiError> {
        let now = state.now_ms();
        // Declared dead after 2.5 intervals of silence (two keepalives missed), looked at every
        // quarter interval: detected within KEEPALIVE_MISSES (3) intervals of the last keepalive.
        let limit =
            i64::try_from(self.config.keepalive_interval.as_millis() * u128::from(KEEPALIVE_MISSES * 2 - 1) / 2)
                .unwrap_or(i64::MAX);
        for (host, conn) in self.connected() {
            let heard = conn.last_heard_ms.load(Ordering::Relaxed);
            if now - heard > limit {
                tracing::warn!(host, silent_ms = now - heard, "Agent missed its keepalives; closing.");
                if self.unregister(&host, conn.id) {
                    conn.close.notify_one();
                    mark_unreachable(state, self, &host, &format!("no keepalive for {} ms", now - heard)).await?;
                }
            }
        }
        if now - self.started_ms > limit {
            for agent in state.store().list_agents().await? {
                if agent.reachable == Some(true) && self.connection(&agent.host.0).is_none() {
                    mark_unreachable(
                        state,
                        self,
                        &agent.host.0,
                        "it did not reconnect after the server started",
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }
}

/// Sends a connection its host's set unless it has seen that generation.
fn send_set(host: &str, conn: &ConnHandle, set: &assign::HostAssignments, generation: u64) {
    if conn.sent_generation.load(Ordering::Relaxed) == generation {
        return;
    }
    let message = FromServer::DesiredInstances(DesiredInstances {
        generation: Generation(generation),
        instances: set.instances.clone(),
        checks: set.checks.clone(),
        actions: set.actions.clone(),
    });
    // Never wait on one agent's full outbox here: it is retried on the next round.
    if conn.tx.try_send(message).is_ok() {
        conn.sent_generation.store(generation, Ordering::Relaxed);
        tracing::info!(
            host,
            generation,
            instances = set.instances.len(),
            "Desired instances sent."
        );
    }
}

/// Records a host as unreachable and its instances as unknown (not dead), on the timeline.
pub(crate) async fn mark_unreachable(state: &AppState, hub: &Hub, host: &str, reason: &str) -> Result<(), ApiError> {
    let host_lock = hub.host_lock(host);
    let _guard = host_lock.lock().await;
    if hub.connection(host).is_some() {
        // It reconnected meanwhile: that connection's hello decides.
        return Ok(());
    }
    let name = HostName(host.to_owned());
    let Some(agent) = state.store().get_agent(&name).await? else {
        return Ok(());
    };
    if agent.reachable == Some(false) {
        return Ok(());
    }
    let now = state.now_ms();
    let instances = state
        .store()
        .list_instances(endstate_store::InstanceFilter {
            system: None,
            host: Some(name.clone()),
        })
        .await?;
    let systems: Vec<String> = instances.iter().map(|i| i.system.clone()).collect();
    let event = NewEvent {
        systems: systems.clone(),
        host: Some(host.to_owned()),
        actor: Some("server".into()),
        ..NewEvent::of(
            now,
            &endstate_events::Event::HostUnreachable(endstate_events::HostUnreachable {
                reason: reason.to_string(),
                instances: instances.len() as u64,
            }),
            format!(
                "host {host} is unreachable: {reason}; its {} instances are unknown",
                instances.len()
            ),
        )
    };
    state
        .store()
        .set_agent_reachable(&name, false, None, vec![event])
        .await?;
    state.note_unreachable(host, now);
    crate::monitor::keepalive(state, host, false, &format!("unreachable: {reason}"), &systems).await?;
    let transitions: Vec<InstanceTransition> = instances
        .iter()
        .map(|i| InstanceTransition {
            component_key: i.component_key.clone(),
            host: name.clone(),
            slot: i.slot,
            actual: ActualInstance {
                version: i.actual.as_ref().and_then(|a| a.version.clone()),
                status: Status::Unknown,
                state: "unknown".into(),
                since_ms: now,
            },
            change: None,
            actor: Some("server".into()),
        })
        .collect();
    if !transitions.is_empty() {
        let batch = ObservationBatch {
            expect_last_seq: agent.last_seq,
            last_seq: agent.last_seq,
            transitions,
            events: Vec::new(),
        };
        // A batch of the agent racing this one only delays the marking to the next sweep.
        if let Err(error) = state.store().ingest_observations(&name, batch).await {
            tracing::debug!(host, error = %error, "Instances not marked unknown this round.");
        }
    }
    hub.update_live(host, |live| {
        for l in live.values_mut() {
            l.state = None;
            l.healthy = None;
        }
    });
    state.written();
    tracing::warn!(host, reason, "Host unreachable.");
    Ok(())
}

/// What identifies a rendering: the blueprint's key (the revision in force, the change rolling
/// out, its released waves, the hosts each was placed on) and the hosts in service with their
/// labels (every one gets a set; checks and actions follow labels). The sets are recomputed when
/// it changes.
fn rendering_key(current: &crate::blueprint::Current, hosts: &[HostInfo]) -> String {
    format!("{};in_service={}", current.key, hosts_key(hosts))
}

fn hosts_key(hosts: &[HostInfo]) -> String {
    serde_json::to_string(&hosts.iter().map(|h| (&h.name, &h.labels)).collect::<Vec<_>>()).unwrap_or_default()
}

/// The status an instance has, from its state and health.
pub(crate) fn status_of(state: InstanceStateWord, healthy: Option<bool>) -> Status {
    match (state, healthy) {
        (InstanceStateWord::Running, Some(true)) => Status::Healthy,
        (InstanceStateWord::Running, Some(false)) => Status::Unhealthy,
        (InstanceStateWord::Running | InstanceStateWord::Starting | InstanceStateWord::BackingOff, _) => {
            Status::Pending
        }
        (InstanceStateWord::SpawnFailed | InstanceStateWord::Exited, _) => Status::Unhealthy,
        (InstanceStateWord::Stopping | InstanceStateWord::Stopped, _) => Status::Unknown,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[async_trait::async_trait]
impl Fleet for Hub {
    async fn refresh(&self, state: &AppState) -> Result<(), ApiError> {
        Hub::refresh(self, state).await
    }

    async fn progress(&self, state: &AppState, revision: RevisionId) -> Result<Result<usize, String>, ApiError> {
        Hub::progress(self, state, revision).await
    }

    fn connected(&self, host: &str) -> bool {
        self.connection(host).is_some()
    }

    async fn observed(&self, host: &str, instance: &str) -> (Option<Live>, Option<u64>) {
        Hub::observed(self, host, instance).await
    }
}
