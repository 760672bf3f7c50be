//! The normalised desired state: what [`crate::load`] produces from a valid spec.
//!
//! Every reference is resolved and every default filled in, so consumers (the planner, the server,
//! the policy gate) never look at YAML. This is a stored format (canonical JSON in desired-state
//! revisions): change it only together with a store migration.

use std::collections::BTreeMap;

use endstate_types::{Labels, Selector};
use serde::{Deserialize, Serialize};

use crate::duration::Duration;

/// A whole desired state: every object declared by a spec directory, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredState {
    /// Systems by name.
    pub systems: BTreeMap<String, System>,
    /// Components by `system/component`.
    pub components: BTreeMap<String, Component>,
    /// Checks by name.
    pub checks: BTreeMap<String, Check>,
    /// Actions by name.
    pub actions: BTreeMap<String, Action>,
    /// Policies by name.
    pub policies: BTreeMap<String, Policy>,
    /// Static inventory entries (machines without an agent) by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hosts: BTreeMap<String, StaticHost>,
    /// The Git source that declares each object it owns, by `System/NAME`, `Policy/NAME` or
    /// `Host/NAME` (a system's components, checks and actions go with it). An object absent here
    /// was applied through the API. Set by the server when it composes a revision, never by a
    /// spec file.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub owners: BTreeMap<String, String>,
    /// The commit each Git source was at when this desired state was composed, by source name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sources: BTreeMap<String, SourceCommit>,
}

/// The commit of a Git source a desired state holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceCommit {
    /// The repository, without credentials.
    pub repository: String,
    /// The branch followed.
    pub branch: String,
    /// The full commit id.
    pub commit: String,
    /// `Name <email>`.
    pub author: String,
    /// The first line of the message.
    pub subject: String,
}

/// A machine without an agent, declared in the spec so it is in the inventory: network gear, a
/// managed database, an appliance. Nothing is placed on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticHost {
    pub name: String,
    pub description: String,
    pub labels: Labels,
    /// What is known about it, as text.
    pub facts: BTreeMap<String, String>,
    /// The systems it serves, sorted.
    pub systems: Vec<String>,
}

/// Something people operate. Aggregates other systems through `subsystems` (many-to-many).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct System {
    pub name: String,
    pub description: String,
    pub owners: Vec<String>,
    pub escalation: Option<Escalation>,
    pub links: Vec<Link>,
    pub labels: Labels,
    /// Names of the systems this one aggregates, sorted: those listed and those its
    /// `subsystem_selector` matched when the revision was validated.
    pub subsystems: Vec<String>,
    /// The selector that added members, as declared (`tier: storage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subsystem_selector: Option<Selector>,
}

/// Whom to escalate to, and how to reach them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Escalation {
    pub contact: String,
    pub pager: Option<String>,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub url: Option<String>,
}

/// A link shown next to a system (dashboard, runbook, repository).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub title: String,
    pub url: String,
}

/// A leaf workload of a system.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    /// The system it belongs to.
    pub system: String,
    /// Its name, unique within the system.
    pub name: String,
    pub description: String,
    pub artifact: Artifact,
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub config_files: Vec<ConfigFile>,
    /// Whom the instances run as (absent: the agent's user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as: Option<RunAs>,
    pub ports: Vec<Port>,
    pub health: Option<Health>,
    pub placement: Placement,
    pub rollout: Rollout,
    /// Metric gates checked while a change of this component rolls out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<Gate>,
    /// Components this one depends on, as `system/component` keys, sorted and deduplicated.
    pub depends_on: Vec<String>,
}

/// A metric gate: a Prometheus query and the bounds its value must stay within.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    pub name: String,
    /// A PromQL instant query giving one number (empty for a check gate).
    pub prometheus: String,
    /// A check gate: the check (`system/check`) whose latest results on the component's
    /// instances are the measure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    /// With `check`: the performance-data label read (the largest value among the instances);
    /// without it, the measure is the number of instances whose latest result is not OK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perfdata: Option<String>,
    /// At most this (finite: validation refuses anything else).
    pub max: Option<f64>,
    /// At least this (finite).
    pub min: Option<f64>,
    /// At most this many times the same query for the version in force (finite, above 0): the
    /// query's `{{ version }}` is replaced by each version in turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ratio_to_baseline: Option<f64>,
}

impl Gate {
    /// The query for one version (`{{ version }}` replaced; a query without it is the same for all).
    pub fn query_for(&self, version: &str) -> String {
        self.prometheus
            .replace("{{ version }}", version)
            .replace("{{version}}", version)
    }

    /// Whether the query names the version.
    pub fn names_version(&self) -> bool {
        self.prometheus.contains("{{ version }}") || self.prometheus.contains("{{version}}")
    }
}

// The bounds are finite numbers (validation refuses NaN and infinities), so equality is total.
impl Eq for Gate {}

/// What to run, at which version, from where.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub version: String,
    pub source: ArtifactSource,
}

/// Where an artifact comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactSource {
    /// A path on the host.
    Path { path: String },
    /// An `http`/`https` download, checked against its SHA-256 (lowercase hex).
    Url { url: String, sha256: String },
}

/// The user, and optionally the group, an instance runs as.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunAs {
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// A file rendered from a template for every instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigFile {
    pub path: String,
    pub template: String,
}

/// A named port an instance listens on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    pub name: String,
    /// A fixed port number; `None` lets the agent pick a free one.
    pub number: Option<u16>,
    /// Whether only one instance per host may hold it (the planner orders conflicting changes).
    pub exclusive: bool,
}

/// How an instance's health is probed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

/// One health probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Probe {
    /// An HTTP GET on a declared port; 2xx is healthy.
    Http { port: String, path: String },
    /// A TCP connect on a declared port.
    Tcp { port: String },
    /// A command; exit status 0 is healthy.
    Exec { command: String, args: Vec<String> },
}

/// Where instances go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Hosts eligible for instances (empty: every host).
    pub selector: Selector,
    pub count: Count,
    /// A host label to spread instances evenly over (e.g. `zone`).
    pub spread_by: Option<String>,
}

/// How many instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Count {
    /// This many instances on every matching host.
    PerHost(u32),
    /// This many instances in total over the matching hosts.
    Total(u32),
}

/// How a change to a component is rolled out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// Instances changed first, alone, before any batch (0: no canary).
    pub canary: u32,
    pub batch: Batch,
    /// Instances that may be down at once.
    pub max_unavailable: u32,
    /// A failure-domain host label (e.g. `zone`): finish one domain before starting the next.
    pub one_domain_at_a_time: Option<String>,
    /// A pause between batches.
    pub pause: Option<Duration>,
    /// How long an instance must stay healthy before it counts as done.
    pub min_healthy_time: Duration,
    pub on_failure: OnFailure,
}

/// The size of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Batch {
    /// This many instances per batch.
    Size(u32),
    /// This percentage (1 to 100) of the instances per batch, rounded up.
    Percent(u32),
}

/// What a failed rollout does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Stop and wait for a person.
    Halt,
    /// Undo the change on every instance already changed.
    Rollback,
}

/// A monitoring check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub system: String,
    pub probe: CheckProbe,
    pub interval: Duration,
    pub timeout: Duration,
    /// A random delay of up to this much, so checks of many hosts do not run in lockstep.
    pub splay: Duration,
    pub targets: Targets,
}

/// What a check runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckProbe {
    /// A Nagios-convention plugin: exit 0 ok, 1 warning, 2 critical, 3 unknown.
    Exec { command: String, args: Vec<String> },
    /// An HTTP GET.
    Http {
        target: HttpTarget,
        expect_status: u16,
        body_match: Option<String>,
        latency_threshold: Option<Duration>,
    },
    /// A TCP connect.
    Tcp { host: Option<String>, port: PortRef },
}

/// Where an HTTP check goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpTarget {
    /// A full URL.
    Url(String),
    /// A port and path on each target.
    Port { port: PortRef, path: String },
}

/// A port: a number, or the name of a port declared by the target component.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortRef {
    Number(u16),
    Name(String),
}

/// What a check or an action runs on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Targets {
    /// Every instance of a component (`system/component`).
    Component(String),
    /// Every host matching a selector.
    Hosts(Selector),
}

/// A named, parameterised operational action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    pub name: String,
    pub system: String,
    pub description: String,
    pub parameters: BTreeMap<String, Parameter>,
    /// The argv, each element a template that may use `{{ params.<name> }}`.
    pub command: Vec<String>,
    /// Run `command[0]` through `sh -c` (then `command` has exactly one element).
    pub shell: bool,
    pub targets: Targets,
    pub concurrency: u32,
    pub timeout: Duration,
    pub allow_during_rollout: bool,
    pub reentrant: bool,
    pub engagement: Engagement,
    pub escalate_to: Option<String>,
    /// At most this many runs within a sliding window.
    #[serde(default)]
    pub rate_limit: RateLimit,
}

/// At most `runs` runs within `per`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    pub runs: u32,
    pub per: Duration,
}

impl Default for RateLimit {
    /// 10 runs per 10 minutes.
    fn default() -> Self {
        RateLimit {
            runs: 10,
            per: Duration::from_secs(600),
        }
    }
}

/// One declared parameter of an action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parameter {
    #[serde(rename = "type")]
    pub kind: ParameterType,
    /// Allowed values of an `enum` parameter.
    pub values: Vec<String>,
    /// A regular expression a `string` parameter must match (whole value).
    pub pattern: Option<String>,
    pub min: Option<i64>,
    pub max: Option<i64>,
    pub default: Option<ParamValue>,
    pub required: bool,
}

/// The type of an action parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ParameterType {
    String,
    Integer,
    Boolean,
    Enum,
}

/// A parameter value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    Boolean(bool),
    Integer(i64),
    String(String),
}

/// Who may run an action, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Engagement {
    /// Anyone allowed to act on the system runs it directly.
    Direct,
    /// A second person approves each run.
    Approval,
    /// Only the escalation contact (`escalate_to`) may run it.
    Escalate,
}

/// Rules that apply to a set of systems.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub name: String,
    pub applies_to: AppliesTo,
    pub rules: Rules,
}

/// Which systems a policy covers: those named, plus those whose labels match the selector.
/// When both are empty, every system.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliesTo {
    pub systems: Vec<String>,
    pub selector: Selector,
}

/// The rules of a policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rules {
    pub require_owners: bool,
    pub require_escalation: bool,
    /// Empty: every source allowed.
    pub allowed_artifact_sources: Vec<SourceKind>,
    pub max_batch_percent: Option<u32>,
    pub freeze_windows: Vec<FreezeWindow>,
    /// The blast radius allowed (`None`: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<MaxInFlight>,
}

/// At most this much changing at once (each at least 1 when given).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaxInFlight {
    /// Hosts with a step in flight.
    pub hosts: Option<u32>,
    /// Instances with a step in flight.
    pub instances: Option<u32>,
}

impl MaxInFlight {
    /// The tighter of two limits, field by field.
    pub fn tighter(self, other: MaxInFlight) -> MaxInFlight {
        let min = |a: Option<u32>, b: Option<u32>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        MaxInFlight {
            hosts: min(self.hosts, other.hosts),
            instances: min(self.instances, other.instances),
        }
    }
}

impl Policy {
    /// Whether the policy covers `system` of `desired`: named, matched by the selector, or every
    /// system when it names none and has no selector.
    pub fn covers(&self, system: &str, desired: &DesiredState) -> bool {
        let applies = &self.applies_to;
        (applies.systems.is_empty() && applies.selector.0.is_empty())
            || applies.systems.iter().any(|s| s == system)
            || (!applies.selector.0.is_empty()
                && desired
                    .systems
                    .get(system)
                    .is_some_and(|s| applies.selector.matches(&s.labels)))
    }
}

impl DesiredState {
    /// The blast radius allowed for `system`: the tightest of the policies covering it.
    pub fn max_in_flight(&self, system: &str) -> Option<(MaxInFlight, Vec<String>)> {
        let mut out: Option<(MaxInFlight, Vec<String>)> = None;
        for policy in self.policies.values() {
            let Some(limit) = policy.rules.max_in_flight else {
                continue;
            };
            if !policy.covers(system, self) {
                continue;
            }
            out = Some(match out {
                Some((seen, mut names)) => {
                    names.push(policy.name.clone());
                    (seen.tighter(limit), names)
                }
                None => (limit, vec![policy.name.clone()]),
            });
        }
        out
    }
}

/// A kind of artifact source, for policies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// A local path on the host.
    Path,
    /// An `https://` URL.
    Https,
    /// A plain `http://` URL.
    Http,
}

/// A recurring window during which no change may start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreezeWindow {
    /// When the window opens: a 5-field cron expression (minute hour day-of-month month day-of-week), UTC.
    pub cron: String,
    pub duration: Duration,
    pub reason: String,
}

// === impl DesiredState ===

impl DesiredState {
    /// The system and every system reachable from it through `subsystems`, deduplicated and sorted.
    ///
    /// Unknown names are included as given (a valid desired state has none). Cycles cannot occur
    /// in a valid desired state, and are harmless here anyway.
    pub fn subsystems_closure(&self, system: &str) -> Vec<String> {
        let mut seen = std::collections::BTreeSet::new();
        let mut stack = vec![system.to_owned()];
        while let Some(name) = stack.pop() {
            if let Some(found) = self.systems.get(&name) {
                stack.extend(found.subsystems.iter().filter(|sub| !seen.contains(*sub)).cloned());
            }
            seen.insert(name);
        }
        seen.into_iter().collect()
    }

    /// The components of one system (not of its subsystems), in name order.
    pub fn components_of<'a>(&'a self, system: &'a str) -> impl Iterator<Item = (&'a String, &'a Component)> + 'a {
        let prefix = format!("{system}/");
        self.components
            .range(prefix.clone()..)
            .take_while(move |(key, _)| key.starts_with(&prefix))
    }
}

impl Component {
    /// The `system/component` key of this component.
    pub fn key(&self) -> String {
        format!("{}/{}", self.system, self.name)
    }
}

impl ArtifactSource {
    /// The kind of source, as policies name it.
    pub fn kind(&self) -> SourceKind {
        match self {
            ArtifactSource::Path { .. } => SourceKind::Path,
            ArtifactSource::Url { url, .. } if url.starts_with("https://") => SourceKind::Https,
            ArtifactSource::Url { .. } => SourceKind::Http,
        }
    }
}
