//! The spec v1 documents exactly as written in YAML: the serde types that are parsed, and from
//! which the JSON Schema is generated. Validation and normalisation live in `validate`.
//!
//! Fields that later checks must point at are `Spanned`, so diagnostics carry their line and column.

use std::collections::BTreeMap;
use std::fmt;

use endstate_types::{Labels, SelectorTerm};
use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde_saphyr::{Location, Spanned};

use crate::duration::Duration;
use crate::model::{Batch, Count, Engagement, OnFailure, ParameterType, SourceKind};

/// The only API version of the spec format.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
pub(crate) enum ApiVersion {
    /// Spec v1.
    #[serde(rename = "endstate/v1")]
    V1,
}

macro_rules! kind_marker {
    ($name:ident, $kind:ident) => {
        #[doc = concat!("The kind `", stringify!($kind), "`.")]
        #[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
        pub(crate) enum $name {
            #[doc = concat!("A `", stringify!($kind), "` document.")]
            $kind,
        }
    };
}
kind_marker!(SystemKind, System);
kind_marker!(ComponentKind, Component);
kind_marker!(CheckKind, Check);
kind_marker!(ActionKind, Action);
kind_marker!(PolicyKind, Policy);
kind_marker!(HostKind, Host);

/// Something people operate: a service, a product, a platform. Systems aggregate other systems
/// through `subsystems` (many-to-many: a system may be the subsystem of several others).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "System")]
pub(crate) struct SystemDoc {
    /// Always `endstate/v1`.
    #[serde(rename = "apiVersion")]
    #[allow(dead_code, reason = "parsed so that the schema and unknown-field errors list it")]
    pub(crate) api_version: ApiVersion,
    /// Always `System`.
    #[allow(dead_code, reason = "parsed so that the schema and unknown-field errors list it")]
    pub(crate) kind: SystemKind,
    /// The system's name: lowercase letters, digits, `-`, `_` and `.`, at most 63 characters.
    #[schemars(with = "String")]
    pub(crate) name: Spanned<String>,
    /// What the system is, for someone who has never seen it (shown first to the on-call).
    #[serde(default)]
    pub(crate) description: String,
    /// The teams or people who own the system.
    #[serde(default)]
    pub(crate) owners: Vec<String>,
    /// Whom to escalate to when the owners cannot fix it.
    #[serde(default)]
    pub(crate) escalation: Option<EscalationDoc>,
    /// Dashboards, runbooks, repositories.
    #[serde(default)]
    #[schemars(with = "Vec<LinkDoc>")]
    pub(crate) links: Vec<Spanned<LinkDoc>>,
    /// Labels of the system (`tier: production`), matched by policy selectors.
    #[serde(default)]
    pub(crate) labels: Labels,
    /// Names of the systems this one aggregates.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub(crate) subsystems: Vec<Spanned<String>>,
    /// Also aggregate every system whose labels match this selector (`tier: storage`), resolved
    /// anew for each revision, so a system added later with matching labels joins; never the system itself.
    #[serde(default)]
    #[schemars(with = "Option<SelectorDoc>")]
    pub(crate) subsystem_selector: Option<Spanned<SelectorDoc>>,
}

/// An escalation contact.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EscalationDoc {
    /// The team or person to escalate to.
    pub(crate) contact: String,
    /// A pager target (e.g. a PagerDuty service or an Opsgenie team).
    #[serde(default)]
    pub(crate) pager: Option<String>,
    /// A phone number.
    #[serde(default)]
    pub(crate) phone: Option<String>,
    /// An e-mail address.
    #[serde(default)]
    pub(crate) email: Option<String>,
    /// A page describing how to escalate.
    #[serde(default)]
    pub(crate) url: Option<String>,
}

/// A link shown next to the system.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LinkDoc {
    /// The link's text.
    pub(crate) title: String,
    /// An `http://` or `https://` URL.
    pub(crate) url: String,
}

/// A leaf workload of a system: what to run, where, how to tell it is healthy and how to roll out a change.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Component")]
pub(crate) struct ComponentDoc {
    /// Always `endstate/v1`.
    #[serde(rename = "apiVersion")]
    #[allow(dead_code, reason = "parsed so that the schema and unknown-field errors list it")]
    pub(crate) api_version: ApiVersion,
    /// Always `Component`.
    #[allow(dead_code, reason = "parsed so that the schema and unknown-field errors list it")]
    pub(crate) kind: ComponentKind,
    /// The component's name, unique within its system.
    #[schemars(with = "String")]
    pub(crate) name: Spanned<String>,
    /// The system the component belongs to.
    #[schemars(with = "String")]
    pub(crate) system: Spanned<String>,
    /// What the component does (optional).
    #[serde(default)]
    pub(crate) description: String,
    /// The artifact to run, and its version.
    #[schemars(with = "ArtifactDoc")]
    pub(crate) artifact: Spanned<ArtifactDoc>,
    /// The program to start, relative to the unpacked artifact or absolute.
    #[schemars(with = "String")]
    pub(crate) command: Spanned<String>,
    /// Its arguments; each may use template variables such as `{{ ports.http }}`.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub(crate) args: Vec<Spanned<String>>,
    /// Environment variables; values may use template variables.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, String>")]
    pub(crate) env: BTreeMap<String, Spanned<String>>,
    /// Files rendered from templates for each instance before it starts.
    #[serde(default)]
    pub(crate) config_files: Vec<ConfigFileDoc>,
    /// The user (and group) the instances run as; the agent must run as root. Default: the
    /// agent's own user.
    #[serde(default)]
    #[schemars(with = "Option<RunAsDoc>")]
    pub(crate) run_as: Option<Spanned<RunAsDoc>>,
    /// The ports an instance listens on.
    #[serde(default)]
    #[schemars(with = "Vec<PortDoc>")]
    pub(crate) ports: Vec<Spanned<PortDoc>>,
    /// How to tell an instance is healthy. Without it, a running process counts as healthy.
    #[serde(default)]
    #[schemars(with = "Option<HealthDoc>")]
    pub(crate) health: Option<Spanned<HealthDoc>>,
    /// Which hosts run instances, and how many.
    pub(crate) placement: PlacementDoc,
    /// How a change is rolled out. Every field has a safe default.
    #[serde(default)]
    pub(crate) rollout: RolloutDoc,
    /// Metric gates: Prometheus queries whose value must stay within bounds while a change of
    /// this component rolls out; a breach halts or rolls back the change (`rollout.on_failure`).
    #[serde(default)]
    #[schemars(with = "Vec<GateDoc>")]
    pub(crate) gates: Vec<Spanned<GateDoc>>,
    /// Components that must be up (and changed first) before this one: a name in the same system,
    /// or `system/component`.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub(crate) depends_on: Vec<Spanned<String>>,
}

/// The artifact: a version, and either a local `path` or a `url` with its `sha256`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ArtifactDoc {
    /// The version, as a string (`"2.4.1"`); quote it if it looks like a number.
    #[schemars(with = "String")]
    pub(crate) version: Spanned<String>,
    /// A path on the host (a directory or an archive already there).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub(crate) path: Option<Spanned<String>>,
    /// An `https://` (or `http://`) URL to download; requires `sha256`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub(crate) url: Option<Spanned<String>>,
    /// The SHA-256 of the download, 64 hexadecimal characters.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub(crate) sha256: Option<Spanned<String>>,
}

/// Whom an instance runs as.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunAsDoc {
    /// A user name that exists on the hosts (`www-data`).
    #[schemars(with = "String")]
    pub(crate) user: Spanned<String>,
    /// A group name (default: the user's primary group).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub(crate) group: Option<Spanned<String>>,
}

/// A file rendered for each instance.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFileDoc {
    /// Where to write it, relative to the instance directory or absolute; no `..`.
    #[schemars(with = "String")]
    pub(crate) path: Spanned<String>,
    /// The content, with template variables such as `{{ instance.host }}`.
    #[schemars(with = "String")]
    pub(crate) template: Spanned<String>,
}

/// A gate: a measure and the bounds it must stay within while a change of the component rolls
/// out. The measure is a PromQL instant query (against the server's `--prometheus-url`) or a
/// check of the component's system (the agents' latest results on the component's instances).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct GateDoc {
    /// The gate's name (`error-rate`), unique within the component.
    pub(crate) name: String,
    /// The query; its result must be a single number (a scalar or a one-series vector).
    /// Either this or `check`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub(crate) prometheus: Option<Spanned<String>>,
    /// A check of the component's system whose targets are this component: the value is how
    /// many of the component's instances have a latest result that is not OK (bounds default
    /// to `max: 0`); with `perfdata`, the largest value of that performance-data label among
    /// their latest results. Either this or `prometheus`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub(crate) check: Option<Spanned<String>>,
    /// With `check`: the performance-data label to read (`time`, `/`), in the plugin's unit.
    #[serde(default)]
    pub(crate) perfdata: Option<String>,
    /// The value must be at most this.
    #[serde(default)]
    pub(crate) max: Option<f64>,
    /// The value must be at least this.
    #[serde(default)]
    pub(crate) min: Option<f64>,
    /// Canary against baseline: the value for the new version must be at most this many times
    /// the value for the version in force. The query names the version with `{{ version }}`.
    /// A new component, or a change that keeps the version, has no baseline: not checked then.
    #[serde(default)]
    pub(crate) max_ratio_to_baseline: Option<f64>,
}

/// A named port.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PortDoc {
    /// The port's name (`http`), used by `health`, checks and `{{ ports.<name> }}`.
    pub(crate) name: String,
    /// A fixed port number. Without it the agent picks a free port for each instance.
    #[serde(default)]
    pub(crate) number: Option<u16>,
    /// Whether only one instance per host may hold this port.
    #[serde(default)]
    pub(crate) exclusive: bool,
}

/// A health probe (exactly one of `http`, `tcp`, `exec`) and how often to run it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct HealthDoc {
    /// An HTTP GET on a declared port; a 2xx answer is healthy.
    #[serde(default)]
    #[schemars(with = "Option<HttpProbeDoc>")]
    pub(crate) http: Option<Spanned<HttpProbeDoc>>,
    /// A TCP connect to a declared port.
    #[serde(default)]
    #[schemars(with = "Option<TcpProbeDoc>")]
    pub(crate) tcp: Option<Spanned<TcpProbeDoc>>,
    /// A command; exit status 0 is healthy.
    #[serde(default)]
    #[schemars(with = "Option<ExecDoc>")]
    pub(crate) exec: Option<Spanned<ExecDoc>>,
    /// Time between probes.
    #[serde(default = "defaults::health_interval")]
    #[schemars(with = "Duration")]
    pub(crate) interval: Spanned<Duration>,
    /// Time after which a probe counts as failed; at most `interval`.
    #[serde(default = "defaults::health_timeout")]
    #[schemars(with = "Duration")]
    pub(crate) timeout: Spanned<Duration>,
    /// Consecutive successes before an instance is healthy.
    #[serde(default = "defaults::one")]
    pub(crate) healthy_threshold: u32,
    /// Consecutive failures before an instance is unhealthy.
    #[serde(default = "defaults::three")]
    pub(crate) unhealthy_threshold: u32,
}

/// An HTTP probe.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct HttpProbeDoc {
    /// The name of a port declared in `ports`.
    #[schemars(with = "String")]
    pub(crate) port: Spanned<String>,
    /// The path to GET.
    #[serde(default = "defaults::slash")]
    pub(crate) path: String,
}

/// A TCP probe.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TcpProbeDoc {
    /// The name of a port declared in `ports`.
    #[schemars(with = "String")]
    pub(crate) port: Spanned<String>,
}

/// A command to run.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExecDoc {
    /// The program.
    #[schemars(with = "String")]
    pub(crate) command: Spanned<String>,
    /// Its arguments.
    #[serde(default)]
    pub(crate) args: Vec<String>,
}

/// Where instances go.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PlacementDoc {
    /// Host labels an eligible host must have (`role: web`, `zone: [a, b]`); empty means every host.
    #[serde(default = "defaults::selector")]
    #[schemars(with = "SelectorDoc")]
    pub(crate) selector: Spanned<SelectorDoc>,
    /// `{per_host: N}` instances on every eligible host, or `{total: N}` instances over them.
    #[schemars(with = "Count")]
    pub(crate) count: Spanned<Count>,
    /// A host label (e.g. `zone`) to spread `total` instances evenly over.
    #[serde(default)]
    pub(crate) spread_by: Option<String>,
}

/// The rollout strategy of a component.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RolloutDoc {
    /// Instances changed first, alone, and watched for `min_healthy_time` before anything else (0: none).
    #[serde(default = "defaults::one_spanned")]
    #[schemars(with = "u32", default = "defaults::one")]
    pub(crate) canary: Spanned<u32>,
    /// The size of each following batch: `{size: N}` instances or `{percent: P}` (1 to 100) of them.
    #[serde(default = "defaults::batch")]
    #[schemars(with = "Batch")]
    pub(crate) batch: Spanned<Batch>,
    /// Instances that may be unavailable at the same time (0: every replacement starts before the old one stops).
    #[serde(default = "defaults::one_spanned")]
    #[schemars(with = "u32", default = "defaults::one")]
    pub(crate) max_unavailable: Spanned<u32>,
    /// A failure-domain host label (e.g. `zone`): finish one domain before touching the next.
    #[serde(default)]
    pub(crate) one_domain_at_a_time: Option<String>,
    /// A pause between batches.
    #[serde(default)]
    pub(crate) pause: Option<Duration>,
    /// How long a changed instance must stay healthy before it counts as done.
    #[serde(default = "defaults::min_healthy_time")]
    pub(crate) min_healthy_time: Duration,
    /// What to do when a changed instance does not become healthy: `halt` (wait for a person) or `rollback`.
    #[serde(default = "defaults::on_failure")]
    pub(crate) on_failure: OnFailure,
}

/// A monitoring check: exactly one of `exec`, `http`, `tcp`, run on its `targets`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Check")]
pub(crate) struct CheckDoc {
    /// Always `endstate/v1`.
    #[serde(rename = "apiVersion")]
    #[allow(dead_code, reason = "parsed so that the schema and unknown-field errors list it")]
    pub(crate) api_version: ApiVersion,
    /// Always `Check`.
    #[allow(dead_code, reason = "parsed so that the schema and unknown-field errors list it")]
    pub(crate) kind: CheckKind,
    /// The check's name, unique among checks.
    #[schemars(with = "String")]
    pub(crate) name: Spanned<String>,
    /// The system the check watches.
    #[schemars(with = "String")]
    pub(crate) system: Spanned<String>,
    /// A Nagios-convention plugin: exit 0 ok, 1 warning, 2 critical, 3 unknown; the first output line is the summary.
    #[serde(default)]
    #[schemars(with = "Option<ExecDoc>")]
    pub(crate) exec: Option<Spanned<ExecDoc>>,
    /// An HTTP request.
    #[serde(default)]
    #[schemars(with = "Option<HttpCheckDoc>")]
    pub(crate) http: Option<Spanned<HttpCheckDoc>>,
    /// A TCP connect.
    #[serde(default)]
    #[schemars(with = "Option<TcpCheckDoc>")]
    pub(crate) tcp: Option<Spanned<TcpCheckDoc>>,
    /// Time between runs.
    #[serde(default = "defaults::check_interval")]
    #[schemars(with = "Duration")]
    pub(crate) interval: Spanned<Duration>,
    /// Time after which a run counts as critical; at most `interval`.
    #[serde(default = "defaults::check_timeout")]
    #[schemars(with = "Duration")]
    pub(crate) timeout: Spanned<Duration>,
    /// A random delay of up to this much before each run, so many hosts do not run in lockstep.
    #[serde(default)]
    pub(crate) splay: Duration,
    /// Where the check runs: `{component: name}` or `{selector: {labels}}`.
    #[schemars(with = "TargetsDoc")]
    pub(crate) targets: Spanned<TargetsDoc>,
}

/// An HTTP check: a `url`, or a `port` (and `path`) on each target.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct HttpCheckDoc {
    /// A full `http://` or `https://` URL.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub(crate) url: Option<Spanned<String>>,
    /// A port number, or the name of a port of the target component.
    #[serde(default)]
    #[schemars(with = "Option<PortRefDoc>")]
    pub(crate) port: Option<Spanned<PortRefDoc>>,
    /// The path to request on `port`.
    #[serde(default)]
    pub(crate) path: Option<String>,
    /// The expected HTTP status.
    #[serde(default = "defaults::status_ok")]
    #[schemars(with = "u16", default = "defaults::status_ok_plain")]
    pub(crate) expect_status: Spanned<u16>,
    /// A substring the body must contain.
    #[serde(default)]
    pub(crate) body_match: Option<String>,
    /// Answers slower than this count as a warning.
    #[serde(default)]
    pub(crate) latency_threshold: Option<Duration>,
}

/// A TCP check.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TcpCheckDoc {
    /// The host to connect to; by default each target host.
    #[serde(default)]
    pub(crate) host: Option<String>,
    /// A port number, or the name of a port of the target component.
    #[schemars(with = "PortRefDoc")]
    pub(crate) port: Spanned<PortRefDoc>,
}

/// A port number, or a port name.
#[derive(Debug, Clone)]
pub(crate) enum PortRefDoc {
    Number(u64),
    Name(String),
}

/// What a check or an action runs on: exactly one of `component` and `selector`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TargetsDoc {
    /// Every instance of this component (a name in the same system, or `system/component`).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub(crate) component: Option<Spanned<String>>,
    /// Every host with these labels.
    #[serde(default)]
    #[schemars(with = "Option<SelectorDoc>")]
    pub(crate) selector: Option<Spanned<SelectorDoc>>,
}

/// A named, parameterised operational action, and its rules of engagement.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Action")]
pub(crate) struct ActionDoc {
    /// Always `endstate/v1`.
    #[serde(rename = "apiVersion")]
    #[allow(dead_code, reason = "parsed so that the schema and unknown-field errors list it")]
    pub(crate) api_version: ApiVersion,
    /// Always `Action`.
    #[allow(dead_code, reason = "parsed so that the schema and unknown-field errors list it")]
    pub(crate) kind: ActionKind,
    /// The action's name, unique among actions.
    #[schemars(with = "String")]
    pub(crate) name: Spanned<String>,
    /// The system the action operates on.
    #[schemars(with = "String")]
    pub(crate) system: Spanned<String>,
    /// What the action does and when to use it.
    #[serde(default)]
    pub(crate) description: String,
    /// The parameters a caller supplies, by name.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, ParameterDoc>")]
    pub(crate) parameters: BTreeMap<String, Spanned<ParameterDoc>>,
    /// The argv to run; elements may use `{{ params.<name> }}` and instance variables.
    #[schemars(with = "Vec<String>")]
    pub(crate) command: Spanned<Vec<Spanned<String>>>,
    /// Run the single `command` element through `sh -c`. Off by default: parameters are then never
    /// interpreted by a shell.
    #[serde(default = "defaults::no")]
    #[schemars(with = "bool", default = "defaults::no_plain")]
    pub(crate) shell: Spanned<bool>,
    /// Where the action runs: `{component: name}` or `{selector: {labels}}`.
    #[schemars(with = "TargetsDoc")]
    pub(crate) targets: Spanned<TargetsDoc>,
    /// Targets it runs on at the same time.
    #[serde(default = "defaults::one_spanned")]
    #[schemars(with = "u32", default = "defaults::one")]
    pub(crate) concurrency: Spanned<u32>,
    /// Time after which a run is stopped and counts as failed.
    #[serde(default = "defaults::action_timeout")]
    pub(crate) timeout: Duration,
    /// Whether it may run while a rollout changes the same system.
    #[serde(default)]
    pub(crate) allow_during_rollout: bool,
    /// Whether a second run may start while one is in progress.
    #[serde(default)]
    pub(crate) reentrant: bool,
    /// Who may run it: `direct` (anyone allowed on the system), `approval` (a second person approves)
    /// or `escalate` (only `escalate_to`).
    #[serde(default = "defaults::engagement")]
    #[schemars(with = "Engagement", default = "defaults::engagement_plain")]
    pub(crate) engagement: Spanned<Engagement>,
    /// The team or person to escalate to; required with `engagement: escalate`.
    #[serde(default)]
    pub(crate) escalate_to: Option<String>,
    /// At most `runs` runs of it within `per` (default 10 per 10m); more are refused until the
    /// window moves on.
    #[serde(default)]
    pub(crate) rate_limit: Option<RateLimitDoc>,
}

/// An action's rate limit.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RateLimitDoc {
    /// How many runs (at least 1).
    #[schemars(with = "u32")]
    pub(crate) runs: Spanned<u32>,
    /// Within this sliding window (e.g. `10m`).
    pub(crate) per: Duration,
}

/// An action parameter.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ParameterDoc {
    /// `string`, `integer`, `boolean` or `enum`.
    #[serde(rename = "type")]
    pub(crate) kind: ParameterType,
    /// The allowed values of an `enum` parameter.
    #[serde(default)]
    pub(crate) values: Vec<String>,
    /// A regular expression the whole value of a `string` parameter must match.
    #[serde(default)]
    pub(crate) pattern: Option<String>,
    /// The smallest value of an `integer` parameter.
    #[serde(default)]
    pub(crate) min: Option<i64>,
    /// The largest value of an `integer` parameter.
    #[serde(default)]
    pub(crate) max: Option<i64>,
    /// The value used when the caller gives none; must itself be valid.
    #[serde(default)]
    #[schemars(with = "Option<ParamValueDoc>")]
    pub(crate) default: Option<ParamValueDoc>,
    /// Whether the caller must give a value.
    #[serde(default)]
    pub(crate) required: bool,
}

/// A parameter value as written: a boolean, an integer or a string.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ParamValueDoc {
    Boolean(bool),
    Integer(i64),
    Float(f64),
    String(String),
}

/// A static inventory entry: a machine without an agent (network gear, a managed database, an
/// appliance), listed in the inventory with its labels and facts. Nothing is placed on it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Host")]
pub(crate) struct HostDoc {
    /// Always `endstate/v1`.
    #[serde(rename = "apiVersion")]
    #[allow(dead_code, reason = "parsed so that the schema and unknown-field errors list it")]
    pub(crate) api_version: ApiVersion,
    /// Always `Host`.
    #[allow(dead_code, reason = "parsed so that the schema and unknown-field errors list it")]
    pub(crate) kind: HostKind,
    /// The host's name, unique among hosts.
    #[schemars(with = "String")]
    pub(crate) name: Spanned<String>,
    /// What it is.
    #[serde(default)]
    pub(crate) description: String,
    /// Its labels (`zone: a`, `role: switch`).
    #[serde(default)]
    pub(crate) labels: Labels,
    /// What is known about it (`vendor: arista`, `model: 7050X`, `ports: 48`): scalars, kept as text.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, String>")]
    pub(crate) facts: BTreeMap<String, ScalarText>,
    /// The systems it serves.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub(crate) systems: Vec<Spanned<String>>,
}

/// Rules for a set of systems.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Policy")]
pub(crate) struct PolicyDoc {
    /// Always `endstate/v1`.
    #[serde(rename = "apiVersion")]
    #[allow(dead_code, reason = "parsed so that the schema and unknown-field errors list it")]
    pub(crate) api_version: ApiVersion,
    /// Always `Policy`.
    #[allow(dead_code, reason = "parsed so that the schema and unknown-field errors list it")]
    pub(crate) kind: PolicyKind,
    /// The policy's name, unique among policies.
    #[schemars(with = "String")]
    pub(crate) name: Spanned<String>,
    /// The systems covered; when empty, every system.
    #[serde(default)]
    pub(crate) applies_to: AppliesToDoc,
    /// The rules.
    #[serde(default)]
    pub(crate) rules: RulesDoc,
}

/// Which systems a policy covers: those listed plus those whose labels match `selector`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AppliesToDoc {
    /// System names.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub(crate) systems: Vec<Spanned<String>>,
    /// System labels.
    #[serde(default)]
    pub(crate) selector: SelectorDoc,
}

/// The rules of a policy.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RulesDoc {
    /// Every covered system must list at least one owner.
    #[serde(default)]
    pub(crate) require_owners: bool,
    /// Every covered system must have an escalation contact.
    #[serde(default)]
    pub(crate) require_escalation: bool,
    /// The artifact sources components of covered systems may use (`path`, `https`, `http`); empty allows all.
    #[serde(default)]
    pub(crate) allowed_artifact_sources: Vec<SourceKind>,
    /// The largest `rollout.batch.percent` allowed (1 to 100); `batch.size` is judged at plan time.
    #[serde(default)]
    #[schemars(with = "Option<u32>")]
    pub(crate) max_batch_percent: Option<Spanned<u32>>,
    /// Recurring windows during which no change may start.
    #[serde(default)]
    pub(crate) freeze_windows: Vec<FreezeWindowDoc>,
    /// The blast radius: at most this much in flight at once (waves are split to fit, and the
    /// Decider checks it before every wave).
    #[serde(default)]
    #[schemars(with = "Option<MaxInFlightDoc>")]
    pub(crate) max_in_flight: Option<Spanned<MaxInFlightDoc>>,
}

/// Limits on what one wave may change at once.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MaxInFlightDoc {
    /// Hosts with a step in flight.
    #[serde(default)]
    pub(crate) hosts: Option<u32>,
    /// Instances with a step in flight.
    #[serde(default)]
    pub(crate) instances: Option<u32>,
}

/// A recurring freeze window.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct FreezeWindowDoc {
    /// When it opens: a 5-field cron expression `minute hour day-of-month month day-of-week`, in UTC.
    #[schemars(with = "String")]
    pub(crate) cron: Spanned<String>,
    /// How long it stays open.
    #[schemars(with = "Duration")]
    pub(crate) duration: Spanned<Duration>,
    /// Why, shown to whoever is blocked by it.
    pub(crate) reason: String,
}

/// A label selector as written: `key: value` or `key: [value, value]`.
#[derive(Debug, Default, Clone)]
pub(crate) struct SelectorDoc(pub(crate) BTreeMap<String, SelectorTerm>);

/// One spec document of any kind, for the JSON Schema only (parsing dispatches on `kind` itself).
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code, clippy::large_enum_variant, reason = "only its schema is used")]
pub(crate) enum AnyDoc {
    System(SystemDoc),
    Component(ComponentDoc),
    Check(CheckDoc),
    Action(ActionDoc),
    Policy(PolicyDoc),
    Host(HostDoc),
}

/// The fields every document starts with, read leniently first to dispatch on `kind`.
#[derive(Debug, Deserialize)]
pub(crate) struct Header {
    #[serde(rename = "apiVersion", default)]
    pub(crate) api_version: Option<Spanned<ScalarText>>,
    #[serde(default)]
    pub(crate) kind: Option<Spanned<ScalarText>>,
}

/// Any scalar, as text (so `kind: 5` is reported as an unknown kind, not a type error).
#[derive(Debug, Clone)]
pub(crate) struct ScalarText(pub(crate) String);

/// A spanned value with no known location, for defaults.
pub(crate) fn unlocated<T>(value: T) -> Spanned<T> {
    Spanned::new(value, Location::UNKNOWN, Location::UNKNOWN)
}

mod defaults {
    use super::*;

    pub(super) fn one() -> u32 {
        1
    }
    pub(super) fn three() -> u32 {
        3
    }
    pub(super) fn one_spanned() -> Spanned<u32> {
        unlocated(1)
    }
    pub(super) fn selector() -> Spanned<SelectorDoc> {
        unlocated(SelectorDoc::default())
    }
    pub(super) fn no() -> Spanned<bool> {
        unlocated(false)
    }
    pub(super) fn no_plain() -> bool {
        false
    }
    pub(super) fn slash() -> String {
        "/".to_owned()
    }
    pub(super) fn health_interval() -> Spanned<Duration> {
        unlocated(Duration::from_secs(10))
    }
    pub(super) fn health_timeout() -> Spanned<Duration> {
        unlocated(Duration::from_secs(2))
    }
    pub(super) fn check_interval() -> Spanned<Duration> {
        unlocated(Duration::from_secs(60))
    }
    pub(super) fn check_timeout() -> Spanned<Duration> {
        unlocated(Duration::from_secs(10))
    }
    pub(super) fn action_timeout() -> Duration {
        Duration::from_secs(300)
    }
    pub(super) fn min_healthy_time() -> Duration {
        Duration::from_secs(10)
    }
    pub(super) fn batch() -> Spanned<Batch> {
        unlocated(Batch::Size(1))
    }
    pub(super) fn on_failure() -> OnFailure {
        OnFailure::Halt
    }
    pub(super) fn status_ok() -> Spanned<u16> {
        unlocated(200)
    }
    pub(super) fn status_ok_plain() -> u16 {
        200
    }
    pub(super) fn engagement() -> Spanned<Engagement> {
        unlocated(Engagement::Approval)
    }
    pub(super) fn engagement_plain() -> Engagement {
        Engagement::Approval
    }
}

// === impl RolloutDoc ===

impl Default for RolloutDoc {
    fn default() -> Self {
        RolloutDoc {
            canary: defaults::one_spanned(),
            batch: defaults::batch(),
            max_unavailable: defaults::one_spanned(),
            one_domain_at_a_time: None,
            pause: None,
            min_healthy_time: defaults::min_healthy_time(),
            on_failure: defaults::on_failure(),
        }
    }
}

// === impl Deserialize for the hand-written shapes ===

impl<'de> Deserialize<'de> for SelectorDoc {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let terms = BTreeMap::<String, SelectorTermDoc>::deserialize(deserializer)?;
        Ok(SelectorDoc(
            terms.into_iter().map(|(key, term)| (key, term.0)).collect(),
        ))
    }
}

struct SelectorTermDoc(SelectorTerm);

impl<'de> Deserialize<'de> for SelectorTermDoc {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TermVisitor;
        impl<'de> Visitor<'de> for TermVisitor {
            type Value = SelectorTermDoc;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a label value or a list of label values")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(SelectorTermDoc(SelectorTerm::Equals(v.to_owned())))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(SelectorTermDoc(SelectorTerm::Equals(v.to_string())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(SelectorTermDoc(SelectorTerm::Equals(v.to_string())))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(SelectorTermDoc(SelectorTerm::Equals(v.to_string())))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut values = Vec::new();
                while let Some(value) = seq.next_element::<ScalarText>()? {
                    values.push(value.0);
                }
                Ok(SelectorTermDoc(SelectorTerm::OneOf(values)))
            }
        }
        deserializer.deserialize_any(TermVisitor)
    }
}

impl<'de> Deserialize<'de> for ScalarText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl Visitor<'_> for TextVisitor {
            type Value = ScalarText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(ScalarText(v.to_owned()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(ScalarText(v.to_string()))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

impl<'de> Deserialize<'de> for PortRefDoc {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PortVisitor;
        impl Visitor<'_> for PortVisitor {
            type Value = PortRefDoc;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number or a port name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(PortRefDoc::Name(v.to_owned()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(PortRefDoc::Number(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "found port {v}; expected a port number from 1 to 65535 or a port name"
                )))
            }
        }
        deserializer.deserialize_any(PortVisitor)
    }
}

impl<'de> Deserialize<'de> for ParamValueDoc {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValueVisitor;
        impl Visitor<'_> for ValueVisitor {
            type Value = ParamValueDoc;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, an integer or a boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(ParamValueDoc::String(v.to_owned()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                i64::try_from(v)
                    .map(ParamValueDoc::Integer)
                    .map_err(|_| E::custom(format!("found {v}, which is too large; expected an integer")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(ParamValueDoc::Integer(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(ParamValueDoc::Float(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(ParamValueDoc::Boolean(v))
            }
        }
        deserializer.deserialize_any(ValueVisitor)
    }
}

// === impl JsonSchema for the hand-written shapes ===

impl JsonSchema for SelectorDoc {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Selector".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Labels to match: every key must match; a value matches exactly, a list matches any of its values.",
            "type": "object",
            "additionalProperties": {
                "oneOf": [
                    { "type": "string" },
                    { "type": "array", "items": { "type": "string" } }
                ]
            }
        })
    }
}

impl JsonSchema for PortRefDoc {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "PortRef".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A port number, or the name of a port declared by the target component.",
            "oneOf": [
                { "type": "integer", "minimum": 1, "maximum": 65535 },
                { "type": "string" }
            ]
        })
    }
}

impl JsonSchema for ParamValueDoc {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ParamValue".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": ["string", "integer", "boolean"] })
    }
}
